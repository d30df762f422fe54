"""`python -m lab vm`: the lab (or its GENEVE self-test) in a throw-away kernel VM, Debian's cloud kernel under qemu TCG.

The host kernel of the lab machines (and CI) has no geneve module (nor ESP), so the overlay is proven in a VM that
boots Debian's cloud kernel with an initramfs built by lab/vmimage.py, under qemu (lab/qemu.py). The VM has no
disk, no network card and no Docker: router containers are plain network namespaces (`--containers netns`).
What runs inside besides `python -m lab` is lab/guest.py.

    python -m lab vm --sites aws,azure,gcp --protocol geneve   # the lab, in the VM
    python -m lab vm --self-test                            # GENEVE overlay of 3 sites from their payloads
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from lab.guest import GUEST_COMMAND, GUEST_RESULTS, SELFTEST_CONTAINERS, SELFTEST_SITES
from lab.progress import Progress
from lab.qemu import run_in_vm
from lab.vmimage import build_image


def selftest_argv(
    sites: Sequence[str] = SELFTEST_SITES,
    hub: str = "aws",
    protocol: str = "geneve",
    stack: str = "dev",
    containers: int | None = SELFTEST_CONTAINERS,
) -> list[str]:
    """The in-VM command of the self-test (results go to GUEST_RESULTS)."""
    argv = [*GUEST_COMMAND, "selftest", "--stack", stack, "--sites", ",".join(sites), "--hub", hub, "--protocol", protocol]
    if containers is not None:
        argv += ["--containers-per-router", str(containers)]
    return [*argv, "--results", GUEST_RESULTS]


def lab_argv(
    stack: str,
    sites: Sequence[str] | None,
    protocol: str,
    hub: str | None,
    topology: str | None = None,
    warm_up: bool = False,
    encryption: str | None = None,
) -> list[str]:
    """The in-VM command of the real lab: up with namespace containers, check, always down; check's exit code.

    warm_up (off by default) runs lab/guest.py `warmup` between up and check: neighbour discovery across the overlay
    first, for a starved host where check's 1 s ping timeout is too short for a cold overlay under TCG. Its
    result is kept in the results folder (warmup.json).
    """
    up = ["python3", "-m", "lab", "up", "--containers", "netns", "--stack", stack, "--protocol", protocol]
    if sites:
        up += ["--sites", ",".join(sites)]
    if hub:
        up += ["--hub", hub]
    if topology:
        up += ["--topology", topology]
    if encryption:
        up += ["--encryption", encryption]
    warmup = [*GUEST_COMMAND, "warmup", "--results", GUEST_RESULTS]
    check = ["python3", "-m", "lab", "check", "--results", GUEST_RESULTS]
    down = ["python3", "-m", "lab", "down"]
    first = f"{shlex.join(up)} && {shlex.join(warmup)}; " if warm_up else f"{shlex.join(up)} && "
    script = f"{first}{shlex.join(check)}; rc=$?; {shlex.join(down)}; exit $rc"
    return ["/bin/sh", "-c", script]


def run_vm(
    *,
    stack: str,
    sites: Sequence[str] | None,
    protocol: str,
    hub: str | None,
    topology: str | None,
    encryption: str | None,
    results: Path,
    timeout: float,
    memory_mb: int,
    cpus: int,
    cache: Path,
    self_test: bool,
    warm_up: bool,
    command_line: str | None,
) -> int:
    """`python -m lab vm`: the lab (or the self-test, or command_line) in the kernel VM; the exit code is the
    in-VM command's."""
    if os.geteuid() != 0:
        print("lab vm: needs root (qemu is run as root like the rest of the lab)", file=sys.stderr)
    progress = Progress(total=3)
    image = build_image(Path(cache))
    progress.step(
        f"vm: kernel {image.kernel_release} ({image.kernel_package}), initramfs {image.size / 1e6:.1f} MB "
        f"({'built' if image.built else 'cached'}, {image.seconds:.1f} s)"
    )
    if command_line:
        argv = ["/bin/sh", "-c", command_line]
    elif self_test:
        argv = selftest_argv(sites or SELFTEST_SITES, hub or "aws", protocol, stack)
    else:
        progress.note("vm: router containers are plain network namespaces in the VM (--containers netns): there is no Docker there")
        argv = lab_argv(stack, sites, protocol, hub, topology, warm_up=warm_up, encryption=encryption)
    progress.note(f"vm: booting, then running in the VM: {shlex.join(argv)}")

    def echo(line: str) -> None:
        if " guest ready after " in line and progress.done == 1:
            progress.step(f"vm: {line.split('| ', 1)[-1]}")
        else:
            progress.line(line)
        progress.status("vm: running (console above)")

    res = run_in_vm(argv, timeout=timeout, memory_mb=memory_mb, cpus=cpus, results_dir=results, image=image, echo=echo)
    progress.finish()
    where = f"; results in {res.results}" if res.results and any(res.results.iterdir()) else ""
    boot = f"{res.boot_seconds:.1f}" if res.boot_seconds is not None else "?"
    progress.step(f"vm: exit {res.exit_code} after {res.seconds:.1f} s (boot {boot} s){where}")
    return res.exit_code
