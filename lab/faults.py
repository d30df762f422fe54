"""Faults in a running lab: reboot one node, lose the hub and bring it back.

A node is "rebooted" the way a VM is: power-off takes down everything that lives in the running kernel and in
/run (every process of the node, its containers and their namespace handles, every link, address, route, MAC and
IPsec entry the node script made, the sysctls and firewall rules it changed), while the VM's NICs and its disk (the
node root with the payload files and the node script's state dir) stay. Power-on is what the platform does before
the unit runs: the NICs come up with the addresses and default route DHCP/metadata give them (exactly what
`lab up` configured), the image's firewall rules are restored (OCI), `docker.service` starts (routers); then the
payload unit's ExecStart runs, as `lab up` runs it, and nothing else. The node script must bring the overlay back
on its own: the check matrix afterwards proves it did.

Recovery is timed from the start of the boot command with ~50 ms pings from another site's node to the rebooted
node's overlay addresses (and to a container behind a router, and through a hub); the figures include the
observer re-resolving the neighbour (ARP/ND retries every second while a target is down), as a real host would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from components.plan import Node, Plan
from lab import nodes
from lab.check import Endpoint, Lab, check, endpoints, parse_ping_lines, ping_script
from lab.lifecycle import _kill, _pids_in_netns, _pids_mentioning, _wait_gone, require_root
from lab.report import Probe, to_junit
from lab.shell import Shell
from lab.state import STATE_DIR, LabError, node_dir, node_root, save
from lab.swap import PingLog, parse_ping_log
from lab.topology import OCI_IMAGE_IPTABLES, PREFIX, VmSpec
from lab.underlay import IMAGE_SYSCTLS

Out = Callable[[str], None]

POLL_INTERVAL = 0.05
"""Seconds between the recovery/availability pings (iputils ping -i)."""
RECOVERY_TIMEOUT = 60.0
CHECK_ATTEMPTS = 3
"""Full check runs after a recovery before the fault counts as not healed."""

# What the node script changes in the kernel besides links (cloudinit/overlay_node.py step_sysctls): a booting
# kernel starts from the defaults again, which are what a fresh namespace gets.
NODE_SYSCTLS = (
    "net.ipv4.ip_forward",
    "net.ipv6.conf.all.forwarding",
    "net.ipv4.conf.all.rp_filter",
    "net.ipv4.conf.default.rp_filter",
)
NIC_SYSCTLS = ("net.ipv6.conf.{nic}.accept_ra",)
NIC_SYSCTL_DEFAULTS = {"net.ipv6.conf.{nic}.accept_ra": "net.ipv6.conf.default.accept_ra"}


# --------------------------------------------------------------------------- pure helpers


def node_script_links(link_names: Sequence[str], nics: Sequence[str]) -> list[str]:
    """Links of a node that a reboot removes: all but loopback and the platform's NICs (the VM's hardware)."""
    keep = {"lo", *nics}
    return sorted(n for n in link_names if n not in keep)


def other_site(plan: Plan, site: str, avoid_hub: bool = True) -> str:
    """A site other than `site`, a spoke when there is one (its traffic then also crosses the hub)."""
    others = [s.name for s in plan.config.sites if s.name != site]
    if not others:
        raise LabError("a fault test needs at least two sites")
    spokes = [s for s in others if s != plan.hub] if avoid_hub and plan.config.topology == "hub-and-spoke" else []
    return (spokes or others)[0]


@dataclass(frozen=True)
class Target:
    label: str
    """What the address belongs to, e.g. 'gcp-router IPv4'."""
    address: str


def recovery_probe(plan: Plan, node: str) -> tuple[str, list[Target]]:
    """(observer node, targets) that prove `node` is back: its own overlay addresses from another site's client,
    the first container behind a router, and for a hub the client of a third site (traffic through the hub)."""
    n = plan.node(node)
    observer_site = other_site(plan, n.site)
    observer = plan.client(observer_site).name
    targets = [Target(f"{n.name} IPv4", n.overlay_ipv4), Target(f"{n.name} IPv6", n.overlay_ipv6)]
    if n.containers:
        c = n.containers[0]
        targets += [Target(f"{c.name} IPv4", c.ipv4.split("/")[0]), Target(f"{c.name} IPv6", c.ipv6.split("/")[0])]
    if n.kind == "router" and n.role == "hub":
        third = [s.name for s in plan.config.sites if s.name not in (n.site, observer_site)]
        if third:
            far = plan.client(third[0])
            targets += [Target(f"{far.name} IPv4 (via hub)", far.overlay_ipv4), Target(f"{far.name} IPv6 (via hub)", far.overlay_ipv6)]
    return observer, targets


Pair = tuple[Endpoint, Endpoint]


def site_pairs(eps: Sequence[Endpoint], sites: Sequence[str]) -> list[Pair]:
    """Every ordered pair of distinct endpoints that share a site, for the given sites."""
    return [(a, b) for a in eps for b in eps if a.name != b.name and a.site == b.site and a.site in sites]


def cross_site_pairs(eps: Sequence[Endpoint], down: str | None = None) -> list[Pair]:
    """Every ordered pair of endpoints of different sites; with `down`, none from that node or its containers (a
    powered-off node runs nothing to ping from)."""
    return [(a, b) for a in eps for b in eps if a.site != b.site and (down is None or down not in (a.name, a.router))]


def first_reply_after(log: PingLog, t0: float) -> float | None:
    """Seconds from t0 to the first reply received at or after t0 (None if none)."""
    after = [ts for ts in log.replies.values() if ts >= t0]
    return round(min(after) - t0, 3) if after else None


def availability(log: PingLog) -> float | None:
    """Fraction of the pings sent that were answered (None if none was sent)."""
    sent = max(log.transmitted, max(log.replies, default=0))
    return round(len(log.replies) / sent, 4) if sent else None


def summarise_recovery(per_target: dict[str, float | None]) -> dict[str, Any]:
    values = list(per_target.values())
    return {
        "per_target_s": per_target,
        "first_s": min((v for v in values if v is not None), default=None),
        "all_s": None if not values or any(v is None for v in values) else max(v for v in values if v is not None),
    }


# --------------------------------------------------------------------------- pingers


class Pinger:
    """A background `ping -D -O` every POLL_INTERVAL from one endpoint to one address, logged to a file."""

    def __init__(self, lab: Lab, src: Endpoint, target: Target, log_path: Path, interval: float = POLL_INTERVAL) -> None:
        self.target = target
        self.log_path = log_path
        argv, env = lab.exec_argv(src, ["ping", "-D", "-O", "-n", "-i", str(interval), "-W", "1", target.address])
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("w") as f:
            self.proc = subprocess.Popen(
                argv,
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=None if env is None else {**os.environ, **env},
            )

    def log(self) -> PingLog:
        return parse_ping_log(self.log_path.read_text(errors="replace"))

    def stop(self) -> PingLog:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.log()


def stop_all(pingers: Sequence[Pinger]) -> dict[str, PingLog]:
    return {p.target.label: p.stop() for p in pingers}


def wait_replies(pingers: Sequence[Pinger], t0: float, timeout: float) -> dict[str, float | None]:
    """Poll the pingers' logs until every target answered after t0 (or timeout); seconds from t0 per target."""
    deadline = time.monotonic() + timeout
    got: dict[str, float | None] = {p.target.label: None for p in pingers}
    while True:
        for p in pingers:
            if got[p.target.label] is None:
                got[p.target.label] = first_reply_after(p.log(), t0)
        if all(v is not None for v in got.values()) or time.monotonic() > deadline:
            return got
        time.sleep(POLL_INTERVAL)


