"""Reading a request body: its charset, its text, JSON read exactly, form data."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from schemas.envelope import RawEnvelope
from schemas.jsoncodec import JSONError, loads_exact
from schemas.providers.errors import Reason, Reject


def charset_of(content_type: str) -> str:
    for part in content_type.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.strip().lower() == "charset" and value:
            return value.strip().strip('"').lower()
    return "utf-8"


def body_text(envelope: RawEnvelope) -> str:
    charset = charset_of(envelope.content_type)
    try:
        return envelope.body.decode(charset).removeprefix("\ufeff")
    except (UnicodeDecodeError, LookupError) as exc:
        raise Reject(Reason.UNPARSEABLE_BODY, f"body is not valid {charset}: {exc}") from exc


def json_body(envelope: RawEnvelope) -> Any:
    """The body as exact JSON; an empty body is refused."""
    text = body_text(envelope)
    if not text.strip():
        raise Reject(Reason.EMPTY_BODY, "body is empty")
    return parse_json(text)


def parse_json(text: str) -> Any:
    try:
        return loads_exact(text)
    except JSONError as exc:
        raise Reject(Reason.UNPARSEABLE_BODY, f"body is not valid JSON: {exc}") from exc


def parse_form(text: str, charset: str = "utf-8") -> dict[str, str]:
    """`a=1&b=2` (form body or query string). A repeated key keeps its last value."""
    try:
        return dict(parse_qsl(text, keep_blank_values=True, encoding=charset, errors="strict"))
    except (UnicodeDecodeError, LookupError, ValueError) as exc:
        raise Reject(Reason.UNPARSEABLE_BODY, f"form data cannot be decoded: {exc}") from exc
