"""One way to run commands for the whole lab, so that unit tests can replace it with a fake. Standard library only
(lab.probes builds on it inside the throw-away kernel VM too)."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

# The node script runs as on a cloud image: system tools, system python3.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def in_netns(netns: str | None, argv: Sequence[str]) -> list[str]:
    """argv in a named network namespace (/run/netns/NAME: lab VMs, edges, container handles alike), its network
    stack only (unlike `ip netns exec`, no private mount namespace); argv as is when netns is None."""
    return list(argv) if netns is None else ["nsenter", f"--net=/run/netns/{netns}", "--", *argv]


class CommandError(RuntimeError):
    def __init__(self, argv: Sequence[str], proc: subprocess.CompletedProcess[str]) -> None:
        self.argv = list(argv)
        self.proc = proc
        detail = (proc.stderr or proc.stdout or "").strip().splitlines()
        super().__init__(f"{' '.join(argv)}: exit {proc.returncode}: {detail[-1] if detail else 'no output'}")


class Shell:
    """Runs commands and keeps a log of them (the lab's audit trail, one line per command)."""

    def __init__(self, log_path: Path | None = None) -> None:
        self.log_path = log_path
        self._lock = threading.Lock()

    def _log(self, line: str) -> None:
        if self.log_path is None:
            return
        with self._lock:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with self.log_path.open("a", encoding="utf-8") as f:
                f.write(line + "\n")

    def run(
        self,
        argv: Sequence[str],
        check: bool = True,
        input: str | bytes | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = 120,
    ) -> subprocess.CompletedProcess[str]:
        full_env = None
        if env is not None:
            full_env = {**os.environ, "PATH": SYSTEM_PATH, **env}
        self._log(" ".join(argv))
        data = input.decode() if isinstance(input, bytes) else input
        proc = subprocess.run(list(argv), input=data, capture_output=True, text=True, env=full_env, timeout=timeout)
        if check and proc.returncode != 0:
            raise CommandError(argv, proc)
        return proc

    def ok(self, argv: Sequence[str], timeout: float | None = 60) -> bool:
        return self.run(argv, check=False, timeout=timeout).returncode == 0

    def ns(self, netns: str, argv: Sequence[str], **kw: object) -> subprocess.CompletedProcess[str]:
        """Run in a namespace's network stack only (in_netns)."""
        return self.run(in_netns(netns, argv), **kw)  # type: ignore[arg-type]

    def batch(self, netns: str | None, commands: Sequence[str]) -> None:
        """Many `ip` commands in one process (`ip -batch`), stopping at the first that fails."""
        if not commands:
            return
        argv = ["ip"] + (["-n", netns] if netns else []) + ["-batch", "-"]
        self.run(argv, input="\n".join(commands) + "\n")
