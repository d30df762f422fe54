"""Alibaba Cloud (pulumi_alicloud): VPC with dual-stack vSwitches, security groups, EIPs, multi-ENI ECS instances.

Building blocks, each usable on its own:
- `AlicloudNetwork`: VPC (IPv6 enabled) with a WAN and a LAN vSwitch in one zone, optional IPv6 gateway.
- `AlicloudSecurityPolicy`: one security group per rule kind (alicloud_traits.pack_rules: ICMP apart from the rest),
  one rule per ingress rule (nic_type intranet, as a VPC needs). A group holds at most 200 rules and an ENI may be
  in 5 groups (alicloud_traits; check_limits refuses a stack that would overflow one before any resource exists).
- `AlicloudPublicAddress`: a reserved elastic IP (EIP).
- `AlicloudMachine`: an ECS instance (primary ENI on one vSwitch), an optional secondary ENI attached after launch
  and either an EIP binding or an instance public IP (`public_bandwidth_out`).

`AlicloudSite` wires them for an overlay site. Platform facts it relies on:
- `ecs.SecurityGroupRule.nic_type` defaults to `internet`, which a VPC security group refuses: always `intranet`.
- `vpc.Switch.ipv6_cidr_block_mask` is the index of the vSwitch's /64 inside the VPC's IPv6 block (0..255 for a
  /56), not a prefix length.
- Ubuntu does not configure a secondary ENI attached after launch: the node payload gives the LAN NIC its planned
  address (plan.node_config sets lan.configure for Alibaba routers).
- Instances and ENIs have a source/destination check (`source_dest_check`; the ENI's is off by default): set off
  explicitly on the router's primary and secondary ENI. The OS still has to forward (the payload sets the sysctls).
- `NodeResources.machine` is the `AlicloudMachine` component, so a later step that depends on it (the in-place config
  push over SSH) waits for the instance, the LAN ENI attachment and the EIP binding alike.
- `ecs.Instance.user_data`: base64 is the documented, recommended encoding; at most 32 KB before encoding
  (alicloud_traits.USER_DATA_MAX_BYTES): the payload goes gzip-compressed (cloud-init decompresses it). A change
  reboots the instance, so user data (and the image) are in ignore_changes: later config is pushed in place.
- Quotas: 20 EIPs per account and 10 VPCs per region by default (alicloud_traits): only the router gets an EIP (its
  address must survive a rebuilt VM); the client, which only needs a management address, gets an instance public IP.
- The router type must allow two ENIs: `ecs.get_instance_types(instance_type=..., eni_amount=2)` confirms it before
  the instance is created (the provider keeps only types with at least `eni_amount` ENIs that the region sells:
  https://github.com/aliyun/terraform-provider-alicloud/blob/master/alicloud/data_source_alicloud_instance_types.go).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import pulumi
import pulumi_alicloud as alicloud

from multicloud_overlay.components.clouds import alicloud_traits
from multicloud_overlay.components.clouds.base import NodeResources, NodeSpec, PlatformFactory, PlatformSite, ResolvedRule, SiteContext
from multicloud_overlay.components.limits import user_data_as_sent
from multicloud_overlay.overlay.security import IngressRule, scoped_source

TOKEN = "multicloud-overlay:alicloud"
# Default instance types: alicloud_traits.NODES (the one place, documented in the README); override with the site
# settings routerSize / clientSize.
DEFAULT_ROUTER_TYPE: Final = alicloud_traits.NODES.router_size
DEFAULT_CLIENT_TYPE: Final = alicloud_traits.NODES.client_size
# Canonical's x86_64 system images (alicloud_traits.UBUNTU_NAME_REGEX).
UBUNTU_NAME_REGEX: Final = alicloud_traits.UBUNTU_NAME_REGEX
UBUNTU_OWNERS = "system"
EIP_BANDWIDTH_MBPS = "100"
# The client's instance public IP (management and package downloads): pay-by-traffic with this bandwidth cap, Mbit/s
# (internet_max_bandwidth_out: 0..100, https://www.pulumi.com/registry/packages/alicloud/api-docs/ecs/instance/).
CLIENT_BANDWIDTH_MBPS = 50
SYSTEM_DISK_CATEGORY = "cloud_essd"
# Index of each vSwitch's /64 inside the VPC's IPv6 /56 (Switch.ipv6_cidr_block_mask).
WAN_IPV6_INDEX = 1
LAN_IPV6_INDEX = 2
ANY_PORT = "-1/-1"


# ---------------------------------------------------------------------------------------------------------------
# Pure helpers (apply callbacks and argument mapping), testable without mocks.


def encode_user_data(user_data: str) -> str:
    """Base64 (the encoding Alibaba documents for ecs.Instance user data) of the gzip-compressed #cloud-config
    (cloud-init decompresses it), exactly as limits.user_data_as_sent measures it; refused above the documented
    32 KB before base64 (alicloud_traits.USER_DATA_MAX_BYTES)."""
    sent = user_data_as_sent(user_data, alicloud_traits.LIMITS.user_data_encoding)
    problem = alicloud_traits.user_data_problem(len(base64.b64decode(sent)))
    if problem:
        raise ValueError(problem)
    return sent


def port_range(rule: IngressRule) -> str:
    """Alibaba's port range: "4789/4789" for udp/tcp, "-1/-1" for ICMP (all types)."""
    return f"{rule.port}/{rule.port}" if rule.protocol in ("udp", "tcp") and rule.port is not None else ANY_PORT


