"""AWS: VPC with WAN and LAN subnets (dual-stack), security groups, Elastic IPs and multi-ENI EC2 instances.

The building blocks (`AwsNetwork`, `AwsSecurityPolicy`, `AwsPublicAddress`, `AwsMachine`) are ComponentResources
usable on their own; `AwsSite` wires them for one overlay site. Facts this module relies on (pulumi-aws 7.x):

- An instance launched with several ENIs gets no automatic public IPv4: the router's address is an Elastic IP
  associated with its WAN ENI, reserved before any VM exists.
- `Instance.network_interfaces` is deprecated: NIC 0 is `primary_network_interface`, further NICs are
  `NetworkInterfaceAttachment`s (attached after launch; the node script configures the LAN NIC).
- `source_dest_check` on an Instance covers its primary ENI only: it is switched off on every router ENI.
- Security groups created by the provider have no egress rule: open egress is added explicitly, and rules are
  always separate `vpc.SecurityGroup*Rule` resources, never inline.
- All ENIs of an instance must be in the instance's availability zone: both subnets are pinned to one zone.
- A security group takes 60 inbound rules per IP family and an ENI 5 groups (default quotas): a node's rules are
  spread over up to 5 groups by the peers' siteIds (aws_traits.security_group_placement), and check_limits refuses
  a stack that would still overfill one before anything is created.
- Security-group names may not start with `sg-` (a site named `sg`): groups are named by `name_prefix`, `overlay-...`.
- No EC2 key pair: the payload creates the login user with its keys (the image's `ubuntu` is not created).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import pulumi
import pulumi_aws as aws

from multicloud_overlay.components.clouds import aws_traits
from multicloud_overlay.components.clouds.aws_traits import (
    GROUPS_PER_ENI,
    LIMITS,
    RULES_PER_GROUP,
    group_rule_counts,
    policy_description,
    policy_name,
    security_group_description,
    security_group_name_prefix,
    security_group_placement,
    security_group_resource_name,
)
from multicloud_overlay.components.clouds.base import NodeResources, NodeSpec, PlatformFactory, PlatformSite, ResolvedRule, SiteContext
from multicloud_overlay.components.limits import sent_user_data
from multicloud_overlay.overlay.security import scoped_source
from multicloud_overlay.overlay.traits import fullmatch

# Canonical's AWS account and the name pattern of its Ubuntu 24.04 (noble) amd64 server images (aws_traits).
CANONICAL_OWNER: Final = aws_traits.CANONICAL_OWNER
UBUNTU_IMAGE_PATTERN: Final = aws_traits.UBUNTU_IMAGE_PATTERN
# Default sizes: aws_traits.NODES (the one place, documented in the README), overridable per site with
# routerSize / clientSize.
DEFAULT_ROUTER_SIZE: Final = aws_traits.NODES.router_size
DEFAULT_CLIENT_SIZE: Final = aws_traits.NODES.client_size
# Index of each subnet's /64 inside the VPC's Amazon-provided /56.
WAN_IPV6_INDEX = 1
LAN_IPV6_INDEX = 2


# --- pure helpers (apply callbacks) -------------------------------------------------------------------------


def ipv6_subnet(vpc_block: str, index: int) -> str:
    """The `index`-th /64 of a VPC's IPv6 block (AWS gives each VPC a /56)."""
    net = ipaddress.IPv6Network(vpc_block)
    if net.prefixlen > 64:
        raise ValueError(f"VPC IPv6 block {vpc_block} is smaller than a /64")
    count = 1 << (64 - net.prefixlen)
    if not 0 <= index < count:
        raise ValueError(f"subnet index {index} outside the {count} /64s of {vpc_block}")
    return str(ipaddress.IPv6Network((int(net.network_address) + (index << 64), 64)))


@dataclass(frozen=True)
class AwsRuleMatch:
    """What a vpc.SecurityGroupIngressRule matches besides its source."""

    ip_protocol: str
    from_port: int
    to_port: int


