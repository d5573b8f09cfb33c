"""Reading a request body: its charset, its text, JSON read exactly, form data.

The charset rule, for every provider: the source's `charset` setting when it has one;
else the charset the request declares; else UTF-8, and when the body is not valid UTF-8,
GB18030 (a superset of GBK, which Chinese senders use without saying so) before giving up.

Form data is read leniently, field by field: a field whose percent-escapes decode in
neither the body's charset nor (when none was chosen) GB18030 is kept as
`{"undecodable": "<its text as sent>"}`, which no column reads, so it lands in `extra` and
the rest of the report is stored."""

from __future__ import annotations

import codecs
import functools
from collections.abc import Iterable
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any
from urllib.parse import unquote_plus

from schemas.envelope import RawEnvelope
from schemas.jsoncodec import JSONError, loads_exact
from schemas.keys import put_keeping
from schemas.providers import map_rendering
from schemas.providers.errors import Reason, Reject
from schemas.sources import Source

DEFAULT_CHARSET = "utf-8"
FALLBACK_CHARSET = "gb18030"
MAX_FORM_PARTS = 1000  # a DR has 20 fields; more parts than this is not a callback
UNDECODABLE = "undecodable"


def charset_of(content_type: str) -> str:
    """The declared charset, or "utf-8" when none is declared."""
    return declared_charset(content_type) or DEFAULT_CHARSET


# A worker reads one envelope's Content-Type several times (the scrub check, the body's
# text, the form's escapes), and senders use a handful of them: bounded, so that odd
# values cannot grow it.
@functools.lru_cache(maxsize=256)
def declared_charset(content_type: str) -> str | None:
    for part in content_type.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.strip().lower() == "charset" and value.strip().strip('"'):
            return value.strip().strip('"').lower()
    return None


def charsets_to_try(envelope: RawEnvelope, source: Source | None) -> tuple[str, ...]:
    """The charsets a body (and its percent-escapes) is read in, in order."""
    chosen = (source.charset if source else None) or declared_charset(envelope.content_type)
    return (chosen,) if chosen else (DEFAULT_CHARSET, FALLBACK_CHARSET)


def body_text(envelope: RawEnvelope, source: Source | None = None) -> str:
    return decode_text(envelope.body, charsets_to_try(envelope, source)).removeprefix("\ufeff")


def decode_text(data: bytes, charsets: tuple[str, ...]) -> str:
    problem = ""
    for charset in charsets:
        try:
            return data.decode(charset)
        except (UnicodeDecodeError, LookupError) as exc:
            problem = f"{problem}; " if problem else ""
            problem += f"not valid {charset}: {exc}"
    raise Reject(Reason.UNPARSEABLE_BODY, f"body is {problem}")


def json_body(envelope: RawEnvelope, source: Source | None = None) -> Any:
    """The body as exact JSON; an empty body is refused."""
    text = body_text(envelope, source)
    if not text.strip():
        raise Reject(Reason.EMPTY_BODY, "body is empty")
    return parse_json(text)


def parse_json(text: str) -> Any:
    try:
        return loads_exact(text)
    except JSONError as exc:
        raise Reject(Reason.UNPARSEABLE_BODY, f"body is not valid JSON: {exc}") from exc


def parse_form(text: str, charsets: str | tuple[str, ...] = DEFAULT_CHARSET) -> dict[str, Any]:
    """`a=1&b=2` (form body or query string). A repeated key keeps its last value, and each
    earlier one under a suffixed name (`schemas.keys`); a field that cannot be
    decoded is kept undecoded (see the module doc)."""
    tried = (charsets,) if isinstance(charsets, str) else charsets
    for charset in tried:
        _known_charset(charset)
    fields: dict[str, Any] = {}
    for pair in text.split("&"):
        if not pair:
            continue
        name, _, value = pair.partition("=")
        key = _unescape(name, tried)
        decoded = _unescape(value, tried)
        value_read = {UNDECODABLE: value} if decoded is None else decoded
        put_keeping(fields, name if key is None else key, value_read)
    return fields


