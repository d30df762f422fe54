"""Site, OverlayRouter and OverlayClient: translate the plan into a platform's resources, nothing else."""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Any

import pulumi

from multicloud_overlay.components.clouds.base import (
    SSH_USER,
    NodeResources,
    NodeSpec,
    PlatformFactory,
    PlatformSite,
    ResolvedRule,
    SiteContext,
)
from multicloud_overlay.components.clouds.registry import PLATFORMS
from multicloud_overlay.components.credentials import TunnelKeys, node_host_key
from multicloud_overlay.components.limits import node_user_data
from multicloud_overlay.components.push import NodeConfigPush, NodeConfigPushArgs, order_pushes
from multicloud_overlay.overlay.config import SiteConfig
from multicloud_overlay.overlay.plan import Node, Plan, node_config
from multicloud_overlay.overlay.security import IngressRule, PeerRouter, client_rules, router_rules


def node_doc(plan: Plan, node_name: str, values: list[Any]) -> dict[str, Any]:
    """Apply callback: the node's config once every router's public address (and its tunnel keys) are known."""
    public_ips, pair_keys = values
    return node_config(plan, node_name, public_ips, pair_keys=pair_keys or None)


def render_node_user_data(plan: Plan, node: str, operator_key: str, values: list[Any]) -> str:
    """Apply callback: the node's #cloud-config (limits.node_user_data: what the config-time size check measured)."""
    private_key, public_key, deploy_key = values
    return node_user_data(plan, node, operator_key, private_key, public_key, deploy_key)


def strip_key(key: str) -> str:
    return key.strip()


def peer_cidr(ip: str) -> str:
    return f"{ip}/32"


def resolve_rules(rules: list[IngressRule], public_ips: dict[str, pulumi.Output[str]]) -> list[ResolvedRule]:
    return [ResolvedRule(r, public_ips[r.source.site].apply(peer_cidr) if isinstance(r.source, PeerRouter) else r.source) for r in rules]


def platform_site(ctx: SiteContext) -> PlatformSite:
    """The platform's resources of one site. Its module is imported here, only for the platforms a stack uses:
    importing a provider SDK costs a second or more."""
    module = importlib.import_module(PLATFORMS[ctx.site.platform].site_module)
    factory: PlatformFactory = module.PLATFORM_SITE
    return factory(ctx)


@dataclass
class OverlayNodeArgs:
    platform: PlatformSite
    """The site's platform wiring (components/clouds)."""
    node: Node
    """The node's plan."""
    user_data: pulumi.Output[str]
    """Rendered #cloud-config payload."""
    rules: list[ResolvedRule]
    """Ingress rules of the node."""


class _OverlayNode(pulumi.ComponentResource):
    """A VM of the overlay and everything that belongs to it alone (NICs, rules, addresses)."""

    kind = ""

    def __init__(self, name: str, args: OverlayNodeArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"multicloud-overlay:index:{type(self).__name__}", name, None, opts)
        spec = NodeSpec(node=args.node, user_data=args.user_data, rules=args.rules, parent=self)
        res: NodeResources = self._build(args.platform, spec)
        node = args.node
        self.machine = res.machine
        self.vm_id = res.vm_id
        self.management_ip = res.management_ip
        self.private_ips = res.private_ips
        self.summary: pulumi.Output[dict[str, Any]] = pulumi.Output.all(res.management_ip, res.private_ips).apply(
            functools.partial(node_summary, node)
        )
        self.register_outputs({"managementIp": res.management_ip, "privateIps": res.private_ips, "summary": self.summary})

    def _build(self, platform: PlatformSite, spec: NodeSpec) -> NodeResources:
        raise NotImplementedError


def node_summary(node: Node, resolved: list[Any]) -> dict[str, Any]:
    """What a user needs about a node after `pulumi up` (stack output `nodes`)."""
    management_ip, private_ips = resolved
    return {
        "platform": node.platform,
        "site": node.site,
        "role": node.role,
        "managementIp": management_ip,
        "privateIps": private_ips,
        "overlayIpv4": node.overlay_ipv4,
        "overlayIpv6": node.overlay_ipv6,
        "ssh": f"ssh {SSH_USER}@{management_ip}",
        "tunnels": [t.peer for t in node.tunnels],
    }


def site_summary(plan: Plan, site: str) -> str:
    """What `pulumi up` says about a site before building it (logged by Site): its role, tunnels and the overlay's
    protocol. From the plan alone: no address that is known only later, and never a credential."""
    cfg, router = plan.config, plan.router(site)
    peers = plan.peer_sites(site)
    if router.role == "hub":
        role = "hub"
    elif router.role == "spoke":
        role = f"spoke of hub {plan.hub}"
    else:
        role = f"peer ({cfg.topology})"
    encryption = "ESP (ipsec)" if plan.encrypted else "no encryption"
    return (
        f"site {site} ({router.platform}, siteId {cfg.site(site).site_id}): {role}; {cfg.protocol} over UDP {plan.port}, "
        f"{encryption}; {len(peers)} router tunnel{'s' if len(peers) != 1 else ''} ({', '.join(peers)}) and 1 to its client; "
        f"{len(router.containers)} containers; overlay MTU {plan.mtu}"
    )


class OverlayRouter(_OverlayNode):
    """A site's router: two NICs (WAN with the reserved public address, LAN), forwarding, tunnels, containers."""

    def _build(self, platform: PlatformSite, spec: NodeSpec) -> NodeResources:
        return platform.router(spec)


