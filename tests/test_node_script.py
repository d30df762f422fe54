"""The node script: refuses bad configs without touching anything; in namespaces (root), converges two nodes
from their rendered payloads into a working VXLAN overlay, idempotently, and in place on config changes."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudinit import overlay_node
from cloudinit.render import read_payload, render_user_data, unit_exec_start
from components.config import parse_config
from components.plan import PAIR_KEY_BYTES, Plan, build_plan, node_config
from tests.harness import ROOT
from tests.test_plan import config_of

SCRIPT = ROOT / "cloudinit" / "overlay_node.py"


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
        (lambda d: d["tunnels"][0].pop("esp"), "tunnels[0].esp: missing"),
        (lambda d: d["tunnels"][0]["esp"].update(key_out="ab" * 35), "tunnels[0].esp.key_out"),
        (lambda d: d["tunnels"][0]["esp"].update(key_in="XY" * 36), "tunnels[0].esp.key_in"),
        (lambda d: d["tunnels"][0]["esp"].update(spi_out=5), "tunnels[0].esp.spi_out"),
        (lambda d: d["tunnels"][0]["esp"].update(spi_in=d["tunnels"][0]["esp"]["spi_out"]), "spi_out equals spi_in"),
        (lambda d: d["ipsec"].update(algorithm="cbc(des)"), "ipsec.algorithm"),
        (lambda d: d.pop("ipsec"), "keys given but ipsec is not set"),
    ],
)
def test_bad_ipsec_config_is_listed(damage: Any, expected: str) -> None:
    doc = good_doc("ipsec")
    damage(doc)
    problems = overlay_node.validate(doc)
    assert any(expected in p for p in problems), problems


class FakeXfrm(overlay_node.Runner):
    """`ip xfrm ... list` answers as iproute2 prints them (captured in the kernel VM); records every command."""

    STATES = (
        "src 198.51.100.13 dst 10.1.1.10\n\tproto esp spi 0x40002717 reqid 1073751831 mode transport\n\treplay-window 0 \n"
        "\taead rfc4106(gcm(aes)) 0x{key} 128\n\tencap type espinudp sport 4500 dport 4500 addr 0.0.0.0\n"
        "\tanti-replay context: seq 0x0, oseq 0x0, bitmap 0x00000000\n\tsel src 0.0.0.0/0 dst 0.0.0.0/0 \n"
        "src 192.0.2.1 dst 192.0.2.2\n\tproto esp spi 0x00001000 reqid 0 mode transport\n\treplay-window 0 \n"
    )
    POLICIES = (
        "src 10.1.1.10/32 dst 198.51.100.13/32 proto udp dport 4789 \n\tdir out priority 0 \n"
        "\ttmpl src 10.1.1.10 dst 198.51.100.13\n\t\tproto esp reqid 1073751830 mode transport\n"
        "src 10.9.9.9/32 dst 10.9.9.8/32 \n\tdir out priority 0 \n\ttmpl src 0.0.0.0 dst 0.0.0.0\n\t\tproto esp reqid 7 mode transport\n"
    )

    def __init__(self, key: str) -> None:
        super().__init__(lambda _line: None)
        self.key = key
        self.argvs: list[list[str]] = []

    def run(self, argv: Any, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        self.argvs.append(list(argv))
        out = ""
        if list(argv[:4]) == ["ip", "xfrm", "state", "list"]:
            out = self.STATES.format(key=self.key)
        elif list(argv[:4]) == ["ip", "xfrm", "policy", "list"]:
            out = self.POLICIES
        return subprocess.CompletedProcess(list(argv), 0, out, "")


def test_xfrm_listings_are_read_and_only_own_entries_count() -> None:
    r = FakeXfrm("aa" * 36)
    assert overlay_node.xfrm_states(r) == {
        ("198.51.100.13", "10.1.1.10", 0x40002717): overlay_node._xfrm_blocks(r.STATES.format(key="aa" * 36))[0]
    }
    # Another program's SA (SPI 0x1000) and policy (reqid 7) are not ours: never touched.
    assert overlay_node.xfrm_policies(r) == {("10.1.1.10/32", "198.51.100.13/32", "4789", "out"): 0x40002716}


def test_ipsec_step_replaces_only_what_differs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = good_doc("ipsec")
    t = doc["tunnels"][0]
    # Pretend the kernel holds this tunnel's inbound SA with the right key and a stale outbound policy.
    t.update(local="10.1.1.10", remote="198.51.100.13")
    t["esp"].update(spi_in=0x40002717)
    r = FakeXfrm(t["esp"]["key_in"])
    sockets: list[int] = []
    monkeypatch.setattr(overlay_node, "ensure_natt_socket", lambda _r, port, _d: sockets.append(port))
    overlay_node.step_ipsec(r, doc, str(tmp_path))
    assert sockets == [4500]
    adds = [a for a in r.argvs if a[:4] == ["ip", "xfrm", "state", "add"]]
    assert [a[a.index("spi") + 1] for a in adds] == [hex(t["esp"]["spi_out"])]  # the matching inbound SA is kept
    assert ["ip", "xfrm", "state", "delete"] not in [a[:4] for a in r.argvs if "0x1000" in a]
    policy_updates = [a for a in r.argvs if a[:4] == ["ip", "xfrm", "policy", "update"]]
    assert {a[a.index("dir") + 1] for a in policy_updates} == {"in", "out"}
    deleted = [a for a in r.argvs if a[:4] == ["ip", "xfrm", "policy", "delete"]]
    assert [a[a.index("src") + 1] for a in deleted] == ["10.1.1.10/32"]  # the stale own policy, not the foreign one


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


# ---------------------------------------------------------------- dataplane in namespaces (root)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces")


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
    proc = two_nodes.start(doc, two_nodes.hub)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "cannot do ESP" in err and "rolled back" in out
    ns = two_nodes.ns[two_nodes.hub]
    assert sh("ip", "-n", ns, "xfrm", "policy", "list").stdout.strip() == ""
    assert sh("ip", "-n", ns, "xfrm", "state", "list").stdout.strip() == ""
    far = plan.router(two_nodes.spoke)
    assert two_nodes.ping(two_nodes.hub, far.overlay_ipv4, plan.mtu - 28)  # the clear overlay at its MTU is back
