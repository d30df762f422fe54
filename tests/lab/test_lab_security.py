"""Security review (issue #20), node side, proven in the host lab: three sites (aws hub, azure, gcp), VXLAN in
clear (this kernel has no ESP; the IPsec rules are unit-tested and run in the kernel-VM tests), Docker containers.

1. A forged tunnel datagram (unprivileged, from a container, from a site-LAN host, from the client's namespace)
   injects nothing and moves no MAC: the tunnel port takes only each tunnel's peer, nothing comes to it from the
   overlay, and no tunnel learns.
3. SSH (TCP 22) cannot be reached from the overlay on a router or a client.
4. A container cannot use its router as a gateway to the router's WAN side, the emulated internet or a metadata
   service behind the VPC router (IPv4 and IPv6).
5. Containers have no capability (no raw or packet socket: no forged ARP/ND/RA), no new privileges, a read-only
   root; a forged router advertisement injected on the overlay gives no node or container a route or an address.

Every packet stays inside the lab's namespaces; addresses are the lab's own, documentation ranges or ULA.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from lab.state import STATE_DIR, docker_host
from tests.lab.conftest import CLEAR, lab

pytestmark = [pytest.mark.root, pytest.mark.slow]

SITES = "aws,azure,gcp"
PY = "/usr/bin/python3"  # what an unprivileged user can run (the venv may not be readable to nobody)
NOBODY = ("setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "--inh-caps", "-all")
SINK_PORT = 47000


@pytest.fixture(scope="module")
def sec_lab() -> Iterator[Any]:
    from lab.check import Lab
    from lab.lifecycle import lab_exists

    existing = lab_exists(STATE_DIR)
    if existing:
        pytest.fail(f"a lab is already up ({', '.join(existing[:3])}): run `python -m lab down` before the lab tests")
    proc = lab("up", *CLEAR, "--sites", SITES)
    try:
        if proc.returncode != 0:
            pytest.fail(f"lab up failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        yield Lab()
    finally:
        lab("down")


def ns_run(ns: str, *argv: str, stdin: str | None = None, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["nsenter", f"--net=/run/netns/{ns}", "--", *argv], input=stdin, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{ns}: {' '.join(argv)}: exit {proc.returncode}: {proc.stdout}{proc.stderr}")
    return proc


def docker(router: str, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DOCKER_HOST": docker_host(router, STATE_DIR)}
    return subprocess.run(["docker", *argv], capture_output=True, text=True, env=env, timeout=60)


def counters(ns: str, tool: str = "iptables") -> dict[str, int]:
    """Packets per rule of our chains: '-A OVERLAY-IN ...' -> count."""
    out: dict[str, int] = {}
    for line in ns_run(ns, f"{tool}-save", "-c", "-t", "filter").stdout.splitlines():
        if line.startswith("[") and " -A OVERLAY-" in line:
            packets = int(line[1:].split(":")[0])
            out[line.split("] ", 1)[1]] = packets
    return out


def rises(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {rule: after[rule] - before.get(rule, 0) for rule in after if after[rule] > before.get(rule, 0)}


LISTEN = r"""
import json, socket, sys, time
kind, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", port))
if kind == "tcp":
    s.listen(16)
s.settimeout(0.2)
print("ready", flush=True)
while True:
    try:
        if kind == "udp":
            data, peer = s.recvfrom(65535)
            print(json.dumps([peer[0], data.decode(errors="replace")]), flush=True)
        else:
            conn, peer = s.accept()
            print(json.dumps([peer[0], "connected"]), flush=True)
            conn.close()
    except socket.timeout:
        pass
"""


@contextmanager
def listening(ns: str, kind: str, port: int) -> Iterator[list[list[str]]]:
    """A UDP or TCP listener on every address (IPv4 and IPv6) of a namespace; yields what it heard (filled at exit)."""
    heard: list[list[str]] = []
    proc = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{ns}", "--", PY, "-c", LISTEN, kind, str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield heard
        time.sleep(1.0)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
        heard += [json.loads(line) for line in out.splitlines() if line.startswith("[")]


FORGE = r"""
import json, socket, struct, sys
a = json.loads(sys.argv[1])
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF
payload = a["marker"].encode()
src, dst = socket.inet_aton(a["inner_src"]), socket.inet_aton(a["inner_dst"])
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 0, 0, 64, 17, 0, src, dst)
ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
udp = struct.pack("!HHHH", 40000, a["inner_port"], 8 + len(payload), 0) + payload
frame = bytes.fromhex(a["dst_mac"].replace(":", "")) + bytes.fromhex(a["src_mac"].replace(":", "")) + b"\x08\x00" + ip + udp
vxlan = struct.pack("!II", 0x08000000, a["vni"] << 8) + frame
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(3):
    s.sendto(vxlan, (a["to"], a["port"]))
