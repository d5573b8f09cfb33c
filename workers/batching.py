"""Where a worker's batches begin and end.

A batch closes at `batch_size` callbacks, at `batch_bytes` of messages, `batch_wait_ms`
after its first message, or when every prefetched message is in hand (no more can come
until some are acknowledged).
A redelivered message is never batched with others: it is handed over alone, so that a
message that crashes workers cannot drag its neighbours to the dead-letter queue.

Prefetch is counted in messages, and set once per subscription (changing it would mean
subscribing anew, and RabbitMQ hands the deliveries in flight back to the queue, counting
them against the delivery limit): two batches of callbacks even if each message holds one,
so the next batch arrives while the current one is stored, and never more than `prefetch`
(the setting) messages."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import Generic, Protocol, TypeVar

from schemas.envelope import COUNT_HEADER

POLL = 0.25  # seconds between looks at the stop condition while the queue is idle


class Delivered(Protocol):
    @property
    def headers(self) -> Mapping[str, object] | None: ...

    @property
    def body(self) -> bytes: ...


def envelope_count(message: Delivered) -> int:
    count = (message.headers or {}).get(COUNT_HEADER, 1)
    return count if isinstance(count, int) and count > 0 else 1


def prefetch_for(batch_size: int, prefetch_cap: int) -> int:
    return max(1, min(prefetch_cap, 2 * batch_size))


def redeliveries(message: Delivered) -> int:
    """How often RabbitMQ has handed this message out before (quorum queues count). From
    RabbitMQ 4.3 a message returned because its consumer died is not counted, only flagged
    `redelivered`: that flag counts as one, so the message is still handled alone."""
    count = (message.headers or {}).get("x-delivery-count", 0)
    counted = count if isinstance(count, int) else 0
    return max(counted, 1 if getattr(message, "redelivered", False) is True else 0)


M = TypeVar("M", bound=Delivered)


class Inbox(Generic[M]):
    def __init__(
        self,
        batch_size: int,
        wait_ms: float,
        prefetch: int,
        batch_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.batch_size = batch_size
        self.batch_bytes = batch_bytes
        self.wait = wait_ms / 1000
        self.prefetch = max(1, prefetch)
        self.queue: asyncio.Queue[M] = asyncio.Queue()
        self._held: M | None = None

    def put(self, message: M) -> None:
        self.queue.put_nowait(message)

    @property
    def empty(self) -> bool:
        return self._held is None and self.queue.empty()

    def take_all(self) -> list[M]:
        """Everything in hand that is not in a batch yet (to give it back)."""
        taken = [self._held] if self._held is not None else []
        self._held = None
        while not self.queue.empty():
            taken.append(self.queue.get_nowait())
        return taken

    def clear(self) -> None:
        self._held = None
        self.queue = asyncio.Queue()

    async def next_batch(self, stop: Callable[[], bool], wait: bool = True) -> list[M]:
        """The next batch; [] when `stop()` turns true while waiting, or at once when
        `wait` is false and nothing is in hand."""
        first = await self._first(stop, wait)
        if first is None:
            return []
        if redeliveries(first):
            return [first]
        return await self._fill([first], stop, wait)

    async def _first(self, stop: Callable[[], bool], wait: bool) -> M | None:
        first, self._held = self._held, None
        while first is None:
            if self.queue.empty() and (not wait or stop()):
                return None
            with contextlib.suppress(TimeoutError):
                first = await asyncio.wait_for(self.queue.get(), POLL)
        return first

    async def _fill(self, batch: list[M], stop: Callable[[], bool], wait: bool) -> list[M]:
        """Add messages until the batch is full or closes; a redelivered message is kept
        for the next batch, which it will have to itself."""
        callbacks = envelope_count(batch[0])
        size = len(batch[0].body)
        deadline = asyncio.get_running_loop().time() + self.wait
        while (
            callbacks < self.batch_size and size < self.batch_bytes and len(batch) < self.prefetch
        ):
            message = await self._next(deadline, stop, wait)
            if message is None:
                break
            if redeliveries(message):
                self._held = message
                break
            batch.append(message)
            callbacks += envelope_count(message)
            size += len(message.body)
        return batch

    async def _next(self, deadline: float, stop: Callable[[], bool], wait: bool) -> M | None:
        if not self.queue.empty():
            return self.queue.get_nowait()
        remaining = deadline - asyncio.get_running_loop().time()
        if not wait or remaining <= 0 or stop():
            return None
        try:
            return await asyncio.wait_for(self.queue.get(), remaining)
        except TimeoutError:
            return None
