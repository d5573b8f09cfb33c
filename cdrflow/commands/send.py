"""`cdrflow send SOURCE [FILE]`: one callback to a running ingress, exactly as the source's
provider sends it: its document's own example (or FILE), in its form (a JSON POST, a query
string with raw spaces, a `{k=v, ...}` rendering), signed where the source is signed."""

from __future__ import annotations

import argparse
import http.client
import sys
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

from cdrflow.commands.support import EXIT_CONFIG, Subcommands, sources_of
from cdrflow.settings import Settings
from schemas.providers import SimulatedCallback, default_registry

EXIT_REFUSED = 1  # no answer, or not a 2xx
FORM = "application/x-www-form-urlencoded"


def add_commands(commands: Subcommands) -> None:
    send = commands.add_parser(
        "send",
        help="send a provider's documented sample (or FILE) to a running ingress, as it would",
    )
    send.add_argument("source", help="the source to send as, named as in the sources file")
    send.add_argument(
        "file",
        nargs="?",
        type=Path,
        help="one report in the provider's own form (default: its document's example)",
    )
    send.add_argument("--url", default="http://127.0.0.1:8080", help="the ingress")
    send.add_argument(
        "--form",
        action="store_true",
        help="send fields that go in the URL query (the voice DR's) as a form body, by POST",
    )
    send.set_defaults(run=run_send)


def run_send(settings: Settings, args: argparse.Namespace) -> int:
    from cdrflow.raw_http import request

    sources = sources_of(settings)
    source = sources.get(args.source)
    if source is None:
        known = ", ".join(sorted(sources))
        print(f"cdrflow send: no source {args.source!r} (sources: {known})", file=sys.stderr)
        return EXIT_CONFIG
    text = args.file.read_text(encoding="utf-8") if args.file else None
    callback = default_registry()[source.provider].documented(source, datetime.now(UTC), text)
    if args.form:
        if not callback.query:
            print(f"cdrflow send: {source.provider} sends no URL query", file=sys.stderr)
            return EXIT_CONFIG
        callback = as_form(callback)
    target = f"/v1/callbacks/{source.name}/{source.token}"
    if callback.query:
        target += "?" + callback.query
    headers = {"User-Agent": "cdrflow-send", **callback.headers}
    if callback.content_type:
        headers["Content-Type"] = callback.content_type
    try:
        reply = request(args.url, callback.method, target, headers, callback.body)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        print(f"cdrflow send: no answer from {args.url}: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    print(f"{reply.status} {reply.reason}")
    print(reply.body.decode("utf-8", "replace"))
    return 0 if 200 <= reply.status < 300 else EXIT_REFUSED


def as_form(callback: SimulatedCallback) -> SimulatedCallback:
    """The query's fields as a form body, by POST: the other way the voice DR arrives."""
    fields = parse_qsl(callback.query, keep_blank_values=True)
    return SimulatedCallback("POST", urlencode(fields).encode(), FORM)
