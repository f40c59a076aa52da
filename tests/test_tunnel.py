"""Tunnels: a plain client → TunnelFactory ⇒ KX/1 ⇒ forward → a plain target.

Everything runs in this process on 127.0.0.1 with real sockets, so that
half-closes, resets and flow control are the kernel's, not a fake's.  The
daemon-and-CLI version of the same chain is in test_tunnel_system.py.
"""

import hashlib
import os

from twisted.internet import defer, endpoints, error, interfaces, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.trial import unittest
from zope.interface import implementer

from keyexchanged import relay
from keyexchanged.applications import ForwardFactory
from keyexchanged.knownhosts import KnownHostsTrust, host_entry
from keyexchanged.protocol import SecureChannelFactory, SessionOpener
from keyexchanged.tickets import TicketStore
from keyexchanged.trust import PinnedKey
from keyexchanged.tunnel import TunnelFactory
from tests.fixtures import IDENTITY, Pusher, StaticEphemeralKeys, Target

#: A key the known hosts list for the server instead of its own.
OTHER_FINGERPRINT = "SHA256:" + "A" * 43


@implementer(interfaces.IHalfCloseableProtocol)
class Client(Protocol):
    """The plain client of the local tunnel port."""

    def __init__(self):
        self.data = bytearray()
        self.write_done = False
        self.eof = defer.Deferred()
        self.lost = defer.Deferred()

    def dataReceived(self, data):
        self.data += data

    def readConnectionLost(self):
        self.eof.callback(bytes(self.data))
        if self.write_done:
            self.transport.loseConnection()

    def writeConnectionLost(self):
        self.write_done = True
        if self.eof.called:
            self.transport.loseConnection()

    def connectionLost(self, reason):
        if not self.eof.called:
            self.eof.callback(None)  # no end-of-stream: the connection failed
        self.lost.callback(reason.value)  # the exception: a Failure would errback


class Chain:
    """target ← forward daemon (in process) ← tunnel listener; all on 127.0.0.1."""

    @classmethod
    @defer.inlineCallbacks
    def start(cls, testcase, target_class=Target, echo=True, target_port=None):
        chain = cls()
        chain.targets = []
        if target_port is None:

            def new_target():
                target = target_class(echo=echo)
                chain.targets.append(target)
                return target

            target = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
                Factory.forProtocol(new_target)
            )
            testcase.addCleanup(target.stopListening)
            target_port = target.getHost().port
        chain.forward = ForwardFactory(f"tcp:127.0.0.1:{target_port}", reactor)
        chain.server_factory = SecureChannelFactory(
            chain.forward, IDENTITY, reactor=reactor, ephemeral_keys=StaticEphemeralKeys()
        )
        server = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            chain.server_factory
        )
        testcase.addCleanup(server.stopListening)
        server_port = server.getHost().port
        opener = SessionOpener(
            reactor,
            "127.0.0.1",
            server_port,
            PinnedKey(IDENTITY.fingerprint),
            tickets=TicketStore(per_server=8),
            endpoint=endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", server_port),
        )
        chain.tunnel = TunnelFactory(opener)
        local = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            chain.tunnel
        )
        testcase.addCleanup(local.stopListening)
        chain.local_port = local.getHost().port
        return chain

    def connect(self, client=None):
        client = client or Client()
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.local_port)
        return endpoints.connectProtocol(endpoint, client)


