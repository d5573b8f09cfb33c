"""What bills, compared: a stored record against the provider's row of the same call.

Only what the row has is compared (a verification row has no base price; no row has a
hangup cause), and only what bills: whether the call connected, its talk and billed
seconds, its rate and costs. Values are compared as text, numbers without their trailing
zeros (0.050 is 0.05), so that a JSON number and a pushed string agree."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from schemas.record import CallRecord, Status

BILLING_FIELDS = ("connected", "talk_seconds", "billed_seconds", "rate", "cost", "base_cost")


@dataclass(frozen=True, slots=True)
class Difference:
    field: str
    ours: str | None
    theirs: str


def billing_of_record(record: CallRecord) -> dict[str, str | None]:
    return _billing(record.status, record.__getattribute__)


def billing_of_row(row: Mapping[str, Any]) -> dict[str, str | None]:
    """The same, of a `call_records` row (its status is text)."""
    return _billing(row["status"], row.__getitem__)


def differences(ours: Mapping[str, Any], theirs: CallRecord) -> list[Difference]:
    """Each field the provider's row states and the stored record states otherwise."""
    stored = billing_of_row(ours)
    found = []
    for field, value in billing_of_record(theirs).items():
        if value is not None and stored[field] != value:
            found.append(Difference(field, stored[field], value))
    return found


def _billing(status: Any, get: Any) -> dict[str, str | None]:
    values: dict[str, str | None] = {"connected": str(status == Status.ANSWERED).lower()}
    for field in BILLING_FIELDS[1:]:
        values[field] = as_text(get(field))
    return values


def as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    return str(value)