# --------------------------------------------------------------------------- reachability of chosen pairs


@dataclass(frozen=True)
class PairResult:
    src: str
    dst: str
    family: int
    target: str
    ok: bool


def reach(lab: Lab, pairs: Sequence[Pair], attempts: int, wait: int = 1) -> list[PairResult]:
    """Ping each pair over IPv4 and IPv6 (every target of a source at once, sources in parallel)."""
    from concurrent.futures import ThreadPoolExecutor

    by_src: dict[str, tuple[Endpoint, dict[str, tuple[str, int]]]] = {}
    for a, b in pairs:
        _, targets = by_src.setdefault(a.name, (a, {}))
        targets[b.ipv4] = (b.name, 4)
        targets[b.ipv6] = (b.name, 6)

    def one(item: tuple[Endpoint, dict[str, tuple[str, int]]]) -> list[PairResult]:
        src, targets = item
        proc = lab.run_on(src, ["sh", "-c", ping_script(list(targets), attempts, wait)], timeout=60 + 10 * attempts * wait)
        got = parse_ping_lines(proc.stdout)
        return [PairResult(src.name, name, fam, t, got.get(t, (0, False))[1]) for t, (name, fam) in targets.items()]

    with ThreadPoolExecutor(max_workers=6) as pool:
        return [r for rs in pool.map(one, list(by_src.values())) for r in rs]


