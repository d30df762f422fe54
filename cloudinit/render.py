"""Render a node's cloud-init payload (pure).

The payload is the one artifact both runtimes use: a cloud VM boots with it, and the lab writes its files under
a per-node root and runs its unit's command in the node's namespace. `read_payload` is the inverse the lab and
the tests use, so what they check is exactly what a VM would get.
"""

from __future__ import annotations

import ast
import base64
import functools
import gzip
import hashlib
import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

import yaml

NODE_SCRIPT: Final = "/usr/local/sbin/overlay-node"
NODE_CONFIG: Final = "/etc/multicloud-overlay/node.json"
STATE_DIR: Final = "/var/lib/multicloud-overlay"
UNIT_NAME: Final = "multicloud-overlay.service"
UNIT_PATH: Final = f"/etc/systemd/system/{UNIT_NAME}"
DOCKER_DAEMON: Final = "/etc/docker/daemon.json"
APPLY_COMMAND: Final = (NODE_SCRIPT, "apply", "--config", NODE_CONFIG, "--state-dir", STATE_DIR)
PUSH_COMMAND: Final = (NODE_SCRIPT, "push", "--config", NODE_CONFIG, "--state-dir", STATE_DIR)
"""Installs the node config read on stdin (validated, atomically, mode 0600) and converges the node to it."""
PHASES: Final = ("prepare", "switch")
"""The make-before-break steps a router takes towards a pushed config before the push itself (overlay_node.transition)."""


def phase_command(phase: str | None) -> tuple[str, ...]:
    """The push command of one make-before-break phase (None: the push, which installs the config)."""
    if phase is None:
        return PUSH_COMMAND
    if phase not in PHASES:
        raise ValueError(f"unknown push phase {phase!r} (one of {', '.join(PHASES)})")
    return (NODE_SCRIPT, "push", "--phase", phase, "--config", NODE_CONFIG, "--state-dir", STATE_DIR)


CHECK_COMMAND: Final = (NODE_SCRIPT, "check", "--json")
# One login user on every platform, created by the payload itself: no platform's key mechanism (and its key types,
# its default user: ubuntu, root on Alibaba) is involved. It may run exactly the push and the check as root.
LOGIN_USER: Final = "overlay"
SUDOERS_PATH: Final = "/etc/sudoers.d/90-multicloud-overlay"
HOST_KEY_PATH: Final = "/etc/ssh/multicloud-overlay/ssh_host_ed25519_key"
SSHD_DROP_IN: Final = "/etc/ssh/sshd_config.d/00-multicloud-overlay.conf"
# Routers get strongSwan whatever the encryption, so that turning IPsec on is a push: charon-systemd (its
# strongswan.service, swanctl) and the standard plugins (openssl: AES-GCM and X25519 for IKE), both in Ubuntu's main
# (https://packages.ubuntu.com/noble/charon-systemd, https://packages.ubuntu.com/noble/libstrongswan-standard-plugins).
# And FRR, whose bfdd detects a lost hub when a standby hub is set (https://packages.ubuntu.com/noble/frr), so that
# setting one is a push too.
PACKAGES: Final = {
    "router": ("iproute2", "iptables", "iputils-ping", "docker.io", "charon-systemd", "libstrongswan-standard-plugins", "frr"),
    "client": ("iproute2", "iptables", "iputils-ping"),
}
# Only what the node runs: docker.io's Recommends (git, needrestart, cgroupfs-mount, xz-utils on Debian; git, pigz,
# ubuntu-fan on Ubuntu) are not used by a router, and under an emulated CPU they tripled the first boot's install.
APT_INSTALL_OPTIONS: Final = ("-y", "-q", "--no-install-recommends")
# A node may have no way out for a while after it boots (an OCI router until its reserved public IP is bound, any
# node while a mirror hiccups): packages are installed with retries, for up to 15 minutes, instead of once.
PACKAGE_TRIES: Final = 90
PACKAGE_RETRY_SECONDS: Final = 10
# The node script and its config travel gzip-compressed inside the payload (cloud-init writes them decompressed).
# How each platform sends the payload itself, and its limit, is the platform's: components/clouds/<platform>_limits.py.

