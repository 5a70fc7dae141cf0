"""The layers of ARCHITECTURE.md, checked on the import statements of src/iwae (lazy ones included): no module
imports from a layer below its own, and there is no import cycle."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import iwae

SRC = Path(iwae.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _executed(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` but those under ``if TYPE_CHECKING:`` (never run, so never part of a cycle)."""
    nodes, todo = [], [tree]
    while todo:
        node = todo.pop()
        nodes.append(node)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
        else:
            todo.extend(ast.iter_child_nodes(node))
    return nodes


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The iwae modules ``path`` imports anywhere in it, inside functions too."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _executed(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}".rstrip(".")
            for alias in node.names:  # `from iwae import data` imports the module iwae.data
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m in modules and m != name}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: finished

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [node, nxt] if nxt in path else [node, nxt]
            if nxt not in state and (found := visit(nxt, path + [node])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [])):
            return found
    return None


def _graph() -> dict[str, set[str]]:
    """Module -> the iwae modules it imports (inside functions too); a package's ``__init__`` re-exporting its own
    submodules is left out (Python runs it before any of them, so it closes no cycle)."""
    files = sorted(SRC.rglob("*.py"))
    modules = {_module_name(p) for p in files}
    graph = {_module_name(p): _imports(p, modules) for p in files}
    return {m: {d for d in deps if not (m.startswith(d + ".") and d in graph)} for m, deps in graph.items()}


ARCHITECTURE = Path(__file__).resolve().parents[1] / "ARCHITECTURE.md"


def _table(heading: str) -> list[list[str]]:
    """The body rows of the first markdown table under ``heading`` in ARCHITECTURE.md, as lists of cells."""
    lines = ARCHITECTURE.read_text().split(heading, 1)[1].splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = [line for line in lines[first:] if line.startswith("|")]
    rows = rows[: next((i for i, line in enumerate(lines[first:]) if not line.startswith("|")), len(rows))]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


def _to_module(entry: str) -> str:
    """A path of the tables (`runs/`, `bounds.py`, `data/readers.py`, `__init__.py`) as a module name."""
    path = entry.strip("`").removesuffix(".py").removesuffix("/").removesuffix("__init__").rstrip("/")
    return ".".join(["iwae", *path.split("/")]) if path else "iwae"


def _layers() -> dict[str, int]:
    """Package or module prefix -> layer, from the layer table ("| 3. runs | `runs/`, `fleets/` | ... |")."""
    found = {}
    for cells in _table("# Architecture"):
        layer = int(cells[0].split(".")[0])
        for entry in re.findall(r"`([^`]+)`", cells[1]):
            found[_to_module(entry)] = layer
    return found


LAYERS = _layers()


def _layer(module: str) -> int:
    """The layer of a module: that of its longest listed prefix (``iwae.data.readers`` is in ``iwae.data``'s)."""
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def test_no_import_cycles_lazy_imports_included():
    graph = _graph()
    assert "iwae.runs.rundir" in graph["iwae.runs.train"] and "iwae.runs.train" in graph["iwae.experiments.runner"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) is not None
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_modules_import_only_from_their_layer_or_above():
    graph = _graph()
    upward = sorted(f"{m} (layer {_layer(m)}) imports {d} (layer {_layer(d)})"
                    for m, deps in graph.items() for d in deps if _layer(d) > _layer(m))  # fmt: skip
    assert not upward, "; ".join(upward)
    assert _layer("iwae.data.readers") == 2 and _layer("iwae.cli.reproduce") == 5


def test_the_layer_table_places_every_package():
    assert LAYERS["iwae.util"] == 0 and LAYERS["iwae.bounds"] == 1 and LAYERS["iwae.runs"] == 3
    assert LAYERS["iwae"] == 5 and set(LAYERS.values()) == {0, 1, 2, 3, 4, 5}


def test_architecture_md_names_every_module_once_at_its_packages_layer():
    rows = _table("## Modules")
    listed = [_to_module(cells[0]) for cells in rows]
    modules = {_module_name(p) for p in SRC.rglob("*.py")}
    assert len(listed) == len(set(listed)), "a module is listed twice"
    assert not modules - set(listed), f"ARCHITECTURE.md does not list {sorted(modules - set(listed))}"
    assert not set(listed) - modules, f"ARCHITECTURE.md lists missing modules {sorted(set(listed) - modules)}"
    wrong = [f"{m}: {cells[1]} (its package's row says {_layer(m)})" for m, cells in zip(listed, rows)
             if int(cells[1]) != _layer(m)]  # fmt: skip
    assert not wrong, "; ".join(wrong)
    assert all(cells[2] for cells in rows), "every module says what it holds"
    top = sorted(p.name for p in SRC.glob("*.py"))
    assert len(top) <= 12, f"{len(top)} modules at the top of src/iwae: {top}"


def test_dir_of_the_package_is_its_public_api_and_each_name_resolves():
    import iwae

    names = dir(iwae)
    assert "load_run" in names and "__version__" in names
    assert not {"Any", "import_module", "annotations"} & set(names)  # the package's own imports are not its API
    assert all(getattr(iwae, name) is not None for name in names)


def _unhinted(source: str) -> list[str]:
    """The public functions and methods in ``source`` (not under a private name, class or function) that leave a
    parameter or, but for ``__init__``, the return without a type hint."""
    found = []

    def scan(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                scan(node.body, f"{prefix}{node.name}.")
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and (
                node.name == "__init__" or not node.name.startswith("_")
            ):
                a = node.args
                params = [*a.posonlyargs, *a.args, *a.kwonlyargs, *(p for p in (a.vararg, a.kwarg) if p)]
                if any(p.annotation is None and p.arg not in ("self", "cls") for p in params) or (
                    node.returns is None and node.name != "__init__"
                ):
                    found.append(f"{prefix}{node.name}")

    scan(ast.parse(source).body, "")
    return found


def test_public_functions_and_methods_carry_type_hints():
    missing = [f"{path.relative_to(SRC)}: {name}" for path in sorted(SRC.rglob("*.py")) for name in _unhinted(
        path.read_text())]  # fmt: skip
    assert not missing, f"public functions without type hints: {missing}"
    source = "\n".join([
        "def f(x, y: int) -> int: ...", "class C:", "    def g(self, **kw) -> None: ...", "    def h(self): ...",
        "    def _private(self, z): ...", "class _D:", "    def i(self, z): ...", "def k(*a: int) -> None: ...",
    ])  # fmt: skip
    assert _unhinted(source) == ["f", "C.g", "C.h"]
