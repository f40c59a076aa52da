"""What every lesson shares: the KX/1 side, the narration and the runner.

The KX/1 server of the lab is the daemon itself, built in this process by
:func:`keyexchanged.tap.makeService` from a config file, exactly as
``twistd keyexchange --config FILE`` builds it, and listening on 127.0.0.1.
Why in-process and not a ``twistd`` child: it starts in milliseconds rather
than a second, there is no process to manage or leak, and the lab can read
the daemon's own log lines; why ``makeService`` and not a bare
:class:`~keyexchanged.protocol.SecureChannelFactory`: whatever the daemon
offers by default (KX/1 revision 2's ephemeral keys, say) the lab gets
without a change.  The one thing swapped is the application inside
the channel: the lab's :mod:`bank <keyexchanged.lab.bank>` in place of
``echo``, so that both schemes serve the same ledger.

The daemon runs on the Twisted reactor; the lessons are blocking code in
another thread (``keyexchange lab`` runs the reactor in a thread of its own,
the tests run the lessons with ``deferToThread``) and reach the reactor only
through :func:`~twisted.internet.threads.blockingCallFromThread`.

The KX/1 *client* of the lab is :class:`Kx1Client`: the project's own client
state machine (:class:`keyexchanged.handshake.ClientConnection`, the one
``keyexchange connect`` drives through Twisted) on a blocking socket, so that
a victim's session reads as a few lines and each command is one record.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import secrets
import shutil
import sys
import tempfile
import textwrap
import threading
from dataclasses import dataclass, field

from twisted.internet import error as twisted_error
from twisted.internet import threads
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver

from keyexchanged import handshake, keys, rsa
from keyexchanged.lab import wire
from keyexchanged.trust import UntrustedKey

__all__ = ["Kx1Client", "Kx1Server", "Lab", "Outcome", "read_hello", "run_lessons"]

#: The KX/1 server key of a lab run: the smallest size a KX/1 client accepts.
KX1_KEY_BITS = 2048

#: How long the lab waits for the daemon to log a connection's end.
LOG_WAIT = wire.TIMEOUT

_WIDTH = 78


@dataclass
class Outcome:
    """How one half of a lesson went.

    ``worked``: the attacker got what the attack is for.  ``summary``: one
    line, what was recovered or the precise refusal.  ``evidence``: the
    values behind it, for the tests.  ``pending``: set when the lesson cannot
    show this half yet, saying why.
    """

    worked: bool
    summary: str
    evidence: dict = field(default_factory=dict)
    pending: str | None = None


# -- the KX/1 server: the daemon, in this process --------------------------------------------


class BankProtocol(LineReceiver):
    """The lab's bank inside the KX/1 channel: one command per line."""

    delimiter = b"\n"

    def connectionMade(self):
        self.teller = self.factory.bank.session()
        self.factory.tellers.append(self.teller)
        for line in self.factory.greeting:
            self.sendLine(line.encode())

    def lineReceived(self, line):
        self.sendLine(self.teller.command(line.decode("utf-8", "replace")).encode())

    def connectionLost(self, reason=twisted_error.ConnectionDone):
        # KX/1 tells the application how the session ended: ConnectionDone
        # after the client's END, Truncated (or PeerError, ProtocolFailure)
        # otherwise.  Only a clean end commits.
        self.teller.end(clean=reason.check(twisted_error.ConnectionDone) is not None)


class BankFactory(Factory):
    protocol = BankProtocol
    noisy = False

    def __init__(self, bank, greeting=()):
        self.bank = bank
        self.greeting = list(greeting)
        self.tellers = []


