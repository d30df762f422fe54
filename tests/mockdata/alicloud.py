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
        "nameRegex": "^ubuntu_24_04",
        "owners": "system",
        "mostRecent": True,
    },
    "alicloud:index/getZones:getZones": {
        "id": "zones",
        "ids": [ZONE_ID, "eu-central-1b"],
        "zones": [
            {"id": ZONE_ID, "localName": "Frankfurt Zone A", "availableResourceCreations": ["VSwitch", "Instance"]},
            {"id": "eu-central-1b", "localName": "Frankfurt Zone B", "availableResourceCreations": ["VSwitch", "Instance"]},
        ],
    },
}


def eip_address(name: str) -> str:
    """A documentation-range IPv4 (203.0.113.0/24 or 198.51.100.0/24) derived from the resource name."""
    n = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") % 508
    net = "203.0.113" if n < 254 else "198.51.100"
    return f"{net}.{n % 254 + 1}"


def _eip(args: pulumi.runtime.MockResourceArgs) -> dict[str, Any]:
    return {"ipAddress": eip_address(args.name), "status": "Available"}


# Resource type token -> function of the mock args returning output properties the cloud computes.
RESOURCE_OUTPUTS: dict[str, Callable[[pulumi.runtime.MockResourceArgs], dict[str, Any]]] = {
    "alicloud:ecs/eipAddress:EipAddress": _eip,
}
