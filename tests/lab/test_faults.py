"""Faults in the lab: reboot a spoke router, the hub router and a client, and lose the hub for a while; each must
heal with nothing but the boot command (the full check matrix passes afterwards). Pure helpers first (no root),
then one three-site lab for the module."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import cli
from lab.check import endpoints
from lab.faults import (
    availability,
    check_outcome,
    cross_site_pairs,
    first_reply_after,
    frame_bound,
    lost_between,
    other_site,
    recovery_probe,
    sent_between,
    site_pairs,
    summarise_recovery,
)
from lab.power import node_script_links
from lab.probes import PingLog
from lab.state import STATE_DIR, lab_plan, load_raw
from tests.lab.conftest import CLEAR, assert_clean, host_baseline, lab, savings_in_effect, savings_missing

SITES = ("aws", "gcp", "azure")
CONTAINERS = [f"{s}-c{i}" for s in SITES for i in (1, 2, 3)]


@pytest.fixture(scope="module")
def plan3():
    return lab_plan(load_raw("dev", list(SITES), {}))


# --------------------------------------------------------------------------- pure


def test_node_script_links_keep_only_loopback_and_nics() -> None:
    links = ["lo", "eth0", "eth1", "br-overlay", "ovl-r1", "ovl-k2", "ovl-c3", "xfrm0"]
    assert node_script_links(links, ["eth0", "eth1"]) == ["br-overlay", "ovl-c3", "ovl-k2", "ovl-r1", "xfrm0"]
    assert node_script_links(["lo", "eth0"], ["eth0"]) == []


def test_recovery_probe_per_node_kind(plan3) -> None:
    assert plan3.hub == "aws"
    observer, targets = recovery_probe(plan3, "gcp-router")
    assert observer == "azure-client"  # another spoke: its traffic crosses the hub too
    assert [t.label for t in targets] == ["gcp-router IPv4", "gcp-router IPv6", "gcp-c1 IPv4", "gcp-c1 IPv6"]
    observer, targets = recovery_probe(plan3, "aws-router")
    assert observer in ("gcp-client", "azure-client")
    far = [t for t in targets if "via hub" in t.label]
    assert len(far) == 2 and observer.split("-")[0] not in far[0].label
    observer, targets = recovery_probe(plan3, "azure-client")
    assert observer == "gcp-client" and [t.address for t in targets] == ["10.250.2.2", "fd00:6f76:6c00::2:2"]
    assert other_site(plan3, "gcp") == "azure" and other_site(plan3, "gcp", avoid_hub=False) == "aws"


def test_pairs_split_site_local_and_cross_site(plan3) -> None:
    eps = endpoints(plan3)  # 3 sites x (router, client, 3 containers)
    local = site_pairs(eps, ["gcp", "azure"])
    assert len(local) == 2 * 5 * 4 and all(a.site == b.site != "aws" for a, b in local)
    cross = cross_site_pairs(eps)
    assert len(cross) == 15 * 10
    without_hub = cross_site_pairs(eps, down="aws-router")
    assert len(without_hub) == (15 - 4) * 10  # the hub router and its 3 containers send nothing
    assert all(a.name != "aws-router" and a.router != "aws-router" for a, _ in without_hub)


def test_reply_timing_and_availability() -> None:
    log = PingLog(replies={1: 99.0, 5: 100.4, 6: 100.45}, transmitted=8, received=3)
    assert first_reply_after(log, 100.0) == 0.4
    assert first_reply_after(log, 101.0) is None
    assert availability(log) == 0.375
    assert availability(PingLog()) is None
    assert summarise_recovery({"a": 0.2, "b": 0.5}) == {"per_target_s": {"a": 0.2, "b": 0.5}, "first_s": 0.2, "all_s": 0.5}
    assert summarise_recovery({"a": 0.2, "b": None})["all_s"] is None


def test_a_window_of_pings_is_bounded_by_the_replies_around_it() -> None:
    """The live log has no count of the echoes sent: a window's are those after the last reply before it and
    before the first reply after it; what was not answered among them is lost."""
    log = PingLog(replies={1: 9.9, 2: 10.1, 5: 11.5, 6: 12.2, 7: 13.0}, transmitted=9, received=5)
    assert sent_between(log, 10.0, 12.0) == range(2, 6) and lost_between(log, 10.0, 12.0) == 2  # 3 and 4
    assert lost_between(log, 12.1, 12.5) == 0  # only 6, answered
    assert sent_between(log, 12.5, 14.0) == range(7, 10) and lost_between(log, 12.5, 14.0) == 2  # 8, 9: nothing after
    assert sent_between(log, 0.0, 9.95) == range(1, 2)


def test_the_frame_bound_counts_each_ping_twice_bfd_and_a_slack() -> None:
    # 500 pings (echo and reply), 3 BFD sessions at 10 a second each way, 100 frames a second, over 10 (+1) s.
    assert frame_bound(500, 3, 10.0) == 1000 + 660 + 1100
    assert frame_bound(0, 0, 0.2) == 100


def test_check_outcome_says_which_try_passed() -> None:
    first = {"ok": True, "first_try_ok": True, "tries": 1, "passed_after_s": 3.2, "runs": [{"ok": True}]}
    assert check_outcome(first) == "passed 3.2 s after the boot command started, first try"
    second = {**first, "first_try_ok": False, "tries": 2, "runs": [{"ok": False}, {"ok": True}]}
    assert check_outcome(second).endswith("try 2")
    assert check_outcome({"ok": False, "first_try_ok": False, "tries": None, "runs": [{}, {}, {}]}) == "FAILED 3 tries"


def test_cli_has_fault_commands() -> None:
    args = cli.parser().parse_args(["reboot", "gcp-router", "--no-check"])
    assert args.node == "gcp-router" and args.no_check
    args = cli.parser().parse_args(["hub-loss", "--down-seconds", "2"])
    assert args.down_seconds == 2.0 and not args.no_check


# --------------------------------------------------------------------------- in a running lab


@pytest.mark.root
def test_fault_commands_need_a_lab(no_lab: dict[str, object]) -> None:
    for argv in (["reboot", "gcp-router"], ["hub-loss"]):
        proc = lab(*argv)
        assert proc.returncode == 2 and "no lab is up" in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def lab3() -> Iterator[dict[str, object]]:
    from lab.lifecycle import lab_exists

    existing = lab_exists(STATE_DIR)
    if existing:
        pytest.fail(f"a lab is already up ({', '.join(existing[:3])}): run `python -m lab down` before the lab tests")
    baseline = host_baseline()
    proc = lab("up", *CLEAR, "--sites", ",".join(SITES))
    if proc.returncode != 0:
        lab("down")
        pytest.fail(f"lab up failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    yield baseline
    assert lab("down").returncode == 0
    assert_clean(baseline, CONTAINERS)  # a rebooted node's new dockerd and containers go with `down` too


def fault(results: Path, *argv: str) -> tuple[int, dict[str, Any], str]:
    proc = lab(*argv, "--results", str(results))
    stem = "hub-loss" if argv[0] == "hub-loss" else f"reboot-{argv[1]}"
    path = results / f"{stem}.json"
    assert path.exists(), proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.returncode, json.loads(path.read_text()), proc.stdout + proc.stderr


@pytest.mark.root
@pytest.mark.slow
def test_reboot_unknown_node(lab3: dict[str, object]) -> None:
    proc = lab("reboot", "nosuch-router")
    assert proc.returncode == 2 and "no node 'nosuch-router'" in proc.stderr and "gcp-router" in proc.stderr


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.parametrize(
    ("node", "kind", "nics"),
    [
        ("gcp-router", "spoke router", ["eth0", "eth1"]),
        ("aws-router", "hub router", ["eth0", "eth1"]),
        ("azure-client", "client", ["eth0"]),
    ],
)
def test_reboot_heals_with_the_boot_command_only(lab3: dict[str, object], tmp_path: Path, node: str, kind: str, nics: list[str]) -> None:
    rc, doc, output = fault(tmp_path, "reboot", node)
    print(output)
    assert doc["kind"] == kind
    off = doc["power_off"]
    # Powered off: only loopback and the NICs are left, none addressed; the node script's links and handles are gone.
    assert off["left"]["links"] == ["lo", *nics] and all(a == [] for a in off["left"]["addresses"].values())
    assert "br-overlay" in off["removed_links"] and off["left"]["handles"] == []
    if kind.endswith("router"):
        assert off["killed"] > 0 and len(off["removed_handles"]) == 3  # dockerd, containerd, shims, containers
    # The boot command rebuilt the node from scratch (a no-op run would report no change).
    assert doc["boot_command"]["ok"] and doc["boot_command"]["changes"] >= (50 if kind.endswith("router") else 10)
    rec = doc["recovery"]
    assert rec["all_s"] is not None and rec["all_s"] < 10, rec
    assert doc["changed_elsewhere"] == []
    # Power-off reset the sysctls and flushed the firewall; the boot command put every per-packet saving back.
    assert savings_missing(savings_in_effect([node])) == {}
    # Once the recovery probes answer, the node has converged: the full matrix passes on its first run.
    assert doc["check"]["ok"] and doc["check"]["pairs"] == 15 * 14 * 2, doc["check"]
    assert doc["check"]["first_try_ok"] and doc["check"]["tries"] == 1, doc["check"]["runs"]
    assert rc == 0
    if node == "aws-router":
        # AWS's hot-attached LAN NIC comes back unaddressed; the boot command gives it its address again.
        log = (STATE_DIR / "nodes/aws-router/root/var/log/overlay-node.log").read_text()
        assert log.count("added 10.1.2.10/24 to LAN NIC eth1") == 2


@pytest.mark.root
@pytest.mark.slow
def test_hub_loss_keeps_sites_local_and_heals(lab3: dict[str, object], tmp_path: Path) -> None:
    rc, doc, output = fault(tmp_path, "hub-loss", "--down-seconds", "2")
    print(output)
    down = doc["while_down"]
    assert doc["hub"] == "aws-router" and sorted(doc["spokes"]) == ["azure", "gcp"]
    # While the hub is off: every spoke site's client, router and containers still reach each other (v4 + v6) ...
    assert down["site_local"]["pairs"] == 2 * 5 * 4 * 2 and down["site_local"]["failed"] == []
    # ... and nothing crosses sites (every spoke-to-spoke and spoke-to-hub-site ping fails).
    assert down["cross_site"]["pairs"] == (15 - 4) * 10 * 2 and down["cross_site"]["answered"] == 0, down["cross_site"]
    assert all(v is not None and v >= 0.99 for v in down["availability"].values()), down["availability"]
    assert doc["power_off"]["left"]["links"] == ["lo", "eth0", "eth1"]
    assert doc["boot_command"]["ok"] and doc["recovery"]["all_s"] is not None
    assert doc["changed_elsewhere"] == []
    assert doc["check"]["ok"], doc["check"]
    assert doc["check"]["first_try_ok"] and doc["check"]["tries"] == 1, doc["check"]["runs"]
    assert rc == 0
