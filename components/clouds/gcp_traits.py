"""Google Cloud: the documented limits components/clouds/gcp.py relies on, the names it builds and how it folds a
node's rules into VPC firewall rules (pure; see components/limits.py).

Reviewed 2026-11-29 against Compute Engine's discovery document (google-api-python-client 2.202.0,
googleapiclient/discovery_cache/documents/compute.v1.json, revision 20261106), GoogleCloudPlatform/guest-agent and
canonical/cloud-init. Report: docs/platform-review/gcp.md.

`firewall_rule_plans`, `nic_of_rule` and `gcp_name` are what gcp.py uses, so `site_checks` (run by check_limits before
any resource exists) sees exactly the firewall rules, their sources and the names the program would register.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from multicloud_overlay.overlay.rules import IngressRule, PeerRouter, RuleProtocol
from multicloud_overlay.overlay.traits import Documented, NodeDefaults, PlatformLimits, PlatformTraits, ZoneNaming, fullmatch

if TYPE_CHECKING:
    from multicloud_overlay.overlay.plan import Plan
    from multicloud_overlay.overlay.rules import SiteRules

_DISCOVERY = "https://github.com/googleapis/google-api-python-client/blob/main/googleapiclient/discovery_cache/documents/compute.v1.json"
_GUEST_AGENT = "https://github.com/GoogleCloudPlatform/guest-agent"

# GCP resource names: RFC 1035, 1-63 characters (Firewall.name, Instance.name, Network.name, Subnetwork.name,
# Address.name and Tags.items in the discovery document). Pulumi auto-naming appends "-" and a random hex suffix
# (7 characters for bridged providers, 8 in some examples): a logical name keeps room for "-" and 8.
NAME_PATTERN: Final = Documented(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?", _DISCOVERY)
GCP_NAME_RE: Final = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
GCP_NAME_MAX: Final = 63
AUTONAME_SUFFIX: Final = 9
LOGICAL_NAME_MAX: Final = GCP_NAME_MAX - AUTONAME_SUFFIX

# Firewall protocol strings: the well-known names, or the IP protocol number (ICMPv6 has no name there).
FIREWALL_PROTOCOL: Final[Mapping[RuleProtocol, str]] = {"tcp": "tcp", "udp": "udp", "icmp": "icmp", "icmpv6": "58"}
PROTOCOL_FAMILY: Final[Mapping[str, int]] = {"icmp": 4, "58": 6}

SOURCE_RANGES_PER_RULE: Final = Documented(256, "https://github.com/bakaphp/kanvas-ecosystem-api/pull/7933")
"""Source ranges one VPC firewall rule takes: 256 reported in 2026 (a third-party change splitting rules for it);
the VPC quota page of 2023 said 5,000 (https://github.com/crowdsecurity/cs-cloud-firewall-bouncer/issues/27).
UNCONFIRMED in Google's current documentation: gcp.py keeps below the lower one."""
PEERS_PER_RULE: Final = 250
"""Peer routers per folded rule: siteIds 1-250 share rule 1, 251-500 rule 2, ... (at most 4 rules for ids <= 999)."""

# google-guest-agent, on the first boot of an instance (/etc/google_instance_id absent or different), regenerates
# every /etc/ssh/ssh_host_*_key when [InstanceSetup] set_host_keys is true (its default), and its accounts daemon
# creates a sudo user (google-sudoers: NOPASSWD:ALL) for every name in ssh-keys metadata. The payload writes this
# file in cloud-init's network stage, before the agent (After=network-online.target) reads its configuration.
# The pinned host key lives outside /etc/ssh/ssh_host_* anyway (cloudinit/render.py); [NetworkInterfaces] stays on
# (the agent configures the secondary NIC).
INSTANCE_CONFIGS: Final = Documented(
    "[InstanceSetup]\nset_host_keys = false\n\n[Daemons]\naccounts_daemon = false\n",
    f"{_GUEST_AGENT}/blob/main/google_guest_agent/cfg/cfg.go",
)


def gcp_name(name: str, limit: int = LOGICAL_NAME_MAX) -> str:
    """A valid GCP resource name (or network tag) for `name`: unchanged when already valid and short enough,
    otherwise lower-cased, invalid characters replaced, cut to `limit` and made unique by a hash of `name`."""
    if len(name) <= limit and GCP_NAME_RE.match(name):
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:6]
    body = re.sub(r"[^-a-z0-9]+", "-", name.lower()).strip("-")
    if not body or not body[0].isalpha():
        body = f"n-{body}".rstrip("-")
    body = body[: limit - len(digest) - 1].rstrip("-")
    return f"{body}-{digest}"