# --------------------------------------------------------------------------- power off / power on


def _probe_defaults(sh: Shell) -> dict[str, str]:
    """The sysctls a freshly booted kernel (a new namespace) has for what the node script changes."""
    probe = f"{PREFIX}probe-faults-{os.getpid()}"
    sh.run(["ip", "netns", "add", probe])
    try:
        keys = list(NODE_SYSCTLS) + sorted(set(NIC_SYSCTL_DEFAULTS.values()))
        proc = sh.ns(probe, ["sysctl", "-n", *keys])
        return {**dict(zip(keys, proc.stdout.split(), strict=True)), **IMAGE_SYSCTLS}
    finally:
        sh.run(["ip", "netns", "delete", probe], check=False)


def _link_names(sh: Shell, ns: str) -> list[str]:
    return [link["ifname"] for link in json.loads(sh.run(["ip", "-n", ns, "-j", "link", "show"], timeout=20).stdout or "[]")]


def _docker_pids(router: str, state_dir: Path) -> set[int]:
    """Processes of the router's Docker (daemon, containerd, shims, containers): in its cgroups or naming its dir."""
    pids = set(_pids_mentioning(str(node_dir(router, state_dir)) + "/"))
    from lab.state import CGROUP_PREFIX

    base = Path("/sys/fs/cgroup")
    if base.is_dir():
        for controller in base.iterdir():
            top = controller / f"{CGROUP_PREFIX}{router}"
            if top.is_dir():
                for procs in top.rglob("cgroup.procs"):
                    try:
                        pids |= {int(p) for p in procs.read_text().split()}
                    except (OSError, ValueError):
                        continue
    return pids


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
    sh, plan, vm = lab.sh, lab.plan, lab.layout.vm(node)
    n = plan.node(node)
    handles = [c.name for c in n.containers]
    # 1. Every process of the VM: whatever runs in its namespace or its containers', and its Docker.
    inodes = set()
    for name in [vm.ns, *handles]:
        try:
            inodes.add(os.stat(f"/run/netns/{name}").st_ino)
        except OSError:
            continue
    pids = set(_pids_in_netns(inodes))
    if n.kind == "router" and lab.state.containers == "docker":
        pids |= _docker_pids(node, lab.state_dir)
        if node in lab.state.dockerd:
            pids.add(lab.state.dockerd[node])
    pids = {p for p in pids if p != os.getpid() and os.path.exists(f"/proc/{p}")}
    _kill(sorted(pids), signal.SIGKILL)
    alive = _wait_gone(sorted(pids), 10)
    if alive:
        raise LabError(f"power-off of {node}: processes {alive} did not die")
    # 2. /run is a tmpfs: the container namespace handles and Docker's runtime state are gone after a reboot.
    removed_handles = []
    for h in handles:
        if os.path.exists(f"/run/netns/{h}"):
            sh.run(["ip", "netns", "delete", h], check=False)
            removed_handles.append(h)
    if n.kind == "router" and lab.state.containers == "docker":
        d = node_dir(node, lab.state_dir)
        shutil.rmtree(d / "run-docker", ignore_errors=True)
        for f in ("docker.sock", "docker.pid"):
            (d / f).unlink(missing_ok=True)
        lab.state.dockerd.pop(node, None)
        save(lab.state, lab.state_dir)
    # 3. The kernel's network state: every link that is not a NIC, addresses, routes, IPsec, firewall, sysctls.
    nics = [nic.name for nic in vm.nics]
    removed = node_script_links(_link_names(sh, vm.ns), nics)
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
    defaults = _probe_defaults(sh)
    values = [f"{k}={defaults[k]}" for k in NODE_SYSCTLS]
    for nic in nics:
        values += [f"{k.format(nic=nic)}={defaults[NIC_SYSCTL_DEFAULTS[k]]}" for k in NIC_SYSCTLS]
    sh.ns(vm.ns, ["sysctl", "-qw", *values])
    left = {
        "links": _link_names(sh, vm.ns),
        "addresses": global_addresses(sh, vm.ns),
        "handles": [h for h in handles if os.path.exists(f"/run/netns/{h}")],
    }
    took = time.monotonic() - started
    out(f"{node}: powered off in {took:.1f} s ({len(pids)} processes killed, {len(removed)} links removed; NICs {', '.join(nics)} down)")
    return PowerOff(len(pids), removed, removed_handles, left, took)


