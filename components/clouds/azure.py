"""Azure (pulumi-azure-native): network, security policy, static public address and multi-NIC VM.

Each building block is a ComponentResource usable without the overlay, e.g. a multi-NIC VM with a security
policy::

    net = AzureNetwork("lab", AzureNetworkArgs(location="westeurope", address_prefixes=["10.9.0.0/16", "fd12:3456:789a::/48"],
                                               subnets={"wan": ["10.9.1.0/24", "fd12:3456:789a:1::/64"],
                                                        "lan": ["10.9.2.0/24", "fd12:3456:789a:2::/64"]}))
    ip = AzurePublicAddress("lab-vm-wan", AzurePublicAddressArgs(net.resource_group_name, "westeurope"))
    policy = AzureSecurityPolicy("lab-vm", AzureSecurityPolicyArgs(net.resource_group_name, "westeurope",
                                 [AzureNsgRule("ssh-admin", "Tcp", "198.51.100.7/32", port=22)]))
    vm = AzureMachine("lab-vm", AzureMachineArgs(net.resource_group_name, "westeurope", ssh_public_key=key, user_data="#cloud-config\\n",
                      nics=[AzureNicArgs("wan", net.subnet_ids["wan"], "10.9.1.10", public_ip_id=ip.id, security_group_id=policy.id,
                                         ip_forwarding=True),
                            AzureNicArgs("lan", net.subnet_ids["lan"], "10.9.2.10", security_group_id=policy.id, ip_forwarding=True)]))

Azure facts this module relies on (each with its source URL in components/clouds/azure_traits.py; the review
against Azure's documentation is docs/platform-review/azure.md):
- All NICs of a VM are in one VNet; exactly one is primary; `enable_ip_forwarding` is per NIC.
- Subnets are separate `Subnet` resources and `VirtualNetwork.subnets` is never set (mixing both churns).
- NSG rules are separate `SecurityRule` resources and `NetworkSecurityGroup.security_rules` is never set.
- `os_profile.custom_data` is base64 and cannot change after creation: VMs ignore changes to it; later config is
  pushed to the node in place.
- A Standard public IP admits nothing until an NSG allows it. NSGs are associated with each NIC (not the subnet):
  the router and the client share the LAN subnet but have different rules, and a NIC-level policy keeps each
  machine self-contained. Azure's default NSG rules (priority 65000+) admit anything from the VirtualNetwork
  service tag and from AzureLoadBalancer, then deny everything else inbound: every node's NSG denies the site's own
  VNet prefixes (IPv4 and IPv6, one rule each: a rule cannot mix families) after its allow rules.
- Rules are written one at a time (Azure refuses concurrent writes to one NSG), the peers' rules are augmented
  rules listing every peer (azure_traits.nsg_rule_plans), and the NICs, the VM and the push wait for every rule.
- The admin user (Azure requires one, and a key: RSA >= 2048 or ED25519) is the payload's login user with the
  stack's ED25519 deploy key: cloud-init would make any other name a full-root default user.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, cast

import pulumi
import pulumi_azure_native as azure_native
from pulumi_azure_native import compute, network, resources

from multicloud_overlay.components.clouds import azure_traits
from multicloud_overlay.components.clouds.azure_traits import (
    HASHED_PRIORITIES,
    LIMITS,
    NSG_PROTOCOL,
    PEER_PRIORITY_BASE,
    PRIORITY_MAX,
    PRIORITY_MIN,
    NsgProtocol,
    assign_priorities,
    hashed_priority,
    nsg_rule_plans,
    ula_prefix,
    vnet_deny_plans,
)
from multicloud_overlay.components.clouds.base import (
    SSH_USER,
    NodeResources,
    NodeSpec,
    PlatformFactory,
    PlatformSite,
    ResolvedRule,
    SiteContext,
)
from multicloud_overlay.components.limits import user_data_as_sent
from multicloud_overlay.overlay import security
from multicloud_overlay.overlay.plan import Node
from multicloud_overlay.overlay.security import PeerRouter

__all__ = [  # the NSG helpers live in azure_traits (check_limits uses them too); importable from here as before
    "HASHED_PRIORITIES",
    "NSG_PROTOCOL",
    "PEER_PRIORITY_BASE",
    "PRIORITY_MAX",
    "PRIORITY_MIN",
    "NsgProtocol",
    "assign_priorities",
    "hashed_priority",
    "ula_prefix",
]

TOKEN: Final = "multicloud-overlay:azure"

# Default sizes and image: azure_traits.NODES (the one place, documented in the README); override with the site
# settings routerSize / clientSize and `image` (a Marketplace URN publisher:offer:sku[:version]).
DEFAULT_ROUTER_SIZE: Final = azure_traits.NODES.router_size
DEFAULT_CLIENT_SIZE: Final = azure_traits.NODES.client_size
DEFAULT_IMAGE: Final = azure_traits.NODES.image

# ----------------------------------------------------------------------------------------------- pure helpers


def ula_subnet(prefix: ipaddress.IPv6Network, index: int) -> ipaddress.IPv6Network:
    """The /64 number `index` (0..65535) of a /48."""
    if prefix.prefixlen != 48 or not 0 <= index <= 0xFFFF:
        raise ValueError(f"no /64 number {index} in {prefix}")
    return ipaddress.IPv6Network((int(prefix.network_address) + (index << 64), 64))


def scoped_source(source: str) -> str:
    """The rule's source prefix, refused when it would admit the whole internet (0.0.0.0/0, ::/0, *, Internet)."""
    security.scoped_source(source)
    try:
        ipaddress.ip_network(source, strict=False)
    except ValueError:
        raise ValueError(f"refusing an inbound rule from {source!r}: give an IPv4/IPv6 address or CIDR") from None
    return source


