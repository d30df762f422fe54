"""Powering a lab VM on and off: the one path `up` (first boot), reboot and hub loss take.

A VM's hardware (its namespace, with the NICs plugged into the site's segments) is built once by
`underlay.build_host` and stays for the life of the lab, like the VM's disk (the node root with the payload files
and the node script's state dir).

Power-on is what the platform does before any unit runs: the NICs come up with the addresses and default route
DHCP/metadata give them, the image's firewall rules are restored (OCI), `docker.service` starts (routers with
Docker); then the payload unit's ExecStart runs (the boot command), and nothing else.

Power-off takes down everything that lives in the running kernel and in /run: every process of the node, its
containers and their namespace handles, every link, address, route, MAC and IPsec entry the node script made, the
sysctls and firewall rules it changed; the NICs (down, unaddressed) and the disk stay.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from lab import nodes, processes
from lab.shell import Shell
from lab.state import CGROUP_PREFIX, LabError, LabState, node_dir, node_root, save
from lab.topology import OCI_IMAGE_IPTABLES, HostSpec, map_path
from lab.underlay import IMAGE_SYSCTLS, scratch_namespace
from multicloud_overlay.cloudinit.overlay_node import BRIDGE_NF_SYSCTLS, NIC_ACCEPT_RA, NODE_SYSCTLS
from multicloud_overlay.cloudinit.overlay_node import global_addresses as link_addresses
from multicloud_overlay.cloudinit.render import UNIT_PATH, unit_exec_start

if TYPE_CHECKING:
    from lab.check import Lab

Out = Callable[[str], None]
DockerdRecorder = Callable[[str, int], None]
"""Called with (router, dockerd pid) as soon as a router's dockerd starts: the lab's state must know it."""

NIC_SYSCTLS = {NIC_ACCEPT_RA: NIC_ACCEPT_RA.format(nic="default")}
"""Per-NIC settings the node script changes -> the setting a NIC that appears at boot takes its value from."""


# --------------------------------------------------------------------------- power on


def platform_up(sh: Shell, vm: HostSpec) -> None:
    """What the platform does at boot before any unit: NICs up with their DHCP/metadata addresses and default
    route, the image's firewall rules."""
    cmds = []
    for nic in vm.nics:
        if nic.address:
            cmds.append(f"addr add {nic.address} dev {nic.name}")
        cmds.append(f"link set {nic.name} up")
    cmds.append(f"route add default via {vm.default_gateway}")
    sh.batch(vm.ns, cmds)
    if vm.host_firewall:
        for chain, *rule in OCI_IMAGE_IPTABLES:
            sh.ns(vm.ns, ["iptables", "-w", "-A", chain, *rule])


def dockerd_recorder(state: LabState, state_dir: Path, lock: threading.Lock | None = None) -> DockerdRecorder:
    """A DockerdRecorder that writes the pid into the lab's state (under `lock` when VMs boot in parallel)."""
    guard = lock or threading.Lock()

    def record(router: str, pid: int) -> None:
        with guard:
            state.dockerd[router] = pid
            save(state, state_dir)

    return record


@dataclass
class PoweredOn:
    node: str
    platform_seconds: float
    dockerd: int | None = None
    """pid of the router's dockerd (docker.service), None without Docker."""
    dockerd_started: float = 0.0
    """time.monotonic() when dockerd started."""


def power_on(sh: Shell, vm: HostSpec, state_dir: Path, runtime: nodes.Runtime, record: DockerdRecorder) -> PoweredOn:
    """The platform's part of a boot: NICs, image firewall, and (routers with Docker) docker.service started.
    `docker_ready` waits for the daemon; `boot_command` then runs the unit."""
    t = time.monotonic()
    platform_up(sh, vm)
    on = PoweredOn(vm.node, time.monotonic() - t)
    if vm.kind == "router" and runtime == "docker":
        on.dockerd_started = time.monotonic()
        on.dockerd = nodes.start_dockerd(vm.ns, vm.node, state_dir)
        record(vm.node, on.dockerd)
    return on


