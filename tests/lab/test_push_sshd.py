"""The in-place push and the connectivity check, as the program registers them, against a real stock sshd.

A mocks run of the dev stack (tests/harness.py) gives the Command resources; their every input that reaches a node
(command, stdin, environment, user, private key, pinned host key) is sent the way pulumi-command 1.2 sends it
(tests/lab/sshd.py says how, with its sources) to Debian's openssh-server with its packaged sshd_config, which
accepts only LANG and LC_* environment variables. The node is a client (bridge, one VXLAN tunnel to its router, no
Docker) built from its own payload: login user, authorized keys, sudoers drop-in, host key, node script.

The mocks' pulumi_tls keys are fake strings: for this module every tls.PrivateKey of the run (deploy key, host
keys) is a real key generated for the test, so the payload, the authorized keys and the pinned host key stay
consistent exactly as the program wires them.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import gzip
import ipaddress
import json
import shlex
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from multicloud_overlay.cloudinit import render
from multicloud_overlay.cloudinit.render import NODE_CONFIG, NODE_SCRIPT, unit_exec_start
from multicloud_overlay.components.clouds.base import SSH_USER
from multicloud_overlay.components.connectivity import parse_check_output
from multicloud_overlay.components.stack_file import read_stack_file
from tests import harness
from tests.harness import ROOT, ProgramRun, run_program
from tests.lab.sshd import (
    STOCK_ACCEPT_ENV,
    CommandResult,
    HostKeyMismatch,
    KeyPair,
    NodePayload,
    RemoteCommand,
    SetenvRefused,
    StockSshdNode,
    generate_key_pair,
)

pytestmark = pytest.mark.root

DEV = read_stack_file(ROOT / "Pulumi.dev.yaml")
COMMAND = "command:remote:Command"
TLS_KEY = "tls:index/privateKey:PrivateKey"
SITE = str(DEV["hub"])
CLIENT = f"{SITE}-client"
ROUTER = f"{SITE}-router"


@contextmanager
def real_tls_keys() -> Iterator[dict[str, KeyPair]]:
    """While active, the mocked pulumi_tls provider hands out real keys (one per resource name)."""
    made: dict[str, KeyPair] = {}

    def outputs(args: Any) -> dict[str, Any]:
        if args.name not in made:
            made[args.name] = generate_key_pair(str(args.inputs.get("algorithm", "ED25519")))
        return {"privateKeyOpenssh": made[args.name].private_openssh, "publicKeyOpenssh": made[args.name].public_openssh}

    before = harness.RESOURCE_OUTPUTS[TLS_KEY]
    harness.RESOURCE_OUTPUTS[TLS_KEY] = outputs
    try:
        yield made
    finally:
        harness.RESOURCE_OUTPUTS[TLS_KEY] = before


def node_user_data(run: ProgramRun, node: str) -> str:
    """The user-data the program gives a node's VM (whatever its platform's encoding)."""
    from tests.test_platforms import decode, user_data_strings

    found = {
        text
        for r in run.resources
        for value in r.inputs.values()
        for text in map(decode, user_data_strings(value))
        if NodePayload.from_user_data(text).node_config.get("node") == node
    }
    assert len(found) == 1, f"{len(found)} payloads for {node}"
    return found.pop()


@dataclass(frozen=True)
class Deployed:
    run: ProgramRun
    payload: NodePayload
    script: RemoteCommand
    push: RemoteCommand
    check: RemoteCommand


@pytest.fixture(scope="module")
def deployed() -> Deployed:
    with real_tls_keys():
        run = run_program(copy.deepcopy(DEV))
    script = run.named(f"{CLIENT}-config-script", COMMAND)
    push = run.named(f"{CLIENT}-config-apply", COMMAND)
    check = run.named(f"{ROUTER}-connectivity-ping", COMMAND)
    return Deployed(
        run,
        NodePayload.from_user_data(node_user_data(run, CLIENT)),
        RemoteCommand.from_inputs(script.inputs),
        RemoteCommand.from_inputs(push.inputs),
        RemoteCommand.from_inputs(check.inputs),
    )


@pytest.fixture(scope="module")
def node(deployed: Deployed) -> Iterator[StockSshdNode]:
    with StockSshdNode(deployed.payload, login=deployed.push.connection.user) as n:
        yield n


def converge_by_boot_path(node: StockSshdNode, doc_json: str) -> None:
    """As a VM that booted with this config: the payload's unit command, as root (not through SSH)."""
    if node.as_root(["ip", "link", "show", "br-overlay"]).returncode == 0:
        return
    node.as_root(["install", "-m", "0600", "/dev/stdin", NODE_CONFIG], input=doc_json, check=True)
    applied = node.as_root(unit_exec_start(node.payload.user_data), timeout=120)
    assert applied.returncode == 0, applied.stdout + applied.stderr


