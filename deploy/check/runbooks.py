"""Every alert rule has a summary and a runbook_url that resolves to a section of
docs/runbooks.md, with the anchor GitHub gives that section's heading; every section there
is some rule's runbook.

Usage (from the repository root): python deploy/check/runbooks.py"""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import yaml

ALERTS = Path("deploy/prometheus/alerts.yaml")
RUNBOOKS = Path("docs/runbooks.md")
URL_FORM = "{{ $externalLabels.cdrflow_docs }}/runbooks.md#ANCHOR"
URL = re.compile(r"\{\{ \$externalLabels\.cdrflow_docs \}\}/runbooks\.md#(?P<anchor>[a-z0-9_-]+)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")


def github_anchor(heading: str) -> str:
    """The anchor GitHub renders for a heading: markup dropped, lowercase, punctuation
    other than '-' and '_' removed, spaces to '-'."""
    text = re.sub(r"`([^`]*)`", r"\1", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(markdown: str) -> Iterator[tuple[int, str]]:
    """(level, anchor) of every heading outside code blocks; repeats get -1, -2, ..."""
    seen: Counter[str] = Counter()
    fenced = False
    for line in markdown.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        match = HEADING.match(line)
        if fenced or match is None:
            continue
        anchor = github_anchor(match.group(2))
        yield len(match.group(1)), anchor if not seen[anchor] else f"{anchor}-{seen[anchor]}"
        seen[anchor] += 1


def problems(rules: list[dict[str, object]], markdown: str) -> Iterator[str]:
    found = list(anchors(markdown))
    every = {anchor for _, anchor in found}
    sections = {anchor for level, anchor in found if level == 2}
    linked = set()
    for rule in rules:
        name = rule["alert"]
        annotations = rule.get("annotations") or {}
        assert isinstance(annotations, dict)
        if not annotations.get("summary"):
            yield f"{name}: no summary"
        match = URL.fullmatch(str(annotations.get("runbook_url", "")))
        if match is None:
            yield f"{name}: runbook_url is not {URL_FORM}"
            continue
        anchor = match.group("anchor")
        linked.add(anchor)
        if anchor not in every:
            yield f"{name}: {RUNBOOKS} has no section #{anchor}"
    for anchor in sorted(sections - linked):
        yield f"{RUNBOOKS}#{anchor}: a runbook no alert links"


def main() -> int:
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    rules = [rule for group in groups for rule in group["rules"] if "alert" in rule]
    found = list(problems(rules, RUNBOOKS.read_text(encoding="utf-8")))
    for problem in found:
        print(problem)
    if not found:
        print(f"{len(rules)} alerts, each with a summary and a runbook section in {RUNBOOKS}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
