"""vSphere sites under Pulumi mocks: VMs cloned from a cloud-init template with static MACs and guestinfo
user-data/metadata, explicit providers, ignore_changes, and the rules the datacentre edge must implement."""

from __future__ import annotations

import base64
import copy
import functools
import ipaddress
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
import yaml
from pulumi.runtime import rpc

from multicloud_overlay.cloudinit.render import LOGIN_USER, StaticNic, payload_node_config
from multicloud_overlay.components.clouds import vsphere as vs
from multicloud_overlay.components.clouds import vsphere_traits
from multicloud_overlay.components.limits import check_limits, checked_plan
from multicloud_overlay.components.stack_file import read_stack_file
from multicloud_overlay.overlay.config import ConfigError, parse_config
from multicloud_overlay.overlay.plan import Plan, bootstrap_config, build_plan
from multicloud_overlay.overlay.security import IngressRule, PeerRouter, is_open_to_world
from tests import harness
from tests.harness import ROOT, ProgramRun, Registered, run_program, unsecret
from tests.mockdata import vsphere as mock

DEV = read_stack_file(ROOT / "Pulumi.dev.yaml")
VM = "vsphere:index/virtualMachine:VirtualMachine"
PROVIDER = "pulumi:providers:vsphere"
SECRET_SIG = rpc._special_sig_key  # pyright: ignore[reportPrivateUsage]
SITE_NAMES = ("vspa", "vspb", "vspc")


def vsphere_site(name: str, site_id: int, **extra: Any) -> dict[str, Any]:
    octet = 10 + site_id
    return {
        "platform": "vsphere",
        "siteId": site_id,
        "publicIp": f"203.0.113.{site_id}",
        "datacenter": "dc1",
        "cluster": "cluster1",
        "datastore": "datastore1",
        "template": "ubuntu-24.04-server-cloudimg",
        "wanNetwork": f"{name}-wan",
        "lanNetwork": f"{name}-lan",
        "mgmtNetwork": f"{name}-mgmt",
        "vpcCidr": f"10.{octet}.0.0/16",
        "wanCidr": f"10.{octet}.1.0/24",
        "lanCidr": f"10.{octet}.2.0/24",
        "mgmtCidr": f"10.{octet}.3.0/24",
        **extra,
    }


def raw_config(hub: str = "vspa", names: tuple[str, ...] = SITE_NAMES) -> dict[str, Any]:
    """Pulumi.dev.yaml with its sites replaced by vSphere sites only (every other top-level key kept)."""
    raw = copy.deepcopy(DEV)
    sites = {name: vsphere_site(name, i) for i, name in enumerate(names, 1)}
    # One site with explicit gateways, DNS and sizes; the others use the defaults.
    sites["vspa"].update(wanGateway="10.11.1.254", mgmtGateway="10.11.3.254", dnsServers="10.11.3.53, 10.11.3.54", routerSize="4x8192")
    # Clear tunnels: these tests pin each rule's tunnel port in detail. The default (ipsec) is what
    # tests/test_platforms.py (every platform, each site as hub) and tests/test_limits_*.py (every platform as hub and
    # as spoke, registered resources against the recorded limits) deploy.
    raw.update(hub=hub, sites=sites, encryption="none")
    return raw


@dataclass
class Observed:
    """A program run plus what the harness does not record: component outputs and invoke providers."""

    run: ProgramRun
    raw: dict[str, Any]
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    invokes: list[tuple[str, dict[str, Any], str]] = field(default_factory=list)

    @functools.cached_property
    def plan(self) -> Plan:
        return build_plan(parse_config(self.raw))

    @property
    def public_ips(self) -> dict[str, str]:
        return {name: str(s["publicIp"]) for name, s in self.raw["sites"].items()}

    def vm(self, node: str) -> Registered:
        return self.run.named(f"{node}-machine-vm")

    def outputs_of(self, name: str) -> dict[str, Any]:
        return self.outputs[self.run.named(name).urn]

    def network_id(self, port_group: str) -> str:
        return mock.network_result(port_group)["id"]


def observe(raw: dict[str, Any], stack: str = "test") -> Observed:
    run = run_program(raw, stack=stack)
    return Observed(
        run=run,
        raw=raw,
        outputs=run.component_outputs,
        invokes=[(token, args, provider) for (token, args), (_, provider) in zip(run.invokes, run.invoke_providers, strict=True)],
    )


