"""The pictures: the topology DOT drawn from the plan (and the committed docs/topology.* kept current), and the
connectivity matrix drawn from either check's results."""

from __future__ import annotations

import dataclasses
import hashlib
import html
import json
import re
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest

from bench.configs import stack_with_sites
from lab import graph as lab_graph
from lab.cli import main as lab_main
from lab.state import LabError
from multicloud_overlay.components.stack_file import read_stack_file
from multicloud_overlay.overlay.config import parse_config
from multicloud_overlay.overlay.picture import (
    UnknownCheckShape,
    matrix_html,
    read_connectivity,
    stamp_svg,
    svg_stamp,
    topology_dot,
)
from multicloud_overlay.overlay.plan import Plan, build_plan
from tests.harness import ROOT

DOCS = ROOT / "docs"
DEV = read_stack_file(ROOT / "Pulumi.dev.yaml")
DOT = shutil.which("dot")
needs_dot = pytest.mark.skipif(DOT is None, reason="Graphviz's `dot` is not installed (apt-get install -y graphviz)")

# Two sites on one platform and one on another: one cluster per platform, the hub's site in the first.
SMALL_SITES = {"east": ("aws", 1), "west": ("aws", 7), "core": ("gcp", 3)}


def small_plan(**top: Any) -> Plan:
    return build_plan(parse_config(stack_with_sites(SMALL_SITES, "core", str(ROOT / "Pulumi.dev.yaml"), **top)))


def clusters(dot: str) -> dict[str, str]:
    """Cluster name -> the DOT text of its body (nested clusters included)."""
    out: dict[str, str] = {}
    for m in re.finditer(r'subgraph "(cluster_[^"]+)" \{', dot):
        depth, i = 1, m.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(dot[i], 0)
            i += 1
        out[m.group(1)] = dot[m.end() : i - 1]
    return out


def edges(dot: str) -> dict[frozenset[str], str]:
    """{a, b} -> the edge's label (newlines as DOT writes them, \\n)."""
    return {
        frozenset((m.group(1), m.group(2))): m.group(3)
        for m in re.finditer(r'^  "([^"]+)" -- "([^"]+)" \[label="([^"]*)"', dot, re.MULTILINE)
    }


def node_statement(dot: str, name: str) -> str:
    found = [line for line in dot.splitlines() if line.strip().startswith(f'"{name}" [')]
    assert len(found) == 1, name
    return found[0]


# ------------------------------------------------------------------------------------------------- topology DOT


def test_sites_are_grouped_in_one_cluster_per_platform_holding_their_routers_clients_and_containers() -> None:
    dot = topology_dot(small_plan())
    found = clusters(dot)
    assert {c for c in found if c.startswith("cluster_platform_")} == {"cluster_platform_aws", "cluster_platform_gcp"}
    aws = found["cluster_platform_aws"]
    assert "cluster_site_east" in aws and "cluster_site_west" in aws and "cluster_site_core" not in aws
    for site in SMALL_SITES:
        body = found[f"cluster_site_{site}"]
        for name in (f"{site}-router", f"{site}-client", f"{site}-router-containers"):
            assert f'"{name}" [' in body, (site, name)


def test_every_node_and_container_shows_its_overlay_ipv4_and_ipv6() -> None:
    plan = small_plan()
    dot = topology_dot(plan)
    for node in plan.nodes:
        statement = node_statement(dot, node.name)
        assert node.overlay_ipv4 in statement and node.overlay_ipv6 in statement, node.name
        for c in node.containers:
            container_table = node_statement(dot, f"{node.name}-containers")
            assert f"<B>{c.name}</B>" in container_table
            assert c.ipv4.split("/")[0] in container_table and c.ipv6.split("/")[0] in container_table


def test_the_hub_is_marked_and_only_the_hub() -> None:
    plan = small_plan()
    dot = topology_dot(plan)
    assert plan.hub == "core"
    assert "★ HUB" in node_statement(dot, "core-router") and "#ffd966" in node_statement(dot, "core-router")
    assert dot.count("★ HUB") == 1
    assert "hub core-router" in dot.split("\n", 2)[1]


