"""The lab's emulated underlay, computed from the overlay plan (pure: no command runs here).

Per site: an edge namespace that is the cloud's VPC router and internet gateway (a WAN and a LAN segment, each a
bridge with the subnet gateway address, and 1:1 NAT between the router's private WAN address and the site's
public address), plus one namespace per VM (router: WAN NIC eth0 + LAN NIC eth1; client: LAN NIC eth0). One
"internet" namespace routes between the edges; each edge's internet link carries the site's underlay MTU.

Every address of the overlay itself comes from the plan; this module only adds what a cloud would provide: public
addresses, gateways and the internet's transit links.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from multicloud_overlay.components.clouds.registry import PLATFORMS
from multicloud_overlay.overlay.config import OverlayConfig, SiteConfig
from multicloud_overlay.overlay.plan import Node, Plan

PREFIX: Final = "mco-"
INTERNET_NS: Final = f"{PREFIX}internet"
# Public addresses come from the documentation ranges (RFC 5737); a vSphere site's configured publicIp wins.
PUBLIC_POOLS: Final = (ipaddress.IPv4Network("198.51.100.0/24"), ipaddress.IPv4Network("203.0.113.0/24"))
PUBLIC_HOST_OFFSET: Final = 10  # site n prefers 198.51.100.(10 + n)
# Transit links between the internet namespace and each edge: one /30 per site, chosen by siteId.
TRANSIT: Final = ipaddress.IPv4Network("100.64.0.0/16")
NIC_MTU: Final = 1500
# Absolute paths of a payload (files and unit command) that live in a node's own root in the lab.
NODE_ROOT_PATHS: Final = ("/etc", "/var", "/usr/local")

# The Ubuntu image on OCI ships these iptables rules (/etc/iptables/rules.v4): everything but established
# traffic, ICMP, loopback and SSH is rejected, and nothing is forwarded.
OCI_IMAGE_IPTABLES: Final = (
    ("INPUT", "-m", "state", "--state", "RELATED,ESTABLISHED", "-j", "ACCEPT"),
    ("INPUT", "-p", "icmp", "-j", "ACCEPT"),
    ("INPUT", "-i", "lo", "-j", "ACCEPT"),
    ("INPUT", "-p", "tcp", "-m", "state", "--state", "NEW", "-m", "tcp", "--dport", "22", "-j", "ACCEPT"),
    ("INPUT", "-j", "REJECT", "--reject-with", "icmp-host-prohibited"),
    ("FORWARD", "-j", "REJECT", "--reject-with", "icmp-host-prohibited"),
)


def map_path(path: str, root: Path | str) -> str:
    """A payload's absolute path as seen in the lab: /etc, /var and /usr/local live under the node's root."""
    for top in NODE_ROOT_PATHS:
        if path == top or path.startswith(top + "/"):
            return f"{str(root).rstrip('/')}{path}"
    return path


def map_argv(argv: list[str], root: Path | str) -> list[str]:
    """A unit command with every mapped absolute path (also in --opt=/path form) moved under the node root."""
    out = []
    for arg in argv:
        if arg.startswith("/"):
            out.append(map_path(arg, root))
        elif arg.startswith("-") and "=/" in arg:
            opt, value = arg.split("=", 1)
            out.append(f"{opt}={map_path(value, root)}")
        else:
            out.append(arg)
    return out


def public_addresses(cfg: OverlayConfig) -> dict[str, str]:
    """site name -> public IPv4 of its router (what the cloud's reserved address / the datacentre edge gives)."""
    taken: set[ipaddress.IPv4Address] = set()
    out: dict[str, str] = {}
    for s in cfg.sites:
        configured = s.setting("publicIp")
        if configured:
            out[s.name] = configured
            taken.add(ipaddress.IPv4Address(configured))
    if cfg.admin_cidr.version == 4 and cfg.admin_cidr.num_addresses <= 4:
        taken.update(ipaddress.IPv4Network(str(cfg.admin_cidr)))
    free = [a for pool in PUBLIC_POOLS for a in pool.hosts()]
    for s in sorted(cfg.sites, key=lambda s: s.site_id):
        if s.name in out:
            continue
        preferred = PUBLIC_POOLS[0].network_address + PUBLIC_HOST_OFFSET + s.site_id
        if preferred in PUBLIC_POOLS[0] and preferred != PUBLIC_POOLS[0].broadcast_address and preferred not in taken:
            choice = preferred
        else:
            choice = next((a for a in free if a not in taken), None)
            if choice is None:
                raise ValueError("the lab ran out of documentation addresses for public IPs")
        taken.add(choice)
        out[s.name] = str(choice)
    return out


def transit_pair(site_id: int) -> tuple[str, str]:
    """(internet side, edge side) addresses with prefix of a site's transit /30."""
    base = TRANSIT.network_address + 4 * site_id
    if base + 3 > TRANSIT.broadcast_address:
        raise ValueError(f"siteId {site_id} does not fit the lab's transit range {TRANSIT}")
    return f"{base + 1}/30", f"{base + 2}/30"


def gateway(net: ipaddress.IPv4Network, configured: str | None = None) -> str:
    """The subnet gateway the platform gives (.1, or the configured one on vSphere), with prefix."""
    addr = ipaddress.IPv4Address(configured) if configured else net.network_address + 1
    return f"{addr}/{net.prefixlen}"


def node_ns(node: str, prefix: str = PREFIX) -> str:
    return f"{prefix}{node}"


def edge_ns(site: str, prefix: str = PREFIX) -> str:
    return f"{prefix}{site}-edge"


@dataclass(frozen=True)
class Nic:
    """One VM NIC: a veth whose other end is a port of a segment bridge in the site's edge namespace."""

    name: str
    """Name in the VM (eth0, eth1)."""
    port: str
    """Name of the other end in the edge namespace."""
    segment: str
    """Bridge in the edge namespace: br-wan or br-lan."""
    address: str | None
    """Address/prefix the platform configures (DHCP/metadata), None where the payload must configure it."""


@dataclass(frozen=True)
class HostSpec:
    """The emulated machine of one node: a network namespace with the NICs its platform gives (not a qemu VM: those
    are lab/vm.py's)."""

    node: str
    site: str
    kind: str
    ns: str
    nics: tuple[Nic, ...]
    default_gateway: str
    host_firewall: bool
    """Emulate the OCI image's iptables rules (the payload must open them)."""


@dataclass(frozen=True)
class EdgeSpec:
    site: str
    platform: str
    ns: str
    public_ip: str
    wan_gateway: str
    lan_gateway: str
    transit_internet: str
    transit_edge: str
    internet_port: str
    """Name of the transit link's end in the internet namespace."""
    underlay_mtu: int
    router_wan_ip: str
    mgmt_gateway: str | None = None
    """vSphere: the management port group's gateway (a third segment, br-mgmt)."""


@dataclass(frozen=True)
class Layout:
    prefix: str
    internet_ns: str
    edges: tuple[EdgeSpec, ...]
    hosts: tuple[HostSpec, ...]
    public_ips: Mapping[str, str]

    def host(self, node: str) -> HostSpec:
        for v in self.hosts:
            if v.node == node:
                return v
        raise KeyError(node)

    def namespaces(self) -> list[str]:
        """Every namespace of the lab itself (container namespaces are the node script's)."""
        return [self.internet_ns, *(e.ns for e in self.edges), *(v.ns for v in self.hosts)]


def mgmt_network(site: SiteConfig) -> ipaddress.IPv4Network | None:
    mgmt = site.setting("mgmtCidr")
    return ipaddress.IPv4Network(mgmt) if mgmt else None


def _host(node: Node, site: SiteConfig, prefix: str) -> HostSpec:
    lan_gw = gateway(site.lan_cidr).split("/")[0]
    lan = f"{node.lan_ip}/{node.lan_prefix}"
    traits = PLATFORMS[node.platform]
    names = traits.nic_names
    if node.kind == "router":
        assert node.wan_ip is not None
        wan_name, lan_name = names.router
        nics = (
            Nic(wan_name, "wan-r", "br-wan", f"{node.wan_ip}/{site.wan_cidr.prefixlen}"),
            Nic(lan_name, "lan-r", "br-lan", None if traits.payload_configures_router_lan else lan),
        )
        default = gateway(site.wan_cidr, site.setting("wanGateway")).split("/")[0]
    elif traits.management_network and node.mgmt_ip and (mgmt := mgmt_network(site)) is not None:
        # The client's first NIC is on the management network, with the default route.
        mgmt_name, lan_name = names.client
        nics = (
            Nic(mgmt_name, "mgmt-c", "br-mgmt", f"{node.mgmt_ip}/{mgmt.prefixlen}"),
            Nic(lan_name, "lan-c", "br-lan", lan),
        )
        default = gateway(mgmt, site.setting("mgmtGateway")).split("/")[0]
    else:
        nics = (Nic(names.client[-1], "lan-c", "br-lan", lan),)
        default = lan_gw
    return HostSpec(
        node=node.name,
        site=node.site,
        kind=node.kind,
        ns=node_ns(node.name, prefix),
        nics=nics,
        default_gateway=default,
        host_firewall=traits.closed_host_firewall,
    )


def build_layout(plan: Plan, prefix: str = PREFIX) -> Layout:
    cfg = plan.config
    public = public_addresses(cfg)
    edges = []
    hosts = []
    for site in cfg.sites:
        inet, edge = transit_pair(site.site_id)
        router = plan.router(site.name)
        assert router.wan_ip is not None
        edges.append(
            EdgeSpec(
                site=site.name,
                platform=site.platform,
                ns=edge_ns(site.name, prefix),
                public_ip=public[site.name],
                wan_gateway=gateway(site.wan_cidr, site.setting("wanGateway")),
                lan_gateway=gateway(site.lan_cidr),
                transit_internet=inet,
                transit_edge=edge,
                internet_port=f"e-{site.name}",
                underlay_mtu=site.underlay_mtu,
                router_wan_ip=router.wan_ip,
                mgmt_gateway=gateway(mgmt, site.setting("mgmtGateway")) if (mgmt := mgmt_network(site)) else None,
            )
        )
        for node in (router, plan.client(site.name)):
            hosts.append(_host(node, site, prefix))
    return Layout(
        prefix=prefix,
        internet_ns=f"{prefix}internet",
        edges=tuple(edges),
        hosts=tuple(hosts),
        public_ips=public,
    )


def container_names(plan: Plan) -> list[str]:
    """Names of every container (also their namespace handles in /run/netns)."""
    return [c.name for n in plan.routers() for c in n.containers]
