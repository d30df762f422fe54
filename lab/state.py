"""What the lab is: the stack and overrides it was built from, and every name it made (kept in a state dir so
that check, swap, status and down work from a new process, and down works after an interrupted up)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from lab.invocation import lab_command
from multicloud_overlay.components.stack_file import read_stack_file
from multicloud_overlay.overlay.config import parse_config
from multicloud_overlay.overlay.encapsulation import PAIR_KEY_BYTES
from multicloud_overlay.overlay.plan import Plan, build_plan, pair_key_name

REPO: Final = Path(__file__).resolve().parent.parent
DEFAULT_STATE_DIR: Final = Path("/run/multicloud-overlay-lab")
STATE_DIR_VARIABLE: Final = "MCO_LAB_STATE_DIR"
STATE_DIR: Final = Path(os.environ.get(STATE_DIR_VARIABLE) or DEFAULT_STATE_DIR)
"""Everything a lab keeps (its record, each node's disk, the routers' Docker data and sockets); the node script
runs from each node's disk in there, so it must be on a mount that allows executing (MCO_LAB_STATE_DIR moves it)."""
# The payload's container image name is a parameter the lab sets: an image imported from busybox-static.
LAB_IMAGE: Final = "mco-lab/busybox:latest"
CGROUP_PREFIX: Final = "mco-lab-"


class LabError(RuntimeError):
    """A problem the user can fix; printed without a traceback."""


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise LabError(
            f"`lab {what}` needs root (network namespaces, Docker, iptables): run it with sudo, e.g. {lab_command(what, sudo=True)}"
        )


def _existing(path: Path) -> Path:
    """`path`, or while it does not exist its nearest existing parent."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def mount_is_noexec(path: Path) -> bool:
    """Whether `path` (or, while it does not exist, its nearest existing parent) is on a noexec mount."""
    return bool(os.statvfs(_existing(path)).f_flag & os.ST_NOEXEC)


def mount_point(path: Path) -> Path:
    """The mount point `path` lies on."""
    probe = _existing(path.absolute())
    while not os.path.ismount(probe) and probe != probe.parent:
        probe = probe.parent
    return probe


def check_state_dir(state_dir: Path) -> None:
    """Refuse, before anything is made, a state dir the lab cannot run from: on a noexec mount (a stock /run can
    be one) the node script, which runs from each node's disk in the state dir, could not start."""
    if mount_is_noexec(state_dir):
        raise LabError(
            f"the lab's state dir {state_dir} is on a noexec mount, and each node's script runs from there. "
            f"Give the lab a directory on a mount that allows executing, e.g. "
            f"`{STATE_DIR_VARIABLE}=/var/lib/multicloud-overlay-lab` in the environment of every lab command "
            f"(up, check, ..., down), or remount: `mount -o remount,exec {mount_point(state_dir)}`"
        )
    if state_dir.is_dir() and any(state_dir.iterdir()) and not state_file(state_dir).exists():
        raise LabError(
            f"the lab's state dir {state_dir} holds files that are not a lab's (no lab.json): `lab down` removes its "
            f"state dir, so give the lab a directory of its own ({STATE_DIR_VARIABLE})"
        )


def is_stack_file(stack: str) -> bool:
    """A stack given as a file path (has a directory part or a YAML suffix) rather than a name."""
    return "/" in stack or stack.endswith((".yaml", ".yml"))


def stack_path(stack: str) -> Path:
    """The stack file: Pulumi.NAME.yaml in the repository root for a name, the file itself for a path."""
    return Path(stack) if is_stack_file(stack) else REPO / f"Pulumi.{stack}.yaml"


def stack_reference(stack: str) -> str:
    """What a lab records as its stack: the name, or the absolute path of a stack file (later verbs run from any
    directory)."""
    return str(Path(stack).resolve()) if is_stack_file(stack) else stack


