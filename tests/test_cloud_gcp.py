"""GCP sites under Pulumi mocks: networks per NIC, reserved addresses, scoped firewall rules, user-data, names,
providers; and the building blocks used on their own."""

from __future__ import annotations

import configparser
import copy
import ipaddress
import re
from collections import Counter
from typing import Any

import pulumi
import pytest

from multicloud_overlay.cloudinit.render import payload_node_config, read_payload
from multicloud_overlay.components.clouds import gcp, gcp_traits
from multicloud_overlay.components.clouds.base import ResolvedRule
from multicloud_overlay.components.limits import site_problems
from multicloud_overlay.components.stack_file import read_stack_file
from multicloud_overlay.overlay.config import parse_config
from multicloud_overlay.overlay.encapsulation import TUNNEL_PORT
from multicloud_overlay.overlay.plan import bootstrap_config, build_plan
from multicloud_overlay.overlay.security import IngressRule, PeerRouter, is_open_to_world, site_rules
from tests.harness import ROOT, ProgramRun, Registered, plan_of, run_cached, run_standalone
from tests.mockdata import gcp as gcp_mock

NETWORK = "gcp:compute/network:Network"
SUBNETWORK = "gcp:compute/subnetwork:Subnetwork"
FIREWALL = "gcp:compute/firewall:Firewall"
ADDRESS = "gcp:compute/address:Address"
INSTANCE = "gcp:compute/instance:Instance"
PROVIDER = "pulumi:providers:gcp"
GET_IMAGE = "gcp:compute/getImage:getImage"
SITES = {"gcpa": ("europe-west1", "europe-west1-b"), "gcpb": ("us-central1", "us-central1-a"), "gcpc": ("asia-east1", "asia-east1-c")}
EXTRA_SITE = ("gcpd", ("southamerica-east1", "southamerica-east1-a"))
PROJECT = "overlay-test-project"


def gcp_config(sites: dict[str, tuple[str, str]] | None = None, hub: str = "gcpa", **top: Any) -> dict[str, Any]:
    """Pulumi.dev.yaml with only GCP sites (the other top-level keys kept)."""
    raw = read_stack_file(ROOT / "Pulumi.dev.yaml")
    chosen = sites or SITES
    raw["sites"] = {
        name: {
            "platform": "gcp",
            "siteId": i,
            "region": region,
            "zone": zone,
            "project": PROJECT,
            "vpcCidr": f"10.{30 + i}.0.0/16",
            "wanCidr": f"10.{30 + i}.1.0/24",
            "lanCidr": f"10.{30 + i}.2.0/24",
        }
        for i, (name, (region, zone)) in enumerate(chosen.items(), 1)
    }
    raw["hub"] = hub
    # Clear tunnels: these tests pin each rule's tunnel port in detail. The default (ipsec) is what
    # tests/test_platforms.py (every platform, each site as hub) and tests/test_limits_*.py (every platform as hub and
    # as spoke, registered resources against the recorded limits) deploy.
    top.setdefault("encryption", "none")
    raw.update(top)
    return raw


@pytest.fixture(scope="module")
def run() -> ProgramRun:
    return run_cached(gcp_config())


def site_resources(run: ProgramRun, site: str) -> list[Registered]:
    return run.descendants_of(one(run, "multicloud-overlay:index:Site", site).urn)


def one(run: ProgramRun, typ: str, name: str) -> Registered:
    found = [r for r in run.of_type(typ) if r.name == name]
    assert len(found) == 1, f"{len(found)} {typ} named {name}"
    return found[0]


def network_of_subnet(run: ProgramRun, subnet_id: str) -> str:
    """Mock ids are '<name>-id': the subnet's network input."""
    return one(run, SUBNETWORK, subnet_id.removesuffix("-id")).inputs["network"]


def firewalls(run: ProgramRun, node: str, nic: str) -> dict[str, dict[str, Any]]:
    prefix = f"{node}-{nic}-fw-"
    return {r.name.removeprefix(prefix): r.inputs for r in run.of_type(FIREWALL) if r.name.startswith(prefix)}


def public_ips(run: ProgramRun) -> dict[str, str]:
    return dict(run.outputs["publicIps"])


