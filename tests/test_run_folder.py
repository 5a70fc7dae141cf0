"""The run folder (iwae.rundir): atomic files, the metrics log cut back on resume, status; no import cycles."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

import iwae
from iwae import rundir
from iwae.config import TrainConfig

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


def test_no_import_cycles_lazy_imports_included():
    files = sorted(SRC.rglob("*.py"))
    modules = {_module_name(p) for p in files}
    graph = {_module_name(p): _imports(p, modules) for p in files}
    # A package's __init__ re-exporting its submodules is not a cycle: Python runs it before any of them.
    graph = {m: {d for d in deps if not (m.startswith(d + ".") and d in graph)} for m, deps in graph.items()}
    assert "iwae.rundir" in graph["iwae.train"] and "iwae.train" in graph["iwae.experiments.runner"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) is not None
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_status_new_partial_done(tmp_path):
    run = tmp_path / "run"
    assert rundir.status(run) == "new"
    rundir.create(run, TrainConfig(k=5))
    assert rundir.status(run) == "partial" and rundir.read_config(run) == TrainConfig(k=5)
    (run / rundir.METRICS_NAME).write_text("{}")
    assert rundir.status(run) == "done"


def test_create_writes_config_atomically_and_refuses_an_existing_run(tmp_path):
    run = tmp_path / "run"
    rundir.create(run, TrainConfig())
    assert [p.name for p in run.iterdir()] == [rundir.CONFIG_NAME]  # no temporary files left
    assert json.loads((run / rundir.CONFIG_NAME).read_text())["k"] == 50
    with pytest.raises(rundir.RunError, match="already holds a run; continue it with `iwae resume"):
        rundir.create(run, TrainConfig())
    with pytest.raises(rundir.RunError, match=r"is not a run folder \(no config.json\)"):
        rundir.read_config(tmp_path / "elsewhere")


def test_metrics_log_is_cut_back_to_the_checkpoint_on_resume(tmp_path):
    assert rundir.read_log(tmp_path) == []
    for i in range(4):
        rundir.append_log(tmp_path, {"pass": i})
    with open(tmp_path / rundir.LOG_NAME, "a") as f:
        f.write('{"pass": 4')  # a line cut short by a kill
    rundir.truncate_log(tmp_path, 2)
    assert rundir.read_log(tmp_path) == [{"pass": 0}, {"pass": 1}]
    rundir.append_log(tmp_path, {"pass": 2})
    assert [r["pass"] for r in rundir.read_log(tmp_path)] == [0, 1, 2]
    assert [p.name for p in tmp_path.iterdir()] == [rundir.LOG_NAME]  # no temporary files left


def test_a_run_starting_over_gets_an_empty_metrics_log(tmp_path):
    rundir.truncate_log(tmp_path, 0)
    assert (tmp_path / rundir.LOG_NAME).read_text() == "" and rundir.read_log(tmp_path) == []
