"""What the oci cloud would answer under mocks: invoke results and computed resource outputs."""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable
from typing import Any

import pulumi

# Routers' planned WAN addresses (10.<siteId>.1.10 with the default CIDRs) that the getPrivateIps answer knows, as
# it would once the routers run: each one is the primary private IP of its router's WAN VNIC.
KNOWN_ROUTER_WAN_IPS = tuple(f"10.{site_id}.1.10" for site_id in range(1, 10))


def private_ip_ocid(ip_address: str) -> str:
    return "ocid1.privateip.oc1.eu-frankfurt-1." + ip_address.replace(".", "x")


def _private_ip(ip_address: str) -> dict[str, Any]:
    return {
        "availabilityDomain": "Uocm:EU-FRANKFURT-1-AD-1",
        "cidrPrefixLength": 32,
        "compartmentId": "ocid1.compartment.oc1..aaaaaaaaexampleexampleexample",
        "definedTags": {},
        "displayName": f"router {ip_address}",
        "freeformTags": {},
        "hostnameLabel": "",
        "id": private_ip_ocid(ip_address),
        "ipAddress": ip_address,
        "ipState": "ASSIGNED",
        "ipv4subnetCidrAtCreation": "",
        "isPrimary": True,
        "isReserved": False,
        "lifetime": "EPHEMERAL",
        "routeTableId": "",
        "subnetId": "ocid1.subnet.oc1.eu-frankfurt-1.wan",
        "timeCreated": "2026-11-23T10:00:00.000Z",
        "vlanId": "",
        "vnicId": "ocid1.vnic.oc1.eu-frankfurt-1." + ip_address.replace(".", "x"),
    }


# Invoke token (as Mocks.call receives it) -> result.
INVOKES: dict[str, dict[str, Any]] = {
    "oci:Core/getImages:getImages": {
        "compartmentId": "ocid1.compartment.oc1..aaaaaaaaexampleexampleexample",
        "operatingSystem": "Canonical Ubuntu",
        "operatingSystemVersion": "24.04",
        "id": "CoreImagesDataSource-ubuntu-2404",
        "images": [
            {
                "id": "ocid1.image.oc1.eu-frankfurt-1.aaaaaaaaubuntu2404amd64",
                "displayName": "Canonical-Ubuntu-24.04-2026.10.15-0",
                "operatingSystem": "Canonical Ubuntu",
                "operatingSystemVersion": "24.04",
                "compartmentId": "",
                "baseImageId": "",
                "billableSizeInGbs": "2",
                "createImageAllowed": True,
                "launchMode": "NATIVE",
                "listingType": "NONE",
                "sizeInMbs": "47694",
                "state": "AVAILABLE",
                "timeCreated": "2026-10-15T00:00:00.000Z",
                "agentFeatures": [],
                "definedTags": {},
                "freeformTags": {},
                "imageSourceDetails": [],
                "instanceId": "",
                "launchOptions": [],
            },
            {
                "id": "ocid1.image.oc1.eu-frankfurt-1.aaaaaaaaubuntu2404older",
                "displayName": "Canonical-Ubuntu-24.04-2026.09.01-0",
                "operatingSystem": "Canonical Ubuntu",
                "operatingSystemVersion": "24.04",
                "compartmentId": "",
                "baseImageId": "",
                "billableSizeInGbs": "2",
                "createImageAllowed": True,
                "launchMode": "NATIVE",
                "listingType": "NONE",
                "sizeInMbs": "47694",
                "state": "AVAILABLE",
                "timeCreated": "2026-09-01T00:00:00.000Z",
                "agentFeatures": [],
                "definedTags": {},
                "freeformTags": {},
                "imageSourceDetails": [],
                "instanceId": "",
                "launchOptions": [],
            },
        ],
    },
    "oci:Identity/getAvailabilityDomains:getAvailabilityDomains": {
        "compartmentId": "ocid1.compartment.oc1..aaaaaaaaexampleexampleexample",
        "id": "IdentityAvailabilityDomainsDataSource-0",
        "availabilityDomains": [
            {"compartmentId": "ocid1.tenancy.oc1..example", "id": "ocid1.availabilitydomain.oc1..ad1", "name": "Uocm:EU-FRANKFURT-1-AD-1"},
            {"compartmentId": "ocid1.tenancy.oc1..example", "id": "ocid1.availabilitydomain.oc1..ad2", "name": "Uocm:EU-FRANKFURT-1-AD-2"},
            {"compartmentId": "ocid1.tenancy.oc1..example", "id": "ocid1.availabilitydomain.oc1..ad3", "name": "Uocm:EU-FRANKFURT-1-AD-3"},
        ],
    },
}


