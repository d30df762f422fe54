"""AWS sites under Pulumi mocks: two-NIC routers with static addresses and no source/dest check, reserved Elastic IPs
on the WAN ENI, least-privilege security groups, payloads equal to the plan, stable names, one provider per site."""

from __future__ import annotations

import base64
import copy
import gzip
import ipaddress
from collections.abc import Callable
from typing import Any

import pulumi
import pytest
import yaml

from multicloud_overlay.cloudinit.render import LOGIN_USER, payload_node_config, read_payload
from multicloud_overlay.components.clouds import aws_traits
from multicloud_overlay.components.clouds.aws import (
    AwsMachine,
    AwsMachineArgs,
    AwsNetwork,
    AwsNetworkArgs,
    AwsNicArgs,
    AwsPublicAddress,
    AwsPublicAddressArgs,
    AwsSecurityPolicy,
    AwsSecurityPolicyArgs,
    AwsSite,
    ipv6_subnet,
    rule_match,
)
from multicloud_overlay.components.clouds.base import ResolvedRule
from multicloud_overlay.components.limits import check_limits
from multicloud_overlay.components.stack_file import read_stack_file
from multicloud_overlay.overlay.config import ConfigError, parse_config
from multicloud_overlay.overlay.plan import bootstrap_config, build_plan
from multicloud_overlay.overlay.security import IngressRule, is_open_to_world, scoped_source
from multicloud_overlay.overlay.traits import fullmatch
from tests import harness
from tests.harness import ROOT, ProgramRun, Registered, plan_of, run_cached, run_program, run_standalone
from tests.mockdata import aws as aws_mock

DEV = read_stack_file(ROOT / "Pulumi.dev.yaml")
SITES: dict[str, dict[str, Any]] = {
    "awsa": {"platform": "aws", "siteId": 1, "region": "eu-west-1", "zone": "eu-west-1b"},
    "awsb": {"platform": "aws", "siteId": 2, "region": "us-east-1"},
    "awsc": {"platform": "aws", "siteId": 3, "region": "ap-southeast-2", "image": "ami-0fedcba9876543210", "routerSize": "c5.large"},
}
EXTRA_SITE = {"awsd": {"platform": "aws", "siteId": 4, "region": "eu-central-1"}}
ADMIN = str(DEV["adminCidr"])

ENI = "aws:ec2/networkInterface:NetworkInterface"
INSTANCE = "aws:ec2/instance:Instance"
ATTACHMENT = "aws:ec2/networkInterfaceAttachment:NetworkInterfaceAttachment"
EIP = "aws:ec2/eip:Eip"
EIP_ASSOCIATION = "aws:ec2/eipAssociation:EipAssociation"
SUBNET = "aws:ec2/subnet:Subnet"
VPC = "aws:ec2/vpc:Vpc"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
EGRESS = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
PROVIDER = "pulumi:providers:aws"


def aws_config(hub: str = "awsa", protocol: str = "vxlan", extra: bool = False) -> dict[str, Any]:
    raw = copy.deepcopy(DEV)
    raw["sites"] = copy.deepcopy({**SITES, **(EXTRA_SITE if extra else {})})
    # Clear tunnels: these tests pin each rule's tunnel port in detail. The default (ipsec) is what
    # tests/test_platforms.py (every platform, each site as hub) and tests/test_limits_*.py (every platform as hub and
    # as spoke, registered resources against the recorded limits) deploy.
    raw.update(hub=hub, protocol=protocol, encryption="none")
    return raw


def component(run: ProgramRun, typ: str, name: str) -> Registered:
    found = [r for r in run.resources if r.type == typ and r.name == name]
    assert len(found) == 1, f"{len(found)} {typ} named {name}"
    return found[0]


def site_resources(run: ProgramRun, site: str) -> list[Registered]:
    return run.descendants_of(component(run, "multicloud-overlay:index:Site", site).urn)


def node_resources(run: ProgramRun, site: str, kind: str, typ: str) -> list[Registered]:
    cls = {"router": "OverlayRouter", "client": "OverlayClient"}[kind]
    node = component(run, f"multicloud-overlay:index:{cls}", f"{site}-{kind}")
    return [r for r in run.descendants_of(node.urn) if r.type == typ]


def one(items: list[Registered]) -> Registered:
    assert len(items) == 1, [r.name for r in items]
    return items[0]


def rid(r: Registered) -> str:
    """The id the mocks give a resource."""
    return f"{r.name}-id"


def public_ips(run: ProgramRun) -> dict[str, str]:
    return dict(run.outputs["publicIps"])


