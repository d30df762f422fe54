"""Lab lifecycles other than the dev stack: point-to-point with two sites, an interrupted up, GENEVE at up."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.state import load
from tests.lab.conftest import CLEAR, REPO, assert_clean, lab

pytestmark = pytest.mark.root
P2P_CONTAINERS = [f"{s}-c{i}" for s in ("aws", "gcp") for i in (1, 2, 3)]
DEV_CONTAINERS = [f"{s}-c{i}" for s in ("aws", "azure", "gcp", "oci", "alicloud", "vsphere") for i in (1, 2, 3)]


@pytest.mark.slow
def test_point_to_point_two_sites(no_lab: dict[str, object], tmp_path: Path) -> None:
    try:
        proc = lab("up", *CLEAR, "--sites", "aws,gcp", "--topology", "point-to-point")
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        st = load()
        assert st is not None
        plan = st.plan()
        assert {n.role for n in plan.routers()} == {"peer"}
        proc = lab("check", "--results", str(tmp_path))
        doc = json.loads((tmp_path / "check.json").read_text())
        assert proc.returncode == 0, doc["failures"][:10]
        assert doc["summary"]["pairs"] == 10 * 9 * 2 == doc["summary"]["passed"]
        assert [p["suite"] for p in doc["probes"]] == ["mtu"] * 4  # no hub to cross
        assert all(p["ok"] for p in doc["probes"])
    finally:
        assert lab("down").returncode == 0
    assert_clean(no_lab, P2P_CONTAINERS)


@pytest.mark.slow
@pytest.mark.parametrize("after", [2.0, 6.0])
def test_interrupted_up_then_down_leaves_nothing(no_lab: dict[str, object], after: float) -> None:
    up = subprocess.Popen(
        [sys.executable, "-m", "lab", "up", *CLEAR], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    time.sleep(after)
    up.send_signal(signal.SIGKILL)
    out, _ = up.communicate(timeout=30)
    print(out)
    assert up.returncode == -signal.SIGKILL, f"up finished before it could be interrupted:\n{out}"
    proc = lab("down")
    assert proc.returncode == 0, proc.stderr
    assert_clean(no_lab, DEV_CONTAINERS)


def test_up_ipsec_refused_early_on_a_kernel_without_esp(no_lab: dict[str, object]) -> None:
    proc = lab("up")  # the dev stack: encryption ipsec by default
    assert proc.returncode == 2
    assert "IPsec is not available on this host kernel" in proc.stderr
    assert "--encryption none" in proc.stderr and "python -m lab vm --encryption ipsec" in proc.stderr
    assert_clean(no_lab, DEV_CONTAINERS)


def test_up_geneve_refused_early(no_lab: dict[str, object]) -> None:
    proc = lab("up", "--protocol", "geneve")
    assert proc.returncode == 2
    assert "GENEVE is not available on this host kernel" in proc.stderr and "python -m lab vm" in proc.stderr
    assert_clean(no_lab, DEV_CONTAINERS)
