"""The import graph of toolkit/, export/ and eval/: no cycle, and imports only run down the layers of docs/architecture.md."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Where each installed package's source lies (pyproject's package-dir).
FOLDERS = {"toolkit": ROOT / "toolkit", "toolkit.export": ROOT / "export", "toolkit.eval": ROOT / "eval"}
# Bottom to top. A module may import its own layer's modules and any layer below, never one above.
LAYERS = ["toolkit.core", "toolkit.sandbox", "toolkit.data", "toolkit.runtime", "toolkit.teacher",
          "toolkit.training", "toolkit.eval", "toolkit.export", "toolkit.pipeline", "toolkit.cli"]
# Pairs (importer, imported) that a lower index alone would allow but the map forbids: teacher and training
# are siblings, and eval and export load models and start servers through the runtime layer only, so that a
# family's loading rules live in one place and deploying never pulls in the training or teacher code.
FORBIDDEN = {("toolkit.teacher", "toolkit.training"), ("toolkit.training", "toolkit.teacher"),
             ("toolkit.eval", "toolkit.training"), ("toolkit.eval", "toolkit.teacher"),
             ("toolkit.export", "toolkit.training"), ("toolkit.export", "toolkit.teacher")}


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = [p for p in path.relative_to(folder).with_suffix("").parts if p != "__init__"]
            name = ".".join([package, *parts])
            if package == "toolkit" and name.startswith(("toolkit.export", "toolkit.eval")):
                continue
            found[name] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every toolkit module `name` imports, at the top or inside a function."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in known and t != name)
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def layer(name: str) -> int | None:
    """The index of the layer holding `name`; None for the package root (toolkit/__init__.py: version only)."""
    for i in range(len(LAYERS) - 1, -1, -1):
        if name == LAYERS[i] or name.startswith(LAYERS[i] + "."):
            return i
    return None


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = 0
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_graph_is_read():
    edges = graph()
    assert len(edges) > 60
    assert "toolkit.core.errors" in edges["toolkit.pipeline.distill"]
    assert "toolkit.export.run" in edges["toolkit.cli"]


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def upward(edges: dict[str, set[str]]) -> list[str]:
    """The imports that go up a layer or across a forbidden pair, as "importer -> imported"."""
    found = []
    for name, targets in edges.items():
        here = layer(name)
        for target in targets:
            there = layer(target)
            if here is None or there is None:
                continue
            if there > here or (LAYERS[here], LAYERS[there]) in FORBIDDEN:
                found.append(f"{name} -> {target}")
    return sorted(found)


def test_imports_run_down_the_layers():
    assert upward(graph()) == []


def test_an_upward_or_sibling_import_is_caught():
    edges = {"toolkit.core.errors": {"toolkit.pipeline.distill"}, "toolkit.teacher.cache": {"toolkit.training.train"},
             "toolkit.pipeline.distill": {"toolkit.core.errors", "toolkit.eval.accuracy"}}
    assert upward(edges) == ["toolkit.core.errors -> toolkit.pipeline.distill",
                             "toolkit.teacher.cache -> toolkit.training.train"]


def test_eval_and_export_reach_models_through_the_runtime_layer_only():
    edges = {"toolkit.eval.generate": {"toolkit.training.train"}, "toolkit.export.source": {"toolkit.teacher.cache"},
             "toolkit.eval.openai_backend": {"toolkit.runtime.llama_server"}}
    assert upward(edges) == ["toolkit.eval.generate -> toolkit.training.train",
                             "toolkit.export.source -> toolkit.teacher.cache"]
    real = graph()
    for name in ("toolkit.eval.generate", "toolkit.export.source"):
        assert "toolkit.runtime.loading" in real[name]


def test_every_module_has_a_layer_and_a_line_in_the_map():
    text = (ROOT / "docs" / "architecture.md").read_text()
    for name in graph():
        if name == "toolkit":
            continue
        assert layer(name) is not None, name
        assert f"`{name}`" in text, f"docs/architecture.md has no line for {name}"


def test_every_package_folder_is_in_the_wheel():
    """pyproject lists its packages by hand: a package folder missing from that list is left out of a wheel
    (`pip install .`), while the editable install the tests use still finds it (toolkit.runtime was missed so)."""
    import tomllib

    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert {name: ROOT / folder for name, folder in setup["package-dir"].items()} == FOLDERS
    on_disk = {top + "." + ".".join(init.parent.relative_to(folder).parts) if init.parent != folder else top
               for top, folder in FOLDERS.items() for init in folder.rglob("__init__.py")
               if "__pycache__" not in init.parts}
    assert on_disk - set(setup["packages"]) == set(), "package folders that a wheel would leave out"
