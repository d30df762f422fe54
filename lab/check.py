"""check: every node and container pings every other over IPv4 and IPv6, MTU probes on a spoke-to-spoke path,
and proof that spoke-to-spoke traffic crosses the hub."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from lab.invocation import lab_command
from lab.probes import ping, ping_many
from lab.progress import Progress
from lab.report import PingResult, Probe, matrix_text, summary, write
from lab.shell import Shell
from lab.state import STATE_DIR, LabError, LabState, load, require_root
from lab.topology import Layout, build_layout
from multicloud_overlay.overlay.plan import Plan

ATTEMPTS = 3
SOURCES_IN_PARALLEL = 6
BURST = 100


@dataclass(frozen=True)
class Endpoint:
    name: str
    kind: str
    """router, client or container"""
    site: str
    ipv4: str
    ipv6: str
    router: str | None = None
    """The router a container runs on."""


def endpoints(plan: Plan) -> list[Endpoint]:
    out = []
    for n in plan.nodes:
        out.append(Endpoint(n.name, n.kind, n.site, n.overlay_ipv4, n.overlay_ipv6))
    for n in plan.routers():
        for c in n.containers:
            out.append(Endpoint(c.name, "container", n.site, c.ipv4.split("/")[0], c.ipv6.split("/")[0], router=n.name))
    return out


class Lab:
    """A running lab as seen from a new process."""

    def __init__(self, state_dir: Path = STATE_DIR) -> None:
        st = load(state_dir)
        if st is None:
            raise LabError(f"no lab is up: run `{lab_command('up', '--encryption', 'none')}` first")
        if st.phase != "up":
            raise LabError(f"the lab is {st.phase} (an up did not finish): run `{lab_command('down')}`, then `up` again")
        self.state: LabState = st
        self.state_dir = state_dir
        self.plan = st.plan()
        self.layout: Layout = build_layout(self.plan, st.prefix)
        self.sh = Shell(state_dir / "commands.log")

    def endpoint_ns(self, ep: Endpoint) -> str:
        """Where commands of an endpoint run: a node's namespace, a container's (the handle the node script names
        after the container). Not `docker exec`: containers run without capabilities, and ping needs a raw socket
        (CAP_NET_RAW)."""
        return ep.name if ep.kind == "container" else self.node_ns(ep.name)

    def node_ns(self, node: str) -> str:
        return self.layout.host(node).ns

    def run(self, argv: list[str], timeout: float | None) -> subprocess.CompletedProcess[str]:
        """A lab.probes Run: the command through the lab's shell (logged), whatever its exit status."""
        return self.sh.run(argv, check=False, timeout=timeout)


def ping_matrix(lab: Lab, eps: Sequence[Endpoint], progress: Progress | None = None) -> list[PingResult]:
    """Every source pings all its targets at once, a few sources at a time. Pairs that fail get a second, calmer
    pass (one source at a time, longer wait): a slow machine (the kernel VM runs under TCG) or cold neighbour
    caches must not look like a broken overlay, while a real black hole fails both passes."""

    def from_source(src: Endpoint, targets: dict[str, tuple[str, int]], wait: int, done: int = 0) -> list[PingResult]:
        got = ping_many(list(targets), lab.endpoint_ns(src), attempts=ATTEMPTS, wait=wait, run=lab.run, timeout=120 + 30 * wait)
        return [
            PingResult(src.name, name, fam, t, t in got and got[t].ok, done + (got[t].attempts if t in got else ATTEMPTS))
            for t, (name, fam) in targets.items()
        ]

    def all_targets(src: Endpoint) -> dict[str, tuple[str, int]]:
        targets: dict[str, tuple[str, int]] = {}
        for dst in eps:
            if dst.name != src.name:
                targets[dst.ipv4] = (dst.name, 4)
                targets[dst.ipv6] = (dst.name, 6)
        return targets

    done: list[str] = []

    def first_pass(src: Endpoint) -> list[PingResult]:
        got = from_source(src, all_targets(src), 1)
        done.append(src.name)
        if progress is not None:
            progress.status(f"ping matrix: {len(done)}/{len(eps)} sources done ({src.name})")
        return got

    with ThreadPoolExecutor(max_workers=SOURCES_IN_PARALLEL) as pool:
        results = [r for rs in pool.map(first_pass, eps) for r in rs]
    failed = [r for r in results if not r.ok]
    if not failed:
        return results
    if progress is not None:
        progress.status(f"ping matrix: {len(failed)} pairs failed the first pass, trying them again")
    by_src = {e.name: e for e in eps}
    retry: dict[str, dict[str, tuple[str, int]]] = {}
    for r in failed:
        retry.setdefault(r.src, {})[r.target] = (r.dst, r.family)
    second = {(r.src, r.target): r for src, targets in retry.items() for r in from_source(by_src[src], targets, 2, ATTEMPTS)}
    return [second.get((r.src, r.target), r) for r in results]


