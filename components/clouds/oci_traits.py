"""Oracle Cloud (OCI): the documented limits components/clouds/oci.py relies on (pure: imports only components.limits).

Each value carries the page (or provider/SDK source) that states it. Review: docs/platform-review/oci.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Final, Literal

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
    from multicloud_overlay.overlay.rules import IngressRule, SiteRules

_METADATA = "https://docs.oracle.com/iaas/Content/Compute/Tasks/updatinginstancemetada.htm"
_NSG_LIMITS = "https://docs.oracle.com/iaas/Content/General/Concepts/servicelimits.htm#nsg_limits"
_VCN_LIMITS = "https://docs.oracle.com/iaas/Content/General/Concepts/servicelimits.htm#vcn_limits"
_SECURITY_RULES = "https://docs.oracle.com/en-us/iaas/Content/Network/Concepts/securityrules.htm"
_SHAPES = "https://docs.oracle.com/en-us/iaas/Content/Compute/References/computeshapes.htm#vm-standard"
_ORACLE_DS = "https://github.com/canonical/cloud-init/blob/main/cloudinit/sources/DataSourceOracle.py"
_RAISE = (
    "request a service limit increase (Console: Governance & Administration > Limits, Quotas and Usage > Request a "
    "service limit increase, https://docs.oracle.com/iaas/Content/General/Concepts/servicelimits.htm#Requesti) or "
    "spread the OCI sites over more regions"
)

# ---------------------------------------------------------------------------------------------------------------
# Documented numbers that components/clouds/oci.py packs and names its resources by.

NSG_RULES_MAX: Final = Documented(
    120,
    f"{_NSG_LIMITS} (limit securityrules-per-networksecuritygroup-count, default 120, ingress and egress together); "
    "https://github.com/oracle/terraform-provider-oci/issues/1154 ('Total security rules count 121 cannot be greater than 120')",
)
NSGS_PER_VNIC: Final = Documented(5, f"{_SECURITY_RULES}: 'A VNIC can be added to a maximum of five NSGs'")
METADATA_MAX_BYTES: Final = Documented(
    32_000,
    f"{_METADATA} (and LaunchInstanceDetails.metadata in the oci SDK / pulumi-oci Instance.metadata docstring): "
    "'The combined size of the metadata and extendedMetadata objects can be a maximum of 32,000 bytes'",
)
VCNS_PER_REGION: Final = Documented(50, f"{_VCN_LIMITS} (limit vcn-count, scope REGION, default 50)")
RESERVED_IPS_PER_REGION: Final = Documented(50, f"{_VCN_LIMITS} (limit reserved-public-ip-count, scope REGION, default 50)")

NsgGroup = Literal["main", "icmp"]
NSG_GROUPS: Final[tuple[NsgGroup, ...]] = ("main", "icmp")
"""The NSGs of one node's policy, each on all of the node's VNICs. A rule's NSG depends on its kind only (never on
its position or on the number of peers), so a hub swap or a new site moves no rule from one NSG to another."""
EGRESS_RULES: Final[Mapping[NsgGroup, int]] = {"main": 2, "icmp": 0}
"""Egress rules OciSecurityPolicy adds to each NSG (any IPv4, any IPv6): they count against the NSG's 120 too."""


def nsg_group(rule: IngressRule) -> NsgGroup:
    """The NSG of a rule: ICMP (ping and path-MTU errors) in its own, everything else (tunnels, SSH) in the main one."""
    return "icmp" if rule.protocol in ("icmp", "icmpv6") else "main"


def pack_rules(rules: Iterable[IngressRule]) -> dict[NsgGroup, list[IngressRule]]:
    """A node's ingress rules by NSG, every group of NSG_GROUPS present (possibly empty), in NSG_GROUPS order."""
    packed: dict[NsgGroup, list[IngressRule]] = {group: [] for group in NSG_GROUPS}
    for rule in rules:
        packed[nsg_group(rule)].append(rule)
    return packed


def nsg_rule_counts(rules: Iterable[IngressRule]) -> dict[NsgGroup, int]:
    """Security rules (ingress + the module's egress) each NSG of a node would hold: what OCI's 120 counts."""
    return {group: len(members) + EGRESS_RULES[group] for group, members in pack_rules(rules).items()}


def policy_name(node: str) -> str:
    """Name (and display-name prefix) of a node's OciSecurityPolicy."""
    return f"{node}-policy"


def nsg_name(policy: str, group: NsgGroup) -> str:
    """Resource and display name of one NSG of a policy (the main one keeps the name a single NSG had)."""
    return f"{policy}-nsg" if group == "main" else f"{policy}-{group}-nsg"