class OverlayClient(_OverlayNode):
    """A site's client: one NIC on the LAN (vSphere: management + LAN), one tunnel to its router."""

    def _build(self, platform: PlatformSite, spec: NodeSpec) -> NodeResources:
        return platform.client(spec)


@dataclass
class SiteArgs:
    site: SiteConfig
    """The site's validated config."""
    plan: Plan
    """The whole overlay's plan (the site reads its own nodes from it)."""
    operator_key: str
    """The operator's OpenSSH public key (sshPublicKey), installed for the login user."""
    deploy_public_key: pulumi.Output[str]
    """The stack's deploy key (public): the login user's key for the pushes and checks."""


class Site(pulumi.ComponentResource):
    """One site: network, reserved public address, router and client on one platform.

    Built in two phases, because a router's config names every peer's public address:
    1. network: `Site(...)` builds the network, subnets and security groundwork and reserves the public address
       (PlatformSite.prepare), for every site first;
    2. nodes: `deploy(public_ips)` (deploy_sites, with every site's address) builds the router and the client,
       their pushes, and registers the site's outputs, which exist only then.
    Why not a network component and a nodes component: every resource of an existing stack has this Site as its
    parent, and its URN carries the parent's type. Two new parents would rename every resource, and Pulumi
    would replace each VM, unless every child carried an alias. The phases stay two methods of one component.
    """

    def __init__(self, name: str, args: SiteArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("multicloud-overlay:index:Site", name, None, opts)
        self.args = args
        pulumi.log.info(site_summary(args.plan, args.site.name), resource=self)
        self.platform = platform_site(SiteContext(site=args.site, plan=args.plan, parent=self, admin_public_key=args.deploy_public_key))
        self.public_ip: pulumi.Output[str] = self.platform.prepare()
        self.router: OverlayRouter | None = None
        self.client: OverlayClient | None = None
        self.pushes: dict[str, NodeConfigPush] = {}
        self.host_keys: dict[str, pulumi.Output[str]] = {}

    def deploy(
        self,
        public_ips: dict[str, pulumi.Output[str]],
        private_key: pulumi.Output[str],
        tunnel_keys: TunnelKeys | None = None,
    ) -> None:
        """Build the router and the client, and the in-place push of each one's config.

        A VM boots with its bootstrap config (plan.bootstrap_config: its own site only, no credential); the push
        then installs its full config, which names every peer's public address and (encryption ipsec, routers)
        carries the tunnels' keys, a secret that travels only over SSH with the node's host key pinned.
        """
        plan, site = self.args.plan, self.args.site.name
        if plan.encrypted and tunnel_keys is None:
            raise ValueError(f"site {site}: encryption ipsec needs the tunnel keys (TunnelKeys)")
        ips = pulumi.Output.all(**public_ips)
        router_keys = tunnel_keys.for_router(plan, site) if tunnel_keys is not None and plan.encrypted else {}
        nodes: list[_OverlayNode] = []
        for node, cls, rules in (
            (plan.router(site), OverlayRouter, router_rules(plan, site)),
            (plan.client(site), OverlayClient, client_rules(plan, site)),
        ):
            host_key = node_host_key(node.name, self)
            keys = pulumi.Output.all(**router_keys) if node.kind == "router" and router_keys else pulumi.Output.from_input({})
            doc: pulumi.Output[dict[str, Any]] = pulumi.Output.all(ips, keys).apply(functools.partial(node_doc, plan, node.name))
            user_data = pulumi.Output.all(host_key.private_key_openssh, host_key.public_key_openssh, self.args.deploy_public_key).apply(
                functools.partial(render_node_user_data, plan, node.name, self.args.operator_key)
            )
            vm = cls(
                node.name,
                OverlayNodeArgs(self.platform, node, user_data, resolve_rules(rules, public_ips)),
                pulumi.ResourceOptions(parent=self),
            )
            self.host_keys[node.name] = host_key.public_key_openssh.apply(strip_key)
            self.pushes[node.name] = NodeConfigPush(
                f"{node.name}-config",
                NodeConfigPushArgs(
                    host=vm.management_ip,
                    doc=doc,
                    private_key=private_key,
                    host_key=self.host_keys[node.name],
                    machine=vm.machine,
                    vm_id=vm.vm_id,
                    phased=node.kind == "router",
                ),
                pulumi.ResourceOptions(parent=vm),
            )
            nodes.append(vm)
        router, client = nodes
        assert isinstance(router, OverlayRouter) and isinstance(client, OverlayClient)
        self.router, self.client = router, client
        self.outputs: dict[str, Any] = {
            "platform": self.args.site.platform,
            "publicIp": self.public_ip,
            "tunnelPeers": list(plan.peer_sites(site)),
            **self.platform.site_outputs(),
        }
        self.register_outputs({**self.outputs, "router": router.summary, "client": client.summary})


def deploy_sites(sites: dict[str, Site], private_key: pulumi.Output[str], tunnel_keys: TunnelKeys | None = None) -> None:
    """Site.deploy for every site, each with every router's public address. If one fails, every site is told to
    abandon what waits for its VMs, so the program ends with the error instead of waiting forever."""
    public_ips = {name: site.public_ip for name, site in sites.items()}
    try:
        for site in sites.values():
            site.deploy(public_ips, private_key, tunnel_keys)
        plan = next(iter(sites.values())).args.plan
        order_pushes({n: p for site in sites.values() for n, p in site.pushes.items()}, plan.switch_waves())
    except BaseException as error:
        for site in sites.values():
            site.platform.abandon(error)
        raise
