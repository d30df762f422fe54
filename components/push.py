"""In-place configuration: push each node's config over SSH when it changes (the check that follows: connectivity.py).

VMs boot with a bootstrap config from their user-data (their own site only, no credential) and ignore later
user-data changes, so a hub swap, a protocol switch, an MTU or container-count change never replaces a VM.
Each node gets a remote command whose stdin is its full node config and whose `triggers` carry that config's
digest: it runs once the VM is up (create), and again only when the node's config changed (its `update`, the
same command). Nothing travels as SSH environment variables: a stock Debian or Ubuntu sshd accepts only
LANG and LC_* (AcceptEnv), and pulumi-command fails a command whose variables the server refuses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_command as command

from multicloud_overlay.cloudinit.render import push_command
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
    """Installs a node's config and converges the node in place, whenever (and only when) the config changes."""

    def __init__(self, name: str, args: NodeConfigPushArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("multicloud-overlay:index:NodeConfigPush", name, None, opts)
        script = push_command()
        self.digest: pulumi.Output[str] = args.doc.apply(config_digest)
        self.command = command.remote.Command(
            f"{name}-apply",
            connection=connection(args.host, args.private_key, args.host_key),
            create=script,
            update=script,
            stdin=args.doc.apply(node_doc_json),
            triggers=[self.digest],
            add_previous_output_in_env=False,  # a stock sshd refuses PULUMI_COMMAND_STDOUT/STDERR (AcceptEnv LANG LC_*)
            opts=pulumi.ResourceOptions(parent=self, depends_on=[args.machine]),
        )
        self.register_outputs({"digest": self.digest, "stdout": self.command.stdout})
