"""In-place configuration: push each node's config over SSH when it changes, then check the overlay.

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
from typing import TYPE_CHECKING, Any

import pulumi
import pulumi_command as command

from cloudinit.render import check_command, push_command
from components.clouds.base import SSH_USER
from components.plan import Plan, config_digest

if TYPE_CHECKING:
    from components.site import Site


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


@dataclass
class ConnectivityCheckArgs:
    host: pulumi.Input[str]
    """Address to SSH to (the router)."""
    targets: list[str]
    """Every overlay address (nodes and containers, IPv4 and IPv6)."""
    overlay_digest: pulumi.Output[str]
    """Digest of every node config: the check runs again whenever any node changed."""
    private_key: pulumi.Output[str]
    host_key: pulumi.Input[str]
    after: list[pulumi.Resource]
    """Every node's push: the check runs once the whole overlay is configured."""


class ConnectivityCheck(pulumi.ComponentResource):
    """Pings every overlay address from a router; a non-zero exit (an unreachable pair) fails the update."""

    def __init__(self, name: str, args: ConnectivityCheckArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("multicloud-overlay:index:ConnectivityCheck", name, None, opts)
        script = check_command(args.targets)
        self.command = command.remote.Command(
            f"{name}-ping",
            connection=connection(args.host, args.private_key, args.host_key),
            create=script,
            update=script,
            triggers=[args.overlay_digest],
            add_previous_output_in_env=False,
            opts=pulumi.ResourceOptions(parent=self, depends_on=args.after),
        )
        self.result: pulumi.Output[Any] = self.command.stdout.apply(parse_check_output)
        self.register_outputs({"result": self.result})


def parse_check_output(stdout: str) -> Any:
    try:
        return json.loads(stdout.strip().splitlines()[-1]) if stdout.strip() else None
    except (json.JSONDecodeError, IndexError):
        return {"raw": stdout}


def check_targets(plan: Plan) -> list[str]:
    return [a for _, v4, v6 in plan.overlay_addresses() for a in (v4, v6)]


def combined_digest(digests: list[str]) -> str:
    return config_digest({"nodes": sorted(digests)})


def connectivity_checks(plan: Plan, sites: dict[str, Site], private_key: pulumi.Output[str]) -> dict[str, ConnectivityCheck]:
    """One check per router, after every node's push; re-run whenever any node's config changed."""
    pushes = [push for site in sites.values() for push in site.pushes.values()]
    digest = pulumi.Output.all(*[p.digest for p in pushes]).apply(combined_digest)
    targets = check_targets(plan)
    checks: dict[str, ConnectivityCheck] = {}
    for name, site in sites.items():
        router = plan.router(name).name
        assert site.router is not None
        checks[router] = ConnectivityCheck(
            f"{router}-connectivity",
            ConnectivityCheckArgs(
                host=site.router.management_ip,
                targets=targets,
                overlay_digest=digest,
                private_key=private_key,
                host_key=site.host_keys[router],
                after=list(pushes),
            ),
            pulumi.ResourceOptions(parent=site.router),
        )
    return checks