def global_addresses(sh: Shell, ns: str) -> dict[str, list[str]]:
    doc = json.loads(sh.run(["ip", "-n", ns, "-j", "addr", "show"], timeout=20).stdout or "[]")
    return {
        link["ifname"]: [f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", []) if a.get("scope") == "global"] for link in doc
    }


def platform_up(lab: Lab, vm: VmSpec) -> None:
    """What the platform does at boot before any unit: NICs up with their DHCP/metadata addresses and default
    route (the same as `lab up` built), the image's firewall rules."""
    cmds = []
    for nic in vm.nics:
        if nic.address:
            cmds.append(f"addr add {nic.address} dev {nic.name}")
        cmds.append(f"link set {nic.name} up")
    cmds.append(f"route add default via {vm.default_gateway}")
    lab.sh.batch(vm.ns, cmds)
    if vm.host_firewall:
        for chain, *rule in OCI_IMAGE_IPTABLES:
            lab.sh.ns(vm.ns, ["iptables", "-w", "-A", chain, *rule])


def start_docker(lab: Lab, node: str) -> float:
    """docker.service: the router's daemon (same data root: its containers restart by their restart policy)."""
    started = time.monotonic()
    pid = nodes.start_dockerd(lab.layout.vm(node).ns, node, lab.state_dir)
    lab.state.dockerd[node] = pid
    save(lab.state, lab.state_dir)
    nodes.wait_dockerd(lab.sh, node, lab.state_dir, pid)
    return time.monotonic() - started


def payload(lab: Lab, node: str) -> str:
    """The node's rendered payload (what `lab up` applies), after checking that the unit installed on the node's
    disk runs the same command: a reboot runs what is on the disk."""
    import shlex

    from cloudinit.render import UNIT_PATH, unit_exec_start
    from lab.topology import map_path

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


def boot(lab: Lab, node: str, text: str, before_command: Callable[[], None] | None = None, out: Out = print) -> Boot:
    """Power-on: the platform's part, then the unit's ExecStart (nodes.apply, as `lab up` runs it)."""
    vm = lab.layout.vm(node)
    t = time.monotonic()
    platform_up(lab, vm)
    platform_s = time.monotonic() - t
    docker_s = None
    if vm.kind == "router" and lab.state.containers == "docker":
        docker_s = start_docker(lab, node)
    if before_command is not None:
        before_command()
    started = time.time()
    result = nodes.apply(lab.sh, vm.ns, node, text, lab.state_dir, vm.kind == "router", lab.state.containers)  # type: ignore[arg-type]
    out(
        f"{node}: powered on (NICs {platform_s:.2f} s"
        + ("" if docker_s is None else f", docker.service {docker_s:.2f} s")
        + f"), boot command {'ok' if result.ok else 'FAILED'} in {result.seconds:.2f} s ({result.changes} changes)"
    )
    return Boot(platform_s, docker_s, started, result)


# --------------------------------------------------------------------------- what must not change elsewhere


def fingerprint(lab: Lab, skip: str) -> dict[str, Any]:
    """Every other node's links (name, ifindex) and addresses, and every other router's container IDs and pids:
    a fault on one node must not make anything else change."""
    out: dict[str, Any] = {}
    for vm in lab.layout.vms:
        if vm.node == skip:
            continue
        doc = json.loads(lab.sh.run(["ip", "-n", vm.ns, "-j", "addr", "show"], timeout=20).stdout or "[]")
        out[vm.node] = sorted(
            f"{link['ifname']}#{link['ifindex']} " + ",".join(sorted(f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])))
            for link in doc
        )
        if vm.kind == "router" and lab.state.containers == "docker":
            env = nodes.docker_env(vm.node, lab.state_dir)
            ids = lab.sh.run(["docker", "ps", "-aq", "--no-trunc"], env=env, check=False, timeout=30).stdout.split()
            if ids:
                proc = lab.sh.run(
                    ["docker", "inspect", "--format", "{{.Name}} {{.Id}} {{.State.Pid}}", *ids], env=env, check=False, timeout=30
                )
                out[f"{vm.node} containers"] = sorted(proc.stdout.split("\n"))
    return out