def rule_source(r: Registered) -> str:
    v4, v6 = r.inputs.get("cidrIpv4"), r.inputs.get("cidrIpv6")
    assert (v4 is None) != (v6 is None), f"{r.name}: exactly one CIDR per rule, got {v4!r} / {v6!r}"
    return str(v4 if v4 is not None else v6)


def ports(r: Registered) -> tuple[int, int]:
    return int(r.inputs["fromPort"]), int(r.inputs["toPort"])


# --- NICs and addresses ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("site", list(SITES))
def test_router_has_wan_and_lan_enis_without_source_dest_check(site: str) -> None:
    run, plan = run_cached(aws_config()), plan_of(aws_config())
    node = plan.router(site)
    enis = {r.name: r for r in node_resources(run, site, "router", ENI)}
    assert set(enis) == {f"{site}-router-vm-wan", f"{site}-router-vm-lan"}
    wan, lan = enis[f"{site}-router-vm-wan"], enis[f"{site}-router-vm-lan"]
    assert wan.inputs["subnetId"] == f"{site}-network-wan-id"
    assert lan.inputs["subnetId"] == f"{site}-network-lan-id"
    assert wan.inputs["privateIps"] == [node.wan_ip]
    assert lan.inputs["privateIps"] == [node.lan_ip]
    assert wan.inputs["sourceDestCheck"] is False and lan.inputs["sourceDestCheck"] is False
    assert wan.inputs["ipv6AddressCount"] == 1 and lan.inputs["ipv6AddressCount"] == 1

    instance = one(node_resources(run, site, "router", INSTANCE))
    assert instance.inputs["primaryNetworkInterface"] == {"networkInterfaceId": rid(wan)}
    assert "networkInterfaces" not in instance.inputs  # deprecated in pulumi-aws 7
    assert "secondaryNetworkInterfaces" not in instance.inputs  # another EC2 feature, not the second NIC
    attachment = one(node_resources(run, site, "router", ATTACHMENT))
    assert attachment.inputs == {"instanceId": rid(instance), "networkInterfaceId": rid(lan), "deviceIndex": 1}


@pytest.mark.parametrize("site", list(SITES))
def test_client_has_one_eni_on_the_lan_with_a_public_address(site: str) -> None:
    run, plan = run_cached(aws_config()), plan_of(aws_config())
    eni = one(node_resources(run, site, "client", ENI))
    assert eni.inputs["subnetId"] == f"{site}-network-lan-id"
    assert eni.inputs["privateIps"] == [plan.client(site).lan_ip]
    instance = one(node_resources(run, site, "client", INSTANCE))
    assert instance.inputs["primaryNetworkInterface"] == {"networkInterfaceId": rid(eni)}
    assert node_resources(run, site, "client", ATTACHMENT) == []
    eip = one(node_resources(run, site, "client", EIP))
    association = one(node_resources(run, site, "client", EIP_ASSOCIATION))
    assert association.inputs == {"allocationId": f"eipalloc-{eip.name}", "networkInterfaceId": rid(eni)}
    summary = run.outputs["nodes"][f"{site}-client"]
    assert summary["managementIp"] == aws_mock.public_ip(eip.name)
    assert summary["privateIps"] == {"lan": plan.client(site).lan_ip}


@pytest.mark.parametrize("site", list(SITES))
def test_router_public_address_is_a_reserved_eip_on_the_wan_eni(site: str) -> None:
    run = run_cached(aws_config())
    site_eips = [r for r in site_resources(run, site) if r.type == EIP]
    eip = one([r for r in site_eips if r.name == f"{site}-router-address-eip"])
    assert eip.inputs["domain"] == "vpc"
    # Reserved by the Site before any VM: not a child of the router component.
    assert eip not in node_resources(run, site, "router", EIP)
    association = one(node_resources(run, site, "router", EIP_ASSOCIATION))
    assert association.inputs == {"allocationId": f"eipalloc-{eip.name}", "networkInterfaceId": f"{site}-router-vm-wan-id"}
    assert public_ips(run)[site] == aws_mock.public_ip(eip.name)
    summary = run.outputs["nodes"][f"{site}-router"]
    assert summary["managementIp"] == public_ips(run)[site]
    plan = plan_of(aws_config())
    assert summary["privateIps"] == {"wan": plan.router(site).wan_ip, "lan": plan.router(site).lan_ip}


