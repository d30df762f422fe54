"""Root for the commands that need it: a command started as a user runs itself again under sudo before it does
anything, so the README's commands work as written both as root (where sudo may not be installed) and as a user."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from typing import Final

# What a re-run as root keeps from the user's environment (sudo resets the rest).
PRESERVED: Final = ("MCO_LAB_STATE_DIR", "CI", "NO_COLOR", "TERM")


class NeedsRoot(SystemExit):
    """Not root and no sudo to become it."""


def sudo_argv(sudo: str, executable: str, orig_argv: Sequence[str]) -> list[str]:
    """The command line that runs this very command again as root: same interpreter, same arguments."""
    return [sudo, f"--preserve-env={','.join(PRESERVED)}", executable, *orig_argv[1:]]


def become_root(what: str, why: str) -> None:
    """Return when root; else re-run this process's command under sudo (this call does not return), or refuse."""
    if os.geteuid() == 0:
        return
    sudo = shutil.which("sudo")
    if sudo is None:
        raise NeedsRoot(f"{what} needs root ({why}) and sudo is not installed: run it as root")
    print(f"{what} needs root ({why}): running it again with sudo", file=sys.stderr, flush=True)
    os.execv(sudo, sudo_argv(sudo, sys.executable, sys.orig_argv))
