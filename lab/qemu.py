"""Boot the VM under qemu (TCG) and run one command in it; its console is the only channel.

The command's output, its exit code and a results folder (base64 tarball between markers) come back over the
serial console; lab/vm_assets/guest_run.py is the other end of that protocol.

    res = run_in_vm(["python3", "-m", "lab", "status"], timeout=120)
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import queue
import re
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from lab.cpio import Cpio
from lab.guest import GUEST_RESULTS
from lab.vmimage import GUEST_PROJECT, Out, VmImage, build_image

GUEST_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# mitigations=off: no retpolines/barriers to emulate in a throw-away guest (boot and packet path are CPU-bound).
KERNEL_CMDLINE: Final = "console=ttyS0 quiet panic=-1 mitigations=off"

EXIT_MARK: Final = "@@VM-EXIT"
READY_MARK: Final = "@@VM-READY"
RESULTS_BEGIN: Final = "@@VM-RESULTS-BEGIN@@"
RESULTS_END: Final = "@@VM-RESULTS-END@@"
EXIT_TIMEOUT: Final = 124
EXIT_NO_STATUS: Final = 125

DEFAULT_CPU: Final = "qemu64,+rdrand"
AES_NI_CPU: Final = "qemu64,+rdrand,+aes,+pclmulqdq,+ssse3,+sse4.1,+sse4.2"
"""TCG emulates AES-NI and PCLMULQDQ: the kernel's AES-GCM then runs its aesni driver instead of generic C (the
guest loads lab/kernel_modules.py CPU_CRYPTO_MODULES for it)."""


@dataclass(frozen=True)
class VmResult:
    exit_code: int
    """The command's exit code; 124 on timeout, 125 when the VM ended without reporting one."""
    output: str
    """The console (kernel messages and the command's output), without the results transfer."""
    timed_out: bool = False
    seconds: float = 0.0
    """Wall time from starting qemu to its exit."""
    boot_seconds: float | None = None
    """Wall time until the guest's init was ready to run the command."""
    results: Path | None = None


def _run_archive(spec: dict[str, Any]) -> bytes:
    """The per-run initramfs segment (appended to the image's: the kernel unpacks both)."""
    c = Cpio()
    c.file("etc/vm/run.json", json.dumps(spec).encode())
    return gzip.compress(c.finish(), mtime=0)


def qemu_argv(image: VmImage, initrd: Path, memory_mb: int, cpus: int, cpu: str = DEFAULT_CPU) -> list[str]:
    # TCG, not KVM: a KVM guest hangs on these machines (see LAB-NOTES). CPU qemu64 plus RDRAND: the kernel
    # trusts RDRAND, so its random pool is ready at once (without it, python's first os.urandom waited ~2 s);
    # `-cpu max` was slower and twice ended in soft lockups in the guest's packet path. Two vCPUs: the lab
    # in the VM took 46 s with -smp 2 against 114 s with -smp 1 on a 2-CPU host.
    return [
        "qemu-system-x86_64", "-accel", "tcg", "-cpu", cpu, "-m", str(memory_mb), "-smp", str(cpus),
        "-nodefaults", "-display", "none", "-serial", "stdio", "-no-reboot",
        "-kernel", str(image.kernel), "-initrd", str(initrd), "-append", KERNEL_CMDLINE,
    ]  # fmt: skip


def run_in_vm(
    argv: Sequence[str],
    *,
    timeout: float,
    memory_mb: int = 1024,
    results_dir: Path | None = None,
    cpus: int = 2,
    env: dict[str, str] | None = None,
    image: VmImage | None = None,
    prefix: str = "vm| ",
    echo: Out | None = None,
    cpu: str = DEFAULT_CPU,
) -> VmResult:
    """Boot the VM, run argv in the project copy (cwd), stream the console, return the exit code.

    With results_dir, the guest folder GUEST_RESULTS (created empty before argv runs) comes back into results_dir.
    qemu is killed after `timeout` seconds (exit code 124).
    """
    if shutil.which("qemu-system-x86_64") is None:
        raise RuntimeError("qemu-system-x86_64 is missing (apt-get install qemu-system-x86)")
    image = image or build_image()
    show: Out = echo or (lambda line: print(line, flush=True))
    spec = {
        "argv": list(argv),
        "cwd": GUEST_PROJECT,
        "env": {"PATH": GUEST_PATH, "PYTHONPATH": GUEST_PROJECT, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", **(env or {})},
        "results_dir": GUEST_RESULTS if results_dir is not None else None,
    }
    lines: list[str] = []
    payload: list[str] = []
    exit_code: int | None = None
    boot: float | None = None
    timed_out = False
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vm-run-") as tmpdir:
        initrd = Path(tmpdir) / "initrd.gz"
        with initrd.open("wb") as f, image.initrd.open("rb") as base:
            shutil.copyfileobj(base, f)
            f.write(_run_archive(spec))
        proc = subprocess.Popen(
            qemu_argv(image, initrd, memory_mb, cpus, cpu), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        q: queue.Queue[bytes | None] = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for raw in iter(proc.stdout.readline, b""):
                q.put(raw)
            q.put(None)

        threading.Thread(target=pump, daemon=True).start()
        in_results = False
        deadline = started + timeout
        while True:
            try:
                raw = q.get(timeout=max(0.05, deadline - time.monotonic()))
            except queue.Empty:
                raw = b""
            if raw is None:
                break
            if time.monotonic() > deadline:
                timed_out = True
                proc.kill()
                show(f"{prefix}timeout after {timeout:.0f} s: qemu killed")
                break
            if not raw:
                continue
            line = raw.decode(errors="replace").replace("\r", "").rstrip("\n")
            if in_results:
                if line.strip() == RESULTS_END:
                    in_results = False
                else:
                    payload.append(line.strip())
                continue
            if line.strip() == RESULTS_BEGIN:
                in_results = True
                continue
            if line.startswith(READY_MARK):
                boot = time.monotonic() - started
                show(f"{prefix}guest ready after {boot:.1f} s (kernel uptime {line.split()[1].strip('@')} s)")
                continue
            if line.startswith(EXIT_MARK):
                m = re.match(rf"{EXIT_MARK} (-?\d+)", line)
                exit_code = int(m.group(1)) if m else EXIT_NO_STATUS
            lines.append(line)
            show(f"{prefix}{line}")
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    got: Path | None = None
    if results_dir is not None and payload:
        results_dir = Path(results_dir)
        results_dir.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(base64.b64decode("".join(payload))), mode="r:gz") as tar:
            tar.extractall(results_dir, filter="data")
        got = results_dir
    code = EXIT_TIMEOUT if timed_out else (exit_code if exit_code is not None else EXIT_NO_STATUS)
    return VmResult(
        exit_code=code,
        output="\n".join(lines),
        timed_out=timed_out,
        seconds=time.monotonic() - started,
        boot_seconds=boot,
        results=got,
    )
