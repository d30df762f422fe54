"""Azure: the documented limits components/clouds/azure.py relies on, and the NSG rules it builds for a node
(pure; see components/limits.py).

Reviewed 2026-11-29 against the models of azure-mgmt-network 33.1.0 and azure-mgmt-compute 39.0.0 (PyPI wheels)
and Microsoft Learn. Report: docs/platform-review/azure.md.

`nsg_rule_plans` and `vnet_deny_plans` are what azure.py registers, so `site_checks` (run by check_limits before any
resource exists) sees exactly the rules, names, priorities and source counts of every NSG.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from multicloud_overlay.cloudinit.render import LOGIN_USER
from multicloud_overlay.overlay.rules import IngressRule, PeerRouter
from multicloud_overlay.overlay.traits import (
    Documented,
    NodeDefaults,
    PlatformLimits,
    PlatformTraits,
    fullmatch,
    quota,
    quota_fix,
    quota_words,
)

if TYPE_CHECKING:
    from multicloud_overlay.overlay.plan import Plan
    from multicloud_overlay.overlay.rules import SiteRules

_COMPUTE_MODEL = (
    "https://github.com/Azure/azure-sdk-for-python/blob/main/sdk/compute/azure-mgmt-compute/azure/mgmt/compute/models/_models.py"
)
_NETWORK_MODEL = (
    "https://github.com/Azure/azure-sdk-for-python/blob/main/sdk/network/azure-mgmt-network/azure/mgmt/network/models/_models.py"
)
_NSG_OVERVIEW = "https://learn.microsoft.com/en-us/azure/virtual-network/network-security-groups-overview"
_NETWORKING_LIMITS = (
    "https://learn.microsoft.com/en-us/azure/azure-resource-manager/management/azure-subscription-service-limits#azure-networking-limits"
)
_PUBLIC_IP_LIMITS = (
    "https://learn.microsoft.com/en-us/azure/azure-resource-manager/management/azure-subscription-service-limits#publicip-address"
)

NSG_RULES: Final = Documented(1000, _NETWORKING_LIMITS)
"""Security rules per NSG (inbound and outbound together); not adjustable."""
NSG_ADDRESSES: Final = Documented(4000, _NETWORKING_LIMITS)
"""IP addresses and ranges given as sources in all rules of one NSG (augmented rules)."""
STANDARD_PUBLIC_IPS_PER_REGION: Final = Documented(10, _PUBLIC_IP_LIMITS)
"""Standard public IPs per region and subscription by default ("vary by offer category type ... the default for
Enterprise Agreement subscriptions is 1000"); raised by a quota request."""
PUBLIC_IPS_PER_SITE: Final = 2
"""azure.py reserves one for the router's WAN NIC and one for the client (management)."""
ONE_FAMILY_PER_RULE: Final = Documented(
    "A rule's address prefixes must all be IPv4 or all IPv6 (ResourceCannotContainAddressPrefixesFromDifferentAddressFamilies).",
    "https://github.com/hashicorp/terraform-provider-azurerm/issues/12534",
)
ADMIN_USERNAME_DISALLOWED: Final = Documented(
    frozenset(
        [
            "administrator",
            "admin",
            "user",
            "user1",
            "test",
            "user2",
            "test1",
            "user3",
            "admin1",
            "1",
            "123",
            "a",
            "actuser",
            "adm",
            "admin2",
            "aspnet",
            "backup",
            "console",
            "david",
            "guest",
            "john",
            "owner",
            "root",
            "server",
            "sql",
            "support",
            "support_388945a0",
            "sys",
            "test2",
            "test3",
            "user4",
            "user5",
        ]
    ),
    _COMPUTE_MODEL,
)
COMPUTER_NAME: Final = Documented(
    r"[^\s~!@#$%^&*()=+_\[\]{}\\|;:.'\",<>/?]{0,63}[^\s~!@#$%^&*()=+_\[\]{}\\|;:.'\",<>/?-]",
    "https://learn.microsoft.com/en-us/azure/azure-resource-manager/management/resource-name-rules#microsoftcompute",
)
"""Linux computer names: at most 64, none of ~!@#$%^&*()=+_[]{}\\|;:.'",<>/? or blanks, not ending with - or ."""

# NSG priorities are 100..4096 (lower wins) and unique per direction.
PRIORITY_MIN: Final = 100
PRIORITY_MAX: Final = 4096
# Rules with a literal source are hashed into this range; the rule that admits every peer router of a protocol takes a
# fixed slot, and the rules that close the VNet default (AllowVnetInBound, 65000) come after every allow rule.
HASHED_PRIORITIES: Final = range(PRIORITY_MIN, 1000)
PEER_PRIORITY_BASE: Final[Mapping[str, int]] = {"Udp": 1000, "Tcp": 2000, "Icmp": 3000}
VNET_DENY_PRIORITY: Final[Mapping[int, int]] = {4: PRIORITY_MAX - 1, 6: PRIORITY_MAX}
VNET_DENY_NAME: Final[Mapping[int, str]] = {4: "deny-vnet-ipv4", 6: "deny-vnet-ipv6"}

NsgProtocol = Literal["Udp", "Tcp", "Icmp", "*"]
# Azure's SecurityRuleProtocol enum (API 2024-05-01) has Tcp, Udp, Icmp, Esp, Ah and *; it has no ICMPv6 value,
# so ICMPv6 rules use Icmp, scoped to their IPv6 source prefix.
NSG_PROTOCOL: Final[Mapping[str, NsgProtocol]] = {"udp": "Udp", "tcp": "Tcp", "icmp": "Icmp", "icmpv6": "Icmp"}


def ula_prefix(site_id: int) -> ipaddress.IPv6Network:
    """The site's IPv6 unique-local /48 (its VNet's IPv6 space): fd6f:766c:<siteId>::/48 (stable, distinct per site)."""
    if not 0 < site_id <= 0xFFFF:
        raise ValueError(f"siteId {site_id} does not fit a ULA global id")
    return ipaddress.IPv6Network(f"fd6f:766c:{site_id:x}::/48")


def hashed_priority(name: str, span: range = HASHED_PRIORITIES) -> int:
    """Preferred priority of a rule: a stable hash of its name into `span`."""
    digest = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
    return span.start + digest % len(span)


def assign_priorities(preferred: Mapping[str, int | None], span: range = HASHED_PRIORITIES) -> dict[str, int]:
    """Priority per rule name, independent of the order rules are listed in.

    A rule with a preferred priority gets exactly it (two rules asking for one slot is an error). Every other
    rule gets the stable hash of its name in `span`; on a collision the rule whose (hash, name) sorts first
    keeps the slot and the other probes upward to the next free slot (wrapping inside `span`).
    """
    taken: dict[int, str] = {}
    out: dict[str, int] = {}
    for name, slot in sorted(((n, p) for n, p in preferred.items() if p is not None), key=lambda item: (item[1], item[0])):
        if not PRIORITY_MIN <= slot <= PRIORITY_MAX:
            raise ValueError(f"rule {name}: priority {slot} is outside {PRIORITY_MIN}..{PRIORITY_MAX}")
        if slot in taken:
            raise ValueError(f"rules {taken[slot]} and {name} both ask for priority {slot}")
        taken[slot] = name
        out[name] = slot
    hashed = sorted((n for n, p in preferred.items() if p is None), key=lambda n: (hashed_priority(n, span), n))
    for name in hashed:
        slot = hashed_priority(name, span)
        for _ in range(len(span)):
            if slot not in taken:
                break
            slot = span.start + (slot - span.start + 1) % len(span)
        else:
            raise ValueError(f"no free priority in {span.start}..{span.stop - 1} for rule {name}")
        taken[slot] = name
        out[name] = slot
    return out


@dataclass(frozen=True)
class NsgRulePlan:
    """One inbound rule of a node's NSG as azure.py registers it (sources not yet resolved: a peer router's
    public address is known only at deployment)."""

    name: str
    protocol: NsgProtocol
    port: int | None
    sources: tuple[str | PeerRouter, ...]
    """One prefix, or several of one address family (an augmented rule)."""
    priority: int | None
    """Explicit priority; None: hashed from the name (assign_priorities)."""
    description: str
    access: Literal["Allow", "Deny"] = "Allow"


def _kind(rule: IngressRule) -> str:
    """tunnel / icmp: what a peer rule admits (the part of its name before -from-<peer>)."""
    return rule.name.rsplit("-from-", 1)[0]


def nsg_rule_plans(rules: Sequence[IngressRule], site_ids: Mapping[str, int]) -> list[NsgRulePlan]:
    """A node's allow rules: every rule with a literal source as it is, and the rules from peer routers folded into
    one augmented rule per kind (tunnel, icmp), listing every peer's /32 in siteId order.

    Folded, a hub holds a handful of rules whatever the number of peers (not 2 per peer written one by one to one
    NSG), and a hub swap updates the peer rules' sources in place instead of creating and deleting rules."""
    out: list[NsgRulePlan] = []
    peers: dict[tuple[str, NsgProtocol, int | None], list[IngressRule]] = {}
    for rule in rules:
        protocol = NSG_PROTOCOL[rule.protocol]
        if isinstance(rule.source, PeerRouter):
            peers.setdefault((_kind(rule), protocol, rule.port), []).append(rule)
        else:
            out.append(NsgRulePlan(rule.name, protocol, rule.port, (rule.source,), None, rule.description))
    for (kind, protocol, port), members in peers.items():
        members.sort(key=lambda r: site_ids[r.source.site] if isinstance(r.source, PeerRouter) else 0)
        description = members[0].description.rsplit(" from ", 1)[0] + " from the peer routers"
        out.append(
            NsgRulePlan(f"{kind}-from-peers", protocol, port, tuple(r.source for r in members), PEER_PRIORITY_BASE[protocol], description)
        )
    return out


def vnet_deny_plans(prefixes: Sequence[str]) -> list[NsgRulePlan]:
    """Deny rules (one per address family: a rule cannot mix them) for everything else from the site's own VNet
    prefixes, after every allow rule and before Azure's AllowVnetInBound (65000), which admits any protocol and
    port from the whole VNet (and peered or connected networks) whatever the allow rules say."""
    by_family: dict[int, list[str]] = {}
    for prefix in prefixes:
        by_family.setdefault(6 if ":" in prefix else 4, []).append(prefix)
    return [
        NsgRulePlan(
            VNET_DENY_NAME[family],
            "*",
            None,
            tuple(members),
            VNET_DENY_PRIORITY[family],
            f"everything else from the site VNet (IPv{family})",
            access="Deny",
        )
        for family, members in sorted(by_family.items())
    ]


def _region_quota_problems(plan: Plan, site: str) -> list[str]:
    cfg = plan.config.site(site)
    same = [s.name for s in plan.config.sites if s.platform == "azure" and s.region == cfg.region]
    used = PUBLIC_IPS_PER_SITE * (same.index(site) + 1)
    allowed = quota(plan, LIMITS, "standardPublicIpsPerRegion")
    if used <= allowed:
        return []
    return [
        f"azure site `{site}`: location {cfg.region} would hold {used} Standard public IPs ({PUBLIC_IPS_PER_SITE} per azure site; "
        f"this stack has {len(same)} azure sites there), over {quota_words(plan, LIMITS, 'standardPublicIpsPerRegion', ' per region and subscription')} "
        f"(the default varies by offer, e.g. 1,000 for Enterprise Agreements): request a 'Public IP Addresses - Standard' quota increase for {cfg.region} (Azure "
        f"portal, Quotas > Networking), or move sites.{site}.region to another location" + quota_fix("azure", "standardPublicIpsPerRegion")
    ]


def site_checks(plan: Plan, site: str, site_rules: SiteRules) -> list[str]:
    """Every documented Azure limit the site's NSGs, VMs and addresses (as azure.py builds them) would break."""
    site_ids = {s.name: s.site_id for s in plan.config.sites}
    where = f"azure site `{site}`"
    problems: list[str] = []
    if LOGIN_USER in ADMIN_USERNAME_DISALLOWED.value:
        problems.append(f"{where}: the admin user {LOGIN_USER!r} is a name Azure refuses ({ADMIN_USERNAME_DISALLOWED.source})")
    cfg = plan.config.site(site)
    deny = vnet_deny_plans([str(cfg.vpc_cidr), str(ula_prefix(cfg.site_id))])
    for node, rules in ((plan.router(site), site_rules.router), (plan.client(site), site_rules.client)):
        plans = nsg_rule_plans(rules, site_ids) + deny
        if len(plans) > NSG_RULES.value:
            problems.append(f"{where}: the NSG of {node.name} would hold {len(plans)} rules, over {NSG_RULES.value} ({NSG_RULES.source})")
        addresses = sum(len(p.sources) for p in plans)
        if addresses > NSG_ADDRESSES.value:
            problems.append(
                f"{where}: the NSG of {node.name} would list {addresses} source addresses, over {NSG_ADDRESSES.value} "
                f"({NSG_ADDRESSES.source}): {plan.fewer_peers_fix(site)}"
            )
        try:
            assign_priorities({p.name: p.priority for p in plans})
        except ValueError as error:
            problems.append(f"{where}: NSG of {node.name}: {error} (priorities 100-4096, unique: {_NETWORK_MODEL})")
        for p in plans:
            if not fullmatch(LIMITS.resource_name_pattern, p.name):
                problems.append(f"{where}: NSG rule name {p.name!r} of {node.name} is one Azure refuses ({LIMITS.resource_name_pattern})")
            if LIMITS.rule_description_max is not None and len(p.description) > LIMITS.rule_description_max.value:
                problems.append(
                    f"{where}: NSG rule {p.name} of {node.name} has a description of {len(p.description)} characters, over "
                    f"{LIMITS.rule_description_max.value} ({LIMITS.rule_description_max.source})"
                )
        if not fullmatch(COMPUTER_NAME, node.name):
            problems.append(f"{where}: computer name {node.name!r} is one Azure refuses ({COMPUTER_NAME.source})")
    return problems + _region_quota_problems(plan, site)


LIMITS = PlatformLimits(
    quotas={"standardPublicIpsPerRegion": STANDARD_PUBLIC_IPS_PER_REGION},
    platform="azure",
    # AzureMachine sends os_profile.custom_data=encode_custom_data(...): base64 of the plain payload.
    user_data_encoding="base64",
    # OSProfile.customData: "The base-64 encoded string is decoded to a binary array ... The maximum length of the
    # binary array is 65535 bytes."
    user_data_max_bytes=Documented(65535, _COMPUTE_MODEL),
    user_data_measure="decoded",
    ingress_rules_per_group=NSG_RULES,
    # NetworkInterface.networkSecurityGroup is a single reference: one NSG per NIC (plus one per subnet).
    groups_per_nic=Documented(1, _NETWORK_MODEL),
    # SecurityRulePropertiesFormat.description: "Restricted to 140 chars." No character restriction is documented.
    rule_description_max=Documented(140, _NETWORK_MODEL),
    rule_description_pattern=None,
    # Security rule names: 1-80, alphanumerics, underscores, periods and hyphens; start alphanumeric; end
    # alphanumeric or underscore.
    resource_name_pattern=Documented(
        r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,78}[A-Za-z0-9_])?",
        "https://learn.microsoft.com/en-us/azure/azure-resource-manager/management/resource-name-rules#microsoftnetwork",
    ),
    max_nics={
        "Standard_B2s": Documented(3, "https://learn.microsoft.com/en-us/azure/virtual-machines/sizes/general-purpose/bv1-series"),
    },
    # os_profile's key: the stack's generated ED25519 deploy key (components/credentials.py DeployKey).
    login_key_types=Documented(
        ("ssh-rsa", "ssh-ed25519"),
        "https://learn.microsoft.com/en-us/azure/virtual-machines/linux/create-ssh-keys-detailed",
    ),
    notes={
        "rsa_minimum": Documented(
            "RSA keys of at least 2048 bits; ED25519 (256 bits); ECDSA is not supported.",
            "https://learn.microsoft.com/en-us/azure/virtual-machines/linux/create-ssh-keys-detailed",
        ),
        "nsg_priorities": Documented("Priority 100-4096, unique per direction within an NSG; lower wins.", _NETWORK_MODEL),
        "nsg_protocols": Documented(
            "SecurityRuleProtocol: Tcp, Udp, Icmp, Esp, *, Ah (no separate ICMPv6 value; whether Icmp matches ICMPv6 for an "
            "IPv6 source is not documented: UNCONFIRMED).",
            _NETWORK_MODEL,
        ),
        "one_family_per_rule": ONE_FAMILY_PER_RULE,
        "default_rules": Documented(
            "Every NSG ends with AllowVnetInBound (65000: any protocol/port from the VirtualNetwork tag, which is the "
            "VNet address space, peered and connected networks, the host virtual IP and UDR prefixes), "
            "AllowAzureLoadBalancerInBound (65001) and DenyAllInBound (65500); outbound AllowVnetOutBound, "
            "AllowInternetOutBound, DenyAllOutBound. azure.py denies the site's own VNet prefixes at 4095/4096.",
            _NSG_OVERVIEW,
        ),
        "nsg_write_concurrency": Documented(
            "Parallel writes of rules to one NSG are answered with 429 RetryableErrorDueToAnotherOperation / "
            "AnotherOperationInProgress; azure.py writes a node's rules one after another.",
            "https://github.com/Azure/azure-sdk-for-python/issues/556",
        ),
        "admin_username": Documented(
            "1-64 characters on Linux; disallowed: administrator, admin, user, user1, test, user2, test1, user3, "
            "admin1, 1, 123, a, actuser, adm, admin2, aspnet, backup, console, david, guest, john, owner, root, server, "
            "sql, support, support_388945a0, sys, test2, test3, user4, user5. Cannot be changed after creation.",
            _COMPUTE_MODEL,
        ),
        "computer_name": Documented(
            "At most 64 characters on Linux; no spaces, control characters or ~!@#$%^&*()=+_[]{}\\|;:.'\",<>/?; "
            "cannot start with _ or end with . or -. Cannot be changed after creation.",
            COMPUTER_NAME.source,
        ),
        "login_user": Documented(
            "Ubuntu images are provisioned by cloud-init: the Azure datasource turns adminUsername into "
            "system_info.default_user, merged over the image's cloud.cfg default_user (sudo ALL=(ALL) NOPASSWD:ALL), "
            "and the os_profile SSH keys go to that default user. A cloud-config 'users:' list without 'default' "
            "creates no default user: azure.py names the payload's login user as adminUsername, so no second, "
            "full-root account exists, and gives the deploy key (Azure requires one).",
            "https://github.com/canonical/cloud-init/blob/main/cloudinit/sources/DataSourceAzure.py",
        ),
        "custom_data_immutable": Documented(
            "customData cannot be updated after the VM is created (VMs ignore changes to it).", _COMPUTE_MODEL
        ),
        "standard_public_ip": Documented(
            "Standard SKU public IPs are Static and closed to inbound traffic until an NSG allows it.",
            "https://learn.microsoft.com/en-us/azure/virtual-network/ip-services/public-ip-addresses#sku",
        ),
        "vcpus": Documented(
            "Regional vCPU quotas (total and per family: B-series, 4 vCPUs per site) are subscription-specific (UNCONFIRMED defaults).",
            "https://learn.microsoft.com/en-us/azure/quotas/per-vm-quota-requests",
        ),
        "arm_write_throttling": Documented(
            "ARM throttles per subscription and region with a token bucket: writes 200, refilled 10 per second.",
            "https://learn.microsoft.com/en-us/azure/azure-resource-manager/management/request-limits-and-throttling",
        ),
        "image": Documented(
            "Canonical:ubuntu-24_04-lts:server:latest is Ubuntu 24.04 LTS (Gen2, amd64).",
            "https://documentation.ubuntu.com/azure/azure-how-to/instances/find-ubuntu-images/",
        ),
    },
    site_checks=site_checks,
)


