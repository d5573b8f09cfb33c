"""The operator's commands as they are run: `--version`, settings refused at start-up with
one line, `check` asking RabbitMQ and PostgreSQL, `replay` refusing what it cannot do and
telling how far it got."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from cdrflow.health import version
from cdrflow.settings import Settings
from tests.support.processes import cdrflow, free_port
from tests.support.sources import ENVIRON, SOURCES_TOML
from tests.support.workers import settings_env


def _env(settings: Settings, tmp_path: Path, **changes: str) -> dict[str, str]:
    path = tmp_path / "sources.toml"
    path.write_text(SOURCES_TOML)
    return {**settings_env(settings), "CDRFLOW_SOURCES": str(path), **ENVIRON, **changes}


def test_version() -> None:
    result = cdrflow("--version", env={})
    assert result.returncode == 0
    assert result.stdout.strip() == f"cdrflow {version()} (records schema_version 1)"


@pytest.mark.parametrize("command", ["ingress", "worker", "check"])
@pytest.mark.parametrize(
    ("variable", "raw", "line"),
    [
        ("CDRFLOW_BATCH_SIZE", "-5", "CDRFLOW_BATCH_SIZE: must be at least 1 (got -5)"),
        ("CDRFLOW_CONFIRM_TIMEOUT", "later", "CDRFLOW_CONFIRM_TIMEOUT: must be a number"),
        ("CDRFLOW_LOG_FORMAT", "xml", "CDRFLOW_LOG_FORMAT: must be one of auto, json, console"),
    ],
)
def test_a_wrong_setting_stops_a_command_with_one_line(
    settings: Settings, tmp_path: Path, command: str, variable: str, raw: str, line: str
) -> None:
    result = cdrflow(command, env=_env(settings, tmp_path, **{variable: raw}), timeout=20)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"cdrflow: {line}")


def test_check_names_an_unknown_variable_and_says_both_services_answer(
    settings: Settings, tmp_path: Path
) -> None:
    result = cdrflow("check", env=_env(settings, tmp_path, CDRFLOW_BACTH_SIZE="10"))
    assert result.returncode == 0, result.stderr
    assert "CDRFLOW_BACTH_SIZE: not a setting, ignored; did you mean CDRFLOW_BATCH_SIZE?" in (
        result.stderr
    )
    assert "broker: answers (127.0.0.1:5672)" in result.stdout
    assert "database: answers, schema version" in result.stdout


def test_check_fails_when_the_broker_and_database_do_not_answer(
    settings: Settings, tmp_path: Path
) -> None:
    env = _env(
        settings,
        tmp_path,
        CDRFLOW_AMQP_URL=f"amqp://guest:pw-not-shown@127.0.0.1:{free_port()}/",
        CDRFLOW_DATABASE_URL=f"postgresql://postgres:pw-not-shown@127.0.0.1:{free_port()}/x",
    )
    result = cdrflow("check", env=env, timeout=30)
    assert result.returncode == 1
    out = result.stdout.splitlines()
    assert any(line.startswith("broker: did not answer (127.0.0.1:") for line in out), out
    assert any(line.startswith("database: did not answer: ") for line in out), out
    assert "pw-not-shown" not in result.stdout + result.stderr


def test_check_says_when_the_schema_is_behind(settings: Settings, tmp_path: Path) -> None:
    url = settings.database_url.rsplit("/", 1)[0] + "/postgres"  # answers; never migrated
    result = cdrflow("check", env=_env(settings, tmp_path, CDRFLOW_DATABASE_URL=url))
    assert result.returncode == 1
    assert "database: answers, but schema version 0, this release needs" in result.stdout


def test_replay_refuses_an_unknown_reason_and_a_bad_time(
    settings: Settings, tmp_path: Path
) -> None:
    env = _env(settings, tmp_path)
    wrong = cdrflow("replay", "--reason", "unparsable_body", env=env)
    assert wrong.returncode == 2
    assert "unknown reason 'unparsable_body'; known: empty_body, unparseable_body," in (
        wrong.stderr
    )
    bad_time = cdrflow("replay", "--since", "yesterday", env=env)
    assert bad_time.returncode == 2
    assert "'yesterday' is not an ISO 8601 time" in bad_time.stderr
    backwards = cdrflow(
        "replay", "--since", "2026-02-01", "--until", "2026-01-01", "--dry-run", env=env
    )
    assert backwards.returncode == 2
    assert "--since (2026-02-01 00:00:00+00:00) must be before --until" in backwards.stderr


async def test_replay_stops_at_its_limit_and_logs_progress(
    settings: Settings, tmp_path: Path, db: asyncpg.Connection
) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    for hour in range(3):
        await db.execute(
            "INSERT INTO rejected_callbacks (ingest_id, item, source, tenant, provider,"
            " received_at, reason, message, request, body)"
            " VALUES ($1, -1, 'nx-cc', 'acme', 'nxcloud.call_center_report', $2,"
            " 'unparseable_body', 'm', '{}', '{')",
            uuid.uuid4(),
            t0 + timedelta(hours=hour),
        )
    env = _env(settings, tmp_path, CDRFLOW_LOG_FORMAT="json")
    result = cdrflow("replay", "--limit", "2", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "2 request(s) sent again",
        "the limit (2) was reached: more may be waiting",
    ]
    progress = [line for line in result.stderr.splitlines() if '"replay_progress"' in line]
    assert progress, result.stderr
    assert '"done":2' in progress[-1]
    assert '"total":2' in progress[-1]
    replayed = await db.fetch("SELECT received_at FROM rejected_callbacks WHERE replay_count = 1")
    assert sorted(r["received_at"] for r in replayed) == [t0, t0 + timedelta(hours=1)]
