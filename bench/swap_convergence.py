"""How much traffic a hub swap loses, make-before-break against one step, per new hub site, in the lab.

Brings up the dev stack with VXLAN, then walks the hub round the sites: each swap is
`python -m lab swap --hub X --results DIR` (the program's order: every router prepares, the new hub switches, then
the others, then every router gets its push) or, alternately, the same with `--one-step` (every node's push at
once, the swap before make-before-break), while clients ping every 10 ms across the overlay: two spokes' clients,
and the old and the new hub's clients to the second of them. Its JSON gives lost pings, the outage, duplicate
replies and when traffic flowed again after the re-apply started; a full `python -m lab check` follows, recorded
as pass/fail. A round visits every site once and ends back at the stack's hub; rounds alternate direction, and the
mode alternates swap by swap (flipping each round), so both modes see every new hub and the same noise. The report
gives medians per mode and per new hub.

Then, the hub back where it started, the same spoke pair's path in both topologies: the topology switched in place
(make-before-break) between hub-and-spoke and full mesh, --path-rounds times in alternating order, each time 100
pings 10 ms apart (idle RTT) and a 5 s iperf3 TCP run between the two spokes' clients (IPv4). The report gives the
medians per topology and full mesh / hub path as ratios taken in the same run.

With --standby-hub SITE, the same walk with two hubs: the lab comes up with that standby, the hub walks every other
site, and the standby stays (a full mesh has no standby: no path rounds then).

    .venv/bin/python -m bench.swap_convergence [--rounds 2] [--path-rounds 3] [--standby-hub SITE]

Writes bench/results/swap_convergence.json and .png (per-swap lab outputs under bench/results/swap_convergence/);
with --standby-hub, swap_convergence_two_hubs.*.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bench.labrun import RESULTS, fmt, lab, machine, median, require_no_lab, require_root, stamp, write_json
from lab.progress import Progress

NAME = "swap_convergence"


def hub_walk(sites: list[str], start: str, rounds: int) -> list[str]:
    """New hubs in order: each round visits every other site once and returns to `start`; odd rounds go backwards."""
    others = [s for s in sites if s != start]
    walk: list[str] = []
    for r in range(rounds):
        order = others if r % 2 == 0 else list(reversed(others))
        walk += [*order, start]
    return walk


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


MODES = ("make-before-break", "one-step")


def swap_mode(i: int, rnd: int) -> str:
    """Swap i (from 1) of round rnd (from 0): modes alternate, and flip each round, so that a round of an even number
    of swaps still gives each new hub both modes over two rounds."""
    return MODES[(i + rnd) % 2]


def one_swap(i: int, rnd: int, old: str, new: str, protocol: str, out_dir: Path, log: Path, mode: str = MODES[0]) -> dict[str, Any]:
    d = out_dir / f"{i:02d}-r{rnd + 1}-{old}-to-{new}-{mode}"
    shutil.rmtree(d, ignore_errors=True)
    sw = lab(["swap", "--hub", new, "--results", str(d), *(["--one-step"] if mode == "one-step" else [])], log=log)
    doc = read_json(d / f"swap-{new}-{protocol}.json") or {}
    ping = doc.get("ping", {})
    paths = [ping, *doc.get("other_paths", [])]
    ck = lab(["check", "--results", str(d)], log=log)
    check_doc = read_json(d / "check.json") or {}
    summary = check_doc.get("summary", {})
    return {
        "index": i,
        "round": rnd + 1,
        "from": old,
        "to": new,
        "mode": mode,
        "swap_ok": sw.ok,
        "swap_wall_s": round(sw.seconds, 2),
        "apply_seconds": doc.get("apply_seconds"),
        "lost": ping.get("lost"),
        "sent": ping.get("sent"),
        "outage_ms": ping.get("outage_ms"),
        "max_gap_ms": ping.get("max_gap_ms"),
        "converged_after_s": ping.get("converged_after_s"),
        "converged": ping.get("converged"),
        "probe_path": ping.get("path"),
        "paths": len(paths),
        "lost_all_paths": sum(p.get("lost") or 0 for p in paths) if ping else None,
        "outage_ms_worst_path": max((p.get("outage_ms") or 0 for p in paths), default=None) if ping else None,
        "duplicates": sum(p.get("duplicates") or 0 for p in paths) if ping else None,
        "stages": doc.get("stages"),
        "rebuilt": doc.get("rebuilt"),
        "stale_fdb": len(doc.get("stale_fdb_removed") or []),
        "applied": bool(doc.get("applies")) and all(a.get("ok") for a in doc["applies"]),
        "check_pass": ck.ok,
        "check_wall_s": round(ck.seconds, 2),
        "check_summary": summary,
        "results_dir": str(d.relative_to(RESULTS)),
    }


def summarise(sites: list[str], swaps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for mode in MODES:
        for s in sites:
            xs = [x for x in swaps if x["to"] == s and x.get("mode", MODES[0]) == mode]
            if not xs:
                continue
            rows.append(
                {
                    "mode": mode,
                    "new_hub": s,
                    "swaps": len(xs),
                    "from": [x["from"] for x in xs],
                    "lost_median": median([x["lost"] for x in xs]),
                    "lost_all_paths_max": max((x["lost_all_paths"] for x in xs if x.get("lost_all_paths") is not None), default=None),
                    "outage_ms_median": median([x["outage_ms"] for x in xs]),
                    "outage_ms_max": max((x["outage_ms_worst_path"] for x in xs if x.get("outage_ms_worst_path") is not None), default=None),
                    "duplicates": sum(x.get("duplicates") or 0 for x in xs),
                    "converged_after_s_median": median([x["converged_after_s"] for x in xs]),
                    "apply_seconds_median": median([x["apply_seconds"] for x in xs]),
                    "swap_ok": sum(1 for x in xs if x["swap_ok"]),
                    "check_pass": sum(1 for x in xs if x["check_pass"]),
                    "check_wall_s_median": median([x["check_wall_s"] for x in xs]),
                }
            )
    return rows


def per_mode(swaps: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every swap of a mode together: medians and worst cases over all new hubs."""
    out = {}
    for mode in MODES:
        xs = [x for x in swaps if x.get("mode", MODES[0]) == mode]
        if xs:
            out[mode] = {
                "swaps": len(xs),
                "lost_median": median([x["lost"] for x in xs]),
                "lost_all_paths_total": sum(x.get("lost_all_paths") or 0 for x in xs),
                "outage_ms_median": median([x["outage_ms"] for x in xs]),
                "outage_ms_worst": max((x["outage_ms_worst_path"] for x in xs if x.get("outage_ms_worst_path") is not None), default=None),
                "duplicates": sum(x.get("duplicates") or 0 for x in xs),
                "apply_seconds_median": median([x["apply_seconds"] for x in xs]),
                "swap_ok": sum(1 for x in xs if x["swap_ok"]),
                "check_pass": sum(1 for x in xs if x["check_pass"]),
            }
    return out


