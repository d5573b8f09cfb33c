"""Settings from the environment, and log redaction."""

from __future__ import annotations

import io
import ipaddress
import logging

import pytest

from cdrflow import logs
from cdrflow.settings import Settings, SettingsError


def test_defaults_reach_localhost() -> None:
    settings = Settings.from_env({})
    assert settings.amqp_url == "amqp://guest:guest@127.0.0.1:5672/"
    assert settings.database_url == "postgresql://postgres@127.0.0.1:5432/cdrflow"
    assert (settings.raw_queue, settings.records_exchange, settings.dead_queue) == (
        "cdr.raw",
        "cdr.records",
        "cdr.dead",
    )
    assert settings.max_body_bytes == 1024 * 1024
    assert settings.effective_prefetch == settings.batch_size


def test_environment_overrides_with_types() -> None:
    settings = Settings.from_env(
        {
            "CDRFLOW_AMQP_URL": "amqp://u:p@rabbit:5672/cdr",
            "CDRFLOW_BATCH_SIZE": "250",
            "CDRFLOW_COALESCE_LINGER_MS": "0.5",
            "CDRFLOW_TRUSTED_PROXIES": "10.0.0.0/8, 192.168.1.1",
            "CDRFLOW_PREFETCH": "",  # empty means default
        }
    )
    assert settings.amqp_url == "amqp://u:p@rabbit:5672/cdr"
    assert settings.batch_size == 250
    assert settings.coalesce_linger_ms == 0.5
    assert settings.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.168.1.1/32"),
    )
    assert settings.effective_prefetch == 250


def test_a_bad_number_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="CDRFLOW_BATCH_SIZE"):
        Settings.from_env({"CDRFLOW_BATCH_SIZE": "lots"})


def test_topology_carries_the_delivery_limit_and_dead_lettering() -> None:
    topology = Settings(raw_queue="q", dead_exchange="d", delivery_limit=7).topology()
    assert topology.raw_queue.arguments == {
        "x-queue-type": "quorum",
        "x-delivery-limit": 7,
        "x-dead-letter-exchange": "d",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


SECRET_URL = "/v1/callbacks/nx-cc/super-secret-token-1"


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        (f"GET {SECRET_URL}?x=1 HTTP/1.1", "super-secret-token-1"),
        ("amqp://admin:hunter2hunter2@rabbit:5672/", "hunter2hunter2"),
        ("postgresql://cdr:pg-password-9@db/cdrflow", "pg-password-9"),
        ("the app secret is configured-secret-1 here", "configured-secret-1"),
    ],
)
def test_the_redactor_scrubs_tokens_passwords_and_known_secrets(text: str, leak: str) -> None:
    redactor = logs.Redactor(["configured-secret-1"])
    scrubbed = redactor.scrub(text)
    assert leak not in scrubbed
    assert logs.REDACTED in scrubbed


def test_library_log_lines_are_redacted_too() -> None:
    stream = io.StringIO()
    logs.configure("info", "json", stream)
    try:
        logs.REDACTOR.add(["known-secret-abc"])
        logging.getLogger("aiohttp.server").error(
            "Error handling %s with known-secret-abc", SECRET_URL
        )
        logs.get_logger("cdrflow.test").warning(
            "event", url=SECRET_URL, nested={"k": ["known-secret-abc"]}
        )
        try:
            raise ValueError(f"boom at {SECRET_URL}")
        except ValueError:
            logs.get_logger("cdrflow.test").exception("crashed")
    finally:
        logs.REDACTOR.secrets.remove("known-secret-abc")
        logs.configure("warning", "json", io.StringIO())
    output = stream.getvalue()
    assert output.count("\n") == 3  # one line per event, the traceback inside its line
    assert "super-secret-token-1" not in output
    assert "known-secret-abc" not in output
    assert '"event":"crashed"' in output
