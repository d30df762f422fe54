"""Each platform's documented limits are recorded with their sources and checked before any resource exists."""

from __future__ import annotations

import copy
import dataclasses
import re
from typing import cast

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from bench.configs import generated_stack
from multicloud_overlay.cloudinit.render import read_payload
from multicloud_overlay.components.clouds.registry import PLATFORMS as REGISTRY_TRAITS
from multicloud_overlay.components.limits import (
    STAND_IN_HOST_KEY_PRIVATE,
    STAND_IN_PUBLIC_KEY,
    check_limits,
    checked_plan,
    measured_size,
    node_user_data,
    platform_limits,
)
from multicloud_overlay.components.stack_file import read_stack_file
from multicloud_overlay.overlay.config import PLATFORMS, ConfigError, parse_config
from multicloud_overlay.overlay.plan import build_plan
from multicloud_overlay.overlay.security import client_rules, router_rules
from multicloud_overlay.overlay.traits import Documented, PlatformLimits, PlatformTraits, fullmatch
from tests.harness import ROOT, ProgramRun, decode, plan_of, run_cached, run_program, unsecret, user_data_strings

DEV = read_stack_file(ROOT / "Pulumi.dev.yaml")
URL = re.compile(r"https://\S+")


def every_documented(limits: PlatformLimits) -> list[Documented[object]]:
    out: list[Documented[object]] = []
    for f in dataclasses.fields(limits):
        value = getattr(limits, f.name)
        if isinstance(value, Documented):
            out.append(value)
        elif isinstance(value, dict | type(limits.notes)) and not callable(value):
            out += [v for v in value.values() if isinstance(v, Documented)]
    return out


@pytest.mark.parametrize("platform", PLATFORMS)
def test_every_platform_records_its_limits_with_a_source(platform: str) -> None:
    limits = platform_limits(platform)
    assert limits.platform == platform
    facts = every_documented(limits)
    assert len(facts) >= 4
    for fact in facts:
        assert URL.search(fact.source), f"{platform}: {fact!r} has no source URL"


def test_stand_in_keys_measure_like_real_ones() -> None:
    """The config-time size check renders payloads with stand-ins of the generated keys: same length as real
    OpenSSH ed25519 keys, and as incompressible (a run of 'A's would make gzip look better than it is)."""
    import gzip

    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    assert len(STAND_IN_HOST_KEY_PRIVATE) == len(private)
    assert len(STAND_IN_PUBLIC_KEY) == len(public)
    # Real keys repeat their key type and public half: the stand-in compresses no better, so the check errs safe.
    assert len(gzip.compress(STAND_IN_HOST_KEY_PRIVATE.encode())) >= len(gzip.compress(private.encode()))


