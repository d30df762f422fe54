"""What the azure cloud would answer under mocks: invoke results and computed resource outputs."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pulumi

# Invoke token (as Mocks.call receives it) -> result. The Azure module uses no invoke (the image is a
# marketplace reference).
INVOKES: dict[str, dict[str, Any]] = {}

# Documentation ranges (RFC 5737) the mocked public addresses are drawn from.
_PUBLIC_RANGES = ("203.0.113", "198.51.100")


def public_ip_for(name: str) -> str:
    """Deterministic mocked public IPv4 of a PublicIPAddress resource named `name`."""
    n = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")
    return f"{_PUBLIC_RANGES[n % 2]}.{(n >> 1) % 254 + 1}"


def _public_ip(args: pulumi.runtime.MockResourceArgs) -> dict[str, Any]:
    return {"ipAddress": public_ip_for(args.name)}


def _named(physical_name_key: str) -> Callable[[pulumi.runtime.MockResourceArgs], dict[str, Any]]:
    """`name` as Azure reports it: the given physical name, else the auto-name (here: the Pulumi name)."""

    def hook(args: pulumi.runtime.MockResourceArgs) -> dict[str, Any]:
        return {"name": args.inputs.get(physical_name_key) or args.name}

    return hook


# Resource type token -> function of the mock args returning output properties the cloud computes.
RESOURCE_OUTPUTS: dict[str, Callable[[pulumi.runtime.MockResourceArgs], dict[str, Any]]] = {
    "azure-native:network:PublicIPAddress": _public_ip,
    "azure-native:resources:ResourceGroup": _named("resourceGroupName"),
    "azure-native:network:VirtualNetwork": _named("virtualNetworkName"),
    "azure-native:network:NetworkSecurityGroup": _named("networkSecurityGroupName"),
}
