"""The docs name only what exists: every `cdrflow` subcommand and option written as a
command (the real parser of `cdrflow.cli`), every `CDRFLOW_` setting (`cdrflow.settings`),
every make target (the Makefile), and every relative link and #anchor resolves. Pure: the
files are read, nothing is run."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

from cdrflow import cli
from cdrflow.settings import NOT_SETTINGS_PREFIX, Settings

ROOT = Path(__file__).parents[2]
DOCS = sorted([ROOT / "README.md", ROOT / "deploy" / "README.md", *(ROOT / "docs").glob("*.md")])

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
INLINE_CODE = re.compile(r"`([^`\n]+)`")
# `cdrflow` in command position: a code span or shell line starting with it (after
# variable assignments), after a pipe or `;`, or anywhere as .venv/bin/cdrflow; the words
# after it.
COMMAND = re.compile(
    r"(?:^(?:[A-Z_][A-Z0-9_]*=\S*\s+)*|[|;&]\s*|\.venv/bin/)cdrflow\s+((?:--)?[a-z].*)"
)
WORD = re.compile(r"[a-z][a-z-]*")
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
MAKE = re.compile(r"(?:^|[\s;(&|])make\s+([a-z][a-z-]*)")
SETTING = re.compile(r"\bCDRFLOW_[A-Z0-9_]+\b(?!\*)")
LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)\)")
SHELLS = {"", "sh", "bash", "shell", "console"}


def doc_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def all_options(parser: argparse.ArgumentParser) -> set[str]:
    """A parser's options and those of the subcommands below it (a doc may write a
    placeholder such as ACTION for the subcommand)."""
    found = set(parser._option_string_actions)
    for sub in subcommands(parser).values():
        found |= all_options(sub)
    return found


def problems_of(words: list[str]) -> list[str]:
    """What is wrong with `cdrflow WORDS...` as the real parser reads it: a subcommand
    (at any depth) that does not exist, or an option none of the parsers reached has."""
    parser, path = cli._parser(), ["cdrflow"]
    rest = words
    while rest and WORD.fullmatch(rest[0]) and subcommands(parser):
        if rest[0] not in subcommands(parser):
            return [f"{' '.join([*path, rest[0]])}: no such command"]
        parser, path, rest = subcommands(parser)[rest[0]], [*path, rest[0]], rest[1:]
    known = all_options(parser)
    return [
        f"{' '.join(path)} {flag}: no such option"
        for flag in OPTION.findall(" ".join(rest))
        if flag not in known
    ]


@cache
def make_targets() -> frozenset[str]:
    text = (ROOT / "Makefile").read_text()
    return frozenset(re.findall(r"^([a-z][a-z-]*)\s*:(?!=)", text, re.M))


def without_fences(text: str) -> str:
    return FENCE.sub("", text)


def shell_lines(text: str) -> Iterator[str]:
    """The lines of shell code blocks, continuations joined, comments dropped, and every
    inline code span."""
    for language, body in FENCE.findall(text):
        if language in SHELLS:
            for line in body.replace("\\\n", " ").splitlines():
                yield re.sub(r"(^|\s+)#\s.*$", "", line).strip()
    for span in INLINE_CODE.findall(without_fences(text)):
        yield span.replace("\\|", " ").strip()  # in a table, `a \| b` is a choice, not a pipe


def commands_named(text: str) -> Iterator[list[str]]:
    """The words after each `cdrflow` written as a command, up to the next shell operator."""
    for line in shell_lines(text):
        for match in COMMAND.finditer(line):
            command = re.split(r"\s(?:&&|;|\|\|?)\s|\s\|\s|<|>", match.group(1))[0]
            yield command.split()


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_every_cdrflow_command_and_option_named_exists(doc: Path) -> None:
    wrong = [problem for words in commands_named(doc.read_text()) for problem in problems_of(words)]
    assert not wrong, wrong


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_every_setting_named_exists(doc: Path) -> None:
    named = {
        name
        for name in SETTING.findall(doc.read_text())
        if not name.startswith(NOT_SETTINGS_PREFIX)
    }
    assert not Settings.unknown_variables(dict.fromkeys(named, "x"))


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_every_make_target_named_exists(doc: Path) -> None:
    named = {target for line in shell_lines(doc.read_text()) for target in MAKE.findall(line)}
    assert named <= make_targets(), named - make_targets()


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", without_fences(path.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        candidate, n = slug, 0
        while candidate in found:
            n += 1
            candidate = f"{slug}-{n}"
        found.add(candidate)
    return found


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_every_relative_link_and_anchor_resolves(doc: Path) -> None:
    broken = []
    for target in LINK.findall(without_fences(doc.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # http:, https:, mailto:
        path_part, _, anchor = target.partition("#")
        path = (doc.parent / path_part).resolve() if path_part else doc
        missing = not path.exists()
        if missing or (anchor and path.suffix == ".md" and anchor not in anchors(path)):
            broken.append(target)
    assert not broken, broken


def test_the_readme_is_at_most_2000_words() -> None:
    assert len((ROOT / "README.md").read_text().split()) <= 2000


def test_the_checks_catch_what_they_are_for(tmp_path: Path) -> None:
    text = (
        "```sh\n.venv/bin/cdrflow sned x\nmake rnu\n```\n"
        "`cdrflow tail --show-offsets` and `cdrflow --versoin`, CDRFLOW_BACTH_SIZE\n"
        "| `cdrflow tail [--since T \\| --offst N]` |\n"
        "```sh\nprintf x | cdrflow send --frm\n```\n"
        "[gone](nowhere.md) [here](#no-such-heading)\n"
    )
    assert [problems_of(words) for words in commands_named(text)] == [
        ["cdrflow sned: no such command"],
        ["cdrflow send --frm: no such option"],
        ["cdrflow tail --show-offsets: no such option"],
        ["cdrflow --versoin: no such option"],
        ["cdrflow tail --offst: no such option"],
    ]
    assert problems_of(["tail", "--show-offset", "'dev.#'"]) == []
    assert problems_of(["--version"]) == []
    assert [t for line in shell_lines(text) for t in MAKE.findall(line)] == ["rnu"]
    assert Settings.unknown_variables(dict.fromkeys(SETTING.findall(text), "x"))
    doc = tmp_path / "doc.md"
    doc.write_text(text)
    assert LINK.findall(text) == ["nowhere.md", "#no-such-heading"]
    assert "no-such-heading" not in anchors(doc)
