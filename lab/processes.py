"""The lab's processes as /proc shows them: who lives in which network namespace or runs from the state dir, and
signalling them until they are gone. Used by power-off (one node) and down (the whole lab)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from pathlib import Path

DOCKER_PROCESSES = frozenset({"dockerd", "containerd", "containerd-shim", "containerd-shim-runc-v2", "runc", "docker-init", "docker-proxy"})
"""Command names of Docker's own processes (down stops them gracefully, after the lab's other processes)."""


def netns_inode(path: str) -> int | None:
    """Inode of a network namespace handle (/run/netns/NAME), None if there is none."""
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def netns_inodes(names: Iterable[str]) -> set[int]:
    """Inodes of the named namespace handles that exist."""
    return {i for n in names if (i := netns_inode(f"/run/netns/{n}")) is not None}


def pids_in_netns(inodes: set[int]) -> list[int]:
    """Every process whose network namespace is one of `inodes`."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino in inodes:
                pids.append(int(entry))
        except OSError:
            continue
    return pids


def pids_mentioning(text: str) -> list[int]:
    """Every process (but this one) whose command line contains `text` (e.g. a node's directory)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def pids_in_cgroups(name: str) -> set[int]:
    """Every process in a cgroup named `name` (and below it) under any controller of /sys/fs/cgroup."""
    pids: set[int] = set()
    base = Path("/sys/fs/cgroup")
    if not base.is_dir():
        return pids
    for top in [base / name, *(controller / name for controller in base.iterdir())]:  # cgroup v2, then v1's controllers
        if top.is_dir():
            for procs in top.rglob("cgroup.procs"):
                try:
                    pids |= {int(p) for p in procs.read_text().split()}
                except (OSError, ValueError):
                    continue
    return pids


def command_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


def is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait until every process has exited (or is a zombie); those still alive after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if os.path.exists(f"/proc/{p}") and not is_zombie(p)]
    return alive


def send_signal(pids: list[int], sig: int) -> None:
    """Signal every process; those already gone are skipped."""
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, sig)


def stop(pids: list[int], sig: int, timeout: float) -> list[int]:
    """Signal the processes and wait for them to go; those still alive after `timeout` seconds."""
    send_signal(pids, sig)
    return wait_gone(pids, timeout)
