"""The Twisted layer: the LineReceiver adapter, the wrapped application,
timeouts, limits and shutdown — in memory, with StringTransport, iosim and
a Clock.  No sockets here."""

import io
import json

from twisted.internet import error
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python import log
from twisted.trial import unittest
from zope.interface import implementer

from keyexchanged import client, handshake, keys, protocol, rsa
from keyexchanged.applications import EchoFactory
from keyexchanged.framing import RECORD_DATA_MAX, encode_frame
from keyexchanged.handshake import (
    ClientConnection,
    ErrorReceived,
)
from keyexchanged.protocol import ChannelClientFactory, ProtocolFailure
from keyexchanged.protocol._transport import AggregateWrites
from keyexchanged.records import RecordOpener
from keyexchanged.trust import Insecure, PinnedKey, UntrustedKey
from tests.fixtures import (
    CLIENT_KEY,
    IDENTITY,
    MESSAGE,
    SERVER_KEY,
    Collector,
    FakePool,
    JunkIdentity,
    MemoryEndpoint,
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
    """A protocol gets what it needs when it is built, and reports
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


SERVER_FP = IDENTITY.fingerprint


CLIENT_FP = RAW["client_fingerprint"]


def deliver(protocol_instance, data):
    """Hand bytes to a protocol as the reactor does: an exception it raises
    is logged ("Unhandled Error"), not thrown at the caller."""
    log.callWithLogger(protocol_instance, protocol_instance.dataReceived, data)


class AuthInWorkersTests(unittest.TestCase):
    """Through the Twisted layer, an AUTH nobody asked for is
    work for the workers, and it counts against max-handshakes."""

    def setUp(self):
        self.clock = Clock()
        self.pool = FakePool()
        #: The moduli of every signature verified in this process.
        self.verified = []
        original = rsa.PublicKey.verify_pss

        def recording(key, *args, **options):
            self.verified.append(key.n)
            return original(key, *args, **options)

        self.patch(rsa.PublicKey, "verify_pss", recording)

    def factory(self, **options):
        factory = server_factory(clock=self.clock, **options)
        factory.work = self.pool
        return factory

    def answer(self, result):
        """Answer the oldest request without doing it here."""
        self.pool.requests.pop(0)[3].callback(result)

    def test_auth_is_verified_in_the_workers_not_in_the_reactor(self):
        factory = self.factory()
        pair = Pair(clock=self.clock, factory=factory, identity=CLIENT_KEY)
        pair.flush()
        self.pool.answer()  # the KEY
        pair.flush()
        (request,) = self.pool.requests
        public_key, signature, message, _ = request
        self.assertEqual(public_key, CLIENT_KEY.public_key())
        self.assertEqual(factory.admission.working, 1)
        # The server application waits for the answer.
        self.assertEqual(pair.application.data, b"")
        self.assertTrue(CLIENT_KEY.public_key().verify_pss(message, signature, salt_length=32))
        self.verified.clear()
        self.answer(True)
        pair.flush()
        self.assertEqual(pair.application.data, MESSAGE)
        self.assertEqual(factory.admission.working, 0)
        self.assertNotIn(CLIENT_KEY.n, self.verified)

    def test_junk_auth_fails_on_the_workers_answer(self):
        factory = self.factory()
        pair = Pair(clock=self.clock, factory=factory, identity=JunkIdentity(4096))
        pair.flush()
        self.pool.answer()
        pair.flush()
        self.assertEqual(factory.admission.working, 1)
        # The client's checks of HELLO only: the ephemeral key, the ML-KEM key.
        self.assertEqual(self.verified, [SERVER_KEY.n, SERVER_KEY.n])
        self.answer(False)
        pair.flush()
        self.assertEqual(factory.admission.working, 0)
        self.assertEqual(pair.application.reason.value.code, "auth-failed")
        self.assertEqual(pair.application.reason.value.detail, "bad AUTH signature")

    def test_a_pending_auth_holds_a_handshake_slot(self):
        factory = self.factory(max_handshakes=1)
        first = Pair(clock=self.clock, factory=factory, identity=CLIENT_KEY)
        first.flush()
        self.pool.answer()  # its KEY; its AUTH is now in the pool
        first.flush()
        self.assertEqual(factory.admission.working, 1)
        second = Pair(clock=self.clock, factory=factory)
        second.flush()
        reason = self.failureResultOf(second.handshake).value.reason.value
        self.assertEqual((reason.code, reason.detail), ("busy", "too many handshakes in progress"))
        self.answer(True)
        first.flush()
        self.assertEqual(first.application.data, MESSAGE)
        third = Pair(clock=self.clock, factory=factory)
        third.flush()
        self.pool.answer()
        third.flush()
        self.assertEqual(third.application.data, MESSAGE)
        self.assertEqual(factory.admission.working, 0)

    def test_auth_beyond_max_handshakes_is_busy_while_a_bystander_completes(self):
        factory = self.factory(max_handshakes=1)
        ended = ended_sessions(self)
        # A client core on a StringTransport: its KEY and its AUTH go in
        # separately, so that the slot is taken in between.
        server = factory.buildProtocol(address("10.0.0.9", 50000))
        transport = StringTransport(peerAddress=address("10.0.0.9", 50000))
        server.makeConnection(transport)
        stranger = ClientConnection(identity=JunkIdentity(4096))
        stranger.receive_data(transport.value())
        transport.clear()
        stranger.accept_key()
        (key, auth) = frames(stranger.data_to_send())
        self.assertEqual((key[0], auth[0]), ("KEY", "AUTH"))
        deliver(server, encode_frame(*key))
        self.pool.answer()
        self.assertEqual(factory.admission.working, 0)
        # A bystander's handshake takes the only slot.
        bystander = Pair(clock=self.clock, factory=factory)
        bystander.flush()
        self.assertEqual(factory.admission.working, 1)
        deliver(server, encode_frame(*auth))
        self.assertEqual(
            stranger.receive_data(transport.value())[-1],
            ErrorReceived("busy", "too many handshakes in progress"),
        )
        self.assertEqual(len(self.pool.requests), 1)  # the AUTH never went
        self.assertNotIn(stranger.identity.public_key().n, self.verified)
        self.pool.answer()
        bystander.flush()
        self.assertEqual(bystander.application.data, MESSAGE)
        self.assertEqual(factory.admission.working, 0)
        self.assertTrue(transport.disconnecting)
        server.connectionLost(error.ConnectionDone())
        self.assertEqual(ended["10.0.0.9:50000"], "busy")
        self.assertEqual(self.flushLoggedErrors(), [])


class PeerErrorChannelTests(unittest.TestCase):
    """The Twisted layer: nothing a peer says reaches the log as a
    traceback (one per connection would be a log flood)."""

    def test_server_given_an_error_of_any_shape(self):
        for code in ([], ["busy", "timeout"], {}, {"error": "busy"}, 5, None):
            ended = ended_sessions(self)
            factory = server_factory()
            server = factory.buildProtocol(address("10.0.0.7", 41000))
            transport = StringTransport(peerAddress=address("10.0.0.7", 41000))
            server.makeConnection(transport)
            hello = transport.value()
            payload = json.dumps({"error": code, "detail": {"nested": [1]}}).encode()
            deliver(server, encode_frame("ERROR", payload))
            self.assertEqual(self.flushLoggedErrors(), [], code)
            self.assertTrue(transport.disconnecting)
            self.assertEqual(transport.value(), hello)  # nothing after HELLO
            server.connectionLost(error.ConnectionDone())
            self.assertEqual(ended, {"10.0.0.7:41000": "unknown"})
            self.assertEqual(factory.connections, set())

    def test_client_given_a_hello_of_non_ascii_protocol(self):
        for character in ("€", "\U0001f600"):
            hello = encode_frame("HELLO", json.dumps({"protocol": character * 300}).encode())
            factory = ChannelClientFactory(
                Factory.forProtocol(Collector), PinnedKey(SERVER_FP), reactor=Clock()
            )
            channel = factory.buildProtocol(address())
            transport = StringTransport()
            channel.makeConnection(transport)
            deliver(channel, hello)
            self.assertEqual(self.flushLoggedErrors(), [])
            ((verb, payload),) = frames(transport.value())
            self.assertEqual(verb, "ERROR")
            self.assertLessEqual(len(payload), 1024)
            self.assertEqual(json.loads(payload)["error"], "unsupported-protocol")
            self.assertTrue(transport.disconnecting)
            channel.connectionLost(error.ConnectionDone())
            reason = self.failureResultOf(factory.handshake).value.reason.value
            self.assertIsInstance(reason, ProtocolFailure)
            self.assertEqual(reason.code, "unsupported-protocol")

    def test_connect_exits_4_without_a_traceback(self):
        clock = Clock()
        name = "€" * 300

        class Liar(Protocol):
            def connectionMade(self):
                self.transport.write(encode_frame("HELLO", json.dumps({"protocol": name}).encode()))

        endpoint = MemoryEndpoint(Factory.forProtocol(Liar), clock)
        output, errors = io.BytesIO(), io.StringIO()
        done = client.run_connect(
            clock, "server.example", 51424, PinnedKey(SERVER_FP),
            output=output, errors=errors, endpoint=endpoint,
        )  # fmt: skip
        endpoint.pump.flush()
        self.assertEqual(self.successResultOf(done), client.EXIT_FAILED)
        self.assertEqual(
            errors.getvalue(),
            "keyexchange: error: protocol failure (unsupported-protocol): "
            f"protocol {name!r} is not kx/1\n",
        )
        self.assertEqual(self.flushLoggedErrors(), [])


class PeerFingerprintAtStartTests(unittest.TestCase):
    """AUTH optional but given: the application knows who it is
    talking to from ``connectionMade`` on."""

    def pair(self, identity, pool=None):
        seen = []

        class Recorder(Collector):
            def connectionMade(self):
                seen.append((self.transport.peer_fingerprint, self.peer_fingerprint))
                self.transport.write(b"hello")
                self.transport.loseConnection()

        clock = Clock()
        factory = server_factory(Factory.forProtocol(Recorder), clock)
        self.assertIsNone(factory.authorized_keys)  # AUTH is optional here
        factory.work = pool
        pair = Pair(clock=clock, factory=factory, identity=identity)
        pair.flush()
        return pair, seen

    def test_reactor_verification(self):
        ended = ended_sessions(self)
        pair, seen = self.pair(CLIENT_KEY)
        self.assertEqual(seen, [(CLIENT_FP, CLIENT_FP)])
        self.assertEqual(pair.application.data, b"hello")
        self.assertEqual(list(ended.values()), ["ok"])

    def test_worker_verification(self):
        pool = FakePool()
        pair, seen = self.pair(CLIENT_KEY, pool)
        pool.answer()  # KEY
        pair.flush()
        self.assertEqual(seen, [])  # not before the AUTH is checked
        pool.answer()  # AUTH
        pair.flush()
        self.assertEqual(seen, [(CLIENT_FP, CLIENT_FP)])
        self.assertEqual(pair.application.data, b"hello")

    def test_no_auth(self):
        pair, seen = self.pair(None)
        self.assertEqual(seen, [(None, None)])
        self.assertEqual(pair.application.data, b"hello")


class ClientIdleTimeoutTests(unittest.TestCase):
    """The client ends a session whose server goes silent after the
    handshake."""

    def connect(self, idle_timeout):
        servers = []

        class Silent(Protocol):
            def connectionMade(self):
                servers.append(self)

        self.clock = Clock()
        # The server's own idle timeout is far off: it is not the one tested.
        self.factory = server_factory(Factory.forProtocol(Silent), self.clock, idle_timeout=3600)
        self.endpoint = MemoryEndpoint(self.factory, self.clock)
        self.application = Collector()
        self.sent = client_writes(self)
        handshake = protocol.connect(
            self.clock,
            self.endpoint,
            PinnedKey(SERVER_FP),
            Factory.forProtocol(lambda: self.application),
            idle_timeout=idle_timeout,
        )
        self.successResultOf(handshake)
        self.assertTrue(self.application.made)
        (self.server_application,) = servers

    def advance(self, seconds):
        self.clock.advance(seconds)
        self.endpoint.pump.flush()

    def assertNotEnded(self):
        self.assertIsNone(self.application.reason)
        self.assertEqual(len(self.factory.connections), 1)

    def assertTimedOut(self, idle_timeout):
        detail = f"the server sent nothing for {idle_timeout} s"
        reason = self.application.reason.value
        self.assertIsInstance(reason, ProtocolFailure)
        self.assertEqual((reason.code, reason.detail), ("timeout", detail))
        (verb, payload) = frames(b"".join(self.sent))[-1]
        self.assertEqual(verb, "ERROR")
        self.assertEqual(json.loads(payload), {"error": "timeout", "detail": detail})
        self.assertEqual(self.factory.connections, set())

    def test_silence_ends_the_session_after_exactly_the_timeout(self):
        self.connect(60)
        self.advance(59.999)
        self.assertNotEnded()
        self.advance(0.001)
        self.assertTimedOut(60)

    def test_data_from_the_server_resets_it(self):
        self.connect(60)
        self.advance(40)
        self.server_application.transport.write(b"still here")
        self.advance(0)  # the write is sealed at the end of the reactor turn
        self.assertEqual(self.application.data, b"still here")
        self.advance(59.999)
        self.assertNotEnded()
        self.advance(0.001)
        self.assertTimedOut(60)

    def test_our_own_writes_reset_it(self):
        self.connect(60)
        self.advance(40)
        self.application.transport.write(b"anyone?")
        self.advance(0)
        self.assertEqual(self.server_application.transport.disconnecting, False)
        self.advance(59.999)
        self.assertNotEnded()
        self.advance(0.001)
        self.assertTimedOut(60)

    def test_none_means_never(self):
        self.connect(None)
        self.advance(3599)
        self.assertNotEnded()

    def test_connect_exits_4_after_the_default_300_s(self):
        @implementer(IHalfCloseableProtocol)
        class Deaf(Protocol):
            """Takes the client's END, and never answers."""

            def readConnectionLost(self):
                pass

        clock = Clock()
        factory = server_factory(Factory.forProtocol(Deaf), clock, idle_timeout=3600)
        endpoint = MemoryEndpoint(factory, clock)
        output, errors = io.BytesIO(), io.StringIO()
        done = client.run_connect(
            clock, "server.example", 51424, PinnedKey(SERVER_FP), send=b"ping",
            output=output, errors=errors, endpoint=endpoint,
        )  # fmt: skip
        clock.advance(0)
        endpoint.pump.flush()
        # The server has the client's data and END, and says nothing.
        clock.advance(299.999)
        endpoint.pump.flush()
        self.assertNoResult(done)
        clock.advance(0.001)
        endpoint.pump.flush()
        self.assertEqual(self.successResultOf(done), client.EXIT_FAILED)
        self.assertEqual(
            errors.getvalue(),
            "keyexchange: error: timeout: the server sent nothing for 300 s\n",
        )
