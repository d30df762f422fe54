"""Stack config validation: every bad config is refused with one message naming the key, the value and the fix."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from multicloud_overlay.components.stack_file import read_stack_file
from multicloud_overlay.overlay.config import DEFAULTS, ConfigError, parse_config
from tests.harness import ROOT

DEV = read_stack_file(ROOT / "Pulumi.dev.yaml")


def dev() -> dict[str, Any]:
    return copy.deepcopy(DEV)


def with_top(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(raw: dict[str, Any]) -> None:
        raw[key] = value

    return mutate


def without_top(key: str) -> Callable[[dict[str, Any]], None]:
    def mutate(raw: dict[str, Any]) -> None:
        del raw[key]

    return mutate


def with_site(site: str, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(raw: dict[str, Any]) -> None:
        raw["sites"][site][key] = value

    return mutate


def without_site_key(site: str, key: str) -> Callable[[dict[str, Any]], None]:
    def mutate(raw: dict[str, Any]) -> None:
        del raw["sites"][site][key]

    return mutate


def only_sites(*names: str) -> Callable[[dict[str, Any]], None]:
    def mutate(raw: dict[str, Any]) -> None:
        raw["sites"] = {k: v for k, v in raw["sites"].items() if k in names}

    return mutate


def chain(*mutations: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def mutate(raw: dict[str, Any]) -> None:
        for m in mutations:
            m(raw)

    return mutate


def add_site(name: str, body: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def mutate(raw: dict[str, Any]) -> None:
        raw["sites"][name] = body

    return mutate


# (case id, mutation, text the message must contain: the key, and a word of the fix)
BAD: list[tuple[str, Callable[[dict[str, Any]], None], tuple[str, ...]]] = [
    ("hub-missing", without_top("hub"), ("hub is not set", "pulumi config set hub")),
    ("hub-unknown", with_top("hub", "gpc"), ("hub = 'gpc'", "did you mean 'gcp'", "set one of")),
    ("protocol-unknown", with_top("protocol", "vxlam"), ("protocol = 'vxlam'", "did you mean 'vxlan'")),
    ("protocol-case", with_top("protocol", "GENEVE"), ("protocol = 'GENEVE'", "vxlan, geneve")),
    ("topology-unknown", with_top("topology", "mesh"), ("topology = 'mesh'", "hub-and-spoke")),
    ("vni-zero", with_top("vni", 0), ("vni = 0", "1 to 16777215")),
    ("vni-too-big", with_top("vni", 16_777_216), ("vni = 16777216", "1 to 16777215")),
    ("vni-no-room-for-tunnels", with_top("vni", 16_000_000), ("vni = 16000000", "set at most")),
    ("vni-not-number", with_top("vni", "four"), ("vni = 'four'", "whole number")),
    ("vni-bool", with_top("vni", True), ("vni = True", "whole number")),
    ("overlay4-not-cidr", with_top("overlayIpv4", "10.250.0.0/33"), ("overlayIpv4", "not a CIDR")),
    ("overlay4-host-bits", with_top("overlayIpv4", "10.250.1.0/16"), ("overlayIpv4", "write the network as 10.250.0.0/16")),
    ("overlay4-is-v6", with_top("overlayIpv4", "fd00::/64"), ("overlayIpv4", "expected an IPv4 prefix")),
    ("overlay4-too-small", with_top("overlayIpv4", "10.250.0.0/24"), ("overlayIpv4", "too small for siteId 6", "/21")),
    ("overlay4-overlaps-site", with_top("overlayIpv4", "10.0.0.0/8"), ("overlayIpv4", "overlaps sites.aws.vpcCidr")),
    (
        "overlay4-overlaps-mgmt",
        chain(
            with_top("overlayIpv4", "10.6.0.0/16"),
            with_site("vsphere", "vpcCidr", "10.60.0.0/16"),
            with_site("vsphere", "wanCidr", "10.60.1.0/24"),
            with_site("vsphere", "lanCidr", "10.60.2.0/24"),
        ),
        ("overlayIpv4", "overlaps sites.vsphere.mgmtCidr"),
    ),
    ("overlay6-not-64", with_top("overlayIpv6", "fd00:6f76:6c00::/48"), ("overlayIpv6", "exactly a /64")),
    ("overlay6-is-v4", with_top("overlayIpv6", "10.9.0.0/16"), ("overlayIpv6", "expected an IPv6 prefix")),
    ("overlay6-garbage", with_top("overlayIpv6", "fd00::zz/64"), ("overlayIpv6", "not a CIDR")),
    ("p2p-six-sites", with_top("topology", "point-to-point"), ("topology = 'point-to-point'", "exactly two sites")),
    ("containers-negative", with_top("containersPerRouter", -1), ("containersPerRouter = -1", "0 to 50")),
    ("containers-excessive", with_top("containersPerRouter", 500), ("containersPerRouter = 500", "0 to 50")),
    ("containers-fraction", with_top("containersPerRouter", 2.5), ("containersPerRouter = 2.5", "whole number")),
    ("image-empty", with_top("containerImage", "bad image"), ("containerImage", "image reference")),
    (
        "admin-open-v4",
        with_top("adminCidr", "0.0.0.0/0"),
        ("adminCidr = '0.0.0.0/0'", "4,294,967,296 addresses would reach SSH", "at most a /16"),
    ),
    ("admin-open-v6", with_top("adminCidr", "::/0"), ("adminCidr = '::/0'", "would reach SSH", "at most a /48")),
    # Half the internet is not an administration range either (security review: /1s passed).
    ("admin-half-v4-low", with_top("adminCidr", "0.0.0.0/1"), ("adminCidr = '0.0.0.0/1'", "2,147,483,648 addresses", "at most a /16")),
    ("admin-half-v4-high", with_top("adminCidr", "128.0.0.0/1"), ("adminCidr = '128.0.0.0/1'", "at most a /16")),
    ("admin-half-v6", with_top("adminCidr", "::/1"), ("adminCidr = '::/1'", "at most a /48")),
    ("admin-v4-slash15", with_top("adminCidr", "198.50.0.0/15"), ("adminCidr = '198.50.0.0/15'", "131,072 addresses")),
    ("admin-v6-slash47", with_top("adminCidr", "2001:db8::/47"), ("adminCidr = '2001:db8::/47'", "at most a /48")),
    # `$` matches before a trailing newline: names, keys and images are matched whole.
    ("site-name-newline", add_site("paris\n", {"platform": "aws", "siteId": 9, "region": "eu-west-3"}), ("sites.paris\n", "lower-case")),
    (
        "ssh-key-newline",
        with_top("sshPublicKey", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILbcSbHKEGQPX0jnjP you@host\nssh-ed25519 AAAAevil"),
        ("sshPublicKey", "not an OpenSSH public key"),
    ),
    ("image-option", with_top("containerImage", "--privileged"), ("containerImage = '--privileged'", "image reference")),
    ("image-trailing-newline", with_top("containerImage", "busybox\n"), ("containerImage", "image reference")),
    (
        "private-key-retired",
        with_top("sshPrivateKey", "[secret]"),
        ("sshPrivateKey is set", "deploy key", "pulumi config rm sshPrivateKey"),
    ),
    ("admin-missing", without_top("adminCidr"), ("adminCidr is not set",)),
    ("admin-garbage", with_top("adminCidr", "my-laptop"), ("adminCidr = 'my-laptop'", "not a CIDR")),
    ("ssh-key-missing", without_top("sshPublicKey"), ("sshPublicKey is not set",)),
    ("ssh-key-private", with_top("sshPublicKey", "-----BEGIN OPENSSH PRIVATE KEY-----"), ("sshPublicKey", "not an OpenSSH public key")),
    ("mtu-below-1280", with_top("mtu", 1200), ("mtu = 1200", "below 1280")),
    ("mtu-above-path", with_top("mtu", 1400), ("mtu = 1400", "exceeds the path", "95 vxlan+ipsec overhead", "at most 1305")),
    ("mtu-auto-below-1280", with_site("azure", "underlayMtu", 1300), ("mtu", "below 1280", "sites.azure.underlayMtu")),
    ("check-not-bool", with_top("connectivityCheck", "maybe"), ("connectivityCheck = 'maybe'", "true or false")),
    ("unknown-top-key", with_top("protocl", "geneve"), ("protocl", "unknown key", "did you mean 'protocol'")),
    ("sites-missing", without_top("sites"), ("sites is not set",)),
    ("sites-list", with_top("sites", ["aws", "gcp"]), ("sites", "not a list")),
    ("sites-one", only_sites("aws"), ("sites", "at least two sites")),
    ("site-name-upper", add_site("Paris", {"platform": "aws", "siteId": 9, "region": "eu-west-3"}), ("sites.Paris", "lower-case")),
    (
        "site-name-long",
        add_site("averyveryverylongname", {"platform": "aws", "siteId": 9, "region": "eu-west-3"}),
        ("sites.averyvery", "1-12"),
    ),
    ("site-name-duplicate-case", chain(add_site("AWS", {"platform": "aws", "siteId": 9, "region": "x"})), ("sites.AWS",)),
    ("platform-unknown", with_site("gcp", "platform", "gce"), ("sites.gcp.platform = 'gce'", "did you mean 'gcp'")),
    ("platform-missing", without_site_key("aws", "platform"), ("sites.aws.platform is not set",)),
    ("site-id-missing", without_site_key("aws", "siteId"), ("sites.aws.siteId is not set", "stable number")),
    ("site-id-zero", with_site("aws", "siteId", 0), ("sites.aws.siteId = 0", "1 to 999")),
    ("site-id-duplicate", with_site("gcp", "siteId", 1), ("siteId = 1", "already used by site aws")),
    ("aws-region-missing", without_site_key("aws", "region"), ("sites.aws.region is not set", "--path sites.aws.region")),
    ("gcp-project-missing", without_site_key("gcp", "project"), ("sites.gcp.project is not set",)),
    ("gcp-zone-missing", without_site_key("gcp", "zone"), ("sites.gcp.zone is not set",)),
    ("oci-compartment-missing", without_site_key("oci", "compartmentId"), ("sites.oci.compartmentId is not set",)),
    ("vsphere-public-ip-missing", without_site_key("vsphere", "publicIp"), ("sites.vsphere.publicIp is not set",)),
    ("vsphere-public-ip-bad", with_site("vsphere", "publicIp", "edge.example"), ("sites.vsphere.publicIp", "IPv4 address")),
    ("vsphere-template-missing", without_site_key("vsphere", "template"), ("sites.vsphere.template is not set",)),
    ("vsphere-mgmt-small", with_site("vsphere", "mgmtCidr", "10.6.3.0/29"), ("sites.vsphere.mgmtCidr", "/27 or larger")),
    ("wan-outside-vpc", with_site("aws", "wanCidr", "10.9.1.0/24"), ("sites.aws.wanCidr", "not inside sites.aws.vpcCidr")),
    ("lan-too-small", with_site("aws", "lanCidr", "10.1.2.0/28"), ("sites.aws.lanCidr", "/27 or larger")),
    ("wan-lan-overlap", with_site("aws", "lanCidr", "10.1.1.0/25"), ("sites.aws.lanCidr", "overlaps sites.aws.wanCidr")),
    ("site-cidr-garbage", with_site("azure", "vpcCidr", "ten-two"), ("sites.azure.vpcCidr", "not a CIDR")),
    ("underlay-mtu-low", with_site("aws", "underlayMtu", 1000), ("sites.aws.underlayMtu = 1000", "1280 to 9216")),
    ("gcp-underlay-mtu-range", with_site("gcp", "underlayMtu", 1290), ("sites.gcp.underlayMtu = 1290", "1300 to 8896")),
    ("site-unknown-setting", with_site("aws", "regoin", "eu-west-1"), ("sites.aws.regoin", "did you mean 'region'")),
    ("site-not-map", with_top("sites", {"aws": "eu-west-1", "gcp": {"platform": "gcp"}}), ("sites.aws", "platform and siteId")),
]


@pytest.mark.parametrize(("case", "mutate", "expected"), BAD, ids=[c[0] for c in BAD])
def test_bad_config_is_refused_naming_key_and_fix(case: str, mutate: Callable[[dict[str, Any]], None], expected: tuple[str, ...]) -> None:
    raw = dev()
    mutate(raw)
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    message = str(err.value)
    for text in expected:
        assert text in message, f"{case}: {text!r} not in:\n{message}"


# Every top-level key of the stack config (README, Pulumi.yaml), written out rather than read from the parser.
STACK_KEYS = (
    "adminCidr",
    "connectivityCheck",
    "containerImage",
    "containersPerRouter",
    "encryption",
    "hub",
    "mtu",
    "overlayIpv4",
    "overlayIpv6",
    "protocol",
    "quotas",
    "sites",
    "sshPublicKey",
    "topology",
    "vni",
)


@pytest.mark.parametrize("key", STACK_KEYS)
@pytest.mark.parametrize("value", [[["x"]], {"x": ["y"]}], ids=["list", "map"])
def test_no_key_accepts_a_value_of_the_wrong_shape(key: str, value: Any) -> None:
    """Every top-level key refuses a value of the wrong shape (a nested list or map) with a problem naming that key:
    none is silently ignored or coerced."""
    raw = dev()
    raw[key] = value
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    assert any(p.startswith(key) for p in err.value.problems), err.value.problems


def test_every_problem_is_reported_at_once() -> None:
    raw = dev()
    raw.update(protocol="udp", vni=0, adminCidr="0.0.0.0/0", containersPerRouter=-3, hub="nowhere")
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    assert len(err.value.problems) == 5, err.value.problems
    for key in ("protocol", "vni", "adminCidr", "containersPerRouter", "hub"):
        assert any(p.startswith(key) for p in err.value.problems)


def test_dev_stack_is_valid_and_complete() -> None:
    cfg = parse_config(dev())
    assert {s.platform for s in cfg.sites} == {"aws", "azure", "gcp", "oci", "alicloud", "vsphere"}
    assert cfg.hub == "aws" and cfg.protocol == "vxlan" and cfg.containers_per_router == 3


def test_strings_from_pulumi_config_set_are_accepted() -> None:
    # `pulumi config set vni 5000` stores a string: numbers and booleans arrive as text.
    raw = dev()
    raw.update(vni="5000", containersPerRouter="2", connectivityCheck="false", mtu="1300")
    cfg = parse_config(raw)
    assert (cfg.vni, cfg.containers_per_router, cfg.connectivity_check, cfg.mtu) == (5000, 2, False, 1300)


def test_defaults_apply_when_keys_are_absent() -> None:
    raw = dev()
    for key in ("protocol", "topology", "overlayIpv4", "overlayIpv6", "vni", "containersPerRouter"):
        raw.pop(key, None)
    cfg = parse_config(raw)
    assert cfg.protocol == DEFAULTS["protocol"] and cfg.vni == DEFAULTS["vni"]
    assert str(cfg.overlay_ipv4) == DEFAULTS["overlayIpv4"]


def test_point_to_point_with_two_sites_is_valid() -> None:
    raw = dev()
    only_sites("aws", "gcp")(raw)
    raw["topology"] = "point-to-point"
    assert parse_config(raw).topology == "point-to-point"


def test_bad_config_registers_no_resource() -> None:
    from tests.harness import ProgramRun, run_program

    raw = dev()
    raw["hub"] = "mars"
    raw["vni"] = -1
    run = ProgramRun()
    with pytest.raises(Exception) as err:
        run_program(raw, into=run)
    # Values arrive as text from `pulumi config`, hence '-1'.
    assert "hub = 'mars'" in str(err.value) and "vni = '-1'" in str(err.value)
    assert run.resources == []


def problems_of(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    return err.value.problems


def rename_site_key(site: str, key: str, new: str) -> Callable[[dict[str, Any]], None]:
    def mutate(raw: dict[str, Any]) -> None:
        raw["sites"][site][new] = raw["sites"][site].pop(key)

    return mutate


GCP_ZONES = "https://cloud.google.com/compute/docs/regions-zones"
AWS_ZONES = "https://docs.aws.amazon.com/global-infrastructure/latest/regions/aws-availability-zones.html"
ALICLOUD_ZONES = "https://www.alibabacloud.com/help/en/ecs/product-overview/regions-and-zones"

# (case id, mutation, every problem the config has, word for word): each message says what is wrong and how to fix it,
# and a problem is reported once, as itself, with no follow-on problem it causes.
EXACT: list[tuple[str, Callable[[dict[str, Any]], None], list[str]]] = [
    (
        # The hub's site has a misspelled key: the site still counts for the hub (no "hub = 'aws': not among the
        # sites"), and the misspelled siteId is not reported as missing too.
        "misspelled-site-id-on-the-hub",
        rename_site_key("aws", "siteId", "siteID"),
        ["sites.aws.siteID = 1: unknown site setting (did you mean 'siteId'?): rename it to siteId"],
    ),
    (
        "misspelled-required-platform-key",
        rename_site_key("aws", "region", "regoin"),
        ["sites.aws.regoin = 'eu-west-1': unknown site setting (did you mean 'region'?): rename it to region"],
    ),
    ("unknown-site-setting-unlike-any", with_site("aws", "colour", "blue"), ["sites.aws.colour = 'blue': unknown site setting: remove it"]),
    (
        # A point-to-point pair whose second site has a problem is still two sites.
        "point-to-point-pair-with-a-bad-site",
        chain(only_sites("aws", "gcp"), with_top("topology", "point-to-point"), with_site("gcp", "platform", "gce")),
        ["sites.gcp.platform = 'gce': unknown value (did you mean 'gcp'?): use one of aws, azure, gcp, oci, alicloud, vsphere"],
    ),
    (
        "hub-not-a-site",
        with_top("hub", "mars"),
        ["hub = 'mars': not among the sites: set one of aws, azure, gcp, oci, alicloud, vsphere"],
    ),
    (
        "sites-missing",
        without_top("sites"),
        [
            "sites is not set: it is a map of site name -> settings, set one path at a time, e.g. "
            "`pulumi config set --path sites.aws.platform aws`, `pulumi config set --path sites.aws.siteId 1`, "
            "`pulumi config set --path sites.aws.region eu-west-1`, and the same for a second site, or copy the "
            "`multicloud-overlay:sites` block of an example stack: Pulumi.aws-gcp.yaml (two sites) or Pulumi.dev.yaml "
            "(one site per platform) (see README, config reference)"
        ],
    ),
    (
        "hub-missing",
        without_top("hub"),
        ["hub is not set: run `pulumi config set hub <value>` (see README, config reference)"],
    ),
    (
        "gcp-zone-of-another-region",
        with_site("gcp", "zone", "us-central1-a"),
        [
            "sites.gcp.zone = 'us-central1-a': not a zone of sites.gcp.region europe-west1: gcp zone names are the region, '-' "
            f"and a letter, e.g. europe-west1-b ({GCP_ZONES}); set a zone of europe-west1, or set sites.gcp.region to the zone's region"
        ],
    ),
    (
        "aws-zone-of-another-region",
        with_site("aws", "zone", "us-east-1a"),
        [
            "sites.aws.zone = 'us-east-1a': not a zone of sites.aws.region eu-west-1: aws zone names are the region followed by "
            f"a letter, e.g. eu-west-1a; an AZ ID such as use1-az1 is not a zone name ({AWS_ZONES}); set a zone of eu-west-1, "
            "or set sites.aws.region to the zone's region"
        ],
    ),
    (
        # aws.py gives `zone` to the subnets' availability_zone, which takes a name; an AZ ID is another argument.
        "aws-zone-id-instead-of-name",
        with_site("aws", "zone", "euw1-az1"),
        [
            "sites.aws.zone = 'euw1-az1': not a zone of sites.aws.region eu-west-1: aws zone names are the region followed by "
            f"a letter, e.g. eu-west-1a; an AZ ID such as use1-az1 is not a zone name ({AWS_ZONES}); set a zone of eu-west-1, "
            "or set sites.aws.region to the zone's region"
        ],
    ),
    (
        "alicloud-zone-of-another-region",
        with_site("alicloud", "zone", "cn-hangzhou-h"),
        [
            "sites.alicloud.zone = 'cn-hangzhou-h': not a zone of sites.alicloud.region eu-central-1: alicloud zone names are "
            "the region followed by a letter, with a '-' in the cn- regions (cn-hangzhou-h) and without elsewhere "
            f"(eu-central-1a) ({ALICLOUD_ZONES}); set a zone of eu-central-1, or set sites.alicloud.region to the zone's region"
        ],
    ),
]


@pytest.mark.parametrize(("case", "mutate", "expected"), EXACT, ids=[c[0] for c in EXACT])
def test_config_messages_word_for_word(case: str, mutate: Callable[[dict[str, Any]], None], expected: list[str]) -> None:
    raw = dev()
    mutate(raw)
    assert problems_of(raw) == expected, case


@pytest.mark.parametrize(
    ("site", "region", "zone"),
    [
        ("aws", "eu-west-1", "eu-west-1c"),
        ("aws", "us-west-2", "us-west-2-lax-1a"),  # a Local Zone is named after its parent region
        ("gcp", "us-central1", "us-central1-f"),
        ("alicloud", "eu-central-1", "eu-central-1b"),
        ("alicloud", "cn-hangzhou", "cn-hangzhou-h"),
        # OCI availability domains do not carry the region identifier (Uocm:PHX-AD-1 in us-phoenix-1): not checked.
        ("oci", "eu-frankfurt-1", "Uocm:PHX-AD-1"),
    ],
)
def test_a_zone_of_the_sites_region_is_accepted(site: str, region: str, zone: str) -> None:
    raw = dev()
    raw["sites"][site].update(region=region, zone=zone)
    assert parse_config(raw).site(site).setting("zone") == zone


def test_sites_may_share_private_ranges() -> None:
    """Sites are separate networks joined only by the overlay: tunnels run between public addresses and the overlay
    routes no underlay prefix, so two sites with the same vpcCidr (and subnets) are valid."""
    raw = dev()
    for key in ("vpcCidr", "wanCidr", "lanCidr"):
        raw["sites"]["gcp"][key] = raw["sites"]["aws"][key]
    cfg = parse_config(raw)
    assert cfg.site("gcp").vpc_cidr == cfg.site("aws").vpc_cidr


def test_managed_sites_need_distinct_management_networks() -> None:
    """The one range sites may not share: the machine running `pulumi up` pushes to a vSphere client at its address on
    the management network, so two management networks must not overlap."""
    raw = dev()
    raw["sites"]["vs2"] = dict(raw["sites"]["vsphere"], siteId=7, publicIp="203.0.113.61")
    assert problems_of(raw) == [
        "sites.vs2.mgmtCidr = '10.6.3.0/24': overlaps sites.vsphere.mgmtCidr 10.6.3.0/24: the machine running `pulumi up` "
        "reaches every site's management network, so give each one its own prefix"
    ]
    raw["sites"]["vs2"]["mgmtCidr"] = "10.7.3.0/24"
    assert parse_config(raw).site("vs2").vpc_cidr == parse_config(raw).site("vsphere").vpc_cidr


def write_stack(tmp_path: Path, mutate: Callable[[dict[str, Any]], None]) -> Path:
    doc = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text(encoding="utf-8"))
    mutate(doc["config"])
    path = tmp_path / "Pulumi.test.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def unprefix(*keys: str) -> Callable[[dict[str, Any]], None]:
    def mutate(config: dict[str, Any]) -> None:
        for key in keys:
            config[key] = config.pop(f"multicloud-overlay:{key}")

    return mutate


def test_a_key_without_the_project_prefix_is_reported_as_such(tmp_path: Path) -> None:
    """`hub: aws` in a stack file is not `multicloud-overlay:hub`: Pulumi never passes it to the program. The message
    says how to write it, not that hub is not set; keys of other namespaces and unknown bare keys are not ours."""

    def mutate(config: dict[str, Any]) -> None:
        unprefix("hub")(config)
        config["aws:region"] = "eu-west-1"

    assert problems_of(read_stack_file(write_stack(tmp_path, mutate))) == [
        "hub has no project prefix in the stack file, so Pulumi does not pass it to this program: write the key as "
        "`multicloud-overlay:hub` (as `pulumi config set` does; keys of other namespaces such as aws:region stay as they are)"
    ]


def test_every_unprefixed_key_of_the_project_is_reported(tmp_path: Path) -> None:
    raw = read_stack_file(write_stack(tmp_path, unprefix("sites", "vni")))
    assert problems_of(raw) == [
        f"{key} has no project prefix in the stack file, so Pulumi does not pass it to this program: write the key as "
        f"`multicloud-overlay:{key}` (as `pulumi config set` does; keys of other namespaces such as aws:region stay as they are)"
        for key in ("sites", "vni")
    ]


def test_other_namespaces_and_unknown_bare_keys_are_not_the_programs(tmp_path: Path) -> None:
    def mutate(config: dict[str, Any]) -> None:
        config["aws:region"] = "eu-west-1"
        config["gcp:project"] = "other"

    raw = read_stack_file(write_stack(tmp_path, mutate))
    assert raw == DEV
    assert parse_config(raw).hub == "aws"


def test_the_example_stacks_the_messages_name_exist_and_are_valid() -> None:
    """The `sites is not set` message points to these files: they exist and hold a valid sites block."""
    for name in ("Pulumi.aws-gcp.yaml", "Pulumi.dev.yaml"):
        sites = read_stack_file(ROOT / name).get("sites")
        assert isinstance(sites, dict) and len(sites) >= 2, name
        raw = dev()
        raw["sites"], raw["hub"] = sites, next(iter(sites))
        if "project" not in sites.get("gcp", {"project": "set"}):
            sites["gcp"]["project"] = "example-project"  # an account setting the example leaves to its user
        assert parse_config(raw).hub == raw["hub"], name
