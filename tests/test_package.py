"""The building blocks install with pip into a fresh virtualenv under one name that shadows nothing, and the
README's "Using the building blocks alone" example runs from outside the repository against the installed copy.

The fresh virtualenv reaches the pinned dependencies of .venv through a .pth file, and pip installs with
`--no-index`: it must find every declared dependency of the `azure` extra already satisfied (so the declared
ranges accept the tested pins) and cannot fetch anything."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.harness import ROOT

# Runs the README example under Pulumi mocks and prints what it registered and where the package came from.
DRIVER = r'''
import json, sys
from pathlib import Path
import pulumi
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

registered = []

class Mocks(pulumi.runtime.Mocks):
    def new_resource(self, args):
        registered.append(args.typ)
        outputs = dict(args.inputs)
        outputs.setdefault("name", args.name)
        if args.typ == "azure-native:network:PublicIPAddress":
            outputs["ipAddress"] = "203.0.113.9"
        return f"{args.name}-id", outputs

    def call(self, args):
        return {}

pulumi.runtime.set_mocks(Mocks(), project="reuse", stack="test", preview=False)
code = Path(sys.argv[1]).read_text()
_sync_await(run_pulumi_func(lambda: exec(compile(code, "readme-example", "exec"), {"__name__": "__main__"})))
import multicloud_overlay
print(json.dumps({"package": multicloud_overlay.__file__, "registered": registered}))
'''

# A hang guard, not a speed check: `make test` runs these at the lowest CPU priority beside the boot test's VMs,
# where creating a venv (ensurepip) once took over 120 s.
SLOW = 900



def readme_reuse_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Using the building blocks alone", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README: no python example under 'Using the building blocks alone'"
    return match.group(1)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built from a copy of what the package consists of (setuptools writes build/ and *.egg-info beside the
    sources), the links resolved as pip resolves them when it copies a git checkout."""
    out = tmp_path_factory.mktemp("wheel")
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "multicloud_overlay", source / "multicloud_overlay", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out), str(source)],
        check=True,
        timeout=SLOW,
    )
    (found,) = out.glob("multicloud_overlay-*.whl")
    return found


def test_the_wheel_holds_one_top_level_name_and_every_building_block(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"multicloud_overlay"}
    for module in ("overlay/plan.py", "cloudinit/render.py", "cloudinit/overlay_node.py", "components/site.py", "components/clouds/azure.py"):
        assert f"multicloud_overlay/{module}" in names
    assert "multicloud_overlay/py.typed" in names


def test_pip_installs_the_blocks_into_a_fresh_venv_and_the_readme_example_runs_outside_the_repo(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=SLOW)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], check=True, capture_output=True, text=True).stdout.strip())
    (site / "pinned-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-index", f"multicloud-overlay[azure] @ {wheel.as_uri()}"],
        capture_output=True,
        text=True,
        timeout=SLOW,
    )
    assert install.returncode == 0, install.stdout + install.stderr

    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519.pub").write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGV4YW1wbGVleGFtcGxlZXhhbXBsZWV4YW1wbGU user@example\n")
    work = tmp_path / "elsewhere"
    work.mkdir()
    (work / "example.py").write_text(readme_reuse_example())
    (work / "driver.py").write_text(DRIVER)
    env = {"HOME": str(home), "PATH": f"{venv / 'bin'}:/usr/bin:/bin", "PULUMI_SKIP_UPDATE_CHECK": "1"}
    proc = subprocess.run([str(python), "driver.py", "example.py"], cwd=work, env=env, capture_output=True, text=True, timeout=SLOW)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(result["package"]).is_relative_to(site), f"imported {result['package']}, not the installed copy"
    assert not Path(result["package"]).resolve().is_relative_to(ROOT)
    registered = result["registered"]
    assert registered.count("azure-native:network:NetworkInterface") == 2
    assert registered.count("azure-native:compute:VirtualMachine") == 1
    assert registered.count("azure-native:network:NetworkSecurityGroup") == 1


def test_pip_refuses_the_blocks_when_a_declared_dependency_is_missing(wheel: Path, tmp_path: Path) -> None:
    """The counterpart: without the pinned set on the path, --no-index cannot satisfy the declared dependencies,
    so the install above proves they resolve, not that pip skipped them."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=SLOW)
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-index", f"multicloud-overlay[azure] @ {wheel.as_uri()}"],
        capture_output=True,
        text=True,
        timeout=SLOW,
    )
    assert proc.returncode != 0
    assert "pulumi" in (proc.stdout + proc.stderr).lower()
