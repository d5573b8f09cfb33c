"""The container image's HEALTHCHECK (`python -m cdrflow.healthcheck`): ask the process of
this container for /healthz where it serves it, from its own command line and environment.

The ingress serves on its --port (8080); a worker only when CDRFLOW_WORKER_PORT is set; the
one-shot commands (migrate, replay, ...) serve nothing. With nothing to ask, the process
running is all there is to check: healthy."""

from __future__ import annotations

import os
import sys
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

INGRESS_PORT = "8080"  # `cdrflow ingress`'s default --port


def health_url(argv: Sequence[str], environ: Mapping[str, str]) -> str | None:
    """The /healthz URL of the cdrflow command `argv` (its words after `cdrflow`, or the
    whole command line), or None when it serves none."""
    if "ingress" in argv:
        port = argv[argv.index("--port") + 1] if "--port" in argv[:-1] else INGRESS_PORT
    elif "worker" in argv:
        port = environ.get("CDRFLOW_WORKER_PORT", "")
        if port in ("", "0"):
            return None
    else:
        return None
    return f"http://127.0.0.1:{port}/healthz"


def main_command_line() -> list[str]:
    """The command line of the container's main process (PID 1: the image's ENTRYPOINT)."""
    raw = Path("/proc/1/cmdline").read_bytes()
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def main() -> int:
    url = health_url(main_command_line(), os.environ)
    if url is None:
        return 0
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 (a fixed http URL)
            return 0 if answer.status == 200 else 1
    except OSError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