@pytest.mark.parametrize("site", list(SITES))
def test_subnets_share_one_zone_and_carve_ipv6_from_the_vpc(site: str) -> None:
    run = run_cached(aws_config())
    vpc = one([r for r in site_resources(run, site) if r.type == VPC])
    assert vpc.inputs["assignGeneratedIpv6CidrBlock"] is True
    block = ipaddress.IPv6Network(aws_mock._vpc(pulumi.runtime.MockResourceArgs(VPC, vpc.name, {}, "", "", None))["ipv6CidrBlock"])
    subnets = {r.name: r for r in site_resources(run, site) if r.type == SUBNET}
    assert set(subnets) == {f"{site}-network-wan", f"{site}-network-lan"}
    zones = {s.inputs["availabilityZone"] for s in subnets.values()}
    expected_zone = SITES[site].get("zone", aws_mock.ZONES[0])
    assert zones == {expected_zone}
    v6 = [ipaddress.IPv6Network(s.inputs["ipv6CidrBlock"]) for s in subnets.values()]
    assert all(n.prefixlen == 64 and n.subnet_of(block) for n in v6) and v6[0] != v6[1]
    assert all(s.inputs["assignIpv6AddressOnCreation"] is True for s in subnets.values())


# --- security rules -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["vxlan", "geneve"])
def test_every_ingress_rule_is_scoped(protocol: str) -> None:
    run, plan = run_cached(aws_config(protocol=protocol)), plan_of(aws_config(protocol=protocol))
    port = {"vxlan": 4789, "geneve": 6081}[protocol]
    ips = public_ips(run)
    rules = run.of_type(INGRESS)
    assert rules
    for site in SITES:
        router_rules = node_resources(run, site, "router", INGRESS)
        client_rules = node_resources(run, site, "client", INGRESS)
        peers = {f"{ips[p]}/32" for p in plan.peer_sites(site)}
        lan = str(plan.config.site(site).lan_cidr)
        router_lan = f"{plan.router(site).lan_ip}/32"
        for r, allowed_tunnel in [(r, peers | {lan}) for r in router_rules] + [(r, {router_lan}) for r in client_rules]:
            source = rule_source(r)
            assert not is_open_to_world(source), f"{r.name} admits {source}"
            protocol_ = r.inputs["ipProtocol"]
            if protocol_ == "udp":
                assert ports(r) == (port, port) and source in allowed_tunnel, f"{r.name}: {source}"
            elif protocol_ == "tcp":
                assert ports(r) == (22, 22) and source == ADMIN, f"{r.name}: {source}"
            else:
                assert protocol_ in ("icmp", "icmpv6") and ports(r) == (-1, -1), r.name
                assert source in allowed_tunnel | {ADMIN}, f"{r.name}: {source}"
    assert {r.name for r in rules} == {r.name for s in SITES for k in ("router", "client") for r in node_resources(run, s, k, INGRESS)}


@pytest.mark.parametrize("hub", list(SITES))
def test_rules_admit_exactly_the_expected_peers(hub: str) -> None:
    run, plan = run_cached(aws_config(hub=hub)), plan_of(aws_config(hub=hub))
    ips = public_ips(run)
    for site in SITES:
        expected_peers = [s for s in SITES if s != site] if site == hub else [hub]
        assert sorted(plan.peer_sites(site)) == sorted(expected_peers)
        lan = str(plan.config.site(site).lan_cidr)
        rules = node_resources(run, site, "router", INGRESS)
        tunnel = {rule_source(r) for r in rules if r.inputs["ipProtocol"] == "udp"}
        assert tunnel == {f"{ips[p]}/32" for p in expected_peers} | {lan}
        names = {r.name for r in rules}
        assert {n for n in names if "-from-aws" in n} == {
            f"{site}-router-policy-in-{kind}-from-{p}" for p in expected_peers for kind in ("tunnel", "icmp")
        }
        assert {rule_source(r) for r in rules if r.inputs["ipProtocol"] == "tcp"} == {ADMIN}
        client = node_resources(run, site, "client", INGRESS)
        assert {rule_source(r) for r in client if r.inputs["ipProtocol"] == "udp"} == {f"{plan.router(site).lan_ip}/32"}


