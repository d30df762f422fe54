"""vSphere: a site in a private datacentre, on port groups that already exist.

There is nothing to create on the network side: the WAN, LAN and management port groups exist, and the
datacentre edge NATs a configured public address to the router. A site is therefore

- `VsphereInventory`: lookups of the datacentre, the cluster's root resource pool, the datastore, one port group
  per NIC role and the template to clone;
- `VsphereMachine`: a VM cloned from the template with N NICs on static MACs, and cloud-init user-data and
  metadata (static addresses, hostname, SSH key) through `guestinfo.*` extra config (VMware datasource);
- `VsphereSecurityPolicy`: the NAT and filter rules the datacentre edge must implement for the router (no cloud
  firewall exists here; these rules are what least privilege means on vSphere), exported for the operator.

Each is usable without the overlay. `VsphereSite` wires them for an overlay site. The small functions below
(MACs, sizes, gateways, guestinfo, edge rules) are pure and tested without mocks; the documented limits they
hold VMs to (VM names, sizes, guestinfo size, the template's datasource) live in vsphere_traits.

Template requirements: cloud-init with the VMware datasource (Ubuntu 24.04 cloud image), open-vm-tools, and no
vApp options: with an OVF environment, cloud-init's OVF datasource (listed before VMware on Ubuntu) wins and
guestinfo is ignored, so `VsphereInventory` refuses such a template (vsphere_traits.template_problem).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, cast

import pulumi
import pulumi_vsphere as vsphere
import yaml

from multicloud_overlay.cloudinit.render import StaticNic, render_vsphere_metadata
from multicloud_overlay.components.clouds import vsphere_traits
from multicloud_overlay.components.clouds.base import NodeResources, NodeSpec, PlatformFactory, PlatformSite, ResolvedRule, SiteContext
from multicloud_overlay.components.clouds.vsphere_traits import DEFAULT_DNS, DEFAULT_SIZES, parse_size, vm_name
from multicloud_overlay.components.limits import user_data_as_sent
from multicloud_overlay.overlay.config import CLIENT_HOST, MAX_SITE_ID, ROUTER_HOST, SiteConfig
from multicloud_overlay.overlay.plan import Node
from multicloud_overlay.overlay.security import IngressRule, scoped_source

TOKEN: Final = "multicloud-overlay:vsphere"

# Sizes: `<vCPUs>x<memory MiB>` (vsphere_traits.SIZE_FORMAT, DEFAULT_SIZES), overridable per site with routerSize /
# clientSize (e.g. "4x8192"); vsphere_traits.parse_size checks them (check_limits too, before any resource).
# Root disk at least this large (GiB), or the template's size if larger: the router pulls container images.
MIN_DISK_GIB: Final = 16
DEFAULT_ADAPTER: Final = "vmxnet3"

# VMware's range for manually assigned MACs: 00:50:56:00:00:00 - 00:50:56:3F:FF:FF (vCenter generates above it).
VMWARE_OUI: Final = (0x00, 0x50, 0x56)
STATIC_MAC_BITS: Final = 22
MAX_NICS: Final = 16

GUESTINFO_USERDATA: Final = "guestinfo.userdata"
GUESTINFO_METADATA: Final = "guestinfo.metadata"
GUESTINFO_ENCODING: Final = "base64"
# Metadata key listing guestinfo keys the VMware datasource overwrites with "---" after reading them.
REDACT_KEY: Final = "redact"
REDACTED: Final = ("userdata",)

# NIC roles, in device order (ethernet0, ethernet1). The guest names NICs after their role.
ROUTER_NICS: Final = ("wan", "lan")
CLIENT_NICS: Final = ("mgmt", "lan")
PORT_GROUP_SETTINGS: Final[Mapping[str, str]] = {"wan": "wanNetwork", "lan": "lanNetwork", "mgmt": "mgmtNetwork"}

EDGE_ACTION: Final = "dnat-allow"
"""Edge rule action: translate publicIp:port (protocol) to destination:port and allow it from source only."""


# ---------------------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------------------


def static_mac(site_id: int, host: int, nic: int) -> str:
    """Stable MAC of NIC `nic` of overlay host `host` (1 router, 2 client) of site `site_id`.

    Inside VMware's manual range (00:50:56:00:00:00-00:50:56:3F:FF:FF): 22 bits = site id (10 bits,
    1..999) | host (8 bits) | NIC index (4 bits). Unique per (site, host, NIC) and never dependent on list
    positions, so the guest can match its NICs by MAC from first boot on.
    """
    if not 1 <= site_id <= MAX_SITE_ID:
        raise ValueError(f"site id {site_id} outside 1..{MAX_SITE_ID}")
    if not 0 <= host <= 0xFF:
        raise ValueError(f"host {host} outside 0..255")
    if not 0 <= nic < MAX_NICS:
        raise ValueError(f"NIC index {nic} outside 0..{MAX_NICS - 1}")
    value = (site_id << 12) | (host << 4) | nic
    assert value < 1 << STATIC_MAC_BITS
    octets = (*VMWARE_OUI, value >> 16, (value >> 8) & 0xFF, value & 0xFF)
    return ":".join(f"{o:02x}" for o in octets)


def is_manual_vmware_mac(mac: str) -> bool:
    """True if `mac` is in VMware's range for manually assigned MACs."""
    octets = [int(o, 16) for o in mac.split(":")]
    return len(octets) == 6 and tuple(octets[:3]) == VMWARE_OUI and octets[3] <= 0x3F


