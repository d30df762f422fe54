"""Debian's kernel modules for the VM image: which ones, in which load order, without their signatures, and the
modules.dep/modules.alias busybox modprobe reads.

Only stdlib at import time: code that runs inside the VM imports this module (bench/ipsec_vm.py loads
CPU_CRYPTO_MODULES there).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

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
# AES-NI and carry-less multiply drivers, for a guest given those CPU features (lab/qemu.py AES_NI_CPU): loaded with modprobe.
CPU_CRYPTO_MODULES: Final = ("aesni_intel", "ghash_clmulni_intel")
EXTRA_MODULE_SKIP: Final = re.compile(
    r"^(ip_vs|ip_set|nf_conntrack_(h323|sip|pptp|amanda|ftp|irc|netbios|snmp|sane|tftp|broadcast)|nf_nat_(h323|sip|pptp|amanda|ftp|irc|snmp|tftp)|ebt|ebtable|nf_tables_|xt_bpf|xt_set)"
)


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


def modules_dep(mods: list[Module]) -> tuple[str, str]:
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
