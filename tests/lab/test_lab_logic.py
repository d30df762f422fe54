"""Pure lab logic: path mapping, underlay addressing, payload files, results (no root needed)."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import stat
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from lab import cli, nodes, power, probes, underlay
from lab.check import endpoints, spoke_pair
from lab.nodes import push_stages, stage_name
from lab.probes import parse_ping_lines, parse_ping_log, ping_script
from lab.report import PingResult, Probe, cell, matrix_text, summary, to_json, to_junit
from lab.state import LAB_IMAGE, LabError, lab_plan, load_raw, stack_path, stack_reference
from lab.swap import disruption, hub_paths, mac_site, probe_pair, stale_fdb
from lab.topology import build_layout, container_names, map_argv, map_path, public_addresses, transit_pair
from multicloud_overlay.cloudinit.render import NODE_CONFIG, NODE_SCRIPT, UNIT_PATH, render_user_data, unit_exec_start
from multicloud_overlay.components.stack_file import read_stack_file
from multicloud_overlay.overlay.config import parse_config
from multicloud_overlay.overlay.plan import bootstrap_config, build_plan, overlay_mac

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return read_stack_file(REPO / "Pulumi.dev.yaml")


@pytest.fixture(scope="module")
def plan(raw: dict[str, Any]):
    return lab_plan(raw)


# --------------------------------------------------------------------------- path mapping


@pytest.mark.parametrize(
    ("path", "mapped"),
    [
        ("/etc/multicloud-overlay/node.json", "/r/n/etc/multicloud-overlay/node.json"),
        ("/var/lib/multicloud-overlay", "/r/n/var/lib/multicloud-overlay"),
        ("/usr/local/sbin/overlay-node", "/r/n/usr/local/sbin/overlay-node"),
        ("/etc", "/r/n/etc"),
        ("/usr/bin/python3", "/usr/bin/python3"),
        ("/etcetera/x", "/etcetera/x"),
        ("/run/netns/aws-c1", "/run/netns/aws-c1"),
        ("/usr/localx", "/usr/localx"),
    ],
)
def test_map_path(path: str, mapped: str) -> None:
    assert map_path(path, "/r/n/") == mapped
    assert map_path(path, Path("/r/n")) == mapped


def test_unit_command_runs_from_the_node_root(plan) -> None:
    payload = render_user_data(bootstrap_config(plan, "aws-router"))
    argv = map_argv(unit_exec_start(payload), "/root-of/aws-router")
    assert argv[0] == "/root-of/aws-router" + NODE_SCRIPT
    assert all(not a.startswith(("/etc", "/var", "/usr/local")) for a in argv)
    assert argv[1] == "apply"
    assert map_argv(["x", "--config=/etc/a.json", "-v"], "/R") == ["x", "--config=/R/etc/a.json", "-v"]


def test_payload_files_keep_their_modes(plan, tmp_path: Path) -> None:
    payload = nodes.user_data(plan, "oci-router", "docker")
    written = nodes.write_payload(payload, tmp_path)
    script = tmp_path / NODE_SCRIPT.lstrip("/")
    assert script in written
    assert stat.S_IMODE(os.stat(script).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(tmp_path / UNIT_PATH.lstrip("/")).st_mode) == 0o644
    doc = json.loads((tmp_path / NODE_CONFIG.lstrip("/")).read_text())
    assert doc["containers"]["image"] == LAB_IMAGE and doc["open_host_firewall"] is True
    assert json.loads((tmp_path / "etc/docker/daemon.json").read_text())["bridge"] == "none"
    assert stat.S_IMODE(os.stat(tmp_path / NODE_CONFIG.lstrip("/")).st_mode) == 0o600


# --------------------------------------------------------------------------- plan and addresses


def test_lab_plan_changes_only_the_container_image(raw: dict[str, Any], plan) -> None:
    cfg = parse_config(raw)
    assert plan == build_plan(dataclasses.replace(cfg, container_image=LAB_IMAGE))
    assert dataclasses.replace(plan.config, container_image=cfg.container_image) == cfg


def test_public_addresses(plan) -> None:
    public = public_addresses(plan.config)
    assert public["vsphere"] == "203.0.113.60"
    assert public["aws"] == "198.51.100.11"
    assert len(set(public.values())) == len(public)
    docs = [ipaddress.ip_network("198.51.100.0/24"), ipaddress.ip_network("203.0.113.0/24")]
    assert all(any(ipaddress.ip_address(a) in d for d in docs) for a in public.values())
    assert "198.51.100.7" not in public.values()  # the admin address


def test_public_address_of_a_site_does_not_move_with_other_sites(raw: dict[str, Any]) -> None:
    full = public_addresses(lab_plan(raw).config)
    subset = public_addresses(lab_plan(load_raw("dev", ["gcp", "oci"], {})).config)
    assert subset == {"gcp": full["gcp"], "oci": full["oci"]}


def test_transit_links_are_distinct_30s() -> None:
    pairs = [transit_pair(i) for i in range(1, 1000)]
    nets = {ipaddress.ip_interface(a).network for a, _ in pairs}
    assert len(nets) == 999 and all(n.prefixlen == 30 for n in nets)
    assert all(ipaddress.ip_interface(a).network == ipaddress.ip_interface(b).network for a, b in pairs)


def test_layout_emulates_each_platform(plan) -> None:
    layout = build_layout(plan)
    assert layout.host("aws-router").nics[1].address is None  # hot-attached ENI: the payload configures it
    assert layout.host("oci-router").nics[1].address is None
    assert layout.host("alicloud-router").nics[1].address is None
    assert layout.host("azure-router").nics[1].address == "10.2.2.10/24"  # platform DHCP
    assert layout.host("aws-router").nics[0].address == "10.1.1.10/24"
    assert layout.host("aws-client").nics[0].address == "10.1.2.20/24"
    assert {v.node for v in layout.hosts if v.host_firewall} == {"oci-router", "oci-client"}
    edges = {e.site: e for e in layout.edges}
    assert edges["azure"].underlay_mtu == 1400 and edges["gcp"].underlay_mtu == 1460
    assert edges["vsphere"].wan_gateway == "10.6.1.10/24".replace(".10/", ".1/")
    assert layout.host("vsphere-router").default_gateway == "10.6.1.1"
    assert [n.name for n in layout.host("vsphere-router").nics] == ["wan0", "lan0"]  # named by guestinfo metadata
    client = layout.host("vsphere-client")
    assert [(n.name, n.segment, n.address) for n in client.nics] == [
        ("mgmt0", "br-mgmt", "10.6.3.20/24"),
        ("lan0", "br-lan", "10.6.2.20/24"),
    ]
    assert client.default_gateway == "10.6.3.1" and edges["vsphere"].mgmt_gateway == "10.6.3.1/24"
    assert edges["aws"].mgmt_gateway is None
    assert edges["aws"].router_wan_ip == "10.1.1.10"
    assert all(len(e.internet_port) <= 15 for e in edges.values())
    assert len(layout.namespaces()) == len(set(layout.namespaces())) == 19
    assert all(n.startswith("mco-") for n in layout.namespaces())
    assert container_names(plan)[:3] == ["aws-c1", "aws-c2", "aws-c3"]


def test_site_subset_and_overrides(raw: dict[str, Any]) -> None:
    r = load_raw("dev", ["gcp", "oci"], {})
    assert list(r["sites"]) == ["gcp", "oci"] and r["hub"] == "gcp"
    r = load_raw("dev", ["aws", "gcp"], {"topology": "point-to-point", "hub": None})
    assert r["hub"] == "aws" and r["topology"] == "point-to-point"
    with pytest.raises(LabError, match="nowhere"):
        load_raw("dev", ["aws", "nowhere"], {})
    with pytest.raises(LabError, match="no stack file"):
        load_raw("nosuchstack", None, {})


def test_a_stack_is_a_name_or_a_stack_file(raw: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert stack_path("dev") == REPO / "Pulumi.dev.yaml" and stack_reference("dev") == "dev"
    elsewhere = tmp_path / "stacks" / "Pulumi.mine.yaml"
    elsewhere.parent.mkdir()
    elsewhere.write_text((REPO / "Pulumi.dev.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    # A relative path is recorded absolute: the later verbs of the lab find the file from any directory.
    assert stack_reference("stacks/Pulumi.mine.yaml") == str(elsewhere)
    assert stack_path(str(elsewhere)) == elsewhere
    assert load_raw(str(elsewhere), ["gcp", "oci"], {}) == load_raw("dev", ["gcp", "oci"], {})


# --------------------------------------------------------------------------- underlay commands (fake shell)


class FakeShell:
    def __init__(self) -> None:
        self.commands: list[str] = []

    def run(self, argv, check=True, input=None, env=None, timeout=None):
        self.commands.append(" ".join(argv) + (f" <<{input!r}" if input else ""))

    def ns(self, netns, argv, **kw):
        self.run(["nsenter", f"--net=/run/netns/{netns}", "--", *argv])

    def batch(self, netns, commands):
        self.run(["ip", "-n", str(netns), "-batch", "-"], input="\n".join(commands))


def test_edge_does_one_to_one_nat_at_the_site_mtu(plan) -> None:
    layout = build_layout(plan)
    sh = FakeShell()
    edge = next(e for e in layout.edges if e.site == "azure")
    underlay.build_edge(sh, layout, edge)  # type: ignore[arg-type]
    text = "\n".join(sh.commands)
    assert "mtu 1400 type veth" in text and text.count("mtu 1400") == 2
    assert "-j DNAT --to-destination 10.2.1.10" in text and "-d 198.51.100.12" in text
    assert "-s 10.2.1.10 -j SNAT --to-source 198.51.100.12" in text
    assert "route add 198.51.100.12/32 via" in text
    # The segments are switches: bridged frames cross no iptables in the edge (where br_netfilter is loaded).
    assert "/proc/sys/net/bridge/bridge-nf-call-iptables /proc/sys/net/bridge/bridge-nf-call-ip6tables" in text
    assert 'then echo 0 > "$f"' in text


def test_oci_vm_gets_the_image_firewall(plan) -> None:
    layout = build_layout(plan)
    sh = FakeShell()
    vm = layout.host("oci-router")
    underlay.build_host(sh, layout, vm)  # type: ignore[arg-type]
    hardware = "\n".join(sh.commands)
    assert "addr add" not in hardware and "iptables" not in hardware  # the platform's part comes at power-on
    sh.commands.clear()
    power.platform_up(sh, vm)  # type: ignore[arg-type]
    text = "\n".join(sh.commands)
    assert "iptables -w -A INPUT -j REJECT" in text and "iptables -w -A FORWARD -j REJECT" in text
    assert "addr add" in text and "10.4.2.10" not in text  # LAN NIC up, unaddressed
    assert "link set eth1 up" in text and f"route add default via {vm.default_gateway}" in text


def test_power_off_resets_what_the_node_script_sets() -> None:
    from multicloud_overlay.cloudinit import overlay_node

    assert power.NODE_SYSCTLS is overlay_node.NODE_SYSCTLS
    assert power.NIC_SYSCTLS == {"net.ipv6.conf.{nic}.accept_ra": "net.ipv6.conf.default.accept_ra"}
    assert power.BRIDGE_NF_SYSCTLS is overlay_node.BRIDGE_NF_SYSCTLS
    links = ["lo", "eth0", "eth1", "br-overlay", "ovl-r1", "ovl-k2", "ovl-c3", "xfrm0"]
    assert power.node_script_links(links, ["eth0", "eth1"]) == ["br-overlay", "ovl-c3", "ovl-k2", "ovl-r1", "xfrm0"]


# --------------------------------------------------------------------------- check and results


def test_endpoints_are_every_node_and_container(plan) -> None:
    eps = endpoints(plan)
    assert len(eps) == 30
    assert [(e.name, e.ipv4, e.ipv6) for e in eps] == plan.overlay_addresses()
    assert {e.router for e in eps if e.kind == "container"} == {n.name for n in plan.routers()}


def test_spoke_pair_avoids_the_hub_and_prefers_the_narrowest_underlay(plan) -> None:
    assert spoke_pair(plan) == ("azure", "gcp")
    gcp_hub = lab_plan(load_raw("dev", None, {"hub": "azure"}))
    assert "azure" not in spoke_pair(gcp_hub)


def test_ping_script_output_round_trip() -> None:
    script = ping_script(["10.0.0.1", "fd00::1"], attempts=2)
    assert "10.0.0.1 fd00::1" in script and "-lt 2" in script
    assert parse_ping_lines("10.0.0.1 1 1\nfd00::1 2 0\ngarbage\n") == {"10.0.0.1": (1, True), "fd00::1": (2, False)}


PING_OUTPUT = """PING 10.250.4.2 (10.250.4.2) 1322(1350) bytes of data.
1330 bytes from 10.250.4.2: icmp_seq=1 ttl=64 time=0.250 ms
1330 bytes from 10.250.4.2: icmp_seq=3 ttl=64 time=0.150 ms

