"""The console's users: the file named by `CDRFLOW_CONSOLE_USERS`, one user a line,

    NAME:ROLE:ARGON2_HASH

with ROLE `viewer` or `operator` and the password's argon2id hash (argon2-cffi, with its
default parameters: RFC 9106's second recommended choice). Lines starting with `#` and
blank lines are ignored. `cdrflow console-user add|remove` keeps the file; the console reads
it at start."""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

ROLES = ("viewer", "operator")
MIN_PASSWORD = 8
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_hasher = PasswordHasher()
# Verified when a name is unknown, so that a wrong name costs as long as a wrong password.
_DECOY = _hasher.hash("not anyone's password")


class UsersError(ValueError):
    """A users file or a user that cannot be used, in one line."""


@dataclass(frozen=True)
class User:
    name: str
    role: str
    password_hash: str

    @property
    def can_act(self) -> bool:
        return self.role == "operator"


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise UsersError(
            f"user name {name!r}: 1 to 64 of letters, digits, '.', '_', '@', '-',"
            " starting with a letter or digit"
        )
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise UsersError(f"role {role!r}: one of {', '.join(ROLES)}")
    return role


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise UsersError(f"the password must have at least {MIN_PASSWORD} characters")
    return _hasher.hash(password)


def read_users(path: Path) -> dict[str, User]:
    """Every user of the file; a missing file has none."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise UsersError(f"{path}: cannot be read: {exc.strerror}") from exc
    users = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.strip().split(":", 2)
        if len(parts) != 3 or not parts[2].startswith("$argon2"):
            raise UsersError(f"{path}:{number}: not NAME:ROLE:ARGON2_HASH")
        try:
            user = User(check_name(parts[0]), check_role(parts[1]), parts[2])
        except UsersError as exc:
            raise UsersError(f"{path}:{number}: {exc}") from None
        users[user.name] = user
    return users


def write_users(path: Path, users: dict[str, User]) -> None:
    """Replace the file at once (a reader sees the old or the new one), readable by its
    owner only: the hashes are slow to crack, not impossible."""
    lines = ["# cdrflow console users: NAME:ROLE:ARGON2_HASH (cdrflow console-user add|remove)"]
    lines += [f"{u.name}:{u.role}:{u.password_hash}" for u in sorted(users.values(), key=_name)]
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            out.write("\n".join(lines) + "\n")
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _name(user: User) -> str:
    return user.name


def add_user(path: Path, name: str, role: str, password: str) -> bool:
    """Add a user or replace one's role and password; True when the user is new."""
    users = read_users(path)
    new = check_name(name) not in users
    users[name] = User(name, check_role(role), hash_password(password))
    write_users(path, users)
    return new


def remove_user(path: Path, name: str) -> bool:
    """True when there was such a user."""
    users = read_users(path)
    if users.pop(name, None) is None:
        return False
    write_users(path, users)
    return True


def authenticate(users: dict[str, User], name: str, password: str) -> User | None:
    """The user whose name and password these are, else None (in about the same time)."""
    user = users.get(name)
    try:
        _hasher.verify(user.password_hash if user else _DECOY, password)
    except (VerificationError, InvalidHashError):
        return None
    return user
