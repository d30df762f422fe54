"""Where the lab's results go: each run of a verb in a folder of its own, the well-known paths on the latest.

    lab-results/runs/20261129T101502Z-check/check.{json,txt,xml}     one folder per run, never overwritten
    lab-results/check.json -> runs/20261129T101502Z-check/check.json  the latest run's files (relative symlinks)
    lab-results/latest -> runs/20261129T101502Z-check                 the latest run's folder

This layout applies when a verb writes to the default results folder; `--results DIR` writes into DIR as given
(the caller chose the place). Nothing is pruned: a regular file found where a link now goes (a result written
before runs were kept) is moved into runs/<its time>-earlier/ first, and the output says so.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

RUNS = "runs"
LATEST = "latest"


def stamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


@dataclass
class Run:
    base: Path
    """The results folder (lab-results)."""
    dir: Path
    """This run's folder (lab-results/runs/<UTC time>-<verb>)."""
    linked: list[Path] = field(default_factory=list)
    moved: list[Path] = field(default_factory=list)


def start_run(base: Path, command: str, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> Run:
    """Make this run's folder: runs/<UTC time>-<verb>, with -2, -3 ... when one run per second is not enough."""
    runs = base / RUNS
    runs.mkdir(parents=True, exist_ok=True)
    name = f"{stamp(now())}-{command}"
    for n in range(1, 1000):
        d = runs / (name if n == 1 else f"{name}-{n}")
        try:
            d.mkdir()
        except FileExistsError:
            continue
        return Run(base, d)
    raise FileExistsError(f"{runs / name}: too many runs with that name")


def _link(target: str, path: Path) -> None:
    """path -> target, replacing an existing link atomically."""
    tmp = path.with_name(f".{path.name}.lab-tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, path)


def _keep_earlier(run: Run, path: Path) -> None:
    """Move a result that is not a link (from before runs were kept) into runs/<its time>-earlier/."""
    when = datetime.fromtimestamp(path.lstat().st_mtime, UTC)
    dest_dir = run.base / RUNS / f"{stamp(when)}-earlier"
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / path.name
    n = 2
    while dest.exists() or dest.is_symlink():
        dest = dest_dir / f"{path.name}.{n}"
        n += 1
    os.replace(path, dest)
    run.moved.append(dest)


def finish_run(run: Run) -> Run:
    """Point the well-known paths at this run's files (an empty run folder is removed: that run wrote nothing)."""
    entries = sorted(run.dir.iterdir()) if run.dir.is_dir() else []
    if not entries:
        if run.dir.is_dir():
            run.dir.rmdir()
        return run
    rel = Path(RUNS) / run.dir.name
    for entry in entries:
        if entry.name in (RUNS, LATEST):
            continue  # never shadow the layout itself
        well_known = run.base / entry.name
        if well_known.exists() and not well_known.is_symlink():
            _keep_earlier(run, well_known)
        _link(str(rel / entry.name), well_known)
        run.linked.append(well_known)
    _link(str(rel), run.base / LATEST)
    return run


def describe(run: Run, cwd: Path | None = None) -> list[str]:
    """What to tell the user about where this run's results are."""
    here = Path.cwd() if cwd is None else cwd

    def show(p: Path) -> str:
        try:
            return str(p.relative_to(here))
        except ValueError:
            return str(p)

    if not run.linked:
        return []
    names = [p.name for p in run.linked]
    lines = [
        f"results of this run: {show(run.dir)}/ ({', '.join(names)}); as the latest run, also at "
        f"{show(run.base)}/{names[0] if len(names) == 1 else '{' + ','.join(names) + '}'} and {show(run.base / LATEST)}/ (links)"
    ]
    if run.moved:
        lines.append(f"kept earlier results found in their place: {', '.join(show(p) for p in run.moved)}")
    return lines
