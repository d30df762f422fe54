"""Check results as a text matrix, JSON and JUnit XML (pure, no root)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class PingResult:
    src: str
    dst: str
    family: int
    target: str
    ok: bool
    attempts: int = 1


@dataclass(frozen=True)
class Probe:
    """One named check besides the matrix (MTU probe, hub transit proof)."""

    suite: str
    name: str
    ok: bool
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


def cell(v4: bool | None, v6: bool | None) -> str:
    """'+' both families answer, '4'/'6' only that family answers, 'x' neither, ' ' not tested."""
    if v4 is None and v6 is None:
        return " "
    if v4 and v6:
        return "+"
    if v4:
        return "4"
    if v6:
        return "6"
    return "x"


def matrix_text(names: Sequence[str], results: Sequence[PingResult]) -> str:
    """Rows are sources, columns destinations (numbered; the row label carries the number)."""
    got: dict[tuple[str, str, int], bool] = {(r.src, r.dst, r.family): r.ok for r in results}
    width = max(len(n) for n in names) if names else 4
    idx_w = len(str(len(names)))
    header_digits = [str(i + 1).rjust(idx_w) for i in range(len(names))]
    lines = []
    for row in range(idx_w):
        lines.append(" " * (width + idx_w + 3) + " ".join(d[row] for d in header_digits))
    for i, src in enumerate(names):
        cells = [cell(got.get((src, dst, 4)), got.get((src, dst, 6))) if dst != src else "·" for dst in names]
        lines.append(f"{str(i + 1).rjust(idx_w)} {src.ljust(width)}  " + " ".join(cells))
    lines.append("legend: + IPv4 and IPv6 answer, 4 / 6 only that family, x neither, · self")
    return "\n".join(lines)


def summary(results: Sequence[PingResult], probes: Sequence[Probe]) -> dict[str, Any]:
    passed = sum(r.ok for r in results)
    return {
        "pairs": len(results),
        "passed": passed,
        "failed": len(results) - passed,
        "probes": len(probes),
        "probes_passed": sum(p.ok for p in probes),
        "ok": passed == len(results) and all(p.ok for p in probes),
    }


def to_json(names: Sequence[str], results: Sequence[PingResult], probes: Sequence[Probe], extra: dict[str, Any]) -> str:
    doc = {
        **extra,
        "summary": summary(results, probes),
        "endpoints": list(names),
        "failures": [asdict(r) for r in results if not r.ok],
        "results": [asdict(r) for r in results],
        "probes": [asdict(p) for p in probes],
    }
    return json.dumps(doc, indent=1) + "\n"


def to_junit(results: Sequence[PingResult], probes: Sequence[Probe], seconds: float = 0.0) -> str:
    root = ET.Element("testsuites", name="lab check")
    suites: dict[str, list[tuple[str, str, bool, str]]] = {}
    for r in results:
        suites.setdefault("matrix", []).append(
            (
                f"lab.matrix.{r.src}",
                f"{r.src} -> {r.dst} IPv{r.family}",
                r.ok,
                f"{r.target} unreachable from {r.src} after {r.attempts} attempt(s)",
            )
        )
    for p in probes:
        suites.setdefault(p.suite, []).append((f"lab.{p.suite}", p.name, p.ok, p.detail))
    total = failures = 0
    for suite_name, cases in suites.items():
        failed = sum(1 for c in cases if not c[2])
        suite = ET.SubElement(root, "testsuite", name=suite_name, tests=str(len(cases)), failures=str(failed), errors="0", skipped="0")
        if suite_name == "matrix":
            suite.set("time", f"{seconds:.3f}")
        for classname, name, ok, detail in cases:
            case = ET.SubElement(suite, "testcase", classname=classname, name=name)
            if not ok:
                ET.SubElement(case, "failure", message=detail).text = detail
            elif suite_name != "matrix":
                ET.SubElement(case, "system-out").text = detail
        total += len(cases)
        failures += failed
    root.set("tests", str(total))
    root.set("failures", str(failures))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


HEADER_KEYS = ("stack", "hub", "protocol", "topology", "encryption", "mtu")
"""What the first line of the text report says about the lab (from the JSON's extra keys)."""


def write(
    results_dir: Path,
    stem: str,
    names: Sequence[str],
    results: Sequence[PingResult],
    probes: Sequence[Probe],
    extra: dict[str, Any],
    seconds: float = 0.0,
) -> list[Path]:
    results_dir.mkdir(parents=True, exist_ok=True)
    paths = [results_dir / f"{stem}.json", results_dir / f"{stem}.xml", results_dir / f"{stem}.txt"]
    paths[0].write_text(to_json(names, results, probes, extra), encoding="utf-8")
    paths[1].write_text(to_junit(results, probes, seconds), encoding="utf-8")
    header = ", ".join(f"{k} {extra[k]}" for k in HEADER_KEYS if k in extra)
    text = (
        (header + "\n\n" if header else "")
        + matrix_text(names, results)
        + "\n\n"
        + "\n".join(f"{'PASS' if p.ok else 'FAIL'} {p.suite}: {p.name}: {p.detail}" for p in probes)
    )
    paths[2].write_text(text + "\n", encoding="utf-8")
    return paths
