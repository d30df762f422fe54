"""What someone on the emulated internet can try against a router's tunnel, and what the router does with it:

- `inject`: clear tunnel datagrams (VXLAN or GENEVE, an inner frame carrying a mark) forged with a peer router's
  public address as source and sent to a router's tunnel port;
- `replay`: the ESP datagrams of one marked ping, recorded on the internet, sent again.

Each reports what reached the router's tunnel device (frames carrying the mark, counted on the device itself), and
what dropped the rest: the node's OVERLAY-IN chain, the kernel's XFRM counters, the SA's replay counter. The router
is reached through `Aim.on_router` (an argv wrapper: `ssh` into a booted VM as root, or `nsenter` into a lab
namespace), the sender and the recorder run in the internet namespace on this machine with raw sockets.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.shell import in_netns

OnNode = Callable[[list[str]], list[str]]
"""argv -> the argv that runs it as root on a node (a namespace of this machine, or a VM over SSH)."""


@dataclass(frozen=True)
class Aim:
    """A router's tunnel to one peer router, as seen from the internet, and how to act at both ends."""

    on_router: OnNode
    python: str
    device: str
    """The router's tunnel device to the peer."""
    vni: int
    port: int
    protocol: str
    peer_public: str
    router_public: str
    internet_ns: str
    ping: Callable[[bytes], object]
    """Sends one ping carrying the given 16-byte mark from the peer's site to the router's, across the tunnel."""
    window: float = 12.0
    """Seconds the recorder and the device counter listen: long enough for an SSH login to the VM and the ping."""


def tunnel_header(protocol: str, vni: int) -> bytes:
    """VXLAN (RFC 7348: the I flag, VNI) or GENEVE (RFC 8926: version 0, no options, protocol 0x6558, VNI) header."""
    if protocol == "vxlan":
        return struct.pack("!B3s3sB", 0x08, b"\0\0\0", vni.to_bytes(3, "big"), 0)
    if protocol == "geneve":
        return struct.pack("!BBH3sB", 0, 0, 0x6558, vni.to_bytes(3, "big"), 0)
    raise ValueError(f"no tunnel header for {protocol!r}")


def forged_datagram(src: str, dst: str, port: int, vni: int, mark: bytes, protocol: str = "vxlan") -> bytes:
    """An IPv4/UDP datagram with a clear tunnel header and an inner broadcast frame carrying `mark` (pure)."""
    inner = b"\xff" * 6 + b"\x02\x00\x5e\x00\x53\x01" + b"\x88\xb5" + mark * 4  # local experimental ethertype
    payload = tunnel_header(protocol, vni) + inner
    udp = struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0x1234, 0, 64, 17, 0, socket.inet_aton(src), socket.inet_aton(dst))
    return header + udp


_SEND = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)\n"
    "for _ in range(int(sys.argv[3])): s.sendto(bytes.fromhex(sys.argv[2]), (sys.argv[1], 0))\n"
)

# Counts the frames that carry `mark` on one device, until its deadline: what "received" means for forged or replayed
# datagrams (a device counter would also count the overlay's own traffic). Prints "ready" once bound.
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


