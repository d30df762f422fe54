"""The node script: refuses bad configs without touching anything; in namespaces (root), converges two nodes
from their rendered payloads into a working VXLAN overlay, idempotently, and in place on config changes."""

from __future__ import annotations

import base64
import copy
import gzip
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from multicloud_overlay.cloudinit import overlay_node
from multicloud_overlay.cloudinit.render import (
    INSTALL_SCRIPT_COMMAND,
    NODE_CONFIG,
    PUSH_COMMAND,
    boot_script,
    node_script,
    packed_node_script,
    read_payload,
    render_user_data,
    script_sha256,
    unit_exec_start,
)
from multicloud_overlay.overlay.config import parse_config
from multicloud_overlay.overlay.encapsulation import PAIR_KEY_BYTES
from multicloud_overlay.overlay.plan import Plan, build_plan, node_config
from tests.harness import ROOT
from tests.test_plan import config_of

SCRIPT = ROOT / "cloudinit" / "overlay_node.py"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces")


def good_doc(encryption: str = "none") -> dict[str, Any]:
    plan = build_plan(parse_config(config_of({"a": ("aws", 1), "b": ("gcp", 2)}, "a", encryption=encryption)))
    keys = {"a--b": "ab" * PAIR_KEY_BYTES} if encryption == "ipsec" else None
    return node_config(plan, "a-router", {"a": "198.51.100.1", "b": "198.51.100.2"}, pair_keys=keys)


# ---------------------------------------------------------------- validation (no root)


def test_good_config_validates() -> None:
    assert overlay_node.validate(good_doc()) == []
    assert overlay_node.validate(good_doc("ipsec")) == []


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda d: d["tunnels"][0].pop("psk"), "tunnels[0].psk: not 144 lower-case hex digits"),
        (lambda d: d["tunnels"][0].update(psk="ab" * 35), "tunnels[0].psk"),
        (lambda d: d["tunnels"][0].update(psk="AB" * 72), "tunnels[0].psk"),
        (lambda d: d["ipsec"].update(id="2001:db8::1"), "ipsec.id"),
        (lambda d: d["ipsec"].update(rekey_seconds=5), "ipsec.rekey_seconds: 5 is not a whole number from 60"),
        (lambda d: d["ipsec"].update(replay_window=0), "ipsec.replay_window"),
        (lambda d: d["ipsec"].update(esp_proposals="aes256gcm16; rm -rf /"), "ipsec.esp_proposals"),
        (lambda d: d.pop("ipsec"), "a key given but ipsec is not set"),
    ],
)
def test_bad_ipsec_config_is_listed(damage: Any, expected: str) -> None:
    doc = good_doc("ipsec")
    damage(doc)
    problems = overlay_node.validate(doc)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda d: d.pop("tunnels"), "tunnels: missing"),
        (lambda d: d.update(mtu=900), "mtu: 900"),
        (lambda d: d.update(protocol="gre"), "protocol: 'gre'"),
        (lambda d: d["bridge"].update(ipv4="10.0.0.1"), "bridge.ipv4"),
        (lambda d: d["tunnels"][0].update(remote="not-an-ip"), "tunnels[0].remote"),
        (lambda d: d["tunnels"][1].update(vni=d["tunnels"][0]["vni"]), "share a VNI"),
        (lambda d: d["containers"]["items"][0].update(link="eth9"), "containers.items[0].link"),
        (lambda d: d.update(version=2), "version"),
    ],
)
def test_bad_config_is_listed(damage: Any, expected: str) -> None:
    doc = good_doc()
    damage(doc)
    problems = overlay_node.validate(doc)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize("content", ['{"version": 1, "node": "a-rou', "", "[]", "\x00\x01garbage"])
def test_corrupted_config_changes_nothing(tmp_path: Path, content: str) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "applied.json").write_text(json.dumps(good_doc()))
    bad = tmp_path / "node.json"
    bad.write_text(content)
    before = (state / "applied.json").read_text()
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "apply", "--config", str(bad), "--state-dir", str(state)], capture_output=True, text=True
    )
    assert proc.returncode == overlay_node.EXIT_REJECTED
    assert "config rejected, nothing changed" in proc.stderr and "previous config stays" in proc.stderr
    assert proc.stdout == ""  # not a single step ran
    assert (state / "applied.json").read_text() == before


def test_validate_command(tmp_path: Path) -> None:
    f = tmp_path / "node.json"
    f.write_text(json.dumps(good_doc()))
    proc = subprocess.run([sys.executable, str(SCRIPT), "validate", "--config", str(f)], capture_output=True, text=True)
    assert proc.returncode == 0 and "valid config for a-router" in proc.stdout


# ---------------------------------------------------------------- security review (issue #20), no root


def three_site_doc(encryption: str = "none", node: str = "a-router") -> dict[str, Any]:
    """A hub's config: two router tunnels across the internet and the one to its client."""
    plan = build_plan(parse_config(config_of({"a": ("aws", 1), "b": ("gcp", 2), "c": ("azure", 3)}, "a", encryption=encryption)))
    keys = {"a--b": "ab" * PAIR_KEY_BYTES, "a--c": "ac" * PAIR_KEY_BYTES, "b--c": "bc" * PAIR_KEY_BYTES} if encryption == "ipsec" else None
    return node_config(plan, node, {"a": "198.51.100.1", "b": "198.51.100.2", "c": "198.51.100.3"}, pair_keys=keys)


def test_firewall_admits_the_tunnel_port_from_each_tunnels_peer_only() -> None:
    doc = three_site_doc()
    rules = overlay_node.firewall_rules(doc, 4)["OVERLAY-IN"]
    peers = [t["remote"] for t in doc["tunnels"]]
    assert sorted(peers) == ["10.1.2.20", "198.51.100.2", "198.51.100.3"]  # the client (LAN) and the two spokes (public)
    # First nothing from the overlay to SSH or the tunnel port (a spoofed peer address included), then one rule per
    # tunnel with its peer as the only source, then nothing else to the tunnel port.
    assert rules[:2] == ["-i br-overlay -p tcp -m tcp --dport 22 -j DROP", "-i br-overlay -p udp -m udp --dport 4789 -j DROP"]
    assert rules[2:-1] == [f"-s {peer}/32 -p udp -m udp --dport 4789 -j RETURN" for peer in peers]
    assert rules[-1] == "-p udp -m udp --dport 4789 -j DROP"
    # The IPv6 chain has no IPv4 peer but the same refusals.
    assert overlay_node.firewall_rules(doc, 6)["OVERLAY-IN"] == [*rules[:2], rules[-1]]
    # A router forwards bridged overlay frames and nothing else; a client's FORWARD chain is not ours to fill.
    assert overlay_node.firewall_rules(doc, 4)["OVERLAY-FWD"] == ["-i br-overlay -o br-overlay -j RETURN", "-j DROP"]
    client = three_site_doc(node="a-client")
    assert list(overlay_node.firewall_rules(client, 4)) == ["OVERLAY-IN"]
    assert overlay_node.firewall_rules(client, 4)["OVERLAY-IN"][2:] == [
        f"-s {client['tunnels'][0]['remote']}/32 -p udp -m udp --dport 4789 -j RETURN",
        "-p udp -m udp --dport 4789 -j DROP",
    ]
    # GENEVE's port, and an IPv6 peer lands in the IPv6 chain.
    doc["port"] = 6081
    doc["tunnels"][0]["remote"] = "2001:db8::2"
    v6 = overlay_node.firewall_rules(doc, 6)["OVERLAY-IN"]
    assert "-s 2001:db8::2/128 -p udp -m udp --dport 6081 -j RETURN" in v6 and v6[-1] == "-p udp -m udp --dport 6081 -j DROP"


def test_tunnel_datagrams_bypass_connection_tracking_where_the_image_tracks() -> None:
    """Where the image's firewall tracks connections (open_host_firewall: OCI), the raw table's chain (jumped to
    from PREROUTING and OUTPUT) untracks the tunnel port and, with IPsec, the NAT-T port, both directions (both
    ends send to the port), on routers and clients; no other traffic. Elsewhere there is no such chain."""
    udp = "-p udp -m udp --dport"
    assert overlay_node.OWN_CHAINS["OVERLAY-NOTRACK"] == ("raw", ("PREROUTING", "OUTPUT"))
    for doc, ports in (
        (three_site_doc(), [4789]),
        (three_site_doc(node="a-client"), [4789]),
        ({**three_site_doc(), "port": 6081, "protocol": "geneve"}, [6081]),
        (three_site_doc("ipsec"), [4789, 4500, 500]),
    ):
        for family in (4, 6):
            assert "OVERLAY-NOTRACK" not in overlay_node.firewall_rules(doc, family)
            stateful = {**doc, "open_host_firewall": True}
            assert overlay_node.firewall_rules(stateful, family)["OVERLAY-NOTRACK"] == [f"{udp} {p} -j CT --notrack" for p in ports]


def test_firewall_takes_encrypted_tunnels_only_out_of_ipsec() -> None:
    doc = three_site_doc("ipsec")
    rules = overlay_node.firewall_rules(doc, 4)["OVERLAY-IN"]
    udp = "-p udp -m udp --dport"
    assert rules[:4] == [
        "-i br-overlay -p tcp -m tcp --dport 22 -j DROP",
        f"-i br-overlay {udp} 4789 -j DROP",
        f"-i br-overlay {udp} 4500 -j DROP",
        f"-i br-overlay {udp} 500 -j DROP",
    ]
    for t in doc["tunnels"]:
        src = f"-s {t['remote']}/32"
        if "psk" in t:  # the spokes: IKE and ESP in UDP 4500 from the peer, the tunnel port only once decrypted
            assert f"{src} {udp} 4500 -j RETURN" in rules
            assert f"{src} {udp} 4789 -m policy --dir in --pol ipsec -j RETURN" in rules
            assert f"{src} {udp} 4789 -j RETURN" not in rules
        else:  # the client's tunnel stays on the site LAN, in clear
            assert f"{src} {udp} 4789 -j RETURN" in rules and f"{src} {udp} 4500 -j RETURN" not in rules
    # UDP 500 is admitted from no one: IKE starts on 4500 (RFC 7296 2.23).
    assert not any(f"{udp} 500 -j RETURN" in rule for rule in rules)
    assert rules[-3:] == [f"{udp} 4789 -j DROP", f"{udp} 4500 -j DROP", f"{udp} 500 -j DROP"]


