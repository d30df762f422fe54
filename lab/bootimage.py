"""A bootable Debian 12 disk image (systemd, the real cloud-init, sshd, Docker) and a runner that boots it under qemu
TCG with a copy of this working tree: the host lab on a stock Debian kernel, which has GENEVE and ESP.

The lab machines' own kernel lacks GENEVE and ESP, so the host-lab tests that depend on them are run in this
guest. lab/vm.py boots the same Debian cloud kernel from a small initramfs (no systemd, no Docker); this image is a
whole Debian system instead, built from Debian packages only, as /work/shared/LAB-NOTES.md describes
("A bootable Debian image with systemd and the real cloud-init"):

    python -m lab.bootimage build            # debootstrap + fix-ups + test venv + ext4 disk, under .cache/boot
    python -m lab.bootimage info             # what is built, its inputs digest and sizes
    python -m lab.bootimage run -- python -m pytest tests/lab/test_lab_lifecycle.py
                                             # boot it (TCG, -m 4096 -smp 2) with the working tree, run the command
                                             # in /project as root, copy the results out to lab-results/bootimage/

Build (root; needs `apt-get install -y debootstrap qemu-utils e2fsprogs dosfstools mtools genisoimage`):
  1. rootfs: `debootstrap --variant=minbase --include=PACKAGES bookworm` from the host's Debian mirror, then the
     fix-ups (fstab, empty machine-id, en_US.UTF-8 locale, systemd-networkd enabled) in a chroot, then
     /opt/mco-venv: Debian's python3 with the project's pinned test tools (pytest, pytest-timeout, hypothesis, PyYAML,
     paramiko) installed offline from wheels that the host's pip downloads (its own mirror/cache). The project's
     .venv is not copied: it is built on another interpreter (pyenv) and holds 1.8 GB of Pulumi SDKs the lab never
     imports.
  2. disk: `mkfs.ext4 -d rootfs` into a sparse raw image (no mount, no loop device); the kernel and initrd are
     copied next to it (qemu boots them with -kernel/-initrd).
  Every step is skipped when its output exists. Outputs are named by a digest of the recipe (suite, mirror,
  packages, fix-up script, test-tool pins, disk size): change an input and the next build makes a new image (and
  prunes the old one). An interrupted rootfs build resumes at its first unfinished step.

Run (root): each run boots a throw-away qcow2 overlay of the image (the image itself never changes) with
  - a project disk (ext4, label mcoproject) made from a copy of the working tree without .git, .venv, .cache and
    caches, mounted at /project;
  - a results disk (ext4, label mcoresults), mounted at /results, read back on the host with debugfs (no mount);
  - a NoCloud seed (ISO, label cidata) whose user-data installs the guest runner and starts it as a systemd unit
    once cloud-init is done (the node script's push waits for cloud-init, so the command must not run inside it);
  - a NIC on qemu's user network with restrict=on (DHCP only, no way out), so cloud-init renders and applies a
    netplan config as on a cloud.
  The runner reports the kernel's GENEVE/ESP capability, checks Docker (the system dockerd runs a container of a
  busybox image imported from a local rootfs, as the lab does per router), runs the command, and powers off.
  The console is streamed; the exit code is the command's (124 on timeout).
  Where a stock Debian system differs from the lab machines in ways the lab depends on, the guest is set like the
  lab machines (see KERNEL_APPEND and RUNNER): cgroup v1, and /run remounted with exec.

Only stdlib at import time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from lab.privilege import become_root

ROOT: Final = Path(__file__).resolve().parent.parent
DEFAULT_CACHE: Final = ROOT / ".cache" / "boot"
DEFAULT_RESULTS: Final = ROOT / "lab-results" / "bootimage"

SUITE: Final = "bookworm"
RECIPE_VERSION: Final = 1
"""Bump when the build changes in a way the recipe below does not show."""

# LAB-NOTES' bootable image, plus what the lab needs on a host (scripts/setup.sh) and Docker with AppArmor.
PACKAGES: Final = (
    # systemd, cloud-init, sshd, netplan (LAB-NOTES)
    "systemd-sysv", "udev", "dbus", "libpam-systemd", "systemd-resolved", "cloud-init", "cloud-guest-utils",
    "openssh-server", "iproute2", "netplan.io", "sudo", "iputils-ping", "linux-image-cloud-amd64", "initramfs-tools",
    "e2fsprogs", "ca-certificates", "procps", "python3-cffi-backend", "locales",
    # the lab (lab/lifecycle.py TOOLS, scripts/setup.sh) and its Docker (AppArmor is enforced: apparmor_parser)
    "docker.io", "apparmor", "iptables", "kmod", "util-linux", "busybox-static", "tcpdump", "iperf3",
    "python3", "python3-venv", "python3-yaml",
)  # fmt: skip

# The project's test tools for the guest venv; versions are read from requirements-dev.txt/requirements.txt.
GUEST_REQUIREMENTS: Final = ("PyYAML", "pytest", "pytest-timeout", "hypothesis", "paramiko")
# The guest venv is /opt/mco-venv (VENV_SCRIPT makes it; RUNNER puts it first on PATH).
DISK_SIZE: Final = "4G"

# Run in the rootfs with chroot after debootstrap (LAB-NOTES' fix-ups).
FIXUPS: Final = r"""
set -eu
printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\n' > /etc/fstab
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
echo mco-guest > /etc/hostname
# cloud-init's locale module needs a generated locale, or `cloud-init status` ends in error.
sed -i 's/^# *en_US.UTF-8 UTF-8/en_US.UTF-8 UTF-8/' /etc/locale.gen
grep -q '^en_US.UTF-8 UTF-8' /etc/locale.gen || echo 'en_US.UTF-8 UTF-8' >> /etc/locale.gen
locale-gen
update-locale LANG=en_US.UTF-8
systemctl enable systemd-networkd
# Debian's security and updates suites for apt inside the guest (it has no way out; this is what a cloud image has).
cat > /etc/apt/sources.list <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb $SECURITY bookworm-security main
EOF
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
"""

VENV_SCRIPT: Final = r"""
set -eu
python3 -m venv /opt/mco-venv
/opt/mco-venv/bin/pip install -q --no-index --no-cache-dir --disable-pip-version-check --find-links /tmp/mco-wheels $REQUIREMENTS
/opt/mco-venv/bin/python -c 'import pytest, yaml, hypothesis, pytest_timeout, paramiko'
"""

# Guest kernel command line. mitigations=off: nothing to protect in a throw-away guest, and TCG is CPU-bound.
# loglevel=4: the lab's hundreds of bridge-port messages stay off the console. Cgroup v1, as on the lab machines:
# on cgroup v2, Docker 20.10 defaults to the systemd cgroup driver, which rejects the lab's `--cgroup-parent
# mco-lab-<router>` ("should be a valid slice named as xxx.slice") and no router dockerd starts.
KERNEL_APPEND: Final = "root=/dev/vda rw console=ttyS0 mitigations=off loglevel=4 systemd.unified_cgroup_hierarchy=0"
# TCG, never KVM (a KVM guest hangs on these machines). qemu64 plus what Debian's userland and the kernel's AES-GCM
# use when present (TCG emulates them); no AVX, whose TCG emulation is recent.
QEMU_CPU: Final = "qemu64,+rdrand,+aes,+pclmulqdq,+ssse3,+sse4.1,+sse4.2,+popcnt"

PROJECT_SKIP: Final = frozenset(
    {".git", ".venv", ".cache", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache", "node_modules", "lab-results"}
)
PROJECT_SKIP_PATHS: Final = ("bench/results",)

MARK: Final = "@@MCO-GUEST"
GUEST_RUNNER: Final = "/usr/local/sbin/mco-guest-run"
GUEST_COMMAND: Final = "/usr/local/etc/mco-guest-command"

RUNNER: Final = r"""#!/bin/bash
# Started by cloud-init (runcmd -> systemd-run) once per boot of a run: mounts the project and results disks, reports
# the kernel's capabilities and Docker, runs the command in /project, copies the results out, powers off.
set -u
exec > >(tee -a /run/mco-guest.log > /dev/ttyS0) 2>&1
say() { echo "@@MCO-GUEST $* (uptime $(cut -d' ' -f1 /proc/uptime) s)"; }
finish() {
  rc=$1
  mkdir -p /results/guest
  cp -a /project/lab-results /results/ 2>/dev/null
  journalctl -b --no-pager > /results/guest/journal.txt 2>&1
  cp /var/log/cloud-init.log /var/log/cloud-init-output.log /results/guest/ 2>/dev/null
  cp /run/mco-guest.log /results/guest/runner.log 2>/dev/null
  echo "$rc" > /results/exit-code
  sync
  umount /results
  say "EXIT $rc"
  sleep 1
  systemctl poweroff --no-block
  exit 0
}
cloud-init status --wait > /dev/null 2>&1
say "CLOUD-INIT $(cloud-init status 2>&1 | tr '\n' ' ')"
mkdir -p /project /results
mount LABEL=mcoresults /results || { echo "no results disk"; systemctl poweroff --no-block; exit 1; }
mount LABEL=mcoproject /project || finish 125
say "KERNEL $(uname -r) $(tr -s ' ' < /proc/cmdline)"
# Debian's initramfs mounts /run noexec (and 10 % of RAM), systemd keeps it; the lab keeps its state, node roots
# and their executables under /run/multicloud-overlay-lab, as on the lab machines, where /run allows exec.
mount -o remount,exec,size=50% /run
mkdir -p /results/guest
systemd-analyze > /results/guest/systemd-analyze.txt 2>&1
systemd-analyze blame 2>&1 | head -30 >> /results/guest/systemd-analyze.txt
probe() {
  ip netns add mco-capprobe
  if ip -n mco-capprobe link add g0 type geneve id 1 remote 192.0.2.1 2>/dev/null; then g=yes; else g=no; fi
  if ip -n mco-capprobe xfrm state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x4000 mode transport \
       aead 'rfc4106(gcm(aes))' 0x000000000000000000000000000000000000000000000000000000000000000000000000 128 2>/dev/null
  then e=yes; else e=no; fi
  ip netns delete mco-capprobe
  say "CAPABILITIES geneve=$g esp=$e"
}
probe
for i in $(seq 1 120); do docker info > /dev/null 2>&1 && break; sleep 1; done
bb=$(mktemp -d)
mkdir -p "$bb/bin" && cp /bin/busybox "$bb/bin/busybox" && ln -s busybox "$bb/bin/sh"
if tar -C "$bb" -c . | docker import - mco-guest/busybox:latest > /dev/null \
   && [ "$(docker run --rm mco-guest/busybox:latest /bin/busybox echo docker-runs)" = docker-runs ]; then
  say "DOCKER ok: $(docker version --format '{{.Server.Version}}') $(docker info --format '{{.Driver}} cgroup v{{.CgroupVersion}}')"
