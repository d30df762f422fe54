"""What the pipeline needs from a Pulumi stack: the small interface the Automation API layer implements
(ops/pulumi_stack.py) and a stand-in replaces in tests."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

OutputLine = Callable[[str], None]
"""Receives the stage's output, one line per call."""


class PipelineStack(Protocol):
    """One stack of a Pulumi project, selected (or created) in its workspace."""

    def set_config(self, key: str, value: str) -> None:
        """Set one plain (not secret) config value of the stack's project namespace."""
        ...

    def up(self, on_output: OutputLine) -> None:
        """Deploy; raises on failure."""
        ...

    def outputs(self) -> Mapping[str, object]:
        """The stack outputs, as plain values."""
        ...

    def destroy(self, on_output: OutputLine) -> None:
        """Delete every resource; raises on failure."""
        ...

    def remove(self) -> None:
        """Remove the (empty) stack and its history from the backend."""
        ...


class StackSource(Protocol):
    """Opens a stack by name: selects it, creating it in the backend if it does not exist yet."""

    def open(self, stack: str, on_output: OutputLine) -> PipelineStack: ...
