"""Pings from a network namespace: the one place the lab and the benchmarks send ICMP echo requests.

- `ping`: one target, one iputils `ping` process (count, interval, size or whole packet size, don't-fragment,
  payload pattern); gives answered/sent, the RTTs and the exit status.
- `ping_many`: every target at once from one namespace (one POSIX sh process, each target retried up to
  `attempts` times); gives per target the attempts used and whether it answered.
- `ping_many_raw`: the same without a process per ping (raw ICMP sockets in the calling thread), for machines where
  an exec is slow (the kernel VM under TCG).
- `Pinger`: a background `ping -D -O` logged to a file, for outages and recovery times (`parse_ping_log`).

Commands go through a `Run` callable (argv, timeout) -> CompletedProcess, so the lab can log them and unit tests
can fake them; the default runs them directly. Standard library only (lab.shell is too): this module also runs
inside the throw-away kernel VM.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, NamedTuple

from lab.shell import in_netns

Run = Callable[[list[str], float | None], "subprocess.CompletedProcess[str]"]
"""Runs argv with a timeout (seconds, None: no limit) and returns the finished process, whatever its exit status."""

ICMP_OVERHEAD: Final = {4: 20 + 8, 6: 40 + 8}
"""IP header + ICMP header: what an echo request adds to its payload (-s)."""

_RTT = re.compile(r"time=([0-9.]+) ms")
_TOTALS = re.compile(r"(?P<tx>\d+) packets transmitted, (?P<rx>\d+) received")
_AVG = re.compile(r"= [\d.]+/([\d.]+)/")
_REPLY = re.compile(r"^\[(?P<ts>\d+\.\d+)\] \d+ bytes from .*icmp_seq=(?P<seq>\d+)")


def run_local(argv: list[str], timeout: float | None) -> subprocess.CompletedProcess[str]:
    """The default Run: the command right here, output captured."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def family(address: str) -> int:
    return 6 if ":" in address else 4


def icmp_payload(packet_size: int, target: str) -> int:
    """The `ping -s` payload that makes an echo request to `target` exactly `packet_size` bytes of IP packet."""
    return packet_size - ICMP_OVERHEAD[family(target)]


# --------------------------------------------------------------------------- one target


@dataclass(frozen=True)
class Echo:
    """What one `ping` run gave."""

    target: str
    ok: bool
    """ping's own verdict: exit 0 (at least one reply)."""
    sent: int
    received: int
    rtts_ms: tuple[float, ...] = ()
    """Per reply (empty with quiet)."""
    avg_ms: float | None = None
    """From ping's summary line."""
    output: str = ""

    @property
    def last_line(self) -> str:
        lines = self.output.strip().splitlines()
        return lines[-1] if lines else ""


def ping_argv(
    target: str,
    *,
    count: int | None = 1,
    interval: float | None = None,
    wait: float | None = 1,
    size: int | None = None,
    df: bool = False,
    pattern: bytes | None = None,
    quiet: bool = False,
) -> list[str]:
    """An iputils ping command line (numeric output: never a name lookup)."""
    argv = ["ping", "-n"]
    if quiet:
        argv.append("-q")
    if df:
        argv += ["-M", "do"]
    if count is not None:
        argv += ["-c", str(count)]
    if interval is not None:
        argv += ["-i", str(interval)]
    if wait is not None:
        argv += ["-W", f"{wait:g}"]
    if size is not None:
        argv += ["-s", str(size)]
    if pattern is not None:
        argv += ["-p", pattern.hex()]
    return [*argv, target]


def parse_echo(target: str, proc: subprocess.CompletedProcess[str]) -> Echo:
    text = (proc.stdout or "") + (proc.stderr or "")
    totals = _TOTALS.search(text)
    avg = _AVG.search(proc.stdout or "")
    return Echo(
        target=target,
        ok=proc.returncode == 0,
        sent=int(totals["tx"]) if totals else 0,
        received=int(totals["rx"]) if totals else 0,
        rtts_ms=tuple(float(m.group(1)) for m in _RTT.finditer(proc.stdout or "")),
        avg_ms=float(avg.group(1)) if avg else None,
        output=text,
    )


def ping(
    target: str,
    ns: str | None = None,
    *,
    count: int = 1,
    interval: float | None = None,
    wait: float | None = 1,
    size: int | None = None,
    packet_size: int | None = None,
    df: bool = False,
    pattern: bytes | None = None,
    quiet: bool = False,
    attempts: int = 1,
    run: Run = run_local,
    timeout: float | None = None,
) -> Echo:
    """Ping `target` from namespace `ns`, up to `attempts` runs until one succeeds (the last run's result).

    size is ping's payload (-s); packet_size instead sets the whole IP packet (payload + IP + ICMP headers), what
    an MTU probe means (with df: don't fragment)."""
    if packet_size is not None:
        size = icmp_payload(packet_size, target)
    argv = in_netns(ns, ping_argv(target, count=count, interval=interval, wait=wait, size=size, df=df, pattern=pattern, quiet=quiet))
    if timeout is None:
        timeout = 30 + count * ((interval or 1.0) + (wait or 1))
    echo = Echo(target, False, 0, 0)
    for _ in range(max(1, attempts)):
        echo = parse_echo(target, run(argv, timeout))
        if echo.ok:
            break
    return echo


# --------------------------------------------------------------------------- many targets, one process


