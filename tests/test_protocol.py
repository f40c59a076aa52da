"""The Twisted layer: the LineReceiver adapter, the wrapped application,
timeouts, limits and shutdown — in memory, with StringTransport, iosim and
a Clock.  No sockets here."""

import json

from twisted.internet import error
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest
from zope.interface import implementer

from keyexchanged import handshake, keys, protocol
from keyexchanged.applications import EchoFactory
from keyexchanged.framing import RECORD_DATA_MAX, encode_frame
from keyexchanged.protocol._transport import AggregateWrites
from keyexchanged.records import RecordOpener
from keyexchanged.trust import Insecure, PinnedKey, UntrustedKey
from tests.fixtures import (
    CLIENT_KEY,
    IDENTITY,
    MESSAGE,
    Collector,
    Pair,
    address,
    client_writes,
    ended_sessions,
    frames,
    server_factory,
)
from tests.vectors import RAW, hexbytes, record

CLIENT_KEY_FINGERPRINT = keys.fingerprint(CLIENT_KEY)


class EndToEndTests(unittest.TestCase):
    def test_message_arrives_and_both_end_cleanly(self):
        pair = Pair()
        pair.flush()
        self.assertEqual(pair.application.data, MESSAGE)
        self.assertTrue(pair.application.made)
        self.assertIsInstance(pair.application.reason.value, error.ConnectionDone)
        self.assertIs(self.successResultOf(pair.handshake), pair.application)
        self.assertEqual(pair.server_factory.connections, set())

    def test_echo_with_the_client_key(self):
        class Talker(Collector):
            def connectionMade(self):
                super().connectionMade()
                self.transport.write(b"ping ")
                self.transport.write(b"pong")
                self.transport.loseConnection()

        echo_seen = []

        class Echo(EchoFactory):
            def buildProtocol(self, addr):
                p = super().buildProtocol(addr)
                echo_seen.append(p)
                return p

        talker = Talker()
        pair = Pair(app=Echo(), client_app=talker, identity=CLIENT_KEY)
        pair.flush()
        self.assertEqual(talker.data, b"ping pong")
        self.assertIsInstance(talker.reason.value, error.ConnectionDone)
        self.assertEqual(echo_seen[0].transport.peer_fingerprint, RAW["client_fingerprint"])

    def test_auth_required_and_given(self):
        fingerprints = {RAW["client_fingerprint"]}
        pair = Pair(identity=CLIENT_KEY, server_options={"authorized_keys": fingerprints})
        pair.flush()
        self.assertEqual(pair.application.data, MESSAGE)

    def test_auth_required_and_missing(self):
        class Talker(Collector):
            def connectionMade(self):
                self.transport.write(b"hi")

        talker = Talker()
        pair = Pair(client_app=talker, server_options={"authorized_keys": set()})
        pair.flush()
        # The client never got a record it could open: no confirmation.
        failure = self.failureResultOf(pair.handshake, protocol.HandshakeFailed)
        self.assertIsInstance(failure.value.reason.value, protocol.PeerError)
        self.assertEqual(failure.value.reason.value.code, "auth-required")

    def test_untrusted_key_sends_no_key(self):
        sent = client_writes(self)
        pair = Pair(trust=PinnedKey("SHA256:" + "A" * 43))
        pair.flush()
        failure = self.failureResultOf(pair.handshake, protocol.HandshakeFailed)
        self.assertIsInstance(failure.value.reason.value, UntrustedKey)
        verbs = [verb for verb, _ in frames(b"".join(sent))]
        self.assertEqual(verbs, ["ERROR"])
        self.assertEqual(json.loads(frames(b"".join(sent))[0][1])["error"], "untrusted-key")
        self.assertFalse(pair.application.made)

    def test_insecure_warns(self):
        warnings = []
        pair = Pair(trust=Insecure(warnings.append))
        pair.flush()
        self.assertEqual(pair.application.data, MESSAGE)
        self.assertIn(IDENTITY.fingerprint, warnings[0])

    def test_half_closeable_application_gets_read_connection_lost(self):
        """The peer's END reaches a half-closeable application as
        readConnectionLost, not as the end of the connection: it may still
        write, and what it writes then arrives before its own END."""
        events = []

        @implementer(IHalfCloseableProtocol)
        class HalfCloser(Collector):
            def readConnectionLost(self):
                events.append("readConnectionLost")
                self.transport.write(b"still talking")
                self.transport.loseConnection()

            def writeConnectionLost(self):
                events.append("writeConnectionLost")

            def connectionLost(self, reason):
                events.append("connectionLost")
                super().connectionLost(reason)

        got = []

        class Greeter(Protocol):
            """Says hello and ENDs at once, then listens."""

            def connectionMade(self):
                self.transport.write(b"hello")
                self.transport.loseConnection()

            def dataReceived(self, data):
                got.append(data)

        half = HalfCloser()
        pair = Pair(app=Factory.forProtocol(Greeter), client_app=half)
        pair.flush()
        self.assertEqual(half.data, b"hello")
        self.assertEqual(events, ["readConnectionLost", "connectionLost"])
        # Written after the server's END, and still delivered.
        self.assertEqual(b"".join(got), b"still talking")
        self.assertIsInstance(half.reason.value, error.ConnectionDone)
        self.assertEqual(pair.server_factory.connections, set())