def machine_name(node: str) -> str:
    """Name of a node's OciMachine: the instance's display name; its VNICs are named after it."""
    return f"{node}-vm"


def primary_vnic_name(machine: str) -> str:
    return f"{machine}-vnic0"


def secondary_vnic_name(machine: str, role: str) -> str:
    return f"{machine}-{role}"


def metadata_size(metadata: Mapping[str, str]) -> int:
    """Bytes of instance metadata as OCI's 32,000 counts them, approximated as every key and value (the JSON
    punctuation aside): user_data (the encoded payload) plus ssh_authorized_keys if set."""
    return sum(len(key.encode()) + len(value.encode()) for key, value in metadata.items())


def metadata_problem(metadata: Mapping[str, str]) -> str | None:
    size = metadata_size(metadata)
    if size <= METADATA_MAX_BYTES.value:
        return None
    return (
        f"instance metadata of {size:,} bytes (user_data as sent: gzip+base64), over OCI's {METADATA_MAX_BYTES.value:,} "
        f"({METADATA_MAX_BYTES.source}): lower containersPerRouter"
    )


def _names(plan: Plan, site: str) -> list[str]:
    names: list[str] = []
    for node, kind in ((plan.router(site).name, "router"), (plan.client(site).name, "client")):
        machine = machine_name(node)
        names += [machine, primary_vnic_name(machine), *(nsg_name(policy_name(node), g) for g in NSG_GROUPS)]
        if kind == "router":
            names.append(secondary_vnic_name(machine, "lan"))
    return names


def _regional_quota(plan: Plan, site: str, name: str, what: str, limit_name: str) -> list[str]:
    """One problem, on the first OCI site beyond the quota in its region (sites in config order)."""
    allowed = quota(plan, LIMITS, name)
    here = plan.config.site(site)
    same = [s.name for s in plan.config.sites if s.platform == "oci" and s.region == here.region]
    if len(same) <= allowed or same.index(site) != allowed:
        return []
    return [
        f"oci site `{site}`: the stack has {len(same)} OCI sites in region {here.region}, one {what} each, over "
        f"{quota_words(plan, LIMITS, name, ' per region')} ({limit_name}): {_RAISE}" + quota_fix("oci", name)
    ]


def site_checks(plan: Plan, site: str, site_rules: SiteRules) -> list[str]:
    """What an OCI site of this stack would break, as components/clouds/oci.py builds it (pure)."""

    where = f"oci site `{site}`"
    problems: list[str] = []
    for node, rules in ((plan.router(site), site_rules.router), (plan.client(site), site_rules.client)):
        counts = nsg_rule_counts(rules)
        for group, count in counts.items():
            if count > NSG_RULES_MAX.value:
                peers = len(plan.peer_sites(site))
                problems.append(
                    f"{where}: the {group} NSG of its {node.kind} {node.name} would hold {count} security rules "
                    f"({count - EGRESS_RULES[group]} ingress + {EGRESS_RULES[group]} egress; {peers} peer routers), over OCI's "
                    f"{NSG_RULES_MAX.value} per NSG ({NSG_RULES_MAX.source}): {plan.fewer_peers_fix(site)}, "
                    "or request a higher securityrules-per-networksecuritygroup-count"
                )
        if len(counts) > NSGS_PER_VNIC.value:
            problems.append(
                f"{where}: the VNICs of {node.name} would be in {len(counts)} NSGs, over OCI's {NSGS_PER_VNIC.value} ({NSGS_PER_VNIC.source})"
            )
    for name in _names(plan, site):
        if not fullmatch(LIMITS.resource_name_pattern, name):
            assert LIMITS.resource_name_pattern is not None
            problems.append(
                f"{where}: display name {name!r} is not one OCI accepts ({LIMITS.resource_name_pattern.value}; "
                f"{LIMITS.resource_name_pattern.source}): use a shorter site name"
            )
    problems += _regional_quota(plan, site, "vcnsPerRegion", "VCN", "vcn-count")
    problems += _regional_quota(plan, site, "reservedPublicIpsPerRegion", "reserved public IP (the router's)", "reserved-public-ip-count")
    return problems