NODES: Final = NodeDefaults(
    # Standard_B2s (2 vCPUs, 4 GiB) is the smallest size here that takes two NICs (LIMITS.max_nics).
    router_size="Standard_B2s",
    client_size="Standard_B2s",
    size_format="an Azure VM size, e.g. Standard_B2s (the router's must allow 2 NICs)",
    image="Canonical:ubuntu-24_04-lts:server:latest",
    image_format="a Marketplace image URN publisher:offer:sku[:version] (version defaults to latest), as `az vm image list` prints it",
    source="https://learn.microsoft.com/en-us/azure/virtual-machines/sizes/general-purpose/bv1-series ; https://learn.microsoft.com/en-us/azure/virtual-machines/linux/cli-ps-findimage",
)

TRAITS: Final = PlatformTraits(
    name="azure",
    site_module="multicloud_overlay.components.clouds.azure",
    required_site_keys=("region",),
    # Azure documents 1500; VXLAN users report loss above ~1400 across Azure, so the default stays conservative.
    default_underlay_mtu=Documented(1400, "https://learn.microsoft.com/azure/virtual-network/virtual-network-tcpip-performance-tuning"),
    limits=LIMITS,
    example_site={"region": "westeurope"},
    nodes=NODES,
    example_regions=("westeurope", "northeurope", "francecentral", "germanywestcentral", "uksouth", "swedencentral", "eastus", "westus2"),
    sites_per_region=5,
)
