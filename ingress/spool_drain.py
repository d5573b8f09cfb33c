"""Draining a spool no ingress runs on: the volume of an ingress pod that was scaled down
or deleted while callbacks waited in its spool (`cdrflow drain-spool`, run by the Job in
deploy/k8s/jobs/drain-spool.yaml).

The same drainer as the ingress's, on the same directory lock: while an ingress holds the
spool, this refuses to start rather than send its records twice."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from cdrflow.amqp import BrokerLink
from cdrflow.logs import get_logger
from cdrflow.settings import Settings
from ingress.drainer import SpoolDrainer
from ingress.ingress_metrics import IngressMetrics
from ingress.spool import Spool

log = get_logger("cdrflow.ingress.spool_drain")


async def drain_spool(settings: Settings, directory: Path, timeout: float) -> int:
    """Send every record of the spool in `directory` to cdr.raw, each once confirmed; wait
    up to `timeout` seconds. Return how many records are left (0: drained)."""
    spool = await Spool.open(
        directory, max_bytes=settings.spool_max_bytes, metrics=IngressMetrics()
    )
    try:
        log.info("spool_drain_started", records=spool.records, bytes=spool.bytes)
        if spool.records:
            await _send_all(settings, spool, timeout)
        left = spool.records
    finally:
        await spool.close()
    log.info("spool_drain_finished", records_left=left)
    return left


async def _send_all(settings: Settings, spool: Spool, timeout: float) -> None:
    link = BrokerLink(settings.amqp_url, settings.topology(), name="cdrflow-drain-spool")
    await link.start()
    drainer = SpoolDrainer(
        spool,
        link,
        queue=settings.raw_queue,
        max_envelopes=settings.coalesce_max_envelopes,
        max_bytes=settings.coalesce_max_bytes,
        confirm_timeout=settings.confirm_timeout,
    )
    drainer.start()
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(spool.wait_until_empty(), timeout)
    finally:
        await drainer.stop()
        await link.close()
