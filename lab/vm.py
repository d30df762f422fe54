"""The lab in a throw-away kernel VM: GENEVE (and everything else) on Debian's cloud kernel under qemu TCG.

The host kernel of the lab machines (and CI) has no geneve module, so a GENEVE overlay is proven in a VM that
boots Debian's cloud kernel with an initramfs built here: busybox-static, iproute2's `ip`, iputils `ping`,
iptables (nft backend), the network kernel modules, Debian's python3 with the stdlib it needs, PyYAML and this
project's code. The VM has no disk, no network card and no Docker: router containers are plain network
namespaces (`--containers netns`). Its console is the only channel: the command's output, its exit code and a
results folder (base64 tarball between markers) come back over it.

    image = build_image()                                   # cached under .cache/vm, rebuilt when inputs change
    res = run_in_vm(["python3", "-m", "lab", "status"], timeout=120)
    python -m lab vm --sites aws,azure,gcp --protocol geneve   # the lab, in the VM
    python -m lab vm --self-test                            # GENEVE overlay of 3 sites from their payloads

Only stdlib at import time: this module also runs inside the VM (`python3 -m lab.vm selftest`).
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import io
import json
import os
import queue
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parent.parent
ASSETS: Final = Path(__file__).with_name("vm_assets")
DEFAULT_CACHE: Final = ROOT / ".cache" / "vm"
KERNEL_METAPACKAGE: Final = "linux-image-cloud-amd64"
HOST_PYTHON: Final = "/usr/bin/python3.11"
PYTHON_VERSION: Final = "3.11"

GUEST_PROJECT: Final = "/project"
GUEST_RESULTS: Final = "/tmp/vm-results"
GUEST_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# mitigations=off: no retpolines/barriers to emulate in a throw-away guest (boot and packet path are CPU-bound).
KERNEL_CMDLINE: Final = "console=ttyS0 quiet panic=-1 mitigations=off"

EXIT_MARK: Final = "@@VM-EXIT"
READY_MARK: Final = "@@VM-READY"
RESULTS_BEGIN: Final = "@@VM-RESULTS-BEGIN@@"
RESULTS_END: Final = "@@VM-RESULTS-END@@"
EXIT_TIMEOUT: Final = 124
EXIT_NO_STATUS: Final = 125

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
}
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

# Kernel modules loaded at boot, with their dependencies (resolved from each module's own `depends=`).
BOOT_MODULES: Final = (
    "llc", "stp", "bridge", "veth", "udp_tunnel", "ip6_udp_tunnel", "vxlan", "geneve", "dummy", "macvlan",
    "nf_conntrack", "nf_nat", "nf_tables", "nft_compat", "nft_chain_nat", "nft_ct", "nft_nat", "nft_masq",
    "nft_reject_inet", "x_tables", "xt_nat", "xt_MASQUERADE", "xt_conntrack", "xt_state", "xt_tcpudp", "xt_comment",
    "xt_addrtype", "xt_mark", "xt_multiport", "ipt_REJECT", "ip6t_REJECT",
    "ip_tables", "ip6_tables", "iptable_filter", "iptable_nat", "iptable_mangle", "iptable_raw",
    "ip6table_filter", "ip6table_nat", "ip6table_mangle", "ip6table_raw",
    # encryption: ipsec (ESP in UDP, AES-GCM), which the host kernel lacks too.
    "xfrm_user", "xfrm_algo", "esp4", "esp6", "gcm", "ghash_generic", "gf128mul", "ctr", "seqiv", "echainiv", "authenc",
    "sha512_generic", "sha3_generic", "jitterentropy_rng", "drbg",  # seqiv draws its IV salt from the default RNG (stdrng = drbg)
)  # fmt: skip
# Also in the image, loaded on demand by the kernel through busybox modprobe (modules.dep/modules.alias).
EXTRA_MODULE_DIRS: Final = ("kernel/net/netfilter", "kernel/net/ipv4/netfilter", "kernel/net/ipv6/netfilter", "kernel/net/bridge")
# AES-NI and carry-less multiply drivers, for a guest given those CPU features (AES_NI_CPU): loaded with modprobe.
CPU_CRYPTO_MODULES: Final = ("aesni_intel", "ghash_clmulni_intel")
DEFAULT_CPU: Final = "qemu64,+rdrand"
AES_NI_CPU: Final = "qemu64,+rdrand,+aes,+pclmulqdq,+ssse3,+sse4.1,+sse4.2"
"""TCG emulates AES-NI and PCLMULQDQ: the kernel's AES-GCM then runs its aesni driver instead of generic C."""
EXTRA_MODULE_SKIP: Final = re.compile(
    r"^(ip_vs|ip_set|nf_conntrack_(h323|sip|pptp|amanda|ftp|irc|netbios|snmp|sane|tftp|broadcast)|nf_nat_(h323|sip|pptp|amanda|ftp|irc|snmp|tftp)|ebt|ebtable|nf_tables_|xt_bpf|xt_set)"
)

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
PROJECT_PARTS: Final = ("components", "cloudinit", "lab", "bench")

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