def gateway_for(cidr: ipaddress.IPv4Network, configured: str | None, key: str) -> str:
    """The configured gateway (must lie inside `cidr`), else the first host of `cidr`."""
    if configured is None:
        return str(cidr.network_address + 1)
    gateway = ipaddress.IPv4Address(configured)
    if gateway not in cidr or gateway in (cidr.network_address, cidr.broadcast_address):
        raise ValueError(f"{key} = {configured!r}: not a host address of {cidr}")
    return str(gateway)


def dns_servers(value: object) -> tuple[str, ...]:
    """dnsServers as a list or a comma/space separated string -> validated addresses; DEFAULT_DNS if unset."""
    if value in (None, "", []):
        return DEFAULT_DNS
    items = re.split(r"[,\s]+", value.strip()) if isinstance(value, str) else [str(v) for v in cast(Sequence[object], value)]
    return tuple(str(ipaddress.ip_address(item)) for item in items if item)


def instance_id(node: Node) -> str:
    """cloud-init instance-id of a node's VM: fixed for the VM's life (a new id would re-run first-boot modules)."""
    return f"iid-multicloud-overlay-{node.name}"


def render_metadata(node_name: str, iid: str, nics: list[StaticNic], public_keys: Sequence[str]) -> str:
    """guestinfo.metadata: the shared renderer's document plus `public-keys` and `redact`.

    The VMware datasource reads SSH keys from the metadata keys public-keys-data / public_keys_data /
    public-keys / public_keys, so the user-data stays the payload shared with the other platforms. `redact`
    makes the datasource blank the listed guestinfo keys once read: the user-data carries the node's SSH host
    private key, and guestinfo is readable by unprivileged processes in the guest.
    """
    doc = cast(dict[str, Any], yaml.safe_load(render_vsphere_metadata(node_name, iid, nics)))
    doc["public-keys"] = list(public_keys)
    doc[REDACT_KEY] = list(REDACTED)
    return yaml.safe_dump(doc, sort_keys=False)


def b64(text: str) -> str:
    """base64 as vsphere_traits.LIMITS.user_data_encoding says (limits.user_data_as_sent: what check_limits measures)."""
    return user_data_as_sent(text, vsphere_traits.LIMITS.user_data_encoding)