def install_whole_script(node: StockSshdNode, deployed: Deployed) -> None:
    """The program's first command on a node: the whole node script in place of the boot script (idempotent)."""
    done = push_or_fail(node, deployed.script, "create")
    assert done.ok, done.error()


def push_or_fail(node: StockSshdNode, command: RemoteCommand, operation: str, previous: CommandResult | None = None) -> CommandResult:
    """Run a Command's create or update; a refused environment variable fails the test as it fails `pulumi up`."""
    try:
        return node.run_command(command, operation, previous)
    except SetenvRefused as e:
        refused = e
    pytest.fail(f"pulumi-command fails this {operation} against a stock sshd, before running anything: {refused}", pytrace=False)


def public_of(private_openssh: str) -> str:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_ssh_private_key(private_openssh.encode(), password=None)
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def test_the_login_user_is_the_payloads_and_the_connections(deployed: Deployed) -> None:
    """What the node is built from: the payload's login user authorizes the push's key, its host key is pinned."""
    login = getattr(render, "LOGIN_USER", None)
    assert login is not None, "cloudinit.render.LOGIN_USER is missing: the payload does not create the login user yet"
    assert deployed.push.connection.user == deployed.check.connection.user == SSH_USER == login
    user = deployed.payload.login_user(login)
    assert deployed.payload.host_key is not None
    assert deployed.push.connection.host_key is not None
    assert deployed.push.connection.host_key.split()[:2] == deployed.payload.host_key.public_openssh.split()[:2]
    assert deployed.push.connection.private_key is not None
    deploy_public = public_of(deployed.push.connection.private_key)
    assert deploy_public in [" ".join(k.split()[:2]) for k in user.authorized_keys], "the push's key is not authorized for the login user"
    assert [(f.path, f.mode) for f in deployed.payload.sudoers_files] == [("/etc/sudoers.d/90-multicloud-overlay", 0o440)]
    assert not user.sudo, "the login user gets cloud-init's own sudo rule: sudo must come only from the drop-in"


def test_stock_sshd_refuses_any_variable_but_lang_and_lc(node: StockSshdNode, deployed: Deployed) -> None:
    """The harness sees the problem: the packaged sshd accepts LC_* and refuses anything else, before running."""
    assert node.effective_accept_env() == list(STOCK_ACCEPT_ENV)
    conn = deployed.push.connection
    accepted = node.ssh(conn, "printenv LC_MCO_PROBE", environment={"LC_MCO_PROBE": "accepted"})
    assert accepted.ok and accepted.stdout == "accepted", accepted.error()
    marker = f"/home/{conn.user}/ran-despite-refused-env"
    with pytest.raises(SetenvRefused, match='could not set environment variable "OVERLAY_CONFIG_SHA256": ssh: setenv failed'):
        node.ssh(conn, f"touch {marker}", environment={"OVERLAY_CONFIG_SHA256": "0" * 64})
    assert node.as_root(["test", "-e", marker]).returncode == 1, "the command ran although its environment was refused"