TOPOLOGIES = ("hub-and-spoke", "full-mesh")
PATH_SECONDS = 5


def topology_rounds(rounds: int) -> list[str]:
    """Topologies to measure in, in order: alternating, each round reversing the previous round's order (so neither
    topology is always measured first after a switch)."""
    out: list[str] = []
    for r in range(rounds):
        out += list(TOPOLOGIES if r % 2 == 0 else reversed(TOPOLOGIES))
    return out


def path_sample(src_ns: str, dst: str, port: int) -> dict[str, Any]:
    """Idle RTT (100 pings, 10 ms apart), then a PATH_SECONDS iperf3 TCP run from src_ns to dst."""
    import subprocess

    from bench.dataplane import iperf_result
    from lab.probes import ping
    from lab.shell import in_netns

    rtts = ping(dst, src_ns, count=100, interval=0.01, wait=1, timeout=60).rtts_ms
    argv = in_netns(src_ns, ["iperf3", "-c", dst, "-p", str(port), "-t", str(PATH_SECONDS), "-O", "1", "-J"])
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=PATH_SECONDS + 60, check=False)
    res = iperf_result(proc.stdout, proc.stderr)
    return {"rtt_answered": len(rtts), "rtt_median_ms": median(list(rtts)), "gbit_s": res.get("gbit_s"), "iperf_ok": res.get("ok")}


