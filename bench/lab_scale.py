"""How the lab scales with the number of sites: bring-up time, check time, teardown time and memory.

Sizes: 2 sites (`--stack dev --sites aws,gcp`), 6 (the dev stack), and any other n as a generated stack
(bench/configs.py generated_stack(n): sites s1..sn over the platforms in turn, hub s1) written to
bench/results/stacks/Pulumi.bench-scale<n>.yaml and brought up with `python -m lab up --stack <that file>` (the lab
records the file: its later verbs find it). Sizes are interleaved over repetitions (2 6 12 2 6 12 …), each `up` →
`check` → measure → `down`.

Memory, measured after the check with the lab up:
- MemAvailable (from /proc/meminfo) just before `up` minus just after the check: what the lab costs the machine
  (includes page cache the kernel would reclaim, e.g. the per-router Docker image copies the vfs driver makes);
- RSS and PSS (smaps_rollup) of every process of the lab: each router's dockerd and the containerd it starts, the
  container shims, and what runs in the containers;
- the lab's state directory on disk (per-router Docker data roots).

    sudo .venv/bin/python -m bench.lab_scale [--sizes 2,6,12] [--repeat 2]

Writes bench/results/lab_scale.json and .png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench.labrun import (
    RESULTS,
    STACKS,
    fmt,
    lab,
    machine,
    median,
    meminfo,
    proc_pss_rss,
    require_no_lab,
    require_root,
    seconds_reported,
    stamp,
    write_json,
    write_stack_file,
)
from lab.progress import Progress

NAME = "lab_scale"
SETTLE = 3.0


def lab_args(n: int) -> list[str]:
    """`up` arguments for n sites: the dev stack or a subset of it, else a generated stack file."""
    if n == 2:
        return ["--stack", "dev", "--sites", "aws,gcp"]
    if n == 6:
        return ["--stack", "dev"]
    from bench.configs import generated_stack

    return ["--stack", str(write_stack_file(generated_stack(n), f"bench-scale{n}", STACKS))]


def lab_pids(state_dir: Path, namespaces: list[str]) -> dict[int, str]:
    """pid -> command name of every process of the lab: started from its state dir, or living in one of its namespaces."""
    from lab import processes

    pids = set(processes.pids_mentioning(str(state_dir) + "/")) | set(processes.pids_in_netns(processes.netns_inodes(namespaces)))
    found = {pid: processes.command_name(pid) for pid in sorted(pids - {os.getpid()})}
    return {pid: comm for pid, comm in found.items() if comm}


def group(comm: str) -> str:
    if comm == "dockerd":
        return "dockerd"
    if comm == "containerd":
        return "containerd"
    if comm.startswith("containerd-shim"):
        return "shims"
    return "other"


def du_kib(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                st = os.lstat(os.path.join(root, f))
            except OSError:
                continue
            total += st.st_blocks * 512
    return total // 1024


def memory(avail_before_kib: int) -> dict[str, Any]:
    from lab.state import STATE_DIR, load

    st = load()
    namespaces = (st.namespaces + st.container_netns) if st else []
    pids = lab_pids(STATE_DIR, namespaces)
    groups: dict[str, dict[str, float]] = {}
    for pid, comm in pids.items():
        pss, rss = proc_pss_rss(pid)
        g = groups.setdefault(group(comm), {"processes": 0, "rss_mib": 0.0, "pss_mib": 0.0})
        g["processes"] += 1
        g["rss_mib"] += rss / 1024
        g["pss_mib"] += pss / 1024
    avail_after = meminfo().get("MemAvailable", 0)
    return {
        "mem_available_delta_mib": round((avail_before_kib - avail_after) / 1024, 1),
        "processes": len(pids),
        "rss_mib": round(sum(g["rss_mib"] for g in groups.values()), 1),
        "pss_mib": round(sum(g["pss_mib"] for g in groups.values()), 1),
        "docker_rss_mib": round(sum(g["rss_mib"] for k, g in groups.items() if k in ("dockerd", "containerd")), 1),
        "by_process": {k: {kk: round(vv, 1) for kk, vv in v.items()} for k, v in sorted(groups.items())},
        "state_dir_mib": round(du_kib(STATE_DIR) / 1024, 1),
        "dockerd": len(st.dockerd) if st else 0,
        "containers": len(st.container_netns) if st else 0,
    }


def check_details(path: Path) -> dict[str, Any]:
    """Pings and probes passed, and the names of failed probes, from the check's JSON."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    s = doc.get("summary", {})
    return {
        "check_pings": f"{s.get('passed')}/{s.get('pairs')}",
        "check_probes": f"{s.get('probes_passed')}/{s.get('probes')}",
        "check_failed_probes": [p.get("name") for p in doc.get("probes", []) if not p.get("ok")],
    }


