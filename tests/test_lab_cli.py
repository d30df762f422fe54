"""The lab's CLI around the lab (no root, no namespace): exec and status targets, hints runnable as printed,
results kept per run, a timed-out command, the state dir's mount, Docker's cgroup driver and the cgroups down
removes, the hub-loss summary's labels."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lab import access, cli, lifecycle, nodes, results
from lab.faults import availability_text
from lab.invocation import REPO, lab_command
from lab.report import PingResult, Probe, write
from lab.state import LabError, LabState, check_state_dir, save


def lab_state(tmp_path: Path, containers: str = "docker") -> Path:
    state_dir = tmp_path / "state"
    st = LabState(stack="dev", sites=["aws", "gcp"], overrides={"encryption": "none"}, containers=containers, prefix="mco-", phase="up")
    save(st, state_dir)
    return state_dir


# --------------------------------------------------------------------------- exec and status


def test_exec_runs_in_a_node_namespace_and_in_a_docker_container(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state_dir = lab_state(tmp_path)
    ran: list[list[str]] = []
    monkeypatch.setattr(access, "stdio_is_tty", lambda: False)
    access.run_exec("aws-router", ["ip", "-br", "addr"], state_dir, execvp=lambda f, a: ran.append(a), exists=lambda p: True)
    access.run_exec("gcp-c2", ["cat"], state_dir, execvp=lambda f, a: ran.append(a), exists=lambda p: True)
    monkeypatch.setattr(access, "stdio_is_tty", lambda: True)
    access.run_exec("gcp-client", [], state_dir, execvp=lambda f, a: ran.append(a), exists=lambda p: True)
    access.run_exec("aws-c1", [], state_dir, execvp=lambda f, a: ran.append(a), exists=lambda p: True)
    sock = f"unix://{state_dir}/nodes/gcp-router/docker.sock"
    assert ran == [
        ["ip", "netns", "exec", "mco-aws-router", "ip", "-br", "addr"],
        ["docker", "-H", sock, "exec", "-i", "gcp-c2", "cat"],
        ["ip", "netns", "exec", "mco-gcp-client", "bash"],
        ["docker", "-H", f"unix://{state_dir}/nodes/aws-router/docker.sock", "exec", "-it", "aws-c1", "sh"],
    ]


def test_exec_netns_containers_and_namespace_names(tmp_path: Path) -> None:
    state_dir = lab_state(tmp_path, containers="netns")
    t = access.resolve("aws-c3", state_dir, exists=lambda p: True)
    assert access.exec_argv(t, ["ping", "-c1", "10.250.3.1"], tty=False) == ["ip", "netns", "exec", "aws-c3", "ping", "-c1", "10.250.3.1"]
    assert access.resolve("mco-gcp-router", state_dir, exists=lambda p: True).name == "gcp-router"
    assert access.resolve("internet", state_dir, exists=lambda p: True).netns == "mco-internet"


def test_exec_names_every_target_when_the_name_is_unknown(tmp_path: Path) -> None:
    state_dir = lab_state(tmp_path)
    with pytest.raises(LabError) as e:
        access.resolve("aws-c9", state_dir, exists=lambda p: True)
    msg = str(e.value)
    for name in ("aws-router", "gcp-client", "aws-c1", "gcp-c3", "aws-edge", "internet"):
        assert name in msg
    with pytest.raises(LabError, match="namespace mco-aws-router is gone"):
        access.resolve("aws-router", state_dir, exists=lambda p: False)
    with pytest.raises(LabError, match="Docker daemon of aws-router is not running"):
        access.resolve("aws-c1", state_dir, exists=lambda p: p.startswith("/run/netns/"))


def test_exec_without_a_lab_says_to_bring_it_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(LabError, match=r"no lab is up: run `.* -m lab up"):
        access.resolve("aws-router", tmp_path / "none")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(access, "load", lambda *a: None)
    assert cli.main(["exec", "aws-router", "--", "true"]) == 2
    err = capsys.readouterr().err
    assert "no lab is up" in err and "-m lab up" in err


def test_status_says_how_to_reach_each_node_and_container(tmp_path: Path) -> None:
    state_dir = lab_state(tmp_path)
    st = lab_state_loaded(state_dir)
    text = "\n".join(access.how_to_reach(st, state_dir))
    sock = f"unix://{state_dir}/nodes/aws-router/docker.sock"
    for line_part in (
        "mco-aws-router",
        f"{lab_command('exec', 'aws-router')} -- CMD",
        "ip netns exec mco-gcp-client CMD",
        f"docker -H {sock} exec -it aws-c1 CMD",
        "ip netns exec aws-c1 CMD",
    ):
        assert line_part in text
    rows = {line.split()[0] for line in text.splitlines()[2:] if line and not line.startswith(("without", "docker"))}
    assert {"aws-router", "aws-client", "gcp-router", "gcp-client", "aws-c1", "gcp-c3"} <= rows


def lab_state_loaded(state_dir: Path) -> LabState:
    from lab.state import load

    st = load(state_dir)
    assert st is not None
    return st


def test_cli_parses_exec_with_and_without_the_separator() -> None:
    p = cli.parser()
    args = p.parse_args(["exec", "aws-router", "--", "sh", "-c", "exit 7"])
    assert (args.node, args.exec_command) == ("aws-router", ["sh", "-c", "exit 7"])
    assert p.parse_args(["exec", "aws-c1"]).exec_command == []


# --------------------------------------------------------------------------- hints


def test_hints_are_runnable_as_printed() -> None:
    venv = str(REPO / ".venv/bin/python")
    assert lab_command("down", executable=venv, cwd=str(REPO)) == ".venv/bin/python -m lab down"
    assert lab_command("up", "--sites", "aws,gcp", executable=venv, cwd=str(REPO)) == ".venv/bin/python -m lab up --sites aws,gcp"
    assert lab_command("down", executable=venv, cwd="/") == f"cd {REPO} && .venv/bin/python -m lab down"
    assert lab_command("check", sudo=True, executable=venv, cwd=str(REPO)) == "sudo .venv/bin/python -m lab check"
    assert lab_command("down", executable="/nowhere/bin/python3", cwd=str(REPO)) == "/nowhere/bin/python3 -m lab down"


# --------------------------------------------------------------------------- results per run


def test_each_run_keeps_its_results_and_the_well_known_paths_follow_the_latest(tmp_path: Path) -> None:
    base = tmp_path / "lab-results"
    base.mkdir()
    (base / "check.json").write_text("before runs were kept\n")
    when = iter([datetime(2026, 11, 29, 10, 0, 0, tzinfo=UTC)] * 2 + [datetime(2026, 11, 29, 10, 5, 0, tzinfo=UTC)])
    runs = []
    for text in ("first", "second"):
        run = results.start_run(base, "check", now=lambda: next(when))
        (run.dir / "check.json").write_text(text)
        results.finish_run(run)
        runs.append(run)
    assert runs[0].dir.name == "20261129T100000Z-check" and runs[1].dir.name == "20261129T100000Z-check-2"
    assert (base / "check.json").read_text() == "second" and (base / "check.json").is_symlink()
    assert (runs[0].dir / "check.json").read_text() == "first"  # nothing overwritten
    assert (base / "latest").resolve() == runs[1].dir.resolve()
    earlier = runs[0].moved
    assert len(earlier) == 1 and earlier[0].read_text() == "before runs were kept\n" and earlier[0].parent.name.endswith("-earlier")
    assert any("kept earlier results" in line for line in results.describe(runs[0], tmp_path))
    empty = results.start_run(base, "up", now=lambda: next(when))
    results.finish_run(empty)
    assert not empty.dir.exists() and results.describe(empty) == []


def test_cli_writes_default_results_into_a_run_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import lab.check

    monkeypatch.setattr(cli, "DEFAULT_RESULTS", tmp_path)

    def fake_check(results_dir: Path, stem: str = "check") -> int:
        (results_dir / "check.json").write_text("{}")
        return 0

    monkeypatch.setattr(lab.check, "run_check", fake_check)
    assert cli.main(["check"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.endswith("-check") and (tmp_path / "check.json").resolve() == (run / "check.json").resolve()
    assert f"results of this run: {run}/" in capsys.readouterr().out
    explicit = tmp_path / "mine"
    explicit.mkdir()
    assert cli.main(["check", "--results", str(explicit)]) == 0
    assert (explicit / "check.json").is_file() and not (explicit / "check.json").is_symlink()


def test_check_text_and_json_name_the_encryption(tmp_path: Path) -> None:
    import json

    extra = {"stack": "dev", "hub": "aws", "protocol": "vxlan", "topology": "hub-and-spoke", "encryption": "none", "mtu": 1350}
    files = write(tmp_path, "check", ["a", "b"], [PingResult("a", "b", 4, "10.0.0.2", True)], [Probe("mtu", "x", True, "ok")], extra)
    assert json.loads(files[0].read_text())["encryption"] == "none"
    assert files[2].read_text().splitlines()[0] == "stack dev, hub aws, protocol vxlan, topology hub-and-spoke, encryption none, mtu 1350"


# --------------------------------------------------------------------------- robustness on a stock host


def test_a_timed_out_command_is_reported_without_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "DEFAULT_RESULTS", tmp_path)

    def up(*a: object, **kw: object) -> None:
        raise subprocess.TimeoutExpired(["ip", "netns", "exec", "mco-aws-router", "overlay-node"], 300)

    monkeypatch.setattr(lifecycle, "up", up)
    rc = cli.main(["up", "--encryption", "none"])
    err = capsys.readouterr().err
    assert rc == 124
    assert "did not finish within 300 s" in err and "ip netns exec mco-aws-router overlay-node" in err
    assert "-m lab down" in err and "Traceback" not in err


class NoExec:
    f_flag = os.ST_NOEXEC | os.ST_NOSUID


def test_a_noexec_state_dir_is_refused_before_anything_is_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state_dir = tmp_path / "run" / "multicloud-overlay-lab"
    monkeypatch.setattr(os, "statvfs", lambda p: NoExec())
    with pytest.raises(LabError, match="noexec mount") as e:
        check_state_dir(state_dir)
    assert "MCO_LAB_STATE_DIR=" in str(e.value) and "mount -o remount,exec" in str(e.value)
    monkeypatch.setattr(lifecycle, "require_root", lambda what: None)

    def reached(*a: object) -> None:
        raise AssertionError("up went past the state dir check")

    monkeypatch.setattr(lifecycle, "check_tools", reached)
    with pytest.raises(LabError, match="noexec mount"):
        lifecycle.up("dev", None, {"encryption": "none"}, state_dir=state_dir)
    assert not state_dir.exists()


def test_a_state_dir_that_is_not_the_labs_is_refused(tmp_path: Path) -> None:
    check_state_dir(tmp_path / "new")  # absent: fine
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "data").write_text("x")
    with pytest.raises(LabError, match="not a lab's"):
        check_state_dir(tmp_path / "theirs")


def test_dockerd_manages_its_own_cgroups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    class Proc:
        pid = 4242

    def popen(argv: list[str], **kw: object) -> Proc:
        seen.append(argv)
        return Proc()

    monkeypatch.setattr(nodes.subprocess, "Popen", popen)
    (tmp_path / "nodes" / "aws-router").mkdir(parents=True)
    assert nodes.start_dockerd("mco-aws-router", "aws-router", tmp_path) == 4242
    argv = seen[0]
    i = argv.index("--exec-opt")
    assert argv[i + 1] == "native.cgroupdriver=cgroupfs"
    assert argv[argv.index("--cgroup-parent") + 1] == "mco-lab-aws-router"


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        (["mco-lab-aws-router/abc", "system.slice", "init.scope"], ["mco-lab-aws-router"]),  # cgroup v2
        (
            ["memory/mco-lab-aws-router/abc", "pids/mco-lab-aws-router", "memory/other"],
            ["memory/mco-lab-aws-router", "pids/mco-lab-aws-router"],
        ),
        (["unified/mco-lab-gcp-router", "cpu/mco-lab-gcp-router"], ["cpu/mco-lab-gcp-router", "unified/mco-lab-gcp-router"]),  # hybrid
    ],
)
def test_down_finds_the_lab_cgroups_of_every_hierarchy(tmp_path: Path, layout: list[str], expected: list[str]) -> None:
    for d in layout:
        (tmp_path / d).mkdir(parents=True)
    assert [str(p.relative_to(tmp_path)) for p in lifecycle._lab_cgroups(tmp_path)] == expected


def test_hub_loss_availability_is_labelled() -> None:
    text = availability_text({"gcp-client -> gcp-c1 IPv4": 0.998, "gcp-client -> gcp-c1 IPv6": None})
    assert text == "gcp-client -> gcp-c1 IPv4 99.8%, gcp-client -> gcp-c1 IPv6 no ping sent"
    assert "no site-local pair" in availability_text({})
