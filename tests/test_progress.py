"""lab/progress.py: one line per step everywhere; in-place status only on a terminal without CI."""

from __future__ import annotations

import io

import pytest

from lab.progress import CLEAR_LINE, Progress, interactive


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_pipe_gets_plain_lines_and_no_status(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    out, clock = io.StringIO(), Clock()
    p = Progress(total=3, stream=out, clock=clock)
    assert not p.tty
    p.status("pinging 1/30")
    clock.now += 3.14
    p.step("aws-router: containers up")
    p.status("pinging 2/30")
    p.note("a warning")
    p.finish()
    text = out.getvalue()
    assert text == "[1/3   3.1 s] aws-router: containers up\n[      3.1 s] a warning\n"
    assert "\r" not in text and "\x1b" not in text


def test_terminal_updates_status_in_place_and_steps_stay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    out = Terminal()
    p = Progress(total=2, stream=out, clock=Clock())
    assert p.tty
    p.status("matrix 1/30")
    p.status("matrix 2/30")
    p.step("matrix done")
    text = out.getvalue()
    # Each status rewrites the line; the step clears it and ends with a newline of its own.
    assert text.count(CLEAR_LINE) == 3 and text.endswith("[1/2   0.0 s] matrix done\n")
    assert text.split("\n")[0].endswith(f"{CLEAR_LINE}[1/2   0.0 s] matrix done")
    p.status("probes")
    p.finish()
    assert out.getvalue().endswith(f"{CLEAR_LINE}[1/2   0.0 s] probes{CLEAR_LINE}")


@pytest.mark.parametrize("value", ["true", "1", "yes"])
def test_ci_keeps_a_terminal_line_based(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    out = Terminal()
    p = Progress(total=1, stream=out)
    p.status("hidden")
    p.step("shown")
    assert not p.tty and "\r" not in out.getvalue() and "hidden" not in out.getvalue()


def test_interactive_reads_the_stream_and_ci() -> None:
    assert interactive(Terminal(), {}) and interactive(Terminal(), {"CI": "false"})
    assert not interactive(Terminal(), {"CI": "true"})
    assert not interactive(io.StringIO(), {})


def test_out_callable_gets_lines_only() -> None:
    lines: list[str] = []
    p = Progress(total=None, out=lines.append, tty=True, clock=Clock())
    p.status("never")
    p.step("one")
    p.step("two")
    assert lines == ["[1   0.0 s] one", "[2   0.0 s] two"]