@dataclass(frozen=True)
class FirewallRulePlan:
    """One VPC firewall rule of a node's NIC as gcp.py registers it (a peer router's address is resolved later)."""

    name: str
    """Name inside the node's policy (the resource is gcp_name(f"<node>-<nic>-fw-<name>"))."""
    protocol: str
    """GCP protocol string (FIREWALL_PROTOCOL)."""
    ports: tuple[str, ...]
    family: Literal[4, 6]
    sources: tuple[str | PeerRouter, ...]
    description: str


def firewall_rule_name(rule: IngressRule) -> str:
    """A rule with a literal source: the plan's name plus its port (tunnel-from-lan-4789), so a protocol switch
    creates the new port's rule before the old one goes."""
    return rule.name if rule.port is None else f"{rule.name}-{rule.port}"


def peer_block(site_id: int) -> int:
    return (site_id - 1) // PEERS_PER_RULE


def peer_rule_name(kind: str, block: int, port: int | None) -> str:
    """The folded rule of the peer routers of one siteId block: tunnel-from-peers-4789, icmp-from-peers,
    tunnel-from-peers2-4789 (siteIds 251-500)..."""
    name = f"{kind}-from-peers" + ("" if block == 0 else str(block + 1))
    return name if port is None else f"{name}-{port}"


def firewall_rule_plans(rules: Sequence[IngressRule], site_ids: Mapping[str, int]) -> list[FirewallRulePlan]:
    """A NIC's firewall rules: literal sources one to one; the peer routers' rules folded into one rule per kind
    (tunnel, icmp) and siteId block, listing every peer's /32 in siteId order.

    The number of rules per site is then constant (10) whatever the number of peers, against a per-project
    firewall-rule quota, and a hub swap updates source ranges in place."""
    out: list[FirewallRulePlan] = []
    folded: dict[tuple[str, int, str, int | None], list[IngressRule]] = {}
    for rule in rules:
        protocol = FIREWALL_PROTOCOL[rule.protocol]
        ports = () if rule.port is None else (str(rule.port),)
        if isinstance(rule.source, PeerRouter):
            kind = rule.name.rsplit("-from-", 1)[0]
            folded.setdefault((kind, peer_block(site_ids[rule.source.site]), protocol, rule.port), []).append(rule)
        else:
            out.append(FirewallRulePlan(firewall_rule_name(rule), protocol, ports, rule.family, (rule.source,), rule.description))
    for (kind, block, protocol, port), members in sorted(folded.items(), key=lambda item: (item[0][0], item[0][1])):
        members.sort(key=lambda r: site_ids[r.source.site] if isinstance(r.source, PeerRouter) else 0)
        families = {r.family for r in members}
        assert len(families) == 1, f"peer rules {kind} mix address families"
        description = members[0].description.rsplit(" from ", 1)[0] + " from the peer routers"
        out.append(
            FirewallRulePlan(
                peer_rule_name(kind, block, port),
                protocol,
                () if port is None else (str(port),),
                members[0].family,
                tuple(r.source for r in members),
                description,
            )
        )
    return out


