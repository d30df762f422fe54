"""What every platform tells the rest of the house about itself: one `PlatformTraits` record per platform (pure).

Each record lives next to its platform's module (components/clouds/<platform>_traits.py) and is listed once in
components/clouds/registry.py. The config reads required keys and MTUs from it, the plan the NIC and host-firewall
behaviour, the lab its emulation hints, the limits checks the documented limits, bench and tests an example site.
A platform's facts about a cloud carry the URL that states them (`Documented`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Generic, Literal, TypeVar

if TYPE_CHECKING:
    from multicloud_overlay.overlay.plan import Plan
    from multicloud_overlay.overlay.rules import SiteRules

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
    site_checks: Callable[[Plan, str, SiteRules], list[str]] | None = None
    """Platform-specific checks of one site (how its module packs rules into groups, names it builds, quotas):
    problems in check_limits' format, none when the site fits. It gets the site's rules as overlay.security computes
    them."""


def fullmatch(pattern: Documented[str] | None, text: str) -> bool:
    return pattern is None or re.fullmatch(pattern.value, text) is not None


@dataclass(frozen=True)
class NicNames:
    """The names a node's NICs get in the guest, in the order the platform attaches them."""

    router: tuple[str, str]
    """(WAN, LAN)."""
    client: tuple[str, ...]
    """(LAN,) on the clouds; (management, LAN) where the client is managed over a management network."""


KERNEL_NIC_NAMES: Final = NicNames(router=("eth0", "eth1"), client=("eth0",))
"""What the cloud images here keep: the kernel's names, in attach order."""


@dataclass(frozen=True)
class ZoneNaming:
    """How a platform names its zones after their region, where the name alone tells the region (the config
    refuses a `zone` that is not one of the site's `region`)."""

    pattern: str
    """Regex (fullmatch) of a zone of region R, with `{region}` standing for R (escaped when it is filled in)."""
    rule: str
    """The naming rule in words for messages, `{region}` standing for the site's region."""
    source: str
    """URL of the documentation that states the naming."""

    def belongs(self, zone: str, region: str) -> bool:
        return re.fullmatch(self.pattern.replace("{region}", re.escape(region)), zone) is not None


@dataclass(frozen=True)
class NodeDefaults:
    """What the site settings routerSize, clientSize and image mean on a platform, and what a site gets without
    them. The platform module reads its defaults from here (one place), the README documents them from here."""

    router_size: str
    client_size: str
    size_format: str
    """What routerSize / clientSize take, in the platform's own terms."""
    image: str
    """What an unset `image` resolves to."""
    image_format: str
    """What `image` takes."""
    source: str
    """URL(s) of the documentation of the sizes and images."""


@dataclass(frozen=True)
class PlatformTraits:
    """Everything the other layers must know about one platform."""

    name: str
    site_module: str
    """Dotted path of the Pulumi module that builds a site (it defines PLATFORM_SITE). Imported only when a stack
    uses the platform: importing a provider SDK costs a second or more."""
    required_site_keys: tuple[str, ...]
    """Settings every site of the platform must give, besides `platform` and `siteId`."""
    default_underlay_mtu: Documented[int]
    """Underlay MTU of the internet path a tunnel crosses, when the site sets none. Tunnels run between public
    addresses, so a platform's larger internal MTU does not apply."""
    limits: PlatformLimits
    example_site: Mapping[str, Any]
    """Settings of an example site besides platform, siteId and address ranges (bench/configs.py, tests)."""
    nodes: NodeDefaults
    """Default sizes and image of the router and client VMs, and the format of the settings that override them."""
    underlay_mtu_range: Documented[tuple[int, int]] | None = None
    """Underlay MTUs the platform accepts, where narrower than the generic 1280..9216."""
    payload_configures_router_lan: bool = False
    """The platform gives the router's second NIC no address at boot: the payload configures it."""
    closed_host_firewall: bool = False
    """The platform's image ships iptables rules that reject what the overlay needs: the payload opens them."""
    management_network: bool = False
    """Nodes are managed over a dedicated management network (the client gets a management NIC first), and the
    site states its public address (`publicIp`, the edge's NAT) instead of reserving one."""
    nic_names: NicNames = KERNEL_NIC_NAMES
    example_regions: tuple[str, ...] = ()
    """Regions example stacks spread this platform's sites over, in turn (region quotas hold few sites)."""
    sites_per_region: int = 0
    """How many example sites one region takes before the next is used (0: one region for all)."""
    zone_naming: ZoneNaming | None = None
    """How zones are named after their region, where that is documented and checkable (None: not checked)."""

    def client_nics(self) -> int:
        return len(self.nic_names.client)


def quota(plan: Plan, limits: PlatformLimits, name: str) -> int:
    """The value of one of a platform's quotas for this stack: what the config declares, else the default."""
    return plan.config.quotas.get(f"{limits.platform}.{name}", limits.quotas[name].value)


def quota_words(plan: Plan, limits: PlatformLimits, name: str, unit: str = "") -> str:
    """How a message names the quota it holds a site to: the default (with its source) or the declared value."""
    default = limits.quotas[name]
    key = f"{limits.platform}.{name}"
    if key in plan.config.quotas:
        return f"the declared quota of {plan.config.quotas[key]}{unit} (quotas.{key}; default {default.value}: {default.source})"
    return f"the default quota of {default.value}{unit} ({default.source})"


def quota_fix(platform: str, name: str) -> str:
    """The end of every quota message: how to say that the account's quota is higher already."""
    return f"; if the account's quota is higher already, declare it: `pulumi config set --path quotas.{platform}.{name} <number>`"
