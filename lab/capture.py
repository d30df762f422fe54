"""What crosses the emulated internet: a packet capture that proves the overlay is (or is not) encrypted.

`python -m lab capture` listens on every link of the internet namespace (AF_PACKET, received packets only, so
each packet counts once per hop), sends marked pings across the overlay between two sites (a known 16-byte
pattern in every payload, IPv4 and IPv6, one IPv4 ping filling the overlay MTU with don't-fragment) and
classifies what it saw:

- esp: ESP in UDP 4500 (RFC 3948; the non-ESP marker 0 excluded) or raw ESP (IP protocol 50);
- clear_tunnel: VXLAN (UDP 4789) or GENEVE (UDP 6081) datagrams, whose payload is the overlay frame in clear (each
  counted by the header its bytes carry, and by port);
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
from typing import TYPE_CHECKING, Any, Final

from lab.probes import ping
from lab.shell import in_netns

if TYPE_CHECKING:
    from lab.forgery import Aim

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
            out["port"] = dport
            out["header"] = tunnel_header(payload)
        else:
            out["kind"] = f"udp-{dport}"
    elif proto == 1:
        out["kind"] = "icmp"
    elif proto == 6:
        out["kind"] = "tcp"
    return out


def tunnel_header(payload: bytes) -> str:
    """Which tunnel header a clear datagram's payload carries, read from its bytes (not from its port).

    VXLAN (RFC 7348): flags byte with the I bit (0x08), 3 reserved bytes, VNI, reserved. GENEVE (RFC 8926): version
    0 in the top two bits, then flags, then protocol type 0x6558 (Transparent Ethernet Bridging) for an Ethernet
    payload, which is what the overlay carries."""
    if len(payload) < 8:
        return "short"
    if payload[0] >> 6 == 0 and payload[2:4] == b"\x65\x58":
        return "geneve"
    if payload[0] == 0x08 and payload[1:4] == b"\0\0\0" and payload[7] == 0:
        return "vxlan"
    return "unknown"


def summarise(packets: list[dict[str, Any]]) -> dict[str, Any]:
    kinds = Counter(p["kind"] for p in packets)
    esp = [p for p in packets if p["kind"] == "esp"]
    return {
        "packets": len(packets),
        "kinds": dict(sorted(kinds.items())),
        "esp": len(esp),
        "clear_tunnel": kinds.get("clear_tunnel", 0),
        "clear_by_header": dict(sorted(Counter(p["header"] for p in packets if p["kind"] == "clear_tunnel").items())),
        "clear_by_port": {str(k): v for k, v in sorted(Counter(p["port"] for p in packets if p["kind"] == "clear_tunnel").items())},
        "marker": sum(p["marker"] for p in packets),
        "fragments": sum(p["fragment"] for p in packets),
        "esp_max_length": max((p["length"] for p in esp), default=0),
        "esp_pairs": sorted({f"{p['src']} -> {p['dst']}" for p in esp}),
    }


def verdict(encrypted: bool, summary: dict[str, Any], pings_ok: bool, protocol: str = "vxlan") -> tuple[bool, str]:
    """Pass/fail of the proof and why (pure). In clear, every tunnel datagram must carry the configured protocol's
    header on its port, and none the other's."""
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
    port = str({v: k for k, v in TUNNEL_PORTS.items()}[protocol])
    if s["clear_tunnel"] and (
        s.get("clear_by_header") != {protocol: s["clear_tunnel"]} or s.get("clear_by_port") != {port: s["clear_tunnel"]}
    ):
        return (
            False,
            f"{protocol} overlay, but the tunnel datagrams carry {s.get('clear_by_header')} headers on ports {s.get('clear_by_port')}",
        )
    if s["clear_tunnel"] and s["marker"]:
        return True, (
            f"clear overlay visible as expected: {s['clear_tunnel']} {protocol} datagrams (header read, UDP {port}), "
            f"{s['marker']} with the marker"
        )
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
        in_netns(inet, [sys.executable, "-m", "lab.capture", "--listen", str(raw)]),
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()  # "listening"
        ns = lab.node_ns(src.name)

        def marked(target: str, count: int, interval: float, **size: Any) -> bool:
            return ping(target, ns, count=count, interval=interval, wait=2, pattern=PATTERN, quiet=True, timeout=120, **size).ok

        pings = {
            "ipv4": marked(dst.overlay_ipv4, 20, 0.05, size=200),
            "ipv6": marked(dst.overlay_ipv6, 20, 0.05, size=200),
            "ipv4_df_at_mtu": marked(dst.overlay_ipv4, 5, 0.1, packet_size=plan.mtu, df=True),
        }
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    packets = json.loads(raw.read_text()) if raw.exists() else []
    summary = summarise(packets)
    ok, why = verdict(plan.encrypted, summary, all(pings.values()), plan.protocol)
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
    vm = lab.layout.host(name)
    res = nodes.apply(lab.sh, vm.ns, name, payload, lab.state_dir, vm.kind == "router", runtime)  # type: ignore[arg-type]
    print(f"reapply {name}: ok={res.ok} changes={res.changes}", flush=True)
    return 0 if res.ok else 1