class SessionSummaryTests(unittest.TestCase):
    """Issue 10: a protocol gets what it needs when it is built, and reports
    its end in one summary; neither side reads the other's attributes."""

    def test_protocols_never_read_their_factory(self):
        """Protocol.factory is None: one self.factory.x would raise."""
        pair = Pair(identity=CLIENT_KEY)
        pair.flush()
        self.assertEqual(pair.application.data, MESSAGE)
        self.assertEqual((pair.server.factory, pair.client.factory), (None, None))
        self.assertEqual(pair.server_factory.connections, set())
        self.assertTrue(pair.handshake.called)

    def test_one_summary_and_the_same_log_line(self):
        factory = server_factory()
        summaries = []
        reported = factory.connection_ended

        def ended(protocol, summary):
            summaries.append(summary)
            reported(protocol, summary)

        factory.connection_ended = ended
        lines = []

        def observe(event):
            if event.get("log_format", "").startswith("connection from {peer} ended:"):
                lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        pair = Pair(factory=factory, identity=CLIENT_KEY)
        pair.flush()
        (summary,) = summaries
        connection = pair.server.connection
        self.assertEqual(
            (summary.outcome, summary.kind, summary.peer_fingerprint),
            ("ok", "full, forward secrecy, post-quantum, aes-256-ocb", CLIENT_KEY_FINGERPRINT),
        )
        self.assertEqual(
            (summary.bytes_in, summary.bytes_out),
            (connection.bytes_received, connection.bytes_sent),
        )
        self.assertIsInstance(summary.reason.value, error.ConnectionDone)
        self.assertEqual(
            lines,
            [
                f"connection from {summary.peer} ended: ok; full, forward secrecy, "
                "post-quantum, aes-256-ocb; "
                f"{summary.bytes_in} bytes in, {summary.bytes_out} bytes out, 0.000 s; "
                f"client key {CLIENT_KEY_FINGERPRINT}"
            ],
        )


class TruncationTests(unittest.TestCase):
    def test_connection_dropped_before_end(self):
        class Silent(Protocol):
            pass

        pair = Pair(app=Factory.forProtocol(Silent))
        pair.flush()
        self.assertTrue(pair.application.made)
        pair.server.transport.loseConnection()
        pair.flush()
        self.assertIsInstance(pair.application.reason.value, protocol.Truncated)

    def test_partial_data_is_not_success(self):
        class Partial(Protocol):
            def connectionMade(self):
                self.transport.write(b"first half")

        pair = Pair(app=Factory.forProtocol(Partial))
        pair.flush()
        pair.server.transport.abortConnection()
        pair.flush()
        self.assertEqual(pair.application.data, b"first half")
        self.assertIsInstance(pair.application.reason.value, protocol.Truncated)