def docker_ready(sh: Shell, on: PoweredOn, state_dir: Path, image_tar: Path | None = None) -> float | None:
    """Wait until the node's dockerd answers (and import the lab's container image on first boot); seconds from
    the daemon's start, None without Docker."""
    if on.dockerd is None:
        return None
    nodes.wait_dockerd(sh, on.node, state_dir, on.dockerd)
    if image_tar is not None:
        nodes.import_image(sh, on.node, state_dir, image_tar)
    return time.monotonic() - on.dockerd_started


def boot_command(sh: Shell, vm: HostSpec, payload: str, state_dir: Path, runtime: nodes.Runtime) -> nodes.ApplyResult:
    """The payload unit's ExecStart (the node script applies the payload's config)."""
    return nodes.apply(sh, vm.ns, vm.node, payload, state_dir, vm.kind == "router", runtime)


def payload_on_disk(lab: Lab, node: str) -> str:
    """The node's rendered payload (what `lab up` applies), after checking that the unit installed on the node's
    disk runs the same command: a reboot runs what is on the disk."""
    text = nodes.lab_user_data(lab.state, lab.plan, node)
    unit = Path(map_path(UNIT_PATH, node_root(node, lab.state_dir)))
    try:
        lines = unit.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise LabError(f"{node}: no unit on the node's disk ({unit}): {e.strerror}") from None
    installed = [shlex.split(line.removeprefix("ExecStart=")) for line in lines if line.startswith("ExecStart=")]
    if installed != [unit_exec_start(text)]:
        raise LabError(f"{node}: the unit on the node's disk ({unit}) does not run the payload's command {unit_exec_start(text)}")
    return text


@dataclass
class Boot:
    platform_seconds: float
    docker_seconds: float | None
    started: float
    """Wall-clock time (time.time()) the boot command started."""
    apply: nodes.ApplyResult


def boot(lab: Lab, node: str, payload: str, before_command: Callable[[], None] | None = None, out: Out = print) -> Boot:
    """Power a node of a running lab on: the platform's part, docker.service, then the boot command
    (`before_command` runs right before it, e.g. to start probes)."""
    vm = lab.layout.host(node)
    runtime = cast(nodes.Runtime, lab.state.containers)
    on = power_on(lab.sh, vm, lab.state_dir, runtime, dockerd_recorder(lab.state, lab.state_dir))
    docker_s = docker_ready(lab.sh, on, lab.state_dir)
    if before_command is not None:
        before_command()
    started = time.time()
    result = boot_command(lab.sh, vm, payload, lab.state_dir, runtime)
    out(
        f"{node}: powered on (NICs {on.platform_seconds:.2f} s"
        + ("" if docker_s is None else f", docker.service {docker_s:.2f} s")
        + f"), boot command {'ok' if result.ok else 'FAILED'} in {result.seconds:.2f} s ({result.changes} changes)"
    )
    return Boot(on.platform_seconds, docker_s, started, result)


# --------------------------------------------------------------------------- power off


def node_script_links(link_names: Sequence[str], nics: Sequence[str]) -> list[str]:
    """Links of a node that a reboot removes: all but loopback and the platform's NICs (the VM's hardware)."""
    keep = {"lo", *nics}
    return sorted(n for n in link_names if n not in keep)


def kernel_defaults(sh: Shell) -> dict[str, str]:
    """The sysctls a freshly booted kernel (a new namespace) has for what the node script changes, with the
    image's own settings on top."""
    with scratch_namespace(sh, "power") as probe:
        keys = list(NODE_SYSCTLS) + sorted(set(NIC_SYSCTLS.values()))
        # br_netfilter's settings exist only where the module is loaded (then a new namespace starts with them on).
        keys += [k for k in BRIDGE_NF_SYSCTLS if sh.ns(probe, ["sysctl", "-n", k], check=False).returncode == 0]
        proc = sh.ns(probe, ["sysctl", "-n", *keys])
        return {**dict(zip(keys, proc.stdout.split(), strict=True)), **IMAGE_SYSCTLS}


def link_names(sh: Shell, ns: str) -> list[str]:
    return [link["ifname"] for link in json.loads(sh.run(["ip", "-n", ns, "-j", "link", "show"], timeout=20).stdout or "[]")]