def changed_elsewhere(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


# --------------------------------------------------------------------------- full check until it passes


def check_until_pass(lab_results: Path, stem: str, t0: float, out: Out) -> dict[str, Any]:
    """Full check matrix right away, again (up to CHECK_ATTEMPTS) if it fails; seconds from t0 to the pass."""
    runs = []
    pairs = 0
    for i in range(CHECK_ATTEMPTS):
        res = check(lab_results, stem=stem, out=lambda _m: None)
        failed = [r for r in res.results if not r.ok]
        runs.append(
            {
                "ok": res.ok,
                "seconds": round(res.seconds, 2),
                "failed_pairs": len(failed),
                "failed_probes": [p.name for p in res.probes if not p.ok],
            }
        )
        passed = sum(r.ok for r in res.results)
        out(
            f"check {i + 1}: {passed}/{len(res.results)} pings, {sum(p.ok for p in res.probes)}/{len(res.probes)} probes in {res.seconds:.1f} s"
        )
        if res.ok:
            return {"ok": True, "passed_after_s": round(time.time() - t0, 2), "runs": runs, "pairs": len(res.results)}
        pairs = len(res.results)
    return {"ok": False, "passed_after_s": None, "runs": runs, "pairs": pairs}


# --------------------------------------------------------------------------- reboot


def resolve_node(lab: Lab, node: str) -> Node:
    try:
        return lab.plan.node(node)
    except KeyError:
        raise LabError(f"no node {node!r} in the lab (nodes: {', '.join(n.name for n in lab.plan.nodes)})") from None


def _write(results_dir: Path, stem: str, doc: dict[str, Any], probes: list[Probe]) -> list[Path]:
    results_dir.mkdir(parents=True, exist_ok=True)
    files = [results_dir / f"{stem}.json", results_dir / f"{stem}.xml"]
    files[0].write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    files[1].write_text(to_junit([], probes), encoding="utf-8")
    return files


@dataclass
class FaultResult:
    doc: dict[str, Any]
    probes: list[Probe]
    files: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.probes)


