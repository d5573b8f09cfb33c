"""The suite's traffic: a sources file with known tokens, wrk templates of realistic
callbacks of every provider, and what wrk saw for each request (tools/chaos/load.lua)."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from schemas.providers import Registry, SimulatedCallback, default_registry
from schemas.sources import Source, Sources
from schemas.sources_file import parse_sources

PLACEHOLDER = "XCHAOSIDX"  # letters only: it survives URL- and JSON-encoding unchanged
LOAD_SCRIPT = Path(__file__).with_name("load.lua")
VARIANTS_PER_SOURCE = 8
SUCCESS = 200


def sources_toml(registry: Registry | None = None) -> str:
    """One unsigned source per registered provider, token derived from its name."""
    entries = []
    for index, provider in enumerate(sorted(registry or default_registry())):
        entries.append(
            f'[sources.chaos-{index}]\nprovider = "{provider}"\ntenant = "chaos"\n'
            f'token = "chaos-token-{index:02d}-0123456789"\n'
        )
    return "\n".join(entries)


def load_sources(text: str) -> Sources:
    return parse_sources(text, origin="chaos", environ={}, providers=default_registry())


@dataclass(frozen=True)
class Template:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes | None


def _template(source: Source, callback: SimulatedCallback) -> Template:
    path = f"/v1/callbacks/{source.name}/{source.token}"
    if callback.query:
        path += "?" + callback.query
    headers = dict(callback.headers)
    if callback.content_type:
        headers["Content-Type"] = callback.content_type
    template = Template(callback.method, path, headers, callback.body or None)
    if PLACEHOLDER not in template.path and PLACEHOLDER.encode() not in (template.body or b""):
        raise ValueError(f"{source.provider}: the simulated callback does not carry its id")
    return template


def templates(sources: Sources, registry: Registry | None = None) -> list[Template]:
    """Several realistic callbacks per source, each with the id left to fill in."""
    registry = registry or default_registry()
    rng = random.Random(7)
    now = datetime.now(UTC)
    return [
        _template(source, registry[source.provider].simulate(rng, now, source, PLACEHOLDER))
        for source in sources.values()
        for _ in range(VARIANTS_PER_SOURCE)
    ]


def unparseable(template: Template) -> Template:
    """The callback cut short just after its id: authenticated, answered, then rejected by
    the worker as unparseable, and still findable by id in `rejected_callbacks`."""
    body = template.body or b""
    end = body.index(PLACEHOLDER.encode()) + len(PLACEHOLDER) + 1
    return Template(template.method, template.path, template.headers, body[:end])


def _lua_string(value: str | bytes) -> str:
    raw = value.encode() if isinstance(value, str) else value
    escaped = "".join(
        chr(b) if 32 <= b < 127 and chr(b) not in '"\\' else f"\\{b:03d}" for b in raw
    )
    return f'"{escaped}"'


def write_templates(chosen: Iterable[Template], path: Path) -> None:
    lines = ["return {"]
    for t in chosen:
        headers = ", ".join(f"[{_lua_string(k)}] = {_lua_string(v)}" for k, v in t.headers.items())
        body = _lua_string(t.body) if t.body is not None else "nil"
        lines.append(
            f"  {{method = {_lua_string(t.method)}, path = {_lua_string(t.path)}, "
            f"headers = {{{headers}}}, body = {body}}},"
        )
    lines.append("}")
    path.write_text("\n".join(lines) + "\n")


@dataclass
class Answers:
    """What wrk saw: the HTTP status of every request it sent (0: no answer)."""

    status: dict[str, int] = field(default_factory=dict)

    @property
    def sent(self) -> int:
        return len(self.status)

    @property
    def success(self) -> set[str]:
        return {i for i, s in self.status.items() if s == SUCCESS}

    @property
    def refused(self) -> int:
        return sum(1 for s in self.status.values() if s != SUCCESS)

    def refusals(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for s in self.status.values():
            if s != SUCCESS:
                counts[s] = counts.get(s, 0) + 1
        return counts


@dataclass(frozen=True)
class Load:
    """How hard wrk pushes: `connections` (one thread each), each waiting `pace_ms`
    between its answer and its next request."""

    connections: int = 8
    pace_ms: int = 20
    seconds: int = 20


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise SystemExit("wrk is not installed: `make chaos` installs it (apt-get install wrk)")
    return found


class Wrk:
    """wrk running in the background against `url`; ids start with `tag`."""

    def __init__(self, url: str, tag: str, templates_file: Path, out: Path, load: Load) -> None:
        out.mkdir(parents=True)
        self.out = out
        env = {
            **os.environ,
            "CHAOS_TEMPLATES": str(templates_file),
            "CHAOS_OUT": str(out),
            "CHAOS_TAG": tag,
            "CHAOS_PACE_MS": str(load.pace_ms),
        }
        command = [
            # wrk retries a refused connection at once, in a loop: niced, it leaves the CPU to a
            # process starting up (this machine has few cores).
            *("nice", "-n", "19", ensure_wrk()),
            *("-t", str(load.connections), "-c", str(load.connections)),
            *("-d", f"{load.seconds}s", "--timeout", "30s", "-s", str(LOAD_SCRIPT), url),
        ]
        self._summary = (out / "wrk.txt").open("w")
        self.process = subprocess.Popen(
            command, env=env, stdout=self._summary, stderr=subprocess.STDOUT
        )

    def wait(self, timeout: float) -> Answers:
        try:
            self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self._summary.close()
        return self.answers()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def socket_errors(self) -> str:
        """wrk's own line about failed connections, if it printed one."""
        for line in (self.out / "wrk.txt").read_text().splitlines():
            if "Socket errors" in line:
                return line.strip()
        return ""

    def answers(self) -> Answers:
        found = Answers()
        for journal in sorted(self.out.glob("thread-*.log")):
            for line in journal.read_text().splitlines():
                ident, _, status = line.partition(" ")
                if status:
                    found.status[ident] = int(status)
        return found
