"""The overlay plan: one pure function from a validated config to every fact the overlay needs.

Who is hub, which tunnels exist with which VNIs, every node's and container's overlay address and MAC, every
underlay private address, the overlay MTU: computed here once. Renderers, the Pulumi components and the lab read
the plan; none of them recomputes any of it. No Pulumi or cloud SDK import.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from multicloud_overlay.components.clouds.registry import PLATFORMS
from multicloud_overlay.overlay.config import (
    CLIENT_HOST,
    FIRST_CONTAINER_HOST,
    ROUTER_HOST,
    SITE_BLOCK,
    OverlayConfig,
    Platform,
    SiteConfig,
)
from multicloud_overlay.overlay.encapsulation import (
    DPD_SECONDS,
    ESP_PROPOSALS,
    IKE_PROPOSALS,
    PAIR_KEY_BYTES,
    REKEY_PACKETS,
    REPLAY_WINDOW,
    TUNNEL_PORT,
    Protocol,
    encapsulation_overhead,
)

Kind = Literal["router", "client"]
Role = Literal["hub", "standby", "spoke", "peer", "client"]
Via = Literal["internet", "lan"]

BRIDGE: Final = "br-overlay"


def pair_key_name(site_a: str, site_b: str) -> str:
    """Name of the secret shared by the routers of two sites (order-free)."""
    low, high = sorted((site_a, site_b))
    return f"{low}--{high}"


def tunnel_vni(base: int, site_a: int, site_b: int | None = None) -> int:
    """VNI of one tunnel.

    Linux demultiplexes received VXLAN by (UDP port, VNI) alone, so two VXLAN devices of one node cannot share a
    VNI: every tunnel of a node gets its own. A router-client tunnel of site s uses base + s; a router-router
    tunnel between sites a and b uses base + 1000*min(a, b) + max(a, b) (site ids are 1..999). Both ends of a
    tunnel compute the same VNI, and no VNI depends on who is hub.
    """
    if site_b is None:
        return base + site_a
    low, high = sorted((site_a, site_b))
    return base + 1000 * low + high


PROBE_HOST: Final = 3
"""The BFD probe of a router (two hubs): its MAC is overlay_mac(site, PROBE_HOST); no overlay address uses the host."""
BFD_INTERVAL_MS: Final = 100
BFD_MULTIPLIER: Final = 3
"""A session is down after 3 missed packets at 100 ms: a lost hub is noticed in about 0.3 s."""


def probe_address(site_id: int) -> str:
    """The link-local IPv6 address of a router's BFD probe: never routed, and no overlay or cloud address."""
    return f"fe80::6f:{site_id:x}"


def overlay_mac(site_id: int, host: int) -> str:
    """Stable locally administered unicast MAC for overlay host `host` of site `site_id`."""
    return f"02:6f:{site_id >> 8:02x}:{site_id & 0xFF:02x}:00:{host:02x}"


@dataclass(frozen=True)
class Container:
    name: str
    """Container name (unique across the overlay, e.g. aws-c1); also its network namespace handle."""
    link: str
    """Host-side veth name on the router's bridge."""
    ipv4: str
    """Overlay address with prefix length, e.g. 10.250.1.10/16."""
    ipv6: str
    mac: str


@dataclass(frozen=True)
class Tunnel:
    name: str
    """Tunnel device name on this node (ovl-r<siteId> to a router, ovl-c<siteId> to a client)."""
    peer: str
    """Name of the node at the other end."""
    peer_site: str
    vni: int
    via: Via
    """internet: to the peer router's public address (NAT 1:1); lan: to a node on the same site LAN."""
    local: str
    """Private underlay address the tunnel binds."""
    remote: str | None
    """Peer's underlay address for via=lan; None for via=internet (the peer's public address is known
    only once reserved: see node_config)."""
    standby_for: str | None = None
    """Two hubs: the tunnel this one stands in for. It floods only while that one is down (BFD), so that a broadcast
    takes one tree at any time: a spoke's tunnel to the standby hub stands in for its tunnel to the hub, and the
    standby hub's tunnels to spokes stand in for its tunnel to the hub."""