def rule_match(rule: ResolvedRule) -> AwsRuleMatch:
    """udp/tcp: exactly the rule's port; icmp/icmpv6: every type and code (-1/-1: echo and path-MTU errors)."""
    protocol = rule.rule.protocol
    if protocol in ("icmp", "icmpv6"):
        return AwsRuleMatch(protocol, -1, -1)
    if rule.rule.port is None:
        raise ValueError(f"rule {rule.rule.name}: {protocol} needs a port")
    return AwsRuleMatch(protocol, rule.rule.port, rule.rule.port)


def first_zone(names: Sequence[str]) -> str:
    if not names:
        raise ValueError("the region reports no available availability zone")
    return names[0]


def send_user_data(text: str) -> str:
    """user_data_base64: the gzip of the payload (cloud-init decompresses it), as aws_traits records and measures."""
    return sent_user_data(text, LIMITS)


# --- network ------------------------------------------------------------------------------------------------


@dataclass
class AwsNetworkArgs:
    vpc_cidr: str
    """IPv4 block of the VPC, e.g. 10.1.0.0/16."""
    wan_cidr: str
    """IPv4 block of the WAN subnet (inside vpc_cidr)."""
    lan_cidr: str
    """IPv4 block of the LAN subnet (inside vpc_cidr)."""
    availability_zone: pulumi.Input[str]
    """Zone of both subnets: every ENI of an instance must be in the instance's zone."""
    wan_ipv6_index: int = WAN_IPV6_INDEX
    """Which /64 of the VPC's /56 the WAN subnet gets."""
    lan_ipv6_index: int = LAN_IPV6_INDEX
    """Which /64 of the VPC's /56 the LAN subnet gets."""


class AwsNetwork(pulumi.ComponentResource):
    """Dual-stack VPC with a WAN and a LAN subnet, an internet gateway and a route table (0.0.0.0/0 and ::/0)."""

    def __init__(self, name: str, args: AwsNetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("multicloud-overlay:aws:AwsNetwork", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=args.vpc_cidr,
            assign_generated_ipv6_cidr_block=True,
            enable_dns_support=True,
            enable_dns_hostnames=True,
            tags={"Name": name},
            opts=child,
        )
        self.ipv6_cidr_block: pulumi.Output[str] = self.vpc.ipv6_cidr_block
        self.internet_gateway = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=self.vpc.id, tags={"Name": name}, opts=child)
        self.route_table = aws.ec2.RouteTable(
            f"{name}-routes",
            vpc_id=self.vpc.id,
            routes=[
                aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", gateway_id=self.internet_gateway.id),
                aws.ec2.RouteTableRouteArgs(ipv6_cidr_block="::/0", gateway_id=self.internet_gateway.id),
            ],
            tags={"Name": name},
            opts=child,
        )
        self.wan_subnet = self._subnet(name, "wan", args.wan_cidr, args.wan_ipv6_index, args.availability_zone)
        self.lan_subnet = self._subnet(name, "lan", args.lan_cidr, args.lan_ipv6_index, args.availability_zone)
        self.associations = [
            aws.ec2.RouteTableAssociation(f"{name}-{role}-routes", subnet_id=subnet.id, route_table_id=self.route_table.id, opts=child)
            for role, subnet in (("wan", self.wan_subnet), ("lan", self.lan_subnet))
        ]
        self.internet_path: list[pulumi.Resource] = [self.internet_gateway, self.route_table, *self.associations]
        """What a VM's first boot and an Elastic IP association need to exist first."""
        self.vpc_id: pulumi.Output[str] = self.vpc.id
        self.wan_subnet_id: pulumi.Output[str] = self.wan_subnet.id
        self.lan_subnet_id: pulumi.Output[str] = self.lan_subnet.id
        self.register_outputs(
            {
                "vpcId": self.vpc_id,
                "ipv6CidrBlock": self.ipv6_cidr_block,
                "wanSubnetId": self.wan_subnet_id,
                "lanSubnetId": self.lan_subnet_id,
                "internetGatewayId": self.internet_gateway.id,
            }
        )

    def _subnet(self, name: str, role: str, cidr: str, ipv6_index: int, zone: pulumi.Input[str]) -> aws.ec2.Subnet:
        return aws.ec2.Subnet(
            f"{name}-{role}",
            vpc_id=self.vpc.id,
            cidr_block=cidr,
            ipv6_cidr_block=self.vpc.ipv6_cidr_block.apply(lambda block: ipv6_subnet(block, ipv6_index)),
            assign_ipv6_address_on_creation=True,
            map_public_ip_on_launch=False,
            availability_zone=zone,
            tags={"Name": f"{name}-{role}"},
            opts=pulumi.ResourceOptions(parent=self),
        )


