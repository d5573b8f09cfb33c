"""Where batches begin and end (workers.batching), with plain messages: no broker needed."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

from schemas.envelope import COUNT_HEADER
from workers.batching import Inbox, prefetch_for, redeliveries


@dataclass
class Message:
    name: str
    headers: Mapping[str, object] = field(default_factory=dict)
    body: bytes = b"{}"
    redelivered: bool = False  # the AMQP flag


def message(name: str, callbacks: int = 1, redelivered: int = 0, size: int = 2) -> Message:
    headers: dict[str, object] = {COUNT_HEADER: callbacks}
    if redelivered:
        headers["x-delivery-count"] = redelivered
    return Message(name, headers, b"x" * size)


def inbox(batch_size: int = 10, wait_ms: float = 30, prefetch: int = 100) -> Inbox[Message]:
    return Inbox(batch_size, wait_ms, prefetch)


def never() -> bool:
    return False


async def test_a_batch_closes_at_batch_size_callbacks() -> None:
    box = inbox(batch_size=10)
    for n in range(5):
        box.put(message(f"m{n}", callbacks=4))
    first = await box.next_batch(never)
    assert [m.name for m in first] == ["m0", "m1", "m2"]  # 12 callbacks >= 10
    second = await box.next_batch(never)
    assert [m.name for m in second] == ["m3", "m4"]  # then the wait runs out


async def test_a_batch_closes_at_batch_bytes() -> None:
    box = Inbox[Message](1000, 30, 100, batch_bytes=1000)
    for n in range(4):
        box.put(message(f"m{n}", size=400))
    assert [m.name for m in await box.next_batch(never)] == ["m0", "m1", "m2"]  # 1200 >= 1000
    assert [m.name for m in await box.next_batch(never)] == ["m3"]


def test_what_is_in_hand_can_be_taken_back() -> None:
    box = inbox()
    for name in ("a", "b"):
        box.put(message(name))
    assert [m.name for m in box.take_all()] == ["a", "b"]
    assert box.empty


async def test_a_batch_closes_when_the_wait_runs_out() -> None:
    box = inbox(batch_size=1000, wait_ms=30)
    box.put(message("early"))
    # far from full and nothing more coming: it must close on its own (or hang the test)
    batch = await asyncio.wait_for(box.next_batch(never), 10)
    assert [m.name for m in batch] == ["early"]
    box.put(message("late"))
    assert [m.name for m in await asyncio.wait_for(box.next_batch(never), 10)] == ["late"]


async def test_a_batch_closes_when_every_prefetched_message_is_in_hand() -> None:
    box = inbox(batch_size=1000, wait_ms=60_000, prefetch=3)
    for n in range(3):
        box.put(message(f"m{n}"))
    batch = await asyncio.wait_for(box.next_batch(never), 5)  # not waiting a minute
    assert len(batch) == 3


async def test_a_redelivered_message_is_handed_over_alone() -> None:
    box = inbox()
    for item in (message("a"), message("b"), message("again", redelivered=1), message("c")):
        box.put(item)
    assert [m.name for m in await box.next_batch(never)] == ["a", "b"]
    assert [m.name for m in await box.next_batch(never)] == ["again"]
    assert [m.name for m in await box.next_batch(never)] == ["c"]


async def test_a_message_flagged_redelivered_but_not_counted_is_handed_over_alone() -> None:
    # RabbitMQ 4.3 and later: a message returned because its consumer died keeps its
    # x-delivery-count; only the AMQP redelivered flag says it came back.
    flagged = Message("again", {COUNT_HEADER: 1}, b"x", redelivered=True)
    assert redeliveries(flagged) == 1
    assert redeliveries(message("counted", redelivered=3)) == 3
    assert redeliveries(message("fresh")) == 0
    box = inbox()
    for item in (message("a"), flagged, message("c")):
        box.put(item)
    assert [m.name for m in await box.next_batch(never)] == ["a"]
    assert [m.name for m in await box.next_batch(never)] == ["again"]
    assert [m.name for m in await box.next_batch(never)] == ["c"]


async def test_stop_ends_an_idle_wait_and_no_wait_drains() -> None:
    box = inbox()
    assert await asyncio.wait_for(box.next_batch(lambda: True), 5) == []
    box.put(message("left"))
    assert [m.name for m in await box.next_batch(lambda: True, wait=False)] == ["left"]
    assert await box.next_batch(never, wait=False) == []


def test_prefetch_holds_two_batches_of_one_callback_messages_within_the_cap() -> None:
    # Fixed for a subscription: the next batch arrives while the current one is stored,
    # whatever the messages hold, and the setting bounds it.
    assert prefetch_for(batch_size=500, prefetch_cap=5000) == 1000
    assert prefetch_for(batch_size=500, prefetch_cap=500) == 500
    assert prefetch_for(batch_size=20, prefetch_cap=50) == 40
    assert prefetch_for(batch_size=1, prefetch_cap=0) == 1
