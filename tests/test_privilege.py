"""Commands that need root run themselves again under sudo when started as a user (the same interpreter and
arguments, before doing anything), just run as root, and refuse clearly where there is no sudo."""

from __future__ import annotations

import os
from pathlib import Path

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


def test_the_user_who_ran_sudo_is_known_only_when_root_runs_for_someone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(privilege.os, "geteuid", lambda: 0)
    assert privilege.invoking_user({"SUDO_UID": "1001", "SUDO_GID": "1002"}) == (1001, 1002)
    assert privilege.invoking_user({}) is None  # root itself
    assert privilege.invoking_user({"SUDO_UID": "0", "SUDO_GID": "0"}) is None  # root through sudo
    assert privilege.invoking_user({"SUDO_UID": "x", "SUDO_GID": "1"}) is None
    monkeypatch.setattr(privilege.os, "geteuid", lambda: 1001)
    assert privilege.invoking_user({"SUDO_UID": "1001", "SUDO_GID": "1002"}) is None  # not root: nothing to give back


def test_results_written_as_root_go_back_to_the_user_links_and_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a sudo re-run writes (a run folder, its files, the links to the latest) goes to the user; a link's target
    outside is left alone, and what root does not own (another user's file) is not touched."""
    calls: list[tuple[Path, int, int]] = []
    monkeypatch.setattr(privilege.os, "lchown", lambda p, uid, gid: calls.append((Path(p), uid, gid)))
    base = tmp_path / "lab-results"
    run = base / "runs" / "20261129T000000Z-check"
    run.mkdir(parents=True)
    (run / "check.json").write_text("{}")
    (base / "check.json").symlink_to("runs/20261129T000000Z-check/check.json")
    outside = tmp_path / "elsewhere"
    outside.write_text("not ours")
    (base / "odd").symlink_to(outside)
    mine = os.getuid()  # the files' owner plays root here; a file of someone else is left alone
    foreign = run / "theirs.json"
    foreign.write_text("{}")
    real_lstat = Path.lstat
    monkeypatch.setattr(Path, "lstat", lambda self: os.stat_result((0, 0, 0, 0, mine + 1, 0, 0, 0, 0, 0)) if self == foreign else real_lstat(self))
    changed = privilege.hand_back([base], (1001, 1002), from_uid=mine)
    assert {p.relative_to(tmp_path) for p, _, _ in calls} == {
        Path("lab-results"),
        Path("lab-results/runs"),
        Path("lab-results/runs/20261129T000000Z-check"),
        Path("lab-results/runs/20261129T000000Z-check/check.json"),
        Path("lab-results/check.json"),
        Path("lab-results/odd"),
    }
    assert all((u, g) == (1001, 1002) for _, u, g in calls) and len(changed) == len(calls)
