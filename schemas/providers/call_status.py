"""What every provider's codes mean for `status`, wherever they come from."""

from __future__ import annotations

from datetime import datetime

from schemas.record import Status

_SIP_STATUS = {
    486: Status.BUSY,
    600: Status.BUSY,
    408: Status.NO_ANSWER,
    480: Status.NO_ANSWER,
    603: Status.REJECTED,
    487: Status.CANCELLED,
}


def status_from_sip(code: int | None) -> Status | None:
    """What a final SIP response code says about an unconnected call."""
    if code is None or code < 400:
        return None
    return _SIP_STATUS.get(code, Status.FAILED)


def is_connected(answered_at: datetime | None, talk_seconds: int | None) -> bool:
    """SPEC: a call is answered exactly when it has an answer time or talked > 0 s."""
    return answered_at is not None or (talk_seconds or 0) > 0
