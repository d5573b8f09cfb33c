"""What a provider raises: the type says what happens to the request or the report."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Machine-readable reason codes stored in `rejected_callbacks.reason`."""

    EMPTY_BODY = "empty_body"
    UNPARSEABLE_BODY = "unparseable_body"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    INVALID_FIELD = "invalid_field"
    UNKNOWN_SOURCE = "unknown_source"
    UNKNOWN_PROVIDER = "unknown_provider"
    INTERNAL_ERROR = "internal_error"
    STORE_ERROR = "store_error"


class Reject(Exception):
    """This callback cannot become a record. The worker stores it in `rejected_callbacks`
    with this reason and acknowledges its message: nothing is retried or lost."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class Unauthenticated(Exception):
    """The signature or its timestamp does not check out: the ingress answers 401."""
