"""The ``keyexchange`` command: the client and the tools of keyexchanged.

::

    keyexchange keygen [--bits N] [--out FILE] [--passphrase-file F] [--force]
    keyexchange fingerprint FILE [--passphrase-file F]
    keyexchange connect HOST[:PORT] [--fingerprint FP | --ca FILE | --insecure]
                        [--known-hosts FILE] [--accept-new]
                        [--identity FILE] [--send-file FILE | --send TEXT]
                        [-v/--explain]
    keyexchange ca init DIR [--name NAME] [--bits N] [--days N]
    keyexchange ca issue DIR --key FILE.pub --name HOST [--ip ADDR] [--out FILE]
    keyexchange tunnel --listen ENDPOINT --server HOST[:PORT] [trust options]

Each subcommand is a ``cmd_*`` function taking the parsed arguments and
returning the exit status, and an ``add_*`` function that declares its
arguments and sets ``func=cmd_*``; a new command is one more pair, listed in
:data:`COMMANDS`.  The pairs live by family: ``_keys.py`` (keygen,
fingerprint, ticket-keys), ``_session.py`` (connect, tunnel and the trust
options they share), ``_ca.py`` (ca init, ca issue) and ``_lab.py``;
``_common.py`` holds the errors, the output helpers and the arguments that
several commands declare alike.

Commands report a failure the user can fix by raising :class:`CommandError`
(or :class:`UsageError`), or by letting any
:class:`~keyexchanged.errors.KeyexchangedError` through (a key file that
cannot be read, say): :func:`main` turns it into one ``keyexchange: error:
...`` line on stderr.  Anything else is a bug, and
keeps its traceback.

Exit status: :data:`keyexchanged.errors.EXIT_STATUS_TABLE`, which every
``--help`` ends with (:class:`HelpParser`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

# ``rsa as rsa``: tests replace cli.rsa.generate_private_key.
from keyexchanged import rsa as rsa
from keyexchanged import startup
from keyexchanged.cli._common import PROG, CommandError, HelpParser, UsageError, error
from keyexchanged.errors import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    KeyexchangedError,
)

__all__ = ["CommandError", "UsageError", "build_parser", "main"]

#: Each subcommand, in the order ``--help`` lists them: its name, the module
#: of keyexchanged.cli that declares it, and the function there that adds it.
#: A module is imported only to add its command, so that ``connect`` does not
#: pay for the CA's or the lab's imports.
COMMANDS = (
    ("keygen", "_keys", "add_keygen"),
    ("fingerprint", "_keys", "add_fingerprint"),
    ("connect", "_session", "add_connect"),
    ("ca", "_ca", "add_ca"),
    ("tunnel", "_session", "add_tunnel"),
    ("ticket-keys", "_keys", "add_ticket_keys"),
    ("rotate-key", "_keys", "add_rotate_key"),
    ("lab", "_lab", "add_lab"),
)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of the whole command, or of ``command`` alone (the one
    being run); each subcommand sets ``func``."""
    parser = HelpParser(
        prog=PROG,
        description=(
            "The client and tools of keyexchanged, the KX/1 key-exchange daemon: "
            "keys, sessions, tunnels and a small certificate authority."
        ),
    )
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", title="commands", required=True
    )
    for name, module, add in COMMANDS:
        if command is None or command == name:
            add_command = getattr(importlib.import_module(f"{__name__}.{module}"), add)
            add_command(subparsers)
    return parser


def _command(argv: list[str]) -> str | None:
    """The subcommand ``argv`` runs, or None (``--help``, a mistake): the
    command is the first argument, for ``keyexchange`` itself has no options
    but ``--help``."""
    if argv and argv[0] in {name for name, _, _ in COMMANDS}:
        return argv[0]
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the
    exit status."""
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(_command(argv))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0), or a usage error argparse printed (2)
        if exc.code is None:
            return EXIT_OK
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return args.func(args)
    except UsageError as exc:
        error(str(exc))
        return EXIT_USAGE
    except KeyexchangedError as exc:
        error(str(exc))
        return EXIT_ERROR
    except KeyboardInterrupt:
        error("interrupted")
        return EXIT_INTERRUPTED


def run() -> NoReturn:
    """The ``keyexchange`` program (its console script, and ``python -m
    keyexchanged.cli``): :func:`main` as a process of its own, whose start
    runs without the cycle collector (:mod:`keyexchanged.startup`; a
    command that serves calls ``startup.started()`` before its work)."""
    startup.begin()
    sys.exit(main())
