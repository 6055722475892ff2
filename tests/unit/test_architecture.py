"""The package's shape, checked: who may import whom, no import cycles, no oversized module.

Every module of ``audit_engine`` is parsed with :mod:`ast` (nothing is imported for the graph).
An edge is a module-level import — in the module's body, or in an ``if``/``try`` there — that is
not under ``if TYPE_CHECKING:``; imports inside functions and classes do not count. ``from
audit_engine.storage import deadletter`` is an edge to the submodule ``audit_engine.storage
.deadletter``; ``from audit_engine.storage.chain import ChainHead`` an edge to ``...chain``.

The rules (see docs/architecture.md and the house style's "shape of the package"):

- data walks caller → ``pipeline`` → ``storage``: ``storage`` imports neither ``pipeline`` nor
  what sits on top (``cli``, ``integrations``, ``testing``), ``pipeline`` imports none of those,
  and neither imports the public API (the package root), which imports them;
- the shared vocabulary (errors, models, settings, details, formats, rows, columns) imports none
  of the sub-packages;
- no cycles in the module import graph;
- no module over 450 lines;
- fork safety in one place: only ``audit_engine.forks`` calls ``os.register_at_fork``, and no
  module reaches for another module's private fork state (``_FORK_ORPHANS`` once was);
- every name in ``audit_engine.__all__`` imports.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import audit_engine

ROOT = Path(audit_engine.__file__).parent
PACKAGE = "audit_engine"
MAX_LINES = 450
VOCABULARY = frozenset(
    f"{PACKAGE}.{name}"
    for name in ("errors", "models", "settings", "details", "formats", "rows", "columns", "forks")
)
# (importer prefix, forbidden prefixes)
_TOP = (f"{PACKAGE}.cli", f"{PACKAGE}.integrations", f"{PACKAGE}.testing")
LAYERS = (
    (f"{PACKAGE}.storage", (f"{PACKAGE}.pipeline", *_TOP)),
    (f"{PACKAGE}.pipeline", _TOP),
)


def _module_name(path: Path) -> str:
    parts = [PACKAGE, *path.relative_to(ROOT).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                found += _module_level(node.body)
            found += _module_level(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody):
                found += _module_level(block)
            for handler in node.handlers:
                found += _module_level(handler.body)
    return found


def _resolve(importer: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    is_package = MODULES[importer].name == "__init__.py"
    base = importer.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join([*base, node.module] if node.module else base)


def _imports(name: str) -> set[str]:
    """The audit_engine modules ``name`` imports at module level."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"), filename=str(MODULES[name]))
    targets: set[str] = set()
    for node in _module_level(tree.body):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
            continue
        source = _resolve(name, node)
        for alias in node.names:
            submodule = f"{source}.{alias.name}"
            targets.add(submodule if submodule in MODULES else source)
    return {t for t in targets if t == PACKAGE or t.startswith(PACKAGE + ".")}


GRAPH = {name: _imports(name) for name in MODULES}


def test_the_graph_sees_the_package() -> None:
    # The checks below mean something only if the walk found the modules and their imports.
    assert {f"{PACKAGE}.pipeline.writer", f"{PACKAGE}.storage.sqlite.append"} <= set(MODULES)
    assert f"{PACKAGE}.storage.base" in GRAPH[f"{PACKAGE}.pipeline.writer"]
    assert f"{PACKAGE}.storage.deadletter" in GRAPH[f"{PACKAGE}.storage.store"]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_a_module_imports_only_the_layers_below_it(name: str) -> None:
    imported = GRAPH[name]
    for layer, forbidden in LAYERS:
        if name == layer or name.startswith(layer + "."):
            wrong = sorted(t for t in imported if t.startswith(forbidden) or t == PACKAGE)
            assert not wrong, f"{name} imports {wrong}: {layer} may not import {forbidden}"
    if name in VOCABULARY:
        wrong = sorted(t for t in imported if t not in VOCABULARY)
        assert not wrong, f"{name} is shared vocabulary but imports {wrong}"


