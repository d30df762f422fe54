"""`pulumi stack output` at a glance: the hub, each site's platform, role, public address and overlay addresses
(`overview`), and each router's connectivity check in one line (`connectivitySummary`), next to the detailed
outputs the other tests read."""

from __future__ import annotations

import copy

from multicloud_overlay.components.exports import CHECK_OFF, connectivity_summary, connectivity_summary_output, site_overview
from multicloud_overlay.components.stack_file import read_stack_file
from tests.harness import ROOT, plan_of, run_cached

DEV = read_stack_file(ROOT / "Pulumi.dev.yaml")
DETAILED = {"hub", "protocol", "overlayMtu", "publicIps", "sites", "nodes", "tunnels", "containers", "connectivity"}


def test_the_dev_stack_exports_an_overview_of_every_site() -> None:
    run = run_cached(copy.deepcopy(DEV))
    plan = plan_of(DEV)
    assert set(run.outputs) >= DETAILED, "the detailed outputs stay"
    assert run.outputs["hub"] == "aws"
    overview = run.outputs["overview"]
    assert set(overview) == set(DEV["sites"])
    for site, facts in overview.items():
        router, client = plan.router(site), plan.client(site)
        assert facts["platform"] == DEV["sites"][site]["platform"]
        assert facts["siteId"] == DEV["sites"][site]["siteId"]
        assert facts["role"] == ("hub" if site == "aws" else "spoke")
        assert facts["publicIp"] == run.outputs["publicIps"][site] and facts["publicIp"]
        assert facts["router"] == {"ipv4": router.overlay_ipv4, "ipv6": router.overlay_ipv6}
        assert facts["client"] == {"ipv4": client.overlay_ipv4, "ipv6": client.overlay_ipv6}
        assert facts["containers"] == {
            c: {"ipv4": run.outputs["containers"][c]["ipv4"], "ipv6": run.outputs["containers"][c]["ipv6"]}
            for c in (f"{site}-c1", f"{site}-c2", f"{site}-c3")
        }
    assert overview["vsphere"]["publicIp"] == DEV["sites"]["vsphere"]["publicIp"]


def test_the_dev_stack_exports_a_connectivity_summary_per_router() -> None:
    """Under mocks the check prints nothing (as in a preview): every router says so."""
    run = run_cached(copy.deepcopy(DEV))
    summary = run.outputs["connectivitySummary"]
    assert summary["result"] == "not run"
    assert summary["routers"] == {f"{site}-router": "not run" for site in sorted(DEV["sites"])}


def test_a_stack_without_the_check_says_it_was_not_run() -> None:
    assert connectivity_summary_output(plan_of(DEV), {}) == CHECK_OFF == "not run (connectivityCheck is false)"


def test_one_line_per_router_naming_what_did_not_answer() -> None:
    plan = plan_of(DEV)
    owners = plan.address_owners()
    gcp = plan.client("gcp")
    every = {a: True for a in owners}
    failing = {**every, gcp.overlay_ipv4: False}
    summary = connectivity_summary(owners, {"aws-router": {"results": every}, "azure-router": {"results": failing}})
    assert summary == {
        "result": "failed",
        "reachable": 2 * 60 - 1,
        "total": 2 * 60,
        "routers": {"aws-router": "60/60 reachable", "azure-router": f"59/60 reachable; unreachable: gcp-client {gcp.overlay_ipv4}"},
    }
    assert connectivity_summary(owners, {"aws-router": {"results": every}})["result"] == "ok"
    assert connectivity_summary(owners, {"aws-router": {"results": every}, "gcp-router": None})["result"] == "incomplete"
    raw = connectivity_summary(owners, {"aws-router": {"raw": "sudo: a password is required"}})
    assert raw["result"] == "failed" and raw["routers"]["aws-router"].startswith("no readable result")


def test_the_overview_of_a_site_is_pure() -> None:
    plan = plan_of(DEV)
    assert site_overview(plan, "gcp", "198.51.100.3") == site_overview(plan, "gcp", "198.51.100.3")
    assert site_overview(plan, "gcp", None)["publicIp"] is None
