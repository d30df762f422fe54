"""Azure under mocks: NICs, forwarding, reserved addresses, scoped NSG rules, payloads, stable names and priorities,
explicit providers; and the building blocks on their own."""

from __future__ import annotations

import base64
import copy
import ipaddress
import itertools
import re
from collections import Counter
from typing import Any

import pytest
import yaml

from multicloud_overlay.cloudinit.render import LOGIN_USER, payload_node_config
from multicloud_overlay.components.clouds import azure, azure_traits
from multicloud_overlay.components.limits import check_limits
from multicloud_overlay.components.stack_file import read_stack_file
from multicloud_overlay.overlay.config import parse_config
from multicloud_overlay.overlay.plan import bootstrap_config, build_plan
from multicloud_overlay.overlay.security import is_open_to_world
from tests.harness import ROOT, ProgramRun, Registered, plan_of, run_cached, run_program, run_standalone
from tests.mockdata.azure import public_ip_for

DEV = read_stack_file(ROOT / "Pulumi.dev.yaml")
SITES = ("azurea", "azureb", "azurec")
REGIONS = {"azurea": "westeurope", "azureb": "northeurope", "azurec": "eastus", "azured": "westus2"}
ADMIN = str(DEV["adminCidr"])

VM = "azure-native:compute:VirtualMachine"
NIC = "azure-native:network:NetworkInterface"
PIP = "azure-native:network:PublicIPAddress"
NSG = "azure-native:network:NetworkSecurityGroup"
RULE = "azure-native:network:SecurityRule"
SUBNET = "azure-native:network:Subnet"
VNET = "azure-native:network:VirtualNetwork"
PROVIDER = "pulumi:providers:azure-native"


def site_body(name: str, site_id: int, **extra: Any) -> dict[str, Any]:
    return {
        "platform": "azure",
        "siteId": site_id,
        "region": REGIONS[name],
        "vpcCidr": f"10.{site_id}.0.0/16",
        "wanCidr": f"10.{site_id}.1.0/24",
        "lanCidr": f"10.{site_id}.2.0/24",
        **extra,
    }


def azure_config(sites: tuple[str, ...] = SITES, hub: str = "azurea", protocol: str = "vxlan", **site_extra: Any) -> dict[str, Any]:
    """Pulumi.dev.yaml with only Azure sites (the other top-level keys kept)."""
    raw = copy.deepcopy(DEV)
    raw["sites"] = {name: site_body(name, i + 1, **site_extra) for i, name in enumerate(sites)}
    # Clear tunnels: these tests pin each rule's tunnel port in detail. The default (ipsec) is what
    # tests/test_platforms.py (every platform, each site as hub) and tests/test_limits_*.py (every platform as hub and
    # as spoke, registered resources against the recorded limits) deploy.
    raw.update(hub=hub, protocol=protocol, encryption="none")
    return raw


def by_key(run: ProgramRun) -> dict[tuple[str, str], Registered]:
    return {(r.type, r.name): r for r in run.resources}


def one(run: ProgramRun, typ: str, name: str) -> Registered:
    """The resource of type `typ` named `name` (components of other types may share the name)."""
    found = [r for r in run.of_type(typ) if r.name == name]
    assert len(found) == 1, f"{len(found)} {typ} named {name}"
    return found[0]


def site_urn(run: ProgramRun, site: str) -> str:
    return next(r.urn for r in run.of_type("multicloud-overlay:index:Site") if r.name == site)


def nsg_rules_of(run: ProgramRun, node: str) -> list[Registered]:
    policy = next(r for r in run.of_type("multicloud-overlay:azure:AzureSecurityPolicy") if r.name == node)
    return [r for r in run.children_of(policy.urn) if r.type == RULE]


def prefixes(r: Registered) -> list[str]:
    """A rule's sources: one prefix, or the list of an augmented rule (never both)."""
    one, many = r.inputs.get("sourceAddressPrefix"), r.inputs.get("sourceAddressPrefixes")
    assert (one is None) != (many is None), f"{r.name}: {one!r} / {many!r}"
    return [one] if one is not None else list(many or [])


def allow_rules(rules: list[Registered]) -> list[Registered]:
    return [r for r in rules if r.inputs["access"] == "Allow"]


