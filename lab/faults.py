"""Faults in a running lab: reboot one node, lose the hub and bring it back.

A node is "rebooted" the way a VM is (lab.power, the path `lab up` boots every VM by): power-off takes down
everything that lives in the running kernel and in /run, while the VM's NICs and its disk stay; power-on is what
the platform does before the unit runs (NICs, image firewall, docker.service), then the payload unit's ExecStart
runs, as `lab up` runs it, and nothing else. The node script must bring the overlay back on its own: the full
check matrix afterwards proves it did (run again up to CHECK_ATTEMPTS times; the results say whether the first
run passed and how many it took).

Recovery is timed from the start of the boot command with ~50 ms pings from another site's node to the rebooted
node's overlay addresses (and to a container behind a router, and through a hub); the figures include the
observer re-resolving the neighbour (ARP/ND retries every second while a target is down), as a real host would.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lab import nodes
from lab.check import Endpoint, Lab, check, endpoints
from lab.power import boot, node_script_links, payload_on_disk, power_off
from lab.probes import Pinger, PingLog, ping_many
from lab.report import Probe, to_junit
from lab.state import STATE_DIR, LabError, require_root, save
from lab.underlay import drop_on_internet, site_matches
from multicloud_overlay.overlay.plan import BRIDGE, Node, Plan

Out = Callable[[str], None]

POLL_INTERVAL = 0.05
"""Seconds between the recovery/availability pings (iputils ping -i)."""
RECOVERY_TIMEOUT = 60.0
CHECK_ATTEMPTS = 3
"""Full check runs after a recovery before the fault counts as not healed (the first one is expected to pass)."""


# --------------------------------------------------------------------------- pure helpers


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


def availability_text(avail: dict[str, float | None]) -> str:
    """Per pinged pair, the share of its pings answered, labelled: `gcp-client -> gcp-c1 IPv4 99.8%`."""
    if not avail:
        return "no site-local pair pinged (no spoke router has containers)"
    return ", ".join(f"{pair} {'no ping sent' if v is None else f'{100 * v:.1f}%'}" for pair, v in avail.items())


def summarise_recovery(per_target: dict[str, float | None]) -> dict[str, Any]:
    values = list(per_target.values())
    return {
        "per_target_s": per_target,
        "first_s": min((v for v in values if v is not None), default=None),
        "all_s": None if not values or any(v is None for v in values) else max(v for v in values if v is not None),
    }


# --------------------------------------------------------------------------- pingers


def pinger(lab: Lab, src: Endpoint, target: Target, log_path: Path) -> Pinger:
    """A background ping every POLL_INTERVAL from an endpoint to one target, logged to a file."""
    return Pinger(target.address, lab.endpoint_ns(src), log_path, POLL_INTERVAL, label=target.label)


def stop_all(pingers: Sequence[Pinger]) -> dict[str, PingLog]:
    return {p.label: p.stop() for p in pingers}


def wait_replies(pingers: Sequence[Pinger], t0: float, timeout: float) -> dict[str, float | None]:
    """Poll the pingers' logs until every target answered after t0 (or timeout); seconds from t0 per target."""
    deadline = time.monotonic() + timeout
    got: dict[str, float | None] = {p.label: None for p in pingers}
    while True:
        for p in pingers:
            if got[p.label] is None:
                got[p.label] = first_reply_after(p.log(), t0)
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
    by_src: dict[str, tuple[Endpoint, dict[str, tuple[str, int]]]] = {}
    for a, b in pairs:
        _, targets = by_src.setdefault(a.name, (a, {}))
        targets[b.ipv4] = (b.name, 4)
        targets[b.ipv6] = (b.name, 6)

    def one(item: tuple[Endpoint, dict[str, tuple[str, int]]]) -> list[PairResult]:
        src, targets = item
        got = ping_many(list(targets), lab.endpoint_ns(src), attempts=attempts, wait=wait, run=lab.run)
        return [PairResult(src.name, name, fam, t, t in got and got[t].ok) for t, (name, fam) in targets.items()]

    with ThreadPoolExecutor(max_workers=6) as pool:
        return [r for rs in pool.map(one, list(by_src.values())) for r in rs]