class CoalescingTests(unittest.TestCase):
    def test_small_writes_in_one_turn_make_one_record(self):
        class Chatty(Protocol):
            def connectionMade(self):
                for i in range(10):
                    self.transport.write(b"%d" % i)
                self.transport.writeSequence([b"a", b"b"])
                self.transport.loseConnection()

        factory = server_factory(Factory.forProtocol(Chatty))
        proto = factory.buildProtocol(address())
        transport = StringTransport()
        proto.makeConnection(transport)
        client = handshake.ClientConnection()
        client.receive_data(transport.value())
        transport.clear()
        client.accept_key()
        proto.dataReceived(client.data_to_send())
        sent = frames(transport.value())
        # The key confirmation, then one record for all ten writes, then END.
        self.assertEqual((sent[0][0], len(sent[0][1])), ("MSG", 16))
        self.assertEqual([verb for verb, _ in sent], ["MSG", "MSG", "END"])
        events = client.receive_data(transport.value())
        self.assertEqual(events[1], handshake.DataReceived(b"0123456789ab"))

    def test_writes_after_the_turn_are_flushed_by_the_clock(self):
        clock = Clock()
        pair = Pair(app=Factory.forProtocol(Protocol), clock=clock)
        pair.flush()
        app_transport = protocol.SecureTransport(pair.server)
        app_transport.write(b"x" * 10)
        app_transport.write(b"y" * 10)
        self.assertEqual(pair.server.pending_length, 20)
        pair.flush()  # advances the clock by 0: the flush runs
        self.assertEqual(pair.application.data, b"x" * 10 + b"y" * 10)

    def test_a_full_record_goes_at_once(self):
        pair = Pair(app=Factory.forProtocol(Protocol))
        pair.flush()
        app_transport = protocol.SecureTransport(pair.server)
        written = []
        pair.server.transport.write = written.append
        app_transport.write(b"z" * 65536)
        self.assertEqual(len(written), 1)
        self.assertEqual(pair.server.pending_length, 0)


