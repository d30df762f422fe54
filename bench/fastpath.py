"""Per-packet savings of the node script, each one's worth: A/B in wire mode on one lab, in one run.

The node script applies two savings on the path every tunnel packet takes (lab.fastpath):

    notrack    tunnel datagrams bypass conntrack (raw table) where the image's firewall tracks connections (OCI)
    bridge_nf  bridged overlay frames skip iptables/ip6tables/arptables where br_netfilter is loaded (routers)

Brings up the dev stack (VXLAN, clear), moves the hub in place to --hub (default oci: the OCI image's stateful
firewall turns connection tracking on, as ufw or any stateful rule does; on a node with none, the kernel tracks
nothing and notrack has nothing to save), sets wire mode (bench.dataplane: every VM NIC segments what it sends and
coalesces what it receives), checks that every node has the savings the node script applies, then measures
variants of the same lab, in rotated order within each repetition:

    before        none of the savings (what the node script did before them)
    +notrack, +bridge_nf    one saving alone
    after         all of them (what the node script applies)
    after+no_rp_filter    a candidate the node script does not apply: no reverse-path check on the routers' NICs
                  (lab.fastpath.CANDIDATES), measured so that the decision stays checkable

For each variant and repetition: the hub path spoke client -> hub -> spoke client (IPv4, iperf3, with 10 ms pings
for the RTT under load), the hub's WAN packet rate during that run and the machine's busy cores (/proc/stat), so
packets per second per busy core; the same path between containers; and the two underlay legs at the same time
(the hub path's baseline, bench.dataplane). Then the hub's conntrack table is flushed, the spoke client
sends FLOWS single pings (each its own ICMP id: an overlay flow of its own), and the hub's connection-tracking
entries are counted: tunnel datagrams and overlay flows. With --profile, one client run of `before` and one of `after` under
`perf record -a`: the share of samples in what each saving removes.

    .venv/bin/python -m bench.fastpath [--repeat 5] [--seconds 4] [--profile] [--use-running-lab]

Writes bench/results/fastpath.json and .png.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.dataplane import (
    PORT,
    Case,
    Servers,
    build_cases,
    cpu_busy,
    iperf,
    link_packets,
    perf_top,
    set_wire_mode,
    vm_nics,
)
from bench.labrun import RESULTS, fmt, lab, machine, median, require_no_lab, require_root, stamp, which_or_exit, write_json
from lab import fastpath
from lab.progress import Progress
from lab.shell import in_netns

NAME = "fastpath"
FLOWS = 20
# One datagram to the discard port from each of N new sockets (N flows); the destination answers each with an
# ICMP port unreachable, which belongs to the same flow.
SEND_FLOWS = "import socket, sys\nfor _ in range(int(sys.argv[2])):\n    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', (sys.argv[1], 9))"
IPERF_PORTS = f"{PORT}:{PORT + 1}"
VARIANTS: dict[str, tuple[str, ...]] = {
    "before": (),
    "+notrack": ("notrack",),
    "+bridge_nf": ("bridge_nf",),
    "after": fastpath.SAVINGS,
    "after+no_rp_filter": (*fastpath.SAVINGS, "no_rp_filter"),
}
# What each saving removes, as kernel symbols in a perf profile (regular expressions over symbol names).
COST_SYMBOLS = {
    "conntrack": r"^(__)?nf_conntrack|^nf_ct_|^__nf_ct_|^hash_conntrack|^nf_confirm|^ipv4_conntrack|^ipv6_conntrack",
    "bridge netfilter": r"^br_nf_",
    "netfilter hooks and rules": r"^nf_hook_slow$|^nft_do_chain|^ipt_do_table$|^ip6t_do_table$|^nft_",
}


class Nodes:
    """The running lab's nodes: namespace, NICs, router or not."""

    def __init__(self) -> None:
        from lab.check import Lab

        self.lab = Lab()
        self.nodes = [
            (n.name, self.lab.layout.host(n.name).ns, n.kind == "router", fastpath.stateful_image(n.platform)) for n in self.lab.plan.nodes
        ]
        self.nics = {n.name: [nic.name for nic in self.lab.layout.host(n.name).nics] for n in self.lab.plan.nodes}

    def deployed(self) -> dict[str, dict[str, bool | None]]:
        return {name: fastpath.in_effect(self.lab.sh, ns, router, stateful) for name, ns, router, stateful in self.nodes}

    def tracked_after_flows(self, case: Case) -> dict[str, int]:
        """Flush the hub's conntrack table, send FLOWS overlay flows along the case's path (one UDP datagram from
        each of FLOWS sockets: each its own source port, so its own hash and outer source port), and count the
        hub's entries."""
        assert case.hub is not None
        hub_ns = case.hub[0]
        cfg = self.lab.plan.config
        self.lab.sh.ns(hub_ns, ["conntrack", "-F"], check=False)
        subprocess.run(in_netns(case.src_ns, [sys.executable, "-c", SEND_FLOWS, case.dst, str(FLOWS)]), capture_output=True, check=True)
        time.sleep(0.5)
        return fastpath.tracked(self.lab.sh, hub_ns, self.lab.plan.port, [str(cfg.overlay_ipv4), str(cfg.overlay_ipv6)])

    def set(self, savings: tuple[str, ...]) -> None:
        """Each saving on or off on every node it applies to."""
        for name, ns, router, stateful in self.nodes:
            if stateful:
                fastpath.switch(self.lab.sh, ns, "notrack", "notrack" in savings)
            if router:
                fastpath.switch(self.lab.sh, ns, "bridge_nf", "bridge_nf" in savings)
                fastpath.try_candidate(self.lab.sh, ns, "no_rp_filter", self.nics[name], "no_rp_filter" in savings)

    def check(self, savings: tuple[str, ...]) -> None:
        """Every node has exactly `savings` in effect (those of the node script that apply to it)."""
        for name, states in self.deployed().items():
            wrong = [s for s, on in states.items() if on is not None and on != (s in savings)]
            if wrong:
                raise RuntimeError(f"{name}: {', '.join(wrong)} not as set ({states})")


