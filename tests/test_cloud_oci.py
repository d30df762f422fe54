"""OCI sites under Pulumi mocks: VNICs, the reserved public IP chain, NSG rules, user data, names, providers."""

from __future__ import annotations

import base64
import gzip
import ipaddress
import json
import os
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from multicloud_overlay.cloudinit.render import LOGIN_USER, payload_node_config
from multicloud_overlay.components.clouds import oci as oci_site
from multicloud_overlay.components.clouds import oci_traits
from multicloud_overlay.overlay.plan import Plan, bootstrap_config
from multicloud_overlay.overlay.security import IngressRule, is_open_to_world, scoped_source
from tests.harness import ProgramRun, Registered, plan_of, run_cached, run_program
from tests.mockdata import oci as oci_mock

ROOT = Path(__file__).resolve().parent.parent
INSTANCE = "oci:Core/instance:Instance"
VNIC_ATTACHMENT = "oci:Core/vnicAttachment:VnicAttachment"
PUBLIC_IP = "oci:Core/publicIp:PublicIp"
NSG_RULE = "oci:Core/networkSecurityGroupSecurityRule:NetworkSecurityGroupSecurityRule"
DEFAULT_LIST = "oci:Core/defaultSecurityList:DefaultSecurityList"
SUBNET = "oci:Core/subnet:Subnet"
VCN = "oci:Core/vcn:Vcn"
PROVIDER = "pulumi:providers:oci"
LOCAL_COMMAND = "command:local:Command"
NSG = "oci:Core/networkSecurityGroup:NetworkSecurityGroup"
GET_PRIVATE_IPS = "oci:Core/getPrivateIps:getPrivateIps"
SITES = {"ocia": "eu-frankfurt-1", "ocib": "uk-london-1", "ocic": "us-ashburn-1", "ocid": "ap-tokyo-1"}
COMPARTMENT = "ocid1.compartment.oc1..aaaaaaaaexampleexampleexample"
PROTOCOL_NUMBER = {"udp": "17", "tcp": "6", "icmp": "1", "icmpv6": "58"}


def oci_config(sites: tuple[str, ...] = ("ocia", "ocib", "ocic"), hub: str = "ocia", **top: Any) -> dict[str, Any]:
    """Pulumi.dev.yaml with only OCI sites (the other top-level keys kept); siteIds 1.. in SITES order."""
    doc = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())["config"]
    raw: dict[str, Any] = {key.split(":", 1)[1]: value for key, value in doc.items()}
    raw["sites"] = {
        name: {
            "platform": "oci",
            "siteId": i,
            "region": region,
            "compartmentId": COMPARTMENT,
            "vpcCidr": f"10.{i}.0.0/16",
            "wanCidr": f"10.{i}.1.0/24",
            "lanCidr": f"10.{i}.2.0/24",
        }
        for i, (name, region) in enumerate(SITES.items(), 1)
        if name in sites
    }
    raw["hub"] = hub
    # Clear tunnels: these tests pin each rule's tunnel port in detail. The default (ipsec) is what
    # tests/test_platforms.py (every platform, each site as hub) and tests/test_limits_*.py (every platform as hub and
    # as spoke, registered resources against the recorded limits) deploy.
    top.setdefault("encryption", "none")
    raw.update(top)
    return raw


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return oci_config()


@pytest.fixture(scope="module")
def run(raw: dict[str, Any]) -> ProgramRun:
    return run_cached(raw)


@pytest.fixture(scope="module")
def plan(raw: dict[str, Any]) -> Plan:
    return plan_of(raw)


def site_resources(run: ProgramRun, site: str) -> list[Registered]:
    [component] = [r for r in run.of_type("multicloud-overlay:index:Site") if r.name == site]
    return run.descendants_of(component.urn)


def nsg_rules(run: ProgramRun, node: str) -> dict[str, dict[str, Any]]:
    """rule name -> inputs of the NSG rules of a node's policy."""
    prefix = f"{node}-policy-"
    return {r.name.removeprefix(prefix): r.inputs for r in run.of_type(NSG_RULE) if r.name.startswith(prefix)}


def port_of(rule: dict[str, Any]) -> int | None:
    options = rule.get("udpOptions") or rule.get("tcpOptions")
    if not options:
        return None
    ports = options["destinationPortRange"]
    assert ports["min"] == ports["max"]
    return int(ports["min"])