def global_addresses(sh: Shell, ns: str) -> dict[str, list[str]]:
    doc = json.loads(sh.run(["ip", "-n", ns, "-j", "addr", "show"], timeout=20).stdout or "[]")
    return {link["ifname"]: link_addresses(link) for link in doc}


def docker_pids(router: str, state_dir: Path) -> set[int]:
    """Processes of the router's Docker (daemon, containerd, shims, containers): in its cgroups or naming its dir."""
    return set(processes.pids_mentioning(str(node_dir(router, state_dir)) + "/")) | processes.pids_in_cgroups(f"{CGROUP_PREFIX}{router}")


@dataclass
class PowerOff:
    killed: int
    removed_links: list[str]
    removed_handles: list[str]
    left: dict[str, Any]
    """What the node looks like powered off: links and global addresses (only the platform's NICs remain)."""
    seconds: float


def power_off(lab: Lab, node: str, out: Out = print) -> PowerOff:
    """Everything of the running node goes; the NICs (down, unaddressed) and the node root stay."""
    started = time.monotonic()
    sh, vm = lab.sh, lab.layout.host(node)
    n = lab.plan.node(node)
    docker = n.kind == "router" and lab.state.containers == "docker"
    handles = [c.name for c in n.containers]
    # 1. Every process of the VM: whatever runs in its namespace or its containers', and its Docker.
    pids = set(processes.pids_in_netns(processes.netns_inodes([vm.ns, *handles])))
    if docker:
        pids |= docker_pids(node, lab.state_dir)
        if node in lab.state.dockerd:
            pids.add(lab.state.dockerd[node])
    pids = {p for p in pids if p != os.getpid() and os.path.exists(f"/proc/{p}")}
    alive = processes.stop(sorted(pids), signal.SIGKILL, 10)
    if alive:
        raise LabError(f"power-off of {node}: processes {alive} did not die")
    # 2. /run is a tmpfs: the container namespace handles and Docker's runtime state are gone after a reboot.
    removed_handles = []
    for h in handles:
        if os.path.exists(f"/run/netns/{h}"):
            sh.run(["ip", "netns", "delete", h], check=False)
            removed_handles.append(h)
    if docker:
        d = node_dir(node, lab.state_dir)
        shutil.rmtree(d / "run-docker", ignore_errors=True)
        for f in ("docker.sock", "docker.pid"):
            (d / f).unlink(missing_ok=True)
        lab.state.dockerd.pop(node, None)
        save(lab.state, lab.state_dir)
    # 3. The kernel's network state: every link that is not a NIC, addresses, routes, IPsec, firewall, sysctls.
    nics = [nic.name for nic in vm.nics]
    removed = node_script_links(link_names(sh, vm.ns), nics)
    cmds = [f"link del {name}" for name in removed]
    for nic in nics:
        cmds += [f"link set {nic} down", f"addr flush dev {nic}"]
    cmds += ["route flush table main", "xfrm state flush", "xfrm policy flush"]
    sh.run(["ip", "-n", vm.ns, "-force", "-batch", "-"], input="\n".join(cmds) + "\n", check=False)
    sh.run(["ip", "-n", vm.ns, "-6", "route", "flush", "table", "main"], check=False)
    for tool in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle", "raw"):
            sh.ns(vm.ns, [tool, "-w", "-t", table, "-F"], check=False)
            sh.ns(vm.ns, [tool, "-w", "-t", table, "-X"], check=False)
    defaults = kernel_defaults(sh)
    values = [f"{k}={defaults[k]}" for k in [*NODE_SYSCTLS, *BRIDGE_NF_SYSCTLS] if k in defaults]
    for nic in nics:
        values += [f"{k.format(nic=nic)}={defaults[default]}" for k, default in NIC_SYSCTLS.items()]
    sh.ns(vm.ns, ["sysctl", "-qw", *values])
    left = {
        "links": link_names(sh, vm.ns),
        "addresses": global_addresses(sh, vm.ns),
        "handles": [h for h in handles if os.path.exists(f"/run/netns/{h}")],
    }
    took = time.monotonic() - started
    out(f"{node}: powered off in {took:.1f} s ({len(pids)} processes killed, {len(removed)} links removed; NICs {', '.join(nics)} down)")
    return PowerOff(len(pids), removed, removed_handles, left, took)