# --- security policy ----------------------------------------------------------------------------------------


@dataclass
class AwsSecurityPolicyArgs:
    vpc_id: pulumi.Input[str]
    """VPC of the security groups."""
    rules: Sequence[ResolvedRule]
    """Ingress rules, one resource each, named after the rule (stable when other rules come and go). A source
    of 0.0.0.0/0 or ::/0 is refused."""
    description: str = "multicloud-overlay node"
    """Description of the first security group; group k > 0 gets "<description> peers <k>". EC2 takes at most 255 of
    a-zA-Z0-9, space and ._-:/()#,@[]+=&;{}!$* (aws_traits.LIMITS.rule_description_pattern), in rule descriptions too."""
    open_egress: bool = True
    """Allow all outbound traffic (IPv4 and IPv6), on the first group; AWS-created groups lose their default egress rule."""
    placement: Mapping[str, int] | None = None
    """Rule name -> index of the security group that holds it (0..max_groups-1; aws_traits.security_group_placement
    for an overlay node). None: every rule in group 0. A group exists only when a rule is placed in it (group 0 always)."""
    rules_per_group: int = RULES_PER_GROUP.value
    """Inbound rules one group may hold per IP family (EC2's default quota, L-0EA8095F); more is refused up front."""
    max_groups: int = GROUPS_PER_ENI.value
    """Groups one ENI may carry (EC2's default quota, L-2AFB9258)."""


def description_problems(name: str, args: AwsSecurityPolicyArgs) -> list[str]:
    """Descriptions (groups and rules) EC2 would refuse at apply time, after other resources exist."""
    pattern, longest = LIMITS.rule_description_pattern, LIMITS.rule_description_max
    texts = [(f"group {k}", security_group_description(args.description, k)) for k in range(args.max_groups)]
    texts += [(f"rule {r.rule.name}", r.rule.description) for r in args.rules]
    return [
        f"{name}: {what}: description {text!r} is one EC2 refuses (at most {longest.value if longest else '?'} of a-zA-Z0-9, "
        f"space and ._-:/()#,@[]+=&;{{}}!$*; {pattern.source if pattern else ''})"
        for what, text in texts
        if not fullmatch(pattern, text) or (longest is not None and len(text) > longest.value)
    ]


