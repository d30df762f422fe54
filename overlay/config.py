"""Typed, validated stack configuration (pure: no Pulumi, no cloud SDK).

`parse_config` turns the raw stack configuration (a mapping of key -> value, as `pulumi.Config` or a
`Pulumi.<stack>.yaml` file gives it) into an `OverlayConfig`, or raises `ConfigError` listing every problem
found, each naming the key, the bad value and the fix. Nothing is half-accepted: either the whole config is
valid, or the program stops before any resource is registered.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, cast

from multicloud_overlay.components.clouds.registry import PLATFORMS as PLATFORM_TRAITS
from multicloud_overlay.overlay.encapsulation import ENCRYPTIONS, PROTOCOLS, REKEY_SECONDS, Encryption, Protocol, encapsulation_overhead

PROJECT: Final = "multicloud-overlay"

Platform = str
"""A name in components/clouds/registry.py (PLATFORMS): every platform's facts are its traits record."""
Topology = Literal["hub-and-spoke", "full-mesh", "point-to-point"]

PLATFORMS: Final[tuple[Platform, ...]] = tuple(PLATFORM_TRAITS)
TOPOLOGIES: Final[tuple[Topology, ...]] = ("hub-and-spoke", "full-mesh", "point-to-point")

# Settings a site may give (in addition to the required ones).
OPTIONAL_SITE_KEYS: Final[tuple[str, ...]] = (
    "zone",
    "vpcCidr",
    "wanCidr",
    "lanCidr",
    "underlayMtu",
    "routerSize",
    "clientSize",
    "image",
    "wanGateway",
    "mgmtGateway",
    "dnsServers",
    "server",
    "user",
    "resourceGroup",
)
SITE_KEYS: Final = frozenset(
    ("platform", "siteId", *OPTIONAL_SITE_KEYS, *{k for t in PLATFORM_TRAITS.values() for k in t.required_site_keys})
)

# Address layout: every site owns one block of SITE_BLOCK addresses (a /24 of a /16: 10.250.<siteId>.x) of the overlay IPv4 prefix, chosen by its
# siteId (never by its position in the config), so adding, removing or re-ordering sites, changing the hub or
# the protocol never moves an address. Offsets inside a block:
SITE_BLOCK: Final = 256
ROUTER_HOST: Final = 1
CLIENT_HOST: Final = 2
FIRST_CONTAINER_HOST: Final = 10
MAX_CONTAINERS: Final = 50  # each is a process and a veth pair on a small router VM
MAX_SITE_ID: Final = 999  # router-to-router VNIs are vni + 1000*low + high (see plan.tunnel_vni)
VNI_MAX: Final = 16_777_215

# The router containers' image, pinned by digest: a tag is a name the registry may point at other content at any
# time, a digest names the content. This is the multi-platform index of busybox 1.36.1 as Docker Hub served it in
# 2026 (the same digest is pinned by several public projects, e.g. in their Dockerfiles and manifests).
DEFAULT_CONTAINER_IMAGE: Final = "docker.io/library/busybox:1.36.1@sha256:73aaf090f3d85aa34ee199857f03fa3a95c8ede2ffd4cc2cdb5b94e566b11662"
# A Docker image reference: [registry[:port]/]path[:tag][@sha256:digest]; never an option ("-..."), never blanks.
IMAGE_RE: Final = re.compile(
    r"[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-]+[a-z0-9]+)*)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?"
)