# --- networks ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("site", list(SITES))
def test_one_vpc_network_per_nic_with_dual_stack_subnets(run: ProgramRun, site: str) -> None:
    cfg = parse_config(gcp_config()).site(site)
    for nic, cidr, access in (("wan", cfg.wan_cidr, "EXTERNAL"), ("lan", cfg.lan_cidr, "INTERNAL")):
        network = one(run, NETWORK, f"{site}-{nic}-vpc").inputs
        assert network["autoCreateSubnetworks"] is False
        assert network["mtu"] == 1460 == cfg.underlay_mtu
        # INTERNAL (ULA) IPv6 on a subnet needs ULA internal IPv6 enabled on its network.
        assert network["enableUlaInternalIpv6"] is (access == "INTERNAL")
        subnet = one(run, SUBNETWORK, f"{site}-{nic}-subnet").inputs
        assert subnet["network"] == f"{site}-{nic}-vpc-id"
        assert subnet["ipCidrRange"] == str(cidr)
        assert subnet["region"] == SITES[site][0]
        assert subnet["stackType"] == "IPV4_IPV6"
        assert subnet["ipv6AccessType"] == access


def test_underlay_mtu_outside_gcp_range_is_refused() -> None:
    assert gcp.vpc_mtu(1460) == 1460
    assert gcp.vpc_mtu(8896) == 8896
    for bad in (1280, 1299, 8897, 9000):
        with pytest.raises(ValueError, match="underlayMtu"):
            gcp.vpc_mtu(bad, "gcpa")


def test_underlay_mtu_setting_sets_both_networks() -> None:
    raw = gcp_config()
    raw["sites"]["gcpb"]["underlayMtu"] = 1500
    run = run_cached(raw)
    assert one(run, NETWORK, "gcpb-wan-vpc").inputs["mtu"] == 1500
    assert one(run, NETWORK, "gcpb-lan-vpc").inputs["mtu"] == 1500
    assert one(run, NETWORK, "gcpa-wan-vpc").inputs["mtu"] == 1460


# --- machines, NICs, addresses -------------------------------------------------------------------------------------


@pytest.mark.parametrize("site", list(SITES))
def test_router_has_two_nics_on_two_networks_and_forwards(run: ProgramRun, site: str) -> None:
    node = plan_of(gcp_config()).router(site)
    vm = one(run, INSTANCE, f"{site}-router-vm").inputs
    assert vm["canIpForward"] is True
    wan, lan = vm["networkInterfaces"]
    assert network_of_subnet(run, wan["subnetwork"]) == f"{site}-wan-vpc-id"
    assert network_of_subnet(run, lan["subnetwork"]) == f"{site}-lan-vpc-id"
    assert wan["networkIp"] == node.wan_ip
    assert lan["networkIp"] == node.lan_ip
    assert "accessConfigs" not in lan  # no public address on the LAN NIC
    assert wan["ipv6AccessConfigs"] == [{"networkTier": "PREMIUM"}]
    assert {wan["stackType"], lan["stackType"]} == {"IPV4_IPV6"}
    assert vm["machineType"] == gcp.DEFAULT_ROUTER_MACHINE_TYPE == "e2-small"
    assert vm["zone"] == SITES[site][1]
    assert vm["tags"] == [f"{site}-router"]


@pytest.mark.parametrize("site", list(SITES))
def test_router_wan_nat_ip_is_its_reserved_address(run: ProgramRun, site: str) -> None:
    address = one(run, ADDRESS, f"{site}-router-wan-address").inputs
    assert address["addressType"] == "EXTERNAL"
    assert address["region"] == SITES[site][0]
    wan = one(run, INSTANCE, f"{site}-router-vm").inputs["networkInterfaces"][0]
    expected = gcp_mock.mock_address(f"{site}-router-wan-address")
    assert wan["accessConfigs"] == [{"natIp": expected, "networkTier": address["networkTier"]}]
    assert public_ips(run)[site] == expected
    assert run.outputs["nodes"][f"{site}-router"]["managementIp"] == expected
    node = plan_of(gcp_config()).router(site)
    assert run.outputs["nodes"][f"{site}-router"]["privateIps"] == {"wan": node.wan_ip, "lan": node.lan_ip}


