"""Two hubs in the lab (`standbyHub`): four sites, the hub on AWS, the standby on GCP, two spokes. The full matrix;
the standby lost and back (nothing moves), then the hub (the spokes move to the standby by BFD, and back); the two
hubs cut from each other; one spoke cut from the hub alone. Duplicate replies are counted everywhere: a frame
delivered twice, or a loop, would show as one; around each loss, so are the frames each bridge took."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.configs import stack_with_sites
from lab.check import Lab
from lab.faults import bridge_frames
from lab.probes import ping
from lab.state import STATE_DIR
from lab.underlay import drop_on_internet, site_matches
from tests.lab.conftest import check_passes, lab, lab_of_stack

pytestmark = [pytest.mark.root, pytest.mark.slow]

SITES = {"aws": ("aws", 1), "azure": ("azure", 2), "gcp": ("gcp", 3), "oci": ("oci", 4)}
CONTAINERS = [f"{s}-c1" for s in SITES]


@pytest.fixture(scope="module")
def two_hubs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    raw = stack_with_sites(SITES, "aws", containersPerRouter=1, standbyHub="gcp")
    yield from lab_of_stack(raw, "two-hubs", tmp_path_factory.mktemp("stacks"), CONTAINERS)


check = check_passes


def reaches(lab_: Lab, src: str, dst: str) -> tuple[bool, int]:
    """Whether a node answers pings from another, on IPv4 and IPv6, and how many replies came twice (ping's DUP!)."""
    ns = lab_.node_ns(src)
    node = lab_.plan.node(dst)
    echoes = [ping(a, ns, count=3, interval=0.2, wait=1) for a in (node.overlay_ipv4, node.overlay_ipv6)]
    return all(e.ok for e in echoes), sum(e.output.count("DUP!") for e in echoes)


def reach_while_dropped(lab_: Lab, matches: list[list[str]], paths: list[tuple[str, str]]) -> None:
    """While the emulated internet drops what `matches` names, each path answers on both families with no duplicate,
    its two ends having forgotten every neighbour first (ARP and neighbour discovery must work across the cut, not
    only what they had resolved before it); then the drop is lifted."""
    drop_on_internet(lab_.sh, lab_.layout.internet_ns, matches, True)
    try:
        time.sleep(1.5)
        for node in sorted({n for path in paths for n in path}):
            for family in ("-4", "-6"):
                lab_.sh.ns(lab_.node_ns(node), ["ip", family, "neigh", "flush", "all"])
        for src, dst in paths:
            ok, dups = reaches(lab_, src, dst)
            assert ok and dups == 0, (src, dst, dups)
    finally:
        drop_on_internet(lab_.sh, lab_.layout.internet_ns, matches, False)
    time.sleep(1.5)


def cut_matches(lab_: Lab, a: str, b: str) -> list[list[str]]:
    """Every datagram between two sites' public addresses on the emulated internet."""
    ips = dict(lab_.layout.public_ips)
    return [["-s", ips[a], "-d", ips[b]], ["-s", ips[b], "-d", ips[a]]]


def reach_with_a_site_cut_off(lab_: Lab, site: str, paths: list[tuple[str, str]]) -> None:
    """With `site` cut off the emulated internet, each path answers on both families with no duplicate."""
    reach_while_dropped(lab_, site_matches(dict(lab_.layout.public_ips)[site]), paths)


def test_the_full_matrix_passes_with_two_hubs(two_hubs: Path, tmp_path: Path) -> None:
    doc = check(tmp_path)
    assert doc["summary"]["pairs"] == doc["summary"]["passed"]


def test_a_push_right_after_up_changes_nothing(two_hubs: Path) -> None:
    """The first apply with a standby hub converges whole: the probe, FRR's sessions, the neighbours and the sysctls
    are all in place, so pushing the same config again changes nothing on any node."""
    proc = lab("push")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [ln for ln in proc.stdout.splitlines() if " change(s) in " in ln]
    assert len(lines) == 8 + 4 * 2 and all(" 0 change(s) in " in ln for ln in lines), proc.stdout


def test_the_standby_then_the_hub_lost_and_back_moves_only_what_it_must_with_no_loop(two_hubs: Path, tmp_path: Path) -> None:
    """`lab hub-loss` with two hubs: the standby lost and back (the spokes lose no ping between them), then the hub
    (they move to the standby and back, each outage under 1 s). No duplicate reply, and no bridge of a router that
    stayed up took more frames than the pings and BFD account for."""
    proc = lab("hub-loss", "--results", str(tmp_path), "--down-seconds", "5", timeout=600)
    doc = json.loads((tmp_path / "hub-loss-two-hubs.json").read_text())
    print(json.dumps(doc, indent=1))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    standby, hub = doc["standby_loss"], doc["hub_loss"]
    assert standby["node"] == "gcp-router" and hub["node"] == "aws-router"
    assert standby["lost"]["oci-client IPv4"] == standby["lost"]["oci-client IPv6"] == 0
    assert standby["lost"]["gcp-client IPv4"] > 0  # the standby's own client was down: the window saw the loss
    for target in doc["targets"].values():
        assert target["failover_outage_s"] < 1.0 and target["failback_outage_s"] < 1.0 and target["duplicates"] == 0
    for phase in (standby, hub):
        assert set(phase["bridge_frames"]) == {"aws-router", "azure-router", "gcp-router", "oci-router"} - {phase["node"]}
        # Each bridge took the pings it forwards (at least a third of them, echo and reply: the standby's own client's,
        # or the spokes'): a counter that did not move would prove nothing.
        assert all(phase["pings"] // 2 < n <= phase["frame_bound"] for n in phase["bridge_frames"].values()), phase
    check(tmp_path / "after")


@pytest.mark.parametrize(
    ("cut_sites", "paths"),
    [
        # The two hubs cut from each other: each spoke still reaches the other spoke and both hubs' sites.
        (("aws", "gcp"), [("azure-client", "oci-client"), ("azure-client", "gcp-client"), ("oci-client", "aws-client"), ("azure-client", "aws-client")]),
        # One spoke cut from the hub alone: it goes through the standby, and the hub reaches it through the standby.
        (("azure", "aws"), [("azure-client", "oci-client"), ("oci-client", "azure-client"), ("azure-client", "aws-client"), ("aws-client", "azure-client")]),
    ],
    ids=["hubs-cut-from-each-other", "one-spoke-cut-from-the-hub"],
)
def test_a_cut_path_keeps_every_spoke_path_without_duplicates(
    two_hubs: Path, tmp_path: Path, cut_sites: tuple[str, str], paths: list[tuple[str, str]]
) -> None:
    lab_ = Lab(STATE_DIR)
    reach_while_dropped(lab_, cut_matches(lab_, *cut_sites), paths)
    check(tmp_path)


def test_the_hub_and_the_standby_trade_places_in_place_and_the_new_standby_takes_over(two_hubs: Path, tmp_path: Path) -> None:
    """`lab swap --hub gcp --standby-hub aws`: the hub and the standby trade places in place, make-before-break,
    while 10 ms pings cross the hub between the spokes' clients and from each hub's client to a spoke's. Then the new
    hub is cut off: the spokes still reach each other, through the new standby (their BFD watchers follow the roles)."""
    proc = lab("swap", "--hub", "gcp", "--standby-hub", "aws", "--results", str(tmp_path), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    (result,) = tmp_path.glob("swap-gcp-*.json")
    doc = json.loads(result.read_text())
    print(json.dumps({k: doc[k] for k in ("before", "after", "stages", "ping", "other_paths")}, indent=1))
    assert (doc["before"]["hub"], doc["before"]["standbyHub"], doc["after"]["hub"], doc["after"]["standbyHub"]) == ("aws", "gcp", "gcp", "aws")
    assert doc["rebuilt"] == []
    paths = [doc["ping"], *doc["other_paths"]]
    assert {p["path"].split(" (")[0] for p in paths} == {"azure-client -> oci-client", "aws-client -> oci-client", "gcp-client -> oci-client"}
    for p in paths:
        assert p["converged"] and p["sent"] > 100 and p["duplicates"] == 0, p
        assert p["lost"] == 0, p
    check(tmp_path / "after-swap")
    lab_ = Lab(STATE_DIR)
    # The spokes' traffic now crosses gcp's bridge, not aws's: 300 echoes and 300 replies through the new hub, while
    # the new standby's bridge takes only BFD and the like (under a second of it at 100 frames a second).
    hubs = ("aws-router", "gcp-router")
    frames = {n: bridge_frames(lab_, n) for n in hubs}
    echo = ping(lab_.plan.node("oci-client").overlay_ipv4, lab_.node_ns("azure-client"), count=300, interval=0.005, quiet=True)
    took = {n: bridge_frames(lab_, n) - frames[n] for n in hubs}
    print("frames each hub's bridge took over 300 spoke-to-spoke pings:", took)
    assert echo.ok and took["gcp-router"] >= 600 > 200 >= took["aws-router"], took
    reach_with_a_site_cut_off(lab_, "gcp", [("azure-client", "oci-client"), ("oci-client", "aws-client"), ("aws-client", "azure-client")])
    check(tmp_path / "after-cut")


def test_the_hub_moves_to_a_spoke_with_a_standby_set_and_the_standby_still_takes_over(two_hubs: Path, tmp_path: Path) -> None:
    """After the trade (hub gcp, standby aws): `lab swap --hub oci`, a spoke becomes the hub and the old hub a spoke,
    the standby staying. 10 ms pings from the old and the new hub's clients to a spoke's: under 100 ms lost, no
    duplicate. Then the new hub is cut off, and the spokes (azure and the old hub, gcp) reach each other through the
    standby."""
    proc = lab("swap", "--hub", "oci", "--results", str(tmp_path), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    (result,) = tmp_path.glob("swap-oci-*.json")
    doc = json.loads(result.read_text())
    print(json.dumps({k: doc[k] for k in ("before", "after", "stages", "ping", "other_paths")}, indent=1))
    assert (doc["before"]["hub"], doc["after"]["hub"], doc["after"]["standbyHub"]) == ("gcp", "oci", "aws")
    assert doc["rebuilt"] == []
    paths = [doc["ping"], *doc["other_paths"]]
    assert {p["path"].split(" (")[0] for p in doc["other_paths"]} == {"gcp-client -> azure-client", "oci-client -> azure-client"}
    for p in paths:
        assert p["converged"] and p["sent"] > 100 and p["duplicates"] == 0, p
        assert p["outage_ms"] < 100, p
    check(tmp_path / "after-swap")
    lab_ = Lab(STATE_DIR)
    reach_with_a_site_cut_off(lab_, "oci", [("azure-client", "gcp-client"), ("gcp-client", "azure-client"), ("gcp-client", "aws-client")])
    check(tmp_path / "after-cut")
