"""`cdrflow simulate`: push realistic callbacks of every provider at an ingress."""

from __future__ import annotations

import argparse
import asyncio

import orjson

from cdrflow.commands.support import Subcommands, sources_of
from cdrflow.settings import Settings
from schemas.providers import default_registry


def add_commands(commands: Subcommands) -> None:
    simulate = commands.add_parser("simulate", help="push realistic callbacks at a chosen rate")
    simulate.add_argument("--url", default="http://127.0.0.1:8080", help="the ingress")
    simulate.add_argument(
        "--rate", type=float, default=20.0, help="requests per second, re-pushes included (20)"
    )
    simulate.add_argument(
        "--count", type=int, default=200, help="requests to send, re-pushes included (200)"
    )
    simulate.add_argument("--repush", type=float, default=0.2, help="share re-pushed 1-3 times")
    simulate.add_argument("--bad", type=float, default=0.05, help="share with a malformed body")
    simulate.add_argument("--seed", type=int, help="random seed, for repeatable runs")
    simulate.set_defaults(run=run_simulate)


def run_simulate(settings: Settings, args: argparse.Namespace) -> int:
    from cdrflow.operations.simulator import simulate

    report = asyncio.run(
        simulate(
            args.url,
            sources_of(settings),
            default_registry(),
            rate=args.rate,
            count=args.count,
            repush=args.repush,
            bad=args.bad,
            seed=args.seed,
        )
    )
    print(orjson.dumps(report.as_dict()).decode())
    return 0
