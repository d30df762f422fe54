"""What crosses the emulated internet: a packet capture that proves the overlay is (or is not) encrypted.

`python -m lab capture` listens on every link of the internet namespace (AF_PACKET, received packets only, so
each packet counts once per hop), sends marked pings across the overlay between two sites (a known 16-byte
pattern in every payload, IPv4 and IPv6, one IPv4 ping filling the overlay MTU with don't-fragment) and
classifies what it saw:

- esp: ESP in UDP 4500 (RFC 3948; the non-ESP marker 0 excluded) or raw ESP (IP protocol 50);
- clear_tunnel: VXLAN (UDP 4789) or GENEVE (UDP 6081) datagrams, whose payload is the overlay frame in clear;
- marker: packets whose bytes contain the ping pattern;
- fragments: IPv4 fragments (an encapsulation that did not fit the underlay MTU).

With encryption ipsec the proof passes when ESP flowed and no clear tunnel datagram, no marker and no fragment
crossed; without, when clear tunnel datagrams carrying the marker did (which shows the capture would see them).
Only stdlib at import time: the capture process itself runs in the internet namespace.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Final

PATTERN: Final = b"mco-overlay-mark"  # 16 bytes: the most iputils `ping -p` repeats
TUNNEL_PORTS: Final = {4789: "vxlan", 6081: "geneve"}
NATT_PORT: Final = 4500
ETH_P_ALL: Final = 0x0003
PACKET_OUTGOING: Final = 4


def classify(frame: bytes) -> dict[str, Any] | None:
    """One Ethernet frame -> what the proof counts (None for non-IPv4 frames: ARP, IPv6 neighbour discovery)."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return None
    ip = frame[14:]
    ihl = (ip[0] & 0x0F) * 4
    total, frag, proto = struct.unpack("!H", ip[2:4])[0], struct.unpack("!H", ip[6:8])[0], ip[9]
    out: dict[str, Any] = {
        "src": socket.inet_ntoa(ip[12:16]),
        "dst": socket.inet_ntoa(ip[16:20]),
        "proto": proto,
        "length": total,
        "fragment": bool(frag & 0x2000) or (frag & 0x1FFF) != 0,
        "marker": PATTERN in frame,
        "kind": f"ip-proto-{proto}",
    }
    if proto == 50:
        out["kind"] = "esp"
    elif proto == 17 and len(ip) >= ihl + 8 and (frag & 0x1FFF) == 0:
        sport, dport = struct.unpack("!HH", ip[ihl : ihl + 4])
        payload = ip[ihl + 8 :]
        if NATT_PORT in (sport, dport):
            out["kind"] = "esp" if payload[:4] != b"\0\0\0\0" and len(payload) > 8 else "natt-other"
        elif dport in TUNNEL_PORTS:
            out["kind"] = "clear_tunnel"
        else:
            out["kind"] = f"udp-{dport}"
    elif proto == 1:
        out["kind"] = "icmp"
    elif proto == 6:
        out["kind"] = "tcp"
    return out


def summarise(packets: list[dict[str, Any]]) -> dict[str, Any]:
    kinds = Counter(p["kind"] for p in packets)
    esp = [p for p in packets if p["kind"] == "esp"]
    return {
        "packets": len(packets),
        "kinds": dict(sorted(kinds.items())),
        "esp": len(esp),
        "clear_tunnel": kinds.get("clear_tunnel", 0),
        "marker": sum(p["marker"] for p in packets),
        "fragments": sum(p["fragment"] for p in packets),
        "esp_max_length": max((p["length"] for p in esp), default=0),
        "esp_pairs": sorted({f"{p['src']} -> {p['dst']}" for p in esp}),
    }


def verdict(encrypted: bool, summary: dict[str, Any], pings_ok: bool) -> tuple[bool, str]:
    """Pass/fail of the proof and why (pure)."""
    s = summary
    if not pings_ok:
        return False, "the marked pings were not answered: nothing to judge"
    if encrypted:
        problems = [
            f"{s['clear_tunnel']} clear tunnel datagram(s)" if s["clear_tunnel"] else "",
            f"{s['marker']} packet(s) with the marker in clear" if s["marker"] else "",
            f"{s['fragments']} fragment(s)" if s["fragments"] else "",
            "no ESP at all" if not s["esp"] else "",
        ]
        problems = [p for p in problems if p]
        if problems:
            return False, "encrypted overlay, but on the internet: " + ", ".join(problems)
        return True, f"only ESP between routers ({s['esp']} packets, largest {s['esp_max_length']} bytes), no clear frame, no fragment"
    if s["clear_tunnel"] and s["marker"]:
        return True, f"clear overlay visible as expected: {s['clear_tunnel']} tunnel datagrams, {s['marker']} with the marker"
    return False, "unencrypted overlay, yet the capture saw no clear tunnel datagram with the marker (the capture is blind?)"


