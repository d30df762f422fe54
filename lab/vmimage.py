"""The throw-away kernel VM's boot files: Debian's cloud kernel and an initramfs built for it.

The initramfs holds busybox-static, iproute2's `ip`, iputils `ping`, iptables (nft backend), the network kernel
modules (lab/kernel_modules.py), Debian's python3 with the stdlib it needs, PyYAML and this project's code (under
GUEST_PROJECT). It is cached under .cache/vm and rebuilt when an input changes:

    image = build_image()
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from lab import cpio, kernel_modules
from lab.cpio import Cpio
from lab.kernel_modules import modules_dep, select_modules, strip_module_signature

ROOT: Final = Path(__file__).resolve().parent.parent
ASSETS: Final = Path(__file__).with_name("vm_assets")
DEFAULT_CACHE: Final = ROOT / ".cache" / "vm"
KERNEL_METAPACKAGE: Final = "linux-image-cloud-amd64"
HOST_PYTHON: Final = "/usr/bin/python3.11"
PYTHON_VERSION: Final = "3.11"

GUEST_PROJECT: Final = "/project"
"""Where the image puts this project's code (the in-VM command's working directory and PYTHONPATH)."""

# Real binaries (guest path -> host path); their shared libraries come from ldd.
BINARIES: Final = {
    "/sbin/ip": "/usr/sbin/ip",
    "/sbin/bridge": "/usr/sbin/bridge",
    "/bin/ping": "/usr/bin/ping",
    "/usr/sbin/xtables-nft-multi": "/usr/sbin/xtables-nft-multi",
    "/usr/bin/python3.11": HOST_PYTHON,
    # Busybox applets run their sibling applets before any binary on PATH (`nsenter -- ip ...` would run busybox
    # ip): the ones that exec a command are the real ones.
    "/usr/bin/nsenter": "/usr/bin/nsenter",
    "/usr/bin/unshare": "/usr/bin/unshare",
    "/usr/bin/env": "/usr/bin/env",
    "/usr/bin/timeout": "/usr/bin/timeout",
    # /bin/sh is dash, as on Debian and Ubuntu cloud images: busybox's shell would run its applets (ip, ping)
    # instead of the real tools for every `sh -c` the lab or the node script runs. Busybox's shell stays as ash.
    "/bin/sh": "/usr/bin/dash",
    # strongSwan (encryption ipsec): the IKE daemon a lab node runs in its namespace, and its control tool.
    "/usr/lib/ipsec/charon": "/usr/lib/ipsec/charon",
    "/usr/sbin/swanctl": "/usr/sbin/swanctl",
}
# The charon plugins a lab node loads (the node script's charon_conf), opened at run time: ldd does not see them.
STRONGSWAN_PLUGINS: Final = tuple(
    f"/usr/lib/ipsec/plugins/libstrongswan-{name}.so" for name in ("random", "nonce", "openssl", "kdf", "kernel-netlink", "socket-default", "vici")
)
# glibc opens libgcc_s when a thread is cancelled (charon cancels its worker threads when it stops).
DLOPENED: Final = ("/lib/x86_64-linux-gnu/libgcc_s.so.1",)
SYMLINKS: Final = {
    "/usr/sbin/ip": "/sbin/ip",
    "/usr/sbin/bridge": "/sbin/bridge",
    "/bin/ip": "/sbin/ip",
    "/usr/bin/ping": "/bin/ping",
    "/usr/bin/python3": "python3.11",
    "/usr/bin/python": "python3.11",
    **{
        f"/usr/sbin/{name}": "xtables-nft-multi"
        for name in (
            "iptables",
            "ip6tables",
            "iptables-nft",
            "ip6tables-nft",
            "iptables-save",
            "ip6tables-save",
            "iptables-restore",
            "ip6tables-restore",
            "iptables-nft-save",
            "iptables-nft-restore",
        )
    },
}
# Busybox applets that a real binary replaces (busybox ping lacks -M do; its ip lacks -j).
BUSYBOX_REPLACED: Final = frozenset({"ip", "ping", "ping6", "init", "linuxrc", "nsenter", "unshare", "env", "timeout", "sh"})
XTABLES_PLUGINS: Final = "/usr/lib/x86_64-linux-gnu/xtables"
HOST_FILES: Final = ("/etc/protocols", "/etc/services", "/etc/ethertypes")

# Parts of the stdlib a network lab never imports (and the extension modules that pull big libraries).
STDLIB_SKIP: Final = frozenset(
    {
        "test", "idlelib", "tkinter", "turtledemo", "turtle.py", "ensurepip", "lib2to3", "pydoc_data", "distutils",
        "site-packages", "dist-packages", "__pycache__", "sqlite3", "curses", "dbm", "venv", "unittest",
        "xmlrpc", "wsgiref", "msilib", "__phello__", "config-3.11-x86_64-linux-gnu",
    }
)  # fmt: skip
DYNLOAD_SKIP: Final = re.compile(
    r"^(_test|xx|_ctypes_test|_curses|_dbm|_gdbm|_sqlite3|_ssl|_hashlib|readline|nis|_crypt|ossaudiodev|audioop|_tkinter|_codecs_)"
)
PROJECT_PARTS: Final = ("multicloud_overlay", "overlay", "components", "cloudinit", "lab", "bench")

Out = Callable[[str], None]


@dataclass(frozen=True)
class VmImage:
    kernel: Path
    """The kernel (vmlinuz) of Debian's cloud kernel package."""
    initrd: Path
    """The gzip-compressed initramfs (newc cpio)."""
    kernel_package: str
    kernel_release: str
    digest: str
    """Hash of every input of the initramfs; the initrd file name carries it."""
    size: int
    """Size of the initramfs in bytes."""
    built: bool
    """True when this call built the initramfs, False when it came from the cache."""
    seconds: float


