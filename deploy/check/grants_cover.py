"""Every table, view and sequence the migrations create is named in grants.sql.

A migration that adds a table and forgets its grant passes every test (they connect as
postgres) and fails in production, where workers connect as cdrflow_worker. Sequences behind
identity columns need no grant; an explicit CREATE SEQUENCE or a serial column does. Usage
(from the repository root): python deploy/check/grants_cover.py workers/storage/migrations
deploy/postgres/grants.sql"""

from __future__ import annotations

import re
import sys
from pathlib import Path

NAME = r"(?:\"?\w+\"?\.)?\"?(\w+)\"?"
CREATED = re.compile(
    rf"\bCREATE\s+(?:OR\s+REPLACE\s+)?(?:UNLOGGED\s+)?(?:MATERIALIZED\s+)?"
    rf"(?:TABLE|VIEW|SEQUENCE)\s+(?:IF\s+NOT\s+EXISTS\s+)?{NAME}",
    re.IGNORECASE,
)
DROPPED = re.compile(
    rf"\bDROP\s+(?:MATERIALIZED\s+)?(?:TABLE|VIEW|SEQUENCE)\s+(?:IF\s+EXISTS\s+)?{NAME}",
    re.IGNORECASE,
)
SERIAL = re.compile(r"^\s*(\w+)\s+(?:small|big)?serial\b", re.IGNORECASE | re.MULTILINE)
TABLE_OF_COLUMN = re.compile(rf"\bCREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?{NAME}", re.I)
GRANTED = re.compile(r"\bGRANT\s[^;]*?\bON\s+(?:TABLE\s+|SEQUENCE\s+)?([^;]*?)\s+TO\b", re.I)
COMMENT = re.compile(r"--[^\n]*")


def created_objects(migrations: Path) -> dict[str, str]:
    """Object name -> the migration that created it (those dropped later left out)."""
    objects: dict[str, str] = {}
    for path in sorted(migrations.glob("*.sql")):
        sql = COMMENT.sub("", path.read_text(encoding="utf-8"))
        for name in CREATED.findall(sql):
            objects[name.lower()] = path.name
        for name in serial_sequences(sql):
            objects[name] = path.name
        for name in DROPPED.findall(sql):
            objects.pop(name.lower(), None)
    return objects


def serial_sequences(sql: str) -> list[str]:
    """The implicit `<table>_<column>_seq` of each serial column."""
    sequences = []
    for statement in sql.split(";"):
        table = TABLE_OF_COLUMN.search(statement)
        if table:
            sequences += [
                f"{table.group(1)}_{column}_seq".lower()
                for column in SERIAL.findall(statement[table.end() :])
            ]
    return sequences


def granted_objects(grants: Path) -> set[str]:
    sql = COMMENT.sub("", grants.read_text(encoding="utf-8"))
    return {
        name.strip().strip('"').split(".")[-1].lower()
        for targets in GRANTED.findall(sql)
        for name in targets.split(",")
    }


def main(migrations: str, grants: str) -> int:
    created = created_objects(Path(migrations))
    granted = granted_objects(Path(grants))
    missing = sorted(set(created) - granted)
    for name in missing:
        print(f"{grants}: no GRANT names {name} (created by {created[name]})")
    if not missing:
        print(f"{len(created)} objects the migrations create, each granted: {sorted(created)}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
