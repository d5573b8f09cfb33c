"""One source's entry in the sources document, read key by key (`SourceSettings`): the
common keys here, the provider's own in `Provider.configure`, which returns the
`ProviderConfig` a `Source` keeps. A wrong entry is one line naming the source and the
field (`SourcesError`)."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, Protocol

# Every source has these; any other key is its provider's to read (`Provider.configure`).
COMMON_KEYS = frozenset(
    {
        "provider",
        "tenant",
        "token",
        "token_env",
        "timezone",
        "allow_cidrs",
        "charset",
        "currency",
        "reconcile",
    }
)


class SourcesError(ValueError):
    """The sources document is wrong; the message is one line naming source and field."""


class SourceSettings:
    """One source's entry as its provider reads it in `Provider.configure`. The provider
    takes the keys it knows; any key neither it nor the common ones took is refused.
    A problem is raised as `fail(key, problem)`: one line naming source and field."""

    def __init__(
        self,
        provider: str,
        entry: dict[str, Any],
        where: str,
        environ: Mapping[str, str],
        *,
        table: str = "",
        common: frozenset[str] = COMMON_KEYS,
    ) -> None:
        self.provider = provider
        self._entry = entry
        self._where = where
        self._environ = environ
        self._table = table  # a sub-table's name ("reconcile"), prefixed to its fields
        self.resolve_secrets = True
        self._read = set(common)

    def fail(self, key: str, problem: str) -> SourcesError:
        name = f"{self._table}.{key}" if self._table else key
        return SourcesError(f"{self._where}: field {name!r}: {problem}")

    def table(self, key: str, common: frozenset[str]) -> SourceSettings | None:
        """A sub-table (`[sources.NAME.key]`) read like the entry: one-line errors naming
        `key.field`; `common` are the keys its reader takes besides its provider's."""
        value = self.value(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.fail(key, "must be a table")
        return SourceSettings(
            self.provider, value, self._where, self._environ, table=key, common=common
        )

    def has(self, key: str) -> bool:
        return key in self._entry

    def value(self, key: str, default: Any = None) -> Any:
        self._read.add(key)
        return self._entry.get(key, default)

    def string(self, key: str, *, required: bool = False) -> str | None:
        value = self.value(key)
        if value is None:
            if required:
                raise self.fail(key, "is required")
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, "must be a non-empty string")
        return value.strip()

    def secret(self, key: str, *, required: bool) -> str | None:
        """`key` in the file, or the environment variable named by `key_env`. None when
        secrets are not resolved (workers never authenticate anything)."""
        env_key = f"{key}_env"
        self._read |= {key, env_key}
        if key in self._entry and env_key in self._entry:
            raise self.fail(key, f"set both {key!r} and {env_key!r}; choose one")
        if env_key in self._entry:
            return self._from_environ(env_key)
        if key in self._entry:
            text = self.string(key)
            return text if self.resolve_secrets else None
        if required:
            raise self.fail(key, f"is required (or {env_key!r})")
        return None

    def _from_environ(self, env_key: str) -> str | None:
        variable = self.string(env_key)
        if not self.resolve_secrets:
            return None
        value = self._environ.get(variable or "")
        if not value:
            raise self.fail(env_key, f"environment variable {variable} is not set")
        return value

    def refuse_unread(self) -> None:
        unknown = sorted(set(self._entry) - self._read)
        if unknown:
            raise self.fail(unknown[0], f"unknown key{did_you_mean(unknown[0], self._read)}")


def did_you_mean(key: str, known: set[str]) -> str:
    # Keys are short, so a looser cutoff than the settings' finds `tenent`.
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
    return f"; did you mean {close[0]!r}?" if close else ""


class ProviderConfig(Protocol):
    """A source's settings that belong to its provider, as `Provider.configure` read them."""

    @property
    def signing(self) -> str:
        """How the source's requests are signed: a mode of the provider, or "none"."""

    def secrets(self) -> tuple[str, ...]:
        """Values no log line may show."""