@pytest.mark.parametrize("site", list(SITES))
def test_client_has_one_lan_nic_with_reserved_management_address(run: ProgramRun, site: str) -> None:
    node = plan_of(gcp_config()).client(site)
    vm = one(run, INSTANCE, f"{site}-client-vm").inputs
    assert vm["canIpForward"] is False
    (nic,) = vm["networkInterfaces"]
    assert network_of_subnet(run, nic["subnetwork"]) == f"{site}-lan-vpc-id"
    assert nic["networkIp"] == node.lan_ip
    expected = gcp_mock.mock_address(f"{site}-client-lan-address")
    assert nic["accessConfigs"] == [{"natIp": expected, "networkTier": "PREMIUM"}]
    assert "ipv6AccessConfigs" not in nic
    assert run.outputs["nodes"][f"{site}-client"]["managementIp"] == expected


def test_image_from_family_invoke_through_the_site_provider(run: ProgramRun) -> None:
    calls = [args for token, args in run.invokes if token == GET_IMAGE]
    assert len(calls) == len(SITES)  # once per site
    assert all(args == {"family": "ubuntu-2404-lts-amd64", "project": "ubuntu-os-cloud"} for args in calls)
    providers = {provider for token, provider in run.invoke_providers if token == GET_IMAGE}
    assert providers == {f"{one(run, PROVIDER, f'{site}-gcp').urn}::{site}-gcp-id" for site in SITES}
    for vm in run.of_type(INSTANCE):
        assert vm.inputs["bootDisk"]["initializeParams"]["image"] == gcp_mock.UBUNTU_IMAGE_SELF_LINK


def test_image_and_sizes_from_site_settings() -> None:
    raw = gcp_config()
    raw["sites"]["gcpa"].update(image="projects/my-images/global/images/overlay-1", routerSize="e2-medium", clientSize="e2-micro")
    run = run_cached(raw)
    router = one(run, INSTANCE, "gcpa-router-vm").inputs
    client = one(run, INSTANCE, "gcpa-client-vm").inputs
    assert router["bootDisk"]["initializeParams"]["image"] == "projects/my-images/global/images/overlay-1"
    assert router["machineType"] == "e2-medium"
    assert client["machineType"] == "e2-micro"
    assert one(run, INSTANCE, "gcpb-router-vm").inputs["machineType"] == "e2-small"
    assert len([t for t, _ in run.invokes if t == GET_IMAGE]) == len(SITES) - 1


@pytest.mark.parametrize("node", ["gcpa-router", "gcpb-client"])
def test_instance_waits_for_its_firewall_rules(run: ProgramRun, node: str) -> None:
    vm = one(run, INSTANCE, f"{node}-vm")
    rules = {r.urn for r in run.of_type(FIREWALL) if r.name.startswith(f"{node}-")}
    assert rules
    assert rules <= set(vm.depends_on)


# --- user-data -----------------------------------------------------------------------------------------------------


def test_user_data_is_each_nodes_rendered_payload(run: ProgramRun) -> None:
    plan = plan_of(gcp_config())
    for node in plan.nodes:
        metadata = one(run, INSTANCE, f"{node.name}-vm").inputs["metadata"]
        # The VM boots with its own site's config; the full one (peers, keys) arrives by the push.
        assert payload_node_config(metadata["user-data"]) == bootstrap_config(plan, node.name)
        # No ssh-keys (the payload installs the login user's keys) and no project-wide keys either.
        assert set(metadata) == {"user-data", "block-project-ssh-keys"}
        assert metadata["block-project-ssh-keys"] == "TRUE"


def test_instances_ignore_user_data_and_image_changes(run: ProgramRun) -> None:
    assert gcp.GcpSite.user_data_property == 'metadata["user-data"]'
    for vm in run.of_type(INSTANCE):
        assert gcp.GcpSite.user_data_property in vm.ignore_changes
        assert "bootDisk.initializeParams.image" in vm.ignore_changes
        assert vm.inputs["allowStoppingForUpdate"] is True


# --- firewall rules ------------------------------------------------------------------------------------------------


