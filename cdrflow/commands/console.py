"""`cdrflow console` and `cdrflow console-user`: the web console and its users."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cdrflow.commands.support import EXIT_CONFIG, Subcommands, sources_of
from cdrflow.settings import Settings


def add_commands(commands: Subcommands) -> None:
    console = commands.add_parser("console", help="serve the web console")
    console.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    console.add_argument("--port", type=int, default=8081, help="port to listen on (8081)")
    console.set_defaults(run=run_console)

    user = commands.add_parser("console-user", help="add or remove a console user")
    actions = user.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="add a user, or set one's role and password")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=("viewer", "operator"))
    add.add_argument(
        "--password-stdin",
        action="store_true",
        required=True,
        help="read the password from the first line of standard input",
    )
    add.set_defaults(run=run_user_add)
    remove = actions.add_parser("remove", help="remove a user")
    remove.add_argument("name")
    remove.set_defaults(run=run_user_remove)


def run_console(settings: Settings, args: argparse.Namespace) -> int:
    from console.console_server import serve
    from console.users import UsersError

    configured = list(sources_of(settings, secrets=False)) if settings.sources else []
    try:
        serve(settings, configured, args.host, args.port)
    except UsersError as exc:
        print(f"cdrflow console: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


def run_user_add(settings: Settings, args: argparse.Namespace) -> int:
    from console.users import UsersError, add_user

    path = Path(settings.console_users)
    password = sys.stdin.readline().rstrip("\r\n")
    try:
        new = add_user(path, args.name, args.role, password)
    except UsersError as exc:
        print(f"cdrflow console-user: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"{'added' if new else 'updated'} {args.name} ({args.role}) in {path}")
    return 0


def run_user_remove(settings: Settings, args: argparse.Namespace) -> int:
    from console.users import UsersError, remove_user

    path = Path(settings.console_users)
    try:
        removed = remove_user(path, args.name)
    except UsersError as exc:
        print(f"cdrflow console-user: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if not removed:
        print(f"cdrflow console-user: no user {args.name} in {path}", file=sys.stderr)
        return 1
    print(f"removed {args.name} from {path}")
    return 0
