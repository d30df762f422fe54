"""Two hubs (`standbyHub`): the config, the plan and the node script's failover view, without a network."""

from __future__ import annotations

import copy
import itertools
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
    route = lambda e: {k: v for k, v in e.items() if k != "ips"}  # noqa: E731  (the addresses: tests/test_plan.py)
    by_mac = {e["mac"]: route(e) for e in spoke["fdb"]}
    gcp, aws, oci = plan.router("gcp"), plan.router("aws"), plan.router("oci")
    assert by_mac[gcp.mac] == {"mac": gcp.mac, "port": "ovl-r3", "backup": "ovl-r1"}  # the standby's site: direct
    assert by_mac[aws.mac] == {"mac": aws.mac, "port": "ovl-r1", "backup": "ovl-r3"}
    assert by_mac[oci.mac] == {"mac": oci.mac, "port": "ovl-r1", "backup": "ovl-r3"}  # another spoke: through the hub
    for site, port in (("aws", "ovl-r1"), ("gcp", "ovl-r3")):
        probe = overlay_mac(plan.site_id(site), PROBE_HOST)
        assert by_mac[probe] == {"mac": probe, "port": port}
    assert [(p["tunnel"], p["address"]) for p in spoke["bfd"]["peers"]] == [("ovl-r1", "fe80::6f:1"), ("ovl-r3", "fe80::6f:3")]
    hub = {e["mac"]: route(e) for e in node_config(plan, "aws-router", PUBLIC)["fdb"]}
    assert hub[oci.mac] == {"mac": oci.mac, "port": "ovl-r4", "backup": "ovl-r3"}
    assert hub[gcp.mac] == {"mac": gcp.mac, "port": "ovl-r3"}
    standby = {e["mac"]: route(e) for e in node_config(plan, "gcp-router", PUBLIC)["fdb"]}
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
    import struct
    import threading
    import time

    doc = spoke_doc()
    config, state = tmp_path / "node.json", tmp_path / "state"
    config.write_text(json.dumps(doc))
    state.mkdir()
    sock_path, server, batches = stand_in_bfdd(tmp_path, monkeypatch)
    got: list[bytes] = []

    def message(kind: int, body: dict[str, Any]) -> bytes:
        data = json.dumps(body).encode()
        return struct.pack("!IHBB", len(data), 0 if kind == 4 else 1, kind, 1) + data

    def frr_status(peer: str, up: bool) -> bytes:  # with every field bfdd sends
        return message(4, {"op": "status", "ipv6": True, "peer-address": peer, "local-interface": "ovl-b1", "state": "up" if up else "down"})

    def bfdd() -> None:
        conn, _ = server.accept()
        got.append(conn.recv(16))
        conn.sendall(message(1, {"status": "ok"}) + frr_status("fe80::6f:1", True) + frr_status("fe80::6f:3", True))
        time.sleep(0.3)
        conn.sendall(frr_status("fe80::6f:1", False))
        wait_for(lambda: down() == ["ovl-r1"])
        conn.sendall(frr_status("fe80::6f:1", True))
        wait_for(lambda: down() == [])
        conn.close()

    def down() -> list[str] | None:
        try:
            return json.loads((state / overlay_node.BFD_DOWN).read_text())
        except (OSError, ValueError):
            return None

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


# --------------------------------------------------------------------------- a hub change with a standby set: the phases

Docs = dict[str, dict[str, Any]]


def router_docs(hub: str, standby: str | None) -> Docs:
    plan = build_plan(parse_config(raw(hub=hub, **({"standbyHub": standby} if standby else {}))))
    return {r.name: node_config(plan, r.name, PUBLIC) for r in plan.routers()}


