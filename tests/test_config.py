"""Stack config validation: every bad config is refused with one message naming the key, the value and the fix."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

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