def test_several_hubs_are_each_marked() -> None:
    """The plan has one hub today; should it ever make several, the picture marks each."""
    plan = small_plan()
    nodes = tuple(dataclasses.replace(n, role="hub") if n.name == "east-router" else n for n in plan.nodes)
    dot = topology_dot(dataclasses.replace(plan, nodes=nodes))
    assert dot.count("★ HUB") == 2
    assert "hub east-router, core-router" in dot


def test_tunnel_edges_carry_the_plans_vnis_protocol_and_encryption() -> None:
    plan = small_plan()
    found = edges(topology_dot(plan))
    router_edges = 0
    for router in plan.routers():
        for t in router.tunnels:
            label = found[frozenset((router.name, t.peer))]
            assert f"VNI {t.vni}" in label
            assert label.startswith("VXLAN ")
            if t.via == "internet":
                router_edges += 1
                assert "IPsec ESP" in label
            else:
                assert "clear (site LAN)" in label
    assert router_edges == 2 * 2, "hub-and-spoke with 3 sites: 2 router tunnels, each seen from both ends"
    assert found[frozenset(("core-router", "east-router"))] == "VXLAN VNI 5003\\nIPsec ESP/UDP 4500", "vni 4000 + 1000 * 1 + 3"
    assert frozenset(("east-router", "west-router")) not in found, "spokes have no tunnel between them"


def test_clear_tunnels_and_geneve_are_drawn_as_such() -> None:
    plan = small_plan(protocol="geneve", encryption="none")
    dot = topology_dot(plan)
    found = edges(dot)
    label = found[frozenset(("core-router", "west-router"))]
    vni = next(t.vni for t in plan.router("core").tunnels if t.peer_site == "west")
    assert label == f"GENEVE VNI {vni}\\nclear"
    assert "VXLAN" not in dot and "IPsec" not in dot
    assert "GENEVE over UDP 6081, router tunnels in clear" in dot


def test_point_to_point_marks_no_hub() -> None:
    plan = build_plan(
        parse_config(stack_with_sites({"a": ("aws", 1), "b": ("azure", 2)}, "a", str(ROOT / "Pulumi.dev.yaml"), topology="point-to-point"))
    )
    dot = topology_dot(plan)
    assert "HUB" not in dot and "point-to-point" in dot
    assert frozenset(("a-router", "b-router")) in edges(dot)


def test_the_text_is_deterministic_whatever_the_order_of_the_sites() -> None:
    raw = stack_with_sites(SMALL_SITES, "core", str(ROOT / "Pulumi.dev.yaml"))
    reordered = dict(raw, sites=dict(reversed(list(raw["sites"].items()))))
    assert topology_dot(build_plan(parse_config(raw))) == topology_dot(build_plan(parse_config(reordered)))


# ------------------------------------------------------------------------------------------------- docs/topology.*


def dev_dot() -> str:
    return topology_dot(build_plan(parse_config(DEV)))


def test_docs_topology_dot_is_the_dev_stacks_current_picture() -> None:
    assert (DOCS / "topology.dot").read_text(encoding="utf-8") == dev_dot(), "docs/topology.dot is stale: run `make graph`"


def test_docs_topology_svg_was_rendered_from_that_dot() -> None:
    dot = (DOCS / "topology.dot").read_text(encoding="utf-8")
    svg = (DOCS / "topology.svg").read_text(encoding="utf-8")
    assert svg_stamp(svg) == hashlib.sha256(dot.encode()).hexdigest(), (
        "docs/topology.svg is not rendered from docs/topology.dot: run `make graph`"
    )
    text = html.unescape(svg)
    plan = build_plan(parse_config(DEV))
    for owner, v4, v6 in plan.overlay_addresses():
        assert owner in text and v4 in text and v6 in text, owner
    assert "★ HUB" in text and f"hub {plan.hub}-router" in text