def nic_of_rule(rule: IngressRule, lan_cidr: ipaddress.IPv4Network) -> Literal["wan", "lan"]:
    """The router NIC a rule's traffic arrives on: `lan` when it comes from inside the site LAN, else `wan` (a
    peer router's public address, the admin range). Every NIC is in its own VPC network with its own rules."""
    if isinstance(rule.source, PeerRouter):
        return "wan"
    net = ipaddress.ip_network(rule.source, strict=False)
    return "lan" if isinstance(net, ipaddress.IPv4Network) and net.subnet_of(lan_cidr) else "wan"


def firewall_resource_name(node: str, nic: str, rule: str) -> str:
    return gcp_name(f"{node}-{nic}-fw-{rule}")


def node_policies(plan: Plan, site: str, site_rules: SiteRules) -> dict[tuple[str, str], list[FirewallRulePlan]]:
    """(node, nic) -> the firewall rules gcp.py registers for it (router: wan and lan; client: lan)."""
    site_ids = {s.name: s.site_id for s in plan.config.sites}
    lan = plan.config.site(site).lan_cidr
    router, client = plan.router(site).name, plan.client(site).name
    rules = site_rules.router
    return {
        (router, "wan"): firewall_rule_plans([r for r in rules if nic_of_rule(r, lan) == "wan"], site_ids),
        (router, "lan"): firewall_rule_plans([r for r in rules if nic_of_rule(r, lan) == "lan"], site_ids),
        (client, "lan"): firewall_rule_plans(site_rules.client, site_ids),  # the client's only NIC
    }


def site_checks(plan: Plan, site: str, site_rules: SiteRules) -> list[str]:
    """Every documented GCP limit the site's firewall rules and names (as gcp.py builds them) would break."""
    where = f"gcp site `{site}`"
    problems: list[str] = []
    names: list[str] = []
    for (node, nic), rules in node_policies(plan, site, site_rules).items():
        for rule in rules:
            if len(rule.sources) > SOURCE_RANGES_PER_RULE.value:
                problems.append(
                    f"{where}: firewall rule {rule.name} of {node} ({nic}) would list {len(rule.sources)} source ranges, over "
                    f"{SOURCE_RANGES_PER_RULE.value} ({SOURCE_RANGES_PER_RULE.source})"
                )
            literal = {ipaddress.ip_network(s, strict=False).version for s in rule.sources if isinstance(s, str)}
            if literal - {rule.family} or PROTOCOL_FAMILY.get(rule.protocol, rule.family) != rule.family:
                problems.append(
                    f"{where}: firewall rule {rule.name} of {node} mixes address families ({LIMITS.notes['rule_family'].source})"
                )
            names.append(firewall_resource_name(node, nic, rule.name))
    for node in (plan.router(site).name, plan.client(site).name):
        names += [
            gcp_name(f"{node}-vm"),
            gcp_name(f"{node}-{'wan' if node.endswith('-router') else 'lan'}-address"),
            gcp_name(node, GCP_NAME_MAX),
        ]
    names += [gcp_name(f"{site}-{nic}-{kind}") for nic in ("wan", "lan") for kind in ("vpc", "subnet")]
    for name in names:
        if not fullmatch(NAME_PATTERN, name) or len(name) > LOGICAL_NAME_MAX:
            problems.append(f"{where}: the name {name!r} is one GCP refuses ({NAME_PATTERN.source})")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(f"{where}: names {duplicates} would be given twice (firewall names are unique per project)")
    return problems


