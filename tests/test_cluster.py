"""A cluster on 127.0.0.1: a real HAProxy (TCP mode, ``send-proxy-v2``,
health checks) in front of real ``twistd -n keyexchange`` daemons: three
for the run that kills one, two for a ticket that moves from one to the
other, one for the per-source limit (each daemon is a process).

The daemons share the long-term key (the 2048-bit vector key, copied into
each one's own directory) and one ``--ticket-keys`` file, and listen with
``--listen haproxy:tcp:0`` trusting only 127.0.0.1, where HAProxy connects
from.  Forward secrecy stays on, as the client requires by default: with
``--ephemeral-bits 2048`` an ephemeral key costs tens of milliseconds to
make and a KEY no more to decrypt than one under the long-term key, so
nothing is gained by turning it off.  ``--workers 0``: the daemons
and the clients share two cores, worker processes would only add more.

HAProxy has a frontend per daemon and one more: ``fd@3`` balances over
the daemons (round robin), ``fd@4``, ``fd@5``... each reach one daemon
only, for the tests that must say which daemon answers.

Every wait is on something observable (a daemon's or HAProxy's output, a
connection's result); the only timers are the client's retry backoff, on
the real reactor, a bounded number of times.
"""

import os
import re
import shutil

from twisted.internet import defer, endpoints, error, reactor, task
from twisted.internet.protocol import Factory, Protocol
from twisted.python import log

from keyexchanged import protocol, tickets
from keyexchanged.framing import BUSY
from keyexchanged.trust import PinnedKey
from tests.daemon import Daemon, DaemonTestCase
from tests.fixtures import IDENTITY
from tests.haproxy import SKIP, HAProxy

DAEMONS = 3
#: The per-source limit of every daemon: far below the clients'
#: concurrency (CONCURRENCY), so the run below shows the limit counts the
#: clients' addresses from the PROXY header, not the address every TCP
#: connection to a daemon comes from (HAProxy's 127.0.0.1).
MAX_PER_SOURCE = 2
CONCURRENCY = 32
SOURCES = 100  # 127.0.1.1 to 127.0.1.100
#: kx2 is killed once KILL_AFTER sessions have completed: by then it has
#: served a third of them, from about 50 client addresses (more than the
#: SOURCES // 4 checked below), and CONCURRENCY sessions are in flight, a
#: third of them on kx2.  The HANDSHAKES - KILL_AFTER after the kill go
#: on over several of HAProxy's 200 ms health checks, the first of which
#: takes kx2 out.  A larger count repeats the same sessions, for CPU time.
HANDSHAKES = 400
KILL_AFTER = 150
#: Attempts per handshake, and the backoff before the n-th retry
#: (``BACKOFF * n`` seconds on the reactor): enough to outlast HAProxy's
#: health check (200 ms) taking a killed daemon out.
ATTEMPTS = 6
BACKOFF = 0.05

CONFIG = """\
global
    maxconn 512
defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    # A connection HAProxy could not make is tried again, on another server.
    retries 2
    option redispatch
frontend cluster
    bind fd@3
    default_backend cluster
backend cluster
    balance roundrobin
{cluster}
{single}
"""

SERVER = (
    "    server {name} 127.0.0.1:{port} send-proxy-v2 "
    "check check-send-proxy inter 200ms fall 1 rise 2"
)

SINGLE = """\
frontend {name}
    bind fd@{fd}
    default_backend {name}
backend {name}
    server {name} 127.0.0.1:{port} send-proxy-v2
"""


class Echoed(Protocol):
    """The client's application: sends ``message``, and closes once the
    daemon's echo application has sent it all back."""

    def __init__(self, message, hold=False):
        self.message = message
        self.hold = hold
        self.received = b""
        self.echoed = defer.Deferred()
        self.ended = defer.Deferred()

    def connectionMade(self):
        #: The client's own address and port (what the daemon logs).
        self.local = self.transport.getHost()
        self.transport.write(self.message)

    def dataReceived(self, data):
        self.received += data
        if len(self.received) >= len(self.message) and not self.echoed.called:
            self.echoed.callback(self.received)
            if not self.hold:
                self.transport.loseConnection()

    def connectionLost(self, reason):
        if not self.echoed.called:
            self.echoed.errback(reason)
        self.ended.callback(protocol.cause_of(reason.value))


