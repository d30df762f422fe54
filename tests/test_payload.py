"""cloud-init payloads: valid for the real `cloud-init schema`, small enough for every cloud, and carrying exactly
the node config of the plan, the node script and the boot unit."""

from __future__ import annotations

import ast
import builtins
import copy
import dis
import gzip
import hashlib
import json
import shutil
import subprocess
import types
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from multicloud_overlay.cloudinit.render import (
    APPLY_COMMAND,
    DOCKER_DAEMON,
    LOGIN_USER,
    NODE_CONFIG,
    NODE_SCRIPT,
    PUSH_ONLY,
    SCRIPT_PIN,
    SUDOERS_PATH,
    UNIT_PATH,
    SshHostKey,
    StaticNic,
    boot_script,
    node_script,
    payload_node_config,
    read_payload,
    render_vsphere_metadata,
    unit_exec_start,
)
from multicloud_overlay.components.limits import node_user_data
from multicloud_overlay.components.stack_file import read_stack_file
from multicloud_overlay.overlay.config import parse_config
from multicloud_overlay.overlay.plan import Plan, bootstrap_config, build_plan, node_config
from tests.harness import ROOT, mock_pair_keys

DEV = read_stack_file(ROOT / "Pulumi.dev.yaml")


def plan_for(protocol: str) -> Plan:
    raw = copy.deepcopy(DEV)
    raw["protocol"] = protocol
    return build_plan(parse_config(raw))


def public_ips(plan: Plan) -> dict[str, str]:
    return {s.name: f"198.51.100.{s.site_id}" for s in plan.config.sites}


OPERATOR_KEY = str(DEV["sshPublicKey"])
DEPLOY_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIENi9cEYtYyf1zv3WIgHu1zVQdZ+FO+4+bTNq/yGJIfD"
# A real ed25519 host key (what the stack's tls.PrivateKey generates): the payload's size and YAML are those of a VM's.
_HOST = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
HOST_KEY = SshHostKey(
    _HOST.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()).decode(),
    _HOST.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode() + "\n",
)


def boot_payload(plan: Plan, node: str) -> str:
    """A node's user-data as the program renders it (limits.node_user_data, which components/site.py calls): its
    bootstrap config, its platform's first-boot files, its host key and the login keys."""
    return node_user_data(plan, node, OPERATOR_KEY, HOST_KEY.private_openssh, HOST_KEY.public_openssh, DEPLOY_KEY)


def all_payloads() -> list[tuple[str, str, str]]:
    out = []
    for protocol in ("vxlan", "geneve"):
        plan = plan_for(protocol)
        for node in plan.nodes:
            out.append((protocol, node.name, boot_payload(plan, node.name)))
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
def test_payload_carries_bootstrap_config_script_unit_and_login(protocol: str, node: str, text: str) -> None:
    plan = plan_for(protocol)
    assert payload_node_config(text) == bootstrap_config(plan, node)
    files, runcmd = read_payload(text)
    by_path = {f.path: f for f in files}
    # The boot script, and the pin of the whole script that the program's first push installs.
    assert by_path[NODE_SCRIPT].content.decode() == boot_script() and by_path[NODE_SCRIPT].mode == 0o755
    pin = by_path[SCRIPT_PIN]
    assert pin.content.decode() == hashlib.sha256(node_script().encode()).hexdigest() + "\n" and pin.mode == 0o644
    assert unit_exec_start(text) == list(APPLY_COMMAND)
    assert "WantedBy=multi-user.target" in by_path[UNIT_PATH].content.decode()
    assert ["systemctl", "enable", "--now", "multicloud-overlay.service"] in runcmd
    # FRR is installed on routers (a standby hub is a push), and stopped until one is set.
    frr_off = ["systemctl", "disable", "--now", "frr.service"]
    if node.endswith("-router"):
        assert "frr" in runcmd[0][2].split() and runcmd.index(frr_off) == 1
    else:
        assert "frr" not in runcmd[0][2].split() and frr_off not in runcmd
    body = yaml.safe_load(text)
    # One login user, with the operator's and the deploy key, no password; no `default` user: the image's own
    # (ubuntu, root's keys on Alibaba) gets no key.
    assert body["users"] == [
        {
            "name": LOGIN_USER,
            "gecos": "multicloud-overlay",
            "shell": "/bin/bash",
            "lock_passwd": True,
            "groups": ["adm"],  # reads the journal and cloud-init's log, for debugging
            "ssh_authorized_keys": [OPERATOR_KEY, DEPLOY_KEY],
        }
    ]
    sudoers = by_path[SUDOERS_PATH]
    assert sudoers.mode == 0o440
    # The push, its two make-before-break phases (exact argument lists: sudoers matches them) and the check.
    push = "/usr/local/sbin/overlay-node push {}--config /etc/multicloud-overlay/node.json --state-dir /var/lib/multicloud-overlay"
    assert sudoers.content.decode() == (
        f"overlay ALL=(root) NOPASSWD: {push.format('--phase prepare ')}, {push.format('--phase switch ')}, {push.format('')}, "
        "/usr/local/sbin/overlay-node install-script --pin /etc/multicloud-overlay/node-script.sha256 --to /usr/local/sbin/overlay-node, "
        "/usr/local/sbin/overlay-node check --json *\n"
    )
    install = runcmd[0]
    assert install[:2] == ["sh", "-c"] and "apt-get install" in install[2] and "retrying" in install[2]
    assert "packages" not in body and "package_update" not in body  # installed with retries by runcmd instead
    if plan.node(node).kind == "router":
        # strongSwan whatever the encryption: turning IPsec on later is a push, not a rebuild.
        assert "docker.io" in install[2] and "charon-systemd libstrongswan-standard-plugins" in install[2]
        assert json.loads(by_path[DOCKER_DAEMON].content) == {"bridge": "none", "iptables": False, "ip6tables": False}
        assert "docker.service" in by_path[UNIT_PATH].content.decode()
    else:
        assert "docker.io" not in install[2] and "charon" not in install[2] and DOCKER_DAEMON not in by_path
    assert by_path[NODE_CONFIG].mode == 0o600  # the pushed config that replaces it carries tunnel keys


