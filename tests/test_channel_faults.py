"""Faults of the channel, each with the test that would catch it: closes
that could hang, pauses undone, counters that could leak,
exceptions from applications and worker pools, and what a reset after the
peer's END means."""

from twisted.internet import defer, error
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from keyexchanged import handshake
from keyexchanged import service as kx_service
from keyexchanged.applications import EchoFactory, MessageFactory
from keyexchanged.protocol import (
    ChannelClientFactory,
    ProtocolFailure,
    SecureChannelFactory,
    Truncated,
)
from keyexchanged.trust import PinnedKey
from tests.fixtures import IDENTITY, FakePool, StaticEphemeralKeys


def address(host="10.0.0.1", port=40000):
    return IPv4Address("TCP", host, port)


class Server:
    """One server protocol on a StringTransport, driven by a sans-IO client."""

    def __init__(self, app_factory, pool=None, **options):
        self.clock = Clock()
        options.setdefault("ephemeral_keys", StaticEphemeralKeys())
        self.factory = SecureChannelFactory(app_factory, IDENTITY, reactor=self.clock, **options)
        self.factory.work = pool
        self.proto = self.factory.buildProtocol(address())
        self.transport = StringTransport(peerAddress=address())
        self.proto.makeConnection(self.transport)
        self.client = handshake.ClientConnection()
        self.events = []
        self.take()

    def take(self):
        data = self.transport.value()
        self.transport.clear()
        self.events += self.client.receive_data(data)

    def handshake(self):
        self.client.accept_key()
        self.send()

    def send(self):
        self.proto.dataReceived(self.client.data_to_send())
        self.take()


class Recorder(Protocol):
    def __init__(self):
        self.reason = None

    def connectionLost(self, reason):
        self.reason = reason


class ClosingTests(unittest.TestCase):
    def test_a_close_that_never_completes_is_cut(self):
        """A peer that stops reading cannot keep its slot after the END."""
        server = Server(MessageFactory(b"m"), idle_timeout=300)
        server.handshake()
        aborted = []
        server.transport.abortConnection = lambda: aborted.append(True)
        server.clock.advance(301)  # idle: END, then the close begins
        self.assertTrue(server.transport.disconnecting)
        server.clock.advance(server.proto.CLOSE_TIMEOUT)
        self.assertEqual(aborted, [True])

    def test_no_watchdog_left_once_closed(self):
        server = Server(MessageFactory(b"m"), idle_timeout=300)
        server.handshake()
        server.clock.advance(301)
        server.proto.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(server.clock.getDelayedCalls(), [])
        self.assertEqual(
            (server.factory.connections, server.factory.admission.per_source), (set(), {})
        )

    def test_close_unregisters_a_producer(self):
        """A paused streaming producer would be resumed by a draining TCP
        transport instead of letting it close."""

        class Producer(Protocol):
            def connectionMade(self):
                self.transport.registerProducer(self, True)

            def pauseProducing(self):
                pass

            def resumeProducing(self):
                pass

            def stopProducing(self):
                pass

        server = Server(Factory.forProtocol(Producer), idle_timeout=300)
        server.handshake()
        self.assertIsNotNone(server.transport.producer)
        server.clock.advance(301)
        self.assertIsNone(server.transport.producer)

    def test_echo_registers_backpressure(self):
        """Echo pauses reading when its writes back are not being read."""
        server = Server(EchoFactory())
        server.handshake()
        self.assertIsNotNone(server.transport.producer)
        self.assertTrue(server.transport.streaming)
        server.transport.producer.pauseProducing()
        self.assertEqual(server.transport.producerState, "paused")


