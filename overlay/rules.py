"""What an ingress rule is (pure types): the security module computes them from the plan, each platform's traits
pack them into its own groups, and each platform module turns them into firewall resources."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

RuleProtocol = Literal["udp", "tcp", "icmp", "icmpv6"]


@dataclass(frozen=True)
class PeerRouter:
    """The public IPv4 /32 of the router of `site`."""

    site: str


@dataclass(frozen=True)
class IngressRule:
    name: str
    """Stable, peer-derived name (e.g. tunnel-from-gcp): a hub swap adds and removes rules, never renames them."""
    protocol: RuleProtocol
    port: int | None
    """Destination port for udp/tcp; None for ICMP (all types: echo and PMTU errors)."""
    source: str | PeerRouter
    family: Literal[4, 6]
    description: str


@dataclass(frozen=True)
class SiteRules:
    """The ingress rules of one site's two nodes, as overlay.security computes them."""

    router: list[IngressRule]
    client: list[IngressRule]