def _get_private_ips(args: dict[str, Any]) -> dict[str, Any]:
    """The API filters by ip_address + subnet_id: answer with that address as a primary private IP."""
    wanted = args.get("ipAddress")
    ips = [wanted] if isinstance(wanted, str) and wanted else list(KNOWN_ROUTER_WAN_IPS)
    return {"id": "CorePrivateIpsDataSource-0", "privateIps": [_private_ip(ip) for ip in ips]}


# Invoke token -> function of the invoke's arguments.
CALLS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {"oci:Core/getPrivateIps:getPrivateIps": _get_private_ips}


def public_address(name: str) -> str:
    """Deterministic address in 203.0.113.0/24 or 198.51.100.0/24 (never the sample adminCidr 198.51.100.7)."""
    digest = hashlib.sha256(name.encode()).digest()
    net = ipaddress.IPv4Network("203.0.113.0/24" if digest[0] & 1 else "198.51.100.0/24")
    return str(net.network_address + 10 + digest[1] % 240)


def vcn_ipv6(name: str) -> str:
    """An Oracle GUA /56 per VCN, derived from its name."""
    digest = hashlib.sha256(name.encode()).digest()
    return f"2603:c020:{digest[0]:x}:{digest[1]:x}00::/56"


def _vcn(args: pulumi.runtime.MockResourceArgs) -> dict[str, Any]:
    return {
        "ipv6cidrBlocks": [vcn_ipv6(args.name)],
        "defaultSecurityListId": f"ocid1.securitylist.oc1..default-{args.name}",
        "defaultRouteTableId": f"ocid1.routetable.oc1..default-{args.name}",
        "defaultDhcpOptionsId": f"ocid1.dhcpoptions.oc1..default-{args.name}",
        "state": "AVAILABLE",
    }


def _public_ip(args: pulumi.runtime.MockResourceArgs) -> dict[str, Any]:
    return {
        "ipAddress": public_address(args.name),
        "scope": "REGION",
        "state": "ASSIGNED" if args.inputs.get("privateIpId") else "AVAILABLE",
    }


def _instance(args: pulumi.runtime.MockResourceArgs) -> dict[str, Any]:
    vnic = args.inputs.get("createVnicDetails") or {}
    public = public_address(args.name) if vnic.get("assignPublicIp") == "true" else ""
    return {"privateIp": vnic.get("privateIp", ""), "publicIp": public, "state": "RUNNING", "region": "eu-frankfurt-1"}


def _vnic_attachment(args: pulumi.runtime.MockResourceArgs) -> dict[str, Any]:
    return {"vnicId": f"ocid1.vnic.oc1..{args.name}", "state": "ATTACHED"}


# Resource type token -> function of the mock args returning output properties the cloud computes.
RESOURCE_OUTPUTS: dict[str, Callable[[pulumi.runtime.MockResourceArgs], dict[str, Any]]] = {
    "oci:Core/vcn:Vcn": _vcn,
    "oci:Core/publicIp:PublicIp": _public_ip,
    "oci:Core/instance:Instance": _instance,
    "oci:Core/vnicAttachment:VnicAttachment": _vnic_attachment,
}
