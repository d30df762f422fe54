"""swap: change the hub, protocol, topology and/or encryption of a running lab in place, the way the clouds get it (new node config
installed, the unit's command run again), while a 10 ms ping across the overlay measures the disruption."""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lab import nodes
from lab.check import Lab
from lab.invocation import lab_command
from lab.lifecycle import esp_message, esp_supported, geneve_message, geneve_supported, strongswan_installed, strongswan_message
from lab.nodes import push_stages
from lab.probes import Pinger, PingLog
from lab.report import Probe, to_junit
from lab.state import STATE_DIR, LabError, docker_host, lab_plan, load_raw, require_root, save
from multicloud_overlay.overlay.plan import Plan

INTERVAL = 0.01
SETTLE = 1.5


def disruption(log: PingLog, interval: float = INTERVAL, apply_started: float | None = None) -> dict[str, Any]:
    """Lost probes (not counting the still-unanswered tail when ping was stopped), the longest gap between two
    consecutive replies, and when the overlay carried traffic again after the last loss."""
    if not log.replies:
        return {
            "sent": log.transmitted,
            "answered": 0,
            "lost": log.transmitted,
            "lost_seqs": [],
            "outage_ms": None,
            "converged_after_s": None,
            "converged": False,
        }
    first, last = min(log.replies), max(log.replies)
    lost = [s for s in range(first, last + 1) if s not in log.replies]
    seqs = sorted(log.replies)
    gap = max((log.replies[b] - log.replies[a] for a, b in itertools.pairwise(seqs)), default=0.0)
    outage = 0.0
    converged_after = 0.0
    if lost:
        before = max((s for s in seqs if s < lost[0]), default=first)
        after = min(s for s in seqs if s > lost[-1])
        outage = log.replies[after] - log.replies[before]
        if apply_started is not None:
            converged_after = max(0.0, log.replies[after] - apply_started)
    return {
        "sent": log.transmitted,
        "answered": len(log.replies),
        "duplicates": log.duplicates,
        "lost": len(lost),
        "lost_seqs": lost[:50],
        "outage_ms": round(outage * 1000, 1),
        "max_gap_ms": round(gap * 1000, 1),
        "interval_ms": interval * 1000,
        "converged_after_s": round(converged_after, 3),
        "converged": True,
    }


def mac_site(mac: str) -> int | None:
    """Site id of an overlay MAC (overlay.plan.overlay_mac: 02:6f:<id hi>:<id lo>:00:<host>), else None."""
    parts = mac.lower().split(":")
    if len(parts) != 6 or parts[0] != "02" or parts[1] != "6f" or parts[4] != "00":
        return None
    return int(parts[2], 16) << 8 | int(parts[3], 16)


def expected_port(plan: Plan, node_name: str, site_id: int) -> str | None:
    """The tunnel through which `node_name` must reach overlay hosts of site `site_id` (None: a local port)."""
    node = plan.node(node_name)
    own = plan.config.site(node.site).site_id
    names = [t.name for t in node.tunnels]
    if node.kind == "client":
        return None if site_id == own else names[0]
    if site_id == own:
        return None  # router itself, its containers, or its client (ovl-c): not a router-to-router tunnel
    direct = f"ovl-r{site_id}"
    if direct in names:
        return direct
    internet = [t.name for t in node.tunnels if t.via == "internet"]
    return internet[0] if len(internet) == 1 else None


