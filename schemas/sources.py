"""Sources: the configured callback endpoints, read from a TOML document.

A wrong document stops the process at start-up with one line naming the source and the
field (`SourcesError`). Parsing is pure: the caller reads the file and passes the
environment in."""

from __future__ import annotations

import codecs
import difflib
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
    from schemas.providers.books import ReconcileSettings
    from schemas.providers.protocol import Provider, ProviderConfig

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MIN_TOKEN_LENGTH = 16
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_TENANT = re.compile(r"[A-Za-z0-9_-]{1,64}")  # goes into routing keys: no dots
_TOKEN = re.compile(r"[A-Za-z0-9._~-]+")  # a URL path segment that needs no escaping
_OFFSET = re.compile(r"([+-])(\d{2}):?(\d{2})")
_CURRENCY = re.compile(r"[A-Z]{3}")  # ISO 4217
# Every source has these; any other key is its provider's to read (`Provider.configure`).
COMMON_KEYS = frozenset(
    {
        "provider",
        "tenant",
        "token",
        "token_env",
        "timezone",
        "allow_cidrs",
        "charset",
        "currency",
        "reconcile",
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
    config: ProviderConfig  # the settings that belong to the provider, as it read them
    token: str | None = field(default=None, repr=False)
    allow_cidrs: tuple[IPNetwork, ...] = ()
    # The charset of every body of this source, whatever a request declares; None: the
    # declared one, else UTF-8, else GB18030 (`schemas.providers.bodies`).
    charset: str | None = None
    # The currency of every money column of this source's records; None: the provider's
    # rule (USD, or EUR for an NXCloud voice report with `costEur` and no `cost`).
    currency: str | None = None
    # How the source is reconciled with its provider's books (`schemas.providers.books`);
    # None: it is not (no `reconcile` table, or a provider without books).
    reconcile: ReconcileSettings | None = field(default=None, repr=False)

    @property
    def signing(self) -> str:
        """How this source's requests are signed: a mode of its provider, or "none"."""
        return self.config.signing

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
        found += [secret for s in self._sources.values() for secret in s.config.secrets()]
        return found + [
            secret
            for s in self._sources.values()
            if s.reconcile is not None
            for secret in s.reconcile.secrets()
        ]


def parse_sources(
    text: str,
    *,
    origin: str,
    environ: Mapping[str, str],
    providers: Mapping[str, Provider],
    resolve_secrets: bool = True,
    reconcile_secrets: bool = False,
) -> Sources:
    """Parse and check a sources document. With `resolve_secrets=False` (workers, which
    never authenticate anything) tokens and secrets are not looked up; the credentials of
    the providers' books only with `reconcile_secrets` (the processes that reconcile)."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SourcesError(f"{origin}: not valid TOML: {exc}") from exc
    unknown_top = set(document) - {"sources"}
    if unknown_top:
        key = sorted(unknown_top)[0]
        raise SourcesError(
            f"{origin}: unknown top-level key {key!r}{_did_you_mean(key, {'sources'})}"
        )
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
        parsed[name] = _parse_source(
            name, entry, where, environ, providers, (resolve_secrets, reconcile_secrets)
        )
    return Sources(parsed, origin)


class SourceSettings:
    """One source's entry as its provider reads it in `Provider.configure`. The provider
    takes the keys it knows; any key neither it nor the common ones took is refused.
    A problem is raised as `fail(key, problem)`: one line naming source and field."""

    def __init__(
        self,
        provider: str,
        entry: dict[str, Any],
        where: str,
        environ: Mapping[str, str],
        *,
        table: str = "",
        common: frozenset[str] = COMMON_KEYS,
    ) -> None:
        self.provider = provider
        self._entry = entry
        self._where = where
        self._environ = environ
        self._table = table  # a sub-table's name ("reconcile"), prefixed to its fields
        self.resolve_secrets = True
        self._read = set(common)

    def fail(self, key: str, problem: str) -> SourcesError:
        name = f"{self._table}.{key}" if self._table else key
        return SourcesError(f"{self._where}: field {name!r}: {problem}")

    def table(self, key: str, common: frozenset[str]) -> SourceSettings | None:
        """A sub-table (`[sources.NAME.key]`) read like the entry: one-line errors naming
        `key.field`; `common` are the keys its reader takes besides its provider's."""
        value = self.value(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.fail(key, "must be a table")
        return SourceSettings(
            self.provider, value, self._where, self._environ, table=key, common=common
        )

    def has(self, key: str) -> bool:
        return key in self._entry

    def value(self, key: str, default: Any = None) -> Any:
        self._read.add(key)
        return self._entry.get(key, default)

    def string(self, key: str, *, required: bool = False) -> str | None:
        value = self.value(key)
        if value is None:
            if required:
                raise self.fail(key, "is required")
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, "must be a non-empty string")
        return value.strip()

    def secret(self, key: str, *, required: bool) -> str | None:
        """`key` in the file, or the environment variable named by `key_env`. None when
        secrets are not resolved (workers never authenticate anything)."""
        env_key = f"{key}_env"
        self._read |= {key, env_key}
        if key in self._entry and env_key in self._entry:
            raise self.fail(key, f"set both {key!r} and {env_key!r}; choose one")
        if env_key in self._entry:
            return self._from_environ(env_key)
        if key in self._entry:
            text = self.string(key)
            return text if self.resolve_secrets else None
        if required:
            raise self.fail(key, f"is required (or {env_key!r})")
        return None

    def _from_environ(self, env_key: str) -> str | None:
        variable = self.string(env_key)
        if not self.resolve_secrets:
            return None
        value = self._environ.get(variable or "")
        if not value:
            raise self.fail(env_key, f"environment variable {variable} is not set")
        return value

    def refuse_unread(self) -> None:
        unknown = sorted(set(self._entry) - self._read)
        if unknown:
            raise self.fail(unknown[0], f"unknown key{_did_you_mean(unknown[0], self._read)}")


def _did_you_mean(key: str, known: set[str]) -> str:
    # Keys are short, so a looser cutoff than the settings' finds `tenent`.
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
    return f"; did you mean {close[0]!r}?" if close else ""


def _parse_source(
    name: str,
    entry: dict[str, Any],
    where: str,
    environ: Mapping[str, str],
    providers: Mapping[str, Provider],
    secrets: tuple[bool, bool],
) -> Source:
    settings = SourceSettings(str(entry.get("provider", "")), entry, where, environ)
    settings.resolve_secrets = secrets[0]
    provider = _provider(settings, providers)
    tenant = _tenant(settings)
    zone_name = settings.string("timezone") or provider.default_timezone
    try:
        zone = parse_zone(zone_name)
    except ValueError as exc:
        raise settings.fail("timezone", str(exc)) from exc
    token = _token(settings)
    config = provider.configure(settings)
    networks = _networks(settings)
    charset, currency = _charset(settings), _currency(settings)
    reconcile = _reconcile(settings, provider, resolve_secrets=secrets[1])
    settings.refuse_unread()
    return Source(
        name=name,
        provider=provider.name,
        tenant=tenant,
        timezone=zone,
        timezone_name=zone_name,
        config=config,
        token=token,
        allow_cidrs=networks,
        charset=charset,
        currency=currency,
        reconcile=reconcile,
    )


def _reconcile(
    settings: SourceSettings, provider: Provider, *, resolve_secrets: bool
) -> ReconcileSettings | None:
    from schemas.providers.books import COMMON_RECONCILE_KEYS, read_reconcile

    table = settings.table("reconcile", COMMON_RECONCILE_KEYS)
    if table is None:
        return None
    books = getattr(provider, "books", None)
    if books is None:
        raise settings.fail(
            "reconcile",
            f"provider {provider.name} has no books to reconcile with (docs/reconciliation.md)",
        )
    table.resolve_secrets = resolve_secrets
    reconcile = read_reconcile(table, books)
    table.refuse_unread()
    return reconcile


def _charset(settings: SourceSettings) -> str | None:
    charset = settings.string("charset")
    if charset is None:
        return None
    try:
        return codecs.lookup(charset).name
    except LookupError as exc:
        raise settings.fail("charset", f"unknown charset {charset!r}") from exc


def _currency(settings: SourceSettings) -> str | None:
    currency = settings.string("currency")
    if currency is not None and not _CURRENCY.fullmatch(currency):
        raise settings.fail("currency", "must be an ISO 4217 code of three capitals (EUR)")
    return currency


def _provider(settings: SourceSettings, providers: Mapping[str, Provider]) -> Provider:
    name = settings.string("provider", required=True) or ""
    if name not in providers:
        known = ", ".join(sorted(providers))
        raise settings.fail("provider", f"unknown provider {name!r} (known: {known})")
    return providers[name]


def _tenant(settings: SourceSettings) -> str:
    tenant = settings.string("tenant") or "default"
    if not _TENANT.fullmatch(tenant):
        raise settings.fail("tenant", "must be letters, digits, '-' or '_'")
    return tenant


def _token(settings: SourceSettings) -> str | None:
    token = settings.secret("token", required=True)
    if token is not None:
        if len(token) < MIN_TOKEN_LENGTH:
            raise settings.fail("token", f"must be at least {MIN_TOKEN_LENGTH} characters")
        if not _TOKEN.fullmatch(token):
            raise settings.fail(
                "token", "only letters, digits and '-._~' may appear in a URL token"
            )
    return token


def _networks(settings: SourceSettings) -> tuple[IPNetwork, ...]:
    cidrs = settings.value("allow_cidrs", [])
    if not isinstance(cidrs, list):
        raise settings.fail("allow_cidrs", "must be a list of CIDR strings")
    networks = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(str(cidr), strict=False))
        except ValueError as exc:
            raise settings.fail("allow_cidrs", f"{cidr!r} is not a CIDR ({exc})") from exc
    return tuple(networks)