def encode_custom_data(user_data: str) -> str:
    """os_profile.custom_data is base64 of the cloud-init payload (azure_traits records it; check_limits measures it)."""
    return user_data_as_sent(user_data, LIMITS.user_data_encoding)


@dataclass(frozen=True)
class AzureImage:
    """A marketplace image reference."""

    publisher: str
    offer: str
    sku: str
    version: str = "latest"

    @staticmethod
    def parse(urn: str) -> AzureImage:
        """From an `az vm image` URN, publisher:offer:sku[:version]."""
        parts = urn.split(":")
        if len(parts) not in (3, 4) or not all(parts):
            raise ValueError(f"image {urn!r}: write publisher:offer:sku[:version], e.g. {DEFAULT_IMAGE}")
        return AzureImage(*parts)


# ----------------------------------------------------------------------------------------------- network


@dataclass
class AzureNetworkArgs:
    location: pulumi.Input[str]
    """Azure location (region) of the resource group and the VNet."""
    address_prefixes: Sequence[str]
    """VNet address space, e.g. an IPv4 /16 and an IPv6 ULA /48."""
    subnets: Mapping[str, Sequence[str]]
    """Subnet role (wan, lan, ...) -> its prefixes (an IPv4 one and an IPv6 /64)."""
    resource_group_name: pulumi.Input[str] | None = None
    """Use this existing resource group; None: the component creates one."""
    new_resource_group: str | None = None
    """Physical name of the resource group the component creates (None: auto-named from the component name)."""


class AzureNetwork(pulumi.ComponentResource):
    """A resource group (optional), a dual-stack VNet and one Subnet resource per role."""

    resource_group_name: pulumi.Output[str]
    vnet: network.VirtualNetwork
    subnets: dict[str, network.Subnet]
    subnet_ids: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, args: AzureNetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"{TOKEN}:AzureNetwork", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        if args.resource_group_name is None:
            group = resources.ResourceGroup(f"{name}-rg", resource_group_name=args.new_resource_group, location=args.location, opts=child)
            self.resource_group_name = group.name
        else:
            self.resource_group_name = pulumi.Output.from_input(args.resource_group_name)
        self.vnet = network.VirtualNetwork(
            f"{name}-vnet",
            resource_group_name=self.resource_group_name,
            location=args.location,
            address_space=network.AddressSpaceArgs(address_prefixes=list(args.address_prefixes)),
            opts=child,
        )
        self.subnets = {}
        previous: network.Subnet | None = None
        for role, prefixes in args.subnets.items():
            # One subnet operation at a time: Azure rejects concurrent writes to one VNet's subnets.
            self.subnets[role] = previous = network.Subnet(
                f"{name}-{role}",
                resource_group_name=self.resource_group_name,
                virtual_network_name=self.vnet.name,
                address_prefixes=list(prefixes),
                default_outbound_access=False,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[previous] if previous else None),
            )
        self.subnet_ids = {role: s.id for role, s in self.subnets.items()}
        self.register_outputs({"resourceGroupName": self.resource_group_name, "vnetId": self.vnet.id, "subnetIds": self.subnet_ids})


