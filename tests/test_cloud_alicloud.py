"""Alibaba Cloud sites under Pulumi mocks: NICs, EIPs, security rules, user data, names, providers."""

from __future__ import annotations

import base64
import gzip
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from multicloud_overlay.cloudinit.render import LOGIN_USER, payload_node_config
from multicloud_overlay.components.clouds import alicloud as ali
from multicloud_overlay.components.clouds import alicloud_traits
from multicloud_overlay.components.clouds.base import ResolvedRule
from multicloud_overlay.overlay.config import parse_config
from multicloud_overlay.overlay.plan import bootstrap_config, build_plan
from multicloud_overlay.overlay.security import IngressRule, is_open_to_world, scoped_source
from tests import harness
from tests.harness import ProgramRun, Registered, run_cached, run_program
from tests.mockdata import alicloud as ali_mock

ROOT = Path(__file__).resolve().parent.parent
INSTANCE = "alicloud:ecs/instance:Instance"
ENI = "alicloud:ecs/ecsNetworkInterface:EcsNetworkInterface"
ENI_ATTACHMENT = "alicloud:ecs/ecsNetworkInterfaceAttachment:EcsNetworkInterfaceAttachment"
EIP = "alicloud:ecs/eipAddress:EipAddress"
EIP_ASSOCIATION = "alicloud:ecs/eipAssociation:EipAssociation"
RULE = "alicloud:ecs/securityGroupRule:SecurityGroupRule"
GROUP = "alicloud:ecs/securityGroup:SecurityGroup"
PROVIDER = "pulumi:providers:alicloud"
SITES = {"alia": "eu-central-1", "alib": "ap-southeast-1", "alic": "us-west-1"}
# Documented limit of ECS user data before base64 encoding: 16 KB in older ECS pages, 32 KB in the current ones.
OLD_USER_DATA_LIMIT = 16 * 1024