# ------------------------------------------------------------------ the capture process (in the internet namespace)


def listen(out: Path) -> int:
    """Capture until SIGTERM/SIGINT, then write the classified packets to `out` as JSON."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.settimeout(0.2)
    packets: list[dict[str, Any]] = []
    stop = False

    def done(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, done)
    signal.signal(signal.SIGINT, done)
    print("listening", flush=True)
    while not stop:
        try:
            frame, addr = s.recvfrom(65535)
        except TimeoutError:
            continue
        except InterruptedError:
            continue
        if addr[2] == PACKET_OUTGOING:
            continue
        info = classify(frame)
        if info is not None:
            packets.append(info)
    out.write_text(json.dumps(packets))
    return 0


# ------------------------------------------------------------------ the proof against a running lab


def _ping(ns: str, target: str, extra: list[str]) -> bool:
    argv = ["nsenter", f"--net=/run/netns/{ns}", "--", "ping", "-q", "-n", "-W", "2", *extra, target]
    return subprocess.run(argv, capture_output=True, timeout=120).returncode == 0


def prove(results: Path, out: Any = print) -> dict[str, Any]:
    from lab.check import Lab

    lab = Lab()
    plan = lab.plan
    sites = [s.name for s in plan.config.sites]
    spokes = [s for s in sites if s != plan.hub] or sites
    src_site, dst_site = (spokes[0], spokes[1]) if len(spokes) > 1 else (spokes[0], plan.hub)
    src, dst = plan.client(src_site), plan.client(dst_site)
    results.mkdir(parents=True, exist_ok=True)
    raw = results / "capture-packets.json"
    raw.unlink(missing_ok=True)
    inet = lab.layout.internet_ns
    out(f"capture: listening on the internet ({inet}); marked pings {src.name} -> {dst.name} (v4, v6, v4 at MTU {plan.mtu} with DF)")
    proc = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{inet}", "--", sys.executable, "-m", "lab.capture", "--listen", str(raw)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()  # "listening"
        ns = lab.node_ns(src.name)
        pattern = ["-p", PATTERN.hex()]
        pings = {
            "ipv4": _ping(ns, dst.overlay_ipv4, ["-c", "20", "-i", "0.05", "-s", "200", *pattern]),
            "ipv6": _ping(ns, dst.overlay_ipv6, ["-c", "20", "-i", "0.05", "-s", "200", *pattern]),
            "ipv4_df_at_mtu": _ping(ns, dst.overlay_ipv4, ["-c", "5", "-i", "0.1", "-M", "do", "-s", str(plan.mtu - 28), *pattern]),
        }
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    packets = json.loads(raw.read_text()) if raw.exists() else []
    summary = summarise(packets)
    ok, why = verdict(plan.encrypted, summary, all(pings.values()))
    report = {
        "encryption": plan.config.encryption,
        "protocol": plan.protocol,
        "hub": plan.hub,
        "path": f"{src.name} -> {dst.name}",
        "mtu": plan.mtu,
        "pings": pings,
        **summary,
        "passed": ok,
        "verdict": why,
    }
    (results / f"capture-{plan.config.encryption}-{plan.protocol}.json").write_text(json.dumps(report, indent=1))
    out(f"capture: {len(packets)} packets on the internet, by kind: {summary['kinds']}")
    out(f"{'PASS' if ok else 'FAIL'} capture ({plan.config.encryption}, {plan.protocol}): {why}")
    return report


def reapply(node: str | None = None) -> int:
    """Run a node's payload unit command once more (default: the hub router); prints its change count."""
    from lab import nodes
    from lab.check import Lab

    lab = Lab()
    plan = lab.plan
    name = node or plan.router(plan.hub).name
    runtime = lab.state.containers
    payload = nodes.lab_user_data(lab.state, plan, name)
    vm = lab.layout.vm(name)
    res = nodes.apply(lab.sh, vm.ns, name, payload, lab.state_dir, vm.kind == "router", runtime)  # type: ignore[arg-type]
    print(f"reapply {name}: ok={res.ok} changes={res.changes}", flush=True)
    return 0 if res.ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lab.capture")
    p.add_argument("--listen", type=Path, help="capture until SIGTERM and write the packets here")
    p.add_argument("--reapply", metavar="NODE", nargs="?", const="", help="re-run a node's unit command (default: the hub router)")
    args = p.parse_args(argv)
    if args.reapply is not None:
        return reapply(args.reapply or None)
    if args.listen is None:
        p.error("give --listen FILE or --reapply [NODE]")
    return listen(args.listen)


if __name__ == "__main__":
    sys.exit(main())