def test_the_whole_node_script_is_installed_through_the_sudo_rule_and_only_the_pinned_one(node: StockSshdNode, deployed: Deployed) -> None:
    """The node boots with the boot script, which refuses a push; the program's script command (the stock sshd, sudo -n
    of the payload's drop-in) installs the whole script, whose SHA-256 user-data pinned, and a second run changes
    nothing. A script that is not the pinned one, sent the same way, is refused and installs nothing."""
    script = deployed.script
    assert script.stdin == render.packed_node_script() and script.script("create") == render.install_script_command()
    installed = node.as_root(["cat", NODE_SCRIPT], check=True).stdout
    if installed == render.boot_script():
        refused = push_or_fail(node, deployed.push, "create")
        assert refused.exit_status == 3 and "runs its boot script" in refused.stderr, refused.error()
        forged_text = render.node_script().replace("overlay-node", "overlay-nodf")
        forged = dataclasses.replace(script, stdin=base64.b64encode(gzip.compress(forged_text.encode())).decode())
        result = push_or_fail(node, forged, "create")
        assert result.exit_status == 3 and "has only its boot script" in result.stderr, result.error()
        assert node.as_root(["cat", NODE_SCRIPT], check=True).stdout == render.boot_script()
    first = push_or_fail(node, script, "create")
    assert first.ok, first.error()
    assert node.as_root(["cat", NODE_SCRIPT], check=True).stdout == render.node_script()
    assert node.as_root(["stat", "-c", "%a %U %G", NODE_SCRIPT], check=True).stdout.split() == ["755", "root", "root"]
    second = push_or_fail(node, script, "update", previous=first)
    assert second.ok and "installed already" in second.stdout, second.error()


def test_client_push_applies_over_stock_sshd_and_a_second_identical_push_changes_nothing(node: StockSshdNode, deployed: Deployed) -> None:
    push = deployed.push
    assert push.stdin, "the push sends the node config on stdin"
    install_whole_script(node, deployed)
    first = push_or_fail(node, push, "create")
    assert first.ok, first.error()
    installed = node.as_root(["stat", "-c", "%a %U %G", NODE_CONFIG], check=True).stdout.split()
    assert installed == ["600", "root", "root"]
    assert node.as_root(["cat", NODE_CONFIG], check=True).stdout == push.stdin
    assert node.as_root(["ip", "-j", "link", "show", "br-overlay"]).returncode == 0, "the push did not converge the node"
    assert "no change" not in first.stdout, first.stdout

    second = push_or_fail(node, push, "update", previous=first)
    assert second.ok, second.error()
    assert "no change" in second.stdout, second.stdout
    # pulumi-command would offer the previous output as PULUMI_COMMAND_STDOUT on an update (a stock sshd refuses it,
    # with a warning each time): the push turns that off, so nothing at all is refused.
    assert not push.add_previous_output_in_env
    assert second.warnings == [], second.warnings


def test_a_wrong_pinned_host_key_is_refused_before_anything_runs(node: StockSshdNode, deployed: Deployed) -> None:
    conn = deployed.push.connection.replace(host_key=generate_key_pair().public_openssh)
    marker = f"/home/{conn.user}/ran-with-wrong-host-key"
    with pytest.raises(HostKeyMismatch, match="host key mismatch"):
        node.ssh(conn, f"touch {marker}")
    assert node.as_root(["test", "-e", marker]).returncode == 1, "a command ran on a node showing another host key"


def test_connectivity_check_runs_through_the_same_path(node: StockSshdNode, deployed: Deployed) -> None:
    """A router's check command, run on the client node: its own addresses answer, the others (no peer exists in
    this namespace) do not, and the update would fail (exit 1) with a result parse_check_output reads."""
    check = deployed.check
    assert check.stdin is None
    assert deployed.push.stdin is not None
    converge_by_boot_path(node, deployed.push.stdin)
    install_whole_script(node, deployed)
    doc = json.loads(deployed.push.stdin)
    own = {str(ipaddress.ip_interface(doc["bridge"][k]).ip) for k in ("ipv4", "ipv6")}
    targets = shlex.split(check.script("create"))[shlex.split(check.script("create")).index("--json") + 1 :]
    assert own <= set(targets)
    # The peers do not exist here: make their absence answer at once (no 2 s ARP/ND wait per ping and retry).
    for family in (4, 6):
        rules = [f"rule add to {t} prohibit pref 100" for t in targets if ipaddress.ip_address(t).version == family and t not in own]
        node.as_root(["ip", f"-{family}", "-batch", "-"], input="\n".join(rules) + "\n", check=True)
    # The router's command, user and key; the pinned host key is the node's it runs on (the client's).
    on_client = dataclasses.replace(check, connection=check.connection.replace(host_key=deployed.push.connection.host_key))
    result = push_or_fail(node, on_client, "create")
    assert result.exit_status == 1, result.error()
    parsed = parse_check_output(result.stdout)
    assert isinstance(parsed, dict) and "raw" not in parsed, result.stdout
    assert parsed["total"] == len(targets)
    own_v4 = str(ipaddress.ip_interface(doc["bridge"]["ipv4"]).ip)
    assert parsed["results"][own_v4] is True
    assert parsed["reachable"] >= 1
    assert set(parsed["unreachable"]) == set(targets) - {t for t, ok in parsed["results"].items() if ok}
    assert set(parsed["unreachable"]) >= set(targets) - own


