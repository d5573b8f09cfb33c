"""Where the test services are, and names unique to this test run."""

from __future__ import annotations

import itertools
import os
import uuid

AMQP_URL = os.environ.get("CDRFLOW_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
POSTGRES_URL = os.environ.get("CDRFLOW_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")
RUN_ID = uuid.uuid4().hex[:10]
_counter = itertools.count(1)


def unique(prefix: str) -> str:
    """A name no other test of this run or of another run uses."""
    return f"{prefix}.{RUN_ID}.{next(_counter)}"
