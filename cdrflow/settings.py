"""Settings from environment variables (`CDRFLOW_*`), with defaults that reach RabbitMQ and
PostgreSQL on localhost."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.providers import Registry, default_registry
from schemas.sources import IPNetwork, Sources, SourcesError, parse_sources
from schemas.topology import Topology, TopologyError

PREFIX = "CDRFLOW_"


class SettingsError(ValueError):
    pass


@dataclass(frozen=True)
class Settings:
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
    confirm_timeout: float = 5.0  # broker confirm; past it the request gets 503
    coalesce_max_envelopes: int = 128
    coalesce_max_bytes: int = 4 * 1024 * 1024
    coalesce_linger_ms: float = 2.0
    trusted_proxies: tuple[IPNetwork, ...] = ()
    shutdown_timeout: float = 30.0
    # Callbacks RabbitMQ cannot confirm are made durable here instead (one directory per
    # ingress process); 0 bytes: no spool, such callbacks get 503.
    spool_dir: str = "spool"
    spool_max_bytes: int = 1024 * 1024 * 1024
    drain_seconds: float = 5.0  # after SIGTERM: /readyz 503, still serving, then stop listening
    max_inflight_bytes: int = 64 * 1024 * 1024  # body bytes read or awaiting durability; 503 past

    # Workers.
    batch_size: int = 500
    batch_max_bytes: int = 16 * 1024 * 1024  # a batch also closes at this many bytes of messages
    batch_wait_ms: float = 50.0
    prefetch: int = 0  # 0: same as batch_size
    db_pool_size: int = 4
    db_retry_max_seconds: float = 30.0
    outbox_grace_seconds: float = 15.0
    outbox_interval_seconds: float = 5.0
    delivery_retention_days: int = 35
    worker_port: int = 0  # /healthz, /readyz, /metrics of a worker; 0: not served

    log_level: str = "info"
    log_format: str = "auto"  # auto: console on a terminal, JSON otherwise

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


def _convert(f: dataclasses.Field[Any], raw: str) -> Any:
    kind = str(f.type)
    name = PREFIX + f.name.upper()
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if "IPNetwork" in kind:
            return tuple(
                ipaddress.ip_network(part.strip(), strict=False)
                for part in raw.split(",")
                if part.strip()
            )
    except ValueError as exc:
        raise SettingsError(f"{name}: {exc}") from exc
    return raw


def load_sources(
    settings: Settings,
    *,
    registry: Registry | None = None,
    environ: Mapping[str, str] | None = None,
    resolve_secrets: bool = True,
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
    )