def test_payload_is_deterministic() -> None:
    plan = plan_for("vxlan")
    assert boot_payload(plan, "aws-router") == boot_payload(plan, "aws-router")


@pytest.mark.parametrize("hub", ["gcp", "vsphere"])
def test_a_hub_swap_changes_no_payload(hub: str) -> None:
    """The payload holds the node's own site only: swapping the hub touches no VM's user-data at all."""
    plan = plan_for("vxlan")
    raw = copy.deepcopy(DEV)
    raw["hub"] = hub
    swapped = build_plan(parse_config(raw))
    for node in plan.nodes:
        assert boot_payload(plan, node.name) == boot_payload(swapped, node.name), node.name


def test_payload_names_no_other_site() -> None:
    """No peer's public address, tunnel or MAC in a node's user-data: its size does not grow with the overlay."""
    plan = plan_for("vxlan")
    ips = public_ips(plan)
    for node in plan.nodes:
        text = boot_payload(plan, node.name)
        doc = payload_node_config(text)
        assert {t["remote"] for t in doc["tunnels"]} <= {n.lan_ip for n in plan.nodes if n.site == node.site}, node.name
        others = [n for n in plan.nodes if n.site != node.site]
        assert not {e["mac"] for e in doc["fdb"]} & {n.mac for n in others}, node.name
        assert not any(ip in json.dumps(doc) for site, ip in ips.items() if site != node.site)


def test_push_carries_what_the_payload_leaves_out() -> None:
    """The full config differs from the bootstrap one exactly by the internet tunnels, their MACs, role and IPsec."""
    plan = plan_for("vxlan")
    for node in plan.nodes:
        full = node_config(plan, node.name, public_ips(plan), pair_keys=mock_pair_keys(plan))
        boot = bootstrap_config(plan, node.name)
        internet = [t for t in node.tunnels if t.via == "internet"]
        assert len(full["tunnels"]) - len(boot["tunnels"]) == len(internet)
        assert {k: v for k, v in full.items() if k not in ("tunnels", "fdb", "role", "ipsec")} == {
            k: v for k, v in boot.items() if k not in ("tunnels", "fdb")
        }
        assert "esp" not in json.dumps(boot) and "ipsec" not in boot


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


def test_payload_size_does_not_grow_with_the_overlay() -> None:
    """A hub router's payload at 100 sites with 50 containers and IPsec is the size it is at 6 sites (same site)."""
    from bench.configs import generated_stack

    sizes = []
    for n in (6, 100):
        raw = generated_stack(n, containersPerRouter=50, encryption="ipsec")
        plan = build_plan(parse_config(raw))
        sizes.append(len(boot_payload(plan, "s1-router")))
    assert sizes[0] == sizes[1]
    assert len(gzip.compress(boot_payload(plan, "s1-router").encode())) < 16 * 1024  # AWS's limit, the smallest