@pytest.mark.parametrize("site", list(SITES))
def test_security_groups_have_open_egress_and_no_inline_rules(site: str) -> None:
    run = run_cached(aws_config())
    groups = [r for r in site_resources(run, site) if r.type == SECURITY_GROUP]
    assert {g.name for g in groups} == {f"{site}-router-policy-group", f"{site}-client-policy-group"}
    for group in groups:
        assert "ingress" not in group.inputs and "egress" not in group.inputs
        egress = [r for r in run.of_type(EGRESS) if r.inputs["securityGroupId"] == rid(group)]
        found = {(r.inputs.get("cidrIpv4"), r.inputs.get("cidrIpv6"), r.inputs["ipProtocol"]) for r in egress}
        assert len(egress) == 2 and found == {("0.0.0.0/0", None, "-1"), (None, "::/0", "-1")}
    for eni in (r for r in site_resources(run, site) if r.type == ENI):
        kind = "router" if "-router-" in eni.name else "client"
        assert eni.inputs["securityGroups"] == [f"{site}-{kind}-policy-group-id"]


# --- payload and lifecycle ------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["vxlan", "geneve"])
def test_user_data_is_the_rendered_payload_of_the_node(protocol: str) -> None:
    run, plan = run_cached(aws_config(protocol=protocol)), plan_of(aws_config(protocol=protocol))
    for site in SITES:
        for kind in ("router", "client"):
            instance = one(node_resources(run, site, kind, INSTANCE))
            sent = base64.b64decode(harness.unsecret(instance.inputs["userDataBase64"]))
            assert "userData" not in instance.inputs
            assert len(sent) <= 16 * 1024  # EC2's limit applies to the (gzip-compressed) bytes
            user_data = gzip.decompress(sent).decode()
            assert user_data.startswith("#cloud-config\n")
            # The VM boots with its own site's config; the full one (peers, keys) arrives by the push.
            assert payload_node_config(user_data) == bootstrap_config(plan, f"{site}-{kind}")


def test_instances_ignore_user_data_changes() -> None:
    run = run_cached(aws_config())
    instances = run.of_type(INSTANCE)
    assert len(instances) == 2 * len(SITES)
    for instance in instances:
        assert AwsSite.user_data_property in instance.ignore_changes
        # Neither a newer Ubuntu image nor a new SSH key replaces a running node.
        assert set(instance.ignore_changes) == {"userDataBase64", "ami", "keyName"}
        assert instance.inputs["userDataReplaceOnChange"] is False
    assert AwsSite.user_data_property == "userDataBase64"


@pytest.mark.parametrize("site", list(SITES))
def test_instances_and_addresses_wait_for_the_internet_path(site: str) -> None:
    run = run_cached(aws_config())
    path = {
        r.urn
        for r in site_resources(run, site)
        if r.type in ("aws:ec2/internetGateway:InternetGateway", "aws:ec2/routeTableAssociation:RouteTableAssociation")
    }
    assert len(path) == 3
    for kind in ("router", "client"):
        for typ in (INSTANCE, EIP_ASSOCIATION):
            r = one(node_resources(run, site, kind, typ))
            assert path <= set(r.depends_on), r.name


def test_image_and_size_follow_site_settings() -> None:
    run = run_cached(aws_config())
    for site in SITES:
        for kind in ("router", "client"):
            instance = one(node_resources(run, site, kind, INSTANCE))
            assert instance.inputs["ami"] == SITES[site].get("image", aws_mock.UBUNTU_AMI)
            assert instance.inputs["instanceType"] == SITES[site].get(f"{kind}Size", "t3.small")
            assert "keyName" not in instance.inputs  # the payload installs the login user's keys
            assert instance.inputs["metadataOptions"] == {"httpTokens": "required"}
    lookups = [args for token, args in run.invokes if token == "aws:ec2/getAmi:getAmi"]
    assert len(lookups) == 2  # awsa and awsb; awsc names its image
    for args in lookups:
        assert args["owners"] == ["099720109477"] and args["mostRecent"] is True
        assert {"name": "name", "values": ["ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"]} in args["filters"]
    assert run.of_type("aws:ec2/keyPair:KeyPair") == []


# --- names and providers --------------------------------------------------------------------------------------


def test_adding_a_site_renames_nothing() -> None:
    before, after = run_cached(aws_config()), run_cached(aws_config(extra=True))
    for site in SITES:
        old = {(r.type, r.name) for r in site_resources(before, site)}
        new = {(r.type, r.name) for r in site_resources(after, site)}
        assert old <= new, sorted(old - new)
        # Only the hub gains rules, and only for the new peer.
        assert all(name.endswith("-from-awsd") for _, name in new - old), sorted(new - old)
    assert len({(r.type, r.name) for r in after.resources}) == len(after.resources)


