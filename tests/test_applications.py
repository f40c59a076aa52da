"""Applications: discovery as plugins, lookup, and the built-in ones in memory
(the daemon serving a plugin from the plugin path is in test_tunnel_system)."""

import hashlib
import os
import sys
import tracemalloc

from twisted.internet import abstract, defer, error, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest

from keyexchanged import applications, plugins, protocol
from keyexchanged.applications import Application, MessageFactory, UnknownApplication
from keyexchanged.framing import RECORD_DATA_MAX, TAG_LENGTH
from keyexchanged.interfaces import IApplication
from keyexchanged.protocol import ChannelClientFactory
from keyexchanged.trust import PinnedKey
from tests.fixtures import IDENTITY, MESSAGE, Collector, Pair, address, server_factory


class DiscoveryTests(unittest.TestCase):
    def add_plugin_directory(self, source, name="extra_apps"):
        """A directory on the plugin path holding one plugin module."""
        directory = os.path.abspath(self.mktemp())
        package = os.path.join(directory, "keyexchanged", "plugins")
        os.makedirs(package)
        with open(os.path.join(package, name + ".py"), "w") as f:
            f.write(source)
        self.patch(plugins, "__path__", [*plugins.__path__, package])
        self.addCleanup(sys.modules.pop, "keyexchanged.plugins." + name, None)

    def test_builtins(self):
        found = applications.find_applications()
        self.assertEqual(sorted(found), ["echo", "forward", "message"])
        for application in found.values():
            self.assertTrue(IApplication.providedBy(application))
            self.assertTrue(application.description)
        self.assertEqual([s.name for s in found["forward"].settings], ["forward-to"])

    def test_a_plugin_on_the_path_is_found(self):
        self.add_plugin_directory(
            "from twisted.internet.protocol import Factory, Protocol\n"
            "from keyexchanged.applications import Application\n"
            "shout = Application('shout', 'in capitals',\n"
            "                    lambda s, r: Factory.forProtocol(Protocol))\n"
        )
        self.assertIn("shout", applications.find_applications())

    def test_a_plugin_cannot_shadow_a_builtin(self):
        self.add_plugin_directory(
            "from keyexchanged.applications import Application\n"
            "impostor = Application('aaa-first', 'x', None)\n"
            "impostor.name = 'message'\n",
            name="aaa_impostor",
        )
        found = applications.find_applications()
        self.assertEqual(found["message"].description.split()[0], "send")

    def test_unknown_name_lists_the_installed(self):
        with self.assertRaises(UnknownApplication) as caught:
            applications.get_application("nope")
        message = str(caught.exception)
        self.assertIn("no application named 'nope'", message)
        self.assertIn("echo, forward, message", message)

    def test_names_are_checked(self):
        for bad in ["", "Echo", "with space", "x" * 33, "-lead"]:
            with self.assertRaises(ValueError):
                Application(bad, "d", None)


class BuiltinTests(unittest.TestCase):
    def factory(self, name, **settings):
        return applications.get_application(name).makeFactory(
            {"message": MESSAGE, **settings}, None
        )

    def test_message(self):
        pair = Pair(factory=server_factory(self.factory("message")))
        pair.flush()
        self.assertEqual(pair.application.data, MESSAGE)

    def test_echo(self):
        class Talker(Collector):
            def connectionMade(self):
                self.transport.write(b"say it back")
                self.transport.loseConnection()

        talker = Talker()
        pair = Pair(factory=server_factory(self.factory("echo")), client_app=talker)
        pair.flush()
        self.assertEqual(talker.data, b"say it back")

    def test_forward_needs_a_target(self):
        with self.assertRaises(ValueError) as caught:
            self.factory("forward")
        self.assertIn("--forward-to", str(caught.exception))
        with self.assertRaises(ValueError) as caught:
            self.factory("forward", **{"forward-to": "nonsense:1"})
        self.assertIn("nonsense:1", str(caught.exception))


# -- a client that stops reading ----------------------------------------------------


class _NoReactor:
    """The readiness registration FileDescriptor asks of a reactor: a socket
    in memory needs none (the test says when the peer reads)."""

    def addReader(self, selectable):
        pass

    removeReader = addWriter = removeWriter = addReader


