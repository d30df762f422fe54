#!/usr/bin/env python3
"""overlay-node: converge this machine to its multicloud-overlay node config.

Installed by cloud-init as /usr/local/sbin/overlay-node and run by multicloud-overlay.service at every boot;
re-run in place when the node config changes (new hub, protocol, MTU, container count). Idempotent: a second
run with the same config changes nothing and says so. Standard library only (cloud images ship python3).

    overlay-node apply --config /etc/multicloud-overlay/node.json --state-dir /var/lib/multicloud-overlay
    overlay-node push --config /etc/multicloud-overlay/node.json --state-dir DIR < new.json   # install + apply
    overlay-node validate --config FILE
    overlay-node install-script --pin /etc/multicloud-overlay/node-script.sha256 --to PATH < packed   # see below

User-data carries this script without what only a push uses (IPsec, make-before-break, the check: render.PUSH_ONLY,
cloudinit/overlay_node_boot.py), which keeps the payload under AWS's 16 KiB. The program installs the whole script
before a node's first push; `install-script` takes only the script whose SHA-256 the node's user-data pins.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any

OWN_PREFIXES = ("ovl-r", "ovl-c", "ovl-k", "ovl-b")  # links the node makes: tunnels, container veths, the BFD probe
LAN_NIC_WAIT = 600  # seconds a boot waits for a LAN NIC attached after launch
CONTAINER_LABEL = "multicloud-overlay.node"
EXIT_REJECTED = 3
CLOUD_INIT_RUN = "/run/cloud-init"
# Hex runs as long as key material: never shown in a message (messages reach logs and Pulumi's output).
KEYISH = re.compile(r"(?:0x)?[0-9a-fA-F]{16,}")
# Interface, namespace and container names: never an option ("-x"), never "." or "..", ASCII only.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
# A Docker image reference ([registry[:port]/]path[:tag][@digest]): never an option, never blanks.
_PATH = r"[a-z0-9]+(?:[._-]+[a-z0-9]+)*"
IMAGE_RE = re.compile(
    rf"(?:[A-Za-z0-9]+(?:[._-]+[A-Za-z0-9]+)*(?::[0-9]+)?/)?{_PATH}(?:/{_PATH})*(?::\w[\w.-]{{0,127}})?(?:@[a-z0-9]+:[0-9a-f]{{32,}})?",
    re.ASCII,
)
# Containers get no capability (no raw sockets: no forged ARP/ND/RA), no setuid gains, a read-only root.
HARDENING = ("--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--read-only", "--tmpfs", "/tmp")
# Kernel settings a forwarding node sets for the whole machine (step_sysctls): forwarding for both families, and
# loose reverse-path filtering (multi-NIC routers see replies on another NIC than the route back).
NODE_SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.ipv6.conf.all.forwarding": "1",
    "net.ipv4.conf.all.rp_filter": "2",
    "net.ipv4.conf.default.rp_filter": "2",
}
# Per underlay NIC (step_sysctls): IPv6 forwarding makes the kernel ignore router advertisements on interfaces with
# accept_ra=1, which would let the underlay's IPv6 default route expire; 2 keeps accepting them.
NIC_ACCEPT_RA = "net.ipv6.conf.{nic}.accept_ra"
# A router's bridged overlay frames skip iptables, ip6tables and arptables (step_sysctls), where br_netfilter is
# loaded (Docker's bridge networks and Kubernetes load it; a new network namespace then starts with it on:
# https://unix.stackexchange.com/questions/719112). Otherwise every frame the overlay bridge forwards crosses the
# FORWARD chain, and conntrack keeps an entry per overlay flow crossing the router. No rule of this node filters
# bridged frames: OVERLAY-IN guards what the node itself receives, OVERLAY-FWD what it would route. The settings
# belong to the node's network namespace (the host's stay as they are: tests/lab/test_lab_dev.py).
BRIDGE_NF_SYSCTLS = {
    "net.bridge.bridge-nf-call-iptables": "0",
    "net.bridge.bridge-nf-call-ip6tables": "0",
    "net.bridge.bridge-nf-call-arptables": "0",
}


class Rejected(Exception):
    """The node config is unusable; nothing was changed."""


class CommandFailed(Exception):
    pass


class Runner:
    """Runs commands; records the ones that change the system. Tests replace it with a fake."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.changes: list[str] = []
        self.ip = next((p for p in ("/sbin/ip", "/usr/sbin/ip", "/bin/ip", "/usr/bin/ip") if os.path.exists(p)), "ip")
        self.bridge = next(
            (p for p in ("/sbin/bridge", "/usr/sbin/bridge", "/bin/bridge", "/usr/bin/bridge") if os.path.exists(p)), "bridge"
        )

    def run(self, argv: Sequence[str], check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
        argv = [{"ip": self.ip, "bridge": self.bridge}.get(argv[0], argv[0]), *argv[1:]]
        try:
            proc = subprocess.run(list(argv), input=stdin, capture_output=True, text=True)
        except FileNotFoundError:
            raise CommandFailed(f"{argv[0]} is not installed (it comes with iproute2, docker.io or iptables)") from None
        if check and proc.returncode != 0:
            # Key material never goes into a message; a batch on stdin is named by its first line.
            shown = " ".join(argv)
            if stdin:
                lines = stdin.strip().splitlines()
                shown += f" <<< {lines[0]}" + (f" (+{len(lines) - 1} lines)" if len(lines) > 1 else "")
            raise CommandFailed(KEYISH.sub("<key>", f"{shown}: exit {proc.returncode}: {proc.stderr.strip()}"))
        return proc

    def change(self, what: str, argv: Sequence[str], stdin: str | None = None) -> None:
        self.run(argv, stdin=stdin)
        self.changes.append(what)
        self.log(f"  changed: {what}")

    def json(self, argv: Sequence[str]) -> Any:
        out = self.run(argv).stdout.strip()
        return json.loads(out) if out else []


# --------------------------------------------------------------------------- config validation


def _iface(value: Any, version: int) -> bool:
    try:
        return ipaddress.ip_interface(str(value)).version == version and "/" in str(value)
    except ValueError:
        return False


def _addr(value: Any) -> bool:
    try:
        ipaddress.ip_address(str(value))
        return "%" not in str(value)
    except ValueError:
        return False


def _mac(value: Any) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}", value) is not None


def _name(value: Any) -> bool:
    return isinstance(value, str) and NAME_RE.fullmatch(value) is not None