@functools.cache
def observed(hub: str = "vspa", names: tuple[str, ...] = SITE_NAMES) -> Observed:
    return observe(raw_config(hub, names))


@pytest.fixture(scope="module")
def base() -> Observed:
    return observed()


def extra_config(r: Registered) -> dict[str, str]:
    return cast(dict[str, str], unsecret(r.inputs["extraConfig"]))


def decode(value: str) -> str:
    return base64.b64decode(value).decode()


def site_nodes(site: str) -> Iterator[str]:
    yield f"{site}-router"
    yield f"{site}-client"


# ---------------------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------------------


def test_static_macs_are_unique_stable_and_in_vmwares_manual_range() -> None:
    macs = [vs.static_mac(site, host, nic) for site in range(1, 1000) for host in (1, 2) for nic in range(4)]
    assert len(set(macs)) == len(macs)
    assert all(vs.is_manual_vmware_mac(m) for m in macs)
    assert all(m.startswith("00:50:56:") and int(m.split(":")[3], 16) <= 0x3F for m in macs)
    assert vs.static_mac(1, 1, 0) == "00:50:56:00:10:10"
    assert vs.static_mac(999, 2, 1) == "00:50:56:3e:70:21"  # 999 << 12 | 2 << 4 | 1
    assert not vs.is_manual_vmware_mac("00:50:56:40:00:00")
    assert not vs.is_manual_vmware_mac("02:50:56:00:00:00")
    for bad in ((0, 1, 0), (1000, 1, 0), (1, 256, 0), (1, 1, vs.MAX_NICS)):
        with pytest.raises(ValueError):
            vs.static_mac(*bad)


def test_sizes_gateways_and_dns() -> None:
    assert vs.parse_size("2x4096") == (2, 4096)
    assert vs.parse_size(" 4 X 8192 ") == (4, 8192)
    for bad in ("big", "2x", "0x4096", "2x1000", "2x4098", "65x4096"):
        with pytest.raises(ValueError, match="routerSize"):
            vs.parse_size(bad, "routerSize")
    wan = ipaddress.IPv4Network("10.6.1.0/24")
    assert vs.gateway_for(wan, None, "wanGateway") == "10.6.1.1"
    assert vs.gateway_for(wan, "10.6.1.254", "wanGateway") == "10.6.1.254"
    for bad in ("10.6.2.1", "10.6.1.0", "10.6.1.255"):
        with pytest.raises(ValueError, match="wanGateway"):
            vs.gateway_for(wan, bad, "wanGateway")
    assert vs.dns_servers(None) == ("1.1.1.1", "9.9.9.9")
    assert vs.dns_servers("10.0.0.53, 10.0.0.54") == ("10.0.0.53", "10.0.0.54")
    assert vs.dns_servers(["10.0.0.53"]) == ("10.0.0.53",)
    with pytest.raises(ValueError):
        vs.dns_servers("dns.example")


def test_metadata_carries_static_nics_ssh_key_and_redacts_user_data() -> None:
    nics = [
        StaticNic("wan0", "00:50:56:00:10:10", "10.6.1.10/24", "10.6.1.1", ("10.6.1.53",)),
        StaticNic("lan0", "00:50:56:00:10:11", "10.6.2.10/24"),
    ]
    doc = yaml.safe_load(vs.render_metadata("dc-router", "iid-x", nics, ["ssh-ed25519 AAAA k"]))
    assert doc["instance-id"] == "iid-x" and doc["local-hostname"] == "dc-router"
    assert doc["public-keys"] == ["ssh-ed25519 AAAA k"]
    assert doc["redact"] == ["userdata"]
    wan = doc["network"]["ethernets"]["wan0"]
    assert wan["match"] == {"macaddress": "00:50:56:00:10:10"} and wan["addresses"] == ["10.6.1.10/24"]
    assert wan["routes"] == [{"to": "default", "via": "10.6.1.1"}]
    assert "routes" not in doc["network"]["ethernets"]["lan0"]