# Defaults of the top-level keys. Pulumi.yaml declares the same defaults; tests/test_project_files.py keeps
# the two equal.
DEFAULTS: Final[Mapping[str, Any]] = {
    "protocol": "vxlan",
    "topology": "hub-and-spoke",
    "encryption": "ipsec",
    "overlayIpv4": "10.250.0.0/16",
    "overlayIpv6": "fd00:6f76:6c00::/64",
    "vni": 4000,
    "mtu": 0,
    "containersPerRouter": 3,
    "containerImage": DEFAULT_CONTAINER_IMAGE,
    "connectivityCheck": True,
    "connectivityCheckFailsUpdate": True,
    "ipsecRekeySeconds": REKEY_SECONDS,
    "standbyHub": "",
}
REQUIRED_KEYS: Final = ("hub", "sites", "adminCidr", "sshPublicKey")
# Map-valued keys (set with `pulumi config set --path`): Pulumi.yaml cannot declare them.
MAP_KEYS: Final = ("sites", "quotas")
TOP_KEYS: Final = frozenset((*REQUIRED_KEYS, *DEFAULTS, "quotas"))
# Where a stack file's reader (components/stack_file.py) lists the keys of this project it found without the
# `multicloud-overlay:` prefix (e.g. `hub: aws` instead of `multicloud-overlay:hub: aws`). Pulumi reads every key of
# a stack file as `<namespace>:<name>`, so such a key never reaches the program: parse_config says how to write it
# instead of reporting the key as not set. The angle brackets keep it apart from every real key.
UNPREFIXED: Final = "<unprefixed>"
MAX_QUOTA: Final = 1_000_000
# ipsecRekeySeconds: strongSwan rekeys a CHILD_SA up to 10 % (rand_time) before rekey_time and deletes it at
# 110 % (life_time); under a minute, a rekeying would hardly finish before the next one is due.
MIN_REKEY_SECONDS: Final = 60
MAX_REKEY_SECONDS: Final = 86_400
# How to set a required key that is missing, where `pulumi config set <key> <value>` cannot: a map is set one
# path at a time.
MISSING_FIX: Final[Mapping[str, str]] = {
    "sites": (
        "it is a map of site name -> settings, set one path at a time, e.g. `pulumi config set --path sites.aws.platform aws`, "
        "`pulumi config set --path sites.aws.siteId 1`, `pulumi config set --path sites.aws.region eu-west-1`, and the same "
        "for a second site, or copy the `multicloud-overlay:sites` block of an example stack: Pulumi.aws-gcp.yaml (two sites) "
        "or Pulumi.dev.yaml (one site per platform)"
    ),
}
# Keys earlier versions used, with what replaced them: a stack that still sets one is told what to do.
RETIRED_KEYS: Final[Mapping[str, str]] = {
    "sshPrivateKey": (
        "no longer used: the stack generates its own deploy key for in-place pushes (a Pulumi secret), so your personal "
        "key is not copied into the state; remove it with `pulumi config rm sshPrivateKey`"
    ),
}
# adminCidr: the range an operator administers from (an office, a VPN egress, one address). Anything wider than an
# IPv4 /16 (65,536 addresses, the largest block one organisation's network is commonly given) or an IPv6 /48 (the
# largest assignment to one end site, RFC 6177) is not an administration range but a slice of the internet.
ADMIN_MIN_PREFIX: Final[Mapping[int, int]] = {4: 16, 6: 48}
# OpenSSH public key types the login user accepts (the payload installs the key itself on every platform).
SSH_KEY_RE: Final = re.compile(r"(ssh-(ed25519|rsa)|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/]+={0,3}( [^\r\n]*)?")

_NAME_RE: Final = re.compile(r"[a-z][a-z0-9]{0,11}")
"""Site names (fullmatch: `$` would accept a trailing newline)."""


class ConfigError(ValueError):
    """Every problem of one stack config, raised together before any resource exists."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"the stack config has {len(problems)} problem(s):\n{lines}")


@dataclass(frozen=True)
class SiteConfig:
    """One site: one cloud region (or one vSphere datacentre) with a router and a client."""

    name: str
    """Site name, lower-case letters and digits, at most 12 (used in resource and interface names)."""
    platform: Platform
    site_id: int
    """Stable 1..999 number of the site: selects its overlay address block and its VNIs."""
    region: str | None
    vpc_cidr: ipaddress.IPv4Network
    wan_cidr: ipaddress.IPv4Network
    lan_cidr: ipaddress.IPv4Network
    underlay_mtu: int
    """MTU of the internet path from this site's router (the tunnel underlay)."""
    settings: Mapping[str, Any] = field(default_factory=dict)
    """Every other platform setting as given (zone, project, compartmentId, vSphere names, sizes, image)."""

    def setting(self, key: str) -> str | None:
        value = self.settings.get(key)
        return None if value is None else str(value)

    def require(self, key: str) -> str:
        value = self.setting(key)
        if value is None:  # parse_config already refused such a site; this guards direct construction
            raise KeyError(f"sites.{self.name}.{key} is not set")
        return value