class Kx1Server:
    """``twistd keyexchange``'s service, made by ``tap.makeService``, on 127.0.0.1.

    ``port``, ``fingerprint`` and ``private_key`` (the long-term key, for a
    lesson that steals it) are set once :meth:`start` returns; ``log`` holds
    the daemon's log lines from then on.
    """

    def __init__(self, lab, bank, greeting=()):
        self.lab = lab
        self.bank = bank
        self.factory = BankFactory(bank, greeting)
        self.service = None
        self.port = None
        self.fingerprint = None
        self.private_key = None
        self.log = []
        self._log_changed = threading.Condition()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc_info):
        self.stop()

    def start(self):
        self.lab.call(self._start)

    def _start(self):
        from twisted.logger import globalLogPublisher

        from keyexchanged import tap

        options = tap.Options(environ={})
        options.parseOptions(["--config", self.lab.config_path()])
        globalLogPublisher.addObserver(self._observe)
        service = tap.makeService(options, self.lab.reactor)
        # The lab is not the process's owner: no SIGTERM/SIGINT handlers.
        service.handle_signals = False
        # The application inside the channel: the lab's bank, in place of echo.
        service.factory.wrapped_factory = self.factory
        service.startService()
        self.service = service
        self.port = service.port.getHost().port
        self.fingerprint = options.identity.fingerprint
        self.private_key = options.identity.private_key

    def _observe(self, event):
        from twisted.logger import formatEvent

        if not str(event.get("log_namespace", "")).startswith("keyexchanged"):
            return
        with self._log_changed:
            self.log.append(formatEvent(event))
            self._log_changed.notify_all()

    def wait_for_log(self, text, count=1):
        """The daemon's log lines containing ``text``, once there are at
        least ``count`` of them (waiting a bounded time for them)."""

        def matching():
            lines = [line for line in self.log if text in line]
            return lines if len(lines) >= count else None

        with self._log_changed:
            found = self._log_changed.wait_for(matching, LOG_WAIT)
        if found is None:
            raise RuntimeError(f"the daemon did not log {text!r} {count} time(s): {self.log}")
        return found

    def stop(self):
        if self.service is not None:
            self.lab.call(self._stop)

    def _stop(self):
        from twisted.logger import globalLogPublisher

        stopping = self.service.stopService()
        self.service = None

        def stopped(result):
            globalLogPublisher.removeObserver(self._observe)
            return result

        return stopping.addBoth(stopped)


# -- the KX/1 client: the project's state machine on a blocking socket ------------------------


class Kx1Session:
    """What a KX/1 client did and saw.

    ``outcome``: ``"end"`` (the server's END arrived), ``"truncated"`` (the
    connection closed after the handshake without END), ``"closed"`` (before
    the handshake completed), ``"untrusted"`` (we refused the server's key),
    ``"error-sent"`` / ``"error-received"`` (ERROR ``code``: ``detail``).
    """

    def __init__(self):
        self.outcome = None
        self.code = None
        self.detail = None
        self.explanation = None
        self.confirmed = False
        #: The secret the client drew for KEY: the lab shows it, nobody else can.
        self.secret = None
        self.received = b""
        #: The verbs of the frames this client sent, in order.
        self.sent = []

    @property
    def lines(self):
        return self.received.decode("utf-8", "replace").splitlines()

    def describe(self):
        if self.outcome in ("error-sent", "error-received"):
            who = "the client sent" if self.outcome == "error-sent" else "the server sent"
            return f"{who} ERROR {self.code}: {self.detail}"
        if self.outcome == "untrusted":
            return f"the client refused the key (ERROR untrusted-key): {self.detail}"
        return {
            "end": "clean end (END received)",
            "truncated": "connection closed before the server's END: truncated",
            "closed": "connection closed during the handshake",
        }[self.outcome]