def spoke_pair(plan: Plan) -> tuple[str, str]:
    """Two sites whose traffic crosses the internet (via the hub if there is one: two spokes, not the standby hub,
    which spokes reach directly), narrowest underlay first."""
    cfg = plan.config
    hubs = (plan.hub, plan.standby)
    candidates = [s for s in cfg.sites if s.name not in hubs] if cfg.topology == "hub-and-spoke" else list(cfg.sites)
    if len(candidates) < 2:
        candidates = list(cfg.sites)
    ordered = sorted(candidates, key=lambda s: (s.underlay_mtu, s.site_id))
    return ordered[0].name, ordered[1].name


def mtu_probes(lab: Lab) -> list[Probe]:
    plan = lab.plan
    a, b = spoke_pair(plan)
    src, dst = plan.client(a), plan.client(b)
    ns = lab.node_ns(src.name)
    probes = []
    for fam, target in ((4, dst.overlay_ipv4), (6, dst.overlay_ipv6)):
        for size, expect in ((plan.mtu, True), (plan.mtu + 1, False)):
            echo = ping(target, ns, count=3, interval=0.2, wait=1, packet_size=size, df=True, run=lab.run, timeout=30)
            answered = echo.ok
            detail = (
                f"{src.name} -> {dst.name} IPv{fam}: {size}-byte packet with don't-fragment "
                f"{'answered' if answered else 'not answered'} (expected {'answer' if expect else 'no answer'}; overlay MTU {plan.mtu})"
                + ("" if answered == expect else f": {echo.last_line}")
            )
            probes.append(
                Probe(
                    "mtu",
                    f"DF {size} bytes IPv{fam} {src.name} -> {dst.name}",
                    answered == expect,
                    detail,
                    {"size": size, "family": fam, "answered": answered, "expected": expect},
                )
            )
    return probes


def tunnel_counters(lab: Lab, node: str, devs: Sequence[str]) -> dict[str, tuple[int, int]]:
    proc = lab.sh.run(["ip", "-n", lab.node_ns(node), "-s", "-j", "link", "show"], timeout=20)
    out = {}
    for link in json.loads(proc.stdout):
        if link["ifname"] in devs:
            stats = link.get("stats64", link.get("stats", {}))
            out[link["ifname"]] = (int(stats["rx"]["packets"]), int(stats["tx"]["packets"]))
    return out


def hub_transit(lab: Lab) -> list[Probe]:
    plan = lab.plan
    spokes = [s for s in plan.config.sites if s.name not in (plan.hub, plan.standby)]
    if plan.config.topology != "hub-and-spoke" or len(spokes) < 2:
        return []  # no spoke-to-spoke path: point-to-point, or a hub with a single spoke
    a, b = spoke_pair(plan)
    hub = plan.router(plan.hub)
    dev = {s: f"ovl-r{plan.config.site(s).site_id}" for s in (a, b)}
    before = tunnel_counters(lab, hub.name, list(dev.values()))
    src, dst = plan.client(a), plan.client(b)
    echo = ping(dst.overlay_ipv4, lab.node_ns(src.name), count=BURST, interval=0.005, wait=1, quiet=True, run=lab.run, timeout=60)
    after = tunnel_counters(lab, hub.name, list(dev.values()))
    delta = {d: (after[d][0] - before[d][0], after[d][1] - before[d][1]) for d in dev.values() if d in before and d in after}
    da, db = delta.get(dev[a], (0, 0)), delta.get(dev[b], (0, 0))
    ok = echo.ok and min(da[0], da[1], db[0], db[1]) >= BURST
    detail = (
        f"{BURST}-ping burst {src.name} -> {dst.name}: hub {hub.name} {dev[a]} ({a}) rx +{da[0]} tx +{da[1]}, "
        f"{dev[b]} ({b}) rx +{db[0]} tx +{db[1]} (each must rise by >= {BURST})"
    )
    return [
        Probe(
            "hub-transit",
            f"spoke {a} -> spoke {b} crosses hub {plan.hub}",
            ok,
            detail,
            {"hub": plan.hub, "spokes": [a, b], "delta": {k: {"rx": v[0], "tx": v[1]} for k, v in delta.items()}},
        )
    ]