@pytest.mark.parametrize(
    "image",
    [
        "--privileged",
        "-v/:/host",
        "busybox --privileged",
        "busybox\n",
        " busybox",
        "busybox:1.36 -v /:/x",
        "BUSYBOX",
        "",
        "a/../b",
        "busybox:-x",
    ],
)
def test_an_image_that_is_not_a_reference_is_refused(image: str) -> None:
    doc = good_doc()
    doc["containers"]["image"] = image
    assert any(p.startswith("containers.image:") for p in overlay_node.validate(doc)), image


@pytest.mark.parametrize(
    "image",
    [
        "mco-lab/busybox:latest",
        "busybox",
        "localhost:5000/team/app:1.0",
        "docker.io/library/busybox:1.36.1@sha256:73aaf090f3d85aa34ee199857f03fa3a95c8ede2ffd4cc2cdb5b94e566b11662",
        "registry.example.com/a_b/c__d/e-f@sha256:" + "0" * 64,
    ],
)
def test_image_references_pass(image: str) -> None:
    doc = good_doc()
    doc["containers"]["image"] = image
    assert overlay_node.validate(doc) == []


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("container", "."),
        ("container", ".."),
        ("container", "-h"),
        ("container", "--rm"),
        ("container", "c\u00e91"),  # not ASCII (str.isalnum() says yes)
        ("container", "c 1"),
        ("container", "c/1"),
        ("bridge", "-br"),
        ("bridge", ".."),
        ("node", "--help"),
        ("link", "ovl-k1\n"),
    ],
)
def test_names_that_could_be_options_or_paths_are_refused(where: str, value: str) -> None:
    doc = good_doc()
    target, key = {
        "container": (doc["containers"]["items"][0], "name"),
        "bridge": (doc["bridge"], "name"),
        "node": (doc, "node"),
        "link": (doc["containers"]["items"][0], "link"),
    }[where]
    target[key] = value
    assert overlay_node.validate(doc), value


def test_other_holes_of_the_validator_are_closed() -> None:
    for damage in (
        lambda d: d.update(port=True),
        lambda d: d.update(version=True),
        lambda d: d["bridge"].update(mac="aa:bb:cc:dd:ee:ff --x"),
        lambda d: d["containers"]["items"][0].update(mac="a:b:c:d:e:f"),
        lambda d: d["tunnels"][0].update(remote="fe80::1%eth0"),
        lambda d: d["containers"]["items"].append(dict(d["containers"]["items"][0])),  # the same name twice
    ):
        doc = good_doc()
        doc["containers"]["items"] = [dict(c) for c in doc["containers"]["items"]] or [
            {"name": "a-c1", "link": "ovl-k1", "ipv4": "10.250.1.11/16", "ipv6": "fd00::11/64", "mac": "02:00:00:00:00:01"}
        ]
        assert overlay_node.validate(doc) == []
        damage(doc)
        assert overlay_node.validate(doc), doc