# ----------------------------------------------------------------------------------------------- security policy


@dataclass(frozen=True)
class AzureNsgRule:
    """One inbound rule (allow, unless `access` says Deny)."""

    name: str
    """Rule name, unique in the policy (also the Azure rule name); stable across updates."""
    protocol: NsgProtocol
    """Udp, Tcp, Icmp (Icmp also for ICMPv6: Azure has no separate value) or * (any)."""
    source: pulumi.Input[str] | Sequence[pulumi.Input[str]]
    """Source address or CIDR, or a list of them (an augmented rule; all of one address family: Azure refuses a
    rule that mixes IPv4 and IPv6). 0.0.0.0/0, ::/0, * and Internet are refused."""
    port: int | None = None
    """Destination port for Udp/Tcp; None for Icmp and * (every port)."""
    priority: int | None = None
    """Explicit priority (100..4096); None: a stable hash of the name (see assign_priorities)."""
    description: str = ""
    """Shown in the Azure portal (at most 140 characters)."""
    access: Literal["Allow", "Deny"] = "Allow"
    """Deny: e.g. to close what Azure's default AllowVnetInBound (65000) admits, at a priority after the allows."""

    def sources(self) -> list[pulumi.Input[str]]:
        if isinstance(self.source, list | tuple):
            return [cast("pulumi.Input[str]", s) for s in self.source]
        return [cast("pulumi.Input[str]", self.source)]


@dataclass
class AzureSecurityPolicyArgs:
    resource_group_name: pulumi.Input[str]
    """Resource group of the NSG."""
    location: pulumi.Input[str]
    """Azure location of the NSG (the NICs it protects must be in the same one)."""
    rules: Sequence[AzureNsgRule]
    """Inbound rules; everything else inbound falls to Azure's default rules (VNet and load balancer in, all other
    denied) unless `deny_from` closes the VNet. Outbound is left to Azure's defaults (allowed)."""
    deny_from: Sequence[str] = ()
    """Prefixes (e.g. the VNet's own IPv4 and IPv6 space) to deny everything else from, at 4095/4096 after every
    allow rule: Azure's AllowVnetInBound (65000) would otherwise admit any protocol and port from the whole VNet."""


def _one_family(rule: AzureNsgRule) -> None:
    literal = [s for s in rule.sources() if isinstance(s, str)]
    families = {ipaddress.ip_network(s, strict=False).version for s in literal}
    if len(families) > 1:
        raise ValueError(f"rule {rule.name}: sources {literal} mix IPv4 and IPv6, which one Azure rule cannot hold")


