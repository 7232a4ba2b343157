"""The import graph as the design draws it: one way (tflab -> infra, tflab -> remote), no cycles, and no
heavy library imported where `tflab --help` would pay for it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("tflab", "infra", "remote")
HEAVY = ("tensorflow", "grpc", "boto3", "botocore", "paramiko", "sshtunnel", "numpy")
LIGHT_MODULES = ("tflab.cli", "tflab", "tflab.__main__")  # what `tflab --help` imports at module level


def _module_name(path: Path) -> str:
    """'tflab/ssh.py' -> 'tflab.ssh'; 'tflab/__init__.py' -> 'tflab'."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, ast.Module]:
    """Every module of tflab/, infra/ and remote/, parsed."""
    trees = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            trees[_module_name(path)] = ast.parse(path.read_text(), str(path))
    return trees


def _imported(tree: ast.Module, module: str, *, top_level_only: bool = False) -> set[str]:
    """The absolute names a module imports (module level and inside functions, or module level only);
    `from a import b` gives both a and a.b, so a submodule imported that way counts."""
    is_package = module in PACKAGES
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:  # module level includes the bodies of if/try at module level, not of functions
        nodes = [n for stmt in tree.body for n in ast.walk(stmt)
                 if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names}
    return names


def _graph(trees: dict[str, ast.Module]) -> dict[str, set[str]]:
    """module -> the project's modules it imports (a package's own __init__ excluded when it is a parent)."""
    graph = {}
    for module, tree in trees.items():
        graph[module] = {name for name in _imported(tree, module) if name in trees and name != module}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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


@pytest.fixture(scope="module")
def trees() -> dict[str, ast.Module]:
    return _modules()


def test_every_package_is_parsed(trees):
    for module in ("tflab.cli", "tflab.ssh", "infra.aws", "remote.steps"):
        assert module in trees


def test_no_import_cycle_among_tflab_and_infra_modules(trees):
    graph = _graph({m: t for m, t in trees.items() if m.split(".")[0] in ("tflab", "infra")})
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_infra_imports_nothing_from_tflab(trees):
    bad = {m: sorted(n for n in _imported(t, m) if n.split(".")[0] == "tflab")
           for m, t in trees.items() if m.split(".")[0] == "infra"}
    assert {m: n for m, n in bad.items() if n} == {}


def test_remote_imports_nothing_from_tflab_or_infra(trees):
    bad = {m: sorted(n for n in _imported(t, m) if n.split(".")[0] in ("tflab", "infra"))
           for m, t in trees.items() if m.split(".")[0] == "remote"}
    assert {m: n for m, n in bad.items() if n} == {}


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_the_cli_modules_import_no_heavy_library_at_module_level(trees, module):
    heavy = sorted(n for n in _imported(trees[module], module, top_level_only=True) if n.split(".")[0] in HEAVY)
    assert heavy == []


def test_the_import_reader_sees_function_level_imports():
    tree = ast.parse("import os\ndef f():\n    from tflab.cloud import make_provider\n    import boto3\n")
    assert {"tflab.cloud", "tflab.cloud.make_provider", "boto3", "os"} <= _imported(tree, "tflab.x")
    assert _imported(tree, "tflab.x", top_level_only=True) == {"os"}



PIPELINE_KEEPS_OUT = ("tflab.cloud", "tflab.ssh", "tflab.sshhost", "tflab.state")


def _kept_out(imported: set[str]) -> list[str]:
    """The imported names that are, or are inside, a module the pipeline keeps out."""
    return sorted(n for n in imported if any(n == m or n.startswith(m + ".") for m in PIPELINE_KEEPS_OUT))


def test_the_pipeline_imports_no_cloud_ssh_or_state(trees):
    """lab.py is the pipeline and nothing else: written against Host, it never asks which kind of host it has, so
    it imports neither the cloud lifecycle, nor SSH, nor the lab's state (what a name means is tflab.labs's)."""
    assert _kept_out(_imported(trees["tflab.lab"], "tflab.lab")) == []


def test_the_pipeline_check_sees_a_forbidden_import():
    tree = ast.parse("import tflab.sshhost\ndef f():\n    from tflab.state import StateStore\n"
                     "    from tflab import ssh, sshtunnels\n")
    assert _kept_out(_imported(tree, "tflab.lab")) == ["tflab.ssh", "tflab.sshhost", "tflab.state",
                                                         "tflab.state.StateStore"]
