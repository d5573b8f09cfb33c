"""Making callbacks durable: requests that arrive together share one confirmed message.

Every request appends its envelope to the open batch and waits. A batch is shipped when it
reaches `coalesce_max_envelopes` or `coalesce_max_bytes`, or `coalesce_linger_ms` after its
first envelope, as one persistent, mandatory message with publisher confirms. Batches are
pipelined: the next one fills while earlier ones wait for their confirms. So one broker
round trip serves many requests, and a request waits at most the linger plus one confirm.

With a spool, what the broker does not confirm (no connection, nack, return, confirm
timeout) is appended to the spool instead, and the request succeeds once that is fsynced.
After a failed publish, requests go straight to the spool, without waiting for a confirm
that is unlikely to come, until the drainer or a publish sees the broker confirm again."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from cdrflow.amqp import BrokerLink, raw_message
from cdrflow.logs import get_logger
from ingress.ingress_metrics import IngressMetrics
from ingress.spool import Spool, SpoolFull

log = get_logger("cdrflow.ingress.publisher")


class NotDurable(Exception):
    """The broker did not confirm the message: the request must not be answered 200."""


@dataclass
class _Batch:
    parts: list[bytes] = field(default_factory=list)
    size: int = 0
    # One future per request, not one shared future each request shields: a request whose
    # task is cancelled cancels only its own future, never the publish the others wait on,
    # and this costs a third of what asyncio.shield does per request.
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None
    shipped: bool = False

    def settle(self, failure: Exception | None) -> None:
        for waiter in self.waiters:
            if waiter.done():  # its request was cancelled
                continue
            if failure is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(failure)


class CoalescingPublisher:
    def __init__(
        self,
        link: BrokerLink,
        *,
        queue: str,
        max_envelopes: int,
        max_bytes: int,
        linger_ms: float,
        confirm_timeout: float,
        metrics: IngressMetrics,
        spool: Spool | None = None,
    ) -> None:
        self.link = link
        self.queue = queue
        self.max_envelopes = max(1, max_envelopes)
        self.max_bytes = max_bytes
        self.linger = max(0.0, linger_ms) / 1000
        self.confirm_timeout = confirm_timeout
        self.metrics = metrics
        self.spool = spool
        self._broker_failing = False
        self._open: _Batch | None = None
        self._sending: set[asyncio.Task[None]] = set()

    @property
    def ready(self) -> bool:
        """Callbacks can be made durable now: on the broker, or in a spool with room."""
        return self.link.ready or (self.spool is not None and self.spool.has_room)

    def broker_confirmed(self) -> None:
        """The broker confirmed a publish (ours or the drainer's): stop bypassing it."""
        self._broker_failing = False

    async def make_durable(self, encoded_envelope: bytes) -> None:
        """Return once the envelope is in a message the broker confirmed, or fsynced in the
        spool; else NotDurable."""
        spool = self.spool
        if spool is None or not spool.can_take(len(encoded_envelope)):
            await self._join(encoded_envelope)
            return
        if self.link.ready and not self._broker_failing:
            try:
                await self._join(encoded_envelope)
                return
            except NotDurable:
                pass  # the reason is logged and counted once per batch in _send
        try:
            await spool.append(encoded_envelope)
        except SpoolFull as exc:
            raise NotDurable(str(exc)) from exc

    def _join(self, encoded_envelope: bytes) -> asyncio.Future[None]:
        """Add the envelope to the open batch; the future is settled when the broker has
        confirmed the batch or failed to. (A plain function: a coroutine costs more.)"""
        if not self.link.ready:
            raise NotDurable("no connection to RabbitMQ")
        batch = self._open
        if batch is not None and batch.size + len(encoded_envelope) > self.max_bytes:
            self._ship(batch)
            batch = None
        if batch is None:
            batch = self._open = _Batch()
            loop = asyncio.get_running_loop()
            batch.timer = loop.call_later(self.linger, self._ship, batch)
        batch.parts.append(encoded_envelope)
        batch.size += len(encoded_envelope)
        waiter = asyncio.get_running_loop().create_future()
        batch.waiters.append(waiter)
        if len(batch.parts) >= self.max_envelopes:
            self._ship(batch)
        return waiter

    def _ship(self, batch: _Batch) -> None:
        if batch.timer is not None:
            batch.timer.cancel()
            batch.timer = None
        if self._open is batch:
            self._open = None
        if not batch.parts or batch.shipped:
            return
        batch.shipped = True
        task = asyncio.create_task(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: _Batch) -> None:
        message = raw_message(batch.parts)
        body = message.body
        started = time.perf_counter()
        try:
            await self.link.publish(
                message, self.queue, mandatory=True, timeout=self.confirm_timeout
            )
        except Exception as exc:
            reason = type(exc).__name__
            self.metrics.publish_failures.labels(reason).inc()
            log.warning("publish_failed", envelopes=len(batch.parts), reason=reason, error=str(exc))
            self._broker_failing = True
            batch.settle(NotDurable(f"{reason}: {exc}"))
            return
        self.broker_confirmed()
        self.metrics.confirm_seconds.observe(time.perf_counter() - started)
        self.metrics.batch_envelopes.observe(len(batch.parts))
        self.metrics.batch_bytes.observe(len(body))
        batch.settle(None)

    async def drain(self) -> None:
        """Ship what is coalescing and wait for every publish in flight."""
        if self._open is not None:
            self._ship(self._open)
        while self._sending:
            with contextlib.suppress(Exception):
                await asyncio.gather(*self._sending, return_exceptions=True)
