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
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Final

from lab.probes import ping
from lab.shell import in_netns

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


def forged_datagram(src: str, dst: str, port: int, vni: int, mark: bytes = PATTERN) -> bytes:
    """An IPv4/UDP datagram with a clear VXLAN header and an inner broadcast frame carrying `mark` (pure)."""
    inner = b"\xff" * 6 + b"\x02\x00\x5e\x00\x53\x01" + b"\x88\xb5" + mark * 4  # local experimental ethertype
    payload = struct.pack("!B3s3sB", 0x08, b"\0\0\0", vni.to_bytes(3, "big"), 0) + inner
    udp = struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0x1234, 0, 64, 17, 0, socket.inet_aton(src), socket.inet_aton(dst))
    return header + udp


def _xfrm_stat(sh: Any, ns: str) -> dict[str, int]:
    text = sh.run(["ip", "netns", "exec", ns, "cat", "/proc/net/xfrm_stat"], check=False).stdout
    return {k: int(v) for k, v in (line.split() for line in text.splitlines() if len(line.split()) == 2)}


def _rx_packets(sh: Any, ns: str, dev: str) -> int:
    doc = json.loads(sh.run(["ip", "-n", ns, "-s", "-j", "link", "show", dev]).stdout)
    return int(doc[0]["stats64"]["rx"]["packets"])


def _input_drops(sh: Any, ns: str) -> int:
    """Packets the node's own OVERLAY-IN chain dropped (IPv4)."""
    text = sh.run(["ip", "netns", "exec", ns, "iptables", "-w", "-n", "-v", "-x", "-L", "OVERLAY-IN"], check=False).stdout
    return sum(int(line.split()[0]) for line in text.splitlines()[2:] if line.split()[2:3] == ["DROP"])


_SEND = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)\n"
    "for _ in range(int(sys.argv[3])): s.sendto(bytes.fromhex(sys.argv[2]), (sys.argv[1], 0))\n"
)


# Counts the frames that carry `mark` on one device of a namespace, until its deadline: what "received" means for
# forged datagrams (a device counter would also count the overlay's own traffic).
_COUNT = (
    "import socket, sys, time\n"
    "s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))\n"
    "s.bind((sys.argv[1], 0))\n"
    "s.settimeout(0.2)\n"
    "mark, end, n = bytes.fromhex(sys.argv[2]), time.monotonic() + float(sys.argv[3]), 0\n"
    "print('ready', flush=True)\n"
    "while time.monotonic() < end:\n"
    "    try:\n"
    "        n += mark in s.recv(65535)\n"
    "    except socket.timeout:\n"
    "        pass\n"
    "print(n, flush=True)\n"
)


def _hub_tunnel() -> tuple[Any, str, Any, tuple[str, str, str]]:
    """The running lab, its first spoke, the hub's tunnel to it, and (spoke's public address, hub's, hub's namespace)."""
    from lab.check import Lab

    lab = Lab()
    plan = lab.plan
    hub = plan.router(plan.hub)
    spoke = next(s for s in plan.peer_sites(plan.hub))
    tunnel = next(t for t in hub.tunnels if t.peer_site == spoke and t.via == "internet")
    return lab, spoke, tunnel, (lab.layout.public_ips[spoke], lab.layout.public_ips[plan.hub], lab.layout.host(hub.name).ns)


