"""Sending the spool to `cdr.raw` once the broker confirms again.

Oldest first, one coalesced message at a time, with the same publish as the requests'
(persistent, mandatory, confirmed); records leave the spool only once confirmed. A crash
between the confirm and the spool's bookkeeping sends those callbacks again: the worker's
deliveries ledger counts each request once, so that is harmless. New callbacks go to the
broker directly meanwhile: the drainer shares the connection, not the request path."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from tenacity import RetryCallState

from cdrflow.amqp import BrokerLink, raw_message
from cdrflow.backoff import retrying
from cdrflow.logs import get_logger
from cdrflow.settings import Settings
from ingress.publisher import CoalescingPublisher
from ingress.spool import Spool

log = get_logger("cdrflow.ingress.drainer")

LINK_POLL_SECONDS = 0.2
RETRY_MAX_SECONDS = 5.0  # the longest wait before sending a refused batch again


class _Refused(Exception):
    """The broker did not confirm a batch; `_send_one` logged it, with what it held."""


class SpoolDrainer:
    def __init__(
        self,
        spool: Spool,
        link: BrokerLink,
        *,
        queue: str,
        max_envelopes: int,
        max_bytes: int,
        confirm_timeout: float,
        on_confirmed: Callable[[], None] = lambda: None,
    ) -> None:
        self.spool = spool
        self.link = link
        self.queue = queue
        self.max_envelopes = max(1, max_envelopes)
        self.max_bytes = max_bytes
        self.confirm_timeout = confirm_timeout
        self.on_confirmed = on_confirmed
        self._task: asyncio.Task[None] | None = None
        self._never = asyncio.Event()  # the drainer stops by cancellation

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="spool-drainer")

    async def stop(self) -> None:
        """Stop at once; a publish whose confirm was not seen is sent again next time."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def finish(self, timeout: float) -> None:
        """At shutdown: give the drainer up to `timeout` to empty the spool, while the broker
        is there (a spool on a volume that dies with the pod would lose its callbacks)."""
        if self.link.ready:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.spool.wait_until_empty(), timeout)
        if self.spool.records:
            log.warning("spool_left_at_shutdown", records=self.spool.records)
        await self.stop()

    async def _run(self) -> None:
        while True:
            await self.spool.wait_for_records()
            async for attempt in retrying(
                stop=self._never,
                max_wait=RETRY_MAX_SECONDS,
                on_retry=_logged_already,
                retry_on=lambda error: isinstance(error, _Refused),
            ):
                with attempt:
                    await self._send_when_linked()

    async def _send_when_linked(self) -> None:
        # Polled: `ready` reads the channel and connection, which no event covers.
        while not self.link.ready:  # noqa: ASYNC110
            await asyncio.sleep(LINK_POLL_SECONDS)
        await self._send_one()

    async def _send_one(self) -> None:
        """Send and confirm the oldest spooled records; `_Refused` if the broker would not."""
        batch = await self.spool.next_batch(self.max_envelopes, self.max_bytes)
        if batch is None:
            return
        try:
            await self.link.publish(
                raw_message(batch.payloads),
                self.queue,
                mandatory=True,
                timeout=self.confirm_timeout,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "spool_drain_failed",
                envelopes=len(batch.payloads),
                reason=type(exc).__name__,
                error=str(exc),
            )
            raise _Refused from exc
        await self.spool.confirm(batch)
        self.on_confirmed()
        if not self.spool.records:
            log.info("spool_drained")


def _logged_already(state: RetryCallState) -> None:
    """Nothing to add: `_send_one` logs each refused publish."""


def start_drainer(
    spool: Spool | None, link: BrokerLink, settings: Settings, publisher: CoalescingPublisher
) -> SpoolDrainer | None:
    if spool is None:
        return None
    drainer = SpoolDrainer(
        spool,
        link,
        queue=settings.raw_queue,
        max_envelopes=settings.coalesce_max_envelopes,
        max_bytes=settings.coalesce_max_bytes,
        confirm_timeout=settings.confirm_timeout,
        on_confirmed=publisher.broker_confirmed,
    )
    drainer.start()
    return drainer
