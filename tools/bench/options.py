"""How long and how big each measurement is: the default run (8 to 13 minutes),
`--smoke` (seconds each: proves the bench works, measures nothing worth quoting) and
`--full` (adds the 1,000,000-message backlog)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

# The worker processes docs/operations.md recommends beside one ingress on a 2-core host (and
# `make run` starts): the lag rows run with them.
RECOMMENDED_WORKERS = 2


@dataclass(frozen=True)
class Options:
    requests_file: Path
    # Distinct wrk requests. wrk sends the file in a loop, and a request sent again is a
    # re-push: no record, nothing published. So the file is longer than any run sends (about
    # 100,000 requests in 10 s on the fastest machine seen): with 60,000, the design limit
    # wrapped and made records of 0.54 of its callbacks, cdrflow of 0.89.
    templates: int
    http_seconds: float
    http_rounds: int  # bare and ingress alternate this many times per setting: medians
    publish_seconds: float
    end_to_end_seconds: float
    end_to_end_workers: tuple[int, ...]
    end_to_end_rounds: int  # the design limit and cdrflow alternate this many times: medians
    backlog: int
    lag_rates: tuple[int, ...]
    lag_workers: int
    lag_seconds: float
    hostile_scale: float  # 1.0: bodies near the 1 MiB limit
    hostile_typical: int
    storage_callbacks: int  # call-center callbacks of the bytes-per-call row
    million: int  # messages of the big backlog (0: skipped)
    million_seconds: float

    @classmethod
    def from_args(cls, args: argparse.Namespace, workdir: Path) -> Options:
        requests_file = workdir / "requests.bin"
        if args.smoke:
            return cls(
                requests_file,
                templates=3000,
                http_seconds=1,
                http_rounds=1,
                publish_seconds=1,
                end_to_end_seconds=2,
                end_to_end_workers=(1,),
                end_to_end_rounds=2,  # two: the smoke run goes through the rounds' code
                backlog=2000,
                lag_rates=(100, 200, 400),
                lag_workers=1,
                lag_seconds=2,
                hostile_scale=0.05,
                hostile_typical=300,
                storage_callbacks=1_000,
                million=0,
                million_seconds=0,
            )
        return cls(
            requests_file,
            templates=200_000,
            http_seconds=5,
            http_rounds=3,
            publish_seconds=5,
            end_to_end_seconds=10,
            end_to_end_workers=tuple(args.workers),
            end_to_end_rounds=3,
            backlog=100_000,
            lag_rates=(1000, 1500, 2000, 3000, 4000),
            lag_workers=RECOMMENDED_WORKERS,
            lag_seconds=10,
            hostile_scale=1.0,
            hostile_typical=5000,
            storage_callbacks=22_000,  # 20,000 calls and about 10% re-pushes
            million=1_000_000 if args.full else 0,
            million_seconds=90,
        )
