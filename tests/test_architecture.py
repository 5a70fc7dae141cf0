"""The layers of ARCHITECTURE.md, checked on the import statements of src/iwae (lazy ones included): no module
imports from a layer below its own, and there is no import cycle."""

from __future__ import annotations

import ast
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


# ARCHITECTURE.md's layers: a module imports from its own layer or the layers above it only.
LAYERS = {
    1: {"iwae._ops", "iwae.layers", "iwae.pruning", "iwae.model", "iwae.bounds", "iwae.atomic",
        "iwae.cpu", "iwae.streams", "iwae.latent_model"},
    2: {"iwae.objectives", "iwae.data", "iwae.evaluate", "iwae.plots"},
    3: {"iwae.config", "iwae.train_step", "iwae.checkpoint", "iwae.rundir", "iwae.train", "iwae.training_state",
        "iwae.fleet", "iwae.fleet_train", "iwae.fleet_runs", "iwae.stacked_adam",
        "iwae.evaluate_run", "iwae.compare", "iwae.snr", "iwae.distributed", "iwae.sharing"},
    4: {"iwae.experiments", "iwae.experiments.seeds"},
    5: {"iwae.cli", "iwae.cli_runs", "iwae.cli_fleet", "iwae.config_cli", "iwae.experiments.cli", "iwae"},
}  # fmt: skip


def _layer(module: str) -> int:
    """The layer of a module: that of its longest listed prefix (``iwae.data.readers`` is in ``iwae.data``'s)."""
    best = max((p for ps in LAYERS.values() for p in ps if module == p or module.startswith(p + ".")), key=len)
    return next(layer for layer, prefixes in LAYERS.items() if best in prefixes)


def test_no_import_cycles_lazy_imports_included():
    graph = _graph()
    assert "iwae.rundir" in graph["iwae.train"] and "iwae.train" in graph["iwae.experiments.runner"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) is not None
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_modules_import_only_from_their_layer_or_above():
    graph = _graph()
    upward = sorted(f"{m} (layer {_layer(m)}) imports {d} (layer {_layer(d)})"
                    for m, deps in graph.items() for d in deps if _layer(d) > _layer(m))  # fmt: skip
    assert not upward, "; ".join(upward)
    assert _layer("iwae.data.readers") == 2 and _layer("iwae.experiments.cli") == 5


def test_every_module_is_in_a_layer_of_architecture_md():
    listed = {p.split(".")[-1] for ps in LAYERS.values() for p in ps if p != "iwae"}
    text = (Path(__file__).resolve().parents[1] / "ARCHITECTURE.md").read_text()
    missing = sorted(name for name in listed if f"`{name}.py`" not in text and f"`{name}/`" not in text)
    assert not missing, f"ARCHITECTURE.md does not place {missing}"
    assert all(_layer(m) for m in _graph())
