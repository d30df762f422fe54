"""Line-based, per-stack prefixed output: `[dev] deploy: start`. Every line is written whole and flushed, so the
lines of stacks running in parallel interleave but never mix."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import TextIO

COLOURS = ("36", "35", "33", "32", "34", "31")


def wants_colour(stream: TextIO, environ: Mapping[str, str] = os.environ) -> bool:
    """Colour only for a person at a terminal: never under CI (`CI` set), with NO_COLOR, or into a pipe/file."""
    if environ.get("CI") or environ.get("NO_COLOR"):
        return False
    return stream.isatty()


class Console:
    def __init__(self, stream: TextIO, colour: bool = False) -> None:
        self.stream = stream
        self.colour = colour
        self._lock = threading.Lock()
        self._colours: dict[str, str] = {}

    def line(self, source: str, text: str) -> None:
        """Write `[source] text`, one output line per line of text."""
        prefix = f"[{source}]"
        if self.colour:
            code = self._colours.setdefault(source, COLOURS[len(self._colours) % len(COLOURS)])
            prefix = f"\x1b[{code}m{prefix}\x1b[0m"
        lines = text.splitlines() or [""]
        with self._lock:
            for part in lines:
                self.stream.write(f"{prefix} {part}\n")
            self.stream.flush()
