"""``keyexchange connect``: talk to a KX/1 server from the command line.

What the server sends goes to stdout byte for byte (a newline after it on a
terminal); ``--send-file FILE``, ``--send TEXT`` or data piped on stdin goes
to the server, then END.  The exit code says how it ended, so scripts can
tell a refused key from a dropped connection: 0 the server sent END, 3 its
key was not trusted or it offers no forward secrecy or no ML-KEM key
(``--allow-classical``), 4 connection or protocol failure (or the server
silent for ``--idle-timeout`` seconds), 5 truncated; the one table of them
all is :data:`keyexchanged.errors.EXIT_STATUS_TABLE`.

``-v/--explain`` narrates each step on stderr for someone learning how the
exchange works.  It shows public values only.
"""

import binascii
import os
import sys
import time

from twisted.internet import defer, error, stdio
from twisted.internet.protocol import Factory, Protocol

from keyexchanged import mlkem, protocol
from keyexchanged.errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TRUNCATED,
    EXIT_UNTRUSTED,
    EXIT_USAGE,
    UntrustedKey,
)
from keyexchanged.framing import NO_FORWARD_SECRECY, NO_POST_QUANTUM, TIMEOUT, UNTRUSTED_KEY

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_TRUNCATED",
    "EXIT_UNTRUSTED",
    "EXIT_USAGE",
    "parse_server",
    "run_connect",
]


DEFAULT_PORT = 51424
#: Bytes of an ML-KEM-768 ciphertext, at the end of a revision-3 KEY.
MLKEM_CIPHERTEXT = mlkem.CIPHERTEXT_LENGTH


def parse_server(text):
    """``HOST[:PORT]`` (``[v6]:port`` for IPv6) → ``(host, port)``."""
    host, port = text, DEFAULT_PORT
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{text!r}: unclosed [ in IPv6 address")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r}: expected :PORT after ]")
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host:
        raise ValueError(f"{text!r}: no host name")
    try:
        port = int(port)
    except ValueError:
        raise ValueError(f"{text!r}: the port must be a number") from None
    if not 0 < port < 65536:
        raise ValueError(f"{text!r}: the port must be from 1 to 65535")
    return host, port


