"""Alibaba Cloud: the documented limits components/clouds/alicloud.py relies on (pure: imports only components.limits).

Each value carries the page (or provider/SDK source) that states it. Review: docs/platform-review/alicloud.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Final, Literal

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
    from multicloud_overlay.overlay.rules import IngressRule, SiteRules

_RUN_INSTANCES = "https://www.alibabacloud.com/help/en/ecs/developer-reference/api-ecs-2014-05-26-runinstances"
_USER_DATA = "https://www.alibabacloud.com/help/en/ecs/user-guide/customize-the-initialization-configuration-for-an-instance"
_AUTHORIZE_SG = "https://www.alibabacloud.com/help/en/ecs/api-authorizesecuritygroup"
_IMPORT_KEY = "https://www.alibabacloud.com/help/en/ecs/developer-reference/api-ecs-2014-05-26-importkeypair"
_LOGIN_USER = "https://www.alibabacloud.com/help/en/ecs/user-guide/manage-the-username-used-to-log-on-to-an-ecs-instance"
_EIP_QUOTAS = "https://alibabacloud.com/help/en/eip/quota-management"
_VPC_QUOTAS = "https://www.alibabacloud.com/help/en/vpc/user-guide/vpc-quotas"
_RAISE = (
    "request a quota increase in Quota Center (https://quotas.console.aliyun.com) or on the VPC console's Quota "
    "Management page (https://www.alibabacloud.com/help/en/vpc/user-guide/manage-vpc-quotas)"
)

# ---------------------------------------------------------------------------------------------------------------
# Documented numbers that components/clouds/alicloud.py packs and names its resources by.

GROUP_RULES_MAX: Final = Documented(
    200,
    f"{_AUTHORIZE_SG}: 'The total number of outbound and inbound rules in each security group cannot exceed 200' "
    "(AlicloudSecurityPolicy adds no outbound rule)",
)
RULES_PER_ENI_MAX: Final = Documented(
    1000,
    "https://www.alibabacloud.com/help/doc-detail/25554.html (security group limits: at most 1,000 rules over all "
    "security groups of one ENI)",
)
GROUPS_PER_ENI: Final = Documented(
    5,
    "https://alibabacloud.com/help/en/ecs/developer-reference/api-ecs-2014-05-26-joinsecuritygroup: 'An instance "
    "can be added to up to five security groups by default' (4 or 10 on request)",
)
EIPS_PER_ACCOUNT: Final = Documented(
    20, f"{_EIP_QUOTAS} (eip_quota_instances_num: 'Maximum number of EIPs that each Alibaba Cloud account can have', default 20)"
)
VPCS_PER_REGION: Final = Documented(10, f"{_VPC_QUOTAS} (vpc_quota_instances_num: VPCs per region, default 10)")
USER_DATA_MAX_BYTES: Final = Documented(
    32 * 1024,
    f"{_RUN_INSTANCES} (UserData: 'The size of instance user data cannot exceed 32 KB before Base64 encoding'; "
    "same in CreateInstance: 'The maximum size of the raw data is 32 KB', alibabacloud-ecs20140526 7.11.8 models). "
    "Older pages (help/doc-detail/49121.htm, 108461.htm) said 16 KB.",
)
ENIS_PER_ROUTER: Final = 2
"""The router's ENIs: the primary (WAN) and one secondary (LAN)."""
EIPS_PER_SITE: Final = 1
"""Only the router has an EIP; the client gets an instance public IP (internet_max_bandwidth_out > 0)."""

GroupKind = Literal["main", "icmp"]
GROUP_KINDS: Final[tuple[GroupKind, ...]] = ("main", "icmp")
"""The security groups of one node's policy, all on each of its ENIs. A rule's group depends on its kind only, so a
hub swap or a new site moves no rule from one group to another."""


def group_of(rule: IngressRule) -> GroupKind:
    """The security group of a rule: ICMP in its own, everything else (tunnels, SSH) in the main one."""
    return "icmp" if rule.protocol in ("icmp", "icmpv6") else "main"


def pack_rules(rules: Iterable[IngressRule]) -> dict[GroupKind, list[IngressRule]]:
    """A node's ingress rules by security group, every group of GROUP_KINDS present, in that order."""
    packed: dict[GroupKind, list[IngressRule]] = {kind: [] for kind in GROUP_KINDS}
    for rule in rules:
        packed[group_of(rule)].append(rule)
    return packed


def policy_name(node: str) -> str:
    """Name of a node's AlicloudSecurityPolicy (and of its main security group)."""
    return f"{node}-fw"


def security_group_name(policy: str, kind: GroupKind) -> str:
    """security_group_name of one group of a policy (the main group keeps the name the single group had)."""
    return policy if kind == "main" else f"{policy}-{kind}"


