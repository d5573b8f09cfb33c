"""Sources: the configured callback endpoints, read from a TOML document.

A wrong document stops the process at start-up with one line naming the source and the
field (`SourcesError`). Parsing is pure: the caller reads the file and passes the
environment in."""

from __future__ import annotations

import hmac
import ipaddress
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, timedelta, timezone, tzinfo
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

if TYPE_CHECKING:
    from schemas.providers.protocol import Provider

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SIGNING_MODES = ("none", "sha256", "hmac-sha256")
MIN_TOKEN_LENGTH = 16
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_TENANT = re.compile(r"[A-Za-z0-9_-]{1,64}")  # goes into routing keys: no dots
_TOKEN = re.compile(r"[A-Za-z0-9._~-]+")  # a URL path segment that needs no escaping
_OFFSET = re.compile(r"([+-])(\d{2}):?(\d{2})")
_KEYS = frozenset(
    {
        "provider",
        "tenant",
        "token",
        "token_env",
        "timezone",
        "signing",
        "secret",
        "secret_env",
        "max_skew_seconds",
        "allow_cidrs",
    }
)


class SourcesError(ValueError):
    """The sources document is wrong; the message is one line naming source and field."""


def parse_zone(text: str) -> tzinfo:
    """ "+08:00", "-0530", "UTC", "Z" or an IANA name such as "Asia/Shanghai"."""
    if text in ("UTC", "Z", "utc"):
        return UTC
    offset = _OFFSET.fullmatch(text)
    if offset:
        sign, hours, minutes = offset.groups()
        delta = timedelta(hours=int(hours), minutes=int(minutes))
        if delta >= timedelta(hours=24):
            raise ValueError(f"offset {text!r} is out of range")
        return timezone(-delta if sign == "-" else delta)
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {text!r}") from exc


@dataclass(frozen=True, slots=True)
class Source:
    name: str
    provider: str
    tenant: str
    timezone: tzinfo
    timezone_name: str
    token: str | None = field(default=None, repr=False)
    signing: str = "none"
    secret: str | None = field(default=None, repr=False)
    max_skew_seconds: int = 300
    allow_cidrs: tuple[IPNetwork, ...] = ()

    def token_matches(self, candidate: str) -> bool:
        expected = (self.token or "").encode()
        return hmac.compare_digest(candidate.encode(), expected) and bool(expected)

    def allows(self, address: str) -> bool:
        if not self.allow_cidrs:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.allow_cidrs)


class Sources(Mapping[str, Source]):
    def __init__(self, sources: Mapping[str, Source], origin: str = "<sources>") -> None:
        self._sources = dict(sources)
        self.origin = origin

    def __getitem__(self, name: str) -> Source:
        return self._sources[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._sources)

    def __len__(self) -> int:
        return len(self._sources)

    def secrets(self) -> list[str]:
        """Every token and signing secret, for log redaction."""
        found = [s.token for s in self._sources.values() if s.token]
        found += [s.secret for s in self._sources.values() if s.secret]
        return found


