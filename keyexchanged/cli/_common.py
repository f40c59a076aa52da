"""What the subcommands share: errors, output, and the arguments several declare."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

from keyexchanged import config, keys, rsa
from keyexchanged.errors import EXIT_STATUS_TABLE, KeyexchangedError

PROG = "keyexchange"
DEFAULT_KEY_FILE = "keyexchange.key"
DEFAULT_BITS = rsa.DEFAULT_BITS


class CommandError(KeyexchangedError):
    """A failure the user can fix: reported as one line, exit status 1."""


class UsageError(CommandError):
    """Arguments argparse accepted but the command cannot: exit status 2."""


@contextlib.contextmanager
def usage_errors(prefix: str = "", errors=ValueError):
    """Turn ``errors`` raised in the body into :class:`UsageError` with the
    same text after ``prefix``: a value argparse took, refused by the code
    that understands it."""
    try:
        yield
    except errors as exc:
        raise UsageError(f"{prefix}{exc}") from None


def error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


def report(text: str) -> None:
    print(f"{PROG}: {text}", file=sys.stderr, flush=True)


def explain(text: str) -> None:
    """Several lines for the user, as they are (a refused key's banner)."""
    print(text, file=sys.stderr, flush=True)


def print_fields(*rows: tuple[str, str]) -> None:
    """``Label: value`` lines on stdout, the values lined up one column past
    the longest label."""
    width = max(len(label) for label, _ in rows) + 2
    for label, value in rows:
        print(f"{label + ':':<{width}}{value}", file=sys.stdout)


def isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no such method, or closed
        return False


class Spinner:
    """A spinner on a terminal while something slow runs; nothing otherwise,
    so that scripts and logs get no control characters.  Used as
    ``with Spinner(stream, label) as spinner:``, it is cleared on the way out."""

    FRAMES = "|/-\\"
    INTERVAL = 0.1  # seconds: the callback may come far more often than that

    def __init__(self, stream, label: str) -> None:
        self.stream = stream
        self.label = label
        self.active = isatty(stream)
        self.frame = 0
        self.last = 0.0

    def __enter__(self) -> Spinner:
        return self

    def __exit__(self, *_exc_info: object) -> None:
        self.clear()

    def tick(self, *_args: object) -> None:
        """The rsa progress callback: ``progress(event, count)``."""
        if not self.active:
            return
        now = time.monotonic()
        if now - self.last < self.INTERVAL:
            return
        self.last = now
        self.stream.write(f"\r{self.label} {self.FRAMES[self.frame % len(self.FRAMES)]}")
        self.stream.flush()
        self.frame += 1

    def clear(self) -> None:
        if self.active and self.frame:
            self.stream.write("\r" + " " * (len(self.label) + 2) + "\r")
            self.stream.flush()


# --- Declaring arguments ------------------------------------------------------


def checked(validator):
    """A validator of the daemon's settings (config.py) as an argparse type:
    the same rule, and its reason in the usage error."""

    def argument(text: str):
        try:
            return validator(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return argument


#: ``--days`` of ca init and ca issue: a hundred years is more than enough.
_DAYS = checked(config.ranged_int(1, 100 * 366, f"a number of days from 1 to {100 * 366}"))
_SECONDS = checked(config.seconds)
_KEY_BITS = checked(config.key_bits)


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's, except that a text of several lines (the exit-status
    table) is shown as written, not wrapped into one paragraph."""

    def _fill_text(self, text, width, indent):
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


class HelpParser(argparse.ArgumentParser):
    """A parser whose --help ends with the exit statuses; its subcommands'
    parsers are of the same class (argparse's default), so every --help does."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("epilog", EXIT_STATUS_TABLE)
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def add_command(subparsers, name: str, func, help: str, description: str):
    """Add subcommand ``name``, run by ``func(args)``; return its parser."""
    parser = subparsers.add_parser(name, help=help, description=description)
    parser.set_defaults(func=func)
    return parser


def add_passphrase_file(parser, help: str) -> None:
    parser.add_argument("--passphrase-file", metavar="F", help=help)


def passphrase(args: argparse.Namespace) -> bytes | None:
    """The passphrase of ``--passphrase-file``, or None without one."""
    if args.passphrase_file is None:
        return None
    return keys.read_passphrase_file(args.passphrase_file)


def add_bits(parser, help: str) -> None:
    """``--bits N``: the size of a key to generate."""
    parser.add_argument("--bits", type=_KEY_BITS, default=DEFAULT_BITS, metavar="N", help=help)


def add_days(parser, default: int, help: str) -> None:
    """``--days N``: the validity of a certificate."""
    parser.add_argument("--days", type=_DAYS, default=default, metavar="N", help=help)


def add_seconds(parser, flag: str, default: float, help: str) -> None:
    """A timeout option: ``flag SECONDS``."""
    parser.add_argument(flag, type=_SECONDS, default=default, metavar="SECONDS", help=help)


def add_force(parser, help: str) -> None:
    parser.add_argument("--force", action="store_true", help=help)
