"""The records stream in the topology: its name, type and retention, from the settings."""

from __future__ import annotations

import pytest

from cdrflow.settings import Settings, SettingsError


def test_the_stream_is_named_after_the_records_exchange_unless_named() -> None:
    assert Settings().topology().records_stream.name == "cdr.records.stream"
    assert Settings(records_exchange="x.records").topology().records_stream.name == (
        "x.records.stream"
    )
    assert Settings(records_stream="replay").topology().records_stream.name == "replay"


def test_the_stream_is_a_stream_queue_with_retention_by_age_and_size() -> None:
    settings = Settings.from_env(
        {"CDRFLOW_STREAM_MAX_AGE": "36h", "CDRFLOW_STREAM_MAX_BYTES": "5000000000"}
    )
    arguments = settings.topology().records_stream.arguments
    assert arguments["x-queue-type"] == "stream"
    assert arguments["x-max-age"] == "36h"
    assert arguments["x-max-length-bytes"] == 5_000_000_000
    assert arguments["x-stream-max-segment-size-bytes"] <= 5_000_000_000 // 10


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"stream_max_age": "7 days"}, "max age '7 days'"),
        ({"stream_max_age": "0D"}, "max age '0D'"),
        ({"stream_max_bytes": 0}, "max bytes 0"),
    ],
)
def test_retention_rabbitmq_would_refuse_is_a_settings_error(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings().with_(**changes).topology()