class MemorySocket(abstract.FileDescriptor):
    """Twisted's own TCP send path — its buffer, and the streaming producer
    it pauses when that buffer holds more than ``bufferSize`` and resumes
    when it drains — over a socket in memory whose peer reads only when
    told to (:meth:`peer_reads`, the reactor's ``doWrite``), and then at
    most ``WINDOW`` bytes, as a kernel takes what fits its socket buffer."""

    WINDOW = 16 * 1024

    def __init__(self, peer):
        super().__init__(_NoReactor())
        self.connected = 1
        self.peer = peer
        #: What the peer has read and the test not yet handed on.
        self.received = bytearray()
        self._reading = False

    def getPeer(self):
        return self.peer

    def getHost(self):
        return address("127.0.0.1", 51424)

    def buffered(self):
        """Bytes written to the transport that the peer has not read."""
        return len(self.dataBuffer) - self.offset + self._tempDataLen

    def writeSomeData(self, data):
        if not self._reading:
            return 0
        taken = data[: self.WINDOW]
        self.received += taken
        return len(taken)

    def abortConnection(self):
        """Drop what waits and close now, as TCP's abort does."""
        self.dataBuffer, self.offset = b"", 0
        self._tempDataBuffer, self._tempDataLen = [], 0
        reason = Failure(error.ConnectionAborted())
        self.connectionLost(reason)
        self.protocol.connectionLost(reason)

    def peer_reads(self):
        """The peer reads once.  Returns what ``doWrite`` returns:
        ``CONNECTION_DONE`` once a closing transport is empty."""
        self._reading = True
        try:
            return self.doWrite()
        finally:
            self._reading = False


class Digest(Protocol):
    """A client application that keeps only the SHA-256 of what arrives."""

    def __init__(self):
        self.sha256 = hashlib.sha256()
        self.length = 0
        self.reason = None

    def dataReceived(self, data):
        self.sha256.update(data)
        self.length += len(data)

    def connectionLost(self, reason):
        self.reason = reason


class Session:
    """A server session on a :class:`MemorySocket` and a KX/1 client on a
    StringTransport; the client reads the server's bytes only when asked."""

    def __init__(self, factory, clock, port):
        self.clock = clock
        self.application = Digest()
        client_factory = ChannelClientFactory(
            Factory.forProtocol(lambda: self.application),
            PinnedKey(IDENTITY.fingerprint),
            server_name="example",
            reactor=clock,
        )
        self.handshake = client_factory.handshake
        self.server = factory.buildProtocol(address(port=port))
        self.socket = MemorySocket(address(port=port))
        self.socket.protocol = self.server
        self.client = client_factory.buildProtocol(address("127.0.0.1", 51424))
        self.client_transport = StringTransport()
        self.server.makeConnection(self.socket)
        self.client.makeConnection(self.client_transport)

    def pump(self, client_reads):
        """Move bytes until nothing moves; the client reads while
        ``client_reads()`` is true."""
        while True:
            self.clock.advance(0)
            moved = False
            sent = self.client_transport.value()
            if sent:
                self.client_transport.clear()
                self.server.dataReceived(sent)
                moved = True
            if client_reads() and self.socket.connected:
                done = self.socket.peer_reads()
                received = bytes(self.socket.received)
                self.socket.received.clear()
                if received:
                    self.client.dataReceived(received)
                    moved = True
                if done is not None:
                    reason = Failure(error.ConnectionDone())
                    self.socket.connectionLost(reason)
                    self.server.connectionLost(reason)
                    self.client.connectionLost(reason)
                    return
            if not moved:
                return


