"""How the user ran the lab, so that every hint the lab prints can be run as printed (`.venv/bin/python -m lab
down` when the lab was started that way, not a bare `python -m lab down` that may pick another interpreter)."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def interpreter(executable: str | None = None, cwd: str | None = None) -> str:
    """The interpreter as the user can type it from `cwd`: relative when it lies below `cwd` (`.venv/bin/python`),
    its bare name when PATH finds that very file (`python3`), else its absolute path."""
    exe = executable if executable is not None else (sys.executable or "python3")
    here = os.path.abspath(cwd if cwd is not None else os.getcwd())
    absolute = os.path.abspath(exe)
    rel = os.path.relpath(absolute, here)
    if not rel.startswith(os.pardir + os.sep) and rel != os.pardir:
        return rel if os.sep in rel else f".{os.sep}{rel}"
    name = os.path.basename(absolute)
    found = shutil.which(name)
    if found is not None and os.path.abspath(found) == absolute:
        return name
    return absolute


def lab_command(*args: str, sudo: bool = False, executable: str | None = None, cwd: str | None = None, repo: Path = REPO) -> str:
    """`<interpreter> -m lab ARGS` as the user can run it from `cwd` (prefixed by `cd REPO &&` elsewhere: `-m lab`
    is found from the repository only); `sudo` puts sudo in front of the interpreter."""
    here = os.path.abspath(cwd if cwd is not None else os.getcwd())
    base = here if here == str(repo) else str(repo)
    command = shlex.join([*(["sudo"] if sudo else []), interpreter(executable, base), "-m", "lab", *args])
    return command if base == here else f"cd {shlex.quote(base)} && {command}"
