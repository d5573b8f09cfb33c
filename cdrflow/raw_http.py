"""One HTTP/1.1 request written byte for byte as given: a request target with raw spaces or
raw UTF-8 goes out as a provider's Java client sends it, where HTTP client libraries
re-encode or refuse it (`cdrflow send`)."""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    reason: str
    body: bytes


def request(
    base_url: str,
    method: str,
    target: str,
    headers: Mapping[str, str],
    body: bytes = b"",
    timeout: float = 30.0,
) -> Reply:
    """`method target` against `base_url` (http or https, optionally with a path prefix);
    `target` is written as it is. The connection closes after the answer."""
    url = urlsplit(base_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError(f"{base_url!r}: an http:// or https:// URL")
    port = url.port or (443 if url.scheme == "https" else 80)
    lines = [
        f"{method} {url.path.rstrip('/')}{target} HTTP/1.1",
        f"Host: {url.netloc}",
        *(f"{name}: {value}" for name, value in headers.items()),
        "Connection: close",
    ]
    if body or method not in ("GET", "HEAD"):
        lines.append(f"Content-Length: {len(body)}")
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    with socket.create_connection((url.hostname, port), timeout) as plain:
        sock = plain
        if url.scheme == "https":
            sock = ssl.create_default_context().wrap_socket(plain, server_hostname=url.hostname)
        sock.sendall(raw)
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        return Reply(answer.status, answer.reason, answer.read())
