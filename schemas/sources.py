"""Sources: the configured callback endpoints (`Source`), as read from the sources
document (`schemas.sources_file`)."""

from __future__ import annotations

import hmac
import ipaddress
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, timedelta, timezone, tzinfo
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

if TYPE_CHECKING:
    from schemas.providers.books import ReconcileSettings
    from schemas.source_settings import ProviderConfig

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_OFFSET = re.compile(r"([+-])(\d{2}):?(\d{2})")


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
