"""Each platform's documented limits that this program relies on, and the checks that hold a stack to them (pure).

A limit the cloud API enforces is one a real `pulumi up` meets half-way through, after other resources exist.
So every such limit is recorded here with its source, and `check_limits` refuses a stack that would break one
before any resource is registered: the message names the site, the key, the limit and the fix.

The records themselves live next to each platform's module (components/clouds/<platform>_limits.py, pure like
this file); `PLATFORM_LIMITS` is their registry.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, Literal, TypeVar

if TYPE_CHECKING:
    from components.config import OverlayConfig
    from components.plan import Plan

T = TypeVar("T")

UserDataEncoding = Literal["plain", "base64", "gzip+base64"]
"""How this program hands a platform its user-data: plain text, base64 of the text, base64 of the gzip of it."""
UserDataMeasure = Literal["decoded", "encoded", "metadata"]
"""What a platform's user-data limit counts: the bytes before base64 (decoded), the base64 text (encoded), or
the whole instance metadata the user-data is part of (metadata: the encoded text plus the other keys)."""


@dataclass(frozen=True)
class Documented(Generic[T]):
    """A value a platform documents, with where it says so."""

    value: T
    source: str
    """URL of the documentation (or provider source) that states it."""


@dataclass(frozen=True)
class PlatformLimits:
    """What one platform's API and image allow, as far as this program's resources and payloads go."""

    platform: str
    user_data_encoding: UserDataEncoding
    """How the platform module sends user-data (components/clouds/<platform>.py)."""
    user_data_max_bytes: Documented[int]
    user_data_measure: UserDataMeasure
    ingress_rules_per_group: Documented[int]
    """Inbound rules one security group / NSG / firewall policy of a NIC may hold (default quota)."""
    groups_per_nic: Documented[int]
    """Security groups one NIC may carry (1 where the platform has one policy object per NIC)."""
    rule_description_max: Documented[int] | None = None
    rule_description_pattern: Documented[str] | None = None
    """Regex (fullmatch) a rule description must match, where the API restricts its characters."""
    resource_name_pattern: Documented[str] | None = None
    """Regex (fullmatch) of the names this program gives the platform's resources (rules, instances...)."""
    max_nics: Mapping[str, Documented[int]] = field(default_factory=dict)
    """Instance size -> NICs it allows (the default router size at least)."""
    login_key_types: Documented[tuple[str, ...]] | None = None
    """OpenSSH key types the platform's own key mechanism accepts, where this program uses it."""
    notes: Mapping[str, Documented[str]] = field(default_factory=dict)
    """Other documented facts the module relies on (login user, first-boot agents, defaults), by topic."""
    first_boot_files: Mapping[str, Documented[str]] = field(default_factory=dict)
    """path -> content the payload writes for the platform's image before its agents start (mode 0644)."""
    quotas: Mapping[str, Documented[int]] = field(default_factory=dict)
    """Adjustable quotas the platform's site_checks hold a stack to: name -> the documented default. An account
    whose quota is higher declares it (config `quotas.<platform>.<name>`); see quota()."""
    site_checks: Callable[[Plan, str], list[str]] | None = None
    """Platform-specific checks of one site (how its module packs rules into groups, names it builds, quotas):
    problems in check_limits' format, none when the site fits."""


def fullmatch(pattern: Documented[str] | None, text: str) -> bool:
    return pattern is None or re.fullmatch(pattern.value, text) is not None


# --------------------------------------------------------------------------- checks


def _registry() -> Mapping[str, PlatformLimits]:
    from components.clouds import alicloud_limits, aws_limits, azure_limits, gcp_limits, oci_limits, vsphere_limits

    return {m.LIMITS.platform: m.LIMITS for m in (aws_limits, azure_limits, gcp_limits, oci_limits, alicloud_limits, vsphere_limits)}


def platform_limits(platform: str) -> PlatformLimits:
    return _registry()[platform]


def _stand_in(label: str, size: int) -> str:
    """Base64 text of `size` characters that compresses like a real key (so payload sizes are measured honestly)."""
    return base64.b64encode(hashlib.shake_256(label.encode()).digest(size)).decode()[:size]


# The generated keys are not known before `pulumi up`, but their size is: an unencrypted OpenSSH ed25519 private
# key is 387 bytes (5 base64 lines), its public key 80 (tests/test_limits.py checks both against real keys).
STAND_IN_HOST_KEY_PRIVATE = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    + "".join(_stand_in(f"host-{i}", 70) + "\n" for i in range(4))
    + _stand_in("host-4", 32)
    + "\n-----END OPENSSH PRIVATE KEY-----\n"
)
STAND_IN_PUBLIC_KEY = "ssh-ed25519 " + _stand_in("public", 68)


def user_data_as_sent(text: str, encoding: UserDataEncoding) -> str:
    if encoding == "plain":
        return text
    raw = gzip.compress(text.encode(), mtime=0) if encoding == "gzip+base64" else text.encode()
    return base64.b64encode(raw).decode()


def sent_user_data(text: str, limits: PlatformLimits) -> str:
    """The payload encoded as the platform module sends it, refused above the platform's recorded limit (what
    check_limits measured before any resource; this guards a building block used on its own)."""
    size, limit = measured_size(text, limits), limits.user_data_max_bytes
    if limits.user_data_measure != "metadata" and size > limit.value:
        raise ValueError(
            f"the payload is {size:,} bytes as {limits.platform} counts it ({limits.user_data_measure}, sent "
            f"{limits.user_data_encoding}), over its limit of {limit.value:,} bytes ({limit.source})"
        )
    return user_data_as_sent(text, limits.user_data_encoding)


