"""``keyexchange connect`` and ``tunnel``: KX/1 sessions with a server, and
the trust options both take."""

from __future__ import annotations

import argparse
import os
import sys

from keyexchanged import allocator, files, keys, startup
from keyexchanged.cli._common import (
    CommandError,
    add_command,
    add_passphrase_file,
    add_seconds,
    explain,
    isatty,
    passphrase,
    report,
    usage_errors,
)
from keyexchanged.errors import EXIT_ERROR, EXIT_OK

#: ``connect --send-file`` is read whole before connecting (so that a file
#: that cannot be read is an error before anything is sent); more than this
#: is no secret, and is better piped on stdin, which is streamed.
_MAX_SEND_FILE = 16 * 1024 * 1024


# --- What connect and tunnel share -----------------------------------------------


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
    add_passphrase_file(parser, help="passphrase (first line of F) of an encrypted --identity key")
    parser.add_argument(
        "--allow-no-forward-secrecy",
        action="store_true",
        help="talk to a server that offers no ephemeral key (the original exercise's "
        "scheme: whoever steals its key later can read this session); refused by default",
    )
    parser.add_argument(
        "--allow-classical",
        action="store_true",
        help="talk to a server that offers no ML-KEM key (KX/1 revision 2: whoever "
        "factors its ephemeral RSA key later, with a quantum computer say, can read a "
        "recording of this session); refused by default",
    )
    add_seconds(
        parser,
        "--idle-timeout",
        default=300.0,
        help="end a session on which nothing has passed either way for SECONDS: a "
        "server gone silent (default 300; "
        + ("exit status 4)" if accept_new else "the tunnelled connection is closed)"),
    )


def _session_options(args: argparse.Namespace) -> dict:
    """What the trust arguments say of every session, for
    :class:`~keyexchanged.protocol.SessionOpener`: our key (--identity),
    forward secrecy required or not, the idle timeout."""
    identity = None
    if args.identity is not None:
        identity = keys.load_private_key(args.identity, passphrase=passphrase(args))
    return {
        "identity": identity,
        "require_forward_secrecy": not args.allow_no_forward_secrecy,
        "allow_classical": args.allow_classical,
        "idle_timeout": args.idle_timeout,
    }


def _server_address(text: str) -> tuple[str, int]:
    from keyexchanged import client

    with usage_errors():
        return client.parse_server(text)


def _trust_policy(args: argparse.Namespace, port: int, interactive: bool = True):
    """The trust policy the options ask for (:func:`trust.policy_for`).
    ``interactive`` allows the yes/no question about an unknown host, when
    there is a terminal to ask."""
    from keyexchanged import knownhosts, trust

    ask = None
    if interactive and isatty(sys.stdin) and isatty(sys.stderr):

        def ask(question, fingerprint):
            return knownhosts.ask_yes_no(question, fingerprint, sys.stdin, sys.stderr)

    with usage_errors():
        return trust.policy_for(
            port,
            fingerprint=args.fingerprint,
            ca_file=args.ca,
            insecure=args.insecure,
            known_hosts=args.known_hosts,
            accept_new=args.accept_new,
            ask=ask,
            report=report,
        )


# --- connect -------------------------------------------------------------------


def add_connect(subparsers) -> None:
    parser = add_command(
        subparsers,
        "connect",
        cmd_connect,
        help="run a KX/1 session with a server and print what it sends",
        description=(
            "Connect to a keyexchanged server, check its key, send a fresh session secret "
            "encrypted to it, and print what the server sends (byte for byte) on stdout. "
            "--send-file FILE, --send TEXT, or data piped on stdin goes to the server; "
            "--send puts TEXT in the process list, where every local user can read it, "
            "so give a secret with --send-file."
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
    add_seconds(
        parser,
        "--timeout",
        default=30.0,
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


def cmd_connect(args: argparse.Namespace) -> int:
    """One session with the server; the exit status says how it ended."""
    from twisted.internet import task

    from keyexchanged import client

    host, port = _server_address(args.server)
    policy = _trust_policy(args, port)
    startup.started()  # imported all it needs; no secret read yet
    store = None
    if args.ticket_cache is not None:
        from keyexchanged import tickets

        store = tickets.TicketStore(
            args.ticket_cache, warn=lambda text: report(f"warning: --ticket-cache {text}")
        )
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

    allocator.tune()  # a session may move a lot: see allocator.py
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


# --- tunnel --------------------------------------------------------------------


def add_tunnel(subparsers) -> None:
    parser = add_command(
        subparsers,
        "tunnel",
        cmd_tunnel,
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


def cmd_tunnel(args: argparse.Namespace) -> int:
    """Serve the local listener until interrupted."""
    from twisted.internet import defer, error, task
    from twisted.internet import reactor as global_reactor

    from keyexchanged import tunnel
    from keyexchanged.listening import check_endpoint

    # One line for a description that is no endpoint, or a port in use.
    check_endpoint(global_reactor, args.listen, "--listen")
    host, port = _server_address(args.server)
    policy = _trust_policy(args, port, interactive=False)  # no prompts from a relay
    startup.started()  # imported all it needs; no secret read yet
    if hasattr(policy, "unknown_host_advice"):
        policy.unknown_host_advice = (
            f"add it with 'keyexchange connect {args.server}' (which asks on a terminal, "
            "or takes --accept-new), or give this tunnel --fingerprint {fingerprint}."
        )
    options = _session_options(args)
    failures = []

    def serve(reactor):
        listening = tunnel.run_tunnel(
            reactor,
            args.listen,
            host,
            port,
            policy,
            report=report,
            explain=explain,
            **options,
        )

        def cannot_listen(failure):
            failures.append(f"cannot listen on {args.listen}: {failure.getErrorMessage()}")

        listening.addErrback(cannot_listen)
        # Serve until SIGINT/SIGTERM stops the reactor.
        forever = defer.Deferred()
        listening.addCallback(lambda _: None if failures else forever)
        return listening

    allocator.tune()  # a tunnel moves bulk data: see allocator.py
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
