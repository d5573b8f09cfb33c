"""What a console page may show: phone numbers in full to operators only, and never a
secret or a token, to anyone.

A viewer sees a number's first three and last two characters (`861********00`): enough to
tell two calls apart, not to call anyone. In the payloads and bodies a viewer reads, every
run of seven digits or more is masked the same way, since any field of a provider's
payload may hold a number (a timestamp in milliseconds is masked too: the record's own
fields show the times). Secrets: a value under a key that names one (sign, token, secret,
password, key, authorization) is replaced wherever a payload is shown; the envelope never
kept the callback token or credential headers in the first place."""

from __future__ import annotations

import re
from typing import Any

PHONE_FIELDS = ("caller", "callee", "display_number")
# Fields of free provider data, where a number may sit under any name.
FREE_FIELDS = ("extra", "raw", "user_data", "dtmf")
HIDDEN = "[hidden]"
_DIGITS = re.compile(r"\+?\d{7,}")
_SECRET_KEY = re.compile(r"sign|token|secret|passw|appkey|api_?key|authoriz|credential", re.I)
# key=value, "key":"value" and key: value, in a body that is not JSON.
_SECRET_PAIR = re.compile(
    r"""(?P<key>["']?[\w.-]*(?:sign|token|secret|passw|appkey|api_?key|authoriz)[\w.-]*["']?"""
    r"""\s*[=:]\s*)(?P<value>"[^"]*"|'[^']*'|[^&,;\s}]*)""",
    re.I,
)


def mask_number(value: str | None) -> str | None:
    if not value:
        return value
    if len(value) <= 5:
        return "*" * len(value)
    return value[:3] + "*" * (len(value) - 5) + value[-2:]


def mask_digits(text: str) -> str:
    return _DIGITS.sub(lambda match: mask_number(match.group()) or "", text)


def hide_secrets(value: Any) -> Any:
    """A JSON value with every secret-named key's value hidden, at any depth."""
    if isinstance(value, dict):
        return {
            k: HIDDEN if _SECRET_KEY.search(str(k)) else hide_secrets(v) for k, v in value.items()
        }
    if isinstance(value, list):
        return [hide_secrets(v) for v in value]
    return value


def mask_all_digits(value: Any) -> Any:
    if isinstance(value, str):
        return mask_digits(value)
    if isinstance(value, dict):
        return {k: mask_all_digits(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_all_digits(v) for v in value]
    return value


def hide_secrets_in_text(text: str) -> str:
    return _SECRET_PAIR.sub(lambda m: m.group("key") + HIDDEN, text)


class Viewer:
    """How one user sees numbers: in full (operator) or masked (viewer)."""

    def __init__(self, *, full_numbers: bool) -> None:
        self.full_numbers = full_numbers

    def number(self, value: str | None) -> str | None:
        return value if self.full_numbers else mask_number(value)

    def text(self, text: str) -> str:
        """A payload or body as text: secrets hidden, numbers masked for viewers."""
        shown = hide_secrets_in_text(text)
        return shown if self.full_numbers else mask_digits(shown)

    def record(self, fields: dict[str, Any]) -> dict[str, Any]:
        """A record's (or a revision's content's) fields as this user may see them."""
        shown: dict[str, Any] = hide_secrets(fields)
        if not self.full_numbers:
            for name in PHONE_FIELDS:
                if isinstance(shown.get(name), str):
                    shown[name] = mask_number(shown[name])
            for name in FREE_FIELDS:
                if name in shown:
                    shown[name] = mask_all_digits(shown[name])
        return shown
