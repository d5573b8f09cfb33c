"""Console sessions: a signed cookie, a CSRF token, and a limit on login attempts.

The cookie holds the user's name (None before login) and the session's CSRF token, signed
and timestamped with itsdangerous (Pallets; HMAC-SHA1 over a key derived from
`CDRFLOW_CONSOLE_SECRET`): nothing is stored on the server, and a cookie older than the
session length is refused whatever its client says about its expiry. It is HttpOnly
(scripts cannot read it), SameSite=Strict (no other site's page sends it) and Secure when
the console is served over TLS. Nothing in it is secret: the CSRF token only has to be
unknown to other sites, which cannot read the cookie.

Every POST must carry the session's CSRF token in its form (`csrf`): a synchronizer token,
compared in constant time; a login starts a new session, so a token seen before login is
worth nothing after it."""

from __future__ import annotations

import secrets
import time
from collections import deque
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer

COOKIE = "cdrflow_console"
_SALT = "cdrflow-console-session"


@dataclass(frozen=True)
class Session:
    user: str | None
    csrf: str

    @classmethod
    def fresh(cls, user: str | None = None) -> Session:
        return cls(user, secrets.token_urlsafe(32))

    def accepts(self, token: str) -> bool:
        return bool(token) and secrets.compare_digest(self.csrf, token)


class SessionSigner:
    def __init__(self, secret: str, max_age_seconds: int) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt=_SALT)
        self.max_age = max_age_seconds

    def dumps(self, session: Session) -> str:
        return self._serializer.dumps({"u": session.user, "c": session.csrf})

    def loads(self, cookie: str) -> Session | None:
        """The session a cookie holds, or None when it is forged, altered or expired."""
        try:
            data = self._serializer.loads(cookie, max_age=self.max_age)
        except BadSignature:  # SignatureExpired is one
            return None
        if not isinstance(data, dict) or not isinstance(data.get("c"), str):
            return None
        user = data.get("u")
        return Session(user if isinstance(user, str) else None, data["c"])


class LoginLimiter:
    """At most `attempts` failed logins per client address and per user name within
    `window` seconds; past that, every attempt is refused until the oldest failure ages
    out (an attacker cannot try faster by spreading over names, or over addresses for one
    name)."""

    def __init__(self, attempts: int = 5, window: float = 300.0) -> None:
        self.attempts = attempts
        self.window = window
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        failures = self._failures.setdefault(key, deque())
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        return failures

    def allowed(self, client: str, name: str) -> bool:
        now = time.monotonic()
        keys = (f"client:{client}", f"user:{name}")
        return all(len(self._recent(key, now)) < self.attempts for key in keys)

    def failed(self, client: str, name: str) -> None:
        now = time.monotonic()
        for key in (f"client:{client}", f"user:{name}"):
            self._recent(key, now).append(now)
        if len(self._failures) > 10_000:  # bounded memory under a spray of names
            self._failures = {k: v for k, v in self._failures.items() if v}

    def succeeded(self, client: str, name: str) -> None:
        self._failures.pop(f"user:{name}", None)