# --------------------------------------------------------------------------- host helpers


def _log(msg: str) -> None:
    print(f"vm: {msg}", flush=True)


def _run(argv: Sequence[str], cwd: Path | None = None) -> str:
    proc = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-400:]}")
    return proc.stdout


def resolve_kernel_package() -> str:
    """The versioned kernel package the cloud metapackage depends on (e.g. linux-image-6.1.0-56-cloud-amd64)."""

    def lookup() -> str | None:
        proc = subprocess.run(["apt-cache", "depends", KERNEL_METAPACKAGE], capture_output=True, text=True)
        m = re.search(r"Depends:\s*(linux-image-\S+-cloud-amd64)", proc.stdout)
        return m.group(1) if m else None

    name = lookup()
    if name is None:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True)
        name = lookup()
    if name is None:
        raise RuntimeError(f"cannot resolve {KERNEL_METAPACKAGE} with apt-cache (a Debian machine with apt sources is needed)")
    return name


def fetch_kernel(cache_dir: Path, out: Out = _log) -> tuple[str, Path]:
    """Download (once) and unpack (once) Debian's cloud kernel; returns (package, unpacked tree)."""
    debs = cache_dir / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    try:
        package = resolve_kernel_package()
    except RuntimeError:
        cached = sorted((cache_dir / "kernel").glob("linux-image-*"))
        if not cached:
            raise
        package = cached[-1].name
        out(f"apt-cache unavailable, using the cached {package}")
    tree = cache_dir / "kernel" / package
    if (tree / ".unpacked").exists():
        return package, tree
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        out(f"downloading {package} (apt-get download)")
        _run(["apt-get", "download", package], cwd=debs)
        found = sorted(debs.glob(f"{package}_*.deb"))
        if not found:
            raise RuntimeError(f"apt-get download {package} left no .deb in {debs}")
    tmp = tree.with_name(tree.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _run(["dpkg-deb", "-x", str(found[-1]), str(tmp)])
    (tmp / ".unpacked").write_text(found[-1].name + "\n")
    shutil.rmtree(tree, ignore_errors=True)
    tmp.rename(tree)
    return package, tree


def _ldd(paths: Iterable[str]) -> set[str]:
    """Shared libraries (resolved paths, the loader included) of ELF files."""
    libs: set[str] = set()
    for p in paths:
        proc = subprocess.run(["ldd", p], capture_output=True, text=True)
        for line in proc.stdout.splitlines():
            m = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
            if m:
                libs.add(m.group(1))
    return libs


def _project_files() -> list[Path]:
    files: list[Path] = []
    for part in PROJECT_PARTS:
        for p in sorted((ROOT / part).rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".tmp"):
                files.append(p)
    files += sorted(ROOT.glob("Pulumi*.yaml"))
    return files


def _yaml_dir() -> Path:
    import yaml  # the project's dependency; only its pure-Python part goes into the image

    return Path(yaml.__file__).resolve().parent


def _stdlib_skip(stdlib: Path) -> Callable[[Path], bool]:
    def skip(p: Path) -> bool:
        rel = p.relative_to(stdlib)
        if rel.parts[0] in STDLIB_SKIP or p.name == "__pycache__" or p.suffix in (".pyc", ".exe"):
            return True
        return rel.parts[0] == "lib-dynload" and bool(DYNLOAD_SKIP.match(p.name))

    return skip


def inputs_digest(package: str) -> str:
    """Hash of every input of the initramfs' system part: this module, the cpio writer, the kernel module choice
    and the assets by content, system files by path, size and mtime."""
    h = hashlib.sha256(package.encode())
    for source in (__file__, cpio.__file__, kernel_modules.__file__):
        h.update(Path(source).read_bytes())
    for p in sorted(ASSETS.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            h.update(str(p.relative_to(ASSETS)).encode() + p.read_bytes())
    system = [*BINARIES.values(), *STRONGSWAN_PLUGINS, *DLOPENED, "/bin/busybox", *HOST_FILES]
    for top in (Path(XTABLES_PLUGINS), Path(f"/usr/lib/python{PYTHON_VERSION}"), _yaml_dir()):
        system += [str(p) for p in sorted(top.rglob("*.py" if top.name != "xtables" else "*.so"))]
        if top.name.startswith("python"):
            system += [str(p) for p in sorted((top / "lib-dynload").glob("*.so"))]
    for s in system:
        try:
            st = os.stat(s)
            h.update(f"{s}:{st.st_size}:{int(st.st_mtime)}".encode())
        except OSError:
            h.update(f"{s}:missing".encode())
    return h.hexdigest()


def _kernel_release(tree: Path) -> str:
    releases = sorted(p.name for p in (tree / "lib" / "modules").iterdir())
    if len(releases) != 1:
        raise RuntimeError(f"expected one kernel release in {tree}/lib/modules, found {releases}")
    return releases[0]


def _compile(stage: Path) -> None:
    """Byte-compile with the guest's own python (same magic number), hash-based pycs (no mtime checks)."""
    _run([HOST_PYTHON, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash", str(stage)])


def _busybox_applets() -> list[str]:
    out = _run(["/bin/busybox", "--list-full"])
    return [line.strip() for line in out.splitlines() if line.strip()]


def system_archive(tree: Path, release: str, out: Out = _log) -> bytes:
    """The initramfs' system part (cpio, uncompressed): busybox, tools, libraries, python, kernel modules, init."""
    for tool in ("/bin/busybox", *BINARIES.values(), *STRONGSWAN_PLUGINS, *DLOPENED):
        if not os.path.exists(tool):
            raise RuntimeError(
                f"{tool} is missing (apt-get install busybox-static iproute2 iputils-ping iptables python3.11 "
                "strongswan-charon strongswan-swanctl libstrongswan-standard-plugins)"
            )
    c = Cpio()
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "lib", "lib64", "etc", "proc", "sys", "dev", "run", "tmp", "root", "var", "mnt"):
        c.dir(d, 0o1777 if d == "tmp" else 0o755)
    c.chardev("dev/console", 5, 1)
    c.chardev("dev/null", 1, 3, 0o666)
    c.symlink("var/run", "/run")
    c.copy("init", ASSETS / "init.sh")
    c.copy("etc/vm/guest_run.py", ASSETS / "guest_run.py")
    for host in HOST_FILES:
        if os.path.exists(host):
            c.copy(host, host)
    c.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    c.file("etc/group", b"root:x:0:\n")
    c.file("etc/hosts", b"127.0.0.1 localhost overlay-vm\n::1 localhost\n")
    c.file("etc/nsswitch.conf", b"passwd: files\ngroup: files\nhosts: files\nprotocols: files\nservices: files\n")

    # busybox and its applets
    c.copy("bin/busybox", "/bin/busybox")
    for applet in _busybox_applets():
        if Path(applet).name not in BUSYBOX_REPLACED and applet.strip("/") != "bin/busybox":
            c.symlink(applet, "/bin/busybox")

    # real binaries, their libraries, iptables' extensions
    elves = list(BINARIES.values())
    plugins = sorted(str(p) for p in Path(XTABLES_PLUGINS).glob("*.so"))
    stdlib = Path(f"/usr/lib/python{PYTHON_VERSION}")
    skip = _stdlib_skip(stdlib)
    dynload = sorted(str(p) for p in (stdlib / "lib-dynload").glob("*.so") if not skip(p))
    for lib in sorted(_ldd([*elves, *plugins, *dynload, *STRONGSWAN_PLUGINS]) | set(DLOPENED)):
        c.copy(lib, lib)
        if lib.startswith("/lib64/") or lib.endswith("ld-linux-x86-64.so.2"):
            c.symlink("lib64/ld-linux-x86-64.so.2", lib)
    for guest, host in BINARIES.items():
        c.copy(guest, host)
    for guest, target in SYMLINKS.items():
        c.symlink(guest, target)
    for p in [*plugins, *STRONGSWAN_PLUGINS]:
        c.copy(p, p)

    # python: a byte-compiled copy of the trimmed stdlib, PyYAML's pure-Python part
    with tempfile.TemporaryDirectory(prefix="vm-py-") as tmpdir:
        stage = Path(tmpdir)
        shutil.copytree(stdlib, stage / "stdlib", ignore=lambda d, names: [n for n in names if skip(Path(d) / n)], symlinks=True)
        shutil.copytree(_yaml_dir(), stage / "yaml", ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyc", "cyaml.py"))
        _compile(stage)
        c.tree(f"usr/lib/python{PYTHON_VERSION}", stage / "stdlib")
        c.tree("usr/lib/python3/dist-packages/yaml", stage / "yaml")

    # kernel modules
    moddir = tree / "lib" / "modules" / release
    mods, boot = select_modules(moddir)
    for m in mods:
        c.copy(f"lib/modules/{release}/{m.rel}", moddir / m.rel, strip_module_signature)
    dep, alias = modules_dep(mods)
    c.file(f"lib/modules/{release}/modules.dep", dep.encode())
    c.file(f"lib/modules/{release}/modules.alias", alias.encode())
    c.copy(f"lib/modules/{release}/modules.builtin", moddir / "modules.builtin")
    c.file("etc/vm/modules.load", "".join(f"{rel}\n" for rel in boot).encode())
    out(f"system part: {len(mods)} kernel modules ({len(boot)} loaded at boot), python {PYTHON_VERSION}, busybox, iproute2, iptables")
    return c.finish()


def project_archive() -> bytes:
    """The initramfs' project part (cpio): components/, cloudinit/, lab/, Pulumi*.yaml under GUEST_PROJECT, byte-compiled."""
    c = Cpio()
    with tempfile.TemporaryDirectory(prefix="vm-project-") as tmpdir:
        stage = Path(tmpdir) / "project"
        for p in _project_files():
            target = stage / p.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, target)
        for link in (ROOT / "multicloud_overlay").iterdir():  # the building blocks' links (lab, bench import through them)
            if link.is_symlink():
                (stage / link.relative_to(ROOT)).symlink_to(os.readlink(link))
        _compile(stage)
        c.tree(GUEST_PROJECT, stage)
    return c.finish()


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def build_image(cache_dir: Path = DEFAULT_CACHE, out: Out = _log) -> VmImage:
    """Debian's cloud kernel and an initramfs for it, cached in cache_dir.

    The initramfs is two concatenated segments (the kernel unpacks both): the system part, rebuilt when a system
    input or the code that builds it changes (inputs_digest; ~20 s), and the project part, rebuilt when the
    project's source changes (<1 s).
    """
    started = time.monotonic()
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    package, tree = fetch_kernel(cache_dir, out)
    release = _kernel_release(tree)
    kernel = tree / "boot" / f"vmlinuz-{release}"
    system_digest = inputs_digest(package)
    project_digest = hashlib.sha256(b"".join(str(p.relative_to(ROOT)).encode() + p.read_bytes() for p in _project_files())).hexdigest()
    system = cache_dir / f"system-{system_digest[:16]}.cpio.gz"
    initrd = cache_dir / f"initrd-{system_digest[:16]}-{project_digest[:16]}.gz"
    built = False
    if not system.exists():
        out(f"building the initramfs system part for {release}")
        _write(system, gzip.compress(system_archive(tree, release, out), compresslevel=6, mtime=0))
        built = True
    if not initrd.exists():
        _write(initrd, system.read_bytes() + gzip.compress(project_archive(), compresslevel=6, mtime=0))
        built = True
    for old in [*cache_dir.glob("system-*.cpio.gz"), *cache_dir.glob("initrd-*.gz")]:
        if old not in (system, initrd):
            old.unlink()
    size = initrd.stat().st_size
    if built:
        out(f"initramfs {initrd.name}: {size / 1e6:.1f} MB in {time.monotonic() - started:.1f} s")
    return VmImage(
        kernel=kernel,
        initrd=initrd,
        kernel_package=package,
        kernel_release=release,
        digest=f"{system_digest[:16]}-{project_digest[:16]}",
        size=size,
        built=built,
        seconds=time.monotonic() - started,
    )
