"""Generated stack configs of any size, spread over the platforms (for benchmarks and property tests)."""

from __future__ import annotations

import copy
from typing import Any

from components.config import PLATFORMS
from components.stackfile import read_stack_file

PLATFORM_SETTINGS: dict[str, dict[str, Any]] = {
    "aws": {"region": "eu-west-1"},
    "azure": {"region": "westeurope"},
    "gcp": {"region": "europe-west1", "zone": "europe-west1-b", "project": "example-project"},
    "oci": {"region": "eu-frankfurt-1", "compartmentId": "ocid1.compartment.oc1..example"},
    "alicloud": {"region": "eu-central-1"},
    "vsphere": {
        "datacenter": "dc1",
        "cluster": "cluster1",
        "datastore": "datastore1",
        "template": "ubuntu-24.04-server-cloudimg",
        "wanNetwork": "wan",
        "lanNetwork": "overlay-lan",
        "mgmtNetwork": "mgmt",
    },
}


# Regions sites of one platform are spread over, in turn: a region's default quotas hold only a few sites (AWS: 5
# Elastic IPs per region, 2 per site; Azure: 10 Standard public IPs per location, 2 per site; Alibaba: 10 VPCs per
# region), and the program refuses a stack that exceeds one.
REGIONS: dict[str, tuple[str, ...]] = {
    "aws": ("eu-west-1", "eu-west-2", "eu-west-3", "eu-central-1", "eu-north-1", "us-east-1", "us-east-2", "us-west-1", "us-west-2",
            "ca-central-1", "sa-east-1", "ap-south-1", "ap-northeast-1", "ap-northeast-2", "ap-southeast-1", "ap-southeast-2"),
    "alicloud": ("eu-central-1", "eu-west-1", "ap-southeast-1", "us-west-1", "us-east-1", "ap-northeast-1"),
    "azure": ("westeurope", "northeurope", "francecentral", "germanywestcentral", "uksouth", "swedencentral", "eastus", "westus2"),
}  # fmt: skip
SITES_PER_REGION: dict[str, int] = {"aws": 2, "alicloud": 10, "azure": 5}


def site_body(platform: str, site_id: int, nth: int = 0) -> dict[str, Any]:
    """Settings of one site (the nth of its platform); its private ranges derive from its id (10.<id mod 200>.x)."""
    body: dict[str, Any] = {"platform": platform, "siteId": site_id, **PLATFORM_SETTINGS[platform]}
    regions = REGIONS.get(platform)
    if regions:
        body["region"] = regions[(nth // SITES_PER_REGION[platform]) % len(regions)]
    base = f"10.{site_id % 200}"
    body.update(vpcCidr=f"{base}.0.0/16", wanCidr=f"{base}.1.0/24", lanCidr=f"{base}.2.0/24")
    if platform == "vsphere":
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