def _known_charset(charset: str) -> None:
    try:
        codecs.lookup(charset)
    except LookupError as exc:
        raise Reject(Reason.UNPARSEABLE_BODY, f"unknown charset {charset!r}") from exc


def _unescape(text: str, charsets: tuple[str, ...]) -> str | None:
    if "%" not in text and charsets:  # no escape to decode: what unquote_plus returns
        return text.replace("+", " ")
    for charset in charsets:
        try:
            return unquote_plus(text, encoding=charset, errors="strict")
        except UnicodeDecodeError:
            continue
    return None


def is_multipart(content_type: str) -> bool:
    return content_type.split(";")[0].strip().lower() == "multipart/form-data"


def parse_multipart(envelope: RawEnvelope, source: Source | None = None) -> dict[str, Any]:
    """`multipart/form-data` fields by name (the standard library's MIME parser: pure, and
    linear in the body). A part's own charset wins; a value that decodes in no charset is
    kept undecodable, as in `parse_form`; file parts are read as text like the others."""
    head = f"Content-Type: {envelope.content_type}\r\n\r\n".encode("latin-1", "replace")
    message = BytesParser(policy=HTTP).parsebytes(head + envelope.body)
    if not message.is_multipart():
        raise Reject(Reason.UNPARSEABLE_BODY, "multipart body without a usable boundary")
    parts = message.get_payload()
    assert isinstance(parts, list)
    if len(parts) > MAX_FORM_PARTS:
        raise Reject(Reason.UNPARSEABLE_BODY, f"{len(parts)} parts in a form")
    fields: dict[str, Any] = {}
    charsets = charsets_to_try(envelope, source)
    for part in parts:
        if not isinstance(part, Message):
            continue
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str) and name:
            put_keeping(fields, name, _part_value(part, charsets))
    return fields


def _part_value(part: Message, charsets: tuple[str, ...]) -> Any:
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        return ""
    own = part.get_content_charset()
    try:
        return decode_text(data, (own,) if own else charsets)
    except Reject:
        return {UNDECODABLE: data.decode("latin-1")}


def form_body(envelope: RawEnvelope, source: Source | None = None) -> dict[str, Any]:
    """A form body, urlencoded or multipart."""
    if is_multipart(envelope.content_type):
        return parse_multipart(envelope, source)
    return parse_form(body_text(envelope, source), charsets_to_try(envelope, source))


def field_readings(
    envelope: RawEnvelope, source: Source, documented: frozenset[str]
) -> Iterable[dict[str, Any]]:
    """A body of fields sent in any form: a form (urlencoded or multipart), a JSON object,
    or Java's `{k=v, ...}` rendering, whose every reading is returned, the deterministic
    one first (`map_rendering.splits`, anchored on the `documented` field names)."""
    body = _fields_or_rendering(envelope, source)
    return map_rendering.splits(body, documented) if isinstance(body, str) else [body]


def field_reading(
    envelope: RawEnvelope, source: Source, documented: frozenset[str], index: int
) -> dict[str, Any]:
    """`list(field_readings(...))[index]`, or the first reading when there is no such
    index, without building the readings not asked for (`map_rendering.reading`)."""
    body = _fields_or_rendering(envelope, source)
    return map_rendering.reading(body, documented, index) if isinstance(body, str) else body


def _fields_or_rendering(envelope: RawEnvelope, source: Source) -> dict[str, Any] | str:
    """The body's fields, or the text of a `{k=v, ...}` rendering (which has readings)."""
    if is_multipart(envelope.content_type):
        return form_body(envelope, source)
    text = body_text(envelope, source).strip()
    if not text:
        raise Reject(Reason.EMPTY_BODY, "body is empty")
    if text.startswith("{") and not _looks_like_json(text):
        return text
    if text.startswith("{") or "json" in envelope.content_type.lower():
        document = parse_json(text)
    else:
        document = form_body(envelope, source)
    if not isinstance(document, dict):
        raise Reject(Reason.NOT_AN_OBJECT, "body is not an object of fields")
    return document


def _looks_like_json(text: str) -> bool:
    return text.lstrip("{ \t\r\n").startswith('"')
