"""The capture's judgement of what crossed the emulated internet (pure): a tunnel datagram is counted by the header
its bytes carry, so a GENEVE overlay is proven GENEVE on the wire, not only "something on a tunnel port"."""

from __future__ import annotations

import socket
import struct

from lab.capture import PATTERN, classify, summarise, verdict
from lab.forgery import forged_datagram

INNER = b"\x02" * 6 + b"\x02\x01" + b"\x00" * 4 + b"\x08\x00" + b"inner frame " + PATTERN


def frame(dport: int, payload: bytes) -> bytes:
    """Ethernet + IPv4 + UDP from 198.51.100.1 to 203.0.113.2 (documentation addresses), no options."""
    udp = struct.pack("!HHHH", 40000, dport, 8 + len(payload), 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, socket.inet_aton("198.51.100.1"), socket.inet_aton("203.0.113.2")
    )
    return b"\x02" * 12 + b"\x08\x00" + ip + udp


VXLAN = struct.pack("!B3s3sB", 0x08, b"\0\0\0", (1001).to_bytes(3, "big"), 0)  # RFC 7348: I flag, VNI 1001
GENEVE = struct.pack("!BBH3sB", 0, 0, 0x6558, (1001).to_bytes(3, "big"), 0)  # RFC 8926: ver 0, no options, TEB


def test_the_header_is_read_from_the_bytes_not_the_port() -> None:
    vxlan, geneve = classify(frame(4789, VXLAN + INNER)), classify(frame(6081, GENEVE + INNER))
    assert vxlan is not None and geneve is not None
    assert (vxlan["kind"], vxlan["header"], vxlan["port"]) == ("clear_tunnel", "vxlan", 4789)
    assert (geneve["kind"], geneve["header"], geneve["port"]) == ("clear_tunnel", "geneve", 6081)
    assert vxlan["marker"] and geneve["marker"]
    # A GENEVE header sent to the VXLAN port is still GENEVE.
    swapped = classify(frame(4789, GENEVE + INNER))
    assert swapped is not None and (swapped["header"], swapped["port"]) == ("geneve", 4789)


def test_a_geneve_overlay_passes_only_with_geneve_on_its_port() -> None:
    geneve = summarise([p for p in (classify(frame(6081, GENEVE + INNER)),) * 3 if p])
    assert geneve["clear_by_header"] == {"geneve": 3} and geneve["clear_by_port"] == {"6081": 3}
    assert verdict(False, geneve, True, "geneve")[0]
    assert not verdict(False, geneve, True, "vxlan")[0]
    mixed = summarise([p for p in (classify(frame(6081, GENEVE + INNER)), classify(frame(4789, VXLAN + INNER))) if p])
    ok, why = verdict(False, mixed, True, "geneve")
    assert not ok and "vxlan" in why
    wrong_port = summarise([p for p in (classify(frame(4789, GENEVE + INNER)),) if p])
    assert not verdict(False, wrong_port, True, "geneve")[0]


def test_forged_datagrams_carry_the_protocols_header_the_vni_and_the_mark() -> None:
    for protocol, port, header in (("vxlan", 4789, VXLAN), ("geneve", 6081, GENEVE)):
        datagram = forged_datagram("198.51.100.1", "203.0.113.2", port, 1001, PATTERN, protocol)
        info = classify(b"\x02" * 12 + b"\x08\x00" + datagram)
        assert info is not None
        assert (info["kind"], info["header"], info["port"], info["marker"]) == ("clear_tunnel", protocol, port, True)
        assert (info["src"], info["dst"], info["length"]) == ("198.51.100.1", "203.0.113.2", len(datagram))
        assert datagram[28:36] == header  # after the IPv4 (20) and UDP (8) headers
