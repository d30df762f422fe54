"""The pipeline driver (ops/): the orchestration against a stand-in for the Pulumi workspace, and the thin
Automation API layer against the real pulumi.automation signatures. No root, no Pulumi CLI, no cloud."""

from __future__ import annotations

import inspect
import io
import re
import threading
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import pulumi.automation as auto
import pytest
from pulumi.automation._cmd import CommandResult

from ops.cli import build_parser, main
from ops.connectivity import CheckNotRun, RouterCheck, RouterProblem, parse_connectivity, parse_router_check
from ops.console import Console, wants_colour
from ops.pipeline import PipelineOptions, Stage, exit_status, run_pipeline, summary_of
from ops.pulumi_stack import AutomationStack, AutomationStackSource
from ops.reports import Case, Outcome, write_report
from ops.stack import OutputLine


def check_result(results: dict[str, bool]) -> dict[str, object]:
    """A router's entry as `overlay-node check --json` prints it (cloudinit/overlay_node.py: check)."""
    failed = sorted(t for t, ok in results.items() if not ok)
    return {"reachable": sum(results.values()), "total": len(results), "unreachable": failed, "results": results}


TARGETS = ["10.250.1.1", "10.250.1.2", "fd00:6f76:6c00::1:1", "10.250.3.2"]
ALL_REACHABLE = {"connectivity": {r: check_result(dict.fromkeys(TARGETS, True)) for r in ("aws-router", "gcp-router")}}


class ConcurrencyProbe:
    """Measures how many stacks deploy at once. Each deploy waits until `bound` deploys are in (the driver must
    reach its bound, or this stalls and says so), then holds a short window during which one more deploy would be
    seen at once: a driver that exceeds the bound raises the peak above it."""

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self.active = 0
        self.peak = 0
        self.stalled = False
        self.cond = threading.Condition()

    def deploy(self) -> None:
        with self.cond:
            self.active += 1
            self.peak = max(self.peak, self.active)
            self.cond.notify_all()
            if not self.cond.wait_for(lambda: self.active >= self.bound, timeout=5):
                self.stalled = True
            self.cond.wait_for(lambda: self.active > self.bound, timeout=0.2)
            self.active -= 1
            self.cond.notify_all()


class StandInStack:
    """A stack of the stand-in workspace: records every call, fails where the workspace says so."""

    def __init__(self, name: str, workspace: StandInWorkspace) -> None:
        self.name = name
        self.workspace = workspace

    def set_config(self, key: str, value: str) -> None:
        self.workspace.record(self.name, f"config {key}={value}")

    def up(self, on_output: OutputLine) -> None:
        self.workspace.record(self.name, "up")
        on_output(f"Updating ({self.name})")
        if self.workspace.probe is not None:
            self.workspace.probe.deploy()
        if self.name in self.workspace.fail_up:
            raise RuntimeError(f"code: 255\nstdout: Updating ({self.name})\nerror: update failed on {self.name}")
        on_output("Resources: 42 created")

    def outputs(self) -> Mapping[str, object]:
        self.workspace.record(self.name, "outputs")
        return self.workspace.outputs.get(self.name, ALL_REACHABLE)

    def destroy(self, on_output: OutputLine) -> None:
        self.workspace.record(self.name, "destroy")
        on_output(f"Destroying ({self.name})")
        if self.name in self.workspace.fail_destroy:
            raise RuntimeError("error: destroy failed")

    def remove(self) -> None:
        self.workspace.record(self.name, "remove")


class StandInWorkspace:
    """Implements ops.stack.StackSource without Pulumi."""

    def __init__(
        self,
        fail_up: set[str] | None = None,
        fail_destroy: set[str] | None = None,
        fail_open: set[str] | None = None,
        outputs: dict[str, Mapping[str, object]] | None = None,
        probe: ConcurrencyProbe | None = None,
    ) -> None:
        self.fail_up = fail_up or set()
        self.fail_destroy = fail_destroy or set()
        self.fail_open = fail_open or set()
        self.outputs = outputs or {}
        self.probe = probe
        self.events: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def record(self, stack: str, event: str) -> None:
        with self.lock:
            self.events.append((stack, event))

    def of(self, stack: str) -> list[str]:
        return [event for name, event in self.events if name == stack]

    def open(self, stack: str, on_output: OutputLine) -> StandInStack:
        self.record(stack, "open")
        if stack in self.fail_open:
            raise RuntimeError("error: passphrase must be set with PULUMI_CONFIG_PASSPHRASE")
        return StandInStack(stack, self)


