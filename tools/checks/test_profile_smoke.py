"""`make profile` works: py-spy attaches to a real worker draining a small backlog on the
shared services, and the summary shows the worker's own code. Nothing here is timed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.timeout(120)
def test_make_profile_samples_a_draining_worker(tmp_path: Path) -> None:
    raw = tmp_path / "profile.raw"
    raw.write_text("stale (cdrflow/old.py) 999\n")  # an earlier run's file is never summarized
    run = subprocess.run(
        [
            *(sys.executable, "-m", "tools.bench.profile", "worker", "--shared"),
            *("--callbacks", "2000", "--raw", str(raw), "--top", "50"),
        ],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    heading, samples = run.stdout.splitlines()[:2]
    assert heading.startswith("one worker draining 2,000 callbacks, under py-spy:"), heading
    assert "µs of its CPU per callback" in heading
    assert int(samples.split()[0].replace(",", "")) > 0
    stacks = raw.read_text().splitlines()
    assert stacks
    assert not any("cdrflow/old.py" in line for line in stacks)
    assert all(line.rpartition(" ")[2].isdigit() for line in stacks)
    inclusive = run.stdout.split("inclusive (cdrflow's own code on the stack):")[1]
    assert "Pipeline.process_batch (workers/pipeline.py)" in inclusive
