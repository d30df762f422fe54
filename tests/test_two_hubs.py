"""Two hubs (`standbyHub`): the config, the plan and the node script's failover view, without a network."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from multicloud_overlay.cloudinit import overlay_node
from multicloud_overlay.components.limits import checked_plan
from multicloud_overlay.components.stack_file import read_stack_file
from multicloud_overlay.overlay.config import ConfigError, parse_config
from multicloud_overlay.overlay.plan import PROBE_HOST, Plan, bootstrap_config, build_plan, node_config, overlay_mac
from tests.harness import ROOT

DEV = read_stack_file(ROOT / "Pulumi.dev.yaml")


def raw(**top: Any) -> dict[str, Any]:
    r = copy.deepcopy(DEV)
    r.update({"encryption": "none", **top})
    return r


def two_hubs(**top: Any) -> Plan:
    return build_plan(parse_config(raw(standbyHub="gcp", **top)))


PUBLIC = {s: f"198.51.100.{i + 1}" for i, s in enumerate(("aws", "azure", "gcp", "oci", "alicloud", "vsphere"))}


@pytest.mark.parametrize(
    ("top", "expected"),
    [
        ({"standbyHub": "gpc"}, "standbyHub = 'gpc': not among the sites (did you mean 'gcp'?)"),
        ({"standbyHub": "aws"}, "standbyHub = 'aws': is the hub itself"),
        ({"standbyHub": "gcp", "topology": "full-mesh"}, "a standby hub takes over from the hub of a hub-and-spoke overlay"),
    ],
)
def test_a_standby_hub_that_cannot_work_is_refused_before_anything(top: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(raw(**top))
    assert any(expected in p for p in e.value.problems), e.value.problems


def test_two_sites_have_no_spoke_to_fail_over() -> None:
    r = raw(standbyHub="gcp")
    r["sites"] = {k: v for k, v in r["sites"].items() if k in ("aws", "gcp")}
    with pytest.raises(ConfigError) as e:
        parse_config(r)
    assert any("no spoke would fail over" in p for p in e.value.problems), e.value.problems


def test_every_spoke_tunnels_to_both_hubs_and_never_relays() -> None:
    plan = two_hubs()
    assert plan.standby == "gcp"
    assert plan.router("aws").role == "hub" and plan.router("gcp").role == "standby"
    for hub in ("aws", "gcp"):
        assert sorted(t.peer_site for t in plan.router(hub).tunnels if t.via == "internet") == sorted(s for s in PUBLIC if s != hub)
    for spoke in ("azure", "oci", "alicloud", "vsphere"):
        doc = node_config(plan, f"{spoke}-router", PUBLIC)
        router_tunnels = [t for t in doc["tunnels"] if t["name"].startswith("ovl-r")]
        assert [(t["peer"], t.get("isolated"), t.get("standby_for")) for t in router_tunnels] == [
            ("aws-router", True, None),
            ("gcp-router", True, "ovl-r1"),
        ]
    for hub in ("aws", "gcp"):
        doc = node_config(plan, f"{hub}-router", PUBLIC)
        assert not any(t.get("isolated") for t in doc["tunnels"])  # the hubs relay
    # The standby floods to spokes only in the hub's place.
    standby = node_config(plan, "gcp-router", PUBLIC)
    assert {t["name"]: t.get("standby_for") for t in standby["tunnels"]} == {
        "ovl-r1": None,
        "ovl-r2": "ovl-r1",
        "ovl-r4": "ovl-r1",
        "ovl-r5": "ovl-r1",
        "ovl-r6": "ovl-r1",
        "ovl-c3": None,
    }


def test_mac_entries_have_the_other_hub_as_backup_and_probes_have_none() -> None:
    plan = two_hubs()
    spoke = node_config(plan, "azure-router", PUBLIC)
    by_mac = {e["mac"]: e for e in spoke["fdb"]}
    gcp, aws, oci = plan.router("gcp"), plan.router("aws"), plan.router("oci")
    assert by_mac[gcp.mac] == {"mac": gcp.mac, "port": "ovl-r3", "backup": "ovl-r1"}  # the standby's site: direct
    assert by_mac[aws.mac] == {"mac": aws.mac, "port": "ovl-r1", "backup": "ovl-r3"}
    assert by_mac[oci.mac] == {"mac": oci.mac, "port": "ovl-r1", "backup": "ovl-r3"}  # another spoke: through the hub
    for site, port in (("aws", "ovl-r1"), ("gcp", "ovl-r3")):
        probe = overlay_mac(plan.site_id(site), PROBE_HOST)
        assert by_mac[probe] == {"mac": probe, "port": port}
    assert [(p["tunnel"], p["address"]) for p in spoke["bfd"]["peers"]] == [("ovl-r1", "fe80::6f:1"), ("ovl-r3", "fe80::6f:3")]
    hub = {e["mac"]: e for e in node_config(plan, "aws-router", PUBLIC)["fdb"]}
    assert hub[oci.mac] == {"mac": oci.mac, "port": "ovl-r4", "backup": "ovl-r3"}
    assert hub[gcp.mac] == {"mac": gcp.mac, "port": "ovl-r3"}
    standby = {e["mac"]: e for e in node_config(plan, "gcp-router", PUBLIC)["fdb"]}
    assert standby[oci.mac] == {"mac": oci.mac, "port": "ovl-r4", "backup": "ovl-r1"}
    assert standby[aws.mac] == {"mac": aws.mac, "port": "ovl-r1"}
    for node in plan.nodes:
        assert overlay_node.validate(node_config(plan, node.name, PUBLIC)) == []


def test_the_standby_hub_changes_no_user_data() -> None:
    """The bootstrap config (user-data) is the same with or without a standby hub: setting it rebuilds no VM."""
    one, two = build_plan(parse_config(raw())), two_hubs()
    for node in one.nodes:
        assert bootstrap_config(one, node.name) == bootstrap_config(two, node.name)
    assert "bfd" not in node_config(one, "azure-router", PUBLIC)


def spoke_doc() -> dict[str, Any]:
    return node_config(two_hubs(), "azure-router", PUBLIC)


def test_a_spoke_fails_over_to_the_standby_only_while_the_hub_is_down_and_the_standby_up() -> None:
    doc = spoke_doc()
    ports = lambda d: {e["port"] for e in d["fdb"] if "backup" in next(x for x in doc["fdb"] if x["mac"] == e["mac"])}  # noqa: E731
    flood = lambda d: {t["name"]: t["flood"] for t in d["tunnels"]}  # noqa: E731
    normal = overlay_node.failover_view(doc, set())
    assert flood(normal) == {"ovl-r1": True, "ovl-r3": False, "ovl-c2": True}
    assert {e["mac"]: e["port"] for e in normal["fdb"]} == {e["mac"]: e["port"] for e in doc["fdb"]}
    lost = overlay_node.failover_view(doc, {"ovl-r1"})
    assert flood(lost) == {"ovl-r1": False, "ovl-r3": True, "ovl-c2": True}
    assert ports(lost) == {"ovl-r3", "ovl-r1"} - {"ovl-r1"}
    # Both hubs gone: nothing moves (there is nowhere to go), and the hub's tree stays the one that floods.
    both = overlay_node.failover_view(doc, {"ovl-r1", "ovl-r3"})
    assert flood(both) == flood(normal)
    assert {e["mac"]: e["port"] for e in both["fdb"]} == {e["mac"]: e["port"] for e in doc["fdb"]}
    # The standby alone gone: its site's MACs go through the hub, and the flooding stays the hub's.
    standby_lost = overlay_node.failover_view(doc, {"ovl-r3"})
    assert flood(standby_lost) == flood(normal)
    assert ports(standby_lost) == {"ovl-r1"}


def test_the_standby_floods_to_spokes_only_while_the_hub_is_down() -> None:
    doc = node_config(two_hubs(), "gcp-router", PUBLIC)
    flood = lambda d: {t["name"] for t in d["tunnels"] if t["flood"]}  # noqa: E731
    assert flood(overlay_node.failover_view(doc, set())) == {"ovl-r1", "ovl-c3"}
    assert flood(overlay_node.failover_view(doc, {"ovl-r1"})) == {"ovl-r2", "ovl-r4", "ovl-r5", "ovl-r6", "ovl-c3"}
    # A spoke the standby lost is reached through the hub.
    view = overlay_node.failover_view(doc, {"ovl-r4"})
    oci = {e["mac"] for e in doc["fdb"] if e["port"] == "ovl-r4" and "backup" in e}
    assert oci and {e["port"] for e in view["fdb"] if e["mac"] in oci} == {"ovl-r1"}


def test_the_failover_batch_floods_the_new_tree_before_the_old_one_stops() -> None:
    doc = spoke_doc()
    batch = overlay_node._failover_batch(overlay_node.failover_view(doc, set()), overlay_node.failover_view(doc, {"ovl-r1"}))
    lines = batch.splitlines()
    assert lines[0] == "link set dev ovl-r3 flood on mcast_flood on bcast_flood on"
    assert lines[-1] == "link set dev ovl-r1 flood off mcast_flood off bcast_flood off"
    moved = lines[1:-1]
    assert moved and all(line.startswith("fdb replace ") and " dev ovl-r3 master static sticky" in line for line in moved)
    assert overlay_node._failover_batch(overlay_node.failover_view(doc, set()), overlay_node.failover_view(doc, set())) == ""


def test_bfd_watch_follows_bfdds_notifications_and_fails_over_under_the_lock(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """bfd-watch against a stand-in bfdd speaking FRR's control protocol (bfdctl.h): it subscribes to session states,
    takes every session's state at once, and on each change moves MAC entries and flooding with one bridge batch and
    records the tunnels found down (which a later apply keeps)."""
    import json
    import socket
    import struct
    import threading
    import time

    doc = spoke_doc()
    config, state = tmp_path / "node.json", tmp_path / "state"
    config.write_text(json.dumps(doc))
    state.mkdir()
    sock_path = str(tmp_path / "bfdd.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(sock_path)
    server.listen(1)
    batches: list[str] = []

    def run(self: Any, argv: Any, check: bool = True, stdin: str | None = None) -> Any:
        batches.append(stdin or "")
        return None

    monkeypatch.setattr(overlay_node.Runner, "run", run)
    got: list[bytes] = []

    def message(kind: int, body: dict[str, Any]) -> bytes:
        data = json.dumps(body).encode()
        return struct.pack("!IHBB", len(data), 0 if kind == 4 else 1, kind, 1) + data

    def status(peer: str, up: bool) -> bytes:
        return message(4, {"op": "status", "ipv6": True, "peer-address": peer, "local-interface": "ovl-b1", "state": "up" if up else "down"})

    def bfdd() -> None:
        conn, _ = server.accept()
        got.append(conn.recv(16))
        conn.sendall(message(1, {"status": "ok"}) + status("fe80::6f:1", True) + status("fe80::6f:3", True))
        time.sleep(0.3)
        conn.sendall(status("fe80::6f:1", False))
        wait_for(lambda: down() == ["ovl-r1"])
        conn.sendall(status("fe80::6f:1", True))
        wait_for(lambda: down() == [])
        conn.close()

    def down() -> list[str] | None:
        try:
            return json.loads((state / overlay_node.BFD_DOWN).read_text())
        except (OSError, ValueError):
            return None

    def wait_for(cond: Any) -> None:
        deadline = time.monotonic() + 10
        while not cond() and time.monotonic() < deadline:
            time.sleep(0.02)

    threading.Thread(target=bfdd, daemon=True).start()
    assert overlay_node.bfd_watch(str(config), str(state), sock_path, lambda line: None) == 1  # bfdd went away
    header, flags = got[0][:8], got[0][8:]
    assert struct.unpack("!IHBB", header)[1:] == (1, 4, 1) and struct.unpack("=Q", flags)[0] == 1  # BMT_NOTIFY, peer states
    assert down() == []
    failover, failback = [b for b in batches if b]
    assert failover.startswith("link set dev ovl-r3 flood on") and failover.rstrip().endswith("link set dev ovl-r1 flood off mcast_flood off bcast_flood off")
    moved = {line.split()[2] for line in failover.splitlines() if line.startswith("fdb replace") and "dev ovl-r3" in line}
    assert moved == {e["mac"] for e in doc["fdb"] if e.get("backup") == "ovl-r3"}
    assert failback.startswith("link set dev ovl-r1 flood on") and "dev ovl-r1 master static sticky" in failback
    assert (state / "lock").exists()


def test_a_cloud_deployment_takes_two_hubs_and_every_spoke_gets_rules_for_both() -> None:
    """Router VMs install FRR (tests/lab/test_boot.py boots the failover): checked_plan takes standbyHub, and the
    plan pairs each spoke with both hubs, so the peer rules admit the standby's tunnels too."""
    plan = checked_plan(parse_config(raw(standbyHub="gcp")))
    assert plan.standby == "gcp"
    spokes = [s.name for s in plan.config.sites if s.name not in (plan.hub, "gcp")]
    pairs = {frozenset(p) for p in plan.router_pairs()}
    assert all({frozenset((s, plan.hub)), frozenset((s, "gcp"))} <= pairs for s in spokes)
    assert checked_plan(parse_config(raw())).standby is None
