"""How the ingress ends a request (`Outcome`) and how a provider words it (`Answer`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class Outcome(StrEnum):
    """How the ingress ended a request; a provider turns it into its own answer."""

    ACCEPTED = "accepted"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    TIMEOUT = "timeout"
    TOO_LARGE = "too_large"
    UNAVAILABLE = "unavailable"


HTTP_STATUS = {
    Outcome.ACCEPTED: 200,
    Outcome.UNAUTHORIZED: 401,
    Outcome.FORBIDDEN: 403,
    Outcome.METHOD_NOT_ALLOWED: 405,
    Outcome.TIMEOUT: 408,
    Outcome.TOO_LARGE: 413,
    Outcome.UNAVAILABLE: 503,
}


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    content_type: str


def text_answers(success: str = "success", failure: str = "error") -> Callable[[Outcome], Answer]:
    """Plain-text answers: `success` for accepted, `failure` for everything else."""

    def answer(outcome: Outcome) -> Answer:
        body = success if outcome is Outcome.ACCEPTED else failure
        return Answer(HTTP_STATUS[outcome], body.encode(), "text/plain")

    return answer
