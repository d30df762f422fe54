"""AWS: the documented limits components/clouds/aws.py relies on, and how it packs a node's rules into security
groups (pure; see components/limits.py).

Reviewed 2026-11-29 against botocore's EC2 model (botocore 1.44.8, data/ec2/2016-11-15/service-2.json), the Amazon
VPC quota page and the EC2 user guide. Report: docs/platform-review/aws.md.

The packing and naming functions below are the ones aws.py calls, so `site_checks` (run by check_limits before any
resource exists) sees exactly the groups, rules and names the program would register.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Final

from multicloud_overlay.overlay.rules import IngressRule, PeerRouter
from multicloud_overlay.overlay.traits import (
    Documented,
    NodeDefaults,
    PlatformLimits,
    PlatformTraits,
    ZoneNaming,
    fullmatch,
    quota,
    quota_fix,
    quota_words,
)

if TYPE_CHECKING:
    from multicloud_overlay.overlay.plan import Plan
    from multicloud_overlay.overlay.rules import SiteRules

_VPC_QUOTAS = "https://docs.aws.amazon.com/vpc/latest/userguide/amazon-vpc-limits.html"
_SG_QUOTAS = f"{_VPC_QUOTAS}#vpc-limits-security-groups"
_EIP_QUOTAS = f"{_VPC_QUOTAS}#vpc-limits-eips"
_VPC_COUNT_QUOTAS = f"{_VPC_QUOTAS}#vpc-limits-vpcs-subnets"
_EC2_MODEL = "https://github.com/boto/botocore/blob/develop/botocore/data/ec2/2016-11-15/service-2.json"
# Allowed characters of a security-group rule description (IpRange/Ipv6Range.Description) and of a group's
# description and name (CreateSecurityGroup GroupDescription/GroupName): a-z, A-Z, 0-9, spaces and ._-:/()#,@[]+=&;{}!$*
_SG_CHARS = r"A-Za-z0-9. _:/()#,@\[\]+=&;{}!$*-"

RULES_PER_GROUP: Final = Documented(60, _SG_QUOTAS)
"""Inbound rules per security group, counted separately for IPv4 and IPv6 (default quota L-0EA8095F)."""
GROUPS_PER_ENI: Final = Documented(5, _SG_QUOTAS)
"""Security groups per network interface (default quota L-2AFB9258)."""
ELASTIC_IPS_PER_REGION: Final = Documented(5, _EIP_QUOTAS)
"""Elastic IP addresses per Region (default quota L-0263D0A3)."""
VPCS_PER_REGION: Final = Documented(5, _VPC_COUNT_QUOTAS)
"""VPCs per Region (default quota L-F678F1CE; internet gateways per Region follow it)."""
ELASTIC_IPS_PER_SITE: Final = 2
"""aws.py reserves one for the router (WAN ENI) and one for the client (management)."""
NAME_PREFIX_SUFFIX: Final = Documented(26, "https://github.com/hashicorp/terraform-plugin-sdk/blob/main/helper/id/id.go")
"""Characters the provider appends to a `name_prefix` (id.PrefixedUniqueId: an 18-digit timestamp and 8 hex)."""

# A node's fixed rules (LAN tunnel and ICMP, admin SSH and ICMP: 4 IPv4 rules at most) live in group 0 with the peers
# of the first block of siteIds; every further group holds the peers of the next block. A peer's group depends on its
# own siteId only, so a hub swap or a new site never moves another peer's rules (a move would replace them, and
# create-before-delete could overfill a full group for a moment). siteIds 1..28 share group 0: a stack whose site ids
# stay below 29 never needs a second group, and a hub swap changes nothing but ingress rules.
FIXED_RULES_RESERVE: Final = 4
PEER_RULES: Final = 2
"""Rules per peer router: its tunnel (UDP) and its ICMP."""
FIRST_BLOCK: Final = (RULES_PER_GROUP.value - FIXED_RULES_RESERVE) // PEER_RULES  # 28 peers
BLOCK: Final = RULES_PER_GROUP.value // PEER_RULES  # 30 peers


def security_group_of_site(site_id: int, groups: int = GROUPS_PER_ENI.value) -> int:
    """Index of the security group (0..groups-1) that holds a peer router's rules, from the peer's siteId."""
    if site_id <= FIRST_BLOCK:
        return 0
    return (1 + (site_id - FIRST_BLOCK - 1) // BLOCK) % groups


def security_group_placement(
    rules: Sequence[IngressRule], site_ids: Mapping[str, int], groups: int = GROUPS_PER_ENI.value
) -> dict[str, int]:
    """Rule name -> index of the security group aws.py puts it in (0 for every rule that is not a peer's)."""
    return {r.name: security_group_of_site(site_ids[r.source.site], groups) if isinstance(r.source, PeerRouter) else 0 for r in rules}


def group_rule_counts(rules: Sequence[IngressRule], placement: Mapping[str, int]) -> dict[int, Counter[int]]:
    """Group index -> IP family -> inbound rules (the quota counts IPv4 and IPv6 rules separately). Group 0 always."""
    counts: dict[int, Counter[int]] = {0: Counter()}
    for r in rules:
        counts.setdefault(placement[r.name], Counter())[r.family] += 1
    return dict(sorted(counts.items()))


def security_group_resource_name(policy: str, index: int) -> str:
    """Pulumi name of a policy's group `index` (group 0 keeps the name a one-group policy always had)."""
    return f"{policy}-group" if index == 0 else f"{policy}-group{index}"


def security_group_name_prefix(policy: str, index: int) -> str:
    """GroupName prefix (the provider appends NAME_PREFIX_SUFFIX characters): never `sg-...`, which EC2 refuses."""
    return f"overlay-{policy}-{index}-"


def policy_description(node: str) -> str:
    """Description of a node's first security group (AwsSecurityPolicyArgs.description)."""
    return f"multicloud-overlay {node}"


def security_group_description(base: str, index: int) -> str:
    """Description of a policy's group `index` (security groups cannot change it: a new one replaces the group)."""
    return base if index == 0 else f"{base} peers {index}"


def policy_name(node: str) -> str:
    """Pulumi name of a node's AwsSecurityPolicy."""
    return f"{node}-policy"


def _region_quota_problems(plan: Plan, site: str) -> list[str]:
    cfg = plan.config.site(site)
    same = [s.name for s in plan.config.sites if s.platform == "aws" and s.region == cfg.region]
    rank = same.index(site) + 1  # this site and those before it in the config
    where = f"aws site `{site}`"
    problems: list[str] = []
    eips, eip_quota = ELASTIC_IPS_PER_SITE * rank, quota(plan, LIMITS, "elasticIpsPerRegion")
    if eips > eip_quota:
        problems.append(
            f"{where}: region {cfg.region} would hold {eips} Elastic IPs ({ELASTIC_IPS_PER_SITE} per aws site; this stack has "
            f"{len(same)} aws sites there), over {quota_words(plan, LIMITS, 'elasticIpsPerRegion', ' Elastic IPs per region')}: "
            f"request an increase of 'EC2-VPC Elastic IPs' "
            f"(quota L-0263D0A3) in Service Quotas for {cfg.region}, or move sites.{site}.region to another region"
            + quota_fix("aws", "elasticIpsPerRegion")
        )
    vpc_quota = quota(plan, LIMITS, "vpcsPerRegion")
    if rank > vpc_quota:
        problems.append(
            f"{where}: region {cfg.region} would hold {rank} VPCs and internet gateways (one per aws site), over "
            f"{quota_words(plan, LIMITS, 'vpcsPerRegion', ' per region')}: request an increase of 'VPCs per Region' (quota "
            f"L-F678F1CE) in Service Quotas for {cfg.region}, or move sites.{site}.region to another region"
            + quota_fix("aws", "vpcsPerRegion")
        )
    return problems


def site_checks(plan: Plan, site: str, site_rules: SiteRules) -> list[str]:
    """Every documented AWS limit the site's resources (as aws.py builds them) would break."""
    site_ids = {s.name: s.site_id for s in plan.config.sites}
    where = f"aws site `{site}`"
    problems: list[str] = []
    for node, rules in ((plan.router(site), site_rules.router), (plan.client(site), site_rules.client)):
        placement = security_group_placement(rules, site_ids)
        counts = group_rule_counts(rules, placement)
        if len(counts) > GROUPS_PER_ENI.value:  # cannot happen with the modulo, kept as the record of the limit
            problems.append(
                f"{where}: {node.name} needs {len(counts)} security groups on one ENI, over {GROUPS_PER_ENI.value} ({GROUPS_PER_ENI.source})"
            )
        for index, families in counts.items():
            for family, n in sorted(families.items()):
                if n > RULES_PER_GROUP.value:
                    peers = sorted(
                        {r.source.site for r in rules if isinstance(r.source, PeerRouter) and placement[r.name] == index},
                        key=site_ids.__getitem__,
                    )
                    problems.append(
                        f"{where}: security group {index} of {node.name} would hold {n} inbound IPv{family} rules (the rules of "
                        f"{len(peers)} peer routers: {', '.join(peers[:3])}{'...' if len(peers) > 3 else ''}, placed by siteId), over the "
                        f"default quota of {RULES_PER_GROUP.value} per group ({RULES_PER_GROUP.source}): request an increase of "
                        f"'Inbound or outbound rules per security group' (quota L-0EA8095F; rules x groups per ENI stay <= 1000), or "
                        f"give the sites siteIds that spread over the {GROUPS_PER_ENI.value} groups (1-{FIRST_BLOCK} share group 0, "
                        f"then blocks of {BLOCK})"
                    )
            policy = policy_name(node.name)
            prefix = security_group_name_prefix(policy, index)
            sample = prefix + "0" * NAME_PREFIX_SUFFIX.value
            if not fullmatch(LIMITS.resource_name_pattern, sample):
                problems.append(f"{where}: security group name {prefix}... of {node.name} is one EC2 refuses ({_EC2_MODEL})")
            description = security_group_description(policy_description(node.name), index)
            if not fullmatch(LIMITS.rule_description_pattern, description) or len(description) > 255:
                problems.append(f"{where}: security group description {description!r} of {node.name} is one EC2 refuses ({_EC2_MODEL})")
    return problems + _region_quota_problems(plan, site)


LIMITS = PlatformLimits(
    quotas={"elasticIpsPerRegion": ELASTIC_IPS_PER_REGION, "vpcsPerRegion": VPCS_PER_REGION},
    platform="aws",
    # AwsMachine sends user_data_base64=send_user_data(...): base64 of the gzip of the payload.
    user_data_encoding="gzip+base64",
    user_data_max_bytes=Documented(
        16 * 1024,
        "https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instancedata-add-user-data.html",
    ),
    # "User data is limited to 16 KB, in raw form, before it is base64-encoded": here the raw form is the gzip bytes.
    user_data_measure="decoded",
    ingress_rules_per_group=RULES_PER_GROUP,
    groups_per_nic=GROUPS_PER_ENI,
    rule_description_max=Documented(255, _EC2_MODEL),
    rule_description_pattern=Documented(f"[{_SG_CHARS}]*", _EC2_MODEL),
    # Security-group names (name_prefix + NAME_PREFIX_SUFFIX characters): same characters, at most 255, and "Can't
    # start with sg-" (CreateSecurityGroupRequest.GroupName in the EC2 model).
    resource_name_pattern=Documented(f"(?!sg-)[{_SG_CHARS}]{{1,255}}", _EC2_MODEL),
    max_nics={
        "t3.small": Documented(3, "https://docs.aws.amazon.com/ec2/latest/instancetypes/gp.html#gp_network"),
    },
    # No EC2 key pair is used any more (the payload installs the login user's keys); recorded for the building block.
    login_key_types=Documented(
        ("ssh-rsa", "ssh-ed25519"),
        "https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_ImportKeyPair.html",
    ),
    notes={
        "rules_per_group_by_family": Documented(
            "The 60 inbound rules are counted separately for IPv4 and IPv6 rules; rules per group x groups per ENI "
            "may not exceed 1,000 (quota increases trade one against the other). A hub router holds 2 IPv4 rules per "
            "peer + 4; aws.py spreads peers over 5 groups by siteId: contiguous siteIds fit 149 sites.",
            _SG_QUOTAS,
        ),
        "elastic_ips_per_region": Documented(
            "5 Elastic IPs per Region by default (quota L-0263D0A3); every site uses 2 (router, client): at most 2 "
            "sites per region without an increase.",
            _EIP_QUOTAS,
        ),
        "vpcs_per_region": Documented("5 VPCs (and 5 internet gateways) per Region by default; one per site.", _VPC_COUNT_QUOTAS),
        "vcpus": Documented(
            "Running On-Demand Standard instances are limited by a vCPU quota per Region whose default depends on the "
            "account (UNCONFIRMED for a new account); every site runs 2 t3.small = 4 vCPUs.",
            "https://docs.aws.amazon.com/ec2/latest/instancetypes/ec2-instance-quotas.html",
        ),
        "login_user": Documented(
            "Canonical's Ubuntu AMIs: default user 'ubuntu' (cloud-init default_user, sudo NOPASSWD:ALL). The payload's "
            "'users:' list has no 'default' entry, so 'ubuntu' is not created; EC2 needs no key pair.",
            "https://github.com/canonical/cloud-init/blob/main/config/cloud.cfg.tmpl",
        ),
        "first_boot": Documented(
            "cloud-init's EC2 datasource fetches an IMDSv2 token itself (http_tokens=required is fine); an ENI "
            "attached after boot is not configured by cloud-init (no hotplug by default): the node script addresses it.",
            "https://github.com/canonical/cloud-init/blob/main/cloudinit/sources/DataSourceEc2.py",
        ),
        "default_rules": Documented(
            "A security group has no inbound rule until one is added; the provider removes the default allow-all "
            "egress of groups it creates (AwsSecurityPolicy adds open egress back). The default NACL allows all.",
            "https://registry.terraform.io/providers/hashicorp/aws/latest/docs/resources/security_group",
        ),
        "gzip_user_data": Documented(
            "cloud-init decompresses gzip-compressed user-data before processing it.",
            "https://docs.cloud-init.io/en/latest/explanation/format.html",
        ),
        "pmtud": Documented(
            "Path MTU discovery needs inbound ICMP 'fragmentation needed'; the rules admit ICMP from the peers, the LAN "
            "and the admin range only (whether security-group tracking admits errors for tracked flows: UNCONFIRMED). "
            "The overlay MTU is computed, not discovered.",
            "https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/network_mtu.html",
        ),
        "image": Documented(
            "Canonical (owner 099720109477) names Ubuntu 24.04 amd64 server AMIs "
            "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-<serial>.",
            "https://documentation.ubuntu.com/aws/aws-how-to/instances/find-ubuntu-images/",
        ),
    },
    site_checks=site_checks,
)


# Canonical's AWS account and the name pattern of its Ubuntu 24.04 (noble) amd64 server images.
CANONICAL_OWNER: Final = "099720109477"
UBUNTU_IMAGE_PATTERN: Final = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"
NODES: Final = NodeDefaults(
    # t3.small: 2 vCPUs, 2 GiB, up to 3 ENIs (the router needs 2: LIMITS.max_nics).
    router_size="t3.small",
    client_size="t3.small",
    size_format="an EC2 instance type, e.g. t3.small (the router's must allow 2 ENIs)",
    image=f"the newest Canonical Ubuntu 24.04 amd64 AMI of the region (owner {CANONICAL_OWNER}, name {UBUNTU_IMAGE_PATTERN})",
    image_format="an AMI id of the site's region, e.g. ami-0123456789abcdef0",
    source="https://docs.aws.amazon.com/ec2/latest/instancetypes/gp.html ; https://documentation.ubuntu.com/aws/en/latest/aws-how-to/instances/find-ubuntu-images/",
)
# aws.py passes `zone` as the subnets' availability_zone, which takes a zone name (us-east-1a), not an AZ ID
# (use1-az1: that is availability_zone_id). Local Zones are named after their parent region too (us-west-2-lax-1a).
ZONE_NAMING: Final = ZoneNaming(
    pattern=r"{region}([a-z]|-[a-z0-9-]*[a-z0-9])",
    rule="the region followed by a letter, e.g. {region}a; an AZ ID such as use1-az1 is not a zone name",
    source="https://docs.aws.amazon.com/global-infrastructure/latest/regions/aws-availability-zones.html",
)

TRAITS: Final = PlatformTraits(
    name="aws",
    site_module="multicloud_overlay.components.clouds.aws",
    required_site_keys=("region",),
    # Traffic through an internet gateway is limited to 1500 bytes (9001 only inside the VPC).
    default_underlay_mtu=Documented(1500, "https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/network_mtu.html"),
    limits=LIMITS,
    example_site={"region": "eu-west-1"},
    nodes=NODES,
    zone_naming=ZONE_NAMING,
    # A secondary ENI gets its address, but Ubuntu's image configures only the primary one at boot.
    payload_configures_router_lan=True,
    example_regions=("eu-west-1", "eu-west-2", "eu-west-3", "eu-central-1", "eu-north-1", "us-east-1", "us-east-2", "us-west-1",
                     "us-west-2", "ca-central-1", "sa-east-1", "ap-south-1", "ap-northeast-1", "ap-northeast-2", "ap-southeast-1",
                     "ap-southeast-2"),
    sites_per_region=ELASTIC_IPS_PER_REGION.value // ELASTIC_IPS_PER_SITE,
)  # fmt: skip