def rule_sources(rules: list[Registered], protocol: str, port: int | None) -> set[str]:
    return {
        p
        for r in allow_rules(rules)
        if r.inputs["protocol"] == protocol and r.inputs["destinationPortRange"] == (str(port) if port else "*")
        for p in prefixes(r)
    }


def deploy_public_key(run: ProgramRun) -> str:
    return run.provider_outputs[("tls:index/privateKey:PrivateKey", "deploy-key")]["publicKeyOpenssh"].strip()


# ------------------------------------------------------------------------------------------------ machines


@pytest.mark.parametrize("site", SITES)
def test_router_has_two_forwarding_nics_exactly_one_primary(site: str) -> None:
    run, plan = run_cached(azure_config()), plan_of(azure_config())
    node = plan.router(site)
    vm = one(run, VM, f"{site}-router-vm")
    refs = vm.inputs["networkProfile"]["networkInterfaces"]
    wan, lan = one(run, NIC, f"{site}-router-wan"), one(run, NIC, f"{site}-router-lan")
    assert [r["id"] for r in refs] == [f"{wan.name}-id", f"{lan.name}-id"]
    assert [bool(r.get("primary")) for r in refs] == [True, False]
    for nic, subnet, ip in ((wan, f"{site}-wan", node.wan_ip), (lan, f"{site}-lan", node.lan_ip)):
        assert nic.inputs["enableIPForwarding"] is True
        v4, v6 = nic.inputs["ipConfigurations"]
        assert v4["primary"] is True and v4["privateIPAddressVersion"] == "IPv4"
        assert v4["privateIPAllocationMethod"] == "Static" and v4["privateIPAddress"] == ip
        assert v6["privateIPAddressVersion"] == "IPv6" and not v6.get("primary")
        assert v4["subnet"]["id"] == v6["subnet"]["id"] == f"{subnet}-id"
    # Both NICs in the one VNet of the site.
    assert {one(run, SUBNET, f"{site}-{role}").inputs["virtualNetworkName"] for role in ("wan", "lan")} == {f"{site}-vnet"}
    assert vm.inputs["hardwareProfile"]["vmSize"] == "Standard_B2s"  # the documented default routerSize
    assert vm.inputs["storageProfile"]["imageReference"] == {
        "publisher": "Canonical",
        "offer": "ubuntu-24_04-lts",
        "sku": "server",
        "version": "latest",
    }
    linux = vm.inputs["osProfile"]["linuxConfiguration"]
    # The admin user is the payload's login user, with the stack's deploy key (Azure requires a user and a key).
    assert vm.inputs["osProfile"]["adminUsername"] == LOGIN_USER
    assert linux["disablePasswordAuthentication"] is True
    assert linux["ssh"]["publicKeys"] == [{"path": f"/home/{LOGIN_USER}/.ssh/authorized_keys", "keyData": deploy_public_key(run)}]


@pytest.mark.parametrize("site", SITES)
def test_client_has_one_lan_nic_with_a_static_management_address(site: str) -> None:
    run, plan = run_cached(azure_config()), plan_of(azure_config())
    vm = one(run, VM, f"{site}-client-vm")
    nic = one(run, NIC, f"{site}-client-lan")
    assert vm.inputs["networkProfile"]["networkInterfaces"] == [{"id": f"{nic.name}-id", "primary": True, "deleteOption": "Delete"}]
    v4 = nic.inputs["ipConfigurations"][0]
    assert v4["privateIPAddress"] == plan.client(site).lan_ip and v4["subnet"]["id"] == f"{site}-lan-id"
    assert v4["publicIPAddress"]["id"] == f"{site}-client-mgmt-ip-id"
    assert not nic.inputs.get("enableIPForwarding")
    mgmt = one(run, PIP, f"{site}-client-mgmt-ip")
    assert mgmt.inputs["publicIPAllocationMethod"] == "Static" and mgmt.inputs["sku"]["name"] == "Standard"
    summary = run.outputs["nodes"][f"{site}-client"]
    assert summary["managementIp"] == public_ip_for(mgmt.name)
    assert summary["privateIps"] == {"lan": plan.client(site).lan_ip}