def test_every_rule_is_scoped_and_single_family(run: ProgramRun) -> None:
    rules = run.of_type(FIREWALL)
    assert rules
    for rule in rules:
        inputs = rule.inputs
        assert inputs["direction"] == "INGRESS"
        sources = inputs["sourceRanges"]
        assert sources and not any(is_open_to_world(s) for s in sources), rule.name
        (family,) = {ipaddress.ip_network(s).version for s in sources}
        node = rule.name.split("-fw-")[0].rsplit("-", 1)[0]
        assert inputs["targetTags"] == [node], rule.name
        (allow,) = inputs["allows"]
        if allow["protocol"] == "58":
            assert family == 6
        if allow["protocol"] == "icmp":
            assert family == 4
        assert "denies" not in inputs


def test_tunnel_and_ssh_sources(run: ProgramRun) -> None:
    raw = gcp_config()
    plan = plan_of(raw)
    ips = public_ips(run)
    port = str(TUNNEL_PORT["vxlan"])
    for site in SITES:
        lan = str(plan.config.site(site).lan_cidr)
        router_lan = f"{plan.router(site).lan_ip}/32"
        allowed_tunnel = {f"{ips[p]}/32" for p in plan.peer_sites(site)} | {lan, router_lan}
        for r in [r for r in run.of_type(FIREWALL) if r.name.startswith(f"{site}-")]:
            (allow,) = r.inputs["allows"]
            sources = set(r.inputs["sourceRanges"])
            if allow["protocol"] == "udp":
                assert allow["ports"] == [port]
                assert sources <= allowed_tunnel, r.name
            elif allow["protocol"] == "tcp":
                assert allow["ports"] == ["22"]
                assert sources == {raw["adminCidr"]}, r.name
            else:
                assert allow["protocol"] == "icmp" and "ports" not in allow


@pytest.mark.parametrize("hub", list(SITES))
def test_rules_admit_exactly_the_expected_peers(hub: str) -> None:
    raw = gcp_config(hub=hub)
    run = run_cached(raw)
    ips = public_ips(run)
    for site in SITES:
        peers = set(SITES) - {site} if site == hub else {hub}
        wan = firewalls(run, f"{site}-router", "wan")
        # Every peer in one rule per kind, in siteId order (a stable list: a hub swap rewrites it in place).
        in_order = [f"{ips[p]}/32" for p in sorted(peers, key=list(SITES).index)]
        assert wan["tunnel-from-peers-4789"]["sourceRanges"] == in_order
        assert wan["icmp-from-peers"]["sourceRanges"] == in_order
        assert all(v["network"] == f"{site}-wan-vpc-id" for v in wan.values())
        assert set(wan) == {"tunnel-from-peers-4789", "icmp-from-peers", "ssh-admin-22", "icmp-admin"}
        lan = firewalls(run, f"{site}-router", "lan")
        lan_cidr = raw["sites"][site]["lanCidr"]
        assert {k: v["sourceRanges"] for k, v in lan.items()} == {"tunnel-from-lan-4789": [lan_cidr], "icmp-from-lan": [lan_cidr]}
        assert all(v["network"] == f"{site}-lan-vpc-id" for v in lan.values())
        client = firewalls(run, f"{site}-client", "lan")
        assert set(client) == {"tunnel-from-router-4789", "icmp-from-router", "ssh-admin-22", "icmp-admin"}
        assert all(v["network"] == f"{site}-lan-vpc-id" for v in client.values())
        assert all(v["targetTags"] == [f"{site}-client"] for v in client.values())


def test_geneve_opens_its_port_only() -> None:
    run = run_cached(gcp_config(protocol="geneve"))
    ports = {tuple(r.inputs["allows"][0].get("ports", ())) for r in run.of_type(FIREWALL) if r.inputs["allows"][0]["protocol"] == "udp"}
    assert ports == {("6081",)}


def test_ipv6_admin_range_gets_ipv6_rules_with_icmpv6() -> None:
    run = run_cached(gcp_config(adminCidr="2001:db8:7::/48"))
    wan = firewalls(run, "gcpa-router", "wan")
    assert wan["ssh-admin-22"]["sourceRanges"] == ["2001:db8:7::/48"]
    assert wan["icmp-admin"]["allows"] == [{"protocol": "58"}]
    assert wan["icmp-admin"]["sourceRanges"] == ["2001:db8:7::/48"]
    assert wan["icmp-from-peers"]["allows"] == [{"protocol": "icmp"}]