LIMITS = PlatformLimits(
    quotas={"vcnsPerRegion": VCNS_PER_REGION, "reservedPublicIpsPerRegion": RESERVED_IPS_PER_REGION},
    platform="oci",
    # OciMachine puts base64(gzip(#cloud-config)) in metadata["user_data"] (oci.encode_user_data); cloud-init's
    # Oracle datasource base64-decodes it and cloud-init decompresses gzip (notes["user_data_gzip"]).
    user_data_encoding="gzip+base64",
    user_data_max_bytes=METADATA_MAX_BYTES,
    # What counts: every metadata key and value (user_data as base64 text plus ssh_authorized_keys).
    user_data_measure="metadata",
    # 120 rules per NSG count ingress and egress together: the main NSG also holds the module's 2 egress rules
    # (EGRESS_RULES), which site_checks counts.
    ingress_rules_per_group=NSG_RULES_MAX,
    groups_per_nic=NSGS_PER_VNIC,
    rule_description_max=Documented(
        255,
        "https://docs.oracle.com/iaas/api/#/en/iaas/20160918/datatypes/AddSecurityRuleDetails (description: 0..255 "
        "characters; UNCONFIRMED from the stored copies, the SDK models state no length; no character restriction)",
    ),
    resource_name_pattern=Documented(
        r"[^\x00-\x1f\x7f]{1,255}",
        "https://docs.oracle.com/iaas/api/#/en/iaas/20160918/datatypes/LaunchInstanceDetails (displayName: "
        "'A user-friendly name. Does not have to be unique, and it's changeable'; 1..255 UNCONFIRMED; no character set)",
    ),
    max_nics={
        # Flex shapes: the VNIC count follows the OCPUs, so the key names the OCPUs the module gives each role.
        "VM.Standard.E4.Flex/2 OCPU (router, oci.ROUTER_OCPUS)": Documented(
            2, f"{_SHAPES}: 'VM with 1 OCPU: 2 VNICs. VM with 2 or more OCPUs: 1 VNIC per OCPU. Maximum 24 VNICs.'"
        ),
        "VM.Standard.E4.Flex/1 OCPU (client, oci.CLIENT_OCPUS)": Documented(
            2, f"{_SHAPES}: 'VM with 1 OCPU: 2 VNICs. VM with 2 or more OCPUs: 1 VNIC per OCPU. Maximum 24 VNICs.'"
        ),
    },
    login_key_types=Documented(
        ("ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-ed25519"),
        f"{_ORACLE_DS}: metadata ssh_authorized_keys is handed verbatim to cloud-init (authorized_keys of the default "
        "user), so any key type OpenSSH on Ubuntu 24.04 accepts works; OCI itself does not parse it (the API does not "
        "require the key at all; the Console does)",
    ),
    notes={
        "login_user": Documented(
            "Canonical Ubuntu images: default user 'ubuntu'; metadata ssh_authorized_keys goes to the default user. "
            "With a cloud-config 'users:' list that omits 'default', no 'ubuntu' user exists and cloud-init puts the "
            "metadata keys on root behind a 'login as ... rather than root' command prefix (cc_ssh.apply_credentials).",
            f"{_ORACLE_DS} ; https://github.com/canonical/cloud-init/blob/main/cloudinit/config/cc_ssh.py",
        ),
        "metadata_immutable": Documented(
            "metadata.user_data and metadata.ssh_authorized_keys cannot be changed after launch: an UpdateInstance "
            "that updates, removes or adds either is rejected (so both belong in ignore_changes, not only user_data).",
            "oci SDK UpdateInstanceDetails.metadata docstring; "
            "https://docs.oracle.com/iaas/api/#/en/iaas/20160918/datatypes/UpdateInstanceDetails",
        ),
        "user_data_gzip": Documented(
            "cloud-init's Oracle datasource base64-decodes metadata user_data, and cloud-init decompresses gzip "
            "user-data for every datasource (user_data.convert_string -> util.decomp_gzip): gzip+base64 works.",
            f"{_ORACLE_DS} ; https://github.com/canonical/cloud-init/blob/main/cloudinit/user_data.py",
        ),
        "host_firewall": Documented(
            "Ubuntu on OCI ships /etc/iptables/rules.v4 (netfilter-persistent): INPUT accepts RELATED/ESTABLISHED, "
            "ICMP, lo, udp sport 123 and tcp 22 NEW, then REJECT icmp-host-prohibited; FORWARD REJECT; OUTPUT to "
            "169.254.0.0/16 goes through chain InstanceServices. UDP 4500/4789/6081 and forwarding are rejected "
            "until the node script inserts its ACCEPT rules (plan.OPEN_HOST_FIREWALL). rules.v6: UNCONFIRMED.",
            "https://blogs.oracle.com/developers/post/enabling-network-traffic-to-ubuntu-images-in-oracle-cloud-infrastructure ; "
            "https://wiki.drake.org.uk/books/linux/page/oracle-cloud-hosting-configuring-default-iptables-on-a-virtual-machine",
        ),
        "default_security_list": Documented(
            "Every VCN's default security list admits TCP 22 and ICMP 3/4 from 0.0.0.0/0 and ICMP 3 from the VCN; "
            "security lists and NSGs are a union. OciNetwork takes it over with no ingress rules. Path-MTU errors for "
            "the instances' own outbound connections still arrive: the NSG egress rules are stateful.",
            f"{_SECURITY_RULES} ; https://www.ateam-oracle.com/pmtud-importance-and-considerations",
        ),
        "secondary_vnic": Documented(
            "A VnicAttachment is hot-added after launch; cloud-init's Oracle datasource configures secondary VNICs "
            "only with configure_secondary_nics (default False) and only at boot: the node script must add the LAN "
            "address itself, after the attachment exists.",
            _ORACLE_DS,
        ),
        "reserved_public_ip": Documented(
            "CreatePublicIp with lifetime RESERVED takes an optional privateIpId (assigned at creation, asynchronously); "
            "UpdatePublicIp moves it to another private IP (private_ip_id is updatable in terraform-provider-oci). "
            "The private IP must be a VNIC's primary one without a public IP of its own.",
            "https://github.com/oracle/terraform-provider-oci/blob/master/website/docs/r/core_public_ip.html.markdown ; "
            "https://github.com/oracle/terraform-provider-oci/blob/master/internal/service/core/core_public_ip_resource.go",
        ),
        "quotas": Documented(
            "Default service limits met by many sites in one region: 50 VCNs per region (vcn-count), 50 reserved public "
            "IPs per region (reserved-public-ip-count), 1 internet gateway per VCN, 1000 NSGs per VCN, core/memory "
            "limits per availability domain (standard-e4-core-count).",
            _VCN_LIMITS,
        ),
        "first_boot_network": Documented(
            "A router VNIC with assign_public_ip=false in a subnet whose only route is the internet gateway has no way "
            "out until its reserved public IP is assigned: no NAT gateway exists, so apt/docker fail until then.",
            "https://docs.oracle.com/iaas/Content/Network/Tasks/managingpublicIPs.htm",
        ),
    },
    site_checks=site_checks,
)


