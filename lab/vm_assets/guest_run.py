"""Runs inside the lab's kernel VM (stdlib only): the requested command, then its exit code and results on the console.

The host (lab/qemu.py) reads the console: lines between the markers below are protocol, everything else is the
command's output. Results travel as a base64 gzip tarball, 76 characters a line.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import tarfile
import time

EXIT_MARK = "@@VM-EXIT"
RESULTS_BEGIN = "@@VM-RESULTS-BEGIN@@"
RESULTS_END = "@@VM-RESULTS-END@@"


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def send_results(folder: str) -> None:
    if not os.path.isdir(folder):
        emit(f"vm: no results folder {folder}")
        return
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(folder, arcname=".")
    data = base64.b64encode(buf.getvalue()).decode()
    emit(RESULTS_BEGIN)
    for i in range(0, len(data), 76):
        sys.stdout.write(data[i : i + 76] + "\n")
    emit(RESULTS_END)


def main(spec_path: str) -> int:
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    env = {"HOME": "/root", "TERM": "dumb", "LANG": "C.UTF-8", **spec["env"]}
    os.makedirs("/root", exist_ok=True)
    if spec.get("results_dir"):
        os.makedirs(spec["results_dir"], exist_ok=True)
    started = time.monotonic()
    try:
        code = subprocess.call(spec["argv"], cwd=spec["cwd"], env=env)
    except OSError as e:
        emit(f"vm: cannot run {spec['argv'][0]}: {e.strerror}")
        code = 127
    emit(f"{EXIT_MARK} {code} {time.monotonic() - started:.1f}@@")
    if spec.get("results_dir"):
        send_results(spec["results_dir"])
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
