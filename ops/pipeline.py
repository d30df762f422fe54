"""The pipeline: for each stack deploy -> test -> destroy, stacks in parallel (at most `jobs` at once).

Rules: the test stage runs only on a deployed stack; destroy runs whatever happened before (a failed deploy
leaves resources too) unless `keep`; `remove` deletes the stack from the backend once destroy succeeded.
Every stage of every stack ends as one JUnit report and one line of the summary; the pipeline fails (exit 1)
when any stage failed or could not run.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from ops.connectivity import CheckNotRun, ConnectivityReport, parse_connectivity
from ops.console import Console
from ops.reports import Case, Outcome, write_report
from ops.stack import PipelineStack, StackSource


class Stage(StrEnum):
    DEPLOY = "deploy"
    TEST = "test"
    DESTROY = "destroy"


ALL_STAGES = (Stage.DEPLOY, Stage.TEST, Stage.DESTROY)


@dataclass(frozen=True)
class PipelineOptions:
    stages: tuple[Stage, ...] = ALL_STAGES
    jobs: int = 2
    keep: bool = False
    """Leave the stacks deployed (skip destroy), even after a failure."""
    remove: bool = False
    """After a successful destroy, remove the stack from the backend."""
    config: Mapping[str, str] = field(default_factory=dict)
    """Plain config values set on each stack before deploy."""
    reports: Path | None = None


@dataclass
class StageResult:
    stack: str
    stage: Stage
    outcome: Outcome
    message: str
    seconds: float
    cases: list[Case]

    @property
    def ok(self) -> bool:
        return self.outcome in (Outcome.PASSED, Outcome.SKIPPED)


@dataclass
class StackRun:
    stack: str
    results: list[StageResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)


def run_pipeline(stacks: Sequence[str], source: StackSource, options: PipelineOptions, console: Console) -> list[StackRun]:
    """Drive every stack through the stages; returns one StackRun per stack, in the order given."""
    if options.jobs < 1:
        raise ValueError(f"jobs must be at least 1, not {options.jobs}")
    stage_names = ", ".join(options.stages)
    console.line("ops", f"{len(stacks)} stack(s): {', '.join(stacks)}; stages: {stage_names}; at most {options.jobs} at once")
    with ThreadPoolExecutor(max_workers=options.jobs, thread_name_prefix="stack") as pool:
        runs = list(pool.map(lambda stack: drive_stack(stack, source, options, console), stacks))
    for run in runs:
        console.line(run.stack, "result: " + ", ".join(f"{r.stage} {r.outcome}" for r in run.results))
    failed = [run.stack for run in runs if not run.ok]
    console.line("ops", f"FAILED: {', '.join(failed)}" if failed else "all stacks passed")
    return runs


def exit_status(runs: Sequence[StackRun]) -> int:
    return 0 if all(run.ok for run in runs) else 1


class StageClock:
    """Prints a stage's start and end lines with the elapsed seconds, and collects the stage's output lines."""

    def __init__(self, console: Console, stack: str, stage: Stage) -> None:
        self.console, self.stack, self.stage = console, stack, stage
        self.output: list[str] = []
        self.started = time.monotonic()
        console.line(stack, f"{stage}: start")

    def echo(self, line: str) -> None:
        self.output.append(line)
        self.console.line(self.stack, line)

    def finish(self, outcome: Outcome, message: str, cases: list[Case]) -> StageResult:
        seconds = time.monotonic() - self.started
        tail = f": {message}" if message else ""
        word = outcome.upper() if outcome in (Outcome.FAILED, Outcome.ERROR) else str(outcome)
        self.console.line(self.stack, f"{self.stage}: {word} in {seconds:.1f} s{tail}")
        return StageResult(self.stack, self.stage, outcome, message, seconds, cases)


def skipped(stack: str, stage: Stage, reason: str, console: Console) -> StageResult:
    console.line(stack, f"{stage}: skipped: {reason}")
    return StageResult(stack, stage, Outcome.SKIPPED, reason, 0.0, [Case(stack, stage, Outcome.SKIPPED, reason)])


def drive_stack(stack: str, source: StackSource, options: PipelineOptions, console: Console) -> StackRun:
    """One stack through the stages, in order; opening the stack counts as part of the first stage."""
    run = StackRun(stack)
    clocks = {options.stages[0]: StageClock(console, stack, options.stages[0])}
    handle: PipelineStack | None = None
    try:
        handle = source.open(stack, clocks[options.stages[0]].echo)
    except Exception as e:
        clock = clocks.pop(options.stages[0])
        run.results.append(
            clock.finish(Outcome.ERROR, f"cannot open the stack: {summary_of(e)}", [stage_case(stack, clock, Outcome.ERROR, e)])
        )
    for stage in options.stages[len(run.results) :]:
        if handle is None:
            run.results.append(skipped(stack, stage, "the stack could not be opened", console))
        elif stage is Stage.TEST and any(r.stage is Stage.DEPLOY and r.outcome is not Outcome.PASSED for r in run.results):
            run.results.append(skipped(stack, stage, "deploy did not succeed", console))
        elif stage is Stage.DESTROY and options.keep:
            run.results.append(skipped(stack, stage, "--keep: the stack stays deployed", console))
        else:
            clock = clocks.pop(stage, None) or StageClock(console, stack, stage)
            stage_run = {Stage.DEPLOY: deploy, Stage.TEST: test, Stage.DESTROY: destroy}[stage]
            run.results.append(stage_run(stack, handle, options, clock))
    if options.reports is not None:
        for result in run.results:
            path = write_report(options.reports, result.stage, stack, result.cases)
            console.line(stack, f"{result.stage}: report {path}")
    return run


def deploy(stack: str, handle: PipelineStack, options: PipelineOptions, clock: StageClock) -> StageResult:
    try:
        for key, value in options.config.items():
            clock.echo(f"config: {key}")
            handle.set_config(key, value)
        handle.up(clock.echo)
    except Exception as e:
        return clock.finish(Outcome.FAILED, summary_of(e), [stage_case(stack, clock, Outcome.FAILED, e)])
    return clock.finish(Outcome.PASSED, "", [stage_case(stack, clock, Outcome.PASSED)])


def test(stack: str, handle: PipelineStack, options: PipelineOptions, clock: StageClock) -> StageResult:
    try:
        outputs = handle.outputs()
    except Exception as e:
        return clock.finish(Outcome.ERROR, f"cannot read the stack outputs: {summary_of(e)}", [stage_case(stack, clock, Outcome.ERROR, e)])
    try:
        report = parse_connectivity(outputs, stack)
    except CheckNotRun as e:
        case = Case(f"{stack}.connectivity", "connectivity", Outcome.ERROR, str(e))
        return clock.finish(Outcome.ERROR, str(e), [case])
    for router, target in report.unreachable_pairs:
        clock.echo(f"unreachable: {router} -> {target}")
    for problem in report.problems:
        clock.echo(f"no result from {problem.router}: {problem.reason}")
    cases = connectivity_cases(stack, report)
    pairs = report.unreachable_pairs
    pinged = sum(len(check.results) for check in report.routers)
    if pairs:
        listed = ", ".join(f"{r} -> {t}" for r, t in pairs[:5]) + (", ..." if len(pairs) > 5 else "")
        return clock.finish(Outcome.FAILED, f"{len(pairs)} of {pinged} pairs unreachable: {listed}", cases)
    if report.problems:
        names = ", ".join(p.router for p in report.problems)
        return clock.finish(Outcome.ERROR, f"no usable check result from {names}", cases)
    return clock.finish(Outcome.PASSED, f"{pinged} pairs reachable from {len(report.routers)} routers", cases)


def connectivity_cases(stack: str, report: ConnectivityReport) -> list[Case]:
    """One testcase per (router, target) pair; one error case per router without a usable result."""
    cases: list[Case] = []
    for check in report.routers:
        for target, ok in check.results.items():
            outcome = Outcome.PASSED if ok else Outcome.FAILED
            message = "" if ok else f"{check.router} cannot reach {target}"
            cases.append(Case(f"{stack}.connectivity.{check.router}", f"{check.router} -> {target}", outcome, message))
    for problem in report.problems:
        cases.append(Case(f"{stack}.connectivity.{problem.router}", f"{problem.router} check", Outcome.ERROR, problem.reason))
    return cases


def destroy(stack: str, handle: PipelineStack, options: PipelineOptions, clock: StageClock) -> StageResult:
    try:
        handle.destroy(clock.echo)
    except Exception as e:
        cases = [stage_case(stack, clock, Outcome.FAILED, e)]
        if options.remove:
            cases.append(Case(stack, "remove", Outcome.SKIPPED, "destroy did not succeed: the stack is kept"))
        return clock.finish(Outcome.FAILED, summary_of(e), cases)
    cases = [stage_case(stack, clock, Outcome.PASSED)]
    if not options.remove:
        return clock.finish(Outcome.PASSED, "", cases)
    try:
        handle.remove()
    except Exception as e:
        cases.append(Case(stack, "remove", Outcome.FAILED, summary_of(e), detail=str(e)))
        return clock.finish(Outcome.FAILED, f"destroyed, but the stack could not be removed: {summary_of(e)}", cases)
    clock.echo("stack removed")
    cases.append(Case(stack, "remove", Outcome.PASSED))
    return clock.finish(Outcome.PASSED, "", cases)


def stage_case(stack: str, clock: StageClock, outcome: Outcome, error: Exception | None = None) -> Case:
    message = summary_of(error) if error is not None else ""
    detail = str(error) if error is not None else ""
    return Case(stack, str(clock.stage), outcome, message, detail, time.monotonic() - clock.started, list(clock.output))


def summary_of(error: BaseException) -> str:
    """One line for a failure: the last `error:` line of a Pulumi command's output, else the exception's last line."""
    lines = [re.sub(r"^(?:stdout|stderr): ", "", line.strip()) for line in str(error).splitlines() if line.strip()]
    flagged = [line for line in lines if line.lower().startswith("error:")]
    text = (flagged or lines or [type(error).__name__])[-1]
    return text if len(text) <= 300 else text[:297] + "..."