def test_swapping_the_hub_only_adds_and_removes_peer_rules() -> None:
    runs = {hub: run_cached(aws_config(hub=hub)) for hub in SITES}
    names = {hub: {(r.type, r.name) for r in run.resources} for hub, run in runs.items()}
    for a in SITES:
        for b in SITES:
            changed = names[a] ^ names[b]
            assert all(typ == INGRESS for typ, _ in changed), sorted(changed)


@pytest.mark.parametrize("site", list(SITES))
def test_every_resource_of_a_site_uses_its_own_provider(site: str) -> None:
    run = run_cached(aws_config())
    provider = component(run, PROVIDER, f"{site}-aws")
    assert provider.inputs["region"] == SITES[site]["region"]
    custom = [r for r in site_resources(run, site) if r.custom and r.type.startswith("aws:")]
    assert len(custom) > 20
    for r in custom:
        assert r.provider == f"{provider.urn}::{rid(provider)}", f"{r.name}: {r.provider}"
    assert len(run.of_type(PROVIDER)) == len(SITES)


def test_invokes_use_the_site_provider() -> None:
    run = run_cached(aws_config())
    calls = run.invoke_providers
    refs = {site: f"{component(run, PROVIDER, f'{site}-aws').urn}::{site}-aws-id" for site in SITES}
    by_token: dict[str, list[str]] = {}
    for token, provider in calls:
        by_token.setdefault(token, []).append(provider)
    # awsc names its image; awsa names its zone.
    assert sorted(by_token["aws:ec2/getAmi:getAmi"]) == sorted([refs["awsa"], refs["awsb"]])
    assert sorted(by_token["aws:index/getAvailabilityZones:getAvailabilityZones"]) == sorted([refs["awsb"], refs["awsc"]])


def test_components_follow_the_house_style() -> None:
    run = run_cached(aws_config())
    blocks = [r for r in run.resources if r.type.startswith("multicloud-overlay:aws:")]
    assert {r.type for r in blocks} == {
        f"multicloud-overlay:aws:{n}" for n in ("AwsNetwork", "AwsSecurityPolicy", "AwsPublicAddress", "AwsMachine")
    }
    for block in blocks:
        children = run.children_of(block.urn)
        assert children, block.name
        assert all(c.name.startswith(f"{block.name}-") for c in children), (block.name, [c.name for c in children])
    registered = run.component_outputs
    assert all(registered.get(b.urn) for b in blocks), [b.name for b in blocks if not registered.get(b.urn)]


# --- pure helpers and standalone building blocks --------------------------------------------------------------


def test_ipv6_subnet_carves_64s_from_a_56() -> None:
    assert ipv6_subnet("2600:1f18:abcd:ef00::/56", 0) == "2600:1f18:abcd:ef00::/64"
    assert ipv6_subnet("2600:1f18:abcd:ef00::/56", 2) == "2600:1f18:abcd:ef02::/64"
    assert ipv6_subnet("2600:1f18:abcd:ef00::/56", 255) == "2600:1f18:abcd:efff::/64"
    with pytest.raises(ValueError):
        ipv6_subnet("2600:1f18:abcd:ef00::/56", 256)


@pytest.mark.parametrize("cidr", ["0.0.0.0/0", "::/0"])
def test_scoped_cidr_refuses_the_whole_internet(cidr: str) -> None:
    with pytest.raises(ValueError, match="whole internet"):
        scoped_source(cidr)
    assert scoped_source("203.0.113.5/32") == "203.0.113.5/32"


def test_rule_match_maps_icmp_to_all_types() -> None:
    icmp6 = ResolvedRule(IngressRule("icmp6", "icmpv6", None, "2001:db8::/64", 6, "ping"), "2001:db8::/64")
    assert (rule_match(icmp6).ip_protocol, rule_match(icmp6).from_port, rule_match(icmp6).to_port) == ("icmpv6", -1, -1)
    udp = ResolvedRule(IngressRule("t", "udp", 6081, "10.0.0.0/24", 4, "tunnel"), "10.0.0.0/24")
    assert (rule_match(udp).ip_protocol, rule_match(udp).from_port, rule_match(udp).to_port) == ("udp", 6081, 6081)


@pytest.mark.parametrize(
    ("build", "bad"),
    [
        (AwsNetworkArgs, {"vpc_cidr": "10.9.0.0/16", "wan_cidr": "10.9.1.0/24", "lan_cidrr": "10.9.2.0/24", "availability_zone": "z"}),
        (AwsSecurityPolicyArgs, {"vpc_id": "vpc-1", "rule": []}),
        (AwsPublicAddressArgs, {"descripton": "x"}),
        (AwsNicArgs, {"role": "wan", "subnet_id": "s", "private_ip": "10.0.0.1", "security_group_ids": [], "source_dst_check": False}),
        (AwsMachineArgs, {"nics": [], "ami": "ami-1", "user_data": "#cloud-config\n", "instance_typ": "t3.small"}),
    ],
)
def test_args_reject_misspelled_properties(build: Callable[..., object], bad: dict[str, Any]) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        build(**bad)


