"""Test-run order: tests marked `slow` (a minute or more each: the program under mocks for large stacks) run
first, so that when `make test` spreads the tests over the cores none of them starts last and keeps one core
busy after the others are done. Order does not change what a test checks."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
