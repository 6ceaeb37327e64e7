"""The import graph, read from the code with `ast`: product code apart from its tooling.

- `ingress` and `workers` import `shared`, never each other; the `console` (operators'
  pages and admin API) imports `workers` and `shared`, and nothing imports it;
- `shared` imports neither, except `shared/cli.py`, whose commands import what they run
  inside the command (lazily);
- the sandbox (`shared/sandbox/`: `payhooks dev`, `payhooks simulate`, the simulators)
  imports the core, and the core never imports it (but the CLI, lazily);
- the tools (`tests/bench/`, `tests/chaos/`) and the tests import anything; the product
  never imports them (but the CLI, lazily);
- no module imports a `__main__`, or a private name (`_x`) of another module; a
  `__main__` is a few lines that hand over to the CLI;
- the product's modules form no cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).parents[1]
PRODUCT = ("ingress", "workers", "shared", "console")


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module (for `from m import n`: m, or m.n if a module)
    names: tuple[str, ...]
    lazy: bool  # inside a function


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    found = {}
    for top in (*PRODUCT, "tests"):
        for path in (ROOT / top).rglob("*.py"):
            found[module_name(path)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> Iterator[Import]:
    tree = ast.parse(path.read_text(), str(path))
    lazy_nodes = {id(inner) for node in ast.walk(tree)
                  if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                  for inner in ast.walk(node)}
    for node in ast.walk(tree):
        lazy = id(node) in lazy_nodes
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(name, alias.name, (), lazy)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                as_module = f"{node.module}.{alias.name}"
                if as_module in known:
                    yield Import(name, as_module, (), lazy)
                else:
                    yield Import(name, node.module, (alias.name,), lazy)


def graph() -> list[Import]:
    known = modules()
    return [found for name, path in known.items() for found in imports(name, path, known)
            if found.target.split(".")[0] in (*PRODUCT, "tests")]


def layer(module: str) -> str:
    if module.startswith(("tests.bench", "tests.chaos")):
        return "tools"
    if module.startswith("tests"):
        return "tests"
    if module.startswith("shared.sandbox"):
        return "sandbox"
    if module == "shared.cli":
        return "cli"
    return module.split(".")[0]


ALLOWED = {  # layer -> the layers it may import at module level
    "shared": {"shared"},
    "ingress": {"ingress", "shared"},
    "workers": {"workers", "shared"},
    "console": {"console", "workers", "shared"},
    "sandbox": {"sandbox", "shared"},
    "cli": {"shared"},
    "tools": {"tools", "sandbox", "shared", "ingress", "workers", "console", "cli"},
    "tests": {"tests", "tools", "sandbox", "shared", "ingress", "workers", "console", "cli"},
}
LAZY = {"cli": {"ingress", "workers", "console", "sandbox", "tools"}}  # what a command may import


def test_each_layer_imports_only_what_it_may() -> None:
    wrong = []
    for found in graph():
        source, target = layer(found.source), layer(found.target)
        allowed = ALLOWED[source] | (LAZY.get(source, set()) if found.lazy else set())
        if found.source.endswith("__main__"):
            allowed = allowed | {"cli"}  # `python -m ingress` hands over to the CLI
        if target not in allowed:
            wrong.append(f"{found.source} -> {found.target} ({source} -> {target})")
    assert wrong == []


def test_nothing_imports_a_main_or_another_modules_private_names() -> None:
    wrong = []
    for found in graph():
        if found.target.endswith("__main__"):
            wrong.append(f"{found.source} imports {found.target}")
        for name in found.names:
            if name.startswith("_") and not name.startswith("__"):
                wrong.append(f"{found.source} imports {found.target}.{name}")
    assert wrong == []


def test_the_products_modules_form_no_cycle() -> None:
    edges: dict[str, set[str]] = {}
    for found in graph():
        if layer(found.source) in ("tests", "tools") or found.lazy:
            continue
        edges.setdefault(found.source, set()).add(found.target)
    state: dict[str, int] = {}  # 1: on the path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt):], nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []
