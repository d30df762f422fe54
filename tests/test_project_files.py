"""Project files agree with the code: Pulumi.yaml declares what config.py reads, with the same defaults; the
README documents every key and its test command is what CI runs."""

from __future__ import annotations

import re

import yaml

from multicloud_overlay.components.clouds.registry import PLATFORMS
from multicloud_overlay.overlay.config import DEFAULTS, MAP_KEYS, REQUIRED_KEYS, SITE_KEYS, TOP_KEYS
from tests.harness import ROOT

PROJECT = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
README = (ROOT / "README.md").read_text()
PULUMI_TYPES = {bool: "boolean", int: "integer", str: "string"}


def test_pulumi_yaml_declares_every_scalar_key_with_type_description_and_default() -> None:
    declared = PROJECT["config"]
    # `sites` is an object: Pulumi's project schema types only string/integer/boolean/array values.
    assert set(declared) == TOP_KEYS - set(MAP_KEYS)
    for key, spec in declared.items():
        assert spec["description"], key
        if key in DEFAULTS:
            assert spec["default"] == DEFAULTS[key], key
            assert spec["type"] == PULUMI_TYPES[type(DEFAULTS[key])], key
        else:
            assert key in REQUIRED_KEYS and "default" not in spec and "Required" in spec["description"], key


def test_readme_config_reference_lists_every_key_and_site_setting() -> None:
    for key in TOP_KEYS:
        assert f"| `{key}`" in README, f"README config reference lacks {key}"
    for key in SITE_KEYS:
        assert f"`{key}`" in README, f"README site settings lack {key}"
    for platform, traits in PLATFORMS.items():
        keys = traits.required_site_keys
        rows = [line for line in README.splitlines() if line.startswith(f"| {platform} ")]
        assert any(all(f"`{key}`" in row for key in keys) for row in rows), f"README lacks the required settings of {platform}"


def readme_commands() -> list[str]:
    """Every line of the README's unlabelled code blocks (the commands a reader pastes)."""
    blocks = re.findall(r"^```\n(.*?)^```", README, re.M | re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"^make [a-z-]+$", ci, re.M)
    assert command is not None
    assert command.group(0) in [line.split("#")[0].strip() for line in readme_commands()]


def test_makefile_targets_named_in_readme_exist() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = {m for line in readme_commands() for m in re.findall(r"(?:^|&& )make ([a-z-]+)", line)}
    assert {"test", "lab", "lab-down", "deploy-setup"} <= targets
    for target in targets:
        assert re.search(rf"^{target}:|^ROOT_TARGETS :=.*\b{target}\b", makefile, re.M), target


def test_readme_commands_run_as_root_without_sudo() -> None:
    """Where sudo is not installed (a fresh Debian machine, as root), a README command that starts with sudo fails:
    the commands that need root escalate by themselves instead. The one exception runs on a node, where sudo is the
    login user's only way to the push and the check."""
    with_sudo = [line for line in readme_commands() if line.lstrip().startswith("sudo ")]
    assert with_sudo == [line for line in with_sudo if "/usr/local/sbin/overlay-node" in line]


def test_readme_size_table_is_each_platforms_traits_record() -> None:
    for platform, traits in PLATFORMS.items():
        rows = [line for line in README.splitlines() if line.startswith(f"| {platform} | `") and "` / `" in line]
        assert len(rows) == 1, f"README: no sizes row for {platform}"
        assert f"`{traits.nodes.router_size}` / `{traits.nodes.client_size}`" in rows[0], rows[0]