def test_edge_rules_skip_internal_sources_and_refuse_the_world() -> None:
    rules = [
        IngressRule("tunnel-from-b", "udp", 4789, PeerRouter("b"), 4, "vxlan from b-router"),
        IngressRule("tunnel-from-lan", "udp", 4789, "10.6.2.0/24", 4, "vxlan from the client"),
        IngressRule("ssh-admin", "tcp", 22, "198.51.100.7/32", 4, "SSH from the admin range"),
    ]
    out = vs.edge_rules(rules, ["203.0.113.2/32", "10.6.2.0/24", "198.51.100.7/32"], "203.0.113.1", "10.6.1.10", ["10.6.0.0/16"])
    assert [r["name"] for r in out] == ["tunnel-from-b", "ssh-admin"]
    assert out[0] == {
        "name": "tunnel-from-b",
        "protocol": "udp",
        "port": 4789,
        "source": "203.0.113.2/32",
        "publicIp": "203.0.113.1",
        "destination": "10.6.1.10",
        "action": "dnat-allow",
        "description": "vxlan from b-router",
    }
    with pytest.raises(ValueError, match="whole internet"):
        vs.edge_rules(rules[:1], ["0.0.0.0/0"], "203.0.113.1", "10.6.1.10", [])
    assert vs.edge_snat("203.0.113.1", "10.6.1.10") == {"source": "10.6.1.10/32", "translatedSource": "203.0.113.1", "action": "snat"}


# ---------------------------------------------------------------------------------------------------------
# Program under mocks
# ---------------------------------------------------------------------------------------------------------


def test_resources_per_site(base: Observed) -> None:
    for site in SITE_NAMES:
        site_urn = base.run.named(site).urn
        counts = Counter(r.type for r in base.run.descendants_of(site_urn) if r.type.startswith(("vsphere:", PROVIDER, vs.TOKEN)))
        assert counts == {
            PROVIDER: 1,
            f"{vs.TOKEN}:VsphereInventory": 1,
            f"{vs.TOKEN}:VsphereEdgePolicy": 1,
            f"{vs.TOKEN}:VsphereMachine": 2,
            VM: 2,
        }, site


# VMware's manual range 00:50:56:00:00:00-3f:ff:ff, then siteId (10 bits) | host (8 bits: router 1, client 2) | NIC
# index (4 bits); vspa, vspb, vspc are sites 1, 2, 3.
STATIC_MACS = {
    "vspa-router": ["00:50:56:00:10:10", "00:50:56:00:10:11"],
    "vspa-client": ["00:50:56:00:10:20", "00:50:56:00:10:21"],
    "vspb-router": ["00:50:56:00:20:10", "00:50:56:00:20:11"],
    "vspb-client": ["00:50:56:00:20:20", "00:50:56:00:20:21"],
    "vspc-router": ["00:50:56:00:30:10", "00:50:56:00:30:11"],
    "vspc-client": ["00:50:56:00:30:20", "00:50:56:00:30:21"],
}


def test_router_and_client_nics_sit_on_their_port_groups_with_static_macs(base: Observed) -> None:
    for site in SITE_NAMES:
        for node, roles in ((f"{site}-router", ("wan", "lan")), (f"{site}-client", ("mgmt", "lan"))):
            nics = base.vm(node).inputs["networkInterfaces"]
            assert [n["networkId"] for n in nics] == [base.network_id(f"{site}-{role}") for role in roles], node
            assert [n["macAddress"] for n in nics] == STATIC_MACS[node]
            assert all(n["useStaticMac"] is True and n["adapterType"] == mock.TEMPLATE_NIC_TYPE for n in nics)


def test_clone_of_the_template_without_vmware_customization(base: Observed) -> None:
    for site in SITE_NAMES:
        for node in site_nodes(site):
            inputs = base.vm(node).inputs
            assert inputs["clone"] == {"templateUuid": mock.TEMPLATE_UUID}, "no clone.customize: cloud-init configures the guest"
            assert (inputs["guestId"], inputs["scsiType"], inputs["firmware"]) == (
                mock.TEMPLATE_GUEST_ID,
                mock.TEMPLATE_SCSI_TYPE,
                mock.TEMPLATE_FIRMWARE,
            )
            (disk,) = inputs["disks"]
            assert disk["size"] >= mock.TEMPLATE_DISK_GIB and disk["unitNumber"] == 0 and disk["thinProvisioned"] is True
            assert inputs["resourcePoolId"] == mock.INVOKES["vsphere:index/getComputeCluster:getComputeCluster"]["resourcePoolId"]
            assert inputs["name"] == f"multicloud-overlay-test-{node}"