def test_the_make_before_break_steps_pass_the_sudo_rule_and_reach_the_node_script(node: StockSshdNode, deployed: Deployed) -> None:
    """A router's prepare and switch commands, exactly as registered, through the stock sshd and sudo -n of the
    payload's drop-in (sudoers matches their whole argument lists). On this client node, whose config has nothing
    to move, each says so and changes nothing; the installed config stays the pushed one."""
    assert deployed.push.stdin is not None
    converge_by_boot_path(node, deployed.push.stdin)
    install_whole_script(node, deployed)
    installed = node.as_root(["cat", NODE_CONFIG], check=True).stdout
    for phase in ("prepare", "switch"):
        registered = RemoteCommand.from_inputs(deployed.run.named(f"{ROUTER}-config-{phase}", COMMAND).inputs)
        assert registered.script("create") == render.push_command(phase)
        on_client = dataclasses.replace(
            registered, stdin=deployed.push.stdin, connection=registered.connection.replace(host_key=deployed.push.connection.host_key)
        )
        result = push_or_fail(node, on_client, "create")
        assert result.ok, result.error()
        assert f"{phase}: nothing to do" in result.stdout, result.stdout
    assert node.as_root(["cat", NODE_CONFIG], check=True).stdout == installed


def test_the_login_user_can_run_nothing_else_as_root(node: StockSshdNode, deployed: Deployed) -> None:
    conn = deployed.push.connection
    for argv in (
        ["/bin/true"],
        ["/bin/sh", "-c", "id"],
        [NODE_SCRIPT, "apply", "--config", NODE_CONFIG, "--state-dir", "/var/lib/multicloud-overlay"],
        [NODE_SCRIPT, "push", "--config", "/tmp/other.json", "--state-dir", "/var/lib/multicloud-overlay"],
        [NODE_SCRIPT, "validate", "--config", NODE_CONFIG],
        [NODE_SCRIPT, "push", "--phase", "prepare", "--config", "/tmp/other.json", "--state-dir", "/var/lib/multicloud-overlay"],
        [NODE_SCRIPT, "push", "--config", NODE_CONFIG, "--state-dir", "/var/lib/multicloud-overlay", "--phase", "switch"],
        [NODE_SCRIPT, "install-script", "--pin", "/tmp/pin", "--to", NODE_SCRIPT],
        [NODE_SCRIPT, "install-script", "--pin", render.SCRIPT_PIN, "--to", "/etc/sudoers.d/zz"],
    ):
        result = node.ssh(conn, "sudo -n " + shlex.join(argv))
        assert result.exit_status != 0, f"sudo -n {shlex.join(argv)} ran as root: {result.stdout}"
        assert "password is required" in result.stderr or "not allowed" in result.stderr, result.stderr
    whoami = node.ssh(conn, "id -u")
    assert whoami.ok and whoami.stdout != "0"


def test_sshd_offers_only_the_pinned_key_after_an_agent_regenerated_the_stock_ones(node: StockSshdNode, deployed: Deployed) -> None:
    """The harness regenerates /etc/ssh/ssh_host_* before sshd starts, as GCP's guest agent does at first boot
    (set_host_keys): the payload's key under /etc/ssh/multicloud-overlay/ and its HostKey drop-in still win."""
    scan = subprocess.run(
        ["nsenter", f"--net=/run/netns/{node.netns}", "--", "ssh-keyscan", "-T", "5", node.address],
        capture_output=True,
        text=True,
        timeout=30,
    )
    offered = sorted(" ".join(line.split()[1:3]) for line in scan.stdout.splitlines() if line and not line.startswith("#"))
    pinned = " ".join(str(deployed.push.connection.host_key).split()[:2])
    assert offered == [pinned], scan.stdout + scan.stderr
    stock = node.as_root(["cat", "/etc/ssh/ssh_host_ed25519_key.pub"], check=True).stdout.split()[1]
    assert stock != pinned.split()[1], "the stand-in agent did not regenerate the stock key"
