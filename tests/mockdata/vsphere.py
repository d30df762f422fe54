"""What the vsphere cloud would answer under mocks: invoke results and computed resource outputs.

Shapes follow pulumi-vsphere 4.18 results (wire names, camelCase): managed object ids such as
"datacenter-3", "resgroup-10", "datastore-14", "network-21"/"dvportgroup-31", and a template found by
getVirtualMachine whose `id` is its UUID (what clone.templateUuid takes).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from typing import Any

import pulumi

TEMPLATE_UUID = "4216b5b2-7c1e-8f3a-9d2b-3f0e6a1c7d55"
TEMPLATE_GUEST_ID = "ubuntu64Guest"
TEMPLATE_SCSI_TYPE = "pvscsi"
TEMPLATE_FIRMWARE = "efi"
TEMPLATE_DISK_GIB = 10
TEMPLATE_NIC_TYPE = "vmxnet3"

# Invoke token (as Mocks.call receives it) -> result.
INVOKES: dict[str, dict[str, Any]] = {
    "vsphere:index/getDatacenter:getDatacenter": {
        "id": "datacenter-3",
        "name": "dc1",
        "virtualMachines": [],
    },
    "vsphere:index/getComputeCluster:getComputeCluster": {
        "id": "domain-c8",
        "name": "cluster1",
        "datacenterId": "datacenter-3",
        "resourcePoolId": "resgroup-9",
    },
    "vsphere:index/getDatastore:getDatastore": {
        "id": "datastore-14",
        "name": "datastore1",
        "datacenterId": "datacenter-3",
        "stats": {},
    },
    "vsphere:index/getNetwork:getNetwork": {
        "id": "dvportgroup-31",
        "name": "wan",
        "datacenterId": "datacenter-3",
        "type": "DistributedVirtualPortgroup",
    },
    "vsphere:index/getVirtualMachine:getVirtualMachine": {
        "id": TEMPLATE_UUID,
        "uuid": TEMPLATE_UUID,
        "moid": "vm-42",
        "name": "ubuntu-24.04-server-cloudimg",
        "datacenterId": "datacenter-3",
        "guestId": TEMPLATE_GUEST_ID,
        "scsiType": TEMPLATE_SCSI_TYPE,
        "scsiBusSharing": "noSharing",
        "scsiControllerScanCount": 1,
        "firmware": TEMPLATE_FIRMWARE,
        "numCpus": 2,
        "memory": 2048,
        "disks": [
            {"label": "Hard disk 1", "size": TEMPLATE_DISK_GIB, "thinProvisioned": True, "eagerlyScrub": False, "unitNumber": 0},
        ],
        "networkInterfaceTypes": [TEMPLATE_NIC_TYPE],
        "networkInterfaces": [
            {
                "adapterType": TEMPLATE_NIC_TYPE,
                "networkId": "dvportgroup-31",
                "macAddress": "00:50:56:a1:00:01",
                "bandwidthShareCount": 50,
                "externalPortId": "",
                "physicalFunction": "",
            }
        ],
        "guestIpAddresses": [],
        "defaultIpAddress": "",
        "extraConfig": {},
        # A template without vApp options (vsphere_traits.template_problem refuses one with OVF transports).
        "vappTransports": [],
    },
}


def network_result(name: str) -> dict[str, Any]:
    """getNetwork answer for one port group (a stable id per name, as vCenter's would be)."""
    digest = int(hashlib.sha256(name.encode()).hexdigest()[:4], 16)
    return {**INVOKES["vsphere:index/getNetwork:getNetwork"], "id": f"dvportgroup-{digest}", "name": name}


# Invokes whose answer depends on the arguments: token -> function of the call's (camelCase) args.
CALLS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "vsphere:index/getNetwork:getNetwork": lambda args: network_result(str(args.get("name", ""))),
}


def _virtual_machine(args: pulumi.runtime.MockResourceArgs) -> dict[str, Any]:
    vm_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"vsphere-vm/{args.name}"))
    digest = int(hashlib.sha256(args.name.encode()).hexdigest()[:4], 16)
    return {"uuid": vm_uuid, "moid": f"vm-{1000 + digest}", "defaultIpAddress": "", "guestIpAddresses": []}


# Resource type token -> function of the mock args returning output properties the cloud computes.
RESOURCE_OUTPUTS: dict[str, Callable[[pulumi.runtime.MockResourceArgs], dict[str, Any]]] = {
    "vsphere:index/virtualMachine:VirtualMachine": _virtual_machine,
}
