"""IPsec against clear tunnels, side by side inside the Debian-kernel VM (the host kernel has no ESP).

One VM boot: the lab (3 sites, containers as namespaces, VXLAN) comes up in clear, then encryption is switched in
place back and forth (none, ipsec, none, …); after each switch the same pairs are measured as in
bench/geneve_vm.py: TCP throughput (1 MiB writes for a few seconds) and ping RTT, underlay router→peer public
address and overlay hub↔spoke routers (IPv4 and IPv6). The CPU is emulated (qemu TCG, AES-GCM in software), so
only ratios inside this one run mean anything: ipsec/none per pair, and each mode's overlay/underlay.

    .venv/bin/python -m bench.ipsec_vm [--rounds 3] [--seconds 3]

Writes bench/results/ipsec_vm.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.geneve_vm import RESULTS, ROOT, SITES, lab, rtt, throughput

MODES = ("none", "ipsec")
PAIRS = ("underlay", "overlay-v4", "overlay-v6")


def guest(rounds: int, seconds: float, results: Path) -> int:
    sys.path.insert(0, str(ROOT))
    from lab.state import STATE_DIR, load

    lab("up", "--containers", "netns", "--sites", SITES, "--protocol", "vxlan", "--encryption", "none", "--results", str(results))
    samples: list[dict[str, Any]] = []
    try:
        state = load(STATE_DIR)
        assert state is not None
        plan = state.plan()
        hub, spoke = plan.router(plan.hub), plan.router(next(s.name for s in plan.config.sites if s.name != plan.hub))
        targets = {"underlay": state.public_ips[spoke.site], "overlay-v4": spoke.overlay_ipv4, "overlay-v6": spoke.overlay_ipv6}
        current = "none"
        for r in range(rounds):
            for mode in MODES:
                if mode != current:
                    lab("swap", "--encryption", mode, "--results", str(results))
                    current = mode
                for pair in PAIRS:
                    src, dst = f"mco-{hub.name}", f"mco-{spoke.name}"
                    mbit = throughput(src, dst, targets[pair], seconds)
                    ms = rtt(src, targets[pair])
                    samples.append({"round": r, "encryption": mode, "pair": pair, "mbit_s": mbit, "rtt_ms": ms})
                    print(f"[{r + 1}/{rounds}] {mode:5} {pair:10} {mbit:8.1f} Mbit/s {ms:.3f} ms", flush=True)
    finally:
        lab("down")
    (results / "ipsec_vm_samples.json").write_text(json.dumps(samples))
    return 0


def summarise(samples: list[dict[str, Any]]) -> dict[str, Any]:
    def med(mode: str, pair: str, key: str) -> float:
        return statistics.median(s[key] for s in samples if s["encryption"] == mode and s["pair"] == pair)

    rows: dict[str, Any] = {
        mode: {pair: {"mbit_s": med(mode, pair, "mbit_s"), "rtt_ms": med(mode, pair, "rtt_ms")} for pair in PAIRS} for mode in MODES
    }
    for mode in MODES:
        for pair in ("overlay-v4", "overlay-v6"):
            rows[mode][pair]["ratio_to_underlay"] = rows[mode][pair]["mbit_s"] / rows[mode]["underlay"]["mbit_s"]
    rows["ipsec_over_none"] = {pair: rows["ipsec"][pair]["mbit_s"] / rows["none"][pair]["mbit_s"] for pair in PAIRS}
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="IPsec against clear tunnels inside the Debian-kernel VM")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--guest", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.guest:
        return guest(args.rounds, args.seconds, args.guest)

    from lab.vm import GUEST_RESULTS, run_in_vm

    out = RESULTS / "ipsec_vm"
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    res = run_in_vm(
        ["python3", "-m", "bench.ipsec_vm", "--guest", GUEST_RESULTS, "--rounds", str(args.rounds), "--seconds", str(args.seconds)],
        timeout=1800,
        results_dir=out,
    )
    if res.exit_code != 0:
        print(f"the run in the VM failed (exit {res.exit_code}):\n{res.output[-3000:]}", file=sys.stderr)
        return 1
    samples = json.loads((out / "ipsec_vm_samples.json").read_text())
    rows = summarise(samples)
    report = {
        "benchmark": "ipsec_vm",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()}; guest: Debian cloud kernel under qemu TCG (emulated CPU, no AES-NI)",
        "sites": SITES,
        "rounds": args.rounds,
        "seconds_per_run": args.seconds,
        "note": "Emulated CPU: compare only inside this run (ipsec/none; overlay/underlay per mode).",
        "rows": rows,
        "samples": samples,
        "wall_seconds": time.monotonic() - started,
    }
    (RESULTS / "ipsec_vm.json").write_text(json.dumps(report, indent=1))
    for mode in MODES:
        r = rows[mode]
        print(
            f"{mode:5} underlay {r['underlay']['mbit_s']:7.1f} Mbit/s | overlay v4 {r['overlay-v4']['mbit_s']:7.1f} "
            f"({r['overlay-v4']['ratio_to_underlay']:.2f}) v6 {r['overlay-v6']['mbit_s']:7.1f} ({r['overlay-v6']['ratio_to_underlay']:.2f}) "
            f"| rtt v4 {r['overlay-v4']['rtt_ms']:.2f} ms"
        )
    g = rows["ipsec_over_none"]
    print(
        f"IPsec/clear throughput: v4 {g['overlay-v4']:.2f}, v6 {g['overlay-v6']:.2f} (underlay {g['underlay']:.2f}); wrote {RESULTS / 'ipsec_vm.json'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
