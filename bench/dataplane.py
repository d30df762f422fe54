"""Dataplane cost of the overlay in the lab: TCP throughput (iperf3) and ping RTT, overlay against underlay.

Brings up the dev stack with VXLAN (`python -m lab up --stack dev --protocol vxlan`), then measures, for the hub
and the two spokes the lab's own check uses (narrowest underlay first):

    underlay  hub router WAN   -> spoke router's public address    (through NAT and the emulated internet)
    underlay  spoke router WAN -> other spoke's public address     (the direct internet path between the spokes)
    overlay   hub router       -> spoke router     IPv4 / IPv6     (one tunnel)
    overlay   spoke client     -> other spoke's client  IPv4 / IPv6 (two tunnels, bridged through the hub)
    overlay   spoke container  -> other spoke's container IPv4 / IPv6 (Docker containers, same path plus veths)

Every case runs once per repetition, cases interleaved (A B C … A B C …), after one discarded warm-up pass;
the report gives medians and, per overlay case, the overlay/underlay ratio next to the packet-size reference

    reference = (overlay_mtu - inner IP header (20|40) - TCP 20 - timestamps 12)
              / (underlay path MTU - IPv4 20 - TCP 20 - timestamps 12)

where the underlay path MTU is the smallest MTU on the measured path (VM NICs 1500, each site's internet link its
underlay MTU). All links are veths in one kernel, so the ratio measures encapsulation CPU cost and packet size on
this machine's cores, not a cloud's network.

Two modes, each on a lab of its own, in one run:

    wire     every VM NIC segments what it sends (TSO and GSO off) and coalesces what it receives (GRO on), as a
             cloud VM's virtual NIC does: the emulated internet carries frames of at most the path MTU, and every
             hop between two VMs handles packets, not 64 kB GSO super-packets
    offload  the kernel's veth defaults: a TCP flow crosses the emulated internet as GSO super-packets, which a
             real network never carries (the tunnel packets do not: the VXLAN socket segments them on receipt)

The hub path (spoke client or container -> hub -> spoke) is also compared with its own underlay: the two legs
(spoke router -> hub public address, hub router -> other spoke public address) measured at the same time, so
the same cores carry both, and the slower of the two is the baseline. While the hub-path client run is under
way, 10 ms pings on the same path measure its RTT under load.

    .venv/bin/python -m bench.dataplane [--repeat 5] [--seconds 4] [--modes wire,offload] [--profile]

Writes bench/results/dataplane.json and .png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.labrun import RESULTS, fmt, lab, machine, median, require_no_lab, require_root, stamp, which_or_exit, write_json
from lab.probes import ping
from lab.progress import Progress
from lab.shell import in_netns

NAME = "dataplane"
PORT = 5201
IPV4_HEADER, IPV6_HEADER, TCP_HEADER, TCP_TIMESTAMPS = 20, 40, 20, 12
REFERENCE_FORMULA = (
    "reference = (overlay_mtu - inner_ip_header - 20 - 12) / (underlay_path_mtu - 20 - 20 - 12); "
    "inner_ip_header 20 (IPv4) or 40 (IPv6), 20 TCP header, 12 TCP timestamp option; "
    "underlay_path_mtu = min(VM NIC MTU, underlay MTU of every site on the path)"
)


@dataclass(frozen=True)
class Case:
    name: str
    layer: str
    """underlay or overlay"""
    src_ns: str
    dst_ns: str
    dst: str
    family: int
    path: str
    """What the packets cross, in words."""
    path_mtu: int
    """Smallest MTU the packets meet (overlay: the overlay MTU)."""
    baseline: str | None = None
    """The underlay case an overlay case is compared with."""
    tunnels: int = 0
    """VXLAN/GENEVE encapsulations a packet goes through on the way."""
    legs: tuple[tuple[str, str, str], ...] = ()
    """Underlay legs measured at the same time, (source ns, destination ns, destination): the case's throughput is
    the slower leg's. Empty: one flow from src_ns to dst."""
    loaded_rtt: bool = False
    """Also ping the destination while the iperf3 run is under way (RTT under load)."""
    hub: tuple[str, str] | None = None
    """(namespace, WAN NIC) of the hub router this case crosses: with --profile, its packet rate is counted and the
    whole machine sampled with perf during the first repetition."""


