"""`make bench-compare` works: a smoke round of this tree against a revision checked out
beside it (HEAD) gives both a positive rate, ratio and draining CPU, prints both rows, and
leaves no worktree behind. Nothing here is timed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def _worktrees() -> str:
    return subprocess.run(
        ["git", "worktree", "list"], capture_output=True, text=True, check=True
    ).stdout


@pytest.mark.timeout(400)
def test_a_smoke_comparison_measures_both_trees(tmp_path: Path) -> None:
    output = tmp_path / "rounds.json"
    command = [sys.executable, "-m", "tools.bench.compare", "--base", "HEAD", "--smoke"]
    command += ["--shared", "--rounds", "1", "--workers", "1", "--drain", "300"]
    command += ["--json", str(output)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=360, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    rounds = json.loads(output.read_text())
    assert len(rounds) == 2, rounds
    base = next(name for name in rounds if name != "this tree")
    assert base.startswith("HEAD (")
    for name, measured in rounds.items():
        assert len(measured) == 1, (name, measured)
        assert measured[0]["rate"] > 0
        assert measured[0]["design"] > 0
        assert 0 < measured[0]["ratio"] == measured[0]["rate"] / measured[0]["design"]
        assert measured[0]["workers_us"] > 0
        assert measured[0]["drain_us"] > 0
        assert f"| {name} | " in run.stdout
    assert "cdrflow-base-" not in _worktrees()