def test_building_blocks_work_without_the_overlay() -> None:
    def body() -> None:
        network = AwsNetwork("lab", AwsNetworkArgs("10.9.0.0/16", "10.9.1.0/24", "10.9.2.0/24", availability_zone="eu-west-1a"))
        ssh = ResolvedRule(IngressRule("ssh", "tcp", 22, "192.0.2.1/32", 4, "ssh"), "192.0.2.1/32")
        policy = AwsSecurityPolicy("fw", AwsSecurityPolicyArgs(vpc_id=network.vpc_id, rules=[ssh]))
        address = AwsPublicAddress("gw-ip", AwsPublicAddressArgs())
        AwsMachine(
            "gw",
            AwsMachineArgs(
                nics=[
                    AwsNicArgs("outside", network.wan_subnet_id, "10.9.1.5", [policy.group_id], source_dest_check=False),
                    AwsNicArgs("inside", network.lan_subnet_id, "10.9.2.5", [policy.group_id], source_dest_check=False),
                    AwsNicArgs("spare", network.lan_subnet_id, "10.9.2.6", [policy.group_id]),
                ],
                ami="ami-1",
                user_data="#cloud-config\n",
                public_allocation_id=address.allocation_id,
                internet_path=network.internet_path,
            ),
        )

    run = run_standalone(body)
    attachments = sorted((r.name, r.inputs["deviceIndex"]) for r in run.of_type(ATTACHMENT))
    assert attachments == [("gw-inside-attachment", 1), ("gw-spare-attachment", 2)]
    assert one(run.of_type(INSTANCE)).inputs["primaryNetworkInterface"] == {"networkInterfaceId": "gw-outside-id"}
    assert one(run.of_type(EIP_ASSOCIATION)).inputs["networkInterfaceId"] == "gw-outside-id"
    assert [r.name for r in run.of_type(INGRESS)] == ["fw-in-ssh"]


def test_a_rule_open_to_the_world_fails_the_program() -> None:
    def body() -> None:
        world = ResolvedRule(IngressRule("ssh", "tcp", 22, "0.0.0.0/0", 4, "ssh"), "0.0.0.0/0")
        AwsSecurityPolicy("fw", AwsSecurityPolicyArgs(vpc_id="vpc-1", rules=[world]))

    with pytest.raises(Exception, match="whole internet"):
        run_standalone(body)


# --- findings of the pre-deployment review (docs/platform-review/aws.md) ---------------------------------------------------


def sites_config(sites: dict[str, dict[str, Any]], hub: str, **top: Any) -> dict[str, Any]:
    """Pulumi.dev.yaml with `sites` as its sites (the other top-level keys kept, `top` set)."""
    raw = copy.deepcopy(DEV)
    raw["sites"] = copy.deepcopy(sites)
    raw.update(hub=hub, **top)
    return raw


def aws_site(site_id: int, region: str) -> dict[str, Any]:
    return {
        "platform": "aws",
        "siteId": site_id,
        "region": region,
        "vpcCidr": f"10.{site_id % 200}.0.0/16",
        "wanCidr": f"10.{site_id % 200}.1.0/24",
        "lanCidr": f"10.{site_id % 200}.2.0/24",
    }


@pytest.mark.parametrize("encryption", ["none", "ipsec"])
def test_every_registered_description_is_one_ec2_accepts(encryption: str) -> None:
    """A1: EC2 refuses an apostrophe (and anything outside a-zA-Z0-9. _-:/()#,@[]+=&;{}!$*) at apply time."""
    run = run_program({**aws_config(), "encryption": encryption})
    described = run.of_type(INGRESS) + run.of_type(EGRESS) + run.of_type(SECURITY_GROUP)
    assert len(described) > 3 * 10
    for r in described:
        text = r.inputs["description"]
        assert fullmatch(aws_traits.LIMITS.rule_description_pattern, text) and len(text) <= 255, (r.name, text)


