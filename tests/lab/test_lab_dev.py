"""The dev stack (six sites, VXLAN, hub-and-spoke, 18 Docker containers) brought up once for this module:
full matrix, MTU probes, hub transit, two hub swaps in place, a swap to GENEVE (in place where the kernel has
GENEVE, refused where it has not), and a clean down."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.lifecycle import geneve_supported
from lab.shell import Shell
from lab.state import STATE_DIR, load
from tests.lab.conftest import CLEAR, REPO, assert_clean, host_baseline, lab, savings_in_effect, savings_missing

LAB_ARGV = [sys.executable, "-m", "lab"]

pytestmark = [pytest.mark.root, pytest.mark.slow]

FIGURES: dict[str, object] = {}


@pytest.fixture(scope="module")
def dev_lab() -> Iterator[dict[str, object]]:
    from lab.lifecycle import lab_exists

    existing = lab_exists(STATE_DIR)
    if existing:
        pytest.fail(f"a lab is already up ({', '.join(existing[:3])}): run `python -m lab down` before the lab tests")
    baseline = host_baseline()
    started = time.monotonic()
    try:
        proc = lab("up", *CLEAR)
        FIGURES["up_seconds"] = round(time.monotonic() - started, 1)
        if proc.returncode != 0:
            pytest.fail(f"lab up failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        yield baseline
    finally:
        lab("down")  # also after a failed or timed-out up: no lab is left behind for the next tests


def run_check(results: Path) -> dict:
    started = time.monotonic()
    proc = lab("check", "--results", str(results))
    doc = json.loads((results / "check.json").read_text())
    doc["wall"] = time.monotonic() - started
    assert doc["encryption"] == "none", "check.json names the lab's encryption"
    assert proc.returncode == 0, f"check failed: {doc['summary']}; first failures: {doc['failures'][:10]}\n{proc.stderr[-2000:]}"
    return doc


def test_up_reports_every_node(dev_lab: dict[str, object]) -> None:
    st = load()
    assert st is not None and st.phase == "up"
    assert len(st.namespaces) == 1 + 6 + 12
    assert len(st.container_netns) == 18
    assert st.public_ips["vsphere"] == "203.0.113.60"  # its configured publicIp


def test_exec_and_status_reach_nodes_and_containers(dev_lab: dict[str, object]) -> None:
    """`lab status` says how to reach every node and container; `lab exec` runs there, stdin attached, with the
    command's exit status; an unknown name lists the valid ones."""
    status = lab("status")
    assert status.returncode == 0, status.stderr
    sock = f"unix://{STATE_DIR}/nodes/aws-router/docker.sock"
    for part in (
        "mco-aws-router",
        "-m lab exec gcp-client -- CMD",
        "ip netns exec mco-gcp-client CMD",
        f"docker -H {sock} exec -it aws-c1 CMD",
    ):
        assert part in status.stdout
    link = lab("exec", "aws-router", "--", "ip", "-br", "link", "show", "br-overlay")
    assert link.returncode == 0 and link.stdout.startswith("br-overlay"), link.stderr
    assert lab("exec", "aws-c1", "--", "hostname").stdout.strip() == "aws-c1"  # inside the container (docker exec)
    assert lab("exec", "gcp-client", "--", "sh", "-c", "exit 7").returncode == 7
    echo = subprocess.run(
        [*LAB_ARGV, "exec", "gcp-c2", "--", "cat"], cwd=REPO, input="through stdin\n", capture_output=True, text=True, timeout=60
    )
    assert (echo.returncode, echo.stdout) == (0, "through stdin\n"), echo.stderr
    unknown = lab("exec", "aws-c9", "--", "true")
    assert unknown.returncode == 2 and "aws-router" in unknown.stderr and "vsphere-c3" in unknown.stderr


