"""Least-privilege ingress rules of a site's nodes, from the plan (pure).

Every platform turns these into its own firewall resources; none decides on its own what to admit. A rule's
source is either a literal CIDR or a reference to a peer router's public address (known only once reserved),
which the Site resolves to an Output before handing the rule to the platform.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from multicloud_overlay.overlay.encapsulation import NATT_PORT
from multicloud_overlay.overlay.plan import Plan, router_name
from multicloud_overlay.overlay.rules import IngressRule, PeerRouter, RuleProtocol, SiteRules

SSH_PORT = 22


def _admin_rules(plan: Plan) -> list[IngressRule]:
    admin = plan.config.admin_cidr
    family: Literal[4, 6] = 4 if admin.version == 4 else 6
    icmp: RuleProtocol = "icmp" if family == 4 else "icmpv6"
    return [
        IngressRule("ssh-admin", "tcp", SSH_PORT, str(admin), family, "SSH from the admin range"),
        IngressRule("icmp-admin", icmp, None, str(admin), family, "ping and path-MTU errors from the admin range"),
    ]


def router_rules(plan: Plan, site: str) -> list[IngressRule]:
    """Ingress of a site's router: tunnels from its peers and its LAN, SSH and ICMP from the admin range."""
    lan = str(plan.config.site(site).lan_cidr)
    rules: list[IngressRule] = []
    for peer in plan.peer_sites(site):
        if plan.encrypted:
            # The tunnel travels inside ESP in UDP (NAT traversal): its own port stays closed to the internet.
            tunnel = IngressRule(
                f"tunnel-from-{peer}", "udp", NATT_PORT, PeerRouter(peer), 4, f"IPsec ({plan.protocol} in ESP) from {router_name(peer)}"
            )
        else:
            tunnel = IngressRule(f"tunnel-from-{peer}", "udp", plan.port, PeerRouter(peer), 4, f"{plan.protocol} from {router_name(peer)}")
        rules.append(tunnel)
        rules.append(
            IngressRule(f"icmp-from-{peer}", "icmp", None, PeerRouter(peer), 4, f"ping and path-MTU errors from {router_name(peer)}")
        )
    rules.append(IngressRule("tunnel-from-lan", "udp", plan.port, lan, 4, f"{plan.protocol} from the site client"))
    rules.append(IngressRule("icmp-from-lan", "icmp", None, lan, 4, "ping and path-MTU errors from the site LAN"))
    return rules + _admin_rules(plan)


def client_rules(plan: Plan, site: str) -> list[IngressRule]:
    """Ingress of a site's client: its router's tunnel over the LAN, SSH and ICMP from the admin range."""
    router_lan = f"{plan.router(site).lan_ip}/32"
    return [
        IngressRule("tunnel-from-router", "udp", plan.port, router_lan, 4, f"{plan.protocol} from the site router"),
        IngressRule("icmp-from-router", "icmp", None, router_lan, 4, "ping and path-MTU errors from the site router"),
        *_admin_rules(plan),
    ]


def site_rules(plan: Plan, site: str) -> SiteRules:
    """Both nodes' rules of a site (what the platform traits check and pack before any resource exists)."""
    return SiteRules(router=router_rules(plan, site), client=client_rules(plan, site))


def scoped_source(source: str, rule: str = "") -> str:
    """`source`, unless it would admit the whole internet (every platform's rules go through this)."""
    if is_open_to_world(source):
        named = f"ingress rule {rule}: " if rule else ""
        raise ValueError(f"{named}refusing source {source!r}: it would admit the whole internet; name the peer or range instead")
    return source


def is_open_to_world(source: str) -> bool:
    """True for 0.0.0.0/0, ::/0 and their spellings (tests assert no rule is)."""
    try:
        return ipaddress.ip_network(source, strict=False).prefixlen == 0
    except ValueError:
        return source.strip() in ("*", "Internet", "any", "0.0.0.0", "::")
