"""No two product modules share a name: a module's name alone says which one it is, in a
traceback, a log line or a search (`__init__` and `__main__` excepted)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("cdrflow", "console", "ingress", "reconciler", "schemas", "workers")
EXCEPTED = frozenset({"__init__.py", "__main__.py"})


def shared_names(paths: Iterable[Path]) -> dict[str, list[str]]:
    by_name: defaultdict[str, list[str]] = defaultdict(list)
    for path in paths:
        if path.name not in EXCEPTED:
            by_name[path.name].append(path.relative_to(ROOT).as_posix())
    return {name: sorted(found) for name, found in sorted(by_name.items()) if len(found) > 1}


def test_no_two_product_modules_share_a_name() -> None:
    paths = [path for package in PRODUCT for path in (ROOT / package).rglob("*.py")]
    assert len(paths) > 100  # the walk found the product
    shared = shared_names(paths)
    assert not shared, "modules sharing a name: " + "; ".join(
        f"{name}: {', '.join(found)}" for name, found in shared.items()
    )


def test_the_check_names_what_it_finds() -> None:
    paths = [ROOT / "workers/replay.py", ROOT / "cdrflow/commands/replay.py"]
    paths += [ROOT / "workers/__init__.py", ROOT / "ingress/__init__.py"]
    assert shared_names(paths) == {"replay.py": ["cdrflow/commands/replay.py", "workers/replay.py"]}
