"""GENEVE against VXLAN, side by side inside the Debian-kernel VM (the host kernel has no geneve module).

One VM boot: the lab (3 sites, containers as namespaces) comes up with VXLAN, then the protocol is swapped in
place back and forth (VXLAN, GENEVE, VXLAN, …); after each swap the same pairs are measured: TCP throughput
(a stdlib sender/receiver moving 1 MiB writes for a few seconds) and ping RTT, underlay router→peer public
address and overlay hub↔spoke routers. The CPU is emulated (qemu TCG), so only ratios inside this one run mean
anything: GENEVE/VXLAN, and each protocol's overlay/underlay.

    .venv/bin/python -m bench.geneve_vm [--rounds 3] [--seconds 3]

Writes bench/results/geneve_vm.json and .png.
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lab.probes import ping
from lab.progress import Progress
from lab.shell import in_netns

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SITES = "aws,azure,gcp"
PORT = 5201


# ------------------------------------------------------------------ inside the VM


def sh(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)


def lab(*args: str) -> None:
    proc = sh(sys.executable, "-m", "lab", *args, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"lab {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")


def receiver(port: int) -> None:
    """Accept one connection and drain it (runs in the destination namespace); says "listening" once it is."""
    srv = socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True)
    print("listening", flush=True)
    conn, _ = srv.accept()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    while conn.recv_into(view):
        pass


def sender(target: str, port: int, seconds: float) -> None:
    """Send 1 MiB writes for `seconds`; print bytes and duration as JSON."""
    block = b"\0" * (1 << 20)
    with socket.create_connection((target, port), timeout=30) as s:
        started, sent = time.perf_counter(), 0
        while time.perf_counter() - started < seconds:
            s.sendall(block)
            sent += len(block)
        s.shutdown(socket.SHUT_WR)
        took = time.perf_counter() - started
    print(json.dumps({"bytes": sent, "seconds": took}))


def throughput(src_ns: str, dst_ns: str, target: str, seconds: float) -> float:
    """Mbit/s from src_ns to target (served in dst_ns). The sender starts once the receiver listens (a python3
    start under TCG on a busy host can take longer than any fixed wait)."""
    rx = subprocess.Popen(in_netns(dst_ns, [sys.executable, "-m", "bench.geneve_vm", "--receiver"]), stdout=subprocess.PIPE, text=True)
    sent = False
    try:
        assert rx.stdout is not None
        if rx.stdout.readline().strip() != "listening":
            raise RuntimeError(f"the receiver in {dst_ns} did not start (exit {rx.wait(timeout=60)})")
        proc = sh(
            *in_netns(src_ns, [sys.executable, "-m", "bench.geneve_vm", "--sender", target, "--seconds", str(seconds)]),
            timeout=seconds + 60,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"sender to {target} failed: {proc.stderr}")
        sent = True
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        return out["bytes"] * 8 / out["seconds"] / 1e6
    finally:
        if not sent:
            rx.kill()  # nobody will connect: do not wait for the receiver
        rx.wait(timeout=60)


def rtt(src_ns: str, target: str) -> float:
    """Mean RTT in ms of 10 pings 0.2 s apart."""
    echo = ping(target, src_ns, count=10, interval=0.2, wait=None, quiet=True, timeout=60)
    if not echo.ok or echo.avg_ms is None:
        raise RuntimeError(f"ping {target} failed: {echo.output}")
    return echo.avg_ms


def guest(rounds: int, seconds: float, results: Path) -> int:
    sys.path.insert(0, str(ROOT))
    from lab.check import Lab

    lab("up", "--containers", "netns", "--sites", SITES, "--protocol", "vxlan", "--results", str(results))
    samples: list[dict[str, Any]] = []
    try:
        running = Lab()
        plan = running.plan
        hub, spoke = plan.router(plan.hub), plan.router(next(s.name for s in plan.config.sites if s.name != plan.hub))
        public = running.state.public_ips[spoke.site]
        src, dst = running.node_ns(hub.name), running.node_ns(spoke.name)
        pairs = [
            ("underlay", src, dst, public),
            ("overlay-v4", src, dst, spoke.overlay_ipv4),
            ("overlay-v6", src, dst, spoke.overlay_ipv6),
        ]
        current = "vxlan"
        progress = Progress(total=rounds * 2 * len(pairs))
        for r in range(rounds):
            for protocol in ("vxlan", "geneve"):
                if protocol != current:
                    lab("swap", "--protocol", protocol, "--results", str(results))
                    current = protocol
                for name, src, dst, target in pairs:
                    mbit = throughput(src, dst, target, seconds)
                    ms = rtt(src, target)
                    samples.append({"round": r, "protocol": protocol, "pair": name, "mbit_s": mbit, "rtt_ms": ms})
                    progress.step(f"round {r + 1}/{rounds} {protocol:6} {name:10} {mbit:8.1f} Mbit/s {ms:.3f} ms")
    finally:
        lab("down")
    (results / "geneve_vm_samples.json").write_text(json.dumps(samples))
    return 0


# ------------------------------------------------------------------ on the host


def summarise(samples: list[dict[str, Any]]) -> dict[str, Any]:
    def med(protocol: str, pair: str, key: str) -> float:
        return statistics.median(s[key] for s in samples if s["protocol"] == protocol and s["pair"] == pair)

    rows: dict[str, Any] = {}
    for protocol in ("vxlan", "geneve"):
        rows[protocol] = {
            pair: {"mbit_s": med(protocol, pair, "mbit_s"), "rtt_ms": med(protocol, pair, "rtt_ms")}
            for pair in ("underlay", "overlay-v4", "overlay-v6")
        }
        for pair in ("overlay-v4", "overlay-v6"):
            rows[protocol][pair]["ratio_to_underlay"] = rows[protocol][pair]["mbit_s"] / rows[protocol]["underlay"]["mbit_s"]
    rows["geneve_over_vxlan"] = {
        pair: rows["geneve"][pair]["mbit_s"] / rows["vxlan"][pair]["mbit_s"] for pair in ("overlay-v4", "overlay-v6")
    }
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="GENEVE against VXLAN inside the Debian-kernel VM")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--guest", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--receiver", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--sender", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.receiver:
        receiver(PORT)
        return 0
    if args.sender:
        sender(args.sender, PORT, args.seconds)
        return 0
    if args.guest:
        return guest(args.rounds, args.seconds, args.guest)

    from lab.guest import GUEST_RESULTS
    from lab.qemu import run_in_vm

    out = RESULTS / "geneve_vm"
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    res = run_in_vm(
        ["python3", "-m", "bench.geneve_vm", "--guest", GUEST_RESULTS, "--rounds", str(args.rounds), "--seconds", str(args.seconds)],
        timeout=1800,
        results_dir=out,
    )
    if res.exit_code != 0:
        print(f"the run in the VM failed (exit {res.exit_code})", file=sys.stderr)
        return 1
    samples = json.loads((out / "geneve_vm_samples.json").read_text())
    rows = summarise(samples)
    report = {
        "benchmark": "geneve_vm",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()}; guest: Debian cloud kernel under qemu TCG (emulated CPU)",
        "sites": SITES,
        "rounds": args.rounds,
        "seconds_per_run": args.seconds,
        "note": "Emulated CPU: compare only inside this run (GENEVE/VXLAN; overlay/underlay per protocol).",
        "rows": rows,
        "samples": samples,
        "wall_seconds": time.monotonic() - started,
    }
    (RESULTS / "geneve_vm.json").write_text(json.dumps(report, indent=1))
    chart(rows)
    for protocol in ("vxlan", "geneve"):
        r = rows[protocol]
        print(
            f"{protocol:6} underlay {r['underlay']['mbit_s']:7.1f} Mbit/s | overlay v4 {r['overlay-v4']['mbit_s']:7.1f} "
            f"({r['overlay-v4']['ratio_to_underlay']:.2f}) v6 {r['overlay-v6']['mbit_s']:7.1f} ({r['overlay-v6']['ratio_to_underlay']:.2f}) "
            f"| rtt v4 {r['overlay-v4']['rtt_ms']:.2f} ms"
        )
    g = rows["geneve_over_vxlan"]
    print(f"GENEVE/VXLAN throughput: v4 {g['overlay-v4']:.2f}, v6 {g['overlay-v6']:.2f}; wrote {RESULTS / 'geneve_vm.json'}")
    return 0


def chart(rows: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = ["underlay", "overlay-v4", "overlay-v6"]
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.38
    for i, protocol in enumerate(("vxlan", "geneve")):
        ax.bar([x + i * width for x in range(len(pairs))], [rows[protocol][p]["mbit_s"] for p in pairs], width, label=protocol)
    ax.set_xticks([x + width / 2 for x in range(len(pairs))], pairs)
    ax.set_ylabel("Mbit/s (median, emulated CPU)")
    ax.set_title("GENEVE vs VXLAN inside the VM (hub ↔ spoke routers)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "geneve_vm.png", dpi=100)


if __name__ == "__main__":
    sys.exit(main())
