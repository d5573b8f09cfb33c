"""Settings from environment variables (`CDRFLOW_*`), with defaults that reach RabbitMQ and
PostgreSQL on localhost.

Every value is checked when the settings are made, like the sources file: its type, its
range (`RULES`; a number without a rule must not be negative) and, for a few, the words it
may be. An error is one line that names the variable: the process does not start."""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.providers import Registry, default_registry
from schemas.source_settings import SourcesError
from schemas.sources import IPNetwork, Sources
from schemas.sources_file import parse_sources
from schemas.topology import Topology, TopologyError

PREFIX = "CDRFLOW_"
# Variables of this prefix are the test suite's own (tests/support/env.py), not settings.
NOT_SETTINGS_PREFIX = "CDRFLOW_TEST_"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("auto", "json", "console")


class SettingsError(ValueError):
    pass


@dataclass(frozen=True)
class Settings:
    # One URL, or every node of a RabbitMQ cluster separated by commas: each connection
    # tries them in turn, so a lost node is passed over (cdrflow.amqp.connect).
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    database_url: str = "postgresql://postgres@127.0.0.1:5432/cdrflow"
    sources: str = ""  # path of the sources TOML file

    # Topology names (SPEC defaults) and the raw queue's delivery limit.
    raw_queue: str = "cdr.raw"
    dead_exchange: str = "cdr.dead"
    dead_queue: str = "cdr.dead"
    records_exchange: str = "cdr.records"
    delivery_limit: int = 20
    # The records stream: "" names it after the records exchange (`cdr.records.stream`).
    records_stream: str = ""
    stream_max_age: str = "7D"  # RabbitMQ x-max-age: Y, M, D, h, m or s
    stream_max_bytes: int = 20_000_000_000

    # Ingress.
    max_body_bytes: int = 1024 * 1024
    header_timeout: float = 10.0  # a client must send its request headers within this
    body_timeout: float = 10.0  # ... and then its body within this
    confirm_timeout: float = 5.0  # broker confirm; past it the callback goes to the spool
    coalesce_max_envelopes: int = 128
    coalesce_max_bytes: int = 4 * 1024 * 1024
    coalesce_linger_ms: float = 2.0
    trusted_proxies: tuple[IPNetwork, ...] = ()
    shutdown_timeout: float = 30.0
    drain_seconds: float = 5.0  # after SIGTERM: /readyz 503, still serving, then stop listening
    max_inflight_bytes: int = 64 * 1024 * 1024  # body bytes read or awaiting durability; 503 past
    # Callbacks RabbitMQ cannot confirm are made durable here instead (one directory per
    # ingress process); 0 bytes: no spool, such callbacks get 503.
    spool_dir: str = "spool"
    spool_max_bytes: int = 1024 * 1024 * 1024

    # Workers.
    batch_size: int = 500
    batch_max_bytes: int = 16 * 1024 * 1024  # a batch also closes at this many bytes of messages
    batch_wait_ms: float = 50.0
    prefetch: int = 0  # 0: same as batch_size
    db_pool_size: int = 4
    db_retry_max_seconds: float = 30.0
    outbox_grace_seconds: float = 15.0
    outbox_interval_seconds: float = 5.0
    # Days the deliveries ledger keeps (which re-sent raw messages it still recognizes).
    delivery_retention_days: int = 35

    # Retention (`cdrflow retention`, on a schedule): days kept, whole partitions dropped
    # past them; 0 keeps forever. Records, and the original bytes with the revision history,
    # are not partitioned yet: their settings are checked and reported, nothing is dropped.
    retention_records_days: int = 0
    retention_originals_days: int = 0
    retention_rejected_days: int = 0
    worker_port: int = 0  # /healthz, /readyz, /metrics of a worker; 0: not served

    # Reconciler (`cdrflow reconciler`).
    reconciler_port: int = 0  # its /healthz, /readyz, /metrics; 0: not served

    log_level: str = "info"
    log_format: str = "auto"  # auto: console on a terminal, JSON otherwise

    # Console (`cdrflow console`): its users file (`cdrflow console-user`), the key that signs
    # its session cookies ("": a new one each start, which logs everyone out; set it when
    # several replicas serve one address), how long a login lasts, and the read-only
    # database role it browses with ("": database_url; the actions always use database_url).
    console_users: str = "console-users"
    console_secret: str = ""
    console_session_minutes: int = 480
    console_database_url: str = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            problem = _problem(f, getattr(self, f.name))
            if problem:
                raise SettingsError(f"{PREFIX}{f.name.upper()}: {problem}")

    @property
    def effective_prefetch(self) -> int:
        return self.prefetch or self.batch_size

    def topology(self) -> Topology:
        try:
            return self._topology()
        except TopologyError as exc:
            raise SettingsError(f"{PREFIX}STREAM_*: {exc}") from exc

    def _topology(self) -> Topology:
        return Topology.build(
            raw_queue=self.raw_queue,
            dead_exchange=self.dead_exchange,
            dead_queue=self.dead_queue,
            records_exchange=self.records_exchange,
            delivery_limit=self.delivery_limit,
            records_stream=self.records_stream,
            stream_max_age=self.stream_max_age,
            stream_max_bytes=self.stream_max_bytes,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _convert(f, raw)
        values.update(overrides)
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def unknown_variables(cls, environ: Mapping[str, str] | None = None) -> list[str]:
        """One line for each `CDRFLOW_*` variable that is not a setting (a typo is ignored
        otherwise), with the setting it most likely meant."""
        environ = os.environ if environ is None else environ
        known = [PREFIX + f.name.upper() for f in dataclasses.fields(cls)]
        lines = []
        for name in sorted(environ):
            if not name.startswith(PREFIX) or name in known:
                continue
            if name.startswith(NOT_SETTINGS_PREFIX):
                continue
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.85)
            hint = f"; did you mean {close[0]}?" if close else ""
            lines.append(f"{name}: not a setting, ignored{hint}")
        return lines