def first_image_id(result: alicloud.ecs.GetImagesResult) -> str:
    if not result.images:
        raise ValueError(f"no Alibaba image matches name_regex {UBUNTU_NAME_REGEX!r} (owners {UBUNTU_OWNERS})")
    return result.images[0].id


def first_zone_id(result: alicloud.GetZonesResult) -> str:
    if not result.zones:
        raise ValueError("no Alibaba zone offers vSwitches, the requested instance type and ESSD disks in this region")
    return result.zones[0].id


def common_zone_id(results: Sequence[alicloud.GetZonesResult]) -> str:
    """Apply callback: the first zone (in the first answer's order) that every getZones answer lists."""
    first, *others = results
    for zone in first.zones:
        if all(any(z.id == zone.id for z in other.zones) for other in others):
            return zone.id
    raise ValueError("no Alibaba zone in this region offers vSwitches, ESSD disks and both the router's and the client's instance type")


def require_enis(result: alicloud.ecs.GetInstanceTypesResult, instance_type: str, enis: int) -> str:
    """Apply callback of getInstanceTypes(instance_type, eni_amount=enis): the type, if the region sells it with at
    least `enis` ENIs (the provider drops types with fewer, and sold-out ones)."""
    found = [t for t in result.instance_types if t.id == instance_type and t.eni_quantity >= enis]
    if not found:
        raise ValueError(
            f"instance type {instance_type} is not sold in this region with at least {enis} ENIs (the router needs a WAN and "
            "a LAN ENI): set routerSize to a type that allows 2 or more, e.g. ecs.g6.large"
        )
    return instance_type


# ---------------------------------------------------------------------------------------------------------------
# Network


@dataclass
class AlicloudNetworkArgs:
    cidr_block: str
    """IPv4 CIDR of the VPC."""
    wan_cidr: str
    """IPv4 CIDR of the WAN vSwitch (inside cidr_block)."""
    lan_cidr: str
    """IPv4 CIDR of the LAN vSwitch (inside cidr_block)."""
    zone_id: pulumi.Input[str]
    """Zone of both vSwitches (an ENI and its instance must share a zone)."""
    wan_ipv6_index: int = WAN_IPV6_INDEX
    """Index of the WAN vSwitch's IPv6 /64 in the VPC's /56 (0..255)."""
    lan_ipv6_index: int = LAN_IPV6_INDEX
    """Index of the LAN vSwitch's IPv6 /64 in the VPC's /56 (0..255)."""
    ipv6_gateway: bool = False
    """Create an IPv6 gateway. Public IPv6 also needs an Ipv6InternetBandwidth per address (paid); the overlay
    runs over IPv4 between EIPs and needs neither."""