def tcp_payload(mtu: int, family: int) -> int:
    return mtu - (IPV4_HEADER if family == 4 else IPV6_HEADER) - TCP_HEADER - TCP_TIMESTAMPS


def reference_ratio(overlay: Case, underlay: Case) -> float:
    return tcp_payload(overlay.path_mtu, overlay.family) / tcp_payload(underlay.path_mtu, underlay.family)


def build_cases(hub_spoke: str | None = None, spokes: tuple[str, str] | None = None) -> list[Case]:
    """The measured paths of the running lab, read through the lab's own plan and layout."""
    from lab.check import Lab, spoke_pair
    from lab.topology import NIC_MTU

    lab_ = Lab()
    plan, layout = lab_.plan, lab_.layout
    hub = plan.hub
    a, b = spokes or spoke_pair(plan)
    s = hub_spoke or a
    edges = {e.site: e for e in layout.edges}

    def underlay_mtu(*sites: str) -> int:
        return min([NIC_MTU, *(edges[x].underlay_mtu for x in sites)])

    hr, sr = plan.router(hub), plan.router(s)
    ar, br_ = plan.router(a), plan.router(b)
    ac, bc = plan.client(a), plan.client(b)
    actr, bctr = ar.containers[0], br_.containers[0]
    ns = lab_.node_ns
    u_hs = f"underlay {hub}->{s}"
    u_ss = f"underlay {a}->{b}"
    u_legs = f"underlay {a}->{hub} + {hub}->{b} at once"
    mtu = plan.mtu
    cases = [
        Case(
            u_hs,
            "underlay",
            ns(hr.name),
            ns(sr.name),
            edges[s].public_ip,
            4,
            f"{hr.name} WAN -> {s} public {edges[s].public_ip} (NAT, internet)",
            underlay_mtu(hub, s),
        ),
        Case(
            u_ss,
            "underlay",
            ns(ar.name),
            ns(br_.name),
            edges[b].public_ip,
            4,
            f"{ar.name} WAN -> {b} public {edges[b].public_ip} (NAT, internet)",
            underlay_mtu(a, b),
        ),
        Case(
            u_legs,
            "underlay",
            ns(ar.name),
            ns(hr.name),
            edges[hub].public_ip,
            4,
            f"{ar.name} WAN -> {hub} public and, at the same time, {hr.name} WAN -> {b} public: the slower leg",
            min(underlay_mtu(a, hub), underlay_mtu(hub, b)),
            legs=((ns(ar.name), ns(hr.name), edges[hub].public_ip), (ns(hr.name), ns(br_.name), edges[b].public_ip)),
        ),
    ]
    for fam in (4, 6):
        cases.append(
            Case(
                f"overlay {hub}->{s} routers v{fam}",
                "overlay",
                ns(hr.name),
                ns(sr.name),
                sr.overlay_ipv4 if fam == 4 else sr.overlay_ipv6,
                fam,
                f"{hr.name} -> {sr.name} (hub -> spoke, one tunnel)",
                mtu,
                u_hs,
                1,
            )
        )
    for fam in (4, 6):
        cases.append(
            Case(
                f"overlay {a}->{hub}->{b} clients v{fam}",
                "overlay",
                ns(ac.name),
                ns(bc.name),
                bc.overlay_ipv4 if fam == 4 else bc.overlay_ipv6,
                fam,
                f"{ac.name} =lan=> {ar.name} => {hr.name} => {br_.name} =lan=> {bc.name} (spoke -> hub -> spoke; each client "
                "reaches its router through its own LAN tunnel: 4 tunnels)",
                mtu,
                u_legs,
                4,
                loaded_rtt=fam == 4,
                hub=(ns(hr.name), lab_.layout.host(hr.name).nics[0].name) if fam == 4 else None,
            )
        )
    for fam in (4, 6):
        cases.append(
            Case(
                f"overlay {a}->{hub}->{b} containers v{fam}",
                "overlay",
                actr.name,
                bctr.name,
                (bctr.ipv4 if fam == 4 else bctr.ipv6).split("/")[0],
                fam,
                f"container {actr.name} -> {bctr.name} (Docker on {ar.name} / {br_.name}, via hub {hr.name}: 2 tunnels)",
                mtu,
                u_legs,
                2,
            )
        )
    return cases


# --------------------------------------------------------------------------- measurements