def parse_sources(
    text: str,
    *,
    origin: str,
    environ: Mapping[str, str],
    providers: Mapping[str, Provider],
    resolve_secrets: bool = True,
) -> Sources:
    """Parse and check a sources document. With `resolve_secrets=False` (workers, which
    never authenticate anything) tokens and secrets are not looked up."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SourcesError(f"{origin}: not valid TOML: {exc}") from exc
    unknown_top = set(document) - {"sources"}
    if unknown_top:
        raise SourcesError(f"{origin}: unknown top-level key {sorted(unknown_top)[0]!r}")
    table = document.get("sources", {})
    if not isinstance(table, dict):
        raise SourcesError(f"{origin}: [sources] must be a table")
    parsed = {}
    for name, entry in table.items():
        where = f"{origin}: source {name!r}"
        if not _NAME.fullmatch(name):
            raise SourcesError(f"{where}: name must be letters, digits, '-' or '_' (a URL slug)")
        if not isinstance(entry, dict):
            raise SourcesError(f"{where}: must be a table")
        parsed[name] = _parse_source(name, entry, where, environ, providers, resolve_secrets)
    return Sources(parsed, origin)


def _parse_source(
    name: str,
    entry: dict[str, Any],
    where: str,
    environ: Mapping[str, str],
    providers: Mapping[str, Provider],
    resolve_secrets: bool,
) -> Source:
    def fail(key: str, problem: str) -> SourcesError:
        return SourcesError(f"{where}: field {key!r}: {problem}")

    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        raise fail(unknown[0], "unknown key")
    provider_name = _string(entry, "provider", fail, required=True) or ""
    if provider_name not in providers:
        known = ", ".join(sorted(providers))
        raise fail("provider", f"unknown provider {provider_name!r} (known: {known})")
    provider = providers[provider_name]
    tenant = _string(entry, "tenant", fail) or "default"
    if not _TENANT.fullmatch(tenant):
        raise fail("tenant", "must be letters, digits, '-' or '_'")
    zone_name = _string(entry, "timezone", fail) or provider.default_timezone
    try:
        zone = parse_zone(zone_name)
    except ValueError as exc:
        raise fail("timezone", str(exc)) from exc

    token = _secret(entry, "token", environ, fail, resolve_secrets, required=True)
    if token is not None:
        if len(token) < MIN_TOKEN_LENGTH:
            raise fail("token", f"must be at least {MIN_TOKEN_LENGTH} characters")
        if not _TOKEN.fullmatch(token):
            raise fail("token", "only letters, digits and '-._~' may appear in a URL token")

    signing = _string(entry, "signing", fail) or "none"
    if signing not in SIGNING_MODES:
        raise fail("signing", f"must be one of {', '.join(SIGNING_MODES)}")
    if signing != "none" and signing not in provider.signing_modes:
        raise fail("signing", f"provider {provider_name} does not sign its callbacks")
    secret = None
    if signing != "none":
        secret = _secret(entry, "secret", environ, fail, resolve_secrets, required=True)
    elif "secret" in entry or "secret_env" in entry:
        raise fail("secret", 'set, but signing is "none"')

    skew = entry.get("max_skew_seconds", 300)
    if not isinstance(skew, int) or isinstance(skew, bool) or skew <= 0:
        raise fail("max_skew_seconds", "must be a positive whole number of seconds")

    cidrs = entry.get("allow_cidrs", [])
    if not isinstance(cidrs, list):
        raise fail("allow_cidrs", "must be a list of CIDR strings")
    networks = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(str(cidr), strict=False))
        except ValueError as exc:
            raise fail("allow_cidrs", f"{cidr!r} is not a CIDR ({exc})") from exc

    return Source(
        name=name,
        provider=provider_name,
        tenant=tenant,
        timezone=zone,
        timezone_name=zone_name,
        token=token,
        signing=signing,
        secret=secret,
        max_skew_seconds=skew,
        allow_cidrs=tuple(networks),
    )


def _string(entry: dict[str, Any], key: str, fail: Any, *, required: bool = False) -> str | None:
    value = entry.get(key)
    if value is None:
        if required:
            raise fail(key, "is required")
        return None
    if not isinstance(value, str) or not value.strip():
        raise fail(key, "must be a non-empty string")
    return value.strip()


def _secret(
    entry: dict[str, Any],
    key: str,
    environ: Mapping[str, str],
    fail: Any,
    resolve: bool,
    *,
    required: bool,
) -> str | None:
    env_key = f"{key}_env"
    if key in entry and env_key in entry:
        raise fail(key, f"set both {key!r} and {env_key!r}; choose one")
    if env_key in entry:
        variable = _string(entry, env_key, fail)
        if not resolve:
            return None
        value = environ.get(variable or "")
        if not value:
            raise fail(env_key, f"environment variable {variable} is not set")
        return value
    if key in entry:
        return _string(entry, key, fail) if resolve else None
    if required:
        raise fail(key, f"is required (or {env_key!r})")
    return None