def hub_run(case: Case, seconds: int) -> dict[str, Any]:
    """One iperf3 run of a hub-path case with RTT under load, the hub's WAN packet rate and the busy cores."""
    assert case.hub is not None
    hub_ns, hub_nic = case.hub
    packets0, (busy0, total0), t0 = link_packets(hub_ns, hub_nic), cpu_busy(), time.monotonic()
    got = iperf(case, seconds)
    packets1, (busy1, total1), t1 = link_packets(hub_ns, hub_nic), cpu_busy(), time.monotonic()

    busy = (os.cpu_count() or 1) * (busy1 - busy0) / max(total1 - total0, 1)
    pps = (packets1 - packets0) / (t1 - t0)
    return {
        **got,
        "hub_wan_packets_per_s": round(pps),
        "busy_cores": round(busy, 2),
        "packets_per_s_per_busy_core": round(pps / busy) if busy else None,
    }


def ratio(xs: list[dict[str, Any]], baseline: list[dict[str, Any]]) -> float | None:
    """Median of each repetition's ratio to the baseline run measured with it."""
    pairs = [(x["gbit_s"], y["gbit_s"]) for x, y in zip(xs, baseline, strict=False) if x.get("ok") and y.get("ok") and y["gbit_s"] > 0]
    return statistics.median(a / b for a, b in pairs) if pairs else None


def profile_shares(data: Path) -> dict[str, Any]:
    """Share of all samples per COST_SYMBOLS group, and the top symbols."""
    symbols = perf_top(data, limit=0.01)
    shares = {group: round(sum(p for p, s in symbols if re.search(rx, s)), 2) for group, rx in COST_SYMBOLS.items()}
    return {"shares_pct": shares, "top": symbols[:15]}


