"""encryption ipsec (IKEv2: strongSwan's charon in each router) proven in the Debian cloud-kernel VM (the host kernel
has no ESP), in one VM boot:

0. tunnel credentials arrive only by the push: every node booted from its user-data alone (`lab up --no-push`)
   has no SA and no tunnel across sites (its site works, nothing crosses); `lab push` brings the encrypted
   tunnels up (spoke to spoke through the hub);
   - rekeying under traffic (ipsecRekeySeconds 60): every SA of the hub is replaced while 5 pings a second cross
     two encrypted tunnels, and none is lost;
   - replay: the ESP datagrams of a marked ping, recorded on the internet and sent again, are dropped by the
     hub's SA (its replay counter rises by as many, the tunnel delivers none of them); the control, the same SA
     reinstalled with the same keys and no replay window (what the static keys of earlier versions had),
     delivers them;
   - a spoke router rebooted comes back encrypted from its disk, with no push (recovery timed);
   - wrong credentials: the spoke given other pair keys and rebooted gets no SA (IKE authentication fails on
     both sides) and nothing crosses; the right keys pushed again bring it back;
1. the same lab (3 sites, aws hub, 1:1 NAT, emulated internet) switched to VXLAN in clear in place; a capture on
   the internet sees the marked pings in clear VXLAN datagrams (so the capture can see what it looks for);
2. `lab swap --encryption ipsec` turns IPsec on in place; the full check matrix passes (v4+v6, DF at the smaller
   MTU); the capture sees only ESP in UDP 4500 between routers, no clear frame, no marker, no fragment; the hub's
   unit command run again changes nothing; the hub rebooted (its SAs, policies and IKE daemon gone) comes back
   from its unit command alone and the matrix passes again;
   forged clear tunnel datagrams from a spoke's public address reach the hub's tunnel in clear mode (the control),
   and with IPsec are dropped by the node's chain, and with that chain flushed by the kernel's "in" policy alone;
3. `lab swap --protocol geneve`: the same with GENEVE inside ESP; then the hub moved to gcp, make-before-break,
   with no ping lost on any probed path, the matrix passing with gcp as hub, the spoke holding the SAs of its one
   new tunnel only;
4. `lab swap --encryption none`: back to clear GENEVE in place (the capture reads GENEVE headers on UDP 6081 and
   nothing else), no SA, policy, IKE daemon or socket on UDP 4500 left.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from pathlib import Path

import pytest

from lab.guest import GUEST_RESULTS
from lab.qemu import run_in_vm
from lab.state import DEFAULT_STATE_DIR
from lab.vmimage import build_image

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.ipsec_vm,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the VM test runs qemu and the lab as root"),
    pytest.mark.skipif(
        shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 is missing (apt-get install qemu-system-x86)"
    ),
]

SITES = "aws,azure,gcp"


def script() -> str:
    r = GUEST_RESULTS
    lab = "python3 -m lab"
    ping = "ip netns exec mco-azure-client ping -c 1 -W 2"
    # Directions (src, dst) of the spoke's ESP SAs (a larval SA of a pending key exchange, SPI 0, is not one), and
    # its router tunnels.
    sas = "ip -n mco-azure-router xfrm state list | awk '/^src/ {p = $0} /proto esp spi 0x/ && !/spi 0x00000000/ {print p}' | sort -u | wc -l"
    state = f"xfrm $({sas}) tunnels $(ip -n mco-azure-router -o link show | grep -c ' ovl-r')"
    hub_spis = "ip -n mco-aws-router xfrm state list | grep -o 'spi 0x[0-9a-f]*' | grep -v 0x00000000 | sort -u | tr '\\n' ' '"
    # The routers' charon logs, named through the environment: `lab down` stops every process whose command line
    # names the lab's state dir, this script's included.
    ike_log = "$IKE_LOGS"
    steps = [
        f"{lab} up --containers netns --sites {SITES} --hub aws --protocol vxlan --encryption ipsec --ipsec-rekey-seconds 60 --no-push"
        f" > {r}/boot-only.txt",
        f"echo boot-only {state} local $({ping} 10.250.2.1 >/dev/null && echo ok || echo fail)"
        f" cross $({ping} 10.250.3.2 >/dev/null && echo ok || echo fail)",
        f"{lab} push",
        f"echo pushed {state} cross $({ping} 10.250.3.2 >/dev/null && echo ok || echo fail)",
        # Rekeying under traffic: 80 s of pings across both of the hub's tunnels, each SA due after 54-60 s.
        f"echo spis-before $({hub_spis})",
        f"ip netns exec mco-azure-client ping -i 0.2 -c 400 -q 10.250.3.2 > {r}/rekey-ping.txt",
        f"echo spis-after $({hub_spis})",
        f"echo rekey-ping $(grep -o '[0-9]* packets transmitted, [0-9]* received' {r}/rekey-ping.txt)",
        f"python3 -m lab.capture --replay ike --results {r}",
        f"python3 -m lab.capture --replay static --window-zero --results {r}",
        f"{lab} reboot azure-router --no-check --results {r}",
        f"echo rebooted {state} cross $({ping} 10.250.3.2 >/dev/null && echo ok || echo fail)",
        # Wrong credentials: other pair keys on the spoke, its IKE SAs closed (every exchange then uses them).
        "python3 -m lab.capture --wrong-key azure-router",
        f"{ping} 10.250.3.2 > /dev/null; true",  # traffic (unanswered): the trap policies start an exchange
        "sleep 15",
        f"echo wrong-key {state} cross $({ping} 10.250.3.2 >/dev/null && echo ok || echo fail)"
        f" auth-failed $(cat {ike_log} | grep -c 'AUTHENTICATION_FAILED')",
        f"{lab} push",
        f"echo right-key {state} cross $({ping} 10.250.3.2 >/dev/null && echo ok || echo fail)",
        # The same lab in clear, in place (its nodes' SAs, policies and charon go: see the end).
        f"{lab} swap --encryption none --results {r}/to-clear",
        f"{lab} capture --results {r}",
        f"python3 -m lab.capture --inject clear --results {r}",
        f"{lab} swap --encryption ipsec --results {r}",
        f"{lab} check --results {r}/ipsec-vxlan",
        f"{lab} capture --results {r}",
        "python3 -m lab.capture --reapply",
        f"python3 -m lab.capture --inject ipsec-firewall --results {r}",
        "ip netns exec mco-aws-router iptables -w -F OVERLAY-IN",
        f"python3 -m lab.capture --inject ipsec-policy --results {r}",
        "python3 -m lab.capture --reapply",
        f"{lab} reboot aws-router --results {r}",
        f"{lab} swap --protocol geneve --results {r}",
        f"{lab} check --results {r}/ipsec-geneve",
        f"{lab} capture --results {r}",
        # A hub swap with encrypted tunnels, make-before-break: the new pairs' SAs come up beside the old ones.
        f"{lab} swap --hub gcp --results {r}/hub-gcp",
        f"{lab} check --results {r}/hub-gcp",
        f"echo hub-gcp {state}",
        f"{lab} swap --encryption none --results {r}",
        f"{lab} capture --results {r}",
        # Left on the hub after turning IPsec off: SAs, policies, sockets on UDP 4500 (0x1194), charon; all must be 0.
        "echo leftovers $(ip -n mco-aws-router xfrm state list | grep -c ^src) $(ip -n mco-aws-router xfrm policy list | grep -c ^src)"
        " $(ip netns exec mco-aws-router cat /proc/net/udp | grep -c ':1194 ')"
        " $(ip netns pids mco-aws-router | xargs -r -n1 -I{} cat /proc/{}/comm | grep -c charon)",
        # What is left, if anything, without its keys (the assertion's message shows it).
        "ip -n mco-aws-router xfrm state list | grep -v -e aead -e enc -e auth || true",
    ]
    # Every step runs even after a failure (the report shows all of them); the exit code is the first failure's.
    body = "; ".join(f"{s} || rc=${{rc:-$?}}" for s in steps)
    return f"mkdir -p {r}; rc=; {body}; {lab} down; exit ${{rc:-0}}"


@pytest.mark.timeout(1400)
def test_ipsec_lab_encrypts_every_router_tunnel_for_vxlan_and_geneve(tmp_path: Path) -> None:
    image = build_image()
    logs = f"{DEFAULT_STATE_DIR}/nodes/*-router/root/var/lib/multicloud-overlay/ike/charon.log"
    res = run_in_vm(["/bin/sh", "-c", script()], timeout=1300, results_dir=tmp_path, image=image, env={"IKE_LOGS": logs})
    log = res.output
    assert not res.timed_out, f"the VM did not finish in 1300 s:\n{log[-4000:]}"

    # User-data alone: no SA, no tunnel to another site; the site itself works and nothing crosses.
    assert "boot-only xfrm 0 tunnels 0 local ok cross fail" in log, log[-3000:]
    # The push brings the keys: IKE makes an SA for each direction of the spoke's one tunnel; spoke-to-spoke crosses
    # two of them. After a reboot with no push, the unit brings the same back from the node's disk.
    assert "pushed xfrm 2 tunnels 1 cross ok" in log, log[-3000:]
    assert "rebooted xfrm 2 tunnels 1 cross ok" in log, log[-3000:]
    spoke = json.loads((tmp_path / "reboot-azure-router.json").read_text())
    assert spoke["boot_command"]["ok"] and spoke["power_off"]["killed"] >= 1, json.dumps(spoke)[:2000]
    assert spoke["recovery"]["all_s"] is not None, spoke["recovery"]  # back, encrypted, with nothing done
    # Rekeying under traffic: every SA of the hub replaced by a new one, no ping lost.
    before = set(re.search(r"spis-before (.*)", log).group(1).split("spi")) - {"", " "}  # type: ignore[union-attr]
    after = set(re.search(r"spis-after (.*)", log).group(1).split("spi")) - {"", " "}  # type: ignore[union-attr]
    assert len(before) >= 4 and len(after) >= 4 and not before & after, (before, after)
    assert "rekey-ping 400 packets transmitted, 400 received" in log, log[-3000:]
    # A replayed ESP datagram is dropped, the SA counting it; without a replay window (static keys) it is delivered.
    ike = json.loads((tmp_path / "replay-ike.json").read_text())
    assert ike["recorded"] >= 1 and ike["delivered_first"] >= 1 and ike["delivered_again"] == 0, ike
    assert [after - before for before, after in ike["sa_replay_counter"].values()] == [ike["replayed"]], ike
    static = json.loads((tmp_path / "replay-static.json").read_text())
    assert static["recorded"] >= 1 and static["delivered_again"] >= static["delivered_first"] >= 1, static
    # Wrong credentials: IKE authentication refused, no SA, nothing crosses; the right keys bring the tunnel back.
    m = re.search(r"wrong-key xfrm (\d+) tunnels 1 cross (\w+) auth-failed (\d+)", log)
    assert m is not None and m.group(1) == "0" and m.group(2) == "fail" and int(m.group(3)) >= 1, log[-3000:]
    assert "right-key xfrm 2 tunnels 1 cross ok" in log, log[-3000:]

    clear = json.loads((tmp_path / "capture-none-vxlan.json").read_text())
    assert clear["passed"], clear["verdict"]
    assert clear["clear_tunnel"] > 0 and clear["marker"] > 0 and clear["esp"] == 0

    for protocol in ("vxlan", "geneve"):
        check = json.loads((tmp_path / f"ipsec-{protocol}" / "check.json").read_text())
        assert check["summary"]["ok"] and check["summary"]["passed"] == 420, check["summary"]
        cap = json.loads((tmp_path / f"capture-ipsec-{protocol}.json").read_text())
        assert cap["passed"], cap["verdict"]
        assert cap["clear_tunnel"] == 0 and cap["marker"] == 0 and cap["fragments"] == 0
        assert cap["esp"] >= 2 * 45  # 20+20+5 marked pings, each answered, each crossing two tunnels
        # Both spoke-hub pairs carried ESP in both directions (public to public address on the internet).
        assert len(cap["esp_pairs"]) == 4, cap["esp_pairs"]
        # DF at the overlay MTU fills the narrowest underlay (azure 1400) exactly: the 45 bytes of ESP are counted.
        assert cap["mtu"] == 1305 and cap["esp_max_length"] == 1400
        assert all(cap["pings"].values())
    # Forged clear tunnel datagrams from a spoke router's public address to the hub's tunnel port. In clear mode the
    # hub takes them (the control: the forgery reaches the tunnel device). With IPsec the node's chain drops them;
    # with the chain flushed, the kernel's "in" policy alone still drops them (XFRM counters), and none arrive.
    control = json.loads((tmp_path / "inject-clear.json").read_text())
    assert control["received"] == control["sent"] == 5, control
    walled = json.loads((tmp_path / "inject-ipsec-firewall.json").read_text())
    assert walled["received"] == 0 and walled["firewall_drops"] >= 5, walled
    policy = json.loads((tmp_path / "inject-ipsec-policy.json").read_text())
    assert policy["received"] == 0 and policy["firewall_drops"] == 0 and sum(policy["xfrm"].values()) >= 5, policy
    assert clear["clear_by_header"] == {"vxlan": clear["clear_tunnel"]} and clear["clear_by_port"] == {"4789": clear["clear_tunnel"]}
    m = re.search(r"reapply aws-router: ok=True changes=(\d+)", log)
    assert m is not None and int(m.group(1)) == 0, f"second run of the hub's unit command changed something:\n{log[-3000:]}"
    assert "nothing rebuilt: yes" in log
    back = json.loads((tmp_path / "capture-none-geneve.json").read_text())
    assert back["passed"] and back["esp"] == 0 and back["clear_tunnel"] > 0, back["verdict"]
    # GENEVE on the wire: every clear tunnel datagram carries a GENEVE header (read from its bytes) on UDP 6081.
    assert back["clear_by_header"] == {"geneve": back["clear_tunnel"]} and back["clear_by_port"] == {"6081": back["clear_tunnel"]}
    # A hub swap under IPsec, make-before-break: no ping lost or duplicated on any probed path, the matrix passes with
    # gcp as hub, and the spoke keeps exactly its new tunnel and that pair's two SAs.
    swap = json.loads((tmp_path / "hub-gcp" / "swap-gcp-geneve.json").read_text())
    assert swap["mode"] == "make-before-break" and swap["rebuilt"] == [], swap
    paths = [swap["ping"], *swap["other_paths"]]
    assert [(p["lost"], p["duplicates"]) for p in paths] == [(0, 0)] * len(paths) and len(paths) >= 2, paths
    hub_gcp = json.loads((tmp_path / "hub-gcp" / "check.json").read_text())
    assert hub_gcp["hub"] == "gcp" and hub_gcp["summary"]["ok"] and hub_gcp["summary"]["passed"] == 420, hub_gcp["summary"]
    assert "hub-gcp xfrm 2 tunnels 1" in log, log[-3000:]
    assert "leftovers 0 0 0 0" in log, f"SAs, policies, the NAT-T socket or charon left after turning IPsec off:\n{log[-2000:]}"
    reboot = json.loads((tmp_path / "reboot-aws-router.json").read_text())
    assert reboot["boot_command"]["ok"] and reboot["check"]["ok"], json.dumps(reboot)[:2000]
    assert reboot["power_off"]["killed"] >= 1  # charon went down with the node
    assert res.exit_code == 0, f"exit {res.exit_code}: {shlex.quote(log[-3000:])}"
