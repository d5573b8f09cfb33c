"""The sources every integration test uses: a few hand-written ones for the cases they
name (signing, allowlists, zones), and one plain source per registered provider, made
from the registry, so that a new provider is tested end to end without a line here."""

from __future__ import annotations

import hashlib

from schemas.providers import default_registry
from schemas.sources import Sources
from schemas.sources_file import parse_sources

TOKENS = {
    "nx-voice": "tok-voice-0123456789",
    "nx-cc": "tok-cc-0123456789abc",
    "nx-dr": "tok-dr-0123456789abc",
    "hw": "tok-hw-0123456789abc",
    "hw-hmac": "tok-hwh-0123456789ab",
    "hw-sha": "tok-hws-0123456789ab",
    "fenced": "tok-fenced-012345678",
}


def provider_source(provider: str) -> str:
    """The name of the plain test source of a registered provider."""
    return "p-" + provider.replace(".", "-")


def _plain_source(provider: str) -> str:
    token = "tok-" + hashlib.sha256(provider.encode()).hexdigest()[:24]
    TOKENS[provider_source(provider)] = token
    return f'\n[sources.{provider_source(provider)}]\nprovider = "{provider}"\ntoken = "{token}"\n'


SECRETS = {"hw-hmac": "hmac-app-secret-42", "hw-sha": "sha-app-secret-42"}

SOURCES_TOML = f"""
[sources.nx-voice]
provider = "nxcloud.voice_report"
tenant = "acme"
token = "{TOKENS["nx-voice"]}"

[sources.nx-cc]
provider = "nxcloud.call_center_report"
tenant = "acme"
token = "{TOKENS["nx-cc"]}"
timezone = "+08:00"

[sources.nx-dr]
provider = "nxcloud.voice_dr"
tenant = "globex"
token = "{TOKENS["nx-dr"]}"
timezone = "+08:00"

[sources.hw]
provider = "huawei.aicc_release"
tenant = "acme"
token = "{TOKENS["hw"]}"
timezone = "Asia/Shanghai"

[sources.hw-hmac]
provider = "huawei.aicc_release"
token = "{TOKENS["hw-hmac"]}"
signing = "hmac-sha256"
secret_env = "TEST_HW_HMAC_SECRET"
max_skew_seconds = 300

[sources.hw-sha]
provider = "huawei.aicc_release"
token = "{TOKENS["hw-sha"]}"
signing = "sha256"
secret = "{SECRETS["hw-sha"]}"

[sources.fenced]
provider = "nxcloud.voice_report"
token = "{TOKENS["fenced"]}"
allow_cidrs = ["203.0.113.0/24"]
""" + "".join(_plain_source(name) for name in default_registry())

ENVIRON = {"TEST_HW_HMAC_SECRET": SECRETS["hw-hmac"]}


def load_test_sources() -> Sources:
    return parse_sources(
        SOURCES_TOML, origin="tests", environ=ENVIRON, providers=default_registry()
    )


def callback_path(source: str, token: str | None = None) -> str:
    return f"/v1/callbacks/{source}/{token or TOKENS[source]}"
