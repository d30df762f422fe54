"""Lab tests: tests marked `root` build network namespaces and Docker daemons; they are skipped only when the
test run is not root."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
NOT_ROOT = "needs root: builds network namespaces, Docker daemons and iptables rules (run the tests as root)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason=NOT_ROOT)
    for item in items:
        if "root" in item.keywords and Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(skip)


# The stack encrypts router tunnels (encryption ipsec, the default) but this host kernel has no ESP: the host lab
# runs them in clear, as a user would (`lab up --encryption none`); tests/lab/test_vm_ipsec.py runs IPsec.
CLEAR = ("--encryption", "none")


def lab(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the lab CLI as a user would (a new process each time)."""
    return subprocess.run([sys.executable, "-m", "lab", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def host_baseline() -> dict[str, object]:
    """What the host looks like outside the lab's own namespaces: links, iptables rules, neighbour limits, the
    shim sockets of containerd."""

    def out(*argv: str) -> str:
        return subprocess.run(list(argv), capture_output=True, text=True).stdout

    limits = {}
    for fam in ("ipv4", "ipv6"):
        for n in (1, 2, 3):
            p = f"/proc/sys/net/{fam}/neigh/default/gc_thresh{n}"
            limits[p] = Path(p).read_text().strip()
    shims = sorted(os.listdir("/run/containerd/s")) if os.path.isdir("/run/containerd/s") else []
    return {
        "links": sorted(line.split(":")[1].strip().split("@")[0] for line in out("ip", "-o", "link", "show").splitlines()),
        "iptables": [line for line in out("iptables-save").splitlines() if not line.startswith("#")],
        "ip6tables": [line for line in out("ip6tables-save").splitlines() if not line.startswith("#")],
        "neigh_limits": limits,
        "shim_sockets": shims,
    }


def assert_clean(before: dict[str, object], containers: list[str]) -> None:
    from lab.lifecycle import leftovers

    left = leftovers(containers=containers)
    assert left == [], f"left behind: {left}"
    after = host_baseline()
    for key in ("links", "iptables", "ip6tables", "neigh_limits"):
        assert after[key] == before[key], f"host {key} changed: {before[key]} -> {after[key]}"
    new_shims = set(after["shim_sockets"]) - set(before["shim_sockets"])  # type: ignore[arg-type]
    assert not new_shims, f"containerd shim sockets left in /run/containerd/s: {sorted(new_shims)}"


@pytest.fixture
def no_lab() -> Iterator[dict[str, object]]:
    """No lab may exist when the test starts (the lab's names are global); returns the host baseline."""
    from lab.lifecycle import lab_exists
    from lab.state import STATE_DIR

    existing = lab_exists(STATE_DIR)
    if existing:
        pytest.fail(f"a lab is already up ({', '.join(existing[:3])}): run `python -m lab down` before the lab tests")
    yield host_baseline()


def savings_in_effect(nodes: list[str] | None = None) -> dict[str, dict[str, bool | None]]:
    """The node script's per-packet savings (lab.fastpath) on the running lab's nodes, by node; each is True
    where it applies (notrack on nodes whose image firewall tracks connections; bridge_nf on routers where
    br_netfilter is loaded)."""
    from lab import fastpath
    from lab.check import Lab

    running = Lab()
    out = {}
    for n in running.plan.nodes:
        if nodes is None or n.name in nodes:
            out[n.name] = fastpath.in_effect(running.sh, running.node_ns(n.name), n.kind == "router", fastpath.stateful_image(n.platform))
    return out


def savings_missing(states: dict[str, dict[str, bool | None]]) -> dict[str, list[str]]:
    """Node -> the savings that apply to it but are not in effect."""
    return {n: [k for k, v in st.items() if v is False] for n, st in states.items() if False in st.values()}


def lab_of_stack(raw: dict[str, Any], name: str, folder: Path, containers: list[str]) -> Iterator[Path]:
    """A module's lab: `lab up` of this stack config (written as a stack file), in clear; `lab down` after, and
    nothing left on the host. Fails at once if a lab is already up."""
    from bench.labrun import write_stack_file
    from lab.lifecycle import lab_exists
    from lab.state import STATE_DIR

    existing = lab_exists(STATE_DIR)
    if existing:
        pytest.fail(f"a lab is already up ({', '.join(existing[:3])}): run `python -m lab down` before the lab tests")
    stack = write_stack_file(raw, name, folder)
    baseline = host_baseline()
    proc = lab("up", "--stack", str(stack), *CLEAR)
    try:
        if proc.returncode != 0:
            pytest.fail(f"lab up failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        yield stack
    finally:
        lab("down")
    assert_clean(baseline, containers)


def check_passes(results: Path) -> dict[str, Any]:
    """`lab check`, which must pass; its JSON."""
    import json

    proc = lab("check", "--results", str(results))
    doc = json.loads((results / "check.json").read_text())
    assert proc.returncode == 0, f"{doc['summary']}; {doc['failures'][:10]}\n{proc.stdout[-2000:]}"
    return doc