@pytest.mark.parametrize("site", SITES)
def test_router_public_address_is_reserved_and_on_the_wan_nic(site: str) -> None:
    run = run_cached(azure_config())
    pip = one(run, PIP, f"{site}-router-wan-ip")
    assert pip.inputs["sku"]["name"] == "Standard"
    assert pip.inputs["publicIPAllocationMethod"] == "Static"
    assert pip.inputs["publicIPAddressVersion"] == "IPv4"
    wan_v4 = one(run, NIC, f"{site}-router-wan").inputs["ipConfigurations"][0]
    assert wan_v4["publicIPAddress"]["id"] == f"{pip.name}-id"
    assert all("publicIPAddress" not in c for c in one(run, NIC, f"{site}-router-lan").inputs["ipConfigurations"])
    assert run.outputs["publicIps"][site] == public_ip_for(pip.name)
    assert run.outputs["nodes"][f"{site}-router"]["managementIp"] == public_ip_for(pip.name)
    # Reserved in prepare(), before and outside any VM.
    assert pip.parent != one(run, VM, f"{site}-router-vm").parent


def test_resources_per_site() -> None:
    run = run_cached(azure_config())
    counts = Counter(r.type for r in run.resources if r.type.startswith("azure-native:") or r.type == PROVIDER)
    per_site = {t: n / len(SITES) for t, n in counts.items()}
    assert per_site == {
        PROVIDER: 1,
        "azure-native:resources:ResourceGroup": 1,
        VNET: 1,
        SUBNET: 2,
        PIP: 2,
        NSG: 2,
        NIC: 3,
        VM: 2,
        # Router: the peers' tunnel and ICMP (one augmented rule each, whatever the peers), LAN tunnel, LAN ICMP, SSH,
        # admin ICMP and the 2 VNet deny rules; client: 4 + 2 deny.
        RULE: 2 + 4 + 2 + 4 + 2,
    }


# ------------------------------------------------------------------------------------------------ security


@pytest.mark.parametrize("protocol", ["vxlan", "geneve"])
def test_every_nsg_rule_is_scoped(protocol: str) -> None:
    run, plan = run_cached(azure_config(protocol=protocol)), plan_of(azure_config(protocol=protocol))
    port = {"vxlan": 4789, "geneve": 6081}[protocol]
    assert plan.port == port
    rules = allow_rules(run.of_type(RULE))
    assert rules
    for r in rules:
        inputs = r.inputs
        assert inputs["direction"] == "Inbound"
        for source in prefixes(r):
            assert not is_open_to_world(source), f"{r.name} admits {source}"
            assert source not in ("*", "Internet", "Any") and ipaddress.ip_network(source).prefixlen > 0
        assert len({ipaddress.ip_network(p).version for p in prefixes(r)}) == 1  # Azure refuses mixed families
        assert inputs["protocol"] in ("Udp", "Tcp", "Icmp")
        if inputs["protocol"] == "Tcp":
            assert (inputs["destinationPortRange"], prefixes(r)) == ("22", [ADMIN]), f"{r.name}: TCP only for SSH from adminCidr"
        if inputs["protocol"] == "Udp":
            assert inputs["destinationPortRange"] == str(port)
    ips = run.outputs["publicIps"]
    for site in SITES:
        router_rules = nsg_rules_of(run, f"{site}-router")
        peers = {f"{ips[p]}/32" for p in plan.peer_sites(site)}
        assert rule_sources(router_rules, "Udp", port) == peers | {str(plan.config.site(site).lan_cidr)}
        assert all(ipaddress.ip_network(p).prefixlen == 32 for p in peers)
        assert rule_sources(router_rules, "Tcp", 22) == {ADMIN}
        client_rules = nsg_rules_of(run, f"{site}-client")
        assert rule_sources(client_rules, "Udp", port) == {f"{plan.router(site).lan_ip}/32"}
        assert rule_sources(client_rules, "Tcp", 22) == {ADMIN}


def test_every_nic_carries_its_nodes_nsg() -> None:
    run = run_cached(azure_config())
    for site in SITES:
        for node, roles in ((f"{site}-router", ("wan", "lan")), (f"{site}-client", ("lan",))):
            for role in roles:
                assert one(run, NIC, f"{node}-{role}").inputs["networkSecurityGroup"] == {"id": f"{node}-nsg-id"}
            assert all(r.inputs["networkSecurityGroupName"] == f"{node}-nsg" for r in nsg_rules_of(run, node))
    # NSGs are on the NICs, not on the subnets.
    assert all("networkSecurityGroup" not in s.inputs for s in run.of_type(SUBNET))