@dataclass(frozen=True)
class Node:
    name: str
    site: str
    platform: Platform
    kind: Kind
    role: Role
    ipv4: str
    ipv6: str
    mac: str
    wan_ip: str | None
    """Router only: private address on the WAN subnet (NIC 0)."""
    lan_ip: str
    """Private address on the LAN subnet (router NIC 1, client NIC 0)."""
    lan_prefix: int
    mgmt_ip: str | None
    """vSphere client only: address on the management port group."""
    tunnels: tuple[Tunnel, ...]
    containers: tuple[Container, ...]

    @property
    def overlay_ipv4(self) -> str:
        return self.ipv4.split("/")[0]

    @property
    def overlay_ipv6(self) -> str:
        return self.ipv6.split("/")[0]


@dataclass(frozen=True)
class Plan:
    config: OverlayConfig
    hub: str
    nodes: tuple[Node, ...]
    mtu: int
    """Overlay MTU of every bridge, tunnel, container and client interface."""
    path_mtu: int
    """Smallest underlay MTU of the sites."""
    overhead: int
    port: int
    """UDP port of the chosen protocol."""

    @property
    def protocol(self) -> Protocol:
        return self.config.protocol

    def fewer_peers_fix(self, site: str) -> str:
        """How to give a site's router fewer peer routers (the fix of a rule limit that grows with peers)."""
        if self.config.topology == "full-mesh":
            return "use topology hub-and-spoke (a spoke router then has one peer, the hub), or fewer sites"
        if self.config.topology == "point-to-point":
            return "point-to-point has one peer: this limit is not about peers"
        if self.router(site).role in ("hub", "standby"):
            return "make another site the hub (or the standby hub) or give this hub fewer peers"
        if self.standby is not None:
            return "a spoke has two peers, the hubs: this limit is not about peers"
        return "a spoke has one peer, the hub: this limit is not about peers"

    @property
    def standby(self) -> str | None:
        """The standby hub's site (None: one hub)."""
        return self.config.standby_hub or None

    def split_horizon(self, node: Node) -> bool:
        """Whether this router's tunnels must not forward to each other: each is then an isolated bridge port, so a
        frame that came from one peer router never goes out to another. In a full mesh, so that a flooded frame
        reaches every router once; with two hubs, on every spoke, so that a spoke never relays between the hubs.
        A hub (and a standby hub) forwards between its spokes' tunnels: there it stays off."""
        return self.config.topology == "full-mesh" or (self.standby is not None and node.role == "spoke")

    def switch_waves(self) -> tuple[tuple[str, ...], ...]:
        """Routers in the order they switch to new tunnels in a make-before-break change (overlay_node.transition):
        the hub first, then every other router at once. Any mix of switched and unswitched routers then delivers: an
        unswitched router still sends through the old hub, which has kept its tunnels; a switched one sends through
        the new hub, whose MAC table already points every spoke down its own tunnel. Had the old hub switched before
        the new one, each would send the other's spokes' frames to the other. Without a hub, all at once."""
        routers = tuple(r.name for r in self.routers())
        if self.config.topology != "hub-and-spoke":
            return (routers,)
        hub = self.router(self.hub).name
        return ((hub,), tuple(r for r in routers if r != hub))

    @property
    def encrypted(self) -> bool:
        return self.config.encryption == "ipsec"

    def router_pairs(self) -> tuple[tuple[str, str], ...]:
        """Every pair of sites whose routers tunnel across the internet, each once (site-id order)."""
        pairs: list[tuple[str, str]] = []
        for r in self.routers():
            for t in r.tunnels:
                if t.via == "internet" and self.site_id(r.site) < self.site_id(t.peer_site):
                    pairs.append((r.site, t.peer_site))
        return tuple(pairs)

    def site_id(self, site: str) -> int:
        return self.config.site(site).site_id

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def router(self, site: str) -> Node:
        return self.node(router_name(site))

    def client(self, site: str) -> Node:
        return self.node(client_name(site))

    def routers(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.kind == "router")

    def peer_sites(self, site: str) -> tuple[str, ...]:
        """Sites whose routers this site's router tunnels with across the internet."""
        return tuple(t.peer_site for t in self.router(site).tunnels if t.via == "internet")

    def address_owners(self) -> dict[str, str]:
        """Every overlay address (IPv4 and IPv6) -> its node's or container's name."""
        return {address: owner for owner, v4, v6 in self.overlay_addresses() for address in (v4, v6)}

    def overlay_addresses(self) -> list[tuple[str, str, str]]:
        """(owner, ipv4, ipv6) of every node and container."""
        out = [(n.name, n.overlay_ipv4, n.overlay_ipv6) for n in self.nodes]
        for n in self.nodes:
            out += [(c.name, c.ipv4.split("/")[0], c.ipv6.split("/")[0]) for c in n.containers]
        return out

    def tunnel_map(self) -> dict[str, list[str]]:
        """node name -> names of the nodes it tunnels to."""
        return {n.name: [t.peer for t in n.tunnels] for n in self.nodes}