def reboot(node: str, results_dir: Path, state_dir: Path = STATE_DIR, out: Out = print, full_check: bool = True) -> FaultResult:
    lab = Lab(state_dir)
    n = resolve_node(lab, node)
    text = payload(lab, node)
    observer, targets = recovery_probe(lab.plan, node)
    kind = "hub router" if n.kind == "router" and n.role == "hub" else f"{n.role} router" if n.kind == "router" else "client"
    out(f"reboot {node} ({kind}); recovery seen from {observer}: {', '.join(t.label for t in targets)}")
    before = fingerprint(lab, node)
    off = power_off(lab, node, out)
    eps = {e.name: e for e in endpoints(lab.plan)}
    logs = state_dir / "faults" / f"reboot-{node}"
    pingers: list[Pinger] = []

    def start_pingers() -> None:
        pingers.extend(Pinger(lab, eps[observer], t, logs / f"{i}.log") for i, t in enumerate(targets))

    try:
        b = boot(lab, node, text, before_command=start_pingers, out=out)
        per_target = wait_replies(pingers, b.started, RECOVERY_TIMEOUT)
    finally:
        stop_all(pingers)
    rec = summarise_recovery(per_target)
    out(
        f"{node}: reachable again {rec['all_s']} s after the boot command started (first reply {rec['first_s']} s; "
        + ", ".join(f"{k} {v}" for k, v in per_target.items())
        + ")"
    )
    ck = check_until_pass(results_dir, f"reboot-{node}-check", b.started, out) if full_check else None
    after = fingerprint(lab, node)
    elsewhere = changed_elsewhere(before, after)
    doc = {
        "fault": "reboot",
        "node": node,
        "kind": kind,
        "time": time.time(),
        "power_off": asdict(off),
        "platform_seconds": round(b.platform_seconds, 3),
        "docker_seconds": None if b.docker_seconds is None else round(b.docker_seconds, 3),
        "boot_command": {"ok": b.apply.ok, "seconds": round(b.apply.seconds, 3), "changes": b.apply.changes},
        "observer": observer,
        "recovery": rec,
        "check": ck,
        "changed_elsewhere": elsewhere,
    }
    probes = [
        Probe(
            "reboot",
            f"{node} powered off",
            not off.left["handles"] and node_script_links(off.left["links"], [x.name for x in lab.layout.vm(node).nics]) == [],
            json.dumps(off.left),
        ),
        Probe("reboot", f"{node} boot command", b.apply.ok, f"{b.apply.changes} changes in {b.apply.seconds:.2f} s"),
        Probe("reboot", f"{node} reachable again", rec["all_s"] is not None, json.dumps(per_target)),
        Probe("reboot", "nothing changed on any other node", not elsewhere, ", ".join(elsewhere) or "all other nodes unchanged"),
    ]
    if ck is not None:
        probes.append(Probe("reboot", "full check matrix passes", bool(ck["ok"]), json.dumps(ck["runs"])))
    lab.state.history.append(
        {"time": time.time(), "fault": "reboot", "node": node, "ok": all(p.ok for p in probes), "recovery_s": rec["all_s"]}
    )
    save(lab.state, state_dir)
    res = FaultResult(doc, probes)
    res.files = _write(results_dir, f"reboot-{node}", doc, probes)
    return res


# --------------------------------------------------------------------------- hub loss