def drive(stacks: list[str], workspace: StandInWorkspace, tmp_path: Path, **options: Any) -> tuple[int, str]:
    out = io.StringIO()
    runs = run_pipeline(stacks, workspace, PipelineOptions(reports=tmp_path / "reports", **options), Console(out))
    return exit_status(runs), out.getvalue()


def report(tmp_path: Path, stage: str, stack: str) -> ET.Element:
    return ET.parse(tmp_path / "reports" / f"{stage}-{stack}.xml").getroot()


def cases_of(root: ET.Element) -> dict[str, ET.Element]:
    return {case.attrib["name"]: case for case in root.iter("testcase")}


# --- order, parallelism, destroy on failure, --keep ---


def test_each_stack_goes_deploy_then_test_then_destroy(tmp_path: Path) -> None:
    workspace = StandInWorkspace()
    status, _ = drive(["dev", "aws-gcp"], workspace, tmp_path, config={"adminCidr": "192.0.2.7/32"})
    assert status == 0
    for stack in ("dev", "aws-gcp"):
        assert workspace.of(stack) == ["open", "config adminCidr=192.0.2.7/32", "up", "outputs", "destroy"]


@pytest.mark.parametrize("jobs", [1, 2, 3])
def test_no_more_stacks_than_jobs_deploy_at_once(tmp_path: Path, jobs: int) -> None:
    probe = ConcurrencyProbe(jobs)
    workspace = StandInWorkspace(probe=probe)
    stacks = [f"s{i}" for i in range(2 * jobs)]
    status, _ = drive(stacks, workspace, tmp_path, jobs=jobs)
    assert status == 0
    assert not probe.stalled, f"the driver never had {jobs} stacks deploying at once"
    assert probe.peak == jobs
    assert sorted(stack for stack, event in workspace.events if event == "up") == sorted(stacks)


def test_the_probe_sees_a_driver_that_ignores_the_bound(tmp_path: Path) -> None:
    probe = ConcurrencyProbe(2)
    status, _ = drive(["a", "b", "c", "d"], StandInWorkspace(probe=probe), tmp_path, jobs=4)
    assert status == 0
    assert probe.peak > 2


def test_a_failed_deploy_skips_the_test_and_still_destroys(tmp_path: Path) -> None:
    workspace = StandInWorkspace(fail_up={"bad"})
    status, out = drive(["good", "bad"], workspace, tmp_path)
    assert status == 1
    assert workspace.of("bad") == ["open", "up", "destroy"]
    assert workspace.of("good") == ["open", "up", "outputs", "destroy"]
    assert "[bad] deploy: FAILED" in out and "error: update failed on bad" in out
    assert "[bad] test: skipped: deploy did not succeed" in out
    failure = report(tmp_path, "deploy", "bad").find("testsuite/testcase/failure")
    assert failure is not None and failure.attrib["message"] == "error: update failed on bad"
    assert report(tmp_path, "test", "bad").find("testsuite/testcase/skipped") is not None
    destroyed = report(tmp_path, "destroy", "bad").find("testsuite")
    assert destroyed is not None and destroyed.attrib["failures"] == "0"


def test_keep_leaves_a_failed_stack_deployed(tmp_path: Path) -> None:
    workspace = StandInWorkspace(fail_up={"dev"})
    status, out = drive(["dev"], workspace, tmp_path, keep=True)
    assert status == 1
    assert workspace.of("dev") == ["open", "up"]
    skipped = report(tmp_path, "destroy", "dev").find("testsuite/testcase/skipped")
    assert skipped is not None and "--keep" in skipped.attrib["message"]
    assert "[dev] destroy: skipped: --keep" in out


def test_keep_after_success_passes_without_destroy(tmp_path: Path) -> None:
    workspace = StandInWorkspace()
    status, _ = drive(["dev"], workspace, tmp_path, keep=True)
    assert status == 0
    assert workspace.of("dev") == ["open", "up", "outputs"]


def test_remove_follows_a_successful_destroy_only(tmp_path: Path) -> None:
    workspace = StandInWorkspace(fail_destroy={"stuck"})
    status, _ = drive(["ok", "stuck"], workspace, tmp_path, remove=True)
    assert status == 1
    assert workspace.of("ok")[-2:] == ["destroy", "remove"]
    assert workspace.of("stuck")[-1] == "destroy"
    stuck = cases_of(report(tmp_path, "destroy", "stuck"))
    assert stuck["destroy"].find("failure") is not None and stuck["remove"].find("skipped") is not None


