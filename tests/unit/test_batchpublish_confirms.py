"""How `cdrflow.batchpublish` settles a batch's confirms by delivery tag, driven through
aiormq's own frame handlers (`Channel._on_confirm_frame`) on a stand-in channel: acks,
nacks, a timeout, a closed channel, mandatory message ids, and a write that fails."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import aiormq
import pytest
from pamqp import commands as spec

from cdrflow.batchpublish import Outgoing, publish_batch


class BrokenQueue(asyncio.Queue[Any]):
    async def put(self, item: Any) -> None:
        raise ConnectionResetError("write failed")


class FakeChannel:
    """The channel state publish_batch and aiormq's confirm handling use."""

    _confirm_delivery = aiormq.Channel._confirm_delivery

    def __init__(self, *, fail_write: bool = False) -> None:
        self.loop = asyncio.get_running_loop()
        self.publisher_confirms = True
        self.lock = asyncio.Lock()
        self.delivery_tag = 0
        self.confirmations: dict[int, Any] = {}
        self.message_id_delivery_tag: dict[str, int] = {}
        self.number = 1
        self.max_content_size = 131_064
        self.write_queue: asyncio.Queue[Any] = BrokenQueue() if fail_write else asyncio.Queue()
        self.futures: list[asyncio.Future[Any]] = []

    def create_future(self) -> asyncio.Future[Any]:
        future = self.loop.create_future()
        self.futures.append(future)
        return future

    async def confirm(self, frame: Any) -> None:
        await aiormq.Channel._on_confirm_frame(cast(aiormq.Channel, self), frame)
        await asyncio.sleep(0)  # aiormq settles a multiple ack in call_soon callbacks


def messages(count: int) -> list[Outgoing]:
    return [Outgoing("a.b", b"{}", f"m{i}", "application/json", {}, 0) for i in range(count)]


async def start(
    channel: FakeChannel, count: int, *, mandatory: bool = False, timeout: float = 5
) -> asyncio.Task[list[BaseException | None]]:
    real = cast(aiormq.Channel, channel)
    task = asyncio.create_task(
        publish_batch(real, "x", messages(count), mandatory=mandatory, timeout=timeout)
    )
    while channel.write_queue.empty():
        await asyncio.sleep(0)
    return task


async def test_a_multiple_ack_confirms_every_message_up_to_its_tag() -> None:
    channel = FakeChannel()
    task = await start(channel, 5)
    await channel.confirm(spec.Basic.Ack(delivery_tag=3, multiple=True))
    assert not task.done()
    await channel.confirm(spec.Basic.Ack(delivery_tag=4))
    await channel.confirm(spec.Basic.Ack(delivery_tag=5, multiple=True))
    assert await task == [None] * 5
    assert channel.confirmations == {}


async def test_a_nack_fails_its_message_only() -> None:
    channel = FakeChannel()
    task = await start(channel, 3)
    await channel.confirm(spec.Basic.Nack(delivery_tag=2))
    await channel.confirm(spec.Basic.Ack(delivery_tag=3, multiple=True))
    results = await task
    assert results[0] is None
    assert isinstance(results[1], aiormq.exceptions.DeliveryError)
    assert results[2] is None


async def test_messages_unconfirmed_in_time_fail_and_their_late_confirms_are_ignored() -> None:
    channel = FakeChannel()
    task = await start(channel, 3, timeout=0.05)
    await channel.confirm(spec.Basic.Ack(delivery_tag=1))
    results = await task
    assert results[0] is None
    assert all(isinstance(r, TimeoutError) for r in results[1:])
    await channel.confirm(spec.Basic.Ack(delivery_tag=3, multiple=True))  # no error
    assert channel.confirmations == {}


async def test_a_closed_channel_fails_the_messages_still_waiting() -> None:
    channel = FakeChannel()
    task = await start(channel, 3)
    await channel.confirm(spec.Basic.Ack(delivery_tag=1))
    closed = aiormq.exceptions.ChannelInvalidStateError("closed by the broker")
    for future in channel.futures:  # what aiormq's future store does on close
        if not future.done():
            future.set_exception(closed)
    assert await task == [None, closed, closed]


async def test_mandatory_message_ids_are_kept_until_their_message_is_settled() -> None:
    channel = FakeChannel()
    task = await start(channel, 2, mandatory=True)
    assert channel.message_id_delivery_tag == {"m0": 1, "m1": 2}
    await channel.confirm(spec.Basic.Ack(delivery_tag=1))
    assert channel.message_id_delivery_tag == {"m1": 2}
    await channel.confirm(spec.Basic.Ack(delivery_tag=2))
    assert await task == [None, None]
    assert channel.message_id_delivery_tag == {}


async def test_a_batch_that_cannot_be_written_gives_its_delivery_tags_back() -> None:
    channel = FakeChannel(fail_write=True)
    with pytest.raises(ConnectionResetError):
        await publish_batch(
            cast(aiormq.Channel, channel), "x", messages(3), mandatory=True, timeout=1
        )
    assert channel.delivery_tag == 0
    assert channel.confirmations == {}
    assert channel.message_id_delivery_tag == {}


async def test_at_most_two_windows_await_confirms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("cdrflow.batchpublish.WINDOW", 2)
    channel = FakeChannel()
    task = await start(channel, 5)
    assert channel.delivery_tag == 4  # two windows of two sent; the third waits for the first
    await channel.confirm(spec.Basic.Ack(delivery_tag=2, multiple=True))
    while channel.delivery_tag < 5:
        await asyncio.sleep(0)
    await channel.confirm(spec.Basic.Ack(delivery_tag=5, multiple=True))
    assert await task == [None] * 5
    assert channel.confirmations == {}


async def test_no_window_is_sent_after_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("cdrflow.batchpublish.WINDOW", 2)
    channel = FakeChannel()
    task = await start(channel, 6, timeout=0.05)
    results = await task
    assert channel.delivery_tag == 4  # the third window was never sent
    assert len(results) == 6
    assert all(isinstance(r, TimeoutError) for r in results)
