"""What the boot script has in place of the node script's push-only definitions (render.boot_script).

User-data carries the node script without the definitions in render.PUSH_ONLY: a VM applies only its bootstrap
config before the program's first push (its own site: no peer, no key, no make-before-break step), and that push
installs the whole script first (`overlay-node install-script`). These stand-ins keep the boot script whole: what
it cannot do, it refuses, and says how the node gets the code that can.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from overlay_node import EXIT_REJECTED, Runner

FULL_SCRIPT = "this node runs its boot script, which applies only its bootstrap config; the program installs the whole node script before its first push (overlay-node install-script)"


def _validate_ipsec(doc: dict[str, Any], tunnels: list[dict[str, Any]]) -> list[str]:
    return [f"ipsec: {FULL_SCRIPT}"] if "ipsec" in doc or any("psk" in t for t in tunnels) else []


def step_ipsec(r: Runner, doc: dict[str, Any], state_dir: str, wait: float = 0) -> None:
    """Nothing to do: validation refuses a config with IPsec, and before the first push no IKE daemon was started."""


def push(args: argparse.Namespace, log: Callable[[str], None]) -> int:
    print(f"overlay-node: push refused, nothing changed: {FULL_SCRIPT}", file=sys.stderr)
    return EXIT_REJECTED


def check(targets: Sequence[str], as_json: bool) -> int:
    print(f"overlay-node: check refused: {FULL_SCRIPT}", file=sys.stderr)
    return EXIT_REJECTED


def _validate_failover(doc: dict[str, Any], tunnels: list[dict[str, Any]]) -> list[str]:
    backups = any(isinstance(e, dict) and "backup" in e for e in doc.get("fdb", []) if isinstance(doc.get("fdb"), list))
    return [f"bfd: {FULL_SCRIPT}"] if "bfd" in doc or backups or any("standby_for" in t for t in tunnels) else []


def step_bfd(r: Runner, doc: dict[str, Any], state_dir: str, config: str = "") -> set[str]:
    """Nothing to do: validation refuses a config with BFD, and before the first push no daemon was started."""
    return set()


def bfd_watch(config: str, state_dir: str, sock: str, log: Callable[[str], None]) -> int:
    print(f"overlay-node: bfd-watch refused: {FULL_SCRIPT}", file=sys.stderr)
    return EXIT_REJECTED


def failover_view(doc: dict[str, Any], down: set[str] | frozenset[str]) -> dict[str, Any]:
    """The config itself: validation refuses backups and stand-in tunnels in the boot script."""
    return doc
