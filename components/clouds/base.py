"""The one small interface every platform gives a Site.

A platform module (components/clouds/<platform>.py) subclasses `PlatformSite` and is listed once in
components/clouds/__init__.py. Its building blocks (network, security policy, public address, multi-NIC VM) are
ComponentResources of its own that a user can import and use without the overlay; `PlatformSite` only wires
them for an overlay site.

Life of a site (driven by components/site.py):
1. `__init__`: create the site's explicit provider (region/location/project from the site config).
2. `prepare()`: network + subnets and the router's reserved static public IPv4. Runs for every site before any
   VM exists, so every payload can be rendered with all peers' addresses without a dependency cycle.
3. `router(...)` / `client(...)`: the VMs with their NICs, security rules and user-data.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pulumi

from multicloud_overlay.cloudinit.render import LOGIN_USER
from multicloud_overlay.overlay.config import SiteConfig
from multicloud_overlay.overlay.plan import Node, Plan
from multicloud_overlay.overlay.security import IngressRule

SSH_USER = LOGIN_USER
"""The login user every node has: created by the payload, whatever the platform's own default user."""


@dataclass(frozen=True)
class ResolvedRule:
    """An IngressRule whose source is resolved (a peer's public /32 is an Output)."""

    rule: IngressRule
    source: pulumi.Input[str]


@dataclass(frozen=True)
class SiteContext:
    site: SiteConfig
    plan: Plan
    parent: pulumi.Resource
    """The Site component: parent of the provider and the network."""
    admin_public_key: pulumi.Input[str]
    """The stack's deploy key (public, OpenSSH), for a platform whose VM API requires a key at creation (Azure).
    Every node's login user gets its keys from the payload; no other platform key mechanism is used."""


@dataclass(frozen=True)
class NodeSpec:
    """What a platform needs to build one node (router or client)."""

    node: Node
    """The node's plan: name, private addresses (node.wan_ip, node.lan_ip, node.mgmt_ip), role."""
    user_data: pulumi.Output[str]
    """Plain-text #cloud-config; the platform encodes it as it needs (base64 etc.). VMs must set
    ignore_changes on their user-data property: later config changes are pushed in place, never by
    replacing a VM."""
    rules: list[ResolvedRule]
    """Ingress rules for this node (see overlay/security.py); egress is open."""
    parent: pulumi.Resource
    """The OverlayRouter/OverlayClient component: parent of every resource of this node."""


@dataclass
class NodeResources:
    management_ip: pulumi.Output[str]
    """Address to SSH to: public IPv4 on public clouds, the management address on vSphere."""
    private_ips: dict[str, pulumi.Input[str]]
    """NIC role (wan, lan, mgmt) -> private IPv4."""
    machine: pulumi.Resource
    """What later steps (the config push) must wait for: the VM, or a component holding the VM and the
    resources it needs to be reachable (NIC attachment, address association)."""
    vm_id: pulumi.Output[str]
    """The VM's provider id. A replaced VM has a new one: the push installs the node script and the config again."""
    extra: dict[str, pulumi.Input[str]] = field(default_factory=dict)
    """Platform-specific outputs worth exporting (instance id, ...)."""


class PlatformSite(abc.ABC):
    """One site on one platform."""

    #: Instance/VM property that carries user-data, for ignore_changes (e.g. "userData", "osProfile.customData").
    user_data_property: str = ""

    def __init__(self, ctx: SiteContext) -> None:
        self.ctx = ctx

    @property
    def name(self) -> str:
        return self.ctx.site.name

    def child_opts(self, parent: pulumi.Resource | None = None, **kwargs: object) -> pulumi.ResourceOptions:
        """Options for a resource of this site: parented, and bound to the site's provider."""
        return pulumi.ResourceOptions(parent=parent or self.ctx.parent, provider=self.provider, **kwargs)  # type: ignore[arg-type]

    @property
    @abc.abstractmethod
    def provider(self) -> pulumi.ProviderResource:
        """The site's explicit provider."""

    @abc.abstractmethod
    def prepare(self) -> pulumi.Output[str]:
        """Create network, subnets and the router's reserved public IPv4; return that address."""

    @abc.abstractmethod
    def router(self, spec: NodeSpec) -> NodeResources:
        """Router VM: NIC0 on WAN with the reserved public address, NIC1 on LAN, forwarding allowed."""

    @abc.abstractmethod
    def client(self, spec: NodeSpec) -> NodeResources:
        """Client VM: one NIC on LAN (vSphere: management + LAN), reachable for management."""

    def abandon(self, error: BaseException) -> None:  # noqa: B027 - a hook: most platforms have nothing to release
        """The program fails before this site's VMs are built: release whatever waits for them (an unresolved
        deferred output would keep Pulumi waiting forever instead of failing)."""

    def site_outputs(self) -> dict[str, pulumi.Input[Any]]:
        """Platform-specific facts a user needs after `pulumi up` (e.g. the rules a datacentre edge must apply)."""
        return {}


PlatformFactory = Callable[[SiteContext], PlatformSite]
"""What a platform module exports as PLATFORM_SITE: builds the platform's resources of one site."""
