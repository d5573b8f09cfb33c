"""The one place cdrflow writes into aiormq's private channel state (for
`cdrflow.batchpublish`).

aiormq publishes one message per call, each with its own future and write; publishing a
worker's records that way costs about a third of the worker's CPU (docs/benchmarks.md,
"Private library internals"). A batch does instead what `aiormq.Channel.basic_publish`
does inside the channel's lock, for many messages at once: it numbers each publish with
the channel's next delivery tag (`Channel.delivery_tag`), leaves something future-like
where aiormq keeps a publish's confirmation (`Channel.confirmations`, by tag; and
`Channel.message_id_delivery_tag`, which matches a basic.return to its publish), and puts
the frames on the connection's write queue (`Channel.write_queue`). aiormq's frame reader
then settles them (`Channel._on_confirm_frame`, `_confirm_delivery`, `_on_return_frame`),
calling only `done`, `cancelled`, `set_result` and `set_exception`.

aiormq is pinned in constraints.txt; tests/unit/test_aiormq_channel.py fails, naming the
installed aiormq, when any of this changes."""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from typing import Protocol, cast

import aiormq
from aiormq.abc import ChannelFrame


class Settled(Protocol):
    """What aiormq's frame reader calls on a publish's confirmation."""

    def done(self) -> bool: ...

    def cancelled(self) -> bool: ...

    def set_result(self, result: object, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


class PublishingChannel:
    """An aiormq channel, seen through what a batch of publishes needs of it."""

    __slots__ = ("channel",)

    def __init__(self, channel: aiormq.Channel) -> None:
        if not channel.publisher_confirms:
            raise ValueError("a batch publish needs a channel with publisher confirms")
        self.channel = channel

    @property
    def number(self) -> int:
        return self.channel.number

    @property
    def max_content_size(self) -> int:
        """Bytes of a message body one frame carries."""
        return self.channel.max_content_size

    def lock(self) -> AbstractAsyncContextManager[None]:
        """The channel's publish lock: delivery tags are taken and frames written under it."""
        return self.channel.lock

    def create_future(self) -> asyncio.Future[None]:
        """A future aiormq rejects when the channel closes."""
        return self.channel.create_future()

    def next_tag(self) -> int:
        return self.channel.delivery_tag + 1

    def expect_confirm(self, confirmation: Settled, message_id: str | None) -> int:
        """Take the next delivery tag for `confirmation`, which aiormq's frame reader then
        settles; with `message_id`, a basic.return of it settles it too. Returns the tag."""
        channel = self.channel
        channel.delivery_tag += 1
        tag: int = channel.delivery_tag
        channel.confirmations[tag] = cast("asyncio.Future[object]", confirmation)
        if message_id is not None:
            channel.message_id_delivery_tag[message_id] = tag
        return tag

    def forget_message_id(self, message_id: str, tag: int) -> None:
        """Once its publish is settled, as aiormq does for its own."""
        if self.channel.message_id_delivery_tag.get(message_id) == tag:
            del self.channel.message_id_delivery_tag[message_id]

    def withdraw(self, first_tag: int) -> None:
        """Give back the delivery tags from `first_tag` on, as aiormq does for a publish
        that was not sent."""
        channel = self.channel
        for tag in range(first_tag, channel.delivery_tag + 1):
            channel.confirmations.pop(tag, None)
        channel.delivery_tag = first_tag - 1

    async def write(self, frames: bytes) -> None:
        """Queue encoded frames for the connection's writer, as they are."""
        await self.channel.write_queue.put(ChannelFrame(payload=frames, should_close=False))
