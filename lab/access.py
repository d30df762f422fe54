"""How to reach every part of a running lab: `python -m lab exec NAME -- CMD` and what `lab status` prints.

A target is a VM (router or client: its network namespace `mco-<node>`), a router's container (Docker: `docker
exec` through the router's own daemon socket; netns containers: their namespace), or a piece of the emulated
underlay (the internet and each site's edge namespace). Container namespace handles carry the container's name
(`aws-c1`), as the node script names them on a cloud VM too.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lab.invocation import lab_command
from lab.state import STATE_DIR, LabError, LabState, docker_host, load
from lab.topology import build_layout

NODE_SHELL = "bash"
CONTAINER_SHELL = "sh"
"""The lab's container image is busybox: it has sh, not bash."""


@dataclass(frozen=True)
class Target:
    name: str
    kind: str
    """router, client, container, edge or internet"""
    netns: str
    """Its network namespace handle in /run/netns."""
    router: str | None = None
    """The router a container runs on."""
    docker_host: str | None = None
    """unix://... socket of the router's dockerd (Docker containers only)."""

    def shell(self) -> str:
        return CONTAINER_SHELL if self.kind == "container" else NODE_SHELL

    def netns_argv(self, command: Sequence[str]) -> list[str]:
        """The command in the target's network namespace, with the host's tools (`ip netns exec`)."""
        return ["ip", "netns", "exec", self.netns, *command]

    def docker_argv(self, command: Sequence[str], tty: bool) -> list[str] | None:
        """The command inside the container (`docker exec` through the router's daemon), None if not a Docker one."""
        if self.docker_host is None:
            return None
        return ["docker", "-H", self.docker_host, "exec", "-it" if tty else "-i", self.name, *command]

    def argv(self, command: Sequence[str], tty: bool) -> list[str]:
        """What `lab exec` runs: inside the container for a Docker container, else in the namespace."""
        return self.docker_argv(command, tty) or self.netns_argv(command)


def targets(state: LabState, state_dir: Path = STATE_DIR) -> dict[str, Target]:
    """Every reachable name of the lab, in plan order: nodes, their containers, then the underlay."""
    plan = state.plan()
    layout = build_layout(plan, state.prefix)
    out: dict[str, Target] = {}
    for n in plan.nodes:
        out[n.name] = Target(n.name, n.kind, layout.host(n.name).ns)
    for r in plan.routers():
        for c in r.containers:
            sock = docker_host(r.name, state_dir) if state.containers == "docker" else None
            out[c.name] = Target(c.name, "container", c.name, router=r.name, docker_host=sock)
    for e in layout.edges:
        out[f"{e.site}-edge"] = Target(f"{e.site}-edge", "edge", e.ns)
    out["internet"] = Target("internet", "internet", layout.internet_ns)
    return out


def resolve(name: str, state_dir: Path = STATE_DIR, exists: Callable[[str], bool] = os.path.exists) -> Target:
    """The target called `name` (a namespace name such as mco-aws-router works too), or a LabError that says
    what to do: bring the lab up, or use one of the names listed."""
    st = load(state_dir)
    if st is None:
        raise LabError(f"no lab is up: run `{lab_command('up', '--encryption', 'none')}` first (see `{lab_command('up', '--help')}`)")
    found = targets(st, state_dir)
    by_netns = {t.netns: t for t in found.values()}
    target = found.get(name) or by_netns.get(name)
    if target is None:
        nodes = [t.name for t in found.values() if t.kind in ("router", "client")]
        containers = [t.name for t in found.values() if t.kind == "container"]
        underlay = [t.name for t in found.values() if t.kind in ("edge", "internet")]
        raise LabError(
            f"no node or container {name!r} in this lab. Nodes: {', '.join(nodes)}; containers: {', '.join(containers) or 'none'}; "
            f"underlay: {', '.join(underlay)} (`{lab_command('status')}` shows how to reach each)"
        )
    if not exists(f"/run/netns/{target.netns}"):
        raise LabError(
            f"{target.name}: its namespace {target.netns} is gone (the lab is {st.phase}"
            + (f"; {target.name} may be powered off" if st.phase == "up" else "")
            + f"): see `{lab_command('status')}`"
        )
    if target.docker_host is not None and target.router is not None and not exists(target.docker_host.removeprefix("unix://")):
        raise LabError(
            f"{target.name}: the Docker daemon of {target.router} is not running ({target.docker_host}): see `{lab_command('status')}`"
        )
    return target


def exec_argv(target: Target, command: Sequence[str], tty: bool) -> list[str]:
    """What `lab exec` runs for `command` (a shell when empty)."""
    return target.argv(list(command) or [target.shell()], tty)


def stdio_is_tty() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


def run_exec(
    name: str,
    command: Sequence[str],
    state_dir: Path = STATE_DIR,
    execvp: Callable[[str, list[str]], object] = os.execvp,
    exists: Callable[[str], bool] = os.path.exists,
) -> int:
    """`lab exec NAME -- CMD`: replace this process with the command in the target (stdin, stdout, stderr and the
    terminal stay attached; the exit status is the command's)."""
    target = resolve(name, state_dir, exists)
    argv = exec_argv(target, command, stdio_is_tty())
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        execvp(argv[0], argv)
    except FileNotFoundError:
        raise LabError(f"{argv[0]} is not installed (needed to reach {target.name})") from None
    return 0  # only a replaced execvp returns


def how_to_reach(state: LabState, state_dir: Path = STATE_DIR) -> list[str]:
    """Lines for `lab status`: per node and container its namespace, the `lab exec` command and what it runs."""
    found = targets(state, state_dir)
    rows = [("name", "kind", "netns", "lab exec", "equivalent")]
    for t in found.values():
        cmd = ["CMD"]
        equivalent = shlex.join(t.netns_argv(cmd))
        docker = t.docker_argv(cmd, tty=True)
        if docker is not None:
            equivalent = f"{shlex.join(docker)}   (network only: {equivalent})"
        kind = f"container on {t.router}" if t.kind == "container" else t.kind
        rows.append((t.name, kind, t.netns, f"{lab_command('exec', t.name)} -- CMD", equivalent))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4] for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 10)
    notes = [f"without CMD, `lab exec` opens a shell ({NODE_SHELL} in a VM, {CONTAINER_SHELL} in a container)"]
    if state.containers == "docker":
        notes.append("docker exec runs inside the container (no capabilities: no ping); `ip netns exec` runs host tools in its network")
    return lines + notes
