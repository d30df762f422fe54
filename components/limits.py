"""Each platform's documented limits that this program relies on, and the checks that hold a stack to them (pure).

A limit the cloud API enforces is one a real `pulumi up` meets half-way through, after other resources exist.
So every such limit is recorded here with its source, and `check_limits` refuses a stack that would break one
before any resource is registered: the message names the site, the key, the limit and the fix.

The records themselves are part of each platform's traits, next to its module (components/clouds/<platform>_traits.py,
pure like this file), listed in components/clouds/registry.py.
"""

from __future__ import annotations

import base64
import difflib
import gzip
import hashlib

from multicloud_overlay.cloudinit.render import SshHostKey, render_user_data
from multicloud_overlay.components.clouds.registry import PLATFORMS
from multicloud_overlay.overlay.config import ConfigError, OverlayConfig
from multicloud_overlay.overlay.plan import Plan, bootstrap_config, build_plan
from multicloud_overlay.overlay.security import client_rules, router_rules, site_rules
from multicloud_overlay.overlay.traits import PlatformLimits, UserDataEncoding, fullmatch

# --------------------------------------------------------------------------- checks


def platform_limits(platform: str) -> PlatformLimits:
    return PLATFORMS[platform].limits


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

    extra = {path: doc.value for path, doc in platform_limits(plan.node(node).platform).first_boot_files.items()}
    return render_user_data(
        bootstrap_config(plan, node), SshHostKey(host_private, host_public), login_keys=[operator_key, deploy_public], extra_files=extra
    )


def check_limits(plan: Plan) -> list[str]:
    """Every way the stack would break a platform's documented limit, each naming the site, the limit and the fix."""
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
        for key, nics in (("routerSize", 2), ("clientSize", PLATFORMS[site.platform].client_nics())):
            size_name = site.setting(key)
            known = limits.max_nics.get(size_name) if size_name else None
            if known is not None and known.value < nics:
                problems.append(
                    f"{where}: {key} {size_name} allows {known.value} NIC(s), the node needs {nics} ({known.source}): "
                    f"choose a size with at least {nics}"
                )
        problems += site_problems(plan, site.name)
    return problems


def site_problems(plan: Plan, site: str) -> list[str]:
    """The platform's own checks of one site (how its module packs rules into groups, names, quotas)."""
    limits = platform_limits(plan.config.site(site).platform)
    return [] if limits.site_checks is None else limits.site_checks(plan, site, site_rules(plan, site))


def _quota_name_problems(plan: Plan) -> list[str]:
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
    plan = build_plan(cfg)
    problems = check_limits(plan)
    if problems:
        raise ConfigError(problems)
    return plan