@pytest.mark.parametrize("hub", SITES)
def test_hub_rules_admit_exactly_the_expected_peers(hub: str) -> None:
    run, plan = run_cached(azure_config(hub=hub)), plan_of(azure_config(hub=hub))
    ips = run.outputs["publicIps"]
    for site in SITES:
        expected_peers = [s for s in SITES if s != site] if site == hub else [hub]
        assert sorted(plan.peer_sites(site)) == sorted(expected_peers)
        rules = nsg_rules_of(run, f"{site}-router")
        assert rule_sources(rules, "Udp", plan.port) == {f"{ips[p]}/32" for p in expected_peers} | {str(plan.config.site(site).lan_cidr)}
        assert rule_sources(rules, "Icmp", None) == {f"{ips[p]}/32" for p in expected_peers} | {str(plan.config.site(site).lan_cidr), ADMIN}
        names = {r.inputs["securityRuleName"] for r in rules}
        assert names == {
            "tunnel-from-peers",
            "icmp-from-peers",
            "tunnel-from-lan",
            "icmp-from-lan",
            "ssh-admin",
            "icmp-admin",
            "deny-vnet-ipv4",
            "deny-vnet-ipv6",
        }
        by_name = {r.inputs["securityRuleName"]: r for r in rules}
        in_order = [f"{ips[p]}/32" for p in sorted(expected_peers, key=plan.site_id)]
        assert by_name["tunnel-from-peers"].inputs["sourceAddressPrefixes"] == in_order  # siteId order: stable


def test_priorities_are_unique_per_nsg() -> None:
    for hub in SITES:
        run = run_cached(azure_config(hub=hub))
        for policy in run.of_type("multicloud-overlay:azure:AzureSecurityPolicy"):
            priorities = [r.inputs["priority"] for r in nsg_rules_of(run, policy.name)]
            assert len(priorities) == len(set(priorities))
            assert all(azure.PRIORITY_MIN <= p <= azure.PRIORITY_MAX for p in priorities)


@pytest.mark.parametrize(("old_hub", "new_hub"), list(itertools.permutations(SITES, 2)))
def test_hub_swap_only_updates_the_peer_rules_sources(old_hub: str, new_hub: str) -> None:
    """The peers' rules are augmented rules: a hub swap changes their source lists in place; no rule is created or
    deleted, and no other property of any rule changes."""
    before, after = by_key(run_cached(azure_config(hub=old_hub))), by_key(run_cached(azure_config(hub=new_hub)))
    assert before.keys() == after.keys()
    changed = set()
    for key in (k for k in before if k[0] == RULE):
        old, new = before[key].inputs, after[key].inputs
        for prop in set(old) | set(new):
            if old.get(prop) != new.get(prop):
                assert prop == "sourceAddressPrefixes" and key[1].endswith("-from-peers"), (key, prop)
                changed.add(key[1])
    assert changed  # the hub and at least one spoke see other peers


def test_adding_a_site_renames_nothing() -> None:
    three, four = run_cached(azure_config()), run_cached(azure_config((*SITES, "azured")))
    old, new = by_key(three), by_key(four)
    missing = old.keys() - new.keys()
    assert not missing
    for key, r in old.items():
        assert new[key].parent == r.parent and new[key].urn == r.urn
        if key[0] == RULE:
            assert new[key].inputs["priority"] == r.inputs["priority"]
            if not key[1].endswith("-from-peers"):
                assert new[key].inputs == r.inputs, key
    added = new.keys() - old.keys()
    assert all(k[1].startswith("azured") for k in added), added


# ------------------------------------------------------------------------------------------------ payload, provider


@pytest.mark.parametrize("hub", SITES)
def test_custom_data_decodes_to_the_rendered_payload(hub: str) -> None:
    run, plan = run_cached(azure_config(hub=hub)), plan_of(azure_config(hub=hub))
    public_ips = {site: public_ip_for(f"{site}-router-wan-ip") for site in SITES}
    assert run.outputs["publicIps"] == public_ips
    for node in plan.nodes:
        vm = one(run, VM, f"{node.name}-vm")
        user_data = base64.b64decode(vm.inputs["osProfile"]["customData"]).decode()
        assert user_data.startswith("#cloud-config\n")
        # The VM boots with its own site's config; the full one (peers, keys) arrives by the push.
        assert payload_node_config(user_data) == bootstrap_config(plan, node.name)
        assert len(user_data.encode()) <= 65535  # Azure's custom data limit (decoded)
        assert vm.inputs["osProfile"]["computerName"] == node.name