@dataclass(frozen=True)
class OverlayConfig:
    """The whole validated stack config."""

    hub: str
    protocol: Protocol
    topology: Topology
    encryption: Encryption
    """ipsec: router-to-router tunnels travel inside ESP (UDP 4500, NAT traversal) with per-pair keys."""
    sites: tuple[SiteConfig, ...]
    overlay_ipv4: ipaddress.IPv4Network
    overlay_ipv6: ipaddress.IPv6Network
    vni: int
    """Base VNI; each tunnel uses its own VNI derived from it (see plan.tunnel_vni)."""
    mtu: int
    """Overlay MTU requested by the user, 0 = automatic (smallest underlay MTU minus encapsulation)."""
    containers_per_router: int
    container_image: str
    admin_cidr: ipaddress.IPv4Network | ipaddress.IPv6Network
    ssh_public_key: str
    connectivity_check: bool
    connectivity_check_fails_update: bool = True
    """False: the check runs and its result is exported, but an unreachable pair does not fail `pulumi up` (a
    pipeline's test stage judges it: python -m ops)."""
    quotas: Mapping[str, int] = field(default_factory=dict)
    """Quotas the account has raised above a platform's documented default, as "<platform>.<name>" -> value (the
    names are the platforms' own: components/clouds/<platform>_limits.py; check_limits refuses an unknown one)."""

    ipsec_rekey_seconds: int = REKEY_SECONDS
    """encryption ipsec: seconds between CHILD_SA rekeyings (new keys, a new X25519 exchange)."""
    standby_hub: str = ""
    """hub-and-spoke: the site whose router takes over from the hub's when the hub is lost ("": none). Every spoke
    tunnels to both; each spoke moves to the standby by itself when BFD finds the hub gone, and back when it returns."""

    def site(self, name: str) -> SiteConfig:
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(name)


def _close_match(word: str, choices: frozenset[str] | tuple[str, ...]) -> str | None:
    import difflib

    match = difflib.get_close_matches(word, sorted(choices), n=1)
    return match[0] if match else None


def _closest(word: str, choices: frozenset[str] | tuple[str, ...]) -> str:
    match = _close_match(word, choices)
    return f" (did you mean '{match}'?)" if match else ""