class Explainer:
    """Narrates the handshake on a text stream: public values only."""

    def __init__(self, stream):
        self.stream = stream
        #: The session's connection once KEY or RESUME went (its cipher).
        self.connection = None

    def say(self, text):
        print(f"keyexchange: {text}", file=self.stream, flush=True)

    def connected(self, host, port):
        self.say(f"connected to {host}:{port}; waiting for HELLO")

    def hello(self, offer):
        bits = offer.public_key.n.bit_length()
        self.say(f"HELLO: the server's RSA key is {bits} bits, e = {offer.public_key.e}")
        self.say(f"HELLO: key fingerprint {offer.fingerprint}")
        if offer.certificates:
            self.say(f"HELLO: {len(offer.certificates)} certificate(s) offered")
        ephemeral = offer.ephemeral
        if ephemeral is None:
            self.say(
                "HELLO: no ephemeral key: the secret goes to the long-term key, so whoever "
                "steals that key later can decrypt this session (no forward secrecy)"
            )
            return
        now = time.time()
        self.say(
            f"HELLO: ephemeral RSA key of {ephemeral.bits} bits, fingerprint "
            f"{ephemeral.fingerprint}"
        )
        self.say(
            "ephemeral key: its RSA-PSS signature by the long-term key verifies "
            "(over 'kx/1 ephemeral key', the long-term key's hash, the expiry and the key)"
        )
        self.say(
            f"ephemeral key: signed until {_utc(ephemeral.expires)}, "
            f"{int(ephemeral.expires - now)} s from now by our clock (allowed: from 300 s "
            "ago to 30 minutes ahead)"
        )
        self.say(
            "forward secrecy: the server keeps this key in memory only and drops it minutes "
            "from now; once it is gone, nothing the server holds can decrypt this session"
        )
        if ephemeral.mlkem_fingerprint is None:
            self.say(
                "HELLO: no ML-KEM key: this session is as secret as RSA alone; whoever "
                "records it and later factors the ephemeral key (a quantum computer could) "
                "reads it (not post-quantum; --allow-classical)"
            )
            return
        self.say(
            f"HELLO: ML-KEM-768 key (1184 bytes, FIPS 203), fingerprint "
            f"{ephemeral.mlkem_fingerprint}, made with the ephemeral key"
        )
        self.say(
            "ML-KEM key: its RSA-PSS signature by the long-term key verifies (over "
            "'kx/1 hybrid ephemeral keys', the long-term key's hash, the expiry, the "
            "ephemeral key's hash and the ML-KEM key)"
        )
        self.say(f"HELLO: the server names the record cipher {ephemeral.record_cipher}")

    #: What the server's first record proves it holds: set by key_accepted.
    _proof = "the private key"

    def key_accepted(self, connection):
        self.connection = connection
        label = connection.hello_payload
        if connection.resumed:
            self._proof = (
                "the ticket key that opened our ticket (no private key was used: "
                "resumption trusts the earlier session's check of the server's key)"
            )
            self.say(
                "resuming: RESUME carries the ticket from an earlier session instead of KEY; "
                "the ticket gives the server back that session's resumption secret, so "
                "neither side does any RSA"
            )
            self.say(
                "keys: HKDF-SHA256(resumption secret, salt = nonce, info = "
                "'kx/1 resumed keys' ‖ th), th = SHA-256(HELLO ‖ RESUME)"
            )
            if connection.post_quantum_session:
                self.say(
                    "post-quantum: the ticket's session had an ML-KEM secret, and the "
                    "resumption secret was derived from it: this session inherits it"
                )
            return
        target = "the ephemeral key" if connection.ephemeral is not None else "the server's key"
        self._proof = f"the private half of {target}"
        hybrid = connection.post_quantum_session
        rsa_length = len(connection.key_payload) - (MLKEM_CIPHERTEXT if hybrid else 0)
        self.say("key trusted; drew a fresh 32-byte session secret")
        self.say(
            f"KEY: secret encrypted to {target} with RSA-OAEP (SHA-256, MGF1-SHA-256) into "
            f"{rsa_length} bytes; OAEP label = the HELLO payload "
            f"({len(label)} bytes, {label[:24]!r}...)"
        )
        if hybrid:
            self.say(
                f"ML-KEM: encapsulated to the server's ML-KEM-768 key (HPKE, RFC 9180, "
                f"export only): a {MLKEM_CIPHERTEXT}-byte ciphertext after the RSA one in KEY "
                f"({len(connection.key_payload)} bytes in all), and a second 32-byte secret "
                "that only the holder of the ML-KEM private key can recover"
            )
        self.say(
            "transcript hash th = SHA-256(HELLO ‖ KEY) = "
            f"{binascii.hexlify(connection.transcript_hash[:8]).decode()}..."
        )
        if hybrid:
            self.say(
                "keys: HKDF-SHA256(RSA secret ‖ ML-KEM secret, salt = nonce, info = "
                "'kx/1 hybrid keys' ‖ th) → client_key, server_key: secret unless RSA "
                "and ML-KEM are both broken"
            )
        else:
            self.say(
                "keys: HKDF-SHA256(secret, salt = nonce, info = 'kx/1 keys' ‖ th) → "
                "client_key (seals our records), server_key (seals the server's)"
            )
        if connection.identity is not None:
            self.say("AUTH: sent our key and an RSA-PSS signature over th (record 0)")

    def rotation_offered(self, asking):
        if asking:
            self.say(
                "HELLO: the server offers key rotation announcements; asking for its next "
                "key (NEXTKEY, sent before our first record): the known hosts record it"
            )
        else:
            self.say(
                "HELLO: the server offers key rotation announcements; not asking: a pinned "
                "--fingerprint or a --ca is not updated from the server (its next key "
                "reaches you by other means)"
            )

    def announced(self, event):
        announcement = getattr(event, "announcement", None)
        if announcement is None:
            self.say(f"NEXTKEY: the server's announcement is ignored: {event.reason}")
            return
        if announcement.next_fingerprint is not None:
            self.say(
                f"NEXTKEY: the server's next key is {announcement.next_fingerprint} "
                f"(RSA-{announcement.next_bits}); its RSA-PSS signature verifies over "
                "'kx/1 next key', this session's th and the current key's hash: the server "
                "holds it, and the proof is good for this session only"
            )
        for fingerprint in announcement.revoked:
            self.say(f"NEXTKEY: the server no longer uses the key {fingerprint} (revoked)")

    def stale_ticket(self):
        self.say(
            "the server could not use our ticket (stale-ticket: expired, or its ticket keys "
            "changed); forgot it, and made a full handshake on a new connection"
        )

    def confirmed(self):
        cipher = self.connection.record_cipher if self.connection is not None else "aes-256-gcm"
        self.say(
            f"the server's first record opened with server_key: it holds {self._proof}. "
            f"Handshake complete (records in {cipher.upper()}, nonce = record number)"
        )