class Kx1Client:
    """A KX/1 client session: verify the key with ``policy`` (a
    :mod:`keyexchanged.trust` policy), send KEY, wait for the key
    confirmation, send each command as its own record, then END."""

    def __init__(self, port, policy, server_name=wire.LOOPBACK, post_quantum=False):
        self.port = port
        self.policy = policy
        self.server_name = server_name
        #: Speak KX/1 revision 3 (an ML-KEM ciphertext in KEY), else revision 2.
        self.post_quantum = post_quantum

    def run(self, commands=()):
        session = Kx1Session()

        def draw(n):
            session.secret = secrets.token_bytes(n)
            return session.secret

        connection = handshake.ClientConnection(random=draw, post_quantum=self.post_quantum)
        sent_frames = wire.FrameSplitter()
        sock = wire.connect(self.port)

        def flush():
            data = connection.data_to_send()
            if data:
                session.sent += [frame.verb for frame in sent_frames.feed(data)]
                sock.sendall(data)

        try:
            while session.outcome is None:
                data = sock.recv(65536)
                if not data:
                    break
                for event in connection.receive_data(data):
                    self._event(event, connection, session, commands)
                flush()
                if connection.closed:
                    break
        finally:
            sock.close()
        if session.outcome is None:
            if connection.received_end:
                session.outcome = "end"
            elif connection.handshake_done:
                # Exactly the rule of protocol.ChannelProtocol.connectionLost.
                session.outcome = "truncated"
            else:
                session.outcome = "closed"
        return session

    def _event(self, event, connection, session, commands):
        if isinstance(event, handshake.ServerKeyReceived):
            try:
                self.policy.verify(self.server_name, event)
            except UntrustedKey as refusal:
                connection.reject_key(str(refusal))
                session.outcome, session.code = "untrusted", "untrusted-key"
                session.detail, session.explanation = str(refusal), refusal.explanation
                return
            connection.accept_key()
            # As keyexchange connect does: an empty record right after KEY.
            connection.send_data(b"")
        elif isinstance(event, handshake.HandshakeComplete):
            session.confirmed = True
            for command in commands:
                connection.send_data(command.encode() + b"\n")
            connection.send_end()
        elif isinstance(event, handshake.DataReceived):
            session.received += event.data
        elif isinstance(event, handshake.ErrorReceived):
            session.outcome, session.code, session.detail = (
                "error-received",
                event.code,
                event.detail,
            )
        elif isinstance(event, handshake.ProtocolFailed):
            session.outcome, session.code, session.detail = "error-sent", event.code, event.detail


class Hello:
    """A HELLO as an eavesdropper reads it (docs/spec/kx1.rst §2 and §10.1)."""

    def __init__(self, payload):
        self.payload = payload
        obj = json.loads(payload)
        self.obj = obj
        self.key_der = base64.b64decode(obj["key"])
        self.key = keys.public_key_from_der(self.key_der)
        self.nonce = base64.b64decode(obj["nonce"])
        ephemeral = obj.get("ephemeral")
        self.ephemeral = None
        self.ephemeral_der = None
        self.expires = None
        if isinstance(ephemeral, dict):
            self.ephemeral_der = base64.b64decode(ephemeral["key"])
            self.ephemeral = keys.public_key_from_der(self.ephemeral_der)
            self.expires = ephemeral.get("expires")

    @property
    def encryption_key(self):
        """The key the client encrypts KEY under: the ephemeral one when
        offered (§10), else the server's long-term key."""
        return self.ephemeral if self.ephemeral is not None else self.key


def read_hello(payload):
    return Hello(payload)


#: The verbs whose payload is a sealed record (docs/spec/kx1.rst §5, §11.2).
_SEALED = frozenset({"MSG", "END", "AUTH", "TICKET"})


def open_with_secret(secret, hello, key_payload, frames, cipher="aes-256-gcm"):
    """Derive the session keys from a guessed ``secret`` (docs/spec/kx1.rst §4)
    and open the recorded records, sealed with ``cipher`` (§13), in order.
    Returns the plaintexts, or raises :class:`keyexchanged.records.BadRecord`
    at the first record that does not open."""
    from keyexchanged.records import RecordOpener

    th = handshake.transcript_hash(hello.payload, key_payload)
    client_key, server_key = handshake.derive_keys(secret, hello.nonce, th)
    openers = {
        "client": RecordOpener(client_key, cipher),
        "server": RecordOpener(server_key, cipher),
    }
    plaintexts = []
    for direction, frame in frames:
        # Every sealed verb takes the next sequence number of its direction.
        if frame.verb == "UPDATE":
            openers[direction].open_update(frame.payload)
        elif frame.verb in _SEALED:
            plaintexts.append((direction, openers[direction].open(frame.verb, frame.payload)))
    return plaintexts


# -- the lab: narration, keys, servers --------------------------------------------------------


def short(value, digits=16):
    """A long number or byte string, shortened for a line of output."""
    if isinstance(value, (bytes, bytearray)):
        text = value.hex()
    else:
        text = f"{value:x}"
    return "0x" + (text if len(text) <= digits else text[:digits] + "...")