# --- names, providers, counts --------------------------------------------------------------------------------------


def gcp_names(run: ProgramRun) -> set[str]:
    return {f"{r.type}::{r.name}" for r in run.resources if r.type.startswith(("gcp:", "multicloud-overlay:gcp:", "pulumi:providers:gcp"))}


def test_adding_a_site_renames_nothing(run: ProgramRun) -> None:
    bigger = run_cached(gcp_config(sites=dict([*SITES.items(), EXTRA_SITE])))
    before, after = gcp_names(run), gcp_names(bigger)
    assert before <= after
    added = {n.split("::", 1)[1] for n in after - before}
    assert added and all(n.startswith("gcpd") for n in added), added  # the hub's peer rules only gain a source


def test_hub_change_creates_and_deletes_no_resource(run: ProgramRun) -> None:
    other = run_cached(gcp_config(hub="gcpb"))
    assert gcp_names(run) == gcp_names(other)


def cloud_inputs(run: ProgramRun) -> dict[tuple[str, str], dict[str, Any]]:
    """Inputs of every GCP resource, user-data aside (instances ignore it)."""
    out = {}
    for r in run.resources:
        if r.custom and r.type.startswith("gcp:"):
            inputs = copy.deepcopy(r.inputs)
            inputs.get("metadata", {}).pop("user-data", None)
            out[(r.type, r.name)] = inputs
    return out


@pytest.mark.parametrize(("hub", "protocol"), [("gcpb", "vxlan"), ("gcpa", "geneve"), ("gcpc", "geneve")])
def test_hub_swap_or_protocol_switch_only_rewrites_peer_sources_and_ports(run: ProgramRun, hub: str, protocol: str) -> None:
    before, after = cloud_inputs(run), cloud_inputs(run_cached(gcp_config(hub=hub, protocol=protocol)))
    for key in before.keys() & after.keys():
        if before[key] != after[key]:
            # A hub swap changes which peers the folded rules list (in place), nothing else.
            assert key[0] == FIREWALL and ("-fw-tunnel-from-peers" in key[1] or "-fw-icmp-from-peers" in key[1]), key
            changed = {k for k in before[key].keys() | after[key].keys() if before[key].get(k) != after[key].get(k)}
            assert changed == {"sourceRanges"}, (key, changed)
    # A protocol switch renames the tunnel rules by their port: the new port's rule is created before the old one goes.
    moved = before.keys() ^ after.keys()
    assert all(typ == FIREWALL and "-fw-tunnel-from-" in name for typ, name in moved), moved
    assert bool(moved) == (protocol != "vxlan")


def test_resource_names_are_valid_gcp_names(run: ProgramRun) -> None:
    for r in run.resources:
        if r.type.startswith("gcp:"):
            assert gcp.GCP_NAME_RE.match(r.name) and len(r.name) <= gcp.LOGICAL_NAME_MAX, r.name
    for vm in run.of_type(INSTANCE):
        assert all(gcp.GCP_NAME_RE.match(t) and len(t) <= gcp.GCP_NAME_MAX for t in vm.inputs["tags"])


def test_longest_site_names_still_give_valid_distinct_names() -> None:
    sites = {"gcpsitealpha": SITES["gcpa"], "gcpsitebravo": SITES["gcpb"]}
    run = run_cached(gcp_config(sites=sites, hub="gcpsitealpha"))
    names = [r.name for r in run.resources if r.type.startswith("gcp:")]
    assert len(names) == len(set(names))
    assert all(gcp.GCP_NAME_RE.match(n) and len(n) <= gcp.LOGICAL_NAME_MAX for n in names), names


@pytest.mark.parametrize("site", list(SITES))
def test_every_resource_of_a_site_uses_its_provider(run: ProgramRun, site: str) -> None:
    provider = one(run, PROVIDER, f"{site}-gcp")
    assert provider.parent == one(run, "multicloud-overlay:index:Site", site).urn
    assert provider.inputs["project"] == PROJECT
    assert (provider.inputs["region"], provider.inputs["zone"]) == SITES[site]
    facts = run.outputs["sites"][site]
    assert (facts["platform"], facts["project"], facts["region"], facts["zone"]) == ("gcp", PROJECT, *SITES[site])
    custom = [r for r in site_resources(run, site) if r.custom and r.type.startswith("gcp:")]
    assert custom
    assert all(r.provider.startswith(f"{provider.urn}::") for r in custom), [
        r.name for r in custom if not r.provider.startswith(provider.urn)
    ]


