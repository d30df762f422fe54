"""The CI pipeline files: the GitHub workflow passes actionlint, and every `python -m ops` call in the workflow and
the Jenkinsfile is one the ops command line accepts; the Jenkinsfile has its parallel stages, credentials,
reports and a destroy that always runs."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ops.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))
WORKFLOW = ROOT / ".github" / "workflows" / "overlay.yml"
JENKINSFILE = ROOT / "Jenkinsfile"
# What the shell fills in before ops sees the line.
SHELL_VALUES = {'"$STACK"': "dev", '"$STACKS"': "dev,aws-gcp", '"$JOBS"': "2", "$REMOVE_FLAG": "--remove", "${runner_ip}": "192.0.2.7"}


def actionlint() -> str:
    """The actionlint binary: the one requirements-dev.txt installs into this virtualenv, else one on PATH."""
    beside = Path(sys.executable).parent / "actionlint"
    found = str(beside) if beside.is_file() else shutil.which("actionlint")
    if found is None:
        pytest.skip(
            "actionlint is not installed (make setup installs it from requirements-dev.txt)"
        )
    return found


def run_actionlint(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([actionlint(), "-no-color", *map(str, files)], capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_the_workflows_pass_actionlint() -> None:
    assert WORKFLOWS == [WORKFLOW]
    result = run_actionlint(*WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / ".github" / "workflows" / "overlay.yml"
    broken.parent.mkdir(parents=True)
    text = WORKFLOW.read_text()
    assert "!inputs.keep" in text
    broken.write_text(text.replace("!inputs.keep", "!inputs.kep"))
    result = run_actionlint(broken)
    assert result.returncode != 0 and "kep" in result.stdout, result.stdout + result.stderr


def ops_invocations(text: str) -> list[list[str]]:
    """The arguments of every `python -m ops` command in a pipeline file, as the shell would pass them."""
    calls: list[list[str]] = []
    for match in re.finditer(r"\.venv/bin/python -m ops\b([^\n'\\]*)", text):
        line = match.group(1)
        for shell, value in SHELL_VALUES.items():
            line = line.replace(shell, value)
        calls.append(shlex.split(line))
    return calls


def parses(argv: list[str]) -> bool:
    try:
        build_parser().parse_args(argv)
    except SystemExit:
        return False
    return True


@pytest.mark.parametrize("path", [WORKFLOW, JENKINSFILE], ids=lambda p: p.name)
def test_every_ops_call_in_the_pipeline_files_is_one_ops_accepts(path: Path) -> None:
    calls = ops_invocations(path.read_text())
    assert {argv[0] for argv in calls} == {"deploy", "test", "destroy"}
    for argv in calls:
        assert parses(argv), f"{path.name}: python -m ops {shlex.join(argv)}"
        assert "--reports" in argv and argv[argv.index("--reports") + 1] == "build/reports"


def test_the_ops_call_check_refuses_what_ops_does_not_know() -> None:
    [argv] = ops_invocations('run: .venv/bin/python -m ops destroy --stacks "$STACK" --kep\n')
    assert argv == ["destroy", "--stacks", "dev", "--kep"]
    assert not parses(argv)
    assert not parses(["teardown", "--stacks", "dev"])


def workflow() -> dict[str, Any]:
    doc = yaml.safe_load(WORKFLOW.read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as true
    return doc


def steps_running(job: dict[str, Any], needle: str) -> list[dict[str, Any]]:
    return [step for step in job["steps"] if needle in str(step.get("run", "")) or needle in str(step.get("uses", ""))]


def test_the_workflow_runs_the_readme_test_command_and_a_stack_matrix() -> None:
    doc = workflow()
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"^make [a-z-]+$", (ROOT / ".ci" / "run").read_text(), re.M)
    assert command is not None and f"\n{command.group(0)}\n" in readme
    assert [step["run"] for step in steps_running(doc["jobs"]["test"], "make")] == [command.group(0)]
    inputs = doc["on"]["workflow_dispatch"]["inputs"]
    assert {"stacks", "keep"} <= set(inputs)
    overlay = doc["jobs"]["overlay"]
    assert overlay["strategy"]["matrix"]["stack"] == "${{ fromJSON(needs.stacks.outputs.stacks) }}"
    assert overlay["strategy"]["fail-fast"] is False
    assert steps_running(overlay, "pulumi/actions@")
    [destroy] = steps_running(overlay, "python -m ops destroy")
    assert "always()" in destroy["if"]
    [upload] = steps_running(overlay, "actions/upload-artifact@")
    assert upload["if"] == "always()" and upload["with"]["path"] == "build/"
    for name in (
        "PULUMI_CONFIG_PASSPHRASE",
        "AWS_SECRET_ACCESS_KEY",
        "ARM_CLIENT_SECRET",
        "GOOGLE_CREDENTIALS",
        "ALICLOUD_SECRET_KEY",
        "VSPHERE_PASSWORD",
    ):
        assert str(overlay["env"][name]).startswith("${{ secrets."), name


def test_the_jenkinsfile_runs_stacks_in_parallel_and_always_destroys() -> None:
    text = JENKINSFILE.read_text()
    assert re.search(r"^pipeline \{", text, re.M)
    assert "parallel branches" in text
    for credential in ("pulumi-config-passphrase", "pulumi-access-token", "aws-", "azure-", "gcp-", "oci-", "alicloud-", "vsphere-"):
        assert f"credentials('{credential}" in text or f"credentialsId: '{credential}" in text, credential
    assert "withCredentials(" in text
    post = text[text.index("    post {") :]
    always = post[post.index("always {") :]
    assert "python -m ops destroy" in always and "catchError(" in always
    assert "junit testResults: 'build/reports/*.xml'" in always
    assert "archiveArtifacts artifacts: 'build/**'" in always
    assert text.count("{") == text.count("}")