def rtt_sample(case: Case, count: int, interval: float) -> dict[str, Any]:
    """`count` pings `interval` seconds apart: how many answered, RTT median, min and 90th percentile."""
    rtts = ping(case.dst, case.src_ns, count=count, interval=interval, wait=1, timeout=60 + count * interval * 2).rtts_ms
    return {
        "sent": count,
        "answered": len(rtts),
        "rtt_median_ms": statistics.median(rtts) if rtts else None,
        "rtt_min_ms": min(rtts) if rtts else None,
        "rtt_p90_ms": sorted(rtts)[int(0.9 * (len(rtts) - 1))] if rtts else None,
    }


def iperf(case: Case, seconds: int, omit: int = 1) -> dict[str, Any]:
    if case.legs:
        return iperf_legs(case, seconds, omit)
    argv = in_netns(case.src_ns, ["iperf3", "-c", case.dst, "-p", str(PORT), "-t", str(seconds), "-O", str(omit), "-J"])
    if not case.loaded_rtt:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + omit + 60, check=False)
        return iperf_result(proc.stdout, proc.stderr)
    # RTT under load: 10 ms pings over the same path for the iperf3 run's measured seconds.
    flow = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(omit + 0.2)
    loaded = rtt_sample(case, max(1, int((seconds - 0.5) / 0.01)), 0.01)
    out, err = flow.communicate(timeout=seconds + omit + 60)
    return {**iperf_result(out, err), "loaded_rtt_median_ms": loaded["rtt_median_ms"], "loaded_rtt_p90_ms": loaded["rtt_p90_ms"]}