def network_name(site: str) -> str:
    """vpc_name of a site's VPC (and the AlicloudNetwork's name)."""
    return f"{site}-network"


def switch_name(network: str, role: str) -> str:
    """vswitch_name of the network's WAN or LAN vSwitch."""
    return f"{network}-{role}"


def address_name(node: str) -> str:
    """address_name of a node's EIP (and the AlicloudPublicAddress's name)."""
    return f"{node}-public"


def machine_name(node: str) -> str:
    """Name of a node's AlicloudMachine; its secondary ENI is named after it."""
    return f"{node}-vm"


def eni_name(machine: str, role: str) -> str:
    """network_interface_name of a machine's secondary ENI."""
    return f"{machine}-{role}"


def user_data_problem(decoded_bytes: int) -> str | None:
    """The refusal of a payload of `decoded_bytes` (the gzip stream, before base64), or None when it fits."""
    if decoded_bytes <= USER_DATA_MAX_BYTES.value:
        return None
    return (
        f"the payload is {decoded_bytes:,} bytes gzip-compressed, over Alibaba's {USER_DATA_MAX_BYTES.value:,} bytes of user "
        f"data before base64 ({USER_DATA_MAX_BYTES.source}): lower containersPerRouter"
    )


def site_names(plan: Plan, site: str) -> list[str]:
    """Every name alicloud.py gives this site's resources on the Alibaba side."""
    network = network_name(site)
    router, client = plan.router(site).name, plan.client(site).name
    names = [network, switch_name(network, "wan"), switch_name(network, "lan"), address_name(router)]
    names += [eni_name(machine_name(router), "lan")]
    for node in (router, client):
        names += [node]  # instance_name and host_name
        names += [security_group_name(policy_name(node), kind) for kind in GROUP_KINDS]
    return names


def _quota_problem(plan: Plan, site: str, same: list[str], key: str, what: str, scope: str, name: str) -> list[str]:
    """One problem, on the first site beyond the quota among `same` (config order), one resource per site."""
    allowed = quota(plan, LIMITS, key)
    if len(same) <= allowed or site not in same or same.index(site) != allowed:
        return []
    return [
        f"alicloud site `{site}`: the stack has {len(same)} Alibaba sites {scope}, one {what} each, over "
        f"{quota_words(plan, LIMITS, key)} ({name}): {_RAISE}, or put some of these sites on another platform"
        + (" or region" if "region" in scope else "")
        + quota_fix("alicloud", key)
    ]


def site_checks(plan: Plan, site: str, site_rules: SiteRules) -> list[str]:
    """What an Alibaba site of this stack would break, as components/clouds/alicloud.py builds it (pure)."""

    where = f"alicloud site `{site}`"
    problems: list[str] = []
    for node, rules, enis in (
        (plan.router(site), site_rules.router, ENIS_PER_ROUTER),
        (plan.client(site), site_rules.client, 1),
    ):
        packed = pack_rules(rules)
        for kind, members in packed.items():
            if len(members) > GROUP_RULES_MAX.value:
                problems.append(
                    f"{where}: the {kind} security group of its {node.kind} {node.name} would hold {len(members)} rules "
                    f"({len(plan.peer_sites(site))} peer routers), over Alibaba's {GROUP_RULES_MAX.value} per security group "
                    f"({GROUP_RULES_MAX.source}): {plan.fewer_peers_fix(site)}"
                )
        if len(packed) > GROUPS_PER_ENI.value:
            problems.append(
                f"{where}: each ENI of {node.name} would be in {len(packed)} security groups, over Alibaba's "
                f"{GROUPS_PER_ENI.value} ({GROUPS_PER_ENI.source})"
            )
        total = sum(len(m) for m in packed.values())
        if total > RULES_PER_ENI_MAX.value:
            problems.append(
                f"{where}: the {enis} ENI(s) of {node.name} would carry {total} rules over their security groups, over "
                f"Alibaba's {RULES_PER_ENI_MAX.value} per ENI ({RULES_PER_ENI_MAX.source}): {plan.fewer_peers_fix(site)}"
            )
    pattern = LIMITS.resource_name_pattern
    assert pattern is not None
    for name in site_names(plan, site):
        if not fullmatch(pattern, name):
            problems.append(
                f"{where}: the name {name!r} is not one Alibaba accepts ({pattern.value}; {pattern.source}): use a shorter site name"
            )
    here = plan.config.site(site)
    alibaba = [s for s in plan.config.sites if s.platform == "alicloud"]
    problems += _quota_problem(
        plan, site, [s.name for s in alibaba], "eipsPerAccount", "EIP (the router's)", "in the account", "eip_quota_instances_num"
    )
    in_region = [s.name for s in alibaba if s.region == here.region]
    problems += _quota_problem(plan, site, in_region, "vpcsPerRegion", "VPC", f"in region {here.region}", "vpc_quota_instances_num")
    return problems