else
  say "DOCKER FAILED"
fi
docker rmi -f mco-guest/busybox:latest > /dev/null 2>&1
rm -rf "$bb"
cd /project
export HOME=/root LANG=en_US.UTF-8 PATH="/opt/mco-venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
say "COMMAND $(cat /usr/local/etc/mco-guest-command)"
bash /usr/local/etc/mco-guest-command
finish $?
"""

Out = Callable[[str], None]


def _log(msg: str) -> None:
    print(f"bootimage: {msg}", flush=True)


def _run(argv: Sequence[str], **kw: object) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))}: exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-1500:]}")
    return proc.stdout


# --------------------------------------------------------------------------- inputs


def apt_sources() -> list[tuple[str, list[str]]]:
    """(URI, suites) of the host's Debian apt sources (one-line and deb822 formats)."""
    found: list[tuple[str, list[str]]] = []
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        if f.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.M))
                if "deb" in fields.get("Types", "").split():
                    for uri in fields.get("URIs", "").split():
                        found.append((uri, fields.get("Suites", "").split()))
        else:
            for line in text.splitlines():
                m = re.match(r"^\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line)
                if m:
                    found.append((m.group(1), [m.group(2)]))
    return found


def debian_mirrors() -> tuple[str, str]:
    """(the Debian mirror, the security mirror) the host's apt uses; MCO_DEBIAN_MIRROR overrides the first."""
    sources = apt_sources()
    mirror = os.environ.get("MCO_DEBIAN_MIRROR") or next((u for u, s in sources if SUITE in s), None)
    security = next((u for u, s in sources if f"{SUITE}-security" in s), None)
    if mirror is None:
        raise RuntimeError(f"no apt source for Debian {SUITE} on this host (set MCO_DEBIAN_MIRROR=http://.../debian)")
    return mirror.rstrip("/"), (security or "http://deb.debian.org/debian-security").rstrip("/")


def guest_requirements() -> list[str]:
    """The guest's test tools, pinned as the project pins them."""
    pins: dict[str, str] = {}
    for name in ("requirements.txt", "requirements-dev.txt"):
        for line in (ROOT / name).read_text().splitlines():
            m = re.match(r"^\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s#;]+)", line)
            if m:
                pins[m.group(1).lower()] = m.group(2)
    return [f"{n}=={pins[n.lower()]}" if n.lower() in pins else n for n in GUEST_REQUIREMENTS]


@dataclass(frozen=True)
class Recipe:
    suite: str
    mirror: str
    security: str
    packages: tuple[str, ...]
    requirements: tuple[str, ...]
    fixups: str
    venv: str
    disk_size: str
    version: int

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def recipe() -> Recipe:
    mirror, security = debian_mirrors()
    return Recipe(SUITE, mirror, security, PACKAGES, tuple(guest_requirements()), FIXUPS, VENV_SCRIPT, DISK_SIZE, RECIPE_VERSION)


@dataclass(frozen=True)
class BootImage:
    disk: Path
    """Raw ext4 image of the root filesystem (sparse)."""
    kernel: Path
    initrd: Path
    kernel_release: str
    digest: str
    built: bool
    """True when this call built something, False when everything came from the cache."""
    seconds: float
    used_bytes: int
    """Bytes allocated by the sparse disk image."""


# --------------------------------------------------------------------------- build


def _need_root() -> None:
    if os.geteuid() != 0:
        raise RuntimeError("needs root (debootstrap, chroot, qemu): run it with sudo")


# What building and booting the image needs beyond `make setup` (Debian packages, installed when missing).
BUILD_PACKAGES: Final = ("debootstrap", "qemu-utils", "e2fsprogs", "dosfstools", "mtools", "genisoimage")


def _install_tools() -> None:
    missing = [p for p in BUILD_PACKAGES if subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True).stdout != "install ok installed"]
    if missing:
        print(f"lab.bootimage: installing Debian packages: {' '.join(missing)}", flush=True)
        subprocess.run(["apt-get", "update", "-q"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def _need_tools(tools: dict[str, str]) -> None:
    missing = sorted({pkg for tool, pkg in tools.items() if shutil.which(tool) is None})
    if missing:
        raise RuntimeError(f"missing tools: apt-get install -y {' '.join(missing)}")


def _chroot(rootfs: Path, script: str, env: dict[str, str]) -> None:
    full_env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LC_ALL": "C",
        "DEBIAN_FRONTEND": "noninteractive",
        "HOME": "/root",
        **env,
    }
    proc = subprocess.run(["chroot", str(rootfs), "/bin/sh", "-c", script], env=full_env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"chroot script failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr).strip()[-3000:]}")


def _step(steps: Path, name: str, action: Callable[[], None], out: Out) -> bool:
    """Run one step of the rootfs build unless its stamp (in `steps`, outside the rootfs) exists; True when it ran."""
    steps.mkdir(exist_ok=True)
    stamp = steps / name
    if stamp.exists():
        return False
    started = time.monotonic()
    out(f"{name} ...")
    action()
    stamp.write_text(f"{time.time():.0f}\n")
    out(f"{name} done in {time.monotonic() - started:.0f} s")
    return True


def _kernel_files(rootfs: Path) -> tuple[Path, Path, str]:
    kernels = sorted((rootfs / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise RuntimeError(f"no kernel in {rootfs}/boot")
    release = kernels[-1].name.removeprefix("vmlinuz-")
    initrd = rootfs / "boot" / f"initrd.img-{release}"
    if not initrd.exists():
        raise RuntimeError(f"no initrd for {release} in {rootfs}/boot")
    return kernels[-1], initrd, release


Steps = Callable[[Path, Path, Recipe], list[tuple[str, Callable[[], None]]]]
"""(rootfs, cache, recipe) -> the named build steps after debootstrap and the fix-ups."""


def build(cache: Path = DEFAULT_CACHE, out: Out = _log, keep_rootfs: bool = True, r: Recipe | None = None, steps_after: Steps | None = None) -> BootImage:
    """Build the image (or find it in the cache); see the module docstring. Another image (lab.nodeimage) passes
    its own recipe and steps, and its own cache: old images of other digests in `cache` are removed."""
    _need_root()
    _need_tools({"debootstrap": "debootstrap", "mkfs.ext4": "e2fsprogs", "chroot": "coreutils"})
    started = time.monotonic()
    r = r or recipe()
    digest = r.digest()
    cache.mkdir(parents=True, exist_ok=True)
    disk = cache / f"debian-{SUITE}-{digest}.img"
    kernel, initrd = cache / f"vmlinuz-{digest}", cache / f"initrd-{digest}.img"
    manifest = cache / f"image-{digest}.json"
    if disk.exists() and kernel.exists() and initrd.exists() and manifest.exists():
        info = json.loads(manifest.read_text())
        return BootImage(disk, kernel, initrd, info["kernel_release"], digest, False, 0.0, disk.stat().st_blocks * 512)

    rootfs = cache / f"rootfs-{digest}"
    steps = cache / f"rootfs-{digest}.steps"
    done = steps / "done"
    if not (done.exists() and rootfs.is_dir()):
        out(f"building the rootfs {rootfs.name} from {r.mirror} (digest of the recipe: {digest})")
        rootfs.mkdir(exist_ok=True)
        steps.mkdir(exist_ok=True)

        def debootstrap() -> None:
            # debootstrap leaves a half-made target behind when it fails: start from empty every time (and redo
            # the steps after it).
            for stamp in steps.iterdir():
                stamp.unlink()
            for child in rootfs.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
            _run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={','.join(r.packages)}",
                    SUITE,
                    str(rootfs),
                    r.mirror,
                ]
            )

        def fixups() -> None:
            _chroot(rootfs, r.fixups, {"MIRROR": r.mirror, "SECURITY": r.security})

        def venv() -> None:
            wheels = cache / "wheels"
            wheels.mkdir(exist_ok=True)
            # The host's pip (its index, find-links and cache) fetches the wheels; the guest installs them offline.
            _run(
                [
                    sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:",
                    "--python-version", "3.11", "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_28_x86_64",
                    "--platform", "manylinux_2_34_x86_64", "--dest", str(wheels), *r.requirements,
                ]
            )  # fmt: skip
            inside = rootfs / "tmp" / "mco-wheels"
            shutil.rmtree(inside, ignore_errors=True)
            shutil.copytree(wheels, inside)
            try:
                _chroot(rootfs, r.venv, {"REQUIREMENTS": " ".join(shlex.quote(x) for x in r.requirements)})
            finally:
                shutil.rmtree(inside, ignore_errors=True)

        _step(steps, "debootstrap", debootstrap, out)
        _step(steps, "fixups", fixups, out)
        for name, action in steps_after(rootfs, cache, r) if steps_after else [("venv", venv)]:
            _step(steps, name, action, out)
        done.write_text(json.dumps(asdict(r), indent=1) + "\n")
    else:
        out(f"rootfs {rootfs.name} is built")

    src_kernel, src_initrd, release = _kernel_files(rootfs)
    out(f"disk image {disk.name} ({r.disk_size}, ext4 from the rootfs) ...")
    tmp = disk.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    t0 = time.monotonic()
    _run(["truncate", "-s", r.disk_size, str(tmp)])
    _run(["mkfs.ext4", "-q", "-F", "-L", "mcoroot", "-E", "root_owner=0:0", "-d", str(rootfs), str(tmp)])
    shutil.copyfile(src_kernel, kernel)
    shutil.copyfile(src_initrd, initrd)
    os.replace(tmp, disk)
    out(f"disk image made in {time.monotonic() - t0:.1f} s")
    manifest.write_text(
        json.dumps(
            {"digest": digest, "kernel_release": release, "recipe": asdict(r), "built": time.time(), "seconds": time.monotonic() - started},
            indent=1,
        )
        + "\n"
    )
    # Older images (other digests) go: each is a ~1 GB rootfs and a disk.
    for old in cache.iterdir():
        m = re.match(r"^(?:rootfs-|debian-\w+-|vmlinuz-|initrd-|image-)([0-9a-f]{16})(?:\.img|\.json|\.tmp|\.steps)?$", old.name)
        if m and m.group(1) != digest:
            out(f"removing the outdated {old.name}")
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    if not keep_rootfs:
        shutil.rmtree(rootfs)
    return BootImage(disk, kernel, initrd, release, digest, True, time.monotonic() - started, disk.stat().st_blocks * 512)


# --------------------------------------------------------------------------- run


def _project_copy(dest: Path) -> None:
    def ignore(directory: str, names: list[str]) -> set[str]:
        rel = Path(directory).resolve().relative_to(ROOT)
        skipped = {n for n in names if n in PROJECT_SKIP or n.endswith(".pyc")}
        skipped |= {n for n in names if str(rel / n) in PROJECT_SKIP_PATHS}
        return skipped

    shutil.copytree(ROOT, dest, symlinks=True, ignore=ignore)


def _ext4_from(directory: Path | None, image: Path, label: str, size_mb: int) -> None:
    image.unlink(missing_ok=True)
    _run(["truncate", "-s", f"{size_mb}M", str(image)])
    argv = ["mkfs.ext4", "-q", "-F", "-L", label, "-E", "root_owner=0:0"]
    if directory is not None:
        argv += ["-d", str(directory)]
    _run([*argv, str(image)])


def _du_mb(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total // (1024 * 1024)


def user_data(command: str) -> str:
    """#cloud-config for a run: the runner and the command as files, and runcmd that starts the runner outside
    cloud-init (as a transient unit), so that the run can wait for cloud-init to be done."""

    def block(text: str) -> str:
        return "\n".join(("      " + line) if line else "" for line in text.splitlines())

    return (
        "#cloud-config\n"
        "write_files:\n"
        f"  - path: {GUEST_RUNNER}\n"
        "    permissions: '0755'\n"
        "    content: |\n"
        f"{block(RUNNER)}\n"
        f"  - path: {GUEST_COMMAND}\n"
        "    permissions: '0644'\n"
        "    content: |\n"
        f"{block(command)}\n"
        "runcmd:\n"
        f"  - [systemd-run, --unit, mco-guest-run, --no-block, {GUEST_RUNNER}]\n"
    )


@dataclass
class RunResult:
    exit_code: int
    console: Path
    results: Path
    seconds: float
    marks: dict[str, float]
    """Seconds after qemu started at which each guest milestone showed on the console."""


def run(
    command: str,
    cache: Path = DEFAULT_CACHE,
    results: Path = DEFAULT_RESULTS,
    timeout: float = 3600,
    memory_mb: int = 4096,
    cpus: int = 2,
    echo: bool = True,
    out: Out = _log,
) -> RunResult:
    """Boot the image with a copy of the working tree and run `command` (bash) in /project as root."""
    _need_root()
    _need_tools({"qemu-system-x86_64": "qemu-system-x86", "qemu-img": "qemu-utils", "genisoimage": "genisoimage", "debugfs": "e2fsprogs"})
    image = build(cache, out)
    out(f"image {image.disk.name}: kernel {image.kernel_release}")
    work = Path(tempfile.mkdtemp(prefix="run-", dir=cache))
    try:
        started = time.monotonic()
        stage = work / "project"
        _project_copy(stage)
        project_img, results_img, root_img, seed = work / "project.img", work / "results.img", work / "root.qcow2", work / "seed.iso"
        _ext4_from(stage, project_img, "mcoproject", max(512, _du_mb(stage) * 2 + 256))
        shutil.rmtree(stage)
        _ext4_from(None, results_img, "mcoresults", 1024)
        _run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image.disk), "-F", "raw", str(root_img)])
        seed_dir = work / "seed"
        seed_dir.mkdir()
        (seed_dir / "meta-data").write_text(f"instance-id: mco-run-{int(time.time())}\nlocal-hostname: mco-guest\n")
        (seed_dir / "user-data").write_text(user_data(command))
        _run(["genisoimage", "-quiet", "-output", str(seed), "-volid", "cidata", "-joliet", "-rock", str(seed_dir)])
        out(f"project and seed disks ready in {time.monotonic() - started:.1f} s; booting (TCG, {memory_mb} MB, {cpus} vCPUs)")
        argv = [
            "qemu-system-x86_64", "-accel", "tcg", "-cpu", QEMU_CPU, "-m", str(memory_mb), "-smp", str(cpus),
            "-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot",
            "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", KERNEL_APPEND,
            "-drive", f"file={root_img},if=virtio,format=qcow2",
            "-drive", f"file={project_img},if=virtio,format=raw",
            "-drive", f"file={results_img},if=virtio,format=raw",
            "-drive", f"file={seed},if=virtio,format=raw,readonly=on",
            "-nic", "user,model=virtio-net-pci,restrict=on",
        ]  # fmt: skip
        results.mkdir(parents=True, exist_ok=True)
        console = results / "console.log"
        marks: dict[str, float] = {}
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

        def pump() -> None:
            assert proc.stdout is not None
            with console.open("wb") as log:
                for raw in proc.stdout:
                    log.write(raw)
                    log.flush()
                    line = raw.decode(errors="replace").rstrip("\r\n")
                    now = time.monotonic() - t0
                    if "login:" in line and "login" not in marks:
                        marks["login"] = now
                        out(f"login prompt at {now:.0f} s")
                    m = re.search(rf"{MARK} (\S+)", line)
                    if m:
                        marks.setdefault(m.group(1).lower(), now)
                        out(f"[{now:6.0f}s] {line[m.start() :]}")
                    elif echo and "command" in marks:
                        print(line, flush=True)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            timed_out = True
            out(f"timeout after {timeout:.0f} s: qemu killed")
        reader.join(timeout=10)
        seconds = time.monotonic() - t0
        got = work / "results"
        got.mkdir()
        subprocess.run(["debugfs", "-R", f"rdump / {got}", str(results_img)], capture_output=True)
        for child in got.iterdir():
            target = results / child.name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            shutil.move(str(child), target)
        code_file = results / "exit-code"
        exit_code = 124 if timed_out else int(code_file.read_text().strip()) if code_file.exists() else 125
        (results / "run.json").write_text(
            json.dumps(
                {
                    "command": command,
                    "exit_code": exit_code,
                    "seconds": round(seconds, 1),
                    "marks": {k: round(v, 1) for k, v in marks.items()},
                    "image": {**asdict(image), "disk": str(image.disk), "kernel": str(image.kernel), "initrd": str(image.initrd)},
                    "qemu": argv,
                },
                indent=1,
            )
            + "\n"
        )
        out(f"guest finished in {seconds:.0f} s with exit code {exit_code}; results in {results}")
        return RunResult(exit_code, console, results, seconds, marks)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.bootimage", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"image cache (default {DEFAULT_CACHE})")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_build = sub.add_parser("build", help="build the image (skipped when it is up to date)")
    p_build.add_argument("--drop-rootfs", action="store_true", help="delete the unpacked rootfs after making the disk")
    sub.add_parser("info", help="the image's digest, paths and sizes")
    p_run = sub.add_parser("run", help="boot the image with this working tree and run a command in /project")
    p_run.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help=f"where the results go (default {DEFAULT_RESULTS})")
    p_run.add_argument("--timeout", type=float, default=3600, help="seconds before qemu is killed (default 3600)")
    p_run.add_argument("--memory", type=int, default=4096, help="MB (default 4096)")
    p_run.add_argument("--cpus", type=int, default=2, help="vCPUs (default 2)")
    p_run.add_argument("--quiet", action="store_true", help="do not echo the command's console output")
    p_run.add_argument("command", nargs=argparse.REMAINDER, help="after --: the command, run by bash in /project")
    args = parser.parse_args(argv)
    if argv is None and args.cmd in ("build", "run"):
        become_root(f"lab.bootimage {args.cmd}", "debootstrap, chroot, loop devices, qemu")
        _install_tools()
    try:
        if args.cmd == "build":
            img = build(args.cache, keep_rootfs=not args.drop_rootfs)
            state = f"built in {img.seconds:.0f} s" if img.built else "up to date"
            print(f"{img.disk} ({state}; {img.used_bytes / 1e6:.0f} MB allocated of {DISK_SIZE}); kernel {img.kernel_release}")
            return 0
        if args.cmd == "info":
            digest = recipe().digest()
            manifest = args.cache / f"image-{digest}.json"
            if not manifest.exists():
                print(f"not built (recipe digest {digest}): python -m lab.bootimage build")
                return 1
            disk = args.cache / f"debian-{SUITE}-{digest}.img"
            info = json.loads(manifest.read_text())
            print(f"{disk}: digest {digest}, kernel {info['kernel_release']}, {disk.stat().st_blocks * 512 / 1e6:.0f} MB allocated")
            return 0
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not command:
            parser.error("run: give the command after --, e.g. -- python -m pytest tests/lab/test_lab_lifecycle.py")
        res = run(
            shlex.join(command) if len(command) > 1 else command[0],
            args.cache,
            args.results,
            args.timeout,
            args.memory,
            args.cpus,
            not args.quiet,
        )
        return res.exit_code
    except RuntimeError as e:
        print(f"bootimage: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