def test_nodes_are_built_like_cloud_vms(dev_lab: dict[str, object]) -> None:
    def ns(node: str, *argv: str) -> str:
        return subprocess.run(["nsenter", f"--net=/run/netns/mco-{node}", "--", *argv], capture_output=True, text=True, check=True).stdout

    # The AWS router's hot-attached LAN NIC came unaddressed; the payload gave it its address.
    log = (STATE_DIR / "nodes/aws-router/root/var/log/overlay-node.log").read_text()
    assert "added 10.1.2.10/24 to LAN NIC eth1" in log
    # Azure's LAN NIC is configured by the platform (DHCP): the payload left it alone.
    assert "LAN NIC" not in (STATE_DIR / "nodes/azure-router/root/var/log/overlay-node.log").read_text()
    # The OCI image's REJECT rules are there, and the payload opened the tunnel port and bridged forwarding above them.
    rules = ns("oci-router", "iptables", "-S")
    assert rules.index("--dport 4789 -j ACCEPT") < rules.index("-A INPUT -j REJECT")
    assert rules.index("-i br-overlay -o br-overlay -j ACCEPT") < rules.index("-A FORWARD -j REJECT")
    # Tunnels bind the private WAN address and send to the peer's public address.
    link = json.loads(ns("azure-router", "ip", "-d", "-j", "link", "show", "ovl-r1"))[0]["linkinfo"]["info_data"]
    assert (link["local"], link["remote"]) == ("10.2.1.10", "198.51.100.11")
    # Azure's internet link carries its 1400-byte underlay MTU.
    inet = json.loads(subprocess.run(["ip", "-n", "mco-azure-edge", "-j", "link", "show", "inet"], capture_output=True, text=True).stdout)
    assert inet[0]["mtu"] == 1400
    # Real Docker containers, labelled by the node script, run on every router.
    ps = subprocess.run(
        ["docker", "ps", "--filter", "label=multicloud-overlay.node=gcp-router", "--format", "{{.Names}} {{.Image}}"],
        env={"DOCKER_HOST": f"unix://{STATE_DIR}/nodes/gcp-router/docker.sock", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    assert sorted(x for x in ps if x) == [f"gcp-c{i} mco-lab/busybox:latest" for i in (1, 2, 3)]
    # The tunnel path's per-packet savings are in effect on every node where they apply (lab.fastpath).
    states = savings_in_effect()
    assert len(states) == 12 and savings_missing(states) == {}, states
    # Bridged frames on the sites' segments (the cloud's fabric) cross no iptables in the edges.
    for key in ("iptables", "ip6tables"):
        got = subprocess.run(
            ["ip", "netns", "exec", "mco-aws-edge", "sysctl", "-n", f"net.bridge.bridge-nf-call-{key}"], capture_output=True, text=True
        )
        assert got.returncode != 0 or got.stdout.strip() == "0", got.stdout


def test_full_matrix_mtu_and_hub_transit(dev_lab: dict[str, object], tmp_path: Path) -> None:
    doc = run_check(tmp_path)
    FIGURES["check_seconds"] = round(doc["seconds"], 1)
    assert doc["summary"]["pairs"] == 30 * 29 * 2
    assert doc["summary"]["passed"] == doc["summary"]["pairs"]
    mtu = {(p["data"]["family"], p["data"]["size"]): p for p in doc["probes"] if p["suite"] == "mtu"}
    assert doc["mtu"] == 1350
    for fam in (4, 6):
        assert mtu[(fam, 1350)]["ok"] and mtu[(fam, 1350)]["data"]["answered"]
        assert mtu[(fam, 1351)]["ok"] and not mtu[(fam, 1351)]["data"]["answered"]
    (hub,) = [p for p in doc["probes"] if p["suite"] == "hub-transit"]
    assert hub["ok"], hub["detail"]
    assert len(hub["data"]["delta"]) == 2 and all(min(d["rx"], d["tx"]) >= 100 for d in hub["data"]["delta"].values())
    junit = ET.parse(tmp_path / "check.xml").getroot()
    assert junit.get("tests") == str(1740 + 5) and junit.get("failures") == "0"
    # The emulated internet delivered every tunnel datagram of the matrix intact, the vSphere site's too (its public
    # address is outside the others' /24): no router dropped one for a bad UDP checksum. Each router took at least
    # its site's share of the matrix through its tunnels: 25 remote endpoints x its 5 x 2 families, requests in and
    # replies in, 500 datagrams.
    received = {site: udp_counters(f"mco-{site}-router") for site in ("aws", "azure", "gcp", "oci", "alicloud", "vsphere")}
    assert all(c["InDatagrams"] >= 500 and c["InCsumErrors"] == 0 for c in received.values()), received


def udp_counters(ns: str) -> dict[str, int]:
    """A namespace's IPv4 UDP counters (/proc/net/snmp: a header line and a value line)."""
    snmp = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"], capture_output=True, text=True, check=True).stdout
    lines = [ln.split()[1:] for ln in snmp.splitlines() if ln.startswith("Udp:")]
    return dict(zip(lines[0], map(int, lines[1]), strict=True))


@pytest.mark.parametrize(("hub", "mode"), [("gcp", "make-before-break"), ("oci", "one-step"), ("aws", "make-before-break")])
def test_hub_swap_in_place(dev_lab: dict[str, object], tmp_path: Path, hub: str, mode: str) -> None:
    """A hub swap as the program pushes it (make-before-break) loses no ping on any probed path: two spokes' clients,
    and from the old and the new hub's clients; no reply comes twice. The one-step swap (every push at once) is the
    counter-test: the same probes see its outage."""
    proc = lab("swap", "--hub", hub, "--results", str(tmp_path), *(["--one-step"] if mode == "one-step" else []))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads((tmp_path / f"swap-{hub}-vxlan.json").read_text())
    assert doc["after"]["hub"] == hub and doc["mode"] == mode
    paths = [doc["ping"], *doc["other_paths"]]
    assert len(paths) == 3, [p["path"] for p in paths]  # spoke to spoke, old hub's site and new hub's site to a spoke
    if mode == "make-before-break":
        assert [s["stage"] for s in doc["stages"]] == ["prepare + push", f"switch {hub}-router", "switch", "push"]
        assert [(p["lost"], p["duplicates"]) for p in paths] == [(0, 0)] * 3, paths
    else:
        assert [s["stage"] for s in doc["stages"]] == ["push"]
        assert all(p["lost"] > 0 for p in paths), paths
    assert doc["rebuilt"] == []
    assert doc["fdb_fix"] is False and doc["stale_fdb_removed"] == [], "the node script must leave no MAC behind a dead-end tunnel"
    assert doc["snapshot_before"]["netns"] == doc["snapshot_after"]["netns"]
    assert doc["snapshot_before"]["containers"] == doc["snapshot_after"]["containers"]
    assert len(doc["snapshot_after"]["containers"]) == 18
    ping = doc["ping"]
    assert ping["converged"], ping
    FIGURES[f"swap_{hub}"] = {k: ping[k] for k in ("lost", "sent", "outage_ms", "converged_after_s")}
    print(f"swap to {hub}: {ping}")
    # The re-apply with the new config keeps every per-packet saving in effect.
    assert savings_missing(savings_in_effect()) == {}
    check = run_check(tmp_path)
    assert check["hub"] == hub
    (transit,) = [p for p in check["probes"] if p["suite"] == "hub-transit"]
    assert transit["data"]["hub"] == hub


def test_capture_sees_the_clear_overlay_on_the_internet(dev_lab: dict[str, object], tmp_path: Path) -> None:
    """The host lab runs the tunnels in clear (no ESP here): the capture on the emulated internet sees the marked
    pings inside VXLAN datagrams, and nothing else of the overlay (the kernel-VM test proves the encrypted case)."""
    proc = lab("capture", "--results", str(tmp_path))
    doc = json.loads((tmp_path / "capture-none-vxlan.json").read_text())
    assert proc.returncode == 0 and doc["passed"], doc["verdict"]
    assert doc["clear_tunnel"] > 0 and doc["marker"] > 0 and doc["esp"] == 0 and doc["fragments"] == 0
    # The protocol on the wire, read from each datagram's header: VXLAN on UDP 4789, nothing else.
    assert doc["clear_by_header"] == {"vxlan": doc["clear_tunnel"]} and doc["clear_by_port"] == {"4789": doc["clear_tunnel"]}
    assert all(doc["pings"].values()) and doc["mtu"] == 1350


def test_swap_to_geneve_by_kernel_capability(dev_lab: dict[str, object], tmp_path: Path) -> None:
    """`lab swap --protocol geneve`. A kernel with GENEVE converges the running lab to it in place (nothing rebuilt,
    the full check passes over GENEVE) and back to VXLAN; a kernel without GENEVE refuses it and the lab stays VXLAN."""
    if not geneve_supported(Shell()):
        proc = lab("swap", "--protocol", "geneve")
        assert proc.returncode == 2
        assert "GENEVE is not available on this host kernel" in proc.stderr and "-m lab vm" in proc.stderr
        st = load()
        assert st is not None and st.plan().protocol == "vxlan"
        return
    for protocol in ("geneve", "vxlan"):
        st = load()
        assert st is not None
        hub = st.plan().hub
        proc = lab("swap", "--protocol", protocol, "--results", str(tmp_path))
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        doc = json.loads((tmp_path / f"swap-{hub}-{protocol}.json").read_text())
        assert doc["after"]["protocol"] == protocol and doc["after"]["hub"] == hub
        assert doc["rebuilt"] == []
        assert doc["ping"]["converged"], doc["ping"]
        FIGURES[f"swap_{protocol}"] = {k: doc["ping"][k] for k in ("lost", "sent", "outage_ms", "converged_after_s")}
        st = load()
        assert st is not None and st.plan().protocol == protocol
        check = run_check(tmp_path)
        assert check["summary"]["pairs"] == 30 * 29 * 2


def test_up_refuses_an_existing_lab(dev_lab: dict[str, object]) -> None:
    proc = lab("up", *CLEAR)
    assert proc.returncode == 2 and "already exists" in proc.stderr
    assert lab("status").returncode == 0


def test_down_leaves_nothing(dev_lab: dict[str, object]) -> None:
    st = load()
    assert st is not None
    started = time.monotonic()
    proc = lab("down")
    FIGURES["down_seconds"] = round(time.monotonic() - started, 1)
    assert proc.returncode == 0, proc.stderr
    assert_clean(dev_lab, st.container_netns)
    print(f"lab figures: {FIGURES}")