def forward(views: Docs, src: str, mac: str | None) -> tuple[dict[str, int], bool]:
    """A model of the routers' bridges: a frame from `src`'s own host to `mac` (None: a broadcast), forwarded by each
    bridge as the kernel does (a known MAC down its pinned tunnel, else out of every tunnel that floods; never back
    where it came from, never from one isolated port to another), carried by a tunnel only to a peer that has the
    tunnel's other end. Returns how many times the frame reached each router's own hosts, and whether it was still
    going after more hops than the overlay has routers (a loop)."""
    delivered = dict.fromkeys(views, 0)
    frames: list[tuple[str, str | None]] = [(src, None)]
    for _ in range(len(views) + 2):
        after: list[tuple[str, str | None]] = []
        for router, ingress in frames:
            view = views[router]
            tunnels = {t["name"]: t for t in view["tunnels"] if t["name"].startswith("ovl-r")}
            fdb = {e["mac"]: e["port"] for e in view["fdb"]}
            if mac is None or mac == view["bridge"]["mac"]:
                delivered[router] += ingress is not None
                if mac is not None:
                    continue
            outs = [fdb[mac]] if mac is not None and mac in fdb else [n for n, t in tunnels.items() if t.get("flood", True)]
            for out in outs:
                if out == ingress or (ingress is not None and tunnels[ingress].get("isolated") and tunnels[out].get("isolated")):
                    continue
                peer = tunnels[out]["peer"]
                back = [t["name"] for t in views[peer]["tunnels"] if t.get("peer") == router]
                after += [(peer, back[0])] if back else []
        if not after:
            return delivered, False
        frames = after
    return delivered, True


def swap_states(old: Docs, new: Docs, waves: tuple[tuple[str, ...], ...]) -> list[Docs]:
    """Every config mix the routers can run through while the program pushes a change in stages (components/push.py):
    the prepare steps in parallel, the switch steps wave by wave (each wave in parallel), the final pushes in
    parallel. A step that has nothing to do leaves what runs."""

    def phase(name: str, p: str) -> dict[str, Any]:
        return overlay_node.transition(old[name], new[name], p) or (old[name] if p == "prepare" else phase(name, "prepare"))

    stages: list[list[tuple[str, str]]] = [[(n, "old"), (n, "prepare")] for n in old]  # type: ignore[misc]
    states: list[dict[str, str]] = [{n: lvl for n, lvl in combo} for combo in itertools.product(*stages)]
    for i, wave in enumerate(waves):
        done = {n for w in waves[:i] for n in w}
        base = {n: "switch" if n in done else "prepare" for n in old}
        states += [{**base, **dict(combo)} for combo in itertools.product(*[[(n, "prepare"), (n, "switch")] for n in wave])]
    states += [dict(combo) for combo in itertools.product(*[[(n, "switch"), (n, "new")] for n in old])]
    docs = {"old": lambda n: old[n], "new": lambda n: new[n], "prepare": lambda n: phase(n, "prepare"), "switch": lambda n: phase(n, "switch")}
    return [{n: overlay_node.failover_view(docs[lvl](n), set()) for n, lvl in s.items()} for s in states]


HUB_CHANGES = [
    pytest.param(("aws", "gcp"), ("oci", "gcp"), id="a-spoke-becomes-the-hub-the-standby-stays"),
    pytest.param(("aws", "gcp"), ("gcp", "aws"), id="the-hub-and-the-standby-trade"),
    pytest.param(("aws", "gcp"), ("oci", "aws"), id="the-hub-becomes-the-standby-a-spoke-the-hub"),
    pytest.param(("aws", "gcp"), ("gcp", "oci"), id="the-standby-becomes-the-hub-a-spoke-the-standby"),
    pytest.param(("aws", None), ("oci", "gcp"), id="a-standby-set-with-the-swap"),
    pytest.param(("aws", "gcp"), ("oci", None), id="the-standby-unset-with-the-swap"),
    pytest.param(("aws", None), ("oci", None), id="one-hub"),
]


