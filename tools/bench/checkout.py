"""cdrflow's processes from another tree of this repository, such as an earlier release, run
with this venv beside this tree's on the same machine (`make bench-compare`).

`python -m` finds a package in the working directory first, so a process started in the
other tree runs that tree's code. Each release checks its settings and refuses a
`CDRFLOW_` variable it does not know: the other tree's processes get only the ones its
`Settings` has."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

PREFIX = "CDRFLOW_"
# A release's settings fields: a dataclass's before pydantic-settings, a model's since.
_FIELDS = """
import dataclasses, cdrflow.settings as s
try:
    names = [f.name for f in dataclasses.fields(s.Settings)]
except TypeError:
    names = list(s.Settings.model_fields)
print(" ".join(names))
"""


@dataclass(frozen=True)
class Checkout:
    root: Path
    variables: frozenset[str]  # the CDRFLOW_ variables its settings know
    name: str

    @classmethod
    def at(cls, root: Path, name: str) -> Checkout:
        fields = _run([sys.executable, "-c", _FIELDS], root).split()
        return cls(root, frozenset(f"{PREFIX}{field.upper()}" for field in fields), name)

    def environment(self, env: Mapping[str, str]) -> dict[str, str]:
        """`env` but the settings this tree's release does not have."""
        return {k: v for k, v in env.items() if not k.startswith(PREFIX) or k in self.variables}

    def migrate(self, database_url: str) -> None:
        """The tree's own `cdrflow migrate` (it creates the database)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
        env[f"{PREFIX}DATABASE_URL"] = database_url
        _run([sys.executable, "-m", "cdrflow.cli", "migrate"], self.root, env)


@contextlib.contextmanager
def worktree(revision: str) -> Iterator[Checkout]:
    """`revision` of this repository, checked out beside it for as long as the block runs."""
    commit = _run(["git", "rev-parse", "--short", f"{revision}^{{commit}}"], Path.cwd()).strip()
    with tempfile.TemporaryDirectory(prefix="cdrflow-base-") as directory:
        root = Path(directory) / "tree"
        _run(["git", "worktree", "add", "--detach", str(root), commit], Path.cwd())
        try:
            yield Checkout.at(root, f"{revision} ({commit})" if revision != commit else commit)
        finally:
            _run(["git", "worktree", "remove", "--force", str(root)], Path.cwd())


def _run(args: list[str], cwd: Path, env: Mapping[str, str] | None = None) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:4])} failed in {cwd}: {done.stderr.strip()[-2000:]}")
    return done.stdout
