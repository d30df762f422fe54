"""Oracle Cloud Infrastructure: one overlay site per region (VCN, NSG rules, reserved public IP, router and client).

Building blocks, each usable without the overlay:
- `OciNetwork`: VCN (IPv4 + Oracle-allocated IPv6 /56), internet gateway, routes for 0.0.0.0/0 and ::/0, WAN and
  LAN subnets (dual stack), and the VCN's default security list taken over so that it admits nothing inbound
  (its stock SSH-from-anywhere rule would otherwise be combined with every NSG and defeat `adminCidr`).
- `OciSecurityPolicy`: network security groups with one rule per `IngressRule` (stable names), egress open.
- `OciPublicAddress`: a reserved public IPv4 (`lifetime="RESERVED"`), optionally assigned to a private IP.
- `OciMachine`: an instance whose primary VNIC has a planned private address, and an optional secondary VNIC
  (attached after launch; Ubuntu does not configure it, the payload does).

`OciSecurityPolicy` puts a node's rules in one NSG per rule kind (oci_traits.pack_rules: ICMP apart from the rest),
all on every VNIC of the node: an NSG holds at most 120 rules, ingress and egress together, and a VNIC may be in
five NSGs (oci_traits; check_limits refuses a stack that would overflow one before any resource exists).

The reserved public IP of a router:
1. `prepare()` declares a `PublicIp(lifetime="RESERVED")` whose `private_ip_id` is a deferred output
   (`pulumi.deferred_output`), so the site's address is an output other sites can use (their rules, the pushes).
2. The router launches with `assign_public_ip="false"` and its planned WAN address as primary private IP. Its
   user-data is the bootstrap payload, which names no public address, so nothing the instance needs waits for
   any reserved address (no cycle).
3. After launch, `getPrivateIps(ip_address=<instance.private_ip>, subnet_id=<WAN subnet>)` finds the OCID of that
   primary private IP and resolves the deferred `private_ip_id`: OCI creates the reserved address assigned to it
   (CreatePublicIp with privateIpId). A rebuilt router gets the same address back by an update of `private_ip_id`
   (UpdatePublicIp moves a reserved IP; private_ip_id is updatable, lifetime is ForceNew:
   https://github.com/oracle/terraform-provider-oci/blob/master/internal/service/core/core_public_ip_resource.go).
   Nothing runs outside the provider (no OCI CLI).
The router's management address is the PublicIp's `ip_address`, so the config push waits for the assignment; the
push also waits for the whole `OciMachine` (instance and LAN VNIC attachment).
Caveat of the deferred output: if the program fails after `prepare()` and before this site's `router()` (e.g. an
exception while another site deploys), the PublicIp and everything that uses its address wait forever instead of
failing; `OciSite.abandon(error)` fails them, and the program should call it for every site it did not deploy.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NoReturn

import pulumi
import pulumi_oci as oci

from multicloud_overlay.components.clouds import oci_traits
from multicloud_overlay.components.clouds.base import NodeResources, NodeSpec, PlatformFactory, PlatformSite, ResolvedRule, SiteContext
from multicloud_overlay.components.limits import user_data_as_sent
from multicloud_overlay.overlay.security import IngressRule, RuleProtocol, scoped_source

PKG: Final = "multicloud-overlay:oci"
# Default shapes: oci_traits.NODES (the one place, documented in the README); override with routerSize / clientSize.
DEFAULT_ROUTER_SHAPE: Final = oci_traits.NODES.router_size
DEFAULT_CLIENT_SHAPE: Final = oci_traits.NODES.client_size
# Flex VM shapes allow max(2, OCPUs) VNICs; the router needs two (WAN, LAN).
ROUTER_OCPUS: Final = 2.0
ROUTER_MEMORY_GBS: Final = 8.0
CLIENT_OCPUS: Final = 1.0
CLIENT_MEMORY_GBS: Final = 4.0
IMAGE_OS: Final = oci_traits.IMAGE_OS
IMAGE_OS_VERSION: Final = oci_traits.IMAGE_OS_VERSION
# /64 index of each subnet inside the VCN's IPv6 /56.
WAN_IPV6_INDEX: Final = 1
LAN_IPV6_INDEX: Final = 2
PROTOCOL_NUMBERS: Final[Mapping[RuleProtocol, str]] = {"udp": "17", "tcp": "6", "icmp": "1", "icmpv6": "58"}
WORLD: Final = ("0.0.0.0/0", "::/0")
USER_DATA_PROPERTY: Final = "metadata.user_data"
SSH_KEYS_PROPERTY: Final = "metadata.ssh_authorized_keys"
# OCI rejects an UpdateInstance that changes either metadata key after launch ("user_data and ssh_authorized_keys
# cannot be changed after an instance has launched", https://docs.oracle.com/iaas/api/#/en/iaas/20160918/datatypes/UpdateInstanceDetails):
# never send one.
IMMUTABLE_METADATA: Final = (USER_DATA_PROPERTY, SSH_KEYS_PROPERTY)


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
    """OCI metadata.user_data: base64 of the gzip of the #cloud-config text (oci_traits.LIMITS.user_data_encoding;
    the Oracle datasource base64-decodes, cloud-init decompresses gzip), as limits.user_data_as_sent measures it."""
    return user_data_as_sent(text, oci_traits.LIMITS.user_data_encoding)


def instance_metadata(values: Sequence[str | None]) -> dict[str, str]:
    """Apply callback: [user_data text, ssh key or None] -> the instance metadata, refused above OCI's 32,000 bytes."""
    text, ssh_key = values
    assert text is not None
    metadata = {**({"ssh_authorized_keys": ssh_key} if ssh_key else {}), "user_data": encode_user_data(text)}
    problem = oci_traits.metadata_problem(metadata)
    if problem:
        raise ValueError(problem)
    return metadata


