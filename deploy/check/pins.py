"""The hashed pins (requirements/runtime.txt: what the image installs with --require-hashes;
requirements/dev.txt: the development tools as well) agree with constraints.txt, which
`make install` uses, and cover every dependency pyproject.toml names. After adding a
dependency to pyproject.toml and constraints.txt, `make pins` writes them again.

Usage (from the repository root): python deploy/check/pins.py"""

from __future__ import annotations

import re
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

CONSTRAINTS = Path("constraints.txt")
HASHED = {"runtime": Path("requirements/runtime.txt"), "dev": Path("requirements/dev.txt")}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(text: str) -> dict[str, str]:
    found = (PIN.match(line) for line in text.splitlines())
    return {canonical(m[1]): m[2] for m in found if m}


def unhashed(text: str) -> Iterator[str]:
    """Pinned lines not followed by a --hash (pip-compile writes them as continuations)."""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        match = PIN.match(line)
        following = lines[index + 1].strip() if index + 1 < len(lines) else ""
        if match and not following.startswith("--hash=sha256:"):
            yield match[1]


def declared(extra: str | None) -> set[str]:
    project = tomllib.loads(Path("pyproject.toml").read_text(encoding="utf-8"))["project"]
    names = project["dependencies"] + (project["optional-dependencies"][extra] if extra else [])
    return {canonical(m[0]) for m in (NAME.match(n) for n in names) if m}


def problems() -> Iterator[str]:
    constraints = pins(CONSTRAINTS.read_text(encoding="utf-8"))
    for kind, path in HASHED.items():
        text = path.read_text(encoding="utf-8")
        hashed = pins(text)
        for name in sorted(declared("dev" if kind == "dev" else None) - set(hashed)):
            yield f"{path}: no pin for {name} (pyproject.toml): run make pins"
        for name, version in sorted(hashed.items()):
            if constraints.get(name, version) != version:
                pinned = constraints[name]
                yield f"{path}: {name}=={version}, constraints.txt {pinned}: run make pins"
        for name in unhashed(text):
            yield f"{path}: {name} has no hash"
    runtime, dev = pins(HASHED["runtime"].read_text()), pins(HASHED["dev"].read_text())
    for name in sorted(set(runtime) - set(dev)):
        yield f"{HASHED['dev']}: lacks the runtime pin {name}: run make pins"


def main() -> int:
    found = list(problems())
    for problem in found:
        print(problem)
    if not found:
        print(
            "requirements/runtime.txt and dev.txt: hashed, complete, at constraints.txt's versions"
        )
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