def test_building_blocks_are_parented_and_named_after_their_component(run: ProgramRun) -> None:
    for r in run.resources:
        if r.type.startswith("multicloud-overlay:gcp:"):
            kids = run.children_of(r.urn)
            assert kids, r.name
            assert all(k.name.startswith(f"{r.name}-") for k in kids), r.name


@pytest.mark.parametrize("site", list(SITES))
def test_resource_counts_per_site(run: ProgramRun, site: str) -> None:
    plan = plan_of(gcp_config())
    peers = len(plan.peer_sites(site))
    counts = Counter(r.type for r in site_resources(run, site) if r.type.startswith(("gcp:", "pulumi:providers:gcp")))
    assert counts == {
        PROVIDER: 1,
        NETWORK: 2,
        SUBNETWORK: 2,
        ADDRESS: 2,
        INSTANCE: 2,
        FIREWALL: 2 + 2 + 2 + 4,  # router WAN (peers' tunnel and ICMP folded, admin SSH and ICMP), router LAN, client
    }
    assert peers >= 1


# --- pure helpers --------------------------------------------------------------------------------------------------


def test_gcp_name() -> None:
    assert gcp.gcp_name("gcpa-router-wan-fw-tunnel-from-gcpb") == "gcpa-router-wan-fw-tunnel-from-gcpb"
    long = "abcdefghijkl-router-wan-fw-tunnel-from-abcdefghijkl-extra-long-part"
    for name in (long, "Site_A.router", "1st-site", "x" * 100, "---"):
        fitted = gcp.gcp_name(name)
        assert gcp.GCP_NAME_RE.match(fitted) and len(fitted) <= gcp.LOGICAL_NAME_MAX, fitted
        assert gcp.gcp_name(name) == fitted  # stable
    assert gcp.gcp_name(long) != gcp.gcp_name(long + "2")


def test_checked_source() -> None:
    assert gcp.checked_source("203.0.113.5/32", 4) == "203.0.113.5/32"
    assert gcp.checked_source("2001:db8::/48", 6) == "2001:db8::/48"
    for source, family in (("0.0.0.0/0", 4), ("::/0", 6), ("203.0.113.5/32", 6), ("2001:db8::/48", 4), ("any", 4)):
        with pytest.raises(ValueError):
            gcp.checked_source(source, family)


def test_rules_arrive_on_the_nic_their_source_reaches() -> None:
    lan = ipaddress.IPv4Network("10.31.2.0/24")

    def resolved(source: str | PeerRouter) -> ResolvedRule:
        return ResolvedRule(IngressRule("r", "udp", 4789, source, 4, ""), "203.0.113.9/32" if isinstance(source, PeerRouter) else source)

    assert gcp.arrives_on_lan(resolved("10.31.2.0/24"), lan)
    assert gcp.arrives_on_lan(resolved("10.31.2.10/32"), lan)
    assert not gcp.arrives_on_lan(resolved("198.51.100.7/32"), lan)
    assert not gcp.arrives_on_lan(resolved(PeerRouter("gcpb")), lan)
    rule = gcp.firewall_rule(ResolvedRule(IngressRule("icmp-admin", "icmpv6", None, "2001:db8::/48", 6, "d"), "2001:db8::/48"))
    assert (rule.protocol, rule.ports, rule.family) == ("58", (), 6)


# --- building blocks on their own ----------------------------------------------------------------------------------


