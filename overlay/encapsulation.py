"""Tunnel protocols and what each adds to a frame (pure; read by the config's MTU checks and by the plan).

The protocol and encryption names live here, not in the config module, so that the config can check an MTU and
the plan can compute one without importing each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal

Protocol = Literal["vxlan", "geneve"]
Encryption = Literal["none", "ipsec"]
PROTOCOLS: Final[tuple[Protocol, ...]] = ("vxlan", "geneve")
ENCRYPTIONS: Final[tuple[Encryption, ...]] = ("none", "ipsec")

TUNNEL_PORT: Final[Mapping[Protocol, int]] = {"vxlan": 4789, "geneve": 6081}
# Outer IP + UDP + VXLAN/GENEVE header + inner Ethernet header. GENEVE carries no options here, so its
# overhead equals VXLAN's: 20 (IPv4) or 40 (IPv6) + 8 (UDP) + 8 (tunnel header) + 14 (inner Ethernet).
GENEVE_OPTIONS_BYTES: Final = 0

# IPsec (encryption: ipsec): ESP in transport mode, carried in UDP 4500 (NAT traversal, RFC 3948) because every
# router sits behind its platform's 1:1 NAT, which passes UDP everywhere and ESP (IP protocol 50) not everywhere.
# AES-256-GCM with a 16-byte ICV (RFC 4106): 36 bytes of key material per direction (32 key + 4 salt).
NATT_PORT: Final = 4500
ESP_ALGORITHM: Final = "rfc4106(gcm(aes))"
ESP_ICV_BITS: Final = 128
ESP_KEY_BYTES: Final = 36
PAIR_KEY_BYTES: Final = 2 * ESP_KEY_BYTES
"""One random secret per router pair: the first half keys the lower site id's direction, the second the other."""
# UDP encapsulation 8 + ESP header (SPI, sequence) 8 + GCM IV 8 + padding to 4 bytes (at most 3) + pad length
# and next header 2 + ICV 16: at most 45 bytes on top of the tunnel's own overhead.
ESP_NATT_OVERHEAD: Final = 8 + 8 + 8 + 3 + 2 + ESP_ICV_BITS // 8
SPI_BASE: Final = 0x40000000
"""Every SPI this project installs is SPI_BASE + 2 * VNI (+1): the node script recognises its own SAs by it."""


def encapsulation_overhead(protocol: Protocol, family: int, encryption: Encryption = "none") -> int:
    """Bytes a tunnel adds to each overlay frame for the given protocol, underlay IP family and encryption."""
    outer_ip = {4: 20, 6: 40}[family]
    extra = GENEVE_OPTIONS_BYTES if protocol == "geneve" else 0
    esp = ESP_NATT_OVERHEAD if encryption == "ipsec" else 0
    return outer_ip + 8 + 8 + 14 + extra + esp
