"""`make schemas`: writes the parts of the schema files that name the providers, from the
provider registry (`schemas.registry_documents`), and leaves the rest of each file as it is.

    python -m cdrflow.operations.schema_files [--check] [--dir DIR]

With `--check`, writes nothing and exits 1 naming the files that differ."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from schemas.marked_regions import RegionError
from schemas.providers import Registry, default_registry
from schemas.registry_documents import DOCUMENTS

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
COMMAND = "make schemas"


def generated(directory: Path, registry: Registry) -> dict[Path, str]:
    """Each schema file in `directory` as the registry has it: path -> text."""
    return {
        directory / name: render(_read(directory / name), registry)
        for name, render in DOCUMENTS.items()
    }


def stale(directory: Path, registry: Registry) -> list[Path]:
    """The files whose text differs from what `generated` makes of them."""
    return [path for path, text in generated(directory, registry).items() if _read(path) != text]


def write(directory: Path, registry: Registry) -> list[Path]:
    """Writes the files that differ; returns them."""
    changed = stale(directory, registry)
    texts = generated(directory, registry)
    for path in changed:
        path.write_text(texts[path], encoding="utf-8")
    return changed


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cdrflow.operations.schema_files", description=__doc__
    )
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if stale")
    parser.add_argument("--dir", type=Path, default=SCHEMAS, help="the schema files' directory")
    args = parser.parse_args(argv)
    try:
        return _check(args.dir) if args.check else _write(args.dir)
    except RegionError as exc:  # a hand edit broke a marker: say which, not a traceback
        print(f"{COMMAND}: {exc}", file=sys.stderr)
        return 2


def _check(directory: Path) -> int:
    behind = stale(directory, default_registry())
    for path in behind:
        print(f"{path}: not what the provider registry makes of it; run {COMMAND}")
    return 1 if behind else 0


def _write(directory: Path) -> int:
    for path in write(directory, default_registry()):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
