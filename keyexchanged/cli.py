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
returning the exit status, and an ``_add_*`` function that declares its
arguments and sets ``func=cmd_*``; a new command (``connect``, ``tunnel``,
``ca``) is one more pair, listed in :data:`COMMANDS`.

Commands report a failure the user can fix by raising :class:`CommandError`
(or :class:`UsageError`), or by letting any
:class:`~keyexchanged.errors.KeyexchangedError` through (a key file that
cannot be read, say): :func:`main` turns it into one ``keyexchange: error:
...`` line on stderr.  Anything else is a bug, and
keeps its traceback.

Exit status: 0 success, 1 error, 2 usage error (as argparse), 130 interrupted;
``connect`` adds its own (see :mod:`keyexchanged.client`): 3 untrusted key,
4 connection or protocol failure, 5 truncated.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import time

from keyexchanged import config, files, keys, rsa
from keyexchanged.errors import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    KeyexchangedError,
)

__all__ = ["CommandError", "UsageError", "build_parser", "main"]

PROG = "keyexchange"
DEFAULT_KEY_FILE = "keyexchange.key"
DEFAULT_BITS = rsa.DEFAULT_BITS

#: ``connect --send-file`` is read whole before connecting (so that a file
#: that cannot be read is an error before anything is sent); more than this
#: is no secret, and is better piped on stdin, which is streamed.
_MAX_SEND_FILE = 16 * 1024 * 1024


class CommandError(KeyexchangedError):
    """A failure the user can fix: reported as one line, exit status 1."""


class UsageError(CommandError):
    """Arguments argparse accepted but the command cannot: exit status 2."""


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


# --- Helpers shared by commands ------------------------------------------------