def topology_paths(rounds: int, out_dir: Path, log: Path, progress: Progress) -> dict[str, Any]:
    """The spoke pair's path measured in both topologies, switched in place between samples."""
    from bench.dataplane import PORT, Servers
    from lab.check import Lab, spoke_pair

    lab_ = Lab()
    plan = lab_.plan
    a, b = spoke_pair(plan)
    src, dst = plan.client(a), plan.client(b)
    samples: list[dict[str, Any]] = []
    switches: list[dict[str, Any]] = []
    current = plan.config.topology
    servers = Servers([(lab_.node_ns(dst.name), PORT)])
    try:
        for i, topology in enumerate(topology_rounds(rounds), 1):
            if topology != current:
                d = out_dir / f"paths-{i:02d}-{topology}"
                shutil.rmtree(d, ignore_errors=True)
                sw = lab(["swap", "--topology", topology, "--results", str(d)], log=log)
                doc = read_json(next(iter(sorted(d.glob("swap-*.json"))), d / "none.json")) or {}
                ping = doc.get("ping", {})
                switches.append({"to": topology, "ok": sw.ok, "lost": ping.get("lost"), "apply_seconds": doc.get("apply_seconds")})
                if not sw.ok:
                    break
                current = topology
            x = {"topology": topology, **path_sample(lab_.node_ns(src.name), dst.overlay_ipv4, PORT)}
            samples.append(x)
            progress.step(
                f"{topology:<13} {a}->{b}: {fmt(x['gbit_s'], '.2f')} Gbit/s, RTT {fmt(x['rtt_median_ms'], '.3f')} ms "
                f"({x['rtt_answered']}/100 answered)"
            )
    finally:
        servers.stop()
    summary = {
        t: {
            "samples": len([x for x in samples if x["topology"] == t]),
            "gbit_s_median": median([x["gbit_s"] for x in samples if x["topology"] == t]),
            "rtt_median_ms": median([x["rtt_median_ms"] for x in samples if x["topology"] == t]),
        }
        for t in TOPOLOGIES
    }
    hub, mesh = summary["hub-and-spoke"], summary["full-mesh"]

    def ratio(key: str) -> float | None:
        return round(mesh[key] / hub[key], 3) if mesh[key] and hub[key] else None

    return {
        "pair": [src.name, dst.name],
        "hub": plan.hub,
        "seconds": PATH_SECONDS,
        "samples": samples,
        "switches": switches,
        "summary": summary,
        "full_mesh_over_hub": {"gbit_s": ratio("gbit_s_median"), "rtt": ratio("rtt_median_ms")},
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'mode':<17} {'new hub':<9} {'n':>2} {'lost':>5} {'all max':>7} {'outage ms':>9} {'worst ms':>8} {'dup':>4} "
        f"{'apply s':>7} {'swap ok':>7} {'check':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['mode']:<17} {r['new_hub']:<9} {r['swaps']:>2} {fmt(r['lost_median'], '5.0f')} {fmt(r['lost_all_paths_max'], '7.0f')} "
            f"{fmt(r['outage_ms_median'], '9.0f')} {fmt(r['outage_ms_max'], '8.0f')} {r['duplicates']:>4} "
            f"{fmt(r['apply_seconds_median'], '7.2f')} {r['swap_ok']:>4}/{r['swaps']:<2} {r['check_pass']:>3}/{r['swaps']:<2}"
        )
    return "\n".join(lines)


