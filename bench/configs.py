"""Generated stack configs of any size, spread over the platforms (for benchmarks and property tests)."""

from __future__ import annotations

import copy
from typing import Any

from multicloud_overlay.components.clouds.registry import PLATFORMS as TRAITS
from multicloud_overlay.components.stack_file import read_stack_file
from multicloud_overlay.overlay.config import PLATFORMS


def site_body(platform: str, site_id: int, nth: int = 0) -> dict[str, Any]:
    """Settings of one site (the nth of its platform); its private ranges derive from its id (10.<id mod 200>.x)."""
    traits = TRAITS[platform]
    body: dict[str, Any] = {"platform": platform, "siteId": site_id, **traits.example_site}
    # Regions hold only a few sites under their default quotas (the program refuses a stack that exceeds one):
    # spread the sites of one platform over the traits' example regions.
    regions = traits.example_regions
    if regions:
        body["region"] = regions[(nth // traits.sites_per_region) % len(regions)]
    base = f"10.{site_id % 200}"
    body.update(vpcCidr=f"{base}.0.0/16", wanCidr=f"{base}.1.0/24", lanCidr=f"{base}.2.0/24")
    if traits.management_network:
        body.update(mgmtCidr=f"{base}.3.0/24", publicIp=f"203.0.113.{site_id % 250 + 1}")
    return body


def stack_with_sites(sites: dict[str, tuple[str, int]], hub: str, base: str = "Pulumi.dev.yaml", **top: Any) -> dict[str, Any]:
    """The base stack's config with the given sites (name -> (platform, siteId)) and hub."""
    raw = copy.deepcopy(read_stack_file(base))
    seen: dict[str, int] = {}
    raw["sites"] = {}
    for name, (p, i) in sites.items():
        raw["sites"][name] = site_body(p, i, seen.get(p, 0))
        seen[p] = seen.get(p, 0) + 1
    raw["hub"] = hub
    raw.update(top)
    return raw


def generated_stack(n: int, **top: Any) -> dict[str, Any]:
    """n sites named s1..sn, platforms in turn, site ids 1..n, hub s1."""
    sites = {f"s{i}": (PLATFORMS[(i - 1) % len(PLATFORMS)], i) for i in range(1, n + 1)}
    return stack_with_sites(sites, "s1", **top)
