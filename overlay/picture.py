"""Pictures of the overlay, pure (no subprocess, no Pulumi): the topology as Graphviz DOT from the plan, and the
connectivity matrix as an HTML heatmap from a check's results.

    topology_dot(plan)                     # DOT text: sites grouped by platform, nodes with their overlay addresses,
                                           # containers as one table per router, tunnels with protocol, VNI, encryption
    stamp_svg(svg, dot)                    # the rendered SVG with the DOT's sha256 in a comment (what it was made from)
    read_connectivity(doc, owners)         # `lab check`'s check.json, or a stack's `connectivity` output -> matrix
    matrix_html(matrix)                    # a self-contained HTML page: heatmap table, counts, failures

Same plan, same text: everything is sorted and carries no time, so a test can keep the committed picture current.
"""

from __future__ import annotations

import hashlib
import html
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from multicloud_overlay.overlay.encapsulation import NATT_PORT
from multicloud_overlay.overlay.plan import BRIDGE, Node, Plan, Tunnel

SVG_STAMP: Final = "topology.dot sha256:"

_HUB_FILL: Final = "#ffd966"
_ROUTER_FILL: Final = "#dbe8f6"
_CLIENT_FILL: Final = "#eeeeee"
_CONTAINER_FILL: Final = "#e6f2e6"
_ENCRYPTED_COLOUR: Final = "#1f5fa8"
_CLEAR_COLOUR: Final = "#b45f06"
_LAN_COLOUR: Final = "#555555"


# ---------------------------------------------------------------------------------------------------- topology


def protocol_label(plan: Plan) -> str:
    """VXLAN or GENEVE, as a picture names the tunnels' protocol."""
    return plan.protocol.upper()


def router_tunnel_label(plan: Plan, tunnel: Tunnel) -> str:
    """What a router-router edge says: protocol, VNI, and whether it travels inside ESP."""
    crypto = f"IPsec ESP/UDP {NATT_PORT}" if plan.encrypted else "clear"
    return f"{protocol_label(plan)} VNI {tunnel.vni}\n{crypto}"


def client_tunnel_label(plan: Plan, tunnel: Tunnel) -> str:
    """What a client-router edge says: the site-local tunnel stays clear on the private LAN."""
    return f"{protocol_label(plan)} VNI {tunnel.vni}\nclear (site LAN)"


