"""Settings from environment variables (`CDRFLOW_*`), with defaults that reach RabbitMQ and
PostgreSQL on localhost.

Each setting is one field of `Settings`, read from `CDRFLOW_<FIELD IN UPPER CASE>`: its type,
its range (`ge`, `gt`, `le`; no number may be negative) or the words it may be (`Literal`), and
its default are declared together, and pydantic checks every value when the settings are made,
like the sources file. An error is one line that names the variable: the process does not
start."""

from __future__ import annotations

import difflib
import ipaddress
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

import annotated_types
from pydantic import AfterValidator, BeforeValidator, Field, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.sources.utils import parse_env_vars

from cdrflow.logs import Redactor
from schemas.providers import Registry, default_registry
from schemas.source_settings import SourcesError
from schemas.sources import IPNetwork, Sources
from schemas.sources_file import parse_sources
from schemas.topology import Topology, TopologyError

PREFIX = "CDRFLOW_"
# Variables of this prefix are the test suite's own (tests/support/env.py), not settings.
NOT_SETTINGS_PREFIX = "CDRFLOW_TEST_"
LogLevel = Literal["debug", "info", "warning", "error", "critical"]
LogFormat = Literal["auto", "json", "console"]
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)
LOG_FORMATS: tuple[str, ...] = get_args(LogFormat)


class SettingsError(ValueError):
    pass


def urls(*schemes: str, or_empty: bool = False) -> AfterValidator:
    """Each comma-separated URL starts with one of `schemes` (the error never repeats the URL:
    it may hold a password)."""
    prefixes = tuple(f"{scheme}://" for scheme in schemes)

    def check(value: str) -> str:
        parts = [part.strip() for part in value.split(",")]
        if (or_empty and not value) or all(part.startswith(prefixes) for part in parts):
            return value
        raise ValueError(f"must be a URL starting with {' or '.join(prefixes)}")

    return AfterValidator(check)


def _networks(value: Any) -> Any:
    """CIDRs as the environment writes them (`10.0.0.0/8, 192.168.0.0/16`); a tuple of
    networks, as code gives them, passes to the type check as it is."""
    if not isinstance(value, str):
        return value
    parts = [part.strip() for part in value.split(",")]
    return tuple(ipaddress.ip_network(part, strict=False) for part in parts if part)


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _unset_or_long(value: str) -> str:
    if value and len(value) < 32:
        raise ValueError("must be at least 32 characters")
    return value


Port = Annotated[int, Field(ge=0, le=65535)]  # 0: not served
RetentionDays = Annotated[int, Field(ge=0, le=36500)]  # 0: kept forever


