"""RabbitMQ: declaring the topology, and a publishing link that survives broker restarts.

aio-pika's robust connections have lost consumers and channels across broker restarts
(aio-pika #231, #626, still open), so cdrflow uses plain connections and owns the
reconnect loop: on any loss the whole connection is rebuilt and re-declared."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractMessage,
)
from tenacity import RetryCallState

from cdrflow.backoff import BROKER_WAIT_MAX, is_loud, retry_fields, retrying
from cdrflow.batchpublish import Outgoing, publish_batch
from cdrflow.logs import get_logger
from schemas.envelope import COUNT_HEADER, FORMAT, FORMAT_HEADER, encode_batch, uuid7
from schemas.topology import RECORD_KEY_SHAPE, Topology

log = get_logger("cdrflow.amqp")

CONNECT_TIMEOUT = 10.0
# A link whose publish the broker nacked opens a new connection, at most this often.
NACK_RENEWAL_SECONDS = 5.0


class BrokerUnavailable(Exception):
    """No usable connection to RabbitMQ right now."""


class TopologyMismatch(Exception):
    """A queue or exchange exists with other arguments than ours."""


def raw_message(encoded_envelopes: list[bytes]) -> aio_pika.Message:
    """The one way a message for `cdr.raw` is built: a persistent batch of envelopes.

    Always publish it `mandatory`: aiormq matches a basic.return to its publish by
    message_id, so without a message_id an unroutable message would look confirmed."""
    return aio_pika.Message(
        encode_batch(encoded_envelopes),
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=str(uuid7()),
        content_type="application/json",
        headers={FORMAT_HEADER: FORMAT, COUNT_HEADER: len(encoded_envelopes)},
    )


def broker_urls(setting: str) -> list[str]:
    """The nodes `CDRFLOW_AMQP_URL` names: one URL, or the nodes of a cluster separated by
    commas (a comma inside a password must be percent-encoded, as in any URL)."""
    urls = [url.strip() for url in setting.split(",") if url.strip()]
    if not urls:
        raise ValueError("no RabbitMQ URL given")
    return urls


def node_address(url: str) -> str:
    """host:port of a broker URL, for logs: never its credentials."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or (5671 if parts.scheme == 'amqps' else 5672)}"


# Each connection starts at the next node of the list, from a random first one per process:
# the connections of many processes spread over a cluster, and a lost node is passed over.
_next_node = itertools.count(random.randrange(1 << 16))


async def connect(url: str, name: str) -> AbstractConnection:
    """Connect to the first node of `url` (see `broker_urls`) that answers; when none does,
    the last node's error is raised."""
    urls = broker_urls(url)
    first = next(_next_node) % len(urls)
    *others, last = urls[first:] + urls[:first]
    for node in others:
        try:
            return await _connect_node(node, name, cluster=True)
        except Exception as exc:  # whatever ails this node, the next one may answer
            log.debug(
                "broker_node_unreachable", connection=name, node=node_address(node), error=str(exc)
            )
    return await _connect_node(last, name, cluster=bool(others))


async def _connect_node(url: str, name: str, *, cluster: bool) -> AbstractConnection:
    connection = await aio_pika.connect(
        url, timeout=CONNECT_TIMEOUT, client_properties={"connection_name": name}
    )
    if cluster:  # which node a connection went to matters once there are several
        log.info("broker_node_connected", connection=name, node=node_address(url))
    return connection


async def declare(channel: AbstractChannel, topology: Topology) -> dict[str, AbstractExchange]:
    """Declare every queue and exchange cdrflow uses, idempotently. Returns the exchanges."""
    try:
        dead = await channel.declare_exchange(
            topology.dead_exchange.name, topology.dead_exchange.kind, durable=True
        )
        dead_queue = await channel.declare_queue(
            topology.dead_queue.name, durable=True, arguments=topology.dead_queue.arguments
        )
        await dead_queue.bind(dead, routing_key="#")
        await channel.declare_queue(
            topology.raw_queue.name, durable=True, arguments=topology.raw_queue.arguments
        )
        records = await channel.declare_exchange(
            topology.records_exchange.name, topology.records_exchange.kind, durable=True
        )
        stream = await channel.declare_queue(
            topology.records_stream.name, durable=True, arguments=topology.records_stream.arguments
        )
        await stream.bind(records, routing_key=RECORD_KEY_SHAPE)
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        raise TopologyMismatch(
            f"RabbitMQ already has a queue or exchange of the same name with other "
            f"arguments ({exc}); delete it or change the names in the settings"
        ) from exc
    return {topology.records_exchange.name: records, topology.dead_exchange.name: dead}