@pytest.mark.parametrize(("before", "after"), HUB_CHANGES)
def test_a_hub_change_with_a_standby_goes_make_before_break(before: tuple[str, str | None], after: tuple[str, str | None]) -> None:
    """Every router whose config changes runs the phases (a standby set makes no change a one-step one), each phase is
    a valid config, and each follows one side whole: the old config's standby tunnels, MAC entries and BFD sessions in
    prepare, the new one's from the switch on."""
    old, new = router_docs(*before), router_docs(*after)
    for name in old:
        steps = {p: overlay_node.transition(old[name], new[name], p) for p in overlay_node.PHASES}
        assert steps["prepare"] is not None and steps["switch"] is not None, name
        for p, side in (("prepare", old[name]), ("switch", new[name])):
            step = steps[p]
            assert step is not None and overlay_node.validate(step) == [], (name, p)
            assert step["fdb"] == side["fdb"], (name, p)
            assert [x["tunnel"] for x in (step.get("bfd") or {}).get("peers", [])] == [x["tunnel"] for x in (side.get("bfd") or {}).get("peers", [])]
            # FRR runs from prepare on when the new config has BFD (its start is slow), and until the switch otherwise.
            assert ("bfd" in step) == ("bfd" in new[name] or "bfd" in side), (name, p)
            flooding = {t["name"]: t.get("standby_for") for t in step["tunnels"] if t.get("flood", True)}
            assert flooding == {t["name"]: t.get("standby_for") for t in side["tunnels"]}, (name, p)
            relay = "hub" in (old[name]["role"], new[name]["role"])
            assert all(t.get("isolated", False) != relay for t in step["tunnels"] if t["name"].startswith("ovl-r")), (name, p)


@pytest.mark.parametrize(("before", "after"), HUB_CHANGES)
def test_every_mix_of_phases_delivers_every_frame_with_no_loop(before: tuple[str, str | None], after: tuple[str, str | None]) -> None:
    """Through every mix of configs the routers can run while a hub change is pushed (swap_states), a broadcast from
    any router reaches every other one without going round, and a frame to any router's own MAC arrives exactly once;
    before and after, a broadcast arrives exactly once too."""
    old, new = router_docs(*before), router_docs(*after)
    plan = build_plan(parse_config(raw(hub=after[0], **({"standbyHub": after[1]} if after[1] else {}))))
    states = swap_states(old, new, plan.switch_waves())
    assert len(states) > 100
    for i, views in enumerate(states):
        for src in views:
            delivered, looped = forward(views, src, None)
            assert not looped and all(delivered[r] >= 1 for r in views if r != src), (i, src, delivered)
            if i in (0, len(states) - 1):
                assert all(delivered[r] == 1 for r in views if r != src), (i, src, delivered)
            for dst in views:
                if dst != src:
                    got, looped = forward(views, src, views[dst]["bridge"]["mac"])
                    assert not looped and got[dst] == 1, (i, src, dst, got)


def wait_for(cond: Any, timeout: float = 10.0) -> None:
    """Poll until `cond()` holds, for at most `timeout` seconds (the watcher's thread does the work meanwhile)."""
    import time

    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.02)