def test_sizes_default_and_override(base: Observed) -> None:
    assert (base.vm("vspa-router").inputs["numCpus"], base.vm("vspa-router").inputs["memory"]) == (4, 8192)
    assert (base.vm("vspb-router").inputs["numCpus"], base.vm("vspb-router").inputs["memory"]) == (2, 4096)
    assert (base.vm("vspb-client").inputs["numCpus"], base.vm("vspb-client").inputs["memory"]) == (1, 2048)


def test_guestinfo_user_data_is_the_nodes_payload(base: Observed) -> None:
    for site in SITE_NAMES:
        for node in site_nodes(site):
            raw = base.vm(node).inputs["extraConfig"]
            assert isinstance(raw, dict) and SECRET_SIG in raw, "extra_config carries the host private key: secret"
            extra = extra_config(base.vm(node))
            assert extra["guestinfo.userdata.encoding"] == "base64"
            assert extra["guestinfo.metadata.encoding"] == "base64"
            assert set(extra) == {"guestinfo.userdata", "guestinfo.userdata.encoding", "guestinfo.metadata", "guestinfo.metadata.encoding"}
            user_data = decode(extra["guestinfo.userdata"])
            assert payload_node_config(user_data) == bootstrap_config(base.plan, node)
            # The login user and its keys come from the payload (metadata public-keys stay empty).
            assert f"name: {LOGIN_USER}" in user_data and str(base.raw["sshPublicKey"]) in user_data
            assert len(extra["guestinfo.userdata"]) <= vsphere_traits.GUESTINFO_MAX_BYTES.value


def test_guestinfo_metadata_gives_static_addresses_matched_by_the_vms_macs(base: Observed) -> None:
    for site in SITE_NAMES:
        s = base.plan.config.site(site)
        mgmt = ipaddress.IPv4Network(str(s.settings["mgmtCidr"]))
        for node_name in site_nodes(site):
            node = base.plan.node(node_name)
            vm = base.vm(node_name)
            meta = yaml.safe_load(decode(extra_config(vm)["guestinfo.metadata"]))
            assert meta["instance-id"] == f"iid-multicloud-overlay-{node_name}" and meta["local-hostname"] == node_name
            assert meta["public-keys"] == []  # the payload's users: entry carries the keys
            ethernets = meta["network"]["ethernets"]
            macs = [n["macAddress"] for n in vm.inputs["networkInterfaces"]]
            if node.kind == "router":
                first, address, prefix = "wan0", node.wan_ip, s.wan_cidr.prefixlen
                gateway = "10.11.1.254" if site == "vspa" else str(s.wan_cidr.network_address + 1)
            else:
                first, address, prefix = "mgmt0", node.mgmt_ip, mgmt.prefixlen
                gateway = "10.11.3.254" if site == "vspa" else str(mgmt.network_address + 1)
            assert list(ethernets) == [first, "lan0"]
            assert [ethernets[n]["match"]["macaddress"] for n in (first, "lan0")] == macs
            assert ethernets[first]["addresses"] == [f"{address}/{prefix}"]
            assert ethernets[first]["routes"] == [{"to": "default", "via": gateway}]
            assert ethernets["lan0"]["addresses"] == [f"{node.lan_ip}/{node.lan_prefix}"]
            assert "routes" not in ethernets["lan0"]
            dns = ["10.11.3.53", "10.11.3.54"] if site == "vspa" else ["1.1.1.1", "9.9.9.9"]
            assert ethernets[first]["nameservers"] == {"addresses": dns}


def test_management_addresses_are_private(base: Observed) -> None:
    nodes = base.run.outputs["nodes"]
    for site in SITE_NAMES:
        router, client = base.plan.router(site), base.plan.client(site)
        assert nodes[router.name]["managementIp"] == router.wan_ip
        assert nodes[router.name]["privateIps"] == {"wan": router.wan_ip, "lan": router.lan_ip}
        assert nodes[client.name]["managementIp"] == client.mgmt_ip
        assert nodes[client.name]["privateIps"] == {"mgmt": client.mgmt_ip, "lan": client.lan_ip}
    assert base.run.outputs["publicIps"] == base.public_ips