def _reference(path: Path, name: str) -> types.ModuleType:
    """The source without annotations (a nested function's annotations are built by the code that defines it), its
    docstrings, comments and layout kept: what the compacted script must compile to, instruction by instruction."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for n in ast.walk(tree):
        if isinstance(n, ast.FunctionDef):
            n.returns = None
            for arg in [*n.args.posonlyargs, *n.args.args, *n.args.kwonlyargs, *filter(None, (n.args.vararg, n.args.kwarg))]:
                arg.annotation = None
    tree.body = [s for s in tree.body if not (isinstance(s, ast.ImportFrom) and s.module == "overlay_node")]
    module = types.ModuleType(name)
    exec(compile(tree, str(path), "exec"), module.__dict__)
    return module


def _script(text: str, name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    exec(compile(text, "overlay-node", "exec"), module.__dict__)
    return module


def _functions(module: types.ModuleType) -> dict[str, types.CodeType]:
    out = {}
    for name, value in vars(module).items():
        if isinstance(value, types.FunctionType) and value.__module__ == module.__name__:
            out[name] = value.__code__
        elif isinstance(value, type) and value.__module__ == module.__name__:
            out |= {f"{name}.{k}": v.__code__ for k, v in vars(value).items() if isinstance(v, types.FunctionType)}
    return out


def _nested(code: types.CodeType) -> list[tuple[str, object]]:
    """Instructions with their resolved arguments (constants by value: a docstring shifts their indices), inner
    functions and comprehensions included."""
    out: list[tuple[str, object]] = []
    for ins in dis.get_instructions(code):
        out.append((ins.opname, "<code>" if isinstance(ins.argval, types.CodeType) else ins.argval))
    return out + [x for c in code.co_consts if isinstance(c, types.CodeType) for x in _nested(c)]


def _globals_used(code: types.CodeType) -> set[str]:
    used = {str(ins.argval) for ins in dis.get_instructions(code) if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME")}
    return used.union(*(_globals_used(c) for c in code.co_consts if isinstance(c, types.CodeType)))


SOURCE = ROOT / "cloudinit" / "overlay_node.py"
BOOT_SOURCE = ROOT / "cloudinit" / "overlay_node_boot.py"


def test_the_installed_node_script_runs_the_same_code_as_its_source() -> None:
    """node_script() drops docstrings, annotations and comments and narrows the indentation: every function and
    method compiles to the same bytecode as in cloudinit/overlay_node.py, and the module defines the same names."""
    source, compact = _functions(_reference(SOURCE, "reference")), _functions(_script(node_script(), "installed"))
    assert source.keys() == compact.keys() and len(source) > 50
    assert {k: _nested(v) for k, v in source.items()} == {k: _nested(v) for k, v in compact.items()}
    tree = ast.parse(node_script())
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.AnnAssign) or (isinstance(n, ast.arg) and n.annotation)]
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.Module)) and ast.get_docstring(n)]


def test_the_boot_script_is_the_node_script_without_the_push_only_code() -> None:
    """What user-data carries: every function of the node script but those of PUSH_ONLY, compiled as in its source;
    the stand-ins of overlay_node_boot.py in place of the PUSH_ONLY names the kept code still calls; and no name
    that it uses and does not define (it would fail only when a VM runs that path)."""
    source = _functions(_reference(SOURCE, "reference"))
    stand_ins = _functions(_reference(BOOT_SOURCE, "stand_ins"))
    boot_module = _script(boot_script(), "boot")
    boot = _functions(boot_module)
    kept = {k: v for k, v in source.items() if k.split(".")[0] not in PUSH_ONLY}
    assert stand_ins and set(stand_ins) <= PUSH_ONLY
    assert boot.keys() == kept.keys() | stand_ins.keys()
    assert {k: _nested(boot[k]) for k in kept} == {k: _nested(v) for k, v in kept.items()}
    assert {k: _nested(boot[k]) for k in stand_ins} == {k: _nested(v) for k, v in stand_ins.items()}
    assert not (PUSH_ONLY - stand_ins.keys()) & set(vars(boot_module))  # the rest is gone
    undefined = _globals_used(compile(boot_script(), "overlay-node", "exec")) - set(vars(boot_module)) - set(dir(builtins))
    assert not undefined, f"the boot script uses {sorted(undefined)} and does not define them"
    # And the check sees a missing name: the boot script without one of the stand-ins.
    broken = boot_script().replace("def step_ipsec(", "def step_ipsec_gone(")
    assert "step_ipsec" in _globals_used(compile(broken, "broken", "exec")) - set(vars(_script(broken, "broken")))
    # What it saves is what keeps the payload under AWS's limit: about a quarter of the compressed script.
    assert len(gzip.compress(boot_script().encode())) < 0.8 * len(gzip.compress(node_script().encode()))
