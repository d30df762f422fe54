"""One table-driven test over every registered platform, in the six-platform dev stack, with each site as hub:
every site gets its provider, a reserved public address, a two-NIC router and a client whose user-data is the
planned payload, and no rule of any platform admits the whole internet."""

from __future__ import annotations

import importlib
import json

import pytest

from multicloud_overlay.cloudinit.render import payload_node_config
from multicloud_overlay.components.clouds.base import PlatformSite
from multicloud_overlay.components.clouds.registry import PLATFORMS as REGISTRY
from multicloud_overlay.overlay.plan import bootstrap_config, node_config
from tests.harness import ProgramRun, Registered, decode, mock_pair_keys, plan_of, run_cached, unsecret, user_data_strings
from tests.test_inplace import DEV, SITES, dev_config, is_rule

PLATFORMS = sorted(REGISTRY)


def site_component(run: ProgramRun, site: str) -> Registered:
    return run.named(site, "multicloud-overlay:index:Site")


def test_every_registered_platform_has_its_module_and_is_in_the_dev_stack() -> None:
    """Each registry entry names itself, and its module builds sites (a PlatformSite); the dev stack, which the
    table tests below run, has one site of every registered platform."""
    for name, traits in REGISTRY.items():
        assert traits.name == name == traits.limits.platform
        factory = importlib.import_module(traits.site_module).PLATFORM_SITE
        assert isinstance(factory, type) and issubclass(factory, PlatformSite), traits.site_module
    assert sorted(s["platform"] for s in DEV["sites"].values()) == PLATFORMS


@pytest.mark.parametrize("hub", SITES)
def test_every_site_is_complete_whoever_is_hub(hub: str) -> None:
    run, plan = run_cached(dev_config(hub)), plan_of(dev_config(hub))
    ips = run.outputs["publicIps"]
    for site in SITES:
        platform = DEV["sites"][site]["platform"]
        component = site_component(run, site)
        below = run.descendants_of(component.urn)
        providers = [r for r in below if r.type.startswith("pulumi:providers:")]
        assert providers, f"{site}: no explicit provider"
        # Every cloud resource of the site uses one of the site's own providers (pulumi-command/tls are local).
        own = {f"{p.urn}::{p.name}-id" for p in providers}
        for r in below:
            if r.custom and not r.type.startswith(("pulumi:providers:", "command:", "tls:")):
                assert r.provider in own, f"{site}: {r.type} {r.name} uses {r.provider}"
        # The router and the client carry their own planned payload.
        for node in (plan.router(site), plan.client(site)):
            vm_component = run.named(node.name, f"multicloud-overlay:index:{'OverlayRouter' if node.kind == 'router' else 'OverlayClient'}")
            payloads = [s for r in run.descendants_of(vm_component.urn) if r.custom for s in user_data_strings(r.inputs)]
            assert len(payloads) == 1, f"{node.name}: {len(payloads)} payloads"
            assert payload_node_config(decode(payloads[0])) == bootstrap_config(plan, node.name), node.name
            push = run.named(f"{node.name}-config-apply", "command:remote:Command")
            assert json.loads(unsecret(push.inputs["stdin"])) == node_config(plan, node.name, ips, pair_keys=mock_pair_keys(plan))
        # The router's public address is the one every peer's pushed config names, and the one exported.
        assert ips[site] and ips[site] == run.outputs["sites"][site]["publicIp"]
        assert run.outputs["sites"][site]["tunnelPeers"] == list(plan.peer_sites(site))
        assert run.outputs["nodes"][f"{site}-router"]["role"] == ("hub" if site == hub else "spoke")
        package = {"azure": "azure-native"}.get(platform, platform)
        assert package in {r.type.split(":")[0] for r in below if r.custom}, f"{site}: no {package} resource"


@pytest.mark.parametrize("hub", SITES)
def test_no_rule_of_any_platform_admits_the_whole_internet(hub: str) -> None:
    run = run_cached(dev_config(hub))
    rules = [r for r in run.resources if r.custom and is_rule(r.name)]
    assert len(rules) > 6 * 8
    for r in rules:
        text = json.dumps(r.inputs)
        assert '"0.0.0.0/0"' not in text and '"::/0"' not in text, f"{r.type} {r.name}: {text}"
    edges = [run.outputs["sites"][s].get("edgeRules") for s in SITES if DEV["sites"][s]["platform"] == "vsphere"]
    assert edges and all(e for e in edges)
    for edge in edges:
        assert all(rule["source"] not in ("0.0.0.0/0", "::/0") for rule in edge)