class _ExplainingTrust:
    """Narrates the offer, then asks the real policy."""

    def __init__(self, policy, explainer):
        self.policy = policy
        self.explainer = explainer

    @property
    def announcements(self):
        return getattr(self.policy, "announcements", False)

    def verify(self, server_name, offer):
        self.explainer.hello(offer)
        if getattr(offer, "rotation", False):
            self.explainer.rotation_offered(self.announcements)
        return self.policy.verify(server_name, offer)

    def announced(self, server_name, event):
        self.explainer.announced(event)
        record = getattr(self.policy, "announced", None)
        if record is not None:
            record(server_name, event)


class StdioApplication(Protocol):
    """Inside the channel: the server's data to stdout, ours from --send/stdin."""

    def __init__(self, output, send=None, stream_stdin=False, stdin_factory=None):
        self.output = output
        self.send = send
        self.stream_stdin = stream_stdin
        self.stdin_factory = stdin_factory or _open_stdin
        self.received = 0
        #: Fires with the exception that ended the session (ConnectionDone
        #: after the server's END).
        self.ended = defer.Deferred()

    def connectionMade(self):
        if self.send is not None:
            self.transport.write(self.send)
        if self.stream_stdin:
            self.stdin_factory(self.transport)
        else:
            self.transport.loseConnection()

    #: The last byte written to ``output`` (b"" before any).
    last = b""

    def dataReceived(self, data):
        self.received += len(data)
        self.output.write(data)
        self.output.flush()
        if data:
            self.last = data[-1:]

    def end_line(self):
        """On a terminal, end the server's text with a newline if it did
        not, so the shell's prompt starts on a line of its own; a pipe or a
        file gets the bytes exactly as sent."""
        if self.last in (b"", b"\n"):
            return
        try:
            terminal = self.output.isatty()
        except (AttributeError, ValueError, OSError):
            terminal = False
        if terminal:
            self.output.write(b"\n")
            self.output.flush()

    def connectionLost(self, reason):
        self.ended.callback(reason.value)


class _StdinForwarder(Protocol):
    """Copies stdin into the channel; END at end of file."""

    def __init__(self, channel_transport):
        self.channel_transport = channel_transport

    def dataReceived(self, data):
        self.channel_transport.write(data)

    def connectionLost(self, reason=None):
        self.channel_transport.loseConnection()


def _open_stdin(channel_transport):
    forwarder = _StdinForwarder(channel_transport)
    stdin = stdio.StandardIO(forwarder, stdout=os.open(os.devnull, os.O_WRONLY))
    # Backpressure: a slow server pauses reading stdin.
    channel_transport.registerProducer(stdin, True)
    return stdin