def test_a_router_holds_exactly_the_planned_neighbours_of_its_fdb_entries() -> None:
    """step_neighbours: the addresses of its fdb entries become permanent neighbours of the bridge with the entry's
    MAC (one batch: a missing one added, a wrong MAC replaced, one no entry names removed); a client holds none."""

    class Neighbours(overlay_node.Runner):
        def __init__(self) -> None:
            super().__init__(lambda _line: None)
            self.batches: list[str] = []

        def run(self, argv: Any, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
            if list(argv[:3]) == ["ip", "-j", "neigh"]:
                have = [
                    {"dst": "10.250.2.1", "lladdr": "02:6f:00:02:00:01", "state": ["PERMANENT"]},
                    {"dst": "fd00:6f76:6c00:0::2:1", "lladdr": "02:6f:00:02:00:09", "state": ["PERMANENT"]},
                    {"dst": "10.250.9.9", "lladdr": "02:6f:00:09:00:09", "state": ["PERMANENT"]},
                ]
                return subprocess.CompletedProcess(argv, 0, json.dumps(have), "")
            self.batches.append(stdin or "")
            return subprocess.CompletedProcess(argv, 0, "", "")

    doc = good_doc()
    doc["kind"] = "router"
    port = doc["tunnels"][0]["name"]
    doc["fdb"] = [
        {"mac": "02:6f:00:02:00:01", "port": port, "ips": ["10.250.2.1", "fd00:6f76:6c00::2:1"]},
        {"mac": "02:6f:00:02:00:02", "port": port, "ips": ["10.250.2.2", "fd00:6f76:6c00::2:2"]},
        {"mac": "02:6f:00:03:00:03", "port": port},
    ]
    assert overlay_node.validate(doc) == []
    r = Neighbours()
    overlay_node.step_neighbours(r, doc)
    (batch,) = r.batches
    assert batch.splitlines() == [
        "neigh del 10.250.9.9 dev br-overlay",
        "neigh replace 10.250.2.2 lladdr 02:6f:00:02:00:02 dev br-overlay nud permanent",
        "neigh replace fd00:6f76:6c00::2:1 lladdr 02:6f:00:02:00:01 dev br-overlay nud permanent",
        "neigh replace fd00:6f76:6c00::2:2 lladdr 02:6f:00:02:00:02 dev br-overlay nud permanent",
    ]
    doc["fdb"][0]["ips"] = ["10.250.2.1", "not-an-address"]
    assert any(p.startswith("fdb[0].ips") for p in overlay_node.validate(doc))
    doc["kind"] = "client"
    r = Neighbours()
    overlay_node.step_neighbours(r, doc)
    assert r.batches == []


class FakeDocker(overlay_node.Runner):
    """Docker as a node has it: `inspect` answers from `state` (None: no such container); records every command."""

    def __init__(self, state: dict[str, Any] | None) -> None:
        super().__init__(lambda _line: None)
        self.state = state
        self.argvs: list[list[str]] = []

    def run(self, argv: Any, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = list(argv)
        self.argvs.append(argv)
        if argv[:3] == ["docker", "inspect", "--type"]:
            return subprocess.CompletedProcess(argv, 1 if self.state is None else 0, json.dumps([self.state]), "")
        if argv[:3] == ["docker", "inspect", "--format"]:
            return subprocess.CompletedProcess(argv, 0, "4242\n", "")
        return subprocess.CompletedProcess(argv, 0, "", "")


def test_containers_run_without_capabilities_read_only_and_image_after_double_dash() -> None:
    doc = good_doc()
    doc["containers"]["image"] = "mco-lab/busybox:latest"
    c = {"name": "zz-test-c1", "link": "ovl-k1"}
    r = FakeDocker(None)
    assert overlay_node.container_netns(r, doc, c, "a-router")
    (run,) = [a for a in r.argvs if a[:2] == ["docker", "run"]]
    flags = run[: run.index("--")]
    assert {"--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--read-only", "--tmpfs", "/tmp"} <= set(flags)
    assert run[run.index("--") + 1 :] == ["mco-lab/busybox:latest", "sleep", "2147483647"]
    # A container of an earlier node script (not hardened) is made again; a hardened one is kept.
    old = {"Config": {"Image": "mco-lab/busybox:latest"}, "State": {"Running": True, "Pid": 4242}, "HostConfig": {"CapDrop": None}}
    r = FakeDocker(old)
    overlay_node.container_netns(r, doc, c, "a-router")
    assert ["docker", "rm", "-f", "zz-test-c1"] in r.argvs and any(a[:2] == ["docker", "run"] for a in r.argvs)
    hardened = {**old, "HostConfig": {"CapDrop": ["ALL"], "ReadonlyRootfs": True, "SecurityOpt": ["no-new-privileges"]}}
    r = FakeDocker(hardened)
    overlay_node.container_netns(r, doc, c, "a-router")
    assert not any(a[:2] in (["docker", "run"], ["docker", "rm"]) for a in r.argvs)
    # A running container kept as it is costs one docker call: its inspect gives the pid of its namespace too.
    assert [a for a in r.argvs if a[0] == "docker"] == [["docker", "inspect", "--type", "container", "zz-test-c1"]]
    assert ["ip", "netns", "identify", "4242"] in r.argvs or ["ip", "netns", "attach", "zz-test-c1", "4242"] in r.argvs


class EspKernel(overlay_node.Runner):
    """A kernel that takes ESP SAs (step_ipsec's probe): every command succeeds and is recorded."""

    def __init__(self) -> None:
        super().__init__(lambda _line: None)
        self.argvs: list[list[str]] = []

    def run(self, argv: Any, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        self.argvs.append(list(argv))
        return subprocess.CompletedProcess(list(argv), 0, "", "")


def test_swanctl_conf_holds_one_ikev2_connection_per_encrypted_tunnel() -> None:
    doc = three_site_doc("ipsec")
    conf = overlay_node.swanctl_conf(doc)
    encrypted = [t for t in doc["tunnels"] if "psk" in t]
    assert [t["name"] for t in encrypted] == ["ovl-r2", "ovl-r3"]  # the two spokes; the client's LAN tunnel has none
    for t in encrypted:
        block = conf[conf.index(f"{t['name']} {{") :]
        block = block[: block.index("close_action")]
        for line in (
            "version = 2",
            f"local_addrs = {t['local']}",
            f"remote_addrs = {t['remote']}",
            "local_port = 4500",
            "remote_port = 4500",
            "encap = yes",
            "proposals = aes256gcm16-prfsha384-x25519",
            "dpd_delay = 10s",
            "auth = psk",
            f"id = {doc['ipsec']['id']}",
            f"id = {t['remote']}",
            "mode = transport",
            "local_ts = dynamic[udp]",
            "remote_ts = dynamic[udp]",
            "esp_proposals = aes256gcm16-x25519",
            "rekey_time = 3600s",
            f"rekey_packets = {2**30}",
            "replay_window = 1024",
            "start_action = trap",
            "dpd_action = trap",
        ):
            assert any(x.strip() == line for x in block.splitlines()), (t["name"], line)
        assert f"id-1 = {doc['ipsec']['id']}\n  id-2 = {t['remote']}\n  secret = 0x{t['psk']}\n" in conf
    assert conf.count("secret = 0x") == 2 and conf.count("version = 2") == 2


class FakeIke(overlay_node.Ike):
    """strongSwan as the node script sees it through swanctl: connections loaded, SAs up once loaded (`up`), calls
    recorded. Files are really written (under the state dir, as a lab node's)."""

    up: ClassVar[bool] = True
    calls: ClassVar[list[tuple[str, ...]]] = []
    sa_names: ClassVar[dict[str, bool]] = {}
    loaded: ClassVar[list[str]] = []
    alive: ClassVar[bool] = False

    def __init__(self, r: overlay_node.Runner, state_dir: str) -> None:
        super().__init__(r, state_dir)
        self.unit = False

    def swanctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        FakeIke.calls.append(args)
        out = ""
        if args[0] == "--list-conns":
            out = "".join(f"{n}: IKEv2, no reauthentication, rekeying every 14400s\n" for n in FakeIke.loaded)
        elif args[0] == "--load-all":
            FakeIke.loaded = re.findall(r"(?m)^(ovl-r\d+) \{", Path(args[-1]).read_text())
            FakeIke.sa_names = {n: FakeIke.up for n in FakeIke.loaded} | {n: v for n, v in FakeIke.sa_names.items() if n not in FakeIke.loaded}
        elif args[0] == "--terminate":
            FakeIke.sa_names.pop(args[2], None)
        return subprocess.CompletedProcess(["swanctl", *args], 0, out, "")

    def running(self) -> bool:
        return FakeIke.alive

    def start(self) -> None:
        FakeIke.alive = True
        self.r.changes.append("started charon")

    def stop(self) -> None:
        FakeIke.alive = False
        self.r.changes.append("stopped charon")

    def sas(self) -> dict[str, bool]:
        return dict(FakeIke.sa_names)


@pytest.fixture
def fake_ike(monkeypatch: pytest.MonkeyPatch) -> type[FakeIke]:
    monkeypatch.setattr(overlay_node, "Ike", FakeIke)
    monkeypatch.setattr(overlay_node.shutil, "which", lambda name: f"/usr/sbin/{name}")
    FakeIke.up, FakeIke.calls, FakeIke.sa_names, FakeIke.alive, FakeIke.loaded = True, [], {}, False, []
    return FakeIke


def test_ipsec_step_loads_once_closes_what_went_and_stops_when_encryption_goes(tmp_path: Path, fake_ike: type[FakeIke]) -> None:
    doc = three_site_doc("ipsec")
    r = EspKernel()
    overlay_node.step_ipsec(r, doc, str(tmp_path))
    assert r.changes == ["started charon", "loaded the IPsec connections"]
    conf = tmp_path / "ike" / "swanctl" / "swanctl.conf"
    assert conf.stat().st_mode & 0o777 == 0o600 and conf.read_text() == overlay_node.swanctl_conf(doc)  # the keys' file
    assert "charon.vici" in (tmp_path / "ike" / "strongswan.conf").read_text()
    # Again, same config, SAs up: nothing loaded, nothing initiated.
    fake_ike.calls.clear()
    r = EspKernel()
    overlay_node.step_ipsec(r, doc, str(tmp_path))
    assert r.changes == [] and [c[0] for c in fake_ike.calls] == ["--list-conns"]
    # A hub swap leaves this router one peer: the other's connection is unloaded and its SA closed.
    fewer = {**doc, "tunnels": [t for t in doc["tunnels"] if t["name"] != "ovl-r3"]}
    r = EspKernel()
    overlay_node.step_ipsec(r, fewer, str(tmp_path))
    assert r.changes == ["loaded the IPsec connections", "closed IPsec ovl-r3"] and fake_ike.sa_names == {"ovl-r2": True}
    # Encryption off: SAs closed, daemon stopped, the keys' file gone.
    clear = {k: v for k, v in three_site_doc().items()}
    r = EspKernel()
    overlay_node.step_ipsec(r, clear, str(tmp_path))
    assert r.changes == ["closed IPsec ovl-r2", "stopped charon"] and not conf.exists()
    # The connections (and their trap policies) went before the SA: no datagram could raise a new acquire meanwhile.
    off = [c[0] for c in fake_ike.calls if c[0] in ("--load-all", "--terminate")][-2:]
    assert off == ["--load-all", "--terminate"]


class LarvalSa(EspKernel):
    """A kernel still holding a larval SA (SPI 0, the acquire of a datagram that met a trap policy) of the tunnel
    address for its first `left` listings, as the kernel does until net.core.xfrm_acq_expires."""

    def __init__(self, local: str, left: int) -> None:
        super().__init__()
        self.local, self.left = local, left

    def run(self, argv: Any, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        done = super().run(argv, check, stdin)
        if list(argv) == ["ip", "xfrm", "state"] and self.left:
            self.left -= 1
            return subprocess.CompletedProcess(list(argv), 0, f"src {self.local} dst 198.51.100.2\n\tproto esp spi 0x00000000 reqid 1 mode transport\n", "")
        return done


def test_encryption_off_returns_once_no_larval_sa_of_the_tunnel_address_is_left(
    tmp_path: Path, fake_ike: type[FakeIke], monkeypatch: pytest.MonkeyPatch
) -> None:
    overlay_node.step_ipsec(EspKernel(), three_site_doc("ipsec"), str(tmp_path))
    slept: list[float] = []
    monkeypatch.setattr(overlay_node.time, "sleep", slept.append)
    clear = three_site_doc()
    local = next(t["local"] for t in clear["tunnels"] if t["name"].startswith("ovl-r"))
    r = LarvalSa(local, 3)
    overlay_node.step_ipsec(r, clear, str(tmp_path))
    assert r.left == 0 and len(slept) == 3 and r.argvs.count(["ip", "xfrm", "state"]) == 4


def test_a_tunnel_without_its_sa_is_initiated_and_the_switch_waits_for_it(
    tmp_path: Path, fake_ike: type[FakeIke], monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = three_site_doc("ipsec")
    fake_ike.up = False  # the peers do not answer
    overlay_node.step_ipsec(EspKernel(), doc, str(tmp_path))
    assert [c[:3] for c in fake_ike.calls if c[0] == "--initiate"] == [("--initiate", "--child", "ovl-r2"), ("--initiate", "--child", "ovl-r3")]
    listings: list[int] = []
    monkeypatch.setattr(FakeIke, "sas", lambda self: listings.append(1) or dict(FakeIke.sa_names))
    slept: list[float] = []
    real_sleep = time.sleep
    monkeypatch.setattr(overlay_node.time, "sleep", lambda s: (slept.append(s), real_sleep(s)))
    with pytest.raises(overlay_node.CommandFailed, match="no IPsec SA with the peer of ovl-r2, ovl-r3 after 1 s") as failed:
        overlay_node.step_ipsec(EspKernel(), doc, str(tmp_path), wait=1)
    assert not any(t["psk"][:16] in str(failed.value) for t in doc["tunnels"] if "psk" in t)
    # One `swanctl --list-sas` before initiating, then one per round of the wait (not one per tunnel).
    assert slept and len(listings) == 1 + len(slept) + 1


def test_a_refused_ipsec_config_is_reported_without_the_key(tmp_path: Path, fake_ike: type[FakeIke], monkeypatch: pytest.MonkeyPatch) -> None:
    doc = three_site_doc("ipsec")

    def refuse(self: FakeIke, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        if args[0] == "--load-all":  # as if swanctl quoted the offending line back
            raise overlay_node.CommandFailed(f"swanctl --load-all: exit 1: parsing 'secret = 0x{doc['tunnels'][0]['psk']}' failed")
        return subprocess.CompletedProcess(["swanctl"], 0, "", "")

    monkeypatch.setattr(FakeIke, "swanctl", refuse)
    with pytest.raises(overlay_node.CommandFailed, match="strongSwan refused the IPsec config") as failed:
        overlay_node.step_ipsec(EspKernel(), doc, str(tmp_path))
    assert doc["tunnels"][0]["psk"][:16] not in str(failed.value) and "<key>" in str(failed.value)


FIREWALL_STEP = """
import json, sys
sys.path.insert(0, sys.argv[1])
from multicloud_overlay.cloudinit import overlay_node
r = overlay_node.Runner(lambda _line: None)
overlay_node.step_firewall(r, json.loads(sys.stdin.read()))
print(json.dumps(r.changes))
"""


@needs_root
@pytest.mark.root
def test_firewall_chains_are_ours_idempotent_and_follow_the_config() -> None:
    """Real iptables in a throw-away namespace: our chains are jumped to first, replaced whole when the config
    changes (hub swap, protocol, encryption, router -> client) and left alone when it does not; rules that are
    not ours stay where they are."""
    ns = f"t{os.getpid() % 10000}-fw"
    sh("ip", "netns", "add", ns)
    inside = ("nsenter", f"--net=/run/netns/{ns}", "--")

    def step(doc: dict[str, Any]) -> list[str]:
        proc = subprocess.run(
            [*inside, sys.executable, "-c", FIREWALL_STEP, str(ROOT)], input=json.dumps(doc), capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def saved(tool: str = "iptables", table: str = "filter") -> list[str]:
        return [line for line in sh(*inside, f"{tool}-save", "-t", table).stdout.splitlines() if line.startswith(("-A", ":"))]

    try:
        foreign = [("INPUT", "-p tcp -m tcp --dport 80 -j ACCEPT"), ("FORWARD", "-o eth9 -j ACCEPT"), ("THEIRS", "-j RETURN")]
        sh(*inside, "iptables", "-N", "THEIRS")
        for chain, rule in foreign:
            sh(*inside, "iptables", "-A", chain, *rule.split())
        sh(*inside, "iptables", "-t", "raw", "-A", "PREROUTING", "-p", "tcp", "--dport", "179", "-j", "CT", "--notrack")

        def oci(doc: dict[str, Any]) -> dict[str, Any]:
            return {**doc, "open_host_firewall": True}  # an image firewall that tracks connections: tunnels untracked

        hub = oci(three_site_doc())
        assert step(hub) == [
            "iptables: set OVERLAY-IN, OVERLAY-FWD",
            "iptables: set OVERLAY-NOTRACK (raw)",
            "ip6tables: set OVERLAY-IN, OVERLAY-FWD",
            "ip6tables: set OVERLAY-NOTRACK (raw)",
        ]
        for tool in ("iptables", "ip6tables"):
            assert [x for x in saved(tool, "raw") if x.startswith("-A")] == [
                "-A PREROUTING -j OVERLAY-NOTRACK",
                *(["-A PREROUTING -p tcp -m tcp --dport 179 -j CT --notrack"] if tool == "iptables" else []),
                "-A OUTPUT -j OVERLAY-NOTRACK",
                "-A OVERLAY-NOTRACK -p udp -m udp --dport 4789 -j CT --notrack",
            ]
        rules = saved()
        assert [x for x in rules if x.startswith(("-A INPUT", "-A FORWARD"))] == [
            "-A INPUT -j OVERLAY-IN",
            "-A INPUT -p tcp -m tcp --dport 80 -j ACCEPT",
            "-A FORWARD -j OVERLAY-FWD",
            "-A FORWARD -o eth9 -j ACCEPT",
        ]
        assert [x.removeprefix("-A OVERLAY-IN ") for x in rules if x.startswith("-A OVERLAY-IN")] == overlay_node.firewall_rules(hub, 4)[
            "OVERLAY-IN"
        ]
        assert "-A OVERLAY-IN -i br-overlay -p tcp -m tcp --dport 22 -j DROP" in saved("ip6tables")
        assert step(hub) == []  # a second apply changes nothing
        # Someone inserts a rule above ours: our jump goes first again, their rule stays.
        sh(*inside, "iptables", "-I", "INPUT", "1", "-p", "tcp", "--dport", "443", "-j", "ACCEPT")
        assert step(hub) == ["iptables: set OVERLAY-IN, OVERLAY-FWD"]
        assert [x for x in saved() if x.startswith("-A INPUT")][:2] == [
            "-A INPUT -j OVERLAY-IN",
            "-A INPUT -p tcp -m tcp --dport 443 -j ACCEPT",
        ]
        assert step(hub) == []
        # The hub moves (other peers), the protocol changes, IPsec comes and goes: the chain follows, nothing stale.
        spoke = oci(three_site_doc(node="b-router"))
        for doc, port, peers in (
            (spoke, 4789, {"198.51.100.1"}),
            ({**spoke, "port": 6081, "protocol": "geneve"}, 6081, {"198.51.100.1"}),
            (oci(three_site_doc("ipsec")), 4789, {"198.51.100.2", "198.51.100.3"}),
            (hub, 4789, {"198.51.100.2", "198.51.100.3"}),
        ):
            assert step(doc) != [] and step(doc) == []
            mine = [x for x in saved() if x.startswith("-A OVERLAY-IN")]
            admitted = {x.split()[3].removesuffix("/32") for x in mine if x.startswith("-A OVERLAY-IN -s") and f"--dport {port} " in x}
            assert admitted - {t["remote"] for t in doc["tunnels"]} == set() and peers <= admitted, mine
            assert all(any(f"--dport {p} " in x for p in (port, 22, 4500, 500)) for x in mine), mine
            assert any("--pol ipsec" in x for x in mine) == bool(doc.get("ipsec")), mine
            assert any("--dport 4500" in x for x in mine) == bool(doc.get("ipsec")), mine
            untracked = [x.split("--dport ")[1].split()[0] for x in saved(table="raw") if x.startswith("-A OVERLAY-NOTRACK")]
            assert untracked == [str(port), *(["4500", "500"] if doc.get("ipsec") else [])], untracked
        # A client forwards nothing of ours: our FORWARD chain and its jump go, the rest stays. On an image that
        # tracks nothing, the untracking chain and its jumps go too (someone else's raw rule stays).
        assert step(three_site_doc(node="a-client")) == [
            "iptables: set OVERLAY-IN; removed OVERLAY-FWD",
            "iptables: removed OVERLAY-NOTRACK (raw)",
            "ip6tables: set OVERLAY-IN; removed OVERLAY-FWD",
            "ip6tables: removed OVERLAY-NOTRACK (raw)",
        ]
        assert not any("OVERLAY-FWD" in x for x in saved() + saved("ip6tables"))
        assert [x for x in saved(table="raw") if x.startswith("-A")] == ["-A PREROUTING -p tcp -m tcp --dport 179 -j CT --notrack"]
        for chain, rule in foreign:
            assert f"-A {chain} {rule}" in saved()
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


# ---------------------------------------------------------------- push (install a config from stdin, then apply)


def push(
    config: Path, state: Path, stdin: bytes, env: dict[str, str] | None = None, wrap: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    argv = [*wrap, sys.executable, str(SCRIPT), "push", "--config", str(config), "--state-dir", str(state)]
    return subprocess.run(
        argv, input=stdin.decode("utf-8", "surrogateescape"), capture_output=True, text=True, env=env, errors="surrogateescape"
    )


@pytest.mark.parametrize(
    "content",
    [b"", b'{"version": 1, "node": "a-rou', b"\xff\xfe garbage", "image"],
)
def test_push_of_a_refused_config_installs_nothing(tmp_path: Path, content: bytes | str) -> None:
    if content == "image":
        doc = good_doc()
        doc["containers"]["image"] = "--privileged"
        content = json.dumps(doc).encode()
    assert isinstance(content, bytes)
    config = tmp_path / "etc" / "node.json"
    config.parent.mkdir()
    config.write_text("previous\n")
    proc = push(config, tmp_path / "state", content)
    assert proc.returncode == overlay_node.EXIT_REJECTED, proc.stderr
    assert "config rejected, nothing changed" in proc.stderr and proc.stdout == ""
    assert config.read_text() == "previous\n" and sorted(p.name for p in config.parent.iterdir()) == ["node.json"]
    assert not (tmp_path / "state").exists()  # not even the lock: nothing ran
    if b"privileged" in content:
        assert "containers.image: '--privileged' is not an image reference" in proc.stderr


@needs_root
@pytest.mark.root
def test_push_installs_atomically_then_applies(tmp_path: Path) -> None:
    """A client's config pushed in a throw-away network namespace: installed (a new file renamed over the old one,
    0600, its directory made 0700), then applied as `apply` does (the same config pushed again changes nothing)."""
    plan = build_plan(parse_config(config_of({"a": ("aws", 1), "b": ("gcp", 2)}, "a", encryption="none")))
    text = json.dumps(node_config(plan, "a-client", {"a": "198.51.100.1", "b": "198.51.100.2"}), indent=1) + "\n"
    config, state = tmp_path / "etc" / "mco" / "node.json", tmp_path / "state"
    ns = f"t{os.getpid() % 10000}-push"
    sh("ip", "netns", "add", ns)
    try:
        inside = ("nsenter", f"--net=/run/netns/{ns}", "--")
        proc = push(config, state, text.encode(), wrap=inside)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert config.read_text() == text and config.stat().st_mode & 0o777 == 0o600
        assert config.parent.stat().st_mode & 0o777 == 0o700
        assert json.loads((state / "applied.json").read_text()) == json.loads(text)
        tunnel = json.loads(text)["tunnels"][0]["name"]
        assert "converged with" in proc.stdout and f"created vxlan tunnel {tunnel}" in proc.stdout
        assert tunnel in sh("ip", "-n", ns, "link", "show").stdout
        # Again over an existing file: a new inode renamed into place, no PATH.new left behind; nothing to change.
        config.write_text("old\n")
        config.chmod(0o644)
        inode = config.stat().st_ino
        proc = push(config, state, text.encode(), wrap=inside)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert config.read_text() == text and config.stat().st_mode & 0o777 == 0o600 and config.stat().st_ino != inode
        assert sorted(p.name for p in config.parent.iterdir()) == ["node.json"]
        assert "no change" in proc.stdout and "changed:" not in proc.stdout
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_push_waits_for_cloud_init_then_validates_installs_and_applies_under_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    events: list[str] = []
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "cloud-init"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/cloud-init.calls\nexit 1\n')  # an error status changes nothing
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(overlay_node, "CLOUD_INIT_RUN", str(tmp_path))  # cloud-init is in use on this boot
    doc = good_doc()
    text = json.dumps(doc)
    config = tmp_path / "etc" / "node.json"

    def converge(d: dict[str, Any], state_dir: str, _log: Any, before: Any = None, restore: Any = None, **_: Any) -> int:
        events.append(f"lock taken, installed before: {config.exists()}")
        before()
        events.append(f"installed: {config.read_text() == text}; applying {d['node']}")
        return 0

    monkeypatch.setattr(overlay_node, "converge", converge)
    monkeypatch.setattr(sys, "stdin", type("In", (), {"buffer": __import__("io").BytesIO(text.encode())})())
    assert overlay_node.main(["push", "--config", str(config), "--state-dir", str(tmp_path / "state")]) == 0
    assert (tmp_path / "cloud-init.calls").read_text() == "status --wait\n"
    assert events == ["lock taken, installed before: False", "installed: True; applying a-router"]
    # cloud-init done on this boot (its result linked into /run/cloud-init): nothing to wait for, no call.
    (tmp_path / "result.json").write_text("{}")
    monkeypatch.setattr(sys, "stdin", type("In", (), {"buffer": __import__("io").BytesIO(text.encode())})())
    assert overlay_node.main(["push", "--config", str(config), "--state-dir", str(tmp_path / "state")]) == 0
    assert (tmp_path / "cloud-init.calls").read_text() == "status --wait\n"
    (tmp_path / "result.json").unlink()
    # cloud-init installed but not in use on this boot (the lab's host): no wait, which would never end.
    monkeypatch.setattr(overlay_node, "CLOUD_INIT_RUN", str(tmp_path / "absent"))
    monkeypatch.setattr(sys, "stdin", type("In", (), {"buffer": __import__("io").BytesIO(text.encode())})())
    assert overlay_node.main(["push", "--config", str(config), "--state-dir", str(tmp_path / "state")]) == 0
    assert (tmp_path / "cloud-init.calls").read_text() == "status --wait\n"


# ---------------------------------------------------------------- the boot script and the whole script's install


def install_script(pin: Path, to: Path, script_text: str, script: Path = SCRIPT, packed: str | None = None) -> subprocess.CompletedProcess[str]:
    """`overlay-node install-script` with SCRIPT_TEXT packed as the program sends it (gzip, base64), or PACKED as is."""
    argv = [sys.executable, str(script), "install-script", "--pin", str(pin), "--to", str(to)]
    stdin = packed if packed is not None else base64.b64encode(gzip.compress(script_text.encode())).decode()
    return subprocess.run(argv, input=stdin, capture_output=True, text=True)


def test_install_script_installs_only_the_pinned_script(tmp_path: Path) -> None:
    """The login user may run this as root: it installs exactly the script whose SHA-256 user-data pinned, atomically
    and executable; any other is refused and the node keeps its boot script untouched."""
    full, boot = node_script(), boot_script()
    pin, to = tmp_path / "node-script.sha256", tmp_path / "sbin" / "overlay-node"
    pin.write_text(script_sha256(full) + "\n")
    to.parent.mkdir()
    to.write_text(boot)
    to.chmod(0o755)
    # The boot script itself runs the install, as on a VM before its first push.
    other = full.replace("overlay-node", "overlay-nodf")
    proc = install_script(pin, to, other, script=to)
    assert proc.returncode == overlay_node.EXIT_REJECTED and "has only its boot script" in proc.stderr, proc.stderr
    assert to.read_text() == boot and sorted(p.name for p in to.parent.iterdir()) == ["overlay-node"]
    proc = install_script(pin, to, full, script=to)
    assert proc.returncode == 0 and "changed: installed the node script" in proc.stdout, proc.stdout + proc.stderr
    assert to.read_text() == full and to.stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in to.parent.iterdir()) == ["overlay-node"]
    proc = install_script(pin, to, full, script=to)
    assert proc.returncode == 0 and "installed already" in proc.stdout and "changed" not in proc.stdout
    # A newer program's script on a VM made before it (its pin is the old one): the node keeps what it has.
    proc = install_script(pin, to, other, script=to)
    assert proc.returncode == 0 and "kept the installed node script" in proc.stdout, proc.stdout + proc.stderr
    assert to.read_text() == full
    # No pin (user-data not written): nothing is installed.
    proc = install_script(tmp_path / "absent", to, other, script=to)
    assert proc.returncode == overlay_node.EXIT_REJECTED and "cannot read the pin" in proc.stderr
    assert to.read_text() == full


def test_install_script_reads_only_the_packed_script_and_unpacks_no_more_than_its_cap(tmp_path: Path) -> None:
    """What the program sends is packed_node_script(); the plain script, a stream cut short, one with bytes after the
    gzip, and one that unpacks to more than SCRIPT_MAX_BYTES are refused before the pin is read."""
    pin, to = tmp_path / "node-script.sha256", tmp_path / "overlay-node"
    pin.write_text(script_sha256(node_script()) + "\n")
    assert base64.b64decode(packed_node_script()) == gzip.compress(node_script().encode(), mtime=0)
    assert len(packed_node_script()) < len(node_script().encode()) / 2  # the README's "under half"
    proc = install_script(pin, to, "", packed=packed_node_script())
    assert proc.returncode == 0 and to.read_text() == node_script(), proc.stderr
    to.unlink()
    packed = base64.b64decode(packed_node_script())
    big = gzip.compress(b"#" * (overlay_node.SCRIPT_MAX_BYTES + 1), mtime=0)
    for bad, why in (
        (node_script(), "Only base64 data is allowed"),  # the plain script
        (base64.b64encode(packed[:-100]).decode(), "too large, cut short, or more after it"),
        (base64.b64encode(packed + b"x").decode(), "too large, cut short, or more after it"),
        (base64.b64encode(big).decode(), "too large, cut short, or more after it"),
    ):
        proc = install_script(pin, to, "", packed=bad)
        assert proc.returncode == overlay_node.EXIT_REJECTED and "stdin is not the packed node script" in proc.stderr and why in proc.stderr, (why, proc.stderr)
        assert not to.exists()


def test_the_boot_script_applies_only_a_bootstrap_config_and_refuses_the_rest(tmp_path: Path) -> None:
    """Before its first push a node has only its boot script: it validates a config without IPsec as the whole
    script does, and refuses IPsec, a push and a check, each saying that the whole script comes with the push."""
    boot = tmp_path / "overlay-node"
    boot.write_text(boot_script())
    config = tmp_path / "node.json"
    config.write_text(json.dumps(good_doc()))
    proc = subprocess.run([sys.executable, str(boot), "validate", "--config", str(config)], capture_output=True, text=True)
    assert proc.returncode == 0 and "valid config for a-router" in proc.stdout, proc.stderr
    config.write_text(json.dumps(good_doc("ipsec")))
    whole = subprocess.run([sys.executable, str(SCRIPT), "validate", "--config", str(config)], capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr
    proc = subprocess.run([sys.executable, str(boot), "validate", "--config", str(config)], capture_output=True, text=True)
    assert proc.returncode == overlay_node.EXIT_REJECTED and "ipsec: this node runs its boot script" in proc.stderr
    for argv, stdin in (
        (["push", "--config", str(config), "--state-dir", str(tmp_path / "state")], json.dumps(good_doc())),
        (["push", "--phase", "prepare", "--config", str(config), "--state-dir", str(tmp_path / "state")], json.dumps(good_doc())),
        (["check", "--json", "192.0.2.1"], ""),
    ):
        proc = subprocess.run([sys.executable, str(boot), *argv], input=stdin, capture_output=True, text=True)
        assert proc.returncode == overlay_node.EXIT_REJECTED, proc.stdout + proc.stderr
        assert "the program installs the whole node script before its first push" in proc.stderr
    assert not (tmp_path / "state").exists()


# ---------------------------------------------------------------- dataplane in namespaces (root)


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {proc.stdout}{proc.stderr}")
    return proc


class TwoNodes:
    """Two router namespaces joined by one underlay link, each configured from its rendered payload."""

    def __init__(self, tmp: Path, tag: str) -> None:
        self.tmp = tmp
        self.hub, self.spoke = f"{tag}a", f"{tag}b"
        self.ns = {self.hub: f"{tag}-ns-a", self.spoke: f"{tag}-ns-b"}
        self.underlay = {self.hub: "10.1.1.10", self.spoke: "10.2.1.10"}
        self.handles: list[str] = list(self.ns.values())

    def raw(self, **top: Any) -> dict[str, Any]:
        top.setdefault("encryption", "none")  # this host kernel has no ESP; IPsec runs in the kernel-VM tests
        raw = config_of({self.hub: ("aws", 1), self.spoke: ("gcp", 2)}, self.hub, **top)
        raw["sites"][self.spoke]["underlayMtu"] = 1500
        return raw

    def plan(self, **top: Any) -> Plan:
        return build_plan(parse_config(self.raw(**top)))

    def build(self) -> None:
        a, b = self.ns[self.hub], self.ns[self.spoke]
        sh("ip", "netns", "add", a)
        sh("ip", "netns", "add", b)
        sh("ip", "link", "add", "wan0", "netns", a, "type", "veth", "peer", "name", "wan0", "netns", b)
        for site, ns in self.ns.items():
            # The LAN NIC is attached but unaddressed, as an AWS router's hot-attached ENI: the payload configures it.
            lan = f"{ns}-lan"
            self.handles.append(lan)
            sh("ip", "netns", "add", lan)
            sh("ip", "link", "add", "lan0", "netns", ns, "type", "veth", "peer", "name", "eth0", "netns", lan)
            sh("ip", "-n", ns, "addr", "add", f"{self.underlay[site]}/14", "dev", "wan0")  # 10.0.0.0/14: not the overlay
            sh("ip", "-n", ns, "link", "set", "wan0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")

    def apply(self, plan: Plan, site: str) -> str:
        """Write the node's payload files under its root and run the payload's unit command in its namespace."""
        proc = self.start(node_config(plan, f"{site}-router", self.underlay, container_runtime="netns"), site)
        out, err = proc.communicate(timeout=120)
        if proc.returncode != 0:
            raise AssertionError(f"apply {site}: {out}{err}")
        return out

    def start(self, doc: dict[str, Any], site: str) -> subprocess.Popen[str]:
        root = self.tmp / site
        payload = render_user_data(doc)
        files, _ = read_payload(payload)
        for f in files:
            target = root / f.path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".tmp")  # atomically, as the push installs it: a running apply reads one or the other
            tmp.write_bytes(f.content)
            tmp.chmod(f.mode)
            tmp.replace(target)
        argv = [str(root / a.lstrip("/")) if a.startswith(("/etc/", "/var/", "/usr/local/")) else a for a in unit_exec_start(payload)]
        self.handles = sorted(set(self.handles) | {c["name"] for c in doc["containers"]["items"]})
        return subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.ns[site]}", "--", sys.executable, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def push(self, doc: dict[str, Any], site: str) -> subprocess.CompletedProcess[str]:
        """As the program pushes to a node that booted from its payload (`start`): the whole node script's install in
        place of the boot script, then `overlay-node push` with the config on stdin; the push's result."""
        root = self.tmp / site
        for command, stdin in ((INSTALL_SCRIPT_COMMAND, packed_node_script()), (PUSH_COMMAND, json.dumps(doc))):
            argv = [str(root / a.lstrip("/")) if a.startswith(("/etc/", "/var/", "/usr/local/")) else a for a in command]
            proc = subprocess.run(
                ["nsenter", f"--net=/run/netns/{self.ns[site]}", "--", sys.executable, *argv], input=stdin, capture_output=True, text=True, timeout=120
            )
            if proc.returncode and command is INSTALL_SCRIPT_COMMAND:
                raise AssertionError(f"install-script {site}: {proc.stdout}{proc.stderr}")
        return proc

    def tunnels(self, site: str) -> dict[str, str]:
        links = json.loads(sh("ip", "-n", self.ns[site], "-d", "-j", "link", "show").stdout)
        return {
            link["ifname"]: link["linkinfo"]["info_data"]["remote"]
            for link in links
            if link.get("linkinfo", {}).get("info_kind") in ("vxlan", "geneve")
        }

    def ping(self, site: str, target: str, size: int = 56, netns: str | None = None) -> bool:
        ns = netns or self.ns[site]
        return (
            sh(
                "ip", "netns", "exec", ns, "ping", "-c", "2", "-i", "0.2", "-W", "2", "-M", "do", "-s", str(size), target, check=False
            ).returncode
            == 0
        )

    def cleanup(self) -> None:
        for ns in self.handles:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[TwoNodes]:
    if shutil.which("nsenter") is None or shutil.which("ping") is None:
        pytest.skip("nsenter and ping are needed (make setup installs util-linux and iputils-ping)")
    nodes = TwoNodes(tmp_path, f"t{os.getpid() % 10000}")
    try:
        nodes.build()
        yield nodes
    finally:
        nodes.cleanup()


@needs_root
@pytest.mark.root
def test_two_routers_ping_over_vxlan_at_the_overlay_mtu(two_nodes: TwoNodes) -> None:
    plan = two_nodes.plan(containersPerRouter=1)
    assert plan.mtu == 1450
    for site in (two_nodes.hub, two_nodes.spoke):
        out = two_nodes.apply(plan, site)
        assert "converged with" in out
        # AWS routers (the hub here) configure their LAN NIC themselves; GCP's image does it for the spoke.
        assert ("LAN NIC is lan0" in out) == (site == two_nodes.hub)
    hub, spoke = plan.router(two_nodes.hub), plan.router(two_nodes.spoke)
    # Exactly the overlay MTU passes with don't-fragment (ICMP header 8 + IPv4 20 / IPv6 40), one byte more does not.
    assert two_nodes.ping(two_nodes.hub, spoke.overlay_ipv4, plan.mtu - 28)
    assert two_nodes.ping(two_nodes.hub, spoke.overlay_ipv6, plan.mtu - 48)
    assert not two_nodes.ping(two_nodes.hub, spoke.overlay_ipv4, plan.mtu - 27)
    # Containers on both routers reach each other across the tunnel, both families.
    far = spoke.containers[0]
    near = hub.containers[0].name
    assert two_nodes.ping(two_nodes.hub, far.ipv4.split("/")[0], netns=near)
    assert two_nodes.ping(two_nodes.hub, far.ipv6.split("/")[0], netns=near)
    link = json.loads(sh("ip", "-n", two_nodes.ns[two_nodes.hub], "-d", "-j", "link", "show", f"ovl-r{2}").stdout)[0]
    data = link["linkinfo"]["info_data"]
    assert link["linkinfo"]["info_kind"] == "vxlan" and data["local"] == "10.1.1.10" and data["remote"] == "10.2.1.10"


@needs_root
@pytest.mark.root
def test_second_run_changes_nothing_and_changes_converge_in_place(two_nodes: TwoNodes) -> None:
    plan = two_nodes.plan(containersPerRouter=2)
    for site in (two_nodes.hub, two_nodes.spoke):
        two_nodes.apply(plan, site)
    again = two_nodes.apply(plan, two_nodes.hub)
    assert "no change" in again and "changed:" not in again
    c1 = plan.router(two_nodes.hub).containers[0].name
    inode = os.stat(f"/run/netns/{c1}").st_ino

    # New MTU and one container fewer: converges in place, keeps the remaining container's namespace.
    smaller = two_nodes.plan(containersPerRouter=1, mtu=1300)
    out = two_nodes.apply(smaller, two_nodes.hub)
    assert "mtu 1300" in out and f"removed namespace {plan.router(two_nodes.hub).containers[1].name}" in out
    assert os.stat(f"/run/netns/{c1}").st_ino == inode
    assert not os.path.exists(f"/run/netns/{plan.router(two_nodes.hub).containers[1].name}")
    two_nodes.apply(smaller, two_nodes.spoke)
    far = smaller.router(two_nodes.spoke)
    assert two_nodes.ping(two_nodes.hub, far.overlay_ipv4, 1300 - 28)
    assert not two_nodes.ping(two_nodes.hub, far.overlay_ipv4, 1300 - 27)

    # The hub moves to the other site: roles swap, the one tunnel stays (same VNI both ways), nothing to change.
    swapped = two_nodes.plan(containersPerRouter=1, mtu=1300)
    raw = copy.deepcopy(two_nodes.raw(containersPerRouter=1, mtu=1300))
    raw["hub"] = two_nodes.spoke
    swapped = build_plan(parse_config(raw))
    out = two_nodes.apply(swapped, two_nodes.hub)
    assert "no change" in out
    assert two_nodes.ping(two_nodes.hub, far.overlay_ipv6, 1300 - 48)


@needs_root
@pytest.mark.root
def test_per_packet_savings_are_applied_and_a_re_apply_restores_them(two_nodes: TwoNodes) -> None:
    """The tunnel path's savings (lab.fastpath) are in effect after the unit's command: bridge_nf on routers, and
    notrack where the image's firewall tracks connections (OCI's: here the hub's config says so, and a stateful
    rule like the image's turns conntrack on). Turned off by hand, the next apply puts each back and says so; the
    one after changes nothing. With them, a ping across the tunnel leaves no conntrack entry for the tunnel's
    datagrams or the bridged overlay flow; without them, it does. A node whose image tracks nothing gets no
    untracking rule (it would only cost an evaluation per packet)."""
    from lab import fastpath
    from lab.shell import Shell

    plan = two_nodes.plan(containersPerRouter=1)
    shell = Shell()
    ns = two_nodes.ns[two_nodes.hub]
    # The hub as an OCI router: its image's stateful rule, and a config that says its firewall must be opened.
    for tool in ("iptables", "ip6tables"):
        sh("ip", "netns", "exec", ns, tool, "-A", "INPUT", "-m", "state", "--state", "RELATED,ESTABLISHED", "-j", "ACCEPT")
    stateful = {**node_config(plan, f"{two_nodes.hub}-router", two_nodes.underlay, container_runtime="netns"), "open_host_firewall": True}

    def apply_hub() -> str:
        proc = two_nodes.start(stateful, two_nodes.hub)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, out + err
        return out

    apply_hub()
    two_nodes.apply(plan, two_nodes.spoke)
    nf = fastpath.has_bridge_nf(shell, ns)  # br_netfilter loaded on this kernel or not: probed, both are valid
    want = {"notrack": True, "bridge_nf": True if nf else None}
    assert fastpath.in_effect(shell, ns, router=True, stateful_image=True) == want
    spoke_ns = two_nodes.ns[two_nodes.spoke]
    assert fastpath.in_effect(shell, spoke_ns, router=True, stateful_image=False) == {"notrack": None, "bridge_nf": want["bridge_nf"]}
    assert "OVERLAY-NOTRACK" not in sh("ip", "netns", "exec", spoke_ns, "iptables-save", "-t", "raw").stdout
    far = plan.router(two_nodes.spoke)
    nets = [str(plan.config.overlay_ipv4), str(plan.config.overlay_ipv6)]
    assert shutil.which("conntrack"), "conntrack is missing: scripts/setup.sh installs it"

    def tracked_after_ping() -> dict[str, int]:
        shell.ns(ns, ["conntrack", "-F"], check=False)
        assert two_nodes.ping(two_nodes.spoke, plan.router(two_nodes.hub).containers[0].ipv4.split("/")[0])
        return fastpath.tracked(shell, ns, plan.port, nets)

    assert tracked_after_ping() == {"tunnel": 0, "overlay": 0}
    for saving in fastpath.SAVINGS:
        fastpath.switch(shell, ns, saving, on=False)
    assert fastpath.in_effect(shell, ns, router=True, stateful_image=True) == {"notrack": False, "bridge_nf": False if nf else None}
    off = tracked_after_ping()
    # The counter-test: without the savings the same ping is tracked (the overlay flow where br_netfilter is loaded).
    assert off["tunnel"] >= 1 and (off["overlay"] >= 1) == nf, off
    out = apply_hub()
    assert "iptables: set OVERLAY-NOTRACK (raw)" in out and "ip6tables: set OVERLAY-NOTRACK (raw)" in out, out
    assert ("sysctl net.bridge.bridge-nf-call-iptables=0" in out) == nf, out
    assert fastpath.in_effect(shell, ns, router=True, stateful_image=True) == want
    assert tracked_after_ping() == {"tunnel": 0, "overlay": 0}
    again = apply_hub()
    assert "no change" in again and "changed:" not in again, again
    # The tunnel still carries the overlay, its datagrams counted by the untracking rule.
    assert two_nodes.ping(two_nodes.hub, far.overlay_ipv4)
    counted = sh("ip", "netns", "exec", ns, "iptables", "-t", "raw", "-n", "-v", "-x", "-L", "OVERLAY-NOTRACK").stdout
    assert int(counted.splitlines()[2].split()[0]) > 0, counted


@needs_root
@pytest.mark.root
def test_failure_half_way_rolls_back_to_the_previous_config(two_nodes: TwoNodes) -> None:
    plan = two_nodes.plan(containersPerRouter=1)
    for site in (two_nodes.hub, two_nodes.spoke):
        two_nodes.apply(plan, site)
    before = two_nodes.tunnels(two_nodes.hub)
    # A config the validator accepts but the kernel refuses half-way: a tunnel whose remote is of the other family.
    doc = node_config(plan, f"{two_nodes.hub}-router", two_nodes.underlay, container_runtime="netns")
    doc["mtu"] = 1400
    doc["tunnels"].append({"name": "ovl-r9", "peer": "x-router", "vni": 9999, "local": "10.1.1.10", "remote": "2001:db8::9"})
    proc = two_nodes.start(doc, two_nodes.hub)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "failed" in err and "rolling back to the previous config" in out and "rolled back" in out
    assert two_nodes.tunnels(two_nodes.hub) == before
    far = plan.router(two_nodes.spoke)
    assert two_nodes.ping(two_nodes.hub, far.overlay_ipv4, plan.mtu - 28)  # the previous MTU is back too


@needs_root
@pytest.mark.root
def test_a_failed_push_leaves_the_previous_config_running_and_installed(two_nodes: TwoNodes) -> None:
    """A pushed config that validates but fails half-way: the node rolls back to the config it ran, and the installed
    config is that one again, so a reboot brings back the previous tunnels (and credentials), never none."""
    plan = two_nodes.plan(containersPerRouter=1)
    for site in (two_nodes.hub, two_nodes.spoke):
        two_nodes.apply(plan, site)
    before = two_nodes.tunnels(two_nodes.hub)
    root = two_nodes.tmp / two_nodes.hub
    installed = root / NODE_CONFIG.lstrip("/")
    previous = json.loads(installed.read_text())
    doc = node_config(plan, f"{two_nodes.hub}-router", two_nodes.underlay, container_runtime="netns")
    doc["tunnels"].append({"name": "ovl-r9", "peer": "x-router", "vni": 9999, "local": "10.1.1.10", "remote": "2001:db8::9"})
    proc = two_nodes.push(doc, two_nodes.hub)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "rolled back" in proc.stdout
    assert two_nodes.tunnels(two_nodes.hub) == before
    assert json.loads(installed.read_text()) == previous
    assert stat.S_IMODE(os.stat(installed).st_mode) == 0o600


@needs_root
@pytest.mark.root
def test_concurrent_runs_are_serialised(two_nodes: TwoNodes) -> None:
    plan = two_nodes.plan(containersPerRouter=2)
    doc = node_config(plan, f"{two_nodes.hub}-router", two_nodes.underlay, container_runtime="netns")
    first, second = two_nodes.start(doc, two_nodes.hub), two_nodes.start(doc, two_nodes.hub)
    outs = [p.communicate(timeout=120) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outs
    logs = "".join(o + e for o, e in outs)
    assert "converged with" in logs and "no change" in logs  # one did the work, the other found nothing to do
    two_nodes.apply(plan, two_nodes.spoke)
    assert two_nodes.ping(two_nodes.hub, plan.router(two_nodes.spoke).overlay_ipv6)


@needs_root
@pytest.mark.root
def test_reboot_rebuilds_the_node_from_its_unit(two_nodes: TwoNodes) -> None:
    """A reboot loses every link and namespace; what the unit runs at boot brings the overlay back alone."""
    plan = two_nodes.plan(containersPerRouter=1)
    for site in (two_nodes.hub, two_nodes.spoke):
        two_nodes.apply(plan, site)
    hub = two_nodes.ns[two_nodes.hub]
    for name in ("br-overlay", "ovl-r2", "ovl-c1", "ovl-k1"):
        sh("ip", "-n", hub, "link", "del", name)
    for c in plan.router(two_nodes.hub).containers:
        sh("ip", "netns", "del", c.name)
    far = plan.router(two_nodes.spoke)
    assert not two_nodes.ping(two_nodes.hub, far.overlay_ipv4)
    out = two_nodes.apply(plan, two_nodes.hub)
    assert "created bridge br-overlay" in out
    assert two_nodes.ping(two_nodes.hub, far.overlay_ipv4) and two_nodes.ping(two_nodes.hub, far.overlay_ipv6)
    assert two_nodes.ping(two_nodes.hub, far.containers[0].ipv4.split("/")[0], netns=plan.router(two_nodes.hub).containers[0].name)


@needs_root
@pytest.mark.root
def test_ipsec_on_a_kernel_without_esp_is_refused_and_rolled_back(two_nodes: TwoNodes) -> None:
    """This host kernel has XFRM but no ESP: turning encryption on fails with the reason, and the node converges
    back to its working clear config (no policy left that would drop the tunnel's traffic)."""
    if subprocess.run(["ip", "-n", two_nodes.ns[two_nodes.hub], "xfrm", "policy", "list"], capture_output=True).returncode != 0:
        pytest.skip("this kernel has no XFRM at all")
    plan = two_nodes.plan(containersPerRouter=1)
    for site in (two_nodes.hub, two_nodes.spoke):
        two_nodes.apply(plan, site)
    encrypted = two_nodes.plan(containersPerRouter=1, encryption="ipsec")
    keys = {f"{two_nodes.hub}--{two_nodes.spoke}": "cd" * PAIR_KEY_BYTES}
    doc = node_config(encrypted, f"{two_nodes.hub}-router", two_nodes.underlay, container_runtime="netns", pair_keys=keys)
    from lab.lifecycle import esp_supported
    from lab.shell import Shell

    if esp_supported(Shell()):
        pytest.skip("this kernel has ESP: the refusal cannot be provoked here (the VM tests run IPsec)")
    proc = two_nodes.push(doc, two_nodes.hub)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "this kernel cannot do ESP with AES-GCM" in proc.stderr and "rolled back" in proc.stdout
    ns = two_nodes.ns[two_nodes.hub]
    assert sh("ip", "-n", ns, "xfrm", "policy", "list").stdout.strip() == ""
    assert sh("ip", "-n", ns, "xfrm", "state", "list").stdout.strip() == ""
    far = plan.router(two_nodes.spoke)
    assert two_nodes.ping(two_nodes.hub, far.overlay_ipv4, plan.mtu - 28)  # the clear overlay at its MTU is back


PRETEND_SYSTEMD = (
    "import os, shutil, sys\n"
    f"sys.path.insert(0, {str(SCRIPT.parent)!r})\n"
    "import overlay_node\n"
    "real_isdir = os.path.isdir\n"
    "os.path.isdir = lambda p: p == '/run/systemd/system' or real_isdir(p)\n"
    "shutil.which = lambda name, *a, **k: '/usr/bin/' + name\n"
    "real_readlink = os.readlink\n"
    "os.readlink = lambda p: sys.argv[1] if p == '/proc/1/ns/net' else real_readlink(p)\n"
    "print(overlay_node.systemd_runs_here())\n"
)


@pytest.mark.root
def test_the_natt_socket_holder_is_a_systemd_unit_only_in_systemds_own_network_namespace() -> None:
    """On a host that runs systemd, a lab node (a network namespace of that host) must not start the NAT-T socket
    holder as a systemd unit: the unit would bind in PID 1's namespace and serve the host, and every node would ask
    for the same unit name. Seen on a stock Debian host. Here systemd is pretended, and so is PID 1's namespace (this
    test's own: /proc/1 may be unreadable in a container); the namespaces compared are real."""
    systemd_ns = os.readlink("/proc/self/ns/net")
    same = subprocess.run([sys.executable, "-c", PRETEND_SYSTEMD, systemd_ns], capture_output=True, text=True, check=True)
    assert same.stdout.strip() == "True", same.stderr
    other = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", PRETEND_SYSTEMD, systemd_ns], capture_output=True, text=True, check=True
    )
    assert other.stdout.strip() == "False", other.stderr


# ---------------------------------------------------------------- make-before-break (push --phase prepare|switch)

SWAP_IPS = {"a": "198.51.100.1", "b": "198.51.100.2", "c": "198.51.100.3"}


def swap_docs(node: str, old_hub: str = "a", new_hub: str = "b", encryption: str = "none", **top: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """One router's config before and after a hub swap in a three-site stack (all GCP: the image configures the LAN)."""
    keys = {"a--b": "ab" * PAIR_KEY_BYTES, "a--c": "ac" * PAIR_KEY_BYTES, "b--c": "bc" * PAIR_KEY_BYTES} if encryption == "ipsec" else None
    sites = {"a": ("gcp", 1), "b": ("gcp", 2), "c": ("gcp", 3)}
    docs = []
    for hub in (old_hub, new_hub):
        plan = build_plan(parse_config(config_of(sites, hub, encryption=encryption, **top)))
        docs.append(node_config(plan, node, SWAP_IPS, pair_keys=keys, container_runtime="netns"))
    return docs[0], docs[1]


def ports(doc: dict[str, Any]) -> dict[str, tuple[bool, bool]]:
    """Tunnel -> (isolated, floods)."""
    return {t["name"]: (t.get("isolated", False), t.get("flood", True)) for t in doc["tunnels"]}


def test_a_spoke_runs_old_and_new_tunnels_side_by_side_and_moves_its_mac_table_at_the_switch() -> None:
    old, new = swap_docs("c-router")
    prepare = overlay_node.transition(old, new, "prepare")
    switch = overlay_node.transition(old, new, "switch")
    assert prepare is not None and switch is not None
    assert overlay_node.validate(prepare) == [] and overlay_node.validate(switch) == []
    # ovl-r1: the old hub a, ovl-r2: the new hub b, ovl-c3: the client. A spoke relays nothing: its router tunnels are
    # isolated ports. Only the tunnels of the side that carries traffic flood.
    assert ports(old) == {"ovl-c3": (False, True), "ovl-r1": (False, True)}
    assert ports(prepare) == {"ovl-c3": (False, True), "ovl-r2": (True, False), "ovl-r1": (True, True)}
    assert ports(switch) == {"ovl-c3": (False, True), "ovl-r2": (True, True), "ovl-r1": (True, False)}
    assert prepare["fdb"] == old["fdb"] and switch["fdb"] == new["fdb"] and old["fdb"] != new["fdb"]
    assert {e["port"] for e in old["fdb"]} == {"ovl-c3", "ovl-r1"} and {e["port"] for e in new["fdb"]} == {"ovl-c3", "ovl-r2"}
    # Everything but the tunnels and the MAC table is the new config's (identical to the old one's here).
    assert {k: v for k, v in prepare.items() if k not in ("tunnels", "fdb")} == {k: v for k, v in new.items() if k not in ("tunnels", "fdb")}
    # The firewall admits both hubs while both tunnels exist.
    rules = " ".join(overlay_node.firewall_rules(prepare, 4)["OVERLAY-IN"])
    assert SWAP_IPS["a"] in rules and SWAP_IPS["b"] in rules


def test_the_old_and_the_new_hub_relay_during_the_swap() -> None:
    for node in ("a-router", "b-router"):
        old, new = swap_docs(node)
        for phase in overlay_node.PHASES:
            step = overlay_node.transition(old, new, phase)
            assert step is not None and overlay_node.validate(step) == []
            assert not any(isolated for isolated, _ in ports(step).values()), (node, phase)
    # The new hub b: its tunnels to the other spokes join without flooding, and flood from the switch on.
    old, new = swap_docs("b-router")
    assert ports(overlay_node.transition(old, new, "prepare") or {}) == {"ovl-c2": (False, True), "ovl-r1": (False, True), "ovl-r3": (False, False)}
    assert ports(overlay_node.transition(old, new, "switch") or {}) == {"ovl-c2": (False, True), "ovl-r1": (False, True), "ovl-r3": (False, True)}


def test_encrypted_tunnels_keep_their_keys_side_by_side() -> None:
    old, new = swap_docs("c-router", encryption="ipsec")
    step = overlay_node.transition(old, new, "prepare")
    assert step is not None and overlay_node.validate(step) == []
    psk = {t["name"]: t["psk"] for t in step["tunnels"] if "psk" in t}
    assert psk == {t["name"]: t["psk"] for t in [*old["tunnels"], *new["tunnels"]] if "psk" in t} and len(psk) == 2
    assert overlay_node.swanctl_conf(step).count("version = 2") == 2  # both pairs' IKE connections, side by side


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"protocol": "geneve"}, "another protocol: the tunnels are replaced, not added"),
        ({"mtu": 1300}, "another MTU"),
        ({"encryption": "ipsec"}, "encryption switched on"),
        ({}, "the same hub: nothing to move"),
    ],
)
def test_what_cannot_run_side_by_side_is_done_in_one_step(change: dict[str, Any], why: str) -> None:
    old, _ = swap_docs("c-router")
    new_hub = "a" if not change else "b"
    _, new = swap_docs("c-router", new_hub=new_hub, **change)
    assert overlay_node.transition(old, new, "prepare") is None, why
    assert overlay_node.transition(None, new, "prepare") is None  # nothing installed yet (a first push)
    client_old, client_new = swap_docs("c-client")
    assert overlay_node.transition(client_old, client_new, "prepare") is None  # a client has one tunnel: nothing to move


def test_hub_and_spoke_to_full_mesh_goes_through_the_phases() -> None:
    old, _ = swap_docs("c-router")
    _, new = swap_docs("c-router", topology="full-mesh")
    prepare, switch = (overlay_node.transition(old, new, p) for p in overlay_node.PHASES)
    assert prepare is not None and switch is not None
    assert ports(prepare) == {"ovl-c3": (False, True), "ovl-r1": (True, True), "ovl-r2": (True, False)}
    assert ports(switch) == {"ovl-c3": (False, True), "ovl-r1": (True, True), "ovl-r2": (True, True)}
    assert switch["fdb"] == new["fdb"]
    # The hub keeps its tunnels and its MAC table either way; only its ports' isolation differs. From a mesh it must
    # relay from the prepare step on (before any spoke switches to send through it), and into a mesh it relays until
    # the final push (unswitched spokes still send through it).
    mesh, hub = swap_docs("a-router", topology="full-mesh")[1], swap_docs("a-router")[0]
    assert ports(mesh)["ovl-r2"] == (True, True) and ports(hub)["ovl-r2"] == (False, True)
    for old_doc, new_doc in ((mesh, hub), (hub, mesh)):
        for phase in overlay_node.PHASES:
            step = overlay_node.transition(old_doc, new_doc, phase)
            assert step is not None and not any(isolated for isolated, _ in ports(step).values()), (new_doc["role"], phase)


@needs_root
@pytest.mark.root
def test_push_phases_add_then_switch_then_remove_and_install_only_at_the_end(tmp_path: Path) -> None:
    """A spoke's hub swap pushed as the program pushes it, in a throw-away namespace: prepare and switch install
    nothing and change only what their phase says (tunnels, port flags, MAC table), the final push removes the old
    tunnel; each step again changes nothing, and a phase after the final push has nothing to do."""
    old, new = swap_docs("c-router")
    config, state = tmp_path / "etc" / "node.json", tmp_path / "state"
    ns = f"t{os.getpid() % 10000}-mbb"
    sh("ip", "netns", "add", ns)
    inside = ("nsenter", f"--net=/run/netns/{ns}", "--")

    def run(doc: dict[str, Any], phase: str | None) -> str:
        argv = [*inside, sys.executable, str(SCRIPT), "push", *(["--phase", phase] if phase else []), "--config", str(config), "--state-dir", str(state)]
        proc = subprocess.run(argv, input=json.dumps(doc), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    def kernel() -> tuple[dict[str, tuple[bool, bool]], dict[str, str]]:
        links = json.loads(sh("ip", "-n", ns, "-d", "-j", "link", "show").stdout)
        flags = {}
        for link in links:
            if link["ifname"].startswith(("ovl-r", "ovl-c")):
                port = link["linkinfo"]["info_slave_data"]
                flags[link["ifname"]] = (port["isolated"], port["flood"] and port["mcast_flood"] and port.get("bcast_flood", True))
        fdb = {
            e["mac"]: e["ifname"]
            for e in json.loads(sh("bridge", "-n", ns, "-j", "fdb", "show", "br", "br-overlay").stdout)
            if e.get("state") == "static"
        }
        return flags, fdb

    def planned(doc: dict[str, Any]) -> tuple[dict[str, tuple[bool, bool]], dict[str, str]]:
        return ports(doc), {e["mac"]: e["port"] for e in doc["fdb"]}

    try:
        run(old, None)
        installed = config.read_text()
        assert kernel() == planned(old)
        for phase in overlay_node.PHASES:
            out = run(new, phase)
            assert f"{phase}: old and new tunnels side by side" in out and "changed:" in out, out
            assert kernel() == planned(overlay_node.transition(old, new, phase) or {}), phase
            assert config.read_text() == installed  # the node still boots into the old config
            assert "no change" in run(new, phase)
        out = run(new, None)
        assert "removed tunnel ovl-r1" in out
        assert kernel() == planned(new) and json.loads(config.read_text()) == new
        assert "nothing to do" in run(new, "prepare") and "no change" in run(new, None)
    finally:
        for handle in [ns, *(c["name"] for c in new["containers"]["items"])]:  # the containers are namespaces too
            subprocess.run(["ip", "netns", "del", handle], capture_output=True)


class LateNic(overlay_node.Runner):
    """A node whose LAN NIC is attached after launch: `ip addr` lists it from the `appears_after`-th look on, first
    under the kernel's name (eth1) and, once udev's queue is settled, under udev's (ens6)."""

    def __init__(self, appears_after: int) -> None:
        super().__init__(lambda _line: None)
        self.looks = 0
        self.appears_after = appears_after
        self.settled = False
        self.argvs: list[list[str]] = []

    def run(self, argv: Any, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = list(argv)
        self.argvs.append(argv)
        out = ""
        if argv[:4] == ["ip", "-d", "-j", "addr"]:
            self.looks += 1
            nics = [
                {"ifname": "lo", "ifindex": 1, "link_type": "loopback", "addr_info": [{"local": "127.0.0.1", "prefixlen": 8, "scope": "host"}]},
                {"ifname": "ens5", "ifindex": 2, "link_type": "ether", "addr_info": [{"local": "10.1.1.10", "prefixlen": 24, "scope": "global"}]},
            ]
            if self.looks >= self.appears_after:
                name = "ens6" if self.settled else "eth1"
                nics.append({"ifname": name, "ifindex": 3, "link_type": "ether", "mtu": 1500, "operstate": "DOWN", "flags": [], "addr_info": []})
            out = json.dumps(nics)
        elif argv[:2] == ["udevadm", "settle"]:
            self.settled = self.looks >= self.appears_after
        return subprocess.CompletedProcess(argv, 0, out, "")


def test_a_lan_nic_attached_after_the_first_boot_started_is_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """AWS, OCI and Alibaba attach the router's LAN NIC after launch: the boot may get there first."""
    monkeypatch.setattr(overlay_node.time, "sleep", lambda _s: None)
    monkeypatch.setattr(overlay_node, "systemd_runs_here", lambda: False)
    doc = {"lan": {"configure": True, "address": "10.1.2.10/24"}}
    late = LateNic(appears_after=3)
    overlay_node.step_lan(late, doc, wait=60)
    assert late.looks == 3
    assert ["ip", "addr", "add", "10.1.2.10/24", "dev", "eth1"] in late.argvs  # a lab node: no udev renames its links
    never = LateNic(appears_after=10**6)
    with pytest.raises(overlay_node.CommandFailed, match="is the LAN NIC attached"):
        overlay_node.step_lan(never, doc, wait=0)
    assert never.looks == 1


def test_a_hot_plugged_lan_nic_gets_its_address_under_the_name_udev_gave_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seen in a booted VM: the kernel adds the NIC as eth1 and udev renames it ens6 a moment later; an address added
    by the first name fails ("Device eth1 does not exist"). On a VM the step waits for udev, then looks again."""
    monkeypatch.setattr(overlay_node.time, "sleep", lambda _s: None)
    monkeypatch.setattr(overlay_node, "systemd_runs_here", lambda: True)
    late = LateNic(appears_after=2)
    overlay_node.step_lan(late, {"lan": {"configure": True, "address": "10.1.2.10/24"}}, wait=60)
    assert ["udevadm", "settle", "--timeout", "30"] in late.argvs and late.looks == 3
    assert ["ip", "addr", "add", "10.1.2.10/24", "dev", "ens6"] in late.argvs
    assert not any("eth1" in argv for argv in late.argvs)