def inject(label: str, results: Path, count: int = 5) -> dict[str, Any]:
    """Forge clear tunnel datagrams from a spoke router's public address to the hub's, on the emulated internet,
    and report whether the hub's tunnel device received them and what dropped them (firewall chain, XFRM)."""
    lab, _, tunnel, (src, dst, ns) = _hub_tunnel()
    plan = lab.plan
    mark = f"forged-{label}".encode()[:32].ljust(16, b".")
    before = (_rx_packets(lab.sh, ns, tunnel.name), _xfrm_stat(lab.sh, ns), _input_drops(lab.sh, ns))
    counter = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", _COUNT, tunnel.name, mark.hex(), "8"], stdout=subprocess.PIPE, text=True
    )
    assert counter.stdout is not None
    counter.stdout.readline()  # ready: the socket is bound before anything is sent
    # Sent from the emulated internet (where a forger sits), with a raw socket: the source address is the spoke's.
    datagram = forged_datagram(src, dst, plan.port, tunnel.vni, mark)
    lab.sh.run(["ip", "netns", "exec", lab.layout.internet_ns, sys.executable, "-c", _SEND, dst, datagram.hex(), str(count)])
    seen = int(counter.stdout.readline() or 0)
    counter.wait(timeout=30)
    after = (_rx_packets(lab.sh, ns, tunnel.name), _xfrm_stat(lab.sh, ns), _input_drops(lab.sh, ns))
    xfrm = {k: after[1][k] - before[1].get(k, 0) for k in after[1] if after[1][k] != before[1].get(k, 0)}
    report = {
        "label": label,
        "encryption": plan.config.encryption,
        "sent": count,
        "from": src,
        "to": dst,
        "device": tunnel.name,
        "received": seen,
        "device_rx": after[0] - before[0],
        "firewall_drops": after[2] - before[2],
        "xfrm": xfrm,
    }
    results.mkdir(parents=True, exist_ok=True)
    (results / f"inject-{label}.json").write_text(json.dumps(report, indent=1))
    print(f"inject {label}: {json.dumps(report)}", flush=True)
    return report


# Collects, for a while, every IPv4 datagram from argv[1] to argv[2] on UDP 4500 that is ESP (not IKE: the first four
# bytes of its payload are an SPI, never the non-ESP marker 0; not a NAT-keepalive, whose payload is the one byte
# 0xFF, RFC 3948 section 2.3, https://www.rfc-editor.org/rfc/rfc3948#section-2.3): what a recorder on the internet can keep.
_RECORD = (
    "import socket, struct, sys, time\n"
    "s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))\n"
    "s.settimeout(0.2)\n"
    "src, dst, end = socket.inet_aton(sys.argv[1]), socket.inet_aton(sys.argv[2]), time.monotonic() + float(sys.argv[3])\n"
    "print('ready', flush=True)\n"
    "while time.monotonic() < end:\n"
    "    try:\n"
    "        frame, addr = s.recvfrom(65535)\n"
    "    except socket.timeout:\n"
    "        continue\n"
    "    if addr[2] == socket.PACKET_OUTGOING:\n"
    "        continue\n"
    "    ip = frame\n"
    "    ihl = (ip[0] & 15) * 4\n"
    "    if ip[9] == 17 and ip[12:16] == src and ip[16:20] == dst and struct.unpack('!H', ip[ihl + 2 : ihl + 4])[0] == 4500:\n"
    "        if ip[ihl + 8 : ihl + 12] != b'\\0\\0\\0\\0' and struct.unpack('!H', ip[2:4])[0] - ihl - 8 > 8:\n"
    "            print(ip[: struct.unpack('!H', ip[2:4])[0]].hex(), flush=True)\n"
)


def _sa_block(sh: Any, ns: str, spi: int) -> str:
    out = sh.run(["ip", "-n", ns, "-s", "xfrm", "state", "list"]).stdout
    for block in re.split(r"(?m)^(?=src )", out):
        if f"spi 0x{spi:08x}" in block:
            return block
    return ""


def without_replay_window(sh: Any, ns: str, spis: list[int] | None = None) -> int:
    """Reinstall ESP SAs of a namespace (those of `spis`, or every one with a replay window) with the same keys and
    no replay window: the inbound SAs the static keys of earlier versions installed. Returns how many."""
    out = sh.run(["ip", "-n", ns, "xfrm", "state", "list"]).stdout
    done = 0
    for block in re.split(r"(?m)^(?=src )", out):
        m = re.search(r"proto esp spi (0x[0-9a-f]+) reqid (\d+)", block)
        aead = re.search(r"aead (\S+) (0x[0-9a-f]+) (?:\(\d+ bits\) )?(\d+)", block)
        if not m or not aead or int(m.group(1), 16) == 0:
            continue
        window = re.search(r"replay[-_]window (\d+)", block)
        if (spis is not None and int(m.group(1), 16) not in spis) or (spis is None and not (window and int(window.group(1)))):
            continue
        head = block.split()
        sa = ["src", head[head.index("src") + 1], "dst", head[head.index("dst") + 1], "proto", "esp", "spi", m.group(1)]
        sh.run(["ip", "-n", ns, "xfrm", "state", "delete", *sa])
        add = [*sa, "reqid", m.group(2), "mode", "transport", "replay-window", "0", "aead", *aead.groups()]
        sh.run(["ip", "-n", ns, "xfrm", "state", "add", *add, "encap", "espinudp", "4500", "4500", "0.0.0.0"])
        done += 1
    return done