def router_name(site: str) -> str:
    return f"{site}-router"


def client_name(site: str) -> str:
    return f"{site}-client"


def _host(net: ipaddress.IPv4Network, offset: int) -> str:
    return str(net.network_address + offset)


def _overlay(cfg: OverlayConfig, site: SiteConfig, host: int) -> tuple[str, str]:
    v4 = cfg.overlay_ipv4.network_address + SITE_BLOCK * site.site_id + host
    v6 = cfg.overlay_ipv6.network_address + (site.site_id << 16) + host
    return f"{v4}/{cfg.overlay_ipv4.prefixlen}", f"{v6}/{cfg.overlay_ipv6.prefixlen}"


def build_plan(cfg: OverlayConfig) -> Plan:
    """Roles, tunnels, VNIs, addresses and MTU for every node of the overlay."""
    overhead = encapsulation_overhead(cfg.protocol, 4, cfg.encryption)
    path_mtu = min(s.underlay_mtu for s in cfg.sites)
    mtu = cfg.mtu or path_mtu - overhead
    by_name = {s.name: s for s in cfg.sites}
    hub = by_name[cfg.hub]
    nodes: list[Node] = []
    hub_tunnel = f"ovl-r{hub.site_id}"
    for site in cfg.sites:
        wan_ip = _host(site.wan_cidr, 10)
        router_lan = _host(site.lan_cidr, 10)
        client_lan = _host(site.lan_cidr, 20)
        if cfg.topology in ("point-to-point", "full-mesh"):
            role: Role = "peer"
            peers = [s for s in cfg.sites if s.name != site.name]
        elif site.name == hub.name:
            role = "hub"
            peers = [s for s in cfg.sites if s.name != hub.name]
        elif site.name == cfg.standby_hub:
            role = "standby"
            peers = [s for s in cfg.sites if s.name != site.name]
        else:
            role = "spoke"
            peers = [hub, *(s for s in cfg.sites if s.name == cfg.standby_hub)]

        def stands_in(p: SiteConfig, role: Role = role) -> str | None:
            if role == "spoke" and p.name == cfg.standby_hub:
                return hub_tunnel
            if role == "standby" and p.name != hub.name:
                return hub_tunnel
            return None

        tunnels = [
            Tunnel(
                name=f"ovl-r{p.site_id}",
                peer=router_name(p.name),
                peer_site=p.name,
                vni=tunnel_vni(cfg.vni, site.site_id, p.site_id),
                via="internet",
                local=wan_ip,
                remote=None,
                standby_for=stands_in(p),
            )
            for p in peers
        ]
        tunnels.append(
            Tunnel(
                name=f"ovl-c{site.site_id}",
                peer=client_name(site.name),
                peer_site=site.name,
                vni=tunnel_vni(cfg.vni, site.site_id),
                via="lan",
                local=router_lan,
                remote=client_lan,
            )
        )
        containers = []
        for i in range(1, cfg.containers_per_router + 1):
            v4, v6 = _overlay(cfg, site, FIRST_CONTAINER_HOST + i - 1)
            containers.append(
                Container(
                    name=f"{site.name}-c{i}",
                    link=f"ovl-k{i}",
                    ipv4=v4,
                    ipv6=v6,
                    mac=overlay_mac(site.site_id, FIRST_CONTAINER_HOST + i - 1),
                )
            )
        r4, r6 = _overlay(cfg, site, ROUTER_HOST)
        nodes.append(
            Node(
                name=router_name(site.name),
                site=site.name,
                platform=site.platform,
                kind="router",
                role=role,
                ipv4=r4,
                ipv6=r6,
                mac=overlay_mac(site.site_id, ROUTER_HOST),
                wan_ip=wan_ip,
                lan_ip=router_lan,
                lan_prefix=site.lan_cidr.prefixlen,
                mgmt_ip=None,
                tunnels=tuple(tunnels),
                containers=tuple(containers),
            )
        )
        c4, c6 = _overlay(cfg, site, CLIENT_HOST)
        mgmt = site.setting("mgmtCidr")
        nodes.append(
            Node(
                name=client_name(site.name),
                site=site.name,
                platform=site.platform,
                kind="client",
                role="client",
                ipv4=c4,
                ipv6=c6,
                mac=overlay_mac(site.site_id, CLIENT_HOST),
                wan_ip=None,
                lan_ip=client_lan,
                lan_prefix=site.lan_cidr.prefixlen,
                mgmt_ip=_host(ipaddress.IPv4Network(mgmt), 20) if mgmt else None,
                tunnels=(
                    Tunnel(
                        name=f"ovl-r{site.site_id}",
                        peer=router_name(site.name),
                        peer_site=site.name,
                        vni=tunnel_vni(cfg.vni, site.site_id),
                        via="lan",
                        local=client_lan,
                        remote=router_lan,
                    ),
                ),
                containers=(),
            )
        )
    return Plan(
        config=cfg,
        hub=hub.name,
        nodes=tuple(nodes),
        mtu=mtu,
        path_mtu=path_mtu,
        overhead=overhead,
        port=TUNNEL_PORT[cfg.protocol],
    )


