"""Structured logging: one line per meaningful event, JSON when not on a terminal.

Every line passes a redaction step, so no URL token, signing secret or password can reach a
log, whatever code wrote the line (ours, aiohttp, aio-pika or asyncpg)."""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import orjson
import structlog

# A callback path, however spelled: repeated slashes, percent-encoded slashes, any case
# (a path that does not route is logged as sent, and is where a token comes mangled).
_SLASH = r"(?:/|%2[fF])+"
_SEGMENT = r"(?:(?!%2[fF])[^/\s?#\"'])+"
CALLBACK_PATH = re.compile(
    rf"({_SLASH}v1{_SLASH}callbacks{_SLASH}{_SEGMENT}{_SLASH}){_SEGMENT}", re.IGNORECASE
)
_URL_PASSWORD = re.compile(r"([a-z][a-z0-9+.-]*://[^:/@\s]+:)[^@\s]+@", re.IGNORECASE)
REDACTED = "[redacted]"
_HANDLER_NAME = "cdrflow"


class Redactor:
    """A structlog processor that scrubs secrets from every string in an event."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret that contains another is scrubbed whole.
        merged = {s for s in [*self.secrets, *secrets] if s and len(s) >= 4}
        self.secrets = sorted(merged, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        text = CALLBACK_PATH.sub(r"\1" + REDACTED, text)
        text = _URL_PASSWORD.sub(r"\1" + REDACTED + "@", text)
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        if "%" in text and self.secrets:
            text = _encoded_forms(tuple(self.secrets)).sub(REDACTED, text)
        return text

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, dict):
            return {k: self._clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._clean(v) for v in value]
        if isinstance(value, bytes | bytearray):
            return self.scrub(bytes(value).decode("utf-8", "replace"))
        if isinstance(value, BaseException):
            return self.scrub(f"{type(value).__name__}: {value}")
        return value

    def __call__(
        self, logger: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in event.items():
            event[key] = self._clean(value)
        return event


@functools.lru_cache(maxsize=4)  # one set of secrets per process, rebuilt when it changes
def _encoded_forms(secrets: tuple[str, ...]) -> re.Pattern[str]:
    """The secrets with any of their characters percent-encoded (hex in either case, the
    `%` itself encoded once more or not): `%61bc`, `a%62%63`, `%2561bc` are `abc`."""
    return re.compile("|".join(_encoded_form(secret) for secret in secrets))


def _encoded_form(secret: str) -> str:
    def one(char: str) -> str:
        escapes = "".join(f"%(?:25)?{_hex(byte)}" for byte in char.encode())
        return f"(?:{re.escape(char)}|{escapes})"

    return "".join(one(char) for char in secret)


def _hex(byte: int) -> str:
    return "".join(f"[{d.lower()}{d.upper()}]" if d.isalpha() else d for d in f"{byte:02x}")


REDACTOR = Redactor()


def _json_renderer(logger: Any, method: str, event: MutableMapping[str, Any]) -> str:
    return orjson.dumps(event, default=str).decode()


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    as_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer: Any = _json_renderer if as_json else structlog.dev.ConsoleRenderer(colors=False)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        REDACTOR,
    ]
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared[:-3],
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared[:-3],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *shared[-3:],
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Library chatter below WARNING is not a meaningful event for an operator.
    for noisy in ("aio_pika", "aiormq", "asyncpg", "aiohttp.access", "aiohttp.server"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