def measured_size(text: str, limits: PlatformLimits) -> int:
    """The number a platform's user-data limit counts, for a payload as this program sends it."""
    sent = user_data_as_sent(text, limits.user_data_encoding)
    if limits.user_data_measure == "decoded" and limits.user_data_encoding != "plain":
        return len(base64.b64decode(sent))
    return len(sent.encode())


def node_user_data(plan: Plan, node: str, operator_key: str, host_private: str, host_public: str, deploy_public: str) -> str:
    """A node's user-data exactly as the program renders it (components/site.py calls this too)."""
    from cloudinit.render import SshHostKey, render_user_data
    from components.plan import bootstrap_config

    extra = {path: doc.value for path, doc in platform_limits(plan.node(node).platform).first_boot_files.items()}
    return render_user_data(
        bootstrap_config(plan, node), SshHostKey(host_private, host_public), login_keys=[operator_key, deploy_public], extra_files=extra
    )


def check_limits(plan: Plan) -> list[str]:
    """Every way the stack would break a platform's documented limit, each naming the site, the limit and the fix."""
    from components.security import client_rules, router_rules

    problems: list[str] = _quota_name_problems(plan)
    for site in plan.config.sites:
        limits = platform_limits(site.platform)
        where = f"{site.platform} site `{site.name}`"
        for node, rules in (
            (plan.router(site.name), router_rules(plan, site.name)),
            (plan.client(site.name), client_rules(plan, site.name)),
        ):
            text = node_user_data(
                plan, node.name, plan.config.ssh_public_key, STAND_IN_HOST_KEY_PRIVATE, STAND_IN_PUBLIC_KEY, STAND_IN_PUBLIC_KEY
            )
            size, limit = measured_size(text, limits), limits.user_data_max_bytes
            if size > limit.value:
                problems.append(
                    f"{where}: the {node.kind} payload of {node.name} is {size:,} bytes as {site.platform} counts it "
                    f"({limits.user_data_measure}, sent {limits.user_data_encoding}), over its limit of {limit.value:,} bytes "
                    f"({limit.source}): lower containersPerRouter"
                )
            for rule in rules:
                if limits.rule_description_max is not None and len(rule.description) > limits.rule_description_max.value:
                    problems.append(
                        f"{where}: ingress rule {rule.name} of {node.name} has a description of {len(rule.description)} characters, "
                        f"over {site.platform}'s {limits.rule_description_max.value} ({limits.rule_description_max.source})"
                    )
                if not fullmatch(limits.rule_description_pattern, rule.description):
                    assert limits.rule_description_pattern is not None
                    problems.append(
                        f"{where}: ingress rule {rule.name} of {node.name} has the description {rule.description!r}, which "
                        f"{site.platform} refuses (allowed: {limits.rule_description_pattern.value}; {limits.rule_description_pattern.source})"
                    )
        for key, nics in (("routerSize", 2), ("clientSize", 2 if site.platform == "vsphere" else 1)):
            size_name = site.setting(key)
            known = limits.max_nics.get(size_name) if size_name else None
            if known is not None and known.value < nics:
                problems.append(
                    f"{where}: {key} {size_name} allows {known.value} NIC(s), the node needs {nics} ({known.source}): "
                    f"choose a size with at least {nics}"
                )
        if limits.site_checks is not None:
            problems += limits.site_checks(plan, site.name)
    return problems


def quota(plan: Plan, platform: str, name: str) -> int:
    """The value of one of a platform's quotas for this stack: what the config declares, else the default."""
    default = platform_limits(platform).quotas[name]
    return plan.config.quotas.get(f"{platform}.{name}", default.value)


def quota_words(plan: Plan, platform: str, name: str, unit: str = "") -> str:
    """How a message names the quota it holds a site to: the default (with its source) or the declared value."""
    default = platform_limits(platform).quotas[name]
    key = f"{platform}.{name}"
    if key in plan.config.quotas:
        return f"the declared quota of {plan.config.quotas[key]}{unit} (quotas.{key}; default {default.value}: {default.source})"
    return f"the default quota of {default.value}{unit} ({default.source})"


def quota_fix(platform: str, name: str) -> str:
    """The end of every quota message: how to say that the account's quota is higher already."""
    return f"; if the account's quota is higher already, declare it: `pulumi config set --path quotas.{platform}.{name} <number>`"


def _quota_name_problems(plan: Plan) -> list[str]:
    import difflib

    problems = []
    for key, value in sorted(plan.config.quotas.items()):
        platform, name = key.split(".", 1)
        known = sorted(platform_limits(platform).quotas)
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(
                f"quotas.{key} = {value}: unknown {platform} quota{hint}: the ones this program checks are {', '.join(known) or 'none'}"
            )
    return problems


def checked_plan(cfg: OverlayConfig) -> Plan:
    """The plan of a validated config, refused (ConfigError, before any resource exists) if it breaks a limit."""
    from components.config import ConfigError
    from components.plan import build_plan

    plan = build_plan(cfg)
    problems = check_limits(plan)
    if problems:
        raise ConfigError(problems)
    return plan
