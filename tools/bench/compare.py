"""`make bench-compare BASE=<revision>`: this tree's end-to-end row against another
revision's (an earlier release), on the same machine in the same run.

    make bench-compare BASE=v0.4.0                     # 6 rounds, 2 workers: 8 to 12 minutes
    make bench-compare BASE=HEAD~3 COMPARE_ARGS="--rounds 10 --workers 1 --drain 30000"

The machines here are shared and their speed moves by a third within minutes, so two
releases are only compared in one run: each round runs the design limit, then one of the
two trees end to end (HTTP to committed and published, `tools.bench.flow`), then the design
limit again and the other tree, the trees taking turns to go first. A tree's figure is its
rate over the design limit's just before it; the table gives every round's and their mean,
with the workers' and PostgreSQL's CPU per callback (PostgreSQL's against the design
limit's in the same round). With `--drain N`, each round also has the tree's one worker
drain a backlog of N callbacks (`tools.bench.drain`): its own CPU per callback, without
the ingress, RabbitMQ and PostgreSQL competing for the cores. The other revision is checked
out with `git worktree` beside this one and runs with this venv, on a database its own
`cdrflow migrate` made."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cdrflow import logs
from tools.bench import design, drain, flow
from tools.bench.checkout import Checkout, worktree
from tools.bench.mix import write_wrk_requests
from tools.bench.options import Options
from tools.bench.services import Services, services
from tools.bench.wrk import require_wrk


@dataclass
class Round:
    rate: float  # callbacks/s end to end
    design: float  # the design limit's, right before
    workers_us: float  # the workers' CPU per callback
    # PostgreSQL's CPU per callback over the design limit's: None on the shared services,
    # whose PostgreSQL processes are not told apart from other runs'
    postgres_x: float | None
    drain_us: float | None = None  # one worker's own CPU per callback draining (--drain)

    @property
    def ratio(self) -> float:
        return self.rate / self.design if self.design else 0.0


@dataclass
class Tree:
    name: str
    code: Checkout | None  # None: this tree
    rounds: list[Round] = field(default_factory=list)

    def row(self) -> str:
        ratios = [r.ratio for r in self.rounds]
        return (
            f"| {self.name} | {statistics.fmean(ratios):.2f} | "
            f"{', '.join(f'{x:.2f}' for x in ratios)} | "
            f"{statistics.fmean(r.rate for r in self.rounds):,.0f} | "
            f"{statistics.median(r.workers_us for r in self.rounds):.0f} | "
            f"{_median_or_na([r.postgres_x for r in self.rounds])} | "
            f"{_median_or_na([r.drain_us for r in self.rounds], '.0f')} |"
        )


def _median_or_na(values: list[float | None], form: str = ".2f") -> str:
    known = [v for v in values if v is not None]
    return format(statistics.median(known), form) if known else "n/a"


def _say(text: str) -> None:
    print(f"[compare {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


async def one_round(
    tree: Tree, where: Services, options: Options, workers: int, backlog: int, workdir: Path
) -> Round:
    url = await where.fresh_database("design")
    limit = await design.design_limit(where, url, options, workers, workdir)
    await where.drop(url)
    url = await where.fresh_database("compared", tree.code)
    result = await flow.end_to_end(where, url, options, workers, workdir, tree.code)
    await where.drop(url)
    spent = result.cpu.per_callback(result.callbacks)
    floor = limit.cpu.per_callback(limit.callbacks)["postgres"]
    measured = Round(
        result.callbacks / result.seconds,
        limit.callbacks / limit.seconds,
        spent["workers"],
        spent["postgres"] / floor if where.private and floor else None,
    )
    if backlog:
        url = await where.fresh_database("drained", tree.code)
        drained = await drain.drain(where, url, backlog, workdir, tree.code)
        await where.drop(url)
        measured.drain_us = drained.cpu_seconds / drained.callbacks * 1e6
    return measured


async def compare(
    trees: list[Tree], where: Services, options: Options, args: argparse.Namespace, workdir: Path
) -> None:
    for number in range(args.rounds):
        for tree in trees if number % 2 == 0 else trees[::-1]:
            _say(f"round {number + 1}: design limit, then {tree.name}")
            measured = await one_round(tree, where, options, args.workers, args.drain, workdir)
            tree.rounds.append(measured)
            _say(f"round {number + 1}: {tree.name} at {measured.ratio:.2f} of the design limit")


def render(trees: list[Tree], rounds: int, workers: int) -> str:
    return "\n".join(
        [
            f"end to end, 1 ingress, {workers} worker(s), {rounds} alternating round(s)",
            "",
            "| tree | of design limit, mean | rounds | callbacks/s, mean "
            "| workers' CPU µs a callback, median | PostgreSQL x design limit, median "
            "| draining, one worker's CPU µs a callback, median |",
            "|---|---:|---|---:|---:|---:|---:|",
            *(tree.row() for tree in trees),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the revision to compare with (git)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--drain", type=int, default=0, help="callbacks a worker drains a round")
    parser.add_argument("--smoke", action="store_true", help="seconds a run: proves it works")
    parser.add_argument("--shared", action="store_true", help="the shared RabbitMQ and PostgreSQL")
    parser.add_argument("--json", type=Path, help="also write every round here")
    args = parser.parse_args()
    require_wrk()
    logs.configure("warning", "console")
    with (
        tempfile.TemporaryDirectory(prefix="cdrflow-compare-") as directory,
        worktree(args.base) as base,
        services(shared=args.shared) as where,
    ):
        workdir = Path(directory)
        options = Options.from_args(
            argparse.Namespace(smoke=args.smoke, full=False, workers=[args.workers]), workdir
        )
        write_wrk_requests(options.requests_file, options.templates)
        trees = [Tree("this tree", None), Tree(base.name, base)]
        try:
            asyncio.run(compare(trees, where, options, args, workdir))
        finally:
            asyncio.run(where.drop_databases())
    print(render(trees, args.rounds, args.workers))
    if args.json:
        rounds = {
            tree.name: [asdict(r) | {"ratio": r.ratio} for r in tree.rounds] for tree in trees
        }
        args.json.write_text(json.dumps(rounds, indent=2))


if __name__ == "__main__":
    main()