LIMITS = PlatformLimits(
    platform="gcp",
    # GcpMachine puts the plain #cloud-config text in metadata["user-data"].
    user_data_encoding="plain",
    # Metadata.items[].value: "their size must be less than or equal to 262144 bytes (256 KiB)"; the whole instance
    # metadata (user-data + block-project-ssh-keys) must stay under 512 KB (see notes).
    user_data_max_bytes=Documented(262144, _DISCOVERY),
    user_data_measure="decoded",
    # VPC firewall rules per project (all networks of the project together), the quota a new project usually gets.
    # UNCONFIRMED in Google's documentation (the value is shown per project in the console): see notes. Not checked:
    # gcp.py needs 10 rules per site whatever the number of peers.
    ingress_rules_per_group=Documented(100, "https://cloud.google.com/firewall/docs/quotas"),
    # No security-group object: every rule of the NIC's network whose target tags match applies.
    groups_per_nic=Documented(1, "https://cloud.google.com/firewall/docs/firewalls#rule_assignment"),
    rule_description_max=None,
    rule_description_pattern=None,
    resource_name_pattern=NAME_PATTERN,
    max_nics={
        # 2 vCPUs or fewer: up to 2 vNICs; more: one per vCPU up to 8 (e2-small has 2 shared vCPUs).
        "e2-small": Documented(2, "https://cloud.google.com/vpc/docs/multiple-interfaces-concepts#max-interfaces"),
    },
    # No ssh-keys metadata is used any more (the payload installs the login user's keys, and project keys are
    # blocked); the guest agent would write any key type sshd accepts.
    login_key_types=Documented(
        ("ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-ed25519"),
        f"{_GUEST_AGENT}/blob/main/google_guest_agent/non_windows_accounts.go",
    ),
    notes={
        "firewall_quota_unconfirmed": Documented(
            "Default 'Firewall rules' quota per project: 100 reported for upgraded accounts (third-party: "
            "github.com/vanvalenlab/kiosk-console/pull/297); Google documents the quota without a number, so "
            "check_limits refuses nothing on it. gcp.py folds the peers' rules: 10 rules per site (11 sites in a "
            "project at 100 rules). Raise it in the console (IAM & Admin > Quotas, compute.googleapis.com/firewalls).",
            "https://github.com/vanvalenlab/kiosk-console/pull/297",
        ),
        "networks_quota": Documented(
            "'Networks' per project can be as low as 5 (third-party report; UNCONFIRMED default); every site uses 2 VPC "
            "networks. Not refused by check_limits for want of a documented default.",
            "https://github.com/trailofbits/algo/issues/1520",
        ),
        "static_addresses_quota": Documented(
            "'Static IP addresses' per region and project: documented without a default number (UNCONFIRMED); every site reserves 2.",
            "https://cloud.google.com/vpc/docs/quota",
        ),
        "metadata_total": Documented("All metadata keys and values together must be less than 512 KB.", _DISCOVERY),
        "rule_family": Documented(
            "A firewall rule can contain either IPv4 or IPv6 ranges, but not both.",
            "https://cloud.google.com/firewall/docs/using-firewalls",
        ),
        "default_rules": Documented(
            "A new custom-mode VPC network has only the implied rules (priority 65535): deny all ingress, allow all "
            "egress; the default-allow-* rules exist only in the auto-created 'default' network.",
            "https://cloud.google.com/firewall/docs/firewalls#default_firewall_rules",
        ),
        "host_keys": Documented(
            "google-guest-agent regenerates every /etc/ssh/ssh_host_*_key (and ecdsa, ed25519, rsa) on the first boot "
            "of an instance when [InstanceSetup] set_host_keys is true (the default); its config is "
            "/etc/default/instance_configs.cfg, then .distro, then .template (later files win), read at agent start; "
            "the unit starts After=network-online.target, i.e. after cloud-init's network stage (write_files, ssh).",
            f"{_GUEST_AGENT}/blob/main/google_guest_agent/instance_setup.go",
        ),
        "accounts": Documented(
            "The guest agent creates a user for every name in ssh-keys metadata (instance, plus project unless "
            "block-project-ssh-keys is TRUE), adds it to google-sudoers (%google-sudoers ALL=(ALL:ALL) NOPASSWD:ALL), "
            "also an existing local user of that name; it stops managing accounts when OS Login is enabled. gcp.py "
            "sets no ssh-keys, blocks project keys, and the payload turns the accounts daemon off (whether that also leaves "
            "OS Login's sshd/PAM setup undone, in this agent and in the newer plugin-based one: UNCONFIRMED; the local "
            "login user logs in either way, see os_login).",
            f"{_GUEST_AGENT}/blob/main/google_guest_agent/non_windows_accounts.go",
        ),
        "block_project_keys": Documented(
            "Instance metadata block-project-ssh-keys=TRUE keeps project-wide ssh-keys off the VM.",
            "https://cloud.google.com/compute/docs/connect/restrict-use-of-ssh-keys#block-keys",
        ),
        "os_login": Documented(
            "pam_oslogin_login returns PAM_IGNORE for a user the metadata server does not know (404): a local user "
            "created by cloud-init still logs in with its authorized_keys when OS Login is enabled. Whether a project "
            "that enforces OS Login 2-step verification still lets it in non-interactively: UNCONFIRMED.",
            "https://github.com/GoogleCloudPlatform/guest-oslogin/blob/master/src/pam/pam_oslogin_login.cc",
        ),
        "login_user": Documented(
            "cloud-init's GCE datasource installs ssh-keys entries for the default user ('ubuntu') and 'cloudinit' only.",
            "https://github.com/canonical/cloud-init/blob/main/cloudinit/sources/DataSourceGCE.py",
        ),
        "secondary_nic": Documented(
            "The guest agent ([NetworkInterfaces] setup = true) writes /run/netplan/20-google-guest-agent-ethernet.yaml "
            "with DHCP for the secondary NICs.",
            f"{_GUEST_AGENT}/blob/main/google_guest_agent/network/manager/netplan_linux.go",
        ),
        "image": Documented(
            "Ubuntu 24.04 images are published in project ubuntu-os-cloud under the family ubuntu-2404-lts-amd64 (and -arm64).",
            "https://documentation.ubuntu.com/gcp/gcp-how-to/find-ubuntu-images/",
        ),
    },
    first_boot_files={"/etc/default/instance_configs.cfg": INSTANCE_CONFIGS},
    site_checks=site_checks,
)


