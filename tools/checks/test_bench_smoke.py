"""`make bench` works: its smoke run (seconds per figure, the shared services under names
of its own) prints every row of the table with a positive figure. Nothing here is timed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tools.bench.table import NOT_ALWAYS, ROWS


@pytest.mark.timeout(600)
def test_the_bench_smoke_run_fills_every_row(tmp_path: Path) -> None:
    output = tmp_path / "table.json"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.bench",
            "--smoke",
            "--shared",
            "--workers",
            "1",
            "--json",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(output.read_text())["rows"]
    expected = set(ROWS) - NOT_ALWAYS
    assert expected <= set(rows), f"missing rows: {sorted(expected - set(rows))}"
    assert not [key for key in rows if not rows[key]["value"] > 0], rows
    for key in expected:  # the printed table shows them too
        assert rows[key]["unit"] in run.stdout
    assert run.stdout.count("\n| ") >= len(expected)
    # The smoke run alternates two rounds of the design limit and cdrflow: both are listed.
    listed = r"of design limit \(rounds ([0-9.]+), ([0-9.]+)\)"
    rounds = re.search(listed, rows["end_to_end"]["detail"])
    assert rounds is not None, rows["end_to_end"]
    assert all(float(r) > 0 for r in rounds.groups())
