"""A local NXCloud voice-record query (`getVoiceCdr`) that keeps the documented rules
strictly, for the reconciliation tests and the bench: form POST only, the voice
application's credentials, 24 hours at most per request, records at most 7 days old,
paging from 1, and one request a second per account, a faster one answered with an error
code. Each rule it enforces is counted, so a test can show that none was broken.

The documents give no code for the errors: any code but "1" is a failure, which is all a
client may rely on; the codes here are made up. A request is refused for the rate when it
comes sooner than `min_interval` minus `jitter` after the one before (the jitter is the
network's and the scheduler's, not the client's)."""

from __future__ import annotations

import asyncio
import bisect
import json
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from typing import Any

from aiohttp import web

from schemas.sources import parse_zone

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
RATE_LIMITED = "10"
BAD_CREDENTIALS = "2"
BAD_PARAMETERS = "3"
BEYOND_HORIZON = "4"
SPAN_TOO_LONG = "5"
NOT_A_FORM = "6"
SYSTEM_BUSY = "500"


@dataclass
class Refusals:
    rate: int = 0
    credentials: int = 0
    parameters: int = 0
    horizon: int = 0
    span: int = 0
    not_a_form: int = 0
    injected: int = 0


@dataclass
class FakeNXCloud:
    appkey: str = "fake-appkey"
    secretkey: str = "fake-secretkey"
    zone: tzinfo = field(default_factory=lambda: parse_zone("+08:00"))
    min_interval: float = 1.0
    jitter: float = 0.2
    horizon: timedelta = timedelta(days=7)
    rows: dict[int, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    refusals: Refusals = field(default_factory=Refusals)
    answered: int = 0  # requests answered with rows
    # Once this many valid requests were answered, every further one answers SYSTEM_BUSY
    # (None: never).
    fail_after: int | None = None
    arrivals: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    _by_start: dict[int, tuple[list[datetime], list[dict[str, Any]]]] = field(default_factory=dict)
    _runner: web.AppRunner | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/voiceSms/getVoiceCdr"

    def add(self, voice_type: int, row: Mapping[str, Any]) -> None:
        self.rows[voice_type].append(dict(row))
        self._by_start.pop(voice_type, None)

    def _sorted(self, voice_type: int) -> tuple[list[datetime], list[dict[str, Any]]]:
        """The rows of a voice type by start time (built once: the bench lists 100,000)."""
        if voice_type not in self._by_start:
            keyed = sorted(
                (
                    (datetime.strptime(r["start_time"], TIME_FORMAT), r)
                    for r in self.rows[voice_type]
                ),
                key=lambda pair: pair[0],
            )
            self._by_start[voice_type] = ([k for k, _ in keyed], [r for _, r in keyed])
        return self._by_start[voice_type]

    def local(self, moment: datetime) -> str:
        return moment.astimezone(self.zone).strftime(TIME_FORMAT)

    async def start(self) -> FakeNXCloud:
        app = web.Application()
        app.router.add_route("*", "/api/voiceSms/getVoiceCdr", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        self.port = server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        if request.method != "POST" or request.content_type != "application/x-www-form-urlencoded":
            self.refusals.not_a_form += 1
            return _answer(NOT_A_FORM, "POST form data only, do not pass a body")
        form = await request.post()
        account = str(form.get("appkey", ""))
        if self._too_soon(account):
            self.refusals.rate += 1
            return _answer(RATE_LIMITED, "one request per second")
        if account != self.appkey or form.get("secretkey") != self.secretkey:
            self.refusals.credentials += 1
            return _answer(BAD_CREDENTIALS, "appkey or secretkey is wrong")
        try:
            query = self._query(form)
        except _Refused as refused:
            return _answer(refused.code, refused.message)
        if self.fail_after is not None and self.answered >= self.fail_after:
            self.refusals.injected += 1
            return _answer(SYSTEM_BUSY, "system busy, try again later")
        self.answered += 1
        return self._page(*query)

    def _too_soon(self, account: str) -> bool:
        now = time.monotonic()
        arrivals = self.arrivals[account]
        too_soon = bool(arrivals) and now - arrivals[-1] < self.min_interval - self.jitter
        arrivals.append(now)
        return too_soon

    def _query(self, form: Mapping[str, Any]) -> tuple[int, datetime, datetime, int, int]:
        try:
            voice_type = int(form["voiceType"])
            start = datetime.strptime(str(form["start_time"]), TIME_FORMAT)
            end = datetime.strptime(str(form["end_time"]), TIME_FORMAT)
            page, page_size = int(form["page"]), int(form["page_size"])
        except (KeyError, ValueError) as exc:
            self.refusals.parameters += 1
            raise _Refused(BAD_PARAMETERS, f"bad or missing parameter: {exc}") from None
        if voice_type not in (0, 1) or page < 1 or page_size < 1 or end < start:
            self.refusals.parameters += 1
            raise _Refused(BAD_PARAMETERS, "bad parameter")
        if end - start > timedelta(hours=24):
            self.refusals.span += 1
            raise _Refused(SPAN_TOO_LONG, "the time span cannot exceed 24 hours")
        local_now = datetime.now(self.zone).replace(tzinfo=None)
        if start < local_now - self.horizon:
            self.refusals.horizon += 1
            raise _Refused(BEYOND_HORIZON, "only records within 7 days can be queried")
        return voice_type, start, end, page, page_size

    def _page(
        self, voice_type: int, start: datetime, end: datetime, page: int, page_size: int
    ) -> web.Response:
        starts, rows_by_start = self._sorted(voice_type)
        first, last = bisect.bisect_left(starts, start), bisect.bisect_right(starts, end)
        offset = first + (page - 1) * page_size
        rows = rows_by_start[offset : min(offset + page_size, last)]
        info = {"total": last - first, "page": page, "pageSize": page_size, "rows": rows}
        return web.Response(
            text=json.dumps({"code": "1", "info": info}), content_type="application/json"
        )


class _Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        self.code, self.message = code, message


def _answer(code: str, message: str) -> web.Response:
    return web.Response(
        text=json.dumps({"code": code, "info": message}), content_type="application/json"
    )
