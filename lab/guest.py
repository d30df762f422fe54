"""What runs inside the throw-away kernel VM: the GENEVE self-test, the warm-up before `lab check`, raw-socket pings.

    python3 -m lab.guest selftest --sites aws,gcp,azure --hub aws --protocol geneve   # GUEST_COMMAND, in the VM

Only stdlib at import time: the VM has no other packages to import at start (the project's own modules and PyYAML
are imported where used).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from lab.probes import ping, ping_many_raw

ROOT: Final = Path(__file__).resolve().parent.parent
GUEST_RESULTS: Final = "/tmp/vm-results"
"""The in-VM folder whose contents come back to the host (run_in_vm's results_dir)."""
GUEST_COMMAND: Final = ("python3", "-m", "lab.guest")
"""How the host runs this module in the VM."""
SELFTEST_SITES: Final = ("aws", "gcp", "azure")
# One container per router keeps the self-test short under TCG (each container is ~10 `ip` runs of the node
# script); the lab in the VM runs the stack's own count.
SELFTEST_CONTAINERS: Final = 1


# The self-test's pings are lab.probes' (stdlib only). Its underlay is its own: one flat network built in a few batched
# `ip` runs, not lab.underlay's emulated clouds (edges, 1:1 NAT, an internet namespace), which the lab in the VM uses.


def _sh(argv: Sequence[str], check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, input=input)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()}")
    return proc


def _ping(ns: str, target: str, size: int = 56, tries: int = 3) -> bool:
    """Don't-fragment ping of `size` payload bytes from namespace ns, up to `tries` times."""
    return ping(target, ns, wait=2, size=size, df=True, attempts=tries).ok


