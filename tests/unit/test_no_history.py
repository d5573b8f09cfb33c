"""Comments, docstrings and docs say why, never which issue or which run: git keeps the
history, and a reader of the code has never seen the issue tracker. Measured figures belong
in docs/benchmarks.md, without dates. Pure: the files are read, nothing is run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[2]
THIS_FILE = Path(__file__)  # its examples are what the patterns look for
TEXT_SUFFIXES = {".py", ".md", ".sql", ".toml", ".yaml", ".yml", ".sh", ".lua", ".html", ".cfg"}
SKIPPED_DIRS = {"node_modules", "__pycache__", "build", "dist"}
# "issue 8", "Issue #12", "issues 8 and 9": our tracker's numbers. An upstream library's
# bug ("aio-pika #231") names its project and stays: it says why a workaround exists.
ISSUE = re.compile(r"\bissues? ?#?\d+", re.IGNORECASE)
# "the 08:11 run", "the run of 05:30": a measurement's date, which git already has.
DATED_RUN = re.compile(r"\b\d{1,2}:\d{2} run\b|\brun of \d{1,2}:\d{2}\b", re.IGNORECASE)


def project_files() -> list[Path]:
    """Product code, tests, tools, deploy artefacts, docs and the Makefile: every text file
    of the checkout but hidden directories (.git, .venv), build output and this file."""
    found = [ROOT / "Makefile"]
    for path in ROOT.rglob("*"):
        parts = path.relative_to(ROOT).parts
        if any(part.startswith(".") or part in SKIPPED_DIRS for part in parts):
            continue
        if path.suffix in TEXT_SUFFIXES and path.is_file() and path != THIS_FILE:
            found.append(path)
    return found


def history_lines(pattern: re.Pattern[str]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in project_files()
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if pattern.search(line)
    ]


def test_the_files_are_found() -> None:
    names = {str(path.relative_to(ROOT)) for path in project_files()}
    assert {"Makefile", "README.md", "cdrflow/cli.py", "docs/benchmarks.md"} <= names
    assert not any(name.startswith(".venv") for name in names)


def test_no_issue_numbers() -> None:
    assert history_lines(ISSUE) == [], "say why, not which issue: git keeps that"


def test_no_dated_runs() -> None:
    assert history_lines(DATED_RUN) == [], "figures go to docs/benchmarks.md, without dates"


def test_the_patterns_catch_what_they_are_for() -> None:
    assert ISSUE.search("# see issue 9")
    assert ISSUE.search("(Issue #12)")
    assert not ISSUE.search("aio-pika #231, #626, still open")
    assert DATED_RUN.search("the --full run of 08:11")
    assert DATED_RUN.search("the 05:30 run")
    assert not DATED_RUN.search("started_at 2026-01-31T08:00:00Z")
