"""`[sources.NAME.reconcile]`: read and checked like every other source field."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cdrflow.commands.reconcile import reconciliation_state
from schemas.providers import default_registry
from schemas.providers.nxcloud_voice_books import VoiceBooksConfig
from schemas.source_settings import SourcesError
from schemas.sources import Sources
from schemas.sources_file import parse_sources

ENVIRON = {"NX_APPKEY": "env-appkey-1", "NX_SECRETKEY": "env-secretkey-1"}
SPEC_EXAMPLE = """
[sources.nx-dr]
provider = "nxcloud.voice_dr"
token = "tok-dr-0123456789abc"

[sources.nx-dr.reconcile]
url = "http://api2.nxcloud.com/api/voiceSms/getVoiceCdr"
appkey_env = "NX_APPKEY"
secretkey_env = "NX_SECRETKEY"
voice_types = [0, 1]
lookback_hours = 72
settle_minutes = 30
interval_minutes = 15
requests_per_second = 1
page_size = 100
"""


def parse(text: str, *, books: bool = True, environ: dict[str, str] | None = None) -> Sources:
    return parse_sources(
        text,
        origin="s.toml",
        environ=ENVIRON if environ is None else environ,
        providers=default_registry(),
        reconcile_secrets=books,
    )


def test_the_spec_example_parses() -> None:
    reconcile = parse(SPEC_EXAMPLE)["nx-dr"].reconcile
    assert reconcile is not None
    assert reconcile.url == "http://api2.nxcloud.com/api/voiceSms/getVoiceCdr"
    assert reconcile.lookback == timedelta(hours=72)
    assert reconcile.settle == timedelta(minutes=30)
    assert reconcile.interval == timedelta(minutes=15)
    assert reconcile.requests_per_second == 1
    assert reconcile.page_size == 100
    assert reconcile.books == VoiceBooksConfig("env-appkey-1", "env-secretkey-1", (0, 1))


def test_defaults_and_secrets_kept_for_the_log_redactor() -> None:
    text = SPEC_EXAMPLE.split("voice_types")[0]
    sources = parse(text)
    reconcile = sources["nx-dr"].reconcile
    assert reconcile is not None
    assert reconcile.books.kinds() == ("0", "1")
    assert reconcile.page_size == 100
    assert {"env-appkey-1", "env-secretkey-1"} <= set(sources.secrets())
    assert "env-secretkey-1" not in repr(sources["nx-dr"])
    assert "env-appkey-1" not in reconcile.books.account()


def test_processes_that_do_not_reconcile_need_no_books_credentials() -> None:
    sources = parse(SPEC_EXAMPLE, books=False, environ={})
    reconcile = sources["nx-dr"].reconcile
    assert reconcile is not None
    assert reconcile.secrets() == ()


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (
            ("page_size = 100", "page_size = 0"),
            "field 'reconcile.page_size': must be 1 to 1000 (got 0)",
        ),
        (
            ("voice_types = [0, 1]", "voice_types = [2]"),
            "field 'reconcile.voice_types': must be a list of 0",
        ),
        (
            ("lookback_hours = 72", "lookback_hours = 200"),
            "field 'reconcile.lookback_hours': the provider keeps 7 days",
        ),
        (
            ("requests_per_second = 1", 'requests_per_second = "1"'),
            "field 'reconcile.requests_per_second': must be a number",
        ),
        (('url = "http', 'url = "ftp'), "field 'reconcile.url': must start with http://"),
        (
            ('appkey_env = "NX_APPKEY"', 'appkey_env = "NX_MISSING"'),
            "field 'reconcile.appkey_env': environment variable NX_MISSING is not set",
        ),
        (
            ('appkey_env = "NX_APPKEY"', ""),
            "field 'reconcile.appkey': is required (or 'appkey_env')",
        ),
        (
            ("page_size = 100", 'page_size = 100\nsecret_key = "x"'),
            "field 'reconcile.secret_key': unknown key",
        ),
    ],
)
def test_a_wrong_reconcile_table_is_one_line_naming_source_and_field(
    change: tuple[str, str], problem: str
) -> None:
    with pytest.raises(SourcesError) as caught:
        parse(SPEC_EXAMPLE.replace(*change))
    assert str(caught.value).startswith(f"s.toml: source 'nx-dr': {problem}")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "provider", [name for name, provider in default_registry().items() if provider.books is None]
)
def test_a_provider_without_books_refuses_a_reconcile_table(provider: str) -> None:
    text = SPEC_EXAMPLE.replace("nxcloud.voice_dr", provider)
    with pytest.raises(SourcesError, match=rf"field 'reconcile': provider {provider} has no books"):
        parse(text)


def test_a_voice_report_source_is_reconciled_only_when_it_states_its_ids_are_the_drs() -> None:
    text = SPEC_EXAMPLE.replace("nxcloud.voice_dr", "nxcloud.voice_report")
    with pytest.raises(SourcesError, match=r"field 'reconcile.same_ids_as_dr': must be true"):
        parse(text)
    stated = text.replace("page_size = 100", "page_size = 100\nsame_ids_as_dr = true")
    assert parse(stated)["nx-dr"].reconcile is not None


def test_check_says_how_each_source_is_reconciled() -> None:
    text = (
        SPEC_EXAMPLE
        + """
[sources.hw]
provider = "huawei.aicc_release"
token = "tok-hw-0123456789abc"

[sources.plain-dr]
provider = "nxcloud.voice_dr"
token = "tok-dr2-0123456789ab"
"""
    )
    sources = parse(text)
    assert reconciliation_state(sources["nx-dr"]) == "reconciled every 15 min over 72 h"
    assert reconciliation_state(sources["hw"]) == (
        "no reconciliation (huawei.aicc_release has no documented books)"
    )
    assert reconciliation_state(sources["plain-dr"]) == "not reconciled (no reconcile table)"
