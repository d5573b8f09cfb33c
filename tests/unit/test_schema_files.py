"""The parts of the schema files that name the providers (the record schema's `provider`
and `event` enums, the AsyncAPI routing-key enums, the OpenAPI answers) are what
`make schemas` writes from the provider registry: the committed files are, and a provider
added by one module and one registry line reaches all three, with nothing else edited."""

from __future__ import annotations

import json
import random
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from cdrflow.operations import schema_files
from schemas.envelope import RawEnvelope, uuid7
from schemas.jsoncodec import loads
from schemas.marked_regions import RegionError, rewrite, yaml_lines
from schemas.providers import Registry, default_registry
from schemas.record import Ledger, published_body
from schemas.registry_documents import ASYNCAPI, DOCUMENTS, OPENAPI, RECORD_SCHEMA, openapi
from schemas.sources import Source
from schemas.sources_file import parse_sources
from tests.support.samples import SCHEMA_DIR, strict_record_validator
from tests.support.throwaway_provider import NAME, PROVIDER, registered, schemas_written

NOW = datetime(2026, 3, 14, 9, 26, 53, tzinfo=UTC)
PING_SOURCE = """
[sources.ping]
provider = "throwaway.ping"
token = "tok-ping-0123456789"
ping_secret = "ping-secret-for-tests"
"""


def test_the_committed_schema_files_are_what_make_schemas_writes() -> None:
    behind = [path.name for path in schema_files.stale(SCHEMA_DIR, default_registry())]
    assert not behind, f"{behind} differ from the provider registry: run `make schemas`"


def test_make_schemas_check_names_the_file_behind_and_make_schemas_fixes_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in DOCUMENTS:
        shutil.copyfile(SCHEMA_DIR / name, tmp_path / name)
    asyncapi = tmp_path / ASYNCAPI
    asyncapi.write_text(asyncapi.read_text().replace("enum: [nxcloud, huawei]", "enum: [x]"))
    assert schema_files.main(["--check", "--dir", str(tmp_path)]) == 1
    assert (
        capsys.readouterr().out
        == f"{asyncapi}: not what the provider registry makes of it; run make schemas\n"
    )
    assert schema_files.main(["--dir", str(tmp_path)]) == 0
    assert schema_files.main(["--check", "--dir", str(tmp_path)]) == 0
    assert asyncapi.read_text() == (SCHEMA_DIR / ASYNCAPI).read_text()


def ping_source(registry: Registry) -> Source:
    return parse_sources(PING_SOURCE, origin="test", environ={}, providers=registry)["ping"]


def published(source: Source) -> dict[str, Any]:
    """A record of the provider as a worker publishes it, from its own `simulate()`."""
    callback = PROVIDER.simulate(random.Random(3), NOW, source, "ping-7")
    envelope = RawEnvelope(
        ingest_id=uuid7(),
        source=source.name,
        tenant=source.tenant,
        provider=NAME,
        received_at=NOW,
        method=callback.method,
        path="/v1/callbacks/ping",
        query=callback.query,
        content_type=callback.content_type,
        body=callback.body,
    )
    PROVIDER.authenticate(envelope, callback.headers, source, NOW.timestamp())
    (payload,) = PROVIDER.parse(envelope, source)
    record = PROVIDER.normalize(payload, source)
    body = loads(published_body(record, Ledger(NOW, NOW, NOW, NOW, 1, 1)))
    assert isinstance(body, dict)
    return body


def answers(document: dict[str, Any], response: str, content_type: str) -> list[Any]:
    content = document["components"]["responses"][response]["content"]
    alternatives = content[content_type]["schema"]["anyOf"]
    assert isinstance(alternatives, list)
    return alternatives


def test_a_provider_of_one_module_and_one_registry_line_reaches_every_schema_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    registry = registered(monkeypatch)
    assert {path.name for path in schemas_written(tmp_path, registry)} == set(DOCUMENTS)
    record_schema = json.loads((tmp_path / RECORD_SCHEMA).read_text())["properties"]
    assert record_schema["provider"]["enum"] == ["nxcloud", "huawei", "throwaway"]
    assert record_schema["event"]["enum"][-1] == "ping"
    routing_key = yaml.safe_load((tmp_path / ASYNCAPI).read_text())["channels"]["records"]
    assert routing_key["parameters"]["provider"]["enum"][-1] == "throwaway"
    assert routing_key["parameters"]["event"]["enum"][-1] == "ping"
    openapi = yaml.safe_load((tmp_path / OPENAPI).read_text())
    assert {"title": NAME, "const": "pong"} in answers(openapi, "Accepted", "text/plain")
    assert {"title": NAME, "const": "nope"} in answers(openapi, "Unauthenticated", "text/plain")
    assert (
        f"| `{NAME}` | `text/plain` `pong` | `text/plain` `nope` |"
        in openapi["info"]["description"]
    )
    body = published(ping_source(registry))
    strict_record_validator(tmp_path).validate(body)
    assert not strict_record_validator(SCHEMA_DIR).is_valid(body)
    monkeypatch.undo()
    assert NAME not in default_registry()


# --- the marked regions ------------------------------------------------------------


TEXT = """\
a: 1
b:
  # generated by make schemas: list
  enum: [old]
  # end of generated list
c: 3  # hand-written
"""


def test_a_region_is_replaced_indented_and_the_rest_left_as_written() -> None:
    rewritten = rewrite(TEXT, {"list": "enum: [x, y]\nmore: 2"})
    assert rewritten == TEXT.replace("  enum: [old]\n", "  enum: [x, y]\n  more: 2\n")
    assert rewrite(rewritten, {"list": "enum: [x, y]\nmore: 2"}) == rewritten


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            TEXT.replace("generated by make schemas: list", "generated by make schemas: other"),
            "no generator for the region 'other'",
        ),
        (TEXT.replace("  # end of generated list\n", ""), "region 'list' is never closed"),
        (
            TEXT.replace("end of generated list", "end of generated lost"),
            "region 'list' closed as 'lost'",
        ),
    ],
)
def test_a_region_that_is_not_one_is_refused(text: str, problem: str) -> None:
    with pytest.raises(RegionError, match=problem):
        rewrite(text, {"list": "enum: []"})


VALUES: list[Any] = [
    "plain",
    "0",
    "1e3",
    "yes",
    "No",
    "null",
    "on",
    "",
    " padded ",
    "a: b",
    "a, b",
    "#x",
    "成功",
    'quote " and \\ back',
    "-",
    "text/plain",
    0,
    12,
    True,
    None,
]


def test_the_yaml_written_reads_back_as_the_values_given() -> None:
    document = {
        "scalars": VALUES,
        "mapping": {"retCode": "0", "retMsg": "success", "n": 1},
        "alternatives": [{"title": "a, b", "const": {"k": "v"}}, {"title": "c", "type": "string"}],
        "empty": {},
        "none": [],
        "nested": {"deeper": {"enum": ["x"]}},
    }
    assert yaml.safe_load("\n".join(yaml_lines(document))) == document


def test_a_document_without_the_region_of_a_generated_part_is_refused() -> None:
    text = (SCHEMA_DIR / OPENAPI).read_text()
    unmarked = text.replace("# generated by make schemas: answers:timeout", "# answers")
    with pytest.raises(RegionError, match=r"no region for \['answers:timeout'\]"):
        openapi(unmarked, default_registry())