def test_explicit_provider_on_every_resource_and_invoke(base: Observed) -> None:
    assert all(not r.name.startswith("default") for r in base.run.of_type(PROVIDER))
    for site in SITE_NAMES:
        provider = base.run.named(f"{site}-provider")
        assert provider.parent == base.run.named(site).urn
        ref = f"{provider.urn}::{site}-provider-id"
        vsphere_resources = [r for r in base.run.descendants_of(base.run.named(site).urn) if r.type.startswith("vsphere:")]
        assert vsphere_resources and all(r.provider == ref for r in vsphere_resources)
        networks = [p for token, args, p in base.invokes if token.endswith("getNetwork") and str(args["name"]).startswith(f"{site}-")]
        assert len(networks) == 3 and set(networks) == {ref}
    tokens = {token for token, _, _ in base.invokes}
    assert tokens == {
        f"vsphere:index/{n}:{n}" for n in ("getDatacenter", "getComputeCluster", "getDatastore", "getNetwork", "getVirtualMachine")
    }
    assert all(f"{PROVIDER}::" in p for _, _, p in base.invokes), "no invoke may use the default provider"


def test_vms_ignore_extra_config_clone_and_template_derived_changes(base: Observed) -> None:
    """Review V3: another template must not touch running VMs (guest id, SCSI type and firmware follow the template)."""
    vms = base.run.of_type(VM)
    assert len(vms) == 2 * len(SITE_NAMES)
    assert all({"extraConfig", "clone", "guestId", "scsiType", "firmware"} <= set(r.ignore_changes) for r in vms)
    assert all(not {"disks", "numCpus", "memory"} & set(r.ignore_changes) for r in vms)


def test_a_template_with_vapp_options_is_refused_before_any_vm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review V1: with an OVF environment, cloud-init's OVF datasource wins over guestinfo on Ubuntu."""
    token = "vsphere:index/getVirtualMachine:getVirtualMachine"
    monkeypatch.setitem(harness.INVOKES, token, {**mock.INVOKES[token], "vappTransports": ["com.vmware.guestInfo"]})
    run = ProgramRun()
    with pytest.raises(Exception, match="has vApp options enabled"):
        run_program(raw_config(), into=run)
    assert not run.of_type(VM)


def test_template_problem_names_the_template_and_the_fix() -> None:
    assert vsphere_traits.template_problem("ubuntu-24.04", []) is None
    assert vsphere_traits.template_problem("ubuntu-24.04", None) is None
    problem = vsphere_traits.template_problem("ubuntu-24.04", ["iso", "com.vmware.guestInfo"])
    assert problem is not None
    assert "'ubuntu-24.04'" in problem and "vApp Options" in problem and "https://github.com/canonical/cloud-init/pull/5912" in problem


def test_vm_names_fit_vcenters_80_characters_whatever_the_stack_name() -> None:
    """Review V2: `<project>-<stack>-<node>` over 80 characters failed at clone time; long ones are folded."""
    assert vsphere_traits.vm_name("multicloud-overlay", "dev", "vspa-router") == "multicloud-overlay-dev-vspa-router"
    long_stack = "production-eu-" + "x" * 60
    names = {vsphere_traits.vm_name("multicloud-overlay", stack, "vspa-router") for stack in (long_stack, long_stack + "y")}
    assert len(names) == 2  # distinct stacks keep distinct names
    for name in names:
        assert len(name) <= 80 and name.endswith("-vspa-router") and name.startswith("multicloud-overlay-production-eu-")
    seen = observe(raw_config(names=("vspa", "vspb")), stack=long_stack)
    for vm in seen.run.of_type(VM):
        assert len(vm.inputs["name"]) <= vsphere_traits.VM_NAME_MAX.value
        assert vm.inputs["name"] == vsphere_traits.vm_name("multicloud-overlay", long_stack, vm.name.removesuffix("-machine-vm"))


