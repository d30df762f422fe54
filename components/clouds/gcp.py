"""Google Cloud (pulumi-gcp): building blocks and the overlay site that wires them.

Building blocks, each usable without the overlay:

- `GcpNetwork`: one custom-mode VPC network with one dual-stack subnet. GCP puts every NIC of a VM in a different
  VPC network, so a two-NIC router needs two of them (WAN and LAN). Each new VPC gets GCP's implicit default route
  to the internet gateway.
- `GcpSecurityPolicy`: INGRESS allow rules of one network for the instances carrying some network tags, one
  `compute.Firewall` per rule, each with sources of one family (a GCP rule cannot mix IPv4 and IPv6 ranges).
  GCP's implied rules deny all other ingress and allow all egress, so no egress rule is created.
- `GcpPublicAddress`: a reserved regional external IPv4 (`compute.Address`).
- `GcpMachine`: a `compute.Instance` with N NICs (fixed at creation), cloud-init user-data in metadata.

`GcpSite` builds an overlay site from them: WAN and LAN networks, the router's reserved address (before any VM),
the router (NIC0 WAN with the reserved address, NIC1 LAN, IP forwarding) and the client (one LAN NIC with a
reserved address for management), every resource bound to the site's explicit provider. The peer routers' rules
are folded into one rule per kind listing every peer (gcp_traits.firewall_rule_plans): 10 firewall rules per site
whatever the number of sites, against a per-project quota. No `ssh-keys` metadata, and `block-project-ssh-keys`:
the guest agent makes no sudo account; the payload also writes its config (gcp_traits.INSTANCE_CONFIGS: no host
key regeneration, no accounts daemon), as `first_boot_files`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Literal, cast

import pulumi
import pulumi_gcp as gcp
from pulumi_gcp import compute

from multicloud_overlay.components.clouds import gcp_traits
from multicloud_overlay.components.clouds.base import (
    SSH_USER,
    NodeResources,
    NodeSpec,
    PlatformFactory,
    PlatformSite,
    ResolvedRule,
    SiteContext,
)
from multicloud_overlay.components.clouds.gcp_traits import (
    AUTONAME_SUFFIX,
    FIREWALL_PROTOCOL,
    GCP_NAME_MAX,
    GCP_NAME_RE,
    LOGICAL_NAME_MAX,
    PROTOCOL_FAMILY,
    SOURCE_RANGES_PER_RULE,
    firewall_rule_name,
    firewall_rule_plans,
    gcp_name,
    nic_of_rule,
)
from multicloud_overlay.overlay.security import PeerRouter, scoped_source

__all__ = [  # names and protocols live in gcp_traits (check_limits uses them too); importable from here as before
    "AUTONAME_SUFFIX",
    "FIREWALL_PROTOCOL",
    "GCP_NAME_MAX",
    "GCP_NAME_RE",
    "LOGICAL_NAME_MAX",
    "PROTOCOL_FAMILY",
    "gcp_name",
]

# Default machine types: gcp_traits.NODES (the one place, documented in the README); override with the site
# settings routerSize / clientSize.
DEFAULT_ROUTER_MACHINE_TYPE: Final = gcp_traits.NODES.router_size
DEFAULT_CLIENT_MACHINE_TYPE: Final = gcp_traits.NODES.client_size
UBUNTU_IMAGE_FAMILY: Final = gcp_traits.UBUNTU_IMAGE_FAMILY
UBUNTU_IMAGE_PROJECT: Final = gcp_traits.UBUNTU_IMAGE_PROJECT
NETWORK_TIER: Final = "PREMIUM"
# VPC network MTU range GCP accepts (its default is 1460).
VPC_MTU_MIN: Final = 1300
VPC_MTU_MAX: Final = 8896
MAX_NICS: Final = 8

# Property paths (engine names) of the instance that must never cause an update or a replacement: later node
# config is pushed in place, and a newer image in the family must not replace a running router.
USER_DATA_PROPERTY: Final = 'metadata["user-data"]'
BOOT_IMAGE_PROPERTY: Final = "bootDisk.initializeParams.image"

Ipv6AccessType = Literal["EXTERNAL", "INTERNAL"]


# ---------------------------------------------------------------------------------------------------------------
# Pure helpers (no resources): names, MTU, rule checks. Module-level so tests call them without mocks.


def vpc_mtu(mtu: int, site: str = "") -> int:
    """The VPC network MTU for an underlay MTU, refused when GCP would refuse it."""
    if not VPC_MTU_MIN <= mtu <= VPC_MTU_MAX:
        key = f"sites.{site}.underlayMtu" if site else "mtu"
        raise ValueError(f"{key} = {mtu}: a GCP VPC network takes an MTU from {VPC_MTU_MIN} to {VPC_MTU_MAX} (default 1460)")
    return mtu


def checked_source(source: str, family: int, rule: str = "") -> str:
    """`source` if it is a CIDR of the given IP family that is not the whole internet; ValueError otherwise."""
    try:
        net = ipaddress.ip_network(source, strict=False)
    except ValueError:
        raise ValueError(f"firewall rule {rule}: source {source!r} is not a CIDR prefix") from None
    scoped_source(source, rule)
    if net.version != family:
        raise ValueError(f"firewall rule {rule}: source {source} is IPv{net.version}, the rule is IPv{family}")
    return source


def ssh_keys_metadata(public_key: str, user: str = SSH_USER) -> str:
    """Value of the `ssh-keys` metadata key: `user:key`."""
    return f"{user}:{public_key.strip()}"


# ---------------------------------------------------------------------------------------------------------------
# Network


@dataclass
class GcpNetworkArgs:
    cidr: str
    """IPv4 range of the subnet, e.g. 10.3.1.0/24 (GCP reserves .0, .1 and the last two addresses)."""
    region: pulumi.Input[str] | None = None
    """Region of the subnet; None = the provider's region."""
    mtu: int = 1460
    """MTU of the VPC network (1300-8896, GCP default 1460). Providers before magic-modules #13995 (2025) replaced
    the network on a change; the current one patches it in place, and running VMs take the new MTU (DHCP) only
    after a restart."""
    ipv6_access_type: Ipv6AccessType | None = "EXTERNAL"
    """IPv6 of the subnet: EXTERNAL (internet-routable /64), INTERNAL (ULA /64; the network then enables ULA
    internal IPv6), or None for an IPv4-only subnet."""
    description: str = ""
    """Description of the network and the subnet."""


