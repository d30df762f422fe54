"""Oracle Cloud Infrastructure: one overlay site per region (VCN, NSG rules, reserved public IP, router and client).

Building blocks, each usable without the overlay:
- `OciNetwork`: VCN (IPv4 + Oracle-allocated IPv6 /56), internet gateway, routes for 0.0.0.0/0 and ::/0, WAN and
  LAN subnets (dual stack), and the VCN's default security list taken over so that it admits nothing inbound
  (its stock SSH-from-anywhere rule would otherwise be combined with every NSG and defeat `adminCidr`).
- `OciSecurityPolicy`: a network security group with one rule per `IngressRule` (stable names), egress open.
- `OciPublicAddress`: a reserved public IPv4 (`lifetime="RESERVED"`), created unassigned;
  `OciPublicAddressBinding` assigns it to a private IP later.
- `OciMachine`: an instance whose primary VNIC has a planned private address, and an optional secondary VNIC
  (attached after launch; Ubuntu does not configure it, the payload does).

The reserved public IP of a router (what every peer's payload needs before any VM exists):
1. `prepare()` reserves a `PublicIp(lifetime="RESERVED")` with no private IP: its address is known before any VM, so
   every site's payload can be rendered with it.
2. The router launches with `assign_public_ip="false"` and its planned WAN address as primary private IP.
3. After launch, `getPrivateIps(ip_address=<instance.private_ip>, subnet_id=<WAN subnet>)` finds the OCID of that
   primary private IP, and `OciPublicAddressBinding` assigns the reserved address to it (UpdatePublicIp through the
   OCI CLI, `oci network public-ip update --public-ip-id ... --private-ip-id ...`).
A reserved PublicIp's `private_ip_id` is updatable (UpdatePublicIp), but one Pulumi resource cannot be created
before the instance and updated after it in the same run; giving it the instance's private IP at creation would
make the address depend on the instance whose user-data needs the address (a cycle). The binding is therefore its
own step, and the PublicIp ignores changes of `privateIpId` (a refresh must not unassign it). The router's
management address resolves only once the binding ran, so later steps (config push, checks) wait for it.
Requirement: the OCI CLI on the machine running Pulumi, configured with the same credentials as the provider.
"""

from __future__ import annotations

import base64
import ipaddress
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import pulumi
import pulumi_command as command
import pulumi_oci as oci

from components.clouds.base import NodeResources, NodeSpec, PlatformSite, ResolvedRule, SiteContext
from components.security import IngressRule, RuleProtocol, scoped_source

PKG: Final = "multicloud-overlay:oci"
DEFAULT_SHAPE: Final = "VM.Standard.E4.Flex"
# Flex VM shapes allow max(2, OCPUs) VNICs; the router needs two (WAN, LAN).
ROUTER_OCPUS: Final = 2.0
ROUTER_MEMORY_GBS: Final = 8.0
CLIENT_OCPUS: Final = 1.0
CLIENT_MEMORY_GBS: Final = 4.0
IMAGE_OS: Final = "Canonical Ubuntu"
IMAGE_OS_VERSION: Final = "24.04"
# /64 index of each subnet inside the VCN's IPv6 /56.
WAN_IPV6_INDEX: Final = 1
LAN_IPV6_INDEX: Final = 2
PROTOCOL_NUMBERS: Final[Mapping[RuleProtocol, str]] = {"udp": "17", "tcp": "6", "icmp": "1", "icmpv6": "58"}
WORLD: Final = ("0.0.0.0/0", "::/0")
USER_DATA_PROPERTY: Final = "metadata.user_data"


# ---------------------------------------------------------------------------------------------------------------
# Pure helpers (apply callbacks), testable without mocks.