class TunnelTests(unittest.TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def test_round_trip_and_client_half_close(self):
        chain = yield Chain.start(self)
        client = Client()
        yield chain.connect(client)
        client.transport.write(b"hello ")
        client.transport.write(b"through the tunnel")
        # Our FIN becomes END, then the target's FIN; the echo still comes back.
        client.transport.loseWriteConnection()
        echoed = yield client.eof
        self.assertEqual(echoed, b"hello through the tunnel")
        yield client.lost
        target = chain.targets[0]
        yield target.lost
        self.assertTrue(target.eof)

    @defer.inlineCallbacks
    def test_target_half_closes_first(self):
        class Greeter(Target):
            def connectionMade(self):
                self.transport.write(b"banner\r\n")
                self.transport.loseWriteConnection()

        chain = yield Chain.start(self, Greeter, echo=False)
        client = Client()
        yield chain.connect(client)
        banner = yield client.eof
        self.assertEqual(banner, b"banner\r\n")
        # The other direction is still open after the target's FIN.
        client.transport.write(b"still talking")
        client.transport.loseWriteConnection()
        reason = yield client.lost
        self.assertIsInstance(reason, error.ConnectionDone)
        yield chain.targets[0].lost
        self.assertEqual(bytes(chain.targets[0].data), b"still talking")

    @defer.inlineCallbacks
    def test_target_refuses(self):
        with_nothing = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        port = yield with_nothing.listen(Factory.forProtocol(Protocol))
        number = port.getHost().port
        yield port.stopListening()
        chain = yield Chain.start(self, target_port=number)
        client = Client()
        yield chain.connect(client)
        reason = yield client.lost
        # A reset, not a clean end: the client can tell it failed.
        self.assertIsInstance(reason, error.ConnectionLost)
        self.assertEqual(bytes(client.data), b"")
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_target_closes_mid_stream(self):
        class Dropper(Target):
            def dataReceived(self, data):
                super().dataReceived(data)
                self.transport.write(b"partial")
                self.transport.abortConnection()

        chain = yield Chain.start(self, Dropper, echo=False)
        client = Client()
        yield chain.connect(client)
        client.transport.write(b"x" * 1000)
        reason = yield client.lost
        self.assertIsInstance(reason, error.ConnectionLost)
        self.assertNotIsInstance(reason, error.ConnectionDone)
        self.assertLessEqual(len(client.data), len(b"partial"))

    @defer.inlineCallbacks
    def test_untrusted_server_resets_the_local_client(self):
        chain = yield Chain.start(self)
        chain.tunnel.opener.trust = PinnedKey("SHA256:" + "A" * 43)
        reports = []
        chain.tunnel.report = reports.append
        client = Client()
        yield chain.connect(client)
        client.transport.write(b"secret")
        reason = yield client.lost
        self.assertIsInstance(reason, error.ConnectionLost)
        self.assertEqual(chain.targets, [])
        (line,) = reports
        self.assertIn("to 127.0.0.1: the server's key", line)
        self.assertIn("does not match the pinned fingerprint", line)

    @defer.inlineCallbacks
    def test_changed_key_banner(self):
        """A refused key keeps its full explanation all the way to the
        user: not only the short detail, and a changed key with its
        banner."""
        chain = yield Chain.start(self)
        known_hosts = os.path.abspath(self.mktemp())
        opener = chain.tunnel.opener
        with open(known_hosts, "w") as f:
            f.write(f"{host_entry(opener.host, opener.port)} {OTHER_FINGERPRINT}\n")
        opener.trust = KnownHostsTrust(known_hosts, opener.port)
        reports, explanations = [], []
        chain.tunnel.report = reports.append
        chain.tunnel.explain = explanations.append
        client = Client()
        yield chain.connect(client)
        reason = yield client.lost
        self.assertIsInstance(reason, error.ConnectionLost)
        self.assertEqual(chain.targets, [])
        (banner,) = explanations
        self.assertIn("WARNING: THE KEY OF THIS SERVER HAS CHANGED!", banner)
        self.assertIn(f"Known from {known_hosts}, line 1.", banner)
        (line,) = reports
        self.assertIn(f"the key of 127.0.0.1:{opener.port} has changed", line)


def _buffered(transport):
    """User-space bytes waiting in a Twisted TCP transport's write buffer."""
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


class _FirstData(Target):
    """A target that says when its first bytes arrive: both splices are
    joined by then."""

    first_data = None

    def dataReceived(self, data):
        super().dataReceived(data)
        if self.first_data is not None and not self.first_data.called:
            self.first_data.callback(self)


class BackpressureTests(unittest.TestCase):
    timeout = 120
    # Per buffer: a plain TCP end pauses its producer past relay.READ_SIZE,
    # and one more write (a 64 KiB record, or a read) may land meanwhile.
    BOUND = relay.READ_SIZE + 128 * 1024
    PROBE = b"probe"

    @defer.inlineCallbacks
    def test_paused_far_end_bounds_the_buffers(self):
        """The target stops reading; the sender keeps trying to write 64 MiB.

        The test waits for the moment the whole chain has stopped: the
        daemon session and the tunnel's local connection both paused by
        their consumers, and the sender paused by its own transport.  Then
        every user-space buffer on the way (the local connection, the
        session, the forward's connection to the target) is under BOUND,
        although the sender has written more than BOUND — the rest is held
        back by pausing, not buffered."""
        first_data = defer.Deferred()

        def target_class(echo):
            target = _FirstData(echo)
            target.first_data = first_data
            return target

        chain = yield Chain.start(self, target_class, echo=False)
        client = Client()
        client.dataReceived = lambda data: None
        yield chain.connect(client)
        # A few bytes through first: then both splices are joined, and no
        # stage has paused yet.
        client.transport.write(self.PROBE)
        target = yield first_data
        target.transport.pauseProducing()
        (forward,) = chain.forward.splices
        (tunnel,) = chain.tunnel.splices

        stalled = defer.Deferred()
        paused = set()

        def check():
            if stalled.called:
                return
            if pusher.sent >= pusher.total:
                stalled.errback(AssertionError("all was sent to a paused target: no backpressure"))
            elif paused == {"daemon session", "tunnel local", "sender"}:
                if pusher.sent > 4 * self.BOUND:
                    stalled.callback(None)

        def watch(name, producer):
            pause, resume = producer.pauseProducing, producer.resumeProducing

            def paused_by_consumer():
                paused.add(name)
                pause()
                check()

            def resumed_by_consumer():
                paused.discard(name)
                resume()

            # On the instance: the consumer calls its producer's methods.
            producer.pauseProducing = paused_by_consumer
            producer.resumeProducing = resumed_by_consumer

        class Sender(Pusher):
            def pauseProducing(self):
                super().pauseProducing()
                paused.add("sender")
                check()

            def resumeProducing(self):
                paused.discard("sender")
                super().resumeProducing()
                check()

        # What the consumers pause: the daemon session's connection (the
        # session feeds the target's connection) and the tunnel's local
        # connection (it feeds the session to the daemon).
        (session,) = chain.server_factory.connections
        watch("daemon session", session.transport)
        watch("tunnel local", tunnel.first.transport)
        pusher = Sender(64 * 1024 * 1024)
        pusher.makeConnection(client.transport)
        yield stalled

        self.assertLess(pusher.sent, pusher.total)
        buffers = {
            "forward to target": _buffered(forward.second.transport),
            "daemon session": _buffered(session.transport),
            "daemon records": forward.first.transport._channel.pending_length,
            "tunnel session": _buffered(tunnel.second.transport._channel.transport),
            "tunnel records": tunnel.second.transport._channel.pending_length,
            "tunnel local": _buffered(tunnel.first.transport),
        }
        for name, size in buffers.items():
            self.assertLess(size, self.BOUND, f"{name}: {size} bytes buffered")
        # Resumed, it all arrives intact.
        target.transport.resumeProducing()
        yield target.ended
        received = bytes(target.data)
        self.assertEqual(received[: len(self.PROBE)], self.PROBE)
        self.assertEqual(len(received) - len(self.PROBE), pusher.total)
        self.assertEqual(
            hashlib.sha256(received[len(self.PROBE) :]).digest(), pusher.digest.digest()
        )
        target.transport.loseConnection()
        yield target.lost
        yield client.lost