def _checked(validator):
    """A validator of the daemon's settings (config.py) as an argparse type:
    the same rule, and its reason in the usage error."""

    def argument(text: str):
        try:
            return validator(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return argument


#: ``--days`` of ca init and ca issue: a hundred years is more than enough.
_DAYS = _checked(config.ranged_int(1, 100 * 366, f"a number of days from 1 to {100 * 366}"))


def _passphrase(args: argparse.Namespace) -> bytes | None:
    """The passphrase of ``--passphrase-file``, or None without one."""
    if args.passphrase_file is None:
        return None
    return keys.read_passphrase_file(args.passphrase_file)


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
        type=_checked(config.key_bits),
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
    private_path = args.out
    public_path = private_path + ".pub"
    passphrase = _passphrase(args)

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
        key = keys.create_key_pair(
            private_path, bits, passphrase=passphrase, force=args.force, progress=spinner.tick
        )
    finally:
        spinner.clear()

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
    public_key = keys.load_public_key(args.file, passphrase=_passphrase(args))
    print(keys.fingerprint(public_key), file=sys.stdout)
    return EXIT_OK


# --- connect -------------------------------------------------------------------


def _add_trust_arguments(parser, accept_new=True) -> None:
    """The server-key checks and client key, shared by connect and tunnel."""
    anchor = parser.add_mutually_exclusive_group()
    anchor.add_argument(
        "--fingerprint",
        metavar="SHA256:...",
        help="trust exactly the key with this fingerprint (from 'keyexchange fingerprint')",
    )
    anchor.add_argument(
        "--ca",
        metavar="FILE",
        help="trust a key whose certificate chains to a CA in FILE (PEM) and names HOST",
    )
    anchor.add_argument(
        "--insecure",
        action="store_true",
        help="trust any key (anyone on the path can read the session; warns)",
    )
    parser.add_argument(
        "--known-hosts",
        metavar="FILE",
        help="the known-hosts file, used when no other check is chosen; its @revoked "
        "keys are refused always (default: $XDG_CONFIG_HOME/keyexchange/known_hosts, "
        "else ~/.config/keyexchange/known_hosts)",
    )
    if accept_new:
        parser.add_argument(
            "--accept-new",
            action="store_true",
            help="add an unknown host to the known hosts without asking (a changed key "
            "is still refused)",
        )
    else:
        parser.set_defaults(accept_new=False)
    parser.add_argument(
        "--identity", metavar="FILE", help="our private key: authenticate with AUTH"
    )
    parser.add_argument(
        "--passphrase-file",
        metavar="F",
        help="passphrase (first line of F) of an encrypted --identity key",
    )
    parser.add_argument(
        "--allow-no-forward-secrecy",
        action="store_true",
        help="talk to a server that offers no ephemeral key (the original exercise's "
        "scheme: whoever steals its key later can read this session); refused by default",
    )
    parser.add_argument(
        "--idle-timeout",
        type=_checked(config.seconds),
        default=300.0,
        metavar="SECONDS",
        help="end a session on which nothing has passed either way for SECONDS: a "
        "server gone silent (default 300; exit status 4)",
    )


def _session_options(args: argparse.Namespace) -> dict:
    """What the trust arguments say of every session, for
    :class:`~keyexchanged.protocol.SessionOpener`: our key (--identity),
    forward secrecy required or not, the idle timeout."""
    identity = None
    if args.identity is not None:
        identity = keys.load_private_key(args.identity, passphrase=_passphrase(args))
    return {
        "identity": identity,
        "require_forward_secrecy": not args.allow_no_forward_secrecy,
        "idle_timeout": args.idle_timeout,
    }


def _add_connect(subparsers) -> None:
    parser = subparsers.add_parser(
        "connect",
        help="run a KX/1 session with a server and print what it sends",
        description=(
            "Connect to a keyexchanged server, check its key, send a fresh session secret "
            "encrypted to it, and print what the server sends (byte for byte) on stdout. "
            "--send-file FILE, --send TEXT, or data piped on stdin goes to the server; "
            "--send puts TEXT in the process list, where every local user can read it, "
            "so give a secret with --send-file. Exit status: 0 clean "
            "end, 3 server key not trusted (nothing was sent), 4 connection or protocol "
            "failure, 5 truncated (the connection closed before the server's END)."
        ),
    )
    parser.add_argument("server", metavar="HOST[:PORT]", help="server address (port 51424)")
    _add_trust_arguments(parser)
    sending = parser.add_mutually_exclusive_group()
    sending.add_argument(
        "--send-file",
        metavar="FILE",
        help="send the contents of FILE to the server, then END; - reads standard input "
        "to its end first. The way to send a secret: unlike --send, nothing of it shows "
        "in the process list",
    )
    sending.add_argument(
        "--send",
        metavar="TEXT",
        help="send TEXT to the server, then END. TEXT is in the process list, which "
        "every local user can read (ps): for a secret use --send-file",
    )
    parser.add_argument(
        "--timeout",
        type=_checked(config.seconds),
        default=30.0,
        metavar="SECONDS",
        help="give up when the server has not connected, or not completed the handshake, "
        "within SECONDS (default 30)",
    )
    parser.add_argument(
        "--ticket-cache",
        metavar="FILE",
        help="keep resumption tickets in FILE (0600) between runs, so that the next "
        "session with the same server resumes without RSA (default: not kept)",
    )
    parser.add_argument(
        "-v",
        "--explain",
        action="store_true",
        help="narrate each step of the exchange on stderr (public values only)",
    )
    parser.set_defaults(func=cmd_connect)


def _report(text: str) -> None:
    print(f"{PROG}: {text}", file=sys.stderr, flush=True)


def _explain(text: str) -> None:
    """Several lines for the user, as they are (a refused key's banner)."""
    print(text, file=sys.stderr, flush=True)


def _server_address(text: str) -> tuple[str, int]:
    from keyexchanged import client

    try:
        return client.parse_server(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _trust_policy(args: argparse.Namespace, port: int, interactive: bool = True):
    """The trust policy the options ask for (:func:`trust.policy_for`).
    ``interactive`` allows the yes/no question about an unknown host, when
    there is a terminal to ask."""
    from keyexchanged import knownhosts, trust

    ask = None
    if interactive and _isatty(sys.stdin) and _isatty(sys.stderr):

        def ask(question, fingerprint):
            return knownhosts.ask_yes_no(question, fingerprint, sys.stdin, sys.stderr)

    try:
        return trust.policy_for(
            port,
            fingerprint=args.fingerprint,
            ca_file=args.ca,
            insecure=args.insecure,
            known_hosts=args.known_hosts,
            accept_new=args.accept_new,
            ask=ask,
            report=_report,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def cmd_connect(args: argparse.Namespace) -> int:
    """One session with the server; the exit status says how it ended."""
    from twisted.internet import task

    from keyexchanged import client

    host, port = _server_address(args.server)
    policy = _trust_policy(args, port)
    store = None
    if args.ticket_cache is not None:
        from keyexchanged import tickets

        store = tickets.TicketStore(args.ticket_cache)
    options = _session_options(args)
    send = None if args.send is None else args.send.encode("utf-8")
    if args.send_file is not None:
        send = _read_send_file(args.send_file)
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
            explain=args.explain,
            timeout=args.timeout,
            tickets=store,
            **options,
        )
        running.addCallback(codes.append)
        return running

    try:
        task.react(session)
    except SystemExit as exc:
        if not codes:
            return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    return codes[0]


def _read_send_file(path: str) -> bytes:
    """What ``--send-file`` names, whole: the file, or stdin for ``-``."""
    too_large = (
        "more than 16 MiB, too much for --send-file: pipe it on standard input "
        "instead (without --send-file it is streamed)"
    )
    if path != "-":
        return files.read_file(
            path, _MAX_SEND_FILE, CommandError, too_large, cannot="cannot read --send-file"
        )
    try:
        data = sys.stdin.buffer.read(_MAX_SEND_FILE + 1)
    except OSError as exc:
        raise CommandError(
            f"standard input: cannot read --send-file: {exc.strerror or exc}"
        ) from None
    if len(data) > _MAX_SEND_FILE:
        raise CommandError(f"standard input: {too_large}")
    return data


def _stdin_is_terminal() -> bool:
    try:
        return os.isatty(sys.stdin.fileno())
    except (AttributeError, OSError, ValueError):
        return True


# --- ca ------------------------------------------------------------------------


def _add_ca(subparsers) -> None:
    from keyexchanged import ca

    parser = subparsers.add_parser(
        "ca",
        help="a small certificate authority for your servers' keys",
        description=(
            "An operator CA: 'init' makes one, 'issue' signs a certificate for a server "
            "key. Give clients the CA certificate (DIR/ca.pem) and they can connect with "
            "--ca instead of a fingerprint per server."
        ),
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    init = actions.add_parser(
        "init",
        help="create a CA: DIR/ca.key (0600) and the self-signed DIR/ca.pem",
        description="Create a CA in DIR (made 0700 if missing): a new RSA key, DIR/ca.key "
        "(mode 0600), and its self-signed certificate DIR/ca.pem, which clients use with "
        "--ca. An existing CA is never replaced.",
    )
    init.add_argument("directory", metavar="DIR", help="where the CA lives")
    init.add_argument(
        "--name",
        default="keyexchange operator CA",
        help="the CA's name (subject CN) (default: %(default)s)",
    )
    init.add_argument(
        "--bits",
        type=_checked(config.key_bits),
        default=DEFAULT_BITS,
        metavar="N",
        help=f"size of the CA key (default: {DEFAULT_BITS})",
    )
    init.add_argument(
        "--days",
        type=_DAYS,
        default=ca.CA_DAYS,
        metavar="N",
        help="validity of the CA certificate in days (default: %(default)s)",
    )
    init.add_argument(
        "--passphrase-file", metavar="F", help="encrypt DIR/ca.key with the first line of F"
    )
    init.set_defaults(func=cmd_ca_init)

    issue = actions.add_parser(
        "issue",
        help="sign a server certificate for a public key",
        description="Sign, with the CA in DIR, a certificate for the server key FILE.pub "
        "valid for the given host names and IP addresses, to serve with the daemon's "
        "--certificate. Its keyUsage allows keyEncipherment only.",
    )
    issue.add_argument("directory", metavar="DIR", help="the CA made by 'ca init'")
    issue.add_argument(
        "--key", required=True, metavar="FILE", help="the server's public key (server.key.pub)"
    )
    issue.add_argument(
        "--name",
        action="append",
        default=[],
        metavar="HOST",
        help="a host name clients dial (repeat for more)",
    )
    issue.add_argument(
        "--ip",
        action="append",
        default=[],
        metavar="ADDR",
        help="an IP address clients dial (repeat for more)",
    )
    issue.add_argument(
        "--days",
        type=_DAYS,
        default=ca.SERVER_DAYS,
        metavar="N",
        help="validity in days (default: %(default)s; never beyond the CA's own)",
    )
    issue.add_argument(
        "--out",
        metavar="FILE",
        help="where to write the certificate (default: the key file's name with "
        ".crt for .key.pub, e.g. server.crt)",
    )
    issue.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    issue.add_argument(
        "--passphrase-file", metavar="F", help="passphrase (first line of F) of DIR/ca.key"
    )
    issue.set_defaults(func=cmd_ca_issue)


def cmd_ca_init(args: argparse.Namespace) -> int:
    """Create the CA key and self-signed certificate in ``args.directory``."""
    from keyexchanged import ca

    passphrase = _passphrase(args)
    directory = args.directory
    for name in (ca.CA_KEY, ca.CA_CERTIFICATE):
        if os.path.lexists(os.path.join(directory, name)):
            raise CommandError(
                f"{os.path.join(directory, name)}: already exists; not replacing a CA"
            )
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise CommandError(f"{directory}: cannot create: {exc.strerror or exc}") from None

    spinner = _Spinner(sys.stderr, f"Generating the CA's RSA key of {args.bits} bits...")
    try:
        key = rsa.generate_private_key(args.bits, progress=spinner.tick)
    finally:
        spinner.clear()
    certificate = ca.init_ca(directory, key, name=args.name, days=args.days, passphrase=passphrase)
    out = sys.stdout
    print(f"CA key:         {os.path.join(directory, ca.CA_KEY)} (keep it private)", file=out)
    print(f"CA certificate: {os.path.join(directory, ca.CA_CERTIFICATE)}", file=out)
    print(f"Valid until:    {ca.not_valid_after(certificate):%Y-%m-%d} UTC", file=out)
    print(f"Clients use:    --ca {os.path.join(directory, ca.CA_CERTIFICATE)}", file=out)
    return EXIT_OK


def _default_certificate_path(key_path: str) -> str:
    base = key_path
    for suffix in (".pub", ".key"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    return base + ".crt"


def cmd_ca_issue(args: argparse.Namespace) -> int:
    """Sign a server certificate for the key in ``args.key``."""
    from keyexchanged import ca, handshake
    from keyexchanged.framing import ProtocolError

    if not args.name and not args.ip:
        raise UsageError("give at least one --name HOST or --ip ADDR that clients dial")
    for address in args.ip:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise UsageError(f"--ip {address!r} is not an IP address") from None
    for name in args.name:
        try:
            ca.check_host_name(name)
        except ValueError as exc:
            raise UsageError(f"--name: {exc}") from None
    out_path = args.out or _default_certificate_path(args.key)
    if not args.force and os.path.lexists(out_path):
        raise CommandError(f"{out_path}: already exists (use --force to overwrite)")
    public_key = keys.load_public_key(args.key)
    try:
        handshake.check_public_key(public_key, "weak-key")
    except ProtocolError as exc:
        raise CommandError(f"{args.key}: clients would refuse this key: {exc.detail}") from None
    passphrase = _passphrase(args)
    certificate = ca.issue_certificate(
        args.directory,
        public_key,
        names=args.name,
        addresses=args.ip,
        days=args.days,
        passphrase=passphrase,
    )
    ca.save_certificate(certificate, out_path, force=args.force)
    out = sys.stdout
    print(f"Certificate: {out_path}", file=out)
    print(f"For:         {ca.describe_names(certificate)}", file=out)
    print(f"Key:         {keys.fingerprint(public_key)}", file=out)
    print(f"Valid until: {ca.not_valid_after(certificate):%Y-%m-%d} UTC", file=out)
    print(f"Serve it:    twistd keyexchange --certificate {out_path} ...", file=out)
    return EXIT_OK


# --- tunnel --------------------------------------------------------------------


def _add_tunnel(subparsers) -> None:
    parser = subparsers.add_parser(
        "tunnel",
        help="carry local TCP connections to a server over KX/1 (spiped-style)",
        description=(
            "Listen on --listen for plain TCP connections and carry each over its own "
            "KX/1 session to --server, where 'twistd keyexchange --application forward "
            "--forward-to ENDPOINT' relays it to the real service. Runs until interrupted. "
            "The server's key is checked for every session as 'connect' checks it; an "
            "unknown host is never asked about here: add it with 'connect' first, or "
            "use --fingerprint or --ca."
        ),
    )
    parser.add_argument(
        "--listen",
        required=True,
        metavar="ENDPOINT",
        help="where to accept plain connections (e.g. tcp:6380:interface=127.0.0.1)",
    )
    parser.add_argument(
        "--server", required=True, metavar="HOST[:PORT]", help="the KX/1 server (port 51424)"
    )
    _add_trust_arguments(parser, accept_new=False)
    parser.set_defaults(func=cmd_tunnel)


def cmd_tunnel(args: argparse.Namespace) -> int:
    """Serve the local listener until interrupted."""
    from twisted.internet import defer, error, task

    from keyexchanged import tunnel

    host, port = _server_address(args.server)
    policy = _trust_policy(args, port, interactive=False)  # no prompts from a relay
    options = _session_options(args)
    failures = []

    def serve(reactor):
        listening = tunnel.run_tunnel(
            reactor,
            args.listen,
            host,
            port,
            policy,
            report=_report,
            explain=_explain,
            **options,
        )

        def cannot_listen(failure):
            failures.append(f"cannot listen on {args.listen}: {failure.getErrorMessage()}")

        listening.addErrback(cannot_listen)
        # Serve until SIGINT/SIGTERM stops the reactor.
        forever = defer.Deferred()
        listening.addCallback(lambda _: None if failures else forever)
        return listening

    try:
        task.react(serve)
    except SystemExit as exc:
        if failures:
            raise CommandError(failures[0]) from None
        if exc.code not in (0, None):
            return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    except error.ReactorNotRunning:
        pass
    return EXIT_OK


# --- ticket-keys -----------------------------------------------------------------


def _add_ticket_keys(subparsers) -> None:
    parser = subparsers.add_parser(
        "ticket-keys",
        help="make or rotate a ticket-key file shared by several daemons",
        description=(
            "Daemons behind one address share resumption ticket keys through a file "
            "(twistd keyexchange --ticket-keys FILE): one base64 32-byte key per line, "
            "the first encrypts, every one decrypts; mode 0600. 'new' makes one with a "
            "fresh key; 'rotate' puts a fresh key first and keeps the previous first key "
            "after it (older ones are dropped). The daemons read the file again within "
            "30 seconds of a change."
        ),
    )
    parser.add_argument("action", choices=("new", "rotate"), help="what to do")
    parser.add_argument("file", metavar="FILE", help="the ticket-key file")
    parser.set_defaults(func=cmd_ticket_keys)


def cmd_ticket_keys(args: argparse.Namespace) -> int:
    from keyexchanged import tickets

    if args.action == "new":
        tickets.new_ticket_key_file(args.file)
        print(f"{args.file}: one fresh ticket key (mode 0600)")
    else:
        tickets.rotate_ticket_key_file(args.file)
        print(f"{args.file}: a fresh key first, the previous one kept to decrypt")
    return EXIT_OK


# --- lab -----------------------------------------------------------------------


def _add_lab(subparsers) -> None:
    parser = subparsers.add_parser(
        "lab",
        help="run the original exercise's attacks live, and see KX/1 refuse them",
        description=(
            "Lessons for learners (docs/lab.rst): each starts a deliberately insecure server "
            "and client of the original exercise on 127.0.0.1, attacks them for real, then "
            "runs the same attack against the daemon's own KX/1 server and shows the refusal."
        ),
    )
    parser.add_argument("lessons", nargs="*", metavar="LESSON", help="lessons to run (--list)")
    parser.add_argument("--list", action="store_true", help="list the lessons and exit")
    parser.add_argument("--all", action="store_true", help="run every lesson, in order")
    parser.add_argument(
        "--seed", type=int, metavar="N", help="repeat a run's weak keys and session keys"
    )
    parser.set_defaults(func=cmd_lab)


def cmd_lab(args: argparse.Namespace) -> int:
    """Run the lab's lessons (keyexchanged.lab)."""
    from keyexchanged import lab

    try:
        return lab.main(args.lessons, list_only=args.list, run_all=args.all, seed=args.seed)
    except lab.UnknownLesson as exc:
        raise UsageError(str(exc)) from None


# --- Entry point -------------------------------------------------------------

#: Each adds one subcommand to the parser, in the order ``--help`` lists them.
COMMANDS = (
    _add_keygen,
    _add_fingerprint,
    _add_connect,
    _add_ca,
    _add_tunnel,
    _add_ticket_keys,
    _add_lab,
)


def build_parser() -> argparse.ArgumentParser:
    """The parser of the whole command; each subcommand sets ``func``."""
    parser = argparse.ArgumentParser(
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
        _error(str(exc))
        return EXIT_USAGE
    except KeyexchangedError as exc:
        _error(str(exc))
        return EXIT_ERROR
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