class BrokerLink:
    """One connection with one publisher-confirm channel (unroutable publishes raise),
    kept open by a background task that reconnects with backoff (`cdrflow.backoff`)."""

    def __init__(self, url: str, topology: Topology, *, name: str) -> None:
        self.url = url
        self.topology = topology
        self.name = name
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._ready = asyncio.Event()
        self._lost = asyncio.Event()
        self._closed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._renewing = False
        self._renewed_at = float("-inf")
        self.opened = 0  # connections opened so far

    @property
    def ready(self) -> bool:
        return (
            self._ready.is_set()
            and self._channel is not None
            and not self._channel.is_closed
            and self._connection is not None
            and not self._connection.is_closed
        )

    async def start(self, wait: float = 5.0) -> None:
        """Start connecting; wait up to `wait` seconds for the first connection (a broker
        that is down at start-up is not fatal: the link keeps trying)."""
        self._task = asyncio.create_task(self._run(), name=f"broker-link-{self.name}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), wait)

    async def close(self) -> None:
        self._closed.set()
        self._lost.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._teardown()

    async def publish(
        self,
        message: AbstractMessage,
        routing_key: str,
        *,
        exchange: str = "",
        mandatory: bool = True,
        timeout: float | None = None,
    ) -> None:
        """Publish and wait for the broker's confirm. Raises on nack, on return (when
        `mandatory`), on a lost connection and on timeout."""
        channel = self._channel
        if not self.ready or channel is None:
            raise BrokerUnavailable("no connection to RabbitMQ")
        target = channel.default_exchange if not exchange else self._exchanges[exchange]
        try:
            await target.publish(message, routing_key, mandatory=mandatory, timeout=timeout)
        except aiormq.exceptions.DeliveryError as error:
            self._renew_if_nacked((error,))
            raise

    async def publish_batch(
        self, messages: Sequence[Outgoing], *, exchange: str, mandatory: bool, timeout: float
    ) -> list[BaseException | None]:
        """Publish in one write and wait for the confirms (`cdrflow.batchpublish`): per
        message, None when confirmed, else why not. Raises when there is no connection."""
        channel = self._channel
        if not self.ready or channel is None:
            raise BrokerUnavailable("no connection to RabbitMQ")
        underlay = await channel.get_underlay_channel()
        assert isinstance(underlay, aiormq.Channel)
        outcomes = await publish_batch(
            underlay, exchange, messages, mandatory=mandatory, timeout=timeout
        )
        self._renew_if_nacked(outcomes)
        return outcomes

    def _renew_if_nacked(self, outcomes: Iterable[BaseException | None]) -> None:
        """RabbitMQ 3.10 can nack every later publish of a channel whose publish to a
        quorum queue came while the queue had no leader, for minutes, while other
        connections already use the new leader (`make cluster-failover` can show it). A
        new connection asks the queue afresh. At most one renewal every
        NACK_RENEWAL_SECONDS, so a queue that really refuses does not make the link
        reconnect at the rate it publishes."""
        if not any(_is_nack(outcome) for outcome in outcomes):
            return
        now = time.monotonic()
        if now - self._renewed_at < NACK_RENEWAL_SECONDS or not self.ready:
            return
        self._renewed_at = now
        self._renewing = True
        log.warning("broker_link_renewed", link=self.name, reason="publish nacked")
        self._on_close()

    async def _run(self) -> None:
        while not self._closed.is_set():
            try:
                await self._open_retrying()
            except Exception:
                return  # closed while RabbitMQ was unreachable
            log.info("broker_connected", link=self.name)
            await self._lost.wait()
            self._ready.clear()
            if not self._closed.is_set() and not self._renewing:
                log.warning("broker_connection_lost", link=self.name)
            self._renewing = False
            await self._teardown()

    async def _open_retrying(self) -> None:
        async for attempt in retrying(
            stop=self._closed, max_wait=BROKER_WAIT_MAX, on_retry=self._log_retry
        ):
            with attempt:
                try:
                    await self._open()
                except BaseException:
                    self._ready.clear()
                    await self._teardown()
                    raise

    def _log_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        if isinstance(error, TopologyMismatch):  # an operator must act: say so louder
            level = log.error if is_loud(state) else log.debug
            level("broker_topology_mismatch", link=self.name, **retry_fields(state))
        else:
            level = log.warning if is_loud(state) else log.debug
            level("broker_unavailable", link=self.name, **retry_fields(state))

    async def _open(self) -> None:
        self._lost.clear()
        connection = await connect(self.url, self.name)
        self._connection = connection
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        self._channel = channel
        self._exchanges = await declare(channel, self.topology)
        connection.close_callbacks.add(self._on_close)
        channel.close_callbacks.add(self._on_close)
        self.opened += 1
        self._ready.set()

    def _on_close(self, *_: Any) -> None:
        self._ready.clear()
        self._lost.set()

    async def _teardown(self) -> None:
        connection, channel = self._connection, self._channel
        self._connection, self._channel = None, None
        # A connection the link gives up must not report its close to the next one.
        for closing in (channel, connection):
            if closing is not None and not closing.close_callbacks.is_frozen:
                closing.close_callbacks.discard(self._on_close)
        if connection is not None and not connection.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 5)


def _is_nack(outcome: BaseException | None) -> bool:
    """A negative confirm (a return is a `DeliveryError` too, with its own frame)."""
    return isinstance(outcome, aiormq.exceptions.DeliveryError) and isinstance(
        outcome.frame, aiormq.spec.Basic.Nack
    )