def guestinfo_extra_config(user_data: str, metadata: str) -> dict[str, str]:
    """extra_config for the VMware datasource: base64 user-data and metadata with their `.encoding` keys, each
    refused above what one guestinfo value may hold (vsphere_traits.GUESTINFO_MAX_BYTES)."""
    values = {GUESTINFO_USERDATA: b64(user_data), GUESTINFO_METADATA: b64(metadata)}
    for key, value in values.items():
        problem = vsphere_traits.guestinfo_problem(key, value)
        if problem:
            raise ValueError(problem)
    return {
        GUESTINFO_USERDATA: values[GUESTINFO_USERDATA],
        f"{GUESTINFO_USERDATA}.encoding": GUESTINFO_ENCODING,
        GUESTINFO_METADATA: values[GUESTINFO_METADATA],
        f"{GUESTINFO_METADATA}.encoding": GUESTINFO_ENCODING,
    }


def require_guestinfo_template(template: vsphere.GetVirtualMachineResult) -> vsphere.GetVirtualMachineResult:
    """Apply callback of the template lookup: the template, unless its vApp options would hide guestinfo."""
    problem = vsphere_traits.template_problem(template.name or template.id, template.vapp_transports)
    if problem:
        raise ValueError(problem)
    return template


def template_disks(template: vsphere.GetVirtualMachineResult, min_gib: int) -> list[vsphere.VirtualMachineDiskArgs]:
    """Disks of a clone: one per template disk, same unit and provisioning, the first grown to `min_gib`."""
    disks: list[vsphere.VirtualMachineDiskArgs] = []
    for i, disk in enumerate(template.disks):
        size = max(disk.size, min_gib) if i == 0 else disk.size
        disks.append(
            vsphere.VirtualMachineDiskArgs(
                label=f"disk{i}",
                size=size,
                unit_number=disk.unit_number,
                thin_provisioned=disk.thin_provisioned,
                eagerly_scrub=disk.eagerly_scrub,
            )
        )
    return disks


def template_adapter(template: vsphere.GetVirtualMachineResult) -> str:
    """NIC adapter type of the clone: the template's first NIC type (vmxnet3 if the template has no NIC)."""
    types = list(template.network_interface_types or [])
    return types[0] if types else DEFAULT_ADAPTER


def is_internal(source: str, internal: Sequence[str]) -> bool:
    """True if `source` lies inside one of the site's own networks (no edge rule needed for it)."""
    try:
        net = ipaddress.ip_network(source, strict=False)
    except ValueError:
        return False
    for cidr in internal:
        own = ipaddress.ip_network(cidr, strict=False)
        if isinstance(net, ipaddress.IPv4Network) and isinstance(own, ipaddress.IPv4Network) and net.subnet_of(own):
            return True
        if isinstance(net, ipaddress.IPv6Network) and isinstance(own, ipaddress.IPv6Network) and net.subnet_of(own):
            return True
    return False


def edge_rules(
    rules: Sequence[IngressRule], sources: Sequence[str], public_ip: str, destination: str, internal: Sequence[str]
) -> list[dict[str, Any]]:
    """The datacentre edge's rules for a router, one per ingress rule from outside the site.

    Each: translate `publicIp` (protocol, port) to `destination` (the router's WAN address) and allow it only
    from `source`. Rules whose source is one of the site's own networks (its LAN, ...) never cross the edge
    and are left out.
    """
    out: list[dict[str, Any]] = []
    for rule, source in zip(rules, sources, strict=True):
        scoped_source(source, rule.name)
        if is_internal(source, internal):
            continue
        entry: dict[str, Any] = {"name": rule.name, "protocol": rule.protocol}
        if rule.port is not None:  # ICMP: no port, every type (echo and path-MTU errors)
            entry["port"] = rule.port
        entry.update(source=source, publicIp=public_ip, destination=destination, action=EDGE_ACTION, description=rule.description)
        out.append(entry)
    return out


def resolved_edge_rules(
    values: Sequence[Any], rules: Sequence[IngressRule], destination: str, internal: Sequence[str]
) -> list[dict[str, Any]]:
    """Apply callback: `values` is [public_ip, *resolved sources] in the order of `rules`."""
    return edge_rules(rules, [str(s) for s in values[1:]], str(values[0]), destination, internal)


def edge_snat(public_ip: str, wan_ip: str) -> dict[str, str]:
    """Outbound translation the edge must apply: the router's WAN address leaves as `publicIp` (1:1 NAT),
    because peers admit the tunnel only from that address."""
    return {"source": f"{wan_ip}/32", "translatedSource": public_ip, "action": "snat"}