# --------------------------------------------------------------------------- kernel modules


def _elf_section(data: bytes, wanted: str) -> bytes | None:
    """One section of a little-endian ELF64 file (kernel modules)."""
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return None
    shoff = int.from_bytes(data[0x28:0x30], "little")
    shentsize = int.from_bytes(data[0x3A:0x3C], "little")
    shnum = int.from_bytes(data[0x3C:0x3E], "little")
    shstrndx = int.from_bytes(data[0x3E:0x40], "little")

    def header(i: int) -> tuple[int, int, int]:
        base = shoff + i * shentsize
        name = int.from_bytes(data[base : base + 4], "little")
        offset = int.from_bytes(data[base + 0x18 : base + 0x20], "little")
        size = int.from_bytes(data[base + 0x20 : base + 0x28], "little")
        return name, offset, size

    _, str_off, str_size = header(shstrndx)
    names = data[str_off : str_off + str_size]
    for i in range(shnum):
        name, offset, size = header(i)
        end = names.index(b"\0", name)
        if names[name:end].decode() == wanted:
            return data[offset : offset + size]
    return None


@dataclass
class Module:
    name: str
    rel: str
    """Path under /lib/modules/<release>/."""
    depends: list[str] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)


def _module_info(tree: Path, rel: str) -> Module:
    path = tree / rel
    data = path.read_bytes()
    if rel.endswith(".xz"):
        import lzma

        data = lzma.decompress(data)
    info = _elf_section(data, ".modinfo") or b""
    name = Path(rel).name.split(".ko")[0].replace("-", "_")
    mod = Module(name=name, rel=rel)
    for item in info.split(b"\0"):
        key, _, value = item.decode(errors="replace").partition("=")
        if key == "depends" and value:
            mod.depends = [d.replace("-", "_") for d in value.split(",") if d]
        elif key == "alias" and value:
            mod.aliases.append(value)
        elif key == "name" and value:
            mod.name = value
    return mod


def select_modules(moddir: Path) -> tuple[list[Module], list[str]]:
    """(every module of the image, the boot load order as paths) with dependencies closed over."""
    builtin = {Path(line.strip()).name.split(".ko")[0].replace("-", "_") for line in (moddir / "modules.builtin").read_text().splitlines()}
    index: dict[str, str] = {}
    for p in moddir.rglob("*.ko*"):
        index[p.name.split(".ko")[0].replace("-", "_")] = str(p.relative_to(moddir))
    wanted = [m for m in BOOT_MODULES if m not in builtin]
    missing = [m for m in wanted if m not in index]
    if missing:
        raise RuntimeError(f"kernel modules not in {moddir}: {', '.join(missing)}")
    extra = [
        name
        for name, rel in sorted(index.items())
        if ((rel.startswith(EXTRA_MODULE_DIRS) and not EXTRA_MODULE_SKIP.match(name)) or name in CPU_CRYPTO_MODULES) and name not in wanted
    ]
    infos: dict[str, Module] = {}

    def visit(name: str, order: list[str], seen: set[str]) -> None:
        if name in seen or name in builtin:
            return
        seen.add(name)
        if name not in infos:
            infos[name] = _module_info(moddir, index[name])
        for dep in infos[name].depends:
            visit(dep, order, seen)
        order.append(name)

    boot: list[str] = []
    seen: set[str] = set()
    for name in wanted:
        visit(name, boot, seen)
    everything = list(boot)
    for name in extra:
        visit(name, everything, seen)
    return [infos[n] for n in everything], [infos[n].rel for n in boot]


