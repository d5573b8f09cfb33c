"""Settings are checked when they are made: one line naming the variable, for a wrong type,
a value out of range or a word not allowed; an unknown CDRFLOW_* variable is named."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pydantic_settings
import pytest

from cdrflow.progress import Progress
from cdrflow.settings import LOG_FORMATS, LOG_LEVELS, Settings, SettingsError


def test_every_default_is_valid_and_kept() -> None:
    assert Settings.from_env({}) == Settings()
    assert (Settings().batch_size, Settings().log_level, Settings().log_format) == (
        500,
        "info",
        "auto",
    )


@pytest.mark.parametrize(
    ("variable", "raw", "message"),
    [
        ("CDRFLOW_BATCH_SIZE", "-5", "CDRFLOW_BATCH_SIZE: must be at least 1 (got -5)"),
        ("CDRFLOW_BATCH_SIZE", "0", "CDRFLOW_BATCH_SIZE: must be at least 1 (got 0)"),
        ("CDRFLOW_BATCH_SIZE", "lots", "CDRFLOW_BATCH_SIZE: must be a whole number (got 'lots')"),
        ("CDRFLOW_BATCH_SIZE", "2.5", "CDRFLOW_BATCH_SIZE: must be a whole number (got '2.5')"),
        ("CDRFLOW_CONFIRM_TIMEOUT", "0", "CDRFLOW_CONFIRM_TIMEOUT: must be more than 0 (got 0.0)"),
        ("CDRFLOW_HEADER_TIMEOUT", "soon", "CDRFLOW_HEADER_TIMEOUT: must be a number (got 'soon')"),
        ("CDRFLOW_SHUTDOWN_TIMEOUT", "nan", "CDRFLOW_SHUTDOWN_TIMEOUT: must be a finite number"),
        ("CDRFLOW_DRAIN_SECONDS", "-1", "CDRFLOW_DRAIN_SECONDS: must be at least 0 (got -1.0)"),
        ("CDRFLOW_SPOOL_MAX_BYTES", "-1", "CDRFLOW_SPOOL_MAX_BYTES: must be at least 0 (got -1)"),
        ("CDRFLOW_WORKER_PORT", "70000", "CDRFLOW_WORKER_PORT: must be 0 to 65535 (got 70000)"),
        (
            "CDRFLOW_LOG_LEVEL",
            "verbose",
            "CDRFLOW_LOG_LEVEL: must be one of debug, info, warning, error, critical"
            " (got 'verbose')",
        ),
        (
            "CDRFLOW_LOG_FORMAT",
            "xml",
            "CDRFLOW_LOG_FORMAT: must be one of auto, json, console (got 'xml')",
        ),
        (
            "CDRFLOW_AMQP_URL",
            "http://admin:s3cret@rabbit/",
            "CDRFLOW_AMQP_URL: must be a URL starting with amqp:// or amqps://",
        ),
        (
            "CDRFLOW_DATABASE_URL",
            "mysql://db/cdr",
            "CDRFLOW_DATABASE_URL: must be a URL starting with postgresql:// or postgres://",
        ),
        ("CDRFLOW_TRUSTED_PROXIES", "10.0.0.300/8", "CDRFLOW_TRUSTED_PROXIES: "),
    ],
)
def test_each_kind_of_wrong_value_is_one_line_naming_the_variable(
    variable: str, raw: str, message: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({variable: raw})
    text = str(caught.value)
    assert text.startswith(message)
    assert "\n" not in text
    assert "s3cret" not in text  # a URL is never repeated: it may hold a password


def test_values_given_in_code_are_checked_too() -> None:
    with pytest.raises(SettingsError, match="CDRFLOW_BATCH_SIZE: must be at least 1"):
        Settings().with_(batch_size=-1)
    with pytest.raises(SettingsError, match="CDRFLOW_PREFETCH: must be a whole number"):
        Settings(prefetch="10")  # type: ignore[arg-type]


def test_allowed_words_and_limits_pass() -> None:
    for level in (*LOG_LEVELS, "DEBUG"):  # any case, kept as the list writes it
        assert Settings.from_env({"CDRFLOW_LOG_LEVEL": level}).log_level == level.lower()
    for fmt in LOG_FORMATS:
        assert Settings.from_env({"CDRFLOW_LOG_FORMAT": fmt}).log_format == fmt
    edge = Settings.from_env(
        {
            "CDRFLOW_SPOOL_MAX_BYTES": "0",  # no spool
            "CDRFLOW_WORKER_PORT": "0",  # not served
            "CDRFLOW_PREFETCH": "0",  # same as the batch size
            "CDRFLOW_AMQP_URL": "amqps://a/,amqp://b:5673/",
        }
    )
    assert (edge.spool_max_bytes, edge.worker_port, edge.prefetch) == (0, 0, 0)


def test_unknown_variables_are_named_with_the_likely_setting() -> None:
    found = Settings.unknown_variables(
        {
            "CDRFLOW_BATCH_SZE": "10",
            "CDRFLOW_BATCH_SIZE": "10",
            "CDRFLOW_COLOUR": "blue",
            "CDRFLOW_TEST_AMQP_URL": "amqp://x/",  # the test suite's own
            "PATH": "/bin",
        }
    )
    assert found == [
        "CDRFLOW_BATCH_SZE: not a setting, ignored; did you mean CDRFLOW_BATCH_SIZE?",
        "CDRFLOW_COLOUR: not a setting, ignored",
    ]


@pytest.mark.parametrize(
    "name", [name for name, f in Settings.model_fields.items() if f.annotation in (int, float)]
)
def test_no_number_may_be_negative(name: str) -> None:
    """A new numeric setting cannot leave out its range: a floor of 0 at least."""
    with pytest.raises(SettingsError, match=f"^{Settings.variable(name)}: must be "):
        Settings.from_env({Settings.variable(name): "-1"})


def test_from_env_reads_the_mapping_it_is_given_not_os_environ(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """cdrflow.settings points pydantic-settings' environment reader at a mapping by
    overriding EnvSettingsSource._load_env_vars, as its own .env reader does."""
    monkeypatch.setenv("CDRFLOW_BATCH_SIZE", "7")
    read = Settings.from_env({"CDRFLOW_BATCH_SIZE": "9"}).batch_size
    assert read == 9, (
        f"pydantic-settings {pydantic_settings.__version__} no longer reads the mapping "
        "given: see _Variables in cdrflow/settings.py"
    )


def test_settings_in_code_ignore_the_environment_which_only_from_env_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CDRFLOW_BATCH_SIZE", "7")
    monkeypatch.setenv("CDRFLOW_LOG_FORMAT", "")  # empty: the default
    monkeypatch.setenv("cdrflow_prefetch", "3")  # not a setting's name: ignored
    assert Settings().batch_size == 500
    from_env = Settings.from_env()
    assert (from_env.batch_size, from_env.log_format, from_env.prefetch) == (7, "auto", 0)
    assert from_env.with_(batch_size=9).batch_size == 9


def test_secrets_are_left_out_of_the_repr() -> None:
    settings = Settings(
        amqp_url="amqp://cdr:rabbit-pw@a/,amqp://cdr:rabbit-pw@b/",
        database_url="postgresql://cdr:db-pw@db/cdr",
        console_database_url="postgresql://viewer:view-pw@db/cdr",
        console_secret="k" * 40,
    )
    shown = repr(settings)
    for secret in ("rabbit-pw", "db-pw", "view-pw", "k" * 40):
        assert secret not in shown
    assert "amqp://cdr:[redacted]@b/" in shown
    assert "console_secret" not in shown


def test_every_setting_is_in_a_settings_table_of_the_docs() -> None:
    rows = "\n".join(
        line
        for doc in (Path(__file__).parents[2] / "docs").glob("*.md")
        for line in doc.read_text(encoding="utf-8").splitlines()
        if line.startswith("|")
    )
    documented = set(re.findall(r"`(CDRFLOW_[A-Z0-9_]+)`", rows))
    variables = [Settings.variable(name) for name in Settings.model_fields]
    assert [name for name in variables if name not in documented] == []


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_a_bar_on_a_terminal_with_its_fields() -> None:
    screen = Terminal()
    progress = Progress(None, unit="answer", event="x_progress", stream=screen)
    progress.expect(3)
    for _ in range(3):
        progress.update(1, sent=3, **{"200": 2})
    progress.close()
    drawn = screen.getvalue()
    assert "3/3" in drawn
    assert "answer" in drawn
    assert "sent=3" in drawn


def test_progress_off_a_terminal_logs_lines(log_output: io.StringIO) -> None:
    progress = Progress(
        5, unit="request", event="replay_progress", stream=io.StringIO(), log_every=0
    )
    progress.update(2)
    progress.update(3, errors=0)
    progress.close()
    lines = [line for line in log_output.getvalue().splitlines() if "replay_progress" in line]
    assert len(lines) == 3  # each update (no wait between lines here), and the end
    assert '"done":5' in lines[-1]
    assert '"total":5' in lines[-1]
