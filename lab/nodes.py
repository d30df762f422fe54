"""VMs from their payloads: write the cloud-init files under a per-node root, start Docker where the payload
installs it, and run the payload's unit command in the node's namespace (the node script does the rest); then
push each node's full config through the node script's `push`, the command the Pulumi program runs over SSH."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, cast

from lab.shell import SYSTEM_PATH, Shell, in_netns
from lab.state import CGROUP_PREFIX, LAB_IMAGE, LabState, docker_host, node_dir, node_root
from lab.topology import map_argv, map_path
from multicloud_overlay.cloudinit.render import (
    DOCKER_DAEMON,
    INSTALL_SCRIPT_COMMAND,
    packed_node_script,
    phase_command,
    read_payload,
    render_user_data,
    unit_exec_start,
)
from multicloud_overlay.overlay.plan import Plan, bootstrap_config, node_config

Runtime = Literal["docker", "netns"]
BUSYBOX = "/bin/busybox"


def user_data(plan: Plan, node: str, runtime: Runtime) -> str:
    """The node's cloud-init payload (its bootstrap config), rendered as the Pulumi program renders it."""
    return render_user_data(bootstrap_config(plan, node, container_runtime=runtime))


def lab_user_data(state: LabState, plan: Plan, node: str) -> str:
    """The payload of a node of this lab (with the lab's container runtime)."""
    return user_data(plan, node, cast(Runtime, state.containers))


def lab_node_config(state: LabState, plan: Plan, node: str, public_ips: dict[str, str]) -> dict[str, Any]:
    """What the push installs on a node of this lab: its full config, with (encryption ipsec) its pair keys."""
    return node_config(plan, node, public_ips, container_runtime=cast(Runtime, state.containers), pair_keys=state.pair_keys(plan))


def write_payload(payload: str, root: Path, only: tuple[str, ...] = ()) -> list[Path]:
    """Write the payload's files (modes preserved) under root; `only` limits it to those payload paths."""
    files, _ = read_payload(payload)
    written = []
    for f in files:
        if only and f.path not in only:
            continue
        dest = Path(map_path(f.path, root))
        if dest == Path(f.path):
            raise ValueError(f"payload file {f.path} is outside the paths the lab maps into a node root")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".lab-tmp")
        tmp.write_bytes(f.content)
        os.chmod(tmp, f.mode)
        os.replace(tmp, dest)
        written.append(dest)
    return written


@dataclass
class ApplyResult:
    node: str
    ok: bool
    seconds: float
    changes: int
    output: str
    phase: str | None = None
    """The make-before-break phase this run took (None: the push or apply itself)."""


def apply(sh: Shell, ns: str, node: str, payload: str, state_dir: Path, is_router: bool, runtime: Runtime) -> ApplyResult:
    """Run the unit's ExecStart in the node's namespace, paths under /etc, /var, /usr/local in the node root."""
    return _run_node_script(sh, ns, node, unit_exec_start(payload), None, state_dir, is_router, runtime)


def push(
    sh: Shell, ns: str, node: str, doc: dict[str, Any], state_dir: Path, is_router: bool, runtime: Runtime, phase: str | None = None
) -> ApplyResult:
    """The in-place push: the commands the program runs over SSH, the whole node script's install (on stdin;
    nothing changes once it is there) and `overlay-node push` or one of its make-before-break phases, the node
    config on stdin."""
    installed = _run_node_script(sh, ns, node, list(INSTALL_SCRIPT_COMMAND), packed_node_script(), state_dir, is_router, runtime)
    if not installed.ok:
        return replace(installed, phase=phase)
    doc_text = json.dumps(doc, indent=1, sort_keys=True) + "\n"
    result = _run_node_script(sh, ns, node, list(phase_command(phase)), doc_text, state_dir, is_router, runtime)
    return replace(
        result,
        phase=phase,
        seconds=installed.seconds + result.seconds,
        changes=installed.changes + result.changes,
        output=installed.output + result.output,
    )


Job = tuple[str, str | None]


def push_stages(plan: Plan, one_step: bool = False) -> list[list[Job]]:
    """(node, phase) pushes in the order the program runs them (components/push.py order_pushes), each stage in
    parallel: the routers' prepare steps with the clients' pushes, the routers' switch steps wave by wave (the hub
    first), then the routers' pushes. one_step: every node's push at once (the swap before make-before-break)."""
    if one_step:
        return [[(n.name, None) for n in plan.nodes]]
    routers = [r.name for r in plan.routers()]
    clients = [n.name for n in plan.nodes if n.kind == "client"]
    return [
        [*((r, "prepare") for r in routers), *((c, None) for c in clients)],
        *([(r, "switch") for r in wave] for wave in plan.switch_waves()),
        [(r, None) for r in routers],
    ]


def run_stages(stages: list[list[Job]], push_one: Callable[[str, str | None], ApplyResult]) -> tuple[list[ApplyResult], list[dict[str, Any]]]:
    """Each stage's pushes in parallel, stage after stage, stopping after a stage with a failure (as the program
    does: no later step runs); the results, and each stage's name, size and seconds."""
    results: list[ApplyResult] = []
    timings: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=max((len(s) for s in stages), default=1)) as pool:
        for stage in stages:
            started = time.monotonic()
            done = list(pool.map(lambda job: push_one(*job), stage))
            results += done
            timings.append({"stage": stage_name(stage), "nodes": len(stage), "seconds": round(time.monotonic() - started, 3)})
            if not all(r.ok for r in done):
                break
    return results, timings