@dataclass
class SelfTest:
    """3 sites of a stack as namespaces in the VM: routers' WANs on one segment, each client on its router's LAN."""

    stack: Path
    sites: list[str]
    hub: str
    protocol: str
    work: Path
    containers: int | None = None
    log: Callable[[str], None] = field(default=print)

    def plan(self) -> Any:
        from multicloud_overlay.components.stack_file import read_stack_file
        from multicloud_overlay.overlay.config import parse_config
        from multicloud_overlay.overlay.plan import build_plan

        raw = read_stack_file(self.stack)
        raw["sites"] = {k: v for k, v in raw["sites"].items() if k in self.sites}
        raw["hub"], raw["protocol"], raw["topology"] = self.hub, self.protocol, "hub-and-spoke"
        # The self-test proves GENEVE from the payloads alone, on one flat segment without NAT: clear tunnels. IPsec
        # (keys, NAT traversal) is proven by the real lab in the VM (`lab vm --encryption ipsec`).
        raw["encryption"] = "none"
        if self.containers is not None:
            raw["containersPerRouter"] = self.containers
        return build_plan(parse_config(raw))

    @staticmethod
    def ns(node: str) -> str:
        return f"st-{node}"

    def underlay(self, plan: Any) -> None:
        """Namespaces and NICs, a few `ip -batch` calls (each `ip` exec costs ~0.1 s under TCG).

        Not lab.underlay (stdlib-only, but another underlay): that builds the emulated clouds of a lab.topology
        Layout (edges, 1:1 NAT, an internet namespace) with one `ip` exec per step; this is one flat WAN segment.
        """
        for n in plan.nodes:
            _sh(["ip", "netns", "add", self.ns(n.name)])
        root = ["link add st-wan type bridge", "link set st-wan up"]
        inside: dict[str, list[str]] = {self.ns(n.name): ["link set lo up"] for n in plan.nodes}
        for r in plan.routers():
            ns, cns, port = self.ns(r.name), self.ns(plan.client(r.site).name), f"w-{r.site}"[:15]
            client = plan.client(r.site)
            root += [
                f"link add {port} type veth peer name wan0 netns {ns}",
                f"link set {port} master st-wan up",
                f"link add lan0 netns {ns} type veth peer name lan0 netns {cns}",
            ]
            # One shared segment: a /8 puts every router WAN on-link (a router's public address is its WAN one).
            inside[ns] += [f"addr add {r.wan_ip}/8 dev wan0", "link set wan0 up", "link set lan0 up"]
            inside[cns] += [f"addr add {client.lan_ip}/{client.lan_prefix} dev lan0", "link set lan0 up"]
        _sh(["ip", "-batch", "-"], input="\n".join(root) + "\n")
        for ns, cmds in inside.items():
            _sh(["ip", "-n", ns, "-batch", "-"], input="\n".join(cmds) + "\n")

    def apply(self, plan: Any, node: str) -> str:
        """The node's payload files under its root, the payload unit's ExecStart in the node's namespace (its
        bootstrap config), then the whole node script's install and the push of its full config (`overlay-node push`,
        the config on stdin), as the program runs them."""
        import json

        from multicloud_overlay.cloudinit.render import (
            INSTALL_SCRIPT_COMMAND,
            PUSH_COMMAND,
            packed_node_script,
            read_payload,
            render_user_data,
            unit_exec_start,
        )
        from multicloud_overlay.overlay.plan import bootstrap_config, node_config

        public = {r.site: r.wan_ip for r in plan.routers()}
        doc = node_config(plan, node, public, container_runtime="netns")
        n = plan.node(node)
        if n.kind == "router" and not doc["lan"]["configure"]:
            # Platforms whose image addresses the LAN NIC itself (DHCP): as that image would.
            _sh(["ip", "-n", self.ns(node), "addr", "add", f"{n.lan_ip}/{n.lan_prefix}", "dev", "lan0"])
        payload = render_user_data(bootstrap_config(plan, node, container_runtime="netns"))
        root = self.work / node
        files, _ = read_payload(payload)
        for f in files:
            target = root / f.path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f.content)
            target.chmod(f.mode)
        output = ""
        steps = ((unit_exec_start(payload), None), (list(INSTALL_SCRIPT_COMMAND), packed_node_script()), (list(PUSH_COMMAND), json.dumps(doc) + "\n"))
        for command, stdin in steps:
            argv = [str(root / a.lstrip("/")) if a.startswith(("/etc/", "/var/", "/usr/local/")) else a for a in command]
            proc = _sh(["nsenter", f"--net=/run/netns/{self.ns(node)}", "--", *argv], check=False, input=stdin)
            if proc.returncode != 0:
                raise RuntimeError(f"{node}: {' '.join(argv)}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
            output += proc.stdout
        return output

    def run(self, results: Path) -> int:
        results.mkdir(parents=True, exist_ok=True)
        plan = self.plan()
        report: dict[str, Any] = {
            "protocol": self.protocol,
            "hub": self.hub,
            "sites": self.sites,
            "mtu": plan.mtu,
            "kernel": os.uname().release,
        }
        t0 = time.monotonic()
        self.underlay(plan)
        with ThreadPoolExecutor(max_workers=len(plan.nodes)) as pool:
            outputs = dict(zip([n.name for n in plan.nodes], pool.map(lambda n: self.apply(plan, n.name), plan.nodes), strict=True))
        report["apply_seconds"] = round(time.monotonic() - t0, 1)
        for node, text in outputs.items():
            self.log(f"--- {node}\n{text.strip()}")
            (results / f"apply-{node}.txt").write_text(text)

        # Tunnel devices are of the chosen kind (what `ip -d link` shows).
        tunnels: dict[str, dict[str, str]] = {}
        for n in plan.nodes:
            text = _sh(["ip", "-n", self.ns(n.name), "-d", "link", "show"]).stdout
            (results / f"ip-d-link-{n.name}.txt").write_text(text)
            links = json.loads(_sh(["ip", "-n", self.ns(n.name), "-d", "-j", "link", "show"]).stdout)
            tunnels[n.name] = {
                link["ifname"]: link.get("linkinfo", {}).get("info_kind", "?")
                for link in links
                if link["ifname"].startswith(("ovl-r", "ovl-c"))
            }
            if self.protocol not in text:
                tunnels[n.name]["ip -d link"] = f"no {self.protocol} in ip -d link"
        report["tunnels"] = tunnels
        wrong = [f"{node}:{dev}={kind}" for node, devs in tunnels.items() for dev, kind in devs.items() if kind != self.protocol]

        # Every owner (node or container namespace) pings every other owner's overlay address, both families.
        owners = plan.overlay_addresses()
        ns_of = {n.name: self.ns(n.name) for n in plan.nodes}
        owner_of = {addr: dst for dst, v4, v6 in owners for addr in (v4, v6)}
        t1 = time.monotonic()

        def from_owner(src: str) -> dict[str, bool]:
            targets = [addr for dst, v4, v6 in owners if dst != src for addr in (v4, v6)]
            return ping_many_raw(targets, netns=ns_of.get(src, src))

        # One thread per source, each in its source's namespace (setns moves only the calling thread).
        with ThreadPoolExecutor(max_workers=len(owners)) as pool:
            matrix = dict(zip([o[0] for o in owners], pool.map(from_owner, [o[0] for o in owners]), strict=True))
        pairs = [(src, owner_of[addr], addr) for src, got in matrix.items() for addr in got]
        failed = [f"{src} -> {owner_of[addr]} ({addr})" for src, got in matrix.items() for addr, ok in got.items() if not ok]
        report["matrix"] = matrix
        report["pairs"] = {
            "total": len(pairs),
            "ok": len(pairs) - len(failed),
            "failed": failed,
            "seconds": round(time.monotonic() - t1, 1),
        }

        # iputils ping with don't-fragment at exactly the overlay MTU passes between every two nodes of different
        # sites (over one, two or three tunnels), IPv4 and IPv6; one byte more does not.
        probes = []
        for a in plan.nodes:
            for b in plan.nodes:
                if a.site != b.site:
                    probes += [
                        (a.name, b.overlay_ipv4, plan.mtu - 28, True),
                        (a.name, b.overlay_ipv6, plan.mtu - 48, True),
                        (a.name, b.overlay_ipv4, plan.mtu - 27, False),
                    ]
        t2 = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            got = list(pool.map(lambda p: _ping(ns_of[p[0]], p[1], p[2], tries=3 if p[3] else 1), probes))
        df_failed = [
            f"{s} -> {t} size {size} expected {'pass' if want else 'drop'}"
            for (s, t, size, want), ok in zip(probes, got, strict=True)
            if ok != want
        ]
        report["df"] = {"total": len(probes), "failed": df_failed, "seconds": round(time.monotonic() - t2, 1)}
        report["wrong_tunnel_kind"] = wrong
        report["passed"] = not failed and not df_failed and not wrong and all(tunnels.values())
        report["seconds"] = round(time.monotonic() - t0, 1)
        (results / "selftest.json").write_text(json.dumps(report, indent=1))
        self.log(
            f"self-test {self.protocol} {','.join(self.sites)} hub {self.hub}: tunnels {wrong or 'ok'}; "
            f"pairs {report['pairs']['ok']}/{len(pairs)}; DF probes {len(probes) - len(df_failed)}/{len(probes)} at MTU {plan.mtu}; "
            f"{'PASSED' if report['passed'] else 'FAILED'} in {report['seconds']} s"
        )
        for line in failed + df_failed + wrong:
            self.log(f"  FAIL {line}")
        return 0 if report["passed"] else 1


def _sites_arg(value: str) -> list[str]:
    sites = [s.strip() for s in value.split(",") if s.strip()]
    if len(sites) < 2:
        raise argparse.ArgumentTypeError("give at least two sites, comma-separated (e.g. aws,gcp)")
    return sites


def warmup(results: Path) -> int:
    """Every lab endpoint pings every other endpoint's overlay addresses once (raw sockets, one thread per
    source): neighbour discovery over the tunnels, before `lab check` measures. Never fails the run."""
    from lab.check import Lab, endpoints

    lab = Lab()
    eps = endpoints(lab.plan)
    started = time.monotonic()

    def source(ep: Any) -> dict[str, bool]:
        targets = [a for other in eps if other.name != ep.name for a in (other.ipv4, other.ipv6)]
        ns = ep.name if ep.kind == "container" else lab.node_ns(ep.name)
        return ping_many_raw(targets, netns=ns)

    with ThreadPoolExecutor(max_workers=len(eps)) as pool:
        got = dict(zip([e.name for e in eps], pool.map(source, eps), strict=True))
    answered = sum(ok for r in got.values() for ok in r.values())
    total = sum(len(r) for r in got.values())
    print(
        f"vm warm-up: {answered}/{total} overlay addresses answered in {time.monotonic() - started:.1f} s (neighbour discovery before `lab check`)",
        flush=True,
    )
    results.mkdir(parents=True, exist_ok=True)
    (results / "warmup.json").write_text(json.dumps({"answered": answered, "total": total, "results": got}, indent=1))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python3 -m lab.guest selftest|warmup|ping ...` (in the VM)."""
    p = argparse.ArgumentParser(prog=" ".join(GUEST_COMMAND))
    sub = p.add_subparsers(dest="what", required=True)
    st = sub.add_parser("selftest", help="GENEVE overlay of a few sites from their payloads, in this (VM) kernel")
    st.add_argument("--stack", default="dev")
    st.add_argument("--sites", type=_sites_arg, default=list(SELFTEST_SITES))
    st.add_argument("--hub", default="aws")
    st.add_argument("--protocol", choices=("vxlan", "geneve"), default="geneve")
    st.add_argument("--containers-per-router", type=int, default=None)
    st.add_argument("--results", type=Path, default=Path(GUEST_RESULTS))
    st.add_argument("--work", type=Path, default=Path("/tmp/selftest"))
    wu = sub.add_parser("warmup", help="neighbour discovery across a running lab's overlay before `lab check`")
    wu.add_argument("--results", type=Path, default=Path(GUEST_RESULTS))
    pg = sub.add_parser("ping", help="ICMP echo to every target at once; prints {target: reachable} as JSON")
    pg.add_argument("--netns", help="from this network namespace (a name under /run/netns)")
    pg.add_argument("targets", nargs="+")
    args = p.parse_args(argv)
    if args.what == "warmup":
        return warmup(args.results)
    if args.what == "ping":
        result = ping_many_raw(args.targets, netns=args.netns)
        print(json.dumps(result))
        return 0 if all(result.values()) else 1
    test = SelfTest(
        stack=ROOT / f"Pulumi.{args.stack}.yaml",
        sites=args.sites,
        hub=args.hub,
        protocol=args.protocol,
        work=args.work,
        containers=args.containers_per_router,
    )
    return test.run(args.results)


if __name__ == "__main__":
    sys.exit(main())
