"""What the lab benchmarks share: running `python -m lab` verbs as separate processes (timed, logged), making sure
they never touch a lab they did not start, stack files of their own, and the machine description.

A generated stack (write_stack_file) is brought up by its path, `python -m lab up --stack bench/results/stacks/
Pulumi.NAME.yaml`: the lab records the file, and its later verbs (check, down, ...) find it from there.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from lab.privilege import become_root
from lab.progress import Progress

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
STACKS = RESULTS / "stacks"


@dataclass
class LabRun:
    argv: list[str]
    rc: int
    seconds: float
    output: str

    @property
    def ok(self) -> bool:
        return self.rc == 0


def lab(
    args: Sequence[str], log: Path | None = None, timeout: float = 1800, echo: bool = False, progress: Progress | None = None
) -> LabRun:
    """Run one lab verb (`python -m lab ARGS`) in its own process; wall time, exit code and output (appended to `log`).
    With `progress`, the verb's latest line is its transient status (in place on a terminal, nothing otherwise)."""
    argv = [sys.executable, "-m", "lab", *args]
    started = time.monotonic()
    lines: list[str] = []
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if echo:
            print(f"    | {line.rstrip()}", flush=True)
        elif progress is not None and line.strip():
            progress.status(f"lab {args[0] if args else ''}: {line.strip()[:100]}")
    rc = proc.wait(timeout=timeout)
    took = time.monotonic() - started
    output = "".join(lines)
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a", encoding="utf-8") as f:
            f.write(f"$ {' '.join(args)}  # exit {rc}, {took:.1f} s\n{output}\n")
    return LabRun(list(args), rc, took, output)


def lab_is_absent() -> tuple[bool, str]:
    """(True, ...) only when `lab status` reports no lab and no leftovers: the benchmarks never replace a lab."""
    st = lab(["status"])
    text = st.output.strip()
    return st.rc == 0 and text.lower().startswith("no lab") and "leftovers" not in text, text


def require_no_lab() -> None:
    absent, text = lab_is_absent()
    if not absent:
        raise SystemExit(
            f"a lab exists (`python -m lab status`: {text.splitlines()[0] if text else '?'}): this benchmark brings up its own "
            "lab and never tears down one it did not start; wait for it to be downed, then run again"
        )


def require_root() -> None:
    """Root, or this benchmark's command run again under sudo (before it has done anything)."""
    become_root("this benchmark", "the lab builds network namespaces")


def seconds_reported(output: str, pattern: str) -> float | None:
    """A duration the lab prints itself, e.g. 'lab up in 42.1 s'."""
    m = re.search(pattern + r"\s+([0-9.]+)\s*s", output)
    return float(m.group(1)) if m else None


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "host": platform.node(),
        "kernel": platform.release(),
        "arch": platform.machine(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "mem_total_mib": round(meminfo().get("MemTotal", 0) / 1024),
        "python": platform.python_version(),
    }


def stamp() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def meminfo() -> dict[str, int]:
    """/proc/meminfo in KiB."""
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            out[key] = int(parts[0])
    return out


def median(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def write_json(name: str, report: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return path


def fmt(value: float | None, spec: str = ".1f") -> str:
    """format(value, spec), or a dash as wide as the spec asks for."""
    if value is None:
        width = re.match(r"\d*", spec)
        return "-".rjust(int(width.group(0)) if width and width.group(0) else 1)
    return format(value, spec)


# --------------------------------------------------------------------------- stack files outside the root


def write_stack_file(raw: dict[str, Any], name: str, directory: Path = STACKS) -> Path:
    """A raw config (keys without the project prefix) as Pulumi.<name>.yaml in `directory`."""
    from multicloud_overlay.overlay.config import PROJECT

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"Pulumi.{name}.yaml"
    doc = {"config": {f"{PROJECT}:{k}": v for k, v in raw.items()}}
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def proc_pss_rss(pid: int) -> tuple[int, int]:
    """(Pss, Rss) of a process in KiB (0, 0 once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0, 0
    vals = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if key in ("Pss", "Rss") and parts:
            vals[key] = int(parts[0])
    return vals.get("Pss", 0), vals.get("Rss", 0)


def which_or_exit(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise SystemExit(f"{tool} is not installed: apt-get install -y {package}")
    return path