def _int(lo: int, hi: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def validate(doc: Any) -> list[str]:
    """Every reason this document cannot be applied (empty when it can)."""
    if not isinstance(doc, dict):
        return ["the config is not a JSON object"]
    problems: list[str] = []

    def need(key: str, ok: Callable[[Any], bool], what: str, where: dict[str, Any] | None = None, path: str = "") -> None:
        src = doc if where is None else where
        if key not in src:
            problems.append(f"{path}{key}: missing ({what})")
        elif not ok(src[key]):
            problems.append(f"{path}{key}: {src[key]!r} is not {what}")

    need("version", _int(1, 1), "version 1")
    need("node", _name, "a node name")
    need("kind", lambda v: v in ("router", "client"), "router or client")
    need("protocol", lambda v: v in ("vxlan", "geneve"), "vxlan or geneve")
    need("port", _int(1, 65535), "a UDP port")
    need("mtu", _int(1280, 9000), "an MTU from 1280 to 9000")
    need("forwarding", lambda v: isinstance(v, bool), "true or false")
    need("open_host_firewall", lambda v: isinstance(v, bool), "true or false")
    bridge = doc.get("bridge")
    if not isinstance(bridge, dict):
        problems.append("bridge: missing or not an object")
    else:
        need("name", _name, "an interface name", bridge, "bridge.")
        need("mac", _mac, "a MAC address", bridge, "bridge.")
        need("ipv4", lambda v: _iface(v, 4), "an IPv4 address/prefix", bridge, "bridge.")
        need("ipv6", lambda v: _iface(v, 6), "an IPv6 address/prefix", bridge, "bridge.")
    lan = doc.get("lan")
    if not isinstance(lan, dict):
        problems.append("lan: missing or not an object")
    else:
        need("address", lambda v: _iface(v, 4), "an IPv4 address/prefix", lan, "lan.")
        need("configure", lambda v: isinstance(v, bool), "true or false", lan, "lan.")
    tunnels = doc.get("tunnels")
    if not isinstance(tunnels, list) or not tunnels:
        problems.append("tunnels: missing or empty")
    else:
        for i, t in enumerate(tunnels):
            if not isinstance(t, dict):
                problems.append(f"tunnels[{i}]: not an object")
                continue
            p = f"tunnels[{i}]."
            need("name", lambda v: _name(v) and str(v).startswith(("ovl-r", "ovl-c")), "an ovl-r*/ovl-c* name", t, p)
            need("vni", _int(1, 2**24 - 1), "a VNI", t, p)
            need("local", _addr, "an address", t, p)
            need("remote", _addr, "an address", t, p)
            for flag in ("isolated", "flood"):
                if not isinstance(t.get(flag, flag == "flood"), bool):
                    problems.append(f"{p}{flag}: {t.get(flag)!r} is not true or false")
        names = [t.get("name") for t in tunnels if isinstance(t, dict)]
        if len(set(names)) != len(names):
            problems.append("tunnels: duplicate tunnel names")
        vnis = [t.get("vni") for t in tunnels if isinstance(t, dict)]
        if len(set(vnis)) != len(vnis):
            problems.append("tunnels: two tunnels share a VNI (the kernel demultiplexes VXLAN by VNI)")
        problems += _validate_ipsec(doc, [t for t in tunnels if isinstance(t, dict)])
        problems += _validate_failover(doc, [t for t in tunnels if isinstance(t, dict)])
    fdb = doc.get("fdb", [])
    if not isinstance(fdb, list):
        problems.append("fdb: not a list")
    else:
        ports = {t.get("name") for t in tunnels if isinstance(t, dict)} if isinstance(tunnels, list) else set()
        for i, e in enumerate(fdb):
            if not isinstance(e, dict) or not _mac(e.get("mac")) or e.get("port") not in ports:
                problems.append(f"fdb[{i}]: {e!r} is not a MAC on one of this node's tunnels")
            elif not (isinstance(e.get("ips", []), list) and all(_addr(a) for a in e.get("ips", []))):
                problems.append(f"fdb[{i}].ips: {e.get('ips')!r} is not a list of addresses")
    containers = doc.get("containers")
    if not isinstance(containers, dict):
        problems.append("containers: missing or not an object")
    else:
        need("runtime", lambda v: v in ("docker", "netns"), "docker or netns", containers, "containers.")
        need(
            "image",
            lambda v: isinstance(v, str) and len(v) < 512 and IMAGE_RE.fullmatch(v) is not None,
            "an image reference",
            containers,
            "containers.",
        )
        items = containers.get("items")
        if not isinstance(items, list):
            problems.append("containers.items: missing or not a list")
        else:
            for key in ("name", "link"):
                values = [c.get(key) for c in items if isinstance(c, dict)]
                if len(set(map(str, values))) != len(values):
                    problems.append(f"containers.items: duplicate {key}s")
            for i, c in enumerate(items):
                p = f"containers.items[{i}]."
                if not isinstance(c, dict):
                    problems.append(f"{p[:-1]}: not an object")
                    continue
                need("name", lambda v: _name(v) and len(v) > 1, "a container name", c, p)
                need("link", lambda v: _name(v) and str(v).startswith("ovl-k"), "an ovl-k* name", c, p)
                need("ipv4", lambda v: _iface(v, 4), "an IPv4 address/prefix", c, p)
                need("ipv6", lambda v: _iface(v, 6), "an IPv6 address/prefix", c, p)
                need("mac", _mac, "a MAC address", c, p)
    return problems


PSK_HEX = 144  # the pair key: 72 random bytes
PROPOSAL_RE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


def _validate_ipsec(doc: dict[str, Any], tunnels: list[dict[str, Any]]) -> list[str]:
    ipsec = doc.get("ipsec")
    if ipsec is None:
        return [f"tunnels[{i}].psk: a key given but ipsec is not set" for i, t in enumerate(tunnels) if "psk" in t]
    if not isinstance(ipsec, dict) or doc.get("kind") != "router":
        return ["ipsec: not an object of a router"]
    problems = [f"ipsec.{k}: {ipsec.get(k)!r} is not a proposal" for k in ("ike_proposals", "esp_proposals") if not PROPOSAL_RE.fullmatch(str(ipsec.get(k)))]
    if not _addr(ipsec.get("id")) or ":" in str(ipsec.get("id")):
        problems.append(f"ipsec.id: {ipsec.get('id')!r} is not this router's public IPv4 address")
    for key, lo, hi in (("rekey_seconds", 60, 86400), ("rekey_packets", 1000, 1 << 31), ("replay_window", 32, 4096), ("dpd_seconds", 1, 3600)):
        if not _int(lo, hi)(ipsec.get(key)):
            problems.append(f"ipsec.{key}: {ipsec.get(key)!r} is not a whole number from {lo} to {hi}")
    for i, t in enumerate(tunnels):
        v = t.get("psk")
        if str(t.get("name", "")).startswith("ovl-r") and not (isinstance(v, str) and len(v) == PSK_HEX and not v.strip("0123456789abcdef")):
            problems.append(f"tunnels[{i}].psk: not {PSK_HEX} lower-case hex digits (ipsec is set: every router tunnel needs its key)")
    return problems


def load(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            return parse(f.read(), path)
    except OSError as e:
        raise Rejected(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise Rejected(f"{path} is not UTF-8 text") from None


def parse(text: str, path: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise Rejected(f"{path} is not valid JSON ({e.msg} at line {e.lineno}) - truncated or corrupted?") from None
    problems = validate(doc)
    if problems:
        raise Rejected(f"{path} is not a usable node config:\n  " + "\n  ".join(problems))
    return doc


# --------------------------------------------------------------------------- convergence steps


def _sysctl(r: Runner, key: str, value: str) -> None:
    path = "/proc/sys/" + (key if "/" in key else key.replace(".", "/"))
    try:
        with open(path, encoding="ascii") as f:
            if f.read().strip() == value:
                return
        with open(path, "w", encoding="ascii") as f:
            f.write(value)
    except OSError as e:
        raise CommandFailed(f"sysctl {key}={value}: {e.strerror}") from None
    r.changes.append(f"sysctl {key}={value}")
    r.log(f"  changed: sysctl {key}={value}")


def links(r: Runner) -> dict[str, dict[str, Any]]:
    return {link["ifname"]: link for link in r.json(["ip", "-d", "-j", "link", "show"])}


def global_addresses(link: dict[str, Any]) -> list[str]:
    """The global addresses (address/prefix) of one link as `ip -j addr show` lists it."""
    return [f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", []) if a.get("scope") == "global"]


def addresses(r: Runner, dev: str, netns: str | None = None) -> list[str]:
    argv = ["ip"] + (["-n", netns] if netns else []) + ["-j", "addr", "show", "dev", dev]
    return [a for link in r.json(argv) for a in global_addresses(link)]


def ensure_addresses(r: Runner, dev: str, wanted: Sequence[str], netns: str | None = None) -> None:
    """Exactly the wanted global addresses on dev (IPv6 without duplicate address detection)."""
    pre = ["ip"] + (["-n", netns] if netns else [])
    have = {str(ipaddress.ip_interface(a)) for a in addresses(r, dev, netns)}
    want = {str(ipaddress.ip_interface(a)) for a in wanted}
    where = f"{netns}:{dev}" if netns else dev
    for a in sorted(have - want):
        r.change(f"removed stale address {a} from {where}", [*pre, "addr", "del", a, "dev", dev])
    for a in sorted(want - have):
        extra = ["nodad"] if ipaddress.ip_interface(a).version == 6 else []
        r.change(f"added {a} to {where}", [*pre, "addr", "add", a, "dev", dev, *extra])


def ensure_link_state(
    r: Runner, link: dict[str, Any], mtu: int, master: str | None, mac: str | None = None, netns: str | None = None, up: bool = True
) -> None:
    pre = ["ip"] + (["-n", netns] if netns else [])
    name = link["ifname"]
    where = f"{netns}:{name}" if netns else name
    if mac and link.get("address", "").lower() != mac.lower():
        r.change(f"set {where} address {mac}", [*pre, "link", "set", name, "address", mac])
    if link.get("mtu") != mtu:
        r.change(f"set {where} mtu {mtu}", [*pre, "link", "set", name, "mtu", str(mtu)])
    if master is not None and link.get("master") != master:
        r.change(f"attached {where} to {master}", [*pre, "link", "set", name, "master", master])
    if up and "UP" not in link.get("flags", []):
        r.change(f"set {where} up", [*pre, "link", "set", name, "up"])


def step_sysctls(r: Runner, doc: dict[str, Any]) -> None:
    if not doc["forwarding"]:
        return
    # Keep accepting router advertisements on the underlay NICs (NIC_ACCEPT_RA) before forwarding goes on.
    for name, link in sorted(links(r).items()):
        if name == "lo" or name.startswith(OWN_PREFIXES) or name == doc["bridge"]["name"]:
            continue
        if link.get("linkinfo", {}).get("info_kind") in ("bridge", "vxlan", "geneve"):
            continue
        try:
            with open(f"/proc/sys/net/ipv6/conf/{name}/accept_ra", encoding="ascii") as f:
                if f.read().strip() == "1":
                    _sysctl(r, NIC_ACCEPT_RA.format(nic=name), "2")
        except OSError:
            pass
    for key, value in NODE_SYSCTLS.items():
        _sysctl(r, key, value)
    if os.path.isdir("/proc/sys/net/bridge"):
        for key, value in BRIDGE_NF_SYSCTLS.items():
            _sysctl(r, key, value)


def step_host_firewall(r: Runner, doc: dict[str, Any]) -> None:
    """Open the tunnel port and bridged forwarding where the image's iptables rules reject them (OCI)."""
    if not doc["open_host_firewall"]:
        return
    bridge = doc["bridge"]["name"]
    rules = [
        ("iptables", ["INPUT", "-p", "udp", "--dport", str(doc["port"]), "-j", "ACCEPT"]),
        *([("iptables", ["INPUT", "-p", "udp", "--dport", str(NATT_PORT), "-j", "ACCEPT"])] if doc.get("ipsec") else []),
        ("iptables", ["FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"]),
        ("ip6tables", ["FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"]),
    ]
    for tool, rule in rules:
        if shutil.which(tool) is None:
            raise CommandFailed(f"{tool} is not installed but open_host_firewall is set (apt-get install iptables)")
        if r.run([tool, "-w", "-C", *rule], check=False).returncode != 0:
            r.change(f"{tool}: accept {' '.join(rule)}", [tool, "-w", "-I", rule[0], "1", *rule[1:]])


# This project's iptables/ip6tables chains -> (table, the built-in chains whose first rule jumps to it).
OWN_CHAINS = {
    "OVERLAY-IN": ("filter", ("INPUT",)),
    "OVERLAY-FWD": ("filter", ("FORWARD",)),
    "OVERLAY-NOTRACK": ("raw", ("PREROUTING", "OUTPUT")),
}


def firewall_rules(doc: dict[str, Any], family: int) -> dict[str, list[str]]:
    """Our chains' rules for one IP family, as `iptables-save` prints them (without "-A CHAIN").

    Nothing from the overlay to SSH or to the tunnel port(s); the tunnel port only from each tunnel's own peer
    (the tunnel's remote: a peer router arrives from its public address, its edge's 1:1 NAT maps its private
    source to it) and, where the tunnel is encrypted, only out of IPsec. A router forwards bridged overlay frames and nothing else. Allowed traffic
    RETURNs: the rest of the built-in chain (an image's own firewall) still decides.
    """
    br, port = doc["bridge"]["name"], doc["port"]
    ports = [port, *([NATT_PORT, IKE_PORT] if doc.get("ipsec") else [])]
    udp = "-p udp -m udp --dport"
    rules = [f"-i {br} -p tcp -m tcp --dport 22 -j DROP", *(f"-i {br} {udp} {p} -j DROP" for p in ports)]
    for t in doc["tunnels"]:
        peer = ipaddress.ip_address(t["remote"])
        if peer.version == family:
            src = f"-s {peer}/{peer.max_prefixlen}"
            if doc.get("ipsec") and "psk" in t:
                rules += [f"{src} {udp} {ports[1]} -j RETURN", f"{src} {udp} {port} -m policy --dir in --pol ipsec -j RETURN"]
            else:
                rules.append(f"{src} {udp} {port} -j RETURN")
    chains = {"OVERLAY-IN": rules + [f"{udp} {p} -j DROP" for p in ports]}
    if doc["forwarding"]:
        chains["OVERLAY-FWD"] = [f"-i {br} -o {br} -j RETURN", "-j DROP"]
    if doc["open_host_firewall"]:
        # Where the image's own firewall tracks connections (OCI's accepts by state: the images whose firewall the
        # node must open), conntrack sees every packet. There tunnel datagrams, sent and received, bypass it (raw
        # table): no rule matches them by state, and as the outer source port follows a hash of the inner flow, a
        # hub would keep an entry per overlay flow and tunnel (bench.fastpath counts them), and drop new flows'
        # packets once the table is full (nf_conntrack_max). Elsewhere no rule needs conntrack, so the kernel
        # tracks nothing, and the rule would only cost an evaluation per packet.
        chains["OVERLAY-NOTRACK"] = [f"{udp} {p} -j CT --notrack" for p in ports]
    return chains


def step_firewall(r: Runner, doc: dict[str, Any]) -> None:
    """Exactly our chains (see firewall_rules), each jumped to first; replaced in one iptables-restore commit per
    table."""
    for tool, family in (("iptables", 4), ("ip6tables", 6)):
        want = firewall_rules(doc, family)
        for table in dict.fromkeys(t for t, _ in OWN_CHAINS.values()):
            have: dict[str, list[str]] = {}
            for line in r.run([f"{tool}-save", "-t", table]).stdout.splitlines():
                if line.startswith(":"):
                    have.setdefault(line[1:].split()[0], [])
                elif line.startswith("-A "):
                    chain, _, rule = line[3:].partition(" ")
                    have.setdefault(chain, []).append(rule)
            batch: list[str] = []
            mine = [c for c, (t, _) in OWN_CHAINS.items() if t == table]
            for chain in mine:
                hooks = OWN_CHAINS[chain][1]
                jumps = {hook: [i for i, rule in enumerate(have.get(hook, [])) if rule == f"-j {chain}"] for hook in hooks}
                unhook = [f"-D {hook} -j {chain}" for hook in hooks for _ in jumps[hook]]
                if chain not in want:
                    batch += [*unhook, f"-F {chain}", f"-X {chain}"] if chain in have else []
                    continue
                if chain not in have or [sorted(x.split()) for x in have[chain]] != [sorted(x.split()) for x in want[chain]]:
                    batch += [f":{chain} - [0:0]", *(f"-A {chain} {x}" for x in want[chain])]
                for hook in hooks:
                    if jumps[hook] != [0]:
                        batch += [f"-D {hook} -j {chain}"] * len(jumps[hook]) + [f"-I {hook} 1 -j {chain}"]
            if batch:
                kept, gone = [c for c in mine if c in want], [c for c in mine if c not in want and c in have]
                what = "; ".join(x for x in (kept and f"set {', '.join(kept)}", gone and f"removed {', '.join(gone)}") if x)
                r.change(
                    f"{tool}: {what}" + ("" if table == "filter" else f" ({table})"),
                    [f"{tool}-restore", "-w", "--noflush"],
                    f"*{table}\n" + "\n".join(batch) + "\nCOMMIT\n",
                )


def step_lan(r: Runner, doc: dict[str, Any], wait: float = LAN_NIC_WAIT) -> None:
    """Give the LAN NIC its planned address where the platform's image does not (secondary VNIC/ENI). Those NICs
    are attached after launch, so the first boot may come before it: wait for it."""
    if not doc["lan"]["configure"]:
        return
    want = str(ipaddress.ip_interface(doc["lan"]["address"]))
    deadline, settled = time.monotonic() + wait, False
    while True:
        # One look at every link and its addresses: udev renames a NIC the kernel just added (eth1 becomes ens6), so
        # nothing is asked by a name seen a command before.
        all_links = {link["ifname"]: link for link in r.json(["ip", "-d", "-j", "addr", "show"])}
        candidates = []
        for name, link in all_links.items():
            have = global_addresses(link)
            if want in {str(ipaddress.ip_interface(a)) for a in have}:
                ensure_link_state(r, link, link.get("mtu", 1500), None)
                return
            kind = link.get("linkinfo", {}).get("info_kind")
            if name == "lo" or name.startswith(OWN_PREFIXES) or kind in ("bridge", "vxlan", "geneve", "tun"):
                continue
            if link.get("link_type") != "ether" or any(ipaddress.ip_interface(a).version == 4 for a in have):
                continue
            candidates.append((link.get("ifindex", 0), name))
        if candidates and not settled and systemd_runs_here():
            # A NIC hot-plugged a moment ago may not have its final name yet: udev's queue done, look again.
            r.run(["udevadm", "settle", "--timeout", "30"], check=False)
            settled = True
            continue
        if candidates:
            break
        if time.monotonic() > deadline:
            raise CommandFailed(f"no unconfigured NIC for the LAN address {want}: is the LAN NIC attached?")
        if wait:
            r.log(f"  waiting for the LAN NIC (up to {wait:.0f} s)")
            wait = 0
        time.sleep(2)
    _, name = min(candidates)
    r.log(f"  LAN NIC is {name}")
    ensure_link_state(r, all_links[name], all_links[name].get("mtu", 1500), None)
    r.change(f"added {want} to LAN NIC {name}", ["ip", "addr", "add", want, "dev", name])


# --------------------------------------------------------------------------- IPsec (IKEv2: strongSwan's charon)

NATT_PORT, IKE_PORT = 4500, 500  # IKE and ESP both use 4500; 500 is admitted from nowhere
SWANCTL_CONF = "/etc/swanctl/conf.d/multicloud-overlay.conf"
CHARON_CONF = "/etc/strongswan.d/multicloud-overlay.conf"
CHARON = "/usr/lib/ipsec/charon"
IKE_WAIT = 60  # seconds the switch of a make-before-break change waits for its new tunnels' SAs


def systemd_runs_here() -> bool:
    """True when systemd manages this machine and its units would run in this network namespace (a VM; in the lab a
    node is a namespace of a host that may run systemd, whose units would serve the host, not the node)."""
    if not (os.path.isdir("/run/systemd/system") and shutil.which("systemctl")):
        return False
    try:
        return os.readlink("/proc/self/ns/net") == os.readlink("/proc/1/ns/net")
    except OSError:
        return False


def swanctl_conf(doc: dict[str, Any]) -> str:
    """One IKEv2 connection per encrypted tunnel, named after it, and its pre-shared key (the file is a secret).

    IKE and ESP both on UDP 4500 from the first packet (RFC 7296 2.23: an initiator may use port 4500 from the start):
    only 4500 is open between routers. Transport mode, every UDP datagram between the pair's addresses: the tunnel's
    own, whatever its protocol. Trap policies on both sides: a datagram before the SA exists starts the exchange,
    and none leaves in clear; a peer that stops answering dead-peer detection is forgotten, and traffic keys it anew.
    """
    ipsec, conns, secrets = doc["ipsec"], [], []
    for t in doc["tunnels"]:
        if "psk" not in t:
            continue
        n, ids = t["name"], f"id-1 = {ipsec['id']}\n  id-2 = {t['remote']}"
        conns.append(
            f"{n} {{\n version = 2\n local_addrs = {t['local']}\n remote_addrs = {t['remote']}\n local_port = 4500\n remote_port = 4500\n"
            f" encap = yes\n mobike = no\n keyingtries = 0\n proposals = {ipsec['ike_proposals']}\n dpd_delay = {ipsec['dpd_seconds']}s\n"
            f" local {{\n  auth = psk\n  id = {ipsec['id']}\n }}\n remote {{\n  auth = psk\n  id = {t['remote']}\n }}\n"
            f" children {{\n  {n} {{\n   mode = transport\n   local_ts = dynamic[udp]\n   remote_ts = dynamic[udp]\n"
            f"   esp_proposals = {ipsec['esp_proposals']}\n   rekey_time = {ipsec['rekey_seconds']}s\n   rekey_packets = {ipsec['rekey_packets']}\n"
            f"   replay_window = {ipsec['replay_window']}\n   start_action = trap\n   dpd_action = trap\n   close_action = trap\n  }}\n }}\n}}\n"
        )
        secrets.append(f"ike-{n} {{\n  {ids}\n  secret = 0x{t['psk']}\n}}\n")
    return "connections {\n" + "".join(conns) + "}\nsecrets {\n" + "".join(secrets) + "}\n"


def charon_conf(own: bool) -> str:
    """The daemon's settings: retransmissions that give up on a dead peer in about 15 s. A charon of its own (a lab
    node, see Ike) also gets its plugins, and its control socket and log in its directory, which it sees as /run."""
    extra = (
        "  load = random nonce openssl kdf kernel-netlink socket-default vici\n  plugins {\n    vici {\n      socket = unix:///run/charon.vici\n    }\n  }\n"
        "  filelog {\n    ike {\n      path = /run/charon.log\n      default = 1\n      flush_line = yes\n    }\n  }\n"
        if own
        else ""
    )
    head = "swanctl {\n  load = random openssl\n}\n" if own else ""
    return head + f"charon {{\n  retransmit_tries = 3\n  retransmit_timeout = 2\n  retransmit_base = 1.4\n  install_routes = no\n{extra}}}\n"


def _write_if_changed(path: str, text: str) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return False
    except OSError:
        pass
    install(path, text)
    return True


class Ike:
    """strongSwan on this node: charon-systemd's unit on a VM, else (a lab node) a charon of its own. That one runs in a
    mount namespace where STATE_DIR/ike is /run (charon's pid file is /run/charon.pid, one per machine otherwise),
    and is controlled through the socket it makes there."""

    def __init__(self, r: Runner, state_dir: str) -> None:
        self.r, self.unit, self.dir = r, systemd_runs_here(), os.path.join(state_dir, "ike")
        self.conf = SWANCTL_CONF if self.unit else os.path.join(self.dir, "swanctl", "swanctl.conf")
        self.settings = CHARON_CONF if self.unit else os.path.join(self.dir, "strongswan.conf")
        self.pid_file, self.sock = os.path.join(self.dir, "daemon.pid"), os.path.join(self.dir, "charon.vici")
        self.env = None if self.unit else {**os.environ, "STRONGSWAN_CONF": self.settings}

    def swanctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        argv = ["swanctl", *args, *([] if self.unit else ["--uri", f"unix://{self.sock}"])]
        proc = subprocess.run(argv, capture_output=True, text=True, env=self.env, stdin=subprocess.DEVNULL)
        if check and proc.returncode:
            raise CommandFailed(f"{' '.join(argv)}: exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-300:]}")
        return proc

    def running(self) -> bool:
        if self.unit:
            return self.r.run(["systemctl", "is-active", "--quiet", "strongswan.service"], check=False).returncode == 0
        return _pid_alive(self.pid_file, "charon") and os.path.exists(self.sock)

    def start(self) -> None:
        if self.unit:
            self.r.change("started strongSwan (strongswan.service)", ["systemctl", "enable", "--now", "strongswan.service"])
            return
        os.makedirs(os.path.dirname(self.conf), exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.sock)
        argv = ["unshare", "-m", "sh", "-c", f"mount --bind '{self.dir}' /run && exec {CHARON}"]
        env = {**os.environ, "STRONGSWAN_CONF": "/run/strongswan.conf"}
        with open(os.devnull, "ab") as null:
            child = subprocess.Popen(argv, env=env, stdin=null, stdout=null, stderr=null, start_new_session=True)
        with open(self.pid_file, "w", encoding="ascii") as f:
            f.write(f"{child.pid}\n")
        deadline = time.monotonic() + 30
        while not os.path.exists(self.sock):
            if child.poll() is not None or time.monotonic() > deadline:
                raise CommandFailed(f"charon did not start (see {self.dir}/charon.log)")
            time.sleep(0.05)
        self.r.changes.append("started charon")
        self.r.log("  changed: started charon")

    def stop(self) -> None:
        if self.unit:
            self.r.change("stopped strongSwan (strongswan.service)", ["systemctl", "disable", "--now", "strongswan.service"])
            return
        _kill_pidfile(self.pid_file, "charon")
        self.r.changes.append("stopped charon")
        self.r.log("  changed: stopped charon")

    def sas(self) -> dict[str, bool]:
        """IKE_SA name -> whether its CHILD_SA of the same name is installed."""
        out: dict[str, bool] = {}
        name = ""
        for line in self.swanctl("--list-sas").stdout.splitlines():
            m = re.match(r"(\s*)(\S+): #\d+, (.*)", line)
            if m and not m.group(1):
                name = m.group(2)
                out.setdefault(name, False)
            elif m and m.group(2) == name and "INSTALLED" in m.group(3):
                out[name] = True
        return out


def step_ipsec(r: Runner, doc: dict[str, Any], state_dir: str, wait: float = 0) -> None:
    """This router's IKEv2 connections: exactly one per encrypted tunnel (see swanctl_conf); with `wait`, until each
    has its SA. Encryption off: the connections, their SAs and the daemon go."""
    if doc["kind"] != "router":
        return
    ike = Ike(r, state_dir)
    want = {t["name"] for t in doc["tunnels"] if "psk" in t}
    if not doc.get("ipsec"):
        locals_ = {t["local"] for t in doc["tunnels"] if t["name"].startswith("ovl-r")}
        if ike.running():
            # The connections go first, and their trap policies with them: a datagram that meets a trap policy whose
            # SA is gone makes the kernel add a larval SA (SPI 0, an "acquire") that nothing can delete and that
            # stays net.core.xfrm_acq_expires seconds (30 by default).
            _write_if_changed(ike.conf, "")
            ike.swanctl("--load-all", "--noprompt", *([] if ike.unit else ["--file", ike.conf]), check=False)
            for name in ike.sas():
                ike.swanctl("--terminate", "--ike", name, "--force", "--timeout", "5", check=False)
                r.changes.append(f"closed IPsec {name}")
                r.log(f"  changed: closed IPsec {name}")
            ike.stop()
            # charon takes its SAs with it. A larval one left from before (SPI 0) can be deleted by nobody: the kernel
            # drops it after net.core.xfrm_acq_expires seconds (30 by default). Done means none is left.
            deadline = time.monotonic() + 32
            while time.monotonic() < deadline and locals_ & set(re.findall(r"(?m)(?:^src|dst) (\S+)", r.run(["ip", "xfrm", "state"]).stdout)):
                time.sleep(1)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(ike.conf)
        return
    probe = ["ip", "xfrm", "state", "add", "src", "192.0.2.1", "dst", "192.0.2.2", "proto", "esp", "spi", "0x3fffffff", "mode", "transport"]
    failed = r.run([*probe, "aead", "rfc4106(gcm(aes))", "0x" + "00" * 36, "128"], check=False)
    if failed.returncode:  # a throw-away SA with documentation addresses: can this kernel do what IKE will install?
        raise CommandFailed(f"this kernel cannot do ESP with AES-GCM ({failed.stderr.strip()}): encryption ipsec needs the esp4 module (CONFIG_INET_ESP)")
    r.run(["ip", "xfrm", "state", "delete", "src", "192.0.2.1", "dst", "192.0.2.2", "proto", "esp", "spi", "0x3fffffff"])
    if shutil.which("swanctl") is None:
        raise CommandFailed("swanctl is not installed: encryption ipsec needs strongSwan (apt-get install charon-systemd libstrongswan-standard-plugins)")
    if _write_if_changed(ike.settings, charon_conf(not ike.unit)) and ike.running():
        ike.stop()
    conf_changed = _write_if_changed(ike.conf, swanctl_conf(doc))
    if not ike.running():
        ike.start()
    loaded = {m.group(1) for m in re.finditer(r"(?m)^(\S+): IKEv2", ike.swanctl("--list-conns").stdout)}
    if conf_changed or loaded != want:
        try:
            # A VM's swanctl.conf includes conf.d/*.conf (connections of others there stay loaded); a lab node's is ours.
            ike.swanctl("--load-all", "--noprompt", *([] if ike.unit else ["--file", ike.conf]))
        except CommandFailed as e:
            raise CommandFailed(f"strongSwan refused the IPsec config: {KEYISH.sub('<key>', str(e))}") from None
        r.changes.append("loaded the IPsec connections")
        r.log(f"  changed: loaded the IPsec connections ({', '.join(sorted(want))})")
    sas = ike.sas()
    for name in sorted(set(sas) - want):
        ike.swanctl("--terminate", "--ike", name, "--force", "--timeout", "5", check=False)
        r.changes.append(f"closed IPsec {name}")
        r.log(f"  changed: closed IPsec {name}")
    for name in sorted(want - {n for n, up in sas.items() if up}):
        # Whichever side is pushed second finds its peer ready: the exchange starts now, not at the first datagram.
        ike.swanctl("--initiate", "--child", name, "--timeout", "1", check=False)
    deadline = time.monotonic() + wait
    while wait:
        # One listing per round (a hub has one tunnel per spoke; each swanctl call is slow on a small VM).
        now = ike.sas()
        missing = sorted(n for n in want if not now.get(n))
        if not missing:
            break
        if time.monotonic() > deadline:
            raise CommandFailed(f"no IPsec SA with the peer of {', '.join(missing)} after {wait:.0f} s (is its push done, its key the same?)")
        time.sleep(0.5)


def step_bridge(r: Runner, doc: dict[str, Any]) -> None:
    br = doc["bridge"]
    existing = links(r).get(br["name"])
    if existing is not None and existing.get("linkinfo", {}).get("info_kind") != "bridge":
        r.change(f"removed non-bridge {br['name']}", ["ip", "link", "del", br["name"]])
        existing = None
    if existing is None:
        r.change(f"created bridge {br['name']}", ["ip", "link", "add", br["name"], "type", "bridge"])
        existing = links(r)[br["name"]]
    ensure_link_state(r, existing, doc["mtu"], None, mac=br["mac"])
    # No router advertisement from an overlay member may give this node a route or an address.
    _sysctl(r, f"net/ipv6/conf/{br['name']}/accept_ra", "0")
    ensure_addresses(r, br["name"], [br["ipv4"], br["ipv6"]])


def _tunnel_matches(link: dict[str, Any], t: dict[str, Any], doc: dict[str, Any]) -> bool:
    info = link.get("linkinfo", {})
    data = info.get("info_data", {})
    if info.get("info_kind") != doc["protocol"] or data.get("id") != t["vni"] or data.get("port") != doc["port"]:
        return False
    if data.get("remote") != t["remote"]:
        return False
    return doc["protocol"] != "vxlan" or (data.get("local") == t["local"] and data.get("learning") is False)


def _port_flag(r: Runner, name: str, port: dict[str, Any], flag: str, on: bool, what: str, default: bool = False) -> None:
    """One on/off flag of a bridge port as `ip -d link` shows it (`default` where it shows none), set if it differs."""
    if bool(port.get(flag, default)) != on:
        state = "on" if on else "off"
        r.change(f"turned {what} {state} on {name}", ["ip", "link", "set", name, "type", "bridge_slave", flag, state])


def step_tunnels(r: Runner, doc: dict[str, Any]) -> None:
    before = len(r.changes)
    current = links(r)
    wanted = {t["name"]: t for t in doc["tunnels"]}
    # Stale tunnels first: a VNI freed by one may be needed by another.
    for name, link in sorted(current.items()):
        if name.startswith(("ovl-r", "ovl-c")) and (name not in wanted or not _tunnel_matches(link, wanted[name], doc)):
            r.change(f"removed tunnel {name}" if name not in wanted else f"removed outdated tunnel {name}", ["ip", "link", "del", name])
    current = links(r)
    for name, t in sorted(wanted.items()):
        if name not in current:
            argv = ["ip", "link", "add", name, "type", doc["protocol"], "id", str(t["vni"]), "remote", t["remote"]]
            if doc["protocol"] == "vxlan":
                # GENEVE has no local-address option: its socket listens on every address of the port.
                # No learning: the kernel matches a datagram by VNI only, so a learned MAC would follow a forger.
                argv += ["local", t["local"], "nolearning"]
            argv += ["dstport", str(doc["port"])]
            r.change(f"created {doc['protocol']} tunnel {name} vni {t['vni']} {t['local']} -> {t['remote']} ({t.get('peer', '?')})", argv)
    current = links(r)
    for name in sorted(wanted):
        # A new port joins the bridge down, and comes up only once its flags are set: no frame crosses it before.
        ensure_link_state(r, current[name], doc["mtu"], doc["bridge"]["name"], up=False)
    for name, link in sorted(links(r).items()):
        if name not in wanted:
            continue
        port = link.get("linkinfo", {}).get("info_slave_data", {})
        # Every remote MAC is pinned (step_fdb): the bridge learns nothing on a tunnel port either.
        _port_flag(r, name, port, "learning", False, "MAC learning", default=True)
        # Split horizon (full mesh): an isolated port forwards to no other isolated port, so a frame from one peer
        # router never goes out to another and a flooded frame crosses each tunnel once: no loop, no duplicate.
        _port_flag(r, name, port, "isolated", bool(wanted[name].get("isolated", False)), "port isolation")
        # ARP and neighbour discovery for a planned address behind a router tunnel are answered by this bridge
        # (step_neighbours) and not flooded there: they need no flooding tree, so a site that cannot hear one (a
        # partial cut with two hubs) still resolves every planned address.
        _port_flag(r, name, port, "neigh_suppress", doc["kind"] == "router" and name.startswith("ovl-r"), "neighbour suppression")
        # Flooding (broadcast, multicast, unknown unicast) goes out of a port unless its entry says "flood": false,
        # which only a make-before-break phase does (transition): a tunnel that is not yet, or no more, on the
        # flooding tree. A kernel without the bcast_flood flag (iproute2 shows none) still floods broadcasts out of it.
        flood = bool(wanted[name].get("flood", True))
        keys = [k for k in ("flood", "mcast_flood", "bcast_flood") if k in port or k != "bcast_flood"]
        if any(bool(port.get(k, True)) != flood for k in keys):
            state = "on" if flood else "off"
            argv = ["ip", "link", "set", name, "type", "bridge_slave", *(x for k in keys for x in (k, state))]
            r.change(f"turned flooding {state} on {name}", argv)
    for name, link in sorted(links(r).items()):
        if name in wanted:
            ensure_link_state(r, link, doc["mtu"], doc["bridge"]["name"])
    if any(c.startswith(("removed tunnel", "removed outdated tunnel", "created ")) for c in r.changes[before:]):
        # The tunnels changed (e.g. a new hub): MACs learned on a tunnel that kept its peer may now sit behind
        # another one, and would stay wrong until they age out (300 s) if their owner is quiet. Relearn now.
        r.change(
            f"flushed the MAC table of {doc['bridge']['name']}", ["ip", "link", "set", doc["bridge"]["name"], "type", "bridge", "fdb_flush"]
        )


def step_fdb(r: Runner, doc: dict[str, Any]) -> None:
    """Exactly the planned static, sticky MAC entries on the bridge's tunnel ports."""
    bridge = doc["bridge"]["name"]
    want = {e["mac"].lower(): e["port"] for e in doc.get("fdb", [])}
    have: dict[str, str] = {}
    for e in r.json(["bridge", "-j", "fdb", "show", "br", bridge]):
        port = e.get("ifname") or e.get("dev", "")
        if e.get("state") == "static" and "sticky" in e.get("flags", []) and port.startswith(("ovl-r", "ovl-c")):
            have[e["mac"].lower()] = port
    for mac in sorted(set(have) - set(want)):
        r.change(f"removed MAC entry {mac}", ["bridge", "fdb", "del", mac, "dev", have[mac], "master"])
    changed = [mac for mac in sorted(want) if have.get(mac) != want[mac]]
    if changed:
        batch = "".join(f"fdb replace {mac} dev {want[mac]} master static sticky\n" for mac in changed)
        r.run(["bridge", "-batch", "-"], stdin=batch)
        r.changes.append(f"set {len(changed)} MAC entries")
        r.log(f"  changed: pinned {len(changed)} planned MAC(s) to their tunnels")


def step_neighbours(r: Runner, doc: dict[str, Any]) -> None:
    """Exactly the planned addresses of the hosts behind this router's tunnels as permanent neighbours of the bridge,
    with their planned MACs: the bridge answers ARP and neighbour solicitations for them from its own ports (tunnel
    ports suppress them: step_tunnels), and the router itself never asks."""
    if doc["kind"] != "router":
        return
    bridge = doc["bridge"]["name"]
    want = {str(ipaddress.ip_address(a)): e["mac"].lower() for e in doc.get("fdb", []) for a in e.get("ips", [])}
    have = {
        str(ipaddress.ip_address(n["dst"])): str(n.get("lladdr", "")).lower()
        for n in r.json(["ip", "-j", "neigh", "show", "dev", bridge, "nud", "permanent"])
    }
    lines = [f"neigh del {a} dev {bridge}\n" for a in sorted(have.keys() - want.keys())]
    lines += [f"neigh replace {a} lladdr {want[a]} dev {bridge} nud permanent\n" for a in sorted(want) if have.get(a) != want[a]]
    if lines:
        r.run(["ip", "-batch", "-"], stdin="".join(lines))
        r.changes.append(f"set {len(lines)} neighbour entries")
        r.log(f"  changed: {len(lines)} planned neighbour(s) of {bridge} set or removed")


def _docker(r: Runner, argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess:
    return r.run(["docker", *argv], check=check)


def node_containers(r: Runner, timeout: float = 120.0) -> list[str]:
    """Names of the node's containers, once the Docker daemon answers (each docker call costs a CPU half a second)."""
    if shutil.which("docker") is None:
        raise CommandFailed("docker is not installed (apt-get install docker.io)")
    deadline = time.monotonic() + timeout
    while (p := _docker(r, ["ps", "-a", "--filter", f"label={CONTAINER_LABEL}", "--format", "{{.Names}}"], check=False)).returncode:
        if time.monotonic() > deadline:
            raise CommandFailed("the Docker daemon did not answer within 120 s (systemctl status docker)")
        time.sleep(2)
    return p.stdout.split()


def _netns_of(r: Runner, name: str, pid: int) -> bool:
    """True when the network namespace handle `name` is the one of process `pid`."""
    if not os.path.exists(f"/run/netns/{name}"):
        return False
    out = r.run(["ip", "netns", "identify", str(pid)], check=False).stdout.split()
    return name in out


def _hardened(host_config: dict[str, Any]) -> bool:
    caps = [str(c).upper() for c in host_config.get("CapDrop") or []]
    return "ALL" in caps and bool(host_config.get("ReadonlyRootfs")) and "no-new-privileges" in (host_config.get("SecurityOpt") or [])


def container_netns(r: Runner, doc: dict[str, Any], c: dict[str, Any], node: str) -> bool:
    """Make sure the container runs and `ip netns` knows its namespace as c['name']; True if it was (re)made."""
    name, image = c["name"], doc["containers"]["image"]
    if doc["containers"]["runtime"] == "netns":
        if not os.path.exists(f"/run/netns/{name}"):
            r.change(f"created namespace container {name}", ["ip", "netns", "add", name])
            return True
        return False
    inspect = _docker(r, ["inspect", "--type", "container", name], check=False)
    state = json.loads(inspect.stdout)[0] if inspect.returncode == 0 else None
    remade = False
    if state is not None and state["Config"]["Image"] != image:
        r.change(f"removed container {name} (image {state['Config']['Image']} -> {image})", ["docker", "rm", "-f", name])
        state = None
    if state is not None and not _hardened(state.get("HostConfig") or {}):
        r.change(f"removed container {name} (not hardened)", ["docker", "rm", "-f", name])
        state = None
    if state is None:
        r.change(
            f"started container {name} ({image})",
            [
                "docker",
                "run",
                "-d",
                "--name",
                name,
                "--hostname",
                name,
                "--network",
                "none",
                "--restart",
                "unless-stopped",
                "--label",
                f"{CONTAINER_LABEL}={node}",
                *HARDENING,
                "--",
                image,
                "sleep",
                "2147483647",
            ],
        )
        remade = True
    elif not state["State"]["Running"]:
        r.change(f"restarted container {name}", ["docker", "start", name])
        remade = True
    pid = state["State"]["Pid"] if state and not remade else int(_docker(r, ["inspect", "--format", "{{.State.Pid}}", name]).stdout)
    if not _netns_of(r, name, pid):
        if os.path.exists(f"/run/netns/{name}"):
            r.run(["ip", "netns", "delete", name], check=False)
        r.change(f"attached namespace handle {name} to pid {pid}", ["ip", "netns", "attach", name, str(pid)])
        remade = True
    return remade


def step_containers(r: Runner, doc: dict[str, Any], previous: dict[str, Any] | None) -> None:
    spec = doc["containers"]
    items = spec["items"]
    wanted = {c["name"] for c in items}
    if spec["runtime"] == "docker" and (items or (previous and previous["containers"]["items"])):
        for name in sorted(set(node_containers(r)) - wanted):
            r.change(f"removed container {name}", ["docker", "rm", "-f", name])
            if os.path.exists(f"/run/netns/{name}"):
                r.run(["ip", "netns", "delete", name], check=False)
    if previous:
        for c in previous["containers"]["items"]:
            if c["name"] not in wanted and os.path.exists(f"/run/netns/{c['name']}"):
                r.change(f"removed namespace {c['name']}", ["ip", "netns", "delete", c["name"]])
    links_now = links(r)
    wanted_links = {c["link"] for c in items}
    for name in sorted(links_now):
        if name.startswith("ovl-k") and name not in wanted_links:
            # Deleting a container's namespace takes its veth pair with it, asynchronously: gone is fine.
            if r.run(["ip", "link", "del", name], check=False).returncode == 0 or name not in links(r):
                r.changes.append(f"removed container link {name}")
                r.log(f"  changed: removed container link {name}")
            else:
                raise CommandFailed(f"cannot remove stale container link {name}")
    for c in items:
        container_netns(r, doc, c, doc["node"])
        ns = c["name"]
        inner = {link["ifname"]: link for link in r.json(["ip", "-n", ns, "-d", "-j", "link", "show"])}
        host = links(r).get(c["link"])
        if host is None or "eth0" not in inner:
            if host is not None:
                r.change(f"removed dangling link {c['link']}", ["ip", "link", "del", c["link"]])
            if "eth0" in inner:
                r.change(f"removed dangling {ns}:eth0", ["ip", "-n", ns, "link", "del", "eth0"])
            r.change(
                f"wired {ns} to the bridge via {c['link']}",
                ["ip", "link", "add", c["link"], "type", "veth", "peer", "name", "eth0", "netns", ns],
            )
            inner = {link["ifname"]: link for link in r.json(["ip", "-n", ns, "-d", "-j", "link", "show"])}
            host = links(r)[c["link"]]
        ensure_link_state(r, host, doc["mtu"], doc["bridge"]["name"])
        if "UP" not in inner.get("lo", {}).get("flags", ["UP"]):
            r.change(f"set {ns}:lo up", ["ip", "-n", ns, "link", "set", "lo", "up"])
        ensure_link_state(r, inner["eth0"], doc["mtu"], None, mac=c["mac"], netns=ns)
        keys = ("net.ipv6.conf.eth0.disable_ipv6", "net.ipv6.conf.eth0.accept_ra")  # IPv6 on, no RA taken from the overlay
        have = r.run(["ip", "netns", "exec", ns, "sysctl", "-n", *keys], check=False).stdout.split()
        wrong = [f"{k}=0" for k, v in zip(keys, have, strict=False) if v != "0"]
        if wrong:
            r.change(f"set {ns}: {' '.join(wrong)}", ["ip", "netns", "exec", ns, "sysctl", "-qw", *wrong])
        ensure_addresses(r, "eth0", [c["ipv4"], c["ipv6"]], netns=ns)


# --------------------------------------------------------------------------- two hubs: BFD (FRR's bfdd) and failover


def failover_view(doc: dict[str, Any], down: set[str] | frozenset[str]) -> dict[str, Any]:
    """The config as the bridge runs it while BFD finds the tunnels `down` down. A MAC entry goes to its backup
    tunnel while its own is down and the backup is not. A tunnel that stands in for another (`standby_for`) floods
    instead of it, only while that one is down and it is not: a broadcast takes one tree at any time."""
    active = {t["name"] for t in doc["tunnels"] if t.get("standby_for") in down and t["name"] not in down}
    if not down and not any("standby_for" in t for t in doc["tunnels"]):
        return doc
    replaced = {t["standby_for"] for t in doc["tunnels"] if t["name"] in active}
    tunnels = [
        {**t, "flood": t.get("flood", True) and t["name"] not in replaced and ("standby_for" not in t or t["name"] in active)}
        for t in doc["tunnels"]
    ]
    fdb = [
        {"mac": e["mac"], "port": e["backup"] if e.get("backup") and e["port"] in down and e["backup"] not in down else e["port"]}
        for e in doc.get("fdb", [])
    ]
    return {**doc, "tunnels": tunnels, "fdb": fdb}


PROBE = "ovl-b0"  # the BFD probe: a veth pair, ovl-b0 a bridge port
PROBE_HOST_END = "ovl-b1"  # and ovl-b1, with its address and MAC
FRR = "/usr/lib/frr"
FRR_DAEMONS = "/etc/frr/daemons"
FRR_CONF = "/etc/frr/frr.conf"  # what frr.service loads when it starts (vtysh -b): the sessions survive its restarts
BFD_DOWN = "bfd-down.json"  # in the state dir: the router tunnels BFD finds down, kept by `bfd-watch`
# Seconds a session that has never come up may take before it counts as down, whether bfdd reported it down or never
# reported it at all (bfdd notifies state changes: a session whose peer is gone from the start never changes). Longer
# than a switch wave takes (at most 12 s on emulated VMs): new sessions come with the switch, their two ends one wave
# apart, and a shorter grace would move traffic off a peer that is merely a wave behind.
BFD_GRACE = 30.0
WATCH_UNIT = "multicloud-overlay-bfd-watch"


def _validate_failover(doc: dict[str, Any], tunnels: list[dict[str, Any]]) -> list[str]:
    router_tunnels = {t.get("name") for t in tunnels if str(t.get("name", "")).startswith("ovl-r")}
    problems = []
    for i, t in enumerate(tunnels):
        if "standby_for" in t and (t["standby_for"] not in router_tunnels or t["standby_for"] == t.get("name")):
            problems.append(f"tunnels[{i}].standby_for: {t['standby_for']!r} is not another router tunnel of this node")
    fdb = doc.get("fdb", [])
    for i, e in enumerate(fdb if isinstance(fdb, list) else []):
        if isinstance(e, dict) and "backup" in e and (e["backup"] not in router_tunnels or e["backup"] == e.get("port")):
            problems.append(f"fdb[{i}].backup: {e['backup']!r} is not another router tunnel of this node")
    bfd = doc.get("bfd")
    if bfd is None:
        return problems
    if not isinstance(bfd, dict) or doc.get("kind") != "router":
        return [*problems, "bfd: not an object of a router"]
    if not (_mac(bfd.get("mac")) and str(bfd.get("address", "")).startswith("fe80:") and _addr(bfd.get("address"))):
        problems.append("bfd: mac and a link-local address (fe80::) are needed")
    for key, lo, hi in (("interval_ms", 10, 10000), ("multiplier", 2, 255)):
        if not _int(lo, hi)(bfd.get(key)):
            problems.append(f"bfd.{key}: {bfd.get(key)!r} is not a whole number from {lo} to {hi}")
    peers = bfd.get("peers")
    if not isinstance(peers, list):
        return [*problems, "bfd.peers: not a list"]
    for i, p in enumerate(peers):
        if not (isinstance(p, dict) and p.get("tunnel") in router_tunnels and _mac(p.get("mac"))):
            problems.append(f"bfd.peers[{i}]: {p!r} is not a router tunnel with the peer's probe MAC")
        elif not (str(p.get("address", "")).startswith("fe80:") and _addr(p.get("address"))):
            problems.append(f"bfd.peers[{i}].address: {p.get('address')!r} is not a link-local address")
    return problems


def bfd_down(state_dir: str, doc: dict[str, Any]) -> set[str]:
    """The router tunnels that `bfd-watch` last found down (none without BFD, or before it wrote anything)."""
    if not doc.get("bfd"):
        return set()
    try:
        with open(os.path.join(state_dir, BFD_DOWN), encoding="utf-8") as f:
            down = json.load(f)
    except (OSError, ValueError):
        return set()
    return {t for t in down if isinstance(t, str)} & {t["name"] for t in doc["tunnels"]}


class Frr:
    """FRR's zebra and bfdd on this node: FRR's own unit on a VM (bfdd enabled in its daemons file), else (a lab node)
    daemons of its own, their sockets and pid files in STATE_DIR/frr. Configured through vtysh."""

    def __init__(self, r: Runner, state_dir: str) -> None:
        self.r, self.unit = r, systemd_runs_here()
        self.dir = "/var/run/frr" if self.unit else os.path.join(state_dir, "frr")
        self.sock = os.path.join(self.dir, "bfdd.sock")
        self.vty = [] if self.unit else ["--vty_socket", self.dir]

    def vtysh(self, *commands: str) -> str:
        argv = ["vtysh", *self.vty]
        for c in commands:
            argv += ["-c", c]
        return self.r.run(argv).stdout

    def running(self) -> bool:
        if self.unit:
            return self.r.run(["systemctl", "is-active", "--quiet", "frr.service"], check=False).returncode == 0 and os.path.exists(self.sock)
        return all(_pid_alive(os.path.join(self.dir, f"{d}.pid"), d) for d in ("zebra", "bfdd")) and os.path.exists(self.sock)

    def start(self) -> None:
        if self.unit:
            # The package's daemons file (bfdd=no, bfdd_options="-A 127.0.0.1"): bfdd on, its control socket named.
            with open(FRR_DAEMONS, encoding="utf-8") as f:
                text = f.read()
            want = re.sub(r"(?m)^bfdd=.*$", "bfdd=yes", text)
            want = re.sub(r"(?m)^bfdd_options=.*$", f'bfdd_options="-A 127.0.0.1 --bfdctl {self.sock}"', want)
            if want != text:
                install(FRR_DAEMONS, want, 0o640)
            self.r.change("started FRR's bfdd (frr.service)", ["systemctl", "enable", "--now", "frr.service"])
            self.r.run(["systemctl", "restart", "frr.service"])
        else:
            # FRR's daemons drop to its user (the package makes it, in group frrvty that may use the vty sockets).
            os.makedirs(self.dir, exist_ok=True)
            shutil.chown(self.dir, "frr", "frr")
            common = ["-d", "-u", "frr", "-g", "frr", "--vty_socket", self.dir, "-z", os.path.join(self.dir, "zserv.api"), "-f", "/dev/null"]
            self.r.run([f"{FRR}/zebra", *common, "-i", os.path.join(self.dir, "zebra.pid")])
            self.r.run([f"{FRR}/bfdd", *common, "-i", os.path.join(self.dir, "bfdd.pid"), "--bfdctl", self.sock])
            self.r.changes.append("started zebra and bfdd")
            self.r.log("  changed: started zebra and bfdd")
        deadline = time.monotonic() + 30
        while not os.path.exists(self.sock):
            if time.monotonic() > deadline:
                raise CommandFailed(f"bfdd did not start (no {self.sock})")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.unit:
            self.r.change("stopped FRR (frr.service)", ["systemctl", "disable", "--now", "frr.service"])
            return
        for d in ("bfdd", "zebra"):
            _kill_pidfile(os.path.join(self.dir, f"{d}.pid"), d)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.r.changes.append("stopped zebra and bfdd")
        self.r.log("  changed: stopped zebra and bfdd")


def _pid_of(path: str, name: str) -> int:
    try:
        with open(path, encoding="ascii") as f:
            pid = int(f.read().split()[0])
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return pid if name.encode() in f.read() else 0
    except (OSError, ValueError, IndexError):
        return 0


def _pid_alive(path: str, name: str) -> bool:
    return _pid_of(path, name) > 0


def _kill_pidfile(path: str, name: str) -> None:
    pid = _pid_of(path, name)
    if pid:
        os.kill(pid, 15)
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.05)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _bfd_peers(frr: Frr) -> dict[str, dict[str, Any]]:
    out = frr.vtysh("show bfd peers json").strip()
    return {p["peer"]: p for p in (json.loads(out) if out else []) if not p.get("multihop")}


def _watch_argv(state_dir: str, config: str, sock: str) -> list[str]:
    return [os.path.abspath(sys.argv[0]), "bfd-watch", "--config", config, "--state-dir", state_dir, "--socket", sock]


def step_bfd(r: Runner, doc: dict[str, Any], state_dir: str, config: str = "/etc/multicloud-overlay/node.json") -> set[str]:
    """Two hubs: a BFD session per router tunnel, which tests that tunnel and nothing else, and `bfd-watch`, which
    moves MAC entries and flooding when a session goes down or up. Each router has a probe (a veth pair: ovl-b0 a
    bridge port, ovl-b1 with a link-local address and a planned MAC); a peer's probe MAC is pinned to the direct
    tunnel with no backup, and its address is a permanent neighbour, so no probe takes another path or needs a
    flood. Without `bfd`, all of it goes. Returns the tunnels BFD finds down."""
    if doc["kind"] != "router":
        return set()
    bfd = doc.get("bfd")
    marker = os.path.join(state_dir, "bfd")  # this node has run BFD: what to take away when it no longer does
    if not bfd and not os.path.exists(marker):
        return set()
    frr = Frr(r, state_dir)
    current = links(r)
    if not bfd:
        _stop_watch(r, state_dir, frr)
        if frr.running():
            frr.stop()
        if PROBE in current:
            r.change(f"removed the BFD probe {PROBE}", ["ip", "link", "del", PROBE])
        for f in (BFD_DOWN, "bfd"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(state_dir, f))
        return set()
    if not os.path.exists(marker):
        install(marker, "")
    if shutil.which("vtysh") is None or not os.path.exists(f"{FRR}/bfdd"):
        raise CommandFailed("FRR is not installed: two hubs need its bfdd (apt-get install frr)")
    if PROBE not in current:
        r.change(f"created the BFD probe {PROBE}", ["ip", "link", "add", PROBE, "type", "veth", "peer", "name", PROBE_HOST_END])
        current = links(r)
    ensure_link_state(r, current[PROBE], doc["mtu"], doc["bridge"]["name"])
    end = current[PROBE_HOST_END]
    if end.get("address") != bfd["mac"].lower() or end.get("operstate") == "DOWN":
        r.change(f"set the probe {PROBE_HOST_END} {bfd['mac']}", ["ip", "link", "set", PROBE_HOST_END, "addrgenmode", "none", "address", bfd["mac"], "up"])
    # `ip link` lists no addresses: the probe's own come from `ip addr`.
    addresses = [f"{a['local']}/{a['prefixlen']}" for link in r.json(["ip", "-j", "addr", "show", "dev", PROBE_HOST_END]) for a in link.get("addr_info", [])]
    if f"{bfd['address']}/64" not in addresses:
        r.change(f"added {bfd['address']} to {PROBE_HOST_END}", ["ip", "addr", "replace", f"{bfd['address']}/64", "dev", PROBE_HOST_END, "nodad"])
    # The probe's own MAC pinned to its port: a peer's probe reaching this bridge is never flooded.
    r.run(["bridge", "fdb", "replace", bfd["mac"], "dev", PROBE, "master", "static"])
    neigh = "".join(f"neigh replace {p['address']} lladdr {p['mac']} dev {PROBE_HOST_END} nud permanent\n" for p in bfd["peers"])
    if neigh:
        r.run(["ip", "-6", "-batch", "-"], stdin=neigh)
    if not frr.running():
        frr.start()
    want = {p["address"]: p for p in bfd["peers"]}
    have = _bfd_peers(frr)
    timers = [f"receive-interval {bfd['interval_ms']}", f"transmit-interval {bfd['interval_ms']}", f"detect-multiplier {bfd['multiplier']}"]
    before = len(r.changes)
    for address in sorted(set(have) - set(want)):
        frr.vtysh("configure terminal", "bfd", f"no peer {address} interface {PROBE_HOST_END}")
        r.changes.append(f"removed BFD peer {address}")
        r.log(f"  changed: removed BFD peer {address}")
    for address in sorted(want):
        h = have.get(address, {})
        if h.get("receive-interval") != bfd["interval_ms"] or h.get("detect-multiplier") != bfd["multiplier"]:
            frr.vtysh("configure terminal", "bfd", f"peer {address} interface {PROBE_HOST_END}", *timers)
            r.changes.append(f"BFD peer {address}")
            r.log(f"  changed: BFD peer {address} ({want[address]['tunnel']}, {bfd['interval_ms']} ms x {bfd['multiplier']})")
    if frr.unit and (len(r.changes) > before or not _frr_conf_has(want)):
        # FRR's own copy of its running config: a restart of frr.service (an upgrade, an operator) brings the
        # sessions back without waiting for the next push.
        r.change(f"saved the BFD sessions to {FRR_CONF}", ["vtysh", "-c", "write memory"])
    _start_watch(r, state_dir, config, frr)
    return bfd_down(state_dir, doc)


def _frr_conf_has(peers: dict[str, Any]) -> bool:
    """Whether FRR's saved config holds exactly these BFD sessions."""
    try:
        with open(FRR_CONF, encoding="utf-8") as f:
            saved = re.findall(r"(?m)^\s*peer (\S+) interface (\S+)\s*$", f.read())
    except OSError:
        return False
    return sorted(saved) == sorted((a, PROBE_HOST_END) for a in peers)


def _start_watch(r: Runner, state_dir: str, config: str, frr: Frr) -> None:
    pid_file = os.path.join(state_dir, "bfd-watch.pid")
    if frr.unit:
        if r.run(["systemctl", "is-active", "--quiet", f"{WATCH_UNIT}.service"], check=False).returncode == 0:
            return
        argv = ["systemd-run", f"--unit={WATCH_UNIT}", "--property=Restart=always", "--property=RestartSec=1", *_watch_argv(state_dir, config, frr.sock)]
        r.change("started bfd-watch", argv)
        return
    if _pid_alive(pid_file, "bfd-watch"):
        return
    with open(os.devnull, "ab") as null, open(os.path.join(state_dir, "bfd-watch.log"), "ab") as log:
        child = subprocess.Popen([sys.executable, *_watch_argv(state_dir, config, frr.sock)], stdin=null, stdout=log, stderr=log, start_new_session=True)
    with open(pid_file, "w", encoding="ascii") as f:
        f.write(f"{child.pid}\n")
    r.changes.append("started bfd-watch")
    r.log("  changed: started bfd-watch")


def _stop_watch(r: Runner, state_dir: str, frr: Frr) -> None:
    if frr.unit:
        r.run(["systemctl", "stop", f"{WATCH_UNIT}.service"], check=False)
    else:
        _kill_pidfile(os.path.join(state_dir, "bfd-watch.pid"), "bfd-watch")
    r.changes.append("stopped bfd-watch")
    r.log("  changed: stopped bfd-watch")


def _failover_batch(old: dict[str, Any], new: dict[str, Any]) -> str:
    """`bridge -batch` lines from one failover view to another: flooding on where it starts, the MAC entries, then
    flooding off where it stops (make before break)."""
    flood_old = {t["name"]: t.get("flood", True) for t in old["tunnels"]}
    lines_on, lines_off = [], []
    for t in new["tunnels"]:
        on = t.get("flood", True)
        if flood_old.get(t["name"]) != on:
            state = "on" if on else "off"
            (lines_on if on else lines_off).append(f"link set dev {t['name']} flood {state} mcast_flood {state} bcast_flood {state}\n")
    port_old = {e["mac"]: e["port"] for e in old["fdb"]}
    moves = [f"fdb replace {e['mac']} dev {e['port']} master static sticky\n" for e in new["fdb"] if port_old.get(e["mac"]) != e["port"]]
    return "".join(lines_on + moves + lines_off)


def bfd_watch(config: str, state_dir: str, sock: str, log: Callable[[str], None]) -> int:
    """Follow bfdd's sessions through its control socket (FRR's bfdctl.h: a BMT_NOTIFY request, then one JSON
    message per session state, every session's at once first) and, under the node's lock, move MAC entries and
    flooding to what the sessions say (failover_view). No polling: the notification arrives as the state changes."""
    import socket
    import struct

    def running() -> dict[str, Any] | None:
        # What the node runs: the last config applied, which during a make-before-break change is a phase's
        # (transition), not yet the installed one; the installed one before the first apply.
        for path in (os.path.join(state_dir, "applied.json"), config):
            with contextlib.suppress(Rejected):
                return load(path)
        return None

    # A watcher that starts again (bfdd restarted, a reboot) takes over what the last one recorded, and what the
    # bridge was set to from it: a tunnel recorded down stays down until its session comes up, as if it had been
    # seen up and lost, and moves back then.
    start = running() or {"tunnels": []}
    down: set[str] = bfd_down(state_dir, start)
    seen_up: set[str] = {p["address"] for p in (start.get("bfd") or {}).get("peers", []) if p["tunnel"] in down}
    states: dict[str, tuple[str, float]] = {}
    started: dict[str, float] = {}
    while not os.path.exists(sock):
        time.sleep(0.2)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock)
    s.sendall(struct.pack("!IHBB", 8, 1, 4, 1) + struct.pack("=Q", 1))  # BMT_NOTIFY, BCM_NOTIFY_PEER_STATE
    buf = b""
    known: set[str] = set()

    def found_down(doc: dict[str, Any]) -> set[str]:
        peers = {p["address"]: p["tunnel"] for p in (doc.get("bfd") or {}).get("peers", [])}
        now = time.monotonic()
        # A session that left the config is forgotten, and one that joins it gets its grace from then: a peer
        # removed by one change and added again by a later one (a hub swap and back) starts as a new session, not
        # as one that was up and went down.
        for a in known - peers.keys():
            states.pop(a, None)
            seen_up.discard(a)
            started.pop(a, None)
        for a in peers.keys() - known:
            started[a] = now
        known.clear()
        known.update(peers)
        # Every session of the config, those bfdd has said nothing about too: a spoke that boots while its hub is
        # gone hears nothing from that session, and must still move to the standby.
        return {
            tunnel
            for a, tunnel in peers.items()
            if states.get(a, ("unreported", 0.0))[0] != "up" and (a in seen_up or now - started.get(a, now) > BFD_GRACE)
        }

    def settle() -> None:
        nonlocal down
        doc = running()
        if doc is None or found_down(doc) == down:
            return
        with Lock(os.path.join(state_dir, "lock")).acquire(log):
            doc = running()  # a push may have applied another config while this waited for the lock
            if doc is None:
                return
            new = found_down(doc)
            if new == down:
                return
            old_view, new_view = failover_view(doc, down), failover_view(doc, new)
            batch = _failover_batch(old_view, new_view)
            if batch:
                Runner(log).run(["bridge", "-batch", "-"], stdin=batch)
            install(os.path.join(state_dir, BFD_DOWN), json.dumps(sorted(new)) + "\n")
        log(f"bfd-watch: down {sorted(new) or 'none'} (was {sorted(down) or 'none'}): {batch.count(chr(10))} change(s)")
        down = new

    while True:
        s.settimeout(1.0)
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            settle()
            continue
        if not chunk:
            log("bfd-watch: bfdd closed its control socket")
            return 1
        buf += chunk
        while len(buf) >= 8:
            length, _, kind, _ = struct.unpack("!IHBB", buf[:8])
            if len(buf) < 8 + length:
                break
            body, buf = buf[8 : 8 + length], buf[8 + length :]
            if kind != 4:
                continue
            msg = json.loads(body.rstrip(b"\0") or b"{}")
            if msg.get("op") == "status" and "peer-address" in msg:
                a = str(ipaddress.ip_address(msg["peer-address"].split("%")[0]))
                started.setdefault(a, time.monotonic())
                if msg.get("state") == "up":
                    seen_up.add(a)
                states[a] = (str(msg.get("state")), time.monotonic())
        settle()


# --------------------------------------------------------------------------- entry points


def apply(
    doc: dict[str, Any],
    r: Runner,
    previous: dict[str, Any] | None = None,
    state_dir: str = "/var/lib/multicloud-overlay",
    ike_wait: float = 0,
    config: str = "/etc/multicloud-overlay/node.json",
) -> list[str]:
    step_sysctls(r, doc)
    step_host_firewall(r, doc)
    step_firewall(r, doc)
    step_lan(r, doc)
    step_ipsec(r, doc, state_dir, ike_wait)
    step_bridge(r, doc)
    view = failover_view(doc, step_bfd(r, doc, state_dir, config))
    step_tunnels(r, view)
    step_containers(r, doc, previous)
    step_fdb(r, view)
    step_neighbours(r, doc)
    return r.changes


PHASES = ("prepare", "switch")
# What a make-before-break change may not touch: with any of these different, the old and new configs cannot run
# side by side, and the change is made in one step (the final push).
SIDE_BY_SIDE = ("kind", "protocol", "port", "mtu", "bridge", "lan", "forwarding", "open_host_firewall", "containers", "ipsec")


FORWARDING = ("isolated", "flood", "standby_for")
"""What a tunnel's entry says about forwarding, not about the tunnel: a phase sets it (transition)."""


def _tunnel_core(t: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in t.items() if k not in FORWARDING}


def transition(old: dict[str, Any] | None, new: dict[str, Any], phase: str) -> dict[str, Any] | None:
    """The config a router runs during one phase of a make-before-break change from `old` to `new` (None: the
    change cannot be made that way, or has nothing to move, and the phase does nothing).

    A hub swap (or a topology change) moves every router's traffic from one set of tunnels to another. Made in one
    step, a router drops its old tunnels before its peers have the new ones, and traffic stops until all have
    converged. In phases, pushed to every router in turn:
    - prepare: old and new tunnels side by side (their keys and firewall rules with them); the MAC table still
      sends every frame the old way, and only the old tunnels flood;
    - switch: the MAC table and flooding move to the new tunnels (the new hub first, then the others: any mix of
      switched and unswitched routers still delivers, through the old hub or the new one);
    - finish, the plain push: the new config alone; the old tunnels go, and nothing uses them any more.
    While old and new tunnels coexist, a frame may reach a router from two hubs: only a hub (old or new) relays
    between tunnels, every other router's tunnels are isolated ports, so the two hubs and their one tunnel are the
    only path a frame can take twice, and there is no loop. A standby hub that is neither relays nothing for those
    few seconds either (a third relay would close a triangle with the two hubs); it carries no traffic while the
    hub is up. With two hubs, each phase follows one side whole: which tunnel stands in for which
    (`standby_for`), the MAC entries and their backups, and the BFD sessions are the old config's in prepare and the
    new one's from the switch on, so the flooding tree, the MAC table and BFD's failover always agree.
    """
    if old is None or new["kind"] != "router" or any(old.get(k) != new.get(k) for k in SIDE_BY_SIDE):
        return None
    old_t = {t["name"]: t for t in old["tunnels"]}
    new_t = {t["name"]: t for t in new["tunnels"]}
    if any(_tunnel_core(old_t[n]) != _tunnel_core(new_t[n]) for n in old_t.keys() & new_t.keys()):
        return None
    if old == new:
        return None
    relay = "hub" in (old.get("role"), new.get("role"))
    side = old if phase == "prepare" else new
    flooding = old_t if phase == "prepare" else new_t
    tunnels = []
    for name in [*new_t, *(n for n in old_t if n not in new_t)]:
        t = _tunnel_core(new_t.get(name) or old_t[name])
        if name.startswith("ovl-r") and not relay:
            t["isolated"] = True
        if name not in flooding:
            t["flood"] = False
        elif "standby_for" in flooding[name]:
            t["standby_for"] = flooding[name]["standby_for"]
        tunnels.append(t)
    step = {**new, "tunnels": tunnels, "fdb": side.get("fdb", [])}
    step.pop("bfd", None)
    bfd = side.get("bfd")
    if phase == "prepare" and "bfd" in new:
        # FRR starts here, beside the old tunnels (its start takes seconds: not in a switch, one wave after another),
        # with the old config's sessions only: the new ones come with the switch.
        bfd = {**new["bfd"], "peers": (old.get("bfd") or {}).get("peers", [])}
    return {**step, **({"bfd": bfd} if bfd else {})}


def ping(target: str) -> bool:
    argv = ["ping", "-c", "1", "-W", "2", target]
    if ipaddress.ip_address(target).version == 6 and shutil.which("ping6") and not shutil.which("ping"):
        argv[0] = "ping6"
    return subprocess.run(argv, capture_output=True).returncode == 0


def check(targets: Sequence[str], as_json: bool) -> int:
    """Ping every target (a few at a time, each retried once) and report; exit 1 if any stays unreachable."""
    from concurrent.futures import ThreadPoolExecutor

    for t in targets:
        ipaddress.ip_address(t)  # refuse garbage before sending anything
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = dict(zip(targets, pool.map(lambda t: ping(t) or ping(t), targets), strict=False))
    failed = sorted(t for t, ok in results.items() if not ok)
    if as_json:
        print(json.dumps({"reachable": sum(results.values()), "total": len(results), "unreachable": failed, "results": results}))
    else:
        for t, ok in results.items():
            print(f"{'ok  ' if ok else 'FAIL'} {t}")
    return 1 if failed else 0


class Lock:
    """One apply at a time: the boot unit and a remote re-apply may start together."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1

    def acquire(self, log: Callable[[str], None]) -> Lock:
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("overlay-node: another run is applying a config; waiting for it to finish")
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def install(path: str, text: str, mode: int = 0o600) -> None:
    """PATH atomically (PATH.new, MODE, fsync, rename): a reader sees the old file or the new one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, mode=0o700, exist_ok=True)
    fd = os.open(path + ".new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(fd, mode)
        f.write(text)
        f.flush()
        os.fsync(fd)
    os.replace(path + ".new", path)
    dfd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _sha256_of(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return ""


SCRIPT_MAX_BYTES = 4 << 20
"""The most bytes install-script unpacks: the node script is about 60 KB; a larger stream is refused, and not unpacked further."""


def install_script(pin_path: str, to: str, packed: bytes, log: Callable[[str], None]) -> int:
    """Install the node script PACKED holds (base64 of its gzip: render.packed_node_script) as TO when its SHA-256 is
    the one PIN_PATH (written from user-data) holds.

    The login user may run this as root, so it installs nothing else: not even the script of a newer program, whose
    pin a VM made earlier does not hold (user-data changes are ignored). Such a node keeps the full script it has,
    and says so; one that has only its boot script refuses, since a push would then have no code to run."""
    try:
        unzip = zlib.decompressobj(wbits=31)
        data = unzip.decompress(base64.b64decode(packed.strip(), validate=True), SCRIPT_MAX_BYTES)
        if unzip.unconsumed_tail or unzip.unused_data or not unzip.eof:
            raise ValueError("too large, cut short, or more after it")
    except (ValueError, zlib.error) as e:  # binascii.Error is a ValueError
        print(f"overlay-node: no node script installed: stdin is not the packed node script (base64 of gzip, {SCRIPT_MAX_BYTES} bytes at most): {e}", file=sys.stderr)
        return EXIT_REJECTED
    got = hashlib.sha256(data).hexdigest()
    try:
        with open(pin_path, encoding="ascii") as f:
            pin = f.read().strip()
    except OSError as e:
        print(f"overlay-node: no node script installed: cannot read the pin {pin_path}: {e.strerror}", file=sys.stderr)
        return EXIT_REJECTED
    have = _sha256_of(to)
    if got != pin:
        why = f"the pushed node script (sha256 {got[:16]}) is not the one this node's user-data pins ({pin[:16]})"
        if have == pin:
            log(f"overlay-node: kept the installed node script: {why}; a VM gets another script when it is replaced")
            return 0
        print(f"overlay-node: no node script installed: {why}, and this node has only its boot script", file=sys.stderr)
        return EXIT_REJECTED
    if have == got:
        log("overlay-node: the node script is installed already")
        return 0
    install(to, data.decode(), 0o755)  # the pinned script: UTF-8 text
    log(f"  changed: installed the node script (sha256 {got[:16]})")
    return 0


def converge(
    doc: dict[str, Any],
    state_dir: str,
    log: Callable[[str], None],
    before: Callable[[], None] | None = None,
    restore: Callable[[dict[str, Any]], None] | None = None,
    ike_wait: float = 0,
    config: str = "/etc/multicloud-overlay/node.json",
) -> int:
    """Apply doc under the node's lock (running `before` first, under it too); roll back to the last applied config on
    failure, and hand that config to `restore` (a push reinstalls it: the disk says what runs, credentials included)."""
    os.makedirs(state_dir, exist_ok=True)
    applied_path = os.path.join(state_dir, "applied.json")
    with Lock(os.path.join(state_dir, "lock")).acquire(log):
        if before is not None:
            before()
        previous = None
        try:
            with open(applied_path, encoding="utf-8") as f:
                previous = json.load(f)
            if validate(previous):
                previous = None
        except (OSError, ValueError):
            previous = None
        r = Runner(log)
        log(f"overlay-node: applying {doc['protocol']} config of {doc['node']} ({doc['role'] if 'role' in doc else doc['kind']})")
        started = time.monotonic()
        try:
            changes = apply(doc, r, previous, state_dir, ike_wait, config)
        except CommandFailed as e:
            print(f"overlay-node: failed: {e}", file=sys.stderr)
            if previous is not None and previous != doc:
                # Never leave the node half-way between two configs: converge back to the last one that applied.
                log("overlay-node: rolling back to the previous config")
                try:
                    apply(previous, Runner(log), doc, state_dir, config=config)
                    if restore is not None:
                        restore(previous)
                    log("overlay-node: rolled back: the node runs its previous config")
                except CommandFailed as again:
                    print(f"overlay-node: rollback failed too: {again}", file=sys.stderr)
            return 1
        tmp = applied_path + ".tmp"
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1, sort_keys=True)
        os.replace(tmp, applied_path)
        took = time.monotonic() - started
        if changes:
            log(f"overlay-node: converged with {len(changes)} change(s) in {took:.1f} s")
        else:
            log(f"overlay-node: no change: {doc['node']} already matches its config")
    return 0


def push(args: argparse.Namespace, log: Callable[[str], None]) -> int:
    """`overlay-node push`: the config on stdin, validated, installed and applied; with --phase, a make-before-break
    step towards it (nothing installed)."""
    raw = sys.stdin.buffer.read()
    if shutil.which("cloud-init") and os.path.isdir(CLOUD_INIT_RUN) and not os.path.exists(f"{CLOUD_INIT_RUN}/result.json"):
        # A push right after creation: cloud-init may still be installing packages (its status does not matter).
        # Installed but not in use on this boot (no /run/cloud-init), its `status --wait` would never return.
        # Done on this boot (every later push): it has linked result.json into /run/cloud-init at the end of
        # its last stage, and reports "running" until then (cloudinit/cmd/main.py status_wrapper,
        # cloudinit/cmd/status.py get_status_details,
        # https://github.com/canonical/cloud-init/blob/22.4.2/cloudinit/cmd/status.py), so the wait is
        # skipped: `cloud-init status` itself takes seconds of CPU on a small VM.
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(["cloud-init", "status", "--wait"], stdin=subprocess.DEVNULL, capture_output=True, timeout=1800)
    try:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Rejected("the pushed config is not UTF-8 text") from None
        doc = parse(text, "the pushed config")
    except Rejected as e:
        print(f"overlay-node: config rejected, nothing changed (the previous config stays in place): {e}", file=sys.stderr)
        return EXIT_REJECTED
    if args.phase:
        try:
            installed: dict[str, Any] | None = load(args.config)
        except Rejected:
            installed = None
        step = transition(installed, doc, args.phase)
        if step is None:
            log(f"overlay-node: {args.phase}: nothing to do (a one-step change)")
            return 0
        problems = validate(step)
        if problems:
            print(f"overlay-node: {args.phase}: nothing changed: " + "; ".join(problems), file=sys.stderr)
            return EXIT_REJECTED
        log(
            f"overlay-node: {args.phase}: old and new tunnels side by side, MAC table on the {'old' if args.phase == 'prepare' else 'new'} ones"
        )
        # The switch moves traffic onto the new tunnels: only once each has its SA (every peer prepared them).
        return converge(step, args.state_dir, log, ike_wait=IKE_WAIT if args.phase == "switch" else 0, config=args.config)
    return converge(
        doc,
        args.state_dir,
        log,
        lambda: install(args.config, text),
        lambda previous: install(args.config, json.dumps(previous, indent=1, sort_keys=True) + "\n"),
        config=args.config,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="overlay-node", description="converge this machine to its multicloud-overlay node config")
    sub = parser.add_subparsers(dest="command", required=True)
    ap = sub.add_parser("apply", help="converge this node to the config")
    pp = sub.add_parser("push", help="read a new config on stdin, validate it, install it as --config and apply it")
    for p in (ap, pp):
        p.add_argument("--config", required=True)
        p.add_argument("--state-dir", default="/var/lib/multicloud-overlay")
    pp.add_argument("--phase", choices=PHASES, help="a make-before-break step towards the config (not installed)")
    vp = sub.add_parser("validate", help="check a config without changing anything")
    vp.add_argument("--config", required=True)
    cp = sub.add_parser("check", help="ping overlay addresses from this node (exit 1 if any is unreachable)")
    cp.add_argument("--json", action="store_true", help="print the results as one JSON object")
    cp.add_argument("targets", nargs="+")
    wp = sub.add_parser("bfd-watch", help="follow bfdd's sessions and fail MAC entries and flooding over (two hubs)")
    wp.add_argument("--config", required=True)
    wp.add_argument("--state-dir", required=True)
    wp.add_argument("--socket", required=True)
    ip = sub.add_parser("install-script", help="install the packed node script on stdin as --to if --pin holds its SHA-256")
    ip.add_argument("--pin", required=True)
    ip.add_argument("--to", required=True)
    args = parser.parse_args(argv)
    if args.command == "check":
        return check(args.targets, args.json)

    def log(line: str) -> None:
        print(line, flush=True)

    if args.command == "bfd-watch":
        return bfd_watch(args.config, args.state_dir, args.socket, log)
    if args.command == "install-script":
        return install_script(args.pin, args.to, sys.stdin.buffer.read(), log)
    if args.command == "push":
        return push(args, log)
    try:
        doc = load(args.config)
    except Rejected as e:
        print(f"overlay-node: config rejected, nothing changed (the previous config stays in place): {e}", file=sys.stderr)
        return EXIT_REJECTED
    if args.command == "validate":
        log(f"{args.config}: valid config for {doc['node']}")
        return 0
    return converge(doc, args.state_dir, log, config=args.config)


if __name__ == "__main__":
    sys.exit(main())
