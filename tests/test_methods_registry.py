"""The method registry is the one list of methods, and the stage boundaries hold: methods/
never pulls in onnxruntime or onnx_graphsurgeon, budget/ never imports run/, and no module
cycle appears (checked on the source, since importing any onnxprune module runs the package
__init__, which imports everything)."""
import ast
import functools
from pathlib import Path

import click
import pytest

from onnxprune import methods
from onnxprune.cli import main
from onnxprune.methods.base import Method

PACKAGE = Path(methods.__file__).resolve().parent.parent


def _imports(path: Path) -> set:
    """Modules `path` imports: onnxprune.* as dotted names, third-party by top-level name."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module.removesuffix(".__init__") if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            submodules = {name + "." + a.name for a in node.names
                          if (PACKAGE.parent / (name + "." + a.name).replace(".", "/")).with_suffix(".py").exists()}
            out |= submodules or {name}     # `from . import importance` imports the module, not the package
    return out


@functools.lru_cache(maxsize=1)
def _graph() -> dict:
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        graph[name.removesuffix(".__init__")] = _imports(path)
    return graph


def _closure(graph: dict, start: str) -> set:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo += [d for d in graph.get(m, ()) if d.startswith("onnxprune.") and d != "onnxprune"]
    return seen


def test_registry_lists_every_method_once_in_cli_order():
    assert methods.METHODS == ("greedy", "weight-norm", "random", "random-global", "sampling", "coreset")
    assert all(isinstance(m, Method) and m.name == n for n, m in methods.REGISTRY.items())
    prune_cmd = main.commands["prune"]
    method = next(p for p in prune_cmd.params if p.name == "method")
    assert isinstance(method.type, click.Choice) and tuple(method.type.choices) == methods.METHODS


def test_unknown_method_is_a_value_error():
    with pytest.raises(ValueError, match="unknown method"):
        methods.get("magic")


def test_methods_never_import_onnxruntime_or_graphsurgeon():
    graph = _graph()
    reached = set().union(*(_closure(graph, m) for m in graph if m.startswith("onnxprune.methods")))
    third_party = set().union(*(graph.get(m, set()) for m in reached))
    assert not {t for t in third_party if t.split(".")[0] in ("onnxruntime", "onnx_graphsurgeon")}
    assert not {m for m in reached if m.startswith(("onnxprune.run", "onnxprune.capture.stream",
                                                    "onnxprune.capture.runtime", "onnxprune.rewrite.apply"))}


def test_budget_never_imports_run_and_solve_never_imports_methods():
    graph = _graph()
    for m, deps in graph.items():
        if m.startswith("onnxprune.budget"):
            assert not any(d.startswith("onnxprune.run") for d in deps), m
        if m.startswith("onnxprune.solve"):
            assert not any(d.startswith(("onnxprune.methods", "onnxprune.run")) for d in deps), m


def test_no_import_cycles_between_modules():
    graph = {m: {d for d in deps if d in _graph_names} for m, deps in _graph().items()}
    state = {}

    def visit(m, stack):
        state[m] = "open"
        for d in sorted(graph.get(m, ())):
            if d not in graph:
                continue
            if state.get(d) == "open":
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d, stack + [d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


_graph_names = set(_graph())