class Settings(BaseSettings):
    """Values given in code must have their field's type (`Settings(batch_size="5")` is an
    error); `from_env` converts the environment's text. Frozen: `with_` makes a changed copy,
    checked again."""

    model_config = SettingsConfigDict(
        env_prefix=PREFIX,
        env_ignore_empty=True,  # CDRFLOW_X= is the default, as if unset
        frozen=True,
        extra="forbid",
        strict=True,
        allow_inf_nan=False,
        validate_default=True,
    )

    # One URL, or every node of a RabbitMQ cluster separated by commas: each connection
    # tries them in turn, so a lost node is passed over (cdrflow.amqp.connect).
    amqp_url: Annotated[str, urls("amqp", "amqps")] = "amqp://guest:guest@127.0.0.1:5672/"
    database_url: Annotated[str, urls("postgresql", "postgres")] = (
        "postgresql://postgres@127.0.0.1:5432/cdrflow"
    )
    sources: str = ""  # path of the sources TOML file

    # Topology names (SPEC defaults) and the raw queue's delivery limit.
    raw_queue: str = "cdr.raw"
    dead_exchange: str = "cdr.dead"
    dead_queue: str = "cdr.dead"
    records_exchange: str = "cdr.records"
    delivery_limit: Annotated[int, Field(ge=1)] = 20
    # The records stream: "" names it after the records exchange (`cdr.records.stream`).
    records_stream: str = ""
    stream_max_age: str = "7D"  # RabbitMQ x-max-age: Y, M, D, h, m or s (Topology checks it)
    stream_max_bytes: Annotated[int, Field(ge=0)] = 20_000_000_000

    # Ingress.
    max_body_bytes: Annotated[int, Field(ge=1)] = 1024 * 1024
    # A client must send its request headers within header_timeout, then its body within
    # body_timeout; past confirm_timeout without a broker confirm the callback is spooled.
    header_timeout: Annotated[float, Field(gt=0)] = 10.0
    body_timeout: Annotated[float, Field(gt=0)] = 10.0
    confirm_timeout: Annotated[float, Field(gt=0)] = 5.0
    coalesce_max_envelopes: Annotated[int, Field(ge=1)] = 128
    coalesce_max_bytes: Annotated[int, Field(ge=1)] = 4 * 1024 * 1024
    coalesce_linger_ms: Annotated[float, Field(ge=0)] = 2.0
    trusted_proxies: Annotated[tuple[IPNetwork, ...], NoDecode, BeforeValidator(_networks)] = ()
    shutdown_timeout: Annotated[float, Field(ge=0)] = 30.0
    # After SIGTERM: /readyz 503, still serving, then stop listening.
    drain_seconds: Annotated[float, Field(ge=0)] = 5.0
    # Body bytes read or awaiting durability; 503 past it.
    max_inflight_bytes: Annotated[int, Field(ge=1)] = 64 * 1024 * 1024
    # Callbacks RabbitMQ cannot confirm are made durable here instead (one directory per
    # ingress process); 0 bytes: no spool, such callbacks get 503.
    spool_dir: str = "spool"
    spool_max_bytes: Annotated[int, Field(ge=0)] = 1024 * 1024 * 1024

    # Workers.
    batch_size: Annotated[int, Field(ge=1)] = 500
    batch_max_bytes: Annotated[int, Field(ge=1)] = 16 * 1024 * 1024  # a batch closes at it too
    batch_wait_ms: Annotated[float, Field(ge=0)] = 50.0
    prefetch: Annotated[int, Field(ge=0)] = 0  # 0: same as batch_size
    db_pool_size: Annotated[int, Field(ge=1)] = 4
    db_retry_max_seconds: Annotated[float, Field(gt=0)] = 30.0
    outbox_grace_seconds: Annotated[float, Field(ge=0)] = 15.0
    outbox_interval_seconds: Annotated[float, Field(gt=0)] = 5.0
    # Days the deliveries ledger keeps (which re-sent raw messages it still recognizes).
    delivery_retention_days: Annotated[int, Field(ge=1)] = 35

    # Retention (`cdrflow retention`, on a schedule): days kept, whole partitions dropped
    # past them; 0 keeps forever. Records go with their revisions and their keys; the
    # original bytes (`originals`) may go sooner, the revisions keeping their content.
    retention_records_days: RetentionDays = 0
    retention_originals_days: RetentionDays = 0
    retention_rejected_days: RetentionDays = 0
    worker_port: Port = 0  # /healthz, /readyz, /metrics of a worker

    # Reconciler (`cdrflow reconciler`).
    reconciler_port: Port = 0  # its /healthz, /readyz, /metrics

    log_level: Annotated[LogLevel, BeforeValidator(_lower)] = "info"
    log_format: LogFormat = "auto"  # auto: console on a terminal, JSON otherwise

    # Console (`cdrflow console`): its users file (`cdrflow console-user`), the key that signs
    # its session cookies ("": a new one each start, which logs everyone out; set it when
    # several replicas serve one address), how long a login lasts, and the read-only
    # database role it browses with ("": database_url; the actions always use database_url).
    console_users: str = "console-users"
    console_secret: Annotated[str, AfterValidator(_unset_or_long), Field(repr=False)] = ""
    console_session_minutes: Annotated[int, Field(ge=1)] = 480
    console_database_url: Annotated[str, urls("postgresql", "postgres", or_empty=True)] = ""

    if not TYPE_CHECKING:
        # At run time only, so that type checkers still see each field in the signature.
        def __init__(self, **values: Any) -> None:
            try:
                super().__init__(**values)
            except ValidationError as exc:
                raise SettingsError(_one_line(exc)) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # `Settings(...)` is the values given and the defaults, whatever the shell exports
        # (`make` exports CDRFLOW_SOURCES to the tests): only `from_env` reads variables.
        return (init_settings,)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings of `environ` (os.environ unless given); a number's text is read as
        the field's type first, the rest is checked as for values given in code."""
        found = _Variables(cls, os.environ if environ is None else environ)()
        return cls(**{name: _from_text(name, value) for name, value in found.items()})

    def with_(self, **changes: Any) -> Settings:
        return type(self)(**{**dict(self), **changes})

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

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # A URL's password never reaches a repr (console_secret is left out of it whole).
        for name, value in super().__repr_args__():
            yield name, _SCRUB.scrub(value) if isinstance(value, str) else value

    @classmethod
    def variable(cls, field: str) -> str:
        return PREFIX + field.upper()

    @classmethod
    def unknown_variables(cls, environ: Mapping[str, str] | None = None) -> list[str]:
        """One line for each `CDRFLOW_*` variable that is not a setting (a typo is ignored
        otherwise), with the setting it most likely meant."""
        environ = os.environ if environ is None else environ
        known = [cls.variable(name) for name in cls.model_fields]
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