@pytest.mark.parametrize("encryption", ["ipsec", "none"])
def test_peer_tunnel_rules_follow_the_encryption_on_every_platform(encryption: str) -> None:
    """With ipsec (the default) every platform admits a peer router on UDP 4500 (ESP in UDP) and no longer on the
    tunnel port; in clear, on the tunnel port only. The site-local client tunnel stays on the tunnel port."""
    run = run_cached(dev_config("aws", encryption=encryption))
    want, never = ("4500", "4789") if encryption == "ipsec" else ("4789", "4500")
    # One rule per peer (aws-...-tunnel-from-gcp), or one for all peers (Azure, GCP: ...-tunnel-from-peers-...).
    peers = (*SITES, "peers")
    peer_rules = [
        r for r in run.resources if r.custom and "-tunnel-from-" in r.name and r.name.split("-tunnel-from-")[-1].startswith(peers)
    ]
    assert {r.name.split("-")[0] for r in peer_rules} == set(SITES) - {"vsphere"}  # vSphere's are edge rules (below)
    for r in peer_rules:
        text = json.dumps(unsecret(r.inputs), default=str)
        assert want in text and never not in text, f"{r.type} {r.name}: {text}"
    lan_rules = [
        r for r in run.resources if r.custom and r.name.endswith(("-tunnel-from-lan", "-tunnel-from-router", "-tunnel-from-lan-4789"))
    ]
    assert lan_rules and all("4789" in json.dumps(r.inputs) for r in lan_rules)
    edge = {rule["name"]: rule for rule in run.outputs["sites"]["vsphere"]["edgeRules"]}
    assert edge["tunnel-from-aws"]["port"] == int(want)
    keys = run.of_type("random:index/randomBytes:RandomBytes")
    assert len(keys) == (len(SITES) - 1 if encryption == "ipsec" else 0)


# Every platform component's Pulumi type token, written out. A token is part of the URN of the component and of every
# resource under it: a changed token replaces them on a running stack. Two classes were renamed for consistency
# (GcpFirewall -> GcpSecurityPolicy, VsphereEdgePolicy -> VsphereSecurityPolicy) and keep their earlier tokens.
PLATFORM_TOKENS = {
    "multicloud-overlay:alicloud:AlicloudMachine",
    "multicloud-overlay:alicloud:AlicloudNetwork",
    "multicloud-overlay:alicloud:AlicloudPublicAddress",
    "multicloud-overlay:alicloud:AlicloudSecurityPolicy",
    "multicloud-overlay:aws:AwsMachine",
    "multicloud-overlay:aws:AwsNetwork",
    "multicloud-overlay:aws:AwsPublicAddress",
    "multicloud-overlay:aws:AwsSecurityPolicy",
    "multicloud-overlay:azure:AzureMachine",
    "multicloud-overlay:azure:AzureNetwork",
    "multicloud-overlay:azure:AzurePublicAddress",
    "multicloud-overlay:azure:AzureSecurityPolicy",
    "multicloud-overlay:gcp:GcpFirewall",
    "multicloud-overlay:gcp:GcpMachine",
    "multicloud-overlay:gcp:GcpNetwork",
    "multicloud-overlay:gcp:GcpPublicAddress",
    "multicloud-overlay:oci:OciMachine",
    "multicloud-overlay:oci:OciNetwork",
    "multicloud-overlay:oci:OciPublicAddress",
    "multicloud-overlay:oci:OciSecurityPolicy",
    "multicloud-overlay:vsphere:VsphereEdgePolicy",
    "multicloud-overlay:vsphere:VsphereInventory",
    "multicloud-overlay:vsphere:VsphereMachine",
}


def test_platform_component_type_tokens_are_unchanged() -> None:
    run = run_cached(dev_config("aws"))
    registered = {r.type for r in run.resources if r.type.startswith("multicloud-overlay:") and ":index:" not in r.type}
    assert registered == PLATFORM_TOKENS


def test_renamed_components_keep_their_earlier_tokens() -> None:
    from multicloud_overlay.components.clouds import gcp, vsphere

    assert gcp.GcpSecurityPolicy.TYPE_TOKEN == "multicloud-overlay:gcp:GcpFirewall"
    assert vsphere.VsphereSecurityPolicy.TYPE_TOKEN == "multicloud-overlay:vsphere:VsphereEdgePolicy"


# Where each platform's VM carries its size, as the size setting's value would appear there.
VM_SIZES = {
    "aws": ("aws:ec2/instance:Instance", lambda i: i["instanceType"]),
    "azure": ("azure-native:compute:VirtualMachine", lambda i: i["hardwareProfile"]["vmSize"]),
    "gcp": ("gcp:compute/instance:Instance", lambda i: i["machineType"]),
    "oci": ("oci:Core/instance:Instance", lambda i: i["shape"]),
    "alicloud": ("alicloud:ecs/instance:Instance", lambda i: i["instanceType"]),
    "vsphere": ("vsphere:index/virtualMachine:VirtualMachine", lambda i: f"{int(i['numCpus'])}x{int(i['memory'])}"),
}


@pytest.mark.parametrize("platform", PLATFORMS)
def test_default_sizes_are_the_traits_record(platform: str) -> None:
    """A site without routerSize / clientSize gets the sizes its traits record states (the README documents them from
    there): the record is the one place of the defaults."""
    run, plan = run_cached(dev_config("aws")), plan_of(dev_config("aws"))
    site = next(name for name, body in DEV["sites"].items() if body["platform"] == platform)
    assert "routerSize" not in DEV["sites"][site] and "clientSize" not in DEV["sites"][site]
    typ, size_of = VM_SIZES[platform]
    nodes = REGISTRY[platform].nodes
    for node, expected in ((plan.router(site), nodes.router_size), (plan.client(site), nodes.client_size)):
        vm_component = run.named(node.name, f"multicloud-overlay:index:{'OverlayRouter' if node.kind == 'router' else 'OverlayClient'}")
        (vm,) = [r for r in run.descendants_of(vm_component.urn) if r.type == typ]
        assert size_of(vm.inputs) == expected, node.name