def test_vms_ignore_custom_data_changes() -> None:
    run = run_cached(azure_config())
    assert azure.AzureSite.user_data_property == "osProfile.customData"
    vms = run.of_type(VM)
    assert len(vms) == 2 * len(SITES)
    for vm in vms:
        assert vm.ignore_changes == ("osProfile.customData",)


@pytest.mark.parametrize("site", SITES)
def test_every_resource_of_a_site_uses_its_own_provider(site: str) -> None:
    run = run_cached(azure_config())
    provider = one(run, PROVIDER, f"{site}-azure")
    assert provider.type == PROVIDER and provider.inputs["location"] == REGIONS[site]
    azure_resources = [r for r in run.descendants_of(site_urn(run, site)) if r.custom and r.type.startswith("azure-native:")]
    assert len(azure_resources) >= 20
    for r in azure_resources:
        assert r.provider.rsplit("::", 1)[0] == provider.urn, f"{r.type} {r.name} uses {r.provider}"
        if "location" in r.inputs:
            assert r.inputs["location"] == REGIONS[site]
    # No Azure resource outside a site.
    all_site = {r.urn for s in SITES for r in run.descendants_of(site_urn(run, s))}
    assert {r.urn for r in run.resources if r.type.startswith("azure-native:")} <= all_site


def test_ula_prefixes_are_stable_and_per_site() -> None:
    run = run_cached(azure_config())
    for i, site in enumerate(SITES, start=1):
        vnet = one(run, VNET, f"{site}-vnet")
        # fd6f:766c:<siteId in hex>::/48 per VNet, its subnet n the /64 fd6f:766c:<siteId>:n::/64.
        assert vnet.inputs["addressSpace"]["addressPrefixes"] == [f"10.{i}.0.0/16", f"fd6f:766c:{i}::/48"]
        assert one(run, SUBNET, f"{site}-wan").inputs["addressPrefixes"] == [f"10.{i}.1.0/24", f"fd6f:766c:{i}:1::/64"]
        assert one(run, SUBNET, f"{site}-lan").inputs["addressPrefixes"] == [f"10.{i}.2.0/24", f"fd6f:766c:{i}:2::/64"]
        assert "subnets" not in vnet.inputs  # subnets are Subnet resources only
    assert str(azure.ula_prefix(1)) == "fd6f:766c:1::/48"
    assert str(azure.ula_subnet(azure.ula_prefix(999), 2)) == "fd6f:766c:3e7:2::/64"


def test_size_and_image_settings_override_the_defaults() -> None:
    raw = azure_config(
        routerSize="Standard_D2s_v5", clientSize="Standard_B1s", image="Canonical:ubuntu-24_04-lts:server-gen1:24.04.202411030"
    )
    run = run_program(raw)
    router, client = one(run, VM, "azurea-router-vm"), one(run, VM, "azurea-client-vm")
    assert router.inputs["hardwareProfile"]["vmSize"] == "Standard_D2s_v5"
    assert client.inputs["hardwareProfile"]["vmSize"] == "Standard_B1s"
    assert router.inputs["storageProfile"]["imageReference"]["sku"] == "server-gen1"
    assert router.inputs["storageProfile"]["imageReference"]["version"] == "24.04.202411030"


# ------------------------------------------------------------------------------------------------ pure helpers


def test_priorities_do_not_depend_on_list_order() -> None:
    names = ["ssh-admin", "icmp-admin", "tunnel-from-lan", "icmp-from-lan", "x", "y", "z"]
    reference = azure.assign_priorities(dict.fromkeys(names))
    for perm in itertools.islice(itertools.permutations(names), 200):
        assert azure.assign_priorities(dict.fromkeys(perm)) == reference