def subnet_ipv6(vcn_blocks: Sequence[str] | None, index: int) -> list[str]:
    """The `index`-th /64 of the VCN's first IPv6 prefix (an Oracle GUA /56), as a one-element list."""
    if not vcn_blocks:
        raise ValueError("the VCN has no IPv6 prefix: create it with is_ipv6enabled=True")
    block = ipaddress.IPv6Network(vcn_blocks[0])
    if block.prefixlen > 64:
        raise ValueError(f"VCN IPv6 prefix {block} is smaller than a /64")
    if index >= 2 ** (64 - block.prefixlen):
        raise ValueError(f"VCN IPv6 prefix {block} has no /64 number {index}")
    return [str(ipaddress.IPv6Network((int(block.network_address) + (index << 64), 64)))]


def primary_private_ip_id(private_ips: Sequence[Any] | None, ip_address: str) -> str:
    """OCID of the primary private IP with address `ip_address` in a getPrivateIps result."""
    for entry in private_ips or ():
        if getattr(entry, "ip_address", None) == ip_address and getattr(entry, "is_primary", False):
            return str(entry.id)
    raise ValueError(f"no primary private IP {ip_address} found: the router's WAN VNIC should carry it")


def first_image_id(images: Sequence[Any] | None, what: str) -> str:
    """OCID of the first (newest, with sort_order DESC) image of a getImages result."""
    if not images:
        raise ValueError(f"no {IMAGE_OS} {IMAGE_OS_VERSION} image found for {what}: set the site's 'image' to an image OCID")
    return str(images[0].id)


def first_availability_domain(domains: Sequence[Any] | None, what: str) -> str:
    """Name of the first availability domain of a getAvailabilityDomains result."""
    if not domains:
        raise ValueError(f"no availability domain found for {what}: set the site's 'zone' to one")
    return str(domains[0].name)


def encode_user_data(text: str) -> str:
    """OCI metadata.user_data is base64 of the #cloud-config text."""
    return base64.b64encode(text.encode()).decode()


def is_flex(shape: str) -> bool:
    return shape.endswith(".Flex")


def assign_command(region: str, public_ip_id: str, private_ip_id: str) -> str:
    """OCI CLI call that assigns a reserved public IP to a private IP and waits until it is assigned."""
    return " ".join(
        [
            "oci network public-ip update",
            f"--region {shlex.quote(region)}",
            f"--public-ip-id {shlex.quote(public_ip_id)}",
            f"--private-ip-id {shlex.quote(private_ip_id)}",
            "--wait-for-state ASSIGNED",
            "--force",
        ]
    )


def after(values: list[Any]) -> Any:
    """The first value of an Output.all(value, *steps): `value`, available only once the steps are done."""
    return values[0]


# ---------------------------------------------------------------------------------------------------------------
# Building blocks.


@dataclass
class OciNetworkArgs:
    compartment_id: pulumi.Input[str]
    """OCID of the compartment of every resource of the network."""
    vcn_cidr: str
    """IPv4 block of the VCN, e.g. 10.4.0.0/16."""
    wan_cidr: str
    """IPv4 block of the WAN subnet (router NIC 0, public side)."""
    lan_cidr: str
    """IPv4 block of the LAN subnet (router NIC 1, clients)."""
    wan_ipv6_index: int = WAN_IPV6_INDEX
    """Which /64 of the VCN's IPv6 /56 the WAN subnet gets."""
    lan_ipv6_index: int = LAN_IPV6_INDEX
    """Which /64 of the VCN's IPv6 /56 the LAN subnet gets."""