class ClusterTests(DaemonTestCase):
    skip = SKIP
    timeout = 180

    @defer.inlineCallbacks
    def start(self, count):
        """``count`` daemons (kx1, kx2, ...) and HAProxy in front of them:
        as many as the test needs, each a twistd process."""
        ticket_keys = os.path.join(self.dir, "ticket.keys")
        tickets.new_ticket_key_file(ticket_keys)
        self.daemons = []
        for index in range(count):
            directory = os.path.join(self.dir, f"kx{index + 1}")
            os.makedirs(directory)
            key = os.path.join(directory, "server.key")
            shutil.copyfile(self.key, key)
            os.chmod(key, 0o600)
            daemon = Daemon.start(
                [
                    "--listen",
                    "haproxy:tcp:0:interface=127.0.0.1",
                    "--trusted-proxies",
                    "127.0.0.1/32",
                    "--private-key",
                    key,
                    "--ephemeral-bits",
                    "2048",
                    "--ticket-keys",
                    ticket_keys,
                    "--application",
                    "echo",
                    "--max-per-source",
                    str(MAX_PER_SOURCE),
                    "--workers",
                    "0",
                ],
                cwd=directory,
            )
            self.addCleanup(daemon.stop)
            self.daemons.append(daemon)
        ports = []
        for daemon in self.daemons:
            ports.append((yield daemon.listening))
        names = [f"kx{index + 1}" for index in range(count)]
        config = CONFIG.format(
            cluster="\n".join(
                SERVER.format(name=name, port=port) for name, port in zip(names, ports)
            ),
            single="".join(
                SINGLE.format(name=name, fd=4 + index, port=port)
                for index, (name, port) in enumerate(zip(names, ports))
            ),
        )
        self.haproxy = HAProxy.start(self, config, frontends=1 + count)
        self.cluster_port = self.haproxy.ports[0]
        self.single_ports = self.haproxy.ports[1:]

    def session(self, port, source, message, hold=False, store=None):
        """One session from ``source`` through HAProxy's frontend at
        ``port``; fires with ``(application, Echoed)`` once the echo is
        back."""
        application = Echoed(message, hold)
        endpoint = endpoints.TCP4ClientEndpoint(
            reactor, "127.0.0.1", port, timeout=10, bindAddress=(source, 0)
        )
        opening = protocol.connect(
            reactor,
            endpoint,
            PinnedKey(IDENTITY.fingerprint),
            Factory.forProtocol(lambda: application),
            server_name="127.0.0.1",
            handshake_timeout=10,
            tickets=store,
            server_address=("cluster.example", 51424),
        )

        @defer.inlineCallbacks
        def echoed(channel):
            yield application.echoed
            return channel, application

        return self.haproxy.unless_dies(opening.addCallback(echoed))

    @defer.inlineCallbacks
    def test_sessions_in_flight_on_a_killed_daemon_are_tried_again_none_lost(self):
        yield self.start(DAEMONS)
        completed = []
        retries = []
        errors = []
        killed = []
        counter = iter(range(HANDSHAKES))

        @defer.inlineCallbacks
        def one(number):
            source = f"127.0.1.{number % SOURCES + 1}"
            message = f"handshake {number}".encode()
            for attempt in range(ATTEMPTS):
                if attempt:
                    retries.append(number)
                    yield task.deferLater(reactor, BACKOFF * attempt, lambda: None)
                try:
                    _, application = yield self.session(self.cluster_port, source, message)
                except protocol.HandshakeFailed as failed:
                    errors.append(protocol.cause_of(failed))
                    continue
                except error.ConnectionLost as lost:  # before the echo came back
                    errors.append(lost)
                    continue
                self.assertEqual(application.received, message)
                cause = yield application.ended
                if not isinstance(cause, error.ConnectionDone):
                    # Echoed, but the daemon went before its END: not a
                    # complete session.
                    errors.append(cause)
                    continue
                completed.append(number)
                if len(completed) == KILL_AFTER:
                    killed.append(len(completed))
                    self.daemons[1].signal("KILL")
                return
            raise AssertionError(f"handshake {number} failed {ATTEMPTS} times: {errors[-3:]}")

        @defer.inlineCallbacks
        def worker():
            for number in counter:
                yield one(number)

        yield defer.gatherResults([worker() for _ in range(CONCURRENCY)], consumeErrors=True)
        # HAProxy saw kx2 go and took it out; the survivors are up.
        yield self.haproxy.wait_for(b"Server cluster/kx2 is DOWN")
        self.assertNotIn(b"cluster/kx1 is DOWN", self.haproxy.output)
        self.assertNotIn(b"cluster/kx3 is DOWN", self.haproxy.output)
        self.assertEqual(killed, [KILL_AFTER])
        self.assertEqual(sorted(completed), list(range(HANDSHAKES)))
        # The daemons saw the clients' own addresses (HAProxy's 127.0.0.1
        # is only its health checks, below): all hundred of them between
        # them, and each daemon many (kx2 before it went).
        seen = [_sources(daemon.output) for daemon in self.daemons]
        self.assertEqual(set().union(*seen), {f"127.0.1.{index}" for index in range(1, 101)})
        for sources in seen:
            self.assertGreater(len(sources), SOURCES // 4)
        # So the per-source limit (2, with 32 at once through one HAProxy)
        # never refused anyone.
        outputs = self._outputs()
        self.assertNotIn(b"(--max-per-source)", outputs)
        self.assertEqual([cause for cause in errors if isinstance(cause, protocol.PeerError)], [])
        # Only the sessions in flight on the killed daemon were lost and
        # tried again.
        self.assertTrue(0 < len(set(retries)) <= CONCURRENCY, retries)
        # HAProxy's health checks (every 200 ms, each a LOCAL connection)
        # reached the daemons and are logged as what they are, not as
        # sessions that closed before KEY: a line for the first, then one a
        # minute with their count.
        self.assertNotIn(b"PROXY protocol: LOCAL connection", outputs)
        self.assertIn(b"health check from 127.0.0.1 (", outputs)
        self.assertNotIn(
            b"connection from 127.0.0.1:",
            b"".join(line for line in outputs.splitlines() if b" ended: " in line),
        )
        self.assertNotIn(b"Traceback", outputs)
        self.assertNotIn(b"Unhandled", outputs)
        kinds = sorted({type(cause).__name__ for cause in errors})
        # In _trial_temp/test.log: how many sessions the kill cost.
        log.msg(
            f"{len(completed)} handshakes; kx2 killed after {KILL_AFTER}; "
            f"{len(retries)} retries for {len(set(retries))} handshakes ({', '.join(kinds)})"
        )

    def _outputs(self):
        return b"".join(daemon.output for daemon in self.daemons)

    @defer.inlineCallbacks
    def test_the_per_source_limit_counts_each_client_not_haproxy(self):
        yield self.start(1)
        port = self.single_ports[0]  # kx1 alone
        held = []
        for _ in range(MAX_PER_SOURCE):
            held.append((yield self.session(port, "127.0.2.1", b"held", hold=True)))
        # One more from the same client: refused, busy.
        refused = yield self.assertFailure(
            self.session(port, "127.0.2.1", b"one too many"), protocol.HandshakeFailed
        )
        cause = protocol.cause_of(refused)
        self.assertIsInstance(cause, protocol.PeerError)
        self.assertEqual(
            (cause.code, cause.detail), (BUSY, "too many connections from this address")
        )
        # Meanwhile another client, through the very same HAProxy, is welcome
        # (MAX_PER_SOURCE of them, as many as the first holds).
        others = []
        for _ in range(MAX_PER_SOURCE):
            channel, application = yield self.session(port, "127.0.2.2", b"hello", hold=True)
            self.assertEqual(application.received, b"hello")
            others.append((channel, application))
        for channel, _ in held + others:
            channel.transport.loseConnection()
        kx1 = self.daemons[0]
        for _, application in held + others:
            client = application.local
            yield kx1.wait_for(f"connection from {client.host}:{client.port} ended: ok".encode())
        # Had the limit counted HAProxy's address, every connection here
        # would be one source, and the second client refused.
        self.assertIn(b"too many connections from one source (--max-per-source)", kx1.output)
        self.assertEqual(kx1.output.count(b"connection from 127.0.2.1:"), MAX_PER_SOURCE)
        self.assertEqual(kx1.output.count(b"connection from 127.0.2.2:"), MAX_PER_SOURCE)

    @defer.inlineCallbacks
    def test_a_ticket_from_one_daemon_resumes_on_another(self):
        yield self.start(2)
        store = tickets.TicketStore()
        first, _ = yield self.session(self.single_ports[0], "127.0.3.1", b"full", store=store)
        self.assertFalse(first.transport.resumed)
        # The ticket kx1 issued, filed under the cluster's one address.
        self.assertEqual(len(store), 1)
        second, _ = yield self.session(self.single_ports[1], "127.0.3.1", b"again", store=store)
        self.assertTrue(second.transport.resumed)
        first.transport.loseConnection()
        second.transport.loseConnection()
        yield self.daemons[1].wait_for(b"connection from 127.0.3.1:")
        yield self.daemons[1].wait_for(b"ended: ok; resumed")
        self.assertNotIn(b"resumed", self.daemons[0].output)


_SESSION_END = re.compile(rb"connection from (127\.0\.1\.\d+):\d+ ended: ok")


def _sources(output):
    """The client addresses of the sessions a daemon logged as ended ok."""
    return {match.decode() for match in _SESSION_END.findall(output)}
