"""What the aws cloud would answer under mocks: invoke results and computed resource outputs.

Keys are wire names (camelCase), as the engine exchanges them: a snake_case key would read back as None."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pulumi

UBUNTU_AMI = "ami-0a1b2c3d4e5f60718"
ZONES = ["zone-a", "zone-b", "zone-c"]


def _byte(name: str, salt: str = "") -> int:
    return hashlib.sha256(f"{salt}{name}".encode()).digest()[0]


def public_ip(name: str) -> str:
    """Deterministic Elastic IP of a resource name: routers in 203.0.113.0/24, other addresses in 198.51.100.0/24
    (above .99, away from the admin range of the example stacks)."""
    if "-router-" in name:
        return f"203.0.113.{1 + _byte(name) % 254}"
    return f"198.51.100.{100 + _byte(name) % 154}"


def _vpc(args: pulumi.runtime.MockResourceArgs) -> dict[str, Any]:
    return {
        "ipv6CidrBlock": f"2600:1f18:{_byte(args.name):02x}{_byte(args.name, 'v6'):02x}:ef00::/56",
        "arn": f"arn:aws:ec2::vpc/{args.name}",
    }


def _eip(args: pulumi.runtime.MockResourceArgs) -> dict[str, Any]:
    return {"publicIp": public_ip(args.name), "allocationId": f"eipalloc-{args.name}"}


def _network_interface(args: pulumi.runtime.MockResourceArgs) -> dict[str, Any]:
    private_ips = list(args.inputs.get("privateIps") or [])
    return {"privateIp": private_ips[0] if private_ips else "10.0.0.99", "ipv6Addresses": ["2600:1f18::1"]}


# Invoke token (as Mocks.call receives it) -> result.
INVOKES: dict[str, dict[str, Any]] = {
    "aws:ec2/getAmi:getAmi": {
        "id": UBUNTU_AMI,
        "imageId": UBUNTU_AMI,
        "name": "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-20261101",
        "ownerId": "099720109477",
        "architecture": "x86_64",
        "virtualizationType": "hvm",
        "rootDeviceType": "ebs",
    },
    "aws:index/getAvailabilityZones:getAvailabilityZones": {
        "id": "region",
        "names": ZONES,
        "zoneIds": ["zid-1", "zid-2", "zid-3"],
        "groupNames": ZONES,
    },
}
# Resource type token -> function of the mock args returning output properties the cloud computes.
RESOURCE_OUTPUTS: dict[str, Callable[[pulumi.runtime.MockResourceArgs], dict[str, Any]]] = {
    "aws:ec2/vpc:Vpc": _vpc,
    "aws:ec2/eip:Eip": _eip,
    "aws:ec2/networkInterface:NetworkInterface": _network_interface,
}