class AzureSecurityPolicy(pulumi.ComponentResource):
    """A network security group with one SecurityRule resource per rule, each scoped to explicit sources.

    The rules are written one after another (each depends on the previous one, in priority order): Azure answers
    concurrent writes to one NSG with 429 AnotherOperationInProgress. A component that waits for this policy (a NIC,
    the push) waits for every rule."""

    nsg: network.NetworkSecurityGroup
    rules: dict[str, network.SecurityRule]
    priorities: dict[str, int]
    id: pulumi.Output[str]

    def __init__(self, name: str, args: AzureSecurityPolicyArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        deny = [
            AzureNsgRule(
                p.name, p.protocol, [str(s) for s in p.sources], port=p.port, priority=p.priority, description=p.description, access="Deny"
            )
            for p in vnet_deny_plans(list(args.deny_from))
        ]
        every = [*args.rules, *deny]
        names = [r.name for r in every]
        if len(set(names)) != len(names):
            raise ValueError(f"{name}: rule names must be unique, got {names}")
        for rule in every:
            for source in rule.sources():
                if isinstance(source, str):
                    scoped_source(source)  # refuse an open rule before anything is registered
            _one_family(rule)
            if rule.protocol in ("Udp", "Tcp") and rule.port is None:
                raise ValueError(f"{name}: rule {rule.name} ({rule.protocol}) needs a port")
        priorities = assign_priorities({r.name: r.priority for r in every})
        allows = [priorities[r.name] for r in every if r.access == "Allow"]
        late = [r.name for r in deny if allows and priorities[r.name] <= max(allows)]
        if late:
            raise ValueError(f"{name}: deny rules {late} would come before an allow rule")
        super().__init__(f"{TOKEN}:AzureSecurityPolicy", name, None, opts)
        self.nsg = network.NetworkSecurityGroup(
            f"{name}-nsg", resource_group_name=args.resource_group_name, location=args.location, opts=pulumi.ResourceOptions(parent=self)
        )
        self.id = self.nsg.id
        self.priorities = priorities
        self.rules = {}
        previous: network.SecurityRule | None = None
        for rule in sorted(every, key=lambda r: priorities[r.name]):
            sources = [pulumi.Output.from_input(s).apply(scoped_source) for s in rule.sources()]
            single = len(sources) == 1 and not isinstance(rule.source, list | tuple)
            self.rules[rule.name] = previous = network.SecurityRule(
                f"{name}-{rule.name}",
                security_rule_name=rule.name,
                resource_group_name=args.resource_group_name,
                network_security_group_name=self.nsg.name,
                direction=network.SecurityRuleDirection.INBOUND,
                access=network.SecurityRuleAccess.ALLOW if rule.access == "Allow" else network.SecurityRuleAccess.DENY,
                priority=priorities[rule.name],
                protocol=rule.protocol,
                source_address_prefix=sources[0] if single else None,
                source_address_prefixes=None if single else sources,
                source_port_range="*",
                destination_address_prefix="*",
                destination_port_range=str(rule.port) if rule.port is not None else "*",
                description=rule.description or None,
                # One write to the NSG at a time (see the class docstring).
                opts=pulumi.ResourceOptions(parent=self, depends_on=[previous] if previous else None),
            )
        self.register_outputs({"id": self.id, "priorities": self.priorities})


# ----------------------------------------------------------------------------------------------- public address


@dataclass
class AzurePublicAddressArgs:
    resource_group_name: pulumi.Input[str]
    """Resource group of the address."""
    location: pulumi.Input[str]
    """Azure location (the NIC it is attached to must be in the same one)."""
    version: Literal["IPv4", "IPv6"] = "IPv4"
    """Address family."""


class AzurePublicAddress(pulumi.ComponentResource):
    """A reserved (Static, Standard SKU) public address; it admits nothing until an NSG allows it."""

    address: network.PublicIPAddress
    id: pulumi.Output[str]
    ip_address: pulumi.Output[str]

    def __init__(self, name: str, args: AzurePublicAddressArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"{TOKEN}:AzurePublicAddress", name, None, opts)
        self.address = network.PublicIPAddress(
            f"{name}-ip",
            resource_group_name=args.resource_group_name,
            location=args.location,
            sku=network.PublicIPAddressSkuArgs(name=network.PublicIPAddressSkuName.STANDARD, tier=network.PublicIPAddressSkuTier.REGIONAL),
            public_ip_allocation_method=network.IPAllocationMethod.STATIC,
            public_ip_address_version=args.version,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.id = self.address.id
        self.ip_address = self.address.ip_address.apply(_known_address)
        self.register_outputs({"id": self.id, "ipAddress": self.ip_address})


def _known_address(ip: str | None) -> str:
    return ip or ""


# ----------------------------------------------------------------------------------------------- machine


@dataclass
class AzureNicArgs:
    role: str
    """NIC role (wan, lan, mgmt): names the NIC resource and keys `private_ips`."""
    subnet_id: pulumi.Input[str]
    """Subnet of the NIC; every NIC of one VM must be in the same VNet."""
    private_ip: str | None = None
    """Static private IPv4; None: Azure picks one (Dynamic)."""
    public_ip_id: pulumi.Input[str] | None = None
    """A public address (AzurePublicAddress.id) bound to the IPv4 configuration."""
    security_group_id: pulumi.Input[str] | None = None
    """NSG associated with the NIC (AzureSecurityPolicy.id)."""
    ip_forwarding: bool = False
    """Let the NIC send and receive packets not addressed to/from its own addresses (routers)."""
    ipv6: bool = True
    """Add an IPv6 configuration (dynamic address from the subnet's IPv6 /64)."""


@dataclass
class AzureMachineArgs:
    resource_group_name: pulumi.Input[str]
    """Resource group of the VM and its NICs."""
    location: pulumi.Input[str]
    """Azure location of the VM and its NICs."""
    nics: Sequence[AzureNicArgs]
    """NICs in order; the first is primary (carries the default route)."""
    ssh_public_key: pulumi.Input[str]
    """OpenSSH public key (RSA or ED25519) installed for `admin_username`; password login is disabled. Azure needs
    one at creation; the overlay gives its deploy key."""
    user_data: pulumi.Input[str]
    """Plain-text cloud-init payload; sent base64-encoded as os_profile.custom_data, which Azure cannot change
    after creation: changes to it are ignored (push later config in place)."""
    size: str = DEFAULT_ROUTER_SIZE
    """VM size; it must allow len(nics) NICs."""
    image: AzureImage = field(default_factory=lambda: AzureImage.parse(DEFAULT_IMAGE))
    """Marketplace image (default Ubuntu 24.04 LTS)."""
    admin_username: str = SSH_USER
    """Login user."""
    computer_name: str | None = None
    """Host name; None: the component name."""


class AzureMachine(pulumi.ComponentResource):
    """A Linux VM with N NICs (each optionally with a public address, an NSG and IP forwarding)."""

    #: The VM property carrying user-data (ignored on update).
    user_data_property: Final = "osProfile.customData"

    nics: dict[str, network.NetworkInterface]
    vm: compute.VirtualMachine
    private_ips: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, args: AzureMachineArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"{TOKEN}:AzureMachine", name, None, opts)
        if not args.nics:
            raise ValueError(f"{name}: a VM needs at least one NIC")
        roles = [n.role for n in args.nics]
        if len(set(roles)) != len(roles):
            raise ValueError(f"{name}: NIC roles must be unique, got {roles}")
        # What the machine was told to wait for (e.g. its NSG's rules) holds for its NICs (and so for the VM).
        child = pulumi.ResourceOptions(parent=self, depends_on=opts.depends_on if opts else None)
        self.nics = {}
        for nic in args.nics:
            configs = [
                network.NetworkInterfaceIPConfigurationArgs(
                    name="ipv4",
                    primary=True,
                    subnet=network.SubnetArgs(id=nic.subnet_id),
                    private_ip_address_version=network.IPVersion.I_PV4,
                    private_ip_allocation_method=network.IPAllocationMethod.STATIC
                    if nic.private_ip
                    else network.IPAllocationMethod.DYNAMIC,
                    private_ip_address=nic.private_ip,
                    public_ip_address=network.PublicIPAddressArgs(id=nic.public_ip_id) if nic.public_ip_id is not None else None,
                )
            ]
            if nic.ipv6:
                configs.append(
                    network.NetworkInterfaceIPConfigurationArgs(
                        name="ipv6",
                        primary=False,
                        subnet=network.SubnetArgs(id=nic.subnet_id),
                        private_ip_address_version=network.IPVersion.I_PV6,
                        private_ip_allocation_method=network.IPAllocationMethod.DYNAMIC,
                    )
                )
            self.nics[nic.role] = network.NetworkInterface(
                f"{name}-{nic.role}",
                resource_group_name=args.resource_group_name,
                location=args.location,
                enable_ip_forwarding=nic.ip_forwarding,
                ip_configurations=configs,
                network_security_group=network.NetworkSecurityGroupArgs(id=nic.security_group_id)
                if nic.security_group_id is not None
                else None,
                opts=child,
            )
        self.vm = compute.VirtualMachine(
            f"{name}-vm",
            resource_group_name=args.resource_group_name,
            location=args.location,
            hardware_profile=compute.HardwareProfileArgs(vm_size=args.size),
            network_profile=compute.NetworkProfileArgs(
                network_interfaces=[
                    compute.NetworkInterfaceReferenceArgs(
                        id=self.nics[nic.role].id, primary=index == 0, delete_option=compute.DeleteOptions.DELETE
                    )
                    for index, nic in enumerate(args.nics)
                ]
            ),
            os_profile=compute.OSProfileArgs(
                computer_name=args.computer_name or name,
                admin_username=args.admin_username,
                custom_data=pulumi.Output.from_input(args.user_data).apply(encode_custom_data),
                linux_configuration=compute.LinuxConfigurationArgs(
                    disable_password_authentication=True,
                    ssh=compute.SshConfigurationArgs(
                        public_keys=[
                            compute.SshPublicKeyArgs(
                                path=f"/home/{args.admin_username}/.ssh/authorized_keys",
                                key_data=pulumi.Output.from_input(args.ssh_public_key).apply(str.strip),
                            )
                        ]
                    ),
                ),
            ),
            storage_profile=compute.StorageProfileArgs(
                image_reference=compute.ImageReferenceArgs(
                    publisher=args.image.publisher, offer=args.image.offer, sku=args.image.sku, version=args.image.version
                ),
                os_disk=compute.OSDiskArgs(
                    create_option=compute.DiskCreateOptionTypes.FROM_IMAGE,
                    delete_option=compute.DiskDeleteOptionTypes.DELETE,
                    managed_disk=compute.ManagedDiskParametersArgs(storage_account_type=compute.StorageAccountTypes.STANDARD_SS_D_LRS),
                ),
            ),
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=[self.user_data_property]),
        )
        self.private_ips = {
            nic.role: pulumi.Output.from_input(nic.private_ip)
            if nic.private_ip
            else self.nics[nic.role].ip_configurations.apply(_first_private_ip)
            for nic in args.nics
        }
        self.register_outputs({"vmId": self.vm.id, "privateIps": self.private_ips, "nicIds": {r: n.id for r, n in self.nics.items()}})


def _first_private_ip(configs: Sequence[network.outputs.NetworkInterfaceIPConfigurationResponse] | None) -> str:
    for config in configs or []:
        if config.private_ip_address_version in (None, "IPv4") and config.private_ip_address:
            return config.private_ip_address
    return ""


# ----------------------------------------------------------------------------------------------- overlay site


def nsg_rules(rules: Iterable[ResolvedRule], site_ids: Mapping[str, int]) -> list[AzureNsgRule]:
    """The node's ingress rules as NSG rules (azure_traits.nsg_rule_plans, what check_limits checked): rules with a
    literal source one to one, the peer routers' rules folded into one augmented rule per kind."""
    rules = list(rules)
    resolved: dict[str, pulumi.Input[str]] = {r.rule.source.site: r.source for r in rules if isinstance(r.rule.source, PeerRouter)}
    out: list[AzureNsgRule] = []
    for plan in nsg_rule_plans([r.rule for r in rules], site_ids):
        sources = [resolved[s.site] if isinstance(s, PeerRouter) else s for s in plan.sources]
        folded = any(isinstance(s, PeerRouter) for s in plan.sources)
        out.append(
            AzureNsgRule(
                plan.name,
                plan.protocol,
                sources if folded else sources[0],
                port=plan.port,
                priority=plan.priority,
                description=plan.description,
                access=plan.access,
            )
        )
    return out