def test_docs_topology_png_has_the_svgs_size() -> None:
    """Same layout, same size: the PNG (96 dpi) and the SVG (points) come from one DOT."""
    png = (DOCS / "topology.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    svg = (DOCS / "topology.svg").read_text(encoding="utf-8")
    m = re.search(r'<svg width="(\d+)pt" height="(\d+)pt"', svg)
    assert m is not None
    assert abs(width - int(m.group(1)) * 96 / 72) <= 2 and abs(height - int(m.group(2)) * 96 / 72) <= 2


def test_a_stamp_goes_after_the_xml_declaration() -> None:
    svg = stamp_svg('<?xml version="1.0"?>\n<svg/>\n', "graph g {}\n")
    assert svg.splitlines()[0] == '<?xml version="1.0"?>' and svg.splitlines()[2] == "<svg/>"
    assert svg_stamp(svg) == hashlib.sha256(b"graph g {}\n").hexdigest()
    assert svg_stamp("<svg/>") is None


@needs_dot
def test_lab_graph_renders_dot_svg_and_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert lab_main(["graph", "--stack", "dev", "--sites", "aws,gcp", "--protocol", "geneve", "--out", str(tmp_path)]) == 0
    dot = (tmp_path / "topology.dot").read_text()
    assert "GENEVE" in dot and "gcp-router" in dot and "azure" not in dot
    assert svg_stamp((tmp_path / "topology.svg").read_text()) == hashlib.sha256(dot.encode()).hexdigest()
    assert (tmp_path / "topology.png").read_bytes()[:4] == b"\x89PNG"
    assert "topology.svg" in capsys.readouterr().out


def test_without_dot_the_command_writes_the_dot_and_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lab_graph.shutil, "which", lambda name: None)
    with pytest.raises(LabError, match=r"apt-get install -y graphviz"):
        lab_graph.write_topology(small_plan(), tmp_path)
    assert (tmp_path / "topology.dot").exists() and not (tmp_path / "topology.svg").exists()


# ------------------------------------------------------------------------------------------------- connectivity matrix


def lab_check_doc(failing: set[tuple[str, str, int]]) -> dict[str, Any]:
    """A `lab check` result (lab/report.py to_json) of three endpoints."""
    names = ["a-router", "a-client", "a-c1"]
    results = [
        {"src": s, "dst": d, "family": f, "target": f"{d}/{f}", "ok": (s, d, f) not in failing, "attempts": 1}
        for s in names
        for d in names
        if s != d
        for f in (4, 6)
    ]
    return {
        "stack": "dev",
        "hub": "a",
        "summary": {},
        "endpoints": names,
        "failures": [r for r in results if not r["ok"]],
        "results": results,
        "probes": [{"suite": "mtu", "name": "DF 1305 bytes", "ok": True, "detail": "answered", "data": {}}],
    }


def test_lab_check_results_give_counts_and_a_failed_cell_for_an_unreachable_pair() -> None:
    matrix = read_connectivity(lab_check_doc({("a-router", "a-c1", 4), ("a-router", "a-c1", 6), ("a-client", "a-c1", 6)}))
    assert (matrix.pings, matrix.passed, matrix.failed, matrix.ok) == (12, 9, 3, False)
    assert matrix.sources == ("a-router", "a-client", "a-c1") == matrix.targets
    page = matrix_html(matrix)
    assert '<td class="fail" title="a-router → a-c1: IPv4 FAILED, IPv6 FAILED">✗</td>' in page
    assert '<td class="part" title="a-client → a-c1: IPv4 answers, IPv6 FAILED">4</td>' in page
    assert page.count('<td class="ok"') == 6 - 2 and page.count('<td class="self"') == 3
    assert "9 passed</b>, <b>3 failed" in page and ">FAIL<" in page
    assert "a-router → a-c1 IPv4 (a-c1/4)" in page
    assert "PASS DF 1305 bytes" in page


def test_a_passing_lab_check_is_a_pass() -> None:
    matrix = read_connectivity(lab_check_doc(set()))
    assert matrix.ok and matrix.failed == 0
    assert ">PASS<" in matrix_html(matrix)


