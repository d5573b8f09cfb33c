"""Signed callbacks: the settings a source of a signing provider takes (`signing`,
`secret`/`secret_env`, `max_skew_seconds`), read and checked for the provider.

Which modes exist is the provider's to say (`read_signing(settings, modes)`); a provider
that signs nothing reads them with no modes, so `signing = "none"` is all it accepts."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from schemas.providers.errors import Unauthenticated
from schemas.source_settings import SourceSettings
from schemas.sources import Source

DEFAULT_MAX_SKEW_SECONDS = 300
Reading = TypeVar("Reading")


@dataclass(frozen=True, slots=True)
class SigningConfig:
    signing: str = "none"  # a mode of the provider, or "none"
    secret: str | None = field(default=None, repr=False)
    max_skew_seconds: int = DEFAULT_MAX_SKEW_SECONDS

    def secrets(self) -> tuple[str, ...]:
        return (self.secret,) if self.secret else ()


def read_signing(settings: SourceSettings, modes: frozenset[str]) -> SigningConfig:
    mode = settings.string("signing") or "none"
    if mode != "none" and not modes:
        raise settings.fail("signing", f"provider {settings.provider} does not sign its callbacks")
    if mode != "none" and mode not in modes:
        raise settings.fail("signing", f"must be one of {', '.join(['none', *sorted(modes)])}")
    secret = None
    if mode != "none":
        secret = settings.secret("secret", required=True)
    elif settings.has("secret") or settings.has("secret_env"):
        raise settings.fail("secret", 'set, but signing is "none"')
    skew = settings.value("max_skew_seconds", DEFAULT_MAX_SKEW_SECONDS)
    if not isinstance(skew, int) or isinstance(skew, bool) or skew <= 0:
        raise settings.fail("max_skew_seconds", "must be a positive whole number of seconds")
    return SigningConfig(mode, secret, skew)


def signing_of(source: Source) -> SigningConfig:
    """The source's signing settings, as `read_signing` made them at start-up."""
    if not isinstance(source.config, SigningConfig):
        raise TypeError(f"source {source.name} was not configured by read_signing")
    return source.config


def base64_digest(text: str, mode: str, secret: str) -> str:
    """Base64 of the text's SHA-256 (`mode` "sha256") or HMAC-SHA256 under `secret`."""
    # surrogatepass: a JSON body may carry a lone surrogate (\ud800); it must not crash.
    data = text.encode("utf-8", "surrogatepass")
    if mode == "hmac-sha256":
        digest = hmac.new(secret.encode(), data, hashlib.sha256).digest()
    else:
        digest = hashlib.sha256(data).digest()
    return base64.b64encode(digest).decode()


def verify_any(readings: Iterable[Reading], verify: Callable[[Reading], None]) -> int:
    """Accept the first reading of an ambiguous body whose signature verifies; its index."""
    failure: Unauthenticated | None = None
    for index, reading in enumerate(readings):
        try:
            verify(reading)
        except Unauthenticated as exc:
            failure = failure or exc
        else:
            return index
    raise failure or Unauthenticated("signed body has no fields")
