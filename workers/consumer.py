"""A worker's subscription to `cdr.raw`: take batches and hand them to the pipeline.

- Prefetch is set once per connection (see `workers.batching`); the consumer is never
  cancelled and re-created for our own bookkeeping, since RabbitMQ would count the
  deliveries in flight against the delivery limit.
- A batch that fails for a reason other than the connection (a bug) is handed back to the
  broker with basic.reject, alone: the connection and the other messages in hand stay.
- While the database is down (`DatabaseHold.waiting`) the consumer pauses: it holds the
  batch being stored, gives back everything else in hand, and subscribes again once the
  batch is stored.
- A lost connection, or a consumer the broker cancels (its queue deleted, a failover),
  ends the session: the messages in hand are the broker's again, and the consumer
  connects, declares and subscribes anew, with backoff.
- Stopping: cancel the subscription, finish the messages in hand (or give them back when
  the worker gives up on the database), close."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
)
from tenacity import RetryCallState

from cdrflow.amqp import connect, declare
from cdrflow.backoff import BROKER_WAIT_MAX, is_loud, retry_fields, retrying
from cdrflow.logs import get_logger
from cdrflow.settings import Settings
from workers.batching import Inbox, prefetch_for
from workers.pipeline import Pipeline
from workers.storage.database import DatabaseHold

log = get_logger("cdrflow.worker")

Message = AbstractIncomingMessage


class SessionLost(Exception):
    """The channel to RabbitMQ is gone: the messages in hand are the broker's again."""


class Consumer:
    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline,
        hold: DatabaseHold,
        stopping: asyncio.Event,
        consuming: asyncio.Event,
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.hold = hold
        self.stopping = stopping
        self.consuming = consuming  # set while a session is open

    async def run(self) -> None:
        """Consume until stopping, through broker restarts and cancelled subscriptions."""
        while not self.stopping.is_set():
            try:
                session = await self._open_retrying()
            except Exception:
                return  # stopping while the broker was unreachable
            try:
                await session.run()
            except SessionLost as exc:
                log.warning("consumer_interrupted", reason=str(exc))
            except Exception as exc:
                log.exception("consumer_failed", error=f"{type(exc).__name__}: {exc}")
            finally:
                self.consuming.clear()
                await session.close()

    async def _open_retrying(self) -> Session:
        async for attempt in retrying(
            stop=self.stopping, max_wait=BROKER_WAIT_MAX, on_retry=_log_unavailable
        ):
            with attempt:
                session = await Session.open(self.settings, self.pipeline, self.hold, self.stopping)
        self.consuming.set()
        return session


def _log_unavailable(state: RetryCallState) -> None:
    level = log.warning if is_loud(state) else log.debug
    level("consumer_unavailable", **retry_fields(state))


class Session:
    """One connection, one channel, one subscription to the raw queue."""

    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline,
        hold: DatabaseHold,
        stopping: asyncio.Event,
        connection: AbstractConnection,
        channel: AbstractChannel,
        queue: AbstractQueue,
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.hold = hold
        self.stopping = stopping
        self.connection = connection
        self.channel = channel
        self.queue = queue
        self.inbox: Inbox[Message] = Inbox(
            settings.batch_size,
            settings.batch_wait_ms,
            prefetch_for(settings.batch_size, settings.effective_prefetch),
            batch_bytes=settings.batch_max_bytes,
        )
        self.lost: str | None = None  # why the session ended, once it has
        self.tag: str | None = None
        self.subscribed = asyncio.Event()

    @classmethod
    async def open(
        cls, settings: Settings, pipeline: Pipeline, hold: DatabaseHold, stopping: asyncio.Event
    ) -> Session:
        connection = await connect(settings.amqp_url, "cdrflow-worker")
        try:
            channel = await connection.channel()
            await declare(channel, settings.topology())
            queue = await channel.get_queue(settings.raw_queue, ensure=False)
            session = cls(settings, pipeline, hold, stopping, connection, channel, queue)
            await channel.set_qos(prefetch_count=session.inbox.prefetch)
            await session._watch()
            await session.subscribe()
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 5)
            raise
        log.info("worker_consuming", queue=settings.raw_queue, prefetch=session.inbox.prefetch)
        return session

    async def _watch(self) -> None:
        self.connection.close_callbacks.add(lambda *_: self._end("connection to RabbitMQ lost"))
        self.channel.close_callbacks.add(lambda *_: self._end("channel to RabbitMQ closed"))
        underlay = await self.channel.get_underlay_channel()
        underlay.on_consumer_cancel_callbacks.add(self._cancelled_by_broker)

    def _cancelled_by_broker(self, frame: Any) -> None:
        if frame.consumer_tag == self.tag:
            self.tag = None
            self._end("the broker cancelled the subscription")

    def _end(self, reason: str) -> None:
        if self.lost is None:
            self.lost = reason

    def _done(self) -> bool:
        return self.lost is not None or self.stopping.is_set()

    async def run(self) -> None:
        pauser = asyncio.create_task(self._pause_while_database_waits(), name="consumer-pause")
        try:
            while not self._done():
                batch = await self.inbox.next_batch(self._done)
                if batch:
                    await self._settle(batch)
                    await self._resume_if_paused()
            if self.lost is not None:
                raise SessionLost(self.lost)
            await self._finish_in_hand()
        finally:
            pauser.cancel()

    async def _settle(self, batch: list[Message]) -> None:
        """Process a batch; if that fails for any reason but a lost channel, hand exactly
        what is still unsettled back to the broker, which counts a delivery for each."""
        unsettled = list(batch)
        try:
            await self.pipeline.process_batch(unsettled)
        except Exception as exc:
            if self.lost is not None:
                raise SessionLost(self.lost) from exc
            log.exception("batch_failed", messages=len(unsettled))
            await give_back(unsettled)

    async def _finish_in_hand(self) -> None:
        """Stopping: take no more work, finish what is in hand (or give it back)."""
        await self.unsubscribe()
        await asyncio.sleep(0)  # let deliveries already read off the socket land
        while batch := await self.inbox.next_batch(lambda: self.lost is not None, wait=False):
            if self.hold.give_up.is_set():
                await give_back([*batch, *self.inbox.take_all()])
                return
            await self._settle(batch)

    async def subscribe(self) -> None:
        self.tag = await self.queue.consume(self._take, no_ack=False)
        self.subscribed.set()

    async def _take(self, message: Message) -> None:
        self.inbox.put(message)

    async def unsubscribe(self) -> None:
        self.subscribed.clear()
        tag, self.tag = self.tag, None
        if tag is not None and self.lost is None:
            await self.queue.cancel(tag)  # returns once no more deliveries can arrive

    async def _pause_while_database_waits(self) -> None:
        """Hold the batch being stored and no more: a stalled worker must not sit on
        messages that other workers (or this one, later) could store."""
        while True:
            await self.hold.waiting.wait()
            await self.unsubscribe()
            returned = self.inbox.take_all()
            await give_back(returned)
            log.warning("consuming_paused", reason="database unavailable", returned=len(returned))
            await self.subscribed.wait()

    async def _resume_if_paused(self) -> None:
        if not self.subscribed.is_set() and not self._done():
            await self.subscribe()
            log.info("consuming_resumed")

    async def close(self) -> None:
        self.inbox.clear()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.connection.close(), 5)


async def give_back(messages: list[Message]) -> None:
    """Return messages to the queue. basic.reject (not nack): RabbitMQ 4.3+ counts a
    delivery for a reject only, and the count is what parks a crash-looping message."""
    for message in messages:
        await message.reject(requeue=True)
