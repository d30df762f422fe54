"""What the gcp cloud would answer under mocks: invoke results and computed resource outputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pulumi

# Invoke token (as Mocks.call receives it) -> result.
INVOKES: dict[str, dict[str, Any]] = {}
# Resource type token -> function of the mock args returning output properties the cloud computes.
RESOURCE_OUTPUTS: dict[str, Callable[[pulumi.runtime.MockResourceArgs], dict[str, Any]]] = {}
