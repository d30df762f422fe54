"""multicloud-overlay: config -> plan -> one Site per site -> exports. Wiring only."""

import pulumi

from components.config import ConfigError, parse_config
from components.exports import stack_outputs
from components.plan import build_plan
from components.site import Site, SiteArgs
from components.stack import read_pulumi_config

try:
    config = parse_config(read_pulumi_config())
except ConfigError as error:
    raise pulumi.RunError(str(error)) from None

plan = build_plan(config)
sites = {s.name: Site(s.name, SiteArgs(site=s, plan=plan, ssh_public_key=config.ssh_public_key)) for s in config.sites}
public_ips = {name: site.public_ip for name, site in sites.items()}
for site in sites.values():
    site.deploy(public_ips)

for key, value in stack_outputs(plan, sites).items():
    pulumi.export(key, value)