def iperf_legs(case: Case, seconds: int, omit: int) -> dict[str, Any]:
    """The case's legs at the same time, each to its own server port; the result is the slower leg's."""
    flows = [
        subprocess.Popen(
            in_netns(src, ["iperf3", "-c", dst, "-p", str(PORT + i), "-t", str(seconds), "-O", str(omit), "-J"]),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, (src, _, dst) in enumerate(case.legs)
    ]
    results = [iperf_result(*flow.communicate(timeout=seconds + omit + 60)) for flow in flows]
    if not all(r.get("ok") for r in results):
        return {"ok": False, "error": "; ".join(str(r.get("error")) for r in results if not r.get("ok"))}
    slower = min(results, key=lambda r: r["gbit_s"])
    return {**slower, "legs_gbit_s": [r["gbit_s"] for r in results]}


def iperf_result(stdout: str, stderr: str) -> dict[str, Any]:
    try:
        doc = json.loads(stdout)
    except ValueError:
        return {"ok": False, "error": (stderr or stdout).strip()[-300:]}
    if "error" in doc or "end" not in doc:
        return {"ok": False, "error": str(doc.get("error", "no result"))}
    end = doc["end"]
    return {
        "ok": True,
        "gbit_s": end["sum_received"]["bits_per_second"] / 1e9,
        "retransmits": end.get("sum_sent", {}).get("retransmits"),
        "tcp_mss_default": doc.get("start", {}).get("tcp_mss_default"),
        "cpu_sender_pct": end.get("cpu_utilization_percent", {}).get("host_total"),
        "cpu_receiver_pct": end.get("cpu_utilization_percent", {}).get("remote_total"),
    }


def tx_counters(ns: str) -> dict[str, tuple[int, int]]:
    """link -> (tx packets, tx bytes) in a namespace; a veth counts a GSO super-packet as one packet."""
    proc = subprocess.run(["ip", "-n", ns, "-s", "-j", "link", "show"], capture_output=True, text=True, check=False)
    out = {}
    for link in json.loads(proc.stdout or "[]"):
        stats = link.get("stats64", link.get("stats", {})).get("tx", {})
        if link.get("ifname") != "lo" and stats:
            out[link["ifname"]] = (int(stats["packets"]), int(stats["bytes"]))
    return out


def sender_nic(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """The sender's busiest link during a run and the average size of what it transmitted per packet (skb): near
    the MTU when packets are segmented before they leave, tens of kB when GSO super-packets travel whole."""
    deltas = {k: (after[k][0] - v[0], after[k][1] - v[1]) for k, v in before.items() if k in after}
    if not deltas:
        return {}
    nic, (packets, octets) = max(deltas.items(), key=lambda kv: kv[1][1])
    return {"sender_nic": nic, "sender_bytes_per_tx_packet": round(octets / packets) if packets else None}


MODES = ("wire", "offload")
WIRE_FEATURES = ("tso", "off", "gso", "off", "gro", "on")


def vm_nics() -> list[tuple[str, str]]:
    """(namespace, NIC) of every VM NIC of the running lab (not the edges' or the internet's links)."""
    from lab.check import Lab

    layout = Lab().layout
    return [(host.ns, nic.name) for host in layout.hosts for nic in host.nics]


def set_wire_mode(nics: Sequence[tuple[str, str]]) -> list[str]:
    """Make every VM NIC segment what it sends and coalesce what it receives, as a cloud VM's NIC does; the
    settings as ethtool then reports them, one line per NIC."""
    shown = []
    for ns, nic in nics:
        subprocess.run(in_netns(ns, ["ethtool", "-K", nic, *WIRE_FEATURES]), check=True, capture_output=True, text=True)
        features = subprocess.run(in_netns(ns, ["ethtool", "-k", nic]), check=True, capture_output=True, text=True).stdout
        on = {line.split(":")[0].strip(): line.split(":")[1].split()[0] for line in features.splitlines() if ":" in line and line[0] != "F"}
        got = {k: on.get(k) for k in ("tcp-segmentation-offload", "generic-segmentation-offload", "generic-receive-offload")}
        if got != {"tcp-segmentation-offload": "off", "generic-segmentation-offload": "off", "generic-receive-offload": "on"}:
            raise RuntimeError(f"{ns} {nic}: wire mode not in effect: {got}")
        shown.append(f"{ns} {nic}: tso off, gso off, gro on")
    return shown


def route_mtu(case: Case) -> str:
    """What the kernel of the sender knows about the path after the runs (a learned PMTU shows as `mtu N`)."""
    proc = subprocess.run(in_netns(case.src_ns, ["ip", "route", "get", case.dst]), capture_output=True, text=True, check=False)
    return " ".join(proc.stdout.split())


class Servers:
    """One iperf3 server per destination namespace, stopped by pid."""

    def __init__(self, listeners: Sequence[tuple[str, int]]) -> None:
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        for ns, port in dict.fromkeys(listeners):
            self.procs[f"{ns}:{port}"] = subprocess.Popen(
                in_netns(ns, ["iperf3", "-s", "-p", str(port)]),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        time.sleep(1.0)
        dead = [ns for ns, p in self.procs.items() if p.poll() is not None]
        if dead:
            self.stop()
            raise RuntimeError(f"iperf3 server did not start in {', '.join(dead)}")

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def link_packets(ns: str, nic: str) -> int:
    """Packets received plus sent by one link so far (a GRO-merged packet counts once)."""
    proc = subprocess.run(["ip", "-n", ns, "-s", "-j", "link", "show", "dev", nic], capture_output=True, text=True, check=True)
    stats = json.loads(proc.stdout)[0].get("stats64", {})
    return int(stats["rx"]["packets"]) + int(stats["tx"]["packets"])


def cpu_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def perf_top(data: Path, limit: float = 1.0) -> list[tuple[float, str]]:
    """The kernel and user symbols with at least `limit` percent of the samples."""
    proc = subprocess.run(
        ["perf", "report", "-i", str(data), "--stdio", "--sort", "sym", "-q", "--percent-limit", str(limit)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    top = []
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].endswith("%"):
            top.append((float(parts[0].rstrip("%")), parts[-1]))
    return top


def profiled_iperf(case: Case, seconds: int, work: Path) -> dict[str, Any]:
    """One iperf3 run of a hub-path case while perf samples every CPU and the hub's WAN packets are counted: the
    packets the hub's WAN link carries per second, per busy core of the machine, and the top of the profile."""
    assert case.hub is not None
    hub_ns, hub_nic = case.hub
    data = work / "perf.data"
    packets0, (busy0, total0) = link_packets(hub_ns, hub_nic), cpu_busy()
    perf = subprocess.Popen(
        ["perf", "record", "-a", "-F", "999", "-o", str(data), "--", "sleep", str(seconds)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    started = time.monotonic()
    result = iperf(dataclasses.replace(case, loaded_rtt=False), seconds, omit=0)
    perf.wait(timeout=seconds + 60)
    elapsed = time.monotonic() - started
    packets1, (busy1, total1) = link_packets(hub_ns, hub_nic), cpu_busy()
    cores = os.cpu_count() or 1
    busy_cores = cores * (busy1 - busy0) / max(total1 - total0, 1)
    pps = (packets1 - packets0) / elapsed
    return {
        **result,
        "hub_wan_packets_per_s": round(pps),
        "busy_cores": round(busy_cores, 2),
        "hub_wan_packets_per_s_per_busy_core": round(pps / busy_cores) if busy_cores else None,
        "perf_top": perf_top(data),
    }


def measure(
    cases: list[Case], repeat: int, seconds: int, pings: int, progress: Progress | None = None, profile: Path | None = None
) -> dict[str, list[dict[str, Any]]]:
    samples: dict[str, list[dict[str, Any]]] = {c.name: [] for c in cases}
    servers = Servers([(c.dst_ns, PORT) for c in cases] + [(dst_ns, PORT + i) for c in cases for i, (_, dst_ns, _) in enumerate(c.legs)])
    progress = progress or Progress()
    progress.total = (progress.total or 0) + 1 + repeat * len(cases)
    try:
        for c in cases:
            progress.status(f"warm-up: {c.name}")
            rtt_sample(c, 5, 0.05)
            w = iperf(c, 1, omit=0)
            if not w.get("ok"):
                progress.note(f"  {c.name}: iperf3 failed: {w.get('error')}")
        progress.step("warm-up pass (discarded): neighbours, FDB, path MTU")
        for c in cases:
            if profile is not None and c.hub is not None:
                progress.status(f"profile: {c.name} ({seconds} s of iperf3 under perf)")
                got = profiled_iperf(c, seconds, profile)
                samples.setdefault(f"profile {c.name}", []).append(got)
                progress.note(
                    f"profile {c.name}: {fmt(got.get('gbit_s'), '.2f')} Gbit/s, hub WAN {got['hub_wan_packets_per_s']} packets/s, "
                    f"{got['busy_cores']} busy cores -> {got['hub_wan_packets_per_s_per_busy_core']} packets/s per busy core"
                )
        for rep in range(repeat):
            for c in cases:
                progress.status(f"repeat {rep + 1}/{repeat}: {c.name} ({seconds} s of iperf3)")
                p = rtt_sample(c, pings, 0.01)
                before = tx_counters(c.src_ns)
                t = iperf(c, seconds)
                nic = sender_nic(before, tx_counters(c.src_ns))
                samples[c.name].append({"rep": rep, **p, **t, **nic})
                progress.step(
                    f"repeat {rep + 1}/{repeat} {c.name:<38} {fmt(t.get('gbit_s'), '6.2f')} Gbit/s  "
                    f"rtt {fmt(p['rtt_median_ms'], '.3f')} ms  retr {t.get('retransmits', '-')}"
                    + ("" if t.get("ok") else f"  FAILED: {t.get('error')}")
                )
    finally:
        servers.stop()
        progress.finish()
    return samples


def summarise(cases: list[Case], samples: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    by_name = {c.name: c for c in cases}
    rows = []
    for c in cases:
        s = samples[c.name]
        row: dict[str, Any] = {
            **asdict(c),
            "runs": len(s),
            "failed_runs": sum(1 for x in s if not x.get("ok")),
            "gbit_s_median": median([x.get("gbit_s") for x in s]),
            "gbit_s_min": min((x["gbit_s"] for x in s if x.get("ok")), default=None),
            "gbit_s_max": max((x["gbit_s"] for x in s if x.get("ok")), default=None),
            "rtt_ms_median": median([x.get("rtt_median_ms") for x in s]),
            "retransmits_median": median([x.get("retransmits") for x in s]),
            "tcp_payload_per_packet": tcp_payload(c.path_mtu, c.family),
            "sender_nic": s[0].get("sender_nic") if s else None,
            "sender_bytes_per_tx_packet_median": median([x.get("sender_bytes_per_tx_packet") for x in s]),
            "loaded_rtt_ms_median": median([x.get("loaded_rtt_median_ms") for x in s]),
            "legs_gbit_s_median": [median([x["legs_gbit_s"][i] for x in s if x.get("legs_gbit_s")]) for i in range(len(c.legs))],
        }
        if c.baseline:
            base = by_name[c.baseline]
            bs = samples[base.name]
            # Ratios of each repetition's pair (measured back to back), then their median: robust to drifts in load.
            pairs = [(x["gbit_s"], y["gbit_s"]) for x, y in zip(s, bs, strict=False) if x.get("ok") and y.get("ok") and y["gbit_s"] > 0]
            ratio = statistics.median(o / u for o, u in pairs) if pairs else None
            ref = reference_ratio(c, base)
            rtt_pairs = [
                (x["rtt_median_ms"], y["rtt_median_ms"])
                for x, y in zip(s, bs, strict=False)
                if x.get("rtt_median_ms") and y.get("rtt_median_ms")
            ]
            row.update(
                baseline=base.name,
                ratio=ratio,
                reference=ref,
                reference_detail=(
                    f"({c.path_mtu} - {IPV4_HEADER if c.family == 4 else IPV6_HEADER} - 20 - 12) / ({base.path_mtu} - 20 - 20 - 12) "
                    f"= {tcp_payload(c.path_mtu, c.family)} / {tcp_payload(base.path_mtu, base.family)}"
                ),
                ratio_of_reference=(ratio / ref) if ratio is not None else None,
                rtt_ratio=statistics.median(o / u for o, u in rtt_pairs) if rtt_pairs else None,
            )
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'mode':<7} {'case':<44} {'tun':>3} {'Gbit/s':>7} {'RTT ms':>7} {'loaded':>7} {'ratio':>6} {'ref':>6} {'of ref':>7} "
        f"{'RTT x':>6} {'B/skb':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.get('mode', '-'):<7} {r['name']:<44} {r['tunnels']:>3} {fmt(r['gbit_s_median'], '7.2f')} {fmt(r['rtt_ms_median'], '7.3f')} "
            f"{fmt(r.get('loaded_rtt_ms_median'), '7.3f')} {fmt(r.get('ratio'), '6.2f')} {fmt(r.get('reference'), '6.3f')} "
            f"{fmt(r.get('ratio_of_reference'), '7.0%')} {fmt(r.get('rtt_ratio'), '6.2f')} {fmt(r.get('sender_bytes_per_tx_packet_median'), '7.0f')}"
        )
    return "\n".join(lines)


def chart(rows: list[dict[str, Any]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(13, max(5.0, 0.32 * len(rows))))
    names = [f"{r.get('mode', '')} {r['name']}".strip() for r in rows]
    ys = list(range(len(rows)))
    colours = ["tab:gray" if r["layer"] == "underlay" else "tab:blue" for r in rows]
    a.barh(ys, [r["gbit_s_median"] or 0 for r in rows], color=colours)
    for y, r in zip(ys, rows, strict=True):
        if r.get("ratio") is not None:
            a.text(
                (r["gbit_s_median"] or 0) * 1.01,
                y,
                f" {r['ratio']:.2f}x underlay (ref {r['reference']:.2f})",
                va="center",
                fontsize=8,
            )
    a.set_yticks(ys, names, fontsize=8)
    a.invert_yaxis()
    a.set_xlabel("TCP throughput, Gbit/s (median)")
    a.set_title("iperf3 throughput")
    b.barh(ys, [r["rtt_ms_median"] or 0 for r in rows], color=colours)
    b.set_yticks(ys, [""] * len(ys))
    b.invert_yaxis()
    b.set_xlabel("ping RTT, ms (median of per-run medians)")
    b.set_title("RTT")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=5, help="repetitions of every case (default 5)")
    parser.add_argument("--seconds", type=int, default=4, help="iperf3 seconds per run, after 1 s omitted (default 4)")
    parser.add_argument("--pings", type=int, default=50, help="pings per run at 10 ms (default 50)")
    parser.add_argument("--spokes", help="the two spokes to measure, comma-separated (default: the lab check's pair)")
    parser.add_argument(
        "--use-running-lab", action="store_true", help="measure a lab that is already up (dev, VXLAN) and leave it up afterwards (one mode)"
    )
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, in this order (default {','.join(MODES)})")
    parser.add_argument(
        "--profile", action="store_true", help="before the repetitions, one hub-path run under perf: hub packet rate, busy cores, top symbols"
    )
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if not modes or set(modes) - set(MODES):
        parser.error(f"--modes: choose among {', '.join(MODES)}")
    if args.use_running_lab and len(modes) != 1:
        parser.error("--use-running-lab measures one mode: give --modes wire or --modes offload")
    require_root()
    which_or_exit("iperf3", "iperf3")
    if "wire" in modes:
        which_or_exit("ethtool", "ethtool")
    if args.profile:
        which_or_exit("perf", "linux-perf")
    log = RESULTS / NAME / "lab.log"
    started = time.monotonic()
    progress = Progress(total=0 if args.use_running_lab else 2 * len(modes))  # up and down per mode when the benchmark starts the lab
    rows: list[dict[str, Any]] = []
    samples_by_mode: dict[str, Any] = {}
    routes: dict[str, dict[str, str]] = {}
    settings: dict[str, list[str]] = {}
    profiles: dict[str, dict[str, Any]] = {}
    cases: list[Case] = []
    for mode in modes:
        started_lab = False
        try:
            if not args.use_running_lab:
                require_no_lab()
                progress.note(f"{mode} mode: lab up --stack dev --protocol vxlan ...")
                started_lab = True
                up = lab(["up", "--stack", "dev", "--protocol", "vxlan", "--encryption", "none"], log=log, progress=progress)
                if not up.ok:
                    print(up.output[-3000:], file=sys.stderr)
                    return 1
                progress.step(f"{mode} mode: lab up in {up.seconds:.1f} s")
            settings[mode] = set_wire_mode(vm_nics()) if mode == "wire" else ["veth defaults (TSO, GSO on; GRO off)"]
            progress.note(f"{mode} mode: {len(settings[mode])} VM NIC setting(s) applied" if mode == "wire" else f"{mode} mode: veth defaults")
            pair = args.spokes.split(",") if args.spokes else []
            cases = build_cases(spokes=(pair[0], pair[1]) if len(pair) == 2 else None)
            for c in cases:
                progress.note(f"  {c.name}: {c.path} (path MTU {c.path_mtu})")
            profile_dir = RESULTS / NAME / mode if args.profile else None
            if profile_dir is not None:
                profile_dir.mkdir(parents=True, exist_ok=True)
            samples = measure(cases, args.repeat, args.seconds, args.pings, progress, profile_dir)
            routes[mode] = {c.name: route_mtu(c) for c in cases}
        finally:
            if started_lab:
                down = lab(["down"], log=log, progress=progress)
                progress.step(f"{mode} mode: lab down ({'ok' if down.ok else 'FAILED: ' + down.output[-500:]})")
        samples_by_mode[mode] = samples
        rows += [{"mode": mode, **row} for row in summarise(cases, samples)]
        for name, got in samples.items():
            if name.startswith("profile "):
                profiles[mode] = {"case": name.removeprefix("profile "), **got[0]}
    progress.finish()
    report = {
        "benchmark": NAME,
        "date": stamp(),
        "machine": machine(),
        "stack": "dev",
        "protocol": "vxlan",
        "repeat": args.repeat,
        "iperf_seconds": args.seconds,
        "pings_per_run": args.pings,
        "reference_formula": REFERENCE_FORMULA,
        "note": (
            "All lab links are veth pairs in one kernel on this machine: throughput is bound by CPU (iperf3 client, server "
            "and every namespace's forwarding share the cores), so an overlay/underlay ratio measures encapsulation CPU "
            "cost plus packet size, not a cloud network. 'ratio' is the median over repetitions of overlay/underlay measured "
            "back to back; 'reference' is the payload-per-packet share; 'ratio_of_reference' = ratio / reference."
        ),
        "modes": modes,
        "mode_settings": settings,
        "rows": rows,
        "profiles": profiles,
        "routes_after": routes,
        "samples": samples_by_mode,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    path = write_json(NAME, report)
    m = report["machine"]
    chart(
        rows,
        f"{NAME} {report['date']} {m['host']} ({m['cpus']} CPUs, {m['kernel']}); VXLAN, overlay MTU {cases[-1].path_mtu}; modes {', '.join(modes)}",
        RESULTS / f"{NAME}.png",
    )
    print()
    print(table(rows))
    for mode, prof in profiles.items():
        print(
            f"\n{mode} profile, {prof['case']}: {fmt(prof.get('gbit_s'), '.2f')} Gbit/s; hub WAN {prof['hub_wan_packets_per_s']} packets/s; "
            f"{prof['busy_cores']} busy cores; {prof['hub_wan_packets_per_s_per_busy_core']} packets/s per busy core"
        )
        for pct, sym in prof["perf_top"][:15]:
            print(f"  {pct:5.1f}%  {sym}")
    print(f"\nreference: {REFERENCE_FORMULA}")
    print(f"took {report['wall_seconds']} s; wrote {path} and {NAME}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
