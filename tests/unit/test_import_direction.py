"""Who may import whom among the product, its tests and the tools (bench, fault suite,
cluster failover, flood). The product imports neither. A tool may use the tests' shared
support (`tests.support`: the services' URLs, sources, settings, processes), never a test.
A test imports a tool only to test that tool; `tests.support` imports none."""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The packages the wheel ships are the product.
PRODUCT = tuple(
    tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"][
        "wheel"
    ]["packages"]
)
SHARED_SUPPORT = "tests.support"
# The tests of a tool, each with the tool it tests: the only tests that import from tools/.
TOOL_TESTS = {
    "tests/unit/test_bench_table.py": "tools.bench",
    "tests/unit/test_profile_summary.py": "tools.bench",
}


def imported(source: str, module: str) -> set[str]:
    """The absolute names that `source`, the text of `module`, imports: `from a.b import c`
    is `a.b.c` (c may be a module or a name in a.b); relative imports resolved, an
    `__init__` module being its package."""
    package = module.split(".")[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module_parts = [*base, *([node.module] if node.module else [])]
            names.update(".".join([*module_parts, alias.name]) for alias in node.names)
    return names


def modules(*tops: str) -> Iterator[tuple[str, set[str]]]:
    """Each module under the top-level directories `tops`: its path from the root, and
    what it imports."""
    for top in tops:
        for path in sorted((ROOT / top).rglob("*.py")):
            relative = path.relative_to(ROOT)
            name = ".".join(relative.with_suffix("").parts)
            yield relative.as_posix(), imported(path.read_text(), name)


def under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_imports_are_read_absolute_and_relative() -> None:
    source = "import tools.bench\nfrom tests.support.env import unique\nfrom .conftest import x\n"
    assert imported(source, "tests.unit.providers.test_x") == {
        "tools.bench",
        "tests.support.env.unique",
        "tests.unit.providers.conftest.x",
    }
    assert imported("from .. import table\n", "tools.bench.sub.mod") == {"tools.bench.table"}
    assert imported("from tests import support\n", "tools.flood") == {"tests.support"}


def test_the_product_imports_neither_the_tests_nor_the_tools() -> None:
    wrong = {
        path: sorted(name for name in names if under(name, "tests") or under(name, "tools"))
        for path, names in modules(*PRODUCT)
    }
    assert not {path: names for path, names in wrong.items() if names}


def test_the_tools_use_only_the_tests_shared_support() -> None:
    wrong = {
        path: sorted(
            name for name in names if under(name, "tests") and not under(name, SHARED_SUPPORT)
        )
        for path, names in modules("tools")
    }
    assert not {path: names for path, names in wrong.items() if names}


def test_a_test_imports_a_tool_only_to_test_it() -> None:
    wrong = {
        path: sorted(name for name in names if under(name, "tools") and not is_test_of(path, name))
        for path, names in modules("tests")
    }
    assert not {path: names for path, names in wrong.items() if names}


def is_test_of(path: str, tool: str) -> bool:
    """Whether the test module at `path` is a test of `tool`."""
    return path in TOOL_TESTS and under(tool, TOOL_TESTS[path])


@pytest.mark.parametrize(("path", "tool"), sorted(TOOL_TESTS.items()))
def test_each_test_of_a_tool_imports_it(path: str, tool: str) -> None:
    """The list above stays the list of the tests that import a tool."""
    names = imported((ROOT / path).read_text(), path.removesuffix(".py").replace("/", "."))
    assert any(under(name, tool) for name in names)