def alicloud_config(sites: list[str] | None = None, hub: str = "alia", **top: Any) -> dict[str, Any]:
    """Pulumi.dev.yaml with only Alibaba sites (the other top-level keys kept)."""
    doc = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())["config"]
    raw: dict[str, Any] = {key.split(":", 1)[1]: value for key, value in doc.items()}
    names = sites or list(SITES)
    raw["sites"] = {
        name: {
            "platform": "alicloud",
            "siteId": i,
            "region": SITES[name],
            "vpcCidr": f"10.{20 + i}.0.0/16",
            "wanCidr": f"10.{20 + i}.1.0/24",
            "lanCidr": f"10.{20 + i}.2.0/24",
        }
        for i, name in enumerate(sorted(SITES), 1)
        if name in names
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
    return run_cached(alicloud_config())


def site_resources(run: ProgramRun, site: str) -> list[Registered]:
    return run.descendants_of(run.named(site).urn)


def rules_of(run: ProgramRun, node: str) -> dict[str, dict[str, Any]]:
    prefix = f"{node}-fw-"
    return {r.name.removeprefix(prefix): r.inputs for r in run.of_type(RULE) if r.name.startswith(prefix)}


def rule_source(inputs: dict[str, Any]) -> str:
    return inputs.get("cidrIp") or inputs["ipv6CidrIp"]


def decoded_user_data(instance: Registered) -> str:
    return gzip.decompress(base64.b64decode(harness.unsecret(instance.inputs["userData"]))).decode()


def sent_size(instance: Registered) -> int:
    """Bytes of user data before base64: the gzip-compressed payload."""
    return len(base64.b64decode(harness.unsecret(instance.inputs["userData"])))


# --- NICs and addresses -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("site", sorted(SITES))
def test_router_has_primary_eni_on_wan_and_attached_secondary_on_lan(run: ProgramRun, site: str) -> None:
    plan = build_plan(parse_config(alicloud_config()))
    node = plan.router(site)
    instance = run.named(f"{site}-router-vm-instance")
    assert instance.inputs["vswitchId"] == f"{site}-network-wan-id"
    assert instance.inputs["privateIp"] == node.wan_ip
    assert instance.inputs["sourceDestCheck"] is False
    assert instance.inputs["internetMaxBandwidthOut"] == 0  # no fixed public IP besides the EIP
    assert instance.inputs["instanceType"] == "ecs.g6.large"
    eni = run.named(f"{site}-router-vm-lan")
    assert eni.type == ENI
    assert eni.inputs["vswitchId"] == f"{site}-network-lan-id"
    assert eni.inputs["primaryIpAddress"] == node.lan_ip
    assert eni.inputs["sourceDestCheck"] is False
    # Every security group of the router's policy (main, icmp) on both ENIs.
    assert eni.inputs["securityGroupIds"] == [f"{site}-router-fw-sg-id", f"{site}-router-fw-icmp-sg-id"]
    assert instance.inputs["securityGroups"] == eni.inputs["securityGroupIds"]
    attachment = run.named(f"{site}-router-vm-lan-attachment")
    assert attachment.type == ENI_ATTACHMENT
    assert attachment.inputs == {"instanceId": f"{site}-router-vm-instance-id", "networkInterfaceId": f"{site}-router-vm-lan-id"}
    assert [r.name for r in run.of_type(ENI) if r.name.startswith(f"{site}-")] == [f"{site}-router-vm-lan"]


@pytest.mark.parametrize("site", sorted(SITES))
def test_client_has_one_nic_on_lan(run: ProgramRun, site: str) -> None:
    plan = build_plan(parse_config(alicloud_config()))
    instance = run.named(f"{site}-client-vm-instance")
    assert instance.inputs["vswitchId"] == f"{site}-network-lan-id"
    assert instance.inputs["privateIp"] == plan.client(site).lan_ip
    assert "sourceDestCheck" not in instance.inputs


def test_network_is_dual_stack_with_ipv6_subnet_indexes(run: ProgramRun) -> None:
    for site in SITES:
        vpc = run.named(f"{site}-network-vpc")
        assert vpc.inputs["enableIpv6"] is True
        wan, lan = run.named(f"{site}-network-wan"), run.named(f"{site}-network-lan")
        for switch in (wan, lan):
            assert switch.inputs["enableIpv6"] is True
            assert switch.inputs["vpcId"] == f"{site}-network-vpc-id"
            assert switch.inputs["zoneId"] == ali_mock.ZONE_ID
            assert 0 <= switch.inputs["ipv6CidrBlockMask"] <= 255  # an index into the VPC's /56, not a prefix length
        assert wan.inputs["ipv6CidrBlockMask"] != lan.inputs["ipv6CidrBlockMask"]


@pytest.mark.parametrize("role", ["router"])
def test_public_addresses_are_reserved_eips_bound_to_the_instance(run: ProgramRun, role: str) -> None:
    for site in SITES:
        eip = run.named(f"{site}-{role}-public-eip")
        assert eip.type == EIP
        binding = run.named(f"{site}-{role}-vm-eip-binding")
        assert binding.type == EIP_ASSOCIATION
        assert binding.inputs == {
            "allocationId": f"{site}-{role}-public-eip-id",
            "instanceId": f"{site}-{role}-vm-instance-id",
            "instanceType": "EcsInstance",
        }
    assert run.outputs["publicIps"] == {s: ali_mock.eip_address(f"{s}-router-public-eip") for s in SITES}
    nodes = run.outputs["nodes"]
    for site in SITES:
        assert nodes[f"{site}-{role}"]["managementIp"] == ali_mock.eip_address(f"{site}-{role}-public-eip")


def test_one_eip_per_site_the_client_has_an_instance_public_ip(run: ProgramRun) -> None:
    """Review A4: 20 EIPs per account by default and two per site made the 11th site fail; now only the router's."""
    assert sorted(r.name for r in run.of_type(EIP)) == sorted(f"{s}-router-public-eip" for s in SITES)
    assert len(run.of_type(EIP_ASSOCIATION)) == len(SITES)
    for site in SITES:
        client = run.named(f"{site}-client-vm-instance")
        assert 0 < client.inputs["internetMaxBandwidthOut"] <= 100
        assert client.inputs["internetChargeType"] == "PayByTraffic"
        assert run.outputs["nodes"][f"{site}-client"]["managementIp"] == ali_mock.eip_address(f"{client.name}-public-ip")
        assert "internetChargeType" not in run.named(f"{site}-router-vm-instance").inputs


def test_an_instance_public_ip_and_an_eip_exclude_each_other() -> None:
    args = ali.AlicloudMachineArgs(
        image_id="m",
        instance_type="ecs.g6.large",
        vswitch_id="vsw",
        private_ip="10.0.0.5",
        security_group_ids=[],
        user_data="#cloud-config\n",
    )
    args.public_bandwidth_out, args.eip_allocation_id = 10, "eip-1"
    with pytest.raises(ValueError, match="cannot have an EIP"):
        ali.AlicloudMachine("x", args)


# --- security rules -----------------------------------------------------------------------------------------------


def test_every_rule_is_scoped_ingress_on_intranet(run: ProgramRun) -> None:
    rules = run.of_type(RULE)
    assert rules
    for rule in rules:
        inputs = rule.inputs
        assert not is_open_to_world(rule_source(inputs)), rule.name
        assert ("cidrIp" in inputs) != ("ipv6CidrIp" in inputs), rule.name
        assert inputs["nicType"] == "intranet", rule.name
        assert inputs["type"] == "ingress", rule.name
        assert inputs["policy"] == "accept", rule.name
        assert inputs["ipProtocol"] in ("udp", "tcp", "icmp", "icmpv6"), rule.name
        if inputs["ipProtocol"] in ("icmp", "icmpv6"):
            assert inputs["portRange"] == "-1/-1", rule.name


def expected_router_sources(raw: dict[str, Any], public_ips: dict[str, str], site: str) -> dict[str, set[str]]:
    """protocol/port -> sources a router must admit, and nothing else."""
    cfg = parse_config(raw)
    plan = build_plan(cfg)
    peers = {f"{public_ips[p]}/32" for p in plan.peer_sites(site)}
    lan = str(cfg.site(site).lan_cidr)
    admin = str(cfg.admin_cidr)
    return {
        f"udp/{plan.port}/{plan.port}": peers | {lan},
        "icmp/-1/-1": peers | {lan, admin},
        "tcp/22/22": {admin},
    }


def admitted(rules: dict[str, dict[str, Any]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for inputs in rules.values():
        out.setdefault(f"{inputs['ipProtocol']}/{inputs['portRange']}", set()).add(rule_source(inputs))
    return out


@pytest.mark.parametrize("hub", sorted(SITES))
def test_router_rules_admit_exactly_the_peers_of_each_hub(hub: str) -> None:
    raw = alicloud_config(hub=hub)
    run = run_cached(raw)
    public_ips = run.outputs["publicIps"]
    for site in SITES:
        assert admitted(rules_of(run, f"{site}-router")) == expected_router_sources(raw, public_ips, site), (hub, site)
        peers = {p for p in SITES if p != site} if site == hub else {hub}
        assert {n for n in rules_of(run, f"{site}-router") if n.startswith("tunnel-from-")} == {f"tunnel-from-{p}" for p in peers} | {
            "tunnel-from-lan"
        }


def test_geneve_opens_6081_only() -> None:
    raw = alicloud_config(protocol="geneve")
    run = run_cached(raw)
    for site in SITES:
        assert admitted(rules_of(run, f"{site}-router")) == expected_router_sources(raw, run.outputs["publicIps"], site)
    ports = {r.inputs["portRange"] for r in run.of_type(RULE) if r.inputs["ipProtocol"] == "udp"}
    assert ports == {"6081/6081"}


def test_client_rules_admit_its_router_and_the_admin_only(run: ProgramRun) -> None:
    cfg = parse_config(alicloud_config())
    plan = build_plan(cfg)
    admin = str(cfg.admin_cidr)
    for site in SITES:
        router_lan = f"{plan.router(site).lan_ip}/32"
        assert admitted(rules_of(run, f"{site}-client")) == {
            "udp/4789/4789": {router_lan},
            "icmp/-1/-1": {router_lan, admin},
            "tcp/22/22": {admin},
        }


def test_ssh_only_from_admin_cidr(run: ProgramRun) -> None:
    admin = str(parse_config(alicloud_config()).admin_cidr)
    ssh = [r for r in run.of_type(RULE) if r.inputs["ipProtocol"] == "tcp"]
    assert len(ssh) == 2 * len(SITES)
    assert all(r.inputs["portRange"] == "22/22" and rule_source(r.inputs) == admin for r in ssh)


def test_ipv6_admin_cidr_becomes_ipv6_rules() -> None:
    run = run_cached(alicloud_config(adminCidr="2001:db8:7::/48"))
    admin_rules = [r for r in run.of_type(RULE) if r.name.endswith("-admin")]
    assert admin_rules
    for rule in admin_rules:
        assert rule.inputs["ipv6CidrIp"] == "2001:db8:7::/48" and "cidrIp" not in rule.inputs
    assert {r.inputs["ipProtocol"] for r in admin_rules} == {"tcp", "icmpv6"}


def test_icmp_rules_sit_in_their_own_group(run: ProgramRun) -> None:
    """Review A3: a node's rules are split by kind (alicloud_traits.group_of), never by position."""
    for site in SITES:
        for role in ("router", "client"):
            node = f"{site}-{role}"
            rules = rules_of(run, node)
            assert rules
            for name, inputs in rules.items():
                icmp = inputs["ipProtocol"] in ("icmp", "icmpv6")
                assert inputs["securityGroupId"] == (f"{node}-fw-icmp-sg-id" if icmp else f"{node}-fw-sg-id"), name
            names = {r.inputs["securityGroupName"] for r in run.of_type(GROUP) if r.name.startswith(f"{node}-fw")}
            assert names == {f"{node}-fw", f"{node}-fw-icmp"}


@pytest.mark.parametrize(("peers", "fits"), [(99, True), (198, True), (199, False)])
def test_a_hundred_peer_hub_fits_alibaba_security_groups(peers: int, fits: bool) -> None:
    """Review A3: one group held 2 x peers + 4 rules (over 200 from 99 peers); split, each holds at most peers + 2."""
    rules = [IngressRule(f"tunnel-from-p{i}", "udp", 4789, "203.0.113.1/32", 4, "vxlan") for i in range(peers)]
    rules += [IngressRule(f"icmp-from-p{i}", "icmp", None, "203.0.113.1/32", 4, "ping") for i in range(peers)]
    rules += [
        IngressRule("tunnel-from-lan", "udp", 4789, "10.1.2.0/24", 4, "vxlan"),
        IngressRule("icmp-from-lan", "icmp", None, "10.1.2.0/24", 4, "ping"),
        IngressRule("ssh-admin", "tcp", 22, "198.51.100.7/32", 4, "ssh"),
        IngressRule("icmp-admin", "icmp", None, "198.51.100.7/32", 4, "ping"),
    ]
    packed = alicloud_traits.pack_rules(rules)
    assert sum(len(m) for m in packed.values()) == len(rules)
    assert (max(len(m) for m in packed.values()) <= alicloud_traits.GROUP_RULES_MAX.value) is fits
    assert len(packed) <= alicloud_traits.GROUPS_PER_ENI.value
    assert len(rules) <= alicloud_traits.RULES_PER_ENI_MAX.value


def test_security_group_admits_nothing_implicitly(run: ProgramRun) -> None:
    groups = run.of_type(GROUP)
    assert len(groups) == 2 * 2 * len(SITES)
    for group in groups:
        assert group.inputs["innerAccessPolicy"] == "Drop"
        assert group.inputs["vpcId"] == f"{group.name.split('-')[0]}-network-vpc-id"


# --- user data ----------------------------------------------------------------------------------------------------


def test_user_data_decodes_to_the_bootstrap_config(run: ProgramRun) -> None:
    plan = build_plan(parse_config(alicloud_config()))
    for site in SITES:
        for node in (plan.router(site), plan.client(site)):
            user_data = decoded_user_data(run.named(f"{node.name}-vm-instance"))
            assert user_data.startswith("#cloud-config\n")
            assert payload_node_config(user_data) == bootstrap_config(plan, node.name)
            # The login user comes from the payload (the image's is root), with the operator's key: any key type.
            assert f"name: {LOGIN_USER}" in user_data and plan.config.ssh_public_key in user_data
            assert "keyName" not in run.named(f"{node.name}-vm-instance").inputs
    router_doc = payload_node_config(decoded_user_data(run.named("alia-router-vm-instance")))
    assert router_doc["lan"]["configure"] is True  # the secondary ENI is configured by the payload


def test_user_data_fits_the_documented_size_limit(run: ProgramRun) -> None:
    """The payload travels gzip-compressed: it fits even the older 16 KB limit."""
    for instance in run.of_type(INSTANCE):
        assert sent_size(instance) <= OLD_USER_DATA_LIMIT, f"{instance.name}: {sent_size(instance)} bytes of user data"


def test_user_data_with_most_containers_fits_even_the_older_limit() -> None:
    """50 containers and IPsec keys still fit the older 16 KB limit."""
    run = run_cached(alicloud_config(containersPerRouter=50, encryption="ipsec"))
    sizes = {r.name: sent_size(r) for r in run.of_type(INSTANCE)}
    assert max(sizes.values()) <= OLD_USER_DATA_LIMIT


def test_oversized_user_data_is_refused_at_the_documented_limit() -> None:
    """The module refuses what check_limits measures against (alicloud_traits: 32 KB before base64), not less."""
    between = "#cloud-config\n" + os.urandom(20_000).hex()  # ~23 KB of gzip: over the old self-imposed 16 KiB only
    assert 16 * 1024 < len(base64.b64decode(ali.encode_user_data(between))) <= 32 * 1024
    with pytest.raises(ValueError, match="over Alibaba's 32,768 bytes"):
        ali.encode_user_data("#cloud-config\n" + os.urandom(40_000).hex())


def test_instances_ignore_user_data_and_image_changes(run: ProgramRun) -> None:
    instances = run.of_type(INSTANCE)
    assert len(instances) == 2 * len(SITES)
    for instance in instances:
        assert ali.AlicloudSite.user_data_property in instance.ignore_changes
        assert "imageId" in instance.ignore_changes


def test_config_push_waits_for_the_lan_eni_and_the_eip_binding(run: ProgramRun) -> None:
    for site in SITES:
        for role, parts in (("router", ("instance", "lan-attachment", "eip-binding")), ("client", ("instance",))):
            pushes = [r for r in run.of_type("command:remote:Command") if r.name.startswith(f"{site}-{role}-config")]
            assert pushes
            for push in pushes:
                for part in parts:
                    assert run.named(f"{site}-{role}-vm-{part}").urn in push.depends_on, (push.name, part)


# --- names, providers, components ---------------------------------------------------------------------------------


def test_adding_a_site_renames_nothing() -> None:
    two = {r.urn for r in run_cached(alicloud_config(["alia", "alib"])).resources}
    three = {r.urn for r in run_cached(alicloud_config()).resources}
    assert two <= three
    assert all("alic" in urn.rsplit("::", 1)[1] for urn in three - two)


def test_every_custom_resource_of_a_site_uses_its_own_provider(run: ProgramRun) -> None:
    providers = {r.name: r for r in run.of_type(PROVIDER)}
    assert set(providers) == {f"{s}-provider" for s in SITES}
    for site, region in SITES.items():
        provider = providers[f"{site}-provider"]
        assert provider.inputs["region"] == region
        assert provider.parent == run.named(site).urn
        custom = [r for r in site_resources(run, site) if r.custom and r.type.startswith("alicloud:")]
        assert len(custom) >= 20
        for resource in custom:
            assert resource.provider.startswith(provider.urn + "::"), resource.name


def test_building_blocks_are_components_with_prefixed_children(run: ProgramRun) -> None:
    components = [r for r in run.resources if r.type.startswith("multicloud-overlay:alicloud:")]
    assert {r.type.rsplit(":", 1)[1] for r in components} == {
        "AlicloudNetwork",
        "AlicloudSecurityPolicy",
        "AlicloudPublicAddress",
        "AlicloudMachine",
    }
    for component in components:
        children = run.children_of(component.urn)
        assert children, component.name
        assert all(child.name.startswith(f"{component.name}-") for child in children), component.name


def resource_counts(run: ProgramRun, site: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in site_resources(run, site):
        if r.type.startswith("alicloud:") or r.type == PROVIDER:
            counts[r.type] = counts.get(r.type, 0) + 1
    return counts


def test_resources_per_spoke_site(run: ProgramRun) -> None:
    assert resource_counts(run, "alib") == {
        PROVIDER: 1,
        "alicloud:vpc/network:Network": 1,
        "alicloud:vpc/switch:Switch": 2,
        GROUP: 2 * 2,  # main + icmp per node
        RULE: 6 + 4,  # router: tunnel+icmp from the hub and the LAN, ssh+icmp admin; client: 4
        EIP: 1,  # the router's only
        EIP_ASSOCIATION: 1,
        INSTANCE: 2,
        ENI: 1,
        ENI_ATTACHMENT: 1,
    }


def test_invokes_look_up_ubuntu_a_zone_and_the_router_type(run: ProgramRun) -> None:
    images = [args for token, args in run.invokes if token == "alicloud:ecs/getImages:getImages"]
    zones = [args for token, args in run.invokes if token == "alicloud:index/getZones:getZones"]
    types = [args for token, args in run.invokes if token == "alicloud:ecs/getInstanceTypes:getInstanceTypes"]
    assert len(images) == len(zones) == len(types) == len(SITES)
    # Review A8: Canonical's x86_64 system images only, with cloud-init support.
    assert all(a["nameRegex"] == ali.UBUNTU_NAME_REGEX and a["owners"] == "system" and a["isSupportCloudInit"] is True for a in images)
    # Review A7: the zone must also offer the ESSD system disk.
    assert all(
        a
        == {
            "availableResourceCreation": "VSwitch",
            "availableInstanceType": "ecs.g6.large",
            "availableDiskCategory": "cloud_essd",
        }
        for a in zones
    )
    # Review A6: the router type is confirmed to allow two ENIs.
    assert all(a == {"instanceType": "ecs.g6.large", "eniAmount": 2} for a in types)
    assert {r.inputs["imageId"] for r in run.of_type(INSTANCE)} == {ali_mock.UBUNTU_IMAGE_ID}


def test_image_regex_matches_canonical_x86_images_only() -> None:
    pattern = re.compile(ali.UBUNTU_NAME_REGEX)
    assert pattern.search("ubuntu_24_04_x64_20G_alibase_20240923.vhd")
    assert pattern.search(ali_mock.UBUNTU_IMAGE_ID)
    for other in (
        "ubuntu_24_04_arm64_20G_alibase_20240923.vhd",
        "ubuntu_24_04_uefi_x64_20G_alibase_20240923.vhd",
        "ubuntu_24_04_x64_20G_alibase_20240923.vhd.bak",
        "ubuntu_22_04_x64_20G_alibase_20240923.vhd",
    ):
        assert not pattern.search(other), other


def test_a_router_type_with_one_eni_stops_before_the_router_exists() -> None:
    """Review A6: a routerSize that allows one ENI used to fail only at the LAN ENI's attachment, after the VM."""
    raw = alicloud_config(["alia", "alib"])
    raw["sites"]["alia"]["routerSize"] = "ecs.t6-c4m1.large"
    run = ProgramRun()
    with pytest.raises(Exception, match=r"ecs\.t6-c4m1\.large is not sold in this region with at least 2 ENIs"):
        run_program(raw, into=run)
    assert not [r for r in run.resources if r.name == "alia-router-vm-instance"]


def test_the_zone_offers_both_instance_types() -> None:
    """Review A7: a client type sold in fewer zones than the router's decides the zone (mock: ecs.c6.large in b only)."""
    raw = alicloud_config(["alia", "alib"])
    raw["sites"]["alia"]["clientSize"] = "ecs.c6.large"
    run = run_cached(raw)
    assert run.named("alia-network-wan").inputs["zoneId"] == "eu-central-1b"
    assert run.named("alib-network-wan").inputs["zoneId"] == ali_mock.ZONE_ID
    asked = sorted(a["availableInstanceType"] for t, a in run.invokes if t == "alicloud:index/getZones:getZones")
    assert asked == sorted(["ecs.g6.large", "ecs.g6.large", "ecs.c6.large"])


def test_site_settings_override_zone_image_and_sizes() -> None:
    raw = alicloud_config(["alia", "alib"])
    raw["sites"]["alia"].update(zone="eu-central-1b", image="m-custom-ubuntu", routerSize="ecs.g7.large", clientSize="ecs.c6.large")
    run = run_cached(raw)
    assert run.named("alia-network-wan").inputs["zoneId"] == "eu-central-1b"
    assert run.named("alia-router-vm-instance").inputs["imageId"] == "m-custom-ubuntu"
    assert run.named("alia-router-vm-instance").inputs["instanceType"] == "ecs.g7.large"
    assert run.named("alia-client-vm-instance").inputs["instanceType"] == "ecs.c6.large"
    # alib's image, zone and router type; alia's router type (checked for 2 ENIs even when set).
    assert sorted(t for t, _ in run.invokes if t.startswith("alicloud:")) == sorted(
        [
            "alicloud:ecs/getImages:getImages",
            "alicloud:index/getZones:getZones",
            "alicloud:ecs/getInstanceTypes:getInstanceTypes",
            "alicloud:ecs/getInstanceTypes:getInstanceTypes",
        ]
    )


# --- pure helpers -------------------------------------------------------------------------------------------------


def test_port_range() -> None:
    assert ali.port_range(IngressRule("t", "udp", 4789, "10.0.0.0/24", 4, "")) == "4789/4789"
    assert ali.port_range(IngressRule("s", "tcp", 22, "10.0.0.0/24", 4, "")) == "22/22"
    assert ali.port_range(IngressRule("i", "icmp", None, "10.0.0.0/24", 4, "")) == "-1/-1"
    assert ali.port_range(IngressRule("i6", "icmpv6", None, "2001:db8::/32", 6, "")) == "-1/-1"


def test_encode_user_data_round_trips() -> None:
    text = "#cloud-config\npackages: [iproute2]\n"
    assert gzip.decompress(base64.b64decode(ali.encode_user_data(text))).decode() == text


@pytest.mark.parametrize("source", ["0.0.0.0/0", "::/0", "0.0.0.0/0.0.0.0"])
def test_refuse_world(source: str) -> None:
    with pytest.raises(ValueError, match="whole internet"):
        scoped_source(source)


def test_resolved_rule_sources_pass_through() -> None:
    rule = ResolvedRule(IngressRule("ssh-admin", "tcp", 22, "198.51.100.7/32", 4, ""), "198.51.100.7/32")
    assert scoped_source(str(rule.source)) == "198.51.100.7/32"