def test_no_module_imports_another_that_imports_it_back() -> None:
    # Tarjan's strongly connected components; any component of two or more modules is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(GRAPH.get(node, ())):
            if target not in GRAPH:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in GRAPH[node]:
                cycles.append(sorted(component))

    for name in sorted(GRAPH):
        if name not in index:
            visit(name)
    assert cycles == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_over_the_line_limit(name: str) -> None:
    lines = len(MODULES[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines (at most {MAX_LINES}): split it"


@pytest.mark.parametrize("name", sorted(audit_engine.__all__))
def test_every_public_name_imports(name: str) -> None:
    assert getattr(audit_engine, name) is not None
    namespace: dict[str, object] = {}
    exec(f"from audit_engine import {name}", namespace)
    assert name in namespace


@pytest.mark.parametrize(
    "package", [f"{PACKAGE}.cli", f"{PACKAGE}.storage.sqlite"], ids=lambda p: p
)
def test_the_sub_packages_exports_import(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        assert hasattr(module, name), f"{package}.__all__ names {name}, which it lacks"


def test_the_cycle_check_finds_a_cycle() -> None:
    # The check itself, on a graph with a known cycle (policy <-> settings, as it once was).
    saved = dict(GRAPH)
    try:
        GRAPH[f"{PACKAGE}.settings"] = GRAPH[f"{PACKAGE}.settings"] | {f"{PACKAGE}.pipeline.policy"}
        with pytest.raises(AssertionError):
            test_no_module_imports_another_that_imports_it_back()
    finally:
        GRAPH.clear()
        GRAPH.update(saved)


# -- fork safety in one place -------------------------------------------------------------------


def _tree(name: str) -> ast.Module:
    return ast.parse(MODULES[name].read_text(encoding="utf-8"), filename=str(MODULES[name]))


def _registers_at_fork(tree: ast.Module) -> bool:
    return any(
        (isinstance(node, ast.Attribute) and node.attr == "register_at_fork")
        or (isinstance(node, ast.Name) and node.id == "register_at_fork")
        or (
            isinstance(node, ast.ImportFrom)
            and any(alias.name == "register_at_fork" for alias in node.names)
        )
        for node in ast.walk(tree)
    )


def _private_fork_reaches(name: str, tree: ast.Module) -> list[str]:
    """Private fork names ``name`` takes from other audit_engine modules, anywhere in it.

    An import (``from audit_engine.pipeline.writer import _FORK_ORPHANS``) or an attribute of an
    imported module (``writer._FORK_ORPHANS``); private names of :mod:`audit_engine.forks` count
    whatever they are called.
    """
    found: list[str] = []
    modules: dict[str, str] = {}  # local name -> audit_engine module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES:
                    modules[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(name, node)
            for alias in node.names:
                if f"{source}.{alias.name}" in MODULES:
                    modules[alias.asname or alias.name] = f"{source}.{alias.name}"
                elif source in MODULES and source != name and _is_private_fork(source, alias.name):
                    found.append(f"{source}.{alias.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            source = modules.get(node.value.id)
            if source is not None and source != name and _is_private_fork(source, node.attr):
                found.append(f"{source}.{node.attr}")
    return sorted(set(found))


def _is_private_fork(source: str, attr: str) -> bool:
    return attr.startswith("_") and ("fork" in attr.lower() or source == f"{PACKAGE}.forks")


@pytest.mark.parametrize("name", sorted(MODULES))
def test_only_the_forks_module_registers_at_fork(name: str) -> None:
    # One os.register_at_fork for the package: everything else registers with audit_engine.forks,
    # so the order of the hooks and what a failing one does are decided in one place.
    if name != f"{PACKAGE}.forks":
        assert not _registers_at_fork(_tree(name)), (
            f"{name} calls os.register_at_fork: register with audit_engine.forks instead"
        )


def test_the_forks_module_registers_at_fork() -> None:
    assert _registers_at_fork(_tree(f"{PACKAGE}.forks"))


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_reaches_for_another_modules_private_fork_state(name: str) -> None:
    assert _private_fork_reaches(name, _tree(name)) == []


@pytest.mark.parametrize(
    "source",
    [
        "from audit_engine.pipeline.writer import _FORK_ORPHANS",
        "from audit_engine.forks import _inherited",
        "from audit_engine.pipeline import writer\nwriter._FORK_ORPHANS.append(1)",
        "import audit_engine.forks as f\nf._held.clear()",
    ],
)
def test_the_private_fork_check_finds_a_reach(source: str) -> None:
    name = f"{PACKAGE}.pipeline.syncwrite"
    assert _private_fork_reaches(name, ast.parse(source)) != []
    assert _registers_at_fork(ast.parse("import os\nos.register_at_fork(before=print)"))