def _quote(text: str) -> str:
    """A DOT double-quoted string (newlines as centred line breaks)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _cell(text: str, *, bold: bool = False, attrs: str = "") -> str:
    body = html.escape(text)
    if bold:
        body = f"<B>{body}</B>"
    return f"<TD{(' ' + attrs) if attrs else ''}>{body}</TD>"


def _node_label(plan: Plan, node: Node) -> str:
    """An HTML-like label: name (and HUB), overlay IPv4 and IPv6, underlay private addresses."""
    title = node.name + ("  ★ HUB" if node.role == "hub" else "")
    rows = [
        _cell(title, bold=True),
        _cell(f"{node.role} · overlay {node.overlay_ipv4}"),
        _cell(node.overlay_ipv6),
    ]
    if node.kind == "router":
        rows.append(_cell(f"wan {node.wan_ip} · lan {node.lan_ip}"))
        rows.append(_cell(f"{BRIDGE}, {len(node.containers)} containers"))
    else:
        rows.append(_cell(f"lan {node.lan_ip}" + (f" · mgmt {node.mgmt_ip}" if node.mgmt_ip else "")))
    body = "".join(f"<TR>{r}</TR>" for r in rows)
    return f'<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="1">{body}</TABLE>>'


def _containers_label(router: Node) -> str:
    """One table per router: every container with its overlay IPv4 and IPv6."""
    header = _cell(f"containers on {router.name} ({BRIDGE})", bold=True, attrs='COLSPAN="3" BGCOLOR="#c9e2c9"')
    rows = [f"<TR>{header}</TR>"]
    for c in router.containers:
        rows.append(f"<TR>{_cell(c.name, bold=True)}{_cell(c.ipv4.split('/')[0])}{_cell(c.ipv6.split('/')[0])}</TR>")
    return f'<<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0" CELLPADDING="2">{"".join(rows)}</TABLE>>'


def _node_attrs(node: Node) -> str:
    if node.role == "hub":
        return f'shape=box, style="rounded,filled,bold", penwidth=3, color="#b8860b", fillcolor="{_HUB_FILL}"'
    if node.kind == "router":
        return f'shape=box, style="rounded,filled", fillcolor="{_ROUTER_FILL}"'
    return f'shape=box, style="filled", fillcolor="{_CLIENT_FILL}"'


def hubs(plan: Plan) -> tuple[str, ...]:
    """Every router the plan makes a hub (one in hub-and-spoke, none in point-to-point), in site-id order."""
    return tuple(n.name for n in sorted(plan.routers(), key=lambda n: plan.site_id(n.site)) if n.role == "hub")


def _headline(plan: Plan) -> str:
    cfg = plan.config
    marked = hubs(plan)
    shape = f"hub-and-spoke, hub {', '.join(marked) or plan.hub}" if cfg.topology == "hub-and-spoke" else cfg.topology
    crypto = f"router tunnels inside IPsec ESP (UDP {NATT_PORT})" if plan.encrypted else "router tunnels in clear"
    return (
        f"multicloud-overlay: {len(cfg.sites)} sites, {shape}\n"
        f"{protocol_label(plan)} over UDP {plan.port}, {crypto}, overlay MTU {plan.mtu}\n"
        f"overlay {cfg.overlay_ipv4} + {cfg.overlay_ipv6}"
    )


def topology_dot(plan: Plan) -> str:
    """The overlay as a Graphviz graph: one cluster per platform holding one cluster per site (router, client, a
    table of the router's containers), the router-router tunnels across the internet and each site's client tunnel,
    labelled with protocol, VNI and encryption; every hub filled gold and marked ★ HUB. Sorted: the same plan gives
    the same text."""
    sites = sorted(plan.config.sites, key=lambda s: s.site_id)
    platforms = list(dict.fromkeys(s.platform for s in sites))  # in the order of their first site id
    out = [
        "graph overlay {",
        f"  graph [label={_quote(_headline(plan))}, labelloc=t, fontsize=16, fontname=Helvetica, rankdir=LR, "
        "newrank=true, nodesep=0.25, ranksep=1.8, compound=true, splines=true];",
        '  node [fontname=Helvetica, fontsize=10, margin="0.08,0.04"];',
        "  edge [fontname=Helvetica, fontsize=9];",
    ]
    for platform in platforms:
        out.append(f"  subgraph {_quote('cluster_platform_' + platform)} {{")
        out.append(f'    label={_quote("platform " + platform)}; style="rounded"; color="#7f7f7f"; fontsize=13;')
        for site in (s for s in sites if s.platform == platform):
            router, client = plan.router(site.name), plan.client(site.name)
            where = f" · {site.region}" if site.region else ""
            hub_mark = " · HUB" if router.role == "hub" else ""
            out.append(f"    subgraph {_quote('cluster_site_' + site.name)} {{")
            out.append(
                f"      label={_quote(f'site {site.name} (siteId {site.site_id}{where}){hub_mark}')}; "
                f'style="dashed,rounded"; color="{"#b8860b" if router.role == "hub" else "#aaaaaa"}"; fontsize=11;'
            )
            out.append(f"      {_quote(router.name)} [label={_node_label(plan, router)}, {_node_attrs(router)}];")
            out.append(f"      {_quote(client.name)} [label={_node_label(plan, client)}, {_node_attrs(client)}];")
            if router.containers:
                out.append(
                    f"      {_quote(router.name + '-containers')} [label={_containers_label(router)}, shape=plain, "
                    f'style=filled, fillcolor="{_CONTAINER_FILL}"];'
                )
            out.append("    }")
        out.append("  }")
    colour = _ENCRYPTED_COLOUR if plan.encrypted else _CLEAR_COLOUR
    style = "bold" if plan.encrypted else "bold,dashed"
    for router in sorted(plan.routers(), key=lambda n: plan.site_id(n.site)):
        for t in sorted(router.tunnels, key=lambda t: plan.site_id(t.peer_site)):
            if t.via == "internet" and plan.site_id(router.site) < plan.site_id(t.peer_site):
                out.append(
                    f"  {_quote(router.name)} -- {_quote(t.peer)} [label={_quote(router_tunnel_label(plan, t))}, "
                    f'color="{colour}", fontcolor="{colour}", style="{style}", penwidth=2];'
                )
    for site in sites:
        router = plan.router(site.name)
        lan = next(t for t in router.tunnels if t.via == "lan")
        out.append(
            f"  {_quote(router.name)} -- {_quote(lan.peer)} [label={_quote(client_tunnel_label(plan, lan))}, "
            f'color="{_LAN_COLOUR}", fontcolor="{_LAN_COLOUR}"];'
        )
        if router.containers:
            out.append(
                f"  {_quote(router.name)} -- {_quote(router.name + '-containers')} [label={_quote('veth on ' + BRIDGE)}, "
                f'style=dotted, color="#2e7d32", fontcolor="#2e7d32"];'
            )
    out.append("}")
    return "\n".join(out) + "\n"


def dot_digest(dot: str) -> str:
    return hashlib.sha256(dot.encode("utf-8")).hexdigest()


def stamp_svg(svg: str, dot: str) -> str:
    """The SVG Graphviz rendered from `dot`, with the DOT's sha256 in a comment right after the XML declaration,
    so a test can tell that a committed SVG was rendered from the committed DOT."""
    comment = f"<!-- {SVG_STAMP} {dot_digest(dot)} -->\n"
    if svg.startswith("<?xml"):
        end = svg.index("?>") + 2
        rest = svg[end:].lstrip("\n")
        return svg[:end] + "\n" + comment + rest
    return comment + svg


def svg_stamp(svg: str) -> str | None:
    """The DOT sha256 stamp_svg wrote into an SVG, if any."""
    start = svg.find(SVG_STAMP)
    if start < 0:
        return None
    return svg[start + len(SVG_STAMP) :].split()[0]


# ---------------------------------------------------------------------------------------------------- connectivity


class UnknownCheckShape(ValueError):
    """A document that is neither a `lab check` result nor a stack's connectivity output."""


@dataclass(frozen=True)
class Reachability:
    """One ping of a check: from a source, to one address of a target."""

    source: str
    target: str
    """The endpoint's name (or its address when the check did not say whose it is)."""
    family: int
    address: str
    ok: bool


@dataclass(frozen=True)
class ConnectivityMatrix:
    origin: str
    """Where the results come from: `lab check` or the stack's `connectivity` output."""
    sources: tuple[str, ...]
    targets: tuple[str, ...]
    results: tuple[Reachability, ...]
    facts: tuple[tuple[str, str], ...] = ()
    """(name, value) lines about the run: stack, hub, protocol, MTU."""
    not_run: tuple[tuple[str, str], ...] = ()
    """(source, why) of sources that have no result."""
    probes: tuple[tuple[str, bool, str], ...] = ()
    """(name, ok, detail) of the checks besides the matrix (lab: MTU probes, hub transit)."""
    notes: tuple[str, ...] = ()

    @property
    def pings(self) -> int:
        return len(self.results)

    @property
    def passed(self) -> int:
        return sum(r.ok for r in self.results)

    @property
    def failed(self) -> int:
        return self.pings - self.passed

    @property
    def ok(self) -> bool:
        return self.failed == 0 and not self.not_run and all(ok for _, ok, _ in self.probes) and bool(self.results)

    def failures(self) -> list[Reachability]:
        return [r for r in self.results if not r.ok]


AddressOwners = Mapping[str, str]
"""overlay address -> the name of the node or container that holds it."""


def output_owners(outputs: Mapping[str, Any]) -> dict[str, str]:
    """The same from a stack's full `pulumi stack output --json`: its `nodes` and `containers`."""
    owners: dict[str, str] = {}
    for name, node in (outputs.get("nodes") or {}).items():
        if isinstance(node, Mapping):
            for key in ("overlayIpv4", "overlayIpv6"):
                if isinstance(node.get(key), str):
                    owners[node[key]] = str(name)
    for name, container in (outputs.get("containers") or {}).items():
        if isinstance(container, Mapping):
            for key in ("ipv4", "ipv6"):
                if isinstance(container.get(key), str):
                    owners[container[key]] = str(name)
    return owners


def _family(address: str) -> int:
    try:
        return ipaddress.ip_address(address).version
    except ValueError:
        return 0


def _is_lab_check(doc: Any) -> bool:
    return isinstance(doc, Mapping) and isinstance(doc.get("results"), list) and isinstance(doc.get("endpoints"), list)


def _is_node_check(value: Any) -> bool:
    """One router's `overlay-node check --json` (or None: no result, or {"raw": ...}: output that was not JSON)."""
    if value is None:
        return True
    if not isinstance(value, Mapping):
        return False
    return isinstance(value.get("results"), Mapping) or isinstance(value.get("raw"), str)


def _is_stack_connectivity(doc: Any) -> bool:
    return isinstance(doc, Mapping) and all(isinstance(k, str) and _is_node_check(v) for k, v in doc.items())


SHAPES: Final = (
    "a `lab check` result (lab-results/check.json: keys endpoints, results), "
    "a stack's connectivity output (`pulumi stack output connectivity --json`: router -> "
    "{reachable, total, unreachable, results: {address: true|false}}), "
    "or the stack's whole `pulumi stack output --json` (with a connectivity key)"
)


def read_connectivity(doc: Any, owners: AddressOwners | None = None) -> ConnectivityMatrix:
    """A connectivity matrix from whichever shape `doc` has (see SHAPES); `owners` names the addresses of a stack's
    check (its results name addresses only). Raises UnknownCheckShape naming the shapes it accepts."""
    if _is_lab_check(doc):
        return _from_lab_check(doc)
    if isinstance(doc, Mapping) and "connectivity" in doc and _is_stack_connectivity(doc["connectivity"]):
        named = {**output_owners(doc), **(owners or {})}
        facts = tuple((k, str(doc[k])) for k in ("hub", "protocol", "overlayMtu") if k in doc)
        return _from_stack_connectivity(doc["connectivity"], named, facts)
    if isinstance(doc, Mapping) and doc and _is_stack_connectivity(doc):
        return _from_stack_connectivity(doc, owners or {}, ())
    if isinstance(doc, Mapping) and not doc:
        return ConnectivityMatrix(
            origin="stack output connectivity",
            sources=(),
            targets=(),
            results=(),
            notes=("the stack's connectivity output is empty: the check did not run (connectivityCheck is false)",),
        )
    kind = type(doc).__name__
    keys = ", ".join(sorted(str(k) for k in doc)[:8]) if isinstance(doc, Mapping) else ""
    raise UnknownCheckShape(f"not a connectivity check result ({kind}{': keys ' + keys if keys else ''}); expected {SHAPES}")


def _ordered(names: Iterable[str], first: Sequence[str]) -> tuple[str, ...]:
    """`first` in its order, then the rest sorted."""
    seen = list(dict.fromkeys(n for n in first if n in set(names)))
    return tuple(seen + sorted(set(names) - set(seen)))


def _from_lab_check(doc: Mapping[str, Any]) -> ConnectivityMatrix:
    results: list[Reachability] = []
    for r in doc["results"]:
        if not isinstance(r, Mapping) or not {"src", "dst", "family", "ok"} <= set(r):
            raise UnknownCheckShape(f"a `lab check` result entry lacks src, dst, family or ok: {r!r}")
        results.append(Reachability(str(r["src"]), str(r["dst"]), int(r["family"]), str(r.get("target", "")), bool(r["ok"])))
    endpoints = [str(e) for e in doc["endpoints"]]
    probes = tuple(
        (str(p.get("name", p.get("suite", ""))), bool(p.get("ok")), str(p.get("detail", "")))
        for p in doc.get("probes") or []
        if isinstance(p, Mapping)
    )
    facts = tuple((k, str(doc[k])) for k in ("stack", "hub", "protocol", "topology", "mtu") if k in doc)
    return ConnectivityMatrix(
        origin="lab check",
        sources=_ordered({r.source for r in results} | set(endpoints), endpoints),
        targets=_ordered({r.target for r in results} | set(endpoints), endpoints),
        results=tuple(results),
        facts=facts,
        probes=probes,
    )


def _from_stack_connectivity(checks: Mapping[str, Any], owners: AddressOwners, facts: tuple[tuple[str, str], ...]) -> ConnectivityMatrix:
    results: list[Reachability] = []
    not_run: list[tuple[str, str]] = []
    order = list(dict.fromkeys(owners.values()))
    for router in sorted(checks):
        check = checks[router]
        if check is None:
            not_run.append((router, "no result (the check has not run, or `pulumi up` is still in preview)"))
            continue
        if "results" not in check:
            not_run.append((router, "its check printed no JSON: " + str(check.get("raw", ""))[:200]))
            continue
        for address, ok in sorted(check["results"].items(), key=lambda item: (_family(item[0]), item[0])):
            results.append(Reachability(router, owners.get(address, address), _family(address), address, bool(ok)))
    notes = () if owners else ("addresses are not named: give the stack (--stack) or the whole `pulumi stack output --json`",)
    return ConnectivityMatrix(
        origin="stack output connectivity",
        sources=tuple(sorted(checks)),
        targets=_ordered({r.target for r in results}, order),
        results=tuple(results),
        facts=facts,
        not_run=tuple(not_run),
        notes=notes,
    )


def _cell_state(v4: bool | None, v6: bool | None) -> tuple[str, str]:
    """(css class, glyph) of one source -> target cell from its IPv4 and IPv6 results (None: not pinged)."""
    if v4 is None and v6 is None:
        return "none", ""
    tested = [v for v in (v4, v6) if v is not None]
    if all(tested):
        return "ok", "✓"
    if any(tested):
        return "part", "4" if v4 else "6"
    return "fail", "✗"


_CSS: Final = """
body { font-family: Helvetica, Arial, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; margin-bottom: 0.2em; }
.verdict { font-size: 1.1em; font-weight: bold; padding: 0.3em 0.6em; display: inline-block; border-radius: 4px; }
.verdict.pass { background: #c6efce; color: #006100; } .verdict.fail { background: #ffc7ce; color: #9c0006; }
table.matrix { border-collapse: collapse; font-size: 11px; margin-top: 1em; }
table.matrix th, table.matrix td { border: 1px solid #ccc; text-align: center; min-width: 1.6em; height: 1.6em; padding: 0; }
table.matrix th.col { writing-mode: vertical-rl; transform: rotate(180deg); padding: 4px 2px; white-space: nowrap; font-weight: normal; }
table.matrix th.row { text-align: right; padding: 0 6px; white-space: nowrap; font-weight: normal; }
td.ok { background: #63be7b; color: #fff; } td.part { background: #ffcc66; } td.fail { background: #e0454f; color: #fff; font-weight: bold; }
td.self { background: #d9d9d9; color: #777; } td.none { background: #fafafa; }
.legend span { display: inline-block; padding: 1px 8px; margin-right: 6px; border: 1px solid #ccc; }
ul.failures li, ul.probes li { font-family: monospace; }
"""


def matrix_html(matrix: ConnectivityMatrix) -> str:
    """A self-contained HTML page: verdict and counts, the heatmap (rows sources, columns targets; green both
    families answer, amber only IPv4 or IPv6, red neither), then every failed ping and every other probe."""
    got: dict[tuple[str, str, int], bool] = {}
    for r in matrix.results:
        key = (r.source, r.target, r.family)
        got[key] = got.get(key, True) and r.ok
    esc = html.escape
    verdict = "PASS" if matrix.ok else ("NOT RUN" if not matrix.results else "FAIL")
    title = f"Overlay connectivity ({matrix.origin}): {verdict}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f'<p><span class="verdict {"pass" if matrix.ok else "fail"}">{verdict}</span> '
        f"{matrix.pings} pings from {len(matrix.sources)} sources to {len(matrix.targets)} targets: "
        f"<b>{matrix.passed} passed</b>, <b>{matrix.failed} failed</b>"
        + (f", {len(matrix.not_run)} sources without a result" if matrix.not_run else "")
        + (f"; probes {sum(ok for _, ok, _ in matrix.probes)}/{len(matrix.probes)} passed" if matrix.probes else "")
        + "</p>",
    ]
    if matrix.facts:
        parts.append("<p>" + " · ".join(f"{esc(k)} <b>{esc(v)}</b>" for k, v in matrix.facts) + "</p>")
    parts += [f"<p><i>{esc(n)}</i></p>" for n in matrix.notes]
    parts.append(
        '<p class="legend"><span style="background:#63be7b">✓ IPv4 and IPv6</span><span style="background:#ffcc66">4 / 6 only that family</span>'
        '<span style="background:#e0454f;color:#fff">✗ neither</span><span style="background:#d9d9d9">· self</span>'
        "<span>blank: not pinged</span></p>"
    )
    if matrix.sources and matrix.targets:
        parts.append('<table class="matrix"><thead><tr><th></th>')
        parts += [f'<th class="col">{esc(t)}</th>' for t in matrix.targets]
        parts.append("</tr></thead><tbody>")
        for src in matrix.sources:
            row = [f'<tr><th class="row">{esc(src)}</th>']
            for dst in matrix.targets:
                if dst == src:
                    row.append('<td class="self">·</td>')
                    continue
                v4, v6 = got.get((src, dst, 4)), got.get((src, dst, 6))
                css, glyph = _cell_state(v4, v6)
                tip = f"{src} → {dst}: IPv4 {_word(v4)}, IPv6 {_word(v6)}"
                row.append(f'<td class="{css}" title="{esc(tip)}">{glyph}</td>')
            parts.append("".join(row) + "</tr>")
        parts.append("</tbody></table>")
    if matrix.not_run:
        parts.append("<h2>Sources without a result</h2><ul>")
        parts += [f"<li>{esc(src)}: {esc(why)}</li>" for src, why in matrix.not_run]
        parts.append("</ul>")
    failures = matrix.failures()
    if failures:
        parts.append(f'<h2>Failed pings ({len(failures)})</h2><ul class="failures">')
        parts += [f"<li>{esc(r.source)} → {esc(r.target)} IPv{r.family} ({esc(r.address)})</li>" for r in failures]
        parts.append("</ul>")
    if matrix.probes:
        parts.append('<h2>Probes</h2><ul class="probes">')
        parts += [f"<li>{'PASS' if ok else 'FAIL'} {esc(name)}: {esc(detail)}</li>" for name, ok, detail in matrix.probes]
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _word(result: bool | None) -> str:
    return "not pinged" if result is None else ("answers" if result else "FAILED")
