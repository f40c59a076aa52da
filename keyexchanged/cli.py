"""The ``keyexchange`` command: key management for keyexchanged.

::

    keyexchange keygen [--bits N] [--out FILE] [--passphrase-file F] [--force]
    keyexchange fingerprint FILE [--passphrase-file F]
    keyexchange connect HOST[:PORT] [--fingerprint FP | --insecure]
                        [--identity FILE] [--send TEXT] [-v/--explain]

Each subcommand is a ``cmd_*`` function taking the parsed arguments and
returning the exit status, and an ``_add_*`` function that declares its
arguments and sets ``func=cmd_*``; a new command (``connect``, ``tunnel``,
``ca``) is one more pair, listed in :data:`COMMANDS`.

Commands report a failure the user can fix by raising :class:`CommandError`
(or :class:`UsageError`), or by letting a
:class:`~keyexchanged.keys.KeyFileError` through: :func:`main` turns it into
one ``keyexchange: error: ...`` line on stderr.  Anything else is a bug, and
keeps its traceback.

Exit status: 0 success, 1 error, 2 usage error (as argparse), 130 interrupted;
``connect`` adds its own (see :mod:`keyexchanged.client`): 3 untrusted key,
4 connection or protocol failure, 5 truncated.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

from keyexchanged import keys, rsa

__all__ = ["CommandError", "UsageError", "build_parser", "main"]

PROG = "keyexchange"
DEFAULT_KEY_FILE = "keyexchange.key"
DEFAULT_BITS = rsa.DEFAULT_BITS

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: A passphrase is one line; anything longer is not a passphrase file.
_MAX_PASSPHRASE_LINE = 64 * 1024


class CommandError(Exception):
    """A failure the user can fix: reported as one line, exit status 1."""


class UsageError(CommandError):
    """Arguments argparse accepted but the command cannot: exit status 2."""


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


# --- Helpers shared by commands ------------------------------------------------


def _read_passphrase_file(path: str) -> bytes:
    """The first line of ``path``, without its line ending, as bytes (so
    that a UTF-8 passphrase means the same to us as to ``openssl -passin``)."""
    try:
        with open(path, "rb") as passphrase_file:
            line = passphrase_file.readline(_MAX_PASSPHRASE_LINE + 1)
    except OSError as exc:
        raise CommandError(f"{path}: cannot read passphrase file: {exc.strerror or exc}") from None
    if len(line) > _MAX_PASSPHRASE_LINE:
        raise CommandError(f"{path}: first line too long for a passphrase")
    passphrase = line.rstrip(b"\r\n")
    if not passphrase:
        raise CommandError(f"{path}: passphrase file is empty (its first line is the passphrase)")
    return passphrase


class _Spinner:
    """A spinner on a terminal while something slow runs; nothing otherwise,
    so that scripts and logs get no control characters."""

    FRAMES = "|/-\\"
    INTERVAL = 0.1  # seconds: the callback may come far more often than that

    def __init__(self, stream, label: str) -> None:
        self.stream = stream
        self.label = label
        self.active = _isatty(stream)
        self.frame = 0
        self.last = 0.0

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


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no such method, or closed
        return False


# --- keygen ------------------------------------------------------------------


def _add_keygen(subparsers) -> None:
    parser = subparsers.add_parser(
        "keygen",
        help="generate an RSA key pair",
        description=(
            "Generate an RSA key pair: FILE gets the private key (PKCS#8 PEM, mode 0600, "
            "encrypted if a passphrase file is given) and FILE.pub the public key "
            "(SubjectPublicKeyInfo PEM). Prints the fingerprint and the files written."
        ),
    )
    parser.add_argument(
        "--bits",
        type=int,
        default=DEFAULT_BITS,
        metavar="N",
        help=f"modulus size: a multiple of {rsa.GENERATE_BITS_STEP} from "
        f"{rsa.MIN_GENERATE_BITS} to {rsa.MAX_GENERATE_BITS} (default: {DEFAULT_BITS})",
    )
    parser.add_argument(
        "--out",
        default=DEFAULT_KEY_FILE,
        metavar="FILE",
        help=f"private key file; the public key goes to FILE.pub "
        f"(default: {DEFAULT_KEY_FILE} in the current directory)",
    )
    parser.add_argument(
        "--passphrase-file",
        metavar="F",
        help="encrypt the private key with the first line of F",
    )
    parser.add_argument(
        "--force", action="store_true", help="overwrite FILE and FILE.pub if they exist"
    )
    parser.set_defaults(func=cmd_keygen)


def cmd_keygen(args: argparse.Namespace) -> int:
    """Generate a key pair into ``args.out`` and ``args.out + ".pub"``."""
    bits = args.bits
    low, high, step = rsa.MIN_GENERATE_BITS, rsa.MAX_GENERATE_BITS, rsa.GENERATE_BITS_STEP
    if not (low <= bits <= high and bits % step == 0):
        raise UsageError(f"--bits must be a multiple of {step} from {low} to {high}, not {bits}")
    private_path = args.out
    public_path = private_path + ".pub"
    passphrase = None
    if args.passphrase_file is not None:
        passphrase = _read_passphrase_file(args.passphrase_file)

    # Everything that can be checked is checked before the slow part.
    for path in (private_path, public_path):
        if os.path.isdir(path):  # even --force would fail there, half-way through
            raise CommandError(f"{path}: is a directory")
        if not args.force and os.path.lexists(path):
            raise CommandError(f"{path}: already exists (use --force to overwrite)")
    directory = os.path.dirname(private_path) or os.curdir
    if not os.path.isdir(directory):
        raise CommandError(f"{directory}: no such directory")
    if not os.access(directory, os.W_OK):
        raise CommandError(f"{directory}: directory is not writable")

    spinner = _Spinner(sys.stderr, f"Generating an RSA key of {bits} bits...")
    try:
        key = rsa.generate_private_key(bits, progress=spinner.tick)
    finally:
        spinner.clear()

    keys.save_private_key(key, private_path, passphrase=passphrase, force=args.force)
    try:
        keys.save_public_key(key, public_path, force=args.force)
    except BaseException:
        # Half a key pair is worse than none: take the private key back.
        with contextlib.suppress(OSError):
            os.unlink(private_path)
        raise

    out = sys.stdout
    print(f"Fingerprint: {keys.fingerprint(key)}", file=out)
    print(f"Private key: {private_path}", file=out)
    print(f"Public key:  {public_path}", file=out)
    return EXIT_OK


# --- fingerprint ---------------------------------------------------------------


def _add_fingerprint(subparsers) -> None:
    parser = subparsers.add_parser(
        "fingerprint",
        help="print the fingerprint of a key file",
        description=(
            "Print the SHA-256 fingerprint (SHA256:base64) of a public or private key file, "
            "PEM or DER, as peers show it."
        ),
    )
    parser.add_argument("file", metavar="FILE", help="public or private key file")
    parser.add_argument(
        "--passphrase-file",
        metavar="F",
        help="passphrase (first line of F) of an encrypted private key",
    )
    parser.set_defaults(func=cmd_fingerprint)


def cmd_fingerprint(args: argparse.Namespace) -> int:
    """Print the fingerprint of the key in ``args.file``."""
    passphrase = None
    if args.passphrase_file is not None:
        passphrase = _read_passphrase_file(args.passphrase_file)
    public_key = keys.load_public_key(args.file, passphrase=passphrase)
    print(keys.fingerprint(public_key), file=sys.stdout)
    return EXIT_OK


# --- connect -------------------------------------------------------------------


def _add_connect(subparsers) -> None:
    parser = subparsers.add_parser(
        "connect",
        help="run a KX/1 session with a server and print what it sends",
        description=(
            "Connect to a keyexchanged server, check its key, send a fresh session secret "
            "encrypted to it, and print what the server sends (byte for byte) on stdout. "
            "--send TEXT, or data piped on stdin, goes to the server. Exit status: 0 clean "
            "end, 3 server key not trusted (nothing was sent), 4 connection or protocol "
            "failure, 5 truncated (the connection closed before the server's END)."
        ),
    )
    parser.add_argument("server", metavar="HOST[:PORT]", help="server address (port 51424)")
    anchor = parser.add_mutually_exclusive_group()
    anchor.add_argument(
        "--fingerprint",
        metavar="SHA256:...",
        help="trust exactly the key with this fingerprint (from 'keyexchange fingerprint')",
    )
    anchor.add_argument(
        "--insecure",
        action="store_true",
        help="trust any key (anyone on the path can read the session; warns)",
    )
    parser.add_argument(
        "--identity", metavar="FILE", help="our private key: authenticate with AUTH"
    )
    parser.add_argument(
        "--passphrase-file",
        metavar="F",
        help="passphrase (first line of F) of an encrypted --identity key",
    )
    parser.add_argument("--send", metavar="TEXT", help="send TEXT to the server, then END")
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="give up connecting after SECONDS (default 30)",
    )
    parser.add_argument(
        "-v",
        "--explain",
        action="store_true",
        help="narrate each step of the exchange on stderr (public values only)",
    )
    parser.set_defaults(func=cmd_connect)


def _trust_policy(args: argparse.Namespace):
    from keyexchanged import trust

    if args.fingerprint is not None:
        try:
            return trust.PinnedKey(args.fingerprint)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if args.insecure:
        return trust.Insecure(lambda text: print(f"{PROG}: {text}", file=sys.stderr))
    return trust.NoTrustAnchor()


def cmd_connect(args: argparse.Namespace) -> int:
    """One session with the server; the exit status says how it ended."""
    from twisted.internet import task

    from keyexchanged import client

    try:
        host, port = client.parse_server(args.server)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not args.timeout > 0:
        raise UsageError("--timeout must be a positive number of seconds")
    policy = _trust_policy(args)
    identity = None
    if args.identity is not None:
        passphrase = None
        if args.passphrase_file is not None:
            passphrase = _read_passphrase_file(args.passphrase_file)
        identity = keys.load_private_key(args.identity, passphrase=passphrase)
    send = None if args.send is None else args.send.encode("utf-8")
    # Piped data goes to the server; a terminal is not read (nothing to wait for).
    stream_stdin = send is None and not _stdin_is_terminal()
    codes = []

    def session(reactor):
        running = client.run_connect(
            reactor,
            host,
            port,
            policy,
            send=send,
            stream_stdin=stream_stdin,
            identity=identity,
            explain=args.explain,
            timeout=args.timeout,
        )
        running.addCallback(codes.append)
        return running

    try:
        task.react(session)
    except SystemExit as exc:
        if not codes:
            return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    return codes[0]


def _stdin_is_terminal() -> bool:
    try:
        return os.isatty(sys.stdin.fileno())
    except (AttributeError, OSError, ValueError):
        return True


# --- Entry point -------------------------------------------------------------

#: Each adds one subcommand to the parser, in the order ``--help`` lists them.
COMMANDS = (_add_keygen, _add_fingerprint, _add_connect)


def build_parser() -> argparse.ArgumentParser:
    """The parser of the whole command; each subcommand sets ``func``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Key management for keyexchanged, the KX/1 key-exchange daemon.",
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
        _error(str(exc))
        return EXIT_USAGE
    except (CommandError, keys.KeyFileError) as exc:
        _error(str(exc))
        return EXIT_ERROR
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