_SCRUB = Redactor()


class _Variables(EnvSettingsSource):
    """pydantic-settings' reading of the `CDRFLOW_*` variables, from a mapping given (a
    test's) as well as from os.environ; its `.env` file reader is built the same way."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self.environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # Names as the settings are written, in capitals: pydantic-settings would read
        # `cdrflow_batch_size` too, which `unknown_variables` calls not a setting.
        named = {k: v for k, v in self.environ.items() if k.startswith(PREFIX) and k.isupper()}
        return parse_env_vars(named, self.case_sensitive, self.env_ignore_empty)


_NUMBERS: dict[Any, TypeAdapter[Any]] = {int: TypeAdapter(int), float: TypeAdapter(float)}


def _from_text(name: str, text: Any) -> Any:
    """An int or float field's value from the environment's text (other fields take text)."""
    kind = Settings.model_fields[name].annotation
    if kind not in _NUMBERS or not isinstance(text, str):
        return text
    try:
        return _NUMBERS[kind].validate_strings(text)
    except ValidationError:
        problem = f"must be {_KIND_WORDS[kind]} (got {text!r})"
        raise SettingsError(f"{Settings.variable(name)}: {problem}") from None


def _one_line(exc: ValidationError) -> str:
    """The first problem, as `CDRFLOW_X: what is wrong (got the value)`."""
    error = exc.errors(include_url=False)[0]
    name = str(error["loc"][0]) if error["loc"] else ""
    field = Settings.model_fields.get(name)
    if field is None:
        return f"{Settings.variable(name)}: not a setting" if name else error["msg"]
    return f"{Settings.variable(name)}: {_problem(name, field, error)}"


_KIND_WORDS: dict[Any, str] = {int: "a whole number", float: "a number", str: "text"}
_TYPE_ERRORS = {"int_type", "int_parsing", "int_from_float", "float_type", "float_parsing"}
_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def _problem(name: str, field: FieldInfo, error: ErrorDetails) -> str:
    kind, given = error["type"], error["input"]
    if kind == "value_error":  # our own check's words, which never repeat a secret
        return str(error.get("ctx", {}).get("error", error["msg"]))
    if kind in _TYPE_ERRORS or kind == "string_type":
        problem = f"must be {_KIND_WORDS.get(field.annotation, 'text')}"
    elif kind == "finite_number":
        problem = "must be a finite number"
    elif kind in _RANGE_ERRORS:
        problem = _range(field)
    elif kind == "literal_error":
        problem = f"must be one of {', '.join(get_args(field.annotation))}"
    else:
        problem = error["msg"]
    if name.endswith(("_url", "_secret")):  # the value may hold a password
        return problem
    return f"{problem} (got {given!r})" if isinstance(given, str) else f"{problem} (got {given})"


def _range(field: FieldInfo) -> str:
    low = next((rule.ge for rule in field.metadata if isinstance(rule, annotated_types.Ge)), None)
    high = next((rule.le for rule in field.metadata if isinstance(rule, annotated_types.Le)), None)
    above = next((rule.gt for rule in field.metadata if isinstance(rule, annotated_types.Gt)), None)
    if low is not None and high is not None:
        return f"must be {low} to {high}"
    if low is not None:
        return f"must be at least {low}"
    return f"must be more than {above}"


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