# ---------------------------------------------------------------------------------------------------------------
# NICs


@pytest.mark.parametrize("site", ["ocia", "ocib", "ocic"])
def test_router_has_wan_primary_vnic_and_lan_vnic_attachment_both_forwarding(run: ProgramRun, plan: Plan, site: str) -> None:
    node = plan.router(site)
    instance = run.named(f"{node.name}-vm-instance")
    primary = instance.inputs["createVnicDetails"]
    assert primary["subnetId"] == f"{site}-net-wan-id"
    assert primary["privateIp"] == node.wan_ip
    assert primary["skipSourceDestCheck"] is True
    assert primary["assignPublicIp"] == "false"  # a string in the SDK; the reserved address is assigned instead
    # Every NSG of the node's policy (oci_traits.NSG_GROUPS) on both VNICs.
    assert primary["nsgIds"] == [f"{node.name}-policy-nsg-id", f"{node.name}-policy-icmp-nsg-id"]

    [attachment] = [a for a in run.of_type(VNIC_ATTACHMENT) if a.inputs["instanceId"] == instance.name + "-id"]
    secondary = attachment.inputs["createVnicDetails"]
    assert secondary["subnetId"] == f"{site}-net-lan-id"
    assert secondary["privateIp"] == node.lan_ip
    assert secondary["skipSourceDestCheck"] is True
    assert secondary["assignPublicIp"] == "false"
    assert secondary["nsgIds"] == primary["nsgIds"]


@pytest.mark.parametrize("site", ["ocia", "ocib", "ocic"])
def test_client_has_one_lan_vnic_with_a_management_address(run: ProgramRun, plan: Plan, site: str) -> None:
    node = plan.client(site)
    instance = run.named(f"{node.name}-vm-instance")
    vnic = instance.inputs["createVnicDetails"]
    assert vnic["subnetId"] == f"{site}-net-lan-id"
    assert vnic["privateIp"] == node.lan_ip
    assert vnic["assignPublicIp"] == "true"
    assert not vnic.get("skipSourceDestCheck")
    assert not [a for a in run.of_type(VNIC_ATTACHMENT) if a.inputs["instanceId"] == instance.name + "-id"]
    summary = run.outputs["nodes"][node.name]
    assert summary["managementIp"] == oci_mock.public_address(instance.name)
    assert summary["privateIps"] == {"lan": node.lan_ip}


def test_router_shape_allows_two_vnics_and_image_and_domain_come_from_lookups(run: ProgramRun, plan: Plan) -> None:
    for site in ("ocia", "ocib", "ocic"):
        router = run.named(f"{plan.router(site).name}-vm-instance").inputs
        assert router["shape"] == "VM.Standard.E4.Flex"
        assert router["shapeConfig"]["ocpus"] >= 2
        assert router["sourceDetails"] == {"sourceType": "image", "sourceId": "ocid1.image.oc1.eu-frankfurt-1.aaaaaaaaubuntu2404amd64"}
        assert router["availabilityDomain"] == "Uocm:EU-FRANKFURT-1-AD-1"
        assert router["compartmentId"] == COMPARTMENT
    images = [args for token, args in run.invokes if token == "oci:Core/getImages:getImages"]
    assert images and all(a["operatingSystem"] == "Canonical Ubuntu" and a["operatingSystemVersion"] == "24.04" for a in images)
    assert all(a["shape"] == "VM.Standard.E4.Flex" for a in images)


def test_site_settings_override_image_zone_and_sizes() -> None:
    raw = oci_config(("ocia", "ocib"))
    raw["sites"]["ocia"].update(
        image="ocid1.image.oc1..custom", zone="Uocm:EU-FRANKFURT-1-AD-3", routerSize="VM.Standard3.Flex", clientSize="VM.Standard2.1"
    )
    run = run_cached(raw)
    router = run.named("ocia-router-vm-instance").inputs
    client = run.named("ocia-client-vm-instance").inputs
    assert router["shape"] == "VM.Standard3.Flex" and router["shapeConfig"]["ocpus"] >= 2
    assert client["shape"] == "VM.Standard2.1" and "shapeConfig" not in client  # fixed shapes take no shape config
    for inputs in (router, client):
        assert inputs["sourceDetails"]["sourceId"] == "ocid1.image.oc1..custom"
        assert inputs["availabilityDomain"] == "Uocm:EU-FRANKFURT-1-AD-3"
    # ocib still looks its image and domain up.
    assert run.named("ocib-router-vm-instance").inputs["availabilityDomain"] == "Uocm:EU-FRANKFURT-1-AD-1"


# ---------------------------------------------------------------------------------------------------------------
# Reserved public IP chain


@pytest.mark.parametrize("site", ["ocia", "ocib", "ocic"])
def test_public_address_is_reserved_and_created_assigned_to_the_router_primary_private_ip(run: ProgramRun, plan: Plan, site: str) -> None:
    """Review F1: no OCI CLI. The PublicIp (declared by the site in prepare()) gets the router's primary private IP
    through a deferred output, so OCI creates it assigned; an update of privateIpId moves it to a rebuilt router."""
    node = plan.router(site)
    assert node.wan_ip is not None
    [public_ip] = [r for r in run.of_type(PUBLIC_IP) if r.name == f"{site}-router-wan-ip"]
    assert public_ip.inputs["lifetime"] == "RESERVED"
    assert public_ip.inputs["privateIpId"] == oci_mock.private_ip_ocid(node.wan_ip)
    assert "privateIpId" not in public_ip.ignore_changes  # a rebuilt router's new private IP is applied (moved)
    assert not run.of_type(LOCAL_COMMAND)  # nothing runs outside the provider
    # Declared by the site itself (prepare), not by the router component: its URN does not move.
    site_urn = next(r.urn for r in run.of_type("multicloud-overlay:index:Site") if r.name == site)
    assert run.named(f"{site}-router-wan").parent == site_urn
    assert run.outputs["publicIps"][site] == oci_mock.public_address(public_ip.name)

    # After launch: the primary private IP of the WAN VNIC is looked up by the instance's private address.
    lookups = [args for token, args in run.invokes if token == GET_PRIVATE_IPS and args.get("subnetId") == f"{site}-net-wan-id"]
    assert lookups == [{"ipAddress": node.wan_ip, "subnetId": f"{site}-net-wan-id"}]
    # The push of the router's config connects to that address: it waits for the assigned PublicIp.
    push = run.named(f"{node.name}-config-apply")
    assert public_ip.urn in push.depends_on
    summary = run.outputs["nodes"][node.name]
    assert summary["managementIp"] == run.outputs["publicIps"][site]
    assert summary["privateIps"] == {"wan": node.wan_ip, "lan": node.lan_ip}


@pytest.mark.parametrize("site", ["ocia", "ocib", "ocic"])
def test_config_push_waits_for_the_lan_vnic_attachment(run: ProgramRun, plan: Plan, site: str) -> None:
    """Review F2: `overlay-node push` configures the LAN VNIC; the push must not run before it is attached."""
    router, client = plan.router(site).name, plan.client(site).name
    push = run.named(f"{router}-config-apply")
    assert run.named(f"{router}-vm-lan-vnic").urn in push.depends_on
    assert run.named(f"{router}-vm-instance").urn in push.depends_on
    assert run.named(f"{client}-vm-instance").urn in run.named(f"{client}-config-apply").depends_on