def test_priority_collisions_are_resolved_by_name_not_position() -> None:
    span = range(100, 104)
    a, b = next(
        (x, y)
        for x, y in itertools.combinations((f"rule{i}" for i in range(50)), 2)
        if azure.hashed_priority(x, span) == azure.hashed_priority(y, span)
    )
    one = azure.assign_priorities({a: None, b: None}, span)
    two = azure.assign_priorities({b: None, a: None}, span)
    assert one == two and len(set(one.values())) == 2
    assert azure.assign_priorities({"peer": 1003, "other": None})["peer"] == 1003
    with pytest.raises(ValueError, match="both ask"):
        azure.assign_priorities({"a": 1001, "b": 1001})
    with pytest.raises(ValueError, match="outside"):
        azure.assign_priorities({"a": 99})


def test_rule_priorities_put_the_vnet_deny_after_every_allow() -> None:
    """Literal sources hash into 100-999, the peers' rules take fixed slots (Udp 1000, Icmp 3000), the VNet deny
    rules come last (4095, 4096): before Azure's AllowVnetInBound (65000), after every allow rule."""
    run = run_cached(azure_config(hub="azureb"))
    for node in ("azureb-router", "azurea-client"):
        rules = {r.inputs["securityRuleName"]: r.inputs for r in nsg_rules_of(run, node)}
        assert rules["deny-vnet-ipv4"]["priority"] == 4095 and rules["deny-vnet-ipv6"]["priority"] == 4096
        assert all(v["priority"] < 1000 for n, v in rules.items() if "-peers" not in n and not n.startswith("deny-"))
        if "tunnel-from-peers" in rules:
            assert (rules["tunnel-from-peers"]["priority"], rules["icmp-from-peers"]["priority"]) == (1000, 3000)
        allows = [v["priority"] for v in rules.values() if v["access"] == "Allow"]
        assert max(allows) < min(v["priority"] for v in rules.values() if v["access"] == "Deny")


@pytest.mark.parametrize("source", ["0.0.0.0/0", "::/0", "*", "Internet", "any", "VirtualNetwork", "not-a-cidr"])
def test_open_or_unscoped_sources_are_refused(source: str) -> None:
    with pytest.raises(ValueError, match="refusing"):
        azure.scoped_source(source)


def test_image_urn_parsing() -> None:
    assert azure.AzureImage.parse(azure.DEFAULT_IMAGE) == azure.AzureImage("Canonical", "ubuntu-24_04-lts", "server", "latest")
    assert azure.AzureImage.parse("a:b:c").version == "latest"
    with pytest.raises(ValueError):
        azure.AzureImage.parse("Canonical:ubuntu")


def test_protocol_mapping() -> None:
    assert azure.NSG_PROTOCOL == {"udp": "Udp", "tcp": "Tcp", "icmp": "Icmp", "icmpv6": "Icmp"}


# ------------------------------------------------------------------------------------------------ standalone blocks


def test_a_multi_nic_vm_with_a_security_policy_on_its_own() -> None:
    def program() -> None:
        net = azure.AzureNetwork(
            "lab",
            azure.AzureNetworkArgs(
                location="westeurope",
                address_prefixes=["10.9.0.0/16", "fd12:3456:789a::/48"],
                subnets={"wan": ["10.9.1.0/24", "fd12:3456:789a:1::/64"], "lan": ["10.9.2.0/24", "fd12:3456:789a:2::/64"]},
            ),
        )
        ip = azure.AzurePublicAddress("lab-vm-wan", azure.AzurePublicAddressArgs(net.resource_group_name, "westeurope"))
        policy = azure.AzureSecurityPolicy(
            "lab-vm",
            azure.AzureSecurityPolicyArgs(
                net.resource_group_name,
                "westeurope",
                [azure.AzureNsgRule("ssh-admin", "Tcp", "198.51.100.7/32", port=22), azure.AzureNsgRule("ping", "Icmp", "198.51.100.7/32")],
            ),
        )
        azure.AzureMachine(
            "lab-vm",
            azure.AzureMachineArgs(
                net.resource_group_name,
                "westeurope",
                nics=[
                    azure.AzureNicArgs(
                        "wan", net.subnet_ids["wan"], "10.9.1.10", public_ip_id=ip.id, security_group_id=policy.id, ip_forwarding=True
                    ),
                    azure.AzureNicArgs("lan", net.subnet_ids["lan"], security_group_id=policy.id, ip_forwarding=True),
                ],
                ssh_public_key=DEV["sshPublicKey"],
                user_data="#cloud-config\n{}\n",
            ),
        )

    run = run_standalone(program)
    assert Counter(r.type for r in run.resources if r.custom) == {
        "azure-native:resources:ResourceGroup": 1,
        VNET: 1,
        SUBNET: 2,
        PIP: 1,
        NSG: 1,
        RULE: 2,
        NIC: 2,
        VM: 1,
    }
    vm = one(run, VM, "lab-vm-vm")
    assert [bool(n.get("primary")) for n in vm.inputs["networkProfile"]["networkInterfaces"]] == [True, False]
    assert base64.b64decode(vm.inputs["osProfile"]["customData"]).decode() == "#cloud-config\n{}\n"
    assert vm.ignore_changes == ("osProfile.customData",)
    lan = one(run, NIC, "lab-vm-lan").inputs["ipConfigurations"][0]
    assert lan["privateIPAllocationMethod"] == "Dynamic" and "privateIPAddress" not in lan
    assert {r.name for r in run.resources if not r.custom} == {"lab", "lab-vm-wan", "lab-vm"}
    assert all(r.parent.endswith(("::lab", "::lab-vm", "::lab-vm-wan")) for r in run.resources if r.custom)


