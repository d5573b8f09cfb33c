"""Field names that would collide, kept apart: nothing a provider sent may vanish.

Two fields of one body can end under one name: a repeated form or `{k=v}` name, or two
JSON keys that differ only in what PostgreSQL cannot store (`"x\\u0000"` and `"x\\ufffd"`
both become `x\ufffd`, see `workers.sanitize`). The value that would be overwritten is kept
under the name with a suffix `~1` (`~2`, ... when that is taken too), which no column
reads, so it lands in `extra` and in `raw`."""

from __future__ import annotations

from collections.abc import Container

SUFFIX = "~"


def free_key(name: str, taken: Container[str]) -> str:
    """`name` with the first suffix `~n` (n = 1, 2, ...) that is not `taken`."""
    number = 1
    while f"{name}{SUFFIX}{number}" in taken:
        number += 1
    return f"{name}{SUFFIX}{number}"


def put_keeping(fields: dict[str, object], name: str, value: object) -> None:
    """`fields[name] = value`; another value already under `name` moves to a free suffixed
    name, so the last one stays where the columns read it, as a plain assignment would
    leave it. The same value sent twice is kept once: nothing of it is lost."""
    if name in fields and fields[name] != value:
        fields[free_key(name, fields)] = fields[name]
    fields[name] = value