def test_a_stack_that_cannot_be_opened_fails_and_runs_nothing(tmp_path: Path) -> None:
    workspace = StandInWorkspace(fail_open={"dev"})
    status, out = drive(["dev"], workspace, tmp_path)
    assert status == 1
    assert workspace.of("dev") == ["open"]
    error = report(tmp_path, "deploy", "dev").find("testsuite/testcase/error")
    assert error is not None and "PULUMI_CONFIG_PASSPHRASE" in error.attrib["message"]
    assert "[dev] test: skipped: the stack could not be opened" in out


def test_single_stages_run_alone(tmp_path: Path) -> None:
    workspace = StandInWorkspace()
    for stage in Stage:
        drive(["dev"], workspace, tmp_path, stages=(stage,))
    assert workspace.of("dev") == ["open", "up", "open", "outputs", "open", "destroy"]


# --- the test stage: the connectivity output ---


def test_an_unreachable_pair_fails_the_test_stage_with_one_testcase_per_pair(tmp_path: Path) -> None:
    results = dict.fromkeys(TARGETS, True) | {"10.250.3.2": False}
    outputs = {"connectivity": {"aws-router": check_result(results), "gcp-router": check_result(dict.fromkeys(TARGETS, True))}}
    workspace = StandInWorkspace(outputs={"dev": outputs})
    status, out = drive(["dev"], workspace, tmp_path)
    assert status == 1
    assert workspace.of("dev")[-1] == "destroy"
    assert "[dev] unreachable: aws-router -> 10.250.3.2" in out
    assert re.search(r"^\[dev\] test: FAILED in \d+\.\d s: 1 of 8 pairs unreachable: aws-router -> 10\.250\.3\.2$", out, re.M)
    root = report(tmp_path, "test", "dev")
    suite = root.find("testsuite")
    assert suite is not None and suite.attrib["tests"] == "8" and suite.attrib["failures"] == "1"
    cases = cases_of(root)
    failed = cases["aws-router -> 10.250.3.2"]
    assert failed.attrib["classname"] == "dev.connectivity.aws-router"
    failure = failed.find("failure")
    assert failure is not None and failure.attrib["message"] == "aws-router cannot reach 10.250.3.2"
    assert cases["gcp-router -> 10.250.3.2"].find("failure") is None


def test_every_pair_reachable_passes(tmp_path: Path) -> None:
    status, out = drive(["dev"], StandInWorkspace(), tmp_path)
    assert status == 0
    assert "[dev] test: passed" in out and "8 pairs reachable from 2 routers" in out


@pytest.mark.parametrize("outputs", [{"connectivity": {}}, {"hub": "aws"}], ids=["check-off", "no-output"])
def test_a_stack_without_check_result_is_an_error_saying_how_to_turn_it_on(tmp_path: Path, outputs: Mapping[str, object]) -> None:
    status, out = drive(["dev"], StandInWorkspace(outputs={"dev": outputs}), tmp_path)
    assert status == 1
    assert "[dev] test: ERROR" in out
    error = report(tmp_path, "test", "dev").find("testsuite/testcase/error")
    assert error is not None
    assert "pulumi config set connectivityCheck true --stack dev" in error.attrib["message"]


def test_parse_connectivity_reads_the_check_json() -> None:
    outputs = {
        "connectivity": {
            "b-router": None,
            "a-router": check_result({"10.0.0.1": True, "10.0.0.2": False}),
            "c-router": {"raw": "ping: not found\n"},
        }
    }
    parsed = parse_connectivity(outputs, "dev")
    assert parsed.routers == [RouterCheck("a-router", {"10.0.0.1": True, "10.0.0.2": False})]
    assert parsed.unreachable_pairs == [("a-router", "10.0.0.2")]
    assert [p.router for p in parsed.problems] == ["b-router", "c-router"]
    assert "ping: not found" in parsed.problems[1].reason
    assert not parsed.passed


def test_parse_router_check_trusts_the_unreachable_list_and_refuses_other_shapes() -> None:
    inconsistent = {"results": {"10.0.0.1": True}, "unreachable": ["10.0.0.1"]}
    check = parse_router_check("r", inconsistent)
    assert isinstance(check, RouterCheck) and check.unreachable == ["10.0.0.1"]
    assert isinstance(parse_router_check("r", {"results": {"10.0.0.1": "yes"}}), RouterProblem)
    assert isinstance(parse_router_check("r", [1, 2]), RouterProblem)
    with pytest.raises(CheckNotRun):
        parse_connectivity({"connectivity": None}, "dev")


# --- reports and output ---