UBUNTU_IMAGE_FAMILY: Final = "ubuntu-2404-lts-amd64"
UBUNTU_IMAGE_PROJECT: Final = "ubuntu-os-cloud"
NODES: Final = NodeDefaults(
    # Shared-core e2 types (2 vCPUs or fewer) take at most 2 NICs; above that, one NIC per vCPU, up to 8.
    router_size="e2-small",
    client_size="e2-small",
    size_format="a Compute Engine machine type of the zone, e.g. e2-small (the router's must allow 2 NICs)",
    image=f"the newest image of the family {UBUNTU_IMAGE_FAMILY} in the project {UBUNTU_IMAGE_PROJECT}",
    image_format=f"an image or image family as the boot disk takes it, e.g. projects/{UBUNTU_IMAGE_PROJECT}/global/images/family/{UBUNTU_IMAGE_FAMILY}",
    source="https://cloud.google.com/compute/docs/general-purpose-machines ; https://cloud.google.com/compute/docs/images/os-details",
)
ZONE_NAMING: Final = ZoneNaming(
    pattern=r"{region}-[a-z][a-z0-9]*",
    rule="the region, '-' and a letter, e.g. {region}-b",
    source="https://cloud.google.com/compute/docs/regions-zones",
)

TRAITS: Final = PlatformTraits(
    name="gcp",
    site_module="multicloud_overlay.components.clouds.gcp",
    required_site_keys=("region", "zone", "project"),
    default_underlay_mtu=Documented(1460, "https://cloud.google.com/vpc/docs/mtu (VPC networks default to 1,460 bytes)"),
    underlay_mtu_range=Documented((1300, 8896), "https://cloud.google.com/vpc/docs/mtu (any value between 1,300 and 8,896 bytes)"),
    limits=LIMITS,
    example_site={"region": "europe-west1", "zone": "europe-west1-b", "project": "example-project"},
    nodes=NODES,
    zone_naming=ZONE_NAMING,
)