def hub_loss(
    results_dir: Path, down_seconds: float = 5.0, state_dir: Path = STATE_DIR, out: Out = print, full_check: bool = True
) -> FaultResult:
    lab = Lab(state_dir)
    plan = lab.plan
    if plan.config.topology != "hub-and-spoke":
        raise LabError(f"hub-loss needs a hub: this lab is {plan.config.topology}")
    hub = plan.router(plan.hub)
    spokes = [s.name for s in plan.config.sites if s.name != plan.hub]
    text = payload(lab, hub.name)
    eps = endpoints(lab.plan)
    by_name = {e.name: e for e in eps}
    out(f"hub loss: {hub.name} powered off for >= {down_seconds:.0f} s; spokes {', '.join(spokes)}")
    before = fingerprint(lab, hub.name)
    logs = state_dir / "faults" / "hub-loss"
    off = power_off(lab, hub.name, out)
    down_at = time.monotonic()
    # Site-local availability while the hub is down: each spoke's client pings a container behind its router.
    local: list[Pinger] = []
    for s in spokes:
        r = plan.router(s)
        if not r.containers:
            continue
        c = by_name[r.containers[0].name]
        for fam, addr in ((4, c.ipv4), (6, c.ipv6)):
            local.append(
                Pinger(
                    lab,
                    by_name[plan.client(s).name],
                    Target(f"{plan.client(s).name} -> {c.name} IPv{fam}", addr),
                    logs / f"local-{s}-{fam}.log",
                )
            )
    try:
        t = time.monotonic()
        local_pairs = site_pairs(eps, spokes)
        local_res = reach(lab, local_pairs, attempts=3)
        cross_res = reach(lab, cross_site_pairs(eps, down=hub.name), attempts=2)
        out(
            f"while down: site-local {sum(r.ok for r in local_res)}/{len(local_res)} answered, "
            f"cross-site {sum(r.ok for r in cross_res)}/{len(cross_res)} answered (expected 0) in {time.monotonic() - t:.1f} s"
        )
        time.sleep(max(0.0, down_seconds - (time.monotonic() - down_at)))
    finally:
        local_logs = stop_all(local)
    down_for = time.monotonic() - down_at
    avail = {k: availability(v) for k, v in local_logs.items()}
    lost = {k: max(v.transmitted, max(v.replies, default=0)) - len(v.replies) for k, v in local_logs.items()}
    out("site-local availability while down: " + ", ".join(f"{k} {100 * (v or 0):.1f}%" for k, v in avail.items()))
    # Back up: cross-site probes start just before the boot command.
    a, b = spokes[0], spokes[1] if len(spokes) > 1 else spokes[0]
    observer = by_name[plan.client(a).name]
    targets = [Target(f"{hub.name} IPv4", hub.overlay_ipv4), Target(f"{hub.name} IPv6", hub.overlay_ipv6)]
    if hub.containers:
        hc = hub.containers[0]
        targets += [Target(f"{hc.name} IPv4", hc.ipv4.split("/")[0])]
    if b != a:
        far = plan.client(b)
        targets += [Target(f"{far.name} IPv4", far.overlay_ipv4), Target(f"{far.name} IPv6", far.overlay_ipv6)]
    cross: list[Pinger] = []

    def start_pingers() -> None:
        cross.extend(Pinger(lab, observer, t, logs / f"cross-{i}.log") for i, t in enumerate(targets))

    try:
        bt = boot(lab, hub.name, text, before_command=start_pingers, out=out)
        per_target = wait_replies(cross, bt.started, RECOVERY_TIMEOUT)
    finally:
        stop_all(cross)
    rec = summarise_recovery(per_target)
    out(f"cross-site from {observer.name}: first reply {rec['first_s']} s, every target {rec['all_s']} s after the boot command started")
    ck = check_until_pass(results_dir, "hub-loss-check", bt.started, out) if full_check else None
    if ck is not None:
        out(f"full matrix passed {ck['passed_after_s']} s after the boot command started" if ck["ok"] else "full matrix did NOT pass")
    after = fingerprint(lab, hub.name)
    elsewhere = changed_elsewhere(before, after)
    local_failed = [asdict(r) for r in local_res if not r.ok]
    cross_ok = [asdict(r) for r in cross_res if r.ok]
    doc = {
        "fault": "hub-loss",
        "hub": hub.name,
        "spokes": spokes,
        "time": time.time(),
        "down_seconds": round(down_for, 2),
        "power_off": asdict(off),
        "while_down": {
            "site_local": {"pairs": len(local_res), "answered": len(local_res) - len(local_failed), "failed": local_failed},
            "cross_site": {"pairs": len(cross_res), "answered": len(cross_ok), "answered_pairs": cross_ok[:50]},
            "availability": avail,
            "lost": lost,
            "interval_ms": POLL_INTERVAL * 1000,
        },
        "platform_seconds": round(bt.platform_seconds, 3),
        "docker_seconds": None if bt.docker_seconds is None else round(bt.docker_seconds, 3),
        "boot_command": {"ok": bt.apply.ok, "seconds": round(bt.apply.seconds, 3), "changes": bt.apply.changes},
        "observer": observer.name,
        "recovery": rec,
        "check": ck,
        "changed_elsewhere": elsewhere,
    }
    worst = min((v for v in avail.values() if v is not None), default=None)
    probes = [
        Probe(
            "hub-loss",
            "site-local pairs answer while the hub is down",
            not local_failed and bool(local_res),
            f"{len(local_res) - len(local_failed)}/{len(local_res)}",
        ),
        Probe(
            "hub-loss",
            "cross-site pairs fail while the hub is down",
            not cross_ok and bool(cross_res),
            f"{len(cross_ok)}/{len(cross_res)} answered",
        ),
        Probe("hub-loss", "site-local availability while down >= 99%", worst is not None and worst >= 0.99, json.dumps(avail)),
        Probe("hub-loss", "hub boot command", bt.apply.ok, f"{bt.apply.changes} changes in {bt.apply.seconds:.2f} s"),
        Probe("hub-loss", "cross-site reachable again", rec["all_s"] is not None, json.dumps(per_target)),
        Probe("hub-loss", "nothing changed on any other node", not elsewhere, ", ".join(elsewhere) or "all other nodes unchanged"),
    ]
    if ck is not None:
        probes.append(Probe("hub-loss", "full check matrix passes", bool(ck["ok"]), json.dumps(ck["runs"])))
    lab.state.history.append(
        {"time": time.time(), "fault": "hub-loss", "hub": hub.name, "ok": all(p.ok for p in probes), "recovery_s": rec["all_s"]}
    )
    save(lab.state, state_dir)
    res = FaultResult(doc, probes)
    res.files = _write(results_dir, "hub-loss", doc, probes)
    return res