class AlicloudNetwork(pulumi.ComponentResource):
    """A VPC with IPv6 enabled and a dual-stack WAN and LAN vSwitch in one zone."""

    def __init__(self, name: str, args: AlicloudNetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"{TOKEN}:AlicloudNetwork", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.vpc = alicloud.vpc.Network(f"{name}-vpc", vpc_name=name, cidr_block=args.cidr_block, enable_ipv6=True, opts=child)
        self.wan = self._switch(f"{name}-wan", args.wan_cidr, args.wan_ipv6_index, args.zone_id, child)
        self.lan = self._switch(f"{name}-lan", args.lan_cidr, args.lan_ipv6_index, args.zone_id, child)
        self.ipv6_gateway = (
            alicloud.vpc.Ipv6Gateway(f"{name}-ipv6-gateway", vpc_id=self.vpc.id, ipv6_gateway_name=name, opts=child)
            if args.ipv6_gateway
            else None
        )
        self.vpc_id: pulumi.Output[str] = self.vpc.id
        self.wan_switch_id: pulumi.Output[str] = self.wan.id
        self.lan_switch_id: pulumi.Output[str] = self.lan.id
        self.zone_id: pulumi.Output[str] = pulumi.Output.from_input(args.zone_id)
        self.register_outputs(
            {"vpcId": self.vpc_id, "wanSwitchId": self.wan_switch_id, "lanSwitchId": self.lan_switch_id, "zoneId": self.zone_id}
        )

    def _switch(
        self, name: str, cidr: str, ipv6_index: int, zone_id: pulumi.Input[str], opts: pulumi.ResourceOptions
    ) -> alicloud.vpc.Switch:
        return alicloud.vpc.Switch(
            name,
            vswitch_name=name,
            vpc_id=self.vpc.id,
            cidr_block=cidr,
            zone_id=zone_id,
            enable_ipv6=True,
            ipv6_cidr_block_mask=ipv6_index,
            opts=opts,
        )


# ---------------------------------------------------------------------------------------------------------------
# Security policy


@dataclass
class AlicloudSecurityPolicyArgs:
    vpc_id: pulumi.Input[str]
    """VPC of the security groups."""
    rules: list[ResolvedRule]
    """Ingress rules, each with a resolved source CIDR; nothing else is admitted inbound (egress stays open)."""
    description: str = "multicloud-overlay node ingress"
    """Description of the security groups (2..256 characters, not starting with http:// or https://)."""


class AlicloudSecurityPolicy(pulumi.ComponentResource):
    """Security groups with exactly the given ingress rules, one rule resource each, named after the rule.

    One group per rule kind (alicloud_traits.GROUP_KINDS: "main" with the tunnels and SSH, "icmp"), each under
    Alibaba's 200 rules per group up to 198 peers; put every id of `security_group_ids` on each ENI of the node.
    """

    def __init__(self, name: str, args: AlicloudSecurityPolicyArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"{TOKEN}:AlicloudSecurityPolicy", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        packed = alicloud_traits.pack_rules(r.rule for r in args.rules)
        for kind, members in packed.items():
            if len(members) > alicloud_traits.GROUP_RULES_MAX.value:
                raise ValueError(
                    f"{name}: the {kind} security group would hold {len(members)} rules, over Alibaba's "
                    f"{alicloud_traits.GROUP_RULES_MAX.value} ({alicloud_traits.GROUP_RULES_MAX.source})"
                )
        self.groups: dict[alicloud_traits.GroupKind, alicloud.ecs.SecurityGroup] = {
            kind: alicloud.ecs.SecurityGroup(
                f"{name}-sg" if kind == "main" else f"{name}-{kind}-sg",
                security_group_name=alicloud_traits.security_group_name(name, kind),
                vpc_id=args.vpc_id,
                description=args.description if kind == "main" else f"{args.description} ({kind})",
                # Members of the group do not admit each other implicitly: only the rules below admit anything.
                inner_access_policy="Drop",
                opts=child,
            )
            for kind in alicloud_traits.GROUP_KINDS
        }
        self.group = self.groups["main"]
        self.rules: dict[str, alicloud.ecs.SecurityGroupRule] = {}
        for resolved in args.rules:
            rule = resolved.rule
            if rule.name in self.rules:
                raise ValueError(f"two ingress rules are named {rule.name}")
            source = pulumi.Output.from_input(resolved.source).apply(scoped_source)
            self.rules[rule.name] = alicloud.ecs.SecurityGroupRule(
                f"{name}-{rule.name}",
                security_group_id=self.groups[alicloud_traits.group_of(rule)].id,
                type="ingress",
                nic_type="intranet",
                policy="accept",
                ip_protocol=rule.protocol,
                port_range=port_range(rule),
                cidr_ip=source if rule.family == 4 else None,
                ipv6_cidr_ip=source if rule.family == 6 else None,
                description=rule.description,
                opts=child,
            )
        self.security_group_id: pulumi.Output[str] = self.group.id
        self.security_group_ids: list[pulumi.Output[str]] = [g.id for g in self.groups.values()]
        self.register_outputs(
            {"securityGroupId": self.security_group_id, "securityGroupIds": self.security_group_ids, "rules": sorted(self.rules)}
        )


# ---------------------------------------------------------------------------------------------------------------
# Public address


@dataclass
class AlicloudPublicAddressArgs:
    bandwidth: str = EIP_BANDWIDTH_MBPS
    """Bandwidth cap of the EIP in Mbit/s (1..200 for pay-by-traffic)."""
    internet_charge_type: str = "PayByTraffic"
    """PayByTraffic or PayByBandwidth."""
    payment_type: str = "PayAsYouGo"
    """PayAsYouGo or Subscription."""


class AlicloudPublicAddress(pulumi.ComponentResource):
    """A reserved public IPv4 (EIP) that outlives the instances it is bound to."""

    def __init__(self, name: str, args: AlicloudPublicAddressArgs | None = None, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"{TOKEN}:AlicloudPublicAddress", name, None, opts)
        args = args or AlicloudPublicAddressArgs()
        self.eip = alicloud.ecs.EipAddress(
            f"{name}-eip",
            address_name=name,
            bandwidth=args.bandwidth,
            internet_charge_type=args.internet_charge_type,
            payment_type=args.payment_type,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.ip_address: pulumi.Output[str] = self.eip.ip_address
        self.allocation_id: pulumi.Output[str] = self.eip.id
        self.register_outputs({"ipAddress": self.ip_address, "allocationId": self.allocation_id})


# ---------------------------------------------------------------------------------------------------------------
# Machine


@dataclass
class AlicloudNicArgs:
    """An ENI created apart from the instance and attached after launch (the OS does not configure it)."""

    vswitch_id: pulumi.Input[str]
    """vSwitch of the ENI (same zone as the instance)."""
    private_ip: str
    """Primary private IPv4 of the ENI."""
    security_group_ids: list[pulumi.Input[str]]
    """Security groups of the ENI."""
    role: str = "lan"
    """Role in resource names (f"{machine}-{role}")."""


@dataclass
class AlicloudMachineArgs:
    image_id: pulumi.Input[str]
    """ECS image id (e.g. from ecs.get_images)."""
    instance_type: pulumi.Input[str]
    """ECS instance type; with a secondary NIC it must allow 2+ ENIs (see require_enis)."""
    vswitch_id: pulumi.Input[str]
    """vSwitch of the primary ENI."""
    private_ip: str
    """Primary private IPv4 (inside the vSwitch)."""
    security_group_ids: list[pulumi.Input[str]]
    """Security groups of the primary ENI."""
    user_data: pulumi.Input[str]
    """Plain-text user data (#cloud-config); sent base64-encoded. Ignored after creation."""
    host_name: str | None = None
    """Instance name and OS host name (default: the component name)."""
    key_pair_name: pulumi.Input[str] | None = None
    """ECS key pair installed for the image's login user (root): ImportKeyPair takes RSA, DSA and ECDSA keys only,
    no ed25519. The overlay uses none (its payload creates its own login user)."""
    secondary_nic: AlicloudNicArgs | None = None
    """Second ENI to attach after launch (None: one NIC)."""
    eip_allocation_id: pulumi.Input[str] | None = None
    """EIP to bind to the instance (its primary ENI), NAT mode. Excludes public_bandwidth_out."""
    public_bandwidth_out: int = 0
    """Mbit/s (1..100) of an instance public IPv4, charged by traffic; 0: none (bind an EIP instead, or stay private).
    Such an address does not outlive the instance, but costs no EIP quota."""
    forwarding: bool = False
    """Turn the ENIs' source/destination check off (a router)."""
    system_disk_category: str = SYSTEM_DISK_CATEGORY
    """System disk category."""
    ignore_changes: list[str] = field(default_factory=lambda: ["userData", "imageId"])
    """Instance properties never updated after creation (a change would reboot or rebuild the VM)."""


class AlicloudMachine(pulumi.ComponentResource):
    """An ECS instance, optionally with a secondary ENI and a bound EIP."""

    user_data_property = "userData"

    def __init__(self, name: str, args: AlicloudMachineArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        if args.public_bandwidth_out and args.eip_allocation_id is not None:
            raise ValueError(f"{name}: an instance with a public IP of its own cannot have an EIP bound (NAT mode)")
        super().__init__(f"{TOKEN}:AlicloudMachine", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.instance = alicloud.ecs.Instance(
            f"{name}-instance",
            instance_name=args.host_name or name,
            host_name=args.host_name or name,
            image_id=args.image_id,
            instance_type=args.instance_type,
            vswitch_id=args.vswitch_id,
            private_ip=args.private_ip,
            security_groups=args.security_group_ids,
            source_dest_check=False if args.forwarding else None,
            # No instance public IP unless asked for: the public address is then an EIP bound below (or none).
            internet_max_bandwidth_out=args.public_bandwidth_out,
            internet_charge_type="PayByTraffic" if args.public_bandwidth_out else None,
            system_disk_category=args.system_disk_category,
            key_name=args.key_pair_name,
            user_data=pulumi.Output.from_input(args.user_data).apply(encode_user_data),
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=list(args.ignore_changes)),
        )
        self.secondary_nic: alicloud.ecs.EcsNetworkInterface | None = None
        self.secondary_attachment: alicloud.ecs.EcsNetworkInterfaceAttachment | None = None
        nic = args.secondary_nic
        if nic is not None:
            self.secondary_nic = alicloud.ecs.EcsNetworkInterface(
                alicloud_traits.eni_name(name, nic.role),
                network_interface_name=alicloud_traits.eni_name(name, nic.role),
                vswitch_id=nic.vswitch_id,
                primary_ip_address=nic.private_ip,
                security_group_ids=nic.security_group_ids,
                source_dest_check=False if args.forwarding else None,
                opts=child,
            )
            self.secondary_attachment = alicloud.ecs.EcsNetworkInterfaceAttachment(
                f"{name}-{nic.role}-attachment",
                instance_id=self.instance.id,
                network_interface_id=self.secondary_nic.id,
                opts=child,
            )
        self.eip_association = (
            alicloud.ecs.EipAssociation(
                f"{name}-eip-binding",
                allocation_id=args.eip_allocation_id,
                instance_id=self.instance.id,
                instance_type="EcsInstance",
                opts=child,
            )
            if args.eip_allocation_id is not None
            else None
        )
        self.instance_id: pulumi.Output[str] = self.instance.id
        self.private_ip: pulumi.Output[str] = self.instance.private_ip
        self.public_ip: pulumi.Output[str] = self.instance.public_ip
        self.secondary_ip: pulumi.Output[str] | None = self.secondary_nic.primary_ip_address if self.secondary_nic else None
        self.register_outputs({"instanceId": self.instance_id, "privateIp": self.private_ip, "secondaryIp": self.secondary_ip})


# ---------------------------------------------------------------------------------------------------------------
# Overlay site


class AlicloudSite(PlatformSite):
    """One overlay site in one Alibaba Cloud region."""

    user_data_property = AlicloudMachine.user_data_property

    def __init__(self, ctx: SiteContext) -> None:
        super().__init__(ctx)
        site = ctx.site
        if not site.region:
            raise ValueError(f"sites.{site.name}.region is not set")
        self._provider = alicloud.Provider(f"{self.name}-provider", region=site.region, opts=pulumi.ResourceOptions(parent=ctx.parent))
        self.router_type = site.setting("routerSize") or DEFAULT_ROUTER_TYPE
        self.client_type = site.setting("clientSize") or DEFAULT_CLIENT_TYPE
        self._image_id: pulumi.Output[str] | None = None
        self.network: AlicloudNetwork | None = None
        self.router_address: AlicloudPublicAddress | None = None

    @property
    def provider(self) -> pulumi.ProviderResource:
        return self._provider

    def _invoke_opts(self) -> pulumi.InvokeOutputOptions:
        return pulumi.InvokeOutputOptions(provider=self.provider, parent=self.ctx.parent)

    def _zone_id(self) -> pulumi.Input[str]:
        """A zone with vSwitches, ESSD system disks and both instance types (one getZones per distinct type)."""
        zone = self.ctx.site.setting("zone")
        if zone:
            return zone
        answers = [
            alicloud.get_zones_output(
                available_resource_creation="VSwitch",
                available_instance_type=instance_type,
                available_disk_category=SYSTEM_DISK_CATEGORY,
                opts=self._invoke_opts(),
            )
            for instance_type in dict.fromkeys((self.router_type, self.client_type))
        ]
        if len(answers) == 1:
            return answers[0].apply(first_zone_id)
        return pulumi.Output.all(*answers).apply(common_zone_id)

    def _checked_router_type(self) -> pulumi.Output[str]:
        """The router's instance type once the region confirms it sells it with 2 ENIs (the instance waits for it)."""
        return alicloud.ecs.get_instance_types_output(
            instance_type=self.router_type, eni_amount=alicloud_traits.ENIS_PER_ROUTER, opts=self._invoke_opts()
        ).apply(lambda result: require_enis(result, self.router_type, alicloud_traits.ENIS_PER_ROUTER))

    @property
    def image_id(self) -> pulumi.Output[str]:
        if self._image_id is None:
            image = self.ctx.site.setting("image")
            self._image_id = (
                pulumi.Output.from_input(image)
                if image
                else alicloud.ecs.get_images_output(
                    name_regex=UBUNTU_NAME_REGEX,
                    owners=UBUNTU_OWNERS,
                    most_recent=True,
                    architecture="x86_64",
                    os_type="linux",
                    is_support_cloud_init=True,
                    opts=self._invoke_opts(),
                ).apply(first_image_id)
            )
        return self._image_id

    def prepare(self) -> pulumi.Output[str]:
        site = self.ctx.site
        self.network = AlicloudNetwork(
            alicloud_traits.network_name(self.name),
            AlicloudNetworkArgs(
                cidr_block=str(site.vpc_cidr), wan_cidr=str(site.wan_cidr), lan_cidr=str(site.lan_cidr), zone_id=self._zone_id()
            ),
            self.child_opts(),
        )
        router = self.ctx.plan.router(self.name)
        self.router_address = AlicloudPublicAddress(
            alicloud_traits.address_name(router.name), AlicloudPublicAddressArgs(), self.child_opts()
        )
        return self.router_address.ip_address

    def _require_prepared(self) -> tuple[AlicloudNetwork, AlicloudPublicAddress]:
        if self.network is None or self.router_address is None:
            raise RuntimeError("prepare() must run before router()/client()")
        return self.network, self.router_address

    def _policy(self, spec: NodeSpec, network: AlicloudNetwork) -> AlicloudSecurityPolicy:
        return AlicloudSecurityPolicy(
            alicloud_traits.policy_name(spec.node.name),
            AlicloudSecurityPolicyArgs(vpc_id=network.vpc_id, rules=spec.rules, description=f"ingress of {spec.node.name}"),
            self.child_opts(spec.parent),
        )

    def router(self, spec: NodeSpec) -> NodeResources:
        network, address = self._require_prepared()
        node = spec.node
        if node.wan_ip is None:
            raise ValueError(f"{node.name} has no planned WAN address")
        policy = self._policy(spec, network)
        machine = AlicloudMachine(
            alicloud_traits.machine_name(node.name),
            AlicloudMachineArgs(
                image_id=self.image_id,
                instance_type=self._checked_router_type(),
                vswitch_id=network.wan_switch_id,
                private_ip=node.wan_ip,
                security_group_ids=list(policy.security_group_ids),
                user_data=spec.user_data,
                host_name=node.name,
                secondary_nic=AlicloudNicArgs(
                    vswitch_id=network.lan_switch_id, private_ip=node.lan_ip, security_group_ids=list(policy.security_group_ids)
                ),
                eip_allocation_id=address.allocation_id,
                forwarding=True,
            ),
            self.child_opts(spec.parent),
        )
        assert machine.secondary_ip is not None
        return NodeResources(
            management_ip=address.ip_address,
            private_ips={"wan": machine.private_ip, "lan": machine.secondary_ip},
            machine=machine,
            vm_id=machine.instance_id,
            extra={"instanceId": machine.instance_id},
        )

    def client(self, spec: NodeSpec) -> NodeResources:
        network, _ = self._require_prepared()
        node = spec.node
        policy = self._policy(spec, network)
        # No EIP (20 per account by default): an instance public IP is enough for management.
        machine = AlicloudMachine(
            alicloud_traits.machine_name(node.name),
            AlicloudMachineArgs(
                image_id=self.image_id,
                instance_type=self.client_type,
                vswitch_id=network.lan_switch_id,
                private_ip=node.lan_ip,
                security_group_ids=list(policy.security_group_ids),
                user_data=spec.user_data,
                host_name=node.name,
                public_bandwidth_out=CLIENT_BANDWIDTH_MBPS,
            ),
            self.child_opts(spec.parent),
        )
        return NodeResources(
            management_ip=machine.public_ip,
            private_ips={"lan": machine.private_ip},
            machine=machine,
            vm_id=machine.instance_id,
            extra={"instanceId": machine.instance_id},
        )


PLATFORM_SITE: Final[PlatformFactory] = AlicloudSite
"""What components.site builds a site of this platform with (see PlatformTraits.site_module)."""
