"""The sources document: a TOML file of the configured callback endpoints, read and checked.

A wrong document stops the process at start-up with one line naming the source and the
field (`SourcesError`). Parsing is pure: the caller reads the file and passes the
environment in."""

from __future__ import annotations

import codecs
import ipaddress
import re
import tomllib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from schemas.providers.books import COMMON_RECONCILE_KEYS, ReconcileSettings, read_reconcile
from schemas.source_settings import SourcesError, SourceSettings, did_you_mean
from schemas.sources import IPNetwork, Source, Sources, parse_zone

if TYPE_CHECKING:
    from schemas.providers.protocol import Provider

MIN_TOKEN_LENGTH = 16
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_TENANT = re.compile(r"[A-Za-z0-9_-]{1,64}")  # goes into routing keys: no dots
_TOKEN = re.compile(r"[A-Za-z0-9._~-]+")  # a URL path segment that needs no escaping
_CURRENCY = re.compile(r"[A-Z]{3}")  # ISO 4217


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
            f"{origin}: unknown top-level key {key!r}{did_you_mean(key, {'sources'})}"
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
