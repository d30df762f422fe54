"""multicloud-overlay: config -> plan -> one Site per site (+ tunnel keys) -> in-place pushes and checks -> exports. Wiring only."""

import pulumi

from multicloud_overlay.components.connectivity import connectivity_checks
from multicloud_overlay.components.credentials import DeployKey, TunnelKeys, TunnelKeysArgs
from multicloud_overlay.components.exports import stack_outputs
from multicloud_overlay.components.limits import checked_plan
from multicloud_overlay.components.site import Site, SiteArgs, deploy_sites
from multicloud_overlay.components.stack_config import read_pulumi_config
from multicloud_overlay.overlay.config import ConfigError, parse_config

try:
    config = parse_config(read_pulumi_config())
    plan = checked_plan(config)  # every platform's documented limits, before the first resource
except ConfigError as error:
    raise pulumi.RunError(str(error)) from None

deploy_key = DeployKey("deploy")
sites = {s.name: Site(s.name, SiteArgs(s, plan, config.ssh_public_key, deploy_key.public_key)) for s in config.sites}
tunnel_keys = TunnelKeys("ipsec", TunnelKeysArgs(plan)) if plan.encrypted else None
deploy_sites(sites, deploy_key.private_key, tunnel_keys)
checks = connectivity_checks(plan, sites, deploy_key.private_key, config.connectivity_check_fails_update) if config.connectivity_check else {}

for key, value in stack_outputs(plan, sites, checks).items():
    pulumi.export(key, value)
