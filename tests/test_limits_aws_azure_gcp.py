"""AWS, Azure and GCP against their recorded limits: what the program REGISTERS (rules per security group / NSG /
firewall, groups per NIC, descriptions, names, user-data as sent) for each platform as hub and as spoke, and
check_limits refusing, before any resource, a stack that would break one (naming the site, the limit and the fix).
The README promises 100 sites: a 100-site stack with each of these platforms as hub passes."""

from __future__ import annotations

import base64
import copy
import ipaddress
import itertools
import json
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from bench.configs import stack_with_sites
from multicloud_overlay.components.clouds import aws_traits, azure_traits, gcp_traits
from multicloud_overlay.components.limits import check_limits, checked_plan, site_problems
from multicloud_overlay.overlay.config import ConfigError, parse_config
from multicloud_overlay.overlay.plan import Plan, build_plan
from multicloud_overlay.overlay.security import site_rules
from multicloud_overlay.overlay.traits import fullmatch
from tests.harness import ProgramRun, Registered, run_program, unsecret

# Real region names; with the default quotas an AWS region takes 2 sites (Elastic IPs), an Azure location 5
# (Standard public IPs); a GCP project takes any number (no documented default to hold it to).
AWS_REGIONS = [
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
    "ca-central-1",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "eu-central-1",
    "eu-north-1",
    "eu-south-1",
    "eu-south-2",
    "ap-south-1",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-northeast-3",
    "ap-southeast-1",
    "ap-southeast-2",
    "sa-east-1",
    "af-south-1",
]
AZURE_REGIONS = [
    "westeurope",
    "northeurope",
    "francecentral",
    "germanywestcentral",
    "uksouth",
    "swedencentral",
    "eastus",
    "eastus2",
    "westus2",
]
PER_REGION = {"aws": 2, "azure": 5}
REGIONS = {"aws": AWS_REGIONS, "azure": AZURE_REGIONS}
MINE = ("aws", "azure", "gcp")


