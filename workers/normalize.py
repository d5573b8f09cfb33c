"""From raw envelopes to what a batch will store: deliveries (one per call report) and
rejections (one per request or report that cannot become a record). Pure: no I/O."""

from __future__ import annotations

import dataclasses
import traceback
from collections.abc import Mapping

from cdrflow.logs import get_logger
from schemas.content import content_hash
from schemas.envelope import RawEnvelope
from schemas.providers import Provider, Reason, Reject
from schemas.providers.bodies import charset_of, is_multipart
from schemas.sources import Source
from workers.batch import WHOLE_REQUEST, Delivery, Normalized, Rejection
from workers.sanitize import sanitize_record

log = get_logger("cdrflow.worker")

_PLAIN_CHARSETS = frozenset({"utf-8", "utf8", "us-ascii", "ascii"})
MAX_EXTERNAL_ID = 256  # characters; a longer "id" is not an id (and would not fit an index)


def normalize_envelope(
    envelope: RawEnvelope, sources: Mapping[str, Source], providers: Mapping[str, Provider]
) -> Normalized:
    result = Normalized()

    def reject(item: int, reason: str, message: str) -> Normalized:
        result.rejections.append(Rejection(envelope, item, reason, message))
        return result

    source = sources.get(envelope.source)
    if source is None:
        return reject(
            WHOLE_REQUEST,
            Reason.UNKNOWN_SOURCE,
            f"source {envelope.source!r} is not in this worker's sources file",
        )
    provider = providers.get(envelope.provider)
    if provider is None:
        return reject(
            WHOLE_REQUEST, Reason.UNKNOWN_PROVIDER, f"no provider module {envelope.provider!r}"
        )
    try:
        payloads = provider.parse(envelope, source)
    except Reject as exc:
        return reject(WHOLE_REQUEST, exc.reason, exc.message)
    except Exception as exc:
        return reject(WHOLE_REQUEST, Reason.INTERNAL_ERROR, _crash(envelope, provider, exc))
    scrub = _may_hold_unstorable_text(envelope) or source.charset is not None
    for item, payload in enumerate(payloads):
        try:
            record = provider.normalize(payload, source)
            if record.origin != envelope.origin:
                # Where the report came from is the envelope's to say, not the provider's.
                record = dataclasses.replace(record, origin=envelope.origin)
            if scrub:  # after the id is read: an id holding NUL is refused, not rewritten
                record = sanitize_record(record)
            if len(record.external_id) > MAX_EXTERNAL_ID:
                raise Reject(
                    Reason.INVALID_FIELD,
                    f"the provider's id is {len(record.external_id)} characters long",
                )
            # Everything that could still fail on this report's content happens here, where
            # a failure rejects this report alone (it is also what the store will write).
            digest = content_hash(record, provider.volatile_fields)
        except Reject as exc:
            reject(item, exc.reason, exc.message)
            continue
        except Exception as exc:
            reject(item, Reason.INTERNAL_ERROR, _crash(envelope, provider, exc))
            continue
        result.deliveries.append(Delivery(envelope, item, record, digest))
    return result


def _may_hold_unstorable_text(envelope: RawEnvelope) -> bool:
    """NUL and lone surrogates arrive as a NUL byte, a JSON \\u escape or a %00 in UTF-8;
    any other charset (UTF-7, say) can hide them in ordinary bytes, and so can a multipart
    part: its own charset, or its Content-Transfer-Encoding (base64, quoted-printable's
    `=00`, uuencode) hides every byte."""
    body = envelope.body
    return (
        b"\x00" in body
        or b"\\u" in body
        or b"%00" in body
        or "%00" in envelope.query
        or charset_of(envelope.content_type) not in _PLAIN_CHARSETS
        or is_multipart(envelope.content_type)
    )


def _crash(envelope: RawEnvelope, provider: Provider, exc: Exception) -> str:
    # A bug in a provider module must not stall the queue: the callback is kept, with the
    # error, and `cdrflow replay` sends it through again once the module is fixed.
    log.error(
        "provider_crashed",
        provider=provider.name,
        ingest_id=str(envelope.ingest_id),
        error=f"{type(exc).__name__}: {exc}",
        traceback="".join(traceback.format_exception(exc)[-3:]),
    )
    return f"{provider.name} failed: {type(exc).__name__}: {exc}"
