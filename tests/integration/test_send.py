"""`cdrflow send` against a real ingress and worker: each provider's documented example,
sent as that provider sends it (a JSON POST, the DR's raw-space query string or a form, the
Huawei `{k=v, ...}` rendering signed anew for a signed source), is answered 200 and stored."""

from __future__ import annotations

import asyncio
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from cdrflow.settings import Settings
from schemas.envelope import RawEnvelope, uuid7
from schemas.providers import Outcome, default_registry
from schemas.providers.nxcloud_voice_dr import DOCUMENTED_URL
from schemas.sources import Sources
from tests.support.ingress import ingress_client
from tests.support.processes import cdrflow, command_env, free_port
from tests.support.sources import provider_source
from tests.support.waiting import eventually
from tests.support.workers import running_worker

REGISTRY = default_registry()
HUAWEI_DOCUMENTED_ID = "1197765398201387012"
DR_DOCUMENTED_ID = "74078a0090f17e011505297261994"


def documented_id(provider_name: str, sources: Sources) -> str:
    """The id the provider reads from its own document's example, as a worker would."""
    provider, source = REGISTRY[provider_name], sources[provider_source(provider_name)]
    request = provider.documented(source, datetime.now(UTC))
    envelope = RawEnvelope(
        ingest_id=uuid7(),
        source=source.name,
        tenant=source.tenant,
        provider=provider_name,
        received_at=datetime.now(UTC),
        method=request.method,
        path=f"/v1/callbacks/{source.name}",
        query=request.query,
        content_type=request.content_type,
        body=request.body,
    )
    return provider.normalize(provider.parse(envelope, source)[0], source).external_id


def success(provider_name: str) -> str:
    return REGISTRY[provider_name].answer(Outcome.ACCEPTED).body.decode()


async def _stored(db: asyncpg.Connection, keys: set[tuple[str, str]]) -> bool:
    rows = await db.fetch("SELECT source, external_id FROM call_records")
    return keys <= {(r["source"], r["external_id"]) for r in rows}


@pytest.mark.timeout(60)  # a `cdrflow send` process per provider and four more
async def test_each_providers_documented_example_is_answered_200_and_stored(
    settings: Settings, sources: Sources, db: asyncpg.Connection, tmp_path: Path
) -> None:
    env = command_env(settings, tmp_path)
    chinese_dr = tmp_path / "dr.txt"
    chinese_dr.write_text(
        DOCUMENTED_URL.replace(DR_DOCUMENTED_ID, "dr-in-chinese").replace(
            "Successful connection", "成功接通"
        )
    )
    sends: list[tuple[str, str, list[str], str]] = [
        (provider_source(p), p, [], documented_id(p, sources)) for p in REGISTRY
    ]
    sends += [
        ("hw-hmac", "huawei.aicc_release", [], HUAWEI_DOCUMENTED_ID),
        ("hw-sha", "huawei.aicc_release", [], HUAWEI_DOCUMENTED_ID),
        ("nx-dr", "nxcloud.voice_dr", ["--form"], DR_DOCUMENTED_ID),
        ("nx-dr", "nxcloud.voice_dr", [str(chinese_dr)], "dr-in-chinese"),
    ]
    async with running_worker(settings, sources), ingress_client(settings, sources) as client:
        for source, provider, extra, _ in sends:
            result = await _send(source, *extra, "--url", client.make_url(""), env=env)
            assert result.returncode == 0, (source, result.stdout, result.stderr)
            assert result.stdout == f"200 OK\n{success(provider)}\n", source
        keys = {(source, external_id) for source, _, _, external_id in sends}
        assert await eventually(lambda: _stored(db, keys), timeout=30)
    assert await db.fetchval("SELECT count(*) FROM rejected_callbacks") == 0
    chinese = await db.fetchrow(
        "SELECT c.status, p.raw FROM call_records c JOIN record_payloads p USING (record_id)"
        " WHERE c.external_id = 'dr-in-chinese'"
    )
    assert chinese is not None
    assert chinese["status"] == "answered"
    assert '"result": "成功接通"' in chinese["raw"]


async def test_a_refused_callback_an_unknown_source_and_no_ingress_say_so(
    settings: Settings, sources: Sources, tmp_path: Path
) -> None:
    env = command_env(settings, tmp_path)
    async with ingress_client(settings, sources) as client:
        fenced = await _send("fenced", "--url", client.make_url(""), env=env)
        unknown = await _send("nope", "--url", client.make_url(""), env=env)
    nobody = await _send("nx-cc", "--url", f"http://127.0.0.1:{free_port()}", env=env)
    assert fenced.returncode == 1
    assert fenced.stdout == "403 Forbidden\nerror\n"
    assert unknown.returncode == 2
    assert "cdrflow send: no source 'nope' (sources: " in unknown.stderr
    assert nobody.returncode == 1
    assert nobody.stderr.startswith("cdrflow send: no answer from http://127.0.0.1:"), nobody.stderr
    assert "Traceback" not in nobody.stderr


async def _send(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(cdrflow, "send", *args, env=env, timeout=30)