class MissingTunnelKey(KeyError):
    pass


def node_config(
    plan: Plan,
    node_name: str,
    public_ips: Mapping[str, str],
    container_runtime: Literal["docker", "netns"] = "docker",
    pair_keys: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The JSON document the node script applies on one node: what the in-place push installs.

    `public_ips` maps site name -> the router's public IPv4. `container_runtime` is docker on every VM; the lab's
    kernel VM (no Docker) uses plain network namespaces. `pair_keys` (encryption: ipsec) maps
    pair_key_name(a, b) -> PAIR_KEY_BYTES random bytes as hex, for at least this router's pairs; the document
    then carries key material and must be handled as a secret. Pure: same inputs, same document.
    """
    return _node_doc(plan, plan.node(node_name), public_ips, container_runtime, pair_keys or {}, bootstrap=False)


def bootstrap_config(plan: Plan, node_name: str, container_runtime: Literal["docker", "netns"] = "docker") -> dict[str, Any]:
    """The node config a VM boots with (its user-data), before the first push brings the full one.

    It holds what the node's own site needs: NICs, forwarding, the bridge and its addresses, the containers and
    the site-local client tunnel; no tunnel across the internet, no peer address, no key and no role. So the
    user-data names no other site (its size does not grow with the overlay, and a hub swap or a new site does not
    touch it) and holds no credential: tunnel keys reach a node only through the SSH push (node_config).
    """
    return _node_doc(plan, plan.node(node_name), {}, container_runtime, {}, bootstrap=True)


def _node_doc(
    plan: Plan,
    node: Node,
    public_ips: Mapping[str, str],
    container_runtime: Literal["docker", "netns"],
    pair_keys: Mapping[str, str],
    bootstrap: bool,
) -> dict[str, Any]:
    tunnels = []
    for t in node.tunnels:
        if bootstrap and t.via == "internet":
            continue
        remote = t.remote if t.via == "lan" else public_ips[t.peer_site]
        entry: dict[str, Any] = {"name": t.name, "peer": t.peer, "vni": t.vni, "local": t.local, "remote": remote}
        if plan.split_horizon(node) and t.via == "internet":
            entry["isolated"] = True
        if t.standby_for is not None:
            entry["standby_for"] = t.standby_for
        if plan.encrypted and t.via == "internet":
            entry["psk"] = tunnel_psk(node, t, pair_keys)
        tunnels.append(entry)
    ports = {t["name"] for t in tunnels}
    cfg = plan.config
    doc: dict[str, Any] = {
        "version": 1,
        "node": node.name,
        "site": node.site,
        "kind": node.kind,
        **({} if bootstrap else {"role": node.role}),
        "protocol": cfg.protocol,
        "port": plan.port,
        "mtu": plan.mtu,
        "bridge": {"name": BRIDGE, "mac": node.mac, "ipv4": node.ipv4, "ipv6": node.ipv6},
        "lan": {
            "address": f"{node.lan_ip}/{node.lan_prefix}",
            "configure": node.kind == "router" and PLATFORMS[node.platform].payload_configures_router_lan,
        },
        "forwarding": node.kind == "router",
        "open_host_firewall": PLATFORMS[node.platform].closed_host_firewall,
        "tunnels": tunnels,
        "fdb": [e if e.get("backup") in ports else {k: v for k, v in e.items() if k != "backup"} for e in mac_table(plan, node) if e["port"] in ports],
        "containers": {
            "runtime": container_runtime,
            "image": cfg.container_image,
            "items": [{"name": c.name, "link": c.link, "ipv4": c.ipv4, "ipv6": c.ipv6, "mac": c.mac} for c in node.containers],
        },
    }
    if plan.standby is not None and node.kind == "router" and not bootstrap:
        doc["bfd"] = {
            "mac": overlay_mac(plan.site_id(node.site), PROBE_HOST),
            "address": probe_address(plan.site_id(node.site)),
            "interval_ms": BFD_INTERVAL_MS,
            "multiplier": BFD_MULTIPLIER,
            "peers": [
                {"tunnel": t.name, "address": probe_address(plan.site_id(t.peer_site)), "mac": overlay_mac(plan.site_id(t.peer_site), PROBE_HOST)}
                for t in node.tunnels
                if t.via == "internet"
            ],
        }
    if plan.encrypted and node.kind == "router" and not bootstrap:
        doc["ipsec"] = {
            "id": public_ips[node.site],
            "ike_proposals": IKE_PROPOSALS,
            "esp_proposals": ESP_PROPOSALS,
            "rekey_seconds": cfg.ipsec_rekey_seconds,
            "rekey_packets": REKEY_PACKETS,
            "replay_window": REPLAY_WINDOW,
            "dpd_seconds": DPD_SECONDS,
        }
    return doc


def tunnel_psk(node: Node, t: Tunnel, pair_keys: Mapping[str, str]) -> str:
    """The pre-shared key (hex) that authenticates IKEv2 between the routers of one encrypted tunnel."""
    name = pair_key_name(node.site, t.peer_site)
    material = pair_keys.get(name)
    if material is None:
        raise MissingTunnelKey(f"no IPsec key for the router pair {name}")
    if len(bytes.fromhex(material)) != PAIR_KEY_BYTES:
        raise ValueError(f"the IPsec key of {name} has {len(material) // 2} bytes, expected {PAIR_KEY_BYTES}")
    return material.lower()


def mac_table(plan: Plan, node: Node) -> list[dict[str, Any]]:
    """Static bridge entries of a router: every planned MAC of another site -> the tunnel toward it, with the
    planned addresses of the host that owns it (`ips`: the router answers ARP and neighbour discovery for them).

    Every overlay MAC is planned, so no router has to learn where one lives. Learning alone goes wrong on a hub
    swap: while the nodes converge one by one, the new hub hears a spoke's frames through the old hub and learns
    them on that tunnel, and a quiet host stays unreachable until the entry ages out (300 s). The entries are
    "sticky": traffic can never move them. Clients have a single tunnel and need none.

    With two hubs an entry may have a `backup` tunnel, which the node moves it to while BFD finds its own tunnel
    down and the backup up: on a spoke, whatever lies behind one hub has the other hub's tunnel as backup; on a hub,
    a spoke's MACs have the other hub's tunnel as backup (a spoke that lost this hub is reached through the other).
    """
    if node.kind != "router":
        return []
    ports = {t.peer_site: t.name for t in node.tunnels if t.via == "internet"}
    client_port = next(t.name for t in node.tunnels if t.via == "lan")
    hubs = [h for h in (plan.hub, plan.standby) if h is not None]
    out: list[dict[str, Any]] = []
    for other in plan.nodes:
        if other.site == node.site:
            if other.kind == "client":
                out.append({"mac": other.mac, "port": client_port})
            continue
        port = ports.get(other.site) or ports.get(plan.hub)
        if port is None:
            continue  # not reachable from this router in this topology
        backup = None
        if plan.standby is not None and node.role == "spoke":
            backup = ports[plan.standby] if port == ports[plan.hub] else ports[plan.hub]
        elif plan.standby is not None and node.role in ("hub", "standby") and other.site not in hubs:
            backup = ports[plan.standby if node.role == "hub" else plan.hub]
        hosts = [(other.mac, other.ipv4, other.ipv6), *((c.mac, c.ipv4, c.ipv6) for c in other.containers)]
        for mac, ipv4, ipv6 in hosts:
            ips = [ipv4.split("/")[0], ipv6.split("/")[0]]
            out.append({"mac": mac, "port": port, "ips": ips, **({"backup": backup} if backup else {})})
    if plan.standby is not None:
        # A peer's BFD probe only down the direct tunnel: a session tests that tunnel and nothing else.
        out += [{"mac": overlay_mac(plan.site_id(site), PROBE_HOST), "port": port} for site, port in ports.items()]
    return out


def config_digest(doc: Mapping[str, Any]) -> str:
    """Stable digest of a node config (what a re-apply is triggered by)."""
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