def profiled(case: Case, seconds: int, work: Path) -> dict[str, Any]:
    data = work / "perf.data"
    perf = subprocess.Popen(
        ["perf", "record", "-a", "-F", "999", "-o", str(data), "--", "sleep", str(seconds + 1)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    got = hub_run(case, seconds)
    perf.wait(timeout=seconds + 60)
    return {**got, **profile_shares(data)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=5, help="repetitions of every variant (default 5)")
    parser.add_argument("--seconds", type=int, default=4, help="iperf3 seconds per run, after 1 s omitted (default 4)")
    parser.add_argument("--profile", action="store_true", help="one client run of 'before' and of 'after' under perf record -a")
    parser.add_argument("--use-running-lab", action="store_true", help="measure a dev lab (VXLAN, clear) that is already up; leave it up")
    parser.add_argument(
        "--hub",
        default="oci",
        help="the hub to measure through, swapped to in place if needed (default oci: its image's stateful firewall turns conntrack on)",
    )
    args = parser.parse_args(argv)
    require_root()
    which_or_exit("iperf3", "iperf3")
    which_or_exit("ethtool", "ethtool")
    which_or_exit("conntrack", "conntrack")
    if args.profile:
        which_or_exit("perf", "linux-perf")
    log = RESULTS / NAME / "lab.log"
    started = time.monotonic()
    progress = Progress(total=1 + len(VARIANTS) * args.repeat + (0 if args.use_running_lab else 2))
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {v: {} for v in VARIANTS}
    profiles: dict[str, Any] = {}
    started_lab = False
    try:
        if not args.use_running_lab:
            require_no_lab()
            started_lab = True
            up = lab(["up", "--stack", "dev", "--protocol", "vxlan", "--encryption", "none"], log=log, progress=progress)
            if not up.ok:
                print(up.output[-3000:], file=sys.stderr)
                return 1
            progress.step(f"lab up in {up.seconds:.1f} s")
        from lab.check import Lab

        if Lab().plan.hub != args.hub:
            swap = lab(["swap", "--hub", args.hub, "--results", str(RESULTS / NAME / "swap")], log=log, progress=progress)
            if not swap.ok:
                print(swap.output[-3000:], file=sys.stderr)
                return 1
            progress.note(f"hub swapped in place to {args.hub} in {swap.seconds:.1f} s")
        set_wire_mode(vm_nics())
        nodes = Nodes()
        hub_ns = nodes.lab.node_ns(nodes.lab.plan.router(nodes.lab.plan.hub).name)
        # The underlay legs end on the hub's own address: an image firewall (OCI's) would refuse iperf3 there.
        opened = ["iptables", "-w", "-I", "INPUT", "2", "-p", "tcp", "--dport", IPERF_PORTS, "-j", "ACCEPT"]
        nodes.lab.sh.ns(hub_ns, opened)
        conntrack_on = {name: fastpath.conntrack_running(nodes.lab.sh, ns) for name, ns, _, _ in nodes.nodes}
        progress.note(f"connection tracking runs on: {', '.join(n for n, on in conntrack_on.items() if on) or 'no node'}")
        deployed = nodes.deployed()
        missing = {n: [s for s, on in st.items() if on is False] for n, st in deployed.items() if False in st.values()}
        if missing:
            print(f"the node script did not apply every saving: {missing}", file=sys.stderr)
            return 1
        bridge_nf = any(st["bridge_nf"] is not None for st in deployed.values())
        progress.note(
            "deployed by the node script on every node: notrack"
            + (", bridge_nf" if bridge_nf else " (bridge_nf: br_netfilter is not loaded here, nothing to save)")
        )
        cases = {c.name: c for c in build_cases()}
        clients = next(c for c in cases.values() if c.name.endswith("clients v4"))
        containers = next(c for c in cases.values() if c.name.endswith("containers v4"))
        legs = next(c for c in cases.values() if c.legs)
        servers = Servers([(clients.dst_ns, PORT), (containers.dst_ns, PORT)] + [(d, PORT + i) for i, (_, d, _) in enumerate(legs.legs)])
        try:
            for c in (clients, containers, legs):
                iperf(c, 1, omit=0)
            progress.step("warm-up pass (discarded)")
            if args.profile:
                work = RESULTS / NAME
                for v in ("before", "after"):
                    (work / v).mkdir(parents=True, exist_ok=True)
                    nodes.set(VARIANTS[v])
                    nodes.check(VARIANTS[v])
                    progress.status(f"profile: {v} ({args.seconds} s of iperf3 under perf)")
                    profiles[v] = profiled(clients, args.seconds, work / v)
                    progress.note(f"profile {v}: {profiles[v]['shares_pct']}")
            names = list(VARIANTS)
            for rep in range(args.repeat):
                order = names[rep % len(names) :] + names[: rep % len(names)]
                for v in order:
                    nodes.set(VARIANTS[v])
                    nodes.check(VARIANTS[v])
                    got = {
                        "clients": hub_run(clients, args.seconds),
                        "containers": iperf(containers, args.seconds),
                        "legs": iperf(legs, args.seconds),
                        "tracked": nodes.tracked_after_flows(clients),
                    }
                    for k, x in got.items():
                        samples[v].setdefault(k, []).append(x)
                    progress.step(
                        f"repeat {rep + 1}/{args.repeat} {v:<19} clients {fmt(got['clients'].get('gbit_s'), '.2f')} Gbit/s "
                        f"({got['clients'].get('packets_per_s_per_busy_core')} hub pps/busy core), containers "
                        f"{fmt(got['containers'].get('gbit_s'), '.2f')}, legs {fmt(got['legs'].get('gbit_s'), '.2f')}; "
                        f"hub conntrack after {FLOWS} flows: {got['tracked']}"
                    )
        finally:
            servers.stop()
            nodes.set(VARIANTS["after"])
            nodes.lab.sh.ns(hub_ns, ["iptables", "-w", "-D", "INPUT", *opened[5:]], check=False)
    finally:
        if started_lab:
            down = lab(["down"], log=log, progress=progress)
            progress.step(f"lab down ({'ok' if down.ok else 'FAILED: ' + down.output[-500:]})")
        progress.finish()
    rows = []
    for v, s in samples.items():
        cl, ct, lg = s.get("clients", []), s.get("containers", []), s.get("legs", [])

        rows.append(
            {
                "variant": v,
                "savings": list(VARIANTS[v]),
                "runs": len(cl),
                "clients_gbit_s": median([x.get("gbit_s") for x in cl]),
                "clients_ratio_to_legs": ratio(cl, lg),
                "containers_gbit_s": median([x.get("gbit_s") for x in ct]),
                "containers_ratio_to_legs": ratio(ct, lg),
                "legs_gbit_s": median([x.get("gbit_s") for x in lg]),
                "loaded_rtt_ms": median([x.get("loaded_rtt_median_ms") for x in cl]),
                "hub_wan_packets_per_s": median([x.get("hub_wan_packets_per_s") for x in cl]),
                "busy_cores": median([x.get("busy_cores") for x in cl]),
                "packets_per_s_per_busy_core": median([x.get("packets_per_s_per_busy_core") for x in cl]),
                "hub_tracked_tunnel_per_flow": median([x["tunnel"] / FLOWS for x in s.get("tracked", [])]),
                "hub_tracked_overlay_per_flow": median([x["overlay"] / FLOWS for x in s.get("tracked", [])]),
            }
        )
    base = rows[0]
    for r in rows:
        for k in ("clients_gbit_s", "containers_gbit_s", "packets_per_s_per_busy_core"):
            r[f"{k}_vs_before"] = (r[k] / base[k]) if r.get(k) and base.get(k) else None
    report = {
        "benchmark": NAME,
        "date": stamp(),
        "machine": machine(),
        "stack": "dev",
        "mode": "wire",
        "repeat": args.repeat,
        "iperf_seconds": args.seconds,
        "cases": {"clients": clients.path, "containers": containers.path, "legs": legs.path},
        "deployed": deployed,
        "hub": args.hub,
        "conntrack_running": conntrack_on,
        "rows": rows,
        "profiles": profiles,
        "samples": samples,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    path = write_json(NAME, report)
    chart(
        rows,
        f"{NAME} {report['date']} {report['machine']['host']} ({report['machine']['cpus']} CPUs); wire mode, hub path",
        RESULTS / f"{NAME}.png",
    )
    head = (
        f"{'variant':<19} {'clients':>8} {'x before':>8} {'of legs':>7} {'ctrs':>6} {'x before':>8} {'legs':>6} {'hub pps':>8} {'busy':>5} "
        f"{'pps/core':>8} {'x before':>8} {'RTT load':>8} {'ct/flow':>8}"
    )
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        print(
            f"{r['variant']:<19} {fmt(r['clients_gbit_s'], '8.2f')} {fmt(r['clients_gbit_s_vs_before'], '8.2f')} {fmt(r['clients_ratio_to_legs'], '7.2f')} "
            f"{fmt(r['containers_gbit_s'], '6.2f')} {fmt(r['containers_gbit_s_vs_before'], '8.2f')} {fmt(r['legs_gbit_s'], '6.2f')} "
            f"{fmt(r['hub_wan_packets_per_s'], '8.0f')} {fmt(r['busy_cores'], '5.2f')} {fmt(r['packets_per_s_per_busy_core'], '8.0f')} "
            f"{fmt(r['packets_per_s_per_busy_core_vs_before'], '8.2f')} {fmt(r['loaded_rtt_ms'], '8.3f')} "
            f"{fmt(r['hub_tracked_tunnel_per_flow'], '3.1f')}+{fmt(r['hub_tracked_overlay_per_flow'], '3.1f')}"
        )
    for v, p in profiles.items():
        print(
            f"\nprofile {v}: {fmt(p.get('gbit_s'), '.2f')} Gbit/s; share of samples: "
            + ", ".join(f"{k} {x:.1f} %" for k, x in p["shares_pct"].items())
        )
        for pct, sym in p["top"][:10]:
            print(f"  {pct:5.1f}%  {sym}")
    print(
        f"\n(Gbit/s: medians of {args.repeat}; 'x before': median over the variant / median of before; ct/flow: hub conntrack entries per overlay flow, tunnel + overlay; took {report['wall_seconds']} s; wrote {path})"
    )
    return 0


def chart(rows: list[dict[str, Any]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4))
    names = [r["variant"] for r in rows]
    ys = list(range(len(rows)))
    a.barh(ys, [r["clients_gbit_s"] or 0 for r in rows], color="tab:blue")
    a.set_yticks(ys, names)
    a.invert_yaxis()
    a.set_xlabel("hub path, client to client, Gbit/s (median)")
    b.barh(ys, [r["packets_per_s_per_busy_core"] or 0 for r in rows], color="tab:green")
    b.set_yticks(ys, [""] * len(ys))
    b.invert_yaxis()
    b.set_xlabel("hub WAN packets/s per busy core (median)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
