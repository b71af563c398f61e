"""The shape of the package as a whole (../shared/DESIGN.md, docs/architecture.md).

Its layers import in one direction only: every `import` in cnnkit/ counts (module level, inside
functions, under TYPE_CHECKING); a module may import from its own layer or the layers above it
in LAYERS, never below; and the module graph has no cycle at all, so no import has to hide
inside a function to dodge one. Compiled code lives in cnnkit.kernels only. No function outside
the kernels is longer than a screen. The tests mirror the package, file for module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
PACKAGE = TESTS.parent / "cnnkit"

# top first: each may import only from its own line and the lines above it
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("cnnkit", "cnnkit.errors", "cnnkit.io", "cnnkit.distributed",
                    "cnnkit.interrupts", "cnnkit.places", "cnnkit.seeding", "cnnkit.threads")),
    ("options", ("cnnkit.options",)),
    ("kernels", ("cnnkit.kernels",)),
    ("nn", ("cnnkit.nn",)),
    ("data", ("cnnkit.data",)),
    ("spec", ("cnnkit.spec",)),
    ("runs", ("cnnkit.runs",)),
    ("train", ("cnnkit.train",)),
    ("export", ("cnnkit.export",)),
    ("api", ("cnnkit.api", "cnnkit.bench", "cnnkit.bench_guard", "cnnkit.bench_torch",
             "cnnkit.bench_keras", "cnnkit.launch")),
    ("serve", ("cnnkit.serve",)),
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


# -- no function longer than a screen -------------------------------------------------------

MAX_FUNCTION_LINES = 80

# Being shortened right now by other parts of issue 13; this list is emptied when they land.
LONG_FUNCTIONS_BEING_SHORTENED: set[tuple[str, str]] = set()


def function_lengths(module: str) -> dict[str, int]:
    """Lines of every function and method in module, nested ones included, by qualified name."""
    lengths: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = prefix + child.name
                lengths[name] = child.end_lineno - child.lineno + 1
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(MODULES[module].read_text()), "")
    return lengths


def test_no_function_outside_the_kernels_is_longer_than_a_screen():
    """Kernels are exempt: a Numba kernel is one loop nest, and splitting it costs calls in
    the hottest code."""
    too_long = {
        f"{module}.{name}": lines
        for module in MODULES
        if not module.startswith("cnnkit.kernels")
        for name, lines in function_lengths(module).items()
        if lines > MAX_FUNCTION_LINES and (module, name) not in LONG_FUNCTIONS_BEING_SHORTENED
    }
    assert not too_long, f"longer than {MAX_FUNCTION_LINES} lines: {too_long}"


def test_the_functions_being_shortened_are_still_long():
    """An entry of LONG_FUNCTIONS_BEING_SHORTENED that names nothing, or a function short enough
    now, is a stale exception: it goes."""
    for module, name in LONG_FUNCTIONS_BEING_SHORTENED:
        assert function_lengths(module).get(name, 0) > MAX_FUNCTION_LINES, (module, name)


# -- the tests mirror the package -----------------------------------------------------------

# tests of the package as a whole, not of one module: this file
# of the repository as a whole: the layers, and the README front door with its CI command
WHOLE_PACKAGE_TESTS = {"test_architecture.py", "test_readme.py"}

# Being renamed right now by other parts of issue 13; this list is emptied when they land.
NOT_YET_MIRRORED = {
    "spec/test_validation.py",  # spec.config's validate: the typed spec (line 3)
}


def mirrored_module(test_file: Path) -> Path | None:
    """The module or package that tests/<path>/test_<name>.py tests: cnnkit/<path>/<name>.py or
    cnnkit/<path>/<name>/; None if neither exists."""
    relative = test_file.relative_to(TESTS)
    name = relative.name.removeprefix("test_").removesuffix(".py")
    for candidate in (relative.parent / f"{name}.py", relative.parent / name / "__init__.py"):
        if (PACKAGE / candidate).is_file():
            return PACKAGE / candidate
    return None


def test_every_test_file_mirrors_a_module_or_is_end_to_end():
    """tests/<subpackage>/test_<module>.py tests cnnkit/<subpackage>/<module>.py (a top-level
    module: tests/test_<module>.py); a test of the CLI in a real process, or of training end to
    end, is tests/e2e/test_<topic>.py."""
    strays = []
    for test_file in sorted(TESTS.rglob("test_*.py")):
        relative = test_file.relative_to(TESTS).as_posix()
        if relative.startswith("e2e/") or relative in WHOLE_PACKAGE_TESTS:
            continue
        if relative not in NOT_YET_MIRRORED and mirrored_module(test_file) is None:
            strays.append(relative)
    assert not strays, f"test files that mirror no module of cnnkit/ (nor are e2e/): {strays}"


def test_the_files_not_yet_mirrored_are_still_strays():
    """An entry of NOT_YET_MIRRORED that names no file, or a file that mirrors a module now, is
    a stale exception: it goes."""
    for relative in NOT_YET_MIRRORED:
        assert (TESTS / relative).is_file(), relative
        assert mirrored_module(TESTS / relative) is None, relative


def test_every_test_folder_is_a_package():
    """tests/<subpackage>/__init__.py: test files of one name in two folders (tests/e2e/ and
    tests/data/test_check.py) are then two modules, not one name imported twice."""
    for folder in sorted({p.parent for p in TESTS.rglob("test_*.py")}):
        assert (folder / "__init__.py").is_file(), folder