LIMITS = PlatformLimits(
    quotas={"eipsPerAccount": EIPS_PER_ACCOUNT, "vpcsPerRegion": VPCS_PER_REGION},
    platform="alicloud",
    # AlicloudMachine sends base64(gzip(#cloud-config)) (alicloud.encode_user_data -> limits.user_data_as_sent).
    user_data_encoding="gzip+base64",
    user_data_max_bytes=USER_DATA_MAX_BYTES,
    # The limit counts the bytes before base64, i.e. the gzip stream this program sends.
    user_data_measure="decoded",
    ingress_rules_per_group=GROUP_RULES_MAX,
    groups_per_nic=GROUPS_PER_ENI,
    rule_description_max=Documented(
        512,
        "pulumi-alicloud 4.0 ecs.SecurityGroupRule.description docstring: 'can be up to 1 to 512 characters in length'; "
        "https://www.alibabacloud.com/help/en/ecs/developer-reference/api-ecs-2014-05-26-authorizesecuritygroup",
    ),
    rule_description_pattern=Documented(
        r"(?!https?://).{1,512}",
        "https://www.alibabacloud.com/help/en/ecs/developer-reference/api-ecs-2014-05-26-authorizesecuritygroup "
        "(Description: 1 to 512 characters, cannot start with http:// or https://)",
    ),
    # Intersection of the rules of every name the module gives: vpc/vswitch/security group/EIP/ENI names (start with a
    # letter, 2..128, letters digits . _ : -) and the instance hostname (2..64, letters digits and '-', not at either
    # end, no '--'), so the node name can be both instance name and host name.
    resource_name_pattern=Documented(
        r"(?=.{2,64}\Z)[A-Za-z][A-Za-z0-9]*(?:-[A-Za-z0-9]+)*",
        f"{_RUN_INSTANCES} (HostName, InstanceName); pulumi-alicloud 4.0 docstrings of ecs.SecurityGroup."
        "security_group_name, ecs.EipAddress.address_name, ecs.EcsNetworkInterface.network_interface_name",
    ),
    max_nics={
        "ecs.g6.large": Documented(
            2,
            "https://www.alibabacloud.com/help/en/ecs/user-guide/general-purpose-instance-families#g6 (ENIs column; "
            "UNCONFIRMED from the stored copies: check with ecs.get_instance_types(instance_type=..., eni_amount=2))",
        ),
    },
    login_key_types=Documented(
        ("ssh-rsa", "ssh-dss", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521"),
        f"{_IMPORT_KEY}: 'The imported key pair must support one of the following encryption methods: rsa, dsa, "
        "ssh-rsa, ssh-dss, ecdsa' (no ed25519)",
    ),
    notes={
        "login_user": Documented(
            "Linux public images log in as root (or ecs-user where the image supports it and ImageOptions.LoginAsNonRoot "
            "is set); the key pair is installed for that user. There is no 'ubuntu' login with the key pair.",
            f"{_LOGIN_USER} ; alibabacloud-ecs20140526 RunInstancesRequestImageOptions.login_as_non_root",
        ),
        "cloud_init": Documented(
            "cloud-init is preinstalled in all Alibaba Cloud public images and reads user data from the AliYun "
            "datasource (http://100.100.100.200/2016-01-01/user-data); gzip user data is decompressed by cloud-init "
            "(user_data.convert_string). cloud-init version and the module list of the Ubuntu 24.04 image's "
            "/etc/cloud/cloud.cfg (users_groups, ssh, write_files, package-update-upgrade-install): UNCONFIRMED.",
            "https://www.alibabacloud.com/help/en/ecs/user-guide/manage-the-instance-initialization-configuration ; "
            "https://docs.cloud-init.io/en/latest/reference/datasources/aliyun.html",
        ),
        "security_group_defaults": Documented(
            "A basic security group without rules admits inbound traffic from members of the same group only and all "
            "outbound traffic (inner_access_policy=Drop removes the former); rules in a VPC group need nic_type "
            "'intranet' (provider default 'internet').",
            "https://help.aliyun.com/en/ecs/user-guide/security-group-rules ; pulumi-alicloud 4.0 ecs.SecurityGroupRule.nic_type docstring",
        ),
        "eni_hot_attach": Documented(
            "AttachNetworkInterface: the ENI must be Available and in the instance's zone and VPC; the instance must be "
            "Running or Stopped, and some instance types only accept ENIs while Stopped. The attachment is asynchronous.",
            "https://help.aliyun.com/en/ecs/developer-reference/api-ecs-2014-05-26-attachnetworkinterface",
        ),
        "eip_association": Documented(
            "EipAssociation instance_type 'EcsInstance' (default) binds the EIP to the instance's primary ENI in NAT "
            "mode; 'NetworkInterface' is for a secondary ENI. The instance must have no fixed public IP "
            "(internet_max_bandwidth_out=0).",
            "pulumi-alicloud 4.0 ecs.EipAssociation.instance_type docstring ; "
            "https://www.alibabacloud.com/help/en/eip/developer-reference/api-vpc-2016-04-28-associateeipaddress",
        ),
        "image_changes": Documented(
            "Instance.image_id updates run ReplaceSystemDisk (the system disk is rebuilt in place) and user_data "
            "updates reboot the instance: both belong in ignore_changes.",
            "pulumi-alicloud 4.0 ecs.Instance.user_data docstring ; "
            "https://www.alibabacloud.com/help/en/ecs/developer-reference/api-ecs-2014-05-26-replacesystemdisk",
        ),
        "quotas": Documented(
            "Default quotas a many-site stack meets: 20 EIPs per account (eip_quota_instances_num; this module uses one "
            "per site, the router's: the client has an instance public IP), 10 VPCs per region (vpc_quota_instances_num), "
            "AllocateEipAddress 120 calls per 60 s. site_checks refuses a stack over the first two.",
            f"{_EIP_QUOTAS} ; {_VPC_QUOTAS}",
        ),
        "image_names": Documented(
            "System Ubuntu images are named like ubuntu_24_04_x64_20G_alibase_YYYYMMDD.vhd (name == id); "
            "ecs.get_images(name_regex) matches the image name.",
            "https://github.com/aliyun/terraform-provider-alicloud/blob/master/alicloud/data_source_alicloud_images.go",
        ),
    },
    site_checks=site_checks,
)


# Canonical's x86_64 system images, e.g. ubuntu_24_04_x64_20G_alibase_20240923.vhd (name == id); not the UEFI, ARM
# or other variants, whose names differ. name_regex is matched against ImageName with Go's regexp:
# https://github.com/aliyun/terraform-provider-alicloud/blob/master/alicloud/data_source_alicloud_images.go
UBUNTU_NAME_REGEX: Final = r"^ubuntu_24_04_x64_20G_alibase_\d{8}\.vhd$"
NODES: Final = NodeDefaults(
    # ecs.g6.large: 2 vCPUs, 8 GiB, 2 ENIs (primary + one secondary): enough for a router's WAN and LAN NIC.
    router_size="ecs.g6.large",
    client_size="ecs.g6.large",
    size_format="an ECS instance type, e.g. ecs.g6.large (the router's must allow 2 ENIs: checked against the region before the router is created)",
    image=f"the newest system image of the region whose name matches {UBUNTU_NAME_REGEX} (Ubuntu 24.04 x86_64, cloud-init)",
    image_format="an ECS image id of the site's region, e.g. ubuntu_24_04_x64_20G_alibase_20240923.vhd or m-...",
    source="https://www.alibabacloud.com/help/en/ecs/user-guide/general-purpose-instance-families ; https://www.alibabacloud.com/help/en/ecs/user-guide/public-image-overview",
)
# Zone ids are the region id and a letter, with a '-' in the cn- regions (cn-hangzhou-h, cn-hongkong-b) and without
# elsewhere (eu-central-1a, ap-southeast-1b); both forms are accepted for any region.
ZONE_NAMING: Final = ZoneNaming(
    pattern=r"{region}-?[a-z]",
    rule="the region followed by a letter, with a '-' in the cn- regions (cn-hangzhou-h) and without elsewhere (eu-central-1a)",
    source="https://www.alibabacloud.com/help/en/ecs/product-overview/regions-and-zones",
)

TRAITS: Final = PlatformTraits(
    name="alicloud",
    site_module="multicloud_overlay.components.clouds.alicloud",
    required_site_keys=("region",),
    default_underlay_mtu=Documented(1500, "https://www.alibabacloud.com/help/en/ecs/user-guide/jumbo-frames (ENIs default to 1,500)"),
    limits=LIMITS,
    example_site={"region": "eu-central-1"},
    nodes=NODES,
    zone_naming=ZONE_NAMING,
    # A secondary ENI attached after boot is not configured by the image.
    payload_configures_router_lan=True,
    example_regions=("eu-central-1", "eu-west-1", "ap-southeast-1", "us-west-1", "us-east-1", "ap-northeast-1"),
    sites_per_region=10,
)
