"""The sources file: parsed and checked at start-up; a wrong one is one clear line."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from schemas.providers import Registry, default_registry
from schemas.providers.nxcloud_voice_report import NXCloudVoiceReport
from schemas.providers.signing import SigningConfig
from schemas.source_settings import SourcesError, SourceSettings
from schemas.sources import Sources, parse_zone
from schemas.sources_file import parse_sources

GOOD = """
[sources.nxcloud-cc]
provider = "nxcloud.call_center_report"
tenant = "acme"
token_env = "NXCLOUD_CC_TOKEN"
timezone = "+08:00"

[sources.huawei-release]
provider = "huawei.aicc_release"
token = "0123456789abcdef"
timezone = "Asia/Shanghai"
signing = "sha256"
secret_env = "HUAWEI_APP_SECRET"
max_skew_seconds = 120
allow_cidrs = ["203.0.113.0/24", "2001:db8::/32"]
"""
ENV = {"NXCLOUD_CC_TOKEN": "cc-token-from-env-1", "HUAWEI_APP_SECRET": "app-secret"}


def parse(text: str, environ: dict[str, str] | None = None, **kwargs: bool) -> Sources:
    return parse_sources(
        text,
        origin="sources.toml",
        environ=ENV if environ is None else environ,
        providers=default_registry(),
        **kwargs,
    )


def test_the_spec_example_parses() -> None:
    sources = parse(GOOD)
    cc, hw = sources["nxcloud-cc"], sources["huawei-release"]
    assert (cc.provider, cc.tenant, cc.token, cc.signing) == (
        "nxcloud.call_center_report",
        "acme",
        "cc-token-from-env-1",
        "none",
    )
    assert cc.timezone.utcoffset(None) == timedelta(hours=8)
    assert isinstance(hw.config, SigningConfig)  # the provider's settings, as it read them
    assert (hw.tenant, hw.config.secret, hw.config.max_skew_seconds) == (
        "default",
        "app-secret",
        120,
    )
    assert hw.allows("203.0.113.77")
    assert hw.allows("2001:db8::1")
    assert not hw.allows("198.51.100.1")
    assert not hw.allows("not-an-address")
    assert cc.allows("198.51.100.1")  # no allowlist: any address
    assert sorted(sources.secrets()) == ["0123456789abcdef", "app-secret", "cc-token-from-env-1"]


def test_tokens_compare_whole() -> None:
    source = parse(GOOD)["huawei-release"]
    assert source.token_matches("0123456789abcdef")
    assert not source.token_matches("0123456789abcde")
    assert not source.token_matches("0123456789abcdeF")
    assert not source.token_matches("")


def test_secrets_never_show_in_repr() -> None:
    text = repr(parse(GOOD)["huawei-release"])
    assert "0123456789abcdef" not in text
    assert "app-secret" not in text


def test_workers_need_no_secrets() -> None:
    sources = parse(GOOD, environ={}, resolve_secrets=False)
    assert sources["nxcloud-cc"].token is None
    assert sources["huawei-release"].timezone == ZoneInfo("Asia/Shanghai")


def test_a_provider_default_zone_applies_when_none_is_given() -> None:
    text = '[sources.dr]\nprovider = "nxcloud.voice_dr"\ntoken = "0123456789abcdef"\n'
    assert parse(text)["dr"].timezone.utcoffset(None) == timedelta(hours=8)


BAD = [
    ('provider = "nxcloud.nope"', "'provider': unknown provider 'nxcloud.nope'"),
    ('provider = "nxcloud.voice_dr"\ntoken = "short"', "'token': must be at least 16 characters"),
    ('provider = "nxcloud.voice_dr"\ntoken = "0123456789abcdef/x"', "'token': only letters"),
    ('provider = "nxcloud.voice_dr"', "'token': is required"),
    (
        'provider = "nxcloud.voice_dr"\ntoken_env = "UNSET_VAR"',
        "'token_env': environment variable UNSET_VAR is not set",
    ),
    (
        'provider = "nxcloud.voice_dr"\ntoken = "0123456789abcdef"\ntimezone = "Mars/Olympus"',
        "'timezone': unknown time zone 'Mars/Olympus'",
    ),
    (
        'provider = "nxcloud.voice_dr"\ntoken = "0123456789abcdef"\ncolour = "red"',
        "'colour': unknown key",
    ),
    (
        'provider = "nxcloud.voice_dr"\ntoken = "0123456789abcdef"\ntenent = "acme"',
        "'tenent': unknown key; did you mean 'tenant'?",
    ),
    (
        'provider = "huawei.aicc_release"\ntoken = "0123456789abcdef"\nsigning = "sha256"\n'
        'secret = "x"\nmax_skew_second = 60',
        "'max_skew_second': unknown key; did you mean 'max_skew_seconds'?",
    ),
    (
        'provider = "nxcloud.voice_dr"\ntoken = "0123456789abcdef"\n'
        'signing = "sha256"\nsecret = "x"',
        "'signing': provider nxcloud.voice_dr does not sign",
    ),
    (
        'provider = "huawei.aicc_release"\ntoken = "0123456789abcdef"\nsigning = "md5"',
        "'signing': must be one of",
    ),
    (
        'provider = "huawei.aicc_release"\ntoken = "0123456789abcdef"\nsigning = "sha256"',
        "'secret': is required",
    ),
    (
        'provider = "huawei.aicc_release"\ntoken = "0123456789abcdef"\n'
        'signing = "hmac-sha256"\nsecret_env = "NOPE"',
        "'secret_env': environment variable NOPE is not set",
    ),
    (
        'provider = "nxcloud.voice_dr"\ntoken = "0123456789abcdef"\nallow_cidrs = ["10.0.0.0/33"]',
        "'allow_cidrs': '10.0.0.0/33' is not a CIDR",
    ),
    (
        'provider = "nxcloud.voice_dr"\ntoken = "0123456789abcdef"\ntenant = "a.b"',
        "'tenant': must be letters",
    ),
    (
        'provider = "nxcloud.voice_dr"\ntoken = "0123456789abcdef"\nmax_skew_seconds = -1',
        "'max_skew_seconds'",
    ),
    (
        'provider = "nxcloud.voice_dr"\ntoken = "0123456789abcdef"\ntoken_env = "X"',
        "set both 'token' and 'token_env'",
    ),
]


@pytest.mark.parametrize(("body", "problem"), BAD)
def test_a_wrong_source_is_one_line_naming_source_and_field(body: str, problem: str) -> None:
    with pytest.raises(SourcesError) as caught:
        parse(f"[sources.broken]\n{body}\n")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("sources.toml: source 'broken': field ")
    assert problem in message


def test_not_toml_and_bad_names_are_refused() -> None:
    with pytest.raises(SourcesError, match="not valid TOML"):
        parse("[sources.x\n")
    with pytest.raises(SourcesError, match="URL slug"):
        parse('[sources."a b"]\nprovider = "nxcloud.voice_dr"\ntoken = "0123456789abcdef"\n')
    with pytest.raises(
        SourcesError, match="unknown top-level key 'source'; did you mean 'sources'"
    ):
        parse("[source.x]\n")


@pytest.mark.parametrize(
    ("text", "offset"),
    [("+08:00", 8 * 60), ("-05:30", -(5 * 60 + 30)), ("+0800", 8 * 60), ("UTC", 0), ("Z", 0)],
)
def test_fixed_offsets(text: str, offset: int) -> None:
    assert parse_zone(text).utcoffset(None) == timedelta(minutes=offset)


def test_iana_zones_follow_daylight_saving() -> None:
    zone = parse_zone("America/New_York")
    assert datetime(2024, 1, 15, 12, tzinfo=zone).astimezone(UTC).hour == 17
    assert datetime(2024, 7, 15, 12, tzinfo=zone).astimezone(UTC).hour == 16


@pytest.mark.parametrize("text", ["+25:00", "Nowhere/City", "8", ""])
def test_bad_zones(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        parse_zone(text)


def test_zone_objects() -> None:
    assert parse_zone("+08:00") == timezone(timedelta(hours=8))


@dataclass(frozen=True)
class RegionConfig:
    region: str
    signing: str = "none"

    def secrets(self) -> tuple[str, ...]:
        return ()


class RegionalReport(NXCloudVoiceReport):
    """A provider with a setting of its own: sources.py knows nothing of `region`."""

    name = "test.regional"

    def configure(self, settings: SourceSettings) -> RegionConfig:  # type: ignore[override]
        region = settings.string("region", required=True) or ""
        if region not in ("eu", "us"):
            raise settings.fail("region", "must be eu or us")
        return RegionConfig(region)


def test_a_provider_declares_and_checks_its_own_settings() -> None:
    providers = Registry([RegionalReport()])
    head = '[sources.r]\nprovider = "test.regional"\ntoken = "0123456789abcdef"\n'

    def parse_with(extra: str) -> Sources:
        return parse_sources(head + extra, origin="s.toml", environ={}, providers=providers)

    assert parse_with('region = "eu"\n')["r"].config == RegionConfig("eu")
    with pytest.raises(SourcesError, match=r"^s\.toml: source 'r': field 'region': must be eu"):
        parse_with('region = "mars"\n')
    with pytest.raises(SourcesError, match="field 'signing': unknown key"):  # not its setting
        parse_with('region = "eu"\nsigning = "sha256"\n')