MODULE_SIG_MAGIC: Final = b"~Module signature appended~\n"


def strip_module_signature(data: bytes) -> bytes:
    """The module without its appended signature: checking 4096-bit RSA signatures under TCG costs ~0.1 s a module,
    and this kernel does not enforce them (CONFIG_MODULE_SIG_FORCE unset; it only notes the taint once)."""
    if not data.endswith(MODULE_SIG_MAGIC):
        return data
    sig_len = int.from_bytes(data[-len(MODULE_SIG_MAGIC) - 4 : -len(MODULE_SIG_MAGIC)], "big")
    return data[: -(len(MODULE_SIG_MAGIC) + 12 + sig_len)]


def _modules_dep(mods: list[Module]) -> tuple[str, str]:
    """modules.dep and modules.alias for busybox modprobe (the kernel's on-demand loads)."""
    by_name = {m.name: m for m in mods}

    def closure(m: Module, acc: list[str]) -> list[str]:
        for d in m.depends:
            if d in by_name and by_name[d].rel not in acc:
                acc.append(by_name[d].rel)
                closure(by_name[d], acc)
        return acc

    dep = "".join(f"{m.rel}: {' '.join(closure(m, []))}".rstrip() + "\n" for m in mods)
    alias = "".join(f"alias {a} {m.name}\n" for m in mods for a in m.aliases)
    return dep, alias


# --------------------------------------------------------------------------- initramfs