def chart(rows: list[dict[str, Any]], swaps: list[dict[str, Any]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    sites = list(dict.fromkeys(r["new_hub"] for r in rows))
    pos = {s: i for i, s in enumerate(sites)}
    for ax, key, label in ((a, "outage_ms_worst_path", "worst outage of the probed paths (ms, 10 ms pings)"), (b, "apply_seconds", "pushes took (s)")):
        for k, mode in enumerate(MODES):
            xs = [pos[x["to"]] + (k - 0.5) * 0.2 for x in swaps if x.get(key) is not None and x.get("mode") == mode]
            ys = [x[key] for x in swaps if x.get(key) is not None and x.get("mode") == mode]
            ax.scatter(xs, ys, alpha=0.6, label=mode)
        ax.set_xticks(range(len(sites)), sites)
        ax.set_xlabel("new hub")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fails = [x for x in swaps if not x["check_pass"]]
    a.set_title(f"check after swap: {len(swaps) - len(fails)}/{len(swaps)} pass", fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(
    args: argparse.Namespace,
    sites: list[str],
    initial: dict[str, Any],
    swaps: list[dict[str, Any]],
    started: float,
    paths: dict[str, Any] | None = None,
) -> dict[str, Any]:
    planned = len(hub_walk(sites, initial["hub"], args.rounds)) if sites and initial.get("hub") else None
    return {
        "benchmark": NAME,
        "date": stamp(),
        "machine": machine(),
        "stack": args.stack,
        "protocol": args.protocol,
        "standby_hub": args.standby_hub,
        "rounds": args.rounds,
        "complete": planned is not None and len(swaps) == planned and (args.path_rounds == 0 or paths is not None),
        "swaps_planned": planned,
        "initial": initial,
        "method": (
            "per swap: `python -m lab swap --hub X --results DIR` (make-before-break) or with `--one-step`, modes "
            "alternating; 10 ms pings between two clients that are spokes before and after (lost, outage_ms, "
            "converged_after_s), and from the old and the new hub's clients to the second of them (lost_all_paths, "
            "outage_ms_worst_path, duplicates: over every probed path); outage_ms = time between the last reply before the "
            "first loss and the first reply after the last loss; then `python -m lab check --results DIR` (all-pairs "
            "IPv4+IPv6 ping, MTU probes, hub transit) as pass/fail"
        ),
        "modes": per_mode(swaps),
        "rows": summarise(sites, swaps),
        "paths": paths,
        "swaps": swaps,
        "wall_seconds": round(time.monotonic() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=2, help="swaps per site, modes alternating (default 2: each site once in each mode)")
    parser.add_argument("--path-rounds", type=int, default=3, help="samples of the spoke pair's path per topology (0: none)")
    parser.add_argument("--stack", default="dev")
    parser.add_argument("--protocol", default="vxlan", choices=("vxlan", "geneve"))
    parser.add_argument("--standby-hub", help="two hubs: this site stays the standby while the hub walks the others (no path rounds)")
    args = parser.parse_args(argv)
    if args.standby_hub and args.path_rounds:
        print(f"--standby-hub {args.standby_hub}: a full mesh has no standby hub, so the path rounds need --path-rounds 0", file=sys.stderr)
        return 2
    require_root()
    require_no_lab()
    name = f"{NAME}_two_hubs" if args.standby_hub else NAME  # its own results: the one-hub ones stay
    out_dir = RESULTS / name
    log = out_dir / "lab.log"
    started = time.monotonic()
    swaps: list[dict[str, Any]] = []
    initial: dict[str, Any] = {}
    sites: list[str] = []
    progress = Progress()
    paths: dict[str, Any] | None = None
    try:
        two = ["--standby-hub", args.standby_hub] if args.standby_hub else []
        progress.note(f"lab up --stack {args.stack} --protocol {args.protocol} {' '.join(two)}...")
        up = lab(["up", "--stack", args.stack, "--protocol", args.protocol, "--encryption", "none", *two], log=log, progress=progress)
        if not up.ok:
            print(up.output[-3000:], file=sys.stderr)
            return 1
        from lab.check import Lab

        plan = Lab().plan
        sites = [s.name for s in plan.config.sites if s.name != plan.standby]
        hub = plan.hub
        walk = hub_walk(sites, hub, args.rounds)
        progress.total = 2 + len(walk) + 2 * args.path_rounds  # up and initial check, each swap, each path sample, down
        ck = lab(["check", "--results", str(out_dir / "00-initial")], log=log, progress=progress)
        initial = {"hub": hub, "up_s": round(up.seconds, 1), "check_pass": ck.ok, "check_wall_s": round(ck.seconds, 1)}
        progress.step(f"lab up in {up.seconds:.1f} s, hub {hub}; initial check {'PASS' if ck.ok else 'FAIL'} ({ck.seconds:.1f} s)")
        per_round = len(walk) // max(1, args.rounds)
        for i, new in enumerate(walk, 1):
            rnd = (i - 1) // per_round
            mode = swap_mode(i, rnd)
            progress.status(f"swap {i}/{len(walk)}: hub {hub} -> {new} ({mode})")
            x = one_swap(i, rnd, hub, new, args.protocol, out_dir, log, mode)
            swaps.append(x)
            write_json(name, report(args, sites, initial, swaps, started))  # partial results survive an interruption
            progress.step(
                f"{hub:>8} -> {new:<8} {mode:<17} lost {fmt(x['lost_all_paths'], '.0f'):>4}  worst outage {fmt(x['outage_ms_worst_path'], '.0f'):>5} ms  "
                f"flowing after {fmt(x['converged_after_s'], '.2f')} s  apply {fmt(x['apply_seconds'], '.2f')} s  "
                f"swap {'ok' if x['swap_ok'] else 'FAILED'}  check {'PASS' if x['check_pass'] else 'FAIL'} ({x['check_wall_s']:.0f} s)"
            )
            if x["applied"]:
                hub = new
            else:
                print("swap failed to apply: stopping (see the lab log)", file=sys.stderr)
                break
        if args.path_rounds and len(swaps) == len(walk):
            paths = topology_paths(args.path_rounds, out_dir, log, progress)
    finally:
        down = lab(["down"], log=log, progress=progress)
        progress.step(f"lab down ({'ok' if down.ok else 'FAILED: ' + down.output[-500:]})")
        progress.finish()
    doc = report(args, sites, initial, swaps, started, paths)
    path = write_json(name, doc)
    m = doc["machine"]
    if doc["rows"]:
        title = f"{NAME} {doc['date']} {m['host']} ({m['cpus']} CPUs); {args.stack}, {args.protocol}" + (
            f", standby hub {args.standby_hub}" if args.standby_hub else ""
        )
        chart(doc["rows"], swaps, title + ("" if doc["complete"] else " (PARTIAL)"), RESULTS / f"{name}.png")
    print()
    print(table(doc["rows"]))
    for mode, m_ in doc["modes"].items():
        print(
            f"{mode}: {m_['swaps']} swaps, pings lost on all probed paths {m_['lost_all_paths_total']}, median outage "
            f"{fmt(m_['outage_ms_median'], '.0f')} ms (worst {fmt(m_['outage_ms_worst'], '.0f')} ms), {m_['duplicates']} duplicate replies, "
            f"pushes {fmt(m_['apply_seconds_median'], '.2f')} s"
        )
    if paths:
        for t, x in paths["summary"].items():
            print(f"{t}: {' -> '.join(paths['pair'])} {fmt(x['gbit_s_median'], '.2f')} Gbit/s, RTT {fmt(x['rtt_median_ms'], '.3f')} ms (medians of {x['samples']})")
        r = paths["full_mesh_over_hub"]
        print(f"full mesh / hub path: throughput x{fmt(r['gbit_s'], '.2f')}, RTT x{fmt(r['rtt'], '.2f')}")
    print(f"\ntook {doc['wall_seconds']} s ({'complete' if doc['complete'] else 'PARTIAL'}); wrote {path} and {name}.png")
    return 0 if doc["complete"] and all(x["swap_ok"] and x["check_pass"] for x in swaps) else 1


if __name__ == "__main__":
    sys.exit(main())