def test_guestinfo_over_64_kib_is_refused() -> None:
    """Review V4: a guestinfo value holds at most 64 KiB; the payload is checked as it is sent (base64)."""
    assert len(vs.guestinfo_extra_config("#cloud-config\n", "instance-id: x\n")["guestinfo.userdata"]) < 100
    with pytest.raises(ValueError, match=r"guestinfo\.userdata is [\d,]+ bytes \(base64\), over the 65,536"):
        vs.guestinfo_extra_config("#cloud-config\n" + os.urandom(25_000).hex(), "instance-id: x\n")


def tunnel_sources(seen: Observed, site: str) -> set[str]:
    rules = seen.outputs_of(f"{site}-edge")["rules"]
    return {r["source"] for r in rules if r["protocol"] == "udp" and r.get("port") == seen.plan.port}


def test_edge_rules_admit_tunnel_only_from_peers_and_ssh_only_from_admin(base: Observed) -> None:
    admin = str(base.plan.config.admin_cidr)
    for site in SITE_NAMES:
        outputs = base.outputs_of(f"{site}-edge")
        rules = outputs["rules"]
        public_ip, wan_ip = base.public_ips[site], base.plan.router(site).wan_ip
        assert rules and all(r["publicIp"] == public_ip and r["destination"] == wan_ip and r["action"] == "dnat-allow" for r in rules)
        assert not any(is_open_to_world(r["source"]) for r in rules)
        peers = {f"{base.public_ips[p]}/32" for p in base.plan.peer_sites(site)}
        assert tunnel_sources(base, site) == peers
        assert {r["source"] for r in rules if r["protocol"] == "tcp" and r.get("port") == 22} == {admin}
        assert {(r["protocol"], r.get("port")) for r in rules} <= {("udp", base.plan.port), ("tcp", 22), ("icmp", None)}
        assert {r["source"] for r in rules} == peers | {admin}, "LAN rules never reach the edge"
        assert outputs["snat"] == {"source": f"{wan_ip}/32", "translatedSource": public_ip, "action": "snat"}


@pytest.mark.parametrize("hub", SITE_NAMES)
def test_edge_rules_follow_the_hub(hub: str) -> None:
    seen = observed(hub)
    for site in SITE_NAMES:
        expected = [s for s in SITE_NAMES if s != site] if site == hub else [hub]
        assert tunnel_sources(seen, site) == {f"{seen.public_ips[p]}/32" for p in expected}, (hub, site)


def test_adding_a_site_renames_nothing(base: Observed) -> None:
    bigger = observed("vspa", (*SITE_NAMES, "vspd"))

    def urns(seen: Observed) -> set[str]:
        return {r.urn for r in seen.run.resources if r.name.split("-")[0] in SITE_NAMES}

    assert urns(base) == urns(bigger)
    for site in SITE_NAMES:
        for node in site_nodes(site):
            assert base.vm(node).inputs["networkInterfaces"] == bigger.vm(node).inputs["networkInterfaces"]
            assert extra_config(base.vm(node))["guestinfo.metadata"] == extra_config(bigger.vm(node))["guestinfo.metadata"]


@pytest.mark.parametrize("size", ["large", "2x4098", "65x4096"])
def test_a_bad_size_stops_the_program_before_any_resource(size: str) -> None:
    raw = raw_config()
    raw["sites"]["vspb"]["clientSize"] = size
    problems = check_limits(build_plan(parse_config(raw)))
    assert len(problems) == 1 and problems[0].startswith("vsphere site `vspb`: sites.vspb.clientSize = ")
    run = ProgramRun()
    with pytest.raises(Exception, match=r"sites\.vspb\.clientSize"):
        run_program(raw, into=run)
    assert run.resources == []
    with pytest.raises(ConfigError):
        checked_plan(parse_config(raw))


def test_a_hub_swap_changes_no_vm_input() -> None:
    def vm_inputs(seen: Observed) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for r in seen.run.of_type(VM):
            inputs = dict(r.inputs)
            extra = dict(extra_config(r))
            extra.pop("guestinfo.userdata")
            inputs["extraConfig"] = extra
            out[r.urn] = inputs
        return out

    before, after = observed("vspa"), observed("vspb")
    assert vm_inputs(before) == vm_inputs(after)
    # The bootstrap user-data names no peer: a hub swap changes no VM input at all (the push carries the change).
    changed = {r.name for r in after.run.of_type(VM) if extra_config(r) != extra_config(before.run.named(r.name))}
    assert changed == set()
