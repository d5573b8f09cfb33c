"""The console's users file: argon2id hashes, roles, atomic rewrites, and the command that
keeps it."""

from __future__ import annotations

import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from console.users import UsersError, add_user, authenticate, read_users, remove_user


def test_a_user_added_logs_in_with_its_password_only(tmp_path: Path) -> None:
    path = tmp_path / "users"
    assert add_user(path, "ana", "operator", "correct horse") is True
    users = read_users(path)

    assert users["ana"].role == "operator"
    assert users["ana"].password_hash.startswith("$argon2id$")
    assert "correct horse" not in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert authenticate(users, "ana", "correct horse") == users["ana"]
    assert authenticate(users, "ana", "wrong horse") is None
    assert authenticate(users, "bob", "correct horse") is None


def test_adding_again_replaces_the_role_and_password_and_remove_removes(tmp_path: Path) -> None:
    path = tmp_path / "users"
    add_user(path, "ana", "operator", "first password")
    add_user(path, "bo.b@x", "viewer", "bobs password")
    assert add_user(path, "ana", "viewer", "second password") is False

    users = read_users(path)
    assert (users["ana"].role, users["ana"].can_act) == ("viewer", False)
    assert authenticate(users, "ana", "first password") is None
    assert remove_user(path, "ana") is True
    assert remove_user(path, "ana") is False
    assert list(read_users(path)) == ["bo.b@x"]


@pytest.mark.parametrize(
    ("name", "role", "password", "problem"),
    [
        ("ana:x", "viewer", "long enough", "user name 'ana:x'"),
        ("", "viewer", "long enough", "user name ''"),
        ("ana", "admin", "long enough", "role 'admin': one of viewer, operator"),
        ("ana", "viewer", "short", "at least 8 characters"),
    ],
)
def test_what_cannot_be_a_user_is_refused(
    tmp_path: Path, name: str, role: str, password: str, problem: str
) -> None:
    with pytest.raises(UsersError, match=re.escape(problem)):
        add_user(tmp_path / "users", name, role, password)
    assert not (tmp_path / "users").exists()


def test_a_broken_line_is_named_with_its_number(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("# comment\n\nana:operator:plaintext\n")
    with pytest.raises(UsersError, match=r"users:3: not NAME:ROLE:ARGON2_HASH"):
        read_users(path)


def test_the_command_reads_the_password_from_stdin_and_never_prints_it(tmp_path: Path) -> None:
    path = tmp_path / "console-users"
    env = {"CDRFLOW_CONSOLE_USERS": str(path), "PATH": "/usr/bin:/bin"}
    command = [sys.executable, "-m", "cdrflow.cli", "console-user"]

    def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, *args], input=stdin, env=env, capture_output=True, text=True, check=False
        )

    added = run("add", "ana", "--role", "operator", "--password-stdin", stdin="s3cret pass\n")
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == f"added ana (operator) in {path}"
    assert "s3cret" not in added.stdout + added.stderr
    assert authenticate(read_users(path), "ana", "s3cret pass") is not None

    short = run("add", "bob", "--role", "viewer", "--password-stdin", stdin="x\n")
    assert short.returncode == 2
    assert "at least 8 characters" in short.stderr

    assert run("remove", "ana").returncode == 0
    missing = run("remove", "ana")
    assert missing.returncode == 1
    assert f"no user ana in {path}" in missing.stderr