class DecryptionFaultTests(unittest.TestCase):
    def test_only_our_own_pause_is_undone(self):
        """An application that pauses reading as it starts stays paused."""

        class Pauser(Protocol):
            def connectionMade(self):
                self.transport.pauseProducing()

        pool = FakePool()
        server = Server(Factory.forProtocol(Pauser), pool=pool)
        server.handshake()
        self.assertEqual(server.transport.producerState, "paused")
        pool.answer()
        self.assertEqual(server.transport.producerState, "paused")

    def test_and_reading_resumes_otherwise(self):
        pool = FakePool()
        server = Server(MessageFactory(b"m"), pool=pool)
        server.handshake()
        pool.answer()
        self.assertEqual(server.transport.producerState, "producing")

    def test_a_pool_that_raises(self):
        class Broken:
            def decrypt(self, private_key, ciphertext, label):
                raise OSError(24, "Too many open files")

        server = Server(MessageFactory(b"m"), pool=Broken())
        server.handshake()
        self.assertEqual(server.factory.admission.working, 0)
        # Implicit rejection: the client cannot open the first record.
        self.assertEqual([type(e) for e in server.events][-1], handshake.ProtocolFailed)
        self.assertEqual(server.events[-1].code, "bad-record")
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_application_that_fails_to_start(self):
        class Boom(Protocol):
            def connectionMade(self):
                raise RuntimeError("plugin bug")

        pool = FakePool()
        server = Server(Factory.forProtocol(Boom), pool=pool)
        server.handshake()
        aborted = []
        server.transport.abortConnection = lambda: aborted.append(True)
        pool.answer()
        self.assertEqual(aborted, [True])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_application_whose_connection_lost_raises(self):
        class Boom(Protocol):
            def connectionLost(self, reason):
                raise RuntimeError("plugin bug")

        server = Server(Factory.forProtocol(Boom))
        server.handshake()
        with self.assertRaises(RuntimeError):
            server.proto.connectionLost(Failure(error.ConnectionLost()))
        self.assertEqual(
            (server.factory.connections, server.factory.admission.per_source), (set(), {})
        )


class EndingTests(unittest.TestCase):
    def test_a_reset_after_the_peers_end_is_not_a_clean_end(self):
        """The peer's END arrived, but ours never went out: what we were
        sending may have been cut, so the application is not told "done"."""

        class Slow(Recorder):
            def readConnectionLost(self):
                pass  # keeps its side open, still sending

        from twisted.internet.interfaces import IHalfCloseableProtocol
        from zope.interface import directlyProvides

        app = Slow()
        directlyProvides(app, IHalfCloseableProtocol)
        server = Server(Factory.forProtocol(lambda: app))
        server.handshake()
        server.client.send_end()
        server.send()
        server.proto.connectionLost(Failure(error.ConnectionLost()))
        self.assertIsInstance(app.reason.value, Truncated)

    def test_both_ends_then_close_is_clean(self):
        app = Recorder()
        server = Server(Factory.forProtocol(lambda: app))
        server.handshake()
        server.client.send_end()
        server.send()  # the application is not half-closeable: END answers END
        server.proto.connectionLost(Failure(error.ConnectionDone()))
        self.assertIsInstance(app.reason.value, error.ConnectionDone)


class ClientTimeoutTests(unittest.TestCase):
    def test_a_server_that_never_says_hello(self):
        clock = Clock()
        factory = ChannelClientFactory(
            Factory.forProtocol(Protocol),
            PinnedKey(IDENTITY.fingerprint),
            reactor=clock,
            handshake_timeout=5,
        )
        proto = factory.buildProtocol(address())
        transport = StringTransport()
        proto.makeConnection(transport)
        clock.advance(5)
        self.assertTrue(transport.disconnecting)
        self.assertIn(b"ERROR", transport.value())
        proto.connectionLost(Failure(error.ConnectionDone()))
        failure = self.failureResultOf(factory.handshake)
        self.assertIsInstance(failure.value.reason.value, ProtocolFailure)
        self.assertEqual(failure.value.reason.value.code, "timeout")


class ListenTests(unittest.TestCase):
    def test_a_listen_that_fails_later_stops_the_daemon(self):
        listening = defer.Deferred()

        class Endpoint:
            def listen(self, factory):
                return listening

        class Reactor:
            stopped = False

            def stop(self):
                self.stopped = True

        self.patch(kx_service, "serverFromString", lambda reactor, description: Endpoint())
        reactor = Reactor()
        factory = SecureChannelFactory(MessageFactory(b"m"), IDENTITY, reactor=Clock())
        service = kx_service.KeyexchangeService("somewhere:1", factory, reactor, 1.0)
        service.privilegedStartService()  # nothing yet: no error, no stop
        self.assertFalse(reactor.stopped)
        listening.errback(error.CannotListenError("somewhere", 1, OSError("taken")))
        self.assertTrue(reactor.stopped)
