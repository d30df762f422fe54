"""python -m lab up|push|check|swap|reboot|hub-loss|capture|down|status|vm."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Final

from lab import graph as lab_graph
from lab.invocation import lab_command
from lab.privilege import become_root, hand_back, invoking_user
from lab.results import LATEST, describe, finish_run, start_run
from lab.state import REPO, STATE_DIR, LabError
from lab.vmimage import DEFAULT_CACHE
from multicloud_overlay.overlay.config import TOPOLOGIES, ConfigError
from multicloud_overlay.overlay.encapsulation import ENCRYPTIONS, PROTOCOLS

DEFAULT_RESULTS = REPO / "lab-results"


def _sites(value: str) -> list[str]:
    sites = [s.strip() for s in value.split(",") if s.strip()]
    if len(sites) < 2:
        raise argparse.ArgumentTypeError("give at least two sites, comma-separated (e.g. aws,gcp)")
    return sites


def cmd_up(args: argparse.Namespace) -> int:
    from lab import lifecycle

    overrides: dict[str, Any] = {
        "hub": args.hub,
        "standbyHub": args.standby_hub,
        "protocol": args.protocol,
        "topology": args.topology,
        "encryption": args.encryption,
        "ipsecRekeySeconds": args.ipsec_rekey_seconds,
    }
    res = lifecycle.up(args.stack, args.sites, overrides, runtime=args.containers, force=args.force, push=not args.no_push)
    print()
    print(lifecycle.summary_table(res.plan, res.layout, res.applies))
    print(
        f"\nbring-up: {res.seconds:.1f} s; next: {lab_command('push' if args.no_push else 'check')}; "
        f"to reach a node: {lab_command('status')}, {lab_command('exec', res.plan.nodes[0].name)} -- CMD"
    )
    if args.check:
        from lab.check import run_check

        return run_check(args.results)
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from lab import lifecycle

    return lifecycle.push_all()


def cmd_check(args: argparse.Namespace) -> int:
    from lab.check import run_check

    return run_check(args.results)


def cmd_swap(args: argparse.Namespace) -> int:
    from lab.swap import run_swap

    if all(v is None for v in (args.hub, args.protocol, args.encryption, args.topology, args.standby_hub)):
        raise LabError(
            "swap: give --hub SITE, --standby-hub SITE, --protocol PROTOCOL, --topology TOPOLOGY and/or --encryption none|ipsec"
        )
    return run_swap(
        hub=args.hub,
        protocol=args.protocol,
        results=args.results,
        fdb_fix=args.remove_stale_fdb,
        encryption=args.encryption,
        topology=args.topology,
        one_step=args.one_step,
        standby_hub=args.standby_hub,
    )


def cmd_reboot(args: argparse.Namespace) -> int:
    from lab.faults import run_reboot

    return run_reboot(args.node, args.results, full_check=not args.no_check)


def cmd_hub_loss(args: argparse.Namespace) -> int:
    from lab.faults import run_hub_loss

    if args.down_seconds < 0:
        raise LabError("hub-loss: --down-seconds must be 0 or more")
    return run_hub_loss(args.results, args.down_seconds, full_check=not args.no_check)


def cmd_capture(args: argparse.Namespace) -> int:
    from lab.capture import prove

    return 0 if prove(args.results)["passed"] else 1


def cmd_down(args: argparse.Namespace) -> int:
    from lab import lifecycle

    lifecycle.down()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from lab import lifecycle

    return lifecycle.status()


def cmd_exec(args: argparse.Namespace) -> int:
    from lab.access import run_exec
    from lab.state import require_root

    require_root("exec")
    command = list(args.exec_command)
    if command[:1] == ["--"]:
        command = command[1:]
    return run_exec(args.node, command)


def cmd_vm(args: argparse.Namespace) -> int:
    from lab.vm import run_vm

    return run_vm(
        stack=args.stack,
        sites=args.sites,
        protocol=args.protocol,
        hub=args.hub,
        topology=args.topology,
        encryption=args.encryption,
        results=args.results,
        timeout=args.timeout,
        memory_mb=args.memory,
        cpus=args.cpus,
        cache=args.cache,
        self_test=args.self_test,
        warm_up=args.warm_up,
        command_line=args.command_line,
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lab",
        description="Run the stack's overlay locally: one network namespace per VM built from its cloud-init payload, "
        "emulated clouds (private subnets, 1:1 NAT, internet), Docker containers on the routers. Needs root.",
    )
    sub = p.add_subparsers(
        dest="command", required=True, metavar="{up,check,swap,reboot,hub-loss,capture,down,status,exec,vm,graph,matrix}"
    )

    def results(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--results",
            type=Path,
            default=DEFAULT_RESULTS,
            help=f"where check/swap/reboot/hub-loss write JSON and JUnit (default {DEFAULT_RESULTS})",
        )

    up = sub.add_parser("up", help="build the lab from the stack config")
    up.add_argument("--stack", default="dev", help="stack name: reads Pulumi.NAME.yaml (default dev)")
    up.add_argument("--sites", type=_sites, help="use only these sites, comma-separated (e.g. aws,gcp)")
    up.add_argument("--hub", help="override the hub site")
    up.add_argument("--standby-hub", metavar="SITE", help="override standbyHub: a second hub that spokes fail over to (BFD)")
    up.add_argument("--protocol", choices=PROTOCOLS, help="override the tunnel protocol")
    up.add_argument("--topology", choices=TOPOLOGIES, help="override the topology")
    up.add_argument("--encryption", choices=ENCRYPTIONS, help="override the encryption (ipsec needs ESP in the kernel: see `vm`)")
    up.add_argument("--ipsec-rekey-seconds", type=int, metavar="N", help="override ipsecRekeySeconds (e.g. 60 to watch rekeying)")
    up.add_argument(
        "--containers", choices=("docker", "netns"), default="docker", help="router containers: real Docker (default) or plain namespaces"
    )
    up.add_argument("--force", action="store_true", help="tear down an existing lab first")
    up.add_argument("--check", action="store_true", help="run `check` after bring-up")
    up.add_argument(
        "--no-push", action="store_true", help="boot every VM from its payload only (bootstrap config: no tunnel across sites); then `push`"
    )
    results(up)
    up.set_defaults(func=cmd_up)
    ps = sub.add_parser("push", help="push every node's full config in place, as `pulumi up` does after creating the VMs")
    ps.set_defaults(func=cmd_push)

    ck = sub.add_parser("check", help="all-pairs ping matrix (IPv4+IPv6), MTU probes, hub transit proof")
    results(ck)
    ck.set_defaults(func=cmd_check)

    sw = sub.add_parser("swap", help="re-render every node config and re-apply it in place, measuring convergence")
    sw.add_argument("--hub", help="new hub site")
    sw.add_argument(
        "--standby-hub", metavar="SITE", help='new standby hub ("" for none; with --hub, the hub and the standby trade places)'
    )
    sw.add_argument("--protocol", choices=PROTOCOLS, help="new tunnel protocol")
    sw.add_argument("--encryption", choices=ENCRYPTIONS, help="turn IPsec on or off in place")
    sw.add_argument("--topology", choices=TOPOLOGIES, help="new topology (hub-and-spoke <-> full-mesh)")
    sw.add_argument(
        "--remove-stale-fdb",
        action="store_true",
        help="also remove MAC entries left pointing down the wrong tunnel (the node script flushes on tunnel changes; this reports any)",
    )
    sw.add_argument(
        "--one-step",
        action="store_true",
        help="push every node's new config at once, without the make-before-break steps (to compare: bench.swap_convergence)",
    )
    results(sw)
    sw.set_defaults(func=cmd_swap)

    rb = sub.add_parser(
        "reboot",
        help="power a node off (processes, containers, links, addresses, rules; NICs and disk stay) and boot it: "
        "platform NICs, docker.service, then only the unit's command; time the recovery and run the full check",
    )
    rb.add_argument("node", help="node name, e.g. gcp-router, aws-router (the hub), gcp-client")
    rb.add_argument("--no-check", action="store_true", help="skip the full check matrix after the recovery")
    results(rb)
    rb.set_defaults(func=cmd_reboot)

    hl = sub.add_parser(
        "hub-loss",
        help="power the hub router off, prove spokes keep site-local traffic and lose cross-site traffic, boot it again "
        "and time the recovery of cross-site traffic and of the full check",
    )
    hl.add_argument("--down-seconds", type=float, default=5.0, help="keep the hub down at least this long (default 5)")
    hl.add_argument("--no-check", action="store_true", help="skip the full check matrix after the recovery")
    results(hl)
    hl.set_defaults(func=cmd_hub_loss)

    cap = sub.add_parser(
        "capture",
        help="capture the emulated internet during marked pings: only ESP with encryption ipsec, clear frames without",
    )
    results(cap)
    cap.set_defaults(func=cmd_capture)

    dn = sub.add_parser("down", help="remove everything the lab made")
    dn.set_defaults(func=cmd_down)
    st = sub.add_parser("status", help="what the lab is, whether it is all there, and how to reach each node and container")
    st.set_defaults(func=cmd_status)
    ex = sub.add_parser(
        "exec",
        help="run a command in a node (its namespace) or in a router's container (docker exec); a shell without one",
        description="Run CMD in a lab node's network namespace (e.g. aws-router, gcp-client, aws-edge, internet) or "
        "inside a router's Docker container (e.g. aws-c1), with stdin, stdout and the terminal attached; "
        "exits with CMD's status. Without CMD: an interactive shell. `status` lists every name.",
    )
    ex.add_argument("node", help="node, container or underlay name (see `status`)")
    ex.add_argument("exec_command", nargs=argparse.REMAINDER, metavar="-- CMD", help="the command and its arguments, after --")
    ex.set_defaults(func=cmd_exec)

    vm = sub.add_parser(
        "vm",
        help="run the lab in a Debian cloud-kernel VM (qemu TCG): GENEVE and IPsec, which this host kernel lacks",
        description="Boots Debian's cloud kernel under qemu (TCG) with an initramfs of busybox, iproute2, iptables, "
        "python3 and this project, runs `lab up --containers netns`, `lab check` and `lab down` inside, and copies "
        "check's results back. Containers are plain network namespaces in the VM (no Docker there).",
    )
    vm.add_argument("--stack", default="dev", help="stack name: reads Pulumi.NAME.yaml (default dev)")
    vm.add_argument("--sites", type=_sites, help="use only these sites, comma-separated (e.g. aws,azure,gcp)")
    vm.add_argument("--protocol", choices=PROTOCOLS, default="geneve", help="tunnel protocol (default geneve)")
    vm.add_argument("--hub", help="override the hub site")
    vm.add_argument("--topology", choices=TOPOLOGIES, help="override the topology")
    vm.add_argument("--encryption", choices=ENCRYPTIONS, help="override the encryption (ipsec: ESP, which the host kernel lacks)")
    vm.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help=f"where the in-VM results are copied (default {DEFAULT_RESULTS})")
    vm.add_argument("--timeout", type=float, default=900, help="kill the VM after this many seconds (default 900)")
    vm.add_argument("--memory", type=int, default=1024, help="VM memory in MiB (default 1024)")
    vm.add_argument("--cpus", type=int, default=2, help="virtual CPUs (default 2)")
    vm.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"kernel and initramfs cache (default {DEFAULT_CACHE})")
    vm.add_argument(
        "--self-test",
        "--shell-test",
        dest="self_test",
        action="store_true",
        help="instead of the lab: the GENEVE self-test (3 sites from their payloads, all-pairs ping, DF at the MTU)",
    )
    vm.add_argument(
        "--warm-up", action="store_true", help="neighbour discovery across the overlay before `lab check` (for a heavily loaded host)"
    )
    vm.add_argument("--command", dest="command_line", metavar="SHELL", help="instead of the lab: run this shell command in the VM")
    vm.set_defaults(func=cmd_vm)
    lab_graph.register(sub)  # graph, matrix: the pictures (lab/graph.py)
    return p


def keeps_runs(args: argparse.Namespace) -> bool:
    """Results of this verb go to a run folder of their own: it writes results, to the default place."""
    results = getattr(args, "results", None)
    return results is not None and Path(results).absolute() == DEFAULT_RESULTS.absolute() and args.command != "down"


# Commands that only read files and draw: everything else builds, changes or enters namespaces.
USER_COMMANDS: Final = frozenset({"graph", "matrix"})


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if argv is None and args.command not in USER_COMMANDS:
        become_root(f"lab {args.command}", "network namespaces, Docker, iptables")
    started = time.monotonic()
    run = start_run(DEFAULT_RESULTS, args.command) if keeps_runs(args) else None
    if run is not None:
        args.results = run.dir
    try:
        return _run(args, started)
    finally:
        if run is not None:
            for line in describe(finish_run(run)):
                print(line)
        owner = invoking_user()
        if owner is not None:
            # Started as a user (sudo re-ran it): the results in their tree are theirs, not root's.
            written = [run.base, *run.linked, run.base / LATEST] if run is not None else []
            given = getattr(args, "results", None)
            hand_back([*written, *([Path(given)] if given is not None else [])], owner)


def _run(args: argparse.Namespace, started: float) -> int:
    try:
        return int(args.func(args) or 0)
    except subprocess.TimeoutExpired as e:
        cmd = e.cmd if isinstance(e.cmd, str) else shlex.join(str(a) for a in e.cmd)
        print(
            f"lab {args.command}: a command did not finish within {e.timeout:g} s and was stopped: {cmd}\n"
            f"lab {args.command}: the lab may be half-built or half-changed: `{lab_command('status')}` shows what is there, "
            f"`{lab_command('down')}` removes all of it (state in {STATE_DIR})",
            file=sys.stderr,
        )
        return 124
    except (LabError, ConfigError) as e:
        print(f"lab {args.command}: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(
            f"lab {args.command}: interrupted after {time.monotonic() - started:.1f} s; "
            f"`{lab_command('down')}` removes what exists (state in {STATE_DIR})",
            file=sys.stderr,
        )
        return 130