def test_payload_is_measured_as_each_platform_counts_it() -> None:
    text = "#cloud-config\n" + "x" * 3000 + "\n"
    gz = dataclasses.replace(platform_limits("aws"), user_data_encoding="gzip+base64", user_data_measure="decoded")
    b64 = dataclasses.replace(gz, user_data_encoding="base64", user_data_measure="encoded")
    plain = dataclasses.replace(gz, user_data_encoding="plain", user_data_measure="decoded")
    assert measured_size(text, gz) < 100  # the gzip bytes
    assert measured_size(text, b64) == 4 * ((len(text) + 2) // 3)  # the base64 text
    assert measured_size(text, plain) == len(text)


def test_the_program_renders_what_the_check_measured() -> None:
    """check_limits measures limits.node_user_data: every VM the program registers carries exactly that payload (with
    the keys the run generated), GCP's first-boot file included, so the checked payload is the deployed one."""
    from tests.test_inplace import dev_config

    run, plan = run_cached(dev_config(str(DEV["hub"]))), plan_of(dev_config(str(DEV["hub"])))
    keys = {name: out for (typ, name), out in run.provider_outputs.items() if typ == "tls:index/privateKey:PrivateKey"}
    for node in plan.nodes:
        component = run.named(node.name, f"multicloud-overlay:index:{'OverlayRouter' if node.kind == 'router' else 'OverlayClient'}")
        [sent] = [u for r in run.descendants_of(component.urn) if r.custom for v in r.inputs.values() for u in user_data_strings(v)]
        text = decode(unsecret(sent))
        host = keys[f"{node.name}-host-key"]
        checked = node_user_data(
            plan,
            node.name,
            plan.config.ssh_public_key,
            host["privateKeyOpenssh"],
            host["publicKeyOpenssh"],
            keys["deploy-key"]["publicKeyOpenssh"],
        )
        assert text == checked, node.name
        # The guest-agent settings GCP's image reads at first boot (no key regeneration) travel in GCP's payloads only.
        paths = {f.path for f in read_payload(text)[0]}
        assert ("/etc/default/instance_configs.cfg" in paths) is (node.platform == "gcp"), node.name


@pytest.mark.parametrize("platform", PLATFORMS)
def test_every_rule_description_is_one_the_platform_accepts(platform: str) -> None:
    limits = platform_limits(platform)
    for encryption in ("ipsec", "none"):
        raw = copy.deepcopy(DEV)
        raw["encryption"] = encryption
        plan = build_plan(parse_config(raw))
        for site in plan.config.sites:
            for rule in router_rules(plan, site.name) + client_rules(plan, site.name):
                assert fullmatch(limits.rule_description_pattern, rule.description), (platform, rule)
                if limits.rule_description_max is not None:
                    assert len(rule.description) <= limits.rule_description_max.value


def test_an_apostrophe_in_a_rule_description_is_refused_for_aws() -> None:
    """The security review's finding: EC2 refuses "from the site's client" (three rules of every AWS site did)."""
    aws = platform_limits("aws")
    assert not fullmatch(aws.rule_description_pattern, "vxlan from the site's client")
    assert fullmatch(aws.rule_description_pattern, "vxlan from the site client")


def with_limits(monkeypatch: pytest.MonkeyPatch, limits: PlatformLimits) -> None:
    """The registry's traits of `limits.platform`, with other limits, for the test only."""
    registry = cast(dict[str, PlatformTraits], REGISTRY_TRAITS)
    monkeypatch.setitem(registry, limits.platform, dataclasses.replace(registry[limits.platform], limits=limits))


def test_check_refuses_a_stack_over_a_limit_before_any_resource(monkeypatch: pytest.MonkeyPatch) -> None:
    """A payload over a platform's limit stops the program before the first registration, naming site and limit."""
    raw = copy.deepcopy(DEV)
    limits = platform_limits("aws")
    small = dataclasses.replace(limits, user_data_max_bytes=Documented(1000, "https://example.test/limit"))
    with_limits(monkeypatch, small)
    with pytest.raises(ConfigError) as err:
        checked_plan(parse_config(raw))
    message = str(err.value)
    assert "aws site `aws`: the router payload of aws-router is" in message
    assert "over its limit of 1,000 bytes (https://example.test/limit)" in message
    assert "aws site `aws`: the client payload of aws-client" in message
    run = ProgramRun()
    with pytest.raises(Exception, match="over its limit of 1,000 bytes"):
        run_program(raw, into=run)
    assert run.resources == []


def test_a_size_without_enough_nics_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = copy.deepcopy(DEV)
    aws = platform_limits("aws")
    size = next((name for name, n in aws.max_nics.items() if n.value >= 2), None)
    assert size is not None
    raw["sites"]["aws"]["routerSize"] = size
    assert check_limits(build_plan(parse_config(raw))) == []
    one_nic = dataclasses.replace(aws, max_nics={"tiny.one": Documented(1, "https://example.test/nics")})
    with_limits(monkeypatch, one_nic)
    raw["sites"]["aws"]["routerSize"] = "tiny.one"
    problems = check_limits(build_plan(parse_config(raw)))
    assert problems == [
        "aws site `aws`: routerSize tiny.one allows 1 NIC(s), the node needs 2 (https://example.test/nics): choose a size with at least 2"
    ]


def test_the_dev_stack_fits_every_platform() -> None:
    assert check_limits(build_plan(parse_config(copy.deepcopy(DEV)))) == []


@pytest.mark.parametrize("containers", [0, 50])
def test_a_hundred_site_stack_payload_fits_every_platform(containers: int) -> None:
    """The README promises 100 sites: every node's user-data, as each platform counts it, stays under its limit
    (with the most containers a router may run), whichever platform is hub."""
    plan = build_plan(parse_config(generated_stack(100, containersPerRouter=containers)))
    largest_aws = 0
    for node in plan.nodes:
        limits = platform_limits(node.platform)
        text = node_user_data(
            plan, node.name, plan.config.ssh_public_key, STAND_IN_HOST_KEY_PRIVATE, STAND_IN_PUBLIC_KEY, STAND_IN_PUBLIC_KEY
        )
        assert measured_size(text, limits) <= limits.user_data_max_bytes.value, node.name
        if node.platform == "aws":
            largest_aws = max(largest_aws, measured_size(text, limits))
    # What user-data carries of the node script is the boot script (render.boot_script): the push-only code travels
    # with the program's first push. A tripwire, not the limit: a change that eats most of the room left (about 3,000
    # bytes, the README's figure) should be a decision, taken here.
    assert largest_aws <= 16_384 - 2_500, f"the largest AWS user-data is {largest_aws} gzip bytes"


def three_aws_sites_in_one_region() -> dict[str, object]:
    from bench.configs import stack_with_sites

    raw = stack_with_sites({"a": ("aws", 1), "b": ("aws", 2), "c": ("aws", 3)}, "a")
    for body in raw["sites"].values():  # type: ignore[union-attr]
        body["region"] = "eu-west-1"
    return raw


def test_a_default_quota_refuses_and_a_declared_raise_lets_the_stack_through() -> None:
    """Quotas are adjustable: the default refuses (naming the quota and how to raise or declare it), and a stack
    that declares the account's raised quota passes, with the declared value checked instead."""
    raw = three_aws_sites_in_one_region()
    problems = check_limits(build_plan(parse_config(raw)))
    assert len(problems) == 1, problems
    assert problems[0].startswith("aws site `c`: region eu-west-1 would hold 6 Elastic IPs")
    assert "over the default quota of 5 Elastic IPs per region (https://" in problems[0]
    assert problems[0].endswith("declare it: `pulumi config set --path quotas.aws.elasticIpsPerRegion <number>`")
    raw["quotas"] = {"aws": {"elasticIpsPerRegion": 6}}
    assert check_limits(build_plan(parse_config(raw))) == []
    raw["quotas"] = {"aws": {"elasticIpsPerRegion": "3"}}  # `pulumi config set --path` stores text; lower than the default
    problems = check_limits(build_plan(parse_config(raw)))
    assert [p.split(":")[0] for p in problems] == ["aws site `b`", "aws site `c`"]
    assert "over the declared quota of 3 Elastic IPs per region (quotas.aws.elasticIpsPerRegion; default 5: https://" in problems[0]


def test_an_unknown_quota_is_refused_with_the_names_the_program_checks() -> None:
    raw = three_aws_sites_in_one_region()
    raw["quotas"] = {"aws": {"elasticIpPerRegion": 10}}
    problems = check_limits(build_plan(parse_config(raw)))
    assert problems[0] == (
        "quotas.aws.elasticIpPerRegion = 10: unknown aws quota (did you mean 'elasticIpsPerRegion'?): the ones this program "
        "checks are elasticIpsPerRegion, vpcsPerRegion"
    )


@pytest.mark.parametrize(
    ("quotas", "expected"),
    [
        ({"aws": {"elasticIpsPerRegion": 0}}, "quotas.aws.elasticIpsPerRegion = 0: out of range: set a whole number from 1 to 1000000"),
        ({"amazon": {"x": 1}}, "quotas.amazon = {'x': 1}: unknown platform"),
        ({"aws": 20}, "quotas.aws = 20: set a map of quota name -> number"),
        ("20", "quotas = '20': set a map of platform -> quota name -> number"),
    ],
)
def test_malformed_quotas_are_refused(quotas: object, expected: str) -> None:
    raw = copy.deepcopy(DEV)
    raw["quotas"] = quotas
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    assert expected in str(err.value)
