"""Commands that need root run themselves again under sudo when started as a user (the same interpreter and
arguments, before doing anything), just run as root, and refuse clearly where there is no sudo."""

from __future__ import annotations

import pytest

from lab import cli, privilege


def test_the_rerun_is_the_same_command_under_sudo_keeping_the_lab_variables() -> None:
    argv = privilege.sudo_argv("/usr/bin/sudo", "/repo/.venv/bin/python", [".venv/bin/python", "-m", "lab", "up", "--stack", "aws-gcp"])
    assert argv == [
        "/usr/bin/sudo",
        "--preserve-env=MCO_LAB_STATE_DIR,CI,NO_COLOR,TERM",
        "/repo/.venv/bin/python",
        "-m",
        "lab",
        "up",
        "--stack",
        "aws-gcp",
    ]


def test_root_runs_on_and_a_user_execs_sudo(monkeypatch: pytest.MonkeyPatch) -> None:
    execs: list[list[str]] = []
    monkeypatch.setattr(privilege.os, "execv", lambda path, argv: execs.append([path, *argv]))
    monkeypatch.setattr(privilege.shutil, "which", lambda name: "/usr/bin/sudo" if name == "sudo" else None)
    monkeypatch.setattr(privilege.os, "geteuid", lambda: 0)
    privilege.become_root("lab up", "namespaces")
    assert execs == []
    monkeypatch.setattr(privilege.os, "geteuid", lambda: 1000)
    privilege.become_root("lab up", "namespaces")
    assert len(execs) == 1 and execs[0][:2] == ["/usr/bin/sudo", "/usr/bin/sudo"]


def test_a_user_without_sudo_is_told_to_run_it_as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(privilege.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(privilege.shutil, "which", lambda name: None)
    with pytest.raises(privilege.NeedsRoot) as refused:
        privilege.become_root("lab up", "network namespaces, Docker, iptables")
    assert str(refused.value) == "lab up needs root (network namespaces, Docker, iptables) and sudo is not installed: run it as root"


def test_the_lab_cli_escalates_every_command_but_the_drawing_ones() -> None:
    commands = set(cli.parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    assert {"graph", "matrix"} == cli.USER_COMMANDS <= commands
    assert {"up", "check", "down", "exec", "status", "vm"} <= commands - cli.USER_COMMANDS