def stack(platforms: list[str], ids: list[int] | None = None, hub: int = 0, **top: Any) -> dict[str, Any]:
    """Sites s<id> on the given platforms (in order), regions filled so no default regional quota is exceeded."""
    ids = ids or list(range(1, len(platforms) + 1))
    raw = stack_with_sites({f"s{i}": (p, i) for p, i in zip(platforms, ids, strict=True)}, f"s{ids[hub]}", **top)
    seen: Counter[str] = Counter()
    for body in raw["sites"].values():
        p = body["platform"]
        if p in REGIONS:
            body["region"] = REGIONS[p][seen[p] // PER_REGION[p]]
            seen[p] += 1
    if max(ids) > 255:
        raw["overlayIpv4"] = "10.248.0.0/14"
    return raw


# --- what each platform registered, against its recorded limits --------------------------------------------------


def _b64_len(text: Any) -> int:
    """Bytes the platform counts: the decoded base64 (a secret input arrives wrapped: unsecret)."""
    return len(base64.b64decode(str(unsecret(text))))


def aws_violations(run: ProgramRun) -> tuple[int, list[str]]:
    limits = aws_traits.LIMITS
    out: list[str] = []
    groups = {f"{g.name}-id": g for g in run.of_type("aws:ec2/securityGroup:SecurityGroup")}
    per_group: dict[str, Counter[int]] = {gid: Counter() for gid in groups}
    rules = run.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
    for r in rules:
        per_group[r.inputs["securityGroupId"]][4 if r.inputs.get("cidrIpv4") else 6] += 1
    for gid, families in per_group.items():
        out += [f"{gid}: {n} IPv{f} rules" for f, n in families.items() if n > aws_traits.RULES_PER_GROUP.value]
    for eni in run.of_type("aws:ec2/networkInterface:NetworkInterface"):
        if len(eni.inputs["securityGroups"]) > aws_traits.GROUPS_PER_ENI.value:
            out.append(f"{eni.name}: {len(eni.inputs['securityGroups'])} groups")
    described = rules + run.of_type("aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule") + list(groups.values())
    for r in described:
        text = r.inputs["description"]
        if not fullmatch(limits.rule_description_pattern, text) or len(text) > 255:
            out.append(f"{r.name}: description {text!r}")
    for g in groups.values():
        name = g.inputs["namePrefix"] + "x" * aws_traits.NAME_PREFIX_SUFFIX.value
        if not fullmatch(limits.resource_name_pattern, name):
            out.append(f"{g.name}: group name {name}")
    instances = run.of_type("aws:ec2/instance:Instance")
    for vm in instances:
        if _b64_len(vm.inputs["userDataBase64"]) > limits.user_data_max_bytes.value:
            out.append(f"{vm.name}: user-data")
        nics = 1 + sum(
            1
            for a in run.of_type("aws:ec2/networkInterfaceAttachment:NetworkInterfaceAttachment")
            if a.inputs["instanceId"] == f"{vm.name}-id"
        )
        if nics > limits.max_nics[vm.inputs["instanceType"]].value:
            out.append(f"{vm.name}: {nics} ENIs")
    return len(rules) + len(instances), out


def azure_violations(run: ProgramRun) -> tuple[int, list[str]]:
    limits = azure_traits.LIMITS
    out: list[str] = []
    by_nsg: dict[str, list[Registered]] = {}
    rules = run.of_type("azure-native:network:SecurityRule")
    for r in rules:
        by_nsg.setdefault(r.inputs["networkSecurityGroupName"], []).append(r)
    for nsg, members in by_nsg.items():
        if len(members) > azure_traits.NSG_RULES.value:
            out.append(f"{nsg}: {len(members)} rules")
        prefixes = [p for r in members for p in (r.inputs.get("sourceAddressPrefixes") or [r.inputs["sourceAddressPrefix"]])]
        if len(prefixes) > azure_traits.NSG_ADDRESSES.value:
            out.append(f"{nsg}: {len(prefixes)} source addresses")
        priorities = [r.inputs["priority"] for r in members]
        if len(set(priorities)) != len(priorities) or not all(100 <= p <= 4096 for p in priorities):
            out.append(f"{nsg}: priorities {priorities}")
        for r in members:
            families = {ipaddress.ip_network(p).version for p in r.inputs.get("sourceAddressPrefixes") or [r.inputs["sourceAddressPrefix"]]}
            if len(families) != 1:
                out.append(f"{r.name}: mixes address families")
            if not fullmatch(limits.resource_name_pattern, r.inputs["securityRuleName"]):
                out.append(f"{r.name}: rule name")
            if limits.rule_description_max and len(r.inputs.get("description") or "") > limits.rule_description_max.value:
                out.append(f"{r.name}: description")
    for nic in run.of_type("azure-native:network:NetworkInterface"):
        if not isinstance(nic.inputs.get("networkSecurityGroup"), dict):
            out.append(f"{nic.name}: no NSG")
    vms = run.of_type("azure-native:compute:VirtualMachine")
    for vm in vms:
        profile = vm.inputs["osProfile"]
        if _b64_len(profile["customData"]) > limits.user_data_max_bytes.value:
            out.append(f"{vm.name}: custom data")
        if profile["adminUsername"] in azure_traits.ADMIN_USERNAME_DISALLOWED.value:
            out.append(f"{vm.name}: admin user")
        if not fullmatch(azure_traits.COMPUTER_NAME, profile["computerName"]):
            out.append(f"{vm.name}: computer name")
        (key,) = profile["linuxConfiguration"]["ssh"]["publicKeys"]
        if not key["keyData"].startswith(limits.login_key_types.value if limits.login_key_types else ()):
            out.append(f"{vm.name}: key type")
        if len(vm.inputs["networkProfile"]["networkInterfaces"]) > limits.max_nics[vm.inputs["hardwareProfile"]["vmSize"]].value:
            out.append(f"{vm.name}: NICs")
    return len(rules) + len(vms), out


AUTONAME = 8  # "-" and 7 hex: what Pulumi appends to a logical name


def gcp_violations(run: ProgramRun) -> tuple[int, list[str]]:
    limits = gcp_traits.LIMITS
    out: list[str] = []
    firewalls = run.of_type("gcp:compute/firewall:Firewall")
    for fw in firewalls:
        sources = fw.inputs["sourceRanges"]
        if len(sources) > gcp_traits.SOURCE_RANGES_PER_RULE.value:
            out.append(f"{fw.name}: {len(sources)} source ranges")
        if len({ipaddress.ip_network(s).version for s in sources}) != 1:
            out.append(f"{fw.name}: mixes address families")
    for r in run.resources:
        if r.custom and r.type.startswith("gcp:compute/"):
            physical = r.name + "-" + "a" * (AUTONAME - 1)
            if not fullmatch(limits.resource_name_pattern, physical) or len(physical) > 63:
                out.append(f"{r.name}: name")
    instances = run.of_type("gcp:compute/instance:Instance")
    for vm in instances:
        metadata = vm.inputs["metadata"]
        if len(metadata["user-data"].encode()) > limits.user_data_max_bytes.value:
            out.append(f"{vm.name}: user-data")
        if len(json.dumps(metadata).encode()) >= 512 * 1024:
            out.append(f"{vm.name}: metadata")
        if len(vm.inputs["networkInterfaces"]) > limits.max_nics[vm.inputs["machineType"]].value:
            out.append(f"{vm.name}: NICs")
        if not all(fullmatch(limits.resource_name_pattern, t) for t in vm.inputs["tags"]):
            out.append(f"{vm.name}: tags")
    return len(firewalls) + len(instances), out


VIOLATIONS: dict[str, Callable[[ProgramRun], tuple[int, list[str]]]] = {
    "aws": aws_violations,
    "azure": azure_violations,
    "gcp": gcp_violations,
}

# Two sites per platform; siteIds spread so the AWS hub's peers fill several security groups (40 -> group 1,
# 70 -> group 2) and the GCP hub's peers two firewall-rule blocks (300 -> the second block of 250).
PLATFORMS = ["aws", "azure", "gcp", "aws", "azure", "gcp"]
IDS = [1, 2, 3, 40, 70, 300]


@pytest.mark.parametrize("hub", MINE)
def test_registered_resources_fit_the_recorded_limits(hub: str) -> None:
    """Each platform as hub (first site of that platform) and as spoke (the other runs)."""
    raw = stack(PLATFORMS, IDS, hub=PLATFORMS.index(hub))
    plan = build_plan(parse_config(raw))
    assert check_limits(plan) == []
    run = run_program(raw)
    for platform, violations in VIOLATIONS.items():
        checked, problems = violations(run)
        assert checked > 0, platform  # the checks saw resources
        assert problems == [], (platform, problems)
    if hub == "aws":
        groups = [g for g in run.of_type("aws:ec2/securityGroup:SecurityGroup") if g.name.startswith("s1-router-")]
        assert len(groups) == 3  # group 0, 1 (siteId 40) and 2 (siteId 70)
    if hub == "gcp":
        wan = {
            fw.name.removeprefix("s3-router-wan-fw-")
            for fw in run.of_type("gcp:compute/firewall:Firewall")
            if fw.name.startswith("s3-router-wan-")
        }
        assert {"tunnel-from-peers-4500", "tunnel-from-peers2-4500"} <= wan  # ipsec (the dev stack's default): NAT-T


def test_first_boot_files_go_to_their_platform_only() -> None:
    """GCP's guest-agent config is part of GCP payloads, and of no other platform's."""
    raw = stack(PLATFORMS, IDS)
    run = run_program(raw)
    gcp_data = [vm.inputs["metadata"]["user-data"] for vm in run.of_type("gcp:compute/instance:Instance")]
    azure_data = [
        base64.b64decode(vm.inputs["osProfile"]["customData"]).decode() for vm in run.of_type("azure-native:compute:VirtualMachine")
    ]
    assert gcp_data and all("/etc/default/instance_configs.cfg" in d for d in gcp_data)
    assert azure_data and not any("instance_configs.cfg" in d for d in azure_data)


# --- check_limits refuses, before any resource -------------------------------------------------------------------

OVER = [
    pytest.param(
        stack(["aws"] + ["gcp"] * 159, list(range(1, 161))),
        "aws site `s1`: security group 0 of s1-router would hold 82 inbound IPv4 rules",
        ("default quota of 60 per group", aws_traits.RULES_PER_GROUP.source, "L-0EA8095F", "siteIds"),
        id="aws-hub-over-rules-per-group",
    ),
    pytest.param(
        {
            **stack(["aws", "aws", "aws"]),
            "sites": {f"s{i}": {**stack(["aws"] * 3)["sites"][f"s{i}"], "region": "eu-west-1"} for i in (1, 2, 3)},
        },
        "aws site `s3`: region eu-west-1 would hold 6 Elastic IPs",
        ("default quota of 5 Elastic IPs per region", aws_traits.ELASTIC_IPS_PER_REGION.source, "L-0263D0A3", "sites.s3.region"),
        id="aws-elastic-ips-per-region",
    ),
    pytest.param(
        {
            **stack(["azure"] * 6),
            "sites": {f"s{i}": {**stack(["azure"] * 6)["sites"][f"s{i}"], "region": "westeurope"} for i in range(1, 7)},
        },
        "azure site `s6`: location westeurope would hold 12 Standard public IPs",
        ("default quota of 10", azure_traits.STANDARD_PUBLIC_IPS_PER_REGION.source, "quota increase", "sites.s6.region"),
        id="azure-public-ips-per-region",
    ),
]


@pytest.mark.parametrize(("raw", "first", "fix"), OVER)
def test_check_limits_refuses_a_stack_over_a_limit_before_any_resource(raw: dict[str, Any], first: str, fix: tuple[str, ...]) -> None:
    problems = check_limits(build_plan(parse_config(copy.deepcopy(raw))))
    found = [p for p in problems if p.startswith(first)]
    assert len(found) == 1, problems
    for part in fix:
        assert part in found[0], (part, found[0])
    with pytest.raises(ConfigError) as error:
        checked_plan(parse_config(copy.deepcopy(raw)))
    assert first in str(error.value)
    run = ProgramRun()
    with pytest.raises(Exception, match=re.escape(first)):
        run_program(copy.deepcopy(raw), into=run)
    assert run.resources == []


def test_aws_fits_149_contiguous_sites_and_refuses_150() -> None:
    """The security groups of an AWS hub take 28 + 4 x 30 peers with contiguous siteIds (1-28 share group 0)."""
    fits = build_plan(parse_config(stack(["aws"] + ["gcp"] * 148, list(range(1, 150)))))
    assert site_problems(fits, "s1") == []
    over = build_plan(parse_config(stack(["aws"] + ["gcp"] * 149, list(range(1, 151)))))
    (problem,) = site_problems(over, "s1")
    assert problem.startswith("aws site `s1`: security group 0 of s1-router would hold 62 inbound IPv4 rules")


# --- 100 sites ---------------------------------------------------------------------------------------------------


def hundred(hub: str, sites: int = 100) -> dict[str, Any]:
    """100 sites, the hub on `hub`, the others over AWS, Azure and GCP in turn, regions within the default quotas."""
    others = [p for p, _ in zip(itertools.cycle(MINE), range(sites - 1), strict=False)]
    return stack([hub, *others])


@pytest.mark.parametrize("hub", MINE)
def test_a_hundred_site_stack_passes_check_limits(hub: str) -> None:
    plan: Plan = build_plan(parse_config(hundred(hub)))
    assert len(plan.peer_sites("s1")) == 99
    assert check_limits(plan) == []


# 100 sites with the hub where the rules are packed into several groups (AWS: 51 s here); Azure and GCP fold every
# peer into one rule, whose count does not grow with the sites (30 sites: 36-38 s, their resources' many outputs).
@pytest.mark.slow
@pytest.mark.parametrize(("hub", "sites"), [("aws", 100), ("azure", 30), ("gcp", 30)])
def test_a_hundred_site_stack_registers_within_the_limits(hub: str, sites: int) -> None:
    run = run_program(hundred(hub, sites))
    for platform, violations in VIOLATIONS.items():
        checked, problems = violations(run)
        assert checked > 0 and problems == [], (platform, problems[:5])
    # The largest stack: no user-data holds any tunnel key or the deploy key the stack generated (ipsec, the default).
    from multicloud_overlay.cloudinit.render import payload_node_config
    from tests.test_inplace import occurs, stack_secrets
    from tests.test_platforms import decode, user_data_strings

    found = stack_secrets(run)
    assert len(found["tunnel"]) == sites - 1  # one pre-shared key per hub-spoke pair
    vms = [r for r in run.resources if any(user_data_strings(v) for v in r.inputs.values())]
    assert len(vms) == 2 * sites
    for vm in vms:
        texts = [decode(unsecret(u)) for v in vm.inputs.values() for u in user_data_strings(v)]
        text = json.dumps(texts) + json.dumps([payload_node_config(t) for t in texts])  # the node config is gzip inside
        assert not any(occurs(k, text) for k in found["tunnel"] + found["deploy"]), vm.name


@pytest.mark.parametrize(("platform", "quota"), [("aws", "Elastic IPs per region"), ("azure", "Standard public IPs")])
def test_a_hundred_sites_of_one_platform_in_one_region_are_refused_for_the_default_quota(platform: str, quota: str) -> None:
    """What the README's 100 sites need on one platform: with every site in one region, the default quota of public
    addresses refuses all but the first few, each message saying it is a default quota and how to raise it."""
    raw = stack_with_sites({f"s{i}": (platform, i) for i in range(1, 101)}, "s1")
    for body in raw["sites"].values():
        body["region"] = {"aws": "eu-west-1", "azure": "westeurope"}[platform]
    problems = check_limits(build_plan(parse_config(raw)))
    allowed = {"aws": 2, "azure": 5}[platform]
    refused = [p for p in problems if quota in p]
    assert len(refused) == 100 - allowed
    assert all("default quota" in p and ("Service Quotas" in p or "quota increase" in p) for p in refused)


def test_a_hundred_gcp_sites_in_one_project_pass() -> None:
    """GCP documents no default for its per-project quotas (firewall rules, networks): nothing refused; the rules per
    site stay constant (10) whatever the number of sites."""
    plan = build_plan(parse_config(stack_with_sites({f"s{i}": ("gcp", i) for i in range(1, 101)}, "s1")))
    assert check_limits(plan) == []
    assert sum(len(rules) for rules in gcp_traits.node_policies(plan, "s1", site_rules(plan, "s1")).values()) == 10
