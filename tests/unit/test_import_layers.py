"""The product's imports go one way: no cycle anywhere, and each layer imports only the
layers below it.

An import is every `import` statement in a module, wherever it stands: at the top, inside
a function, or under `if TYPE_CHECKING:` (an import only the type checker runs still says
that one module needs the other: a cycle behind it is a cycle of the design). It points at
the module it names (`from a.b import c` is `a.b.c` when that is a module, else `a.b`). A
package's `__init__` is a module of its own; importing a submodule does not count as
importing its package."""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("cdrflow", "console", "ingress", "reconciler", "schemas", "workers")

# Highest first: a module may import its own layer's package and any layer below it, never
# one above; the packages of one layer import nothing of each other. A module belongs to
# the longest prefix that names it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("cdrflow.cli",),
    ("cdrflow.commands",),  # the command-line wiring of each command
    ("console",),
    ("cdrflow.operations",),  # the code behind the commands, which the console shares
    ("ingress", "reconciler", "workers"),  # the three services
    ("workers.storage",),
    ("workers.batch", "workers.sanitize"),  # what a batch is made of; pure text repair
    ("cdrflow",),  # what every process shares: settings, logs, broker link, health
    ("schemas",),  # the data and the providers: I/O-free
)
# The worker's storage serves the steps around it; what they share is `workers.batch`.
STORAGE = "workers.storage"
STORAGE_MAY_IMPORT = ("workers.storage", "workers.batch", "workers.sanitize")

Graph = Mapping[str, frozenset[str]]


def module_files() -> dict[str, Path]:
    found = {}
    for package in PRODUCT:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imported(path: Path, name: str, modules: Mapping[str, Path]) -> Iterator[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = parts[: len(parts) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target


def import_graph() -> dict[str, frozenset[str]]:
    modules = module_files()
    return {name: frozenset(imported(path, name, modules)) for name, path in modules.items()}


def find_cycle(graph: Graph) -> list[str] | None:
    """One import cycle, as the modules along it with the first repeated at the end."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path = [start]
        pending = [iter(sorted(graph.get(start, ())))]
        while pending:
            following = next(pending[-1], None)
            if following is None:
                pending.pop()
                done.add(path.pop())
            elif following in path:
                return [*path[path.index(following) :], following]
            elif following not in done:
                path.append(following)
                pending.append(iter(sorted(graph.get(following, ()))))
    return None


def layer_of(module: str) -> tuple[int, str]:
    best: tuple[int, str] | None = None
    for level, packages in enumerate(LAYERS):
        for package in packages:
            inside = module == package or module.startswith(package + ".")
            if inside and (best is None or len(package) > len(best[1])):
                best = (level, package)
    assert best is not None, f"{module} is in no layer of LAYERS"
    return best


def layer_breaches(graph: Graph) -> list[str]:
    breaches = []
    for module, targets in sorted(graph.items()):
        level, package = layer_of(module)
        for target in sorted(targets):
            target_level, target_package = layer_of(target)
            if target_level < level or (target_level == level and target_package != package):
                breaches.append(f"{module} ({package}) imports {target} ({target_package})")
    return breaches


def test_no_import_cycle_in_product_code() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_each_layer_imports_only_the_layers_below() -> None:
    breaches = layer_breaches(import_graph())
    assert not breaches, "imports against the layers:\n" + "\n".join(breaches)


def test_storage_imports_nothing_from_the_steps_around_it() -> None:
    steps = [
        f"{module} imports {target}"
        for module, targets in sorted(import_graph().items())
        if module.startswith(STORAGE)
        for target in sorted(targets)
        if target.startswith("workers.") and not target.startswith(STORAGE_MAY_IMPORT)
    ]
    assert not steps, "storage imports a step of the worker:\n" + "\n".join(steps)


def test_every_product_module_is_in_a_layer_and_imports_something_known() -> None:
    graph = import_graph()
    assert len(graph) > 100  # the walk found the product
    for module in graph:
        layer_of(module)
    assert "workers.batch" in graph["workers.storage.transaction"]


@pytest.mark.parametrize(
    ("graph", "cycle"),
    [
        ({"a": frozenset({"b"}), "b": frozenset({"a"})}, ["a", "b", "a"]),
        ({"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"b"})}, ["b", "c", "b"]),
        ({"a": frozenset({"b", "c"}), "b": frozenset({"c"}), "c": frozenset()}, None),
    ],
)
def test_the_cycle_check_names_the_cycle(graph: Graph, cycle: list[str] | None) -> None:
    assert find_cycle(graph) == cycle


def test_the_layer_check_names_an_upward_import() -> None:
    graph = {"workers.storage.writer": frozenset({"workers.normalize"})}
    assert layer_breaches(graph) == [
        "workers.storage.writer (workers.storage) imports workers.normalize (workers)"
    ]
    assert layer_breaches({"ingress.x": frozenset({"workers.y"})}) == [
        "ingress.x (ingress) imports workers.y (workers)"
    ]