class GcpNetwork(pulumi.ComponentResource):
    """A custom-mode VPC network with one subnet (GCP: one network per NIC of a VM)."""

    network_id: pulumi.Output[str]
    subnetwork_id: pulumi.Output[str]

    def __init__(self, name: str, args: GcpNetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("multicloud-overlay:gcp:GcpNetwork", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.network = compute.Network(
            gcp_name(f"{name}-vpc"),
            auto_create_subnetworks=False,
            mtu=vpc_mtu(args.mtu),
            enable_ula_internal_ipv6=args.ipv6_access_type == "INTERNAL",
            description=args.description or None,
            opts=child,
        )
        self.subnetwork = compute.Subnetwork(
            gcp_name(f"{name}-subnet"),
            network=self.network.id,
            ip_cidr_range=str(ipaddress.IPv4Network(args.cidr)),
            region=args.region,
            stack_type="IPV4_IPV6" if args.ipv6_access_type else "IPV4_ONLY",
            ipv6_access_type=args.ipv6_access_type,
            description=args.description or None,
            opts=child,
        )
        self.network_id = self.network.id
        self.subnetwork_id = self.subnetwork.id
        self.register_outputs({"networkId": self.network_id, "subnetworkId": self.subnetwork_id})


# ---------------------------------------------------------------------------------------------------------------
# Firewall


@dataclass(frozen=True)
class GcpFirewallRule:
    """One INGRESS allow rule: one protocol, one source prefix."""

    name: str
    """Stable name of the rule inside its policy (e.g. tunnel-from-gcpb); the resource is `<policy>-<name>`."""
    protocol: str
    """GCP protocol: tcp, udp, icmp, esp, ... or an IP protocol number ("58" = ICMPv6)."""
    source: pulumi.Input[str] | Sequence[pulumi.Input[str]]
    """Source prefix, or a list of them (IPv4 or IPv6, never /0; at most SOURCE_RANGES_PER_RULE)."""
    family: Literal[4, 6] = 4
    """IP family of the sources: a GCP rule holds IPv4 or IPv6 ranges, never both."""
    ports: Sequence[str] = ()
    """Destination ports or ranges (tcp/udp only); empty = every port."""
    description: str = ""
    """What the rule admits."""

    def sources(self) -> list[pulumi.Input[str]]:
        if isinstance(self.source, list | tuple):
            return [cast("pulumi.Input[str]", s) for s in self.source]
        return [cast("pulumi.Input[str]", self.source)]


@dataclass
class GcpSecurityPolicyArgs:
    network: pulumi.Input[str]
    """Network (id, self link or name) the rules belong to."""
    rules: Sequence[GcpFirewallRule]
    """Allow rules; everything else inbound stays denied by GCP's implied deny-ingress rule."""
    target_tags: Sequence[str] = ()
    """Network tags of the instances the rules apply to. Empty applies them to every instance of the network."""
    priority: int = 1000
    """Priority of every rule (0-65535, lower wins)."""


class GcpSecurityPolicy(pulumi.ComponentResource):
    """A security policy: INGRESS allow rules of one network, one `compute.Firewall` per rule."""

    # The type token keeps the class's earlier name (GcpFirewall): the token is part of every child's URN, so a new
    # one would replace the policy's firewall rules on a running stack.
    TYPE_TOKEN: ClassVar[str] = "multicloud-overlay:gcp:GcpFirewall"

    firewalls: dict[str, compute.Firewall]

    def __init__(self, name: str, args: GcpSecurityPolicyArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(self.TYPE_TOKEN, name, None, opts)
        names = [r.name for r in args.rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"{name}: duplicate rule names {', '.join(duplicates)}")
        self.firewalls = {}
        for rule in args.rules:
            expected = PROTOCOL_FAMILY.get(rule.protocol)
            if expected is not None and expected != rule.family:
                raise ValueError(f"{name}-{rule.name}: protocol {rule.protocol} is for IPv{expected}, the rule is IPv{rule.family}")
            if not 1 <= len(rule.sources()) <= SOURCE_RANGES_PER_RULE.value:
                raise ValueError(f"{name}-{rule.name}: {len(rule.sources())} source ranges (1 to {SOURCE_RANGES_PER_RULE.value})")
            sources: list[pulumi.Input[str]] = [
                checked_source(s, rule.family, rule.name)
                if isinstance(s, str)
                else pulumi.Output.from_input(s).apply(lambda v, r=rule: checked_source(v, r.family, r.name))
                for s in rule.sources()
            ]
            self.firewalls[rule.name] = compute.Firewall(
                gcp_name(f"{name}-{rule.name}"),
                network=args.network,
                direction="INGRESS",
                priority=args.priority,
                allows=[compute.FirewallAllowArgs(protocol=rule.protocol, ports=list(rule.ports) or None)],
                source_ranges=sources,
                target_tags=list(args.target_tags) or None,
                description=rule.description or None,
                opts=pulumi.ResourceOptions(parent=self),
            )
        self.register_outputs({"rules": {n: fw.id for n, fw in self.firewalls.items()}})


# ---------------------------------------------------------------------------------------------------------------
# Public address


@dataclass
class GcpPublicAddressArgs:
    region: pulumi.Input[str] | None = None
    """Region of the address (a VM's access config needs one of its own region); None = the provider's region."""
    network_tier: str = NETWORK_TIER
    """PREMIUM or STANDARD; the access config that uses the address must give the same tier."""
    description: str = ""
    """What the address is for."""


class GcpPublicAddress(pulumi.ComponentResource):
    """A reserved (static) regional external IPv4 address."""

    address: pulumi.Output[str]

    def __init__(self, name: str, args: GcpPublicAddressArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("multicloud-overlay:gcp:GcpPublicAddress", name, None, opts)
        self.resource = compute.Address(
            gcp_name(f"{name}-address"),
            address_type="EXTERNAL",
            region=args.region,
            network_tier=args.network_tier,
            description=args.description or None,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.address = self.resource.address
        self.register_outputs({"address": self.address})


# ---------------------------------------------------------------------------------------------------------------
# Machine


@dataclass
class GcpNicArgs:
    """One NIC of a `GcpMachine` (the first is nic0, the primary with the default route)."""

    subnetwork: pulumi.Input[str]
    """Subnet (id or self link); every NIC of a VM must be in a different VPC network."""
    network_ip: pulumi.Input[str] | None = None
    """Private IPv4 inside the subnet; None = assigned by GCP."""
    nat_ip: pulumi.Input[str] | None = None
    """Reserved external IPv4 mapped 1:1 to `network_ip`; None = no public IPv4 on this NIC."""
    ephemeral_public_ip: bool = False
    """With no `nat_ip`: give the NIC an ephemeral external IPv4 instead of none."""
    ipv6: bool = True
    """Dual-stack NIC (IPV4_IPV6): gets an IPv6 address from a dual-stack subnet."""
    external_ipv6: bool = False
    """Ask for an external IPv6 (the subnet's IPv6 access type must be EXTERNAL)."""
    network_tier: str = NETWORK_TIER
    """Tier of the external addresses (must match the reserved address)."""


@dataclass
class GcpMachineArgs:
    nics: Sequence[GcpNicArgs]
    """NICs in order (nic0 first). Fixed at creation: changing them replaces the VM."""
    image: pulumi.Input[str]
    """Boot image: self link, `project/family`, or `projects/p/global/images/family/f`."""
    machine_type: str = DEFAULT_ROUTER_MACHINE_TYPE
    """Machine type; it must allow len(nics) NICs (2 vCPUs or fewer: 2; more: one per vCPU, up to 8)."""
    zone: pulumi.Input[str] | None = None
    """Zone; None = the provider's zone."""
    user_data: pulumi.Input[str] | None = None
    """Plain-text cloud-init user-data (metadata key `user-data`)."""
    ssh_public_key: str | None = None
    """OpenSSH public key installed for `ssh_user` (metadata key `ssh-keys`; the guest agent then makes that user a
    passwordless sudoer). The overlay gives none: its payload installs the login user's keys."""
    ssh_user: str = SSH_USER
    """User the key is installed for."""
    block_project_ssh_keys: bool = True
    """Refuse the project's `ssh-keys` metadata on this VM: only keys given here (or by the payload) log in.
    https://cloud.google.com/compute/docs/connect/restrict-use-of-ssh-keys#block-keys"""
    can_ip_forward: bool = False
    """Allow packets with a source/destination that is not the VM's own (routers)."""
    tags: Sequence[str] = ()
    """Network tags (select the firewall rules that apply to the VM)."""
    boot_disk_size_gb: int | None = None
    """Boot disk size; None = the image's size (10 GB for Ubuntu)."""
    allow_stopping_for_update: bool = True
    """Let an update that needs it (machine type) stop and start the VM instead of failing. The node's unit
    re-applies its config at boot."""
    pin_user_data: bool = True
    """Ignore later changes of the user-data (config is pushed in place; a VM is never changed or replaced for it)."""
    pin_boot_image: bool = True
    """Ignore a newer image in the family (or a changed image setting): only an explicit replace moves a VM."""
    description: str = ""
    """Description of the instance."""


def _network_interface(nic: GcpNicArgs) -> compute.InstanceNetworkInterfaceArgs:
    access: list[compute.InstanceNetworkInterfaceAccessConfigArgs] | None = None
    if nic.nat_ip is not None or nic.ephemeral_public_ip:
        access = [compute.InstanceNetworkInterfaceAccessConfigArgs(nat_ip=nic.nat_ip, network_tier=nic.network_tier)]
    ipv6_access = (
        [compute.InstanceNetworkInterfaceIpv6AccessConfigArgs(network_tier=NETWORK_TIER)] if nic.ipv6 and nic.external_ipv6 else None
    )
    return compute.InstanceNetworkInterfaceArgs(
        subnetwork=nic.subnetwork,
        network_ip=nic.network_ip,
        stack_type="IPV4_IPV6" if nic.ipv6 else "IPV4_ONLY",
        access_configs=access,
        ipv6_access_configs=ipv6_access,
    )


class GcpMachine(pulumi.ComponentResource):
    """A VM with one or more NICs and cloud-init user-data."""

    instance: compute.Instance

    def __init__(self, name: str, args: GcpMachineArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("multicloud-overlay:gcp:GcpMachine", name, None, opts)
        if not 1 <= len(args.nics) <= MAX_NICS:
            raise ValueError(f"{name}: a GCP VM takes 1 to {MAX_NICS} NICs, got {len(args.nics)}")
        metadata: dict[str, pulumi.Input[str]] = {}
        if args.user_data is not None:
            metadata["user-data"] = args.user_data
        if args.ssh_public_key:
            metadata["ssh-keys"] = ssh_keys_metadata(args.ssh_public_key, args.ssh_user)
        if args.block_project_ssh_keys:
            metadata["block-project-ssh-keys"] = "TRUE"
        ignore = [p for p, on in ((USER_DATA_PROPERTY, args.pin_user_data), (BOOT_IMAGE_PROPERTY, args.pin_boot_image)) if on]
        self.instance = compute.Instance(
            gcp_name(f"{name}-vm"),
            machine_type=args.machine_type,
            zone=args.zone,
            boot_disk=compute.InstanceBootDiskArgs(
                auto_delete=True,
                initialize_params=compute.InstanceBootDiskInitializeParamsArgs(image=args.image, size=args.boot_disk_size_gb),
            ),
            network_interfaces=[_network_interface(nic) for nic in args.nics],
            can_ip_forward=args.can_ip_forward,
            tags=[gcp_name(t, GCP_NAME_MAX) for t in args.tags] or None,
            metadata=metadata or None,
            allow_stopping_for_update=args.allow_stopping_for_update,
            description=args.description or None,
            # What the machine was told to wait for (e.g. its firewall rules) holds for the instance too.
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=ignore or None, depends_on=opts.depends_on if opts else None),
        )
        self.register_outputs({"instanceId": self.instance.instance_id, "selfLink": self.instance.self_link})


# ---------------------------------------------------------------------------------------------------------------
# Overlay site


def firewall_rule(resolved: ResolvedRule) -> GcpFirewallRule:
    """The GCP rule for one of the plan's ingress rules (same protocol, port, source and family), one to one.

    Its name is the plan's rule name plus the port (tunnel-from-lan-4789): a protocol switch creates the new port's
    rule before the old one goes, so the new port is open before the nodes switch. (GcpSite folds the peers' rules:
    firewall_rules.)"""
    r = resolved.rule
    return GcpFirewallRule(
        name=firewall_rule_name(r),
        protocol=FIREWALL_PROTOCOL[r.protocol],
        source=resolved.source,
        family=r.family,
        ports=() if r.port is None else (str(r.port),),
        description=r.description,
    )


def firewall_rules(resolved: Sequence[ResolvedRule], site_ids: dict[str, int]) -> list[GcpFirewallRule]:
    """A NIC's rules as gcp_traits.firewall_rule_plans folds them (what check_limits checked): the peer routers'
    tunnel and ICMP rules become one rule each (per block of 250 siteIds) listing every peer's /32, so a hub has
    as many rules as a spoke and a hub swap updates source ranges in place."""
    public = {r.rule.source.site: r.source for r in resolved if isinstance(r.rule.source, PeerRouter)}
    out: list[GcpFirewallRule] = []
    for plan in firewall_rule_plans([r.rule for r in resolved], site_ids):
        sources = [public[s.site] if isinstance(s, PeerRouter) else s for s in plan.sources]
        folded = any(isinstance(s, PeerRouter) for s in plan.sources)
        out.append(
            GcpFirewallRule(
                name=plan.name,
                protocol=plan.protocol,
                source=sources if folded else sources[0],
                family=plan.family,
                ports=plan.ports,
                description=plan.description,
            )
        )
    return out


def arrives_on_lan(resolved: ResolvedRule, lan_cidr: ipaddress.IPv4Network) -> bool:
    """True when the rule's traffic comes from inside the site LAN (so it reaches a router on its LAN NIC)."""
    return nic_of_rule(resolved.rule, lan_cidr) == "lan"


def node_tag(node_name: str) -> str:
    """Network tag that scopes firewall rules to one node."""
    return gcp_name(node_name, GCP_NAME_MAX)


class GcpSite(PlatformSite):
    """An overlay site in one GCP region: WAN and LAN networks, a router with two NICs and a client."""

    user_data_property = USER_DATA_PROPERTY

    def __init__(self, ctx: SiteContext) -> None:
        super().__init__(ctx)
        site = ctx.site
        if not site.region:
            raise KeyError(f"sites.{site.name}.region is not set")
        self.region: str = site.region
        self.zone: str = site.require("zone")
        self.project: str = site.require("project")
        self._provider = gcp.Provider(
            f"{site.name}-gcp",
            project=self.project,
            region=self.region,
            zone=self.zone,
            opts=pulumi.ResourceOptions(parent=ctx.parent),
        )
        self.wan: GcpNetwork | None = None
        self.lan: GcpNetwork | None = None
        self.router_address: GcpPublicAddress | None = None
        self.image: pulumi.Input[str] | None = None

    @property
    def provider(self) -> pulumi.ProviderResource:
        return self._provider

    def site_outputs(self) -> dict[str, pulumi.Input[Any]]:
        return {"project": self.project, "region": self.region, "zone": self.zone}

    def prepare(self) -> pulumi.Output[str]:
        site = self.ctx.site
        mtu = vpc_mtu(site.underlay_mtu, site.name)
        self.wan = GcpNetwork(
            f"{site.name}-wan",
            GcpNetworkArgs(str(site.wan_cidr), self.region, mtu, "EXTERNAL", f"{site.name} WAN (router NIC0)"),
            self.child_opts(),
        )
        self.lan = GcpNetwork(
            f"{site.name}-lan",
            GcpNetworkArgs(str(site.lan_cidr), self.region, mtu, "INTERNAL", f"{site.name} LAN (router NIC1, client)"),
            self.child_opts(),
        )
        router = self.ctx.plan.router(site.name)
        self.router_address = GcpPublicAddress(
            f"{router.name}-wan",
            GcpPublicAddressArgs(region=self.region, description=f"public IPv4 of {router.name} (tunnel endpoint)"),
            self.child_opts(),
        )
        image = site.setting("image")
        if image is None:
            found = compute.get_image_output(
                family=UBUNTU_IMAGE_FAMILY,
                project=UBUNTU_IMAGE_PROJECT,
                opts=pulumi.InvokeOutputOptions(parent=self.ctx.parent, provider=self.provider),
            )
            self.image = found.self_link
        else:
            self.image = image
        return self.router_address.address

    def _prepared(self) -> tuple[GcpNetwork, GcpNetwork, GcpPublicAddress, pulumi.Input[str]]:
        if self.wan is None or self.lan is None or self.router_address is None or self.image is None:
            raise RuntimeError(f"site {self.name}: prepare() must run before router() and client()")
        return self.wan, self.lan, self.router_address, self.image

    def _firewall(self, spec: NodeSpec, nic: str, network: GcpNetwork, rules: list[ResolvedRule]) -> GcpSecurityPolicy:
        return GcpSecurityPolicy(
            f"{spec.node.name}-{nic}-fw",
            GcpSecurityPolicyArgs(
                network=network.network_id,
                rules=firewall_rules(rules, {s.name: s.site_id for s in self.ctx.plan.config.sites}),
                target_tags=[node_tag(spec.node.name)],
            ),
            self.child_opts(spec.parent),
        )

    def router(self, spec: NodeSpec) -> NodeResources:
        wan, lan, address, image = self._prepared()
        node, site = spec.node, self.ctx.site
        if node.wan_ip is None:
            raise ValueError(f"{node.name}: a router needs a WAN address in the plan")
        lan_rules = [r for r in spec.rules if arrives_on_lan(r, site.lan_cidr)]
        wan_rules = [r for r in spec.rules if not arrives_on_lan(r, site.lan_cidr)]
        firewalls = [self._firewall(spec, "wan", wan, wan_rules), self._firewall(spec, "lan", lan, lan_rules)]
        machine = GcpMachine(
            node.name,
            GcpMachineArgs(
                nics=[
                    GcpNicArgs(subnetwork=wan.subnetwork_id, network_ip=node.wan_ip, nat_ip=address.address, external_ipv6=True),
                    GcpNicArgs(subnetwork=lan.subnetwork_id, network_ip=node.lan_ip),
                ],
                image=image,
                machine_type=site.setting("routerSize") or DEFAULT_ROUTER_MACHINE_TYPE,
                zone=self.zone,
                user_data=spec.user_data,
                can_ip_forward=True,
                tags=[node_tag(node.name)],
                # Nothing a hub swap or a protocol switch changes (the role is not here): an instance's description
                # is not documented as updatable in place.
                description=f"overlay router of site {site.name}",
            ),
            self.child_opts(spec.parent, depends_on=firewalls),
        )
        return NodeResources(
            management_ip=address.address,
            private_ips={"wan": node.wan_ip, "lan": node.lan_ip},
            machine=machine.instance,
            vm_id=machine.instance.id,
        )

    def client(self, spec: NodeSpec) -> NodeResources:
        _, lan, _, image = self._prepared()
        node, site = spec.node, self.ctx.site
        address = GcpPublicAddress(
            f"{node.name}-lan",
            GcpPublicAddressArgs(region=self.region, description=f"public IPv4 of {node.name} (management)"),
            self.child_opts(spec.parent),
        )
        # The client's only NIC is on the LAN network: every rule of the client, admin ones included, lives there.
        firewall = self._firewall(spec, "lan", lan, list(spec.rules))
        machine = GcpMachine(
            node.name,
            GcpMachineArgs(
                nics=[GcpNicArgs(subnetwork=lan.subnetwork_id, network_ip=node.lan_ip, nat_ip=address.address)],
                image=image,
                machine_type=site.setting("clientSize") or DEFAULT_CLIENT_MACHINE_TYPE,
                zone=self.zone,
                user_data=spec.user_data,
                can_ip_forward=False,
                tags=[node_tag(node.name)],
                description=f"overlay client of site {site.name}",
            ),
            self.child_opts(spec.parent, depends_on=[firewall]),
        )
        return NodeResources(management_ip=address.address, private_ips={"lan": node.lan_ip}, machine=machine.instance, vm_id=machine.instance.id)


PLATFORM_SITE: Final[PlatformFactory] = GcpSite
"""What components.site builds a site of this platform with (see PlatformTraits.site_module)."""