def _vsphere_provider(component: pulumi.ComponentResource) -> pulumi.ProviderResource | None:
    """The vsphere provider a component was given (opts.provider), passed on explicitly to every child."""
    return component.get_provider("vsphere::")


# ---------------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------------


@dataclass
class VsphereInventoryArgs:
    datacenter: str
    """Datacentre name."""
    cluster: str
    """Compute cluster name; VMs go to its root resource pool."""
    datastore: str
    """Datastore name for the VMs' disks."""
    template: str
    """Name (or inventory path) of the template to clone: cloud-init with the VMware datasource."""
    networks: Mapping[str, str]
    """NIC role (wan, lan, mgmt) -> existing port group name."""


class VsphereInventory(pulumi.ComponentResource):
    """Lookups of everything a VM needs that already exists in vCenter (no resources are created)."""

    def __init__(self, name: str, args: VsphereInventoryArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"{TOKEN}:VsphereInventory", name, None, opts)
        invoke = pulumi.InvokeOptions(parent=self, provider=_vsphere_provider(self))
        datacenter = vsphere.get_datacenter_output(name=args.datacenter, opts=invoke)
        self.datacenter_id: pulumi.Output[str] = datacenter.id
        cluster = vsphere.get_compute_cluster_output(name=args.cluster, datacenter_id=self.datacenter_id, opts=invoke)
        self.resource_pool_id: pulumi.Output[str] = cluster.resource_pool_id
        datastore = vsphere.get_datastore_output(name=args.datastore, datacenter_id=self.datacenter_id, opts=invoke)
        self.datastore_id: pulumi.Output[str] = datastore.id
        self.network_ids: dict[str, pulumi.Output[str]] = {
            role: vsphere.get_network_output(name=port_group, datacenter_id=self.datacenter_id, opts=invoke).id
            for role, port_group in args.networks.items()
        }
        # Every VM input taken from the template waits for this check: a refused template creates no VM.
        self.template: pulumi.Output[vsphere.GetVirtualMachineResult] = vsphere.get_virtual_machine_output(
            name=args.template, datacenter_id=self.datacenter_id, opts=invoke
        ).apply(require_guestinfo_template)
        self.template_id: pulumi.Output[str] = self.template.id
        self.register_outputs(
            {
                "datacenterId": self.datacenter_id,
                "resourcePoolId": self.resource_pool_id,
                "datastoreId": self.datastore_id,
                "networkIds": self.network_ids,
                "templateId": self.template_id,
            }
        )


@dataclass(frozen=True)
class VsphereNicArgs:
    role: str
    """NIC role (wan, lan, mgmt)."""
    network_id: pulumi.Input[str]
    """Port group id (VsphereInventory.network_ids[role])."""
    mac: str
    """Static MAC in VMware's manual range (see static_mac)."""


@dataclass
class VsphereMachineArgs:
    vm_name: str
    """VM name in the vCenter inventory (at most 80 characters: vsphere_traits.vm_name folds longer ones)."""
    resource_pool_id: pulumi.Input[str]
    """Resource pool to run in (VsphereInventory.resource_pool_id)."""
    datastore_id: pulumi.Input[str]
    """Datastore for the disks (VsphereInventory.datastore_id)."""
    template: pulumi.Output[vsphere.GetVirtualMachineResult]
    """The template to clone (VsphereInventory.template): guest id, SCSI type, firmware, disks, NIC type."""
    nics: list[VsphereNicArgs]
    """NICs in device order (ethernet0, ethernet1, ...)."""
    user_data: pulumi.Input[str]
    """Plain-text cloud-init user-data; stored base64 in guestinfo.userdata."""
    metadata: pulumi.Input[str]
    """cloud-init metadata YAML (instance-id, hostname, network, public-keys); stored base64 in guestinfo.metadata."""
    num_cpus: int = 2
    """vCPUs."""
    memory: int = 4096
    """Memory in MiB (a multiple of 4)."""
    min_disk_gib: int = MIN_DISK_GIB
    """The first disk is grown to at least this size (GiB); cloud-init grows the root filesystem at boot."""
    folder: str | None = None
    """VM folder path relative to the datacentre; None = the datacentre's root VM folder."""
    wait_for_guest_net_timeout: int = 5
    """Minutes to wait for VMware Tools to report a routable address (<1 disables the waiter)."""


