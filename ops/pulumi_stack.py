"""The pipeline's stack interface over the Pulumi Automation API (a local program: the project directory with
its Pulumi.yaml, run by the Pulumi CLI). Thin on purpose: every call is one Automation API call, and the
callables it goes through can be replaced so a test sees the exact keywords it passes."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

import pulumi.automation as auto

from ops.stack import OutputLine


def find_pulumi_cli() -> str | None:
    """Path of the `pulumi` executable the Automation API will run, or None."""
    return shutil.which("pulumi")


class AutomationStack:
    """One stack of a local Pulumi program (implements ops.stack.PipelineStack)."""

    def __init__(self, stack: auto.Stack, colour: bool) -> None:
        self.stack = stack
        self.colour = colour

    @property
    def color(self) -> str:
        """Pulumi's colour setting: colour only for a person at a terminal (no progress dots otherwise)."""
        return "always" if self.colour else "never"

    def set_config(self, key: str, value: str) -> None:
        self.stack.set_config(key, auto.ConfigValue(value=value, secret=False), path=False)

    def up(self, on_output: OutputLine) -> None:
        self.stack.up(on_output=on_output, on_error=on_output, color=self.color, suppress_progress=not self.colour)

    def outputs(self) -> Mapping[str, object]:
        return {name: output.value for name, output in self.stack.outputs().items()}

    def destroy(self, on_output: OutputLine) -> None:
        self.stack.destroy(on_output=on_output, on_error=on_output, color=self.color, suppress_progress=not self.colour)

    def remove(self) -> None:
        self.stack.workspace.remove_stack(self.stack.name)


class AutomationStackSource:
    """Opens stacks of the Pulumi project in `work_dir` (implements ops.stack.StackSource)."""

    def __init__(
        self,
        work_dir: Path,
        colour: bool = False,
        create_or_select: Callable[..., auto.Stack] = auto.create_or_select_stack,
    ) -> None:
        self.work_dir = work_dir
        self.colour = colour
        self.create_or_select = create_or_select

    def open(self, stack: str, on_output: OutputLine) -> AutomationStack:
        on_output(f"selecting stack {stack} of the project in {self.work_dir}")
        selected = self.create_or_select(stack_name=stack, work_dir=str(self.work_dir))
        return AutomationStack(selected, self.colour)
