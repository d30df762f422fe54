"""The pure plan: roles, tunnels, VNIs, addresses, MTU — unit and property tests (no Pulumi)."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.configs import stack_with_sites
from multicloud_overlay.cloudinit import overlay_node
from multicloud_overlay.components.stack_file import read_stack_file
from multicloud_overlay.overlay.config import PLATFORMS, parse_config
from multicloud_overlay.overlay.encapsulation import ESP_NATT_OVERHEAD, PAIR_KEY_BYTES, REKEY_PACKETS, encapsulation_overhead
from multicloud_overlay.overlay.plan import (
    MissingTunnelKey,
    Plan,
    build_plan,
    mac_table,
    node_config,
    pair_key_name,
    tunnel_vni,
)
from multicloud_overlay.overlay.security import PeerRouter, router_rules
from tests.harness import ROOT, mock_pair_keys

DEV = read_stack_file(ROOT / "Pulumi.dev.yaml")


def config_of(sites: dict[str, tuple[str, int]], hub: str, **top: Any) -> dict[str, Any]:
    return stack_with_sites(sites, hub, str(ROOT / "Pulumi.dev.yaml"), **top)


def plan_of(raw: dict[str, Any]) -> Plan:
    return build_plan(parse_config(raw))


DEV_PLAN = plan_of(copy.deepcopy(DEV))


def addresses(plan: Plan) -> dict[str, tuple[str, str]]:
    return {owner: (v4, v6) for owner, v4, v6 in plan.overlay_addresses()}


# ---------------------------------------------------------------- examples


def test_dev_plan_roles_and_tunnels() -> None:
    plan = DEV_PLAN
    hub = plan.router("aws")
    assert hub.role == "hub"
    assert sorted(t.peer for t in hub.tunnels) == sorted(
        ["aws-client", "azure-router", "gcp-router", "oci-router", "alicloud-router", "vsphere-router"]
    )
    for site in ("azure", "gcp", "oci", "alicloud", "vsphere"):
        spoke = plan.router(site)
        assert spoke.role == "spoke"
        assert [t.peer for t in spoke.tunnels] == ["aws-router", f"{site}-client"]
        client = plan.client(site)
        assert [t.peer for t in client.tunnels] == [f"{site}-router"] and client.tunnels[0].via == "lan"
    assert len(plan.nodes) == 12 and sum(len(n.containers) for n in plan.nodes) == 18


def test_dev_plan_addresses_are_readable_per_site() -> None:
    r = DEV_PLAN.router("gcp")
    assert (r.ipv4, r.ipv6) == ("10.250.3.1/16", "fd00:6f76:6c00::3:1/64")
    assert DEV_PLAN.client("gcp").ipv4 == "10.250.3.2/16"
    assert [c.ipv4 for c in r.containers] == ["10.250.3.10/16", "10.250.3.11/16", "10.250.3.12/16"]
    assert r.wan_ip == "10.3.1.10" and r.lan_ip == "10.3.2.10" and DEV_PLAN.client("gcp").lan_ip == "10.3.2.20"


def test_mtu_is_smallest_underlay_minus_overhead() -> None:
    # Azure's conservative 1400 is the narrowest path of the dev stack; IPsec (the default) costs 45 more bytes.
    assert DEV_PLAN.path_mtu == 1400 and DEV_PLAN.overhead == 50 + 45 and DEV_PLAN.mtu == 1305
    raw = copy.deepcopy(DEV)
    raw["encryption"] = "none"
    assert plan_of(raw).overhead == 50 and plan_of(raw).mtu == 1350
    del raw["sites"]["azure"]
    assert plan_of(raw).mtu == 1460 - 50  # GCP next
    raw["sites"]["gcp"]["underlayMtu"] = 1500
    assert plan_of(raw).mtu == 1450
    raw["mtu"] = 1300
    assert plan_of(raw).mtu == 1300


def test_encapsulation_overhead() -> None:
    assert encapsulation_overhead("vxlan", 4) == 50
    assert encapsulation_overhead("vxlan", 6) == 70
    assert encapsulation_overhead("geneve", 4) == 50
    assert encapsulation_overhead("geneve", 6) == 70


def test_vni_per_tunnel_is_symmetric_and_hub_independent() -> None:
    assert tunnel_vni(4000, 3, 1) == tunnel_vni(4000, 1, 3) == 4000 + 1003
    assert tunnel_vni(4000, 3) == 4003
    swapped = plan_of({**copy.deepcopy(DEV), "hub": "gcp"})
    # The aws<->gcp tunnel exists under both hubs with the same VNI.
    assert {t.vni for t in DEV_PLAN.router("aws").tunnels if t.peer == "gcp-router"} == {
        t.vni for t in swapped.router("gcp").tunnels if t.peer == "aws-router"
    }


def test_point_to_point_peers_each_other() -> None:
    raw = config_of({"aws": ("aws", 1), "gcp": ("gcp", 3)}, "aws", topology="point-to-point")
    plan = plan_of(raw)
    assert plan.router("aws").role == "peer" and plan.router("gcp").role == "peer"
    assert plan.peer_sites("aws") == ("gcp",) and plan.peer_sites("gcp") == ("aws",)


def test_full_mesh_tunnels_every_router_pair_directly_with_split_horizon() -> None:
    raw = copy.deepcopy(DEV)
    raw["topology"] = "full-mesh"
    plan = plan_of(raw)
    sites = [s.name for s in plan.config.sites]
    assert all(plan.split_horizon(r) for r in plan.routers()) and not any(DEV_PLAN.split_horizon(r) for r in DEV_PLAN.routers())
    for site in sites:
        router = plan.router(site)
        assert router.role == "peer" and sorted(plan.peer_sites(site)) == sorted(s for s in sites if s != site)
        # Every remote MAC is pinned to the direct tunnel toward its site: no frame takes a detour.
        table = {e["mac"]: e["port"] for e in mac_table(plan, router)}
        for other in sites:
            if other != site:
                port = f"ovl-r{plan.config.site(other).site_id}"
                assert table[plan.router(other).mac] == port and table[plan.client(other).mac] == port
        doc = node_config(plan, router.name, {s: f"198.51.100.{plan.config.site(s).site_id}" for s in sites}, pair_keys=mock_pair_keys(plan))
        # Router tunnels are isolated bridge ports (split horizon); the client tunnel is not (it must reach them all).
        assert {t["name"]: t.get("isolated", False) for t in doc["tunnels"]} == {
            t.name: t.via == "internet" for t in router.tunnels
        }
        assert overlay_node.validate(doc) == []
    # Each pair once, the same VNI at both ends (as hub-and-spoke's pairs, so switching topology keeps them).
    pairs = plan.router_pairs()
    assert len(pairs) == len(sites) * (len(sites) - 1) // 2
    hub_vnis = {frozenset((DEV_PLAN.hub, t.peer_site)): t.vni for t in DEV_PLAN.router(DEV_PLAN.hub).tunnels if t.via == "internet"}
    mesh_vnis = {frozenset((s, t.peer_site)): t.vni for s in sites for t in plan.router(s).tunnels if t.via == "internet"}
    assert all(mesh_vnis[k] == v for k, v in hub_vnis.items())
    # Hub-and-spoke configs carry no isolation key: their documents (and digests) are as before.
    hub_doc = node_config(DEV_PLAN, "aws-router", {s: "198.51.100.1" for s in sites}, pair_keys=mock_pair_keys(DEV_PLAN))
    assert not any("isolated" in t for t in hub_doc["tunnels"])
    # The validator refuses a malformed flag.
    bad = node_config(plan, "aws-router", {s: "198.51.100.1" for s in sites}, pair_keys=mock_pair_keys(plan))
    bad["tunnels"][0]["isolated"] = "yes"
    assert any("isolated" in p for p in overlay_node.validate(bad))


def test_node_config_uses_public_addresses_for_internet_tunnels_only() -> None:
    ips = {s.name: f"198.51.100.{s.site_id}" for s in DEV_PLAN.config.sites}
    doc = node_config(DEV_PLAN, "gcp-router", ips, pair_keys=mock_pair_keys(DEV_PLAN))
    by_peer = {t["peer"]: t for t in doc["tunnels"]}
    assert by_peer["aws-router"]["remote"] == "198.51.100.1" and by_peer["aws-router"]["local"] == "10.3.1.10"
    assert by_peer["gcp-client"]["remote"] == "10.3.2.20" and by_peer["gcp-client"]["local"] == "10.3.2.10"
    assert doc["mtu"] == 1305 and doc["port"] == 4789 and doc["forwarding"] is True
    client = node_config(DEV_PLAN, "gcp-client", ips, pair_keys=mock_pair_keys(DEV_PLAN))
    assert client["forwarding"] is False and client["containers"]["items"] == []
    assert node_config(DEV_PLAN, "oci-router", ips, pair_keys=mock_pair_keys(DEV_PLAN))["open_host_firewall"] is True
    assert node_config(DEV_PLAN, "oci-router", ips, pair_keys=mock_pair_keys(DEV_PLAN))["lan"]["configure"] is True
    assert node_config(DEV_PLAN, "gcp-router", ips, pair_keys=mock_pair_keys(DEV_PLAN))["lan"]["configure"] is False


# ---------------------------------------------------------------- properties

site_names = st.lists(st.from_regex(r"[a-z][a-z0-9]{0,7}", fullmatch=True), min_size=2, max_size=9, unique=True)


@st.composite
def overlays(draw: st.DrawFn) -> tuple[dict[str, tuple[str, int]], str]:
    names = draw(site_names)
    ids = draw(st.lists(st.integers(1, 199), min_size=len(names), max_size=len(names), unique=True))
    platforms = draw(st.lists(st.sampled_from(PLATFORMS), min_size=len(names), max_size=len(names)))
    sites = {n: (p, i) for n, p, i in zip(names, platforms, ids, strict=True)}
    return sites, draw(st.sampled_from(names))


@settings(max_examples=60, deadline=None)
@given(overlays(), st.integers(0, 6))
def test_addresses_unique_inside_prefixes_never_network_or_broadcast(
    overlay: tuple[dict[str, tuple[str, int]], str], containers: int
) -> None:
    sites, hub = overlay
    plan = plan_of(config_of(sites, hub, containersPerRouter=containers))
    v4net, v6net = plan.config.overlay_ipv4, plan.config.overlay_ipv6
    owners = plan.overlay_addresses()
    assert len(owners) == 2 * len(sites) * 1 + containers * len(sites)
    v4s = [ipaddress.ip_address(v4) for _, v4, _ in owners]
    v6s = [ipaddress.ip_address(v6) for _, _, v6 in owners]
    assert len(set(v4s)) == len(v4s) and len(set(v6s)) == len(v6s)
    for a in v4s:
        assert a in v4net and a not in (v4net.network_address, v4net.broadcast_address)
    for a in v6s:
        assert a in v6net and a != v6net.network_address
    macs = [n.mac for n in plan.nodes] + [c.mac for n in plan.nodes for c in n.containers]
    assert len(set(macs)) == len(macs)
    assert all(int(m.split(":")[0], 16) & 0b11 == 0b10 for m in macs)  # locally administered unicast


@settings(max_examples=60, deadline=None)
@given(overlays(), st.data())
def test_addresses_stable_under_hub_swap_and_protocol_switch(overlay: tuple[dict[str, tuple[str, int]], str], data: st.DataObject) -> None:
    sites, hub = overlay
    base = plan_of(config_of(sites, hub))
    other_hub = data.draw(st.sampled_from(sorted(sites)))
    swapped = plan_of(config_of(sites, other_hub, protocol="geneve"))
    assert addresses(base) == addresses(swapped)
    assert {n.name: (n.wan_ip, n.lan_ip, n.mac) for n in base.nodes} == {n.name: (n.wan_ip, n.lan_ip, n.mac) for n in swapped.nodes}


@settings(max_examples=60, deadline=None)
@given(overlays(), st.integers(200, 250))
def test_addresses_stable_when_a_site_is_added_or_removed(overlay: tuple[dict[str, tuple[str, int]], str], new_id: int) -> None:
    sites, hub = overlay
    base = addresses(plan_of(config_of(sites, hub)))
    grown = addresses(plan_of(config_of({**sites, "zzznew": ("aws", new_id)}, hub)))
    assert {k: v for k, v in grown.items() if not k.startswith("zzznew-")} == base
    removable = [s for s in sites if s != hub]
    if len(sites) > 2:
        gone = removable[0]
        shrunk = addresses(plan_of(config_of({k: v for k, v in sites.items() if k != gone}, hub)))
        assert shrunk == {k: v for k, v in base.items() if not k.startswith(f"{gone}-")}


@settings(max_examples=60, deadline=None)
@given(overlays())
def test_tunnels_pair_up_with_one_vni_per_node_tunnel(overlay: tuple[dict[str, tuple[str, int]], str]) -> None:
    sites, hub = overlay
    plan = plan_of(config_of(sites, hub))
    ends: dict[frozenset[str], set[int]] = {}
    for node in plan.nodes:
        vnis = [t.vni for t in node.tunnels]
        assert len(set(vnis)) == len(vnis), f"{node.name} reuses a VNI"
        names = [t.name for t in node.tunnels]
        assert len(set(names)) == len(names) and all(len(n) <= 15 for n in names)
        for t in node.tunnels:
            ends.setdefault(frozenset((node.name, t.peer)), set()).add(t.vni)
    # Every tunnel is configured at both ends, with the same VNI.
    for pair, vnis in ends.items():
        a, b = sorted(pair)
        assert b in [t.peer for t in plan.node(a).tunnels] and a in [t.peer for t in plan.node(b).tunnels]
        assert len(vnis) == 1
    spokes = [s for s in sites if s != hub]
    assert sorted(plan.peer_sites(hub)) == sorted(spokes)
    assert all(plan.peer_sites(s) == (hub,) for s in spokes)


def test_plan_is_a_pure_function_of_the_config() -> None:
    again = plan_of(copy.deepcopy(DEV))
    assert again == DEV_PLAN
    assert dataclasses.replace(DEV_PLAN) == DEV_PLAN


def test_mac_table_pins_every_remote_mac_to_its_tunnel() -> None:
    hub, spoke = DEV_PLAN.router("aws"), DEV_PLAN.router("gcp")
    hub_table = {e["mac"]: e["port"] for e in mac_table(DEV_PLAN, hub)}
    spoke_table = {e["mac"]: e["port"] for e in mac_table(DEV_PLAN, spoke)}
    gcp_macs = [DEV_PLAN.router("gcp").mac, DEV_PLAN.client("gcp").mac] + [c.mac for c in DEV_PLAN.router("gcp").containers]
    assert all(hub_table[m] == "ovl-r3" for m in gcp_macs)
    assert hub_table[DEV_PLAN.client("aws").mac] == "ovl-c1"
    assert hub.mac not in hub_table and all(c.mac not in hub_table for c in hub.containers)
    # A spoke sends everything remote to the hub, and its own client down its client tunnel.
    assert {p for m, p in spoke_table.items() if m != DEV_PLAN.client("gcp").mac} == {"ovl-r1"}
    assert spoke_table[DEV_PLAN.client("gcp").mac] == "ovl-c3"
    assert len(hub_table) == len(spoke_table) == 30 - 1 - 3  # every endpoint but the router and its containers
    assert mac_table(DEV_PLAN, DEV_PLAN.client("gcp")) == []


def test_every_remote_host_entry_carries_its_planned_addresses_for_the_router_to_answer_for() -> None:
    """The router answers ARP and neighbour discovery for the hosts behind its router tunnels: each of their entries
    names both overlay addresses of the host that owns the MAC; its own client's entry (not behind a router tunnel)
    names none."""
    spoke = DEV_PLAN.router("gcp")
    table = {e["mac"]: e for e in mac_table(DEV_PLAN, spoke)}
    hosts = [n for n in DEV_PLAN.nodes if n.site != "gcp"]
    owners = {n.mac: (n.ipv4, n.ipv6) for n in hosts} | {c.mac: (c.ipv4, c.ipv6) for n in hosts for c in n.containers}
    assert len(owners) == 30 - 5
    for mac, (ipv4, ipv6) in owners.items():
        assert table[mac]["ips"] == [ipv4.split("/")[0], ipv6.split("/")[0]]
    assert "ips" not in table[DEV_PLAN.client("gcp").mac]


# ---------------------------------------------------------------- encryption: ipsec


def ipsec_plan(hub: str = "aws", topology: str = "hub-and-spoke") -> Plan:
    raw = copy.deepcopy(DEV)
    raw.update(encryption="ipsec", hub=hub, topology=topology)
    if topology == "point-to-point":
        raw["sites"] = {k: v for k, v in raw["sites"].items() if k in ("aws", "gcp")}
    return plan_of(raw)


def pair_keys(plan: Plan) -> dict[str, str]:
    return {pair_key_name(a, b): hashlib.shake_256(pair_key_name(a, b).encode()).hexdigest(PAIR_KEY_BYTES) for a, b in plan.router_pairs()}


def test_ipsec_costs_the_esp_in_udp_overhead_in_the_mtu() -> None:
    plan = ipsec_plan()
    assert ESP_NATT_OVERHEAD == 45  # UDP 8 + SPI/seq 8 + IV 8 + pad <= 3 + trailer 2 + ICV 16
    assert plan.overhead == encapsulation_overhead("vxlan", 4) + 45
    assert plan.mtu == 1400 - 50 - 45 == 1305  # azure's 1400 underlay


def test_ipsec_pairs_are_the_router_tunnels_each_once() -> None:
    for hub in ("aws", "gcp"):
        plan = ipsec_plan(hub)
        pairs = plan.router_pairs()
        assert len(pairs) == len(set(pairs)) == len(plan.config.sites) - 1
        assert all(hub in pair for pair in pairs)
        tunnels = {frozenset((r.site, t.peer_site)) for r in plan.routers() for t in r.tunnels if t.via == "internet"}
        assert {frozenset(p) for p in pairs} == tunnels
    assert len(ipsec_plan("aws", "point-to-point").router_pairs()) == 1


def test_both_ends_of_a_pair_share_one_key_and_name_each_other() -> None:
    plan = ipsec_plan()
    keys = pair_keys(plan)
    ips = {s.name: f"203.0.113.{s.site_id}" for s in plan.config.sites}
    docs = {r.site: node_config(plan, r.name, ips, pair_keys=keys) for r in plan.routers()}
    psks: list[str] = []
    for a, b in plan.router_pairs():
        ta = next(t for t in docs[a]["tunnels"] if t["peer"] == f"{b}-router")
        tb = next(t for t in docs[b]["tunnels"] if t["peer"] == f"{a}-router")
        assert ta["psk"] == tb["psk"] and len(bytes.fromhex(ta["psk"])) == PAIR_KEY_BYTES
        # Each side's IKE identity is its public address, the one the other side dials.
        assert docs[a]["ipsec"]["id"] == tb["remote"] == ips[a] and docs[b]["ipsec"]["id"] == ta["remote"] == ips[b]
        psks.append(ta["psk"])
    assert len(psks) == len(set(psks))  # one key per pair
    for doc in docs.values():
        assert doc["ipsec"] == {
            "id": ips[doc["site"]],
            "ike_proposals": "aes256gcm16-prfsha384-x25519",
            "esp_proposals": "aes256gcm16-x25519",
            "rekey_seconds": 3600,
            "rekey_packets": REKEY_PACKETS,
            "replay_window": 1024,
            "dpd_seconds": 10,
        }
        assert all("psk" not in t for t in doc["tunnels"] if t["name"].startswith("ovl-c"))  # the LAN tunnel stays clear
    client = node_config(plan, "aws-client", ips, pair_keys=keys)
    assert "ipsec" not in client and all("psk" not in t for t in client["tunnels"])


def test_rekeying_comes_well_before_the_sequence_numbers_run_out() -> None:
    # 32-bit ESP sequence numbers (no ESN): the kernel stops sending on an SA after 2^32 - 1 packets; strongSwan's
    # hard packet limit is 110 % of rekey_packets.
    assert REKEY_PACKETS * 1.1 < 2**32 / 2
    raw = copy.deepcopy(DEV)
    raw["ipsecRekeySeconds"] = 120
    doc = node_config(plan_of(raw), "aws-router", {s.name: "203.0.113.1" for s in DEV_PLAN.config.sites}, pair_keys=pair_keys(plan_of(raw)))
    assert doc["ipsec"]["rekey_seconds"] == 120


def test_unencrypted_plans_carry_no_key_material() -> None:
    raw = copy.deepcopy(DEV)
    raw["encryption"] = "none"
    clear = plan_of(raw)
    doc = node_config(clear, "aws-router", {s.name: "203.0.113.1" for s in clear.config.sites})
    assert "ipsec" not in doc and all("psk" not in t for t in doc["tunnels"])
    assert clear.router_pairs() and not clear.encrypted and clear.mtu == DEV_PLAN.mtu + 45
    assert DEV_PLAN.encrypted  # the default


def test_missing_or_short_keys_are_refused() -> None:
    plan = ipsec_plan()
    ips = {s.name: "203.0.113.1" for s in plan.config.sites}
    with pytest.raises(MissingTunnelKey, match="aws--azure"):
        node_config(plan, "aws-router", ips, pair_keys={})
    short = {k: v[:10] for k, v in pair_keys(plan).items()}
    with pytest.raises(ValueError, match="expected 72"):
        node_config(plan, "aws-router", ips, pair_keys=short)


def test_ipsec_rules_admit_nat_t_from_peers_instead_of_the_tunnel_port() -> None:
    plan = ipsec_plan()
    for site in (s.name for s in plan.config.sites):
        rules = {r.name: r for r in router_rules(plan, site)}
        for peer in plan.peer_sites(site):
            rule = rules[f"tunnel-from-{peer}"]
            assert (rule.protocol, rule.port, rule.source) == ("udp", 4500, PeerRouter(peer))
        assert rules["tunnel-from-lan"].port == plan.port  # the site-local tunnel stays clear
        assert not any(r.port == plan.port and isinstance(r.source, PeerRouter) for r in rules.values())
    raw = copy.deepcopy(DEV)
    raw["encryption"] = "none"
    clear = {r.name: r for r in router_rules(plan_of(raw), "aws")}
    assert clear["tunnel-from-gcp"].port == 4789


def test_the_hub_switches_first_then_every_other_router() -> None:
    assert DEV_PLAN.switch_waves() == (("aws-router",), ("azure-router", "gcp-router", "oci-router", "alicloud-router", "vsphere-router"))
    raw = copy.deepcopy(DEV)
    raw["topology"] = "full-mesh"
    assert plan_of(raw).switch_waves() == (tuple(r.name for r in DEV_PLAN.routers()),)
