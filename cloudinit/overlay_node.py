#!/usr/bin/env python3
"""overlay-node: converge this machine to its multicloud-overlay node config.

Installed by cloud-init as /usr/local/sbin/overlay-node and run by multicloud-overlay.service at every boot;
re-run in place when the node config changes (new hub, protocol, MTU, container count). Idempotent: a second
run with the same config changes nothing and says so. Standard library only (cloud images ship python3).

    overlay-node apply --config /etc/multicloud-overlay/node.json --state-dir /var/lib/multicloud-overlay
    overlay-node validate --config FILE
"""

from __future__ import annotations

import argparse
import fcntl
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

OWN_PREFIXES = ("ovl-r", "ovl-c", "ovl-k")
CONTAINER_LABEL = "multicloud-overlay.node"
EXIT_REJECTED = 3


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
            raise CommandFailed(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def change(self, what: str, argv: Sequence[str]) -> None:
        self.run(argv)
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
        return True
    except ValueError:
        return False


def _mac(value: Any) -> bool:
    parts = str(value).split(":")
    return len(parts) == 6 and all(len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts)


def _name(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 15 and all(c.isalnum() or c in "-_." for c in value)


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

    need("version", lambda v: v == 1, "version 1")
    need("node", _name, "a node name")
    need("kind", lambda v: v in ("router", "client"), "router or client")
    need("protocol", lambda v: v in ("vxlan", "geneve"), "vxlan or geneve")
    need("port", lambda v: isinstance(v, int) and 0 < v < 65536, "a UDP port")
    need("mtu", lambda v: isinstance(v, int) and 1280 <= v <= 9000, "an MTU from 1280 to 9000")
    need("forwarding", lambda v: isinstance(v, bool), "true or false")
    need("open_host_firewall", lambda v: isinstance(v, bool), "true or false")
    bridge = doc.get("bridge")
    if not isinstance(bridge, dict):
        problems.append("bridge: missing or not an object")
    else:
        need("name", _name, "an interface name", bridge, "bridge.")
        need("mac", lambda v: isinstance(v, str) and len(v.split(":")) == 6, "a MAC address", bridge, "bridge.")
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
            need("vni", lambda v: isinstance(v, int) and 0 < v < 2**24, "a VNI", t, p)
            need("local", _addr, "an address", t, p)
            need("remote", _addr, "an address", t, p)
        names = [t.get("name") for t in tunnels if isinstance(t, dict)]
        if len(set(names)) != len(names):
            problems.append("tunnels: duplicate tunnel names")
        vnis = [t.get("vni") for t in tunnels if isinstance(t, dict)]
        if len(set(vnis)) != len(vnis):
            problems.append("tunnels: two tunnels share a VNI (the kernel demultiplexes VXLAN by VNI)")
    fdb = doc.get("fdb", [])
    if not isinstance(fdb, list):
        problems.append("fdb: not a list")
    else:
        ports = {t.get("name") for t in tunnels if isinstance(t, dict)} if isinstance(tunnels, list) else set()
        for i, e in enumerate(fdb):
            if not isinstance(e, dict) or not _mac(e.get("mac")) or e.get("port") not in ports:
                problems.append(f"fdb[{i}]: {e!r} is not a MAC on one of this node's tunnels")
    containers = doc.get("containers")
    if not isinstance(containers, dict):
        problems.append("containers: missing or not an object")
    else:
        need("runtime", lambda v: v in ("docker", "netns"), "docker or netns", containers, "containers.")
        need("image", lambda v: isinstance(v, str) and bool(v), "an image name", containers, "containers.")
        items = containers.get("items")
        if not isinstance(items, list):
            problems.append("containers.items: missing or not a list")
        else:
            for i, c in enumerate(items):
                p = f"containers.items[{i}]."
                if not isinstance(c, dict):
                    problems.append(f"{p[:-1]}: not an object")
                    continue
                need("name", _name, "a container name", c, p)
                need("link", lambda v: _name(v) and str(v).startswith("ovl-k"), "an ovl-k* name", c, p)
                need("ipv4", lambda v: _iface(v, 4), "an IPv4 address/prefix", c, p)
                need("ipv6", lambda v: _iface(v, 6), "an IPv6 address/prefix", c, p)
                need("mac", lambda v: isinstance(v, str) and len(v.split(":")) == 6, "a MAC address", c, p)
    return problems


def load(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise Rejected(f"cannot read {path}: {e.strerror}") from None
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
    path = "/proc/sys/" + key.replace(".", "/")
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


def addresses(r: Runner, dev: str, netns: str | None = None) -> list[str]:
    argv = ["ip"] + (["-n", netns] if netns else []) + ["-j", "addr", "show", "dev", dev]
    out: list[str] = []
    for link in r.json(argv):
        for a in link.get("addr_info", []):
            if a.get("scope") == "global":
                out.append(f"{a['local']}/{a['prefixlen']}")
    return out


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
    r: Runner, link: dict[str, Any], mtu: int, master: str | None, mac: str | None = None, netns: str | None = None
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
    if "UP" not in link.get("flags", []):
        r.change(f"set {where} up", [*pre, "link", "set", name, "up"])


def step_sysctls(r: Runner, doc: dict[str, Any]) -> None:
    if not doc["forwarding"]:
        return
    # IPv6 forwarding makes the kernel ignore router advertisements on interfaces with accept_ra=1, which would
    # let the underlay's IPv6 default route expire: keep accepting them on the underlay NICs (accept_ra=2).
    for name, link in sorted(links(r).items()):
        if name == "lo" or name.startswith(OWN_PREFIXES) or name == doc["bridge"]["name"]:
            continue
        if link.get("linkinfo", {}).get("info_kind") in ("bridge", "vxlan", "geneve"):
            continue
        try:
            with open(f"/proc/sys/net/ipv6/conf/{name}/accept_ra", encoding="ascii") as f:
                if f.read().strip() == "1":
                    _sysctl(r, f"net.ipv6.conf.{name}.accept_ra", "2")
        except OSError:
            pass
    _sysctl(r, "net.ipv4.ip_forward", "1")
    _sysctl(r, "net.ipv6.conf.all.forwarding", "1")
    # Multi-NIC routers see replies on another NIC than the route back: loose reverse-path filtering.
    _sysctl(r, "net.ipv4.conf.all.rp_filter", "2")
    _sysctl(r, "net.ipv4.conf.default.rp_filter", "2")


def step_host_firewall(r: Runner, doc: dict[str, Any]) -> None:
    """Open the tunnel port and bridged forwarding where the image's iptables rules reject them (OCI)."""
    if not doc["open_host_firewall"]:
        return
    bridge = doc["bridge"]["name"]
    rules = [
        ("iptables", ["INPUT", "-p", "udp", "--dport", str(doc["port"]), "-j", "ACCEPT"]),
        ("iptables", ["FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"]),
        ("ip6tables", ["FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"]),
    ]
    for tool, rule in rules:
        if shutil.which(tool) is None:
            raise CommandFailed(f"{tool} is not installed but open_host_firewall is set (apt-get install iptables)")
        if r.run([tool, "-w", "-C", *rule], check=False).returncode != 0:
            r.change(f"{tool}: accept {' '.join(rule)}", [tool, "-w", "-I", rule[0], "1", *rule[1:]])


def step_lan(r: Runner, doc: dict[str, Any]) -> None:
    """Give the LAN NIC its planned address where the platform's image does not (secondary VNIC/ENI)."""
    if not doc["lan"]["configure"]:
        return
    want = str(ipaddress.ip_interface(doc["lan"]["address"]))
    all_links = links(r)
    candidates = []
    for name, link in all_links.items():
        have = addresses(r, name)
        if want in {str(ipaddress.ip_interface(a)) for a in have}:
            ensure_link_state(r, link, link.get("mtu", 1500), None)
            return
        kind = link.get("linkinfo", {}).get("info_kind")
        if name == "lo" or name.startswith(OWN_PREFIXES) or kind in ("bridge", "vxlan", "geneve", "tun"):
            continue
        if link.get("link_type") != "ether" or any(ipaddress.ip_interface(a).version == 4 for a in have):
            continue
        candidates.append((link.get("ifindex", 0), name))
    if not candidates:
        raise CommandFailed(f"no unconfigured NIC for the LAN address {want}: is the LAN NIC attached?")
    _, name = min(candidates)
    r.log(f"  LAN NIC is {name}")
    ensure_link_state(r, all_links[name], all_links[name].get("mtu", 1500), None)
    r.change(f"added {want} to LAN NIC {name}", ["ip", "addr", "add", want, "dev", name])


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
    ensure_addresses(r, br["name"], [br["ipv4"], br["ipv6"]])


def _tunnel_matches(link: dict[str, Any], t: dict[str, Any], doc: dict[str, Any]) -> bool:
    info = link.get("linkinfo", {})
    data = info.get("info_data", {})
    if info.get("info_kind") != doc["protocol"] or data.get("id") != t["vni"] or data.get("port") != doc["port"]:
        return False
    if data.get("remote") != t["remote"]:
        return False
    return doc["protocol"] != "vxlan" or data.get("local") == t["local"]


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
                argv += ["local", t["local"]]
            argv += ["dstport", str(doc["port"])]
            r.change(f"created {doc['protocol']} tunnel {name} vni {t['vni']} {t['local']} -> {t['remote']} ({t.get('peer', '?')})", argv)
    current = links(r)
    for name in sorted(wanted):
        ensure_link_state(r, current[name], doc["mtu"], doc["bridge"]["name"])
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


def _docker(r: Runner, argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess:
    return r.run(["docker", *argv], check=check)


def wait_for_docker(r: Runner, timeout: float = 120.0) -> None:
    if shutil.which("docker") is None:
        raise CommandFailed("docker is not installed (apt-get install docker.io)")
    deadline = time.monotonic() + timeout
    while _docker(r, ["info", "--format", "{{.ServerVersion}}"], check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise CommandFailed("the Docker daemon did not answer within 120 s (systemctl status docker)")
        time.sleep(2)


def _netns_of(r: Runner, name: str, pid: int) -> bool:
    """True when the network namespace handle `name` is the one of process `pid`."""
    if not os.path.exists(f"/run/netns/{name}"):
        return False
    out = r.run(["ip", "netns", "identify", str(pid)], check=False).stdout.split()
    return name in out


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
                image,
                "sleep",
                "2147483647",
            ],
        )
        remade = True
    elif not state["State"]["Running"]:
        r.change(f"restarted container {name}", ["docker", "start", name])
        remade = True
    pid = int(_docker(r, ["inspect", "--format", "{{.State.Pid}}", name]).stdout.strip())
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
        wait_for_docker(r)
        listed = _docker(r, ["ps", "-a", "--filter", f"label={CONTAINER_LABEL}", "--format", "{{.Names}}"]).stdout.split()
        for name in sorted(set(listed) - wanted):
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
        if r.run(["ip", "netns", "exec", ns, "sysctl", "-n", "net.ipv6.conf.eth0.disable_ipv6"], check=False).stdout.strip() == "1":
            r.change(f"enabled IPv6 on {ns}:eth0", ["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=0"])
        ensure_addresses(r, "eth0", [c["ipv4"], c["ipv6"]], netns=ns)


# --------------------------------------------------------------------------- entry points


def apply(doc: dict[str, Any], r: Runner, previous: dict[str, Any] | None = None) -> list[str]:
    step_sysctls(r, doc)
    step_host_firewall(r, doc)
    step_lan(r, doc)
    step_bridge(r, doc)
    step_tunnels(r, doc)
    step_containers(r, doc, previous)
    step_fdb(r, doc)
    return r.changes


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="overlay-node", description="converge this machine to its multicloud-overlay node config")
    sub = parser.add_subparsers(dest="command", required=True)
    ap = sub.add_parser("apply", help="converge this node to the config")
    ap.add_argument("--config", required=True)
    ap.add_argument("--state-dir", default="/var/lib/multicloud-overlay")
    vp = sub.add_parser("validate", help="check a config without changing anything")
    vp.add_argument("--config", required=True)
    cp = sub.add_parser("check", help="ping overlay addresses from this node (exit 1 if any is unreachable)")
    cp.add_argument("--json", action="store_true", help="print the results as one JSON object")
    cp.add_argument("targets", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "check":
        return check(args.targets, args.json)

    def log(line: str) -> None:
        print(line, flush=True)

    try:
        doc = load(args.config)
    except Rejected as e:
        print(f"overlay-node: config rejected, nothing changed (the previous config stays in place): {e}", file=sys.stderr)
        return EXIT_REJECTED
    if args.command == "validate":
        log(f"{args.config}: valid config for {doc['node']}")
        return 0
    os.makedirs(args.state_dir, exist_ok=True)
    applied_path = os.path.join(args.state_dir, "applied.json")
    with Lock(os.path.join(args.state_dir, "lock")).acquire(log):
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
            changes = apply(doc, r, previous)
        except CommandFailed as e:
            print(f"overlay-node: failed: {e}", file=sys.stderr)
            if previous is not None and previous != doc:
                # Never leave the node half-way between two configs: converge back to the last one that applied.
                log("overlay-node: rolling back to the previous config")
                try:
                    apply(previous, Runner(log), doc)
                    log("overlay-node: rolled back: the node runs its previous config")
                except CommandFailed as again:
                    print(f"overlay-node: rollback failed too: {again}", file=sys.stderr)
            return 1
        tmp = applied_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1, sort_keys=True)
        os.replace(tmp, applied_path)
        took = time.monotonic() - started
        if changes:
            log(f"overlay-node: converged with {len(changes)} change(s) in {took:.1f} s")
        else:
            log(f"overlay-node: no change: {doc['node']} already matches its config")
    return 0


if __name__ == "__main__":
    sys.exit(main())
