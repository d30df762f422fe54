"""Progress of the lab's long commands (up, check, vm, the benchmarks), one module for all of them.

Every step is one line on stdout: `[3/14 12.4 s] aws-router: booted and pushed (5 changes, 2.1 s)`. On a
terminal (stdout a TTY and CI unset) a transient status line (`status`) may also update in place while a step
runs; when stdout is a pipe, a file or CI is set, transient statuses are dropped and the output stays plain
lines: no carriage return, no escape sequence, no spinner, so logs and CI output read top to bottom.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import TextIO

CLEAR_LINE = "\r\x1b[K"
_FALSE = frozenset({"", "0", "false", "no"})


def interactive(stream: TextIO | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """True when in-place updates are welcome: the stream is a terminal and CI is not set."""
    env = os.environ if environ is None else environ
    if env.get("CI", "").strip().lower() not in _FALSE:
        return False
    s = sys.stdout if stream is None else stream
    try:
        return s.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """Numbered steps (`step`), unnumbered notes (`note`) and a transient status (`status`, terminal only).

    `total` is the number of steps expected (None: steps are counted without a total). Thread-safe: the lab's
    sites come up in parallel. `out`, when given, receives each line instead of the stream (always line-based).
    """

    def __init__(
        self,
        total: int | None = None,
        stream: TextIO | None = None,
        out: Callable[[str], None] | None = None,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.stream = stream
        self.out = out
        self.clock = clock
        self.started = clock()
        self.done = 0
        self.tty = False if out is not None else (interactive(stream) if tty is None else tty)
        self._transient = False
        self._lock = threading.Lock()

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started

    def _stream(self) -> TextIO:
        return sys.stdout if self.stream is None else self.stream

    def _line(self, text: str) -> None:
        if self.out is not None:
            self.out(text)
            return
        s = self._stream()
        if self._transient:
            s.write(CLEAR_LINE)
            self._transient = False
        s.write(text + "\n")
        s.flush()

    def _counter(self) -> str:
        if self.total is None:
            return f"{self.done}"
        return f"{self.done:>{len(str(self.total))}}/{self.total}"

    def step(self, message: str) -> None:
        """One step done: `[i/N t s] message` on a line of its own."""
        with self._lock:
            self.done += 1
            self._line(f"[{self._counter()} {self.elapsed:5.1f} s] {message}")

    def line(self, text: str) -> None:
        """A line as it is (e.g. another program's output passed through), no prefix."""
        with self._lock:
            self._line(text)

    def note(self, message: str) -> None:
        """A line that is not a step (a warning, a header): `[t s] message`."""
        with self._lock:
            self._line(f"[{' ' * len(self._counter())} {self.elapsed:5.1f} s] {message}")

    def status(self, message: str) -> None:
        """What is running now: rewritten in place on a terminal, dropped otherwise (no line per update)."""
        with self._lock:
            if not self.tty:
                return
            s = self._stream()
            s.write(f"{CLEAR_LINE}[{self._counter()} {self.elapsed:5.1f} s] {message}")
            s.flush()
            self._transient = True

    def finish(self) -> None:
        """Clear a transient status line (terminal only); later output starts on a clean line."""
        with self._lock:
            if self._transient:
                s = self._stream()
                s.write(CLEAR_LINE)
                s.flush()
                self._transient = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()
