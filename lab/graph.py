"""graph and matrix: the pictures of an overlay (no root, no lab needed).

    python -m lab graph [--stack dev] [--out DIR]            # DIR/topology.{dot,svg,png} from the stack's plan
    python -m lab matrix [--from FILE] [--stack dev] [--out X.html]   # heatmap of a check's results

The text comes from the pure multicloud_overlay.overlay.picture; this module only reads files, runs Graphviz's
`dot` and writes the results.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any, Final

from lab.state import REPO, LabError, load_raw, stack_path
from multicloud_overlay.overlay.config import TOPOLOGIES, parse_config
from multicloud_overlay.overlay.encapsulation import ENCRYPTIONS, PROTOCOLS
from multicloud_overlay.overlay.picture import UnknownCheckShape, matrix_html, read_connectivity, stamp_svg, topology_dot
from multicloud_overlay.overlay.plan import Plan, build_plan

DEFAULT_GRAPH_DIR: Final = REPO / "lab-results" / "graph"
DEFAULT_CHECK: Final = REPO / "lab-results" / "check.json"
STEM: Final = "topology"
INSTALL_DOT: Final = "Graphviz's `dot` is not installed: sudo apt-get install -y graphviz (or sudo make setup)"


def stack_plan(stack: str, sites: list[str] | None = None, overrides: dict[str, Any] | None = None) -> Plan:
    """The plan `pulumi up` would deploy for the stack file (with the given overrides)."""
    return build_plan(parse_config(load_raw(stack, sites, overrides or {})))


def dot_program() -> str | None:
    return shutil.which("dot")


def render(dot_text: str, fmt: str, dot: str) -> bytes:
    """Graphviz output of one format for the DOT text (stdin to stdout)."""
    proc = subprocess.run([dot, f"-T{fmt}"], input=dot_text.encode("utf-8"), capture_output=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise LabError(f"dot -T{fmt} failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def write_topology(plan: Plan, out: Path) -> list[Path]:
    """out/topology.dot, and with `dot` installed topology.svg (stamped with the DOT's sha256) and topology.png."""
    out.mkdir(parents=True, exist_ok=True)
    text = topology_dot(plan)
    dot_file = out / f"{STEM}.dot"
    dot_file.write_text(text, encoding="utf-8")
    dot = dot_program()
    if dot is None:
        raise LabError(f"wrote {dot_file}; {INSTALL_DOT}, then run the command again for the SVG and PNG")
    svg_file, png_file = out / f"{STEM}.svg", out / f"{STEM}.png"
    svg_file.write_text(stamp_svg(render(text, "svg", dot).decode("utf-8"), text), encoding="utf-8")
    png_file.write_bytes(render(text, "png", dot))
    return [dot_file, svg_file, png_file]


def cmd_graph(args: argparse.Namespace) -> int:
    overrides = {"hub": args.hub, "protocol": args.protocol, "topology": args.topology, "encryption": args.encryption}
    plan = stack_plan(args.stack, args.sites, overrides)
    files = write_topology(plan, args.out)
    print(f"graph: {stack_path(args.stack).name}, {len(plan.config.sites)} sites, hub {plan.hub}: " + ", ".join(str(f) for f in files))
    return 0


def cmd_matrix(args: argparse.Namespace) -> int:
    source: Path = args.source
    if not source.exists():
        hint = " (run `sudo python -m lab check` first)" if source == DEFAULT_CHECK else ""
        raise LabError(f"no file {source}{hint}; or give --from c.json with `pulumi stack output connectivity --json > c.json`")
    try:
        doc = json.loads(source.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LabError(f"{source} is not JSON: {e}") from None
    owners = stack_plan(args.stack).address_owners() if args.stack else None
    try:
        matrix = read_connectivity(doc, owners)
    except UnknownCheckShape as e:
        raise LabError(f"{source}: {e}") from None
    out: Path = args.out or source.with_suffix(".html")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(matrix_html(matrix), encoding="utf-8")
    verdict = "PASS" if matrix.ok else ("NOT RUN" if not matrix.results else "FAIL")
    print(f"matrix: {verdict}, {matrix.pings} pings, {matrix.passed} passed, {matrix.failed} failed ({matrix.origin}): {out}")
    return 0


def _sites(value: str) -> list[str]:
    sites = [s.strip() for s in value.split(",") if s.strip()]
    if len(sites) < 2:
        raise argparse.ArgumentTypeError("give at least two sites, comma-separated (e.g. aws,gcp)")
    return sites


def register(sub: Any) -> None:
    """Add `graph` and `matrix` to the lab's subcommands (sub: the parser's add_subparsers())."""
    gr = sub.add_parser(
        "graph",
        help="draw the stack's topology (sites by platform, nodes, containers, tunnels with VNIs) with Graphviz: DOT, SVG, PNG",
    )
    gr.add_argument("--stack", default="dev", help="stack name: reads Pulumi.NAME.yaml (default dev), or a stack file path")
    gr.add_argument(
        "--out", type=Path, default=DEFAULT_GRAPH_DIR, help=f"directory for topology.dot/.svg/.png (default {DEFAULT_GRAPH_DIR})"
    )
    gr.add_argument("--sites", type=_sites, help="draw only these sites, comma-separated")
    gr.add_argument("--hub", help="override the hub site")
    gr.add_argument("--protocol", choices=PROTOCOLS, help="override the tunnel protocol")
    gr.add_argument("--topology", choices=TOPOLOGIES, help="override the topology")
    gr.add_argument("--encryption", choices=ENCRYPTIONS, help="override the encryption")
    gr.set_defaults(func=cmd_graph)

    mx = sub.add_parser(
        "matrix",
        help="the connectivity matrix as an HTML heatmap, from `lab check`'s check.json or `pulumi stack output connectivity --json`",
    )
    mx.add_argument(
        "--from",
        dest="source",
        type=Path,
        default=DEFAULT_CHECK,
        help=f"check results: a lab check.json, a stack's connectivity output, or the whole `pulumi stack output --json` (default {DEFAULT_CHECK})",
    )
    mx.add_argument("--stack", help="name the addresses of a stack's connectivity output from this stack's plan (e.g. dev)")
    mx.add_argument("--out", type=Path, help="the HTML page to write (default: the input's path with .html)")
    mx.set_defaults(func=cmd_matrix)