IMAGE_OS: Final = "Canonical Ubuntu"
IMAGE_OS_VERSION: Final = "24.04"
NODES: Final = NodeDefaults(
    # A Flex shape gets oci.ROUTER_OCPUS / oci.CLIENT_OCPUS (2 and 1) and 8 / 4 GB: a Flex VM allows max(2, OCPUs) VNICs.
    router_size="VM.Standard.E4.Flex",
    client_size="VM.Standard.E4.Flex",
    size_format="a Compute shape, e.g. VM.Standard.E4.Flex (a .Flex shape gets 2 OCPUs / 8 GB for the router, 1 OCPU / 4 GB for the client; the router's must allow 2 VNICs)",
    image=f"the newest {IMAGE_OS} {IMAGE_OS_VERSION} platform image for the node's shape (listed in the site's compartment)",
    image_format="an image OCID of the site's region, e.g. ocid1.image.oc1.eu-frankfurt-1.aaaa...",
    source="https://docs.oracle.com/iaas/Content/Compute/References/computeshapes.htm ; https://docs.oracle.com/iaas/images/",
)

TRAITS: Final = PlatformTraits(
    name="oci",
    site_module="multicloud_overlay.components.clouds.oci",
    required_site_keys=("region", "compartmentId"),
    # 9000 inside a VCN, 1500 through the internet gateway.
    default_underlay_mtu=Documented(
        1500,
        "https://docs.oracle.com/iaas/Content/Network/Concepts/overview.htm ; https://www.ateam-oracle.com/pmtud-importance-and-considerations",
    ),
    limits=LIMITS,
    example_site={"region": "eu-frankfurt-1", "compartmentId": "ocid1.compartment.oc1..example"},
    nodes=NODES,
    # No zone_naming: an availability domain's name is a tenancy-specific prefix and a region label that is not the
    # region identifier and follows no single rule (YXol:US-ASHBURN-AD-1 for us-ashburn-1, Uocm:PHX-AD-1 for
    # us-phoenix-1, ...:EU-FRANKFURT-1-AD-1 for eu-frankfurt-1; https://docs.oracle.com/iaas/Content/General/Concepts/regions.htm ,
    # https://docs.oracle.com/en-us/iaas/tools/terraform-provider-oci/latest/docs/d/identity_availability_domain.html):
    # checking it would need Oracle's full region-key table, so `zone` is not checked against `region` here.
    # A secondary VNIC is not configured by the image (notes["secondary_vnic"]); the image's iptables rules reject
    # everything but SSH (notes["host_firewall"]).
    payload_configures_router_lan=True,
    closed_host_firewall=True,
)
