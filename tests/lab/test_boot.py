"""Real boot (lab.boot): the payloads run by the real cloud-init, systemd, sshd and Docker in qemu VMs booted from
the node image, and the program's push and check commands run over real SSH.

One boot lab for the module (a hub and two spokes: AWS with gzip user-data, OCI with its image's firewall and a NIC
the payload configures, vSphere with its management NIC), in the order the tests are written: what the first boot
left, then the in-place changes (through the program's own command strings), then reboots, then teardown.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from lab import boot, forgery
from lab.capture import verdict
from lab.probes import parse_ping_log
from lab.swap import disruption
from lab.topology import build_layout
from multicloud_overlay.cloudinit.overlay_node import BFD_DOWN, SWANCTL_CONF, WATCH_UNIT
from multicloud_overlay.cloudinit.render import APPLY_COMMAND, STATE_DIR, UNIT_NAME
from multicloud_overlay.components.connectivity import check_targets

pytestmark = [pytest.mark.root, pytest.mark.boot, pytest.mark.timeout(5400)]

RESULTS = Path(__file__).resolve().parents[2] / "lab-results" / "boot"
REKEY_SECONDS = 60
"""ipsecRekeySeconds of the boot lab: the smallest the program accepts, so every pair's ESP SAs are replaced about
once a minute all through the test (each proof below passes while they are), and within the rekeying test."""
ESP_SAS = "ip xfrm state | grep -o 'spi 0x[0-9a-f]*' | grep -v 0x00000000 | sort -u"  # not the larval SPI 0


def _record(name: str, data: Any) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=1, default=str) + "\n")


@pytest.fixture(scope="module")
def booted() -> Iterator[dict[str, Any]]:
    missing = [t for t in ("qemu-system-x86_64", "qemu-img", "genisoimage", "debootstrap", "ssh") if shutil.which(t) is None]
    assert not missing, f"make setup installs {missing}"
    boot.down(out=lambda _: None)
    try:
        res = boot.up("dev", list(boot.DEFAULT_SITES), {"ipsecRekeySeconds": REKEY_SECONDS}, out=print)
        _record("up", res)
        res["rekey"] = _start_rekey_traffic()
        yield res
    finally:
        boot.down(out=lambda _: None)
        left = [
            ns
            for ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
            if ns.startswith(boot.PREFIX)
        ]
        assert not left, f"boot lab left namespaces behind: {left}"
        qemu = subprocess.run(["pgrep", "-a", "-f", f"qemu-system.*{boot.STATE_DIR}"], capture_output=True, text=True).stdout
        assert not qemu.strip(), f"boot lab left VMs running: {qemu}"


def _specs() -> dict[str, boot.VmSpec]:
    return boot.specs_of(boot.load())


REKEY_PING_LOG = "/run/mco-rekey-ping.txt"


def _start_rekey_traffic() -> dict[str, Any]:
    """The rekeying test's traffic, started as soon as the stack is up: a spoke's client pings the other spoke's
    client 5 times a second for 80 s (each ping crossing both of the hub's encrypted tunnels), in the background while
    the tests before that one run (none of them touches that path: they read, check, capture, rekey or replay), so
    that the test waits for the rest of the 80 s only. The hub's ESP SAs before it, and when it started."""
    specs = _specs()
    before = set(boot.root(specs["aws-router"], ESP_SAS).split()) - {"spi"}
    target = boot.load().plan().client("vsphere").overlay_ipv4
    boot.root(specs["oci-client"], f"setsid ping -i 0.2 -c 400 -q {target} > {REKEY_PING_LOG} 2>&1 < /dev/null &")
    return {"before": before, "started": time.monotonic()}


def _on_every_vm(command: str, kind: str | None = None) -> list[tuple[boot.VmSpec, subprocess.CompletedProcess[str]]]:
    """`command` as root on every VM (of `kind`, router or client) at once: each VM has its own emulated CPU."""
    vms = [vm for vm in _specs().values() if kind in (None, vm.kind)]
    with ThreadPoolExecutor(max_workers=len(vms)) as pool:
        return list(zip(vms, pool.map(lambda vm: boot.ssh(vm, command, console=True), vms), strict=True))


def test_cloud_init_is_done_without_errors_and_its_schema_passes(booted: dict[str, Any]) -> None:
    for b in booted["boots"]:
        detail = b["detail"]
        assert detail["status"] == "done", (b["node"], detail)
        assert detail.get("errors") == [], (b["node"], detail.get("errors"))
        assert not detail.get("recoverable_errors"), (b["node"], detail.get("recoverable_errors"))
    # cloud-init 22.4 (Debian 12) reports no recoverable errors in its status yet: its log's warnings are those.
    look = "cloud-init schema --system; rc=$?; grep -E ' (WARNING|ERROR|CRITICAL)' /var/log/cloud-init.log; exit $rc"
    for vm, p in _on_every_vm(look):
        assert p.returncode == 0, (vm.node, "cloud-init schema --system failed", p.stdout, p.stderr)
        assert not [line for line in p.stdout.splitlines() if re.search(" (WARNING|ERROR|CRITICAL)", line)], (vm.node, p.stdout)


def test_a_lan_nic_attached_after_launch_is_waited_for_by_the_first_boot(booted: dict[str, Any]) -> None:
    """AWS and OCI attach a router's LAN NIC to the running instance: here it came only once the first boot's
    unit was waiting for it, and that boot still ended with cloud-init done (above) and the unit active (below)."""
    late = {b["node"]: b["late_nic"] for b in booted["boots"] if b["late_nic"]}
    assert set(late) == {"aws-router", "oci-router"}
    assert all(v["unit_was_waiting"] for v in late.values()), late


def test_user_data_alone_brings_up_the_site_and_no_tunnel_to_another(booted: dict[str, Any]) -> None:
    """The tunnels' credentials and peers come only with the push: before it, no router has an SA or a tunnel to
    another router, and a client reaches its own router but not another site."""
    before = booted["before_push"]
    assert before["routers"] and all(r == {"sas": 0, "router_tunnels": 0} for r in before["routers"].values()), before
    assert before["own_router"] and not before["other_site"], before


def test_the_overlay_unit_is_enabled_and_active(booted: dict[str, Any]) -> None:
    for vm, p in _on_every_vm(f"systemctl is-enabled {UNIT_NAME}; systemctl is-active {UNIT_NAME}"):
        assert p.stdout.split() == ["enabled", "active"], (vm.node, p.stdout, p.stderr)


def test_the_first_pushes_and_the_program_checks_pass(booted: dict[str, Any]) -> None:
    assert booted["pushes"] and all(p["ok"] for p in booted["pushes"])
    for router, (rc, result) in booted["checks"].items():
        assert rc == 0 and result["unreachable"] == [] and result["reachable"] == result["total"] > 0, (router, result)


def test_the_units_command_run_again_changes_nothing(booted: dict[str, Any]) -> None:
    """The unit's own command on every converged VM, once more: idempotent on the real system (Docker, strongSwan,
    systemd-networkd's links), not only in the lab's namespaces."""
    for vm, p in _on_every_vm(shlex.join(APPLY_COMMAND)):
        assert p.returncode == 0 and "no change" in p.stdout and "changed:" not in p.stdout, (vm.node, p.stdout, p.stderr)


def test_the_full_matrix_passes_and_only_esp_crosses_the_internet(booted: dict[str, Any]) -> None:
    """Every endpoint reaches every other over IPv4 and IPv6 (VXLAN in ESP, the stack's defaults), while a capture on
    the emulated internet sees ESP only: no clear tunnel datagram, no marked ping in clear, no fragment, even for a
    ping with don't-fragment at the overlay MTU, whose ESP datagram fills the narrowest underlay exactly."""
    st = boot.load()
    plan, specs = st.plan(), _specs()
    source, target = specs["oci-client"], plan.client("vsphere").overlay_ipv4  # spoke to spoke: both hub pairs

    def during() -> tuple[dict[str, Any], dict[str, bool]]:
        m = boot.matrix(st)
        pings = {"marked": boot.marked_pings(source, target), "df_at_mtu": boot.marked_pings(source, target, 3, plan.mtu - 28, df=True)}
        return m, pings

    (m, pings), summary = boot.capture(during)
    _record("matrix", m)
    _record("capture-esp-vxlan", {"mtu": plan.mtu, "path_mtu": plan.path_mtu, "pings": pings, **summary})
    assert m["failed"] == {}
    assert len(m["sources"]) == 3 * (2 + 3)
    passed, why = verdict(True, summary, all(pings.values()))
    assert passed, (why, pings)
    assert summary["udp_ports"] == [], summary
    # Both spoke-hub pairs carried ESP both ways (public to public addresses on the internet).
    assert len(summary["esp_pairs"]) == 4, summary["esp_pairs"]
    # 45 bytes of ESP in UDP and 50 of VXLAN: the MTU ping's datagram is exactly the narrowest underlay's MTU.
    assert summary["esp_max_length"] == plan.path_mtu, (summary["esp_max_length"], plan.path_mtu, plan.mtu)


def test_every_sa_of_the_hub_is_rekeyed_under_traffic_and_no_ping_is_lost(booted: dict[str, Any]) -> None:
    """Real strongSwan (charon-systemd) rekeying by its own timers, with the rekey time the program pushed: while
    a spoke's client pings the other spoke's client 5 times a second for 80 s (each ping crossing both of the hub's
    encrypted tunnels), every ESP SA the hub held is replaced by a new one, and no ping is lost. The pings started
    with the stack (_start_rekey_traffic)."""
    specs = _specs()
    hub, before = specs["aws-router"], booted["rekey"]["before"]
    # ping ends 80 s after it started, and writes its summary then.
    wait = f"while ! grep -q 'packets transmitted' {REKEY_PING_LOG}; do sleep 1; done; cat {REKEY_PING_LOG}"
    t0 = time.monotonic()
    out = boot.root(specs["oci-client"], f"timeout 300 sh -c {shlex.quote(wait)}", timeout=330)
    after = set(boot.root(hub, ESP_SAS).split()) - {"spi"}
    seconds = {"waited": round(time.monotonic() - t0, 1), "pinging": round(time.monotonic() - booted["rekey"]["started"], 1)}
    _record("rekey", {"before": sorted(before), "after": sorted(after), "ping": out.strip().splitlines()[-2:], **seconds})
    assert len(before) >= 4 and len(after) >= 4 and not before & after, (before, after)
    assert "400 packets transmitted, 400 received" in out, out


def test_a_replayed_esp_datagram_is_dropped_and_delivered_only_without_a_replay_window(booted: dict[str, Any]) -> None:
    """The ESP datagram of a marked ping from oci to the hub, recorded on the internet and sent again: the hub's SA
    drops it (its replay counter rises by one) and its tunnel delivers nothing more. The control: the same SA
    reinstalled with the same keys and no replay window (the static keys of earlier versions) delivers it again.
    The SAs are rekeyed every minute here: a run whose SA was replaced meanwhile proves nothing and is run again."""
    st = boot.load()
    aim = boot.aim(st, "aws", "oci")
    hub = _specs()["aws-router"]

    def replay(label: str, window_zero: bool) -> dict[str, Any]:
        reports: list[dict[str, Any]] = []
        while len(reports) < 3 and not (reports and reports[-1]["sa_gone"] == []):
            # From a fresh SA (the IKE daemon rekeys the pair now): a proof takes about half of the minute an SA lives.
            boot.root(hub, f"swanctl --rekey --child {aim.device} && sleep 3")
            reports.append(forgery.replay(aim, label, RESULTS, window_zero))
        return reports[-1]

    ike = replay("ike", False)
    assert ike["sa_gone"] == [] and ike["recorded"] >= 1 and ike["delivered_first"] >= 1, ike
    assert ike["delivered_again"] == 0, ike
    assert [after - before for before, after in ike["sa_replay_counter"].values()] == [ike["replayed"]], ike
    static = replay("static", True)
    assert static["sa_gone"] == [] and static["recorded"] >= 1, static
    assert static["delivered_again"] >= static["delivered_first"] >= 1, static


def test_forged_clear_tunnel_datagrams_are_dropped_by_the_chain_and_by_the_in_policy_alone(booted: dict[str, Any]) -> None:
    """Clear VXLAN datagrams forged on the internet with the oci router's public address, to the hub's tunnel port:
    with IPsec the hub's OVERLAY-IN chain drops them; with that chain flushed, the kernel's "in" policy alone still
    drops them (XFRM counters), and none reaches the tunnel. The unit's command puts the chain back. (The control,
    the same forgery from oci to aws's tunnel delivered in clear, is in the last test.)"""
    st = boot.load()
    plan, specs = st.plan(), _specs()
    hub, aim = specs["aws-router"], boot.aim(st, "aws", "oci")
    walled = forgery.inject(aim, "ipsec-firewall", RESULTS)
    assert walled["received"] == 0 and walled["firewall_drops"] >= walled["sent"], walled
    boot.root(hub, "iptables -w -F OVERLAY-IN")
    try:
        policy = forgery.inject(aim, "ipsec-policy", RESULTS)
    finally:
        again = boot.ssh(hub, shlex.join(APPLY_COMMAND), console=True)
    assert policy["received"] == 0 and policy["firewall_drops"] == 0 and sum(policy["xfrm"].values()) >= policy["sent"], policy
    assert again.returncode == 0 and "changed:" in again.stdout, (again.stdout, again.stderr)
    rc, result = boot.check_from(hub, plan)
    assert rc == 0, result


def test_a_wrong_pinned_host_key_is_refused(booted: dict[str, Any]) -> None:
    vm = _specs()["aws-router"]
    other = boot.host_key("oci-router")[1]
    pinned = boot.known_hosts(vm, other)
    p = boot.ssh(vm, "true", pinned=pinned, timeout=60)
    assert p.returncode == 255 and "host key" in p.stderr.lower(), p.stderr
    assert boot.ssh(vm, "true", timeout=60).returncode == 0


def test_an_unreachable_pair_fails_the_check(booted: dict[str, Any]) -> None:
    st = boot.load()
    specs = _specs()
    plan = st.plan()
    client = plan.client("oci")
    boot.root(specs[client.name], "ip link set br-overlay down")
    try:
        rc, result = boot.check_from(specs["aws-router"], plan)
        assert rc == 1
        assert set(result["unreachable"]) == {client.overlay_ipv4, client.overlay_ipv6}, result
    finally:
        boot.root(specs[client.name], f"systemctl restart {UNIT_NAME}")
    rc, result = boot.check_from(specs["aws-router"], plan)
    assert rc == 0, result


def test_wrong_pair_keys_get_no_sa_and_the_right_ones_bring_the_tunnel_back(booted: dict[str, Any]) -> None:
    """A spoke router pushed other pair keys through the program's path (a router holding wrong credentials), its IKE
    SAs closed: IKEv2 authentication fails, no ESP SA comes up and nothing crosses; the right keys pushed again
    bring the tunnel back by themselves."""
    st, specs = boot.load(), _specs()
    plan = st.plan()
    spoke, hub = specs["oci-router"], specs["aws-router"]
    right = boot.node_docs(plan, build_layout(plan, boot.PREFIX), st.key_seed)[spoke.node]
    wrong = copy.deepcopy(right)
    names = [t["name"] for t in wrong["tunnels"] if "psk" in t]
    for t in wrong["tunnels"]:
        if "psk" in t:
            t["psk"] = os.urandom(len(t["psk"]) // 2).hex()
    assert names and wrong != right
    esp_sas = f"{ESP_SAS} | wc -l"
    refused = "journalctl -u strongswan.service -o cat --no-pager | grep -c AUTHENTICATION_FAILED || true"
    before = sum(int(boot.root(vm, refused)) for vm in (spoke, hub))
    cross = f"ping -c 2 -W 2 {plan.client('aws').overlay_ipv4}"
    try:
        p = boot.push_node(spoke, wrong, None)
        assert p.returncode == 0, p.stdout + p.stderr
        boot.root(spoke, "; ".join(f"swanctl --terminate --ike {n} --force --timeout 5 || true" for n in names))
        boot.ssh(specs["oci-client"], cross, console=True, timeout=60)  # traffic: the trap policies start an exchange
        # Both daemons log the refusal within seconds; the spoke's retries meanwhile get no SA either.
        deadline = time.monotonic() + 60
        while sum(int(boot.root(vm, refused)) for vm in (spoke, hub)) <= before and time.monotonic() < deadline:
            time.sleep(2)
        time.sleep(3)
        assert boot.root(spoke, esp_sas).strip() == "0"
        assert boot.ssh(specs["oci-client"], cross, console=True, timeout=60).returncode != 0
        assert sum(int(boot.root(vm, refused)) for vm in (spoke, hub)) > before
    finally:
        p = boot.push_node(spoke, right, None)
    assert p.returncode == 0, p.stdout + p.stderr
    deadline = time.monotonic() + 120
    while boot.ssh(specs["oci-client"], cross, console=True, timeout=60).returncode != 0 and time.monotonic() < deadline:
        time.sleep(2)
    # One SA each way (two of each if both ends started an exchange at once: harmless). A rekey (every minute here)
    # holds the old and the new SAs for a moment: the fewest of three looks, 2 s apart, is what stays.
    counts = []
    for _ in range(3):
        counts.append(int(boot.root(spoke, esp_sas)))
        time.sleep(2)
    assert min(counts) in (2, 4), (counts, boot.root(spoke, "ip xfrm state"))
    rc, result = boot.check_from(hub, plan)
    assert rc == 0, result


def test_a_hub_swap_through_ssh_is_make_before_break_and_loses_no_ping(booted: dict[str, Any]) -> None:
    """pulumi config set hub oci; pulumi up: the program's make-before-break pushes over SSH, in its order, with IPsec
    on. A client of the old hub's site pinged 10 times a second from another spoke's client (a path that moves from
    the old hub's tunnel to two tunnels through the new hub) loses no ping and gets no duplicate."""
    st = boot.load()
    st.overrides.update({"hub": "oci"})
    boot.save(st)
    plan, specs = st.plan(), _specs()
    source, target = specs["vsphere-client"], plan.client("aws").overlay_ipv4
    log = "/run/mco-swap-ping.txt"
    boot.root(source, f"setsid ping -D -O -n -i 0.1 -W 1 {target} > {log} 2>&1 < /dev/null & sleep 2")
    try:
        t0 = time.monotonic()
        pushes = boot.push_all(st)
        seconds = round(time.monotonic() - t0, 1)
        time.sleep(2)
    finally:
        text = boot.root(source, f"pkill -INT -x ping; sleep 1; cat {log}")
    probe = disruption(parse_ping_log(text), interval=0.1)
    _record("hub-swap", {"seconds": seconds, "ping": probe, "pushes": pushes})
    # The make-before-break path itself: every router ran its new tunnels beside the old ones, then moved to them.
    routers = {vm.node for vm in specs.values() if vm.kind == "router"}
    side_by_side = {(p["node"], p["phase"]) for p in pushes if "old and new tunnels side by side" in p["output"]}
    assert side_by_side == {(r, phase) for r in routers for phase in ("prepare", "switch")}, pushes
    assert probe["converged"] and probe["answered"] >= 5 * seconds, probe  # it pinged all through (an emulated CPU may send late)
    assert (probe["lost"], probe["duplicates"]) == (0, 0), probe
    rc, result = boot.check_from(specs["oci-router"], plan)
    assert rc == 0, result


def test_a_protocol_switch_through_ssh_converges(booted: dict[str, Any]) -> None:
    """pulumi config set protocol geneve; pulumi up: the program's pushes over SSH. Encrypted: only ESP crosses the
    internet."""
    st = boot.load()
    st.overrides.update({"protocol": "geneve"})
    boot.save(st)
    t0 = time.monotonic()
    pushes = boot.push_all(st)
    _record("switch", {"seconds": round(time.monotonic() - t0, 1), "pushes": pushes})
    plan = st.plan()
    specs = _specs()
    hub = boot.root(specs["oci-router"], "ip -d -j link show type geneve")
    assert {link["linkinfo"]["info_data"].get("port") for link in json.loads(hub)} == {6081}, hub
    assert boot.root(specs["oci-router"], "ip -j link show type vxlan").strip() in ("", "[]")
    (rc, result), summary = boot.capture(lambda: boot.check_from(specs["aws-router"], plan))
    _record("capture-encrypted", summary)
    assert rc == 0, result
    assert summary["esp"] > 0 and summary["clear_tunnel"] == 0 and summary["marker"] == 0 and summary["udp_ports"] == [], summary
    m = boot.matrix(st)
    _record("matrix-geneve", m)
    assert m["failed"] == {}


def test_a_reboot_brings_the_overlay_back_by_itself(booted: dict[str, Any]) -> None:
    """A real `systemctl reboot` of the hub and of a spoke at once, with IPsec (the default) on: strongswan.service
    and the overlay unit come back at boot and the pairs re-key; nothing else is done. The proof is the program's own
    check from the third router: every overlay address of the stack (each VM and container, IPv4 and IPv6), those of
    the rebooted spoke's site through the rebooted hub."""
    st = boot.load()
    specs = _specs()
    plan = st.plan()
    with ThreadPoolExecutor(max_workers=2) as pool:
        got = dict(
            zip(
                ("oci-router", "aws-router"),
                pool.map(lambda n: boot.reboot(specs[n], plan, checker=specs["vsphere-router"]), ("oci-router", "aws-router")),
                strict=True,
            )
        )
    _record("reboot", got)
    for node in ("oci-router", "aws-router"):
        assert boot.root(specs[node], f"systemctl is-active {UNIT_NAME} strongswan.service").split() == ["active", "active"], node
    rc, result = boot.check_from(specs["vsphere-router"], plan)
    assert rc == 0 and result["unreachable"] == [] and result["reachable"] == result["total"] == len(check_targets(plan)), result


def test_encryption_off_in_place_shows_only_the_protocol_port_on_the_wire(booted: dict[str, Any]) -> None:
    st = boot.load()
    st.overrides.update({"encryption": "none"})
    boot.save(st)
    boot.push_all(st)
    plan = st.plan()
    specs = _specs()
    # Nothing of IPsec left on a router, nor anything that a reboot would bring back: no SA, no policy, no socket on
    # UDP 4500, strongswan.service stopped and disabled, its connections file gone.
    left = (
        "ip xfrm state | grep -c ^src; ip xfrm policy | grep -c ^src; ss -Hlun 'sport = :4500' | wc -l; "
        f"systemctl is-enabled strongswan.service; systemctl is-active strongswan.service; ls {SWANCTL_CONF} 2>/dev/null | wc -l"
    )
    for vm, p in _on_every_vm(left, kind="router"):
        assert p.stdout.split() == ["0", "0", "0", "disabled", "inactive", "0"], (vm.node, p.stdout, p.stderr)
    (ok, _), summary = boot.capture(lambda: (boot.marked_pings(specs["aws-client"], plan.client("vsphere").overlay_ipv4), None))
    _record("capture-clear", summary)
    passed, why = verdict(False, summary, ok, "geneve")
    assert passed, why
    assert summary["udp_ports"] == [6081], summary
    # The control of the forgery test: forged clear datagrams (GENEVE now) from the oci router's public address to the
    # aws router's tunnel port reach that tunnel, now that nothing but the peer rule guards it.
    control = forgery.inject(boot.aim(st, "aws", "oci"), "clear", RESULTS)
    assert control["received"] == control["sent"] == 5, control


def test_encryption_on_in_place_brings_ipsec_back(booted: dict[str, Any]) -> None:
    """pulumi config set encryption ipsec; pulumi up: the pushes alone enable and start strongswan.service on every
    router, the pairs key again, the check passes and only ESP crosses the internet."""
    st = boot.load()
    st.overrides.update({"encryption": "ipsec"})
    boot.save(st)
    boot.push_all(st)
    plan, specs = st.plan(), _specs()
    for vm, p in _on_every_vm("systemctl is-enabled strongswan.service; systemctl is-active strongswan.service", kind="router"):
        assert p.stdout.split() == ["enabled", "active"], (vm.node, p.stdout, p.stderr)
    (rc, result), summary = boot.capture(lambda: boot.check_from(specs["aws-router"], plan))
    _record("capture-encrypted-again", summary)
    assert rc == 0, result
    assert summary["esp"] > 0 and summary["clear_tunnel"] == 0 and summary["marker"] == 0 and summary["udp_ports"] == [], summary


def _bfd_sessions(vm: boot.VmSpec) -> dict[str, str]:
    """The BFD sessions of a router, peer address -> status, from FRR's own vtysh (run as root)."""
    out = boot.root(vm, "vtysh -c 'show bfd peers json'").strip()
    return {p["peer"]: p["status"] for p in (json.loads(out) if out else [])}


def test_two_hubs_fail_over_by_bfd_and_back_and_go_in_place(booted: dict[str, Any]) -> None:
    """pulumi config set standbyHub aws; pulumi up: the pushes alone start FRR's bfdd (frr.service) on every router,
    one session per router tunnel, and the watcher (a transient unit). The hub is then cut off the internet, as a VM
    that dies is to its peers: the spoke's watcher records the hub's tunnel down and floods on its tunnel to the
    standby instead; frr.service restarted meanwhile keeps it there (the sessions come back from FRR's saved config,
    the watcher from what it recorded); and it moves back once the hub returns. With three sites no spoke-to-spoke
    path crosses the hub (the host lab's four-site test times that failover): the spoke's client keeps reaching the
    standby's client, directly, with no ping lost and no duplicate. Unset again, the pushes stop FRR and the watcher and remove the probe."""
    st = boot.load()
    hub, standby, spoke = st.plan().hub, "aws", "vsphere"
    assert hub == "oci", "the hub swap test runs first"
    st.overrides.update({"standbyHub": standby})
    boot.save(st)
    pushes = boot.push_all(st)
    plan, specs = st.plan(), _specs()
    routers = [specs[r.name] for r in plan.routers()]
    for vm in routers:
        assert boot.root(vm, f"systemctl is-active frr.service {WATCH_UNIT}.service").split() == ["active", "active"], vm.node
    deadline = time.monotonic() + 60
    while True:
        sessions = {vm.node: _bfd_sessions(vm) for vm in routers}
        if all(len(s) == 2 and set(s.values()) == {"up"} for s in sessions.values()) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert all(len(s) == 2 and set(s.values()) == {"up"} for s in sessions.values()), sessions
    router = specs[f"{spoke}-router"]
    doc = boot.node_docs(plan, build_layout(plan, boot.PREFIX), st.key_seed)[router.node]
    ((to_standby, to_hub),) = [(t["name"], t["standby_for"]) for t in doc["tunnels"] if "standby_for" in t]

    def moved() -> tuple[bool, list[str]]:
        """Whether the spoke floods on its tunnel to the standby, and the tunnels its watcher records down."""
        out = boot.root(router, f"bridge -d -j link show dev {to_standby}; echo; cat {STATE_DIR}/{BFD_DOWN} 2>/dev/null || echo []")
        link, down = out.strip().split("\n", 1)
        return bool(json.loads(link)[0]["flood"]), json.loads(down)

    def until(want: tuple[bool, list[str]], timeout: float) -> float | None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if moved() == want:
                return round(time.monotonic() - t0, 1)
        return None

    assert moved() == (False, [])
    source, target = specs[f"{spoke}-client"], plan.client(standby).overlay_ipv4
    log = "/run/mco-two-hubs-ping.txt"
    interval = 0.05
    boot.root(source, f"setsid ping -D -O -n -i {interval} -W 1 {target} > {log} 2>&1 < /dev/null & sleep 3")
    try:
        boot.cut_off(st, hub, True)
        try:
            over = until((True, [to_hub]), 20)
            # frr.service restarted while the hub is gone (an upgrade, an operator): bfdd loads the sessions the push
            # saved, and the watcher, started again by its unit, keeps what the last one recorded.
            boot.root(router, "systemctl restart frr.service")
            restart, after_restart = time.monotonic(), {}
            while time.monotonic() - restart < 60:
                after_restart = _bfd_sessions(router)
                if len(after_restart) == 2 and "up" in after_restart.values():
                    break
                time.sleep(1)
            shown = boot.root(router, f"sleep 3; systemctl show -p ActiveState,NRestarts {WATCH_UNIT}.service").split()
            watcher = dict(line.split("=", 1) for line in shown)
            kept = moved()
        finally:
            boot.cut_off(st, hub, False)
        back = until((False, []), 30)
        time.sleep(2)
    finally:
        text = boot.root(source, f"pkill -INT -x ping; sleep 1; cat {log}")
    ping = parse_ping_log(text)
    probe = disruption(ping, interval)
    # over/back: seconds until a login saw the move (each look is an SSH login to an emulated CPU: an upper bound).
    _record(
        "two-hubs",
        {"pushes": pushes, "sessions": sessions, "after_restart": after_restart, "moved_over_s": over, "moved_back_s": back, "ping": probe},
    )
    assert over is not None, "the spoke did not move to the standby while the hub was cut off"
    assert sorted(after_restart.values()) == ["down", "up"], after_restart  # both sessions back, from the saved config
    assert watcher["ActiveState"] == "active" and int(watcher["NRestarts"]) > 0, watcher  # it ended with bfdd, and came back
    assert kept == (True, [to_hub]), kept
    assert back is not None, f"the spoke did not move back once the hub returned: {moved()}"
    assert probe["converged"] and (probe["lost"], probe["duplicates"]) == (0, 0), probe
    rc, result = boot.check_from(specs[f"{hub}-router"], plan)
    assert rc == 0, result
    # And away again in place.
    del st.overrides["standbyHub"]
    boot.save(st)
    boot.push_all(st)
    for vm in routers:
        state = boot.root(vm, f"systemctl is-active frr.service {WATCH_UNIT}.service; ip -br link show ovl-b0 2>/dev/null | wc -l")
        assert state.split() == ["inactive", "inactive", "0"], (vm.node, state)
    rc, result = boot.check_from(specs[f"{hub}-router"], plan)
    assert rc == 0, result