"""


def forge(ns: str, **args: Any) -> None:
    """An unprivileged process in `ns` sends 3 VXLAN datagrams (plain UDP) carrying one inner IPv4/UDP frame."""
    ns_run(ns, *NOBODY, PY, "-c", FORGE, json.dumps(args))


SEND = r"""
import socket, sys
host, port, marker = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(3):
    try:
        s.sendto(marker.encode(), (host, port))
    except OSError as e:
        print(e)
"""

CONNECT = r"""
import json, socket, sys
from concurrent.futures import ThreadPoolExecutor
def connect(address):
    try:
        socket.create_connection((address, 22), timeout=2).close()
        return "connected"
    except OSError as e:
        return f"refused: {e}"
with ThreadPoolExecutor(8) as pool:
    print(json.dumps(dict(zip(sys.argv[1:], pool.map(connect, sys.argv[1:])))))
"""


def fdb(ns: str, *where: str) -> list[dict[str, Any]]:
    return json.loads(ns_run(ns, "bridge", "-j", "fdb", "show", *where).stdout or "[]")


def mac_entries(ns: str, macs: set[str]) -> list[tuple[str, str, str, str]]:
    """Every forwarding entry of these MACs on the node (bridge and tunnel devices): (mac, device, dst, state)."""
    out = []
    for e in fdb(ns):
        if e.get("mac", "").lower() in macs:
            out.append((e["mac"].lower(), e.get("ifname", ""), e.get("dst", ""), e.get("state", "")))
    return sorted(out)


def test_the_hardened_overlay_still_carries_everything(sec_lab: Any, tmp_path: Path) -> None:
    """Every node and container reaches every other (v4 + v6), the MTU probes and the hub transit pass; each tunnel
    learns nothing and sends everything to its one peer (the device's remote: the all-zeros default entry)."""
    proc = lab("check", "--results", str(tmp_path))
    doc = json.loads((tmp_path / "check.json").read_text())
    assert proc.returncode == 0 and doc["summary"]["passed"] == doc["summary"]["pairs"], doc["failures"][:10]
    for vm in sec_lab.layout.hosts:
        links = json.loads(ns_run(vm.ns, "ip", "-d", "-j", "link", "show").stdout)
        tunnels = [link for link in links if link.get("linkinfo", {}).get("info_kind") == "vxlan"]
        assert tunnels, vm.node
        for link in tunnels:
            data, port = link["linkinfo"]["info_data"], link["linkinfo"]["info_slave_data"]
            assert data["learning"] is False and port["learning"] is False, (vm.node, link["ifname"])
            own = [(e["mac"], e.get("dst")) for e in fdb(vm.ns, "dev", link["ifname"]) if "self" in e.get("flags", [])]
            assert own == [("00:00:00:00:00:00", data["remote"])], (vm.node, link["ifname"], own)


def test_forged_tunnel_datagrams_inject_nothing_and_move_no_mac(sec_lab: Any) -> None:
    plan = sec_lab.plan
    hub = plan.router(plan.hub)
    assert hub.site == "aws"
    router_ns, client_ns = sec_lab.layout.host(hub.name).ns, sec_lab.layout.host(plan.client("aws").name).ns
    to_gcp = next(t for t in hub.tunnels if t.peer_site == "gcp")
    far, near = plan.router("gcp").containers[0], hub.containers[1]  # pinned on the tunnel to gcp; learned on a veth
    victims = {far.mac.lower(), near.mac.lower()}
    client = plan.client("aws")
    client_tunnel = client.tunnels[0]
    # A host of the site LAN that is no tunnel's peer: a namespace on the aws LAN segment.
    lan_host, edge = "mco-sec-lanhost", next(e.ns for e in sec_lab.layout.edges if e.site == "aws")
    subprocess.run(["ip", "netns", "add", lan_host], check=True)
    subprocess.run(["ip", "link", "add", "eth0", "netns", lan_host, "type", "veth", "peer", "name", "sec-lan", "netns", edge], check=True)
    ns_run(edge, "ip", "link", "set", "sec-lan", "master", "br-lan", "up")
    ns_run(lan_host, "ip", "addr", "add", "10.1.2.99/24", "dev", "eth0")
    ns_run(lan_host, "ip", "link", "set", "eth0", "up")
    try:
        assert ns_run(lan_host, "ping", "-c", "1", "-W", "2", hub.lan_ip, check=False).returncode == 0  # it is on the LAN
        before = {"router": mac_entries(router_ns, victims), "client": mac_entries(client_ns, victims)}
        counted = {"router": counters(router_ns), "client": counters(client_ns)}
        inner = {"inner_port": SINK_PORT, "port": 4789, "vni": to_gcp.vni, "dst_mac": hub.mac, "inner_dst": hub.ipv4.split("/")[0]}
        with listening(router_ns, "udp", SINK_PORT) as at_router, listening(client_ns, "udp", SINK_PORT) as at_client:
            for mac, owner in ((far.mac, far), (near.mac, near)):
                frame = {**inner, "src_mac": mac, "inner_src": owner.ipv4.split("/")[0]}
                # An unprivileged process in a container, to its router's overlay address.
                forge(hub.containers[0].name, to=hub.ipv4.split("/")[0], marker=f"container {mac}", **frame)
                # A site-LAN host that is no peer, to the router's LAN address.
                forge(lan_host, to=hub.lan_ip, marker=f"lan-host {mac}", **frame)
                # The client: a peer (of its own tunnel), sending on another tunnel's VNI.
                forge(client_ns, to=hub.lan_ip, marker=f"client {mac}", **frame)
            # A container to the client's overlay address, on the client's one tunnel.
            to_client = {**inner, "vni": client_tunnel.vni, "dst_mac": client.mac, "inner_dst": client.ipv4.split("/")[0]}
            forge(
                hub.containers[0].name,
                to=to_client["inner_dst"],
                marker="container to client",
                src_mac=far.mac,
                inner_src=far.ipv4.split("/")[0],
                **to_client,
            )
        heard = [m for _, m in at_router + at_client]
        assert not [m for m in heard if m.startswith(("container", "lan-host"))], heard
        # No MAC moved: not on the router's bridge, not on any tunnel device (the client's forgery included).
        assert mac_entries(router_ns, victims) == before["router"]
        assert mac_entries(client_ns, victims) == before["client"]
        assert not [
            e
            for ns in (router_ns, client_ns)
            for e in fdb(ns)
            if e.get("dst") in (hub.containers[0].ipv4.split("/")[0], "10.1.2.99", client.lan_ip) and e["mac"] != "00:00:00:00:00:00"
        ]
        # Dropped by our rules: from the overlay (container) and from a non-peer (LAN host), 3 datagrams each per MAC.
        got = rises(counted["router"], counters(router_ns))
        assert got.get("-A OVERLAY-IN -i br-overlay -p udp -m udp --dport 4789 -j DROP", 0) >= 6, got
        assert got.get("-A OVERLAY-IN -p udp -m udp --dport 4789 -j DROP", 0) >= 6, got
        got = rises(counted["client"], counters(client_ns))
        assert got.get("-A OVERLAY-IN -i br-overlay -p udp -m udp --dport 4789 -j DROP", 0) >= 3, got
        # The victims' own traffic still goes the right way.
        src = hub.containers[0].name
        for target in (far, near):
            assert ns_run(src, "ping", "-c", "2", "-W", "2", target.ipv4.split("/")[0], check=False).returncode == 0, target.name
    finally:
        subprocess.run(["ip", "netns", "del", lan_host], capture_output=True)


def test_ssh_is_closed_to_the_overlay(sec_lab: Any) -> None:
    plan = sec_lab.plan
    hub, client, gcp = plan.router("aws"), plan.client("aws"), plan.router("gcp")
    router_ns, client_ns = sec_lab.layout.host(hub.name).ns, sec_lab.layout.host(client.name).ns
    edge = next(e.ns for e in sec_lab.layout.edges if e.site == "aws")
    counted = {ns: (counters(ns), counters(ns, "ip6tables")) for ns in (router_ns, client_ns)}

    def connect(ns: str, *addresses: str) -> dict[str, str]:
        return json.loads(ns_run(ns, *NOBODY, PY, "-c", CONNECT, *addresses).stdout)

    overlay = [a.split("/")[0] for node in (hub, client) for a in (node.ipv4, node.ipv6)]
    with listening(router_ns, "tcp", 22) as at_router, listening(client_ns, "tcp", 22) as at_client:
        # The listeners answer from outside the overlay: the router's WAN address, the client's LAN address.
        assert connect(edge, hub.wan_ip, client.lan_ip) == {hub.wan_ip: "connected", client.lan_ip: "connected"}
        # From a local container and from a container of another site, both families: nothing.
        for src in (hub.containers[0].name, gcp.containers[0].name):
            got = connect(src, *overlay)
            assert sorted(got) == sorted(overlay) and all(r.startswith("refused") for r in got.values()), (src, got)
    assert len(at_router) == 1 and len(at_client) == 1, (at_router, at_client)
    for ns in (router_ns, client_ns):
        for fam, (before, tool) in enumerate(((counted[ns][0], "iptables"), (counted[ns][1], "ip6tables"))):
            got = rises(before, counters(ns, tool))
            assert got.get("-A OVERLAY-IN -i br-overlay -p tcp -m tcp --dport 22 -j DROP", 0) >= 2, (ns, tool, fam, got)


def test_a_container_cannot_use_its_router_as_a_gateway(sec_lab: Any) -> None:
    plan = sec_lab.plan
    hub = plan.router("aws")
    router_ns = sec_lab.layout.host(hub.name).ns
    aws_edge = next(e for e in sec_lab.layout.edges if e.site == "aws")
    gcp_edge = next(e for e in sec_lab.layout.edges if e.site == "gcp")
    container = hub.containers[0].name
    wan_gw = aws_edge.wan_gateway.split("/")[0]  # on the router's WAN subnet
    internet = gcp_edge.transit_internet.split("/")[0]  # an address of the emulated internet
    metadata = "169.254.169.254"  # as a cloud's metadata service: behind the VPC router
    v6_wan, v6_router = "fd99:5ec::1", "fd99:5ec::10"  # an IPv6 WAN subnet for this test only
    scaffold = [  # namespace, address, device
        (aws_edge.ns, f"{metadata}/32", "lo"),
        (aws_edge.ns, f"{v6_wan}/64", "br-wan"),
        (router_ns, f"{v6_router}/64", sec_lab.layout.host(hub.name).nics[0].name),
    ]
    routes = [(t, hub.ipv4.split("/")[0]) for t in (wan_gw, internet, metadata)] + [(v6_wan, hub.ipv6.split("/")[0])]
    try:
        for ns, address, dev in scaffold:
            ns_run(ns, "ip", "addr", "add", address, "dev", dev, *(["nodad"] if ":" in address else []))
        for target, via in routes:  # a privileged helper gives the container the routes it cannot add itself
            ns_run(container, "ip", "route", "add", target, "via", via)
            assert f"via {via} dev eth0" in ns_run(container, "ip", "route", "get", target).stdout
        counted = (counters(router_ns), counters(router_ns, "ip6tables"))
        with (
            listening(aws_edge.ns, "udp", SINK_PORT) as at_edge,
            listening(sec_lab.layout.internet_ns, "udp", SINK_PORT) as at_internet,
        ):
            # The listeners hear the router itself (it reaches its WAN side and the internet as usual) ...
            for target in (wan_gw, metadata, v6_wan, internet):
                ns_run(router_ns, PY, "-c", SEND, target, str(SINK_PORT), f"router {target}")
            # ... but nothing a container sends through it.
            for target, _ in routes:
                ns_run(container, *NOBODY, PY, "-c", SEND, target, str(SINK_PORT), f"container {target}")
        heard = [m for _, m in at_edge + at_internet]
        assert sorted(m for m in heard if m.startswith("router")) == sorted(
            f"router {t}" for t in (wan_gw, metadata, v6_wan, internet) for _ in range(3)
        ), heard
        assert not [m for m in heard if m.startswith("container")], heard
        v4, v6 = rises(counted[0], counters(router_ns)), rises(counted[1], counters(router_ns, "ip6tables"))
        assert v4.get("-A OVERLAY-FWD -j DROP", 0) >= 9 and v6.get("-A OVERLAY-FWD -j DROP", 0) >= 3, (v4, v6)
    finally:
        for target, via in routes:
            ns_run(container, "ip", "route", "del", target, "via", via, check=False)
        for ns, address, dev in scaffold:
            ns_run(ns, "ip", "addr", "del", address, "dev", dev, check=False)


RA = r"""
import socket, struct, sys
ifname, prefix = sys.argv[1], sys.argv[2]
index = socket.if_nametoindex(ifname)
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
ra = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0)
ra += struct.pack("!BBBBIII", 3, 4, 64, 0xC0, 86400, 14400, 0) + socket.inet_pton(socket.AF_INET6, prefix)
for _ in range(3):
    s.sendto(ra, ("ff02::1", 0, 0, index))
"""


def test_containers_cannot_forge_and_a_forged_ra_changes_nothing(sec_lab: Any) -> None:
    plan = sec_lab.plan
    hub = plan.router("aws")
    c = hub.containers[0]
    # No capability, no new privileges, a read-only root (a tmpfs /tmp).
    status = docker(hub.name, "exec", c.name, "cat", "/proc/self/status").stdout
    caps = {line.split(":")[0]: line.split()[1] for line in status.splitlines() if line.startswith(("Cap", "NoNewPrivs"))}
    assert caps["CapEff"] == caps["CapPrm"] == caps["CapBnd"] == "0000000000000000" and caps["NoNewPrivs"] == "1", caps
    assert "Read-only file system" in docker(hub.name, "exec", c.name, "touch", "/forged").stderr
    assert docker(hub.name, "exec", c.name, "touch", "/tmp/ok").returncode == 0
    # No packet socket (forged ARP), no raw IPv4 or ICMPv6 socket (forged neighbour or router advertisement).
    for argv in (["arping", "-c", "1", "-I", "eth0", hub.ipv4.split("/")[0]], ["traceroute", "-n", "-m", "1", hub.ipv4.split("/")[0]]):
        proc = docker(hub.name, "exec", c.name, *argv)
        assert proc.returncode != 0 and "Operation not permitted" in proc.stderr, proc.stderr
    proc = docker(hub.name, "exec", c.name, "ping6", "-c", "1", hub.ipv6.split("/")[0])
    assert proc.returncode != 0 and "permission denied" in proc.stderr, proc.stderr
    # A forged RA injected on the overlay anyway (a privileged helper in the container's namespace): no node and no
    # container takes a default route or an address from it.
    prefix = "2001:db8:bad::"
    places = [vm.ns for vm in sec_lab.layout.hosts] + [x.name for r in plan.routers() for x in r.containers]

    def routes_and_addresses(ns: str) -> tuple[str, str]:
        return ns_run(ns, "ip", "-6", "route", "show", "default").stdout, ns_run(ns, "ip", "-6", "addr", "show").stdout

    before = {ns: routes_and_addresses(ns) for ns in places}
    assert "inet6 fe80::" in ns_run(c.name, "ip", "-6", "addr", "show", "dev", "eth0").stdout  # it has its link-local source
    ns_run(c.name, PY, "-c", RA, "eth0", prefix)
    time.sleep(2)
    after = {ns: routes_and_addresses(ns) for ns in places}
    changed = {ns: after[ns] for ns in places if after[ns] != before[ns]}
    assert changed == {}, changed
    assert not any(prefix[:-1] in a for _, a in after.values())
    for vm in sec_lab.layout.hosts:
        assert ns_run(vm.ns, "sysctl", "-n", "net.ipv6.conf.br-overlay.accept_ra").stdout.strip() == "0", vm.node


def test_a_second_apply_changes_nothing(sec_lab: Any) -> None:
    """Our chains, the tunnels' learning and the containers' settings are idempotent: the unit's command again."""
    from lab import nodes

    for vm in sec_lab.layout.hosts:
        payload = nodes.lab_user_data(sec_lab.state, sec_lab.plan, vm.node)
        res = nodes.apply(sec_lab.sh, vm.ns, vm.node, payload, STATE_DIR, vm.kind == "router", sec_lab.state.containers)
        assert res.ok and res.changes == 0 and "no change" in res.output, res.output
