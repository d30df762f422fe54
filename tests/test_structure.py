"""The house's shape, checked from the source: no import cycle anywhere (function-level imports included; only
`if TYPE_CHECKING:` imports, which never run, are left out), and a pure core that imports no Pulumi."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import ROOT

BUILDING_BLOCKS = ("overlay", "components", "cloudinit")  # installed as multicloud_overlay.<folder>
OVERLAY = "multicloud_overlay"
PACKAGES = (*BUILDING_BLOCKS, "lab", "bench", "tests", "ops")


def project_modules() -> dict[str, Path]:
    modules = {"__main__": ROOT / "__main__.py", "multicloud_overlay": ROOT / "multicloud_overlay" / "__init__.py"}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if ".cache" in path.parts:
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            if package in BUILDING_BLOCKS:
                parts.insert(0, "multicloud_overlay")
            modules[".".join(parts)] = path
    return modules


def _runtime_imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            yield from (n for stmt in child.orelse for n in _runtime_imports_of(stmt))
            continue
        yield from _runtime_imports_of(child)


def _runtime_imports_of(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
    else:
        yield from _runtime_imports(node)


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `name` imports when it runs, with the packages they sit in (importing a module runs
    its packages' __init__ first)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        for target in targets:
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                candidate = ".".join(parts[:i])
                if candidate in modules and candidate != name:
                    found.add(candidate)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_scan_sees_a_cycle_when_there_is_one() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_scan_reads_imports_inside_functions_and_skips_type_checking_ones(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from core import plan\n"
        "def f():\n    from core.config import parse_config\n    import lab.cli\n"
    )
    modules = {"core": path, "core.plan": path, "core.config": path, "lab": path, "lab.cli": path, "m": path}
    assert imports_of("m", path, modules) == {"core", "core.config", "lab", "lab.cli"}


def test_the_house_has_no_import_cycle() -> None:
    graph = import_graph()
    assert "multicloud_overlay.overlay.config" in graph
    assert "multicloud_overlay.overlay.plan" in graph["multicloud_overlay.overlay.security"]
    assert cycles(graph) == []


def test_the_core_imports_no_pulumi_and_no_component() -> None:
    """overlay/ (config, plan, security) and every platform's traits run without Pulumi or a provider SDK."""
    modules = project_modules()
    graph = import_graph()
    core = [m for m in graph if m.startswith(f"{OVERLAY}.overlay") or m.endswith("_traits") or m == f"{OVERLAY}.components.clouds.registry"]
    reach: set[str] = set()
    todo = list(core)
    while todo:
        m = todo.pop()
        if m not in reach:
            reach.add(m)
            todo += graph[m]
    components = {f"{OVERLAY}.components", f"{OVERLAY}.components.clouds", f"{OVERLAY}.components.clouds.registry"}
    assert {m for m in reach if m.startswith(f"{OVERLAY}.components.")} <= components | {
        m for m in reach if m.endswith("_traits")
    }
    for m in reach:
        tree = ast.parse(modules[m].read_text())
        names = {a.name for n in _runtime_imports(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module or "" for n in _runtime_imports(tree) if isinstance(n, ast.ImportFrom)}
        assert not {n for n in names if n.split(".")[0].startswith("pulumi")}, m


def test_the_building_blocks_shadow_no_package_and_are_imported_under_one_name() -> None:
    """overlay/, components/ and cloudinit/ are namespace folders (no __init__.py): with the repository on sys.path
    they shadow no installed package of the same name (cloud-init's own `cloudinit` above all). Every module
    reaches them as multicloud_overlay.<folder>, never by the bare folder name, which would load a second copy."""
    for folder in BUILDING_BLOCKS:
        assert not (ROOT / folder / "__init__.py").exists(), folder
        assert (ROOT / OVERLAY / folder).resolve() == (ROOT / folder).resolve(), f"{OVERLAY}/{folder} must link to {folder}/"
    bare: list[str] = []
    for name, path in project_modules().items():
        for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
            targets = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if not node.level else []
            bare += [f"{name}: {t}" for t in targets if t.split(".")[0] in BUILDING_BLOCKS]
    assert bare == []


def test_cloud_init_is_not_shadowed_by_the_repository_on_the_path() -> None:
    """Where cloud-init is installed, `cloud-init --version` works with the repository first on PYTHONPATH."""
    import shutil
    import subprocess

    exe = shutil.which("cloud-init")
    if exe is None:
        pytest.skip("cloud-init is not installed on this machine (make setup installs it)")
    proc = subprocess.run([exe, "--version"], env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