class AzureSite(PlatformSite):
    """One overlay site on Azure: a resource group and dual-stack VNet (WAN + LAN subnets) in the site's location,
    a reserved public IPv4 for the router, a two-NIC router and a one-NIC client, each behind its own NSG."""

    user_data_property = AzureMachine.user_data_property

    def __init__(self, ctx: SiteContext) -> None:
        super().__init__(ctx)
        site = ctx.site
        if not site.region:
            raise ValueError(f"sites.{site.name}.region is not set (the Azure location)")
        self.location: str = site.region
        self._provider = azure_native.Provider(f"{site.name}-azure", location=self.location, opts=pulumi.ResourceOptions(parent=ctx.parent))
        self.image = AzureImage.parse(site.setting("image") or DEFAULT_IMAGE)
        self.ula = ula_prefix(site.site_id)
        self.network: AzureNetwork | None = None
        self.router_address: AzurePublicAddress | None = None

    @property
    def provider(self) -> pulumi.ProviderResource:
        return self._provider

    def prepare(self) -> pulumi.Output[str]:
        site = self.ctx.site
        self.network = AzureNetwork(
            site.name,
            AzureNetworkArgs(
                location=self.location,
                address_prefixes=[str(site.vpc_cidr), str(self.ula)],
                subnets={
                    "wan": [str(site.wan_cidr), str(ula_subnet(self.ula, 1))],
                    "lan": [str(site.lan_cidr), str(ula_subnet(self.ula, 2))],
                },
                new_resource_group=site.setting("resourceGroup"),
            ),
            self.child_opts(),
        )
        self.router_address = AzurePublicAddress(
            f"{self.ctx.plan.router(site.name).name}-wan",
            AzurePublicAddressArgs(self.network.resource_group_name, self.location),
            self.child_opts(),
        )
        return self.router_address.ip_address

    def _policy(self, spec: NodeSpec) -> AzureSecurityPolicy:
        assert self.network is not None, "prepare() runs first"
        site_ids = {s.name: s.site_id for s in self.ctx.plan.config.sites}
        return AzureSecurityPolicy(
            spec.node.name,
            AzureSecurityPolicyArgs(
                self.network.resource_group_name,
                self.location,
                nsg_rules(spec.rules, site_ids),
                # Nothing else from the site's own VNet: AllowVnetInBound would admit the client to the router's SSH.
                deny_from=[str(self.ctx.site.vpc_cidr), str(self.ula)],
            ),
            self.child_opts(spec.parent),
        )

    def _machine(self, spec: NodeSpec, nics: list[AzureNicArgs], size: str, policy: AzureSecurityPolicy) -> AzureMachine:
        """The VM, its admin user being the payload's login user with the deploy key (Azure requires an admin user and
        a key; a different name would become cloud-init's default user, with sudo ALL from the image's cloud.cfg)."""
        assert self.network is not None, "prepare() runs first"
        return AzureMachine(
            spec.node.name,
            AzureMachineArgs(
                resource_group_name=self.network.resource_group_name,
                location=self.location,
                nics=nics,
                ssh_public_key=self.ctx.admin_public_key,
                user_data=spec.user_data,
                size=size,
                image=self.image,
                admin_username=SSH_USER,
                computer_name=spec.node.name,
            ),
            # NICs (and so the VM and the push) wait for every rule of the node's NSG, ssh-admin included.
            self.child_opts(spec.parent, depends_on=[policy]),
        )

    def router(self, spec: NodeSpec) -> NodeResources:
        assert self.network is not None and self.router_address is not None, "prepare() runs first"
        node: Node = spec.node
        assert node.wan_ip is not None, "a router has a WAN address"
        policy = self._policy(spec)
        subnets = self.network.subnet_ids
        machine = self._machine(
            spec,
            [
                AzureNicArgs(
                    "wan", subnets["wan"], node.wan_ip, public_ip_id=self.router_address.id, security_group_id=policy.id, ip_forwarding=True
                ),
                AzureNicArgs("lan", subnets["lan"], node.lan_ip, security_group_id=policy.id, ip_forwarding=True),
            ],
            self.ctx.site.setting("routerSize") or DEFAULT_ROUTER_SIZE,
            policy,
        )
        return NodeResources(
            management_ip=self.router_address.ip_address,
            private_ips={"wan": node.wan_ip, "lan": node.lan_ip},
            machine=machine,  # NICs and VM (which waited for the NSG's rules)
            vm_id=machine.vm.id,
            extra={"vmId": machine.vm.id},
        )

    def client(self, spec: NodeSpec) -> NodeResources:
        assert self.network is not None, "prepare() runs first"
        node: Node = spec.node
        policy = self._policy(spec)
        mgmt = AzurePublicAddress(
            f"{node.name}-mgmt", AzurePublicAddressArgs(self.network.resource_group_name, self.location), self.child_opts(spec.parent)
        )
        machine = self._machine(
            spec,
            [AzureNicArgs("lan", self.network.subnet_ids["lan"], node.lan_ip, public_ip_id=mgmt.id, security_group_id=policy.id)],
            self.ctx.site.setting("clientSize") or DEFAULT_CLIENT_SIZE,
            policy,
        )
        return NodeResources(
            management_ip=mgmt.ip_address,
            private_ips={"lan": node.lan_ip},
            machine=machine,
            vm_id=machine.vm.id,
            extra={"vmId": machine.vm.id},
        )


PLATFORM_SITE: Final[PlatformFactory] = AzureSite
"""What components.site builds a site of this platform with (see PlatformTraits.site_module)."""
