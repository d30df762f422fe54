"""Render a node's cloud-init payload (pure).

The payload is the one artifact both runtimes use: a cloud VM boots with it, and the lab writes its files under
a per-node root and runs its unit's command in the node's namespace. `read_payload` is the inverse the lab and
the tests use, so what they check is exactly what a VM would get.
"""

from __future__ import annotations

import base64
import gzip
import json
import shlex
from collections.abc import Mapping
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
# Cloud user-data limits are as low as 16 KiB (AWS): the node script travels gzip-compressed.
USER_DATA_LIMIT: Final = 16 * 1024

_SCRIPT_SOURCE: Final = Path(__file__).with_name("overlay_node.py")


def node_script() -> str:
    return _SCRIPT_SOURCE.read_text(encoding="utf-8")


def unit_text(kind: str) -> str:
    after = "network-online.target docker.service" if kind == "router" else "network-online.target"
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


def render_user_data(doc: Mapping[str, Any]) -> str:
    """The `#cloud-config` user-data of one node, from its node config (see plan.node_config)."""
    kind = doc["kind"]
    packages = ["iproute2", "iptables"] + (["docker.io"] if kind == "router" else [])
    files: list[dict[str, Any]] = [
        {"path": NODE_SCRIPT, "permissions": "0755", "encoding": "gz+b64", "content": _gz_b64(node_script())},
        {"path": NODE_CONFIG, "permissions": "0644", "content": json.dumps(doc, indent=1, sort_keys=True) + "\n"},
        {"path": UNIT_PATH, "permissions": "0644", "content": unit_text(kind)},
    ]
    if kind == "router":
        files.append({"path": DOCKER_DAEMON, "permissions": "0644", "content": json.dumps(DOCKER_DAEMON_CONFIG) + "\n"})
    body = {
        "package_update": True,
        "packages": packages,
        "write_files": files,
        "runcmd": [
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", "--now", UNIT_NAME],
        ],
    }
    return "#cloud-config\n" + yaml.safe_dump(body, sort_keys=False, width=1_000_000)


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