# A tunnel of a router that a path does not cross may still carry the odd frame meanwhile (IPv6 neighbour and
# multicast listener traffic floods to every router): fewer than this many packets counts as "did not rise".
QUIET = 10


def direct_path(lab: Lab) -> list[Probe]:
    """Full mesh: two sites' clients talk over their routers' direct tunnel, and a third router's tunnels toward
    them stay quiet (the path does not cross it)."""
    plan = lab.plan
    if plan.config.topology != "full-mesh" or len(plan.config.sites) < 3:
        return []
    a, b = spoke_pair(plan)
    c = next(s.name for s in plan.config.sites if s.name not in (a, b))
    ids = {s: plan.config.site(s).site_id for s in (a, b, c)}
    direct, third = f"ovl-r{ids[b]}", [f"ovl-r{ids[a]}", f"ovl-r{ids[b]}"]
    before_a, before_c = tunnel_counters(lab, plan.router(a).name, [direct]), tunnel_counters(lab, plan.router(c).name, third)
    src, dst = plan.client(a), plan.client(b)
    echo = ping(dst.overlay_ipv4, lab.node_ns(src.name), count=BURST, interval=0.005, wait=1, quiet=True, run=lab.run, timeout=60)
    after_a, after_c = tunnel_counters(lab, plan.router(a).name, [direct]), tunnel_counters(lab, plan.router(c).name, third)
    da = tuple(x - y for x, y in zip(after_a.get(direct, (0, 0)), before_a.get(direct, (0, 0)), strict=True))
    dc = {d: tuple(x - y for x, y in zip(after_c.get(d, (0, 0)), before_c.get(d, (0, 0)), strict=True)) for d in third}
    ok = echo.ok and min(da) >= BURST and all(max(v) < QUIET for v in dc.values()) and len(after_c) == 2
    detail = (
        f"{BURST}-ping burst {src.name} -> {dst.name}: {plan.router(a).name} {direct} ({b}) rx +{da[0]} tx +{da[1]} (>= {BURST}); "
        f"third router {plan.router(c).name} "
        + ", ".join(f"{d} rx +{v[0]} tx +{v[1]}" for d, v in dc.items())
        + f" (each < {QUIET})"
    )
    data = {"sites": [a, b], "third": c, "direct": {"rx": da[0], "tx": da[1]}, "third_delta": {k: {"rx": v[0], "tx": v[1]} for k, v in dc.items()}}
    return [Probe("direct-path", f"{a} -> {b} takes the direct tunnel, not {c}", ok, detail, data)]


