"""What the provider registry writes into the published schema files: the record schema's
`provider` and `event` enums, the same enums of the AsyncAPI routing key, and the answers
of the OpenAPI document. Each file stays hand-written around these parts (see
`schemas.marked_regions`); `make schemas` writes them (`cdrflow.operations.schema_files`),
and a unit test fails when a committed file differs from what they make of it. Nothing
here does I/O."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from schemas.marked_regions import RegionError, names, rewrite, yaml_lines
from schemas.providers import Answer, Outcome, Registry

RECORD_SCHEMA = "call_record.schema.json"
ASYNCAPI = "asyncapi.yaml"
OPENAPI = "openapi.yaml"
GENERATED = "generated from the provider registry by make schemas"
# Before the source is known the ingress cannot word a provider's answer: a request HTTP
# cannot read is answered in plain text of its own.
_UNREAD_REQUEST = {"title": "a request refused before its source is known", "type": "string"}


def vendors(registry: Registry) -> list[str]:
    """The `provider` of the records, in order of registration: "vendor" of "vendor.event"."""
    return list(dict.fromkeys(name.split(".", 1)[0] for name in registry))


def events(registry: Registry) -> list[str]:
    return list(dict.fromkeys(name.split(".", 1)[1] for name in registry))


def record_schema(text: str, registry: Registry) -> str:
    """The record schema with its `provider` and `event` enums those of `registry` (JSON
    has no comments to mark a region: the file is read and written back whole, in the
    layout it is committed in)."""
    schema = json.loads(text)
    properties = schema["properties"]
    properties["provider"] = {"$comment": GENERATED, "enum": vendors(registry)}
    properties["event"] = {"$comment": GENERATED, "enum": events(registry)}
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def asyncapi(text: str, registry: Registry) -> str:
    regions = {
        "provider-enum": _yaml({"enum": vendors(registry)}),
        "event-enum": _yaml({"enum": events(registry)}),
    }
    return _rewrite(text, regions)


def openapi(text: str, registry: Registry) -> str:
    regions = {"answers-table": answers_table(registry)}
    for outcome in Outcome:
        regions[f"answers:{outcome.value}"] = _yaml(content(registry, outcome))
    # a body HTTP cannot read is answered 400 in the words of "unavailable"
    regions["answers:bad-body"] = _yaml(content(registry, Outcome.UNAVAILABLE, _UNREAD_REQUEST))
    return _rewrite(text, regions)


DOCUMENTS: Mapping[str, Callable[[str, Registry], str]] = {
    RECORD_SCHEMA: record_schema,
    ASYNCAPI: asyncapi,
    OPENAPI: openapi,
}


def content(
    registry: Registry, outcome: Outcome, plain_text: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """An OpenAPI `content` map: per content type, the bodies the providers answer
    `outcome` with, each titled with the providers that give it (and, with `plain_text`,
    one more alternative for text/plain)."""
    by_type: dict[str, dict[str, list[str]]] = {}
    for name, provider in registry.items():
        answer = provider.answer(outcome)
        by_type.setdefault(answer.content_type, {}).setdefault(_key(answer), []).append(name)
    alternatives = {
        content_type: [
            {"title": ", ".join(providers), "const": json.loads(key)}
            for key, providers in bodies.items()
        ]
        for content_type, bodies in by_type.items()
    }
    if plain_text is not None:
        alternatives.setdefault("text/plain", []).append(dict(plain_text))
    return {"content": {ct: {"schema": {"anyOf": alts}} for ct, alts in alternatives.items()}}


def answers_table(registry: Registry) -> str:
    """A Markdown table of the answers, one row per set of providers answering alike."""
    rows: dict[tuple[str, str], list[str]] = {}
    for name, provider in registry.items():
        accepted = _cell([provider.answer(Outcome.ACCEPTED)])
        refused = _cell([provider.answer(o) for o in Outcome if o is not Outcome.ACCEPTED])
        rows.setdefault((accepted, refused), []).append(f"`{name}`")
    lines = ["| provider | accepted (200) | any other answer |", "|---|---|---|"]
    lines += [f"| {', '.join(names)} | {a} | {r} |" for (a, r), names in rows.items()]
    return "\n".join(lines)


def _cell(answers: Iterable[Answer]) -> str:
    """`type` `body` when the answers share one body; else each status with its body."""
    answers = list(answers)
    content_types = dict.fromkeys(f"`{a.content_type}`" for a in answers)
    bodies = dict.fromkeys(_code(a.body.decode()) for a in answers)
    if len(bodies) == 1:
        return f"{' '.join(content_types)} {next(iter(bodies))}"
    each = "<br>".join(f"{a.status} {_code(a.body.decode())}" for a in answers)
    return f"{', '.join(content_types)}:<br>{each}"


def _code(text: str) -> str:
    return "`" + text.replace("|", "\\|") + "`"


def _key(answer: Answer) -> str:
    """The answer's body as a JSON value (a parsed document for a JSON answer, the text
    otherwise), serialized: hashable, and equal for equal bodies."""
    text = answer.body.decode()
    if answer.content_type.endswith("json"):
        return json.dumps(json.loads(text))
    return json.dumps(text)


def _yaml(value: Mapping[str, Any]) -> str:
    return "\n".join(yaml_lines(value))


def _rewrite(text: str, regions: Mapping[str, str]) -> str:
    missing = set(regions) - set(names(text))
    if missing:
        raise RegionError(f"no region for {sorted(missing)}: mark where they belong")
    return rewrite(text, regions)