def test_the_stacks_connectivity_output_names_addresses_from_the_plan() -> None:
    plan = small_plan()
    east, core = plan.router("east"), plan.client("core")
    doc = {
        "east-router": {
            "reachable": 3,
            "total": 4,
            "unreachable": [core.overlay_ipv6],
            "results": {core.overlay_ipv4: True, core.overlay_ipv6: False, east.overlay_ipv4: True, east.overlay_ipv6: True},
        },
        "core-router": None,
    }
    matrix = read_connectivity(doc, plan.address_owners())
    assert matrix.origin == "stack output connectivity"
    assert (matrix.pings, matrix.passed, matrix.failed, matrix.ok) == (4, 3, 1, False)
    assert matrix.sources == ("core-router", "east-router")
    assert set(matrix.targets) == {"core-client", "east-router"}
    assert [src for src, _ in matrix.not_run] == ["core-router"]
    page = matrix_html(matrix)
    assert '<td class="part" title="east-router → core-client: IPv4 answers, IPv6 FAILED">4</td>' in page
    assert "Sources without a result" in page


def test_the_whole_stack_output_is_accepted_and_names_its_own_addresses() -> None:
    outputs = {
        "hub": "aws",
        "nodes": {"aws-router": {"overlayIpv4": "10.250.1.1", "overlayIpv6": "fd00::1:1"}},
        "containers": {"aws-c1": {"router": "aws-router", "ipv4": "10.250.1.10", "ipv6": "fd00::1:a"}},
        "connectivity": {
            "gcp-router": {
                "reachable": 3,
                "total": 4,
                "unreachable": ["10.250.1.10"],
                "results": {"10.250.1.1": True, "fd00::1:1": True, "10.250.1.10": False, "fd00::1:a": True},
            }
        },
    }
    matrix = read_connectivity(outputs)
    assert matrix.targets == ("aws-router", "aws-c1") and matrix.failed == 1
    assert ("hub", "aws") in matrix.facts
    assert '<td class="part" title="gcp-router → aws-c1: IPv4 FAILED, IPv6 answers">6</td>' in matrix_html(matrix)


def test_unnamed_addresses_and_an_empty_output_are_shown_for_what_they_are() -> None:
    matrix = read_connectivity({"r": {"reachable": 1, "total": 1, "unreachable": [], "results": {"10.0.0.1": True}}})
    assert matrix.targets == ("10.0.0.1",) and matrix.ok and "not named" in matrix.notes[0]
    empty = read_connectivity({})
    assert empty.pings == 0 and not empty.ok and "connectivityCheck is false" in empty.notes[0]
    assert "NOT RUN" in matrix_html(empty)


@pytest.mark.parametrize("doc", [{"routers": 3}, ["a", "b"], "text", {"r": {"reachable": 1}}, {"results": [], "x": 1}])
def test_an_unknown_shape_is_refused_naming_the_shapes_accepted(doc: Any) -> None:
    with pytest.raises(UnknownCheckShape, match=r"lab check.*pulumi stack output connectivity --json"):
        read_connectivity(doc)


def test_lab_matrix_writes_the_page_and_refuses_an_unknown_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    check = tmp_path / "check.json"
    check.write_text(json.dumps(lab_check_doc({("a-client", "a-router", 4)})))
    assert lab_main(["matrix", "--from", str(check)]) == 0
    assert "matrix: FAIL, 12 pings, 11 passed, 1 failed" in capsys.readouterr().out
    assert '<td class="part"' in (tmp_path / "check.html").read_text()

    stack = tmp_path / "c.json"
    stack.write_text(json.dumps({"aws-router": {"reachable": 1, "total": 1, "unreachable": [], "results": {"10.250.2.1": True}}}))
    assert lab_main(["matrix", "--from", str(stack), "--stack", "dev", "--out", str(tmp_path / "m.html")]) == 0
    assert "azure-router" in (tmp_path / "m.html").read_text()

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"what": "else"}))
    assert lab_main(["matrix", "--from", str(bad)]) == 2
    assert "not a connectivity check result" in capsys.readouterr().err
    bad.write_text("{not json")
    assert lab_main(["matrix", "--from", str(bad)]) == 2
    assert "is not JSON" in capsys.readouterr().err
