"""The package's layers import in one direction only (../shared/DESIGN.md, docs/architecture.md).

Every `import` in cnnkit/ counts: module level, inside functions, under TYPE_CHECKING. A module
may import from its own layer or the layers above it in LAYERS, never below; and the module
graph has no cycle at all, so no import has to hide inside a function to dodge one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cnnkit"

# top first: each may import only from its own line and the lines above it
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("cnnkit", "cnnkit.errors", "cnnkit.io", "cnnkit.interrupts",
                    "cnnkit.seeding", "cnnkit.threads")),
    ("options", ("cnnkit.options",)),
    ("kernels", ("cnnkit.kernels",)),
    ("nn", ("cnnkit.nn",)),
    ("data", ("cnnkit.data",)),
    ("spec", ("cnnkit.spec",)),
    ("runs", ("cnnkit.runs",)),
    ("train", ("cnnkit.train",)),
    ("api", ("cnnkit.api", "cnnkit.bench", "cnnkit.bench_torch")),
    ("cli", ("cnnkit.cli", "cnnkit.__main__")),
]  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    if rank is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS")
    return rank


def imports_of(module: str) -> set[str]:
    """The cnnkit modules `module` imports (a `from pkg import name` counts pkg.name when that
    is a module, else pkg)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "cnnkit")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "cnnkit":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
    found.discard(module)
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_up_the_layers_only(module):
    mine = layer_of(module)
    wrong = sorted(m for m in GRAPH[module] if layer_of(m) > mine)
    assert not wrong, (
        f"{module} (layer {LAYERS[mine][0]}) imports from layers below it: "
        + ", ".join(f"{m} ({LAYERS[layer_of(m)][0]})" for m in wrong)
    )


def test_no_import_cycle():
    """Tarjan's strongly connected components over every import, function-level included."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in MODULES:
                continue
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
                cycles.append(sorted(component))

    for module in MODULES:
        if module not in index:
            visit(module)
    assert not cycles, f"import cycles: {cycles}"


def _third_party(module: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def _jit_decorated(module: str) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.FunctionDef):
            for d in node.decorator_list:
                target = d.func if isinstance(d, ast.Call) else d
                name = (
                    target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
                )
                if name in ("njit", "jit", "vectorize", "guvectorize", "stencil"):
                    out.append(node.name)
    return out


def test_compiled_code_lives_in_kernels_only():
    """A layer never imports numba and a kernel never sees a layer: @njit functions are in
    cnnkit.kernels, which imports numba, numpy and other kernels only. (threads and the warm-up
    talk to Numba's runtime, set_num_threads and its compile event, and compile nothing.)"""
    for module in MODULES:
        if module.startswith("cnnkit.kernels"):
            outside = {m for m in GRAPH[module] if not m.startswith("cnnkit.kernels")}
            assert not outside, f"{module} imports {sorted(outside)}: kernels see no cnnkit code"
            continue
        assert not _jit_decorated(module), f"{module} compiles {_jit_decorated(module)}"
        if module.startswith(("cnnkit.nn", "cnnkit.data", "cnnkit.spec", "cnnkit.runs")):
            assert "numba" not in _third_party(module), f"{module} imports numba"