@pytest.mark.timeout(120)  # the regression is a hang: fail it quickly
def test_a_router_that_fails_to_build_fails_the_program_instead_of_hanging(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reserved address waits for a deferred private IP: if a router is never built, it must fail, not wait; the
    first OCI router's failure also fails the second site's address (its deploy never runs)."""

    def broken(self: oci_site.OciSite, spec: Any) -> Any:
        raise ValueError(f"no router for {spec.node.name}")

    monkeypatch.setattr(oci_site.OciSite, "_router", broken)
    with pytest.raises(Exception, match="no router for ocia-router"):
        run_program(oci_config(("ocia", "ocib")))


# ---------------------------------------------------------------------------------------------------------------
# Security


def test_no_rule_admits_the_whole_internet_and_default_lists_admit_nothing(run: ProgramRun) -> None:
    ingress = [r for r in run.of_type(NSG_RULE) if r.inputs["direction"] == "INGRESS"]
    assert ingress
    for rule in ingress:
        assert rule.inputs["sourceType"] == "CIDR_BLOCK"
        assert not is_open_to_world(rule.inputs["source"]), rule.name
        assert not rule.inputs.get("stateless")
    lists = run.of_type(DEFAULT_LIST)
    assert len(lists) == 3
    for seclist in lists:
        assert not seclist.inputs.get("ingressSecurityRules")
        assert seclist.inputs["manageDefaultResourceId"].startswith("ocid1.securitylist.oc1..default-")
    # Every subnet uses the taken-over default list and nothing else.
    for subnet in run.of_type(SUBNET):
        site = subnet.name.split("-")[0]
        assert subnet.inputs["securityListIds"] == [f"{site}-net-default-seclist-id"]
    # Egress is open on every NSG (both families).
    egress = [r for r in run.of_type(NSG_RULE) if r.inputs["direction"] == "EGRESS"]
    assert len(egress) == 2 * 6 and {r.inputs["destination"] for r in egress} == {"0.0.0.0/0", "::/0"}


def expected_router_sources(plan: Plan, site: str, public_ips: dict[str, str]) -> set[str]:
    return {f"{public_ips[peer]}/32" for peer in plan.peer_sites(site)} | {str(plan.config.site(site).lan_cidr)}


@pytest.mark.parametrize("protocol", ["vxlan", "geneve"])
@pytest.mark.parametrize("hub", ["ocia", "ocib", "ocic"])
def test_tunnel_port_admits_exactly_the_peer_routers_and_the_lan(hub: str, protocol: str) -> None:
    raw = oci_config(hub=hub, protocol=protocol)
    run, plan = run_cached(raw), plan_of(raw)
    port = {"vxlan": 4789, "geneve": 6081}[protocol]
    public_ips: dict[str, str] = run.outputs["publicIps"]
    for site in ("ocia", "ocib", "ocic"):
        router = plan.router(site).name
        rules = nsg_rules(run, router)
        tunnel = {r["source"] for r in rules.values() if r["direction"] == "INGRESS" and r["protocol"] == "17"}
        assert {port_of(r) for r in rules.values() if r["protocol"] == "17"} == {port}
        assert tunnel == expected_router_sources(plan, site, public_ips)
        peers = {"ocia", "ocib", "ocic"} - {site} if site == hub else {hub}
        assert {n for n in rules if n.startswith("tunnel-from-")} == {f"tunnel-from-{p}" for p in peers} | {"tunnel-from-lan"}
        # The client: its router's LAN address only.
        client_rules = nsg_rules(run, plan.client(site).name)
        client_tunnel = {r["source"] for r in client_rules.values() if r["protocol"] == "17"}
        assert client_tunnel == {f"{plan.router(site).lan_ip}/32"}


def test_ssh_only_from_the_admin_range_and_protocol_numbers(run: ProgramRun, plan: Plan) -> None:
    admin = str(plan.config.admin_cidr)
    for node in plan.nodes:
        rules = nsg_rules(run, node.name)
        ssh = [r for r in rules.values() if r["protocol"] == "6"]
        assert ssh and all(r["source"] == admin and port_of(r) == 22 for r in ssh)
        assert {r["protocol"] for n, r in rules.items() if n.startswith("egress-")} == {"all"}
        assert {r["protocol"] for n, r in rules.items() if not n.startswith("egress-")} <= set(PROTOCOL_NUMBER.values())
        for r in rules.values():
            if r["protocol"] == "1":
                assert port_of(r) is None and "icmpOptions" not in r  # every ICMP type, incl. fragmentation needed


def test_icmp_rules_sit_in_their_own_nsg_and_the_rest_with_the_egress_rules(run: ProgramRun, plan: Plan) -> None:
    """Review F3: the rules of a node are split by kind (oci_traits.nsg_group), never by position."""
    for node in plan.nodes:
        rules = {
            r.name.removeprefix(f"{node.name}-policy-"): r.inputs
            for r in run.of_type(NSG_RULE)
            if r.name.startswith(f"{node.name}-policy-")
        }
        assert rules
        for name, inputs in rules.items():
            icmp = inputs["protocol"] in ("1", "58")
            want = f"{node.name}-policy-icmp-nsg-id" if icmp else f"{node.name}-policy-nsg-id"
            assert inputs["networkSecurityGroupId"] == want, (node.name, name)
        nsgs = {r.name for r in run.of_type(NSG) if r.name.startswith(f"{node.name}-policy-")}
        assert nsgs == {f"{node.name}-policy-nsg", f"{node.name}-policy-icmp-nsg"}


def test_a_hundred_peer_hub_fits_oci_nsgs_and_117_do_not() -> None:
    """Review F3: one NSG held 2 x peers + 6 rules (over 120 from 58 peers); split, each NSG holds at most peers + 4."""
    for peers, fits in ((99, True), (116, True), (117, False)):
        rules = [IngressRule(f"tunnel-from-p{i}", "udp", 4789, f"203.0.113.{i % 250}/32", 4, "vxlan") for i in range(peers)]
        rules += [IngressRule(f"icmp-from-p{i}", "icmp", None, f"203.0.113.{i % 250}/32", 4, "ping") for i in range(peers)]
        rules += [
            IngressRule("tunnel-from-lan", "udp", 4789, "10.1.2.0/24", 4, "vxlan"),
            IngressRule("icmp-from-lan", "icmp", None, "10.1.2.0/24", 4, "ping"),
            IngressRule("ssh-admin", "tcp", 22, "198.51.100.7/32", 4, "ssh"),
            IngressRule("icmp-admin", "icmp", None, "198.51.100.7/32", 4, "ping"),
        ]
        counts = oci_traits.nsg_rule_counts(rules)
        assert sum(counts.values()) == len(rules) + 2
        assert (max(counts.values()) <= oci_traits.NSG_RULES_MAX.value) is fits, (peers, counts)
        assert len(counts) <= oci_traits.NSGS_PER_VNIC.value


def test_security_policy_refuses_world_sources() -> None:
    assert scoped_source("198.51.100.7/32", "ssh-admin") == "198.51.100.7/32"
    for world in ("0.0.0.0/0", "::/0"):
        with pytest.raises(ValueError, match="ssh-admin"):
            scoped_source(world, "ssh-admin")


# ---------------------------------------------------------------------------------------------------------------
# User data


@pytest.mark.parametrize("protocol", ["vxlan", "geneve"])
def test_user_data_is_the_gzip_base64_bootstrap_payload_of_each_node(protocol: str) -> None:
    """Review F4: gzip+base64 (the Oracle datasource base64-decodes, cloud-init decompresses), the node's bootstrap
    config, the login user's keys in the payload and no ssh_authorized_keys in the metadata."""
    raw = oci_config(protocol=protocol)
    run, plan = run_cached(raw), plan_of(raw)
    for node in plan.nodes:
        instance = run.named(f"{node.name}-vm-instance")
        metadata = instance.inputs["metadata"]
        assert set(metadata) == {"user_data"}
        sent = base64.b64decode(metadata["user_data"])
        assert sent[:2] == b"\x1f\x8b"
        user_data = gzip.decompress(sent).decode()
        assert len(json.dumps(metadata)) <= 32_000  # OCI's instance metadata limit, JSON punctuation included
        doc = payload_node_config(user_data)
        assert doc == bootstrap_config(plan, node.name)
        assert doc["open_host_firewall"] is True
        assert doc["lan"]["configure"] is (node.kind == "router")
        assert doc["forwarding"] is (node.kind == "router")
        assert f"name: {LOGIN_USER}" in user_data and plan.config.ssh_public_key in user_data


def test_metadata_over_32000_bytes_is_refused() -> None:
    text = "#cloud-config\n" + os.urandom(30_000).hex()  # hex of random bytes: gzip halves it at best
    with pytest.raises(ValueError, match="over OCI's 32,000"):
        oci_site.instance_metadata([text, None])
    small = oci_site.instance_metadata(["#cloud-config\n", "ssh-ed25519 AAAA k"])
    assert set(small) == {"ssh_authorized_keys", "user_data"}
    assert gzip.decompress(base64.b64decode(small["user_data"])) == b"#cloud-config\n"


def test_instances_ignore_user_data_changes(run: ProgramRun) -> None:
    instances = run.of_type(INSTANCE)
    assert len(instances) == 6
    for instance in instances:
        # Review F5: OCI rejects any change of either key after launch.
        assert "metadata.user_data" in instance.ignore_changes
        assert "metadata.ssh_authorized_keys" in instance.ignore_changes


# ---------------------------------------------------------------------------------------------------------------
# Names, providers, counts


def test_adding_a_site_renames_nothing() -> None:
    three = run_cached(oci_config(("ocia", "ocib", "ocic")))
    four = run_cached(oci_config(("ocia", "ocib", "ocic", "ocid")))
    before = {(r.type, r.name) for r in three.resources}
    after = {(r.type, r.name) for r in four.resources}
    assert before <= after
    added = {name for _, name in after - before}
    assert all(name.startswith("ocid") or name.endswith("tunnel-from-ocid") or name.endswith("icmp-from-ocid") for name in added), added
    # Spokes keep exactly their resources.
    for site in ("ocib", "ocic"):
        assert {r.name for r in site_resources(three, site)} == {r.name for r in site_resources(four, site)}


@pytest.mark.parametrize("site", ["ocia", "ocib", "ocic"])
def test_every_oci_resource_of_a_site_uses_its_explicit_provider(run: ProgramRun, site: str) -> None:
    [provider] = [r for r in run.of_type(PROVIDER) if r.name == f"{site}-provider"]
    assert provider.inputs["region"] == SITES[site]
    custom = [r for r in site_resources(run, site) if r.custom and r.type.startswith("oci:")]
    assert len(custom) > 10
    for resource in custom:
        assert resource.provider.startswith(provider.urn + "::"), (resource.name, resource.provider)


def test_resources_per_site(run: ProgramRun) -> None:
    counts = Counter(r.type for r in site_resources(run, "ocib") if r.custom and r.type.startswith("oci:"))
    # Spoke (one peer): router rules = tunnel+icmp from the hub, tunnel+icmp from the LAN, ssh+icmp admin (6);
    # client rules = tunnel+icmp from its router, ssh+icmp admin (4); 2 egress rules per NSG.
    assert counts == {
        VCN: 1,
        "oci:Core/internetGateway:InternetGateway": 1,
        "oci:Core/routeTable:RouteTable": 1,
        DEFAULT_LIST: 1,
        SUBNET: 2,
        PUBLIC_IP: 1,
        NSG: 2 * 2,  # main + icmp per node
        NSG_RULE: 6 + 4 + 2 * 2,
        INSTANCE: 2,
        VNIC_ATTACHMENT: 1,
    }
    assert not [r for r in site_resources(run, "ocib") if r.type == LOCAL_COMMAND]


def test_network_is_dual_stack_with_routes_for_both_families(run: ProgramRun) -> None:
    for site in ("ocia", "ocib", "ocic"):
        vcn = run.named(f"{site}-net-vcn")
        assert vcn.inputs["isIpv6enabled"] is True
        assert vcn.inputs["cidrBlocks"] == [f"10.{list(SITES).index(site) + 1}.0.0/16"]
        v6 = ipaddress.IPv6Network(oci_mock.vcn_ipv6(vcn.name))
        wan = ipaddress.IPv6Network(run.named(f"{site}-net-wan").inputs["ipv6cidrBlocks"][0])
        lan = ipaddress.IPv6Network(run.named(f"{site}-net-lan").inputs["ipv6cidrBlocks"][0])
        assert wan.prefixlen == lan.prefixlen == 64 and wan.subnet_of(v6) and lan.subnet_of(v6) and wan != lan
        routes = run.named(f"{site}-net-routes").inputs["routeRules"]
        assert {r["destination"] for r in routes} == {"0.0.0.0/0", "::/0"}
        assert all(r["networkEntityId"] == f"{site}-net-igw-id" for r in routes)


# ---------------------------------------------------------------------------------------------------------------
# Pure helpers


def test_subnet_ipv6_carves_64s_from_the_vcn_56() -> None:
    assert oci_site.subnet_ipv6(["2603:c020:4000:ab00::/56"], 1) == ["2603:c020:4000:ab01::/64"]
    assert oci_site.subnet_ipv6(["2603:c020:4000:ab00::/56"], 255) == ["2603:c020:4000:abff::/64"]
    with pytest.raises(ValueError):
        oci_site.subnet_ipv6(["2603:c020:4000:ab00::/56"], 256)
    with pytest.raises(ValueError):
        oci_site.subnet_ipv6([], 1)


def test_primary_private_ip_id_picks_the_primary_with_that_address() -> None:
    ips = [
        SimpleNamespace(id="secondary", ip_address="10.1.1.10", is_primary=False),
        SimpleNamespace(id="other", ip_address="10.1.1.11", is_primary=True),
        SimpleNamespace(id="primary", ip_address="10.1.1.10", is_primary=True),
    ]
    assert oci_site.primary_private_ip_id(ips, "10.1.1.10") == "primary"
    with pytest.raises(ValueError):
        oci_site.primary_private_ip_id(ips[:2], "10.1.1.10")