--- 10.250.4.2 ping statistics ---
3 packets transmitted, 2 received, 33.3333% packet loss, time 402ms
rtt min/avg/max/mdev = 0.150/0.200/0.250/0.050 ms
"""


class FakeRun:
    """A probes.Run that answers from a script of (exit status, stdout) and records every command."""

    def __init__(self, *answers: tuple[int, str]) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[list[str], float | None]] = []

    def __call__(self, argv: list[str], timeout: float | None) -> subprocess.CompletedProcess[str]:
        self.calls.append((argv, timeout))
        rc, out = self.answers.pop(0) if self.answers else (1, "")
        return subprocess.CompletedProcess(argv, rc, out, "")


def test_ping_from_a_namespace_with_the_whole_packet_size() -> None:
    run = FakeRun((0, PING_OUTPUT))
    echo = probes.ping("10.250.4.2", "mco-gcp-client", count=3, interval=0.2, packet_size=1350, df=True, run=run, timeout=30)
    argv, timeout = run.calls[0]
    assert argv[:4] == ["nsenter", "--net=/run/netns/mco-gcp-client", "--", "ping"] and timeout == 30
    assert argv[4:] == ["-n", "-M", "do", "-c", "3", "-i", "0.2", "-W", "1", "-s", "1322", "10.250.4.2"]
    assert echo.ok and (echo.sent, echo.received) == (3, 2) and echo.rtts_ms == (0.25, 0.15) and echo.avg_ms == 0.2
    assert echo.last_line.startswith("rtt min/avg/max/mdev")
    assert probes.icmp_payload(1350, "fd00::1") == 1350 - 48
    assert probes.ping_argv("fd00::1", count=None, wait=None, quiet=True, pattern=b"\x01\xff") == [
        "ping",
        "-n",
        "-q",
        "-p",
        "01ff",
        "fd00::1",
    ]


def test_ping_attempts_stop_at_the_first_answer() -> None:
    run = FakeRun((1, "1 packets transmitted, 0 received"), (0, PING_OUTPUT), (0, PING_OUTPUT))
    assert probes.ping("10.250.4.2", attempts=3, run=run).ok and len(run.calls) == 2
    assert run.calls[0][0][0] == "ping"  # no namespace: right here
    run = FakeRun()
    echo = probes.ping("10.250.4.2", attempts=2, run=run)
    assert not echo.ok and echo.received == 0 and len(run.calls) == 2


def test_ping_many_runs_one_script_per_namespace() -> None:
    run = FakeRun((0, "10.0.0.1 1 1\nfd00::1 3 0\n"))
    got = probes.ping_many(["10.0.0.1", "fd00::1", "10.0.0.9"], "aws-c1", attempts=3, wait=2, run=run)
    assert got == {"10.0.0.1": probes.Tries(1, True), "fd00::1": probes.Tries(3, False)}  # 10.0.0.9: no line, no answer
    argv, timeout = run.calls[0]
    assert argv[:5] == ["nsenter", "--net=/run/netns/aws-c1", "--", "sh", "-c"] and "-W 2" in argv[5] and timeout == 60 + 10 * 3 * 2
    assert probes.ping_many([], "aws-c1", run=run) == {} and len(run.calls) == 1


def test_matrix_text_and_summary() -> None:
    results = [
        PingResult("a", "b", 4, "1", True),
        PingResult("a", "b", 6, "2", True),
        PingResult("b", "a", 4, "3", True),
        PingResult("b", "a", 6, "4", False),
    ]
    text = matrix_text(["a", "b"], results)
    rows = text.splitlines()
    assert rows[1].endswith("· +") and rows[2].endswith("4 ·")
    assert (cell(True, True), cell(False, True), cell(False, False), cell(None, None)) == ("+", "6", "x", " ")
    s = summary(results, [Probe("mtu", "x", True, "")])
    assert (s["pairs"], s["passed"], s["failed"], s["ok"]) == (4, 3, 1, False)
    doc = json.loads(to_json(["a", "b"], results, [], {"hub": "a"}))
    assert doc["hub"] == "a" and len(doc["failures"]) == 1 and doc["failures"][0]["dst"] == "a"


def test_junit_counts_and_failures() -> None:
    results = [PingResult("a", "b", 4, "10.0.0.2", True), PingResult("a", "b", 6, "fd00::2", False, 3)]
    probes = [Probe("mtu", "DF 1350", True, "answered"), Probe("hub-transit", "via hub", False, "counters flat")]
    root = ET.fromstring(to_junit(results, probes, 1.5))
    assert root.get("tests") == "4" and root.get("failures") == "2"
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert set(suites) == {"matrix", "mtu", "hub-transit"}
    failed = [c.get("name") for c in root.iter("testcase") if c.find("failure") is not None]
    assert failed == ["a -> b IPv6", "via hub"]


# --------------------------------------------------------------------------- swap


PING_LOG = """PING 10.250.4.2 (10.250.4.2) 56(84) bytes of data.
[1000.000] 64 bytes from 10.250.4.2: icmp_seq=1 ttl=64 time=0.2 ms
[1000.010] 64 bytes from 10.250.4.2: icmp_seq=2 ttl=64 time=0.2 ms
[1000.020] no answer yet for icmp_seq=3
[1000.030] no answer yet for icmp_seq=4
[1000.045] 64 bytes from 10.250.4.2: icmp_seq=5 ttl=64 time=0.2 ms
[1000.050] 64 bytes from 10.250.4.2: icmp_seq=6 ttl=64 time=0.2 ms
[1000.050] 64 bytes from 10.250.4.2: icmp_seq=6 ttl=64 time=0.2 ms (DUP!)