def no_loop(lab: Lab, count: int = 20) -> list[Probe]:
    """Full mesh: a broadcast from one client reaches every other router exactly once, through the tunnel from
    the sender's router, and no router passes it on to another (split horizon): no loop, no duplicate."""
    plan = lab.plan
    if plan.config.topology != "full-mesh" or len(plan.config.sites) < 3:
        return []
    a = spoke_pair(plan)[0]
    ida = plan.config.site(a).site_id
    others = [r for r in plan.routers() if r.site != a]
    ports = {r.name: [t.name for t in r.tunnels if t.via == "internet"] for r in others}
    before = {r.name: tunnel_counters(lab, r.name, ports[r.name]) for r in others}
    bcast = str(plan.config.overlay_ipv4.broadcast_address)
    src = plan.client(a)
    lab.run(["nsenter", f"--net=/run/netns/{lab.node_ns(src.name)}", "--", "ping", "-b", "-q", "-c", str(count), "-i", "0.01", "-W", "1", bcast], 60)
    time.sleep(0.5)
    after = {r.name: tunnel_counters(lab, r.name, ports[r.name]) for r in others}
    copies: dict[str, dict[str, int]] = {}
    for r in others:
        copies[r.name] = {d: after[r.name][d][0] - before[r.name][d][0] for d in ports[r.name] if d in after[r.name] and d in before[r.name]}
    from_sender = {n: c.get(f"ovl-r{ida}", 0) for n, c in copies.items()}
    via_others = {n: sum(v for d, v in c.items() if d != f"ovl-r{ida}") for n, c in copies.items()}
    ok = all(count <= v < count + QUIET for v in from_sender.values()) and all(v < QUIET for v in via_others.values())
    detail = (
        f"{count} broadcast pings from {src.name} to {bcast}: received from {plan.router(a).name}'s tunnel "
        + ", ".join(f"{n} +{v}" for n, v in from_sender.items())
        + f" (each {count}..{count + QUIET - 1}); through any other router's tunnel "
        + ", ".join(f"{n} +{v}" for n, v in via_others.items())
        + f" (each < {QUIET})"
    )
    return [Probe("no-loop", f"a broadcast from {a} reaches each router once", ok, detail, {"from_sender": from_sender, "via_others": via_others})]


@dataclass
class CheckResult:
    names: list[str]
    results: list[PingResult]
    probes: list[Probe]
    seconds: float
    files: list[Path]

    @property
    def ok(self) -> bool:
        return bool(summary(self.results, self.probes)["ok"])


def check(results_dir: Path, state_dir: Path = STATE_DIR, stem: str = "check", out=print) -> CheckResult:
    lab = Lab(state_dir)
    eps = endpoints(lab.plan)
    started = time.monotonic()
    progress = Progress(total=3, out=None if out is print else out)
    progress.note(
        f"check: {len(eps)} endpoints x {len(eps) - 1} x 2 families = {len(eps) * (len(eps) - 1) * 2} pings "
        f"(hub {lab.plan.hub}, {lab.plan.protocol}, {lab.plan.config.topology}, encryption {lab.plan.config.encryption})"
    )
    results = ping_matrix(lab, eps, progress)
    progress.step(f"ping matrix: {sum(r.ok for r in results)}/{len(results)} answered")
    probes = mtu_probes(lab)
    progress.step(f"MTU probes: {sum(p.ok for p in probes)}/{len(probes)} as expected")
    transit = hub_transit(lab)
    probes += transit
    progress.step(
        "hub transit: "
        + ("not applicable (no spoke-to-spoke path)" if not transit else "proven" if all(p.ok for p in transit) else "FAILED")
    )
    mesh = direct_path(lab) + no_loop(lab)
    probes += mesh
    if mesh:
        progress.note("full mesh: " + "; ".join(f"{p.suite} {'proven' if p.ok else 'FAILED'}" for p in mesh))
    progress.finish()
    took = time.monotonic() - started
    names = [e.name for e in eps]
    extra = {
        "stack": lab.state.stack,
        "hub": lab.plan.hub,
        "protocol": lab.plan.protocol,
        "topology": lab.plan.config.topology,
        "encryption": lab.plan.config.encryption,
        "mtu": lab.plan.mtu,
        "seconds": round(took, 2),
        "time": time.time(),
    }
    files = write(results_dir, stem, names, results, probes, extra, took)
    return CheckResult(names, results, probes, took, files)


def run_check(results_dir: Path, stem: str = "check") -> int:
    require_root("check")
    res = check(results_dir, stem=stem)
    print(matrix_text(res.names, res.results))
    for p in res.probes:
        print(f"{'PASS' if p.ok else 'FAIL'} {p.suite}: {p.detail}")
    s = summary(res.results, res.probes)
    failed = [r for r in res.results if not r.ok]
    for r in failed[:20]:
        print(f"FAIL {r.src} -> {r.dst} IPv{r.family} ({r.target})", file=sys.stderr)
    print(
        f"\n{s['passed']}/{s['pairs']} pings passed, {s['probes_passed']}/{s['probes']} probes passed in {res.seconds:.1f} s; "
        f"results: {', '.join(str(f) for f in res.files)}"
    )
    return 0 if res.ok else 1
