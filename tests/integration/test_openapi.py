"""schemas/openapi.yaml against a running ingress (in this process, on the real RabbitMQ):
schemathesis generates requests from the document for every operation and checks that
every answer they provoke (status, content type, body, headers) is one the document
describes. The sources and tokens of the test sources file are put into the document's
path parameters, so that requests reach every source (and every mismatch: 404)."""

from __future__ import annotations

import asyncio
import copy
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hypothesis
import jsonschema
import pytest
import requests
import schemathesis
import yaml
from aiohttp import web
from schemathesis.core.transport import Response
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from cdrflow.settings import Settings
from ingress.ingress_app import create_app
from ingress.ingress_server import runner_options
from schemas.sources import Sources
from tests.support.sources import TOKENS

DOCUMENT = Path(__file__).resolve().parents[2] / "schemas" / "openapi.yaml"
CHECKS = [
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
EXAMPLES_PER_OPERATION = 60


@contextmanager
def ingress_in_thread(settings: Settings, sources: Sources) -> Iterator[str]:
    """The ingress as `cdrflow ingress` serves it, on its own event loop in a thread: the
    API tester's HTTP calls block, and must not block the server's loop."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="ingress", daemon=True)
    thread.start()
    runner = web.AppRunner(create_app(settings, sources), **runner_options(settings))

    async def start() -> int:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return int(runner.addresses[0][1])

    try:
        port = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def document_for(sources: Sources) -> dict[str, Any]:
    document = yaml.safe_load(DOCUMENT.read_text(encoding="utf-8"))
    tested = copy.deepcopy(document)
    parameters = tested["paths"]["/v1/callbacks/{source}/{token}"]["parameters"]
    names = {p["name"]: p for p in parameters}
    names["source"]["schema"] = {"enum": sorted(sources)}
    names["token"]["schema"] = {"enum": sorted(TOKENS.values())}
    return dict(tested)


def _wait_ready(url: str) -> None:
    for _ in range(200):
        if requests.get(f"{url}/readyz", timeout=5).status_code == 200:
            return
        threading.Event().wait(0.05)
    raise AssertionError("the ingress never became ready")


def _resolved(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def check_text_body(document: dict[str, Any], case: Any, response: Response) -> None:
    """schemathesis validates JSON bodies only; the NXCloud answers are text/plain."""
    content_type = response.headers.get("content-type", [""])[0]
    if not content_type.startswith("text/plain"):
        return
    operation = document["paths"][case.operation.path][case.operation.method.lower()]
    described = _resolved(document, operation["responses"][str(response.status_code)])
    schema = _resolved(document, described["content"]["text/plain"]["schema"])
    jsonschema.validate(response.content.decode(), schema)


def exercise(operation: Any, url: str, document: dict[str, Any]) -> set[int]:
    """Requests generated for one operation; each answer checked. Returns the statuses seen."""
    seen: set[int] = set()

    @hypothesis.settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(case=operation.as_strategy())
    def check(case: schemathesis.Case[Any]) -> None:
        response = case.call(base_url=url)
        seen.add(response.status_code)
        case.validate_response(response, checks=CHECKS)
        check_text_body(document, case, response)

    for explicit in every_source(operation):
        check = hypothesis.example(case=explicit)(check)
    check()
    return seen


def every_source(operation: Any) -> list[schemathesis.Case[Any]]:
    """Each test source with its own token, and one with another's: generated pairs rarely
    match, and every source must be reached."""
    if "{token}" not in operation.path:
        return []
    pairs = [*TOKENS.items(), ("nx-cc", TOKENS["nx-dr"])]
    body = {"body": "x", "media_type": "text/plain"} if operation.method.upper() == "POST" else {}
    return [
        operation.Case(path_parameters={"source": source, "token": token}, **body)
        for source, token in pairs
    ]


@pytest.mark.timeout(120)
def test_every_answer_the_ingress_gives_matches_the_openapi_document(
    settings: Settings, sources: Sources
) -> None:
    document = document_for(sources)
    schema = schemathesis.openapi.from_dict(copy.deepcopy(document))
    statuses: dict[str, set[int]] = {}
    with ingress_in_thread(settings, sources) as url:
        _wait_ready(url)
        for result in schema.get_all_operations():
            operation = result.ok()  # type: ignore[union-attr]
            statuses[operation.label] = exercise(operation, url, document)
    callbacks_post = statuses["POST /v1/callbacks/{source}/{token}"]
    callbacks_get = statuses["GET /v1/callbacks/{source}/{token}"]
    assert {200, 401, 403, 404} <= callbacks_post, callbacks_post
    assert {200, 403, 404, 405} <= callbacks_get, callbacks_get
    assert statuses["GET /readyz"] == {200}
