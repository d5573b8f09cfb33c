"""`make run` as a newcomer runs it: when a process cannot start, it says so and fails,
rather than exiting 0 with nothing running."""

from __future__ import annotations

import subprocess
from pathlib import Path

from cdrflow.settings import Settings
from tests.support.env import child_env
from tests.support.processes import free_port
from tests.support.workers import settings_env

ROOT = Path(__file__).parents[2]


def test_make_run_fails_with_a_message_when_the_sources_file_is_wrong(
    settings: Settings, tmp_path: Path
) -> None:
    wrong = tmp_path / "sources.toml"
    wrong.write_text('[sources.x]\nprovider = "no.such_provider"\n')
    env = child_env(settings_env(settings), {"CDRFLOW_SOURCES": str(wrong)})
    result = subprocess.run(
        ["make", "--no-print-directory", "run", f"PORT={free_port()}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "make run: a process failed (exit 2); the others were stopped" in result.stderr
    assert "no.such_provider" in result.stderr