def test_reports_are_valid_xml_even_with_terminal_colours_in_the_output(tmp_path: Path) -> None:
    case = Case("dev", "deploy", Outcome.FAILED, "error: \x1b[31mboom\x1b[0m", "detail \x07", 1.5, ["\x1b[1mUpdating\x1b[0m"])
    path = write_report(tmp_path, "deploy", "org/proj/dev", [case])
    assert path.name == "deploy-org_proj_dev.xml"
    root = ET.parse(path).getroot()
    failure = root.find("testsuite/testcase/failure")
    assert failure is not None and failure.attrib["message"] == "error: boom"
    out = root.find("testsuite/testcase/system-out")
    assert out is not None and out.text == "Updating\n"


def test_deploy_report_carries_the_stage_output(tmp_path: Path) -> None:
    drive(["dev"], StandInWorkspace(), tmp_path)
    out = report(tmp_path, "deploy", "dev").find("testsuite/testcase/system-out")
    assert out is not None and out.text is not None and "Resources: 42 created" in out.text


def test_every_line_is_prefixed_by_its_stack(tmp_path: Path) -> None:
    _, out = drive(["dev", "aws-gcp"], StandInWorkspace(fail_up={"aws-gcp"}), tmp_path, jobs=2)
    lines = out.splitlines()
    assert lines and all(re.match(r"^\[(dev|aws-gcp|ops)\] ", line) for line in lines), out
    assert "[dev] Updating (dev)" in lines and "[aws-gcp] Destroying (aws-gcp)" in lines
    for stage in ("deploy", "test", "destroy"):
        assert f"[dev] {stage}: start" in lines
        assert any(re.match(rf"^\[dev\] {stage}: passed in \d+\.\d s", line) for line in lines)


def test_colour_only_at_a_terminal_outside_ci() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert wants_colour(Terminal(), {})
    assert not wants_colour(Terminal(), {"CI": "true"})
    assert not wants_colour(Terminal(), {"NO_COLOR": "1"})
    assert not wants_colour(io.StringIO(), {})


def test_summary_of_a_pulumi_command_error_is_its_error_line() -> None:
    error = auto.errors.CommandError(CommandResult("Updating (dev)\n    error: 1 error occurred", "error: update failed\n", 255))
    assert summary_of(error) == "error: update failed"


# --- the command line ---


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "Pulumi.yaml").write_text("name: p\nruntime: python\n")
    (tmp_path / "Pulumi.dev.yaml").write_text("config: {}\n")
    (tmp_path / "Pulumi.aws-gcp.yaml").write_text("config: {}\n")
    return tmp_path


def cli(project: Path, *argv: str, workspace: StandInWorkspace | None = None) -> tuple[int, str]:
    out = io.StringIO()
    base = ["--work-dir", str(project), "--reports", str(project / "build" / "reports")]
    status = main([*argv, *base], source=workspace or StandInWorkspace(), stream=out, environ={"CI": "true"})
    return status, out.getvalue()


