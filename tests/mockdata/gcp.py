"""What the gcp cloud would answer under mocks: invoke results and computed resource outputs."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pulumi

UBUNTU_IMAGE = "ubuntu-2404-noble-amd64-v20261120"
UBUNTU_IMAGE_SELF_LINK = f"https://www.googleapis.com/compute/v1/projects/ubuntu-os-cloud/global/images/{UBUNTU_IMAGE}"


def mock_address(name: str) -> str:
    """Deterministic documentation address (203.0.113.0/24 or 198.51.100.0/24) for a reserved address resource
    named `name`. 198.51.100.7 (the example adminCidr) is never given."""
    n = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") % 480
    return f"203.0.113.{10 + n}" if n < 240 else f"198.51.100.{10 + n - 240}"


def _address(args: pulumi.runtime.MockResourceArgs) -> dict[str, Any]:
    given = args.inputs.get("address")
    return {
        "address": given or mock_address(args.name),
        "selfLink": f"https://www.googleapis.com/compute/v1/projects/mock/regions/{args.inputs.get('region', 'mock')}/addresses/{args.name}",
    }


def _instance(args: pulumi.runtime.MockResourceArgs) -> dict[str, Any]:
    digest = hashlib.sha256(args.name.encode()).hexdigest()
    return {
        "instanceId": str(int(digest[:15], 16)),
        "selfLink": f"https://www.googleapis.com/compute/v1/projects/mock/zones/{args.inputs.get('zone', 'mock')}/instances/{args.name}",
    }


# Invoke token (as Mocks.call receives it) -> result.
INVOKES: dict[str, dict[str, Any]] = {
    "gcp:compute/getImage:getImage": {
        "id": f"projects/ubuntu-os-cloud/global/images/{UBUNTU_IMAGE}",
        "name": UBUNTU_IMAGE,
        "family": "ubuntu-2404-lts-amd64",
        "project": "ubuntu-os-cloud",
        "selfLink": UBUNTU_IMAGE_SELF_LINK,
        "status": "READY",
        "diskSizeGb": 10,
    },
}
# Resource type token -> function of the mock args returning output properties the cloud computes.
RESOURCE_OUTPUTS: dict[str, Callable[[pulumi.runtime.MockResourceArgs], dict[str, Any]]] = {
    "gcp:compute/address:Address": _address,
    "gcp:compute/instance:Instance": _instance,
}
