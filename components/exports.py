"""Stack outputs: what a user needs after `pulumi up`."""

from __future__ import annotations

from typing import Any

from multicloud_overlay.components.connectivity import ConnectivityCheck
from multicloud_overlay.components.site import Site
from multicloud_overlay.overlay.plan import Plan


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
        "publicIps": {name: site.public_ip for name, site in sites.items()},
        "sites": {name: site.outputs for name, site in sites.items()},
        "nodes": nodes,
        "tunnels": plan.tunnel_map(),
        "containers": containers,
        "connectivity": {router: check.result for router, check in checks.items()},
    }
