"""Build the emulated clouds: the internet, one edge (VPC router + 1:1 NAT) per site, and the VMs' NICs."""

from __future__ import annotations

from lab.shell import Shell
from lab.topology import NIC_MTU, OCI_IMAGE_IPTABLES, EdgeSpec, Layout, VmSpec


def _sysctl(sh: Shell, ns: str, key: str, value: str) -> None:
    sh.ns(ns, ["sysctl", "-qw", f"{key}={value}"])


def add_namespace(sh: Shell, ns: str) -> None:
    sh.run(["ip", "netns", "add", ns])
    sh.batch(ns, ["link set lo up"])


def build_internet(sh: Shell, layout: Layout) -> None:
    add_namespace(sh, layout.internet_ns)
    _sysctl(sh, layout.internet_ns, "net.ipv4.ip_forward", "1")


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


# What a cloud image boots with for the settings the node script must change itself. A new namespace copies the
# host's IPv4 forwarding (on wherever Docker runs), which would let a lab router forward without its payload.
IMAGE_SYSCTLS = {"net.ipv4.ip_forward": "0", "net.ipv6.conf.all.forwarding": "0"}


def build_vm(sh: Shell, layout: Layout, vm: VmSpec) -> None:
    """A VM as its platform hands it over: NICs up, addressed where DHCP/metadata would address them."""
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
        cmds = [f"link set {nic.name} up"]
        if nic.address:
            cmds.insert(0, f"addr add {nic.address} dev {nic.name}")
        sh.batch(vm.ns, cmds)
    sh.batch(vm.ns, [f"route add default via {vm.default_gateway}"])
    if vm.host_firewall:
        for chain, *rule in OCI_IMAGE_IPTABLES:
            sh.ns(vm.ns, ["iptables", "-w", "-A", chain, *rule])
