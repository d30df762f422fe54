"""How the Pulumi program scales with the number of sites (under mocks: no cloud, no engine).

For 2, 6, 25, 50 and 100 sites spread over the six platforms, each run in a fresh interpreter: wall time, peak
memory, resources registered, and the longest dependency chain of the resource graph (every site deploys in
parallel, so it must not grow with the number of sites). Sizes are interleaved over repetitions (A B C … A B C)
so that the machine's noise spreads over all of them; the report gives medians and the fitted exponent of time
against sites (1.0 = linear).

    .venv/bin/python -m bench.program_scale [--sizes 2,6,25,50,100] [--repeat 3] [--against DIR]

--against DIR also runs another checkout of the project (`git worktree add DIR <commit>`) at each size, interleaved
with this one, and reports this one's time as a ratio of that one's: a change measured in one run.

Writes bench/results/program_scale.json and .png.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lab.progress import Progress

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def longest_chain(resources: list[Any]) -> int:
    """Longest path (in resources) through the graph of dependencies and parents."""
    edges: dict[str, set[str]] = {}
    for r in resources:
        deps = set(r.depends_on)
        if r.parent and not r.parent.endswith("pulumi:pulumi:Stack::multicloud-overlay-bench"):
            deps.add(r.parent)
        edges[r.urn] = {d for d in deps if d != r.urn}
    memo: dict[str, int] = {}

    def depth(urn: str, seen: frozenset[str] = frozenset()) -> int:
        if urn in memo:
            return memo[urn]
        if urn in seen:
            raise ValueError(f"dependency cycle through {urn}")
        d = 1 + max((depth(x, seen | {urn}) for x in edges.get(urn, ()) if x in edges), default=0)
        memo[urn] = d
        return d

    sys.setrecursionlimit(100_000)
    return max((depth(u) for u in edges), default=0)


def one(n: int) -> dict[str, Any]:
    """Run the program once with n sites (in this interpreter) and measure it."""
    sys.path.insert(0, str(ROOT))
    from bench.configs import generated_stack
    from tests.harness import run_program

    raw = generated_stack(n)
    started = time.perf_counter()
    run = run_program(raw, stack="bench")
    wall = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "sites": n,
        "wall_s": wall,
        "peak_rss_mib": peak_kib / 1024,
        "resources": len(run.resources),
        "custom_resources": sum(1 for r in run.resources if r.custom),
        "longest_chain": longest_chain(run.resources),
    }


def exponent(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of log(y) against log(x)."""
    xs = [math.log(x) for x, _ in points]
    ys = [math.log(y) for _, y in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="2,6,25,50,100")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--against", type=Path, help="another checkout of the project to time at each size, interleaved")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one)))
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    roots = {"this": ROOT} | ({"against": args.against.resolve()} if args.against else {})
    for root in roots.values():
        if not (root / "bench" / "program_scale.py").is_file():
            print(f"--against {root}: not a checkout of this project (no bench/program_scale.py there)", file=sys.stderr)
            return 2
    samples: dict[str, dict[int, list[dict[str, Any]]]] = {name: {n: [] for n in sizes} for name in roots}
    progress = Progress(total=args.repeat * len(sizes) * len(roots))
    for rep in range(args.repeat):
        for n in sizes:
            for name, root in roots.items():
                progress.status(f"repeat {rep + 1}/{args.repeat}: the program ({name}) with {n} sites under mocks")
                proc = subprocess.run(
                    [sys.executable, "-m", "bench.program_scale", "--one", str(n)], cwd=root, capture_output=True, text=True, check=False
                )
                if proc.returncode != 0:
                    print(proc.stdout, proc.stderr, file=sys.stderr)
                    return 1
                sample = json.loads(proc.stdout.strip().splitlines()[-1])
                samples[name][n].append(sample)
                progress.step(
                    f"repeat {rep + 1}/{args.repeat} {name:>7} {n:>3} sites: {sample['wall_s']:6.2f} s, "
                    f"{sample['peak_rss_mib']:6.0f} MiB, {sample['resources']} resources, longest chain {sample['longest_chain']}"
                )
    progress.finish()
    rows = []
    for n in sizes:
        s = samples["this"][n]
        row: dict[str, Any] = {
            "sites": n,
            "wall_s_median": statistics.median(x["wall_s"] for x in s),
            "peak_rss_mib_median": statistics.median(x["peak_rss_mib"] for x in s),
            "resources": s[0]["resources"],
            "resources_per_site": s[0]["resources"] / n,
            "longest_chain": s[0]["longest_chain"],
        }
        if "against" in samples:
            other = statistics.median(x["wall_s"] for x in samples["against"][n])
            row |= {"against_wall_s_median": other, "time_ratio": row["wall_s_median"] / other}
        rows.append(row)
    large = [(r["sites"], r["wall_s_median"]) for r in rows if r["sites"] >= 6]
    report = {
        "benchmark": "program_scale",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} {platform.python_version()}",
        "rows": rows,
        "time_exponent_6_plus": exponent(large) if len(large) >= 2 else None,
        "longest_chain_constant": len({r["longest_chain"] for r in rows}) == 1,
        "against": str(roots["against"]) if "against" in roots else None,
        "samples": samples,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "program_scale.json").write_text(json.dumps(report, indent=1))
    chart(rows)
    against = "against" in roots
    print(f"\n{'sites':>5} {'time s':>8} {'MiB':>6} {'resources':>9} {'per site':>8} {'chain':>5}" + ("  against s  ratio" if against else ""))
    for r in rows:
        print(
            f"{r['sites']:>5} {r['wall_s_median']:8.2f} {r['peak_rss_mib_median']:6.0f} {r['resources']:>9} "
            f"{r['resources_per_site']:8.1f} {r['longest_chain']:>5}"
            + (f"  {r['against_wall_s_median']:9.2f}  {r['time_ratio']:5.2f}" if against else "")
        )
    print(f"time ~ sites^{report['time_exponent_6_plus']:.2f}; longest dependency chain constant: {report['longest_chain_constant']}")
    print(f"wrote {RESULTS / 'program_scale.json'} and .png")
    return 0


def chart(rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    xs = [r["sites"] for r in rows]
    a.plot(xs, [r["wall_s_median"] for r in rows], "o-", label="wall time (s)")
    a.set_xlabel("sites")
    a.set_ylabel("seconds (median)")
    a.set_title("Program under mocks: time")
    b.plot(xs, [r["resources"] for r in rows], "o-", label="resources")
    b.plot(xs, [r["longest_chain"] for r in rows], "s-", label="longest dependency chain")
    b.set_xlabel("sites")
    b.set_title("Resources and dependency depth")
    b.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "program_scale.png", dpi=100)


if __name__ == "__main__":
    sys.exit(main())
