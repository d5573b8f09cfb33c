"""`make chaos`: the fault suite. Starts a RabbitMQ node and a PostgreSQL cluster of its
own, the ingress and two workers, and runs each scenario of tools/chaos/scenarios.py under
wrk load. After each, it accounts for every request answered success, and it prints a
table. Exit status 1 when anything answered success is lost or stored twice, a stored
record was not published, or the broker restart refused a request.

    python -m tools.chaos.run [--only NAME ...] [--connections N] [--pace-ms MS] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

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
from tools.chaos.scenarios import POISON_BODY, SCENARIOS, Scenario, Stage
from tools.chaos.services import PostgresCluster, RabbitNode
from tools.chaos.traffic import (
    Load,
    Template,
    Wrk,
    ensure_wrk,
    load_sources,
    sources_toml,
    templates,
    unparseable,
    write_templates,
)

RAW_QUEUE = "cdr.raw"
DEAD_QUEUE = "cdr.dead"
RECORDS_EXCHANGE = "cdr.records"
WORKERS = 2
COLUMNS = (
    ("scenario", "scenario"),
    ("sent", "sent"),
    ("success", "success"),
    ("refused", "refused"),
    ("stored", "stored"),
    ("rejected", "rejected"),
    ("lost", "lost"),
    ("duplicate rows", "duplicates"),
    ("published", "published"),
)


def pipeline_env(workdir: Path, rabbit: RabbitNode, postgres: PostgresCluster) -> dict[str, str]:
    sources = workdir / "sources.toml"
    sources.write_text(sources_toml())
    return {
        "CDRFLOW_AMQP_URL": rabbit.url,
        "CDRFLOW_DATABASE_URL": f"{postgres.url}/cdrflow",
        "CDRFLOW_SOURCES": str(sources),
        "CDRFLOW_LOG_FORMAT": "json",
        # Shorter waits than production's, so that each scenario settles in seconds.
        "CDRFLOW_OUTBOX_GRACE_SECONDS": "2",
        "CDRFLOW_OUTBOX_INTERVAL_SECONDS": "1",
        "CDRFLOW_DB_RETRY_MAX_SECONDS": "5",
        "CDRFLOW_DRAIN_SECONDS": "3",
        "CDRFLOW_SHUTDOWN_TIMEOUT": "20",
    }


def traffic_files(workdir: Path) -> tuple[Path, Path]:
    """wrk templates: good callbacks only, and with one unparseable callback in ten."""
    good = templates(load_sources(sources_toml()))
    cut = [unparseable(t) for t in good if t.body and t.body.lstrip().startswith(b"{")]
    mixed: list[Template] = []
    for index, template in enumerate(good):
        mixed.append(template)
        if index % 3 == 0 and cut:
            mixed.append(cut[index % len(cut)])
    plain, poisoned = workdir / "templates.lua", workdir / "templates-poison.lua"
    write_templates(good, plain)
    write_templates(mixed, poisoned)
    return plain, poisoned


def run_scenario(
    index: int, scenario: Scenario, stage: Stage, files: tuple[Path, Path], load: Load
) -> Tally:
    tag = f"c{index}"
    pipeline = stage.pipeline
    stage.notes, stage.failures = [], []
    wrk = Wrk(
        pipeline.url,
        tag,
        files[1] if scenario.poison else files[0],
        pipeline.workdir / f"wrk-{index}",
        Load(load.connections, load.pace_ms, scenario.seconds),
    )
    stage.started = time.monotonic()
    try:
        scenario.fault(stage)
        answers = wrk.wait(timeout=scenario.seconds + 120)
    finally:
        wrk.stop()
    for problem in pipeline.check_alive():
        stage.failures.append(f"a process died: {problem}")
    how = Settle(
        database_url=f"{stage.postgres.url}/cdrflow",
        amqp_url=stage.rabbit.url,
        raw_queue=RAW_QUEUE,
        spool_records=lambda: pipeline.ingress_metric("cdrflow_spool_records"),
    )
    rows, settled = asyncio.run(settle(how, tag, answers.success))
    bodies = asyncio.run(drain(stage.rabbit.url, DOWNSTREAM_QUEUE))
    result = tally(scenario.name, answers, rows, published_by_id(bodies, tag))
    result.notes = [*stage.notes, settled, *result.notes]
    if answers.refused:
        result.notes.append(f"refused by status (0: no answer): {answers.refusals()}")
    if wrk.socket_errors():
        result.notes.append(f"wrk: {wrk.socket_errors()} (each retried with the same id)")
    result.failures = list(stage.failures)
    if scenario.poison:
        check_poison_parked(stage, result)
        unexpected = set(rows.reasons) - {"unparseable_body"}
    else:
        unexpected = set(rows.reasons)
    if unexpected:
        result.failures.append(f"good callbacks rejected: {sorted(unexpected)}")
    judge(scenario, result)
    return result


def check_poison_parked(stage: Stage, result: Tally) -> None:
    dead = asyncio.run(drain(stage.rabbit.url, DEAD_QUEUE))
    result.notes.append(f"{len(dead)} message(s) parked in {DEAD_QUEUE}")
    if POISON_BODY not in dead:
        result.failures.append(f"the non-batch message is not in {DEAD_QUEUE}")


def judge(scenario: Scenario, result: Tally) -> None:
    if result.success == 0:
        result.failures.append("no request was answered success: the traffic did not run")
    if result.lost:
        result.failures.append(f"{result.lost} callbacks answered success are in no table")
    if result.duplicates:
        result.failures.append(f"{result.duplicates} duplicate rows")
    if result.published != result.stored:
        result.failures.append(f"{result.stored - result.published} stored records unpublished")
    if scenario.refuse_none and result.refused:
        result.failures.append(f"{result.refused} requests refused while the broker restarted")


def table(tallies: list[Tally]) -> str:
    cells = [[h for h, _ in COLUMNS]]
    cells += [[str(getattr(t, attr)) for _, attr in COLUMNS] for t in tallies]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = []
    for n, row in enumerate(cells):
        first = row[0].ljust(widths[0])
        rest = [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join([first, *rest]))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def report(tallies: list[Tally]) -> str:
    parts = [table(tallies), ""]
    for t in tallies:
        parts.append(f"{t.scenario}:")
        parts += [f"  {note}" for note in t.notes]
        parts += [f"  FAILED: {failure}" for failure in t.failures]
    return "\n".join(parts)


def arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.chaos.run")
    parser.add_argument("--only", action="append", help="run the scenarios with this name")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections")
    parser.add_argument("--pace-ms", type=int, default=20, help="between requests, per conn")
    parser.add_argument("--keep", action="store_true", help="keep the run directory")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = arguments(argv)
    ensure_wrk()
    chosen = [s for s in SCENARIOS if not args.only or s.name in args.only]
    if not chosen:
        raise SystemExit(f"no such scenario; there are: {[s.name for s in SCENARIOS]}")
    workdir = Path(tempfile.mkdtemp(prefix="cdrflow-chaos-"))
    os.chmod(workdir, 0o755)  # noqa: S103 (the rabbitmq and postgres users work below it)
    rabbit, postgres = RabbitNode(workdir), PostgresCluster(workdir)
    pipeline: Pipeline | None = None
    tallies: list[Tally] = []
    ok = False
    try:
        postgres.start()
        rabbit.start()
        pipeline = Pipeline(workdir, pipeline_env(workdir, rabbit, postgres))
        pipeline.migrate()
        asyncio.run(declare_downstream(rabbit.url, RECORDS_EXCHANGE))
        stage = Stage(pipeline, rabbit, postgres, RAW_QUEUE, workdir / "spools")
        pipeline.start_ingress(stage.new_spool())
        for _ in range(WORKERS):
            pipeline.start_worker()
        files = traffic_files(workdir)
        load = Load(args.connections, args.pace_ms)
        for index, scenario in enumerate(chosen, start=1):
            print(f"scenario {index}/{len(chosen)}: {scenario.name}", flush=True)
            tallies.append(run_scenario(index, scenario, stage, files, load))
            print(table(tallies[-1:]), flush=True)
        ok = all(not t.failures for t in tallies)
    finally:
        if pipeline is not None:
            pipeline.stop_all()
        rabbit.remove()
        postgres.remove()
        print()
        print(report(tallies))
        if ok and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"\nlogs and wrk journals: {workdir}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
