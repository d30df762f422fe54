"""Hub swaps and protocol switches change the overlay in place: no VM (or any other cloud resource) is updated
or replaced except by adding/removing peer rules; only the nodes whose config changed get their push re-run."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from multicloud_overlay.cloudinit.render import (
    LOGIN_USER,
    check_command,
    install_script_command,
    node_script_sha256,
    packed_node_script,
    push_command,
)
from multicloud_overlay.components.stack_file import read_stack_file
from multicloud_overlay.overlay.plan import config_digest, node_config, pair_key_name
from tests.harness import (
    ROOT,
    ProgramRun,
    Registered,
    decode,
    is_user_data,
    mock_pair_keys,
    plan_of,
    run_cached,
    run_program,
    unsecret,
    user_data_strings,
)

DEV = read_stack_file(ROOT / "Pulumi.dev.yaml")
SITES = list(DEV["sites"])
COMMAND = "command:remote:Command"
STASH = "pulumi:index:Stash"
USER_DATA = "<user-data>"


def mask_user_data(value: Any) -> Any:
    """The inputs with every user-data payload (plain, base64 or gzip) replaced by a marker."""
    if isinstance(value, dict):
        return {k: mask_user_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_user_data(v) for v in value]
    if isinstance(value, str) and len(value) > 64 and is_user_data(value):
        return USER_DATA
    return value


def carries_user_data(r: Registered) -> bool:
    return USER_DATA in json.dumps(mask_user_data(r.inputs))


def dev_config(hub: str, protocol: str = "vxlan", encryption: str | None = None) -> dict[str, Any]:
    """The dev stack with another hub/protocol (encryption: the stack's, i.e. the default ipsec, unless given)."""
    raw = copy.deepcopy(DEV)
    raw.update(hub=hub, protocol=protocol, **({"encryption": encryption} if encryption else {}))
    return raw


def cloud_resources(run: ProgramRun) -> dict[tuple[str, str], Registered]:
    """Every resource but the commands, the providers and the barriers between push stages (which hold only their own
    name: a topology change from two stages of switches to one removes one)."""
    skip = (COMMAND, STASH)
    return {(r.type, r.name): r for r in run.resources if r.custom and r.type not in skip and not r.type.startswith("pulumi:providers:")}


def push_digests(run: ProgramRun) -> dict[str, str]:
    return {
        r.name.removesuffix("-config-apply"): unsecret(r.inputs["triggers"])[0]
        for r in run.of_type(COMMAND)
        if r.name.endswith("-config-apply")
    }


RULE_NAMES = ("tunnel-from-", "icmp-from-", "ssh-admin", "icmp-admin")


def is_rule(name: str) -> bool:
    return any(part in name for part in RULE_NAMES)


CHANGES = [(hub, protocol) for hub in SITES for protocol in ("vxlan", "geneve") if (hub, protocol) != (DEV["hub"], "vxlan")]


# The one VM resource of each node of Pulumi.dev.yaml (aws, azure, gcp, oci, alicloud, vsphere), as each platform names it.
DEV_VMS = {
    ("aws:ec2/instance:Instance", "aws-router-vm-instance"),
    ("aws:ec2/instance:Instance", "aws-client-vm-instance"),
    ("azure-native:compute:VirtualMachine", "azure-router-vm"),
    ("azure-native:compute:VirtualMachine", "azure-client-vm"),
    ("gcp:compute/instance:Instance", "gcp-router-vm"),
    ("gcp:compute/instance:Instance", "gcp-client-vm"),
    ("oci:Core/instance:Instance", "oci-router-vm-instance"),
    ("oci:Core/instance:Instance", "oci-client-vm-instance"),
    ("alicloud:ecs/instance:Instance", "alicloud-router-vm-instance"),
    ("alicloud:ecs/instance:Instance", "alicloud-client-vm-instance"),
    ("vsphere:index/virtualMachine:VirtualMachine", "vsphere-router-machine-vm"),
    ("vsphere:index/virtualMachine:VirtualMachine", "vsphere-client-machine-vm"),
}


def test_every_vm_carries_its_payload_and_ignores_later_changes() -> None:
    run = run_cached(dev_config(DEV["hub"]))
    vms = [r for r in cloud_resources(run).values() if carries_user_data(r)]
    assert {(r.type, r.name) for r in vms} == DEV_VMS  # exactly the VMs, one per node: nothing else carries user-data
    for vm in vms:
        assert vm.ignore_changes, f"{vm.type} {vm.name} does not ignore user-data changes"


def assert_only_rules_and_pair_keys_change(old: dict[tuple[str, str], Registered], new: dict[tuple[str, str], Registered]) -> None:
    """Every resource present in both is identical, user-data aside (VMs ignore it), except firewall rules, which
    may change in place (a new tunnel port): no VM, NIC, address or network is updated or replaced. Resources only
    come or go as peer-scoped rules and (encryption ipsec) the keys of router pairs."""
    for key in old.keys() & new.keys():
        if not is_rule(key[1]):
            assert mask_user_data(old[key].inputs) == mask_user_data(new[key].inputs), f"{key} would change"
    for key in old.keys() ^ new.keys():
        assert is_rule(key[1]) or key[0] == "random:index/randomBytes:RandomBytes", f"{key} added or removed"


@pytest.mark.parametrize(("hub", "protocol"), CHANGES, ids=[f"{h}-{p}" for h, p in CHANGES])
def test_change_touches_no_vm_and_reruns_only_changed_nodes(hub: str, protocol: str) -> None:
    before, after = run_cached(dev_config(DEV["hub"])), run_cached(dev_config(hub, protocol))
    old, new = cloud_resources(before), cloud_resources(after)
    assert_only_rules_and_pair_keys_change(old, new)
    new_pairs = {pair_key_name(a, b) for a, b in plan_of(dev_config(hub, protocol)).router_pairs()}
    assert {k[1] for k in new if k[0] == "random:index/randomBytes:RandomBytes"} == {f"ipsec-{p}" for p in new_pairs}
    assert {k for k, r in old.items() if carries_user_data(r)} == {k for k, r in new.items() if carries_user_data(r)}

    # Exactly the nodes whose config differs get a new digest, i.e. a re-run of their push.
    p_old, p_new = plan_of(dev_config(DEV["hub"])), plan_of(dev_config(hub, protocol))
    ips_old, ips_new = before.outputs["publicIps"], after.outputs["publicIps"]
    assert ips_old == ips_new
    expected = {
        n.name
        for n in p_old.nodes
        if config_digest(node_config(p_old, n.name, ips_old, pair_keys=mock_pair_keys(p_old)))
        != config_digest(node_config(p_new, n.name, ips_new, pair_keys=mock_pair_keys(p_new)))
    }
    d_old, d_new = push_digests(before), push_digests(after)
    assert set(d_old) == {n.name for n in p_old.nodes}
    assert {n for n in d_old if d_old[n] != d_new[n]} == expected
    if protocol == "vxlan":
        # A hub swap re-runs the old hub, the new hub and every spoke (their one tunnel moves); clients keep theirs.
        assert expected == {f"{s}-router" for s in SITES}
    else:
        assert expected == {n.name for n in p_old.nodes}


@pytest.mark.parametrize(("start", "end"), [("hub-and-spoke", "full-mesh"), ("full-mesh", "hub-and-spoke")])
def test_topology_change_touches_no_vm_and_reruns_only_the_routers(start: str, end: str) -> None:
    """hub-and-spoke <-> full-mesh in place: peer rules and the router pairs' keys come and go, no VM or any other
    resource changes, and only the routers' pushes run again (a client's config names its own router only)."""
    before, after = run_cached({**dev_config(DEV["hub"]), "topology": start}), run_cached({**dev_config(DEV["hub"]), "topology": end})
    old, new = cloud_resources(before), cloud_resources(after)
    assert_only_rules_and_pair_keys_change(old, new)
    keys_old = {k[1] for k in old if k[0] == "random:index/randomBytes:RandomBytes"}
    keys_new = {k[1] for k in new if k[0] == "random:index/randomBytes:RandomBytes"}
    # The pairs both topologies share keep their key (the hub's pairs): their tunnels stay up through the change.
    assert len(keys_old & keys_new) == len(SITES) - 1 and len(keys_old | keys_new) == len(SITES) * (len(SITES) - 1) // 2
    d_old, d_new = push_digests(before), push_digests(after)
    assert {n for n in d_old if d_old[n] != d_new[n]} == {f"{s}-router" for s in SITES}


@pytest.mark.parametrize(("start", "end"), [("", "gcp"), ("gcp", "")], ids=["standby-set", "standby-unset"])
def test_a_standby_hub_set_or_unset_touches_no_vm_and_reruns_only_the_routers(start: str, end: str) -> None:
    """standbyHub in place: the rules and keys of the spokes' pairs with the standby come or go, no VM or any other
    resource changes, and only the routers' pushes run again (FRR is installed on every router from its first boot)."""
    before = run_cached({**dev_config(DEV["hub"]), "standbyHub": start})
    after = run_cached({**dev_config(DEV["hub"]), "standbyHub": end})
    old, new = cloud_resources(before), cloud_resources(after)
    assert_only_rules_and_pair_keys_change(old, new)
    two = plan_of({**dev_config(DEV["hub"]), "standbyHub": "gcp"})
    spokes = [s for s in SITES if s not in (two.hub, "gcp")]
    keys = {k[1] for k in (new if end else old) if k[0] == "random:index/randomBytes:RandomBytes"}
    assert {f"ipsec-{pair_key_name(s, 'gcp')}" for s in spokes} <= keys
    d_old, d_new = push_digests(before), push_digests(after)
    assert {n for n in d_old if d_old[n] != d_new[n]} == {f"{s}-router" for s in SITES}


def test_the_hub_and_the_standby_trading_places_touches_no_vm_and_keeps_every_key() -> None:
    """hub and standbyHub swapped in place: every spoke already tunnels to both, so no rule or key comes or goes, no VM
    changes, and only the routers' pushes run again."""
    before = run_cached({**dev_config(DEV["hub"]), "standbyHub": "gcp"})
    after = run_cached({**dev_config("gcp"), "standbyHub": DEV["hub"]})
    old, new = cloud_resources(before), cloud_resources(after)
    assert set(old) == set(new)
    assert_only_rules_and_pair_keys_change(old, new)
    d_old, d_new = push_digests(before), push_digests(after)
    assert {n for n in d_old if d_old[n] != d_new[n]} == {f"{s}-router" for s in SITES}


def test_push_sends_the_node_config_and_pins_the_host_key() -> None:
    run = run_cached(dev_config(DEV["hub"]))
    plan = plan_of(dev_config(DEV["hub"]))
    ips = run.outputs["publicIps"]
    # The mocks give every resource the id "<name>-id": each node's push and install carry its VM's id, so a
    # replaced VM (a new id) gets the whole script and its config again.
    vm_ids = {n.name: next(f"{name}-id" for _, name in DEV_VMS if name.startswith(f"{n.name}-")) for n in plan.nodes}
    scripts = {r.name.removesuffix("-config-script"): r for r in run.of_type(COMMAND) if r.name.endswith("-config-script")}
    assert set(scripts) == set(vm_ids)
    for node, r in scripts.items():
        assert r.inputs["stdin"] == packed_node_script() and r.inputs["create"] == install_script_command()
        # Once per VM and script: not on a config change, which the config's digest would bring.
        assert unsecret(r.inputs["triggers"]) == [vm_ids[node], node_script_sha256()]
    for r in run.of_type(COMMAND):
        conn = unsecret(r.inputs["connection"])
        assert conn["user"] == LOGIN_USER and conn["hostKey"].startswith("ssh-ed25519 ") and conn["privateKey"]
        # Nothing as SSH environment variables: a stock sshd accepts only LANG and LC_*, and pulumi-command fails
        # the command when a variable is refused (tests/lab/test_push_sshd.py runs it against a real sshd).
        assert not r.inputs.get("environment"), f"{r.name} sends environment variables"
        assert r.inputs["create"] == r.inputs["update"]  # a config change runs update in place, no replacement
        if r.name.endswith("-config-apply"):
            node = r.name.removesuffix("-config-apply")
            doc = node_config(plan, node, ips, pair_keys=mock_pair_keys(plan))
            assert json.loads(unsecret(r.inputs["stdin"])) == doc
            assert unsecret(r.inputs["triggers"]) == [config_digest(doc), vm_ids[node]]
            assert r.inputs["create"] == push_command()


@pytest.mark.parametrize("hub", [DEV["hub"], "gcp"])
def test_routers_are_pushed_make_before_break_in_order(hub: str) -> None:
    """Each router gets the prepare and switch steps before its push, with the same config and trigger (they run
    again together, only when its config changed); every router prepares before any switches, the hub switches
    before the others, and no router's push (which removes old tunnels) starts before every router has switched."""
    run = run_cached(dev_config(hub))
    plan = plan_of(dev_config(hub))
    by_name = {r.name: r for r in run.of_type(COMMAND)}
    routers, clients = [r.name for r in plan.routers()], [n.name for n in plan.nodes if n.kind == "client"]
    steps = {(node, phase): by_name[f"{node}-config-{phase}"] for node in routers for phase in ("prepare", "switch", "apply")}
    for (node, phase), r in steps.items():
        assert r.inputs["create"] == r.inputs["update"] == push_command(None if phase == "apply" else phase)
        assert r.inputs["stdin"] == by_name[f"{node}-config-apply"].inputs["stdin"]
        assert r.inputs["triggers"] == by_name[f"{node}-config-apply"].inputs["triggers"]
    for node in clients:
        assert f"{node}-config-prepare" not in by_name and f"{node}-config-switch" not in by_name
    hub_router = plan.router(hub).name
    prepares = {steps[(n, "prepare")].urn for n in routers}
    switches = {steps[(n, "switch")].urn for n in routers}
    for node in routers:
        before = {phase: run.waits_for(steps[(node, phase)].urn) for phase in ("prepare", "switch", "apply")}
        assert prepares <= before["switch"]
        assert (steps[(hub_router, "switch")].urn in before["switch"]) == (node != hub_router)
        assert not (switches - {steps[(hub_router, "switch")].urn}) & before["switch"]
        assert switches <= before["apply"]
        assert not (switches | prepares) & before["prepare"]
    for node in clients:
        assert not {steps[k].urn for k in steps} & run.waits_for(by_name[f"{node}-config-apply"].urn)


def test_no_step_lists_another_nodes_steps() -> None:
    """A push step or check lists no other node's steps: the routers' steps before it are behind one barrier per
    stage (push.barrier). The SDK walks the graph for a cycle at each dependency a program states, so n routers'
    steps each listing n others' cost a 100-site program most of its time."""
    run = run_cached(dev_config(DEV["hub"]))
    steps = {r.urn: r for r in run.of_type(COMMAND) if "-config-" in r.name or r.name.endswith("-connectivity-ping")}
    assert len(steps) > 4 * len(SITES)

    def node(r: Registered) -> str:
        return r.name.split("-config-")[0].removesuffix("-connectivity-ping")

    listed = {r.name: sorted(steps[u].name for u in r.depends_on if u in steps and node(steps[u]) != node(r)) for r in steps.values()}
    assert not any(listed.values()), {k: v for k, v in listed.items() if v}
    barriers = {r.urn: r.name for r in run.of_type(STASH)}
    assert set(barriers.values()) == {"overlay-prepared", "overlay-switched-1", "overlay-switched-2", "overlay-pushed"}
    assert all(len(set(r.depends_on) & set(barriers)) <= 1 for r in steps.values())


def test_connectivity_check_covers_every_address_from_every_router() -> None:
    run = run_cached(dev_config(DEV["hub"]))
    plan = plan_of(dev_config(DEV["hub"]))
    checks = [r for r in run.of_type(COMMAND) if r.name.endswith("-connectivity-ping")]
    assert sorted(r.name for r in checks) == sorted(f"{s}-router-connectivity-ping" for s in SITES)
    addresses = {a for _, v4, v6 in plan.overlay_addresses() for a in (v4, v6)}
    assert len(addresses) == 2 * (12 + 18)
    pushes = {r.urn for r in run.of_type(COMMAND) if r.name.endswith("-config-apply")}
    for r in checks:
        words = set(r.inputs["create"].split())
        assert addresses <= words
        assert pushes <= run.waits_for(r.urn), "the check must wait for every push"


def test_connectivity_check_can_be_turned_off() -> None:
    raw = copy.deepcopy(DEV)
    raw["connectivityCheck"] = False
    run = run_program(raw)
    assert not [r for r in run.of_type(COMMAND) if r.name.endswith("-connectivity-ping")]
    assert run.outputs["connectivity"] == {}


def test_the_check_can_leave_the_verdict_to_a_pipeline() -> None:
    """connectivityCheckFailsUpdate false: the same check runs on every router, its exit on an unreachable pair
    (1) counts as success, any other failure still fails; the default fails the update."""
    def scripts(raw: dict[str, Any]) -> list[str]:
        return [str(r.inputs["create"]) for r in run_program(raw).of_type(COMMAND) if r.name.endswith("-connectivity-ping")]

    default = scripts(copy.deepcopy(DEV))
    raw = copy.deepcopy(DEV)
    raw["connectivityCheckFailsUpdate"] = False
    lenient = scripts(raw)
    assert len(default) == len(lenient) == len(DEV["sites"])
    assert all(s.startswith("sudo -n /usr/local/sbin/overlay-node check --json ") and ";" not in s for s in default)
    assert sorted(lenient) == sorted(f'{s}; rc=$?; [ "$rc" -le 1 ]' for s in default)


@pytest.mark.parametrize(("exit_code", "passes"), [(0, True), (1, True), (2, False), (127, False)])
def test_the_lenient_check_passes_an_unreachable_pair_and_nothing_else(tmp_path: Path, exit_code: int, passes: bool) -> None:
    """The lenient script under a real shell, with a stand-in sudo that exits as the check (or sudo) would."""
    (tmp_path / "sudo").write_text(f"#!/bin/sh\necho '{{\"reachable\": 0}}'\nexit {exit_code}\n")
    (tmp_path / "sudo").chmod(0o755)
    script = check_command(["10.250.1.1"], fail_on_unreachable=False)
    proc = subprocess.run(["/bin/sh", "-c", script], env={"PATH": f"{tmp_path}:/usr/bin:/bin"}, capture_output=True, text=True, timeout=30)
    assert (proc.returncode == 0) is passes
    assert proc.stdout.strip() == '{"reachable": 0}'
    strict = subprocess.run(
        ["/bin/sh", "-c", check_command(["10.250.1.1"])], env={"PATH": f"{tmp_path}:/usr/bin:/bin"}, capture_output=True, text=True, timeout=30
    )
    assert strict.returncode == exit_code


def test_a_stack_that_still_sets_the_retired_private_key_is_told_before_any_resource() -> None:
    raw = copy.deepcopy(DEV)
    raw["sshPrivateKey"] = "-----BEGIN OPENSSH PRIVATE KEY-----\nsomeone's own key\n-----END OPENSSH PRIVATE KEY-----\n"
    run = ProgramRun()
    with pytest.raises(Exception, match="sshPrivateKey is set: no longer used") as err:
        run_program(raw, into=run)
    assert "someone's own key" not in str(err.value)
    assert run.resources == []


def stack_secrets(run: ProgramRun) -> dict[str, list[str]]:
    """The credentials this run's stack generated, as its providers computed them (not a pattern): the deploy
    key, every host private key, and (encryption ipsec) every tunnel key (a pair's pre-shared key)."""
    generated = run.provider_outputs
    pair_hex = [out["hex"] for (typ, _), out in generated.items() if typ == "random:index/randomBytes:RandomBytes"]
    private = {name: out["privateKeyOpenssh"] for (typ, name), out in generated.items() if typ == "tls:index/privateKey:PrivateKey"}
    return {
        "deploy": [private.pop("deploy-key")],
        "host": list(private.values()),
        "tunnel": pair_hex,
    }


def occurs(secret: str, text: str) -> bool:
    """`secret` in `text`, also as it reads inside a JSON string (a multi-line key's newlines escaped)."""
    return secret in text or json.dumps(secret)[1:-1] in text


def test_secrets_never_appear_in_plain_outputs_or_logs() -> None:
    """The deploy key, every generated host private key and (encryption ipsec) every tunnel key stay secrets: they
    travel in the pushes (and a host key in its own node's user-data), never in a plain output or a log line."""
    from multicloud_overlay.cloudinit.render import HOST_KEY_PATH, read_payload

    run = run_cached(dev_config(DEV["hub"], encryption="ipsec"))
    plan = plan_of(dev_config(DEV["hub"], encryption="ipsec"))
    found = stack_secrets(run)
    assert len(found["tunnel"]) == len(plan.router_pairs()) == len(SITES) - 1
    assert len(found["host"]) == 2 * len(SITES)
    secrets = [s for values in found.values() for s in values]
    # The secrets do travel where they must: the deploy key and tunnel keys in the pushes, host keys in user-data.
    pushes = json.dumps([r.inputs for r in run.of_type(COMMAND)])
    assert occurs(found["deploy"][0], pushes)
    assert all(occurs(k, pushes) for k in found["tunnel"])
    texts = [decode(unsecret(u)) for r in run.resources for v in r.inputs.values() for u in user_data_strings(v)]
    assert len(texts) == 2 * len(SITES)
    pinned = {f.content.decode() for t in texts for f in read_payload(t)[0] if f.path == HOST_KEY_PATH}
    assert pinned == set(found["host"])
    # ... and every input that carries one is a secret in the state.
    for r in run.resources:
        for prop, value in r.inputs.items():
            if any(occurs(k, json.dumps(value, default=str)) for k in secrets) and unsecret(value) is value:
                raise AssertionError(f"{r.name}.{prop} carries a generated credential in plain text")
    for name, value in run.outputs.items():
        if name in run.secret_outputs:
            continue
        text = json.dumps(value, default=str)
        for secret in secrets:
            assert not occurs(secret, text), f"a generated credential leaks into stack output {name}"
    # The program does log (one summary per site: role, tunnels, protocol), and no line holds a credential.
    summaries = {line.split(":", 1)[0]: line for line in run.logs}  # logged per Site resource: in no fixed order
    assert sorted(summaries) == sorted(f"site {s} ({s}, siteId {i})" for i, s in enumerate(SITES, 1)) and len(run.logs) == len(SITES)
    for site, line in ((s, summaries[f"site {s} ({s}, siteId {i})"]) for i, s in enumerate(SITES, 1)):
        if site == DEV["hub"]:
            assert ": hub; vxlan over UDP 4789, ESP (ipsec); 5 router tunnels (azure, gcp, oci, alicloud, vsphere) and 1 to" in line
        else:
            assert f": spoke of hub {DEV['hub']}; vxlan over UDP 4789, ESP (ipsec); 1 router tunnel (aws) and 1 to" in line
    assert run.debug_logs  # the SDK's own registration messages: the channel is captured too
    for line in run.logs + run.debug_logs:
        for secret in secrets:
            assert not occurs(secret, line), f"a generated credential leaks into a log line: {line}"


def test_no_user_data_carries_a_tunnel_key_or_the_deploy_key() -> None:
    """User-data is not a secret store on any platform: it holds no tunnel credential and no deploy key, and each
    VM's holds exactly one private key, its own host key (what the push pins)."""
    from multicloud_overlay.cloudinit.render import payload_node_config

    run = run_cached(dev_config(DEV["hub"], encryption="ipsec"))
    found = stack_secrets(run)
    vms = [r for r in run.resources if any(user_data_strings(v) for v in r.inputs.values())]
    assert len(vms) == 2 * len(SITES)
    for vm in vms:
        texts = [decode(unsecret(u)) for v in vm.inputs.values() for u in user_data_strings(v)]
        # As cloud-init reads it (YAML), and the node config inside it (gzip+base64): every string, JSON-escaped.
        text = json.dumps([yaml.safe_load(t) for t in texts]) + json.dumps([payload_node_config(t) for t in texts])
        for key in found["tunnel"] + found["deploy"]:
            assert not occurs(key, text), f"{vm.name}: user-data carries a credential"
        assert sum(occurs(k, text) for k in found["host"]) == 1, f"{vm.name}: user-data carries another node's host key"
        assert text.count("PRIVATE KEY-----") == 2  # BEGIN and END of that one key