_SCRIPT_SOURCE: Final = Path(__file__).with_name("overlay_node.py")
_BOOT_SOURCE: Final = Path(__file__).with_name("overlay_node_boot.py")
SCRIPT_PIN: Final = "/etc/multicloud-overlay/node-script.sha256"
"""The SHA-256 (hex) of node_script(), from user-data: `overlay-node install-script` installs only that script."""
INSTALL_SCRIPT_COMMAND: Final = (NODE_SCRIPT, "install-script", "--pin", SCRIPT_PIN, "--to", NODE_SCRIPT)
PUSH_ONLY: Final = frozenset(
    {
        # IPsec: a bootstrap config has no peer, so no key.
        "PSK_HEX",
        "PROPOSAL_RE",
        "_validate_ipsec",
        "SWANCTL_CONF",
        "CHARON_CONF",
        "CHARON",
        "IKE_WAIT",
        "swanctl_conf",
        "charon_conf",
        "_write_if_changed",
        "Ike",
        "step_ipsec",
        # Make-before-break steps, the push itself and the connectivity check: only the program runs them.
        "SIDE_BY_SIDE",
        "_tunnel_core",
        "transition",
        "ping",
        "check",
        "push",
        # Two hubs: BFD sessions and the failover they drive run only with a pushed config.
        "PROBE",
        "PROBE_HOST_END",
        "FRR",
        "FRR_DAEMONS",
        "FRR_CONF",
        "BFD_DOWN",
        "BFD_GRACE",
        "WATCH_UNIT",
        "_validate_failover",
        "failover_view",
        "bfd_down",
        "Frr",
        "_pid_of",
        "_pid_alive",
        "_kill_pidfile",
        "_bfd_peers",
        "_watch_argv",
        "step_bfd",
        "_frr_conf_has",
        "_start_watch",
        "_stop_watch",
        "_failover_batch",
        "bfd_watch",
    }
)
"""Top-level definitions of overlay_node.py that boot_script() leaves out (those overlay_node_boot.py defines are
replaced by its stand-ins)."""


def _defined(stmt: ast.stmt) -> str | None:
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return stmt.name
    if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        if len(targets) == 1 and isinstance(targets[0], ast.Name):
            return targets[0].id
    return None


def _compact(tree: ast.Module, first_line: str) -> str:
    """The module without what Python does not run (comments, the strings that stand alone as statements:
    docstrings, also under constants; type annotations of functions and of local variables) and with one space per
    indentation level: the same program (the code's AST, annotations apart), about a quarter smaller compressed."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = [
                s
                for s in node.body
                if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant) and isinstance(s.value.value, str))
            ]
            node.body = body or [ast.Pass()]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs, *filter(None, (args.vararg, args.kwarg))]:
                arg.annotation = None
            node.returns = None
    tree = _Unannotate().visit(tree)
    # ast.unparse writes every string on one line, so each leading run of spaces is indentation (4 per level).
    lines = ast.unparse(tree).splitlines()
    body = "\n".join(" " * ((len(line) - len(line.lstrip(" "))) // 4) + line.lstrip(" ") for line in lines)
    return first_line + "\n" + body + "\n"


@functools.cache
def node_script() -> str:
    """The node script as a push installs it: cloudinit/overlay_node.py, compacted (_compact)."""
    source = _SCRIPT_SOURCE.read_text(encoding="utf-8")
    return _compact(ast.parse(source), source.splitlines()[0])


@functools.cache
def boot_script() -> str:
    """The node script as user-data carries it: node_script() without the PUSH_ONLY definitions, and with the
    stand-ins of overlay_node_boot.py (refusals, and no IPsec step) in place of those it defines.

    A VM runs it only before the program's first push, on its bootstrap config; that push installs node_script().
    What it leaves out (about a quarter of the compressed script) is what keeps the payload under AWS's 16 KiB
    user-data limit (tests/test_limits.py, with the most containers a router may run)."""
    source = _SCRIPT_SOURCE.read_text(encoding="utf-8")
    tree = ast.parse(source)
    boot = ast.parse(_BOOT_SOURCE.read_text(encoding="utf-8")).body
    stand_ins = [s for s in boot if isinstance(s, (ast.FunctionDef, ast.ClassDef))]
    constants = [s for s in boot if isinstance(s, (ast.Assign, ast.AnnAssign))]
    missing = sorted(s.name for s in stand_ins if s.name not in PUSH_ONLY)
    defined = {_defined(s) for s in tree.body}
    if missing or not defined >= PUSH_ONLY:
        raise ValueError(
            f"boot script: stand-ins {missing} are not in PUSH_ONLY, or {sorted(PUSH_ONLY - defined)} are not in overlay_node.py"
        )
    body: list[ast.stmt] = []
    for stmt in tree.body:
        name = _defined(stmt)
        if name in PUSH_ONLY:
            body += [s for s in stand_ins if _defined(s) == name]
        else:
            body.append(stmt)
    # The stand-ins' own constants (their messages) go before the first function, so every stand-in sees them.
    first_def = next(i for i, s in enumerate(body) if isinstance(s, (ast.FunctionDef, ast.ClassDef)))
    body[first_def:first_def] = constants
    return _compact(ast.Module(body=body, type_ignores=[]), source.splitlines()[0])


def script_sha256(script: str) -> str:
    return hashlib.sha256(script.encode("utf-8")).hexdigest()


@functools.cache
def node_script_sha256() -> str:
    """The SHA-256 of node_script(): the pin user-data writes (SCRIPT_PIN), and the install's trigger."""
    return script_sha256(node_script())