class Lab:
    """One run of the lab: its output, its seed, the daemon's key and files.

    ``seed`` makes the weak halves repeatable (their keys, session keys and
    padding come from ``rng(lesson)``); the KX/1 halves always use real
    randomness.  ``kx1_key`` is the daemon's key (generated when not given).
    """

    def __init__(self, out=None, seed=None, kx1_key=None, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.out = out if out is not None else sys.stdout
        self.seed = secrets.randbits(32) if seed is None else seed
        self.reactor = reactor
        self._kx1_key = kx1_key
        self._directory = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def rng(self, lesson):
        """The weak half's randomness for ``lesson``: seeded, NOT for real keys."""
        return random.Random(f"keyexchange lab {self.seed} {lesson}")

    @property
    def kx1_key(self):
        if self._kx1_key is None:
            self._kx1_key = rsa.generate_private_key(KX1_KEY_BITS)
        return self._kx1_key

    def config_path(self):
        """The daemon's config file (and key file beside it), made on first use."""
        if self._directory is None:
            self._directory = tempfile.mkdtemp(prefix="keyexchange-lab-")
            keys.save_private_key(self.kx1_key, os.path.join(self._directory, "server.key"))
            with open(os.path.join(self._directory, "keyexchanged.conf"), "w") as f:
                f.write(
                    "[keyexchanged]\n"
                    "listen = tcp:0:interface=127.0.0.1\n"
                    "private-key = server.key\n"
                    "application = echo\n"
                    "workers = 0\n"
                    "grace-period = 2\n"
                )
        return os.path.join(self._directory, "keyexchanged.conf")

    def path(self, name):
        self.config_path()
        return os.path.join(self._directory, name)

    def call(self, f, *args, **kwargs):
        """Run ``f`` in the reactor thread and wait for its result."""
        return threads.blockingCallFromThread(self.reactor, f, *args, **kwargs)

    def kx1_server(self, bank, greeting=()):
        """The daemon on 127.0.0.1, serving ``bank``: use in a ``with``."""
        return Kx1Server(self, bank, greeting)

    def close(self):
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None

    # -- narration ----------------------------------------------------------------

    def print(self, text=""):
        print(text, file=self.out, flush=True)

    def heading(self, text):
        self.print()
        self.print(f"== {text} ".ljust(_WIDTH, "="))

    def section(self, text):
        self.print()
        self.print(f"-- {text} ".ljust(_WIDTH, "-"))

    def say(self, who, text):
        """One step, said by ``who`` (victim, attacker, server, lab...)."""
        self.print(
            textwrap.fill(
                text,
                _WIDTH,
                initial_indent=f"  {who:<9} ",
                subsequent_indent=" " * 12,
                break_on_hyphens=False,
                break_long_words=False,
            )
        )

    def show(self, lines, prefix="|"):
        """Quoted lines: what a party read, or a log."""
        for line in lines:
            self.print(f"{' ' * 12}{prefix} {line}")

    def verdict(self, outcome, refused_word="REFUSED"):
        if outcome.pending:
            word = "NOT SHOWN"
        elif outcome.worked:
            word = "ATTACK SUCCEEDED"
        else:
            word = refused_word
        self.print()
        self.print(
            textwrap.fill(
                outcome.summary,
                _WIDTH,
                initial_indent=f"  => {word}: ",
                subsequent_indent=" " * 7,
                break_on_hyphens=False,
                break_long_words=False,
            )
        )


def run_lessons(lessons, lab):
    """Run each lesson (a module with NAME, TITLE, against_weak, against_kx1);
    return ``[(name, weak outcome, kx1 outcome), ...]``."""
    results = []
    for number, lesson in enumerate(lessons, 1):
        lab.heading(f"{number}/{len(lessons)} {lesson.NAME}: {lesson.TITLE}")
        lab.section("the original exercise's scheme (DELIBERATELY INSECURE)")
        weak = lesson.against_weak(lab)
        lab.verdict(weak)
        lab.section("KX/1: the same attack against the daemon's own server")
        kx1 = lesson.against_kx1(lab)
        lab.verdict(kx1)
        results.append((lesson.NAME, weak, kx1))
    return results


@contextlib.contextmanager
def reactor_thread():
    """Run the global reactor in a thread of its own for the duration
    (``keyexchange lab``: the lessons run in the main thread)."""
    from twisted.internet import reactor

    thread = threading.Thread(
        target=reactor.run, kwargs={"installSignalHandlers": False}, name="lab-reactor", daemon=True
    )
    thread.start()
    try:
        yield reactor
    finally:
        reactor.callFromThread(reactor.stop)
        thread.join(wire.TIMEOUT)
