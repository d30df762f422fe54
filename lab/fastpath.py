"""The node script's per-packet savings on a running lab node: which are in effect, and turning each off and on
again by hand (bench.fastpath measures each one's worth that way; the tests check that the node script puts them
back on a re-apply and a reboot).

    notrack    tunnel datagrams bypass conntrack: the raw table's OVERLAY-NOTRACK chain, jumped to first from
               PREROUTING and OUTPUT (iptables and ip6tables), on nodes whose image firewall tracks connections (OCI)
    bridge_nf  bridged overlay frames skip iptables/ip6tables/arptables (where br_netfilter is loaded; routers)

"Off" is what the node script did before each saving: the raw chain not jumped to, bridge-nf-call-* = 1
(br_netfilter's own default).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from lab.shell import Shell
from multicloud_overlay.cloudinit.overlay_node import BRIDGE_NF_SYSCTLS, OWN_CHAINS
from multicloud_overlay.components.clouds.registry import PLATFORMS

SAVINGS = ("notrack", "bridge_nf")
NOTRACK_CHAIN = "OVERLAY-NOTRACK"


def _sysctls(sh: Shell, ns: str, keys: Sequence[str]) -> dict[str, str]:
    """The keys that exist in the namespace, with their values."""
    out = {}
    for key in keys:
        proc = sh.ns(ns, ["sysctl", "-n", key], check=False)
        if proc.returncode == 0:
            out[key] = proc.stdout.strip()
    return out


def stateful_image(platform: str) -> bool:
    """The platform's image firewall tracks connections (the one the node script must open: OCI's)."""
    return PLATFORMS[platform].closed_host_firewall


def has_bridge_nf(sh: Shell, ns: str) -> bool:
    """br_netfilter is loaded (its settings exist in the namespace)."""
    return bool(_sysctls(sh, ns, list(BRIDGE_NF_SYSCTLS)))


def in_effect(sh: Shell, ns: str, router: bool, stateful_image: bool) -> dict[str, bool | None]:
    """Which savings are in effect on a node (None: does not apply here: notrack where the image's firewall does
    not track connections, bridge_nf on a client or where br_netfilter is not loaded)."""
    result: dict[str, bool | None] = {"notrack": None, "bridge_nf": None}
    if stateful_image:
        hooks = OWN_CHAINS[NOTRACK_CHAIN][1]
        notrack = True
        for tool in ("iptables", "ip6tables"):
            rules = [line for line in sh.ns(ns, [f"{tool}-save", "-t", "raw"]).stdout.splitlines() if line.startswith("-A ")]
            for hook in hooks:
                first = next((r for r in rules if r.startswith(f"-A {hook} ")), None)
                notrack = notrack and first == f"-A {hook} -j {NOTRACK_CHAIN}"
            notrack = notrack and any(r.startswith(f"-A {NOTRACK_CHAIN} ") and r.endswith("-j CT --notrack") for r in rules)
        result["notrack"] = notrack
    if router:
        nf = _sysctls(sh, ns, list(BRIDGE_NF_SYSCTLS))
        result["bridge_nf"] = (nf == BRIDGE_NF_SYSCTLS) if nf else None
    return result


def switch(sh: Shell, ns: str, saving: str, on: bool) -> None:
    """Turn one saving on (as the node script sets it) or off (as the node script left it before) on one node."""
    if saving == "notrack":
        for tool in ("iptables", "ip6tables"):
            for hook in OWN_CHAINS[NOTRACK_CHAIN][1]:
                while sh.ns(ns, [tool, "-w", "-t", "raw", "-D", hook, "-j", NOTRACK_CHAIN], check=False).returncode == 0:
                    pass
                if on:
                    sh.ns(ns, [tool, "-w", "-t", "raw", "-I", hook, "1", "-j", NOTRACK_CHAIN])
    elif saving == "bridge_nf":
        keys = _sysctls(sh, ns, list(BRIDGE_NF_SYSCTLS))
        if keys:
            sh.ns(ns, ["sysctl", "-qw", *(f"{k}={BRIDGE_NF_SYSCTLS[k] if on else '1'}" for k in keys)])
    else:
        raise ValueError(f"unknown saving {saving!r}: choose among {', '.join(SAVINGS)}")


# Measured and not adopted (bench.fastpath keeps measuring it): no reverse-path check on the NICs. The node script
# sets loose mode (2) for the whole node; with a default route loose mode refuses no source, yet costs a route
# lookup per received packet (__fib_validate_source).
CANDIDATES = ("no_rp_filter",)
RP_FILTER = "net.ipv4.conf.{nic}.rp_filter"


def try_candidate(sh: Shell, ns: str, candidate: str, nics: Sequence[str], on: bool) -> None:
    """Apply a measured-but-not-adopted change by hand (on), or put back what the node script sets (off)."""
    if candidate != "no_rp_filter":
        raise ValueError(f"unknown candidate {candidate!r}: choose among {', '.join(CANDIDATES)}")
    value = "0" if on else "2"
    sh.ns(ns, ["sysctl", "-qw", *(f"{RP_FILTER.format(nic=n)}={value}" for n in ("all", *nics))])


def tracked(sh: Shell, ns: str, port: int, overlay: Sequence[str]) -> dict[str, int]:
    """Connection-tracking entries in a node's namespace now (`conntrack -L`): tunnel datagrams (UDP to `port`)
    and overlay flows (first source address inside one of the `overlay` networks)."""
    return count_tracked(sh.ns(ns, ["conntrack", "-L"], check=False).stdout, port, overlay)


def count_tracked(text: str, port: int, overlay: Sequence[str]) -> dict[str, int]:
    """`conntrack -L` output -> tunnel and overlay-flow entries. The node's own group membership reports (IGMP, MLD:
    to a multicast address, sent whenever its bridge comes up or joins a group) are no flow and not counted."""
    nets = [ipaddress.ip_network(n, strict=False) for n in overlay]
    counts = {"tunnel": 0, "overlay": 0}
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "udp" and f"dport={port}" in fields:
            counts["tunnel"] += 1
        src = next((f.removeprefix("src=") for f in fields if f.startswith("src=")), None)
        dst = next((f.removeprefix("dst=") for f in fields if f.startswith("dst=")), None)
        if dst is not None and ipaddress.ip_address(dst).is_multicast:
            continue
        if src is not None and any(ipaddress.ip_address(src) in n for n in nets):
            counts["overlay"] += 1
    return counts


def conntrack_running(sh: Shell, ns: str) -> bool:
    """Whether connection tracking runs in a namespace: the kernel tracks only where a rule needs it (a state
    match, NAT, a CT target other than notrack), and /proc/sys/net/netfilter/nf_conntrack_count exists anyway,
    so: is any stateful rule loaded (iptables-save of the filter, nat and mangle tables)."""
    for tool in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            text = sh.ns(ns, [f"{tool}-save", "-t", table], check=False).stdout
            if any(m in text for m in ("-m state", "-m conntrack", "-j DNAT", "-j SNAT", "-j MASQUERADE")):
                return True
    return False
