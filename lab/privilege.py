"""Root for the commands that need it: a command started as a user runs itself again under sudo before it does
anything, so the README's commands work as written both as root (where sudo may not be installed) and as a user."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
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


def invoking_user(env: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """(uid, gid) of the user for whom this command runs as root through sudo (become_root), else None."""
    env = os.environ if env is None else env
    if os.geteuid() != 0:
        return None
    try:
        uid, gid = int(env["SUDO_UID"]), int(env["SUDO_GID"])
    except (KeyError, ValueError):
        return None
    return None if uid == 0 else (uid, gid)


def hand_back(paths: Iterable[Path], owner: tuple[int, int], from_uid: int = 0) -> list[Path]:
    """Give what this root run wrote into the user's tree back to the user who started it: each path, and for a
    directory everything under it, when root (from_uid) owns it. Links are changed themselves, never their targets."""
    changed: list[Path] = []
    todo = list(paths)
    while todo:
        path = todo.pop()
        try:
            st = path.lstat()
        except OSError:
            continue
        if st.st_uid == from_uid:
            os.lchown(path, *owner)
            changed.append(path)
        if path.is_dir() and not path.is_symlink():
            todo.extend(path.iterdir())
    return changed
