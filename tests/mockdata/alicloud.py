"""What the alicloud cloud would answer under mocks: invoke results and computed resource outputs."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pulumi

UBUNTU_IMAGE_ID = "ubuntu_24_04_x64_20G_alibase_20250722.vhd"
ZONE_ID = "eu-central-1a"

# Invoke token (as Mocks.call receives it) -> result.
INVOKES: dict[str, dict[str, Any]] = {
    "alicloud:ecs/getImages:getImages": {
        "id": "ubuntu-24-04-images",
        "ids": [UBUNTU_IMAGE_ID],
        "images": [
            {
                "id": UBUNTU_IMAGE_ID,
                "imageId": UBUNTU_IMAGE_ID,
                "name": UBUNTU_IMAGE_ID,
                "architecture": "x86_64",
                "osType": "linux",
                "osName": "Ubuntu  24.04 64 bit",
                "imageOwnerAlias": "system",
                "status": "Available",
            }
        ],
        "nameRegex": r"^ubuntu_24_04_x64_20G_alibase_\d{8}\.vhd$",
        "owners": "system",
        "mostRecent": True,
    },
}

# Instance type -> (ENIs it allows, zones that sell it): what DescribeInstanceTypes / DescribeAvailableResource
# would answer in every mocked region. ecs.g6.large: 2 ENIs (Alibaba's general-purpose family page); the burstable
# ecs.t6-c4m1.large is the kind of small type with a single ENI. ecs.c6.large is sold in zone b only here, so a site
# whose client type differs from its router type has to find a zone that offers both.
INSTANCE_TYPES: dict[str, tuple[int, tuple[str, ...]]] = {
    "ecs.g6.large": (2, (ZONE_ID, "eu-central-1b")),
    "ecs.g7.large": (3, (ZONE_ID, "eu-central-1b")),
    "ecs.c6.large": (2, ("eu-central-1b",)),
    "ecs.t6-c4m1.large": (1, (ZONE_ID, "eu-central-1b")),
}
ZONE_NAMES = {ZONE_ID: "Frankfurt Zone A", "eu-central-1b": "Frankfurt Zone B"}


def _get_zones(args: dict[str, Any]) -> dict[str, Any]:
    """Zones offering vSwitches, ESSD and the requested instance type (every zone when no type is asked for)."""
    wanted = args.get("availableInstanceType")
    zones = list(ZONE_NAMES) if not wanted else list(INSTANCE_TYPES.get(str(wanted), (0, ()))[1])
    return {
        "id": "zones",
        "ids": zones,
        "zones": [
            {
                "id": z,
                "localName": ZONE_NAMES[z],
                "availableResourceCreations": ["VSwitch", "Instance"],
                "availableDiskCategories": ["cloud_essd", "cloud_efficiency"],
                "availableInstanceTypes": [t for t, (_, where) in INSTANCE_TYPES.items() if z in where],
            }
            for z in zones
        ],
    }


def _get_instance_types(args: dict[str, Any]) -> dict[str, Any]:
    """Like the provider: the requested type if the region sells it with at least eni_amount ENIs, else nothing."""
    wanted, enis = str(args.get("instanceType", "")), int(args.get("eniAmount", 0))
    known = INSTANCE_TYPES.get(wanted)
    found = [] if known is None or known[0] < enis else [(wanted, known)]
    return {
        "id": "instance-types",
        "ids": [t for t, _ in found],
        "instanceTypes": [
            {"id": t, "eniQuantity": n, "eniAmount": n, "availabilityZones": list(zones), "cpuCoreCount": 2, "memorySize": 8.0}
            for t, (n, zones) in found
        ],
    }


# Invoke token -> function of the invoke's arguments.
CALLS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "alicloud:index/getZones:getZones": _get_zones,
    "alicloud:ecs/getInstanceTypes:getInstanceTypes": _get_instance_types,
}


def eip_address(name: str) -> str:
    """A documentation-range IPv4 (203.0.113.0/24 or 198.51.100.0/24) derived from the resource name."""
    n = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") % 508
    net = "203.0.113" if n < 254 else "198.51.100"
    return f"{net}.{n % 254 + 1}"


def _eip(args: pulumi.runtime.MockResourceArgs) -> dict[str, Any]:
    return {"ipAddress": eip_address(args.name), "status": "Available"}


def _instance(args: pulumi.runtime.MockResourceArgs) -> dict[str, Any]:
    """An instance public IP only with internet_max_bandwidth_out > 0 (an EIP is bound separately)."""
    bandwidth = int(args.inputs.get("internetMaxBandwidthOut") or 0)
    return {"publicIp": eip_address(f"{args.name}-public-ip") if bandwidth > 0 else "", "status": "Running"}


# Resource type token -> function of the mock args returning output properties the cloud computes.
RESOURCE_OUTPUTS: dict[str, Callable[[pulumi.runtime.MockResourceArgs], dict[str, Any]]] = {
    "alicloud:ecs/eipAddress:EipAddress": _eip,
    "alicloud:ecs/instance:Instance": _instance,
}
