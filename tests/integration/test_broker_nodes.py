"""A connection given several RabbitMQ nodes reaches one that answers (the three-node
failover run, `make cluster-failover`, covers a whole cluster)."""

from __future__ import annotations

import pytest

from cdrflow.amqp import connect
from tests.support.env import AMQP_URL
from tests.support.processes import free_port


async def test_every_connection_passes_over_a_node_that_is_down() -> None:
    down = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    # Each connection starts at the next node of the list: the rotation meets the dead
    # node first half of the time, and every connection must still succeed.
    for _ in range(4):
        connection = await connect(f"{down},{AMQP_URL}", "test-broker-nodes")
        try:
            assert not connection.is_closed
            channel = await connection.channel()
            assert (await channel.declare_queue(exclusive=True)).name
        finally:
            await connection.close()


async def test_when_no_node_answers_the_error_says_so() -> None:
    nodes = ",".join(f"amqp://guest:guest@127.0.0.1:{free_port()}/" for _ in range(2))
    with pytest.raises(ConnectionError):
        await connect(nodes, "test-broker-nodes")