def test_a_policy_refuses_an_open_source_before_registering_anything() -> None:
    def program() -> None:
        azure.AzureSecurityPolicy(
            "open", azure.AzureSecurityPolicyArgs("rg", "westeurope", [azure.AzureNsgRule("ssh", "Tcp", "0.0.0.0/0", port=22)])
        )

    with pytest.raises(Exception, match="refusing"):
        run_standalone(program)


# ------------------------------------------------------------------------------------------------ review findings (docs/platform-review/azure.md)


def test_the_only_account_is_the_payloads_login_user() -> None:
    """Z1: cloud-init makes os_profile's admin user the image's default user (sudo NOPASSWD:ALL from cloud.cfg),
    unless the payload's `users:` leaves out `default`: the admin user is the payload's one login user, with the
    deploy key, and no other account exists."""
    run = run_cached(azure_config())
    for vm in run.of_type(VM):
        profile = vm.inputs["osProfile"]
        body = yaml.safe_load(base64.b64decode(profile["customData"]).decode())
        (user,) = body["users"]
        assert "default" not in body["users"]
        assert user["name"] == profile["adminUsername"] == LOGIN_USER
        assert "sudo" not in user  # the sudoers drop-in allows the push and the check only
        (key,) = profile["linuxConfiguration"]["ssh"]["publicKeys"]
        assert key["keyData"] in user["ssh_authorized_keys"]


def test_the_vnet_default_rule_is_closed_by_deny_rules_of_the_site_prefixes() -> None:
    """Z2: AllowVnetInBound (65000) admits anything from the VNet (the client to the router's SSH...). Every NSG
    denies the site's own IPv4 and ULA prefixes after its allow rules (one rule per family: Azure refuses a mix)."""
    run, plan = run_cached(azure_config()), plan_of(azure_config())
    for site in SITES:
        cfg = plan.config.site(site)
        for node in (f"{site}-router", f"{site}-client"):
            rules = nsg_rules_of(run, node)
            deny = {r.inputs["securityRuleName"]: r.inputs for r in rules if r.inputs["access"] == "Deny"}
            assert {n: (v["sourceAddressPrefixes"], v["protocol"], v["destinationPortRange"]) for n, v in deny.items()} == {
                "deny-vnet-ipv4": ([str(cfg.vpc_cidr)], "*", "*"),
                "deny-vnet-ipv6": ([str(azure.ula_prefix(cfg.site_id))], "*", "*"),
            }
            assert max(r.inputs["priority"] for r in allow_rules(rules)) < min(v["priority"] for v in deny.values())
            # What the site's own LAN may still send is exactly what an allow rule names.
            lan_allowed = {
                (r.inputs["protocol"], r.inputs["destinationPortRange"])
                for r in allow_rules(rules)
                if any(ipaddress.IPv4Network(p).subnet_of(cfg.vpc_cidr) for p in prefixes(r) if ipaddress.ip_network(p).version == 4)
            }
            assert lan_allowed == {("Udp", "4789"), ("Icmp", "*")}


