"""IPsec against clear tunnels, side by side inside the Debian-kernel VM (the host kernel has no ESP).

One VM boot: the lab (3 sites, containers as namespaces, VXLAN) comes up in clear, then encryption is switched in
place back and forth (none, ipsec, static, none, …); after each switch the same pairs are measured as in
bench/geneve_vm.py: TCP throughput (1 MiB writes for a few seconds) and ping RTT, underlay router→peer public
address and overlay hub↔spoke routers (IPv4 and IPv6). The CPU is emulated (qemu TCG, AES-GCM in software), so
only ratios inside this one run mean anything: ipsec/none per pair, and each mode's overlay/underlay.

ipsec is today's (IKEv2-keyed SAs with a 1,024-packet replay window); static is what earlier versions ran, the
same SAs with no replay window (lab.forgery.without_replay_window reinstalls the IKE SAs that way, same keys):
"before" and "after" measured in one run.

    .venv/bin/python -m bench.ipsec_vm [--rounds 3] [--seconds 3] [--aes-ni]

--aes-ni gives the guest (emulated) AES-NI and PCLMULQDQ and loads the kernel's aesni driver, as a cloud CPU
would have them: the comparison then no longer pays for AES in generic C. Writes bench/results/ipsec_vm.json
(ipsec_vm_aesni.json with --aes-ni).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.geneve_vm import RESULTS, ROOT, SITES, lab, rtt, throughput
from lab.progress import Progress
from lab.shell import in_netns

MODES = ("none", "ipsec", "static")
PAIRS = ("underlay", "overlay-v4", "overlay-v6")


def aead_driver() -> str:
    """The driver the kernel picked for rfc4106(gcm(aes)) (generic C or aesni)."""
    text = Path("/proc/crypto").read_text()
    for block in text.split("\n\n"):
        fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in block.splitlines() if ":" in line)}
        if fields.get("name") == "rfc4106(gcm(aes))":
            return fields.get("driver", "?")
    return "?"


def wire_sizes(internet_ns: str, src: str, dst: str, target: str, seconds: float, results: Path) -> dict[str, Any]:
    """Throughput once more while capturing the emulated internet: how big the tunnel datagrams are on the wire
    (clear VXLAN may cross as GSO super-packets, ESP is segmented to the MTU before it is encrypted)."""
    raw = results / "wire.json"
    cap = subprocess.Popen(
        in_netns(internet_ns, [sys.executable, "-m", "lab.capture", "--listen", str(raw)]), stdout=subprocess.PIPE, text=True
    )
    assert cap.stdout is not None
    cap.stdout.readline()  # listening
    mbit = throughput(src, dst, target, seconds)
    cap.terminate()
    cap.wait(timeout=60)
    sizes = [p["length"] for p in json.loads(raw.read_text()) if p["kind"] in ("esp", "clear_tunnel")]
    return {"mbit_s": mbit, "datagrams": len(sizes), "mean_bytes": statistics.mean(sizes), "max_bytes": max(sizes)}


def guest(rounds: int, seconds: float, results: Path, aes_ni: bool = False) -> int:
    sys.path.insert(0, str(ROOT))
    from lab.check import Lab
    from lab.forgery import without_replay_window

    if aes_ni:
        from lab.kernel_modules import CPU_CRYPTO_MODULES

        for module in CPU_CRYPTO_MODULES:
            proc = subprocess.run(["modprobe", module], capture_output=True, text=True)
            print(f"modprobe {module}: exit {proc.returncode} {proc.stderr.strip()}", flush=True)

    lab("up", "--containers", "netns", "--sites", SITES, "--protocol", "vxlan", "--encryption", "none", "--results", str(results))
    samples: list[dict[str, Any]] = []
    try:
        running = Lab()
        plan = running.plan
        hub, spoke = plan.router(plan.hub), plan.router(next(s.name for s in plan.config.sites if s.name != plan.hub))
        targets = {"underlay": running.state.public_ips[spoke.site], "overlay-v4": spoke.overlay_ipv4, "overlay-v6": spoke.overlay_ipv6}
        src, dst = running.node_ns(hub.name), running.node_ns(spoke.name)
        current = "none"
        progress = Progress(total=rounds * len(MODES) * len(PAIRS))
        for r in range(rounds):
            for mode in MODES:
                if mode == "static":
                    for router in plan.routers():
                        ns = running.node_ns(router.name)
                        without_replay_window(lambda argv, ns=ns: in_netns(ns, argv))
                elif mode != current:
                    lab("swap", "--encryption", mode, "--results", str(results))
                current = mode
                for pair in PAIRS:
                    mbit = throughput(src, dst, targets[pair], seconds)
                    ms = rtt(src, targets[pair])
                    samples.append({"round": r, "encryption": mode, "pair": pair, "mbit_s": mbit, "rtt_ms": ms})
                    progress.step(f"round {r + 1}/{rounds} {mode:5} {pair:10} {mbit:8.1f} Mbit/s {ms:.3f} ms")
                if r == 0:
                    wire = wire_sizes(running.layout.internet_ns, src, dst, targets["overlay-v4"], seconds, results)
                    samples.append({"round": r, "encryption": mode, "pair": "wire", **wire})
                    progress.note(f"round 1/{rounds} {mode:5} on the wire: {wire['datagrams']} datagrams, mean {wire['mean_bytes']:.0f} B")
        driver = aead_driver()
        print(f"rfc4106(gcm(aes)) driver: {driver}", flush=True)
        (results / "ipsec_vm_driver.txt").write_text(driver + "\n")
    finally:
        lab("down")
    (results / "ipsec_vm_samples.json").write_text(json.dumps(samples))
    return 0


def summarise(samples: list[dict[str, Any]]) -> dict[str, Any]:
    def med(mode: str, pair: str, key: str) -> float:
        return statistics.median(s[key] for s in samples if s["encryption"] == mode and s["pair"] == pair)

    wire = {s["encryption"]: s for s in samples if s["pair"] == "wire"}
    rows: dict[str, Any] = {
        mode: {pair: {"mbit_s": med(mode, pair, "mbit_s"), "rtt_ms": med(mode, pair, "rtt_ms")} for pair in PAIRS} for mode in MODES
    }
    for mode in MODES:
        for pair in ("overlay-v4", "overlay-v6"):
            rows[mode][pair]["ratio_to_underlay"] = rows[mode][pair]["mbit_s"] / rows[mode]["underlay"]["mbit_s"]
    rows["ipsec_over_none"] = {pair: rows["ipsec"][pair]["mbit_s"] / rows["none"][pair]["mbit_s"] for pair in PAIRS}
    rows["static_over_none"] = {pair: rows["static"][pair]["mbit_s"] / rows["none"][pair]["mbit_s"] for pair in PAIRS}
    rows["wire"] = {mode: {k: wire[mode][k] for k in ("datagrams", "mean_bytes", "max_bytes")} for mode in MODES if mode in wire}
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="IPsec against clear tunnels inside the Debian-kernel VM")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--aes-ni", action="store_true", help="give the guest (emulated) AES-NI and load the aesni driver")
    parser.add_argument("--guest", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.guest:
        return guest(args.rounds, args.seconds, args.guest, args.aes_ni)

    from lab.guest import GUEST_RESULTS
    from lab.qemu import AES_NI_CPU, DEFAULT_CPU, run_in_vm

    name = "ipsec_vm_aesni" if args.aes_ni else "ipsec_vm"
    out = RESULTS / name
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    res = run_in_vm(
        ["python3", "-m", "bench.ipsec_vm", "--guest", GUEST_RESULTS, "--rounds", str(args.rounds), "--seconds", str(args.seconds)]
        + (["--aes-ni"] if args.aes_ni else []),
        timeout=1800,
        results_dir=out,
        cpu=AES_NI_CPU if args.aes_ni else DEFAULT_CPU,
    )
    if res.exit_code != 0:
        print(f"the run in the VM failed (exit {res.exit_code}):\n{res.output[-3000:]}", file=sys.stderr)
        return 1
    samples = json.loads((out / "ipsec_vm_samples.json").read_text())
    rows = summarise(samples)
    report = {
        "benchmark": name,
        "cpu": AES_NI_CPU if args.aes_ni else DEFAULT_CPU,
        "aead_driver": (out / "ipsec_vm_driver.txt").read_text().strip() if (out / "ipsec_vm_driver.txt").exists() else "?",
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
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=1))
    for mode in MODES:
        r = rows[mode]
        print(
            f"{mode:5} underlay {r['underlay']['mbit_s']:7.1f} Mbit/s | overlay v4 {r['overlay-v4']['mbit_s']:7.1f} "
            f"({r['overlay-v4']['ratio_to_underlay']:.2f}) v6 {r['overlay-v6']['mbit_s']:7.1f} ({r['overlay-v6']['ratio_to_underlay']:.2f}) "
            f"| rtt v4 {r['overlay-v4']['rtt_ms']:.2f} ms"
        )
    for mode, w in rows["wire"].items():
        print(
            f"{mode:5} on the wire (overlay v4 transfer): {w['datagrams']} tunnel datagrams, mean {w['mean_bytes']:.0f} B, max {w['max_bytes']} B"
        )
    g, b = rows["ipsec_over_none"], rows["static_over_none"]
    print(
        f"IPsec/clear throughput: IKEv2 (after) v4 {g['overlay-v4']:.2f}, v6 {g['overlay-v6']:.2f} (underlay {g['underlay']:.2f}); "
        f"static keys (before) v4 {b['overlay-v4']:.2f}, v6 {b['overlay-v6']:.2f}; AES-GCM driver {report['aead_driver']}; wrote {RESULTS / f'{name}.json'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