def test_building_blocks_without_the_overlay() -> None:
    def program() -> None:
        wan = gcp.GcpNetwork("edge-wan", gcp.GcpNetworkArgs(cidr="192.168.10.0/24", region="europe-west4", mtu=1500))
        lan = gcp.GcpNetwork("edge-lan", gcp.GcpNetworkArgs(cidr="192.168.20.0/24", region="europe-west4", ipv6_access_type=None))
        ip = gcp.GcpPublicAddress("edge-ip", gcp.GcpPublicAddressArgs(region="europe-west4"))
        gcp.GcpSecurityPolicy(
            "edge-wan-fw",
            gcp.GcpSecurityPolicyArgs(
                network=wan.network_id,
                target_tags=["edge"],
                rules=[
                    gcp.GcpFirewallRule("https", "tcp", "203.0.113.0/24", ports=("443",)),
                    gcp.GcpFirewallRule("https6", "tcp", "2001:db8::/32", family=6, ports=("443",)),
                ],
            ),
        )
        gcp.GcpMachine(
            "edge",
            gcp.GcpMachineArgs(
                nics=[
                    gcp.GcpNicArgs(subnetwork=wan.subnetwork_id, nat_ip=ip.address),
                    gcp.GcpNicArgs(subnetwork=lan.subnetwork_id, ipv6=False),
                ],
                image="ubuntu-os-cloud/ubuntu-2404-lts-amd64",
                zone="europe-west4-a",
                tags=["edge"],
                pin_user_data=False,
            ),
        )

    run = run_standalone(program)
    counts = Counter(r.type for r in run.resources)
    assert counts[NETWORK] == 2 and counts[SUBNETWORK] == 2 and counts[FIREWALL] == 2 and counts[ADDRESS] == 1 and counts[INSTANCE] == 1
    assert one(run, SUBNETWORK, "edge-lan-subnet").inputs["stackType"] == "IPV4_ONLY"
    assert one(run, NETWORK, "edge-wan-vpc").inputs["mtu"] == 1500
    vm = one(run, INSTANCE, "edge-vm")
    wan_nic, lan_nic = vm.inputs["networkInterfaces"]
    assert wan_nic["accessConfigs"] == [{"natIp": gcp_mock.mock_address("edge-ip-address"), "networkTier": "PREMIUM"}]
    assert lan_nic["stackType"] == "IPV4_ONLY" and "accessConfigs" not in lan_nic
    assert vm.inputs["canIpForward"] is False
    assert vm.inputs["metadata"] == {"block-project-ssh-keys": "TRUE"}
    assert vm.ignore_changes == ("bootDisk.initializeParams.image",)
    assert {tuple(r.inputs["sourceRanges"]) for r in run.of_type(FIREWALL)} == {("203.0.113.0/24",), ("2001:db8::/32",)}


@pytest.mark.parametrize(
    "rule",
    [
        gcp.GcpFirewallRule("world", "tcp", "0.0.0.0/0", ports=("22",)),
        gcp.GcpFirewallRule("world6", "tcp", "::/0", family=6, ports=("22",)),
        gcp.GcpFirewallRule("mixed", "tcp", "2001:db8::/32", family=4),
        gcp.GcpFirewallRule("icmp6-as-v4", "58", "203.0.113.0/24", family=4),
    ],
)
def test_firewall_refuses_open_or_mixed_rules(rule: gcp.GcpFirewallRule) -> None:
    def program() -> None:
        gcp.GcpSecurityPolicy("bad", gcp.GcpSecurityPolicyArgs(network="net", rules=[rule]))

    with pytest.raises(ValueError):
        run_standalone(program)


def test_firewall_refuses_world_source_known_only_at_run_time() -> None:
    def program() -> None:
        source = pulumi.Output.from_input("198.51.100.0/24").apply(lambda _: "0.0.0.0/0")
        gcp.GcpSecurityPolicy(
            "late", gcp.GcpSecurityPolicyArgs(network="net", rules=[gcp.GcpFirewallRule("late", "udp", source, ports=("4789",))])
        )

    with pytest.raises(Exception, match="whole internet"):
        run_standalone(program)


# --- findings of the pre-deployment review (docs/platform-review/gcp.md) -----------------------------------------------------


