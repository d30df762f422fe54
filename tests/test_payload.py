"""cloud-init payloads: valid for the real `cloud-init schema`, small enough for every cloud, and carrying exactly
the node config of the plan, the node script and the boot unit."""

from __future__ import annotations

import base64
import copy
import gzip
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from cloudinit.render import (
    APPLY_COMMAND,
    DOCKER_DAEMON,
    NODE_CONFIG,
    NODE_SCRIPT,
    PLAIN_USER_DATA_LIMIT,
    UNIT_PATH,
    USER_DATA_LIMIT,
    StaticNic,
    compressed_user_data,
    node_script,
    payload_node_config,
    read_payload,
    render_user_data,
    render_vsphere_metadata,
    unit_exec_start,
)
from components.config import parse_config
from components.plan import PAIR_KEY_BYTES, Plan, build_plan, node_config, pair_key_name
from components.stackfile import read_stack_file
from tests.harness import ROOT, mock_pair_keys

DEV = read_stack_file(ROOT / "Pulumi.dev.yaml")


def plan_for(protocol: str) -> Plan:
    raw = copy.deepcopy(DEV)
    raw["protocol"] = protocol
    return build_plan(parse_config(raw))


def public_ips(plan: Plan) -> dict[str, str]:
    return {s.name: f"198.51.100.{s.site_id}" for s in plan.config.sites}


def all_payloads() -> list[tuple[str, str, str]]:
    out = []
    for protocol in ("vxlan", "geneve"):
        plan = plan_for(protocol)
        for node in plan.nodes:
            out.append(
                (protocol, node.name, render_user_data(node_config(plan, node.name, public_ips(plan), pair_keys=mock_pair_keys(plan))))
            )
    return out


PAYLOADS = all_payloads()


@pytest.mark.skipif(shutil.which("cloud-init") is None, reason="the cloud-init package is not installed (make setup installs it)")
def test_every_payload_passes_cloud_init_schema(tmp_path: Path) -> None:
    assert len(PAYLOADS) == 24  # 12 nodes x 2 protocols
    for protocol, node, text in PAYLOADS:
        f = tmp_path / f"{protocol}-{node}.yaml"
        f.write_text(text)
        proc = subprocess.run(["cloud-init", "schema", "-c", str(f)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{protocol} {node}: {proc.stdout}{proc.stderr}"
        assert "Valid cloud-config" in proc.stdout


@pytest.mark.skipif(shutil.which("cloud-init") is None, reason="the cloud-init package is not installed (make setup installs it)")
def test_schema_check_is_not_a_rubber_stamp(tmp_path: Path) -> None:
    broken = PAYLOADS[0][2].replace("write_files:", "write_file:").replace("runcmd:", "runcmd: 7\nx_runcmd:")
    f = tmp_path / "broken.yaml"
    f.write_text(broken)
    proc = subprocess.run(["cloud-init", "schema", "-c", str(f)], capture_output=True, text=True)
    assert proc.returncode != 0


@pytest.mark.parametrize(("protocol", "node", "text"), PAYLOADS, ids=[f"{p}-{n}" for p, n, _ in PAYLOADS])
def test_payload_carries_plan_script_and_unit(protocol: str, node: str, text: str) -> None:
    assert len(text.encode()) < PLAIN_USER_DATA_LIMIT, f"{node} payload is {len(text.encode())} bytes"
    assert len(gzip.compress(text.encode())) < USER_DATA_LIMIT, f"{node} payload is {len(gzip.compress(text.encode()))} bytes compressed"
    plan = plan_for(protocol)
    assert payload_node_config(text) == node_config(plan, node, public_ips(plan), pair_keys=mock_pair_keys(plan))
    files, runcmd = read_payload(text)
    by_path = {f.path: f for f in files}
    assert by_path[NODE_SCRIPT].content.decode() == node_script() and by_path[NODE_SCRIPT].mode == 0o755
    assert unit_exec_start(text) == list(APPLY_COMMAND)
    assert "WantedBy=multi-user.target" in by_path[UNIT_PATH].content.decode()
    assert ["systemctl", "enable", "--now", "multicloud-overlay.service"] in runcmd
    body = yaml.safe_load(text)
    if plan.node(node).kind == "router":
        assert "docker.io" in body["packages"]
        assert json.loads(by_path[DOCKER_DAEMON].content) == {"bridge": "none", "iptables": False, "ip6tables": False}
        assert "docker.service" in by_path[UNIT_PATH].content.decode()
    else:
        assert "docker.io" not in body["packages"] and DOCKER_DAEMON not in by_path
    assert by_path[NODE_CONFIG].mode == 0o600  # with encryption ipsec it carries tunnel keys


def test_payload_is_deterministic() -> None:
    plan = plan_for("vxlan")
    a = render_user_data(node_config(plan, "aws-router", public_ips(plan), pair_keys=mock_pair_keys(plan)))
    b = render_user_data(node_config(plan, "aws-router", public_ips(plan), pair_keys=mock_pair_keys(plan)))
    assert a == b


def test_only_node_config_changes_on_hub_swap() -> None:
    plan = plan_for("vxlan")
    raw = copy.deepcopy(DEV)
    raw["hub"] = "gcp"
    swapped = build_plan(parse_config(raw))
    for node in ("aws-router", "gcp-router", "azure-router"):
        before, _ = read_payload(render_user_data(node_config(plan, node, public_ips(plan), pair_keys=mock_pair_keys(plan))))
        after, _ = read_payload(render_user_data(node_config(swapped, node, public_ips(swapped), pair_keys=mock_pair_keys(swapped))))
        changed = {f.path for f, g in zip(before, after, strict=True) if f != g}
        assert changed == {NODE_CONFIG}


def test_vsphere_metadata_static_addresses() -> None:
    text = render_vsphere_metadata(
        "vsphere-router",
        "vsphere-router-1",
        [
            StaticNic("wan0", "00:50:56:00:06:01", "10.6.1.10/24", "10.6.1.1", ("9.9.9.9",)),
            StaticNic("lan0", "00:50:56:00:06:02", "10.6.2.10/24"),
        ],
    )
    meta = yaml.safe_load(text)
    assert meta["instance-id"] == "vsphere-router-1" and meta["local-hostname"] == "vsphere-router"
    eth = meta["network"]["ethernets"]
    assert eth["wan0"]["match"] == {"macaddress": "00:50:56:00:06:01"} and eth["wan0"]["addresses"] == ["10.6.1.10/24"]
    assert eth["wan0"]["routes"] == [{"to": "default", "via": "10.6.1.1"}]
    assert "routes" not in eth["lan0"]


def test_largest_payload_fits_every_cloud() -> None:
    """50 containers and a point-to-point or hub router's IPsec keys: under 32 KiB plain (OCI, Alibaba's current
    limit), under 16 KiB gzip-compressed (how AWS and Alibaba get it)."""
    raw = copy.deepcopy(DEV)
    raw["containersPerRouter"] = 50
    raw["encryption"] = "ipsec"
    plan = build_plan(parse_config(raw))
    keys = {pair_key_name(a, b): os.urandom(PAIR_KEY_BYTES).hex() for a, b in plan.router_pairs()}
    texts = [render_user_data(node_config(plan, n.name, public_ips(plan), pair_keys=keys)) for n in plan.nodes]
    assert max(len(t.encode()) for t in texts) < PLAIN_USER_DATA_LIMIT
    assert max(len(base64.b64decode(compressed_user_data(t))) for t in texts) < USER_DATA_LIMIT
