"""How fast the overlay heals from a node reboot and from losing the hub, in the lab.

Brings up the dev stack, then runs rounds of faults, each as its own lab verb: `python -m lab reboot NODE` for a
spoke router, the hub router and a client (the spoke and client sites rotate round by round), then
`python -m lab hub-loss`. Every fault powers the node off (processes, containers, links, addresses, rules; the NICs
and the node's disk stay), powers it on (platform NICs, docker.service) and runs only the payload unit's command;
its JSON gives the boot command's duration, when ~50 ms pings from another site answered again (counted from the
start of the boot command) and whether the full check matrix passed afterwards, on its first run or only on a
later one (the lab runs it up to 3 times; both are reported); hub-loss also gives the site-local availability
while the hub was down.

Then the same stack again with a standby hub (`--standby-hub`, default the first site that is not the hub), and
`lab hub-loss` once per round: with two hubs the spokes move to the standby by themselves (BFD), so the JSON gives
the cross-site outage when the hub goes (10 ms pings between two spokes' clients and to the standby's client) and
when it returns. The summary sets it against one hub's cross-site outage (the hub's down time plus the first
cross-site reply after its boot command started), measured in the same run.

    sudo .venv/bin/python -m bench.faults [--rounds 3] [--down-seconds 5] [--standby-hub gcp]

Writes bench/results/faults.json and .png (per-fault lab outputs under bench/results/faults/).
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

NAME = "faults"
KINDS = ("spoke router", "hub router", "client")


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def fault_nodes(sites: list[str], hub: str, rnd: int) -> list[tuple[str, str]]:
    """(kind, node) to reboot in round `rnd`: a spoke's router and another spoke's client, rotating, and the hub."""
    spokes = [s for s in sites if s != hub]
    spoke = spokes[rnd % len(spokes)]
    client = spokes[(rnd + 1) % len(spokes)]
    return [("spoke router", f"{spoke}-router"), ("hub router", f"{hub}-router"), ("client", f"{client}-client")]


def check_tries(ck: dict[str, Any]) -> dict[str, Any]:
    """The full check after a fault: passed at all, on its first run, after how many runs, and what the failed runs
    missed (from the fault's JSON `check`)."""
    runs = ck.get("runs") or []
    return {
        "check_pass": bool(ck.get("ok")),
        "check_first_try_pass": bool(runs) and bool(runs[0].get("ok")),
        "check_tries": ck.get("tries"),
        "check_runs": len(runs),
        "check_failed_runs": [r for r in runs if not r.get("ok")],
    }


def one_reboot(rnd: int, kind: str, node: str, out_dir: Path, log: Path) -> dict[str, Any]:
    d = out_dir / f"r{rnd + 1}-reboot-{node}"
    shutil.rmtree(d, ignore_errors=True)
    run = lab(["reboot", node, "--results", str(d)], log=log)
    doc = read_json(d / f"reboot-{node}.json") or {}
    rec, ck = doc.get("recovery") or {}, doc.get("check") or {}
    return {
        "round": rnd + 1,
        "fault": "reboot",
        "kind": kind,
        "node": node,
        "ok": run.ok,
        "wall_s": round(run.seconds, 2),
        "power_off_s": round((doc.get("power_off") or {}).get("seconds", 0.0), 3) or None,
        "docker_s": doc.get("docker_seconds"),
        "boot_command_s": (doc.get("boot_command") or {}).get("seconds"),
        "boot_changes": (doc.get("boot_command") or {}).get("changes"),
        "recovery_first_s": rec.get("first_s"),
        "recovery_all_s": rec.get("all_s"),
        "recovery_per_target_s": rec.get("per_target_s"),
        "observer": doc.get("observer"),
        **check_tries(ck),
        "check_passed_after_s": ck.get("passed_after_s"),
        "changed_elsewhere": doc.get("changed_elsewhere"),
        "results_dir": str(d.relative_to(RESULTS)),
    }


def one_hub_loss(rnd: int, down_seconds: float, out_dir: Path, log: Path) -> dict[str, Any]:
    d = out_dir / f"r{rnd + 1}-hub-loss"
    shutil.rmtree(d, ignore_errors=True)
    run = lab(["hub-loss", "--down-seconds", str(down_seconds), "--results", str(d)], log=log)
    doc = read_json(d / "hub-loss.json") or {}
    rec, ck, down = doc.get("recovery") or {}, doc.get("check") or {}, doc.get("while_down") or {}
    avail = [v for v in (down.get("availability") or {}).values() if v is not None]
    local, cross = down.get("site_local") or {}, down.get("cross_site") or {}
    return {
        "round": rnd + 1,
        "fault": "hub-loss",
        "hub": doc.get("hub"),
        "ok": run.ok,
        "wall_s": round(run.seconds, 2),
        "down_s": doc.get("down_seconds"),
        "site_local": f"{local.get('answered')}/{local.get('pairs')}",
        "site_local_ok": bool(local.get("pairs")) and local.get("answered") == local.get("pairs"),
        "cross_site_answered_while_down": f"{cross.get('answered')}/{cross.get('pairs')}",
        "cross_site_failed_while_down": bool(cross.get("pairs")) and cross.get("answered") == 0,
        "availability_min": min(avail) if avail else None,
        "availability": down.get("availability"),
        "lost_while_down": down.get("lost"),
        "docker_s": doc.get("docker_seconds"),
        "boot_command_s": (doc.get("boot_command") or {}).get("seconds"),
        "first_cross_site_s": rec.get("first_s"),
        "all_cross_site_s": rec.get("all_s"),
        **check_tries(ck),
        "full_matrix_after_s": ck.get("passed_after_s"),
        "check_seconds": [r.get("seconds") for r in ck.get("runs") or []],
        "changed_elsewhere": doc.get("changed_elsewhere"),
        "results_dir": str(d.relative_to(RESULTS)),
    }


def one_two_hub_loss(rnd: int, down_seconds: float, out_dir: Path, log: Path) -> dict[str, Any]:
    d = out_dir / f"r{rnd + 1}-hub-loss-two-hubs"
    shutil.rmtree(d, ignore_errors=True)
    run = lab(["hub-loss", "--down-seconds", str(down_seconds), "--results", str(d)], log=log)
    doc = read_json(d / "hub-loss-two-hubs.json") or {}
    targets = doc.get("targets") or {}
    return {
        "round": rnd + 1,
        "fault": "hub-loss-two-hubs",
        "hub": doc.get("hub"),
        "standby": doc.get("standby"),
        "ok": run.ok,
        "wall_s": round(run.seconds, 2),
        "failover_outage_s": max((t["failover_outage_s"] for t in targets.values()), default=None),
        "failback_outage_s": max((t["failback_outage_s"] for t in targets.values()), default=None),
        "duplicates": sum(t["duplicates"] for t in targets.values()),
        "targets": targets,
        "results_dir": str(d.relative_to(RESULTS)),
    }


def tries_text(x: dict[str, Any]) -> str:
    if not x["check_pass"]:
        return f"FAIL ({x['check_runs']} tries)"
    return "PASS (first try)" if x["check_first_try_pass"] else f"PASS (try {x['check_tries']}: first try FAILED)"


def summarise(reboots: list[dict[str, Any]], losses: list[dict[str, Any]], two: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    rows = []
    for kind in KINDS:
        xs = [x for x in reboots if x["kind"] == kind]
        if xs:
            rows.append(
                {
                    "kind": kind,
                    "n": len(xs),
                    "nodes": [x["node"] for x in xs],
                    "boot_command_s_median": median([x["boot_command_s"] for x in xs]),
                    "docker_s_median": median([x["docker_s"] for x in xs]),
                    "recovery_all_s_median": median([x["recovery_all_s"] for x in xs]),
                    "recovery_all_s_max": max((x["recovery_all_s"] for x in xs if x["recovery_all_s"] is not None), default=None),
                    "recovery_first_s_median": median([x["recovery_first_s"] for x in xs]),
                    "check_pass": sum(1 for x in xs if x["check_pass"]),
                    "check_first_try_pass": sum(1 for x in xs if x["check_first_try_pass"]),
                    "check_passed_after_s_median": median([x["check_passed_after_s"] for x in xs]),
                }
            )
    hub = None
    if losses:
        hub = {
            "n": len(losses),
            "down_s_median": median([x["down_s"] for x in losses]),
            "availability_min": min((x["availability_min"] for x in losses if x["availability_min"] is not None), default=None),
            "site_local_ok": sum(1 for x in losses if x["site_local_ok"]),
            "cross_site_failed_while_down": sum(1 for x in losses if x["cross_site_failed_while_down"]),
            "boot_command_s_median": median([x["boot_command_s"] for x in losses]),
            "first_cross_site_s_median": median([x["first_cross_site_s"] for x in losses]),
            "all_cross_site_s_median": median([x["all_cross_site_s"] for x in losses]),
            "full_matrix_after_s_median": median([x["full_matrix_after_s"] for x in losses]),
            "check_pass": sum(1 for x in losses if x["check_pass"]),
            "check_first_try_pass": sum(1 for x in losses if x["check_first_try_pass"]),
        }
    pair = None
    if losses and two:
        one_outage = median([None if x["down_s"] is None or x["first_cross_site_s"] is None else x["down_s"] + x["first_cross_site_s"] for x in losses])
        over = median([x["failover_outage_s"] for x in two])
        pair = {
            "n": len(two),
            "one_hub_cross_site_outage_s_median": None if one_outage is None else round(one_outage, 3),
            "two_hubs_failover_outage_s_median": over,
            "two_hubs_failback_outage_s_median": median([x["failback_outage_s"] for x in two]),
            "two_hubs_duplicates": sum(x["duplicates"] for x in two),
            "ratio": None if not one_outage or over is None else round(over / one_outage, 4),
        }
    return {"reboot": rows, "hub_loss": hub, "two_hubs": pair}


def table(summary: dict[str, Any]) -> str:
    head = (
        f"{'reboot':<13} {'n':>2} {'boot cmd s':>10} {'docker s':>8} {'reach s':>7} {'max s':>6} {'first s':>7} {'check':>6} {'1st try':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in summary["reboot"]:
        lines.append(
            f"{r['kind']:<13} {r['n']:>2} {fmt(r['boot_command_s_median'], '10.2f')} {fmt(r['docker_s_median'], '8.2f')} "
            f"{fmt(r['recovery_all_s_median'], '7.2f')} {fmt(r['recovery_all_s_max'], '6.2f')} {fmt(r['recovery_first_s_median'], '7.2f')} "
            f"{r['check_pass']:>3}/{r['n']:<2} {r['check_first_try_pass']:>4}/{r['n']:<2}"
        )
    h = summary["hub_loss"]
    if h:
        lines += [
            "",
            f"hub loss x{h['n']}: down {fmt(h['down_s_median'], '.1f')} s (median); site-local pairs all answered "
            f"{h['site_local_ok']}/{h['n']}, cross-site all failed {h['cross_site_failed_while_down']}/{h['n']}, "
            f"site-local availability >= {fmt(None if h['availability_min'] is None else 100 * h['availability_min'], '.1f')}%",
            f"  back: boot command {fmt(h['boot_command_s_median'], '.2f')} s, first cross-site reply {fmt(h['first_cross_site_s_median'], '.2f')} s, "
            f"all probed cross-site targets {fmt(h['all_cross_site_s_median'], '.2f')} s, full matrix passed {fmt(h['full_matrix_after_s_median'], '.1f')} s "
            f"after the boot command started (medians); check {h['check_pass']}/{h['n']}, on the first try {h['check_first_try_pass']}/{h['n']}",
        ]
    t = summary.get("two_hubs")
    if t:
        lines += [
            "",
            f"hub loss, cross-site outage: one hub {fmt(t['one_hub_cross_site_outage_s_median'], '.2f')} s (down time + first reply after "
            f"boot), two hubs {fmt(t['two_hubs_failover_outage_s_median'], '.3f')} s (x{fmt(t['ratio'], '.4f')}); the hub's return "
            f"{fmt(t['two_hubs_failback_outage_s_median'], '.3f')} s; duplicate replies {t['two_hubs_duplicates']} (medians of {t['n']})",
        ]
    return "\n".join(lines)


def chart(reboots: list[dict[str, Any]], losses: list[dict[str, Any]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    labels = [*KINDS, "hub loss"]
    series = [[x for x in reboots if x["kind"] == k] for k in KINDS]
    for i, xs in enumerate(series):
        ax.scatter([i - 0.1] * len(xs), [x["boot_command_s"] or 0 for x in xs], marker="o", color="tab:blue", alpha=0.6)
        ax.scatter([i + 0.1] * len(xs), [x["recovery_all_s"] or 0 for x in xs], marker="D", color="tab:orange", alpha=0.6)
    i = len(KINDS)
    ax.scatter(
        [i - 0.1] * len(losses), [x["boot_command_s"] or 0 for x in losses], marker="o", color="tab:blue", alpha=0.6, label="boot command"
    )
    ax.scatter(
        [i + 0.1] * len(losses),
        [x["all_cross_site_s"] or 0 for x in losses],
        marker="D",
        color="tab:orange",
        alpha=0.6,
        label="reachable again",
    )
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("seconds after the boot command started")
    ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (3 reboots + 1 hub loss) (default 3)")
    parser.add_argument("--down-seconds", type=float, default=5.0, help="how long the hub stays down at least (default 5)")
    parser.add_argument("--stack", default="dev")
    parser.add_argument("--standby-hub", help="the standby hub of the two-hub rounds (default: the first site that is not the hub)")
    args = parser.parse_args(argv)
    require_root()
    require_no_lab()
    out_dir = RESULTS / NAME
    log = out_dir / "lab.log"
    started = time.monotonic()
    reboots: list[dict[str, Any]] = []
    losses: list[dict[str, Any]] = []
    two: list[dict[str, Any]] = []
    initial: dict[str, Any] = {}

    def report() -> dict[str, Any]:
        return {
            "benchmark": NAME,
            "date": stamp(),
            "machine": machine(),
            "stack": args.stack,
            "rounds": args.rounds,
            "down_seconds": args.down_seconds,
            "complete": len(reboots) == 3 * args.rounds and len(losses) == args.rounds and len(two) == args.rounds,
            "initial": initial,
            "method": (
                "reboot: power-off kills every process of the node (dockerd, containerd, shims, containers), removes its "
                "container namespace handles and every link that is not a NIC, flushes addresses, routes, xfrm and "
                "iptables, resets the node script's sysctls; power-on re-adds the platform's NIC addresses and default "
                "route (and the OCI image's rules), starts dockerd, then runs the payload unit's ExecStart only. "
                "recovery = first reply (ping -i 0.05 from another site's client) after the boot command started, for "
                "every probed target (node v4+v6, first container v4+v6, through-hub client for the hub); it includes the "
                "observer's neighbour re-resolution (1 s ARP/ND retransmit while a target is down). hub-loss: the hub is "
                "powered off (NICs down), site-local pairs of every spoke and every cross-site pair are pinged, a 50 ms "
                "ping per spoke (client -> container, v4 and v6) measures availability, then the hub is powered on; "
                "full_matrix_after_s = end of the first passing `check` after the boot command started; the lab runs the "
                "check up to 3 times: check_first_try_pass says whether its first run passed, check_tries how many "
                "runs it took, check_failed_runs what the failed runs missed"
            ),
            "summary": summarise(reboots, losses, two),
            "reboots": reboots,
            "hub_losses": losses,
            "two_hub_losses": two,
            "wall_seconds": round(time.monotonic() - started, 1),
        }

    progress = Progress()
    try:
        progress.note(f"lab up --stack {args.stack} ...")
        up = lab(["up", "--stack", args.stack, "--encryption", "none"], log=log, progress=progress)
        if not up.ok:
            print(up.output[-3000:], file=sys.stderr)
            return 1
        from lab.check import Lab

        plan = Lab().plan
        sites = [s.name for s in plan.config.sites]
        # Steps: up and initial check, per round its reboots and one hub loss, then down.
        progress.total = 4 + sum(len(fault_nodes(sites, plan.hub, r)) + 2 for r in range(args.rounds))
        ck = lab(["check", "--results", str(out_dir / "00-initial")], log=log, progress=progress)
        initial = {"hub": plan.hub, "up_s": round(up.seconds, 1), "check_pass": ck.ok, "check_wall_s": round(ck.seconds, 1)}
        progress.step(f"lab up in {up.seconds:.1f} s, hub {plan.hub}; initial check {'PASS' if ck.ok else 'FAIL'} ({ck.seconds:.1f} s)")
        for rnd in range(args.rounds):
            for kind, node in fault_nodes(sites, plan.hub, rnd):
                progress.status(f"round {rnd + 1}: rebooting {node}")
                x = one_reboot(rnd, kind, node, out_dir, log)
                reboots.append(x)
                write_json(NAME, report())
                progress.step(
                    f"[round {rnd + 1}] reboot {node:<14} ({kind:<12}) boot cmd {fmt(x['boot_command_s'], '.2f')} s  "
                    f"reachable {fmt(x['recovery_all_s'], '.2f')} s  check {tries_text(x)}"
                )
            progress.status(f"round {rnd + 1}: hub loss")
            x = one_hub_loss(rnd, args.down_seconds, out_dir, log)
            losses.append(x)
            write_json(NAME, report())
            progress.step(
                f"[round {rnd + 1}] hub loss {x['hub']}: down {fmt(x['down_s'], '.1f')} s, site-local {x['site_local']}, "
                f"cross-site answered {x['cross_site_answered_while_down']}, availability >= "
                f"{fmt(None if x['availability_min'] is None else 100 * x['availability_min'], '.1f')}%; first cross-site "
                f"{fmt(x['first_cross_site_s'], '.2f')} s, full matrix {fmt(x['full_matrix_after_s'], '.1f')} s  "
                f"check {tries_text(x)}"
            )
        standby = args.standby_hub or next(s for s in sites if s != plan.hub)
        down = lab(["down"], log=log, progress=progress)
        progress.step(f"lab down ({'ok' if down.ok else 'FAILED'}); up again with standby hub {standby}")
        up = lab(["up", "--stack", args.stack, "--encryption", "none", "--standby-hub", standby], log=log, progress=progress)
        if not up.ok:
            print(up.output[-3000:], file=sys.stderr)
            return 1
        progress.step(f"lab up in {up.seconds:.1f} s, hub {plan.hub}, standby {standby}")
        for rnd in range(args.rounds):
            progress.status(f"round {rnd + 1}: hub loss with two hubs")
            x = one_two_hub_loss(rnd, args.down_seconds, out_dir, log)
            two.append(x)
            write_json(NAME, report())
            progress.step(
                f"[round {rnd + 1}] hub loss {x['hub']} with standby {x['standby']}: cross-site outage {fmt(x['failover_outage_s'], '.3f')} s, "
                f"back {fmt(x['failback_outage_s'], '.3f')} s, duplicates {x['duplicates']}"
            )
    finally:
        down = lab(["down"], log=log, progress=progress)
        progress.step(f"lab down ({'ok' if down.ok else 'FAILED: ' + down.output[-500:]})")
        progress.finish()
    doc = report()
    path = write_json(NAME, doc)
    m = doc["machine"]
    if reboots or losses:
        title = f"{NAME} {doc['date']} {m['host']} ({m['cpus']} CPUs); {args.stack}, {args.rounds} rounds"
        chart(reboots, losses, title + ("" if doc["complete"] else " (PARTIAL)"), RESULTS / f"{NAME}.png")
    print()
    print(table(doc["summary"]))
    print(f"\ntook {doc['wall_seconds']} s ({'complete' if doc['complete'] else 'PARTIAL'}); wrote {path} and {NAME}.png")
    ok = all(x["ok"] and x["check_pass"] for x in reboots + losses) and all(x["ok"] for x in two)
    return 0 if doc["complete"] and ok else 1


if __name__ == "__main__":
    sys.exit(main())