def stand_in_bfdd(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Any, list[str]]:
    """A socket where a stand-in bfdd listens, and the list that collects the bridge batches the watcher runs."""
    import socket

    sock_path = str(tmp_path / "bfdd.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(sock_path)
    server.listen(1)
    batches: list[str] = []
    monkeypatch.setattr(overlay_node.Runner, "run", lambda self, argv, check=True, stdin=None: batches.append(stdin or ""))
    return sock_path, server, batches


def status(peer: str, up: bool) -> bytes:
    """bfdd's notification of a session's state (a BMT_NOTIFY message)."""
    import json
    import struct

    body = json.dumps({"op": "status", "peer-address": peer, "state": "up" if up else "down"}).encode()
    return struct.pack("!IHBB", len(body), 0, 4, 1) + body


def test_bfd_watch_follows_the_config_that_runs_not_the_one_installed(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """During a make-before-break change the node runs a phase's config (applied.json) while the installed one is still
    the old: a session the phase has dropped (the old hub's) going down moves nothing, while one the phase has (the
    standby's) does."""
    import json
    import threading
    import time

    old = spoke_doc()  # hub aws (ovl-r1), standby gcp (ovl-r3)
    new = node_config(build_plan(parse_config(raw(hub="oci", standbyHub="gcp"))), "azure-router", PUBLIC)
    switch = overlay_node.transition(old, new, "switch")
    assert switch is not None and [p["tunnel"] for p in switch["bfd"]["peers"]] == ["ovl-r4", "ovl-r3"]
    config, state = tmp_path / "node.json", tmp_path / "state"
    config.write_text(json.dumps(old))
    state.mkdir()
    (state / "applied.json").write_text(json.dumps(switch))
    sock_path, server, batches = stand_in_bfdd(tmp_path, monkeypatch)

    def bfdd() -> None:
        conn, _ = server.accept()
        conn.recv(16)
        conn.sendall(status("fe80::6f:1", True) + status("fe80::6f:3", True) + status("fe80::6f:4", True))
        conn.sendall(status("fe80::6f:1", False))  # the old hub's session, which the phase no longer has
        time.sleep(1.5)
        quiet.append((state / overlay_node.BFD_DOWN).exists() or bool(batches))
        conn.sendall(status("fe80::6f:4", False))  # the new hub's
        wait_for((state / overlay_node.BFD_DOWN).exists)
        conn.close()

    quiet: list[bool] = []
    threading.Thread(target=bfdd, daemon=True).start()
    assert overlay_node.bfd_watch(str(config), str(state), sock_path, lambda line: None) == 1
    assert quiet == [False]
    assert json.loads((state / overlay_node.BFD_DOWN).read_text()) == ["ovl-r4"]
    (batch,) = batches
    assert batch.startswith("link set dev ovl-r3 flood on") and batch.rstrip().endswith("link set dev ovl-r4 flood off mcast_flood off bcast_flood off")


def test_bfd_watch_takes_a_session_added_again_as_a_new_one(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub swap and back removes the spoke's session with a router and adds it again. The new session starts down;
    within its grace that is not a lost hub, even though the watcher saw the old session up."""
    import json
    import threading
    import time

    doc = spoke_doc()  # hub aws (ovl-r1, fe80::6f:1), standby gcp (ovl-r3)
    without = {**doc, "bfd": {**doc["bfd"], "peers": [p for p in doc["bfd"]["peers"] if p["tunnel"] != "ovl-r1"]}}
    config, state = tmp_path / "node.json", tmp_path / "state"
    config.write_text(json.dumps(doc))
    state.mkdir()
    applied = state / "applied.json"
    applied.write_text(json.dumps(doc))
    sock_path, server, batches = stand_in_bfdd(tmp_path, monkeypatch)

    seen: list[bool] = []

    def bfdd() -> None:
        conn, _ = server.accept()
        conn.recv(16)
        conn.sendall(status("fe80::6f:1", True) + status("fe80::6f:3", True))
        time.sleep(1.2)
        applied.write_text(json.dumps(without))  # a push removed the session
        time.sleep(1.2)
        applied.write_text(json.dumps(doc))  # the next one adds it again: it starts down
        conn.sendall(status("fe80::6f:1", False))
        time.sleep(2.5)
        seen.append((state / overlay_node.BFD_DOWN).exists() or bool(batches))
        conn.sendall(status("fe80::6f:1", True))
        time.sleep(0.3)
        conn.close()

    threading.Thread(target=bfdd, daemon=True).start()
    assert overlay_node.bfd_watch(str(config), str(state), sock_path, lambda line: None) == 1
    assert seen == [False] and batches == []


def test_bfd_watch_counts_a_session_bfdd_never_reports_as_down_once_its_grace_is_over(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spoke that boots while its hub is gone: bfdd reports the standby's session up and never says anything about
    the hub's (it never changes state). Within the grace nothing moves; after it the hub's tunnel counts as down and
    the spoke floods to the standby instead; when the hub's session comes up, it moves back."""
    import json
    import threading
    import time

    monkeypatch.setattr(overlay_node, "BFD_GRACE", 2.0)
    doc = spoke_doc()  # hub aws (ovl-r1, fe80::6f:1), standby gcp (ovl-r3, fe80::6f:3)
    config, state = tmp_path / "node.json", tmp_path / "state"
    config.write_text(json.dumps(doc))
    state.mkdir()
    sock_path, server, batches = stand_in_bfdd(tmp_path, monkeypatch)
    within_grace: list[bool] = []
    down_file = state / overlay_node.BFD_DOWN

    def bfdd() -> None:
        conn, _ = server.accept()
        conn.recv(16)
        conn.sendall(status("fe80::6f:3", True))
        time.sleep(1.0)
        within_grace.append(down_file.exists() or bool(batches))
        wait_for(down_file.exists)
        conn.sendall(status("fe80::6f:1", True))  # the hub is back
        wait_for(lambda: down_file.exists() and json.loads(down_file.read_text()) == [])
        conn.close()

    threading.Thread(target=bfdd, daemon=True).start()
    assert overlay_node.bfd_watch(str(config), str(state), sock_path, lambda line: None) == 1
    assert within_grace == [False]
    assert json.loads(down_file.read_text()) == []
    failover, back = batches
    assert failover.startswith("link set dev ovl-r3 flood on") and "link set dev ovl-r1 flood off" in failover
    assert back.startswith("link set dev ovl-r1 flood on") and "link set dev ovl-r3 flood off" in back


def test_bfd_watch_started_again_keeps_what_the_last_one_recorded_until_the_session_comes_up(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """frr.service restarted (or the spoke rebooted) while its hub is gone: the new watcher starts from the recorded
    state, which the bridge already shows. bfdd's sessions start down, and that is the hub's tunnel staying down, not
    a change: nothing moves, however long the grace. When the hub's session comes up, the spoke moves back."""
    import json
    import threading
    import time

    doc = spoke_doc()  # hub aws (ovl-r1, fe80::6f:1), standby gcp (ovl-r3, fe80::6f:3)
    config, state = tmp_path / "node.json", tmp_path / "state"
    config.write_text(json.dumps(doc))
    state.mkdir()
    down_file = state / overlay_node.BFD_DOWN
    down_file.write_text('["ovl-r1"]\n')
    sock_path, server, batches = stand_in_bfdd(tmp_path, monkeypatch)
    while_down: list[tuple[bool, list[str]]] = []

    def bfdd() -> None:
        conn, _ = server.accept()
        conn.recv(16)
        conn.sendall(status("fe80::6f:1", False) + status("fe80::6f:3", True))
        time.sleep(1.5)
        while_down.append((bool(batches), json.loads(down_file.read_text())))
        conn.sendall(status("fe80::6f:1", True))
        wait_for(lambda: json.loads(down_file.read_text()) == [])
        conn.close()

    threading.Thread(target=bfdd, daemon=True).start()
    assert overlay_node.bfd_watch(str(config), str(state), sock_path, lambda line: None) == 1
    assert while_down == [(False, ["ovl-r1"])]
    (back,) = batches
    assert back.startswith("link set dev ovl-r1 flood on") and "link set dev ovl-r3 flood off" in back


def test_the_saved_frr_config_is_checked_for_exactly_the_sessions_of_the_config(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """frr.service loads its saved config when it starts: a push saves it when it holds other sessions than the
    config's (as FRR 8.4's `write memory` writes them)."""
    saved = tmp_path / "frr.conf"
    monkeypatch.setattr(overlay_node, "FRR_CONF", str(saved))
    peers = {"fe80::6f:1": {}, "fe80::6f:3": {}}
    assert not overlay_node._frr_conf_has(peers)  # no file yet
    text = "frr version 8.4.4\nfrr defaults traditional\nhostname spoke\n!\nbfd\n peer fe80::6f:1 interface ovl-b1\n  detect-multiplier 3\n exit\n !\n{}exit\n!\n"
    saved.write_text(text.format(""))
    assert not overlay_node._frr_conf_has(peers)
    saved.write_text(text.format(" peer fe80::6f:3 interface ovl-b1\n exit\n !\n"))
    assert overlay_node._frr_conf_has(peers)
    assert not overlay_node._frr_conf_has({"fe80::6f:3": {}})
