"""`cdrflow send` against a real ingress and worker: each provider's documented example,
sent as that provider sends it (a JSON POST, the DR's raw-space query string or a form, the
Huawei `{k=v, ...}` rendering signed anew for a signed source), is answered 200 and stored."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import asyncpg
import pytest

from cdrflow.settings import Settings
from schemas.providers.nxcloud_voice_dr import DOCUMENTED_URL
from schemas.sources import Sources
from tests.support.ingress import ingress_client
from tests.support.processes import cdrflow, command_env, free_port
from tests.support.sources import provider_source
from tests.support.waiting import eventually
from tests.support.workers import running_worker

DOCUMENTED_IDS = {
    "nxcloud.voice_report": "22121121451211349002",
    "nxcloud.call_center_report": "202311171342480000012345",
    "nxcloud.voice_dr": "74078a0090f17e011505297261994",
    "huawei.aicc_release": "1197765398201387012",
}
SUCCESS = {
    "nxcloud.voice_report": "success",
    "nxcloud.call_center_report": "success",
    "nxcloud.voice_dr": "success",
    "huawei.aicc_release": '{"retCode":"0","retMsg":"success"}',
}


async def _stored(db: asyncpg.Connection, keys: set[tuple[str, str]]) -> bool:
    rows = await db.fetch("SELECT source, external_id FROM call_records")
    return keys <= {(r["source"], r["external_id"]) for r in rows}


@pytest.mark.timeout(60)  # eight `cdrflow send` processes, each starting Python
async def test_each_providers_documented_example_is_answered_200_and_stored(
    settings: Settings, sources: Sources, db: asyncpg.Connection, tmp_path: Path
) -> None:
    env = command_env(settings, tmp_path)
    chinese_dr = tmp_path / "dr.txt"
    chinese_dr.write_text(
        DOCUMENTED_URL.replace("74078a0090f17e011505297261994", "dr-in-chinese").replace(
            "Successful connection", "成功接通"
        )
    )
    sends: list[tuple[str, str, list[str], str]] = [
        (provider_source(p), p, [], DOCUMENTED_IDS[p]) for p in DOCUMENTED_IDS
    ]
    sends += [
        ("hw-hmac", "huawei.aicc_release", [], DOCUMENTED_IDS["huawei.aicc_release"]),
        ("hw-sha", "huawei.aicc_release", [], DOCUMENTED_IDS["huawei.aicc_release"]),
        ("nx-dr", "nxcloud.voice_dr", ["--form"], DOCUMENTED_IDS["nxcloud.voice_dr"]),
        ("nx-dr", "nxcloud.voice_dr", [str(chinese_dr)], "dr-in-chinese"),
    ]
    async with running_worker(settings, sources), ingress_client(settings, sources) as client:
        for source, provider, extra, _ in sends:
            result = await _send(source, *extra, "--url", client.make_url(""), env=env)
            assert result.returncode == 0, (source, result.stdout, result.stderr)
            assert result.stdout == f"200 OK\n{SUCCESS[provider]}\n", source
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