class MessageBackpressureTests(unittest.TestCase):
    """The message application to clients that stop reading: a 16 MiB
    message to 24 such clients must not be held once per client."""

    #: A sealed full record on the wire: header line, data, GCM tag.
    RECORD = len(b"MSG 65552\r\n") + RECORD_DATA_MAX + TAG_LENGTH

    def test_a_client_that_stops_reading_holds_a_record_not_the_message(self):
        message = os.urandom(4 * 1024 * 1024)
        clock = Clock()
        factory = server_factory(MessageFactory(message), clock)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            sessions = [Session(factory, clock, port) for port in range(1, 5)]
            for session in sessions:
                # Read until the handshake is complete (the server's first
                # record has arrived), then never again.
                session.pump(lambda session=session: not session.handshake.called)
                self.assertTrue(session.handshake.called)
            clock.advance(1)
            for session in sessions:
                session.pump(lambda: False)
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        for session in sessions:
            # Twisted's TCP buffer pauses a streaming producer beyond 64 KiB:
            # one sealed record waits, the next is not made.
            self.assertLessEqual(session.socket.buffered(), self.RECORD)
            self.assertLess(session.application.length, len(message))
        # Everything the four sessions hold, channel and transport and
        # application, with room for their handshake state: not a copy of
        # the message each (not 16 MiB).
        self.assertLess(held, 4 * (2 * self.RECORD + 64 * 1024))

        expected = hashlib.sha256(message).hexdigest()
        for session in sessions:
            session.pump(lambda: True)
            self.assertEqual(session.application.length, len(message))
            self.assertEqual(session.application.sha256.hexdigest(), expected)
            self.assertIsInstance(session.application.reason.value, error.ConnectionDone)
        self.assertEqual(factory.connections, set())

    def stalled(self, size=1024 * 1024, **options):
        """A session sending a ``size`` message to a client that stopped
        reading after the handshake: ``(message, factory, session)``."""
        message = os.urandom(size)
        clock = Clock()
        factory = server_factory(MessageFactory(message), clock, **options)
        session = Session(factory, clock, 1)
        session.pump(lambda: not session.handshake.called)
        session.pump(lambda: False)
        self.assertLess(session.application.length, size)
        return message, factory, session

    def test_shutdown_lets_the_message_finish_before_end(self):
        """END from a shutdown would come after part of the message, and the
        client would take that part for the whole."""
        message, factory, session = self.stalled()
        stopped = factory.shutdown(60)
        session.pump(lambda: False)
        self.assertNoResult(stopped)
        session.pump(lambda: True)
        self.assertEqual(session.application.sha256.digest(), hashlib.sha256(message).digest())
        self.assertIsInstance(session.application.reason.value, error.ConnectionDone)
        self.successResultOf(stopped)

    def test_shutdown_grace_period_cuts_a_client_that_never_reads(self):
        _, factory, session = self.stalled()
        stopped = factory.shutdown(5)
        session.clock.advance(5)
        self.successResultOf(stopped)
        self.assertEqual(factory.connections, set())
        self.assertFalse(session.socket.connected)

    def test_idle_timeout_mid_message_is_a_truncation_not_end(self):
        message, factory, session = self.stalled(idle_timeout=30)
        session.clock.advance(30)
        session.pump(lambda: True)  # the client reads, at last
        self.assertLess(session.application.length, len(message))
        self.assertIsInstance(session.application.reason.value, protocol.Truncated)
        self.assertEqual(factory.connections, set())

    def test_an_empty_message_is_just_end(self):
        clock = Clock()
        session = Session(server_factory(MessageFactory(b""), clock), clock, 1)
        session.pump(lambda: True)
        self.assertEqual(session.application.length, 0)
        self.assertIsInstance(session.application.reason.value, error.ConnectionDone)

    def test_a_client_that_leaves_stops_the_message(self):
        clock = Clock()
        factory = server_factory(MessageFactory(b"m" * (1024 * 1024)), clock)
        session = Session(factory, clock, 1)
        session.pump(lambda: not session.handshake.called)
        producer = session.socket.producer
        self.assertIsNotNone(producer)
        waiting = session.socket.buffered()
        reason = Failure(error.ConnectionLost())
        session.socket.connectionLost(reason)  # stops the producer, as TCP does
        session.server.connectionLost(reason)
        producer.resumeProducing()  # a late call writes nothing more
        self.assertEqual(session.socket.buffered(), waiting)
        self.assertEqual(factory.connections, set())


class ForwardLogTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_a_forwarded_connection_logs_no_factory_start_or_stop(self):
        target = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(target.stopListening)
        logged = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        forward = applications.ForwardFactory(f"tcp:127.0.0.1:{target.getHost().port}", reactor)

        class End(Protocol):
            ended = defer.Deferred()

            def connectionLost(self, reason):
                self.ended.callback(None)

        end = End()
        yield forward._connect(end)
        end.transport.loseConnection()
        yield end.ended
        texts = [formatEvent(event) for event in logged]
        self.assertEqual([t for t in texts if "factory" in t.lower()], [], texts)
