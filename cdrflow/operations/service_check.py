"""Whether RabbitMQ and PostgreSQL answer, for `cdrflow check`: each is tried once, within
a few seconds, and the answer is one line an operator can act on (never a password)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import asyncpg

from cdrflow.amqp import broker_urls, connect, node_address
from cdrflow.logs import REDACTOR
from cdrflow.settings import Settings

ANSWER_TIMEOUT = 5.0  # seconds each service has to answer


@dataclass(frozen=True)
class ServiceAnswer:
    service: str
    ok: bool
    detail: str

    def __str__(self) -> str:
        return f"{self.service}: {self.detail}"


async def check_broker(settings: Settings) -> ServiceAnswer:
    nodes = ", ".join(node_address(url) for url in broker_urls(settings.amqp_url))
    try:
        async with asyncio.timeout(ANSWER_TIMEOUT):
            connection = await connect(settings.amqp_url, "cdrflow-check")
            await connection.close()
    except Exception as exc:
        return ServiceAnswer("broker", False, f"did not answer ({nodes}): {_error(exc)}")
    return ServiceAnswer("broker", True, f"answers ({nodes})")


async def check_database(settings: Settings) -> ServiceAnswer:
    from workers.storage.migrate import LATEST, schema_version
    from workers.storage.records_partitioning import is_pending

    try:
        async with asyncio.timeout(ANSWER_TIMEOUT):
            connection = await asyncpg.connect(settings.database_url)
            try:
                version = await schema_version(connection)
                pending = await is_pending(connection)
            finally:
                await connection.close()
    except asyncpg.PostgresError as exc:  # it answered, with an error
        return ServiceAnswer("database", False, f"answers, but: {_error(exc)}")
    except Exception as exc:
        return ServiceAnswer("database", False, f"did not answer: {_error(exc)}")
    if version < LATEST:
        needed = f"schema version {version}, this release needs {LATEST}: run `cdrflow migrate`"
        return ServiceAnswer("database", False, f"answers, but {needed}")
    if pending:
        return ServiceAnswer(
            "database",
            True,
            f"answers, schema version {version} (its records' partitioning pending: run"
            " `cdrflow migrate` once the previous release's workers have stopped)",
        )
    return ServiceAnswer("database", True, f"answers, schema version {version}")


async def check_services(settings: Settings) -> list[ServiceAnswer]:
    answers = await asyncio.gather(check_broker(settings), check_database(settings))
    return list(answers)


def _error(exc: BaseException) -> str:
    text = str(exc) or ("no answer in time" if isinstance(exc, TimeoutError) else "")
    return REDACTOR.scrub(f"{type(exc).__name__}: {text}")