class _Collector:
    """Collects problems; parsing goes on after a problem so that all of them are reported at once."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def add(self, key: str, value: object, fix: str) -> None:
        self.problems.append(f"{key} = {value!r}: {fix}")

    def integer(self, key: str, value: object, lo: int, hi: int) -> int | None:
        if isinstance(value, bool):
            self.add(key, value, f"set a whole number from {lo} to {hi}")
            return None
        try:
            number = int(str(value).strip()) if isinstance(value, str) else int(cast(int, value))
        except (TypeError, ValueError):
            self.add(key, value, f"set a whole number from {lo} to {hi}")
            return None
        if isinstance(value, float) and value != number:
            self.add(key, value, f"set a whole number from {lo} to {hi}")
            return None
        if not lo <= number <= hi:
            self.add(key, value, f"out of range: set a whole number from {lo} to {hi}")
            return None
        return number

    def boolean(self, key: str, value: object) -> bool | None:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        self.add(key, value, "set true or false")
        return None

    def choice(self, key: str, value: object, choices: tuple[str, ...]) -> str | None:
        if isinstance(value, str) and value in choices:
            return value
        hint = _closest(value, choices) if isinstance(value, str) else ""
        self.add(key, value, f"unknown value{hint}: use one of {', '.join(choices)}")
        return None

    def network(self, key: str, value: object, version: int, fix: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
        try:
            net = ipaddress.ip_network(str(value), strict=True)
        except ValueError:
            try:
                loose = ipaddress.ip_network(str(value), strict=False)
                self.add(key, value, f"host bits are set: write the network as {loose}")
            except ValueError:
                self.add(key, value, f"not a CIDR prefix: {fix}")
            return None
        if version and net.version != version:
            self.add(key, value, f"expected an IPv{version} prefix: {fix}")
            return None
        return net

    def v4(self, key: str, value: object, fix: str) -> ipaddress.IPv4Network | None:
        net = self.network(key, value, 4, fix)
        return net if isinstance(net, ipaddress.IPv4Network) else None


def parse_config(raw: Mapping[str, Any]) -> OverlayConfig:
    """Validate the raw stack config; raise ConfigError listing every problem."""
    c = _Collector()
    unprefixed = sorted(str(k) for k in cast(list[object], raw.get(UNPREFIXED) or []))
    for key in unprefixed:
        c.problems.append(
            f"{key} has no project prefix in the stack file, so Pulumi does not pass it to this program: write the key as "
            f"`{PROJECT}:{key}` (as `pulumi config set` does; keys of other namespaces such as aws:region stay as they are)"
        )
    for key in sorted(set(raw) & set(RETIRED_KEYS)):
        c.problems.append(f"{key} is set: {RETIRED_KEYS[key]}")
    for key in sorted(set(raw) - TOP_KEYS - set(RETIRED_KEYS) - {UNPREFIXED}):
        c.add(key, raw[key], f"unknown key{_closest(key, TOP_KEYS)}: remove it (known keys: {', '.join(sorted(TOP_KEYS))})")
    for key in REQUIRED_KEYS:
        if raw.get(key) in (None, "") and key not in unprefixed:
            c.problems.append(
                f"{key} is not set: {MISSING_FIX.get(key, f'run `pulumi config set {key} <value>`')} (see README, config reference)"
            )

    def get(key: str) -> Any:
        value = raw.get(key)
        return DEFAULTS[key] if value is None else value

    protocol = c.choice("protocol", get("protocol"), PROTOCOLS)
    topology = c.choice("topology", get("topology"), TOPOLOGIES)
    encryption = c.choice("encryption", get("encryption"), ENCRYPTIONS)
    vni = c.integer("vni", get("vni"), 1, VNI_MAX)
    if vni is not None and vni + 1000 * MAX_SITE_ID + MAX_SITE_ID > VNI_MAX:
        c.add(
            "vni",
            vni,
            f"too large: tunnels use VNIs up to vni + {1000 * MAX_SITE_ID + MAX_SITE_ID}; set at most {VNI_MAX - 1000 * MAX_SITE_ID - MAX_SITE_ID}",
        )
        vni = None
    mtu = c.integer("mtu", get("mtu"), 0, 9000)
    if mtu is not None and 0 < mtu < 1280:
        c.add("mtu", mtu, "below 1280, the IPv6 minimum: set 0 (automatic) or 1280..9000")
        mtu = None
    containers = c.integer("containersPerRouter", get("containersPerRouter"), 0, MAX_CONTAINERS)
    image = get("containerImage")
    if not isinstance(image, str) or not IMAGE_RE.fullmatch(image):
        c.add("containerImage", image, f"not a container image reference: set one such as {DEFAULT_CONTAINER_IMAGE}")
        image = None
    check = c.boolean("connectivityCheck", get("connectivityCheck"))
    check_fails = c.boolean("connectivityCheckFailsUpdate", get("connectivityCheckFailsUpdate"))
    rekey = c.integer("ipsecRekeySeconds", get("ipsecRekeySeconds"), MIN_REKEY_SECONDS, MAX_REKEY_SECONDS)

    v4 = c.v4("overlayIpv4", get("overlayIpv4"), "set an IPv4 prefix such as 10.250.0.0/16")
    v6net = c.network("overlayIpv6", get("overlayIpv6"), 6, "set an IPv6 /64 such as fd00:6f76:6c00::/64")
    v6 = v6net if isinstance(v6net, ipaddress.IPv6Network) else None
    if v6 is not None and v6.prefixlen != 64:
        c.add("overlayIpv6", str(v6), "the IPv6 overlay must be exactly a /64 (one LAN segment): use a /64 such as fd00:6f76:6c00::/64")
        v6 = None

    admin: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    if raw.get("adminCidr") not in (None, ""):
        admin = c.network("adminCidr", raw["adminCidr"], 0, "set the address range you administer from, e.g. 198.51.100.7/32")
        if admin is not None and admin.prefixlen < ADMIN_MIN_PREFIX[admin.version]:
            widest = ADMIN_MIN_PREFIX[admin.version]
            c.add(
                "adminCidr",
                str(admin),
                f"{admin.num_addresses:,} addresses would reach SSH: set the range you administer from, at most a /{widest}, "
                "e.g. 198.51.100.7/32",
            )
            admin = None

    ssh_key = raw.get("sshPublicKey")
    if ssh_key not in (None, "") and (not isinstance(ssh_key, str) or not SSH_KEY_RE.fullmatch(ssh_key.strip())):
        c.add("sshPublicKey", ssh_key, "not an OpenSSH public key: paste one line such as 'ssh-ed25519 AAAA... you@host'")

    sites, names = _parse_sites(c, raw.get("sites"))
    quotas = _parse_quotas(c, raw.get("quotas"))

    # Cross-key checks. They count every site the config names, a site with a problem of its own included: that
    # problem is reported once, as itself, and not again as a missing hub or a wrong number of sites.
    hub = raw.get("hub")
    if hub not in (None, "") and names and hub not in names:
        c.add("hub", hub, f"not among the sites{_closest(str(hub), tuple(names))}: set one of {', '.join(names)}")
    standby = get("standbyHub")
    if standby not in (None, ""):
        if not isinstance(standby, str) or (names and standby not in names):
            c.add("standbyHub", standby, f"not among the sites{_closest(str(standby), tuple(names))}: set one of {', '.join(names)}, or \"\" for none")
        elif standby == hub:
            c.add("standbyHub", standby, "is the hub itself: set another site, or \"\" for none")
        elif topology is not None and topology != "hub-and-spoke":
            c.add("standbyHub", standby, f"a standby hub takes over from the hub of a hub-and-spoke overlay, and the topology is {topology}: set topology hub-and-spoke, or standbyHub \"\"")
        elif names and len(names) < 3:
            c.add("standbyHub", standby, f"the config has {len(names)} sites, so no spoke would fail over: add a site, or set standbyHub \"\"")
    if topology == "point-to-point" and names and len(names) != 2:
        c.add(
            "topology",
            topology,
            f"point-to-point joins exactly two sites, the config has {len(names)}: use hub-and-spoke or full-mesh, or keep two sites",
        )
    if v4 is not None and sites:
        blocks = v4.num_addresses // SITE_BLOCK
        top = max(s.site_id for s in sites)
        if blocks <= top:
            need = 32 - (SITE_BLOCK * (top + 1) - 1).bit_length()
            c.add(
                "overlayIpv4",
                str(v4),
                f"too small for siteId {top} ({SITE_BLOCK} addresses per site): use a /{need} or larger, or lower the siteIds",
            )
    for s in sites:
        for label, net in (("vpcCidr", s.vpc_cidr), ("wanCidr", s.wan_cidr), ("lanCidr", s.lan_cidr)):
            if v4 is not None and net.overlaps(v4):
                c.add(
                    "overlayIpv4", str(v4), f"overlaps sites.{s.name}.{label} {net}: choose an overlay prefix outside every site's underlay"
                )
        mgmt = s.setting("mgmtCidr")
        if v4 is not None and mgmt:
            try:
                if ipaddress.ip_network(mgmt, strict=False).overlaps(v4):
                    c.add(
                        "overlayIpv4",
                        str(v4),
                        f"overlaps sites.{s.name}.mgmtCidr {mgmt}: choose an overlay prefix outside every site's underlay",
                    )
            except ValueError:
                pass
    # Sites may reuse each other's private ranges (vpcCidr, wanCidr, lanCidr): each site is a network of its own,
    # joined to the others only by the overlay; tunnels run between public addresses (every edge NATs 1:1), a client
    # tunnels to its own router on its own LAN, and the overlay never routes an underlay prefix. The one exception is
    # a management network: the machine running `pulumi up` pushes to a managed site's client at its management
    # address, so it must reach every site's management network by a distinct prefix.
    for i, a in enumerate(sites):
        for b in sites[i + 1 :]:
            if a.site_id == b.site_id:
                c.add(f"sites.{b.name}.siteId", b.site_id, f"already used by site {a.name}: give every site its own siteId")
            mgmt_a, mgmt_b = _management_network(a), _management_network(b)
            if mgmt_a is not None and mgmt_b is not None and mgmt_a.overlaps(mgmt_b):
                c.add(
                    f"sites.{b.name}.mgmtCidr",
                    str(mgmt_b),
                    f"overlaps sites.{a.name}.mgmtCidr {mgmt_a}: the machine running `pulumi up` reaches every site's "
                    "management network, so give each one its own prefix",
                )
    if sites and protocol is not None and encryption is not None:
        overhead = encapsulation_overhead(cast(Protocol, protocol), 4, cast(Encryption, encryption))
        label = f"{protocol}+ipsec" if encryption == "ipsec" else protocol
        path = min(s.underlay_mtu for s in sites)
        auto = path - overhead
        narrowest = min(sites, key=lambda s: s.underlay_mtu).name
        if mtu == 0 and auto < 1280:
            c.add(
                "mtu",
                "0 (automatic)",
                f"the overlay MTU would be {auto} ({narrowest} underlay {path} - {overhead} {label} overhead), below 1280: raise sites.{narrowest}.underlayMtu",
            )
        elif mtu and mtu > auto:
            c.add(
                "mtu",
                mtu,
                f"exceeds the path: {narrowest} underlay {path} - {overhead} {label} overhead = {auto}; set 0 (automatic) or at most {auto}",
            )

    if c.problems:
        raise ConfigError(c.problems)
    assert protocol and topology and encryption and v4 and v6 and admin and vni is not None and mtu is not None
    assert containers is not None and image is not None and check is not None and check_fails is not None and isinstance(hub, str)
    assert rekey is not None
    return OverlayConfig(
        standby_hub=str(standby or ""),
        hub=hub,
        protocol=cast(Protocol, protocol),
        topology=cast(Topology, topology),
        encryption=cast(Encryption, encryption),
        sites=tuple(sorted(sites, key=lambda s: s.site_id)),
        overlay_ipv4=v4,
        overlay_ipv6=v6,
        vni=vni,
        mtu=mtu,
        containers_per_router=containers,
        container_image=image,
        admin_cidr=admin,
        ssh_public_key=cast(str, ssh_key).strip(),
        connectivity_check=check,
        connectivity_check_fails_update=check_fails,
        quotas=quotas,
        ipsec_rekey_seconds=rekey,
    )


def _management_network(site: SiteConfig) -> ipaddress.IPv4Network | None:
    """The site's management network, where its platform manages nodes over one (_parse_site validated it)."""
    mgmt = site.setting("mgmtCidr")
    if not mgmt or not PLATFORM_TRAITS[site.platform].management_network:
        return None
    return ipaddress.IPv4Network(mgmt)