--- 10.250.4.2 ping statistics ---
7 packets transmitted, 4 received, 42% packet loss, time 60ms
"""


def test_ping_log_disruption() -> None:
    log = parse_ping_log(PING_LOG)
    assert sorted(log.replies) == [1, 2, 5, 6] and (log.transmitted, log.received) == (7, 4)
    d = disruption(log, 0.01, apply_started=1000.005)
    assert d["lost"] == 2 and d["lost_seqs"] == [3, 4]  # seq 7, unanswered when ping stopped, is not a loss
    assert log.duplicates == 1 and d["duplicates"] == 1
    assert d["outage_ms"] == pytest.approx(35.0) and d["converged_after_s"] == pytest.approx(0.04)
    assert disruption(parse_ping_log(""))["converged"] is False


def test_swap_pushes_in_the_programs_order_and_probes_through_both_hubs() -> None:
    old, new = lab_plan(load_raw("dev", None, {})), lab_plan(load_raw("dev", None, {"hub": "gcp"}))
    routers = [r.name for r in new.routers()]
    stages = push_stages(new)
    assert stages[0] == [*((r, "prepare") for r in routers), *((n.name, None) for n in new.nodes if n.kind == "client")]
    assert stages[1] == [("gcp-router", "switch")]
    assert stages[2] == [(r, "switch") for r in routers if r != "gcp-router"]
    assert stages[3] == [(r, None) for r in routers]
    assert [stage_name(s) for s in stages] == ["prepare + push", "switch gcp-router", "switch", "push"]
    assert push_stages(new, one_step=True) == [[(n.name, None) for n in new.nodes]]
    pair = probe_pair(old, new)
    assert "aws" not in pair and "gcp" not in pair
    assert hub_paths(old, new, pair) == [("aws", pair[1]), ("gcp", pair[1])]
    assert hub_paths(old, old, pair) == []


def test_stale_fdb_entries_after_a_hub_change(raw: dict[str, Any]) -> None:
    new = lab_plan(load_raw("dev", None, {"hub": "gcp"}))
    azure_client = overlay_mac(2, 2)
    assert mac_site(azure_client) == 2 and mac_site("0e:8c:03:03:8c:86") is None
    entries = [
        {"mac": azure_client, "ifname": "ovl-r1", "master": "br-overlay", "state": ""},  # learned via the old hub
        {"mac": azure_client, "ifname": "ovl-r2", "master": "br-overlay", "state": ""},  # right tunnel
        {"mac": overlay_mac(1, 1), "ifname": "ovl-r1", "master": "br-overlay", "state": ""},  # old hub itself
        {"mac": azure_client, "ifname": "ovl-r1", "flags": ["self"], "state": ""},  # VXLAN's own table
        {"mac": "0e:8c:03:03:8c:86", "ifname": "ovl-r1", "master": "br-overlay", "state": ""},
    ]
    assert stale_fdb(new, "gcp-router", entries) == [{"node": "gcp-router", "mac": azure_client, "dev": "ovl-r1", "expected": "ovl-r2"}]
    # A spoke reaches everything through its one tunnel to the hub: nothing there is stale.
    assert stale_fdb(new, "oci-router", [{"mac": azure_client, "ifname": "ovl-r3", "master": "br-overlay", "state": ""}]) == []


def test_swap_probe_pair_is_spoke_before_and_after(plan) -> None:
    new = lab_plan(load_raw("dev", None, {"hub": "gcp"}))
    a, b = probe_pair(plan, new)
    assert {a, b}.isdisjoint({"aws", "gcp"}) and a != b


# --------------------------------------------------------------------------- CLI


def test_cli_arguments() -> None:
    p = cli.parser()
    args = p.parse_args(["up", "--sites", "aws,gcp", "--topology", "point-to-point", "--containers", "netns"])
    assert args.sites == ["aws", "gcp"] and args.containers == "netns" and args.stack == "dev"
    assert args.results == cli.DEFAULT_RESULTS
    with pytest.raises(SystemExit):
        p.parse_args(["up", "--sites", "aws"])
    with pytest.raises(SystemExit):
        p.parse_args(["swap", "--protocol", "ipsec"])


def test_cli_works_without_the_vm_module(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    def missing(name: str):
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    monkeypatch.setattr(importlib, "import_module", missing)
    p = cli.parser()
    assert p.parse_args(["down"]).command == "down"


def test_cli_needs_root_and_says_so(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert cli.main(["down"]) == 2
    assert "needs root" in capsys.readouterr().err


def test_missing_tools_name_their_package(monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from lab import lifecycle

    monkeypatch.setattr(shutil, "which", lambda tool: None if tool in ("dockerd", "nsenter") else f"/usr/bin/{tool}")
    with pytest.raises(LabError) as e:
        lifecycle.check_tools("docker")
    assert "apt-get install -y docker.io util-linux" in str(e.value)
    monkeypatch.setattr(shutil, "which", lambda tool: f"/usr/bin/{tool}")
    lifecycle.check_tools("netns")


def test_matrix_retries_failures_calmly_and_keeps_real_failures(plan) -> None:
    from lab.check import ATTEMPTS, ping_matrix

    eps = endpoints(plan)[:3]  # aws-router, aws-client, azure-router
    dead = eps[2].ipv6  # never answers
    slow = eps[1].ipv4  # from eps[0] only, answers only in the calm pass; eps[2] reaches everything at once
    calls: list[tuple[str, str, tuple[str, ...]]] = []

    class FakeLab:
        def endpoint_ns(self, ep):
            return ep.name

        def run(self, argv, timeout=None):
            src, script = argv[1].removeprefix("--net=/run/netns/"), argv[-1]
            targets = script.split("for t in ", 1)[1].split("; do", 1)[0].split()
            calm = "-W 2" in script
            calls.append((src, "calm" if calm else "first", tuple(sorted(targets))))
            lines = [f"{t} {ATTEMPTS} {0 if t == dead or (t == slow and src == eps[0].name and not calm) else 1}" for t in targets]
            return subprocess.CompletedProcess(argv, 0, "\n".join(lines), "")

    results = ping_matrix(FakeLab(), eps)  # type: ignore[arg-type]
    assert len(results) == 3 * 2 * 2
    bad = [(r.src, r.dst, r.family, r.attempts) for r in results if not r.ok]
    assert bad == [(eps[0].name, eps[2].name, 6, 2 * ATTEMPTS), (eps[1].name, eps[2].name, 6, 2 * ATTEMPTS)]
    [healed] = [r for r in results if r.target == slow and r.src == eps[0].name]
    assert healed.ok and healed.attempts == 2 * ATTEMPTS
    untouched = [r for r in results if r.src == eps[2].name]
    assert len(untouched) == 4 and all(r.ok and r.attempts == ATTEMPTS for r in untouched)
    # Every source gets the first pass; the calm pass goes to the sources with a failed pair (not eps[2]), each
    # asked for its failed targets only.
    assert sorted(c[0] for c in calls if c[1] == "first") == sorted(e.name for e in eps)
    assert sorted((c[0], c[2]) for c in calls if c[1] == "calm") == sorted(
        [(eps[0].name, tuple(sorted((dead, slow)))), (eps[1].name, (dead,))]
    )


def test_conntrack_counts_flows_not_the_nodes_own_membership_reports() -> None:
    from lab.fastpath import count_tracked

    text = (
        "udp      17 29 src=198.51.100.2 dst=10.1.1.10 sport=40000 dport=4789 [UNREPLIED] src=10.1.1.10 dst=198.51.100.2 "
        "sport=4789 dport=40000 mark=0 use=1\n"
        "icmp     1 29 src=10.250.2.1 dst=10.250.1.10 type=8 code=0 id=7 src=10.250.1.10 dst=10.250.2.1 type=0 code=0 id=7 mark=0 use=1\n"
        "unknown  2 599 src=10.250.1.1 dst=224.0.0.22 [UNREPLIED] src=224.0.0.22 dst=10.250.1.1 mark=0 use=1\n"
        "icmpv6   58 29 src=fd00:6f76:6c00::1:1 dst=ff02::16 type=143 code=0 [UNREPLIED] mark=0 use=1\n"
    )
    assert count_tracked(text, 4789, ["10.250.0.0/16", "fd00:6f76:6c00::/64"]) == {"tunnel": 1, "overlay": 1}