def test_a_description_ec2_refuses_stops_the_policy_before_any_resource() -> None:
    """A1: the policy refuses such a description itself, before registering anything (not half-way through an up)."""
    bad = ResolvedRule(IngressRule("tunnel-from-lan", "udp", 4789, "10.1.2.0/24", 4, "vxlan from the site's client"), "10.1.2.0/24")
    registered = ProgramRun()

    def body() -> None:
        AwsSecurityPolicy("fw", AwsSecurityPolicyArgs(vpc_id="vpc-1", rules=[bad]))

    with pytest.raises(Exception, match='rule tunnel-from-lan: description "vxlan from the site\'s client" is one EC2 refuses'):
        run_standalone(body, into=registered)
    assert registered.resources == []


# Site ids chosen so the hub's peers fall in every block of aws_traits: 1-28 -> group 0, 29-58 -> 1, 59-88 -> 2, ...
SPREAD = {"aws1": 1, "aws20": 20, "aws40": 40, "aws70": 70, "aws100": 100, "aws130": 130}
REGIONS = ["eu-west-1", "eu-west-2", "eu-west-3", "eu-central-1", "us-east-1", "us-east-2"]


def spread_config(hub: str = "aws1") -> dict[str, Any]:
    """The SPREAD sites, one region each."""
    return sites_config({name: aws_site(i, REGIONS[n]) for n, (name, i) in enumerate(SPREAD.items())}, hub)


def test_a_hubs_rules_are_spread_over_security_groups_by_peer_site_id() -> None:
    """A2: one group holds 60 inbound rules per family; a hub with many peers gets up to 5 groups, each peer's
    tunnel and ICMP rules in the group of its siteId, every ENI of the router carrying all of them."""
    run = run_cached(spread_config())
    groups = {g.name: g for g in node_resources(run, "aws1", "router", SECURITY_GROUP)}
    assert set(groups) == {"aws1-router-policy-group", *(f"aws1-router-policy-group{k}" for k in (1, 2, 3, 4))}
    ids = {rid(g): g for g in groups.values()}
    for rule in node_resources(run, "aws1", "router", INGRESS):
        group = ids[rule.inputs["securityGroupId"]]
        peer = rule.name.rsplit("-from-", 1)[-1]
        want = aws_traits.security_group_of_site(SPREAD[peer]) if peer in SPREAD else 0
        assert group.name == aws_traits.security_group_resource_name("aws1-router-policy", want), rule.name
    assert {aws_traits.security_group_of_site(i) for n, i in SPREAD.items() if n != "aws1"} == {0, 1, 2, 3, 4}
    for eni in node_resources(run, "aws1", "router", ENI):
        assert sorted(eni.inputs["securityGroups"]) == sorted(ids)
    egress = [r.inputs["securityGroupId"] for r in node_resources(run, "aws1", "router", EGRESS)]
    assert egress == [rid(groups["aws1-router-policy-group"])] * 2
    # A spoke's only peer is the hub (siteId 1, group 0): one group, as before.
    assert [g.name for g in node_resources(run, "aws70", "router", SECURITY_GROUP)] == ["aws70-router-policy-group"]


def test_a_hub_swap_moves_no_peer_rule_between_groups() -> None:
    """A2: a peer's group follows its own siteId, so a hub swap never replaces the rules of peers that stay."""
    before, after = run_cached(spread_config("aws1")), run_cached(spread_config("aws40"))
    group_of = {}
    for run in (before, after):
        groups = {rid(g): g.name for g in run.of_type(SECURITY_GROUP)}
        for r in run.of_type(INGRESS):
            group_of.setdefault(r.name, set()).add(groups[r.inputs["securityGroupId"]])
    assert all(len(names) == 1 for names in group_of.values()), {k: v for k, v in group_of.items() if len(v) > 1}


def test_a_policy_over_the_rules_per_group_quota_registers_nothing() -> None:
    """A2: more than 60 IPv4 rules in one group is refused by the building block itself, before registering."""
    rules = [ResolvedRule(IngressRule(f"r{i}", "udp", 4789, f"192.0.2.{i}/32", 4, "vxlan"), f"192.0.2.{i}/32") for i in range(61)]
    registered = ProgramRun()

    def body() -> None:
        AwsSecurityPolicy("fw", AwsSecurityPolicyArgs(vpc_id="vpc-1", rules=rules))

    with pytest.raises(Exception, match="61 inbound IPv4 rules, over 60"):
        run_standalone(body, into=registered)
    assert registered.resources == []
    # Placed over two groups, the same rules fit.

    def spread() -> None:
        AwsSecurityPolicy("fw", AwsSecurityPolicyArgs(vpc_id="vpc-1", rules=rules, placement={f"r{i}": i % 2 for i in range(61)}))

    ok = run_standalone(spread)
    assert len(ok.of_type(SECURITY_GROUP)) == 2 and len(ok.of_type(INGRESS)) == 61


