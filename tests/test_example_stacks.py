"""The two-site example stack (Pulumi.aws-gcp.yaml) the README's deploy guide starts from: as shipped it is
refused before anything exists, naming exactly the three settings the guide sets; with them it deploys what the
README says it creates; the lab runs it with stand-ins for those settings."""

from __future__ import annotations

import copy
import re
from collections import Counter
from typing import Any

import pytest

from lab.state import LAB_ACCOUNT, LAB_OPERATOR, fill_account_settings
from multicloud_overlay.components.stack_file import read_stack_file
from multicloud_overlay.overlay.config import ConfigError, parse_config
from tests.harness import ROOT, run_cached

EXAMPLE = read_stack_file(ROOT / "Pulumi.aws-gcp.yaml")
README = (ROOT / "README.md").read_text()
# What the guide's `pulumi config set` lines give the stack (values of the documentation ranges).
GUIDE_SETTINGS: dict[str, Any] = {
    "adminCidr": "203.0.113.77/32",
    "sshPublicKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILbcSbHKEGQPX0jnjP+yazZw46UhQYbLdiJ8746XQirR op@example",
}
# README wording of each resource type in "What this stack creates".
WORDS = {
    "aws:ec2/vpc:Vpc": "VPC",
    "aws:ec2/subnet:Subnet": "subnets",
    "aws:ec2/internetGateway:InternetGateway": "internet gateway",
    "aws:ec2/routeTable:RouteTable": "route table",
    "aws:ec2/routeTableAssociation:RouteTableAssociation": "route table associations",
    "aws:ec2/securityGroup:SecurityGroup": "security groups",
    "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule": "ingress rules",
    "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule": "egress rules",
    "aws:ec2/networkInterface:NetworkInterface": "ENIs",
    "aws:ec2/networkInterfaceAttachment:NetworkInterfaceAttachment": "ENI attachment",
    "aws:ec2/eip:Eip": "Elastic IPs",
    "aws:ec2/eipAssociation:EipAssociation": "Elastic IP associations",
    "aws:ec2/instance:Instance": "EC2 instances",
    "gcp:compute/network:Network": "VPC networks",
    "gcp:compute/subnetwork:Subnetwork": "subnetworks",
    "gcp:compute/firewall:Firewall": "firewall rules",
    "gcp:compute/address:Address": "static external addresses",
    "gcp:compute/instance:Instance": "Compute Engine instances",
    "tls:index/privateKey:PrivateKey": "TLS private keys",
    "random:index/randomBytes:RandomBytes": "RandomBytes",
    "command:remote:Command": "remote commands",
    "pulumi:index:Stash": "Stash barriers",
    "pulumi:providers:aws": "aws provider",
    "pulumi:providers:gcp": "gcp provider",
}


def configured_example() -> dict[str, Any]:
    raw = copy.deepcopy(EXAMPLE)
    raw.update(GUIDE_SETTINGS)
    raw["sites"]["gcp"]["project"] = "overlay-example-123"
    return raw


def test_the_example_as_shipped_is_refused_naming_the_three_settings_the_guide_sets() -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config(EXAMPLE)
    assert str(refused.value).splitlines() == [
        "the stack config has 3 problem(s):",
        "  - adminCidr is not set: run `pulumi config set adminCidr <value>` (see README, config reference)",
        "  - sshPublicKey is not set: run `pulumi config set sshPublicKey <value>` (see README, config reference)",
        "  - sites.gcp.project is not set: a gcp site needs it (run `pulumi config set --path sites.gcp.project <value>`)",
    ]
    for line in (
        'pulumi config set adminCidr "$(curl -4 -s https://checkip.amazonaws.com)/32"',
        'pulumi config set sshPublicKey "$(cat ~/.ssh/id_ed25519.pub)"',
        'pulumi config set --path sites.gcp.project "$(gcloud config get-value project)"',
    ):
        assert line in README


def test_the_example_deploys_what_the_readme_says_it_creates() -> None:
    run = run_cached(configured_example())
    counts = Counter(r.type for r in run.resources if r.custom)
    section = README.split("What this stack creates", 1)[1].split("\n\n", 1)[0]
    assert set(counts) == set(WORDS), f"resource types without README wording: {set(counts) ^ set(WORDS)}"
    for kind, words in WORDS.items():
        match = re.search(r"(\d+)\s+" + r"\s+".join(map(re.escape, words.split())) + r"\b", section)
        assert match, f"README does not count the {words} ({kind})"
        assert int(match.group(1)) == counts[kind], f"README: {match.group(0)}; the program registers {counts[kind]}"
    total = re.search(r"(\d+)\s+resources\s+in\s+all", section)
    assert total and int(total.group(1)) == sum(counts.values())
    sizes = {str(r.inputs.get("instanceType") or r.inputs.get("machineType")) for r in run.resources if r.type.endswith("/instance:Instance")}
    assert sizes == {"t3.small", "e2-small"}
    costs = README.split("Sizes and cost per hour", 1)[1].split("\n\n", 2)[1]
    for size in sizes:
        assert size in costs


def test_the_lab_stands_in_for_the_operator_and_account_settings_only() -> None:
    raw = copy.deepcopy(EXAMPLE)
    assert fill_account_settings(raw) == ["adminCidr", "sshPublicKey", "sites.gcp.project"]
    assert raw["adminCidr"] == LAB_OPERATOR["adminCidr"] and raw["sites"]["gcp"]["project"] == LAB_ACCOUNT["gcp"]["project"]
    parse_config(raw)
    mine = configured_example()
    before = copy.deepcopy(mine)
    assert fill_account_settings(mine) == []
    assert mine == before
