"""GENEVE, which this host kernel lacks, proven in a Debian cloud-kernel VM (qemu TCG: lab/vm.py, lab/qemu.py, lab/guest.py).

1. The self-test: 3 sites of Pulumi.dev.yaml (aws hub, gcp, azure) as namespaces in the VM, every node converged
   by its own rendered payload's unit command; every node/container pair pings over IPv4 and IPv6 through GENEVE
   devices, and iputils ping with don't-fragment passes at exactly the overlay MTU (one byte more does not).
2. The real lab in the VM: `python -m lab vm --sites aws,azure,gcp --protocol geneve` (up with namespace
   containers, check, down); its check matrix must pass.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.guest import SELFTEST_CONTAINERS, SELFTEST_SITES
from lab.qemu import run_in_vm
from lab.vm import selftest_argv
from lab.vmimage import VmImage, build_image

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the VM test runs qemu and the lab as root"),
    pytest.mark.skipif(
        shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 is missing (apt-get install qemu-system-x86)"
    ),
]

FIGURES: dict[str, object] = {}


@pytest.fixture(scope="module")
def image() -> VmImage:
    img = build_image()
    FIGURES["initramfs_mb"] = round(img.size / 1e6, 1)
    FIGURES["image_seconds"] = round(img.seconds, 1)
    FIGURES["image_built"] = img.built
    return img


def test_geneve_overlay_of_three_sites_from_their_payloads(image: VmImage, tmp_path: Path) -> None:
    res = run_in_vm(selftest_argv(), timeout=300, results_dir=tmp_path, image=image)
    FIGURES["selftest_vm_seconds"] = round(res.seconds, 1)
    FIGURES["boot_seconds"] = res.boot_seconds and round(res.boot_seconds, 1)
    assert not res.timed_out, f"the VM did not finish in 300 s:\n{res.output[-3000:]}"
    report_path = tmp_path / "selftest.json"
    assert report_path.exists(), f"no self-test report came back (exit {res.exit_code}):\n{res.output[-3000:]}"
    report = json.loads(report_path.read_text())
    FIGURES["selftest_seconds"] = report["seconds"]

    # The VM runs Debian's cloud kernel, with real GENEVE devices on every node.
    assert report["kernel"].endswith("-cloud-amd64")
    assert report["protocol"] == "geneve" and report["hub"] == "aws"
    routers = {f"{s}-router" for s in SELFTEST_SITES}
    clients = {f"{s}-client" for s in SELFTEST_SITES}
    assert set(report["tunnels"]) == routers | clients
    for node, devices in report["tunnels"].items():
        assert devices and set(devices.values()) == {"geneve"}, f"{node}: {devices}"
        text = (tmp_path / f"ip-d-link-{node}.txt").read_text()
        assert "geneve id" in text and "dstport 6081" in text, f"{node}: ip -d link shows no GENEVE device:\n{text}"
    # Hub-and-spoke: the hub tunnels to both spokes and its client, each spoke only to the hub and its client.
    assert sorted(report["tunnels"]["aws-router"]) == ["ovl-c1", "ovl-r2", "ovl-r3"]
    assert sorted(report["tunnels"]["gcp-router"]) == ["ovl-c3", "ovl-r1"]

    # Every node and container reaches every other one over IPv4 and IPv6.
    owners = len(SELFTEST_SITES) * (2 + SELFTEST_CONTAINERS)
    assert report["pairs"]["total"] == owners * (owners - 1) * 2
    assert report["pairs"]["failed"] == [], report["pairs"]["failed"][:20]
    # Don't-fragment at exactly the overlay MTU (Azure's 1400 underlay - 50), one byte more refused.
    assert report["mtu"] == 1350
    assert report["df"]["total"] > 0 and report["df"]["failed"] == [], report["df"]["failed"]
    assert report["passed"] and res.exit_code == 0


def test_lab_in_the_vm_passes_its_check_matrix(image: VmImage, tmp_path: Path) -> None:
    results = tmp_path / "results"
    started = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lab",
            "vm",
            "--sites",
            "aws,azure,gcp",
            "--protocol",
            "geneve",
            "--results",
            str(results),
            "--timeout",
            "420",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=480,
    )
    FIGURES["lab_vm_seconds"] = round(time.monotonic() - started, 1)
    tail = f"\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
    assert "plain network namespaces" in proc.stdout
    check = results / "check.json"
    assert check.exists(), f"no check results came back from the VM (exit {proc.returncode}):{tail}"
    doc = json.loads(check.read_text())
    FIGURES["lab_vm_summary"] = doc["summary"]
    summary = doc["summary"]
    # 3 sites: 3 routers, 3 clients and the stack's containers, every ordered pair over both families.
    assert summary["pairs"] > 0 and summary["failed"] == 0, f"{summary}; first failures: {doc['failures'][:10]}{tail}"
    assert summary["ok"], f"{summary}; probes: {[p for p in doc['probes'] if not p['ok']]}{tail}"
    assert proc.returncode == 0, tail
    assert (results / "check.xml").exists() or any(results.glob("*.xml")), "no JUnit file came back"


def teardown_module() -> None:
    if FIGURES:
        print(f"\nVM figures: {json.dumps(FIGURES)}")