Check = Callable[[Any], str | None]


def at_least(bound: float) -> Check:
    return lambda value: None if value >= bound else f"must be at least {bound}"


def above(bound: float) -> Check:
    return lambda value: None if value > bound else f"must be more than {bound}"


def between(low: int, high: int) -> Check:
    return lambda value: None if low <= value <= high else f"must be {low} to {high}"


def one_of(*words: str, ignore_case: bool = False) -> Check:
    def check(value: str) -> str | None:
        word = value.lower() if ignore_case else value
        return None if word in words else f"must be one of {', '.join(words)}"

    return check


def url(*schemes: str) -> Check:
    """Each comma-separated URL starts with one of `schemes` (the URL itself is never
    repeated in the error: it may hold a password)."""

    def check(value: str) -> str | None:
        parts = [part.strip() for part in value.split(",")]
        if all(part.startswith(tuple(f"{s}://" for s in schemes)) for part in parts):
            return None
        return f"must be a URL starting with {' or '.join(f'{s}://' for s in schemes)}"

    return check


# The range of each setting that has one more precise than "not negative".
RULES: dict[str, Check] = {
    "amqp_url": url("amqp", "amqps"),
    "database_url": url("postgresql", "postgres"),
    "delivery_limit": at_least(1),
    "max_body_bytes": at_least(1),
    "header_timeout": above(0),
    "body_timeout": above(0),
    "confirm_timeout": above(0),
    "coalesce_max_envelopes": at_least(1),
    "coalesce_max_bytes": at_least(1),
    "max_inflight_bytes": at_least(1),
    "batch_size": at_least(1),
    "batch_max_bytes": at_least(1),
    "db_pool_size": at_least(1),
    "db_retry_max_seconds": above(0),
    "outbox_interval_seconds": above(0),
    "delivery_retention_days": at_least(1),
    "retention_records_days": between(0, 36500),
    "retention_originals_days": between(0, 36500),
    "retention_rejected_days": between(0, 36500),
    "worker_port": between(0, 65535),
    "reconciler_port": between(0, 65535),
    "log_level": one_of(*LOG_LEVELS, ignore_case=True),
    "console_secret": lambda value: (
        None if not value or len(value) >= 32 else "must be at least 32 characters"
    ),
    "console_session_minutes": at_least(1),
    "console_database_url": lambda value: value and url("postgresql", "postgres")(value),
    "log_format": one_of(*LOG_FORMATS),
}
_NOT_NEGATIVE = at_least(0)
_TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "str": (str,)}


def _problem(f: dataclasses.Field[Any], value: Any) -> str | None:
    kind = str(f.type)
    expected = _TYPES.get(kind)
    if expected is not None:
        if isinstance(value, bool) or not isinstance(value, expected):
            return f"must be {_KIND_WORDS[kind]} (got {value!r})"
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number (got {value})"
    rule = RULES.get(f.name) or (_NOT_NEGATIVE if kind in ("int", "float") else None)
    problem = rule(value) if rule else None
    if problem and not f.name.endswith(("_url", "_secret")):
        problem += f" (got {value!r})" if isinstance(value, str) else f" (got {value})"
    return problem


_KIND_WORDS = {"int": "a whole number", "float": "a number", "str": "text"}


def _convert(f: dataclasses.Field[Any], raw: str) -> Any:
    kind = str(f.type)
    name = PREFIX + f.name.upper()
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise SettingsError(f"{name}: must be {_KIND_WORDS[kind]} (got {raw!r})") from None
    if "IPNetwork" in kind:
        try:
            return tuple(
                ipaddress.ip_network(part.strip(), strict=False)
                for part in raw.split(",")
                if part.strip()
            )
        except ValueError as exc:
            raise SettingsError(f"{name}: {exc}") from None
    return raw


def load_sources(
    settings: Settings,
    *,
    registry: Registry | None = None,
    environ: Mapping[str, str] | None = None,
    resolve_secrets: bool = True,
    reconcile_secrets: bool = False,
) -> Sources:
    if not settings.sources:
        raise SourcesError("CDRFLOW_SOURCES is not set: it names the sources TOML file")
    path = Path(settings.sources)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SourcesError(f"{path}: cannot be read: {exc.strerror}") from exc
    return parse_sources(
        text,
        origin=str(path),
        environ=os.environ if environ is None else environ,
        providers=registry or default_registry(),
        resolve_secrets=resolve_secrets,
        reconcile_secrets=reconcile_secrets,
    )
