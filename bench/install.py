"""What the deploy setup costs: `make deploy-setup` (a venv with requirements.txt: the six providers' SDKs and
pulumi-command), built from scratch in a temporary folder, timed, and its size measured; then the program's imports
timed in that venv.

    .venv/bin/python -m bench.install [--keep]

No root. It downloads the pinned packages from the package index that pip is configured with (or its cache: a
second run is faster, the report says whether pip's cache was used). Writes bench/results/install.json.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.labrun import ROOT, machine, stamp, write_json

NAME = "install"


def tree_bytes(path: Path) -> int:
    """Bytes the files under path take (apparent size, links not followed)."""
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def timed(argv: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    return time.monotonic() - started, proc


def pip_cache_used(output: str) -> bool:
    return "Using cached" in output


def measure(work: Path, python: str) -> dict[str, Any]:
    """The Makefile's deploy-setup recipe, step by step, in `work` (a copy of requirements.txt only)."""
    shutil.copy(ROOT / "requirements.txt", work / "requirements.txt")
    venv_s, venv = timed([python, "-m", "venv", ".venv"], work)
    if venv.returncode != 0:
        return {"ok": False, "error": venv.stderr[-500:]}
    pip_s, pip = timed([str(work / ".venv/bin/pip"), "install", "-r", "requirements.txt"], work)
    if pip.returncode != 0:
        return {"ok": False, "error": (pip.stderr or pip.stdout)[-1000:]}
    imports = "import pulumi, pulumi_aws, pulumi_azure_native, pulumi_gcp, pulumi_oci, pulumi_alicloud, pulumi_vsphere, pulumi_command"
    import_s, imported = timed([str(work / ".venv/bin/python"), "-c", imports], work)
    return {
        "ok": imported.returncode == 0,
        "venv_s": round(venv_s, 1),
        "pip_install_s": round(pip_s, 1),
        "total_s": round(venv_s + pip_s, 1),
        "venv_bytes": tree_bytes(work / ".venv"),
        "pip_cache_used": pip_cache_used(pip.stdout),
        "import_all_sdks_s": round(import_s, 1),
        **({} if imported.returncode == 0 else {"error": imported.stderr[-500:]}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--keep", action="store_true", help="keep the built venv (its folder is printed)")
    parser.add_argument("--python", default="python3", help="the interpreter the README's command uses (default python3)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="mco-install-"))
    print(f"install: python3 -m venv .venv && .venv/bin/pip install -r requirements.txt in {work} ...", flush=True)
    try:
        result = measure(work, args.python)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    doc = {"benchmark": NAME, "date": stamp(), "machine": machine(), "python": args.python, **result}
    path = write_json(NAME, doc)
    if not result["ok"]:
        print(f"install failed: {result.get('error')}", file=sys.stderr)
        return 1
    print(
        f"deploy venv: {result['venv_bytes'] / 1e9:.2f} GB in {result['total_s']:.0f} s "
        f"(venv {result['venv_s']} s, pip {result['pip_install_s']} s{', from pip cache' if result['pip_cache_used'] else ''}); "
        f"importing the SDKs takes {result['import_all_sdks_s']} s; wrote {path}" + (f"; kept {work}" if args.keep else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