def replay(label: str, results: Path, window_zero: bool = False) -> dict[str, Any]:
    """Record the ESP datagrams that carry one marked ping from a spoke's client to the hub's, then send them again
    from the emulated internet, as a recorder could: report whether the hub's tunnel delivered the replayed frames
    and what its SA's replay counter said. `window_zero` first reinstalls the hub's inbound SA with the same keys and
    no replay window (what static keys gave: the control)."""
    lab, spoke, tunnel, (src, dst, ns) = _hub_tunnel()
    plan, inet = lab.plan, lab.layout.internet_ns
    mark = f"replay-{label}".encode()[:16].ljust(16, b".")

    def count(seconds: float) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", _COUNT, tunnel.name, mark.hex(), str(seconds)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        proc.stdout.readline()
        return proc

    recorder = subprocess.Popen(["ip", "netns", "exec", inet, sys.executable, "-c", _RECORD, src, dst, "6"], stdout=subprocess.PIPE, text=True)
    assert recorder.stdout is not None
    recorder.stdout.readline()
    first = count(6)
    client_ns = lab.node_ns(plan.client(spoke).name)
    target = plan.client(plan.hub).overlay_ipv4
    lab.sh.run(["ip", "netns", "exec", client_ns, "ping", "-c", "1", "-W", "2", "-p", mark.hex(), target], check=False)
    recorded = [bytes.fromhex(line.strip()) for line in recorder.communicate(timeout=30)[0].splitlines() if line.strip()]
    delivered_first = int((first.communicate(timeout=30)[0] or "0").strip() or 0)
    spis = sorted({int.from_bytes(p[28:32], "big") for p in recorded})
    if window_zero:
        without_replay_window(lab.sh, ns, spis)
    before = {spi: _sa_block(lab.sh, ns, spi) for spi in spis}
    stat_before = _xfrm_stat(lab.sh, ns)
    second = count(4)
    for packet in recorded:
        lab.sh.run(["ip", "netns", "exec", inet, sys.executable, "-c", _SEND, dst, packet.hex(), "1"])
    delivered_again = int((second.communicate(timeout=30)[0] or "0").strip() or 0)
    stat_after = _xfrm_stat(lab.sh, ns)

    def replays(block: str) -> int:
        m = re.search(r"replay-window \d+ replay (\d+) failed", block)
        return int(m.group(1)) if m else -1

    report = {
        "label": label,
        "window_zero": window_zero,
        "recorded": len(recorded),
        "spis": [hex(s) for s in spis],
        "delivered_first": delivered_first,
        "replayed": len(recorded),
        "delivered_again": delivered_again,
        "sa_replay_counter": {hex(s): [replays(before[s]), replays(_sa_block(lab.sh, ns, s))] for s in spis},
        "xfrm": {k: stat_after[k] - stat_before.get(k, 0) for k in stat_after if stat_after[k] != stat_before.get(k, 0)},
    }
    results.mkdir(parents=True, exist_ok=True)
    (results / f"replay-{label}.json").write_text(json.dumps(report, indent=1))
    print(f"replay {label}: {json.dumps(report)}", flush=True)
    return report


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
    p.add_argument("--inject", metavar="LABEL", help="forge clear tunnel datagrams from a spoke to the hub (run in the internet namespace)")
    p.add_argument("--replay", metavar="LABEL", help="record a marked ping's ESP from a spoke to the hub and send it again")
    p.add_argument("--window-zero", action="store_true", help="with --replay: first reinstall the hub's SA without a replay window")
    p.add_argument("--wrong-key", metavar="ROUTER", help="push a router its config with other (wrong) pair keys")
    p.add_argument("--results", type=Path, default=Path("lab-results"))
    args = p.parse_args(argv)
    if args.wrong_key:
        return wrong_key(args.wrong_key)
    if args.replay:
        replay(args.replay, args.results, args.window_zero)
        return 0
    if args.inject:
        inject(args.inject, args.results)
        return 0
    if args.reapply is not None:
        return reapply(args.reapply or None)
    if args.listen is None:
        p.error("give --listen FILE or --reapply [NODE]")
    return listen(args.listen)


if __name__ == "__main__":
    sys.exit(main())