class Cpio:
    """A newc cpio archive (what the kernel unpacks as initramfs), written in order, deterministic."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1
        self.names: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", mtime: int = 0, rdev: tuple[int, int] = (0, 0)) -> None:
        name = name.lstrip("/")
        if name in self.names:
            return
        self.names.add(name)
        fields = [self.ino, mode, 0, 0, 1, mtime, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0]
        header = b"070701" + b"".join(f"{v:08x}".encode() for v in fields)
        self.ino += 1
        self.buf.write(header + name.encode() + b"\0")
        self.buf.write(b"\0" * (-(len(header) + len(name) + 1) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))

    def parents(self, name: str) -> None:
        parts = name.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            self.dir("/".join(parts[:i]))

    def dir(self, name: str, mode: int = 0o755) -> None:
        self.parents(name)
        self._entry(name, stat.S_IFDIR | mode)

    def file(self, name: str, data: bytes, mode: int = 0o644, mtime: int = 0) -> None:
        self.parents(name)
        self._entry(name, stat.S_IFREG | mode, data, mtime)

    def symlink(self, name: str, target: str) -> None:
        self.parents(name)
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self.parents(name)
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def copy(self, name: str, host: str | Path, transform: Callable[[bytes], bytes] | None = None) -> None:
        """A host file (symlinks followed), keeping its permission bits and mtime."""
        st = os.stat(host)
        data = Path(host).read_bytes()
        self.file(name, transform(data) if transform else data, stat.S_IMODE(st.st_mode), int(st.st_mtime))

    def tree(self, name: str, host: Path, skip: Callable[[Path], bool] = lambda p: False) -> None:
        for dirpath, dirnames, filenames in os.walk(host):
            d = Path(dirpath)
            dirnames[:] = sorted(n for n in dirnames if not skip(d / n))
            rel = d.relative_to(host)
            self.dir(f"{name}/{rel}" if str(rel) != "." else name)
            for fn in sorted(filenames):
                p = d / fn
                if skip(p):
                    continue
                target = f"{name}/{rel}/{fn}" if str(rel) != "." else f"{name}/{fn}"
                if p.is_symlink():
                    self.symlink(target, os.readlink(p))
                else:
                    self.copy(target, p)

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        data = self.buf.getvalue()
        return data + b"\0" * (-len(data) % 512)


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
    """Hash of every input of the initramfs' system part: this module and its assets by content, system files by
    path, size and mtime."""
    h = hashlib.sha256(package.encode())
    h.update(Path(__file__).read_bytes())
    for p in sorted(ASSETS.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            h.update(str(p.relative_to(ASSETS)).encode() + p.read_bytes())
    system = [*BINARIES.values(), "/bin/busybox", *HOST_FILES]
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
    for tool in ("/bin/busybox", *BINARIES.values()):
        if not os.path.exists(tool):
            raise RuntimeError(f"{tool} is missing (apt-get install busybox-static iproute2 iputils-ping iptables python3.11)")
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
    for lib in sorted(_ldd([*elves, *plugins, *dynload])):
        c.copy(lib, lib)
        if lib.startswith("/lib64/") or lib.endswith("ld-linux-x86-64.so.2"):
            c.symlink("lib64/ld-linux-x86-64.so.2", lib)
    for guest, host in BINARIES.items():
        c.copy(guest, host)
    for guest, target in SYMLINKS.items():
        c.symlink(guest, target)
    for p in plugins:
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
    dep, alias = _modules_dep(mods)
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
    input or this module changes (~20 s), and the project part, rebuilt when the project's source changes (<1 s).
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


# --------------------------------------------------------------------------- running


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


# --------------------------------------------------------------------------- GENEVE self-test (runs in the VM)


def _sh(argv: Sequence[str], check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, input=input)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()}")
    return proc


def _ping(ns: str, target: str, size: int = 56, tries: int = 3) -> bool:
    argv = ["nsenter", f"--net=/run/netns/{ns}", "--", "ping", "-c", "1", "-W", "2", "-M", "do", "-s", str(size), target]
    return any(_sh(argv, check=False).returncode == 0 for _ in range(tries))


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


CLONE_NEWNET: Final = 0x40000000


def enter_netns(path: str) -> None:
    """Move the calling thread (only) into the network namespace at path (/run/netns/NAME)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def ping_all(targets: Sequence[str], netns: str | None = None, rounds: int = 3, wait: float = 1.0) -> dict[str, bool]:
    """ICMP echo to every target at once from this thread's network namespace (or from netns, which this thread
    enters): raw sockets, no process per ping (an exec costs ~0.1 s under TCG; 420 pairs would take minutes).

    A target counts as reachable when it answers any of `rounds` requests sent `wait` seconds apart.
    """
    import ipaddress
    import select
    import socket

    if netns is not None:
        enter_netns(f"/run/netns/{netns}")
    ident = (os.getpid() + threading.get_native_id()) & 0xFFFF
    v4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    v6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    answered = {t: False for t in targets}
    canon = {str(ipaddress.ip_address(t)): t for t in targets}
    try:
        for rnd in range(rounds):
            for seq, t in enumerate(targets):
                if answered[t]:
                    continue
                if ipaddress.ip_address(t).version == 4:
                    body = bytes([8, 0, 0, 0]) + ident.to_bytes(2, "big") + (rnd * 1000 + seq).to_bytes(2, "big") + b"overlay"
                    body = body[:2] + _checksum(body).to_bytes(2, "big") + body[4:]
                    v4.sendto(body, (t, 0))
                else:  # the kernel fills in the ICMPv6 checksum
                    v6.sendto(bytes([128, 0, 0, 0]) + ident.to_bytes(2, "big") + (rnd * 1000 + seq).to_bytes(2, "big") + b"overlay", (t, 0))
            deadline = time.monotonic() + wait
            while not all(answered.values()) and (left := deadline - time.monotonic()) > 0:
                ready, _, _ = select.select([v4, v6], [], [], left)
                for sock in ready:
                    data, addr = sock.recvfrom(2048)
                    if sock is v4:
                        data = data[(data[0] & 0x0F) * 4 :]
                        ok = data[0] == 0
                    else:
                        ok = data[0] == 129
                    src = str(ipaddress.ip_address(addr[0].split("%")[0]))
                    if ok and int.from_bytes(data[4:6], "big") == ident and src in canon:
                        answered[canon[src]] = True
            if all(answered.values()):
                break
    finally:
        v4.close()
        v6.close()
    return answered


