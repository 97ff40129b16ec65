"""The package's import structure, read from the source with ast: no import cycles, no upward
imports between subpackages (the layer order below), and no private name imported across modules."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "udm_fast"

# Lowest first: a module may import from its own layer and the ones before it, never from a later one.
LAYERS = (
    ("utils", "version"),
    ("ops",),
    ("layers", "entropy", "synthesis"),
    ("models",),
    ("losses",),
    ("eval",),
    ("restore", "train"),
    ("cli",),
)


def module_name(path: Path) -> str:
    parts = ("udm_fast",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1]) if parts[-1] == "__init__" else ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _absolute(module: str, node: ast.ImportFrom) -> str:
    """The absolute module ``from ... import`` in ``module`` refers to."""
    if node.level == 0:
        return node.module
    base = module.split(".") if _is_package(module) else module.split(".")[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str) -> list[tuple[str, ast.AST]]:
    """(imported udm_fast module, node) for every import in ``module``, at any depth (lazy ones too)."""
    found = []
    for node in ast.walk(ast.parse(MODULES[module].read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node)
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                found.append((sub if sub in MODULES else source, node))
    return [(name, node) for name, node in found if name in MODULES]


GRAPH = {module: sorted({name for name, _ in imports_of(module)} - {module}) for module in MODULES}


def _layer(module: str):
    parts = module.split(".")
    if len(parts) < 2:
        return None  # the package root: the public facade over everything
    for rank, names in enumerate(LAYERS):
        if parts[1] in names:
            return rank
    return None


def test_every_subpackage_has_a_layer():
    unplaced = sorted({m.split(".")[1] for m in MODULES if "." in m and _layer(m) is None})
    assert unplaced == [], f"add these to LAYERS in tests/test_layout.py: {unplaced}"


def test_no_import_cycles():
    state, cycles = {}, []

    def visit(module, stack):
        state[module] = "open"
        for target in GRAPH[module]:
            if target == "udm_fast" or target.startswith(module + "."):
                continue  # the root facade; a package importing its own modules
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[module] = "done"

    for module in MODULES:
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_no_upward_imports():
    upward = [
        f"{m} -> {t}"
        for m in MODULES
        for t in GRAPH[m]
        if _layer(m) is not None and _layer(t) is not None and _layer(t) > _layer(m)
    ]
    assert upward == []


def test_only_the_root_imports_the_root():
    assert [m for m in MODULES if m != "udm_fast" and "udm_fast" in GRAPH[m]] == []


def _private_uses(module: str) -> list[str]:
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    bad, module_aliases = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = _absolute(module, node)
            for alias in node.names:
                if f"{source}.{alias.name}" in MODULES:
                    module_aliases.add(alias.asname or alias.name)
                elif source in MODULES and alias.name.startswith("_") and not alias.name.startswith("__"):
                    bad.append(f"from {source} import {alias.name}")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in module_aliases
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            bad.append(f"{node.value.id}.{node.attr}")
    return bad


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_names_across_modules(module):
    assert _private_uses(module) == []


def test_the_checker_sees_a_cycle_and_an_upward_import(tmp_path, monkeypatch):
    """The walk above on a constructed graph: a -> b -> a is a cycle, ops -> cli is upward."""
    monkeypatch.setitem(GRAPH, "udm_fast.ops.backend", GRAPH["udm_fast.ops.backend"] + ["udm_fast.ops.extension"])
    monkeypatch.setitem(GRAPH, "udm_fast.ops.extension", GRAPH["udm_fast.ops.extension"] + ["udm_fast.ops.backend"])
    with pytest.raises(AssertionError):
        test_no_import_cycles()
    monkeypatch.setitem(GRAPH, "udm_fast.utils.files", GRAPH["udm_fast.utils.files"] + ["udm_fast.train.config"])
    with pytest.raises(AssertionError):
        test_no_upward_imports()