# --------------------------------------------------------------------------- CLI entry points


def _print_probes(res: FaultResult) -> None:
    for p in res.probes:
        print(f"{'PASS' if p.ok else 'FAIL'} {p.suite}: {p.name}" + ("" if p.ok else f": {p.detail[:400]}"))
    print(f"results: {', '.join(str(f) for f in res.files)}")


def run_reboot(node: str, results: Path, full_check: bool = True) -> int:
    require_root("reboot")
    res = reboot(node, results, full_check=full_check)
    d = res.doc
    print(
        f"\n{node}: boot command {d['boot_command']['seconds']:.2f} s; reachable again {d['recovery']['all_s']} s after it started"
        + ("" if d["check"] is None else f"; full matrix {'passed' if d['check']['ok'] else 'FAILED'}")
    )
    _print_probes(res)
    return 0 if res.ok else 1


def run_hub_loss(results: Path, down_seconds: float, full_check: bool = True) -> int:
    require_root("hub-loss")
    res = hub_loss(results, down_seconds, full_check=full_check)
    d = res.doc
    wd = d["while_down"]
    print(
        f"\nhub {d['hub']} down {d['down_seconds']} s: site-local {wd['site_local']['answered']}/{wd['site_local']['pairs']}, "
        f"cross-site {wd['cross_site']['answered']}/{wd['cross_site']['pairs']} answered; availability "
        + ", ".join(f"{100 * (v or 0):.1f}%" for v in wd["availability"].values())
        + f"\nback: boot command {d['boot_command']['seconds']:.2f} s, first cross-site reply {d['recovery']['first_s']} s, "
        f"all {d['recovery']['all_s']} s" + ("" if d["check"] is None else f", full matrix passed after {d['check']['passed_after_s']} s")
    )
    _print_probes(res)
    return 0 if res.ok else 1
