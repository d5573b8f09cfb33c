"""`make cluster-failover`: cdrflow on a three-node RabbitMQ cluster loses its `cdr.raw`
leader under wrk load, and nothing answered success is lost.

It starts the cluster (deploy/cluster/rabbitmq-cluster.sh) and a PostgreSQL of its own
(port 5435), an ingress and two workers given all three nodes in CDRFLOW_AMQP_URL, and a
downstream quorum queue bound to `cdr.records`. Under load it stops the node that leads
`cdr.raw` (or kills it, with --crash), keeps loading, then accounts for every callback by
id (the fault suite's accounting, tools/chaos/) and says which node each process moved to
and how long that took. Exit status 1 when anything answered success is lost or stored
twice, a record did not reach the downstream queue, a queue was not replicated on all three
nodes, or a process did not come back by itself.

    python -m tools.cluster.failover [--seconds S] [--stop-after S] [--crash] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from schemas.jsoncodec import loads
from tools.chaos.accounting import (
    DOWNSTREAM_QUEUE,
    Settle,
    Tally,
    declare_downstream,
    drain,
    published_by_id,
    settle,
    tally,
)
from tools.chaos.pipeline import Pipeline
from tools.chaos.run import report
from tools.chaos.services import PostgresCluster
from tools.chaos.traffic import (
    Load,
    Wrk,
    ensure_wrk,
    load_sources,
    sources_toml,
    templates,
    write_templates,
)
from tools.cluster.rabbit import NODES, Client, RabbitCluster

POSTGRES_PORT = 5435
INGRESS_PORT = 5719  # in the cluster's range (5711-5719)
RAW_QUEUE = "cdr.raw"
RECORDS_EXCHANGE = "cdr.records"
REPLICATED = (RAW_QUEUE, "cdr.dead", f"{RECORDS_EXCHANGE}.stream", DOWNSTREAM_QUEUE)
WORKERS = 2
CONSUMER = "cdrflow-worker"  # the connection a worker consumes `cdr.raw` on
PLACEMENT_TRIES = 6


@dataclass
class Failover:
    """What happened around the stopped node, besides the accounting."""

    stopped: str = ""
    before: list[Client] = field(default_factory=list)
    after: list[Client] = field(default_factory=list)
    leader_after: str = ""
    stopped_in: float = 0.0  # how long the stop command took
    elected_in: float = 0.0
    reconnects: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def pipeline_env(
    workdir: Path, cluster: RabbitCluster, postgres: PostgresCluster
) -> dict[str, str]:
    sources = workdir / "sources.toml"
    sources.write_text(sources_toml())
    return {
        "CDRFLOW_AMQP_URL": cluster.all_urls(),
        "CDRFLOW_DATABASE_URL": f"{postgres.url}/cdrflow",
        "CDRFLOW_SOURCES": str(sources),
        "CDRFLOW_LOG_FORMAT": "json",
        "CDRFLOW_OUTBOX_GRACE_SECONDS": "2",
        "CDRFLOW_OUTBOX_INTERVAL_SECONDS": "1",
        "CDRFLOW_DRAIN_SECONDS": "1",
        "CDRFLOW_SHUTDOWN_TIMEOUT": "20",
    }


def wait_for_clients(cluster: RabbitCluster, timeout: float = 60) -> list[Client]:
    """The connections of the ingress and every worker, once all are open."""
    deadline = time.monotonic() + timeout
    while True:
        clients = cluster.clients()
        names = Counter(c.name for c in clients)
        if names["cdrflow-ingress"] >= 1 and names[CONSUMER] >= WORKERS:
            return clients
        if time.monotonic() > deadline:
            raise RuntimeError(f"not every process connected after {timeout} s: {names}")
        time.sleep(1)


def consume_from(pipeline: Pipeline, cluster: RabbitCluster, leader: str) -> list[Client]:
    """Make sure a worker consumes through the node about to be stopped, so that a worker,
    not only the ingress, has to move: restart one until it lands there (the node each
    connection starts at is random)."""
    clients = wait_for_clients(cluster)
    for _ in range(PLACEMENT_TRIES):
        if any(c.name == CONSUMER and c.node == leader for c in clients):
            return clients
        pipeline.signal_worker(0, signal.SIGTERM).wait(30)
        pipeline.start_worker()
        time.sleep(2)  # the old worker's connections close
        clients = wait_for_clients(cluster)
    return clients


def check_replicated(cluster: RabbitCluster, run: Failover) -> None:
    placements = cluster.placements()
    for name in REPLICATED:
        placement = placements.get(name)
        if placement is None:
            run.failures.append(f"queue {name} was not declared")
        elif placement.members != set(NODES):
            run.failures.append(f"{name} has replicas on {sorted(placement.members)} only")
        else:
            run.notes.append(
                f"{name} ({placement.kind}): replicas on {', '.join(NODES)}, "
                f"leader {placement.leader}"
            )


def stop_leader(cluster: RabbitCluster, run: Failover, crash: bool) -> float:
    """Stop (or kill) the node leading `cdr.raw`; the wall-clock time it was told to."""
    run.stopped = cluster.placements()[RAW_QUEUE].leader
    told = time.time()
    if crash:
        told = cluster.crash_node(run.stopped)
    else:
        cluster.stop_node(run.stopped)
    run.stopped_in = time.time() - told
    run.notes.append(
        f"{'killed' if crash else 'stopped'} {run.stopped}, leader of {RAW_QUEUE}, "
        f"{'SIGKILL' if crash else 'rabbitmqctl stop'} took {run.stopped_in:.1f} s"
    )
    return told


def await_new_leader(cluster: RabbitCluster, run: Failover, told: float) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        placement = cluster.placements().get(RAW_QUEUE)
        if placement and placement.leader != run.stopped and placement.leader in placement.online:
            run.leader_after, run.elected_in = placement.leader, time.time() - told
            return
        time.sleep(0.5)
    run.failures.append(f"{RAW_QUEUE} has no leader 120 s after {run.stopped} stopped")


# The log lines that say a connection was lost, and which connection each one is about.
LOSS_EVENTS = {"broker_connection_lost": "link", "consumer_interrupted": None}


def reconnections(logs: Path, since: float) -> list[str]:
    """From each process's log: each connection lost after `since`, and how soon it was
    open again on which node."""
    found = []
    for path in sorted(logs.glob("*.log")):
        lost: dict[str, float] = {}
        for line in path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            entry = loads(line)
            event = str(entry.get("event"))
            at = datetime.fromisoformat(str(entry.get("timestamp"))).timestamp()
            if at < since:
                continue
            if event in LOSS_EVENTS:
                key = LOSS_EVENTS[event]
                lost[str(entry[key]) if key else CONSUMER] = at
            elif event == "broker_node_connected" and entry["connection"] in lost:
                down = lost.pop(str(entry["connection"]))
                found.append(
                    f"{path.stem} {entry['connection']}: lost {down - since:.1f} s after the "
                    f"stop began, open again on {entry['node']} {at - down:.2f} s later"
                )
        found += [f"{path.stem} {name}: lost, not open again" for name in lost]
    return found


def longest_pause(logs: Path, since: float, until: float) -> str:
    """The longest time no worker stored a batch between `since` and `until`: how long the
    pipeline stood still while the node went away."""
    stored = sorted(
        datetime.fromisoformat(str(entry["timestamp"])).timestamp()
        for path in logs.glob("worker-*.log")
        for line in path.read_text(errors="replace").splitlines()
        if '"batch_stored"' in line and (entry := loads(line))
    )
    stored = [at for at in stored if since <= at <= until]
    if len(stored) < 2:
        return "too few batches stored while the node went away to measure a pause"
    gap, after = max((b - a, a) for a, b in itertools.pairwise(stored))
    return (
        f"longest time no worker stored a batch: {gap:.2f} s, "
        f"from {after - since:+.1f} s after the stop began"
    )


def check_moved(run: Failover) -> None:
    """Every connection the processes had is open again, none on the stopped node."""
    before, after = Counter(c.name for c in run.before), Counter(c.name for c in run.after)
    for name, count in sorted(before.items()):
        nodes_before = sorted(c.node for c in run.before if c.name == name)
        nodes_after = sorted(c.node for c in run.after if c.name == name)
        run.notes.append(f"{name}: on {nodes_before} before, {nodes_after} after")
        if after[name] < count:
            run.failures.append(f"{name}: {count} connections before, {after[name]} after")
    if any(c.node == run.stopped for c in run.after):
        run.failures.append(f"a connection is still counted on {run.stopped}")


def account(
    pipeline: Pipeline, cluster: RabbitCluster, postgres: PostgresCluster, wrk: Wrk, tag: str
) -> Tally:
    answers = wrk.wait(timeout=600)
    live = cluster.url(cluster.live_node())
    how = Settle(
        database_url=f"{postgres.url}/cdrflow",
        amqp_url=live,
        raw_queue=RAW_QUEUE,
        spool_records=lambda: pipeline.ingress_metric("cdrflow_spool_records"),
    )
    rows, settled = asyncio.run(settle(how, tag, answers.success))
    bodies = asyncio.run(drain(live, DOWNSTREAM_QUEUE))
    result = tally("cdr.raw leader lost", answers, rows, published_by_id(bodies, tag))
    result.notes.append(f"after the load: {settled}")
    if answers.refused:
        result.notes.append(f"refusals by status (0: no answer): {answers.refusals()}")
    spooled = pipeline.ingress_metric("cdrflow_spool_writes_total")
    result.notes.append(
        f"callbacks the ingress spooled while it had no broker: {spooled:.0f}"
        if spooled is not None
        else "spool writes: ingress unreachable"
    )
    return result


def judge(result: Tally, run: Failover, pipeline: Pipeline) -> None:
    for problem in pipeline.check_alive():
        run.failures.append(f"a process died: {problem}")
    if result.success == 0:
        run.failures.append("no request was answered success: the traffic did not run")
    if result.lost:
        run.failures.append(f"{result.lost} callbacks answered success are in no table")
    if result.duplicates:
        run.failures.append(f"{result.duplicates} duplicate rows")
    if result.published != result.stored:
        run.failures.append(
            f"{result.stored - result.published} stored records not on {DOWNSTREAM_QUEUE}"
        )


def failover_report(result: Tally, run: Failover) -> str:
    result.notes = [*run.notes, *result.notes]
    if run.leader_after:
        result.notes.append(
            f"{RAW_QUEUE}: new leader {run.leader_after}, seen {run.elected_in:.1f} s after "
            f"the stop began (rabbitmqctl polled about once a second)"
        )
    result.notes += run.reconnects
    result.failures = run.failures
    return report([result])


def arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.cluster.failover")
    parser.add_argument("--seconds", type=int, default=45, help="wrk load, in all")
    parser.add_argument("--stop-after", type=float, default=15, help="into the load")
    parser.add_argument("--connections", type=int, default=24, help="wrk connections")
    parser.add_argument("--pace-ms", type=int, default=5, help="between requests, per conn")
    parser.add_argument("--crash", action="store_true", help="SIGKILL the node, not stop it")
    parser.add_argument("--keep", action="store_true", help="keep the run directory")
    return parser.parse_args(argv)


def run_failover(args: argparse.Namespace, workdir: Path) -> int:
    cluster, postgres = RabbitCluster(workdir), PostgresCluster(workdir, POSTGRES_PORT)
    pipeline: Pipeline | None = None
    run, result, tag = Failover(), Tally("cdr.raw leader lost"), "f1"
    try:
        started = time.monotonic()
        postgres.start()
        cluster.start()
        run.notes.append(f"cluster and PostgreSQL up in {time.monotonic() - started:.0f} s")
        pipeline = Pipeline(workdir, pipeline_env(workdir, cluster, postgres), port=INGRESS_PORT)
        pipeline.migrate()
        # The ingress declares the topology first: `cdr.raw` leads on the ingress's node
        # (RabbitMQ's client-local leader placement), so the ingress has to move too.
        pipeline.start_ingress(workdir / "spool")
        asyncio.run(declare_downstream(cluster.url(cluster.live_node()), RECORDS_EXCHANGE))
        for _ in range(WORKERS):
            pipeline.start_worker()
        check_replicated(cluster, run)
        run.before = consume_from(pipeline, cluster, cluster.placements()[RAW_QUEUE].leader)
        chosen = templates(load_sources(sources_toml()))
        write_templates(chosen, workdir / "templates.lua")
        load = Load(args.connections, args.pace_ms, args.seconds)
        wrk = Wrk(pipeline.url, tag, workdir / "templates.lua", workdir / "wrk", load)
        try:
            time.sleep(args.stop_after)
            told = stop_leader(cluster, run, args.crash)
            await_new_leader(cluster, run, told)
            result = account(pipeline, cluster, postgres, wrk, tag)
        finally:
            wrk.stop()
        run.after = cluster.clients()
        settled_by = told + run.stopped_in + 10
        run.reconnects = [
            *reconnections(pipeline.logs, told),
            longest_pause(pipeline.logs, told, settled_by),
        ]
        check_moved(run)
        judge(result, run, pipeline)
    except Exception as exc:
        run.failures.append(f"the run broke off: {type(exc).__name__}: {exc}")
    finally:
        if pipeline is not None:
            pipeline.stop_all()
        cluster.remove()
        postgres.remove()
        print(failover_report(result, run))
    return 1 if run.failures else 0


def main(argv: list[str]) -> int:
    args = arguments(argv)
    # `timeout` and CI stop the run with SIGTERM: the nodes and PostgreSQL must still go.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ensure_wrk()
    workdir = Path(tempfile.mkdtemp(prefix="cdrflow-failover-"))
    os.chmod(workdir, 0o755)  # noqa: S103 (the rabbitmq and postgres users work below it)
    status = run_failover(args, workdir)
    if status == 0 and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"\nlogs and wrk journals: {workdir}")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
