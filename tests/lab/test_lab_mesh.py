"""A full mesh with two sites on one platform (AWS us-east-1 and us-west-2, "cloud within cloud") and one on GCP, brought
up in the lab: full matrix, spoke-to-spoke traffic on the direct tunnel (a third router's tunnels stay quiet),
a broadcast reaching each router exactly once (split horizon: no loop, no duplicate), and the switch to
hub-and-spoke and back in place."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.configs import stack_with_sites
from tests.lab.conftest import check_passes, lab, lab_of_stack, savings_in_effect, savings_missing

pytestmark = [pytest.mark.root, pytest.mark.slow]

SITES = {"awseast": ("aws", 1), "awswest": ("aws", 2), "gcp": ("gcp", 3)}
CONTAINERS = [f"{s}-c{i}" for s in SITES for i in (1, 2)]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    raw = stack_with_sites(SITES, "awseast", topology="full-mesh", containersPerRouter=2)
    raw["sites"]["awseast"]["region"], raw["sites"]["awswest"]["region"] = "us-east-1", "us-west-2"  # two regions of one cloud
    yield from lab_of_stack(raw, "mesh", tmp_path_factory.mktemp("stacks"), CONTAINERS)


check = check_passes


def test_two_regions_of_one_platform_in_a_full_mesh(mesh: Path, tmp_path: Path) -> None:
    doc = check(tmp_path)
    assert doc["topology"] == "full-mesh"
    eps = len(SITES) * (2 + 2)  # router, client, two containers per site
    assert doc["summary"]["pairs"] == eps * (eps - 1) * 2 and doc["summary"]["passed"] == doc["summary"]["pairs"]
    probes = {p["suite"]: p for p in doc["probes"]}
    assert "hub-transit" not in probes  # no hub to cross
    direct, loop = probes["direct-path"], probes["no-loop"]
    print(direct["detail"], loop["detail"], sep="\n")
    assert direct["ok"], direct["detail"]
    # The third router saw none of the burst: its tunnels toward both ends stayed quiet.
    assert all(v["rx"] < 10 and v["tx"] < 10 for v in direct["data"]["third_delta"].values()), direct["data"]
    assert loop["ok"], loop["detail"]
    assert all(20 <= v < 30 for v in loop["data"]["from_sender"].values()) and all(v < 10 for v in loop["data"]["via_others"].values())


def test_router_tunnels_are_isolated_ports_and_savings_hold(mesh: Path) -> None:
    from lab.check import Lab

    running = Lab()
    for router in running.plan.routers():
        links = json.loads(running.sh.run(["ip", "-n", running.node_ns(router.name), "-d", "-j", "link", "show"]).stdout)
        isolated = {
            link["ifname"]: link.get("linkinfo", {}).get("info_slave_data", {}).get("isolated")
            for link in links
            if link["ifname"].startswith(("ovl-r", "ovl-c"))
        }
        want = {t.name: t.via == "internet" for t in router.tunnels}
        assert isolated == want, (router.name, isolated)
    assert savings_missing(savings_in_effect()) == {}


def test_switch_to_hub_and_spoke_and_back_in_place(mesh: Path, tmp_path: Path) -> None:
    """The topology changes by pushing the new configs to the running nodes in the program's make-before-break
    order (what `pulumi up` does): isolation comes off for the hub before any spoke sends through it, spoke-to-spoke
    traffic crosses it, and back to the mesh; no probed ping is lost either way, the matrix passes each time."""
    for topology, hub_suite in (("hub-and-spoke", "hub-transit"), ("full-mesh", "direct-path")):
        proc = lab("swap", "--topology", topology, "--results", str(tmp_path / topology))
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
        (swapped,) = (tmp_path / topology).glob("swap-*.json")
        swap_doc = json.loads(swapped.read_text())
        pings = [(p["path"], p["lost"], p["duplicates"]) for p in [swap_doc["ping"], *swap_doc["other_paths"]]]
        assert all(lost == 0 and dup == 0 for _, lost, dup in pings), pings
        doc = check(tmp_path / topology)
        assert doc["topology"] == topology
        (probe,) = [p for p in doc["probes"] if p["suite"] == hub_suite]
        assert probe["ok"], probe["detail"]