class AggregateWritesTests(unittest.TestCase):
    """The batching on its own: what it seals, and when."""

    def setUp(self):
        self.clock = Clock()
        self.sealed = []
        self.writes = AggregateWrites(self.sealed.append, self.clock)

    def test_one_seal_at_the_end_of_the_turn(self):
        for chunk in (b"a", b"bc", b"def"):
            self.writes.write(chunk)
        self.assertEqual((self.sealed, len(self.writes)), ([], 6))
        self.clock.advance(0)
        self.assertEqual((self.sealed, len(self.writes)), ([b"abcdef"], 0))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_full_record_at_once_and_no_call_left(self):
        self.writes.write(b"a" * 100)
        self.writes.write(b"b" * (RECORD_DATA_MAX - 100))
        self.assertEqual(self.sealed, [b"a" * 100 + b"b" * (RECORD_DATA_MAX - 100)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancel_keeps_what_was_written(self):
        self.writes.write(b"kept")
        self.writes.cancel()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.writes.flush()
        self.assertEqual(self.sealed, [b"kept"])


class FrameByFrameTests(unittest.TestCase):
    """The vector stream into the real LineReceiver at every chunk size."""

    def test_every_chunk_size(self):
        stream = (
            encode_frame("KEY", hexbytes("key_payload"))
            + encode_frame("AUTH", record("client_auth_seq0"))
            + encode_frame("MSG", record("client_msg_seq1"))
            + encode_frame("END", record("client_end_seq2"))
        )
        seen = []

        class Recorder(Collector):
            def connectionMade(self):
                seen.append(self)
                self.transport.write(MESSAGE)

        for size in [*range(1, 40), 97, 256, 257, 1000, len(stream)]:
            factory = server_factory(Factory.forProtocol(Recorder))
            factory.vector = True
            proto = factory.buildProtocol(address())
            transport = StringTransport()
            proto.makeConnection(transport)
            self.assertEqual(transport.value(), hexbytes("hello_frame"))
            transport.clear()
            for i in range(0, len(stream), size):
                proto.dataReceived(stream[i : i + size])
            app = seen[-1]
            self.assertEqual(app.data, hexbytes("client_message"), f"chunk size {size}")
            self.assertEqual(app.transport.peer_fingerprint, RAW["client_fingerprint"])
            # Under the vector's server_key: the confirmation, the
            # application's message, and END (the client's END arrived; the
            # app is not half-closeable, so the server answered it).
            opener = RecordOpener(hexbytes("server_key"))
            sent = frames(transport.value())
            self.assertEqual([v for v, _ in sent], ["MSG", "MSG", "END"], f"chunk size {size}")
            self.assertEqual(opener.open("MSG", sent[0][1]), b"")
            self.assertEqual(opener.open("MSG", sent[1][1]), MESSAGE)
            self.assertEqual(opener.open("END", sent[2][1]), b"")
            self.assertTrue(transport.disconnecting)


class BadInputTests(unittest.TestCase):
    """Each bad input: its ERROR, that connection closes, others go on."""

    def connect(self, factory, host="10.0.0.1", port=40000):
        proto = factory.buildProtocol(address(host, port))
        transport = StringTransport(peerAddress=address(host, port))
        proto.makeConnection(transport)
        transport.clear()
        return proto, transport

    def assertError(self, data, code, factory=None):
        factory = factory or server_factory()
        # A session on the same factory, half-way through, when the bad input arrives.
        bystander = Pair(clock=factory.reactor, factory=factory)
        bystander.pump.pump()
        proto, transport = self.connect(factory)
        proto.dataReceived(data)
        sent = frames(transport.value())
        self.assertEqual([verb for verb, _ in sent], ["ERROR"], sent)
        self.assertEqual(json.loads(sent[0][1])["error"], code)
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(error.ConnectionDone())
        # Everyone else is still served: the session under way, and a new one.
        bystander.flush()
        self.assertEqual(bystander.application.data, MESSAGE)
        other = Pair(clock=factory.reactor, factory=factory)
        other.flush()
        self.assertEqual(other.application.data, MESSAGE)
        self.assertEqual(factory.connections, set())
        return json.loads(sent[0][1])

    def test_header_too_long(self):
        self.assertError(b"A" * 40, "malformed-frame")
        self.assertError(b"MSG 1" + b" " * 30 + b"\r\n", "malformed-frame")

    def test_bad_verbs_and_lengths(self):
        for data in [
            b"key 256\r\n",
            b"K3Y 1\r\n",
            b"KEY +256\r\n",
            b"KEY 0256\r\n",
            b"KEY -1\r\n",
            b"PING 0\r\n",
            b"\x00\xff\r\n",
            b"\r\n",
        ]:
            self.assertError(data, "malformed-frame")

    def test_oversized(self):
        self.assertError(b"KEY 2113\r\n", "frame-too-large")
        self.assertError(b"MSG 99999999\r\n", "frame-too-large")

    def test_wrong_state(self):
        self.assertError(b"MSG 20\r\n", "unexpected-frame")
        self.assertError(b"HELLO 2\r\n{}", "unexpected-frame")

    def test_wrong_key_length(self):
        self.assertError(b"KEY 255\r\n", "malformed-frame")

    def test_binary_noise(self):
        self.assertError(bytes(range(256)) * 4, "malformed-frame")

    def test_short_payload_then_close(self):
        factory = server_factory()
        proto, transport = self.connect(factory)
        proto.dataReceived(b"KEY 256\r\n" + b"\x00" * 100)
        self.assertEqual(transport.value(), b"")
        proto.connectionLost(error.ConnectionDone())
        self.assertEqual(factory.connections, set())

    def test_closed_at_every_byte_of_the_handshake(self):
        stream = encode_frame("KEY", hexbytes("key_payload"))
        factory = server_factory()
        factory.vector = True
        ended = ended_sessions(self)
        for cut in range(len(stream)):
            proto, _ = self.connect(factory, port=40000 + cut)
            proto.dataReceived(stream[:cut])
            proto.connectionLost(error.ConnectionLost())
            self.assertEqual(factory.connections, set())
            self.assertEqual(ended[f"10.0.0.1:{40000 + cut}"], "closed", cut)


class TimeoutTests(unittest.TestCase):
    def test_handshake_timeout(self):
        clock = Clock()
        factory = server_factory(clock=clock, handshake_timeout=10)
        proto = factory.buildProtocol(address())
        transport = StringTransport()
        proto.makeConnection(transport)
        transport.clear()
        clock.advance(9.9)
        self.assertEqual(transport.value(), b"")
        proto.dataReceived(b"KEY 256\r\n" + b"\x00" * 10)  # slowloris: half a KEY
        clock.advance(0.1)
        sent = frames(transport.value())
        self.assertEqual(
            json.loads(sent[0][1]), {"error": "timeout", "detail": "handshake took too long"}
        )
        self.assertTrue(transport.disconnecting)

    def test_no_first_record_after_key(self):
        """§5: the client's first record is a MUST; a server that waits for
        it in vain says so."""
        clock = Clock()
        factory = server_factory(clock=clock, handshake_timeout=10)
        proto = factory.buildProtocol(address())
        transport = StringTransport()
        proto.makeConnection(transport)
        client = handshake.ClientConnection()
        client.receive_data(transport.value())
        client.accept_key()
        key, _first = frames(client.data_to_send())
        transport.clear()
        proto.dataReceived(encode_frame(*key))  # and never the first record
        confirmation = frames(transport.value())
        self.assertEqual([verb for verb, _ in confirmation], ["MSG"])
        transport.clear()
        clock.advance(10)
        (sent,) = frames(transport.value())
        self.assertEqual(
            json.loads(sent[1]),
            {
                "error": "timeout",
                "detail": "no record from the client after KEY; a client sends one at once, §5",
            },
        )

    def test_no_timeout_after_handshake(self):
        clock = Clock()
        pair = Pair(
            app=Factory.forProtocol(Protocol),
            clock=clock,
            server_options={"handshake_timeout": 10, "idle_timeout": 300},
        )
        pair.flush()
        clock.advance(11)
        pair.flush()
        self.assertIsNone(pair.application.reason)

    def test_idle_timeout_sends_end_and_activity_resets_it(self):
        clock = Clock()
        pair = Pair(
            app=Factory.forProtocol(Protocol), clock=clock, server_options={"idle_timeout": 300}
        )
        pair.flush()
        clock.advance(200)
        pair.application.transport.write(b"still here")
        pair.flush()
        clock.advance(200)
        pair.flush()
        self.assertIsNone(pair.application.reason)
        clock.advance(101)
        pair.flush()
        # The server said END, so what arrived is complete: a clean end.
        self.assertIsInstance(pair.application.reason.value, error.ConnectionDone)
        self.assertEqual(pair.server_factory.connections, set())

    def test_one_timer_for_every_idle_session(self):
        # A DelayedCall per idle session was an eighth of its memory.
        clock = Clock()
        factory = server_factory(Factory.forProtocol(Protocol), clock, idle_timeout=300)
        first = Pair(clock=clock, factory=factory)
        second = Pair(clock=clock, factory=factory)
        first.flush()
        second.flush()
        self.assertEqual(len(factory.idle_sessions), 2)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(200)
        first.application.transport.write(b"still here")
        first.flush()
        clock.advance(101)
        first.flush()
        second.flush()
        self.assertIsNone(first.application.reason)
        self.assertIsInstance(second.application.reason.value, error.ConnectionDone)
        clock.advance(198)
        first.flush()
        self.assertIsNone(first.application.reason)
        clock.advance(1)  # 300 s after its last traffic
        first.flush()
        self.assertIsInstance(first.application.reason.value, error.ConnectionDone)
        self.assertEqual(factory.connections, set())
        # Nothing left behind in the reactor.
        self.assertEqual(clock.getDelayedCalls(), [])


class LimitTests(unittest.TestCase):
    def busy(self, proto):
        transport = StringTransport()
        proto.makeConnection(transport)
        sent = frames(transport.value())
        self.assertEqual(len(sent), 1)
        self.assertTrue(transport.disconnecting)
        return json.loads(sent[0][1])

    def test_max_connections(self):
        factory = server_factory(max_connections=2)
        first = factory.buildProtocol(address(port=1))
        first.makeConnection(StringTransport())
        factory.buildProtocol(address(port=2)).makeConnection(StringTransport())
        error_obj = self.busy(factory.buildProtocol(address(port=3)))
        self.assertEqual(error_obj, {"error": "busy", "detail": "too many connections"})
        first.connectionLost(error.ConnectionDone())
        self.assertIsInstance(
            factory.buildProtocol(address(port=4)), protocol.ServerChannelProtocol
        )

    def test_per_source_counts_by_host(self):
        factory = server_factory(max_per_source=2)
        a1 = factory.buildProtocol(address("10.0.0.1", 1))
        a1.makeConnection(StringTransport())
        a2 = factory.buildProtocol(address("10.0.0.1", 2))
        a2.makeConnection(StringTransport())
        self.assertEqual(self.busy(factory.buildProtocol(address("10.0.0.1", 3)))["error"], "busy")
        other = factory.buildProtocol(address("10.0.0.2", 3))
        self.assertIsInstance(other, protocol.ServerChannelProtocol)
        # Released by host, whatever the port.
        a2.connectionLost(error.ConnectionDone())
        self.assertIsInstance(
            factory.buildProtocol(address("10.0.0.1", 99)), protocol.ServerChannelProtocol
        )
        self.assertEqual(factory.admission.per_source["10.0.0.1"], 2)


class ShutdownTests(unittest.TestCase):
    def test_sessions_get_end_handshakes_get_busy(self):
        clock = Clock()
        established = Pair(app=Factory.forProtocol(Protocol), clock=clock)
        established.flush()
        factory = established.server_factory
        pending = factory.buildProtocol(address(port=7))
        pending_transport = StringTransport()
        pending.makeConnection(pending_transport)
        pending_transport.clear()
        done = factory.shutdown(5)
        self.assertNoResult(done)
        self.assertEqual(json.loads(frames(pending_transport.value())[0][1])["error"], "busy")
        pending.connectionLost(error.ConnectionDone())
        established.flush()
        self.assertIsInstance(established.application.reason.value, error.ConnectionDone)
        self.successResultOf(done)
        self.assertEqual(self.busy_after(factory)["detail"], "server is shutting down")

    def busy_after(self, factory):
        proto = factory.buildProtocol(address(port=8))
        transport = StringTransport()
        proto.makeConnection(transport)
        return json.loads(frames(transport.value())[0][1])

    def test_grace_period_then_abort(self):
        clock = Clock()
        factory = server_factory(clock=clock)
        pending = factory.buildProtocol(address())
        transport = StringTransport()
        pending.makeConnection(transport)
        transport.loseConnection = lambda: None  # a peer that never goes
        aborted = []
        transport.abortConnection = lambda: (
            aborted.append(True),
            pending.connectionLost(error.ConnectionAborted()),
        )
        done = factory.shutdown(5)
        clock.advance(4.9)
        self.assertNoResult(done)
        clock.advance(0.1)
        self.assertEqual(aborted, [True])
        self.successResultOf(done)