# --------------------------------------------------------------------------- what must not change elsewhere


def fingerprint(lab: Lab, skip: str) -> dict[str, Any]:
    """Every other node's links (name, ifindex) and addresses, and every other router's container IDs and pids:
    a fault on one node must not make anything else change."""
    out: dict[str, Any] = {}
    for vm in lab.layout.hosts:
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


def check_until_pass(lab_results: Path, stem: str, t0: float, out: Out, state_dir: Path = STATE_DIR) -> dict[str, Any]:
    """Full check matrix right away, again (up to CHECK_ATTEMPTS) if it fails; seconds from t0 to the pass.

    first_try_ok says whether the first run passed and tries how many runs it took (None: none passed); every run
    is in runs, each failed one with its failed pairs and probes."""
    runs: list[dict[str, Any]] = []
    pairs = 0
    for i in range(CHECK_ATTEMPTS):
        res = check(lab_results, state_dir=state_dir, stem=stem, out=lambda _m: None)
        failed = [r for r in res.results if not r.ok]
        runs.append(
            {
                "ok": res.ok,
                "seconds": round(res.seconds, 2),
                "failed_pairs": len(failed),
                "failed": [f"{r.src} -> {r.dst} IPv{r.family} ({r.target})" for r in failed][:50],
                "failed_probes": [p.name for p in res.probes if not p.ok],
            }
        )
        passed = sum(r.ok for r in res.results)
        out(
            f"check {i + 1}: {passed}/{len(res.results)} pings, {sum(p.ok for p in res.probes)}/{len(res.probes)} probes in {res.seconds:.1f} s"
        )
        if res.ok:
            return {
                "ok": True,
                "first_try_ok": i == 0,
                "tries": i + 1,
                "passed_after_s": round(time.time() - t0, 2),
                "runs": runs,
                "pairs": len(res.results),
            }
        pairs = len(res.results)
    return {"ok": False, "first_try_ok": False, "tries": None, "passed_after_s": None, "runs": runs, "pairs": pairs}


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
    text = payload_on_disk(lab, node)
    observer, targets = recovery_probe(lab.plan, node)
    kind = "hub router" if n.kind == "router" and n.role == "hub" else f"{n.role} router" if n.kind == "router" else "client"
    out(f"reboot {node} ({kind}); recovery seen from {observer}: {', '.join(t.label for t in targets)}")
    before = fingerprint(lab, node)
    off = power_off(lab, node, out)
    eps = {e.name: e for e in endpoints(lab.plan)}
    logs = state_dir / "faults" / f"reboot-{node}"
    pingers: list[Pinger] = []

    def start_pingers() -> None:
        pingers.extend(pinger(lab, eps[observer], t, logs / f"{i}.log") for i, t in enumerate(targets))

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
    ck = check_until_pass(results_dir, f"reboot-{node}-check", b.started, out, state_dir) if full_check else None
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
            not off.left["handles"] and node_script_links(off.left["links"], [x.name for x in lab.layout.host(node).nics]) == [],
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
    text = payload_on_disk(lab, hub.name)
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
                pinger(
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
    out(f"site-local availability while down (pings answered, every {POLL_INTERVAL * 1000:.0f} ms): {availability_text(avail)}")
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
        cross.extend(pinger(lab, observer, t, logs / f"cross-{i}.log") for i, t in enumerate(targets))

    try:
        bt = boot(lab, hub.name, text, before_command=start_pingers, out=out)
        per_target = wait_replies(cross, bt.started, RECOVERY_TIMEOUT)
    finally:
        stop_all(cross)
    rec = summarise_recovery(per_target)
    out(f"cross-site from {observer.name}: first reply {rec['first_s']} s, every target {rec['all_s']} s after the boot command started")
    ck = check_until_pass(results_dir, "hub-loss-check", bt.started, out, state_dir) if full_check else None
    if ck is not None:
        out(f"full matrix {check_outcome(ck)}")
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


def gaps(log: PingLog) -> list[tuple[int, int]]:
    """Runs of echo requests that got no reply: (first icmp_seq, how many), in the order they were sent."""
    out: list[tuple[int, int]] = []
    first, n = 0, 0
    for seq in range(1, log.transmitted + 1):
        if seq in log.replies:
            if n:
                out.append((first, n))
            n = 0
        else:
            first, n = (seq, 1) if n == 0 else (first, n + 1)
    if n:
        out.append((first, n))
    return out


def outage_around(log: PingLog, t: float, window: float = 3.0) -> float:
    """The longest silence between two consecutive replies of which the first came between 0.5 s before wall-clock
    time t and `window` s after it: an upper bound of the outage a fault at t caused (the pings' own spacing apart).
    Infinite if no reply came after it at all."""
    ts = sorted(log.replies.values())
    if not ts or ts[-1] < t:
        return float("inf")
    longest = 0.0
    for prev, nxt in itertools.pairwise(ts):
        if t - 0.5 <= prev <= t + window:
            longest = max(longest, nxt - prev)
    return round(longest, 3)


def cut_off(lab: Lab, site: str, on: bool) -> None:
    """Drop (or stop dropping) every datagram to or from a site's public address on the lab's internet."""
    drop_on_internet(lab.sh, lab.layout.internet_ns, site_matches(dict(lab.layout.public_ips)[site]), on)


def bridge_frames(lab: Lab, node: str) -> int:
    """Frames that entered a node's overlay bridge: the sum of its ports' receive counters (every tunnel, the
    client's, each container's veth, BFD's probe). A loop or a broadcast storm makes it climb by the hundred
    thousand a second."""
    proc = lab.sh.ns(lab.node_ns(node), ["ip", "-s", "-j", "link", "show", "master", BRIDGE])
    return sum(int(link["stats64"]["rx"]["packets"]) for link in json.loads(proc.stdout or "[]"))


FRAME_SLACK_PER_SECOND = 100
"""Frames a second a bridge may take beyond the pings it forwards and BFD's: ARP, ND and the like."""


def frame_bound(pings: int, bfd_peers: int, seconds: float) -> int:
    """The most frames one bridge can take in a window with no loop: each ping (echo and reply) enters it at most
    once per direction, each BFD session sends 10 packets a second each way (100 ms), plus FRAME_SLACK_PER_SECOND."""
    return 2 * pings + 2 * 10 * bfd_peers * round(seconds + 1) + FRAME_SLACK_PER_SECOND * round(seconds + 1)


def sent_between(log: PingLog, t0: float, t1: float) -> range:
    """The icmp_seq numbers sent between wall-clock times t0 and t1, as the replies around them bound them: after the
    last echo answered before t0, before the first answered after t1."""
    lo = max((q for q, ts in log.replies.items() if ts < t0), default=0)
    hi = min((q for q, ts in log.replies.items() if ts > t1), default=log.transmitted + 1)
    return range(lo + 1, hi)


def lost_between(log: PingLog, t0: float, t1: float) -> int:
    return sum(1 for q in sent_between(log, t0, t1) if q not in log.replies)


def _lose_router(lab: Lab, site: str, down_seconds: float, out: Out) -> dict[str, Any]:
    """Cut a router off the internet, power it off (a VM that dies stops forwarding and answering BFD at the same
    instant), keep it down, boot it again; the frames every other router's bridge took meanwhile."""
    node = lab.plan.router(site).name
    others = [r.name for r in lab.plan.routers() if r.name != node]
    before = {r: bridge_frames(lab, r) for r in others}
    t0 = time.time()
    cut_off(lab, site, True)
    try:
        off = power_off(lab, node, out)
    finally:
        cut_off(lab, site, False)
    time.sleep(down_seconds)
    back_at = time.time()
    bt = boot(lab, node, payload_on_disk(lab, node), out=out)
    time.sleep(4.0)
    frames = {r: bridge_frames(lab, r) - before[r] for r in others}
    return {
        "node": node,
        "t0": t0,
        "back_at": back_at,
        "t1": time.time(),
        "power_off_seconds": round(off.seconds, 3),
        "boot_command": {"ok": bt.apply.ok, "seconds": round(bt.apply.seconds, 3), "changes": bt.apply.changes},
        "bridge_frames": frames,
    }


def _window(phase: dict[str, Any], logs: dict[str, PingLog], bfd_peers: int) -> dict[str, Any]:
    """A loss's figures once the pings have stopped: pings sent and lost in its window, and the frame bound."""
    t0, t1 = phase["t0"], phase["t1"]
    pings = sum(len(sent_between(log, t0, t1)) for log in logs.values())
    return {
        **{k: v for k, v in phase.items() if k not in ("t0", "t1", "back_at")},
        "window_s": round(t1 - t0, 1),
        "pings": pings,
        "lost": {label: lost_between(log, t0, t1) for label, log in logs.items()},
        "frame_bound": frame_bound(pings, bfd_peers, t1 - t0),
    }


def two_hub_loss(results_dir: Path, down_seconds: float = 5.0, state_dir: Path = STATE_DIR, out: Out = print) -> FaultResult:
    """In a two-hub lab, the standby lost and back, then the hub lost and back, with pings every 10 ms between two
    spokes' clients (which cross a hub) and to the standby's client.

    - Standby: nothing moves. The spokes' path through the hub loses nothing; the standby's client is unreachable
      only while it is down.
    - Hub: the spokes fail over to the standby (BFD), and move back once the hub returns; each outage is measured.
    Duplicate replies (a frame delivered twice, or a loop) are counted all through, and every router that stays up
    has its bridge's frame counters read around each loss: a loop would exceed frame_bound many times over."""
    lab = Lab(state_dir)
    plan = lab.plan
    if plan.standby is None:
        raise LabError("hub-loss --two-hubs needs a standby hub: lab up --standby-hub SITE")
    hub = plan.router(plan.hub)
    spokes = [s.name for s in plan.config.sites if s.name not in (plan.hub, plan.standby)]
    if len(spokes) < 2:
        raise LabError("hub-loss --two-hubs needs two spokes")
    eps = {e.name: e for e in endpoints(plan)}
    a, b = spokes[0], spokes[1]
    observer = eps[plan.client(a).name]
    far, standby_client = plan.client(b), plan.client(plan.standby)
    targets = [
        Target(f"{far.name} IPv4", far.overlay_ipv4),
        Target(f"{far.name} IPv6", far.overlay_ipv6),
        Target(f"{standby_client.name} IPv4", standby_client.overlay_ipv4),
    ]
    interval = 0.01
    logs = state_dir / "faults" / "hub-loss-two-hubs"
    out(f"two hubs: the standby, then the hub, each powered off for {down_seconds:.0f} s; pings every {interval * 1000:.0f} ms from {observer.name}")
    pingers = [Pinger(t.address, lab.endpoint_ns(observer), logs / f"{i}.log", interval, label=t.label) for i, t in enumerate(targets)]
    try:
        time.sleep(2.0)
        standby = _lose_router(lab, plan.standby, down_seconds, out)
        time.sleep(2.0)
        lost = _lose_router(lab, plan.hub, down_seconds, out)
    finally:
        results = stop_all(pingers)
    spoke_pair = [t.label for t in targets if t.label.startswith(far.name)]
    peers = len(plan.config.sites) - 1  # BFD sessions of the hub, the most any router has
    doc: dict[str, Any] = {
        "fault": "hub-loss-two-hubs",
        "hub": hub.name,
        "standby": plan.router(plan.standby).name,
        "observer": observer.name,
        "interval_ms": interval * 1000,
        "down_seconds": down_seconds,
        "standby_loss": _window(standby, results, peers),
        "hub_loss": _window(lost, results, peers),
        "targets": {
            label: {
                "sent": log.transmitted,
                "answered": len(log.replies),
                "duplicates": log.duplicates,
                "failover_outage_s": outage_around(log, lost["t0"]),
                "failback_outage_s": outage_around(log, lost["back_at"], 3.0 + lost["boot_command"]["seconds"]),
                "gaps": [(f, n) for f, n in gaps(log) if n > 1][:20],
            }
            for label, log in results.items()
        },
    }
    worst_over = max(v["failover_outage_s"] for v in doc["targets"].values())
    worst_back = max(v["failback_outage_s"] for v in doc["targets"].values())
    dups = sum(v["duplicates"] for v in doc["targets"].values())
    sb, hl = doc["standby_loss"], doc["hub_loss"]
    quiet = sum(sb["lost"][label] for label in spoke_pair)
    storms = {phase: {r: n for r, n in d["bridge_frames"].items() if n > d["frame_bound"]} for phase, d in (("standby", sb), ("hub", hl))}
    out(
        f"standby lost: {quiet} of the spokes' pings lost; hub lost: failover {worst_over} s, failback {worst_back} s; "
        f"duplicate replies: {dups}; frames per bridge: standby lost {sb['bridge_frames']} (bound {sb['frame_bound']}), "
        f"hub lost {hl['bridge_frames']} (bound {hl['frame_bound']})"
    )
    probes = [
        Probe("hub-loss-two-hubs", "the standby's loss and return move nothing: no ping between the spokes is lost", quiet == 0, json.dumps(sb)),
        Probe("hub-loss-two-hubs", "cross-site traffic moves to the standby in under 1 s", worst_over < 1.0, json.dumps(doc["targets"])),
        Probe("hub-loss-two-hubs", "and back to the hub in under 1 s once it returns", worst_back < 1.0, json.dumps(doc["targets"])),
        Probe("hub-loss-two-hubs", "no duplicate reply (no frame delivered twice, no loop)", dups == 0, f"{dups} duplicates"),
        Probe("hub-loss-two-hubs", "no bridge takes more frames than the pings and BFD explain (no loop, no storm)", not any(storms.values()), json.dumps(storms)),
        Probe("hub-loss-two-hubs", "boot commands", sb["boot_command"]["ok"] and hl["boot_command"]["ok"], json.dumps([sb["boot_command"], hl["boot_command"]])),
    ]
    res = FaultResult(doc, probes)
    res.files = _write(results_dir, "hub-loss-two-hubs", doc, probes)
    return res


# --------------------------------------------------------------------------- CLI entry points


def _print_probes(res: FaultResult) -> None:
    for p in res.probes:
        print(f"{'PASS' if p.ok else 'FAIL'} {p.suite}: {p.name}" + ("" if p.ok else f": {p.detail[:400]}"))
    print(f"results: {', '.join(str(f) for f in res.files)}")


def check_outcome(ck: dict[str, Any]) -> str:
    """How the full check went, in words (from check_until_pass)."""
    if not ck["ok"]:
        return f"FAILED {len(ck['runs'])} tries"
    return f"passed {ck['passed_after_s']} s after the boot command started, " + (
        "first try" if ck["first_try_ok"] else f"try {ck['tries']}"
    )


def run_reboot(node: str, results: Path, full_check: bool = True) -> int:
    require_root("reboot")
    res = reboot(node, results, full_check=full_check)
    d = res.doc
    print(
        f"\n{node}: boot command {d['boot_command']['seconds']:.2f} s; reachable again {d['recovery']['all_s']} s after it started"
        + ("" if d["check"] is None else f"; full matrix {check_outcome(d['check'])}")
    )
    _print_probes(res)
    return 0 if res.ok else 1


def run_hub_loss(results: Path, down_seconds: float, full_check: bool = True) -> int:
    require_root("hub-loss")
    if Lab(STATE_DIR).plan.standby is not None:
        res = two_hub_loss(results, down_seconds)
        _print_probes(res)
        return 0 if res.ok else 1
    res = hub_loss(results, down_seconds, full_check=full_check)
    d = res.doc
    wd = d["while_down"]
    print(
        f"\nhub {d['hub']} down {d['down_seconds']} s: site-local {wd['site_local']['answered']}/{wd['site_local']['pairs']}, "
        f"cross-site {wd['cross_site']['answered']}/{wd['cross_site']['pairs']} answered; "
        f"site-local availability (pings answered): {availability_text(wd['availability'])}"
        + f"\nback: boot command {d['boot_command']['seconds']:.2f} s, first cross-site reply {d['recovery']['first_s']} s, "
        f"all {d['recovery']['all_s']} s" + ("" if d["check"] is None else f", full matrix {check_outcome(d['check'])}")
    )
    _print_probes(res)
    return 0 if res.ok else 1