def _parse_quotas(c: _Collector, raw: object) -> dict[str, int]:
    """quotas: platform -> quota name -> the account's raised value (`pulumi config set --path quotas.aws.X 20`)."""
    if raw in (None, ""):
        return {}
    if not isinstance(raw, Mapping):
        c.add(
            "quotas",
            raw,
            "set a map of platform -> quota name -> number, e.g. `pulumi config set --path quotas.aws.elasticIpsPerRegion 20`",
        )
        return {}
    out: dict[str, int] = {}
    for platform, names in cast(Mapping[str, Any], raw).items():
        if platform not in PLATFORMS:
            c.add(f"quotas.{platform}", names, f"unknown platform{_closest(str(platform), PLATFORMS)}: use one of {', '.join(PLATFORMS)}")
            continue
        if not isinstance(names, Mapping):
            c.add(f"quotas.{platform}", names, "set a map of quota name -> number")
            continue
        for name, value in cast(Mapping[str, Any], names).items():
            number = c.integer(f"quotas.{platform}.{name}", value, 1, MAX_QUOTA)
            if number is not None:
                out[f"{platform}.{name}"] = number
    return out


def _parse_sites(c: _Collector, raw_sites: object) -> tuple[list[SiteConfig], list[str]]:
    """The valid sites, and the name of every site the config gives (valid or not) for the cross-key checks."""
    if raw_sites in (None, ""):
        return [], []  # reported as a missing required key
    if isinstance(raw_sites, list):
        c.add("sites", "<list>", "sites is a map of site name -> settings, not a list (see Pulumi.dev.yaml)")
        return [], []
    if not isinstance(raw_sites, Mapping) or not raw_sites:
        c.add("sites", raw_sites, "set a map of site name -> settings with at least two sites (see Pulumi.dev.yaml)")
        return [], []
    sites_map = cast(Mapping[str, Any], raw_sites)
    if len(sites_map) < 2:
        c.add("sites", list(sites_map), "an overlay joins at least two sites: add another")
    seen: dict[str, str] = {}
    out: list[SiteConfig] = []
    for name, body in sites_map.items():
        key = f"sites.{name}"
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            c.add(
                key,
                name,
                "site names are 1-12 lower-case letters or digits, starting with a letter (they become resource and interface names)",
            )
            continue
        if name.lower() in seen:
            c.add(key, name, f"duplicate site name (also '{seen[name.lower()]}'): give each site its own name")
            continue
        seen[name.lower()] = name
        if not isinstance(body, Mapping):
            c.add(key, body, "set a map with at least platform and siteId")
            continue
        site = _parse_site(c, name, cast(Mapping[str, Any], body))
        if site is not None:
            out.append(site)
    return out, [str(name) for name in sites_map]