class OciNetwork(pulumi.ComponentResource):
    """VCN with internet access over IPv4 and IPv6, a WAN and a LAN subnet, and a default security list that
    admits nothing inbound (ingress is decided by NSGs only)."""

    def __init__(self, name: str, args: OciNetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"{PKG}:OciNetwork", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.vcn = oci.core.Vcn(
            f"{name}-vcn",
            compartment_id=args.compartment_id,
            cidr_blocks=[args.vcn_cidr],
            is_ipv6enabled=True,
            display_name=f"{name}-vcn",
            opts=child,
        )
        self.internet_gateway = oci.core.InternetGateway(
            f"{name}-igw", compartment_id=args.compartment_id, vcn_id=self.vcn.id, enabled=True, display_name=f"{name}-igw", opts=child
        )
        self.route_table = oci.core.RouteTable(
            f"{name}-routes",
            compartment_id=args.compartment_id,
            vcn_id=self.vcn.id,
            display_name=f"{name}-routes",
            route_rules=[
                oci.core.RouteTableRouteRuleArgs(
                    network_entity_id=self.internet_gateway.id, destination=dest, destination_type="CIDR_BLOCK"
                )
                for dest in WORLD
            ],
            opts=child,
        )
        # Security lists and NSGs are evaluated as a union: the default list must admit nothing inbound.
        self.default_security_list = oci.core.DefaultSecurityList(
            f"{name}-default-seclist",
            manage_default_resource_id=self.vcn.default_security_list_id,
            compartment_id=args.compartment_id,
            display_name=f"{name}-default-seclist",
            ingress_security_rules=[],
            egress_security_rules=[
                oci.core.DefaultSecurityListEgressSecurityRuleArgs(destination=dest, protocol="all", destination_type="CIDR_BLOCK")
                for dest in WORLD
            ],
            opts=child,
        )
        vcn_v6 = self.vcn.ipv6cidr_blocks
        self.wan_subnet = self._subnet(name, "wan", args, args.wan_cidr, vcn_v6.apply(lambda b: subnet_ipv6(b, args.wan_ipv6_index)))
        self.lan_subnet = self._subnet(name, "lan", args, args.lan_cidr, vcn_v6.apply(lambda b: subnet_ipv6(b, args.lan_ipv6_index)))
        self.register_outputs(
            {
                "vcnId": self.vcn.id,
                "vcnIpv6": vcn_v6,
                "wanSubnetId": self.wan_subnet.id,
                "lanSubnetId": self.lan_subnet.id,
                "defaultSecurityListId": self.default_security_list.id,
            }
        )

    def _subnet(self, name: str, role: str, args: OciNetworkArgs, cidr: str, ipv6: pulumi.Output[list[str]]) -> oci.core.Subnet:
        return oci.core.Subnet(
            f"{name}-{role}",
            compartment_id=args.compartment_id,
            vcn_id=self.vcn.id,
            cidr_block=cidr,
            ipv6cidr_blocks=ipv6,
            route_table_id=self.route_table.id,
            security_list_ids=[self.default_security_list.id],
            prohibit_public_ip_on_vnic=False,
            display_name=f"{name}-{role}",
            opts=pulumi.ResourceOptions(parent=self),
        )


@dataclass
class OciSecurityPolicyArgs:
    compartment_id: pulumi.Input[str]
    """OCID of the compartment of the NSG."""
    vcn_id: pulumi.Input[str]
    """VCN the NSG belongs to."""
    rules: Sequence[ResolvedRule]
    """Ingress rules; each becomes one NSG rule named after the rule (never after its position)."""


class OciSecurityPolicy(pulumi.ComponentResource):
    """A network security group admitting exactly `rules` (stateful) and any egress. Refuses 0.0.0.0/0 and ::/0."""

    def __init__(self, name: str, args: OciSecurityPolicyArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"{PKG}:OciSecurityPolicy", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.nsg = oci.core.NetworkSecurityGroup(
            f"{name}-nsg", compartment_id=args.compartment_id, vcn_id=args.vcn_id, display_name=f"{name}-nsg", opts=child
        )
        self.rules: dict[str, oci.core.NetworkSecurityGroupSecurityRule] = {}
        for resolved in args.rules:
            rule = resolved.rule
            if rule.name in self.rules:
                raise ValueError(f"two ingress rules are named {rule.name}")
            source = pulumi.Output.from_input(resolved.source).apply(lambda s, n=rule.name: scoped_source(s, n))
            self.rules[rule.name] = self._ingress(name, rule, source)
        self.egress = [
            oci.core.NetworkSecurityGroupSecurityRule(
                f"{name}-egress-v{family}",
                network_security_group_id=self.nsg.id,
                direction="EGRESS",
                protocol="all",
                destination=dest,
                destination_type="CIDR_BLOCK",
                description=f"any IPv{family} egress",
                opts=child,
            )
            for family, dest in ((4, WORLD[0]), (6, WORLD[1]))
        ]
        self.register_outputs({"nsgId": self.nsg.id, "ruleNames": sorted(self.rules)})

    def _ingress(self, name: str, rule: IngressRule, source: pulumi.Output[str]) -> oci.core.NetworkSecurityGroupSecurityRule:
        udp = tcp = None
        if rule.port is not None and rule.protocol == "udp":
            udp = oci.core.NetworkSecurityGroupSecurityRuleUdpOptionsArgs(
                destination_port_range=oci.core.NetworkSecurityGroupSecurityRuleUdpOptionsDestinationPortRangeArgs(
                    min=rule.port, max=rule.port
                )
            )
        if rule.port is not None and rule.protocol == "tcp":
            tcp = oci.core.NetworkSecurityGroupSecurityRuleTcpOptionsArgs(
                destination_port_range=oci.core.NetworkSecurityGroupSecurityRuleTcpOptionsDestinationPortRangeArgs(
                    min=rule.port, max=rule.port
                )
            )
        return oci.core.NetworkSecurityGroupSecurityRule(
            f"{name}-{rule.name}",
            network_security_group_id=self.nsg.id,
            direction="INGRESS",
            protocol=PROTOCOL_NUMBERS[rule.protocol],
            source=source,
            source_type="CIDR_BLOCK",
            stateless=False,
            udp_options=udp,
            tcp_options=tcp,
            description=rule.description,
            opts=pulumi.ResourceOptions(parent=self),
        )


@dataclass
class OciPublicAddressArgs:
    compartment_id: pulumi.Input[str]
    """OCID of the compartment of the reserved address."""


class OciPublicAddress(pulumi.ComponentResource):
    """A reserved public IPv4, created unassigned: it outlives any VM and keeps its address across rebuilds.
    Assign it with `OciPublicAddressBinding` (the assignment is ignored as a change of this resource)."""

    def __init__(self, name: str, args: OciPublicAddressArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"{PKG}:OciPublicAddress", name, None, opts)
        self.public_ip = oci.core.PublicIp(
            f"{name}-ip",
            compartment_id=args.compartment_id,
            lifetime="RESERVED",
            display_name=f"{name}-ip",
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["privateIpId"]),
        )
        self.address: pulumi.Output[str] = self.public_ip.ip_address
        self.register_outputs({"address": self.address, "publicIpId": self.public_ip.id})


@dataclass
class OciPublicAddressBindingArgs:
    region: str
    """Region of the public and the private IP."""
    public_ip_id: pulumi.Input[str]
    """OCID of the reserved public IP."""
    private_ip_id: pulumi.Input[str]
    """OCID of the private IP to assign it to (a VNIC's primary private IP, without a public IP of its own)."""


class OciPublicAddressBinding(pulumi.ComponentResource):
    """Assigns a reserved public IP to a private IP (UpdatePublicIp through the OCI CLI), again whenever either
    changes (a rebuilt VM). Needs the OCI CLI, configured like the provider, where Pulumi runs."""

    def __init__(self, name: str, args: OciPublicAddressBindingArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"{PKG}:OciPublicAddressBinding", name, None, opts)
        self.private_ip_id = pulumi.Output.from_input(args.private_ip_id)
        script = pulumi.Output.all(args.public_ip_id, args.private_ip_id).apply(lambda ids: assign_command(args.region, ids[0], ids[1]))
        self.command = command.local.Command(
            f"{name}-assign",
            create=script,
            update=script,
            triggers=[args.public_ip_id, args.private_ip_id],
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs({"privateIpId": self.private_ip_id})


@dataclass
class OciVnic:
    """One VNIC of a machine."""

    subnet_id: pulumi.Input[str]
    """Subnet of the VNIC."""
    private_ip: str
    """Planned private IPv4 of the VNIC (must be free in the subnet)."""
    nsg_ids: Sequence[pulumi.Input[str]] = ()
    """NSGs the VNIC belongs to."""
    skip_source_dest_check: bool = False
    """True on router VNICs: they forward packets that are neither from nor to themselves."""
    assign_public_ip: bool = False
    """An ephemeral public IPv4 (False when a reserved address will be assigned, and on a router's LAN)."""
    assign_ipv6: bool = True
    """An IPv6 address from the subnet's /64."""


@dataclass
class OciMachineArgs:
    compartment_id: pulumi.Input[str]
    """OCID of the compartment of the instance."""
    availability_domain: pulumi.Input[str]
    """Availability domain name, e.g. Uocm:EU-FRANKFURT-1-AD-1."""
    image_id: pulumi.Input[str]
    """OCID of the boot image."""
    primary_vnic: OciVnic
    """NIC 0, created at launch."""
    user_data: pulumi.Input[str]
    """Plain-text #cloud-config; encoded to base64 here. Changes are ignored after launch (pushed in place)."""
    ssh_public_key: str
    """OpenSSH public key installed for the image's default user."""
    shape: str = DEFAULT_SHAPE
    """Instance shape; flex shapes get `ocpus`/`memory_in_gbs`."""
    ocpus: float = CLIENT_OCPUS
    """OCPUs of a flex shape (flex VMs allow max(2, OCPUs) VNICs)."""
    memory_in_gbs: float = CLIENT_MEMORY_GBS
    """Memory of a flex shape."""
    secondary_vnics: Mapping[str, OciVnic] = field(default_factory=dict)
    """role -> VNIC attached after launch (the guest must configure it itself)."""


class OciMachine(pulumi.ComponentResource):
    """An instance with a planned primary VNIC and optional secondary VNICs; user-data is set once at launch."""

    def __init__(self, name: str, args: OciMachineArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"{PKG}:OciMachine", name, None, opts)
        nic = args.primary_vnic
        self.instance = oci.core.Instance(
            f"{name}-instance",
            compartment_id=args.compartment_id,
            availability_domain=args.availability_domain,
            display_name=name,
            shape=args.shape,
            shape_config=oci.core.InstanceShapeConfigArgs(ocpus=args.ocpus, memory_in_gbs=args.memory_in_gbs)
            if is_flex(args.shape)
            else None,
            source_details=oci.core.InstanceSourceDetailsArgs(source_type="image", source_id=args.image_id),
            create_vnic_details=oci.core.InstanceCreateVnicDetailsArgs(
                subnet_id=nic.subnet_id,
                private_ip=nic.private_ip,
                assign_public_ip="true" if nic.assign_public_ip else "false",
                assign_ipv6ip=nic.assign_ipv6,
                skip_source_dest_check=nic.skip_source_dest_check,
                nsg_ids=list(nic.nsg_ids),
                display_name=f"{name}-vnic0",
            ),
            metadata={
                "ssh_authorized_keys": args.ssh_public_key,
                "user_data": pulumi.Output.from_input(args.user_data).apply(encode_user_data),
            },
            # A planned private IP cannot be held by two VNICs: replace by deleting first.
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=[USER_DATA_PROPERTY], delete_before_replace=True),
        )
        self.vnic_attachments: dict[str, oci.core.VnicAttachment] = {}
        for role, vnic in args.secondary_vnics.items():
            self.vnic_attachments[role] = oci.core.VnicAttachment(
                f"{name}-{role}-vnic",
                instance_id=self.instance.id,
                display_name=f"{name}-{role}-vnic",
                create_vnic_details=oci.core.VnicAttachmentCreateVnicDetailsArgs(
                    subnet_id=vnic.subnet_id,
                    private_ip=vnic.private_ip,
                    assign_public_ip="true" if vnic.assign_public_ip else "false",
                    assign_ipv6ip=vnic.assign_ipv6,
                    skip_source_dest_check=vnic.skip_source_dest_check,
                    nsg_ids=list(vnic.nsg_ids),
                    display_name=f"{name}-{role}",
                ),
                opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
            )
        self.private_ip: pulumi.Output[str] = self.instance.private_ip
        self.public_ip: pulumi.Output[str] = self.instance.public_ip
        self.register_outputs(
            {
                "instanceId": self.instance.id,
                "privateIp": self.private_ip,
                "publicIp": self.public_ip,
                "vnicAttachments": {role: a.id for role, a in self.vnic_attachments.items()},
            }
        )


# ---------------------------------------------------------------------------------------------------------------
# Overlay site.


class OciSite(PlatformSite):
    """An overlay site in one OCI region."""

    user_data_property = USER_DATA_PROPERTY

    def __init__(self, ctx: SiteContext) -> None:
        super().__init__(ctx)
        site = ctx.site
        if not site.region:
            raise ValueError(f"sites.{site.name}.region is not set: an OCI site needs its region (e.g. eu-frankfurt-1)")
        self.region = site.region
        self.compartment_id = site.require("compartmentId")
        self._provider = oci.Provider(f"{self.name}-provider", region=self.region, opts=pulumi.ResourceOptions(parent=ctx.parent))
        self.network: OciNetwork | None = None
        self.reserved: OciPublicAddress | None = None
        self._images: dict[str, pulumi.Output[str]] = {}
        self._availability_domain: pulumi.Output[str] | None = None

    @property
    def provider(self) -> pulumi.ProviderResource:
        return self._provider

    def _invoke_opts(self) -> pulumi.InvokeOptions:
        return pulumi.InvokeOptions(provider=self._provider, parent=self.ctx.parent)

    def prepare(self) -> pulumi.Output[str]:
        site = self.ctx.site
        self.network = OciNetwork(
            f"{self.name}-net",
            OciNetworkArgs(
                compartment_id=self.compartment_id, vcn_cidr=str(site.vpc_cidr), wan_cidr=str(site.wan_cidr), lan_cidr=str(site.lan_cidr)
            ),
            self.child_opts(),
        )
        self.reserved = OciPublicAddress(
            f"{self.name}-router-wan", OciPublicAddressArgs(compartment_id=self.compartment_id), self.child_opts()
        )
        return self.reserved.address

    def _image(self, shape: str) -> pulumi.Input[str]:
        image = self.ctx.site.setting("image")
        if image:
            return image
        if shape not in self._images:
            found = oci.core.get_images_output(
                compartment_id=self.compartment_id,
                operating_system=IMAGE_OS,
                operating_system_version=IMAGE_OS_VERSION,
                shape=shape,
                sort_by="TIMECREATED",
                sort_order="DESC",
                opts=self._invoke_opts(),
            )
            what = f"{self.name} ({shape})"
            self._images[shape] = found.images.apply(lambda imgs: first_image_id(imgs, what))
        return self._images[shape]

    def _zone(self) -> pulumi.Input[str]:
        zone = self.ctx.site.setting("zone")
        if zone:
            return zone
        if self._availability_domain is None:
            found = oci.identity.get_availability_domains_output(compartment_id=self.compartment_id, opts=self._invoke_opts())
            self._availability_domain = found.availability_domains.apply(lambda ads: first_availability_domain(ads, self.name))
        return self._availability_domain

    def _parts(self) -> tuple[OciNetwork, OciPublicAddress]:
        if self.network is None or self.reserved is None:
            raise RuntimeError("OciSite.prepare() runs before router()/client()")
        return self.network, self.reserved

    def _policy(self, spec: NodeSpec, network: OciNetwork) -> OciSecurityPolicy:
        return OciSecurityPolicy(
            f"{spec.node.name}-policy",
            OciSecurityPolicyArgs(compartment_id=self.compartment_id, vcn_id=network.vcn.id, rules=spec.rules),
            self.child_opts(spec.parent),
        )

    def router(self, spec: NodeSpec) -> NodeResources:
        network, reserved = self._parts()
        node = spec.node
        if node.wan_ip is None:
            raise ValueError(f"{node.name} has no planned WAN address")
        wan_ip: str = node.wan_ip
        policy = self._policy(spec, network)
        shape = self.ctx.site.setting("routerSize") or DEFAULT_SHAPE
        machine = OciMachine(
            f"{node.name}-vm",
            OciMachineArgs(
                compartment_id=self.compartment_id,
                availability_domain=self._zone(),
                image_id=self._image(shape),
                primary_vnic=OciVnic(
                    subnet_id=network.wan_subnet.id,
                    private_ip=wan_ip,
                    nsg_ids=[policy.nsg.id],
                    skip_source_dest_check=True,
                    assign_public_ip=False,  # the reserved address is assigned to this VNIC's primary private IP
                ),
                secondary_vnics={
                    "lan": OciVnic(
                        subnet_id=network.lan_subnet.id, private_ip=node.lan_ip, nsg_ids=[policy.nsg.id], skip_source_dest_check=True
                    )
                },
                user_data=spec.user_data,
                ssh_public_key=self.ctx.ssh_public_key,
                shape=shape,
                ocpus=ROUTER_OCPUS,
                memory_in_gbs=ROUTER_MEMORY_GBS,
            ),
            self.child_opts(spec.parent),
        )
        # After launch: the primary private IP's OCID (the lookup waits for the instance through its private_ip).
        found = oci.core.get_private_ips_output(
            ip_address=machine.private_ip,
            subnet_id=network.wan_subnet.id,
            opts=pulumi.InvokeOptions(provider=self._provider, parent=spec.parent),
        )
        binding = OciPublicAddressBinding(
            f"{node.name}-wan-ip",
            OciPublicAddressBindingArgs(
                region=self.region,
                public_ip_id=reserved.public_ip.id,
                private_ip_id=found.private_ips.apply(lambda ips: primary_private_ip_id(ips, wan_ip)),
            ),
            pulumi.ResourceOptions(parent=spec.parent),
        )
        management_ip: pulumi.Output[str] = pulumi.Output.all(reserved.address, binding.command.stdout).apply(after)
        return NodeResources(
            management_ip=management_ip,
            private_ips={"wan": machine.private_ip, "lan": node.lan_ip},
            machine=machine.instance,
            extra={"instanceId": machine.instance.id, "publicIpId": reserved.public_ip.id, "privateIpId": binding.private_ip_id},
        )

    def client(self, spec: NodeSpec) -> NodeResources:
        network, _ = self._parts()
        node = spec.node
        policy = self._policy(spec, network)
        shape = self.ctx.site.setting("clientSize") or DEFAULT_SHAPE
        machine = OciMachine(
            f"{node.name}-vm",
            OciMachineArgs(
                compartment_id=self.compartment_id,
                availability_domain=self._zone(),
                image_id=self._image(shape),
                primary_vnic=OciVnic(
                    subnet_id=network.lan_subnet.id,
                    private_ip=node.lan_ip,
                    nsg_ids=[policy.nsg.id],
                    assign_public_ip=True,  # management over the internet; the NSG admits SSH from adminCidr only
                ),
                user_data=spec.user_data,
                ssh_public_key=self.ctx.ssh_public_key,
                shape=shape,
                ocpus=CLIENT_OCPUS,
                memory_in_gbs=CLIENT_MEMORY_GBS,
            ),
            self.child_opts(spec.parent),
        )
        return NodeResources(
            management_ip=machine.public_ip,
            private_ips={"lan": machine.private_ip},
            machine=machine.instance,
            extra={"instanceId": machine.instance.id},
        )