def one(n: int, rep: int, log: Path) -> dict[str, Any]:
    args = lab_args(n)
    time.sleep(SETTLE)
    avail_before = meminfo().get("MemAvailable", 0)
    sample: dict[str, Any] = {"sites": n, "rep": rep, "up_args": args}
    try:
        up = lab(["up", *args, "--encryption", "none"], log=log)
        sample.update(up_ok=up.ok, up_wall_s=round(up.seconds, 2), up_reported_s=seconds_reported(up.output, "lab up in"))
        if not up.ok:
            sample["error"] = up.output.strip().splitlines()[-3:]
            return sample
        check_dir = RESULTS / NAME / f"check-{n}-r{rep + 1}"
        ck = lab(["check", "--results", str(check_dir)], log=log)
        sample.update(
            check_pass=ck.ok,
            check_wall_s=round(ck.seconds, 2),
            check_reported_s=seconds_reported(ck.output, "probes passed in"),
            **check_details(check_dir / "check.json"),
        )
        time.sleep(SETTLE)
        sample["memory"] = memory(avail_before)
    finally:
        down = lab(["down"], log=log)
        sample.update(down_ok=down.ok, down_wall_s=round(down.seconds, 2))
        time.sleep(SETTLE)
        sample["mem_available_after_down_delta_mib"] = round((avail_before - meminfo().get("MemAvailable", 0)) / 1024, 1)
    return sample


