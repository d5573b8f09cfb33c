"""Where a worker's batches begin and end.

A batch closes at `batch_size` callbacks, at `batch_bytes` of messages, `batch_wait_ms`
after its first message, or when every prefetched message is in hand (no more can come
until some are acknowledged).
A redelivered message is never batched with others: it is handed over alone, so that a
message that crashes workers cannot drag its neighbours to the dead-letter queue.

Prefetch is counted in messages, but a message holds up to `coalesce_max_envelopes`
callbacks. The worker therefore sizes its prefetch from what it sees: about one batch of
callbacks in hand, never more than `prefetch` (the setting) messages."""

from __future__ import annotations

import asyncio
import contextlib
import math
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


def redeliveries(message: Delivered) -> int:
    """How often RabbitMQ has handed this message out before (quorum queues count)."""
    count = (message.headers or {}).get("x-delivery-count", 0)
    return count if isinstance(count, int) else 0


M = TypeVar("M", bound=Delivered)


class Inbox(Generic[M]):
    def __init__(
        self,
        batch_size: int,
        wait_ms: float,
        prefetch_cap: int,
        initial: int,
        batch_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.batch_size = batch_size
        self.batch_bytes = batch_bytes
        self.wait = wait_ms / 1000
        self.prefetch_cap = max(1, prefetch_cap)
        self.prefetch = max(1, min(initial, self.prefetch_cap))
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
        first = self._held
        self._held = None
        while first is None:
            if self.queue.empty() and (not wait or stop()):
                return []
            with contextlib.suppress(TimeoutError):
                first = await asyncio.wait_for(self.queue.get(), POLL)
        batch = [first]
        if redeliveries(first):
            return batch
        callbacks = envelope_count(first)
        size = len(first.body)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait
        while (
            callbacks < self.batch_size and size < self.batch_bytes and len(batch) < self.prefetch
        ):
            if self.queue.empty():
                remaining = deadline - loop.time()
                if not wait or remaining <= 0 or stop():
                    break
                try:
                    message = await asyncio.wait_for(self.queue.get(), remaining)
                except TimeoutError:
                    break
            else:
                message = self.queue.get_nowait()
            if redeliveries(message):
                self._held = message
                break
            batch.append(message)
            callbacks += envelope_count(message)
            size += len(message.body)
        return batch

    def resize(self, batch: list[M]) -> int | None:
        """The prefetch that holds about one batch of callbacks, judged by this batch's
        callbacks per message; None when the current one is close enough."""
        per_message = sum(envelope_count(m) for m in batch) / len(batch)
        target = max(1, min(self.prefetch_cap, math.ceil(self.batch_size / per_message)))
        if abs(target - self.prefetch) <= max(1, self.prefetch // 4):
            return None
        self.prefetch = target
        return target
