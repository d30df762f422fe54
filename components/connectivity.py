"""The connectivity check `pulumi up` ends with: from every router, over SSH with the node's host key pinned, the
node script pings every overlay address (`overlay-node check --json`); an unreachable pair fails the update
(unless connectivityCheckFailsUpdate is false: then a pipeline judges the exported result)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pulumi
import pulumi_command as command

from multicloud_overlay.cloudinit.render import check_command
from multicloud_overlay.components.push import barrier, connection
from multicloud_overlay.overlay.plan import Plan, config_digest

if TYPE_CHECKING:
    from multicloud_overlay.components.site import Site


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
    fails_update: bool = True
    """An unreachable pair fails the update (False: the result is only exported, for a pipeline to judge)."""


class ConnectivityCheck(pulumi.ComponentResource):
    """Pings every overlay address from a router; a non-zero exit (an unreachable pair) fails the update."""

    def __init__(self, name: str, args: ConnectivityCheckArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("multicloud-overlay:index:ConnectivityCheck", name, None, opts)
        script = check_command(args.targets, fail_on_unreachable=args.fails_update)
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


def connectivity_checks(
    plan: Plan, sites: dict[str, Site], private_key: pulumi.Output[str], fails_update: bool = True
) -> dict[str, ConnectivityCheck]:
    """One check per router, after every node's push; re-run whenever any node's config changed."""
    pushes = [push for site in sites.values() for push in site.pushes.values()]
    pushed = barrier("overlay-pushed", pushes)
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
                after=[pushed],
                fails_update=fails_update,
            ),
            pulumi.ResourceOptions(parent=site.router),
        )
    return checks