class Tries(NamedTuple):
    attempts: int
    """Pings sent (one at a time, until the first answer)."""
    ok: bool


def ping_script(targets: Sequence[str], attempts: int = 3, wait: int = 1) -> str:
    """POSIX sh (busybox too): ping every target at once, each up to `attempts` times; print 'target attempts ok'."""
    quoted = " ".join(shlex.quote(t) for t in targets)
    return (
        f"for t in {quoted}; do ( n=0; ok=0; while [ $n -lt {attempts} ]; do n=$((n+1)); "
        f'if ping -c 1 -W {wait} $t >/dev/null 2>&1; then ok=1; break; fi; done; echo "$t $n $ok" ) & done; wait'
    )


def parse_ping_lines(text: str) -> dict[str, Tries]:
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] in ("0", "1"):
            out[parts[0]] = Tries(int(parts[1]), parts[2] == "1")
    return out


def ping_many(
    targets: Sequence[str], ns: str | None = None, *, attempts: int = 3, wait: int = 1, run: Run = run_local, timeout: float | None = None
) -> dict[str, Tries]:
    """Ping every target at once from namespace `ns`; a target missing from the answer did not get a ping out."""
    if not targets:
        return {}
    proc = run(
        in_netns(ns, ["sh", "-c", ping_script(targets, attempts, wait)]), timeout if timeout is not None else 60 + 10 * attempts * wait
    )
    return parse_ping_lines(proc.stdout or "")


# --------------------------------------------------------------------------- many targets, raw sockets


CLONE_NEWNET: Final = 0x40000000


def enter_netns(path: str) -> None:
    """Move the calling thread (only) into the network namespace at path (/run/netns/NAME)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def icmp_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ping_many_raw(targets: Sequence[str], netns: str | None = None, rounds: int = 3, wait: float = 1.0) -> dict[str, bool]:
    """ICMP echo to every target at once from this thread's network namespace (or from netns, which this thread
    enters for good: run it in a thread of its own): raw sockets, no process per ping.

    A target counts as reachable when it answers any of `rounds` requests sent `wait` seconds apart.
    """
    import ipaddress
    import select
    import socket

    if netns is not None:
        enter_netns(f"/run/netns/{netns}")
    ident = (os.getpid() + threading.get_native_id()) & 0xFFFF
    v4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    v6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    answered = {t: False for t in targets}
    canon = {str(ipaddress.ip_address(t)): t for t in targets}
    try:
        for rnd in range(rounds):
            for seq, t in enumerate(targets):
                if answered[t]:
                    continue
                ident_seq = ident.to_bytes(2, "big") + (rnd * 1000 + seq).to_bytes(2, "big") + b"overlay"
                if ipaddress.ip_address(t).version == 4:
                    body = bytes([8, 0, 0, 0]) + ident_seq
                    v4.sendto(body[:2] + icmp_checksum(body).to_bytes(2, "big") + body[4:], (t, 0))
                else:  # the kernel fills in the ICMPv6 checksum
                    v6.sendto(bytes([128, 0, 0, 0]) + ident_seq, (t, 0))
            deadline = time.monotonic() + wait
            while not all(answered.values()) and (left := deadline - time.monotonic()) > 0:
                ready, _, _ = select.select([v4, v6], [], [], left)
                for sock in ready:
                    data, addr = sock.recvfrom(2048)
                    if sock is v4:
                        data = data[(data[0] & 0x0F) * 4 :]
                        ok = data[0] == 0
                    else:
                        ok = data[0] == 129
                    src = str(ipaddress.ip_address(addr[0].split("%")[0]))
                    if ok and int.from_bytes(data[4:6], "big") == ident and src in canon:
                        answered[canon[src]] = True
            if all(answered.values()):
                break
    finally:
        v4.close()
        v6.close()
    return answered


# --------------------------------------------------------------------------- a ping in the background


@dataclass
class PingLog:
    replies: dict[int, float] = field(default_factory=dict)
    """icmp_seq -> receive timestamp (time.time())"""
    transmitted: int = 0
    received: int = 0
    duplicates: int = 0
    """Replies ping marked DUP! (a second copy of one echo: a frame delivered twice, or a loop)."""


def parse_ping_log(text: str) -> PingLog:
    """Output of iputils `ping -D -O` (timestamps, 'no answer yet' lines) -> replies and totals."""
    log = PingLog()
    for line in text.splitlines():
        m = _REPLY.match(line.strip())
        if m and "DUP!" in line:
            log.duplicates += 1
            continue
        if m:
            log.replies.setdefault(int(m["seq"]), float(m["ts"]))
            continue
        s = _TOTALS.search(line)
        if s:
            log.transmitted, log.received = int(s["tx"]), int(s["rx"])
    return log


class Pinger:
    """A background `ping -D -O` every `interval` seconds from namespace `ns` to one address, logged to a file
    (timestamped replies and 'no answer yet' lines); stop() ends it with SIGINT so that ping writes its totals."""

    def __init__(self, target: str, ns: str | None, log_path: Path, interval: float, wait: float = 1, label: str | None = None) -> None:
        self.target = target
        self.label = label or target
        self.log_path = log_path
        argv = in_netns(ns, ["ping", "-D", "-O", "-n", "-i", str(interval), "-W", f"{wait:g}", target])
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("w") as f:
            self.proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> PingLog:
        return parse_ping_log(self.log_path.read_text(errors="replace"))

    def stop(self) -> PingLog:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.log()