@pytest.mark.parametrize("site", list(SITES))
def test_the_push_waits_for_the_lan_attachment_and_the_address_association(site: str) -> None:
    """A3: the push configures the LAN ENI and dials the Elastic IP: it must wait for the attachment and the
    association, not only for the instance."""
    run = run_cached(aws_config())
    for kind in ("router", "client"):
        push = one([r for r in run.of_type("command:remote:Command") if r.name == f"{site}-{kind}-config-apply"])
        needed = {r.urn for r in node_resources(run, site, kind, INSTANCE) + node_resources(run, site, kind, EIP_ASSOCIATION)}
        needed |= {r.urn for r in node_resources(run, site, kind, ATTACHMENT)}
        assert len(needed) == (3 if kind == "router" else 2)
        assert needed <= set(push.depends_on), sorted(needed - set(push.depends_on))


def test_a_third_site_in_one_region_is_refused_for_its_elastic_ips() -> None:
    """A4: 5 Elastic IPs per region by default, 2 per site: the third AWS site of a region is refused before any
    resource exists, naming the site, the quota and how to raise it."""
    sites = {f"r{i}": aws_site(i, "eu-west-1") for i in (1, 2, 3)}
    raw = {**copy.deepcopy(DEV), "sites": sites, "hub": "r1"}
    problems = check_limits(build_plan(parse_config(raw)))
    assert len(problems) == 1, problems
    assert problems[0].startswith("aws site `r3`: region eu-west-1 would hold 6 Elastic IPs")
    assert "default quota of 5 Elastic IPs per region" in problems[0] and "L-0263D0A3" in problems[0]
    assert aws_traits.ELASTIC_IPS_PER_REGION.source in problems[0]
    run = ProgramRun()
    with pytest.raises(Exception, match="default quota of 5 Elastic IPs"):
        run_program(raw, into=run)
    assert run.resources == []
    with pytest.raises(ConfigError):
        from multicloud_overlay.components.limits import checked_plan

        checked_plan(parse_config(raw))
    # Two per region fit.
    raw["sites"]["r3"]["region"] = "eu-west-2"
    assert check_limits(build_plan(parse_config(raw))) == []


def test_no_key_pair_and_an_ecdsa_operator_key_works() -> None:
    """A5: ImportKeyPair refuses ECDSA; the program uses no key pair: the payload installs the login user's keys."""
    ecdsa = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBEmKSENjQEezOmxkZMy7opKgwFB9nkt5YRrYMjNuG5N87uRgg6CLrbo5wAdT/y6v0mKV0U2w0WZ2YB/++Tpockg= op@example"
    run = run_program({**aws_config(), "sshPublicKey": ecdsa})
    assert run.of_type("aws:ec2/keyPair:KeyPair") == []
    for instance in run.of_type(INSTANCE):
        assert "keyName" not in instance.inputs
        body = yaml.safe_load(gzip.decompress(base64.b64decode(harness.unsecret(instance.inputs["userDataBase64"]))).decode())
        (user,) = body["users"]  # no "default": the image's ubuntu user (sudo ALL) is not created
        assert user["name"] == LOGIN_USER and ecdsa in user["ssh_authorized_keys"]
        files, _ = read_payload("#cloud-config\n" + yaml.safe_dump(body))
        assert any(f.path.startswith("/etc/sudoers.d/") for f in files)


def test_a_site_named_sg_gets_security_group_names_ec2_accepts() -> None:
    """A6: GroupName "can't start with sg-"; Pulumi's autoname of `sg-router-policy-group` would."""
    run = run_program(sites_config({"sg": aws_site(1, "eu-west-1"), "awsb": aws_site(2, "us-east-1")}, "sg"))
    groups = run.of_type(SECURITY_GROUP)
    assert {g.name for g in groups} >= {"sg-router-policy-group", "sg-client-policy-group"}
    for g in groups:
        prefix = g.inputs["namePrefix"]
        assert not prefix.startswith("sg-") and "name" not in g.inputs
        full = prefix + "2026112910000000000000000a"
        assert len(full) == len(prefix) + aws_traits.NAME_PREFIX_SUFFIX.value
        assert fullmatch(aws_traits.LIMITS.resource_name_pattern, full), full
    assert not fullmatch(aws_traits.LIMITS.resource_name_pattern, "sg-router-policy-group-0a1b2c3")