@functools.cache
def packed_node_script() -> str:
    """node_script() as `overlay-node install-script` reads it on stdin: gzip, then base64 (a remote command's
    stdin is text). Under half the script's size: the stdin travels once per node and stays in the stack's state,
    as one of the command's outputs."""
    return _gz_b64(node_script())


class _Unannotate(ast.NodeTransformer):
    """`x: T = v` -> `x = v` and a bare `x: T` -> `pass`, outside class bodies (where a dataclass would read them)."""

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.ClassDef:
        node.body = [s if isinstance(s, ast.AnnAssign) else self.visit(s) for s in node.body]
        return node

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.stmt:
        if node.value is None:
            return ast.copy_location(ast.Pass(), node)
        return ast.copy_location(ast.Assign(targets=[node.target], value=node.value, lineno=node.lineno), node)


def unit_text(kind: str) -> str:
    # A router's IKE daemon (encryption ipsec) has loaded the installed connections before the unit looks at them.
    after = "network-online.target docker.service strongswan.service" if kind == "router" else "network-online.target"
    wants = "network-online.target docker.service" if kind == "router" else "network-online.target"
    return (
        "[Unit]\n"
        "Description=multicloud-overlay node: tunnels, bridge, overlay addresses, containers\n"
        f"Wants={wants}\n"
        f"After={after}\n"
        "\n"
        "[Service]\n"
        "Type=oneshot\n"
        "RemainAfterExit=yes\n"
        f"ExecStart={shlex.join(APPLY_COMMAND)}\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


# Docker must not manage the overlay: the node script wires containers to br-overlay itself, and Docker's
# own bridge and iptables rules are not needed on a router.
DOCKER_DAEMON_CONFIG: Final = {"bridge": "none", "iptables": False, "ip6tables": False}


def _gz_b64(text: str) -> str:
    return base64.b64encode(gzip.compress(text.encode(), mtime=0)).decode()


@dataclass(frozen=True)
class SshHostKey:
    """The node's SSH host key, generated by the program so that in-place pushes can pin it (no blind trust)."""

    private_openssh: str
    public_openssh: str


def sudoers_text() -> str:
    """The login user's sudo rights: the pushes, the pinned node script's install and the check, nothing else
    (sudoers matches the arguments too)."""
    pushes = ", ".join(shlex.join(phase_command(p)) for p in (*PHASES, None))
    return f"{LOGIN_USER} ALL=(root) NOPASSWD: {pushes}, {shlex.join(INSTALL_SCRIPT_COMMAND)}, {shlex.join(CHECK_COMMAND)} *\n"


def install_packages_command(kind: str) -> list[str]:
    packages = " ".join(PACKAGES[kind])
    script = (
        f"for try in $(seq {PACKAGE_TRIES}); do "
        f"apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install {' '.join(APT_INSTALL_OPTIONS)} {packages} && exit 0; "
        f'echo "multicloud-overlay: package install failed (try $try of {PACKAGE_TRIES}), retrying in {PACKAGE_RETRY_SECONDS} s" >&2; '
        f"sleep {PACKAGE_RETRY_SECONDS}; done; exit 1"
    )
    return ["sh", "-c", script]


def render_user_data(
    doc: Mapping[str, Any],
    host_key: SshHostKey | None = None,
    login_keys: Sequence[str] = (),
    extra_files: Mapping[str, str] | None = None,
) -> str:
    """The `#cloud-config` user-data of one node, from the node config it boots with (plan.bootstrap_config).

    `login_keys`: OpenSSH public keys of the login user (the operator's and the stack's deploy key).
    `extra_files`: path -> content of platform files the image needs before its agents start (mode 0644).
    """
    kind = doc["kind"]
    files: list[dict[str, Any]] = [
        {"path": NODE_SCRIPT, "permissions": "0755", "encoding": "gz+b64", "content": _gz_b64(boot_script())},
        {"path": SCRIPT_PIN, "permissions": "0644", "content": node_script_sha256() + "\n"},
        {
            "path": NODE_CONFIG,
            "permissions": "0600",  # once pushed, the config carries the router's tunnel keys
            "encoding": "gz+b64",
            "content": _gz_b64(json.dumps(doc, indent=1, sort_keys=True) + "\n"),
        },
        {"path": UNIT_PATH, "permissions": "0644", "content": unit_text(kind)},
        {"path": SUDOERS_PATH, "permissions": "0440", "content": sudoers_text()},
    ]
    if kind == "router":
        files.append({"path": DOCKER_DAEMON, "permissions": "0644", "content": json.dumps(DOCKER_DAEMON_CONFIG) + "\n"})
    if host_key is not None:
        # The pinned host key lives outside /etc/ssh/ssh_host_*, where guest agents (GCP's set_host_keys, ...) and
        # packages regenerate keys at first boot, and sshd is told to offer only it: when any HostKey is given, sshd
        # uses exactly those (sshd_config(5)), and Debian's and Ubuntu's sshd_config include sshd_config.d first.
        files += [
            {"path": HOST_KEY_PATH, "permissions": "0600", "content": host_key.private_openssh},
            {"path": f"{HOST_KEY_PATH}.pub", "permissions": "0644", "content": host_key.public_openssh.strip() + "\n"},
            {"path": SSHD_DROP_IN, "permissions": "0644", "content": f"HostKey {HOST_KEY_PATH}\n"},
        ]
    files += [{"path": path, "permissions": "0644", "content": content} for path, content in sorted((extra_files or {}).items())]
    # Group adm reads the logs a debugging operator needs and nothing else: the journal ("members of the groups
    # systemd-journal, adm, and wheel can read all journal files", journalctl(1),
    # https://manpages.ubuntu.com/manpages/noble/man1/journalctl.1.html) and /var/log/cloud-init-output.log (root:adm 0640).
    login: dict[str, Any] = {
        "name": LOGIN_USER,
        "gecos": "multicloud-overlay",
        "shell": "/bin/bash",
        "lock_passwd": True,
        "groups": ["adm"],
    }
    if login_keys:
        login["ssh_authorized_keys"] = [k.strip() for k in login_keys]
    body: dict[str, Any] = {
        # No `default` entry: the image's default user (ubuntu, or root's key on some platforms) gets no key.
        "users": [login],
        "write_files": files,
        "runcmd": [
            install_packages_command(kind),
            # The package starts FRR's daemons; they run only on a router that has a standby hub (step_bfd starts them).
            *([["systemctl", "disable", "--now", "frr.service"]] if kind == "router" else []),
            # sshd may have started before write_files (Debian starts it at boot): make it offer the pinned key.
            ["systemctl", "try-reload-or-restart", "ssh.service"],
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", "--now", UNIT_NAME],
        ],
    }
    return "#cloud-config\n" + yaml.safe_dump(body, sort_keys=False, width=1_000_000)


def install_script_command() -> str:
    """Remote command that installs the whole node script (packed_node_script(), on stdin) in place of the boot script:
    before a node's first push, and again when the script changes (a node keeps its own if its pin differs)."""
    return f"sudo -n {shlex.join(INSTALL_SCRIPT_COMMAND)}"


def push_command(phase: str | None = None) -> str:
    """Remote command that installs a new node config from stdin and converges the node in place.

    `overlay-node push` waits for cloud-init, validates the config (a refused one is never installed, the node
    keeps its previous one), installs it atomically and applies it: the same path a reboot takes afterwards.
    With a phase, it takes that make-before-break step towards the config and installs nothing.
    """
    return f"sudo -n {shlex.join(phase_command(phase))}"


def check_command(targets: list[str], fail_on_unreachable: bool = True) -> str:
    """Remote command: ping every overlay address from the node and print the result as JSON. It exits 1 when an
    address stays unreachable; with `fail_on_unreachable` False that exit counts as success (the JSON says which
    failed), while any other failure (sudo refused, the script missing: 2 and up, or no JSON at all) still fails."""
    ping = f"sudo -n {shlex.join(CHECK_COMMAND)} " + " ".join(shlex.quote(t) for t in targets)
    return ping if fail_on_unreachable else f'{ping}; rc=$?; [ "$rc" -le 1 ]'


@dataclass(frozen=True)
class StaticNic:
    """One NIC of a VM whose platform gives addresses through cloud-init metadata (vSphere)."""

    name: str
    """Name the NIC gets in the guest (e.g. wan0, lan0)."""
    mac: str
    """MAC the hypervisor gives the NIC (set statically on the VM so the guest can match it)."""
    address: str
    """IPv4 address/prefix."""
    gateway: str | None = None
    dns: tuple[str, ...] = ()


def render_vsphere_metadata(node_name: str, instance_id: str, nics: list[StaticNic]) -> str:
    """guestinfo.metadata for the VMware datasource: instance-id, hostname and static addresses per NIC.

    cloud-init re-runs per-instance modules only when instance-id changes; keep it stable for a VM's life.
    """
    ethernets: dict[str, Any] = {}
    for nic in nics:
        entry: dict[str, Any] = {"match": {"macaddress": nic.mac}, "set-name": nic.name, "addresses": [nic.address]}
        if nic.gateway:
            entry["routes"] = [{"to": "default", "via": nic.gateway}]
        if nic.dns:
            entry["nameservers"] = {"addresses": list(nic.dns)}
        ethernets[nic.name] = entry
    meta = {"instance-id": instance_id, "local-hostname": node_name, "network": {"version": 2, "ethernets": ethernets}}
    return yaml.safe_dump(meta, sort_keys=False)


@dataclass(frozen=True)
class PayloadFile:
    path: str
    content: bytes
    mode: int


def read_payload(user_data: str) -> tuple[list[PayloadFile], list[list[str]]]:
    """Files (decoded as cloud-init would write them) and runcmd commands of a payload."""
    if not user_data.startswith("#cloud-config\n"):
        raise ValueError("not a #cloud-config payload")
    body = cast(dict[str, Any], yaml.safe_load(user_data))
    files: list[PayloadFile] = []
    for f in body.get("write_files", []):
        content = f.get("content", "")
        encoding = f.get("encoding", "text/plain")
        if encoding == "gz+b64":
            data = gzip.decompress(base64.b64decode(content))
        elif encoding in ("b64", "base64"):
            data = base64.b64decode(content)
        else:
            data = content.encode()
        files.append(PayloadFile(f["path"], data, int(f.get("permissions", "0644"), 8)))
    return files, [list(map(str, c)) for c in body.get("runcmd", [])]


def payload_node_config(user_data: str) -> dict[str, Any]:
    """The node config a payload carries."""
    files, _ = read_payload(user_data)
    for f in files:
        if f.path == NODE_CONFIG:
            return cast(dict[str, Any], json.loads(f.content))
    raise ValueError(f"payload has no {NODE_CONFIG}")


def unit_exec_start(user_data: str) -> list[str]:
    """The command the payload's systemd unit runs at boot (what the lab runs in a node's namespace)."""
    files, _ = read_payload(user_data)
    for f in files:
        if f.path == UNIT_PATH:
            for line in f.content.decode().splitlines():
                if line.startswith("ExecStart="):
                    return shlex.split(line.removeprefix("ExecStart="))
    raise ValueError(f"payload has no {UNIT_PATH} with an ExecStart line")
