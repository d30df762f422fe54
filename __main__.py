"""multicloud-overlay: config -> plan -> one Site per site (+ tunnel keys) -> in-place pushes and checks -> exports. Wiring only."""

import pulumi

from components.config import ConfigError, parse_config
from components.exports import stack_outputs
from components.keys import TunnelKeys, TunnelKeysArgs
from components.plan import build_plan
from components.push import connectivity_checks
from components.site import Site, SiteArgs
from components.stack import read_private_key, read_pulumi_config

try:
    config = parse_config(read_pulumi_config(), require_private_key=True)
except ConfigError as error:
    raise pulumi.RunError(str(error)) from None

plan = build_plan(config)
private_key = read_private_key()
sites = {s.name: Site(s.name, SiteArgs(site=s, plan=plan, ssh_public_key=config.ssh_public_key)) for s in config.sites}
public_ips = {name: site.public_ip for name, site in sites.items()}
tunnel_keys = TunnelKeys("ipsec", TunnelKeysArgs(plan)) if plan.encrypted else None
for site in sites.values():
    site.deploy(public_ips, private_key, tunnel_keys)
checks = connectivity_checks(plan, sites, private_key) if config.connectivity_check else {}

for key, value in stack_outputs(plan, sites, checks).items():
    pulumi.export(key, value)