class VsphereMachine(pulumi.ComponentResource):
    """A VM cloned from a cloud-init template, N NICs with static MACs, configured through guestinfo.

    The clone is not customised by VMware (no `clone.customize`): cloud-init's VMware datasource reads
    guestinfo.userdata / guestinfo.metadata instead. `extra_config` and `clone` are in ignore_changes: changing
    extra_config reboots the VM and a new template would replace it; later config is pushed in place. So are the
    inputs that follow the template (guest id, SCSI type, firmware): another template serves new VMs only. Disks,
    vCPUs and memory stay managed (growing them is intended).
    """

    ignored: Final = ("extraConfig", "clone", "guestId", "scsiType", "firmware")

    def __init__(self, name: str, args: VsphereMachineArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        if not args.nics:
            raise ValueError(f"{name}: a VM needs at least one NIC")
        if len(args.nics) > vsphere_traits.NICS_PER_VM_MAX.value:
            raise ValueError(f"{name}: {len(args.nics)} NICs, vSphere allows {vsphere_traits.NICS_PER_VM_MAX.value} per VM")
        if len(args.vm_name) > vsphere_traits.VM_NAME_MAX.value:
            raise ValueError(f"{name}: VM name {args.vm_name!r} is over vCenter's {vsphere_traits.VM_NAME_MAX.value} characters")
        super().__init__(f"{TOKEN}:VsphereMachine", name, None, opts)
        for nic in args.nics:
            if not is_manual_vmware_mac(nic.mac):
                raise ValueError(
                    f"{name}: MAC {nic.mac} of NIC {nic.role} is outside VMware's manual range 00:50:56:00:00:00-00:50:56:3f:ff:ff"
                )
        template = args.template
        adapter = template.apply(template_adapter)
        # Secret: the user-data carries the node's SSH host private key.
        extra_config = pulumi.Output.secret(pulumi.Output.all(args.user_data, args.metadata).apply(_extra_config))
        self.macs: dict[str, str] = {nic.role: nic.mac for nic in args.nics}
        self.vm = vsphere.VirtualMachine(
            f"{name}-vm",
            name=args.vm_name,
            resource_pool_id=args.resource_pool_id,
            datastore_id=args.datastore_id,
            folder=args.folder,
            num_cpus=args.num_cpus,
            memory=args.memory,
            guest_id=template.guest_id,
            scsi_type=template.scsi_type,
            firmware=template.firmware,
            disks=template.apply(functools.partial(template_disks, min_gib=args.min_disk_gib)),
            network_interfaces=[
                vsphere.VirtualMachineNetworkInterfaceArgs(
                    network_id=nic.network_id, adapter_type=adapter, use_static_mac=True, mac_address=nic.mac
                )
                for nic in args.nics
            ],
            clone=vsphere.VirtualMachineCloneArgs(template_uuid=template.id),
            extra_config=extra_config,
            wait_for_guest_net_timeout=args.wait_for_guest_net_timeout,
            opts=pulumi.ResourceOptions(parent=self, provider=_vsphere_provider(self), ignore_changes=list(self.ignored)),
        )
        self.uuid: pulumi.Output[str] = self.vm.uuid
        self.moid: pulumi.Output[str] = self.vm.moid
        self.register_outputs({"uuid": self.uuid, "moid": self.moid, "macs": self.macs})


def _extra_config(values: Sequence[str]) -> dict[str, str]:
    user_data, metadata = values
    return guestinfo_extra_config(user_data, metadata)


@dataclass
class VsphereSecurityPolicyArgs:
    public_ip: pulumi.Input[str]
    """The public IPv4 the edge translates to the router."""
    destination: str
    """The router's WAN private address (translation target)."""
    rules: list[ResolvedRule]
    """The router's ingress rules (overlay/security.py), sources resolved."""
    internal: list[str] = field(default_factory=list)
    """The site's own networks: rules from these never cross the edge."""


class VsphereSecurityPolicy(pulumi.ComponentResource):
    """What the datacentre edge must implement for a router (no API creates it: it is the operator's).

    `rules`: one DNAT+allow per ingress rule from outside the site (tunnel from each peer router's /32, ICMP
    from peers, SSH and ICMP from the admin range); `snat`: the router's outbound 1:1 translation.
    """

    # The type token keeps the class's earlier name (VsphereEdgePolicy): the token is part of the component's URN,
    # so a new one would replace it (and its outputs' history) on a running stack.
    TYPE_TOKEN: ClassVar[str] = f"{TOKEN}:VsphereEdgePolicy"

    def __init__(self, name: str, args: VsphereSecurityPolicyArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(self.TYPE_TOKEN, name, None, opts)
        resolve = functools.partial(
            resolved_edge_rules, rules=[r.rule for r in args.rules], destination=args.destination, internal=args.internal
        )
        self.rules: pulumi.Output[list[dict[str, Any]]] = pulumi.Output.all(args.public_ip, *[r.source for r in args.rules]).apply(resolve)
        self.snat: pulumi.Output[dict[str, str]] = pulumi.Output.from_input(args.public_ip).apply(
            functools.partial(edge_snat, wan_ip=args.destination)
        )
        self.register_outputs({"rules": self.rules, "snat": self.snat})


# ---------------------------------------------------------------------------------------------------------
# Overlay site
# ---------------------------------------------------------------------------------------------------------


def provider_args(site: SiteConfig, password: pulumi.Output[str] | None) -> dict[str, Any]:
    """Explicit provider arguments of a site: server and user from the site (if set), password from the
    secret config value `vsphere:password` (if set). Whatever is unset the provider reads from
    VSPHERE_SERVER / VSPHERE_USER / VSPHERE_PASSWORD."""
    out: dict[str, Any] = {}
    if site.setting("server"):
        out["vsphere_server"] = site.setting("server")
    if site.setting("user"):
        out["user"] = site.setting("user")
    if password is not None:
        out["password"] = password
    return out


class VsphereSite(PlatformSite):
    """An overlay site in a vSphere datacentre: lookups, router and client VMs, the edge's rules."""

    user_data_property = "extraConfig"

    def __init__(self, ctx: SiteContext) -> None:
        super().__init__(ctx)
        site = ctx.site
        self.sizes = {
            kind: parse_size(site.setting(f"{kind}Size") or default, f"sites.{site.name}.{kind}Size")
            for kind, default in DEFAULT_SIZES.items()
        }
        self.mgmt_cidr = ipaddress.IPv4Network(site.require("mgmtCidr"))
        self.wan_gateway = gateway_for(site.wan_cidr, site.setting("wanGateway"), f"sites.{site.name}.wanGateway")
        self.mgmt_gateway = gateway_for(self.mgmt_cidr, site.setting("mgmtGateway"), f"sites.{site.name}.mgmtGateway")
        self.dns = dns_servers(site.settings.get("dnsServers"))
        self.public_ip = site.require("publicIp")
        self._provider = vsphere.Provider(
            f"{site.name}-provider",
            **provider_args(site, pulumi.Config("vsphere").get_secret("password")),
            opts=pulumi.ResourceOptions(parent=ctx.parent),
        )
        self.inventory: VsphereInventory | None = None
        self.edge: VsphereSecurityPolicy | None = None

    @property
    def provider(self) -> pulumi.ProviderResource:
        return self._provider

    def site_outputs(self) -> dict[str, pulumi.Input[Any]]:
        if self.edge is None:
            return {}
        return {"edgeRules": self.edge.rules, "edgeSnat": self.edge.snat}

    def prepare(self) -> pulumi.Output[str]:
        site = self.ctx.site
        self.inventory = VsphereInventory(
            f"{site.name}-inventory",
            VsphereInventoryArgs(
                datacenter=site.require("datacenter"),
                cluster=site.require("cluster"),
                datastore=site.require("datastore"),
                template=site.require("template"),
                networks={role: site.require(key) for role, key in PORT_GROUP_SETTINGS.items()},
            ),
            self.child_opts(),
        )
        return pulumi.Output.from_input(self.public_ip)

    def static_nics(self, node: Node) -> list[StaticNic]:
        """The node's NICs as the guest configures them: names, static MACs, addresses, gateway on the first."""
        site = self.ctx.site
        if node.kind == "router":
            assert node.wan_ip is not None
            host, roles = ROUTER_HOST, ROUTER_NICS
            first = f"{node.wan_ip}/{site.wan_cidr.prefixlen}"
            gateway = self.wan_gateway
        else:
            assert node.mgmt_ip is not None, f"{node.name}: a vSphere client needs mgmtCidr"
            host, roles = CLIENT_HOST, CLIENT_NICS
            first = f"{node.mgmt_ip}/{self.mgmt_cidr.prefixlen}"
            gateway = self.mgmt_gateway
        return [
            StaticNic(f"{roles[0]}0", static_mac(site.site_id, host, 0), first, gateway, self.dns),
            StaticNic(f"{roles[1]}0", static_mac(site.site_id, host, 1), f"{node.lan_ip}/{node.lan_prefix}"),
        ]

    def _machine(self, spec: NodeSpec) -> VsphereMachine:
        assert self.inventory is not None, "prepare() runs before router()/client()"
        node = spec.node
        nics = self.static_nics(node)
        roles = ROUTER_NICS if node.kind == "router" else CLIENT_NICS
        cpus, memory = self.sizes[node.kind]
        metadata = render_metadata(node.name, instance_id(node), nics, [])  # the payload installs the login user's keys
        return VsphereMachine(
            f"{node.name}-machine",
            VsphereMachineArgs(
                vm_name=vm_name(pulumi.get_project(), pulumi.get_stack(), node.name),
                resource_pool_id=self.inventory.resource_pool_id,
                datastore_id=self.inventory.datastore_id,
                template=self.inventory.template,
                nics=[VsphereNicArgs(role, self.inventory.network_ids[role], nic.mac) for role, nic in zip(roles, nics, strict=True)],
                user_data=spec.user_data,
                metadata=metadata,
                num_cpus=cpus,
                memory=memory,
            ),
            self.child_opts(spec.parent),
        )

    def router(self, spec: NodeSpec) -> NodeResources:
        node, site = spec.node, self.ctx.site
        assert node.wan_ip is not None
        machine = self._machine(spec)
        self.edge = VsphereSecurityPolicy(
            f"{site.name}-edge",
            VsphereSecurityPolicyArgs(
                public_ip=self.public_ip,
                destination=node.wan_ip,
                rules=spec.rules,
                internal=[str(site.vpc_cidr), str(site.wan_cidr), str(site.lan_cidr), str(self.mgmt_cidr)],
            ),
            self.child_opts(),
        )
        return NodeResources(
            management_ip=pulumi.Output.from_input(node.wan_ip),
            private_ips={"wan": node.wan_ip, "lan": node.lan_ip},
            machine=machine.vm,
            vm_id=machine.vm.id,
            extra={"uuid": machine.uuid, "moid": machine.moid, "wanMac": machine.macs["wan"], "lanMac": machine.macs["lan"]},
        )

    def client(self, spec: NodeSpec) -> NodeResources:
        node = spec.node
        assert node.mgmt_ip is not None, f"{node.name}: a vSphere client needs mgmtCidr"
        machine = self._machine(spec)
        return NodeResources(
            management_ip=pulumi.Output.from_input(node.mgmt_ip),
            private_ips={"mgmt": node.mgmt_ip, "lan": node.lan_ip},
            machine=machine.vm,
            vm_id=machine.vm.id,
            extra={"uuid": machine.uuid, "moid": machine.moid, "mgmtMac": machine.macs["mgmt"], "lanMac": machine.macs["lan"]},
        )


PLATFORM_SITE: Final[PlatformFactory] = VsphereSite
"""What components.site builds a site of this platform with (see PlatformTraits.site_module)."""