def test_the_guest_agent_is_told_to_keep_host_keys_and_make_no_accounts(run: ProgramRun) -> None:
    """G1: google-guest-agent regenerates /etc/ssh/ssh_host_*_key at first boot (set_host_keys defaults to true),
    under the key every push pins. The payload writes its config (before the agent starts) turning that and its
    accounts daemon off; the pinned key itself lives outside /etc/ssh/ssh_host_* (cloudinit/render.py)."""
    for vm in run.of_type(INSTANCE):
        files, _ = read_payload(vm.inputs["metadata"]["user-data"])
        by_path = {f.path: f for f in files}
        cfg = by_path["/etc/default/instance_configs.cfg"]
        assert cfg.mode == 0o644
        parsed = configparser.ConfigParser()
        parsed.read_string(cfg.content.decode())
        assert parsed["InstanceSetup"]["set_host_keys"] == "false"
        assert parsed["Daemons"]["accounts_daemon"] == "false"
        assert "NetworkInterfaces" not in parsed  # the agent still configures the router's LAN NIC
        assert not [p for p in by_path if re.fullmatch(r"/etc/ssh/ssh_host_[^/]*", p)]
        assert any(f.content.decode().startswith("HostKey ") for f in files if f.path.startswith("/etc/ssh/sshd_config.d/"))


def test_no_account_can_come_from_ssh_keys_metadata(run: ProgramRun) -> None:
    """G2: the agent makes every ssh-keys user (instance or project-wide) a passwordless sudoer: the VMs carry no
    ssh-keys and block the project's."""
    for vm in run.of_type(INSTANCE):
        metadata = vm.inputs["metadata"]
        assert "ssh-keys" not in metadata and "sshKeys" not in metadata
        assert metadata["block-project-ssh-keys"] == "TRUE"


def test_a_hubs_peer_rules_are_folded_per_site_id_block() -> None:
    """G3: firewall rules count per project (a quota reported at 100): the peers' rules are one rule per kind and
    block of 250 siteIds, so a hub holds as many rules as a spoke."""
    sites = {"gcpa": SITES["gcpa"], "gcpb": SITES["gcpb"], "gcpc": SITES["gcpc"]}
    raw = gcp_config(sites=sites, overlayIpv4="10.250.0.0/15")
    raw["sites"]["gcpc"]["siteId"] = 300  # the second block of 250
    run = run_cached(raw)
    ips = public_ips(run)
    wan = firewalls(run, "gcpa-router", "wan")
    assert set(wan) == {
        "tunnel-from-peers-4789",
        "icmp-from-peers",
        "tunnel-from-peers2-4789",
        "icmp-from-peers2",
        "ssh-admin-22",
        "icmp-admin",
    }
    assert wan["tunnel-from-peers-4789"]["sourceRanges"] == [f"{ips['gcpb']}/32"]
    assert wan["tunnel-from-peers2-4789"]["sourceRanges"] == [f"{ips['gcpc']}/32"]
    assert wan["icmp-from-peers2"]["description"] == "ping and path-MTU errors from the peer routers"
    assert gcp_traits.peer_block(250) == 0 and gcp_traits.peer_block(251) == 1 and gcp_traits.peer_block(999) == 3


def test_a_999_site_hub_stays_within_the_firewall_limits() -> None:
    """G3: the largest stack the config allows (siteIds 1-999) with a GCP hub: check_limits finds nothing, and the hub's
    WAN network gets 4 folded rule pairs of at most 250 peers each (below the 256 source ranges a rule takes)."""
    from bench.configs import stack_with_sites

    raw = stack_with_sites({f"g{i}": ("gcp", i) for i in range(1, 1000)}, "g1", overlayIpv4="10.248.0.0/14")
    plan = build_plan(parse_config(raw))
    assert site_problems(plan, "g1") == []
    wan = gcp_traits.node_policies(plan, "g1", site_rules(plan, "g1"))[("g1-router", "wan")]
    assert len(wan) == 2 * 4 + 2
    assert max(len(r.sources) for r in wan) == 250 <= gcp_traits.SOURCE_RANGES_PER_RULE.value


def test_a_firewall_rule_with_too_many_sources_is_refused() -> None:
    rule = gcp.GcpFirewallRule("many", "udp", [f"10.0.{i // 256}.{i % 256}/32" for i in range(257)], ports=("4789",))

    def program() -> None:
        gcp.GcpSecurityPolicy("big", gcp.GcpSecurityPolicyArgs(network="net", rules=[rule]))

    with pytest.raises(ValueError, match="257 source ranges"):
        run_standalone(program)
