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

# ``rsa as rsa``: tests replace cli.rsa.generate_private_key.
from keyexchanged import rsa as rsa
from keyexchanged.cli._ca import add_ca
from keyexchanged.cli._common import PROG, CommandError, HelpParser, UsageError, error
from keyexchanged.cli._keys import add_fingerprint, add_keygen, add_rotate_key, add_ticket_keys
from keyexchanged.cli._lab import add_lab
from keyexchanged.cli._session import add_connect, add_tunnel
from keyexchanged.errors import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    KeyexchangedError,
)

__all__ = ["CommandError", "UsageError", "build_parser", "main"]

#: Each adds one subcommand to the parser, in the order ``--help`` lists them.
COMMANDS = (
    add_keygen,
    add_fingerprint,
    add_connect,
    add_ca,
    add_tunnel,
    add_ticket_keys,
    add_rotate_key,
    add_lab,
)


def build_parser() -> argparse.ArgumentParser:
    """The parser of the whole command; each subcommand sets ``func``."""
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
    for add_command in COMMANDS:
        add_command(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the
    exit status."""
    parser = build_parser()
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