def _out(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def xfrm_stat(on: OnNode) -> dict[str, int]:
    text = subprocess.run(on(["cat", "/proc/net/xfrm_stat"]), capture_output=True, text=True).stdout
    return {k: int(v) for k, v in (line.split() for line in text.splitlines() if len(line.split()) == 2)}


def _input_drops(on: OnNode) -> int:
    """Packets the node's own OVERLAY-IN chain dropped (IPv4)."""
    text = subprocess.run(on(["iptables", "-w", "-n", "-v", "-x", "-L", "OVERLAY-IN"]), capture_output=True, text=True).stdout
    return sum(int(line.split()[0]) for line in text.splitlines()[2:] if line.split()[2:3] == ["DROP"])


def _sa_block(on: OnNode, spi: int) -> str:
    for block in re.split(r"(?m)^(?=src )", _out(on(["ip", "-s", "xfrm", "state", "list"]))):
        if f"spi 0x{spi:08x}" in block:
            return block
    return ""


def without_replay_window(on: OnNode, spis: list[int] | None = None) -> int:
    """Reinstall a node's ESP SAs (those of `spis`, or every one with a replay window) with the same keys and no
    replay window: the inbound SAs the static keys of earlier versions installed. Returns how many."""
    done = 0
    for block in re.split(r"(?m)^(?=src )", _out(on(["ip", "xfrm", "state", "list"]))):
        m = re.search(r"proto esp spi (0x[0-9a-f]+) reqid (\d+)", block)
        aead = re.search(r"aead (\S+) (0x[0-9a-f]+) (?:\(\d+ bits\) )?(\d+)", block)
        if not m or not aead or int(m.group(1), 16) == 0:
            continue
        window = re.search(r"replay[-_]window (\d+)", block)
        if (spis is not None and int(m.group(1), 16) not in spis) or (spis is None and not (window and int(window.group(1)))):
            continue
        head = block.split()
        sa = ["src", head[head.index("src") + 1], "dst", head[head.index("dst") + 1], "proto", "esp", "spi", m.group(1)]
        _out(on(["ip", "xfrm", "state", "delete", *sa]))
        add = [*sa, "reqid", m.group(2), "mode", "transport", "replay-window", "0", "aead", *aead.groups()]
        _out(on(["ip", "xfrm", "state", "add", *add, "encap", "espinudp", "4500", "4500", "0.0.0.0"]))
        done += 1
    return done


def _counter(aim: Aim, mark: bytes, seconds: float) -> subprocess.Popen[str]:
    """The router's device counter, bound and listening when this returns."""
    proc = subprocess.Popen(aim.on_router([aim.python, "-c", _COUNT, aim.device, mark.hex(), str(seconds)]), stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError(f"the frame counter on {aim.device} did not start")
    return proc


def _counted(proc: subprocess.Popen[str]) -> int:
    return int((proc.communicate(timeout=120)[0] or "0").strip().splitlines()[-1] or 0)


def _send(aim: Aim, datagram: bytes, count: int) -> None:
    _out(in_netns(aim.internet_ns, [sys.executable, "-c", _SEND, aim.router_public, datagram.hex(), str(count)]))


def _write(results: Path, name: str, report: dict[str, Any]) -> None:
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(report, indent=1))


def inject(aim: Aim, label: str, results: Path, count: int = 5) -> dict[str, Any]:
    """Forge clear tunnel datagrams from the peer router's public address to the router's tunnel port, on the
    internet, and report how many the router's tunnel device received and what dropped them (chain, XFRM)."""
    mark = f"forged-{label}".encode()[:16].ljust(16, b".")
    before = (xfrm_stat(aim.on_router), _input_drops(aim.on_router))
    counter = _counter(aim, mark, aim.window / 2)
    _send(aim, forged_datagram(aim.peer_public, aim.router_public, aim.port, aim.vni, mark, aim.protocol), count)
    seen = _counted(counter)
    after = (xfrm_stat(aim.on_router), _input_drops(aim.on_router))
    report = {
        "label": label,
        "protocol": aim.protocol,
        "sent": count,
        "from": aim.peer_public,
        "to": f"{aim.router_public}:{aim.port}",
        "device": aim.device,
        "received": seen,
        "firewall_drops": after[1] - before[1],
        "xfrm": {k: v - before[0].get(k, 0) for k, v in after[0].items() if v != before[0].get(k, 0)},
    }
    _write(results, f"inject-{label}", report)
    return report


def _replays(block: str) -> int:
    m = re.search(r"replay-window \d+ replay (\d+) failed", block)
    return int(m.group(1)) if m else -1


def replay(aim: Aim, label: str, results: Path, window_zero: bool = False) -> dict[str, Any]:
    """Record the ESP datagrams that carry one marked ping from the peer's site to the router's, then send them
    again from the internet, as a recorder could: report whether the router's tunnel delivered the replayed frames
    and what its SA's replay counter said. `window_zero` first reinstalls the router's inbound SA with the same keys
    and no replay window (what static keys gave: the control). `sa_gone` lists recorded SAs the router no longer
    held when the proof ended (replaced by a rekeying meanwhile): such a run proves nothing about replay."""
    mark = f"replay-{label}".encode()[:16].ljust(16, b".")
    argv = in_netns(aim.internet_ns, [sys.executable, "-c", _RECORD, aim.peer_public, aim.router_public, str(aim.window)])
    recorder = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert recorder.stdout is not None
    recorder.stdout.readline()  # ready
    first = _counter(aim, mark, aim.window)
    aim.ping(mark)
    recorded = [bytes.fromhex(line.strip()) for line in recorder.communicate(timeout=120)[0].splitlines() if line.strip()]
    delivered_first = _counted(first)
    spis = sorted({int.from_bytes(p[28:32], "big") for p in recorded})
    if window_zero:
        without_replay_window(aim.on_router, spis)
    before = {spi: _sa_block(aim.on_router, spi) for spi in spis}
    stat_before = xfrm_stat(aim.on_router)
    second = _counter(aim, mark, aim.window / 2)
    for packet in recorded:
        _send(aim, packet, 1)
    delivered_again = _counted(second)
    stat_after = xfrm_stat(aim.on_router)
    after = {spi: _sa_block(aim.on_router, spi) for spi in spis}
    report = {
        "label": label,
        "window_zero": window_zero,
        "recorded": len(recorded),
        "spis": [hex(s) for s in spis],
        "delivered_first": delivered_first,
        "replayed": len(recorded),
        "delivered_again": delivered_again,
        "sa_replay_counter": {hex(s): [_replays(before[s]), _replays(after[s])] for s in spis},
        "sa_gone": [hex(s) for s in spis if not before[s] or not after[s]],
        "xfrm": {k: v - stat_before.get(k, 0) for k, v in stat_after.items() if v != stat_before.get(k, 0)},
    }
    _write(results, f"replay-{label}", report)
    return report
