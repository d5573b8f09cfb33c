"""Fails loudly, naming the installed aiormq, when the channel internals that
`cdrflow.aiormq_channel` writes into change: a real `aiormq.Channel` (over a stand-in
connection) and aiormq's own frame handlers, no broker."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator
from importlib.metadata import version
from types import SimpleNamespace
from typing import Any, cast

import aiormq
import pytest
from aiormq.abc import AbstractConnection, ChannelFrame
from aiormq.base import Base
from pamqp import commands as spec

from cdrflow.aiormq_channel import PublishingChannel

FRAME_MAX = 131_072


def changed(what: str) -> str:
    return (
        f"aiormq {version('aiormq')} changed {what}: cdrflow/aiormq_channel.py relies on it; "
        'see docs/benchmarks.md, "Private library internals"'
    )


class StandInConnection(Base):
    """What `aiormq.Channel.__init__` reads of its connection."""

    def __init__(self) -> None:
        super().__init__(loop=asyncio.get_running_loop())
        self.publisher_confirms = True
        self.connection_tune = SimpleNamespace(frame_max=FRAME_MAX)
        self.write_queue: asyncio.Queue[Any] = asyncio.Queue()

    async def _on_close(self, exc: BaseException | type[BaseException] | None = None) -> None:
        return None

    def __str__(self) -> str:
        return "stand-in connection"


def as_connection(stand_in: StandInConnection) -> AbstractConnection:
    return cast(AbstractConnection, stand_in)


class Recorded:
    """A confirmation with exactly what `cdrflow.aiormq_channel.Settled` declares: aiormq
    asking anything else of it raises AttributeError."""

    __slots__ = ("outcome",)

    def __init__(self) -> None:
        self.outcome: object = None

    def done(self) -> bool:
        return self.outcome is not None

    def cancelled(self) -> bool:
        return False

    def set_result(self, result: object, /) -> None:
        self.outcome = result

    def set_exception(self, exception: BaseException, /) -> None:
        self.outcome = exception


@pytest.fixture
async def connection() -> StandInConnection:
    return StandInConnection()


@pytest.fixture
async def channel(connection: StandInConnection) -> AsyncIterator[aiormq.Channel]:
    try:
        opened = aiormq.Channel(as_connection(connection), 1, publisher_confirms=True)
    except Exception as exc:
        pytest.fail(changed(f"Channel.__init__ ({exc!r})"))
    yield opened
    await opened.close()


async def settle(channel: aiormq.Channel, frame: spec.Basic.Ack | spec.Basic.Nack) -> None:
    try:
        await channel._on_confirm_frame(frame)
        await asyncio.sleep(0)  # a multiple ack settles in call_soon callbacks
    except AttributeError as exc:
        pytest.fail(changed(f"what its frame reader asks of a confirmation ({exc})"))


async def test_a_channel_keeps_the_state_a_batch_writes_into(
    channel: aiormq.Channel, connection: StandInConnection
) -> None:
    assert channel.delivery_tag == 0, changed("Channel.delivery_tag")
    assert isinstance(channel.confirmations, dict), changed("Channel.confirmations")
    assert isinstance(channel.message_id_delivery_tag, dict), changed(
        "Channel.message_id_delivery_tag"
    )
    assert channel.write_queue is connection.write_queue, changed("Channel.write_queue")
    assert 0 < channel.max_content_size < FRAME_MAX, changed("Channel.max_content_size")
    assert channel.number == 1, changed("Channel.number")
    try:
        async with PublishingChannel(channel).lock():
            pass
    except TypeError as exc:
        pytest.fail(changed(f"Channel.lock, an async context manager ({exc})"))


def test_basic_publish_still_keeps_its_confirmations_where_a_batch_puts_them() -> None:
    """A batch takes delivery tags and registers confirmations as basic_publish does."""
    names = set(aiormq.Channel.basic_publish.__code__.co_names)
    uses = {"lock", "delivery_tag", "confirmations", "message_id_delivery_tag", "write_queue"}
    assert uses <= names, changed(f"Channel.basic_publish (no longer uses {uses - names})")


@pytest.mark.parametrize(
    ("handler", "uses"),
    [
        ("_on_confirm_frame", {"confirmations", "_confirm_delivery"}),
        ("_confirm_delivery", {"confirmations", "done", "set_result", "set_exception"}),
        ("_on_return_frame", {"message_id_delivery_tag", "confirmations", "set_exception"}),
    ],
)
def test_the_frame_reader_settles_confirmations_from_the_channel_state(
    handler: str, uses: set[str]
) -> None:
    function = getattr(aiormq.Channel, handler, None)
    assert function is not None, changed(f"Channel.{handler} (gone)")
    assert list(inspect.signature(function).parameters)[:2] in (
        ["self", "frame"],
        ["self", "delivery_tag"],
    ), changed(f"the signature of Channel.{handler}")
    names = set(function.__code__.co_names)
    assert uses <= names, changed(f"Channel.{handler} (no longer uses {uses - names})")


async def test_aiormqs_reader_settles_what_expect_confirm_registered(
    channel: aiormq.Channel,
) -> None:
    publishing = PublishingChannel(channel)
    confirmations = [Recorded() for _ in range(4)]
    tags = [publishing.expect_confirm(c, f"m{n}") for n, c in enumerate(confirmations)]
    assert tags == [1, 2, 3, 4]
    assert channel.message_id_delivery_tag == {"m0": 1, "m1": 2, "m2": 3, "m3": 4}
    await settle(channel, spec.Basic.Ack(delivery_tag=2, multiple=True))
    await settle(channel, spec.Basic.Nack(delivery_tag=3))
    await settle(channel, spec.Basic.Ack(delivery_tag=4))
    outcomes = [c.outcome for c in confirmations]
    assert [type(o) for o in outcomes] == [
        spec.Basic.Ack,
        spec.Basic.Ack,
        aiormq.exceptions.DeliveryError,
        spec.Basic.Ack,
    ], changed("how Channel._on_confirm_frame settles confirmations")
    assert channel.confirmations == {}, changed("Channel.confirmations (settled ones stay)")


async def test_a_withdrawn_batch_gives_its_tags_back(
    channel: aiormq.Channel, connection: StandInConnection
) -> None:
    publishing = PublishingChannel(channel)
    first = publishing.next_tag()
    for _ in range(3):
        publishing.expect_confirm(Recorded(), None)
    publishing.withdraw(first)
    assert channel.delivery_tag == first - 1
    assert channel.confirmations == {}
    await publishing.write(b"frames")
    written = connection.write_queue.get_nowait()
    assert isinstance(written, ChannelFrame), changed("what its write queue takes")
    assert written.payload == b"frames"


async def test_a_channel_without_publisher_confirms_is_refused(
    connection: StandInConnection,
) -> None:
    plain = aiormq.Channel(as_connection(connection), 2, publisher_confirms=False)
    try:
        with pytest.raises(ValueError, match="publisher confirms"):
            PublishingChannel(plain)
    finally:
        await plain.close()
