"""up, down and status of the lab."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from lab import nodes, power, processes, underlay
from lab.access import how_to_reach
from lab.check import Lab
from lab.invocation import lab_command
from lab.progress import Progress
from lab.shell import CommandError, Shell
from lab.state import (
    CGROUP_PREFIX,
    DEFAULT_STATE_DIR,
    STATE_DIR,
    LabError,
    LabState,
    check_state_dir,
    docker_host,
    load,
    load_raw,
    node_dir,
    node_root,
    require_root,
    save,
    stack_reference,
    state_file,
)
from lab.topology import PREFIX, Layout, build_layout, container_names
from multicloud_overlay.cloudinit import overlay_node
from multicloud_overlay.overlay.plan import Plan

Out = Callable[[str], None]

# tool -> Debian package
TOOLS = {
    "ip": "iproute2",
    "iptables": "iptables",
    "nsenter": "util-linux",
    "ping": "iputils-ping",
    "sysctl": "procps",
    "python3": "python3",
}
DOCKER_TOOLS = {"docker": "docker.io", "dockerd": "docker.io", "unshare": "util-linux"}


def missing_tools(runtime: str) -> list[str]:
    wanted = dict(TOOLS)
    if runtime == "docker":
        wanted.update(DOCKER_TOOLS)
    missing = [f"{tool} ({pkg})" for tool, pkg in wanted.items() if shutil.which(tool) is None]
    if runtime == "docker" and not os.path.exists(nodes.BUSYBOX):
        missing.append(f"{nodes.BUSYBOX} (busybox-static)")
    return missing


def check_tools(runtime: str) -> None:
    missing = missing_tools(runtime)
    if missing:
        pkgs = sorted({m.split("(")[1].rstrip(")") for m in missing})
        raise LabError(f"missing: {', '.join(missing)}; install with: apt-get install -y {' '.join(pkgs)}")


def geneve_supported(sh: Shell) -> bool:
    """Probe the host kernel: can a GENEVE device be made (in a throw-away namespace)?"""
    with underlay.scratch_namespace(sh) as probe:
        return sh.ok(["ip", "-n", probe, "link", "add", "g0", "type", "geneve", "id", "1", "remote", "192.0.2.1"])


def esp_supported(sh: Shell) -> bool:
    """Probe the host kernel: can an ESP security association be made (in a throw-away namespace)?"""
    with underlay.scratch_namespace(sh) as probe:
        argv = ["ip", "-n", probe, "xfrm", "state", "add", "src", "192.0.2.1", "dst", "192.0.2.2", "proto", "esp", "spi", "0x4000"]
        return sh.ok([*argv, "mode", "transport", "aead", "rfc4106(gcm(aes))", "0x" + "00" * 36, "128"])


def esp_message() -> str:
    return (
        "IPsec is not available on this host kernel (no ESP: CONFIG_INET_ESP is off), and the stack sets encryption ipsec "
        "(the default). Either run the lab with the router tunnels in clear, everything else as the stack says: "
        f"`{lab_command('up', '--encryption', 'none')}`; or run the encrypted overlay in the kernel VM: "
        f"`{lab_command('vm', '--encryption', 'ipsec')}` (see {lab_command('vm', '--help')})"
    )


def strongswan_installed() -> bool:
    """The IKE daemon each encrypted lab router runs (the node script starts it in the router's namespace)."""
    return os.path.exists(overlay_node.CHARON) and shutil.which("swanctl") is not None


def strongswan_message() -> str:
    return (
        "encryption ipsec needs strongSwan on this host: each lab router runs its own IKE daemon. Install it with "
        "`apt-get install strongswan-charon strongswan-swanctl libstrongswan-standard-plugins` (scripts/setup.sh does)"
    )


def geneve_message() -> str:
    return (
        "GENEVE is not available on this host kernel (`ip link add ... type geneve` fails: no geneve module). "
        f"Run the GENEVE overlay in the kernel VM instead: {lab_command('vm', '--help')}"
    )


# One kernel carries every VM of the lab, and its IPv4/IPv6 neighbour tables are shared by all namespaces with
# limits (gc_thresh*) set only in the host namespace: 30 overlay endpoints resolving each other overflow the
# default 1024 entries, after which new neighbours fail (sendto: EINVAL). Each cloud VM has its own table, so the
# lab raises the shared limits while it runs and restores them at down.
NEIGH_LIMITS = {
    f"/proc/sys/net/{fam}/neigh/default/gc_thresh{n}": value for fam in ("ipv4", "ipv6") for n, value in ((2, "8192"), (3, "16384"))
}


def neighbour_limit_changes() -> dict[str, list[str]]:
    """/proc/sys path -> [current, wanted] for every shared limit below what the lab needs."""
    changes = {}
    for path, value in NEIGH_LIMITS.items():
        try:
            with open(path, encoding="ascii") as f:
                before = f.read().strip()
            if int(before) < int(value):
                changes[path] = [before, value]
        except (OSError, ValueError):
            continue
    return changes


def write_host_sysctls(changes: dict[str, list[str]]) -> None:
    for path, (_, value) in changes.items():
        with open(path, "w", encoding="ascii") as f:
            f.write(value)


def restore_host_sysctls(st: LabState | None) -> None:
    if st is None:
        return
    for path, (before, ours) in st.host_sysctls.items():
        try:
            with open(path, encoding="ascii") as f:
                if f.read().strip() != ours:
                    continue  # changed by someone else since: theirs now
            with open(path, "w", encoding="ascii") as f:
                f.write(before)
        except OSError:
            continue


def lab_exists(state_dir: Path, prefix: str = PREFIX) -> list[str]:
    found = []
    if (state_dir / "lab.json").exists():
        found.append(str(state_dir / "lab.json"))
    if os.path.isdir("/run/netns"):
        found += [f"/run/netns/{n}" for n in sorted(os.listdir("/run/netns")) if n.startswith(prefix)]
    return found


@dataclass
class UpResult:
    plan: Plan
    layout: Layout
    applies: dict[str, nodes.ApplyResult] = field(default_factory=dict)
    seconds: float = 0.0


def up(
    stack: str,
    sites: list[str] | None,
    overrides: dict[str, Any],
    runtime: nodes.Runtime = "docker",
    force: bool = False,
    state_dir: Path = STATE_DIR,
    out: Out = print,
    push: bool = True,
    prefix: str = PREFIX,
) -> UpResult:
    """Build the stack's lab: every VM boots from its payload; then (push) each node gets its full config by the
    push, as `pulumi up` does right after a VM is created. Without the push the nodes run their bootstrap config:
    each site works on its own, nothing crosses sites (`lab push` does the rest).

    stack is a stack name (Pulumi.NAME.yaml in the repository root) or the path of a stack file anywhere; prefix
    starts the name of every namespace the lab makes (state_dir keeps what the later verbs need to find them)."""
    require_root("up")
    check_state_dir(state_dir)
    check_tools(runtime)
    st = LabState(
        stack=stack_reference(stack),
        sites=list(sites or []),
        overrides={k: v for k, v in overrides.items() if v is not None},
        containers=runtime,
        prefix=prefix,
    )
    plan = st.plan()  # config errors before anything exists
    # One step for the internet, three per site (edge and VMs, client, router), one for the end.
    progress = Progress(total=2 + 3 * len(plan.config.sites), out=None if out is print else out)
    if sites and not overrides.get("hub") and plan.config.topology == "hub-and-spoke":
        configured = load_raw(st.stack, None, {}).get("hub")
        if configured not in sites:
            progress.note(f"the stack's hub {configured} is not among --sites: using {plan.hub} (set one with --hub)")
    sh = Shell(state_dir / "commands.log")
    if plan.protocol == "geneve" and not geneve_supported(Shell()):
        raise LabError(geneve_message())
    if plan.encrypted and not esp_supported(Shell()):
        raise LabError(esp_message())
    if plan.encrypted and not strongswan_installed():
        raise LabError(strongswan_message())
    if plan.standby is not None and not (shutil.which("vtysh") and os.path.exists("/usr/lib/frr/bfdd")):
        raise LabError(
            "two hubs (standbyHub) need FRR's bfdd on each lab router, and FRR is not installed: "
            "`apt-get install frr` (scripts/setup.sh does, without starting its service), or drop --standby-hub"
        )
    st.key_seed = os.urandom(32).hex()
    existing = lab_exists(state_dir, prefix)
    if existing:
        if not force:
            raise LabError(
                f"a lab already exists ({', '.join(existing[:3])}{' ...' if len(existing) > 3 else ''}): "
                f"run `{lab_command('down')}` first, or add --force to `up` to replace it"
            )
        progress.note("a lab exists: tearing it down first (--force)")
        down(state_dir=state_dir, out=out)
    layout = build_layout(plan, prefix)
    st.namespaces = layout.namespaces()
    st.container_netns = container_names(plan)
    st.routers = [n.name for n in plan.routers()]
    st.public_ips = dict(layout.public_ips)
    st.created = time.time()
    record_dockerd = power.dockerd_recorder(st, state_dir, threading.Lock())
    st.host_sysctls = neighbour_limit_changes()
    # Every name and host setting is on record before the first one is made: down works after an interrupt.
    save(st, state_dir)
    write_host_sysctls(st.host_sysctls)
    result = UpResult(plan, layout)
    progress.note(
        f"stack {stack}: {len(plan.config.sites)} sites, hub {plan.hub}, {plan.protocol}, {plan.config.topology}, "
        f"encryption {plan.config.encryption}, overlay MTU {plan.mtu}, {len(plan.nodes)} VMs, "
        f"{len(st.container_netns)} containers ({runtime})"
    )

    tar = nodes.build_image_tar(state_dir) if runtime == "docker" and st.container_netns else None
    underlay.build_internet(sh, layout)
    progress.step(f"internet {layout.internet_ns} built" + (", container image ready" if tar else ""))
    payloads = {n.name: nodes.lab_user_data(st, plan, n.name) for n in plan.nodes}
    configs = {n.name: nodes.lab_node_config(st, plan, n.name, dict(layout.public_ips)) for n in plan.nodes}

    def boot_and_push(name: str) -> nodes.ApplyResult:
        """What a cloud VM goes through: its unit applies the payload's bootstrap config at boot, then the program's
        push installs and applies the full config (peers, and with IPsec the tunnel keys)."""
        vm = layout.host(name)
        booted = power.boot_command(sh, vm, payloads[name], state_dir, runtime)
        if not booted.ok or not push:
            return booted
        pushed = nodes.push(sh, vm.ns, name, configs[name], state_dir, vm.kind == "router", runtime)
        return nodes.ApplyResult(
            name, pushed.ok, booted.seconds + pushed.seconds, booted.changes + pushed.changes, booted.output + pushed.output
        )

    def site_job(site: str) -> None:
        edge = next(e for e in layout.edges if e.site == site)
        underlay.build_edge(sh, layout, edge)
        router, client = plan.router(site), plan.client(site)
        for node in (router, client):
            underlay.build_host(sh, layout, layout.host(node.name))
            nodes.write_payload(payloads[node.name], node_root(node.name, state_dir))
        # First power-on of both VMs: the router's docker.service starts while the client boots.
        on = {node.name: power.power_on(sh, layout.host(node.name), state_dir, runtime, record_dockerd) for node in (router, client)}
        progress.step(f"{site}: edge {edge.public_ip} <-> {edge.router_wan_ip}, VMs {router.name} + {client.name} ready")
        r = boot_and_push(client.name)
        result.applies[client.name] = r
        progress.step(f"{client.name}: booted and pushed ({r.changes} changes, {r.seconds:.1f} s)" if r.ok else f"{client.name}: FAILED")
        power.docker_ready(sh, on[router.name], state_dir, image_tar=tar if router.containers else None)
        r = boot_and_push(router.name)
        result.applies[router.name] = r
        progress.step(
            f"{router.name}: booted and pushed as {router.role} ({r.changes} changes, {r.seconds:.1f} s)"
            if r.ok
            else f"{router.name}: FAILED"
        )

    with ThreadPoolExecutor(max_workers=len(plan.config.sites)) as pool:
        futures = [pool.submit(site_job, s.name) for s in plan.config.sites]
        errors = []
        for f in futures:
            try:
                f.result()
            except (CommandError, RuntimeError, OSError) as e:
                errors.append(str(e))
    failed = [r for r in result.applies.values() if not r.ok]
    if errors or failed:
        detail = errors + [f"{r.node}: {r.output.strip().splitlines()[-1] if r.output.strip() else 'no output'}" for r in failed]
        raise LabError(f"up failed (the lab is half-built: run `{lab_command('down')}`):\n  " + "\n  ".join(detail))
    st.phase = "up"
    save(st, state_dir)
    result.seconds = progress.elapsed
    progress.step(f"lab up in {result.seconds:.1f} s")
    return result


def summary_table(plan: Plan, layout: Layout, applies: dict[str, nodes.ApplyResult] | None = None) -> str:
    rows = [("node", "role", "platform", "public", "wan", "lan", "overlay ipv4", "overlay ipv6", "tunnels", "containers", "apply")]
    for n in plan.nodes:
        edge = next(e for e in layout.edges if e.site == n.site)
        a = (applies or {}).get(n.name)
        rows.append(
            (
                n.name,
                n.role,
                n.platform,
                edge.public_ip if n.kind == "router" else "-",
                n.wan_ip or "-",
                n.lan_ip,
                n.ipv4,
                n.ipv6,
                ",".join(t.name for t in n.tunnels),
                str(len(n.containers)) if n.kind == "router" else "-",
                "-" if a is None else (f"{a.changes} chg {a.seconds:.1f}s" if a.ok else "FAILED"),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# --------------------------------------------------------------------------- down


def _lab_mounts(state_dir: Path, netns_names: set[str]) -> list[str]:
    points = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            for line in f:
                point = line.split()[4]
                if point.startswith(str(state_dir)) or (point.startswith("/run/netns/") and point[11:] in netns_names):
                    points.append(point)
    except OSError:
        pass
    return points


def _lab_cgroups(base: Path = Path("/sys/fs/cgroup")) -> list[Path]:
    """The cgroups the lab's dockerds made (--cgroup-parent mco-lab-<router>): under each controller's hierarchy
    with cgroup v1 (/sys/fs/cgroup/memory/mco-lab-aws-router), at the top of the unified hierarchy with cgroup v2
    (/sys/fs/cgroup/mco-lab-aws-router), and under a hybrid host's /sys/fs/cgroup/unified."""
    found: list[Path] = []
    if not base.is_dir():
        return found
    found += sorted(p for p in base.glob(f"{CGROUP_PREFIX}*") if p.is_dir())
    for controller in sorted(base.iterdir()):
        if controller.is_dir() and not controller.name.startswith(CGROUP_PREFIX):
            found += sorted(p for p in controller.glob(f"{CGROUP_PREFIX}*") if p.is_dir())
    return found


def _rmdir_tree(path: Path) -> None:
    for child in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            child.rmdir()
    with contextlib.suppress(OSError):
        path.rmdir()


def _names(st: LabState | None, prefix: str) -> tuple[set[str], set[str]]:
    """(lab namespaces, container namespace handles) on record and on disk."""
    lab_ns = set(st.namespaces) if st else set()
    containers = set(st.container_netns) if st else set()
    if os.path.isdir("/run/netns"):
        lab_ns |= {n for n in os.listdir("/run/netns") if n.startswith(prefix)}
    return lab_ns, containers


def down(state_dir: Path = STATE_DIR, out: Out = print) -> float:
    """Remove everything the lab made; safe to run twice, and after an interrupted up. Returns seconds."""
    require_root("down")
    started = time.monotonic()
    st = load(state_dir)
    prefix = st.prefix if st else PREFIX
    lab_ns, containers = _names(st, prefix)
    sh = Shell()
    # 0. Whatever runs in a lab namespace besides Docker (a node script of an interrupted up, pings) stops first,
    #    so that nothing creates containers or namespaces while they are being removed.
    workers = [
        p
        for p in processes.pids_in_netns(processes.netns_inodes(lab_ns))
        if processes.command_name(p) not in processes.DOCKER_PROCESSES and p != os.getpid()
    ]
    if workers:
        processes.stop(workers, signal.SIGKILL, 5)
    # 1. Containers, then each router's dockerd (and the containerd it started), gracefully.
    routers = set(st.dockerd) if st else set()
    nodes_dir = state_dir / "nodes"
    if nodes_dir.is_dir():
        routers |= {d.name for d in nodes_dir.iterdir() if (d / "docker.pid").exists() or (d / "docker.sock").exists()}

    def stop_docker(router: str) -> None:
        env = {"DOCKER_HOST": docker_host(router, state_dir)}
        sock = node_dir(router, state_dir) / "docker.sock"
        if sock.exists():
            ids = sh.run(["docker", "ps", "-aq"], check=False, env=env, timeout=20).stdout.split()
            if ids:
                sh.run(["docker", "rm", "-f", *ids], check=False, env=env, timeout=60)
        pids = set(processes.pids_mentioning(str(node_dir(router, state_dir)) + "/"))
        if st and router in st.dockerd:
            pids.add(st.dockerd[router])
        pids = {p for p in pids if os.path.exists(f"/proc/{p}")}
        processes.send_signal(processes.stop(sorted(pids), signal.SIGTERM, 15), signal.SIGKILL)

    with ThreadPoolExecutor(max_workers=max(1, len(routers))) as pool:
        list(pool.map(stop_docker, sorted(routers)))
    # 2. Anything still running in a lab namespace or from the state dir (pings, shims, containers).
    inodes = processes.netns_inodes(lab_ns | containers)
    stray = sorted((set(processes.pids_in_netns(inodes)) | set(processes.pids_mentioning(str(state_dir) + "/"))) - {os.getpid()})
    if stray:
        processes.send_signal(processes.stop(stray, signal.SIGTERM, 5), signal.SIGKILL)
        processes.wait_gone(stray, 5)
    # 3. Namespaces (their links, addresses, routes and iptables rules go with them) and handles.
    for n in sorted(containers) + sorted(lab_ns):
        if os.path.exists(f"/run/netns/{n}"):
            sh.run(["ip", "netns", "delete", n], check=False)
    for point in reversed(_lab_mounts(state_dir, lab_ns | containers)):
        sh.run(["umount", "-l", point], check=False)
    for n in containers | lab_ns:
        with contextlib.suppress(OSError):
            os.unlink(f"/run/netns/{n}")
    # 4. Host settings, cgroups of the lab's containers, then files.
    restore_host_sysctls(st)
    for cg in _lab_cgroups():
        _rmdir_tree(cg)
    if state_file(state_dir).exists() or state_dir == DEFAULT_STATE_DIR:
        shutil.rmtree(state_dir, ignore_errors=True)
    elif state_dir.is_dir():
        out(f"left {state_dir} in place: it holds no lab record (lab.json), so it is not the lab's to remove")
    took = time.monotonic() - started
    out(f"lab down in {took:.1f} s ({len(lab_ns)} namespaces, {len(containers)} container handles, {len(routers)} dockerd)")
    return took


def leftovers(state_dir: Path = STATE_DIR, prefix: str = PREFIX, containers: list[str] | None = None) -> list[str]:
    """Everything of a lab that still exists (empty after a clean down)."""
    found = []
    names = set(containers or [])
    if os.path.isdir("/run/netns"):
        found += [f"netns {n}" for n in sorted(os.listdir("/run/netns")) if n.startswith(prefix) or n in names]
    if state_dir.exists():
        found.append(f"state dir {state_dir}")
    found += [
        f"mount {p}"
        for p in _lab_mounts(
            state_dir, names | {n for n in os.listdir("/run/netns") if n.startswith(prefix)} if os.path.isdir("/run/netns") else names
        )
    ]
    found += [f"process {p}" for p in processes.pids_mentioning(str(state_dir) + "/")]
    found += [f"cgroup {c}" for c in _lab_cgroups()]
    return found


# --------------------------------------------------------------------------- status


def status(state_dir: Path = STATE_DIR, out: Out = print) -> int:
    st = load(state_dir)
    if st is None:
        left = lab_exists(state_dir)
        out("no lab" + (f" (but leftovers: {', '.join(left)}; run `{lab_command('down')}`)" if left else ""))
        return 1 if left else 0
    plan = st.plan()
    layout = build_layout(plan, st.prefix)
    out(
        f"lab {st.phase}: stack {st.stack}, hub {plan.hub}, {plan.protocol}, {plan.config.topology}, "
        f"encryption {plan.config.encryption}, overlay MTU {plan.mtu}, "
        f"containers {st.containers}, up since {time.strftime('%H:%M:%S', time.localtime(st.created))}; state in {state_dir}"
    )
    missing = [n for n in st.namespaces if not os.path.exists(f"/run/netns/{n}")]
    out(
        f"namespaces: {len(st.namespaces) - len(missing)}/{len(st.namespaces)} present"
        + (f" (missing: {', '.join(missing)})" if missing else "")
    )
    handles = [n for n in st.container_netns if os.path.exists(f"/run/netns/{n}")]
    out(f"container handles: {len(handles)}/{len(st.container_netns)}")
    for router, pid in sorted(st.dockerd.items()):
        out(
            f"dockerd {router}: pid {pid} {'running' if os.path.exists(f'/proc/{pid}') else 'GONE'}, "
            f"socket {docker_host(router, state_dir)} (DOCKER_HOST for docker commands)"
        )
    out(summary_table(plan, layout))
    out("")
    for line in how_to_reach(st, state_dir):
        out(line)
    return 0 if st.phase == "up" and not missing else 1


def push_all(state_dir: Path = STATE_DIR, out: Out = print) -> int:
    """Push every node's full config in place, in the program's order (nodes.push_stages: the routers' prepare and
    switch steps, then their pushes; what `pulumi up` does after creating the VMs); 0 if all applied."""
    lab = Lab(state_dir)
    configs = {n.name: nodes.lab_node_config(lab.state, lab.plan, n.name, dict(lab.layout.public_ips)) for n in lab.plan.nodes}

    def one(name: str, phase: str | None) -> nodes.ApplyResult:
        vm = lab.layout.host(name)
        runtime = cast(nodes.Runtime, lab.state.containers)
        return nodes.push(lab.sh, vm.ns, name, configs[name], state_dir, vm.kind == "router", runtime, phase)

    results, _ = nodes.run_stages(nodes.push_stages(lab.plan), one)
    for r in results:
        last = r.output.strip().splitlines()[-1] if r.output.strip() else "no output"
        what = f"{r.node} ({r.phase})" if r.phase else r.node
        out(f"{'ok  ' if r.ok else 'FAIL'} {what}: {r.changes} change(s) in {r.seconds:.1f} s ({last})")
    return 0 if results and all(r.ok for r in results) else 1