def _parse_site(c: _Collector, name: str, body: Mapping[str, Any]) -> SiteConfig | None:
    key = f"sites.{name}"
    before = len(c.problems)
    # A misspelled setting is reported once, as itself: the setting it stands for is not reported as missing too.
    misspelled: set[str] = set()
    given = body.get("platform")
    # Suggest only what the site's platform takes: a vSphere setting is no fix for an AWS site.
    candidates = (
        frozenset(("platform", "siteId", *OPTIONAL_SITE_KEYS, *PLATFORM_TRAITS[given].required_site_keys))
        if isinstance(given, str) and given in PLATFORM_TRAITS
        else SITE_KEYS
    )
    for k in sorted(set(body) - SITE_KEYS):
        match = _close_match(k, candidates)
        if match is None:
            c.add(f"{key}.{k}", body[k], "unknown site setting: remove it")
        else:
            misspelled.add(match)
            c.add(f"{key}.{k}", body[k], f"unknown site setting (did you mean '{match}'?): rename it to {match}")
    platform = None
    if body.get("platform") is None:
        if "platform" not in misspelled:
            c.problems.append(f"{key}.platform is not set: set one of {', '.join(PLATFORMS)}")
    else:
        platform = c.choice(f"{key}.platform", body.get("platform"), PLATFORMS)
    site_id = None
    if body.get("siteId") is None:
        if "siteId" not in misspelled:
            c.problems.append(
                f"{key}.siteId is not set: give the site a stable number from 1 to {MAX_SITE_ID} (it selects its overlay addresses)"
            )
    else:
        site_id = c.integer(f"{key}.siteId", body.get("siteId"), 1, MAX_SITE_ID)
    if platform is not None:
        for req in PLATFORM_TRAITS[platform].required_site_keys:
            if body.get(req) in (None, "") and req not in misspelled:
                c.problems.append(
                    f"{key}.{req} is not set: a {platform} site needs it (run `pulumi config set --path {key}.{req} <value>`)"
                )
        naming = PLATFORM_TRAITS[platform].zone_naming
        zone, region = body.get("zone"), body.get("region")
        if naming is not None and zone not in (None, "") and region not in (None, "") and not naming.belongs(str(zone), str(region)):
            c.add(
                f"{key}.zone",
                zone,
                f"not a zone of {key}.region {region}: {platform} zone names are {naming.rule.format(region=region)} ({naming.source}); "
                f"set a zone of {region}, or set {key}.region to the zone's region",
            )
    sid = site_id if site_id is not None else 0
    nets: dict[str, ipaddress.IPv4Network | None] = {}
    defaults = {
        "vpcCidr": f"10.{sid % 256}.0.0/16",
        "wanCidr": f"10.{sid % 256}.1.0/24",
        "lanCidr": f"10.{sid % 256}.2.0/24",
    }
    for k, default in defaults.items():
        nets[k] = c.v4(f"{key}.{k}", body.get(k, default), "set a private IPv4 prefix such as 10.1.1.0/24")
    vpc, wan, lan = nets["vpcCidr"], nets["wanCidr"], nets["lanCidr"]
    for k, net in (("wanCidr", wan), ("lanCidr", lan)):
        if net is None:
            continue
        if net.prefixlen > 27:
            c.add(f"{key}.{k}", str(net), "too small: the plan places hosts at .10 and .20, use a /27 or larger")
        if vpc is not None and not net.subnet_of(vpc):
            c.add(f"{key}.{k}", str(net), f"not inside sites.{name}.vpcCidr {vpc}: pick a subnet of it")
    if wan is not None and lan is not None and wan.overlaps(lan):
        c.add(f"{key}.lanCidr", str(lan), f"overlaps sites.{name}.wanCidr {wan}: WAN and LAN need separate subnets")
    managed_apart = platform is not None and PLATFORM_TRAITS[platform].management_network
    if managed_apart and body.get("mgmtCidr") not in (None, ""):
        mgmt = c.v4(f"{key}.mgmtCidr", body.get("mgmtCidr"), "set the management port group's IPv4 prefix")
        if mgmt is not None and mgmt.prefixlen > 27:
            c.add(f"{key}.mgmtCidr", str(mgmt), "too small: the plan places hosts at .10 and .20, use a /27 or larger")
    if managed_apart and body.get("publicIp") not in (None, ""):
        try:
            public = ipaddress.ip_address(str(body["publicIp"]))
            if public.version != 4:
                raise ValueError
        except ValueError:
            c.add(f"{key}.publicIp", body["publicIp"], "set the IPv4 address the datacentre edge NATs to the router")
    traits = PLATFORM_TRAITS[platform] if platform else None
    mtu_default = traits.default_underlay_mtu.value if traits else 1500
    lo, hi = traits.underlay_mtu_range.value if traits and traits.underlay_mtu_range else (1280, 9216)
    underlay_mtu = c.integer(f"{key}.underlayMtu", body.get("underlayMtu", mtu_default), lo, hi)
    if len(c.problems) != before or platform is None or site_id is None or underlay_mtu is None:
        return None
    assert vpc and wan and lan
    settings = {k: v for k, v in body.items() if k not in ("platform", "siteId", "vpcCidr", "wanCidr", "lanCidr", "underlayMtu", "region")}
    region = body.get("region")
    return SiteConfig(
        name=name,
        platform=cast(Platform, platform),
        site_id=site_id,
        region=None if region is None else str(region),
        vpc_cidr=vpc,
        wan_cidr=wan,
        lan_cidr=lan,
        underlay_mtu=underlay_mtu,
        settings=settings,
    )
