"""`lab boot`: one qemu VM per node of a stack, booted from the node image (lab.nodeimage) by the real cloud-init,
systemd and sshd, with the exact user-data each platform receives, and pushed and checked over real SSH.

The host lab (lab up) runs the payloads in namespaces and calls the unit's command itself. Here nothing is
emulated above the hypervisor:
- the underlay is the host lab's (lab.underlay: an internet namespace, per site an edge namespace with the WAN,
  LAN (and vSphere management) segments and 1:1 NAT), with prefix `mcb-` so that it can exist beside a host lab;
- each VM's NICs are tap devices on those segments (qemu runs in the site's edge namespace);
- its NoCloud seed holds the user-data bytes the platform's API receives once decoded (components.limits:
  node_user_data + user_data_as_sent; gzip for AWS, OCI and Alibaba), a meta-data with the instance id, and a
  network-config v2 as the platform's datasource renders it: DHCP on the public clouds (a dnsmasq per site answers
  each NIC with its planned address), static addresses on vSphere;
- the NIC a platform attaches after launch (an AWS, OCI or Alibaba router's LAN NIC) is hot-plugged into the
  running VM (qemu's device_add) once the first boot's overlay unit waits for it;
- management comes from an admin namespace at the stack's adminCidr on the emulated internet: routers and
  public-cloud clients through their public addresses (1:1 NAT; the clients' from 203.0.113.0/24), vSphere VMs
  over a management link into the datacentre (its WAN and management networks), as on the platforms;
- the program's in-place pushes and checks run as the program runs them: the exact command strings
  (cloudinit.render.push_command / check_command) over OpenSSH as the login user, with the node's generated host
  key pinned, the stack's deploy key, and the config on stdin; check output parsed by
  components.connectivity.parse_check_output;
- the lab looks inside the VMs as root over SSH with a key baked into the node image (lab.nodeimage: its
  "console"), never through the payload's user.

    python -m lab.boot up [--stack dev] [--sites aws,oci,vsphere] [--hub aws]   # boot, wait, push, check
    python -m lab.boot status | check | push [--hub X] [--protocol P] | reboot NODE | ssh NODE [CMD] | down
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import ipaddress
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from lab import nodeimage
from lab.bootimage import QEMU_CPU
from lab.forgery import Aim
from lab.nodes import push_stages
from lab.privilege import become_root
from lab.shell import Shell
from lab.state import LabError, lab_pair_keys, lab_plan, load_raw
from lab.topology import Layout, build_layout
from lab.underlay import add_namespace, build_edge, build_internet, drop_on_internet, site_matches
from multicloud_overlay.cloudinit.overlay_node import CLOUD_INIT_RUN
from multicloud_overlay.cloudinit.render import (
    LOGIN_USER,
    NODE_SCRIPT,
    UNIT_NAME,
    check_command,
    install_script_command,
    node_script_sha256,
    packed_node_script,
    push_command,
)
from multicloud_overlay.components.clouds.registry import PLATFORMS
from multicloud_overlay.components.connectivity import check_targets, parse_check_output
from multicloud_overlay.components.limits import node_user_data, platform_limits, user_data_as_sent
from multicloud_overlay.overlay.plan import Plan, node_config

PREFIX: Final = "mcb-"
STATE_DIR: Final = Path(os.environ.get("MCO_BOOT_STATE_DIR") or "/run/multicloud-overlay-boot")
ADMIN_NS: Final = f"{PREFIX}admin"
DEFAULT_SITES: Final = ("aws", "oci", "vsphere")
"""gzip user-data (AWS), OCI's host firewall and a secondary NIC the payload configures, vSphere's management NIC."""
CLIENT_PUBLIC: Final = ipaddress.IPv4Network("203.0.113.0/24")
CLIENT_PUBLIC_OFFSET: Final = 100
MEMORY_MB: Final = {"router": 1024, "client": 512}
KERNEL_APPEND: Final = "root=/dev/vda rw console=ttyS0 mitigations=off loglevel=4"
SSH_OPTIONS: Final = ("-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=6")

Out = Callable[[str], None]


# --------------------------------------------------------------------------- pure: what the VMs are


@dataclass(frozen=True)
class VmNic:
    name: str
    """Name the NIC gets in the guest (the platform's, lab.topology)."""
    tap: str
    """Tap device in the site's edge namespace, a port of `segment`."""
    segment: str
    mac: str
    address: str | None
    """Address/prefix the platform gives (network-config), None where the payload configures the NIC."""
    hot: bool = False
    """Attached after launch (AWS, OCI and Alibaba attach a router's LAN NIC to the running instance)."""
    dhcp: bool = False
    """The platform gives `address` by DHCP (every public cloud), not in its metadata (vSphere's guestinfo)."""


@dataclass(frozen=True)
class VmSpec:
    node: str
    site: str
    kind: str
    platform: str
    edge_ns: str
    nics: tuple[VmNic, ...]
    gateway: str
    management_ip: str
    """Where the program's SSH goes (the platform's management address)."""
    public_ip: str | None
    """The address the VM's traffic leaves with (1:1 NAT), None for a vSphere client (management network only)."""


def client_public_ips(plan: Plan) -> dict[str, str]:
    """site -> public address of its client on a public cloud (the clouds give clients an ephemeral one)."""
    return {
        s.name: str(CLIENT_PUBLIC.network_address + CLIENT_PUBLIC_OFFSET + s.site_id)
        for s in plan.config.sites
        if not PLATFORMS[s.platform].management_network
    }


def vm_specs(plan: Plan, layout: Layout) -> list[VmSpec]:
    clients = client_public_ips(plan)
    specs = []
    for host in layout.hosts:
        node = plan.node(host.node)
        edge = next(e for e in layout.edges if e.site == host.site)
        mgmt_net = PLATFORMS[node.platform].management_network
        if node.kind == "router":
            assert node.wan_ip is not None
            management = node.wan_ip if mgmt_net else edge.public_ip
            public: str | None = edge.public_ip
        else:
            management = node.mgmt_ip if mgmt_net and node.mgmt_ip else clients[host.site]
            public = None if mgmt_net else clients[host.site]
        nics = tuple(
            VmNic(
                nic.name,
                f"{'r' if node.kind == 'router' else 'c'}{i}",
                nic.segment,
                f"52:54:00:{plan.site_id(host.site):02x}:{0 if node.kind == 'router' else 1:02x}:{i:02x}",
                nic.address,
                # The platforms whose payload configures the router's LAN NIC are those that attach it after launch.
                hot=node.kind == "router" and i == 1 and PLATFORMS[node.platform].payload_configures_router_lan,
                dhcp=nic.address is not None and not mgmt_net,
            )
            for i, nic in enumerate(host.nics)
        )
        specs.append(VmSpec(host.node, host.site, node.kind, node.platform, edge.ns, nics, host.default_gateway, management, public))
    return specs


def network_config(vm: VmSpec) -> str:
    """NoCloud network-config v2: the addresses the platform gives, the NICs named as on the platform."""
    ethernets: dict[str, Any] = {}
    for nic in vm.nics:
        if nic.address is None:
            continue
        primary = ipaddress.ip_address(vm.gateway) in ipaddress.ip_interface(nic.address).network
        entry: dict[str, Any] = {"match": {"macaddress": nic.mac}, "set-name": nic.name}
        if nic.dhcp:
            # As the clouds' datasources render it: DHCP, and the default route from the primary NIC's only.
            entry["dhcp4"] = True
            if not primary:
                entry["dhcp4-overrides"] = {"use-routes": False}
        else:
            entry["addresses"] = [nic.address]
            if primary:
                entry["routes"] = [{"to": "default", "via": vm.gateway}]
        ethernets[nic.name] = entry
    return yaml.safe_dump({"version": 2, "ethernets": ethernets}, sort_keys=False)


def seed_user_data(plan: Plan, node: str, host_private: str, host_public: str, deploy_public: str) -> bytes:
    """The user-data bytes the platform hands the VM: the program's text, encoded as the platform module sends it,
    then decoded as the platform's API does (base64): gzip bytes where the program sends gzip+base64."""
    text = node_user_data(plan, node, plan.config.ssh_public_key, host_private, host_public, deploy_public)
    encoding = platform_limits(plan.node(node).platform).user_data_encoding
    sent = user_data_as_sent(text, encoding)
    return sent.encode() if encoding == "plain" else base64.b64decode(sent)


# --------------------------------------------------------------------------- state


@dataclass
class BootState:
    stack: str
    sites: list[str]
    overrides: dict[str, Any]
    key_seed: str
    image: dict[str, str]
    pids: dict[str, int] = dataclasses.field(default_factory=dict)
    installed: dict[str, str] = dataclasses.field(default_factory=dict)
    """node -> SHA-256 of the node script installed on its disk: installed again only when the script changes, as
    the program's install runs once per VM and script (components.push)."""

    def plan(self) -> Plan:
        return lab_plan(load_raw(self.stack, self.sites, self.overrides))


def _state_file() -> Path:
    return STATE_DIR / "state.json"


def save(st: BootState) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    _state_file().write_text(json.dumps(dataclasses.asdict(st), indent=1) + "\n")


def load() -> BootState:
    f = _state_file()
    if not f.exists():
        raise LabError("no boot lab: python -m lab.boot up")
    return BootState(**json.loads(f.read_text()))


def _keygen(path: Path, comment: str) -> tuple[str, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)
    return path.read_text(), Path(f"{path}.pub").read_text().strip()


def deploy_key() -> Path:
    return STATE_DIR / "keys" / "deploy"


def host_key(node: str) -> tuple[str, str]:
    """The node's SSH host key (made once per lab, as the program makes it once per VM)."""
    (STATE_DIR / "keys").mkdir(parents=True, exist_ok=True)
    return _keygen(STATE_DIR / "keys" / f"host-{node}", node)


# --------------------------------------------------------------------------- SSH


def known_hosts(vm: VmSpec, key: str | None = None) -> Path:
    """A known_hosts file pinning the node's generated host key (or `key`) for its management address."""
    f = STATE_DIR / "keys" / f"known-{vm.node}"
    f.write_text(f"{vm.management_ip} {key or host_key(vm.node)[1]}\n")
    return f


def ssh_argv(vm: VmSpec, command: str, console: bool = False, pinned: Path | None = None) -> list[str]:
    """OpenSSH from the admin namespace: as the login user with the deploy key and the host key pinned (the
    program's path), or as root with the image's console key (the lab's own look inside)."""
    if console:
        auth = [
            "-i",
            str(nodeimage.console_key()),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
        ]
        user = "root"
    else:
        auth = [
            "-i", str(deploy_key()), "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={pinned or known_hosts(vm)}", "-o", "HostKeyAlgorithms=ssh-ed25519",
        ]  # fmt: skip
        user = LOGIN_USER
    return ["ip", "netns", "exec", ADMIN_NS, "ssh", *SSH_OPTIONS, *auth, f"{user}@{vm.management_ip}", command]


def ssh(
    vm: VmSpec, command: str, stdin: str | None = None, console: bool = False, timeout: float = 600, pinned: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(ssh_argv(vm, command, console, pinned), input=stdin or "", capture_output=True, text=True, timeout=timeout)


def root(vm: VmSpec, command: str, timeout: float = 600) -> str:
    p = ssh(vm, command, console=True, timeout=timeout)
    if p.returncode != 0:
        raise LabError(f"{vm.node}: `{command}` exit {p.returncode}: {(p.stderr or p.stdout).strip()[-800:]}")
    return p.stdout


# Waits that run inside a VM, in one SSH session: a login costs the emulated CPU about 1.4 s (key exchange, PAM,
# a session), and a poll by login every few seconds took a large share of a booting VM's CPU. Each loop checks with
# a shell builtin or one systemctl call (about 0.15 s) every 2 s and prints what it found.
CLOUD_INIT_DONE: Final = f"until [ -e {CLOUD_INIT_RUN}/result.json ]; do sleep 2; done"
"""cloud-init links result.json into its run directory at the end of its last stage (cloudinit/cmd/main.py); the
node script's push reads the same file."""
UNIT_ACTIVE: Final = f'until [ "$(systemctl is-active {UNIT_NAME})" = active ]; do sleep 2; done'
UNIT_WAITING_FOR_LAN: Final = (
    f"while :; do s=$(systemctl show -p ActiveState --value {UNIT_NAME}); w=0; "
    f"[ \"$s\" = activating ] && w=$(journalctl -b -u {UNIT_NAME} -o cat --no-pager | grep -c 'waiting for the LAN NIC'); "
    '[ "$w" != 0 ] || [ "$s" = active ] || [ "$s" = failed ] && break; sleep 2; done; echo "$s $w"'
)
"""Until the overlay unit waits for the LAN NIC (it says so in its journal) or ends: prints its state and whether."""


def wait_in_guest(loop: str) -> str:
    return f"sh -c {shlex.quote(loop)}"


def wait_ssh(vm: VmSpec, deadline: float) -> float:
    """Seconds until the console key gets a shell (sshd up), retrying until `deadline` (monotonic)."""
    t0 = time.monotonic()
    while True:
        try:
            if ssh(vm, "true", console=True, timeout=180).returncode == 0:
                return time.monotonic() - t0
        except subprocess.TimeoutExpired:
            pass
        if time.monotonic() > deadline:
            raise LabError(f"{vm.node}: no SSH on {vm.management_ip} in time (console: {console_log(vm.node)})")
        time.sleep(2)


# --------------------------------------------------------------------------- the VMs


def console_log(node: str) -> Path:
    return STATE_DIR / "vm" / node / "console.log"


def build_underlay(sh: Shell, plan: Plan, layout: Layout, specs: Sequence[VmSpec]) -> None:
    build_internet(sh, layout)
    for edge in layout.edges:
        build_edge(sh, layout, edge)
    # The operator's machine, at adminCidr on the internet.
    admin = str(next(iter(ipaddress.IPv4Network(str(plan.config.admin_cidr)).hosts()), plan.config.admin_cidr.network_address))
    add_namespace(sh, ADMIN_NS)
    sh.run(["ip", "link", "add", "inet", "netns", ADMIN_NS, "type", "veth", "peer", "name", "e-admin", "netns", layout.internet_ns])
    sh.batch(ADMIN_NS, [f"addr add {admin}/32 dev inet", "link set inet up", "route add default dev inet"])
    sh.batch(layout.internet_ns, ["link set e-admin up", f"route add {admin}/32 dev e-admin"])
    # The admin's default route is the link itself: the internet answers ARP for every address behind it.
    sh.ns(layout.internet_ns, ["sysctl", "-qw", "net.ipv4.conf.e-admin.proxy_arp=1"])
    for vm in specs:
        edge = next(e for e in layout.edges if e.site == vm.site)
        for nic in vm.nics:
            sh.batch(
                vm.edge_ns, [f"tuntap add dev {nic.tap} mode tap", f"link set {nic.tap} master {nic.segment}", f"link set {nic.tap} up"]
            )
        if vm.kind == "client" and vm.public_ip is not None:
            lan = next(n for n in vm.nics if n.address is not None).address
            assert lan is not None
            private = lan.split("/")[0]
            for rule in (
                ["PREROUTING", "-i", "inet", "-d", vm.public_ip, "-j", "DNAT", "--to-destination", private],
                ["POSTROUTING", "-o", "inet", "-s", private, "-j", "SNAT", "--to-source", vm.public_ip],
            ):
                sh.ns(vm.edge_ns, ["iptables", "-w", "-t", "nat", "-A", *rule])
            sh.batch(layout.internet_ns, [f"route add {vm.public_ip}/32 via {edge.transit_edge.split('/')[0]}"])
    for edge in layout.edges:
        gateways = {"br-wan": edge.wan_gateway, "br-lan": edge.lan_gateway}
        argv = dhcp_argv(edge.ns, edge.site, specs, gateways)
        if argv is not None:
            sh.run(argv)
    # vSphere: the admin reaches the datacentre's own networks over a management link (no NAT on that path).
    for edge in layout.edges:
        if not PLATFORMS[edge.platform].management_network:
            continue
        site = next(s for s in plan.config.sites if s.name == edge.site)
        port = f"m-{edge.site}"[:15]
        sh.run(["ip", "link", "add", port, "netns", ADMIN_NS, "type", "veth", "peer", "name", "admin", "netns", edge.ns])
        link = ipaddress.IPv4Network(f"100.127.{site.site_id}.0/30")
        a, e = list(link.hosts())
        sh.batch(ADMIN_NS, [f"addr add {a}/30 dev {port}", f"link set {port} up", f"route add {site.vpc_cidr} via {e}"])
        sh.batch(edge.ns, [f"addr add {e}/30 dev admin", "link set admin up", f"route add {admin}/32 via {a}"])


def dhcp_argv(edge_ns: str, site: str, specs: Sequence[VmSpec], gateways: dict[str, str]) -> list[str] | None:
    """dnsmasq in a site's edge namespace: the platform's DHCP on its segments, one fixed address per MAC (as a
    cloud's DHCP answers only with the address it assigned to the NIC), the segment's gateway as router. None when
    no NIC of the site gets its address by DHCP. `gateways`: segment bridge -> gateway address/prefix."""
    nics = [n for v in specs if v.site == site for n in v.nics if n.dhcp and n.address]
    if not nics:
        return None
    argv = [
        "ip", "netns", "exec", edge_ns, "dnsmasq", "--conf-file=/dev/null", "--port=0", "--bind-interfaces",
        "--except-interface=lo", "--user=root", "--dhcp-authoritative",
        f"--pid-file={STATE_DIR / f'dnsmasq-{site}.pid'}", f"--dhcp-leasefile={STATE_DIR / f'dnsmasq-{site}.leases'}",
    ]  # fmt: skip
    for segment in sorted({n.segment for n in nics}):
        gw = ipaddress.ip_interface(gateways[segment])
        tag = segment.removeprefix("br-")
        argv += [
            f"--interface={segment}",
            f"--dhcp-range=set:{tag},{gw.network.network_address},static,{gw.network.netmask},12h",
            f"--dhcp-option=tag:{tag},option:router,{gw.ip}",
        ]
    argv += [f"--dhcp-host={n.mac},{n.address.split('/')[0]}" for n in nics if n.address]
    return argv


def write_seed(vm: VmSpec, plan: Plan, instance_id: str) -> Path:
    d = STATE_DIR / "vm" / vm.node
    seed_dir = d / "seed"
    shutil.rmtree(seed_dir, ignore_errors=True)
    seed_dir.mkdir(parents=True)
    priv, pub = host_key(vm.node)
    _, deploy_pub = _keygen(deploy_key(), "mco-boot-deploy")
    (seed_dir / "user-data").write_bytes(seed_user_data(plan, vm.node, priv, pub, deploy_pub))
    (seed_dir / "meta-data").write_text(yaml.safe_dump({"instance-id": instance_id, "local-hostname": vm.node}))
    (seed_dir / "network-config").write_text(network_config(vm))
    iso = d / "seed.iso"
    subprocess.run(["genisoimage", "-quiet", "-output", str(iso), "-volid", "cidata", "-joliet", "-rock", str(seed_dir)], check=True)
    return iso


def qemu_argv(vm: VmSpec, image: dict[str, str], disk: Path, seed: Path) -> list[str]:
    d = STATE_DIR / "vm" / vm.node
    argv = [
        "ip", "netns", "exec", vm.edge_ns,
        "qemu-system-x86_64", "-accel", "tcg", "-cpu", QEMU_CPU, "-m", str(MEMORY_MB[vm.kind]), "-smp", "1",
        "-name", vm.node, "-display", "none", "-daemonize", "-pidfile", str(d / "qemu.pid"),
        "-monitor", f"unix:{d / 'monitor.sock'},server,nowait", "-serial", f"file:{console_log(vm.node)}",
        "-kernel", image["kernel"], "-initrd", image["initrd"], "-append", f"{KERNEL_APPEND} mco.platform={vm.platform}",
        "-drive", f"file={disk},if=virtio,format=qcow2", "-drive", f"file={seed},if=virtio,format=raw,readonly=on",
    ]  # fmt: skip
    for i, nic in enumerate(vm.nics):
        if nic.hot:
            continue
        argv += ["-netdev", f"tap,id=n{i},ifname={nic.tap},script=no,downscript=no", "-device", f"virtio-net-pci,netdev=n{i},mac={nic.mac}"]
    return argv


def start_vm(vm: VmSpec, plan: Plan, image: dict[str, str]) -> int:
    d = STATE_DIR / "vm" / vm.node
    d.mkdir(parents=True, exist_ok=True)
    disk = d / "disk.qcow2"
    if not disk.exists():
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", image["disk"], "-F", "raw", str(disk)], check=True)
    seed = write_seed(vm, plan, f"i-mco-{vm.node}")
    console_log(vm.node).unlink(missing_ok=True)
    subprocess.run(qemu_argv(vm, image, disk, seed), check=True, capture_output=True, text=True)
    return int((d / "qemu.pid").read_text().strip())


def monitor(vm: VmSpec, *commands: str) -> str:
    """Commands to the VM's qemu monitor (HMP over its unix socket); what it answered."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(STATE_DIR / "vm" / vm.node / "monitor.sock"))
        s.settimeout(10)
        answer = b""
        for command in commands:
            s.sendall(command.encode() + b"\n")
            time.sleep(0.5)
        with contextlib.suppress(TimeoutError):
            while chunk := s.recv(65536):
                answer += chunk
                if answer.rstrip().endswith(b"(qemu)") and answer.count(b"(qemu)") > len(commands):
                    break
    return answer.decode(errors="replace")


def attach_late_nics(vm: VmSpec, started: float, deadline: float, out: Out) -> dict[str, Any]:
    """Hot-plug the NICs the platform attaches after launch, once the first boot's overlay unit has looked for the
    LAN NIC and not found it (the latest an attachment can come, and the case the payload must wait for); if the unit
    ends first (it did not wait), attach anyway: what the unit and cloud-init then report is the finding. {} when
    the VM has no such NIC."""
    late = [(i, n) for i, n in enumerate(vm.nics) if n.hot]
    if not late:
        return {}
    state, waiting = "", False
    while time.monotonic() < deadline and not (waiting or state in ("active", "failed")):
        with contextlib.suppress(subprocess.TimeoutExpired):
            got = ssh(vm, wait_in_guest(UNIT_WAITING_FOR_LAN), console=True, timeout=max(1.0, deadline - time.monotonic())).stdout.split()
            state, waiting = (got[0], got[1] != "0") if len(got) == 2 else ("", False)
        if not (waiting or state in ("active", "failed")):
            time.sleep(2)  # the session broke (the VM busy or its sshd restarting): log in again
    commands = []
    for i, nic in late:
        commands += [
            f"netdev_add tap,id=n{i},ifname={nic.tap},script=no,downscript=no",
            f"device_add virtio-net-pci,netdev=n{i},mac={nic.mac},id=hot{i}",
        ]
    answer = monitor(vm, *commands)
    if "Error" in answer or "error" in answer:
        raise LabError(f"{vm.node}: qemu refused the hot-plug: {answer.strip()[-500:]}")
    at = round(time.monotonic() - started, 1)
    out(f"{vm.node}: LAN NIC attached at {at} s, the overlay unit {'waiting for it' if waiting else state}")
    return {"attached_at": at, "unit_was": state, "unit_was_waiting": waiting}


@dataclass
class NodeBoot:
    node: str
    ssh_s: float
    cloud_init_s: float
    status: str
    detail: dict[str, Any]
    late_nic: dict[str, Any]
    """When the NIC attached after launch came ({} for none)."""


def cloud_init_status(vm: VmSpec) -> dict[str, Any]:
    """`cloud-init status --wait --long --format json` once cloud-init is done, waited for in the guest with a shell
    loop: `status --wait` polls four times a second in Python, seconds of the emulated CPU while packages install."""
    p = ssh(vm, wait_in_guest(CLOUD_INIT_DONE) + "; cloud-init status --wait --long --format json", console=True, timeout=1200)
    try:
        return dict(json.loads(p.stdout))
    except json.JSONDecodeError as e:
        raise LabError(f"{vm.node}: cloud-init status said: {(p.stdout + p.stderr).strip()[-800:]}") from e


def wait_booted(vm: VmSpec, started: float, timeout: float, out: Out) -> NodeBoot:
    wait_ssh(vm, started + timeout)
    ssh_at = time.monotonic() - started
    attached = attach_late_nics(vm, started, started + timeout, out)
    status = cloud_init_status(vm)
    done_at = time.monotonic() - started
    out(f"{vm.node}: sshd at {ssh_at:.0f} s, cloud-init {status.get('status')} at {done_at:.0f} s")
    return NodeBoot(vm.node, round(ssh_at, 1), round(done_at, 1), str(status.get("status")), status, attached)


def install_node_script(vm: VmSpec) -> subprocess.CompletedProcess[str]:
    """The program's install of the whole node script (install_script_command) over SSH, the packed script on stdin."""
    return ssh(vm, install_script_command(), stdin=packed_node_script(), timeout=900)


def push_node(vm: VmSpec, doc: dict[str, Any], phase: str | None, install: bool = False) -> subprocess.CompletedProcess[str]:
    """The program's push: push_command(phase) over SSH as the login user, the config on stdin; with `install`, the
    node script's install first, as the program runs it before a node's first push."""
    if install:
        done = install_node_script(vm)
        if done.returncode:
            return done
    return ssh(vm, push_command(phase), stdin=json.dumps(doc, indent=1, sort_keys=True) + "\n", timeout=900)


def node_docs(plan: Plan, layout: Layout, key_seed: str) -> dict[str, dict[str, Any]]:
    """The config the program pushes to each node: its node_config with the lab's public addresses and pair keys
    (the keys made once for all nodes)."""
    public_ips = dict(layout.public_ips)
    keys = lab_pair_keys(key_seed, plan)
    return {node.name: node_config(plan, node.name, public_ips, container_runtime="docker", pair_keys=keys) for node in plan.nodes}


def push_all(st: BootState, out: Out = print) -> list[dict[str, Any]]:
    """Every node's push in the program's order (lab.nodes.push_stages), each stage in parallel."""
    plan = st.plan()
    layout = build_layout(plan, PREFIX)
    specs = {v.node: v for v in vm_specs(plan, layout)}
    docs = node_docs(plan, layout, st.key_seed)
    script = node_script_sha256()
    results: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=len(specs)) as pool:
        stages = push_stages(plan)
        for stage in stages:
            t0 = time.monotonic()
            first = stage is stages[0]  # a node's first command of the run: the node script's install, if it needs one

            def one(job: tuple[str, str | None], first: bool = first) -> dict[str, Any]:
                node, phase = job
                doc = docs[node]
                t = time.monotonic()
                p = push_node(specs[node], doc, phase, install=first and st.installed.get(node) != script)
                return {
                    "node": node,
                    "phase": phase,
                    "ok": p.returncode == 0,
                    "seconds": round(time.monotonic() - t, 1),
                    "output": (p.stdout + p.stderr)[-2000:],
                }

            done = list(pool.map(one, stage))
            results += done
            if first:
                st.installed.update({d["node"]: script for d in done if d["ok"]})
                save(st)
            out(
                f"push stage {sorted({d['phase'] or 'push' for d in done})}: {sum(d['ok'] for d in done)}/{len(done)} ok in {time.monotonic() - t0:.1f} s"
            )
            bad = [d for d in done if not d["ok"]]
            if bad:
                raise LabError(f"push failed on {', '.join(d['node'] for d in bad)}:\n{bad[0]['output']}")
    return results


def check_from(vm: VmSpec, plan: Plan, fail_on_unreachable: bool = True) -> tuple[int, Any]:
    """The program's connectivity check from one router: check_command over SSH, parsed as the stack parses it."""
    p = ssh(vm, check_command(check_targets(plan), fail_on_unreachable), timeout=600)
    return p.returncode, parse_check_output(p.stdout)


def endpoints(plan: Plan) -> list[tuple[str, str, str | None]]:
    """(name, node VM it runs on, container netns handle or None) of every overlay endpoint."""
    out: list[tuple[str, str, str | None]] = [(n.name, n.name, None) for n in plan.nodes]
    out += [(c.name, r.name, c.name) for r in plan.routers() for c in r.containers]
    return out


def matrix(st: BootState, out: Out = print) -> dict[str, Any]:
    """Every endpoint pings every overlay address (IPv4 and IPv6), with the node script's own check: from each VM
    through the program's path (check_command as the login user), from each container in its namespace on its
    router (as root over the console: a container has no sshd). source -> parsed check output."""
    plan = st.plan()
    specs = specs_of(st)
    own = {name: {v4, v6} for name, v4, v6 in plan.overlay_addresses()}

    def one(ep: tuple[str, str, str | None]) -> tuple[str, Any]:
        name, vm, netns = ep
        # As the host lab's matrix: every other endpoint (a container with Docker's IPv6-less loopback does not
        # answer its own IPv6 address; that is no path of the overlay).
        targets = [t for t in check_targets(plan) if t not in own[name]]
        if netns is None:
            p = ssh(specs[vm], check_command(targets, fail_on_unreachable=False), timeout=600)
        else:
            argv = ["ip", "netns", "exec", netns, NODE_SCRIPT, "check", "--json", *targets]
            p = ssh(specs[vm], shlex.join(argv), console=True, timeout=600)
        return name, parse_check_output(p.stdout)

    with ThreadPoolExecutor(max_workers=4) as pool:
        got = dict(pool.map(one, endpoints(plan)))
    bad = {
        k: v.get("unreachable") if isinstance(v, dict) else v
        for k, v in got.items()
        if not (isinstance(v, dict) and not v.get("unreachable"))
    }
    out(f"matrix: {len(got)} sources x {len(check_targets(plan)) - 2} addresses, {len(bad)} source(s) with unreachable targets")
    return {"sources": got, "failed": bad}


def capture(during: Callable[[], Any]) -> tuple[Any, dict[str, Any]]:
    """Run `during()` while lab.capture listens on every link of the emulated internet; (its result, the packets
    summarised by lab.capture.summarise, plus every UDP port seen)."""
    from lab.capture import summarise

    out = STATE_DIR / "capture.json"
    out.unlink(missing_ok=True)
    argv = ["ip", "netns", "exec", f"{PREFIX}internet", sys.executable, "-m", "lab.capture", "--listen", str(out)]
    proc = subprocess.Popen(argv, cwd=str(nodeimage.bootimage.ROOT), stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "listening":
            raise LabError("the capture did not start")
        result = during()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    packets = json.loads(out.read_text())
    summary = summarise(packets)
    summary["udp_ports"] = sorted(
        {int(p["kind"][4:]) for p in packets if p["kind"].startswith("udp-")} | {int(p["port"]) for p in packets if "port" in p}
    )
    return result, summary


def marked_pings(vm: VmSpec, target: str, count: int = 5, size: int | None = None, df: bool = False) -> bool:
    """Pings carrying lab.capture's marker from the VM (as root), so that a capture can find them in clear; `size`
    and `df` as ping's -s and -M do."""
    from lab.capture import PATTERN
    from lab.probes import ping_argv

    argv = ping_argv(target, count=count, interval=0.2, wait=2, size=size, df=df, pattern=PATTERN, quiet=True)
    return ssh(vm, shlex.join(argv), console=True, timeout=120).returncode == 0


def aim(st: BootState, router: str, peer: str) -> Aim:
    """The tunnel of `router`'s router (a site) to `peer`'s, for lab.forgery's forger and recorder on the emulated
    internet: the router reached as root over SSH, the marked ping sent from the peer's client to the router's."""
    from lab.probes import ping_argv

    plan = st.plan()
    layout = build_layout(plan, PREFIX)
    specs = {v.node: v for v in vm_specs(plan, layout)}
    node = plan.router(router)
    tunnel = next(t for t in node.tunnels if t.peer_site == peer and t.via == "internet")
    source, target = specs[plan.client(peer).name], plan.client(router).overlay_ipv4
    return Aim(
        on_router=lambda argv: ssh_argv(specs[node.name], shlex.join(argv), console=True),
        python="python3",
        device=tunnel.name,
        vni=tunnel.vni,
        port=plan.port,
        protocol=plan.protocol,
        peer_public=layout.public_ips[peer],
        router_public=layout.public_ips[router],
        internet_ns=layout.internet_ns,
        ping=lambda mark: ssh(source, shlex.join(ping_argv(target, count=1, wait=2, pattern=mark)), console=True, timeout=60),
    )


def cut_off(st: BootState, site: str, on: bool) -> None:
    """Drop (or stop dropping) every datagram to or from a site's public address on the lab's internet: to its peers,
    its router is gone at once, forwarding and BFD alike, as a VM that dies."""
    layout = build_layout(st.plan(), PREFIX)
    drop_on_internet(Shell(), layout.internet_ns, site_matches(layout.public_ips[site]), on)


def reboot(vm: VmSpec, plan: Plan, checker: VmSpec | None = None, timeout: float = 900) -> dict[str, float]:
    """A real `systemctl reboot` of the VM, then nothing but waiting: seconds until sshd answers again, until the
    overlay unit is active, and until the program's check from `checker` (a router; the VM itself if None) passes."""
    boot_id = root(vm, "cat /proc/sys/kernel/random/boot_id").strip()
    t0 = time.monotonic()
    ssh(vm, "systemctl reboot", console=True, timeout=60)
    deadline = t0 + timeout
    while True:
        try:
            p = ssh(vm, "cat /proc/sys/kernel/random/boot_id", console=True, timeout=20)
            if p.returncode == 0 and p.stdout.strip() and p.stdout.strip() != boot_id:
                break
        except subprocess.TimeoutExpired:
            pass
        if time.monotonic() > deadline:
            raise LabError(f"{vm.node}: not back from the reboot in {timeout:.0f} s")
        time.sleep(2)
    sshd = time.monotonic() - t0
    while ssh(vm, f"systemctl is-active {UNIT_NAME}", console=True, timeout=60).stdout.strip() != "active":
        if time.monotonic() > deadline:
            raise LabError(f"{vm.node}: the overlay unit is not active {timeout:.0f} s after the reboot")
        with contextlib.suppress(subprocess.TimeoutExpired):
            ssh(vm, wait_in_guest(UNIT_ACTIVE), console=True, timeout=max(1.0, deadline - time.monotonic()))
    unit = time.monotonic() - t0
    checker = checker or vm
    while check_from(checker, plan)[0] != 0:
        if time.monotonic() > deadline:
            raise LabError(f"{vm.node}: the check from {checker.node} still fails {timeout:.0f} s after the reboot")
        time.sleep(2)
    return {"sshd": round(sshd, 1), "unit_active": round(unit, 1), "check_passes": round(time.monotonic() - t0, 1)}


def up(stack: str, sites: Sequence[str], overrides: dict[str, Any], out: Out = print, timeout: float = 1500) -> dict[str, Any]:
    if _state_file().exists():
        raise LabError(f"a boot lab exists ({_state_file()}): python -m lab.boot down")
    for tool in ("qemu-system-x86_64", "qemu-img", "genisoimage", "ssh", "ssh-keygen", "dnsmasq"):
        if shutil.which(tool) is None:
            raise LabError(f"missing {tool}: bash scripts/setup.sh installs it")
    t0 = time.monotonic()
    img = nodeimage.build(lambda m: out(f"node image: {m}"))
    image = {"disk": str(img.disk), "kernel": str(img.kernel), "initrd": str(img.initrd)}
    st = BootState(stack, list(sites), overrides, os.urandom(32).hex(), image)
    plan = st.plan()
    layout = build_layout(plan, PREFIX)
    specs = vm_specs(plan, layout)
    save(st)
    sh = Shell()
    build_underlay(sh, plan, layout, specs)
    # Keys first, once (the boots run in parallel): the stack's deploy key, each node's host key.
    _keygen(deploy_key(), "mco-boot-deploy")
    for vm in specs:
        host_key(vm.node)
    lock = threading.Lock()

    def boot_one(vm: VmSpec) -> NodeBoot:
        started = time.monotonic()
        pid = start_vm(vm, plan, image)
        with lock:
            st.pids[vm.node] = pid
            save(st)
        out(f"{vm.node}: started")
        return wait_booted(vm, started, timeout, out)

    # As many first boots at once as there are cores, routers (the longest: they install Docker) first: with six
    # emulated CPUs on two cores, one SSH login took minutes and every boot crawled.
    order = sorted(specs, key=lambda v: v.kind != "router")
    with ThreadPoolExecutor(max_workers=max(1, min(len(specs), os.cpu_count() or 1))) as pool:
        boots = list(pool.map(boot_one, order))
    before = before_push(plan, {v.node: v for v in specs})
    out(f"before the first push (user-data alone): {json.dumps(before, sort_keys=True)}")
    pushes = push_all(st, out)
    routers = [v for v in specs if v.kind == "router"]
    with ThreadPoolExecutor(max_workers=len(routers)) as pool:
        checks = dict(zip((v.node for v in routers), pool.map(lambda v: check_from(v, plan), routers), strict=True))
    return {
        "seconds": round(time.monotonic() - t0, 1),
        "boots": [dataclasses.asdict(b) for b in boots],
        "before_push": before,
        "pushes": pushes,
        "checks": checks,
    }


def before_push(plan: Plan, specs: dict[str, VmSpec]) -> dict[str, Any]:
    """What the user-data alone set up, before any push: per router its ESP SAs and tunnels to other routers (it has
    no peer address nor key yet), and whether one client reaches its own router and another site's client."""
    looks = "ip xfrm state | grep -c ^src; ip -o link show | grep -c ' ovl-r'"

    def router(node: str) -> tuple[str, dict[str, int]]:
        sas, tunnels = (int(n) for n in ssh(specs[node], looks, console=True, timeout=120).stdout.split())
        return node, {"sas": sas, "router_tunnels": tunnels}

    with ThreadPoolExecutor(max_workers=len(plan.routers())) as pool:
        routers = dict(pool.map(router, [r.name for r in plan.routers()]))
    first, other = plan.routers()[0].site, plan.routers()[1].site
    client = specs[plan.client(first).name]

    def reaches(target: str) -> bool:
        return ssh(client, f"ping -c 2 -W 2 {target}", console=True, timeout=60).returncode == 0

    return {
        "routers": routers,
        "client": client.node,
        "own_router": reaches(plan.router(first).overlay_ipv4),
        "other_site": reaches(plan.client(other).overlay_ipv4),
    }


def _is_vm(pid: int, node: str) -> bool:
    """Whether `pid` is (still) the qemu of `node`, alive (a zombie or a pid reused by another process is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[:1]
    return state not in (["Z"], ["X"]) and b"-name" in argv and node.encode() in argv and any(b"qemu-system" in a for a in argv[:1])


def down(out: Out = print) -> None:
    sh = Shell()
    try:
        st: BootState | None = load()
    except LabError:
        st = None
    killed: dict[str, int] = {}
    for node, pid in (st.pids if st else {}).items():
        if not _is_vm(pid, node):  # gone already, or its pid since reused by another process
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            killed[node] = pid
    # SIGKILL only asks: a VM's qemu takes a moment to release its memory and tap devices. Wait for it, so that
    # nothing of this lab runs once `down` returns.
    deadline = time.monotonic() + 30
    while (running := [node for node, pid in killed.items() if _is_vm(pid, node)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    for node in killed:
        out(f"{node}: still running 30 s after SIGKILL" if node in running else f"stopped {node}")
    for pidfile in STATE_DIR.glob("dnsmasq-*.pid"):
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    for ns in names:
        if ns.startswith(PREFIX):
            sh.run(["ip", "netns", "delete", ns], check=False)
    shutil.rmtree(STATE_DIR, ignore_errors=True)


def specs_of(st: BootState) -> dict[str, VmSpec]:
    plan = st.plan()
    return {v.node: v for v in vm_specs(plan, build_layout(plan, PREFIX))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.boot", description=(__doc__ or "").split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up")
    p_up.add_argument("--stack", default="dev")
    p_up.add_argument("--sites", default=",".join(DEFAULT_SITES))
    p_up.add_argument("--hub")
    p_up.add_argument("--protocol")
    sub.add_parser("down")
    sub.add_parser("check")
    p_push = sub.add_parser("push")
    p_push.add_argument("--hub")
    p_push.add_argument("--protocol")
    p_ssh = sub.add_parser("ssh")
    p_ssh.add_argument("node")
    p_ssh.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if argv is None:
        become_root(f"lab.boot {args.cmd}", "network namespaces, tap devices, qemu")
    try:
        if args.cmd == "up":
            res = up(args.stack, args.sites.split(","), {"hub": args.hub, "protocol": args.protocol})
            print(json.dumps(res, indent=1))
            return 0
        if args.cmd == "down":
            down()
            return 0
        st = load()
        specs = specs_of(st)
        if args.cmd == "ssh":
            cmd = " ".join(shlex.quote(c) for c in args.command) or "bash -l"
            argv = ssh_argv(specs[args.node], cmd, console=True)
            return subprocess.call(argv if args.command else [*argv[:-1], "-t", cmd])
        if args.cmd == "push":
            st.overrides.update({k: v for k, v in {"hub": args.hub, "protocol": args.protocol}.items() if v})
            save(st)
            push_all(st)
            return 0
        if args.cmd == "check":
            plan = st.plan()
            bad = 0
            for v in specs.values():
                if v.kind == "router":
                    rc, res = check_from(v, plan)
                    print(v.node, rc, json.dumps(res)[:400])
                    bad += rc != 0
            return 1 if bad else 0
    except LabError as e:
        print(f"lab.boot: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