def lab_aim() -> Aim:
    """The running lab's hub router's tunnel to its first spoke, for lab.forgery (run as root where the lab runs)."""
    from lab.check import Lab
    from lab.forgery import Aim

    lab = Lab()
    plan = lab.plan
    hub = plan.router(plan.hub)
    spoke = next(iter(plan.peer_sites(plan.hub)))
    tunnel = next(t for t in hub.tunnels if t.peer_site == spoke and t.via == "internet")
    hub_ns, client_ns = lab.layout.host(hub.name).ns, lab.node_ns(plan.client(spoke).name)
    target = plan.client(plan.hub).overlay_ipv4
    return Aim(
        on_router=lambda argv: in_netns(hub_ns, argv),
        python=sys.executable,
        device=tunnel.name,
        vni=tunnel.vni,
        port=plan.port,
        protocol=plan.protocol,
        peer_public=lab.layout.public_ips[spoke],
        router_public=lab.layout.public_ips[plan.hub],
        internet_ns=lab.layout.internet_ns,
        ping=lambda mark: ping(target, client_ns, count=1, wait=2, pattern=mark, timeout=30),
        window=8.0,
    )


def wrong_key(node: str) -> int:
    """Push `node` (a router) its full config with each pair key replaced by another random one, as a router holding
    wrong credentials would have it; 0 if the push applied."""
    import os
    from typing import cast

    from lab import nodes
    from lab.check import Lab
    from lab.state import STATE_DIR

    lab = Lab()
    doc = nodes.lab_node_config(lab.state, lab.plan, node, dict(lab.layout.public_ips))
    changed = 0
    for t in doc["tunnels"]:
        if "psk" in t:
            t["psk"], changed = os.urandom(len(t["psk"]) // 2).hex(), changed + 1
    vm = lab.layout.host(node)
    res = nodes.push(lab.sh, vm.ns, node, doc, STATE_DIR, True, cast(nodes.Runtime, lab.state.containers))
    ike = STATE_DIR / "nodes" / node / "root" / "var" / "lib" / "multicloud-overlay" / "ike"
    env = {**os.environ, "STRONGSWAN_CONF": str(ike / "strongswan.conf")}
    closed = 0
    for t in doc["tunnels"]:
        if "psk" in t:
            argv = ["swanctl", "--terminate", "--ike", t["name"], "--force", "--timeout", "5", "--uri", f"unix://{ike}/charon.vici"]
            closed += subprocess.run(in_netns(vm.ns, argv), capture_output=True, env=env).returncode == 0
    print(f"wrong-key {node}: {changed} pair key(s) replaced, push ok={res.ok}, {closed} IKE SA(s) closed", flush=True)
    return 0 if res.ok and changed else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lab.capture")
    p.add_argument("--listen", type=Path, help="capture until SIGTERM and write the packets here")
    p.add_argument("--reapply", metavar="NODE", nargs="?", const="", help="re-run a node's unit command (default: the hub router)")
    p.add_argument("--inject", metavar="LABEL", help="forge clear tunnel datagrams from a spoke to the hub (lab.forgery)")
    p.add_argument("--replay", metavar="LABEL", help="record a marked ping's ESP from a spoke to the hub and send it again")
    p.add_argument("--window-zero", action="store_true", help="with --replay: first reinstall the hub's SA without a replay window")
    p.add_argument("--wrong-key", metavar="ROUTER", help="push a router its config with other (wrong) pair keys")
    p.add_argument("--results", type=Path, default=Path("lab-results"))
    args = p.parse_args(argv)
    if args.wrong_key:
        return wrong_key(args.wrong_key)
    if args.replay or args.inject:
        from lab import forgery

        if args.replay:
            report = forgery.replay(lab_aim(), args.replay, args.results, args.window_zero)
        else:
            report = forgery.inject(lab_aim(), args.inject, args.results)
        print(f"{'replay' if args.replay else 'inject'} {report['label']}: {json.dumps(report)}", flush=True)
        return 0
    if args.reapply is not None:
        return reapply(args.reapply or None)
    if args.listen is None:
        p.error("give --listen FILE, --reapply [NODE], --inject LABEL, --replay LABEL or --wrong-key ROUTER")
    return listen(args.listen)


if __name__ == "__main__":
    sys.exit(main())
