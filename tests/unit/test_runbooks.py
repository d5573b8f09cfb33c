"""deploy/check/runbooks.py: the anchors it expects are the ones GitHub renders, and every
alert of deploy/prometheus/alerts.yaml links a section of docs/runbooks.md."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _runbooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("runbooks", ROOT / "deploy/check/runbooks.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_anchors_are_githubs() -> None:
    runbooks = _runbooks()
    markdown = (
        "# Runbooks\n## CdrflowRawNoConsumer\n```sh\n## not a heading\n```\n"
        "## What `cdr.raw` holds, and why?\n## Twice\n## Twice\n"
    )
    assert list(runbooks.anchors(markdown)) == [
        (1, "runbooks"),
        (2, "cdrflowrawnoconsumer"),
        (2, "what-cdrraw-holds-and-why"),
        (2, "twice"),
        (2, "twice-1"),
    ]


def test_a_missing_section_and_an_orphan_section_are_named() -> None:
    runbooks = _runbooks()
    url = "{{ $externalLabels.cdrflow_docs }}/runbooks.md#"
    rules = [
        {"alert": "A", "annotations": {"summary": "s", "runbook_url": url + "a"}},
        {"alert": "B", "annotations": {"summary": "s", "runbook_url": url + "b"}},
        {"alert": "C", "annotations": {"runbook": "text only"}},
    ]
    found = list(runbooks.problems(rules, "## A\n## Orphan\n"))
    assert found == [
        "B: docs/runbooks.md has no section #b",
        "C: no summary",
        "C: runbook_url is not {{ $externalLabels.cdrflow_docs }}/runbooks.md#ANCHOR",
        "docs/runbooks.md#orphan: a runbook no alert links",
    ]


def test_every_alert_links_its_runbook(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    assert _runbooks().main() == 0
