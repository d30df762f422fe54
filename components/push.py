"""In-place configuration: push each node's config over SSH when it changes (the check that follows: connectivity.py).

VMs boot with a bootstrap config from their user-data (their own site only, no credential) and ignore later
user-data changes, so a hub swap, a protocol switch, an MTU or container-count change never replaces a VM.
Each node gets a remote command that installs the whole node script (`<node>-config-script`: user-data carries only
the part that applies the bootstrap config, pinned by its SHA-256), once per VM and script, then one whose stdin is
its full node config and whose `triggers` carry that config's digest and the VM's id: it runs once the VM is up
(create), and again only when the node's config changed or the VM was replaced (its `update`, the same command).
A router's change takes two make-before-break steps first, ordered across the stack by `order_pushes`: every
router prepares (new tunnels beside the old ones), then switches (the new hub first), then gets the push itself
(old tunnels removed); see overlay_node.transition. Nothing travels as SSH environment variables: a stock Debian or
Ubuntu sshd accepts only LANG and LC_* (AcceptEnv), and pulumi-command fails a command whose variables the server
refuses.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_command as command

from multicloud_overlay.cloudinit.render import install_script_command, node_script_sha256, packed_node_script, push_command
from multicloud_overlay.components.clouds.base import SSH_USER
from multicloud_overlay.overlay.plan import config_digest


def node_doc_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


@dataclass
class NodeConfigPushArgs:
    host: pulumi.Input[str]
    """Address to SSH to (public address; on vSphere the management address)."""
    doc: pulumi.Output[dict[str, Any]]
    """The node config (plan.node_config) to install and apply."""
    private_key: pulumi.Output[str]
    """The stack's deploy key (secret), authorized for the login user."""
    host_key: pulumi.Input[str]
    """The node's SSH host public key (OpenSSH format): the connection is refused if the node shows another."""
    machine: pulumi.Resource
    """The VM: the push waits for it."""
    vm_id: pulumi.Input[str]
    """The VM's provider id: a new one (the VM was replaced) installs the node script and pushes the config again."""
    phased: bool = False
    """Make-before-break (routers): prepare and switch commands before the push."""


def connection(host: pulumi.Input[str], private_key: pulumi.Output[str], host_key: pulumi.Input[str]) -> command.remote.ConnectionArgs:
    return command.remote.ConnectionArgs(
        host=host,
        user=SSH_USER,
        private_key=private_key,
        host_key=host_key,
        dial_error_limit=60,  # a new VM needs a minute or two before sshd answers
        per_dial_timeout=10,
    )


class NodeConfigPush(pulumi.ComponentResource):
    """Installs a node's config and converges the node in place, whenever (and only when) the config changes.

    Built in steps, because the phases of all routers are ordered against each other (order_pushes): the
    constructor makes the prepare command (phased), `switch` the switch command, `finish` the push itself."""

    def __init__(self, name: str, args: NodeConfigPushArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("multicloud-overlay:index:NodeConfigPush", name, None, opts)
        self.name, self.args = name, args
        self.digest: pulumi.Output[str] = args.doc.apply(config_digest)
        self.phases: dict[str, command.remote.Command] = {}
        # The whole node script first (user-data carries only what applies the bootstrap config): once per VM (a
        # replaced VM has a new id) and whenever the script changes, not on every config change.
        script = install_script_command()
        self.script = command.remote.Command(
            f"{name}-script",
            connection=connection(args.host, args.private_key, args.host_key),
            create=script,
            update=script,
            stdin=packed_node_script(),
            triggers=[args.vm_id, node_script_sha256()],
            add_previous_output_in_env=False,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[args.machine]),
        )
        if args.phased:
            self.phases["prepare"] = self._command("prepare", [])

    def _command(self, phase: str | None, after: Sequence[pulumi.Resource]) -> command.remote.Command:
        script = push_command(phase)
        return command.remote.Command(
            f"{self.name}-{phase or 'apply'}",
            connection=connection(self.args.host, self.args.private_key, self.args.host_key),
            create=script,
            update=script,
            stdin=self.args.doc.apply(node_doc_json),
            triggers=[self.digest, self.args.vm_id],  # a replaced VM boots its bootstrap config: push it the full one
            add_previous_output_in_env=False,  # a stock sshd refuses PULUMI_COMMAND_STDOUT/STDERR (AcceptEnv LANG LC_*)
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.args.machine, self.script, *after]),
        )

    def switch(self, after: Sequence[pulumi.Resource]) -> None:
        if self.args.phased:
            self.phases["switch"] = self._command("switch", after)

    def finish(self, after: Sequence[pulumi.Resource]) -> None:
        """The push itself (`command`): installs the config and converges the node to it."""
        self.command = self._command(None, after)
        self.register_outputs({"digest": self.digest, "stdout": self.command.stdout})


def barrier(name: str, after: Sequence[pulumi.Resource]) -> pulumi.Resource:
    """One resource that is created (or left as it is) once every resource in `after` is: m resources that wait for it
    list one dependency each instead of all n, and the program states n + m dependencies instead of n × m.

    The Pulumi SDK checks every dependency a program states for a cycle by walking the graph declared so far, so
    n × m of them made a 100-site program (its every router's switch and push waiting for every router's earlier
    steps) spend most of its time there. The barrier is the engine's built-in Stash resource, which needs no
    provider plugin and holds only its name: https://www.pulumi.com/docs/iac/concepts/stash/ (an engine from before
    https://github.com/pulumi/pulumi/pull/20819 refuses it as an unrecognized resource type; README: a CLI no older
    than the pinned SDK)."""
    return pulumi.Stash(name, input=name, opts=pulumi.ResourceOptions(depends_on=list(after)))


def order_pushes(pushes: Mapping[str, NodeConfigPush], waves: Sequence[Sequence[str]]) -> None:
    """Create every switch and push command in make-before-break order: a router switches once every router has
    prepared and every router of the waves before its own has switched; its push (the last step) waits for every
    switch. Clients (not phased) push at once. A run in which only some configs changed runs only their commands,
    in the same order. Each stage ends in a `barrier` that the next stage waits for."""
    ready = barrier("overlay-prepared", [p.phases["prepare"] for p in pushes.values() if "prepare" in p.phases])
    for i, wave in enumerate(waves, 1):
        for node in wave:
            pushes[node].switch([ready])
        ready = barrier(f"overlay-switched-{i}", [ready, *(pushes[n].phases["switch"] for n in wave if "switch" in pushes[n].phases)])
    for p in pushes.values():
        p.finish([ready] if p.args.phased else [])
