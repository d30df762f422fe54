"""Build the emulated clouds: the internet, one edge (VPC router + 1:1 NAT) per site, and the VMs' NICs."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence

from lab.shell import Shell
from lab.topology import NIC_MTU, PREFIX, EdgeSpec, HostSpec, Layout


def _sysctl(sh: Shell, ns: str, key: str, value: str) -> None:
    sh.ns(ns, ["sysctl", "-qw", f"{key}={value}"])


def add_namespace(sh: Shell, ns: str) -> None:
    sh.run(["ip", "netns", "add", ns])
    sh.batch(ns, ["link set lo up"])


@contextlib.contextmanager
def scratch_namespace(sh: Shell, purpose: str = "") -> Iterator[str]:
    """A throw-away namespace (a fresh kernel network stack) to try something in; removed on exit."""
    name = f"{PREFIX}probe-{purpose + '-' if purpose else ''}{os.getpid()}"
    sh.run(["ip", "netns", "add", name])
    try:
        yield name
    finally:
        sh.run(["ip", "netns", "delete", name], check=False)


EDGE_BRIDGE_NF = ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables", "net.bridge.bridge-nf-call-arptables")


def build_internet(sh: Shell, layout: Layout) -> None:
    add_namespace(sh, layout.internet_ns)
    _sysctl(sh, layout.internet_ns, "net.ipv4.ip_forward", "1")


def drop_on_internet(sh: Shell, internet_ns: str, matches: Sequence[Sequence[str]], on: bool) -> None:
    """Drop (or stop dropping) the datagrams each iptables match selects where the lab's internet forwards them: how
    a fault test cuts a site, or a path between two sites, off the internet."""
    for match in matches:
        sh.ns(internet_ns, ["iptables", "-w", "-I" if on else "-D", "FORWARD", *match, "-j", "DROP"])


def site_matches(public_ip: str) -> list[list[str]]:
    """Every datagram to or from a site's public address: to its peers, its router is gone."""
    return [["-s", public_ip], ["-d", public_ip]]


def build_edge(sh: Shell, layout: Layout, edge: EdgeSpec) -> None:
    """The site's VPC router and internet gateway: WAN and LAN segments, transit link, 1:1 NAT."""
    ns = edge.ns
    add_namespace(sh, ns)
    _sysctl(sh, ns, "net.ipv4.ip_forward", "1")
    inet_addr = edge.transit_internet.split("/")[0]
    sh.run(
        [
            "ip",
            "link",
            "add",
            "inet",
            "netns",
            ns,
            "mtu",
            str(edge.underlay_mtu),
            "type",
            "veth",
            "peer",
            "name",
            edge.internet_port,
            "netns",
            layout.internet_ns,
            "mtu",
            str(edge.underlay_mtu),
        ]
    )
    sh.batch(
        ns,
        [
            "link add br-wan type bridge",
            "link add br-lan type bridge",
            f"addr add {edge.wan_gateway} dev br-wan",
            f"addr add {edge.lan_gateway} dev br-lan",
            f"addr add {edge.transit_edge} dev inet",
            "link set br-wan up",
            "link set br-lan up",
            "link set inet up",
            f"route add default via {inet_addr}",
        ],
    )
    if edge.mgmt_gateway:
        sh.batch(ns, ["link add br-mgmt type bridge", f"addr add {edge.mgmt_gateway} dev br-mgmt", "link set br-mgmt up"])
    # The segments are a cloud's switching fabric: frames between two VMs of a segment cost none of the VMs' CPU
    # and cross no firewall of ours. Where br_netfilter is loaded (a new namespace then starts with it on), every
    # frame a segment bridge forwarded would cross this namespace's iptables and conntrack: CPU that a cloud
    # spends elsewhere and that the lab's benchmarks would charge to the overlay.
    # Only where they exist (without br_netfilter they do not); busybox's sysctl (the kernel VM's) has no -e.
    files = " ".join("/proc/sys/" + key.replace(".", "/") for key in EDGE_BRIDGE_NF)
    sh.ns(ns, ["sh", "-c", f'for f in {files}; do if [ -e "$f" ]; then echo 0 > "$f"; fi; done'])
    sh.batch(
        layout.internet_ns,
        [
            f"addr add {edge.transit_internet} dev {edge.internet_port}",
            f"link set {edge.internet_port} up",
            f"route add {edge.public_ip}/32 via {edge.transit_edge.split('/')[0]}",
        ],
    )
    nat = [
        ["PREROUTING", "-i", "inet", "-d", edge.public_ip, "-j", "DNAT", "--to-destination", edge.router_wan_ip],
        ["POSTROUTING", "-o", "inet", "-s", edge.router_wan_ip, "-j", "SNAT", "--to-source", edge.public_ip],
    ]
    for rule in nat:
        sh.ns(ns, ["iptables", "-w", "-t", "nat", "-A", *rule])
    # A VM's NIC puts whole checksums on the wire; a veth hands the next namespace a datagram whose checksum is still
    # to be finished (CHECKSUM_PARTIAL). For a tunnel datagram with an outer UDP checksum, that pending one is the
    # inner packet's, and the NAT above then adjusts the outer checksum as if it were pending too: the peer drops
    # it as corrupt (UdpInCsumErrors). With the lab's addresses the two NATs' errors cancel out between
    # 198.51.100.0/24 sites and not for a site elsewhere (a vSphere publicIp): its BFD sessions never came up.
    # Finish the checksum where the datagram leaves the VM, before any NAT, as the NIC would have.
    sh.ns(ns, ["iptables", "-w", "-t", "mangle", "-A", "PREROUTING", "-i", "br-wan", "-p", "udp", "-j", "CHECKSUM", "--checksum-fill"])


# What a cloud image boots with for the settings the node script must change itself. A new namespace copies the
# host's IPv4 forwarding (on wherever Docker runs), which would let a lab router forward without its payload.
IMAGE_SYSCTLS = {"net.ipv4.ip_forward": "0", "net.ipv6.conf.all.forwarding": "0"}


def build_host(sh: Shell, layout: Layout, vm: HostSpec) -> None:
    """A VM's hardware: its namespace with the image's settings and its NICs plugged into the site's segments
    (down until power-on: lab.power)."""
    add_namespace(sh, vm.ns)
    sh.ns(vm.ns, ["sysctl", "-qw", *(f"{k}={v}" for k, v in IMAGE_SYSCTLS.items())])
    edge = next(e for e in layout.edges if e.site == vm.site)
    for nic in vm.nics:
        sh.run(
            [
                "ip",
                "link",
                "add",
                nic.name,
                "netns",
                vm.ns,
                "mtu",
                str(NIC_MTU),
                "type",
                "veth",
                "peer",
                "name",
                nic.port,
                "netns",
                edge.ns,
                "mtu",
                str(NIC_MTU),
            ]
        )
        sh.batch(edge.ns, [f"link set {nic.port} master {nic.segment}", f"link set {nic.port} up"])
