"""Lab lifecycles other than the dev stack: point-to-point with two sites, an interrupted up, and the dev stack with
what needs kernel support the lab host may lack (ESP for its default IPsec, GENEVE), chosen by probing the kernel."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.check import Lab
from lab.lifecycle import esp_supported, geneve_supported
from lab.probes import ping
from lab.shell import Shell
from lab.state import load
from tests.lab.conftest import CLEAR, REPO, assert_clean, lab

pytestmark = pytest.mark.root
P2P_CONTAINERS = [f"{s}-c{i}" for s in ("aws", "gcp") for i in (1, 2, 3)]
DEV_CONTAINERS = [f"{s}-c{i}" for s in ("aws", "azure", "gcp", "oci", "alicloud", "vsphere") for i in (1, 2, 3)]


# Where the kernel has the feature, these tests bring up three of the dev stack's sites: the hub and two spokes, so
# that spoke-to-spoke traffic crosses the hub (test_lab_dev.py runs all six). Lab commands get more time than the
# default: on a stock kernel these tests also run in a qemu TCG guest (python -m lab.bootimage run), where an up
# takes minutes.
THREE_SITES = ("--sites", "aws,azure,gcp")
SLOW_LAB = 1800


@pytest.fixture
def lab_taken_down(no_lab: dict[str, object]) -> Iterator[dict[str, object]]:
    """No lab at the start; at the end, even when the test failed, whatever it brought up is taken down and the host
    is as it was (a lab left up would fail every later lab test). Returns the host baseline."""
    yield no_lab
    proc = lab("down", timeout=SLOW_LAB)
    assert proc.returncode == 0, proc.stderr
    assert_clean(no_lab, DEV_CONTAINERS)


@pytest.mark.slow
def test_point_to_point_two_sites(lab_taken_down: dict[str, object], tmp_path: Path) -> None:
    # Up from the user-data alone first (no peer, no tunnel across sites): each site works and nothing crosses; the
    # push of every node's full config, as `pulumi up` does after the boots, joins them.
    proc = lab("up", *CLEAR, "--sites", "aws,gcp", "--topology", "point-to-point", "--no-push")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    st = load()
    assert st is not None
    plan = st.plan()
    assert {n.role for n in plan.routers()} == {"peer"}
    ns = Lab().node_ns(plan.client("aws").name)

    def reaches(target: str) -> bool:
        return ping(target, ns, count=2, wait=2).ok

    assert reaches(plan.router("aws").overlay_ipv4) and not reaches(plan.client("gcp").overlay_ipv4)
    proc = lab("push")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert reaches(plan.client("gcp").overlay_ipv4)
    proc = lab("check", "--results", str(tmp_path))
    doc = json.loads((tmp_path / "check.json").read_text())
    assert proc.returncode == 0, doc["failures"][:10]
    assert doc["summary"]["pairs"] == 10 * 9 * 2 == doc["summary"]["passed"]
    assert [p["suite"] for p in doc["probes"]] == ["mtu"] * 4  # no hub to cross
    assert all(p["ok"] for p in doc["probes"])
    assert lab("down").returncode == 0
    assert_clean(lab_taken_down, P2P_CONTAINERS)


@pytest.mark.slow
@pytest.mark.parametrize("at", ["internet ", "-client: booted and pushed"], ids=["internet-built", "first-client-pushed"])
def test_interrupted_up_then_down_leaves_nothing(lab_taken_down: dict[str, object], at: str) -> None:
    """`lab up` killed at a progress line (the internet built, so sites half made; or a first site pushed while
    others are still being made), not after a fixed time, which a fast host can outrun. `lab down` then removes
    everything it made."""
    up = subprocess.Popen(
        [sys.executable, "-m", "lab", "up", *CLEAR], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert up.stdout is not None
    seen: list[str] = []
    for line in up.stdout:
        seen.append(line)
        if at in line:
            up.send_signal(signal.SIGKILL)
            break
    rest, _ = up.communicate(timeout=30)
    out = "".join(seen) + rest
    print(out)
    assert up.returncode == -signal.SIGKILL, f"up finished before a line with {at!r}:\n{out}"
    proc = lab("down")
    assert proc.returncode == 0, proc.stderr
    assert_clean(lab_taken_down, DEV_CONTAINERS)


def check_passes(results: Path) -> dict:
    proc = lab("check", "--results", str(results), timeout=SLOW_LAB)
    doc = json.loads((results / "check.json").read_text())
    assert proc.returncode == 0, f"check failed: {doc['summary']}; first failures: {doc['failures'][:10]}\n{proc.stderr[-2000:]}"
    assert doc["summary"]["passed"] == doc["summary"]["pairs"] == 15 * 14 * 2  # 3 sites: router, client, 3 containers
    return doc


@pytest.mark.slow
def test_up_ipsec_by_kernel_capability(lab_taken_down: dict[str, object], tmp_path: Path) -> None:
    """The dev stack's encryption, ipsec (the default). A kernel with ESP runs it in the host lab: up, the full check,
    and a capture on the emulated internet that sees ESP and no overlay traffic in clear. A kernel without ESP
    refuses it before anything is made, naming both ways out."""
    has_esp = esp_supported(Shell())
    proc = lab("up", *THREE_SITES, timeout=SLOW_LAB)
    if not has_esp:
        assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert "IPsec is not available on this host kernel" in proc.stderr
        assert "--encryption none" in proc.stderr and "-m lab vm --encryption ipsec" in proc.stderr
        assert_clean(lab_taken_down, DEV_CONTAINERS)
        return
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    st = load()
    assert st is not None and st.plan().encrypted and st.plan().hub == "aws"
    check_passes(tmp_path)
    proc = lab("capture", "--results", str(tmp_path), timeout=SLOW_LAB)
    doc = json.loads((tmp_path / "capture-ipsec-vxlan.json").read_text())
    assert proc.returncode == 0 and doc["passed"], doc["verdict"]
    assert doc["esp"] > 0 and doc["clear_tunnel"] == 0 and doc["marker"] == 0 and doc["fragments"] == 0


@pytest.mark.slow
def test_up_geneve_by_kernel_capability(lab_taken_down: dict[str, object], tmp_path: Path) -> None:
    """`lab up --protocol geneve` (tunnels in clear: ESP does not matter here). A kernel with GENEVE runs it in the host
    lab: every router tunnel is a GENEVE device and the full check passes. A kernel without GENEVE refuses it before
    anything is made, pointing to the kernel VM."""
    has_geneve = geneve_supported(Shell())
    proc = lab("up", *CLEAR, *THREE_SITES, "--protocol", "geneve", timeout=SLOW_LAB)
    if not has_geneve:
        assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert "GENEVE is not available on this host kernel" in proc.stderr and "-m lab vm" in proc.stderr
        assert_clean(lab_taken_down, DEV_CONTAINERS)
        return
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    st = load()
    assert st is not None
    plan = st.plan()
    assert plan.protocol == "geneve"
    for router in plan.routers():
        for tunnel in router.tunnels:
            out = subprocess.run(
                ["nsenter", f"--net=/run/netns/mco-{router.name}", "--", "ip", "-d", "-j", "link", "show", tunnel.name],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            assert json.loads(out)[0]["linkinfo"]["info_kind"] == "geneve", f"{router.name} {tunnel.name}: {out}"
    check_passes(tmp_path)