def test_cli_run_drives_the_stacks_and_writes_a_report_per_stack_and_stage(project: Path) -> None:
    workspace = StandInWorkspace(fail_up={"aws-gcp"})
    status, out = cli(project, "run", "--stacks", "dev,aws-gcp", "--jobs", "2", "--config", "adminCidr=192.0.2.7/32", workspace=workspace)
    assert status == 1
    assert "\x1b" not in out
    names = sorted(p.name for p in (project / "build" / "reports").iterdir())
    assert names == sorted(f"{stage}-{stack}.xml" for stage in ("deploy", "test", "destroy") for stack in ("dev", "aws-gcp"))
    assert workspace.of("aws-gcp")[-1] == "destroy"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--stacks", "dev,prod"], "unknown stack 'prod': no Pulumi.prod.yaml"),
        (["run", "--stacks", "dev,dev"], "stack named twice: dev"),
        (["run", "--stacks", ","], "--stacks names no stack"),
        (["deploy", "--stacks", "dev", "--config", "adminCidr"], "expected KEY=VALUE"),
        (["test", "--stacks", "bad name"], "not a stack name"),
    ],
)
def test_cli_refuses_bad_input_before_any_stage(project: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    workspace = StandInWorkspace()
    status, out = cli(project, *argv, workspace=workspace)
    assert status == 2
    assert message in capsys.readouterr().err
    assert workspace.events == [] and out == ""


@pytest.mark.parametrize("jobs", ["0", "-1", "two"])
def test_cli_refuses_jobs_below_one(project: Path, jobs: str) -> None:
    workspace = StandInWorkspace()
    with pytest.raises(SystemExit) as exit_info:
        cli(project, "run", "--stacks", "dev", "--jobs", jobs, workspace=workspace)
    assert exit_info.value.code == 2 and workspace.events == []


def test_cli_refuses_a_directory_that_is_no_pulumi_project(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _ = cli(tmp_path, "run", "--stacks", "dev")
    assert status == 2 and "no Pulumi.yaml" in capsys.readouterr().err


def test_cli_without_pulumi_cli_says_so_before_any_stage(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("ops.pulumi_stack.find_pulumi_cli", lambda: None)
    status = main(["run", "--stacks", "dev", "--work-dir", str(project)], stream=io.StringIO(), environ={"CI": "true"})
    assert status == 2 and "Pulumi CLI (`pulumi`) is not on PATH" in capsys.readouterr().err


def test_cli_options_belong_to_their_commands() -> None:
    parser = build_parser()
    assert parser.parse_args(["run", "--stacks", "dev", "--keep", "--remove"]).keep
    for argv in (["destroy", "--stacks", "dev", "--keep"], ["test", "--stacks", "dev", "--config", "a=b"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)


# --- the thin layer against the real pulumi.automation signatures ---


class RecordingAutomationStack:
    """Records every call the thin layer makes on a pulumi.automation.Stack (and its workspace)."""

    def __init__(self, name: str, calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> None:
        self.name = name
        self.calls = calls
        self.workspace = self

    def __getattr__(self, method: str) -> Any:
        def record(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((method, args, kwargs))
            if method == "outputs":
                return {"connectivity": auto.OutputValue(value={"r": None}, secret=False)}
            return None

        return record


REAL_METHODS = {
    "set_config": auto.Stack.set_config,
    "up": auto.Stack.up,
    "outputs": auto.Stack.outputs,
    "destroy": auto.Stack.destroy,
    "remove_stack": auto.LocalWorkspace.remove_stack,
}


def test_the_thin_layer_passes_only_keywords_the_real_automation_api_takes(tmp_path: Path) -> None:
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
    opened: list[dict[str, Any]] = []

    def create_or_select(*args: Any, **kwargs: Any) -> auto.Stack:
        inspect.signature(auto.create_or_select_stack).bind(*args, **kwargs)
        opened.append(kwargs)
        return cast(auto.Stack, RecordingAutomationStack(kwargs["stack_name"], calls))

    lines: list[str] = []
    source = AutomationStackSource(tmp_path, colour=False, create_or_select=create_or_select)
    stack = source.open("dev", lines.append)
    assert opened == [{"stack_name": "dev", "work_dir": str(tmp_path)}]
    stack.set_config("adminCidr", "192.0.2.7/32")
    stack.up(lines.append)
    assert stack.outputs() == {"connectivity": {"r": None}}
    stack.destroy(lines.append)
    stack.remove()

    assert sorted({method for method, _, _ in calls}) == sorted(REAL_METHODS)
    for method, args, kwargs in calls:
        inspect.signature(REAL_METHODS[method]).bind(None, *args, **kwargs)  # TypeError on a keyword the API lacks
    by_method = {method: (args, kwargs) for method, args, kwargs in calls}
    config_value = by_method["set_config"][0][1]
    assert isinstance(config_value, auto.ConfigValue) and config_value.value == "192.0.2.7/32" and not config_value.secret
    assert by_method["remove_stack"][0] == ("dev",)
    up_kwargs = by_method["up"][1]
    assert up_kwargs["color"] == "never" and up_kwargs["suppress_progress"] is True
    up_kwargs["on_output"]("Resources: 1 created")
    by_method["destroy"][1]["on_error"]("error: gone")
    assert lines[-2:] == ["Resources: 1 created", "error: gone"]


def test_the_signature_check_catches_a_misspelled_keyword() -> None:
    with pytest.raises(TypeError):
        inspect.signature(auto.Stack.up).bind(None, on_outptu=print)
    with pytest.raises(TypeError):
        inspect.signature(auto.create_or_select_stack).bind(stack_name="dev", workdir=".")


def test_the_thin_layer_colours_for_a_terminal() -> None:
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
    AutomationStack(cast(auto.Stack, RecordingAutomationStack("dev", calls)), colour=True).destroy(print)
    assert calls[0][2]["color"] == "always" and calls[0][2]["suppress_progress"] is False


def test_ops_stands_on_its_own() -> None:
    """ops drives any Pulumi project that exports `connectivity`: it imports none of this project's packages."""
    import ast

    project = {"overlay", "components", "cloudinit", "multicloud_overlay", "lab", "bench", "tests"}
    for path in sorted((Path(__file__).resolve().parent.parent / "ops").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not {n.split(".")[0] for n in names} & project, f"{path.name} imports {names}"