def summarise(sizes: list[int], samples: dict[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        s = [x for x in samples[n] if x.get("up_ok")]
        mem = [x["memory"] for x in s if "memory" in x]
        rows.append(
            {
                "sites": n,
                "runs": len(samples[n]),
                "up_ok": len(s),
                "check_pass": sum(1 for x in s if x.get("check_pass")),
                "check_pings": sorted({x["check_pings"] for x in s if "check_pings" in x}),
                "check_failed_probes": sorted({p for x in s for p in x.get("check_failed_probes", [])}),
                "up_s_median": median([x["up_wall_s"] for x in s]),
                "check_s_median": median([x.get("check_wall_s") for x in s]),
                "down_s_median": median([x.get("down_wall_s") for x in samples[n]]),
                "mem_available_delta_mib_median": median([m["mem_available_delta_mib"] for m in mem]),
                "rss_mib_median": median([m["rss_mib"] for m in mem]),
                "pss_mib_median": median([m["pss_mib"] for m in mem]),
                "docker_rss_mib_median": median([m["docker_rss_mib"] for m in mem]),
                "state_dir_mib_median": median([m["state_dir_mib"] for m in mem]),
                "processes": mem[0]["processes"] if mem else None,
                "dockerd": mem[0]["dockerd"] if mem else None,
                "containers": mem[0]["containers"] if mem else None,
            }
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'sites':>5} {'up s':>6} {'check s':>7} {'down s':>6} {'check':>6} {'pings ok':>11} {'MemAvail Δ MiB':>14} {'PSS MiB':>8} "
        f"{'RSS MiB':>8} {'docker RSS':>10} {'state MiB':>9} {'procs':>5}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['sites']:>5} {fmt(r['up_s_median'], '6.1f')} {fmt(r['check_s_median'], '7.1f')} {fmt(r['down_s_median'], '6.1f')} "
            f"{r['check_pass']:>3}/{r['runs']:<2} {','.join(r['check_pings']) or '-':>11} {fmt(r['mem_available_delta_mib_median'], '14.0f')} {fmt(r['pss_mib_median'], '8.0f')} "
            f"{fmt(r['rss_mib_median'], '8.0f')} {fmt(r['docker_rss_mib_median'], '10.0f')} {fmt(r['state_dir_mib_median'], '9.0f')} "
            f"{r['processes'] if r['processes'] is not None else '-':>5}"
        )
    return "\n".join(lines)


def chart(rows: list[dict[str, Any]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    xs = [r["sites"] for r in rows]
    for key, label in (("up_s_median", "up"), ("check_s_median", "check"), ("down_s_median", "down")):
        a.plot(xs, [r[key] or 0 for r in rows], "o-", label=label)
    a.set_xlabel("sites")
    a.set_ylabel("seconds (median)")
    a.set_title("lab verbs: wall time")
    a.legend()
    for key, label in (
        ("mem_available_delta_mib_median", "MemAvailable drop"),
        ("pss_mib_median", "PSS of lab processes"),
        ("docker_rss_mib_median", "RSS dockerd+containerd"),
    ):
        b.plot(xs, [r[key] or 0 for r in rows], "o-", label=label)
    b.set_xlabel("sites")
    b.set_ylabel("MiB (median)")
    b.set_title("memory with the lab up")
    b.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(args: argparse.Namespace, sizes: list[int], samples: dict[int, list[dict[str, Any]]], started: float) -> dict[str, Any]:
    return {
        "benchmark": NAME,
        "date": stamp(),
        "machine": machine(),
        "repeat": args.repeat,
        "sizes": sizes,
        "complete": all(len(samples[n]) == args.repeat for n in sizes),
        "containers": "docker",
        "method": (
            "wall time of each lab verb as its own process; memory after the check: MemAvailable before up minus after "
            "check, RSS/PSS (smaps_rollup) of processes started from the lab state dir or living in a lab namespace, "
            "disk used by the state dir"
        ),
        "rows": summarise(sizes, samples),
        "samples": samples,
        "wall_seconds": round(time.monotonic() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="2,6,12")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    require_root()
    require_no_lab()
    sizes = [int(s) for s in args.sizes.split(",")]
    log = RESULTS / NAME / "lab.log"
    samples: dict[int, list[dict[str, Any]]] = {n: [] for n in sizes}
    started = time.monotonic()
    stop = False
    progress = Progress(total=args.repeat * len(sizes))
    for rep in range(args.repeat):
        for n in sizes:
            progress.status(f"repeat {rep + 1}/{args.repeat}: {n} sites up, check, down")
            x = one(n, rep, log)
            samples[n].append(x)
            write_json(NAME, report(args, sizes, samples, started))  # partial results survive an interruption
            m = x.get("memory", {})
            progress.step(
                f"repeat {rep + 1}/{args.repeat} {n:>3} sites: up {fmt(x.get('up_wall_s'))} s, check {fmt(x.get('check_wall_s'))} s "
                f"({'PASS' if x.get('check_pass') else 'FAIL'}: pings {x.get('check_pings', '-')}, probes {x.get('check_probes', '-')}"
                + (f", failed: {'; '.join(x['check_failed_probes'])}" if x.get("check_failed_probes") else "")
                + f"), down {fmt(x.get('down_wall_s'))} s; "
                f"MemAvailable -{fmt(m.get('mem_available_delta_mib'), '.0f')} MiB, PSS {fmt(m.get('pss_mib'), '.0f')} MiB "
                f"({m.get('processes', '-')} processes), state dir {fmt(m.get('state_dir_mib'), '.0f')} MiB"
                + (f"; up FAILED: {x.get('error')}" if not x.get("up_ok") else "")
            )
            if not x.get("down_ok"):
                print("lab down failed: stopping", file=sys.stderr)
                stop = True
                break
        if stop:
            break
    progress.finish()
    doc = report(args, sizes, samples, started)
    path = write_json(NAME, doc)
    m = doc["machine"]
    title = f"{NAME} {doc['date']} {m['host']} ({m['cpus']} CPUs, {m['mem_total_mib']} MiB)"
    chart([r for r in doc["rows"] if r["up_ok"]], title + ("" if doc["complete"] else " (PARTIAL)"), RESULTS / f"{NAME}.png")
    print()
    print(table(doc["rows"]))
    for r in doc["rows"]:
        if r["check_failed_probes"]:
            print(f"{r['sites']} sites: failed check probes: {'; '.join(r['check_failed_probes'])}")
    print(f"\ntook {doc['wall_seconds']} s ({'complete' if doc['complete'] else 'PARTIAL'}); wrote {path} and {NAME}.png")
    return 0 if doc["complete"] and all(r["check_pass"] == r["runs"] for r in doc["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
