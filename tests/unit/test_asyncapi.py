"""schemas/asyncapi.yaml: it parses, its references resolve, and what it says matches the
code (routing-key enums, message properties and headers, the payload schema)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from cdrflow.settings import Settings
from schemas.providers import default_registry
from schemas.record import MESSAGE_TYPE, Status
from workers.batch import OutboxEntry
from workers.outbox import record_message

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


@cache
def document() -> dict[str, Any]:
    loaded = yaml.safe_load((SCHEMAS / "asyncapi.yaml").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def _references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _references(value)
    elif isinstance(node, list):
        for item in node:
            yield from _references(item)


def resolve(reference: str) -> Any:
    """A `$ref` of the document: a JSON pointer into it, or a file beside it (and a pointer
    into that file)."""
    location, _, pointer = reference.partition("#")
    target: Any = document()
    if location:
        path = (SCHEMAS / location).resolve()
        text = path.read_text(encoding="utf-8")
        target = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    for part in filter(None, pointer.split("/")):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(target, dict), reference
        assert part in target, f"{reference}: no {part!r}"
        target = target[part]
    return target


def test_it_is_an_asyncapi_3_document_with_both_channels() -> None:
    doc = document()
    assert doc["asyncapi"].startswith("3.")
    assert {"info", "channels", "operations", "components"} <= set(doc)
    topology = Settings().topology()
    records, stream = doc["channels"]["records"], doc["channels"]["recordsStream"]
    assert records["bindings"]["amqp"]["exchange"]["name"] == topology.records_exchange.name
    assert records["bindings"]["amqp"]["exchange"]["type"] == topology.records_exchange.kind
    assert stream["address"] == stream["bindings"]["amqp"]["queue"]["name"]
    assert stream["address"] == topology.records_stream.name


def test_every_reference_resolves() -> None:
    references = set(_references(document()))
    assert "./call_record.schema.json" in references
    for reference in references:
        assert resolve(reference) is not None, reference
    for name, operation in document()["operations"].items():
        assert resolve(operation["channel"]["$ref"]) in document()["channels"].values(), name


def test_the_routing_key_parameters_match_the_code() -> None:
    parameters = document()["channels"]["records"]["parameters"]
    names = [provider.split(".", 1) for provider in default_registry()]
    assert set(parameters["provider"]["enum"]) == {vendor for vendor, _ in names}
    assert set(parameters["event"]["enum"]) == {event for _, event in names}
    assert parameters["status"]["enum"] == [status.value for status in Status]
    address = document()["channels"]["records"]["address"]
    assert address == ".".join("{" + name + "}" for name in parameters)


def test_the_message_properties_and_headers_are_those_published() -> None:
    described = document()["components"]["messages"]["callRecord"]
    record_id = uuid.uuid4()
    message = record_message(OutboxEntry(0, record_id, 3, "a.b.c.d", b"{}"))
    assert described["contentType"] == message.content_type
    properties = described["x-amqp-properties"]
    assert properties["content_type"] == message.content_type
    assert properties["delivery_mode"] == int(message.delivery_mode)
    assert properties["type"] == message.type == MESSAGE_TYPE
    assert properties["message_id"].format(record_id=record_id, revision=3) == message.message_id
    assert message.headers is not None
    headers = described["headers"]
    assert set(headers["properties"]) == set(message.headers) == set(headers["required"])
    publish = document()["operations"]["publishRecord"]["bindings"]["amqp"]
    assert publish["deliveryMode"] == int(message.delivery_mode)
    assert described["bindings"]["amqp"]["messageType"] == message.type


def test_the_payload_is_the_call_record_schema() -> None:
    payload = document()["components"]["messages"]["callRecord"]["payload"]
    schema = resolve(payload["schema"]["$ref"])
    assert schema["title"] == "cdrflow call record"
    assert payload["schemaFormat"].endswith("draft-2020-12")
    assert schema["$schema"].endswith("2020-12/schema")
