"""Stack outputs: what a user needs after `pulumi up`.

`pulumi stack output` at a glance: `hub`, `overview` (per site: platform, role, public address, the overlay
addresses of its router, client and containers) and `connectivitySummary` (per router: how many overlay addresses
answered, which did not, or that the check has not run); the detailed outputs follow (`nodes`, `tunnels`,
`containers`, `connectivity`: each router's full check result).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Final

import pulumi

from multicloud_overlay.components.connectivity import ConnectivityCheck
from multicloud_overlay.components.site import Site
from multicloud_overlay.overlay.plan import Plan

CHECK_OFF: Final = "not run (connectivityCheck is false)"
NOT_RUN: Final = "not run"


def stack_outputs(plan: Plan, sites: dict[str, Site], checks: dict[str, ConnectivityCheck]) -> dict[str, Any]:
    nodes: dict[str, Any] = {}
    for name, site in sites.items():
        assert site.router is not None and site.client is not None, "Site.deploy() runs before exports"
        nodes[plan.router(name).name] = site.router.summary
        nodes[plan.client(name).name] = site.client.summary
    containers = {
        c.name: {"router": n.name, "ipv4": c.ipv4.split("/")[0], "ipv6": c.ipv6.split("/")[0]} for n in plan.routers() for c in n.containers
    }
    return {
        "hub": plan.hub,
        "protocol": plan.protocol,
        "overlayMtu": plan.mtu,
        "overview": {name: site.public_ip.apply(functools.partial(site_overview, plan, name)) for name, site in sites.items()},
        "connectivitySummary": connectivity_summary_output(plan, checks),
        "publicIps": {name: site.public_ip for name, site in sites.items()},
        "sites": {name: site.outputs for name, site in sites.items()},
        "nodes": nodes,
        "tunnels": plan.tunnel_map(),
        "containers": containers,
        "connectivity": {router: check.result for router, check in checks.items()},
    }


def connectivity_summary_output(plan: Plan, checks: Mapping[str, ConnectivityCheck]) -> Any:
    """Stack output `connectivitySummary`: connectivity_summary of every router's check once they resolve, or
    CHECK_OFF when the stack runs no check."""
    if not checks:
        return CHECK_OFF
    results = pulumi.Output.all(**{router: check.result for router, check in checks.items()})
    return results.apply(functools.partial(connectivity_summary, plan.address_owners()))


def site_overview(plan: Plan, site: str, public_ip: str | None) -> dict[str, Any]:
    """One site at a glance (stack output `overview`): platform, role, the router's public address and the overlay
    addresses of the router, the client and the containers. Pure: the plan and the resolved public address."""
    router, client = plan.router(site), plan.client(site)
    return {
        "platform": router.platform,
        "siteId": plan.site_id(site),
        "role": router.role,
        "publicIp": public_ip,
        "router": {"ipv4": router.overlay_ipv4, "ipv6": router.overlay_ipv6},
        "client": {"ipv4": client.overlay_ipv4, "ipv6": client.overlay_ipv6},
        "containers": {c.name: {"ipv4": c.ipv4.split("/")[0], "ipv6": c.ipv6.split("/")[0]} for c in router.containers},
    }


def router_check_line(result: Any, owners: Mapping[str, str]) -> tuple[str, int, int]:
    """(line, reachable, total) of one router's `overlay-node check --json` result: "60/60 reachable",
    "58/60 reachable; unreachable: gcp-client 10.250.3.2, ...", or "not run" (no result: preview, or not run yet)."""
    if result is None:
        return NOT_RUN, 0, 0
    if not isinstance(result, Mapping) or not isinstance(result.get("results"), Mapping):
        return "no readable result (the check printed no JSON)", 0, 0
    results: Mapping[str, Any] = result["results"]
    total = len(results)
    failed = sorted(address for address, ok in results.items() if not ok)
    reachable = total - len(failed)
    line = f"{reachable}/{total} reachable"
    if failed:
        line += "; unreachable: " + ", ".join(f"{owners[a]} {a}" if a in owners else a for a in failed)
    return line, reachable, total


def connectivity_summary(owners: Mapping[str, str], results: Mapping[str, Any]) -> dict[str, Any]:
    """Stack output `connectivitySummary`: per router its check in one line, and the verdict over all of them
    (ok: every router reached every address; failed: some address did not answer, or a router's check printed no
    result; not run: no router has a result yet; incomplete: some have one, the others none yet)."""
    routers: dict[str, str] = {}
    reachable = total = 0
    states: set[str] = set()
    for router in sorted(results):
        line, got, of = router_check_line(results[router], owners)
        routers[router] = line
        reachable, total = reachable + got, total + of
        states.add(NOT_RUN if results[router] is None else "failed" if of == 0 or got < of else "ok")
    if states <= {NOT_RUN}:
        verdict = NOT_RUN
    elif "failed" in states:
        verdict = "failed"
    elif NOT_RUN in states:
        verdict = "incomplete"
    else:
        verdict = "ok"
    return {"result": verdict, "reachable": reachable, "total": total, "routers": routers}