class AwsSecurityPolicy(pulumi.ComponentResource):
    """Security groups (as many as the placement asks, up to max_groups) with one vpc.SecurityGroupIngressRule per
    rule and open egress. Everything EC2 would refuse (descriptions, rules per group) is refused before any
    resource is registered."""

    def __init__(self, name: str, args: AwsSecurityPolicyArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        names = [r.rule.name for r in args.rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"{name}: duplicate rule names {duplicates} (each names one resource)")
        placement = {n: (args.placement or {}).get(n, 0) for n in names}
        outside = sorted(n for n, k in placement.items() if not 0 <= k < args.max_groups)
        if outside:
            raise ValueError(f"{name}: rules {outside} are placed outside groups 0..{args.max_groups - 1}")
        problems = description_problems(name, args)
        counts = group_rule_counts([r.rule for r in args.rules], placement)
        problems += [
            f"{name}: security group {k} would hold {n} inbound IPv{family} rules, over {args.rules_per_group} "
            f"({RULES_PER_GROUP.source}): raise the quota and rules_per_group, or place rules in other groups"
            for k, families in counts.items()
            for family, n in sorted(families.items())
            if n > args.rules_per_group
        ]
        if problems:
            raise ValueError("; ".join(problems))
        super().__init__("multicloud-overlay:aws:AwsSecurityPolicy", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.groups: dict[int, aws.ec2.SecurityGroup] = {
            k: aws.ec2.SecurityGroup(
                security_group_resource_name(name, k),
                name_prefix=security_group_name_prefix(name, k),
                vpc_id=args.vpc_id,
                description=security_group_description(args.description, k),
                tags={"Name": name if k == 0 else f"{name}-{k}"},
                opts=child,
            )
            for k in counts
        }
        self.group = self.groups[0]
        self.group_id: pulumi.Output[str] = self.group.id
        self.group_ids: list[pulumi.Output[str]] = [g.id for g in self.groups.values()]
        """Every group of the policy (group 0 first): what an ENI protected by it carries."""
        self.placement: dict[str, int] = placement
        self.ingress: dict[str, aws.vpc.SecurityGroupIngressRule] = {}
        for rule in args.rules:
            match = rule_match(rule)
            source = pulumi.Output.from_input(rule.source).apply(scoped_source)
            self.ingress[rule.rule.name] = aws.vpc.SecurityGroupIngressRule(
                f"{name}-in-{rule.rule.name}",
                security_group_id=self.groups[placement[rule.rule.name]].id,
                ip_protocol=match.ip_protocol,
                from_port=match.from_port,
                to_port=match.to_port,
                cidr_ipv4=source if rule.rule.family == 4 else None,
                cidr_ipv6=source if rule.rule.family == 6 else None,
                description=rule.rule.description,
                opts=child,
            )
        self.egress: list[aws.vpc.SecurityGroupEgressRule] = []
        if args.open_egress:
            self.egress = [
                aws.vpc.SecurityGroupEgressRule(
                    f"{name}-out-ipv4",
                    security_group_id=self.group.id,
                    ip_protocol="-1",
                    cidr_ipv4="0.0.0.0/0",
                    description="all outbound IPv4",
                    opts=child,
                ),
                aws.vpc.SecurityGroupEgressRule(
                    f"{name}-out-ipv6",
                    security_group_id=self.group.id,
                    ip_protocol="-1",
                    cidr_ipv6="::/0",
                    description="all outbound IPv6",
                    opts=child,
                ),
            ]
        self.register_outputs({"groupId": self.group_id, "groupIds": self.group_ids, "ingressRules": sorted(self.ingress)})


# --- public address -----------------------------------------------------------------------------------------


@dataclass
class AwsPublicAddressArgs:
    description: str = ""
    """Free text kept as the address's Name tag (what it is for)."""


class AwsPublicAddress(pulumi.ComponentResource):
    """A reserved static public IPv4 (Elastic IP in the VPC domain), associated later to an ENI by AwsMachine."""

    def __init__(self, name: str, args: AwsPublicAddressArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("multicloud-overlay:aws:AwsPublicAddress", name, None, opts)
        self.eip = aws.ec2.Eip(
            f"{name}-eip", domain="vpc", tags={"Name": args.description or name}, opts=pulumi.ResourceOptions(parent=self)
        )
        self.public_ip: pulumi.Output[str] = self.eip.public_ip
        self.allocation_id: pulumi.Output[str] = self.eip.allocation_id
        self.register_outputs({"publicIp": self.public_ip, "allocationId": self.allocation_id})


# --- machine ------------------------------------------------------------------------------------------------


@dataclass
class AwsNicArgs:
    role: str
    """NIC role (wan, lan): names the ENI (f"{machine}-{role}") and keys the machine's outputs."""
    subnet_id: pulumi.Input[str]
    """Subnet of the ENI (in the instance's availability zone)."""
    private_ip: str
    """Static primary private IPv4 of the ENI."""
    security_group_ids: Sequence[pulumi.Input[str]]
    """Security groups of the ENI."""
    source_dest_check: bool = True
    """False on every NIC of a router (forwarded packets carry foreign addresses)."""
    ipv6_address_count: int = 1
    """IPv6 addresses AWS assigns from the subnet's /64."""


@dataclass
class AwsMachineArgs:
    nics: Sequence[AwsNicArgs]
    """ENIs in device order: the first is the primary (device index 0), each next one is attached as 1, 2, ..."""
    ami: pulumi.Input[str]
    """Image id."""
    user_data: pulumi.Input[str]
    """Plain-text user-data; sent gzip-compressed (EC2 takes at most 16 KiB, cloud-init decompresses it). Changes
    are ignored after creation: later config is pushed in place, the instance is never replaced or restarted for it."""
    instance_type: str = DEFAULT_ROUTER_SIZE
    """EC2 instance type; it must allow len(nics) ENIs."""
    key_name: pulumi.Input[str] | None = None
    """EC2 key pair for the image's default user (ImportKeyPair takes RSA and ED25519 only). The overlay uses none:
    its payload creates the login user with its keys."""
    public_allocation_id: pulumi.Input[str] | None = None
    """Elastic IP allocation to associate with the first NIC (None: no public IPv4)."""
    internet_path: Sequence[pulumi.Resource] = field(default_factory=list)
    """Resources the first boot and the address association need first (internet gateway, routes)."""


class AwsMachine(pulumi.ComponentResource):
    """An EC2 instance with N ENIs at static private addresses, optionally an Elastic IP on the first one."""

    #: Instance properties whose change would restart or replace a running node, fixed at creation: the user-data
    #: (later config is pushed in place), the image (the lookup finds a newer one every few weeks) and the key
    #: pair (EC2 replaces an instance whose key name changes; stacks made before the payload's login user had one).
    IGNORED_CHANGES = ("userDataBase64", "ami", "keyName")

    def __init__(self, name: str, args: AwsMachineArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("multicloud-overlay:aws:AwsMachine", name, None, opts)
        if not args.nics:
            raise ValueError(f"{name}: a machine needs at least one NIC")
        roles = [n.role for n in args.nics]
        if len(set(roles)) != len(roles):
            raise ValueError(f"{name}: NIC roles must be distinct, got {roles}")
        child = pulumi.ResourceOptions(parent=self)
        self.interfaces: dict[str, aws.ec2.NetworkInterface] = {
            nic.role: aws.ec2.NetworkInterface(
                f"{name}-{nic.role}",
                subnet_id=nic.subnet_id,
                private_ips=[nic.private_ip],
                security_groups=list(nic.security_group_ids),
                source_dest_check=nic.source_dest_check,
                ipv6_address_count=nic.ipv6_address_count,
                description=f"{name} {nic.role}",
                tags={"Name": f"{name}-{nic.role}"},
                opts=child,
            )
            for nic in args.nics
        }
        primary = self.interfaces[args.nics[0].role]
        self.instance = aws.ec2.Instance(
            f"{name}-instance",
            ami=args.ami,
            instance_type=args.instance_type,
            key_name=args.key_name,
            primary_network_interface=aws.ec2.InstancePrimaryNetworkInterfaceArgs(network_interface_id=primary.id),
            user_data_base64=pulumi.Output.from_input(args.user_data).apply(send_user_data),
            user_data_replace_on_change=False,
            metadata_options=aws.ec2.InstanceMetadataOptionsArgs(http_tokens="required"),
            tags={"Name": name},
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=list(self.IGNORED_CHANGES), depends_on=list(args.internet_path)),
        )
        self.attachments = [
            aws.ec2.NetworkInterfaceAttachment(
                f"{name}-{nic.role}-attachment",
                instance_id=self.instance.id,
                network_interface_id=self.interfaces[nic.role].id,
                device_index=index,
                opts=child,
            )
            for index, nic in enumerate(args.nics)
            if index > 0
        ]
        self.address_association: aws.ec2.EipAssociation | None = None
        if args.public_allocation_id is not None:
            self.address_association = aws.ec2.EipAssociation(
                f"{name}-{args.nics[0].role}-address",
                allocation_id=args.public_allocation_id,
                network_interface_id=primary.id,
                opts=pulumi.ResourceOptions(parent=self, depends_on=list(args.internet_path)),
            )
        self.instance_id: pulumi.Output[str] = self.instance.id
        self.private_ips: dict[str, pulumi.Output[str]] = {role: eni.private_ip for role, eni in self.interfaces.items()}
        self.ipv6_addresses: dict[str, pulumi.Output[Sequence[str]]] = {role: eni.ipv6_addresses for role, eni in self.interfaces.items()}
        self.register_outputs(
            {
                "instanceId": self.instance_id,
                "privateIps": self.private_ips,
                "ipv6Addresses": self.ipv6_addresses,
                "networkInterfaceIds": {role: eni.id for role, eni in self.interfaces.items()},
            }
        )


# --- overlay site -------------------------------------------------------------------------------------------


class AwsSite(PlatformSite):
    """One overlay site in one AWS region."""

    user_data_property = "userDataBase64"

    def __init__(self, ctx: SiteContext) -> None:
        super().__init__(ctx)
        site = ctx.site
        if not site.region:
            raise ValueError(f"sites.{site.name}.region is not set: an aws site needs it")
        self._provider = aws.Provider(
            f"{site.name}-aws",
            region=site.region,
            default_tags=aws.ProviderDefaultTagsArgs(tags={"project": "multicloud-overlay", "site": site.name}),
            opts=pulumi.ResourceOptions(parent=ctx.parent),
        )
        self._ami: pulumi.Output[str] | None = None
        self.network: AwsNetwork | None = None
        self.router_address: AwsPublicAddress | None = None

    @property
    def provider(self) -> pulumi.ProviderResource:
        return self._provider

    def _invoke_opts(self) -> pulumi.InvokeOutputOptions:
        return pulumi.InvokeOutputOptions(parent=self.ctx.parent, provider=self._provider)

    def _zone(self) -> pulumi.Input[str]:
        zone = self.ctx.site.setting("zone")
        if zone:
            return zone
        zones = aws.get_availability_zones_output(state="available", opts=self._invoke_opts())
        return zones.names.apply(first_zone)

    def _image(self) -> pulumi.Output[str]:
        """The site's image: setting 'image' (an AMI id) or the latest Canonical Ubuntu 24.04 of the region.

        Read when an instance is created: instances ignore later image changes (AwsMachine.IGNORED_CHANGES)."""
        if self._ami is None:
            image = self.ctx.site.setting("image")
            if image:
                self._ami = pulumi.Output.from_input(image)
            else:
                self._ami = aws.ec2.get_ami_output(
                    owners=[CANONICAL_OWNER],
                    most_recent=True,
                    filters=[
                        aws.ec2.GetAmiFilterArgs(name="name", values=[UBUNTU_IMAGE_PATTERN]),
                        aws.ec2.GetAmiFilterArgs(name="virtualization-type", values=["hvm"]),
                    ],
                    opts=self._invoke_opts(),
                ).id
        return self._ami

    def prepare(self) -> pulumi.Output[str]:
        site = self.ctx.site
        self.network = AwsNetwork(
            f"{site.name}-network",
            AwsNetworkArgs(
                vpc_cidr=str(site.vpc_cidr),
                wan_cidr=str(site.wan_cidr),
                lan_cidr=str(site.lan_cidr),
                availability_zone=self._zone(),
            ),
            self.child_opts(),
        )
        self.router_address = AwsPublicAddress(
            f"{site.name}-router-address",
            AwsPublicAddressArgs(description=f"{site.name} router WAN (tunnel endpoint)"),
            self.child_opts(),
        )
        return self.router_address.public_ip

    def _prepared(self) -> tuple[AwsNetwork, AwsPublicAddress]:
        if self.network is None or self.router_address is None:
            raise RuntimeError(f"site {self.name}: prepare() runs before router() and client()")
        return self.network, self.router_address

    def _policy(self, spec: NodeSpec, network: AwsNetwork) -> AwsSecurityPolicy:
        """The node's security groups: peers' rules spread over groups by siteId (aws_traits, as check_limits saw)."""
        site_ids = {s.name: s.site_id for s in self.ctx.plan.config.sites}
        return AwsSecurityPolicy(
            policy_name(spec.node.name),
            AwsSecurityPolicyArgs(
                vpc_id=network.vpc_id,
                rules=spec.rules,
                description=policy_description(spec.node.name),
                placement=security_group_placement([r.rule for r in spec.rules], site_ids),
            ),
            self.child_opts(spec.parent),
        )

    def _size(self, key: str) -> str:
        return self.ctx.site.setting(key) or (DEFAULT_ROUTER_SIZE if key == "routerSize" else DEFAULT_CLIENT_SIZE)

    def router(self, spec: NodeSpec) -> NodeResources:
        network, address = self._prepared()
        node = spec.node
        if node.wan_ip is None:
            raise ValueError(f"{node.name}: a router needs a planned WAN address")
        policy = self._policy(spec, network)
        groups = policy.group_ids
        machine = AwsMachine(
            f"{node.name}-vm",
            AwsMachineArgs(
                nics=[
                    AwsNicArgs("wan", network.wan_subnet_id, node.wan_ip, groups, source_dest_check=False),
                    AwsNicArgs("lan", network.lan_subnet_id, node.lan_ip, groups, source_dest_check=False),
                ],
                ami=self._image(),
                user_data=spec.user_data,
                instance_type=self._size("routerSize"),
                public_allocation_id=address.allocation_id,
                internet_path=network.internet_path,
            ),
            self.child_opts(spec.parent),
        )
        return NodeResources(
            management_ip=address.public_ip,
            private_ips={"wan": machine.private_ips["wan"], "lan": machine.private_ips["lan"]},
            # The whole machine: the push needs the LAN ENI attached (overlay-node configures it) and the Elastic IP
            # associated (it dials that address), not only the instance.
            machine=machine,
            vm_id=machine.instance_id,
            extra={"instanceId": machine.instance_id},
        )

    def client(self, spec: NodeSpec) -> NodeResources:
        network, _ = self._prepared()
        node = spec.node
        policy = self._policy(spec, network)
        address = AwsPublicAddress(
            f"{node.name}-address", AwsPublicAddressArgs(description=f"{node.name} management"), self.child_opts(spec.parent)
        )
        machine = AwsMachine(
            f"{node.name}-vm",
            AwsMachineArgs(
                nics=[AwsNicArgs("lan", network.lan_subnet_id, node.lan_ip, policy.group_ids)],
                ami=self._image(),
                user_data=spec.user_data,
                instance_type=self._size("clientSize"),
                public_allocation_id=address.allocation_id,
                internet_path=network.internet_path,
            ),
            self.child_opts(spec.parent),
        )
        return NodeResources(
            management_ip=address.public_ip,
            private_ips={"lan": machine.private_ips["lan"]},
            machine=machine,  # the instance and its Elastic IP association (the push dials that address)
            vm_id=machine.instance_id,
            extra={"instanceId": machine.instance_id},
        )


PLATFORM_SITE: Final[PlatformFactory] = AwsSite
"""What components.site builds a site of this platform with (see PlatformTraits.site_module)."""
