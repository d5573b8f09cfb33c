"""Splitting a redelivered message into one message per callback.

A message that comes back after a fault (a crash, a batch that failed) may hold the one
callback that caused it. Re-queued one callback a message, each callback gets its own
delivery count, so a callback that keeps crashing workers takes only itself to `cdr.dead`
when the delivery limit runs out."""

from __future__ import annotations

import asyncio

from aio_pika.abc import AbstractIncomingMessage

from cdrflow.amqp import BrokerLink, raw_message
from cdrflow.logs import get_logger
from schemas.envelope import RawEnvelope
from workers.batching import redeliveries

log = get_logger("cdrflow.worker")


class Splitter:
    def __init__(self, link: BrokerLink, *, raw_queue: str, confirm_timeout: float) -> None:
        self.link = link
        self.raw_queue = raw_queue
        self.confirm_timeout = confirm_timeout

    async def split(self, message: AbstractIncomingMessage, envelopes: list[RawEnvelope]) -> bool:
        """Re-queue each callback as a message of its own, then drop the original. When
        the broker cannot take them right now, say so: the message is then processed
        whole (it is alone anyway), never handed back for a reason that is not its own."""
        if not self.link.ready:
            return False
        try:
            await asyncio.gather(*(self._publish(envelope) for envelope in envelopes))
        except Exception as exc:
            log.warning("message_split_failed", message_id=message.message_id, error=str(exc))
            return False
        await message.ack()
        log.warning(
            "message_split",
            message_id=message.message_id,
            callbacks=len(envelopes),
            redeliveries=redeliveries(message),
        )
        return True

    async def _publish(self, envelope: RawEnvelope) -> None:
        await self.link.publish(
            raw_message([envelope.encode()]),
            self.raw_queue,
            mandatory=True,
            timeout=self.confirm_timeout,
        )