def stage_name(stage: list[Job]) -> str:
    phases = sorted({p or "push" for _, p in stage})
    if phases == ["switch"] and len(stage) == 1:
        return f"switch {stage[0][0]}"
    return " + ".join(phases)


def _run_node_script(
    sh: Shell, ns: str, node: str, command: list[str], stdin: str | None, state_dir: Path, is_router: bool, runtime: Runtime
) -> ApplyResult:
    root = node_root(node, state_dir)
    argv = map_argv(command, root)
    env = {"PATH": SYSTEM_PATH}
    if is_router and runtime == "docker":
        env["DOCKER_HOST"] = docker_host(node, state_dir)
    started = time.monotonic()
    proc = sh.ns(ns, argv, check=False, env=env, timeout=300, input=stdin)
    took = time.monotonic() - started
    output = proc.stdout + proc.stderr
    log = root / "var/log/overlay-node.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as f:
        f.write(output)
    changes = sum(1 for line in proc.stdout.splitlines() if line.strip().startswith("changed:"))
    return ApplyResult(node, proc.returncode == 0, took, changes, output)


# --------------------------------------------------------------------------- Docker per router


def build_image_tar(state_dir: Path) -> Path:
    """A root filesystem of busybox-static with its applets (sh, sleep, ping, ip, ...) as a tar for `docker import`."""
    out = state_dir / "image" / "busybox-rootfs.tar"
    if out.exists():
        return out
    if not os.path.exists(BUSYBOX):
        raise FileNotFoundError(BUSYBOX)
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with tarfile.open(tmp, "w") as tar:
        for d in ("bin", "dev", "etc", "proc", "sys", "tmp", "root", "run"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        tar.add(BUSYBOX, arcname="bin/busybox")
        for applet in applets:
            if applet == "busybox" or "/" in applet:
                continue
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type = tarfile.SYMTYPE
            info.linkname = "busybox"
            tar.addfile(info)
        for name, text in (
            ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
            ("etc/group", "root:x:0:\n"),
            ("etc/hosts", "127.0.0.1 localhost\n::1 localhost\n"),
        ):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, out)
    return out


DOCKERD_CGROUP_OPTIONS = ("--exec-opt", "native.cgroupdriver=cgroupfs")
"""The lab's daemons manage their cgroups themselves (under /sys/fs/cgroup/mco-lab-<router>, found and removed by
`down`): with cgroup v2 and systemd, dockerd 20.10 picks the systemd driver, which refuses a plain
`--cgroup-parent mco-lab-<router>` (it wants a slice name)."""


def start_dockerd(ns: str, router: str, state_dir: Path) -> int:
    """A Docker daemon in the router's namespace, configured by the payload's daemon.json; returns its pid.

    It runs in a private mount namespace so its mounts (container shm, sandbox handles) vanish with it.
    """
    d = node_dir(router, state_dir)
    root = node_root(router, state_dir)
    config = Path(map_path(DOCKER_DAEMON, root))
    log = (d / "dockerd.log").open("ab")
    argv = in_netns(
        ns,
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "dockerd",
            "--config-file",
            str(config),
            "--data-root",
            map_path("/var/lib/docker", root),
            "--exec-root",
            str(d / "run-docker"),
            "--pidfile",
            str(d / "docker.pid"),
            "-H",
            docker_host(router, state_dir),
            "--storage-driver",
            "vfs",
            *DOCKERD_CGROUP_OPTIONS,
            "--cgroup-parent",
            f"{CGROUP_PREFIX}{router}",
        ],
    )
    proc = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "PATH": SYSTEM_PATH},
    )
    log.close()
    return proc.pid


def wait_dockerd(sh: Shell, router: str, state_dir: Path, pid: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    env = {"DOCKER_HOST": docker_host(router, state_dir)}
    while True:
        if sh.run(["docker", "version", "--format", "{{.Server.Version}}"], check=False, env=env, timeout=20).returncode == 0:
            return
        if not os.path.exists(f"/proc/{pid}"):
            tail = (node_dir(router, state_dir) / "dockerd.log").read_text(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"dockerd of {router} exited: {' | '.join(tail)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"dockerd of {router} did not answer within {timeout:.0f} s")
        time.sleep(0.2)


def import_image(sh: Shell, router: str, state_dir: Path, tar: Path) -> None:
    env = {"DOCKER_HOST": docker_host(router, state_dir)}
    sh.run(["docker", "import", "--change", f"ENV PATH={SYSTEM_PATH}", str(tar), LAB_IMAGE], env=env, timeout=120)


def docker_env(router: str, state_dir: Path) -> dict[str, str]:
    return {"DOCKER_HOST": docker_host(router, state_dir)}


def remove_node_dirs(state_dir: Path) -> None:
    shutil.rmtree(state_dir / "nodes", ignore_errors=True)
