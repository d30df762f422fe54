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
# Keyed by IKEv2 (strongSwan's charon, configured with swanctl): AES-256-GCM with a 16-byte ICV (RFC 4106) for
# IKE and ESP, X25519 for the key exchange of the IKE SA and of every CHILD_SA rekeying (perfect forward secrecy).
NATT_PORT: Final = 4500
IKE_PORT: Final = 500
ESP_ICV_BITS: Final = 128
IKE_PROPOSALS: Final = "aes256gcm16-prfsha384-x25519"
ESP_PROPOSALS: Final = "aes256gcm16-x25519"
PAIR_KEY_BYTES: Final = 72
"""One random pre-shared key per router pair, authenticating IKEv2 (it keys no ESP traffic itself)."""
REKEY_SECONDS: Final = 3600
"""Default CHILD_SA rekeying interval (config key ipsecRekeySeconds); the IKE_SA rekeys every 4 hours."""
REKEY_PACKETS: Final = 1 << 30
"""A CHILD_SA rekeys after 2^30 packets, a quarter of the 32-bit sequence number space (no extended sequence
numbers): the kernel refuses to send once it is exhausted."""
REPLAY_WINDOW: Final = 1024
"""Packets of reordering the receiver accepts; a packet older than the window, or seen before, is dropped."""
DPD_SECONDS: Final = 10
"""Dead-peer detection: a peer silent this long is probed; one that stays silent is removed and re-keyed."""
# UDP encapsulation 8 + ESP header (SPI, sequence) 8 + GCM IV 8 + padding to 4 bytes (at most 3) + pad length
# and next header 2 + ICV 16: at most 45 bytes on top of the tunnel's own overhead.
ESP_NATT_OVERHEAD: Final = 8 + 8 + 8 + 3 + 2 + ESP_ICV_BITS // 8


def encapsulation_overhead(protocol: Protocol, family: int, encryption: Encryption = "none") -> int:
    """Bytes a tunnel adds to each overlay frame for the given protocol, underlay IP family and encryption."""
    outer_ip = {4: 20, 6: 40}[family]
    extra = GENEVE_OPTIONS_BYTES if protocol == "geneve" else 0
    esp = ESP_NATT_OVERHEAD if encryption == "ipsec" else 0
    return outer_ip + 8 + 8 + 14 + extra + esp