def test_rules_are_written_one_at_a_time_and_waited_for() -> None:
    """Z3: Azure refuses concurrent writes to one NSG (429 AnotherOperationInProgress): every rule but the first
    depends on the previous one (priority order). The NICs wait for every rule, and the push for the NICs and the VM."""
    run = run_cached(azure_config())
    for site in SITES:
        for node, roles in ((f"{site}-router", ("wan", "lan")), (f"{site}-client", ("lan",))):
            rules = sorted(nsg_rules_of(run, node), key=lambda r: r.inputs["priority"])
            urns = {r.urn for r in rules}
            assert set(rules[0].depends_on) & urns == set()
            for before, rule in itertools.pairwise(rules):
                assert set(rule.depends_on) & urns == {before.urn}, rule.name
            nics = [one(run, NIC, f"{node}-{role}") for role in roles]
            for nic in nics:
                assert urns <= set(nic.depends_on), nic.name
            push = next(r for r in run.of_type("command:remote:Command") if r.name == f"{node}-config-apply")
            assert {n.urn for n in nics} | {one(run, VM, f"{node}-vm").urn} <= set(push.depends_on)


def test_azure_gets_the_ed25519_deploy_key_whatever_the_operator_key() -> None:
    """Z4: Azure takes RSA >= 2048 and ED25519 keys only; an ECDSA operator key goes to the payload, never to Azure."""
    ecdsa = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBEmKSENjQEezOmxkZMy7opKgwFB9nkt5YRrYMjNuG5N87uRgg6CLrbo5wAdT/y6v0mKV0U2w0WZ2YB/++Tpockg= op@example"
    run = run_program({**azure_config(), "sshPublicKey": ecdsa})
    for vm in run.of_type(VM):
        (key,) = vm.inputs["osProfile"]["linuxConfiguration"]["ssh"]["publicKeys"]
        assert key["keyData"] == deploy_public_key(run) and key["keyData"].startswith("ssh-ed25519 ")
        body = yaml.safe_load(base64.b64decode(vm.inputs["osProfile"]["customData"]).decode())
        assert ecdsa in body["users"][0]["ssh_authorized_keys"]


def test_a_sixth_site_in_one_location_is_refused_for_its_public_ips() -> None:
    """Standard public IPs: 10 per region by default (offer-dependent), 2 per site: the sixth Azure site of a
    location is refused before any resource, naming the site, the quota and how to raise it."""
    raw = copy.deepcopy(DEV)
    raw["sites"] = {f"az{i}": {**site_body("azurea", i), "region": "westeurope"} for i in range(1, 7)}
    raw["hub"] = "az1"
    problems = check_limits(build_plan(parse_config(raw)))
    assert len(problems) == 1, problems
    assert problems[0].startswith("azure site `az6`: location westeurope would hold 12 Standard public IPs")
    assert "default quota of 10" in problems[0] and azure_traits.STANDARD_PUBLIC_IPS_PER_REGION.source in problems[0]
    run = ProgramRun()
    with pytest.raises(Exception, match="default quota of 10"):
        run_program(raw, into=run)
    assert run.resources == []
    raw["sites"]["az6"]["region"] = "northeurope"
    assert check_limits(build_plan(parse_config(raw))) == []


def test_a_deny_rule_before_an_allow_is_refused() -> None:
    """The VNet deny must come after every allow rule; a building-block user who asks otherwise is refused."""

    def program() -> None:
        azure.AzureSecurityPolicy(
            "p",
            azure.AzureSecurityPolicyArgs(
                "rg", "westeurope", [azure.AzureNsgRule("late", "Tcp", "10.0.0.5/32", port=22, priority=4096)], deny_from=["10.0.0.0/16"]
            ),
        )

    with pytest.raises(Exception, match=re.escape("deny rules ['deny-vnet-ipv4'] would come before an allow rule")):
        run_standalone(program)


def test_a_rule_mixing_address_families_is_refused() -> None:
    def program() -> None:
        azure.AzureSecurityPolicy(
            "p", azure.AzureSecurityPolicyArgs("rg", "westeurope", [azure.AzureNsgRule("mixed", "Icmp", ["10.0.0.0/24", "fd00::/64"])])
        )

    with pytest.raises(Exception, match="mix IPv4 and IPv6"):
        run_standalone(program)