@dataclass
class SelfTest:
    """3 sites of a stack as namespaces in the VM: routers' WANs on one segment, each client on its router's LAN."""

    stack: Path
    sites: list[str]
    hub: str
    protocol: str
    work: Path
    containers: int | None = None
    log: Out = field(default=print)

    def plan(self) -> Any:
        from components.config import parse_config
        from components.plan import build_plan
        from components.stackfile import read_stack_file

        raw = read_stack_file(self.stack)
        raw["sites"] = {k: v for k, v in raw["sites"].items() if k in self.sites}
        raw["hub"], raw["protocol"], raw["topology"] = self.hub, self.protocol, "hub-and-spoke"
        # The self-test proves GENEVE from the payloads alone, on one flat segment without NAT: clear tunnels. IPsec
        # (keys, NAT traversal) is proven by the real lab in the VM (`lab vm --encryption ipsec`).
        raw["encryption"] = "none"
        if self.containers is not None:
            raw["containersPerRouter"] = self.containers
        return build_plan(parse_config(raw))

    @staticmethod
    def ns(node: str) -> str:
        return f"st-{node}"

    def underlay(self, plan: Any) -> None:
        """Namespaces and NICs, a few `ip -batch` calls (each `ip` exec costs ~0.1 s under TCG)."""
        for n in plan.nodes:
            _sh(["ip", "netns", "add", self.ns(n.name)])
        root = ["link add st-wan type bridge", "link set st-wan up"]
        inside: dict[str, list[str]] = {self.ns(n.name): ["link set lo up"] for n in plan.nodes}
        for r in plan.routers():
            ns, cns, port = self.ns(r.name), self.ns(plan.client(r.site).name), f"w-{r.site}"[:15]
            client = plan.client(r.site)
            root += [
                f"link add {port} type veth peer name wan0 netns {ns}",
                f"link set {port} master st-wan up",
                f"link add lan0 netns {ns} type veth peer name lan0 netns {cns}",
            ]
            # One shared segment: a /8 puts every router WAN on-link (a router's public address is its WAN one).
            inside[ns] += [f"addr add {r.wan_ip}/8 dev wan0", "link set wan0 up", "link set lan0 up"]
            inside[cns] += [f"addr add {client.lan_ip}/{client.lan_prefix} dev lan0", "link set lan0 up"]
        _sh(["ip", "-batch", "-"], input="\n".join(root) + "\n")
        for ns, cmds in inside.items():
            _sh(["ip", "-n", ns, "-batch", "-"], input="\n".join(cmds) + "\n")

    def apply(self, plan: Any, node: str) -> str:
        """The node's payload files under its root, the payload unit's ExecStart in the node's namespace (its
        bootstrap config), then the push of its full config (`overlay-node push`, the config on stdin)."""
        import json

        from cloudinit.render import PUSH_COMMAND, read_payload, render_user_data, unit_exec_start
        from components.plan import bootstrap_config, node_config

        public = {r.site: r.wan_ip for r in plan.routers()}
        doc = node_config(plan, node, public, container_runtime="netns")
        n = plan.node(node)
        if n.kind == "router" and not doc["lan"]["configure"]:
            # Platforms whose image addresses the LAN NIC itself (DHCP): as that image would.
            _sh(["ip", "-n", self.ns(node), "addr", "add", f"{n.lan_ip}/{n.lan_prefix}", "dev", "lan0"])
        payload = render_user_data(bootstrap_config(plan, node, container_runtime="netns"))
        root = self.work / node
        files, _ = read_payload(payload)
        for f in files:
            target = root / f.path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f.content)
            target.chmod(f.mode)
        output = ""
        for command, stdin in ((unit_exec_start(payload), None), (list(PUSH_COMMAND), json.dumps(doc) + "\n")):
            argv = [str(root / a.lstrip("/")) if a.startswith(("/etc/", "/var/", "/usr/local/")) else a for a in command]
            proc = _sh(["nsenter", f"--net=/run/netns/{self.ns(node)}", "--", *argv], check=False, input=stdin)
            if proc.returncode != 0:
                raise RuntimeError(f"{node}: {' '.join(argv)}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
            output += proc.stdout
        return output

    def run(self, results: Path) -> int:
        results.mkdir(parents=True, exist_ok=True)
        plan = self.plan()
        report: dict[str, Any] = {
            "protocol": self.protocol,
            "hub": self.hub,
            "sites": self.sites,
            "mtu": plan.mtu,
            "kernel": os.uname().release,
        }
        t0 = time.monotonic()
        self.underlay(plan)
        with ThreadPoolExecutor(max_workers=len(plan.nodes)) as pool:
            outputs = dict(zip([n.name for n in plan.nodes], pool.map(lambda n: self.apply(plan, n.name), plan.nodes), strict=True))
        report["apply_seconds"] = round(time.monotonic() - t0, 1)
        for node, text in outputs.items():
            self.log(f"--- {node}\n{text.strip()}")
            (results / f"apply-{node}.txt").write_text(text)

        # Tunnel devices are of the chosen kind (what `ip -d link` shows).
        tunnels: dict[str, dict[str, str]] = {}
        for n in plan.nodes:
            text = _sh(["ip", "-n", self.ns(n.name), "-d", "link", "show"]).stdout
            (results / f"ip-d-link-{n.name}.txt").write_text(text)
            links = json.loads(_sh(["ip", "-n", self.ns(n.name), "-d", "-j", "link", "show"]).stdout)
            tunnels[n.name] = {
                link["ifname"]: link.get("linkinfo", {}).get("info_kind", "?")
                for link in links
                if link["ifname"].startswith(("ovl-r", "ovl-c"))
            }
            if self.protocol not in text:
                tunnels[n.name]["ip -d link"] = f"no {self.protocol} in ip -d link"
        report["tunnels"] = tunnels
        wrong = [f"{node}:{dev}={kind}" for node, devs in tunnels.items() for dev, kind in devs.items() if kind != self.protocol]

        # Every owner (node or container namespace) pings every other owner's overlay address, both families.
        owners = plan.overlay_addresses()
        ns_of = {n.name: self.ns(n.name) for n in plan.nodes}
        owner_of = {addr: dst for dst, v4, v6 in owners for addr in (v4, v6)}
        t1 = time.monotonic()

        def from_owner(src: str) -> dict[str, bool]:
            targets = [addr for dst, v4, v6 in owners if dst != src for addr in (v4, v6)]
            return ping_all(targets, netns=ns_of.get(src, src))

        # One thread per source, each in its source's namespace (setns moves only the calling thread).
        with ThreadPoolExecutor(max_workers=len(owners)) as pool:
            matrix = dict(zip([o[0] for o in owners], pool.map(from_owner, [o[0] for o in owners]), strict=True))
        pairs = [(src, owner_of[addr], addr) for src, got in matrix.items() for addr in got]
        failed = [f"{src} -> {owner_of[addr]} ({addr})" for src, got in matrix.items() for addr, ok in got.items() if not ok]
        report["matrix"] = matrix
        report["pairs"] = {
            "total": len(pairs),
            "ok": len(pairs) - len(failed),
            "failed": failed,
            "seconds": round(time.monotonic() - t1, 1),
        }

        # iputils ping with don't-fragment at exactly the overlay MTU passes between every two nodes of different
        # sites (over one, two or three tunnels), IPv4 and IPv6; one byte more does not.
        probes = []
        for a in plan.nodes:
            for b in plan.nodes:
                if a.site != b.site:
                    probes += [
                        (a.name, b.overlay_ipv4, plan.mtu - 28, True),
                        (a.name, b.overlay_ipv6, plan.mtu - 48, True),
                        (a.name, b.overlay_ipv4, plan.mtu - 27, False),
                    ]
        t2 = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            got = list(pool.map(lambda p: _ping(ns_of[p[0]], p[1], p[2], tries=3 if p[3] else 1), probes))
        df_failed = [
            f"{s} -> {t} size {size} expected {'pass' if want else 'drop'}"
            for (s, t, size, want), ok in zip(probes, got, strict=True)
            if ok != want
        ]
        report["df"] = {"total": len(probes), "failed": df_failed, "seconds": round(time.monotonic() - t2, 1)}
        report["wrong_tunnel_kind"] = wrong
        report["passed"] = not failed and not df_failed and not wrong and all(tunnels.values())
        report["seconds"] = round(time.monotonic() - t0, 1)
        (results / "selftest.json").write_text(json.dumps(report, indent=1))
        self.log(
            f"self-test {self.protocol} {','.join(self.sites)} hub {self.hub}: tunnels {wrong or 'ok'}; "
            f"pairs {report['pairs']['ok']}/{len(pairs)}; DF probes {len(probes) - len(df_failed)}/{len(probes)} at MTU {plan.mtu}; "
            f"{'PASSED' if report['passed'] else 'FAILED'} in {report['seconds']} s"
        )
        for line in failed + df_failed + wrong:
            self.log(f"  FAIL {line}")
        return 0 if report["passed"] else 1


SELFTEST_SITES: Final = ("aws", "gcp", "azure")
# One container per router keeps the self-test short under TCG (each container is ~10 `ip` runs of the node
# script); the lab in the VM runs the stack's own count.
SELFTEST_CONTAINERS: Final = 1


def selftest_argv(
    sites: Sequence[str] = SELFTEST_SITES,
    hub: str = "aws",
    protocol: str = "geneve",
    stack: str = "dev",
    containers: int | None = SELFTEST_CONTAINERS,
) -> list[str]:
    """The in-VM command of the self-test (results go to GUEST_RESULTS)."""
    argv = ["python3", "-m", "lab.vm", "selftest", "--stack", stack, "--sites", ",".join(sites), "--hub", hub, "--protocol", protocol]
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

    warm_up (off by default) runs `warmup` (below) between up and check: neighbour discovery across the overlay
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
    warmup = ["python3", "-m", "lab.vm", "warmup", "--results", GUEST_RESULTS]
    check = ["python3", "-m", "lab", "check", "--results", GUEST_RESULTS]
    down = ["python3", "-m", "lab", "down"]
    first = f"{shlex.join(up)} && {shlex.join(warmup)}; " if warm_up else f"{shlex.join(up)} && "
    script = f"{first}{shlex.join(check)}; rc=$?; {shlex.join(down)}; exit $rc"
    return ["/bin/sh", "-c", script]


# --------------------------------------------------------------------------- CLI


def _sites_arg(value: str) -> list[str]:
    sites = [s.strip() for s in value.split(",") if s.strip()]
    if len(sites) < 2:
        raise argparse.ArgumentTypeError("give at least two sites, comma-separated (e.g. aws,gcp)")
    return sites


def cmd_vm(args: argparse.Namespace) -> int:
    """`python -m lab vm`: the lab (or the self-test) in the kernel VM; the exit code is the in-VM command's."""
    if os.geteuid() != 0:
        print("lab vm: needs root (qemu is run as root like the rest of the lab)", file=sys.stderr)
    image = build_image(Path(args.cache))
    print(
        f"vm: kernel {image.kernel_release} ({image.kernel_package}), initramfs {image.size / 1e6:.1f} MB "
        f"({'built' if image.built else 'cached'}, {image.seconds:.1f} s)",
        flush=True,
    )
    if args.command_line:
        argv = ["/bin/sh", "-c", args.command_line]
    elif args.self_test:
        argv = selftest_argv(args.sites or SELFTEST_SITES, args.hub or "aws", args.protocol, args.stack)
    else:
        print(
            "vm: router containers are plain network namespaces in the VM (--containers netns): there is no Docker there",
            flush=True,
        )
        argv = lab_argv(args.stack, args.sites, args.protocol, args.hub, args.topology, warm_up=args.warm_up, encryption=args.encryption)
    print(f"vm: running in the VM: {shlex.join(argv)}", flush=True)
    res = run_in_vm(argv, timeout=args.timeout, memory_mb=args.memory, cpus=args.cpus, results_dir=args.results, image=image)
    where = f"; results in {res.results}" if res.results else ""
    boot = f"{res.boot_seconds:.1f}" if res.boot_seconds is not None else "?"
    print(f"vm: exit {res.exit_code} after {res.seconds:.1f} s (boot {boot} s){where}", flush=True)
    return res.exit_code


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add `vm` to the lab CLI (lab/cli.py passes its subparsers)."""
    from lab.cli import DEFAULT_RESULTS

    p = subparsers.add_parser(
        "vm",
        help="run the lab in a Debian cloud-kernel VM (qemu TCG): GENEVE and IPsec, which this host kernel lacks",
        description="Boots Debian's cloud kernel under qemu (TCG) with an initramfs of busybox, iproute2, iptables, "
        "python3 and this project, runs `lab up --containers netns`, `lab check` and `lab down` inside, and copies "
        "check's results back. Containers are plain network namespaces in the VM (no Docker there).",
    )
    p.add_argument("--stack", default="dev", help="stack name: reads Pulumi.NAME.yaml (default dev)")
    p.add_argument("--sites", type=_sites_arg, help="use only these sites, comma-separated (e.g. aws,azure,gcp)")
    p.add_argument("--protocol", choices=("vxlan", "geneve"), default="geneve", help="tunnel protocol (default geneve)")
    p.add_argument("--hub", help="override the hub site")
    p.add_argument("--topology", choices=("hub-and-spoke", "point-to-point"), help="override the topology")
    p.add_argument("--encryption", choices=("none", "ipsec"), help="override the encryption (ipsec: ESP, which the host kernel lacks)")
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help=f"where the in-VM results are copied (default {DEFAULT_RESULTS})")
    p.add_argument("--timeout", type=float, default=900, help="kill the VM after this many seconds (default 900)")
    p.add_argument("--memory", type=int, default=1024, help="VM memory in MiB (default 1024)")
    p.add_argument("--cpus", type=int, default=2, help="virtual CPUs (default 2)")
    p.add_argument("--cache", default=str(DEFAULT_CACHE), help=f"kernel and initramfs cache (default {DEFAULT_CACHE})")
    p.add_argument(
        "--self-test",
        "--shell-test",
        dest="self_test",
        action="store_true",
        help="instead of the lab: the GENEVE self-test (3 sites from their payloads, all-pairs ping, DF at the MTU)",
    )
    p.add_argument(
        "--warm-up", action="store_true", help="neighbour discovery across the overlay before `lab check` (for a heavily loaded host)"
    )
    p.add_argument("--command", dest="command_line", metavar="SHELL", help="instead of the lab: run this shell command in the VM")
    p.set_defaults(func=cmd_vm)
    return p


def warmup(results: Path) -> int:
    """Every lab endpoint pings every other endpoint's overlay addresses once (raw sockets, one thread per
    source): neighbour discovery over the tunnels, before `lab check` measures. Never fails the run."""
    from lab.check import Lab, endpoints

    lab = Lab()
    eps = endpoints(lab.plan)
    started = time.monotonic()

    def source(ep: Any) -> dict[str, bool]:
        targets = [a for other in eps if other.name != ep.name for a in (other.ipv4, other.ipv6)]
        ns = ep.name if ep.kind == "container" else lab.node_ns(ep.name)
        return ping_all(targets, netns=ns)

    with ThreadPoolExecutor(max_workers=len(eps)) as pool:
        got = dict(zip([e.name for e in eps], pool.map(source, eps), strict=True))
    answered = sum(ok for r in got.values() for ok in r.values())
    total = sum(len(r) for r in got.values())
    print(
        f"vm warm-up: {answered}/{total} overlay addresses answered in {time.monotonic() - started:.1f} s (neighbour discovery before `lab check`)",
        flush=True,
    )
    results.mkdir(parents=True, exist_ok=True)
    (results / "warmup.json").write_text(json.dumps({"answered": answered, "total": total, "results": got}, indent=1))
    return 0


def _guest_main(argv: Sequence[str] | None = None) -> int:
    """`python3 -m lab.vm selftest ...` (in the VM)."""
    p = argparse.ArgumentParser(prog="python3 -m lab.vm")
    sub = p.add_subparsers(dest="what", required=True)
    st = sub.add_parser("selftest", help="GENEVE overlay of a few sites from their payloads, in this (VM) kernel")
    st.add_argument("--stack", default="dev")
    st.add_argument("--sites", type=_sites_arg, default=list(SELFTEST_SITES))
    st.add_argument("--hub", default="aws")
    st.add_argument("--protocol", choices=("vxlan", "geneve"), default="geneve")
    st.add_argument("--containers-per-router", type=int, default=None)
    st.add_argument("--results", type=Path, default=Path(GUEST_RESULTS))
    st.add_argument("--work", type=Path, default=Path("/tmp/selftest"))
    wu = sub.add_parser("warmup", help="neighbour discovery across a running lab's overlay before `lab check`")
    wu.add_argument("--results", type=Path, default=Path(GUEST_RESULTS))
    pg = sub.add_parser("ping", help="ICMP echo to every target at once; prints {target: reachable} as JSON")
    pg.add_argument("--netns", help="from this network namespace (a name under /run/netns)")
    pg.add_argument("targets", nargs="+")
    args = p.parse_args(argv)
    if args.what == "warmup":
        return warmup(args.results)
    if args.what == "ping":
        result = ping_all(args.targets, netns=args.netns)
        print(json.dumps(result))
        return 0 if all(result.values()) else 1
    test = SelfTest(
        stack=ROOT / f"Pulumi.{args.stack}.yaml",
        sites=args.sites,
        hub=args.hub,
        protocol=args.protocol,
        work=args.work,
        containers=args.containers_per_router,
    )
    return test.run(args.results)


if __name__ == "__main__":
    sys.exit(_guest_main())