def load_raw(stack: str, sites: list[str] | None, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The stack's raw config with the lab's overrides (site subset, hub, protocol, topology)."""
    path = stack_path(stack)
    if not path.exists():
        raise LabError(f"no stack file {path} (use --stack NAME for Pulumi.NAME.yaml, or --stack PATH for a stack file elsewhere)")
    raw = read_stack_file(path)
    if sites:
        known = dict(raw.get("sites") or {})
        unknown = [s for s in sites if s not in known]
        if unknown:
            raise LabError(f"--sites: {', '.join(unknown)} not in {path.name} (sites: {', '.join(known)})")
        raw["sites"] = {s: known[s] for s in sites}
        if "hub" not in overrides and raw.get("hub") not in sites:
            raw["hub"] = sites[0]
    raw.update({k: v for k, v in overrides.items() if v is not None})
    filled = fill_account_settings(raw)
    if filled and str(path) not in _TOLD:
        _TOLD.add(str(path))
        print(f"lab: {path.name} leaves {', '.join(filled)} to you (set them before pulumi up); the lab, which reaches no cloud, uses stand-ins", file=sys.stderr)
    return raw


# Settings that name the operator or a cloud account, which an example stack leaves for the user to set
# (Pulumi.aws-gcp.yaml): the lab uses none of them for anything but rendering, so it stands in for them.
LAB_OPERATOR: Final = {
    "adminCidr": "198.51.100.7/32",
    "sshPublicKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILbcSbHKEGQPX0jnjP+yazZw46UhQYbLdiJ8746XQirR lab-operator@example",
}
_TOLD: set[str] = set()  # stack files whose stand-ins this process has already reported
LAB_ACCOUNT: Final = {"gcp": {"project": "lab-project"}, "oci": {"compartmentId": "ocid1.compartment.oc1..aaaaaaaalabstandin"}}


def fill_account_settings(raw: dict[str, Any]) -> list[str]:
    """Fill in the operator and account settings `raw` lacks (in place); the keys filled, as `pulumi config` names them."""
    filled = [key for key in LAB_OPERATOR if not raw.get(key)]
    raw.update({key: LAB_OPERATOR[key] for key in filled})
    sites = raw.get("sites")
    if isinstance(sites, dict):
        for name, site in sites.items():
            if isinstance(site, dict):
                for key, value in LAB_ACCOUNT.get(str(site.get("platform")), {}).items():
                    if not site.get(key):
                        sites[name] = site = {**site, key: value}
                        filled.append(f"sites.{name}.{key}")
    return filled


def lab_plan(raw: Mapping[str, Any]) -> Plan:
    """The plan the clouds would get, with the lab's container image (the one change the lab makes)."""
    cfg = parse_config(raw)
    return build_plan(dataclasses.replace(cfg, container_image=LAB_IMAGE))


@dataclass
class LabState:
    stack: str
    sites: list[str]
    overrides: dict[str, Any]
    containers: str
    """docker or netns"""
    prefix: str
    phase: str = "building"
    """building while up runs, up when complete."""
    namespaces: list[str] = field(default_factory=list)
    container_netns: list[str] = field(default_factory=list)
    routers: list[str] = field(default_factory=list)
    public_ips: dict[str, str] = field(default_factory=dict)
    dockerd: dict[str, int] = field(default_factory=dict)
    """router node -> dockerd pid"""
    created: float = 0.0
    host_sysctls: dict[str, list[str]] = field(default_factory=dict)
    """/proc/sys path -> [value before up, value the lab set]; down restores what is still the lab's value."""
    history: list[dict[str, Any]] = field(default_factory=list)
    key_seed: str = ""
    """Random per lab (hex): the lab's stand-in for the program's per-pair IPsec secrets (see pair_keys)."""

    def raw(self) -> dict[str, Any]:
        return load_raw(self.stack, self.sites or None, self.overrides)

    def plan(self) -> Plan:
        return lab_plan(self.raw())

    def pair_keys(self, plan: Plan) -> dict[str, str]:
        return lab_pair_keys(self.key_seed, plan)


def lab_pair_keys(seed_hex: str, plan: Plan) -> dict[str, str]:
    """One secret per router pair of `plan`, derived from the lab's random seed (stable across swaps).

    On the clouds each pair's secret is a random value the program generates and keeps as a Pulumi secret; the
    lab derives its own so that a swap to a new hub finds keys for the new pairs without storing each one.
    """
    if not plan.encrypted:
        return {}
    if not seed_hex:
        raise LabError(
            f"the lab has no key seed (it was built before encryption was supported): rebuild it with `{lab_command('up', '--force')}`"
        )
    seed = bytes.fromhex(seed_hex)
    return {
        pair_key_name(a, b): hashlib.shake_256(seed + pair_key_name(a, b).encode()).hexdigest(PAIR_KEY_BYTES)
        for a, b in plan.router_pairs()
    }


def state_file(state_dir: Path = STATE_DIR) -> Path:
    return state_dir / "lab.json"


def node_dir(node: str, state_dir: Path = STATE_DIR) -> Path:
    return state_dir / "nodes" / node


def node_root(node: str, state_dir: Path = STATE_DIR) -> Path:
    return node_dir(node, state_dir) / "root"


def docker_host(router: str, state_dir: Path = STATE_DIR) -> str:
    return f"unix://{node_dir(router, state_dir) / 'docker.sock'}"


def save(state: LabState, state_dir: Path = STATE_DIR) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_file(state_dir).with_suffix(".tmp")
    tmp.touch(mode=0o600)  # it carries the key seed
    tmp.write_text(json.dumps(dataclasses.asdict(state), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, state_file(state_dir))


def load(state_dir: Path = STATE_DIR) -> LabState | None:
    try:
        doc = json.loads(state_file(state_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    names = {f.name for f in dataclasses.fields(LabState)}
    return LabState(**{k: v for k, v in doc.items() if k in names})
