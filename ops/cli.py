"""`python -m ops`: deploy -> test -> destroy Pulumi stacks, in parallel, with JUnit reports.

    python -m ops run     --stacks dev,aws-gcp [--jobs 2] [--keep] [--remove] [--config KEY=VALUE ...]
    python -m ops deploy  --stacks dev [--config KEY=VALUE ...]
    python -m ops test    --stacks dev
    python -m ops destroy --stacks dev [--remove]

Every command also takes --work-dir (the Pulumi project, default .) and --reports (default build/reports).
Exit status: 0 every stage passed (or was skipped by --keep); 1 a stage failed; 2 bad input, found before any
stage runs.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

from ops.console import Console, wants_colour
from ops.pipeline import ALL_STAGES, PipelineOptions, Stage, exit_status, run_pipeline
from ops.stack import StackSource

STACK_NAME = re.compile(r"^(?:[A-Za-z0-9_.-]+/){0,2}[A-Za-z0-9_.-]+$")
CONFIG_KEY = re.compile(r"^[A-Za-z0-9_.:-]+$")
COMMAND_STAGES: Mapping[str, tuple[Stage, ...]] = {
    "run": ALL_STAGES,
    "deploy": (Stage.DEPLOY,),
    "test": (Stage.TEST,),
    "destroy": (Stage.DESTROY,),
}


class UsageError(Exception):
    """Bad input, reported before any stage runs."""


def positive_jobs(text: str) -> int:
    try:
        jobs = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if jobs < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {jobs}")
    return jobs


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--stacks", action="append", required=True, metavar="S[,S...]", help="stacks to drive (comma-separated, repeatable)"
    )
    common.add_argument("--jobs", type=positive_jobs, default=2, metavar="N", help="stacks driven at once (default 2)")
    common.add_argument("--work-dir", type=Path, default=Path("."), metavar="DIR", help="the Pulumi project directory (default .)")
    common.add_argument(
        "--reports", type=Path, default=Path("build/reports"), metavar="DIR", help="JUnit reports go here (default build/reports)"
    )
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument(
        "--config", action="append", default=[], metavar="KEY=VALUE", help="plain config value set on each stack before deploy (repeatable)"
    )
    remove = argparse.ArgumentParser(add_help=False)
    remove.add_argument("--remove", action="store_true", help="after a successful destroy, remove the stack and its history")

    parser = argparse.ArgumentParser(prog="python -m ops", description="Deploy, test and destroy Pulumi stacks, with JUnit reports.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", parents=[common, config, remove], help="deploy -> test -> destroy (destroy also after a failure)")
    run.add_argument("--keep", action="store_true", help="leave the stacks deployed, even after a failure")
    commands.add_parser("deploy", parents=[common, config], help="pulumi up")
    commands.add_parser("test", parents=[common], help="read the stack's connectivity output; fail on any unreachable pair")
    commands.add_parser("destroy", parents=[common, remove], help="pulumi destroy (and with --remove, pulumi stack rm)")
    return parser


def stack_names(values: Sequence[str]) -> list[str]:
    stacks = [name.strip() for value in values for name in value.split(",") if name.strip()]
    if not stacks:
        raise UsageError("--stacks names no stack")
    for name in stacks:
        if not STACK_NAME.match(name):
            raise UsageError(f"not a stack name: {name!r}")
    duplicates = sorted({name for name in stacks if stacks.count(name) > 1})
    if duplicates:
        raise UsageError(f"stack named twice: {', '.join(duplicates)}")
    return stacks


def check_project(work_dir: Path, stacks: Sequence[str]) -> None:
    """The project file and one stack file per stack, so a typo stops the run before any stage."""
    if not work_dir.is_dir():
        raise UsageError(f"--work-dir {work_dir}: no such directory")
    if not any((work_dir / name).is_file() for name in ("Pulumi.yaml", "Pulumi.yml")):
        raise UsageError(f"--work-dir {work_dir}: no Pulumi.yaml (not a Pulumi project directory)")
    known = sorted(p.name.split(".")[1] for p in work_dir.glob("Pulumi.*.y*ml") if p.name.count(".") == 2)
    for stack in stacks:
        short = stack.rsplit("/", 1)[-1]
        if not any((work_dir / f"Pulumi.{short}.{ext}").is_file() for ext in ("yaml", "yml")):
            raise UsageError(
                f"unknown stack {stack!r}: no Pulumi.{short}.yaml in {work_dir} (stack files there: {', '.join(known) or 'none'})"
            )


def config_values(pairs: Sequence[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not CONFIG_KEY.match(key):
            raise UsageError(f"--config {pair!r}: expected KEY=VALUE")
        values[key] = value
    return values


def options_from(args: argparse.Namespace) -> tuple[list[str], PipelineOptions]:
    stacks = stack_names(args.stacks)
    check_project(args.work_dir, stacks)
    options = PipelineOptions(
        stages=COMMAND_STAGES[args.command],
        jobs=args.jobs,
        keep=getattr(args, "keep", False),
        remove=getattr(args, "remove", False),
        config=config_values(getattr(args, "config", [])),
        reports=args.reports,
    )
    return stacks, options


def main(
    argv: Sequence[str] | None = None,
    source: StackSource | None = None,
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Parse, check the input, drive the stacks; the exit status. `source` replaces the Pulumi layer in tests."""
    out = stream or sys.stdout
    args = build_parser().parse_args(argv)
    try:
        stacks, options = options_from(args)
        if source is None:
            source = pulumi_source(args.work_dir, wants_colour(out, environ or os.environ))
    except UsageError as e:
        print(f"python -m ops: error: {e}", file=sys.stderr)
        return 2
    console = Console(out, wants_colour(out, environ or os.environ))
    return exit_status(run_pipeline(stacks, source, options, console))


def pulumi_source(work_dir: Path, colour: bool) -> StackSource:
    """The Automation API layer, once the Pulumi CLI it runs is known to be there."""
    from ops.pulumi_stack import AutomationStackSource, find_pulumi_cli

    if find_pulumi_cli() is None:
        raise UsageError(
            "the Pulumi CLI (`pulumi`) is not on PATH: the Automation API runs it. "
            "Install it (https://www.pulumi.com/docs/iac/download-install/; in GitHub Actions: pulumi/actions)"
        )
    return AutomationStackSource(work_dir.resolve(), colour)