def _utc(seconds):
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def describe(value):
    """One line for a user, and the exit code, for why a session ended."""
    if isinstance(value, UntrustedKey):
        return f"untrusted server key: {value}", EXIT_UNTRUSTED
    if isinstance(value, protocol.PeerError):
        if value.code == UNTRUSTED_KEY:
            return f"server refused: {value.detail}", EXIT_UNTRUSTED
        return f"server sent ERROR {value.code}: {value.detail}", EXIT_FAILED
    if isinstance(value, protocol.ProtocolFailure):
        if value.code == NO_FORWARD_SECRECY:
            return (
                f"{value.detail}; refused (use --allow-no-forward-secrecy to talk to it "
                "anyway: whoever steals its key later can read the session)",
                EXIT_UNTRUSTED,
            )
        if value.code == NO_POST_QUANTUM:
            return (
                f"{value.detail}; refused (use --allow-classical to talk to it anyway: "
                "whoever records the session and later factors its RSA key can read it)",
                EXIT_UNTRUSTED,
            )
        if value.code == UNTRUSTED_KEY:
            return f"untrusted server key: {value.detail}", EXIT_UNTRUSTED
        if value.code == TIMEOUT:
            return f"timeout: {value.detail}", EXIT_FAILED
        return f"protocol failure ({value.code}): {value.detail}", EXIT_FAILED
    if isinstance(value, protocol.Truncated):
        return "connection closed before the server's END: output is truncated", EXIT_TRUNCATED
    if isinstance(value, error.ConnectionRefusedError):
        return (
            "cannot connect: connection refused: nothing listens there (is the daemon "
            "running, and on that port?)",
            EXIT_FAILED,
        )
    if isinstance(value, error.ConnectError):
        reason = value.osError
        if isinstance(reason, int):
            reason = os.strerror(reason).lower()
        return f"cannot connect: {reason or value}".strip(), EXIT_FAILED
    if isinstance(value, (error.ConnectionDone, error.ConnectionLost)):
        return "connection closed during the handshake", EXIT_FAILED
    return f"{type(value).__name__}: {value}", EXIT_FAILED


def describe_refusal(cause, stream):
    """:func:`describe` for why a handshake failed, after printing on
    ``stream`` a refused key's explanation (the changed-key banner, which
    known-hosts line to edit): the server is told only that we refused, the
    user is told why."""
    explanation = getattr(cause, "explanation", None)
    if explanation:
        print(explanation, file=stream, flush=True)
    broken = cause.__cause__ if isinstance(cause, UntrustedKey) else None
    if broken is not None and not isinstance(broken, UntrustedKey):
        # The trust check itself broke: still nothing was sent.
        message, _ = describe(broken)
        return f"the trust check failed: {message}", EXIT_UNTRUSTED
    return describe(cause)


@defer.inlineCallbacks
def run_connect(
    reactor,
    host,
    port,
    policy,
    send=None,
    stream_stdin=False,
    explain=False,
    output=None,
    errors=None,
    timeout=30.0,
    endpoint=None,
    idle_timeout=300.0,
    **options,
):
    """Run one session; fire with the exit code (see the module docstring).

    ``options`` are the :class:`~keyexchanged.protocol.SessionOpener`'s:
    ``identity``, ``require_forward_secrecy``, ``allow_classical``, and ``tickets``, a
    :class:`~keyexchanged.tickets.TicketStore` to resume from and to keep
    the server's new ticket in (``--ticket-cache``).
    """
    output = output or sys.stdout.buffer
    errors = errors or sys.stderr
    explainer = Explainer(errors) if explain else None
    if explainer is not None:
        policy = _ExplainingTrust(policy, explainer)
        explainer.connected(host, port)
    application = StdioApplication(output, send=send, stream_stdin=stream_stdin)
    opener = protocol.SessionOpener(
        reactor,
        host,
        port,
        policy,
        timeout=timeout,
        endpoint=endpoint,
        idle_timeout=idle_timeout,
        observer=explainer,
        **options,
    )
    try:
        yield opener.open(Factory.forProtocol(lambda: application))
    except protocol.HandshakeFailed as failed_handshake:
        message, code = describe_refusal(protocol.cause_of(failed_handshake), errors)
        print(f"keyexchange: error: {message}", file=errors, flush=True)
        return code
    if explainer is not None:
        explainer.confirmed()
    value = protocol.cause_of((yield application.ended))
    application.end_line()
    if isinstance(value, error.ConnectionDone):
        if explainer is not None:
            explainer.say(f"END received after {application.received} bytes: clean end")
        return EXIT_OK
    message, code = describe(value)
    print(f"keyexchange: error: {message}", file=errors, flush=True)
    return code