def stale_fdb(plan: Plan, node_name: str, entries: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Learned bridge FDB entries (from `bridge -j fdb show`) that send an overlay MAC down the wrong tunnel."""
    stale = []
    for e in entries:
        dev = str(e.get("ifname", ""))
        if e.get("master") is None or e.get("state") in ("permanent", "static") or not dev.startswith("ovl-r"):
            continue
        site_id = mac_site(str(e.get("mac", "")))
        if site_id is None:
            continue
        want = expected_port(plan, node_name, site_id)
        if want is not None and want != dev:
            stale.append({"node": node_name, "mac": str(e["mac"]), "dev": dev, "expected": want})
    return stale


def fix_stale_fdb(lab: Lab, plan: Plan, node: str, remove: bool = True) -> list[dict[str, str]]:
    """Remove learned MAC entries that point down a tunnel which no longer leads to them.

    Work-around for the node script, which keeps the bridge's learned entries across a hub change: on the new
    hub, MACs of every spoke stay learned on its tunnel to the old hub (a dead end) until they age out (300 s)
    or the spoke happens to send. The node script flushes its bridge when its tunnels change; swap reports any entry
    still wrong and removes it only with --remove-stale-fdb.
    """
    ns = lab.node_ns(node)
    bridge = "br-overlay"
    proc = lab.sh.run(["bridge", "-n", ns, "-j", "fdb", "show", "br", bridge], check=False, timeout=20)
    entries = json.loads(proc.stdout) if proc.returncode == 0 and proc.stdout.strip() else []
    stale = stale_fdb(plan, node, entries)
    for e in stale if remove else []:
        lab.sh.run(["bridge", "-n", ns, "fdb", "del", e["mac"], "dev", e["dev"], "master"], check=False, timeout=20)
    return stale


class StaleFdbWatcher(threading.Thread):
    """While the nodes re-apply, look at every router whose tunnels already match the new plan and remove the
    learned MAC entries that point down a dead-end tunnel, at about the moment a node script that flushed its
    bridge on a tunnel change would. Entries are judged only once the node's own tunnels are the planned ones
    (before that, the old plan's entries are still right)."""

    def __init__(self, lab: Lab, plan: Plan, remove: bool, period: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.lab, self.plan, self.remove, self.period = lab, plan, remove, period
        self.found: dict[tuple[str, str, str], dict[str, str]] = {}
        self._done = threading.Event()
        self.planned = {n.name: {t.name for t in n.tunnels if t.via == "internet"} for n in plan.routers()}

    def _tunnels_done(self, node: str) -> bool:
        proc = self.lab.sh.run(["ip", "-n", self.lab.node_ns(node), "-j", "link", "show"], check=False, timeout=20)
        if proc.returncode != 0:
            return False
        have = {link["ifname"] for link in json.loads(proc.stdout) if link["ifname"].startswith("ovl-r")}
        return have == self.planned[node]

    def sweep(self) -> None:
        for node in self.planned:
            if self._tunnels_done(node):
                for e in fix_stale_fdb(self.lab, self.plan, node, remove=self.remove):
                    self.found.setdefault((e["node"], e["mac"], e["dev"]), e)

    def run(self) -> None:
        while not self._done.wait(self.period):
            self.sweep()

    def finish(self) -> list[dict[str, str]]:
        self._done.set()
        self.join()
        self.sweep()
        return list(self.found.values())


def snapshot(lab: Lab) -> dict[str, Any]:
    """What must not be rebuilt by a swap: namespace inodes and container IDs."""
    inodes = {}
    for n in lab.state.namespaces + lab.state.container_netns:
        try:
            inodes[n] = os.stat(f"/run/netns/{n}").st_ino
        except OSError:
            inodes[n] = None
    containers: dict[str, str] = {}
    if lab.state.containers == "docker":
        for router in lab.state.routers:
            proc = lab.sh.run(
                ["docker", "ps", "-a", "--no-trunc", "--format", "{{.Names}} {{.ID}}"],
                env={"DOCKER_HOST": docker_host(router, lab.state_dir)},
                check=False,
                timeout=30,
            )
            for line in proc.stdout.splitlines():
                name, cid = line.split()
                containers[name] = cid
    return {"netns": inodes, "containers": containers}


def probe_pair(old: Plan, new: Plan) -> tuple[str, str]:
    """Two sites that are spokes before and after (their traffic crosses the old hub, then the new one): neither is a
    hub or a standby hub, before or after."""
    hubs = {old.hub, new.hub, old.config.standby_hub, new.config.standby_hub} - {""} if new.config.topology == "hub-and-spoke" else set()
    sites = [s.name for s in new.config.sites if s.name not in hubs]
    if len(sites) < 2:
        sites = [s.name for s in new.config.sites]
    return sites[0], sites[1]


def hub_paths(old: Plan, new: Plan, pair: tuple[str, str]) -> list[tuple[str, str]]:
    """Besides the spokes' pair: from the old hub's site and from the new hub's site to the pair's second site, whose
    frames cross the hub's own bridge and the tunnels that come and go (site names; none when the hub stays)."""
    if (old.hub, old.config.topology) == (new.hub, new.config.topology):
        return []
    hubs = [plan.hub for plan in (old, new) if plan.config.topology == "hub-and-spoke"]
    return [(h, pair[1]) for h in dict.fromkeys(hubs) if h not in pair]


@dataclass
class SwapResult:
    before: dict[str, str]
    after: dict[str, str]
    applies: list[nodes.ApplyResult]
    apply_seconds: float
    rebuilt: list[str]
    ping: dict[str, Any]
    pair: tuple[str, str]
    files: list[Path]
    stale_fdb: list[dict[str, str]] = field(default_factory=list)
    stages: list[dict[str, Any]] = field(default_factory=list)
    other_paths: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        converged = all(p.get("converged") for p in [self.ping, *self.other_paths])
        return all(a.ok for a in self.applies) and not self.rebuilt and converged


def swap(
    hub: str | None,
    protocol: str | None,
    results_dir: Path,
    state_dir: Path = STATE_DIR,
    out=print,
    fdb_fix: bool = False,
    encryption: str | None = None,
    topology: str | None = None,
    one_step: bool = False,
    standby_hub: str | None = None,
) -> SwapResult:
    lab = Lab(state_dir)
    old = lab.plan
    changes = (("hub", hub), ("protocol", protocol), ("encryption", encryption), ("topology", topology), ("standbyHub", standby_hub))
    overrides = {**lab.state.overrides, **{k: v for k, v in changes if v is not None}}
    new = lab_plan(load_raw(lab.state.stack, lab.state.sites or None, overrides))
    if new.protocol == "geneve" and not geneve_supported(lab.sh):
        raise LabError(geneve_message())
    if new.encrypted and not esp_supported(lab.sh):
        raise LabError(esp_message())
    if new.encrypted and not strongswan_installed():
        raise LabError(strongswan_message())
    if new.encrypted and not lab.state.key_seed:
        lab.state.key_seed = os.urandom(32).hex()
        save(lab.state, state_dir)
    before, after = ({"hub": p.hub, "protocol": p.protocol, "encryption": p.config.encryption, "topology": p.config.topology,
                      "standbyHub": p.config.standby_hub} for p in (old, new))
    out(
        f"swap: hub {old.hub} -> {new.hub}, standby hub {old.config.standby_hub or '-'} -> {new.config.standby_hub or '-'}, "
        f"protocol {old.protocol} -> {new.protocol}, "
        f"encryption {old.config.encryption} -> {new.config.encryption}, topology {old.config.topology} -> {new.config.topology}"
    )
    snap_before = snapshot(lab)
    a, b = probe_pair(old, new)
    src, dst = new.client(a), new.client(b)
    pinger = Pinger(dst.overlay_ipv4, lab.node_ns(src.name), state_dir / "swap-ping.log", INTERVAL)
    others = [(new.client(x), new.client(y)) for x, y in hub_paths(old, new, (a, b))]
    other_pingers = [
        Pinger(y.overlay_ipv4, lab.node_ns(x.name), state_dir / f"swap-ping-{i}.log", INTERVAL) for i, (x, y) in enumerate(others)
    ]
    try:
        time.sleep(0.5)
        configs = {n.name: nodes.lab_node_config(lab.state, new, n.name, dict(lab.layout.public_ips)) for n in new.nodes}
        apply_started = time.time()
        t0 = time.monotonic()

        watcher = StaleFdbWatcher(lab, new, remove=fdb_fix)
        watcher.start()

        def reapply(node: str, phase: str | None) -> nodes.ApplyResult:
            vm = lab.layout.host(node)
            return nodes.push(lab.sh, vm.ns, node, configs[node], state_dir, vm.kind == "router", lab.state.containers, phase)  # type: ignore[arg-type]

        try:
            applies, stages = nodes.run_stages(push_stages(new, one_step), reapply)
        finally:
            stale = watcher.finish()
        apply_seconds = time.monotonic() - t0
        if all(a.ok for a in applies):
            lab.state.overrides = overrides  # the nodes run the new config from now on
            save(lab.state, state_dir)
        if stale:
            where = sorted({f"{e['node']}:{e['dev']}" for e in stale})
            out(
                f"swap: node script left {len(stale)} learned MAC entries pointing down the wrong tunnel ({', '.join(where)}): "
                + ("removed them (--remove-stale-fdb)" if fdb_fix else "left in place")
            )
        per_node: dict[str, int] = {}
        for res in applies:
            per_node[res.node] = per_node.get(res.node, 0) + res.changes
        out(
            f"swap: {'one step' if one_step else 'make-before-break'}: {len(applies)} pushes to {len(per_node)} nodes in {apply_seconds:.1f} s "
            "(" + ", ".join(f"{st['stage']} {st['seconds']:.1f} s" for st in stages) + "; "
            f"{sum(per_node.values())} changes: " + ", ".join(f"{n} {c}" for n, c in per_node.items() if c) + ")"
        )
        time.sleep(SETTLE)
    finally:
        log = pinger.stop()
        other_logs = [p.stop() for p in other_pingers]
    ping = disruption(log, INTERVAL, apply_started)
    ping["path"] = f"{src.name} -> {dst.name} ({dst.overlay_ipv4})"
    other_paths = []
    for (x, y), other_log in zip(others, other_logs, strict=True):
        other_paths.append({**disruption(other_log, INTERVAL, apply_started), "path": f"{x.name} -> {y.name} ({y.overlay_ipv4})"})
    snap_after = snapshot(lab)
    rebuilt = [f"netns {n}" for n, ino in snap_before["netns"].items() if snap_after["netns"].get(n) != ino]
    rebuilt += [f"container {n}" for n, cid in snap_before["containers"].items() if snap_after["containers"].get(n) != cid]
    failed = [a for a in applies if not a.ok]
    lab.state.history.append(
        {
            "time": time.time(),
            "before": before,
            "after": after,
            "mode": "one-step" if one_step else "make-before-break",
            "ok": not failed and not rebuilt,
            "apply_seconds": round(apply_seconds, 2),
            "lost": ping.get("lost"),
            "outage_ms": ping.get("outage_ms"),
            "other_paths_lost": [p.get("lost") for p in other_paths],
        }
    )
    save(lab.state, state_dir)
    stem = f"swap-{new.hub}-{new.protocol}"
    probes = [
        Probe(
            "swap",
            "every node re-applied",
            not failed,
            "; ".join(f"{a.node}: {a.output.strip().splitlines()[-1] if a.output.strip() else ''}" for a in failed)
            or f"{len(applies)} nodes in {apply_seconds:.1f} s",
        ),
        Probe(
            "swap",
            "no namespace or container rebuilt",
            not rebuilt,
            ", ".join(rebuilt)
            or f"{len(snap_before['netns'])} namespaces (same inodes), {len(snap_before['containers'])} containers (same IDs)",
        ),
        Probe(
            "swap",
            f"overlay carries traffic again ({ping['path']})",
            bool(ping.get("converged")),
            f"lost {ping.get('lost')} of {ping.get('sent')} pings at {INTERVAL * 1000:.0f} ms, outage {ping.get('outage_ms')} ms",
        ),
        *(
            Probe(
                "swap",
                f"overlay carries traffic again ({p['path']})",
                bool(p.get("converged")),
                f"lost {p.get('lost')} of {p.get('sent')} pings at {INTERVAL * 1000:.0f} ms, outage {p.get('outage_ms')} ms",
            )
            for p in other_paths
        ),
    ]
    results_dir.mkdir(parents=True, exist_ok=True)
    files = [results_dir / f"{stem}.json", results_dir / f"{stem}.xml"]
    files[0].write_text(
        json.dumps(
            {
                "before": before,
                "after": after,
                "mode": "one-step" if one_step else "make-before-break",
                "stages": stages,
                "apply_seconds": round(apply_seconds, 2),
                "applies": [{k: v for k, v in asdict(a).items() if k != "output"} for a in applies],
                "rebuilt": rebuilt,
                "ping": ping,
                "other_paths": other_paths,
                "stale_fdb_removed": stale,
                "fdb_fix": fdb_fix,
                "snapshot_before": snap_before,
                "snapshot_after": snap_after,
            },
            indent=1,
        )
        + "\n",
        encoding="utf-8",
    )
    files[1].write_text(to_junit([], probes), encoding="utf-8")
    return SwapResult(before, after, applies, apply_seconds, rebuilt, ping, (a, b), files, stale, stages, other_paths)


def run_swap(
    hub: str | None,
    protocol: str | None,
    results: Path,
    fdb_fix: bool = False,
    encryption: str | None = None,
    topology: str | None = None,
    one_step: bool = False,
    standby_hub: str | None = None,
) -> int:
    require_root("swap")
    res = swap(
        hub, protocol, results, fdb_fix=fdb_fix, encryption=encryption, topology=topology, one_step=one_step, standby_hub=standby_hub
    )
    p = res.ping
    print(f"nothing rebuilt: {'yes' if not res.rebuilt else 'NO: ' + ', '.join(res.rebuilt)}")
    print(
        f"convergence ({p['path']}, ping every {INTERVAL * 1000:.0f} ms): lost {p['lost']} of {p['sent']}, "
        f"outage {p['outage_ms']} ms, traffic flowing {p['converged_after_s']} s after the re-apply started"
    )
    for o in res.other_paths:
        print(f"  and {o['path']}: lost {o['lost']} of {o['sent']}, outage {o['outage_ms']} ms")
    print(f"results: {', '.join(str(f) for f in res.files)}; next: {lab_command('check')}")
    return 0 if res.ok else 1