_UNBUILT_ROUTERS: list[OciSite] = []
"""OCI sites of this program run whose reserved address still waits for router() (see OciSite.abandon)."""


def _unresolvable(message: str) -> NoReturn:
    raise RuntimeError(f"the router was not built, so its reserved public IP has no private IP: {message}")


def is_flex(shape: str) -> bool:
    return shape.endswith(".Flex")


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
    """OCID of the compartment of the NSGs."""
    vcn_id: pulumi.Input[str]
    """VCN the NSGs belong to."""
    rules: Sequence[ResolvedRule]
    """Ingress rules; each becomes one NSG rule named after the rule (never after its position), in the NSG of its
    kind (oci_traits.nsg_group)."""


class OciSecurityPolicy(pulumi.ComponentResource):
    """Network security groups admitting exactly `rules` (stateful) and any egress. Refuses 0.0.0.0/0 and ::/0.

    One NSG per rule kind (oci_traits.NSG_GROUPS: "main" with the tunnels, SSH and the egress rules, "icmp"), so
    neither reaches OCI's 120 rules per NSG below 117 peers; put every id of `nsg_ids` on each VNIC of the node.
    """

    def __init__(self, name: str, args: OciSecurityPolicyArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"{PKG}:OciSecurityPolicy", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        names = [r.rule.name for r in args.rules]
        for rule_name in names:
            if names.count(rule_name) > 1:
                raise ValueError(f"two ingress rules are named {rule_name}")
        for group, count in oci_traits.nsg_rule_counts(r.rule for r in args.rules).items():
            if count > oci_traits.NSG_RULES_MAX.value:
                raise ValueError(
                    f"{name}: the {group} NSG would hold {count} security rules, over OCI's {oci_traits.NSG_RULES_MAX.value} "
                    f"({oci_traits.NSG_RULES_MAX.source})"
                )
        self.nsgs: dict[oci_traits.NsgGroup, oci.core.NetworkSecurityGroup] = {
            group: oci.core.NetworkSecurityGroup(
                oci_traits.nsg_name(name, group),
                compartment_id=args.compartment_id,
                vcn_id=args.vcn_id,
                display_name=oci_traits.nsg_name(name, group),
                opts=child,
            )
            for group in oci_traits.NSG_GROUPS
        }
        self.nsg = self.nsgs["main"]
        self.nsg_ids: list[pulumi.Output[str]] = [nsg.id for nsg in self.nsgs.values()]
        self.rules: dict[str, oci.core.NetworkSecurityGroupSecurityRule] = {}
        for resolved in args.rules:
            rule = resolved.rule
            source = pulumi.Output.from_input(resolved.source).apply(lambda s, n=rule.name: scoped_source(s, n))
            self.rules[rule.name] = self._ingress(name, rule, source, self.nsgs[oci_traits.nsg_group(rule)])
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
        assert len(self.egress) == oci_traits.EGRESS_RULES["main"]
        self.register_outputs({"nsgId": self.nsg.id, "nsgIds": self.nsg_ids, "ruleNames": sorted(self.rules)})

    def _ingress(
        self, name: str, rule: IngressRule, source: pulumi.Output[str], nsg: oci.core.NetworkSecurityGroup
    ) -> oci.core.NetworkSecurityGroupSecurityRule:
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
            network_security_group_id=nsg.id,
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
    private_ip_id: pulumi.Input[str] | None = None
    """OCID of the private IP to assign the address to (a VNIC's primary private IP without a public IP of its own);
    None: reserved unassigned. A later change moves the address (UpdatePublicIp), it is never released."""


class OciPublicAddress(pulumi.ComponentResource):
    """A reserved public IPv4: it outlives any VM and keeps its address across rebuilds (`private_ip_id` may be an
    output known only after the VM exists, e.g. a `pulumi.deferred_output`)."""

    def __init__(self, name: str, args: OciPublicAddressArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"{PKG}:OciPublicAddress", name, None, opts)
        self.public_ip = oci.core.PublicIp(
            f"{name}-ip",
            compartment_id=args.compartment_id,
            lifetime="RESERVED",
            private_ip_id=args.private_ip_id,
            display_name=f"{name}-ip",
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.address: pulumi.Output[str] = self.public_ip.ip_address
        self.private_ip_id: pulumi.Output[str | None] = self.public_ip.private_ip_id
        self.register_outputs({"address": self.address, "publicIpId": self.public_ip.id})


@dataclass
class OciNicArgs:
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
    primary_vnic: OciNicArgs
    """NIC 0, created at launch."""
    user_data: pulumi.Input[str]
    """Plain-text #cloud-config; encoded to base64 here. Changes are ignored after launch (pushed in place)."""
    shape: str = DEFAULT_CLIENT_SHAPE
    """Instance shape; flex shapes get `ocpus`/`memory_in_gbs`."""
    ocpus: float = CLIENT_OCPUS
    """OCPUs of a flex shape (flex VMs allow max(2, OCPUs) VNICs)."""
    memory_in_gbs: float = CLIENT_MEMORY_GBS
    """Memory of a flex shape."""
    secondary_vnics: Mapping[str, OciNicArgs] = field(default_factory=dict)
    """role -> VNIC attached after launch (the guest must configure it itself)."""
    ssh_public_key: str | None = None
    """OpenSSH public key for the image's default user (metadata ssh_authorized_keys); None: the user-data alone
    decides who logs in (the overlay's payload creates its own login user). Like user_data, fixed at launch."""


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
                display_name=oci_traits.primary_vnic_name(name),
            ),
            metadata=pulumi.Output.all(args.user_data, args.ssh_public_key).apply(instance_metadata),
            # A planned private IP cannot be held by two VNICs: replace by deleting first. Metadata keys are immutable.
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=list(IMMUTABLE_METADATA), delete_before_replace=True),
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
                    display_name=oci_traits.secondary_vnic_name(name, role),
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
        self._resolve_wan_private_ip: Callable[[pulumi.Output[str]], None] | None = None
        """Resolves the reserved address's deferred private_ip_id (set by prepare, called once by router)."""
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
        # Assigned to the router's primary private IP once router() knows its OCID (no user-data waits for it).
        private_ip_id, self._resolve_wan_private_ip = pulumi.deferred_output()
        self.reserved = OciPublicAddress(
            f"{self.name}-router-wan",
            OciPublicAddressArgs(compartment_id=self.compartment_id, private_ip_id=private_ip_id),
            self.child_opts(),
        )
        _UNBUILT_ROUTERS.append(self)
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
            oci_traits.policy_name(spec.node.name),
            OciSecurityPolicyArgs(compartment_id=self.compartment_id, vcn_id=network.vcn.id, rules=spec.rules),
            self.child_opts(spec.parent),
        )

    def abandon(self, error: BaseException) -> None:
        """Fail whatever waits for this site's router (its reserved address, and through it the peers' rules and the
        pushes) when the router will not be built: an unresolved deferred output keeps Pulumi waiting forever.
        Called for every OCI site when one OCI router fails; after any other failure between prepare() and router(),
        the program must call it for each site whose deploy did not run (see the module docstring). Does nothing once
        router() resolved the address."""
        resolve, self._resolve_wan_private_ip = self._resolve_wan_private_ip, None
        if self in _UNBUILT_ROUTERS:
            _UNBUILT_ROUTERS.remove(self)
        if resolve is not None:
            resolve(pulumi.Output.from_input(f"{type(error).__name__}: {error}").apply(_unresolvable))

    def router(self, spec: NodeSpec) -> NodeResources:
        resolve = self._resolve_wan_private_ip
        if resolve is None:
            raise RuntimeError("OciSite.prepare() runs before router(), and router() runs once")
        try:
            machine, private_ip_id = self._router(spec)
        except BaseException as error:
            # The program ends with this error: no other OCI site's router will be built either.
            for site in [self, *_UNBUILT_ROUTERS]:
                site.abandon(error)
            raise
        self._resolve_wan_private_ip = None
        _UNBUILT_ROUTERS.remove(self)
        resolve(private_ip_id)
        _, reserved = self._parts()
        node = spec.node
        return NodeResources(
            management_ip=reserved.address,
            private_ips={"wan": machine.private_ip, "lan": node.lan_ip},
            # The component: the push waits for the instance and the LAN VNIC attachment (and, through the
            # management address, for the reserved address's assignment).
            machine=machine,
            vm_id=machine.instance.id,
            extra={"instanceId": machine.instance.id, "publicIpId": reserved.public_ip.id, "privateIpId": private_ip_id},
        )

    def _router(self, spec: NodeSpec) -> tuple[OciMachine, pulumi.Output[str]]:
        network, _ = self._parts()
        node = spec.node
        if node.wan_ip is None:
            raise ValueError(f"{node.name} has no planned WAN address")
        wan_ip: str = node.wan_ip
        policy = self._policy(spec, network)
        shape = self.ctx.site.setting("routerSize") or DEFAULT_ROUTER_SHAPE
        machine = OciMachine(
            oci_traits.machine_name(node.name),
            OciMachineArgs(
                compartment_id=self.compartment_id,
                availability_domain=self._zone(),
                image_id=self._image(shape),
                primary_vnic=OciNicArgs(
                    subnet_id=network.wan_subnet.id,
                    private_ip=wan_ip,
                    nsg_ids=policy.nsg_ids,
                    skip_source_dest_check=True,
                    assign_public_ip=False,  # the reserved address is assigned to this VNIC's primary private IP
                ),
                secondary_vnics={
                    "lan": OciNicArgs(
                        subnet_id=network.lan_subnet.id, private_ip=node.lan_ip, nsg_ids=policy.nsg_ids, skip_source_dest_check=True
                    )
                },
                user_data=spec.user_data,
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
        return machine, found.private_ips.apply(lambda ips: primary_private_ip_id(ips, wan_ip))

    def client(self, spec: NodeSpec) -> NodeResources:
        network, _ = self._parts()
        node = spec.node
        policy = self._policy(spec, network)
        shape = self.ctx.site.setting("clientSize") or DEFAULT_CLIENT_SHAPE
        machine = OciMachine(
            oci_traits.machine_name(node.name),
            OciMachineArgs(
                compartment_id=self.compartment_id,
                availability_domain=self._zone(),
                image_id=self._image(shape),
                primary_vnic=OciNicArgs(
                    subnet_id=network.lan_subnet.id,
                    private_ip=node.lan_ip,
                    nsg_ids=policy.nsg_ids,
                    assign_public_ip=True,  # management over the internet; the NSG admits SSH from adminCidr only
                ),
                user_data=spec.user_data,
                shape=shape,
                ocpus=CLIENT_OCPUS,
                memory_in_gbs=CLIENT_MEMORY_GBS,
            ),
            self.child_opts(spec.parent),
        )
        return NodeResources(
            management_ip=machine.public_ip,
            private_ips={"lan": machine.private_ip},
            machine=machine,
            vm_id=machine.instance.id,
            extra={"instanceId": machine.instance.id},
        )


PLATFORM_SITE: Final[PlatformFactory] = OciSite
"""What components.site builds a site of this platform with (see PlatformTraits.site_module)."""
