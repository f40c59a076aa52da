"""Property tests: any bytes, any chunking.

The frame parser, both state machines and the Twisted adapter are fed
streams made of valid frames from the vector file, damaged copies of them,
bare headers and noise, cut into arbitrary chunks.  Whatever comes in, the
answer is valid events or exactly one ERROR (always the last thing said),
never an unhandled exception, and never more held in a buffer than the
header cap or the current frame's announced payload.  Where the answer
must not depend on how the bytes were cut, it is checked against the same
stream fed whole.
"""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from zope.interface import implementer

from keyexchanged import handshake, mlkem
from keyexchanged.framing import (
    ERROR_CODES,
    FRAME_TOO_LARGE,
    HEADER_MAX,
    MALFORMED_FRAME,
    MAX_PAYLOAD,
    FrameDecoder,
    ProtocolError,
    encode_frame,
)
from keyexchanged.handshake import (
    DataReceived,
    EndReceived,
    ErrorReceived,
    HandshakeComplete,
    ProtocolFailed,
    ServerKeyReceived,
    TicketReceived,
)
from keyexchanged.protocol import SecureChannelFactory
from keyexchanged.records import OCB, RecordSealer
from tests import rev3
from tests.fixtures import (
    IDENTITY,
    address,
    decrypt_each_key_once,
    frames,
    replay,
    vector_client,
    vector_server,
)
from tests.vectors import RAW, hexbytes, record, revision3_hexbytes

# Bounded so that the whole suite stays quick on two cores; every example
# may cost a few RSA operations.
PROPERTY = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

AUTHORIZED = {RAW["client_fingerprint"]}

CLIENT_FRAMES = [
    encode_frame("KEY", hexbytes("key_payload")),
    encode_frame("AUTH", record("client_auth_seq0")),
    encode_frame("MSG", record("client_msg_seq1")),
    encode_frame("END", record("client_end_seq2")),
    # Revision 2: a ticket this server cannot open, a TICKET it must refuse.
    encode_frame("RESUME", b"\x01" * 60),
    encode_frame("TICKET", b"\x02" * 40),
]


def _server_ticket_record():
    """A TICKET the vector server could send, at its sequence number 1."""
    sealer = RecordSealer(hexbytes("server_key"))
    sealer.seal("MSG", hexbytes("server_message"))
    return sealer.seal("TICKET", b'{"ticket": "AAAA", "lifetime": 60}')


SERVER_FRAMES = [
    hexbytes("hello_frame"),
    encode_frame("MSG", record("server_msg_seq0")),
    encode_frame("END", record("server_end_seq1")),
    encode_frame("UPDATE", record("server_update_seq1")),
    encode_frame("MSG", record("server_msg_after_update_seq0")),
    encode_frame("TICKET", _server_ticket_record()),
]
VERBS = [*MAX_PAYLOAD, "PING", "key", "A" * 9, ""]


def parts(valid):
    """One piece of a stream: a valid frame, a damaged one, a header, noise."""
    frame = st.sampled_from(valid)
    return st.one_of(
        frame,
        # the valid frames in order, as an honest peer sends them
        st.integers(1, len(valid)).map(lambda n: b"".join(valid[:n])),
        # a frame with one byte changed (header, payload or tag)
        st.tuples(frame, st.integers(0, 10**6), st.integers(1, 255)).map(
            lambda t: _flip(t[0], t[1] % len(t[0]), t[2])
        ),
        # a frame cut short
        st.tuples(frame, st.integers(0, 10**6)).map(lambda t: t[0][: t[1] % len(t[0])]),
        # a bare header, legal or not
        st.tuples(st.sampled_from(VERBS), st.integers(0, 70000)).map(
            lambda t: b"%s %d\r\n" % (t[0].encode(), t[1])
        ),
        # the peer's own ERROR, readable or not
        st.sampled_from(
            [
                encode_frame("ERROR", b'{"error": "busy", "detail": "full"}'),
                encode_frame("ERROR", b"\xff not json"),
                b"ERROR 0\r\n",
            ]
        ),
        st.binary(max_size=48),
    )


def _flip(data, index, mask):
    return data[:index] + bytes([data[index] ^ mask]) + data[index + 1 :]


def streams(valid):
    return st.lists(parts(valid), min_size=1, max_size=6).map(b"".join)


def chunkings():
    return st.lists(st.integers(1, 300), min_size=1, max_size=12)


def chunked(data, sizes):
    """``data`` cut into pieces of the given sizes, cycling; all of it."""
    out, pos, i = [], 0, 0
    while pos < len(data):
        size = sizes[i % len(sizes)]
        out.append(data[pos : pos + size])
        pos += size
        i += 1
    return out


class Invariants:
    """Checks shared by the state-machine properties."""

    def assertDecoderBounded(self, decoder):
        if decoder.stopped:
            self.assertEqual(decoder.buffered, 0)
        elif decoder._verb is None:
            # Looking for CRLF: at most a 32-byte header and its CR.
            self.assertLessEqual(decoder.buffered, HEADER_MAX + 1)
        else:
            # Reading a payload: less than announced, announced within limit.
            self.assertLess(decoder.buffered, decoder._length)
            self.assertLessEqual(decoder._length, MAX_PAYLOAD[decoder._verb])

    def assertOneAnswer(self, connection, events, output, allowed):
        """Valid events; at most one ProtocolFailed, last, with exactly one
        ERROR on the wire saying the same, and nothing after it."""
        for event in events:
            self.assertIsInstance(event, allowed)
        failures = [e for e in events if isinstance(e, ProtocolFailed)]
        errors = [e for e in events if isinstance(e, ErrorReceived)]
        self.assertLessEqual(len(failures) + len(errors), 1, events)
        sent = frames(output)
        verbs = [verb for verb, _ in sent]
        if failures:
            self.assertIs(events[-1], failures[0])
            self.assertTrue(connection.closed)
            self.assertEqual(verbs[-1], "ERROR")
            self.assertEqual(verbs.count("ERROR"), 1)
            body = json.loads(sent[-1][1])
            self.assertEqual(body, {"error": failures[0].code, "detail": failures[0].detail})
            self.assertIn(body["error"], ERROR_CODES)
            self.assertLessEqual(len(sent[-1][1]), MAX_PAYLOAD["ERROR"])
        else:
            self.assertNotIn("ERROR", verbs)
        if errors:
            self.assertIs(events[-1], errors[0])
            self.assertTrue(connection.closed)
        for verb, payload in sent:
            self.assertLessEqual(len(payload), MAX_PAYLOAD[verb])


class FrameDecoderProperties(unittest.TestCase, Invariants):
    def decode(self, chunks):
        decoded, error = [], None
        decoder = FrameDecoder(lambda verb, payload: decoded.append((verb, payload)))
        for chunk in chunks:
            try:
                decoder.feed(chunk)
            except ProtocolError as caught:
                self.assertIsNone(error, "a second error from a stopped decoder")
                error = (caught.code, caught.detail)
            self.assertDecoderBounded(decoder)
        return decoded, error

    @PROPERTY
    @given(streams(CLIENT_FRAMES + SERVER_FRAMES), chunkings())
    def test_any_stream_any_chunking(self, data, sizes):
        whole = self.decode([data])
        cut = self.decode(chunked(data, sizes))
        # The cut does not change a thing: same frames, same error.
        self.assertEqual(cut, whole)
        decoded, error = cut
        if error is not None:
            self.assertIn(error[0], (MALFORMED_FRAME, FRAME_TOO_LARGE))
        for verb, payload in decoded:
            self.assertLessEqual(len(payload), MAX_PAYLOAD[verb])
        # Re-encoding what was decoded gives back a prefix of the input.
        encoded = b"".join(encode_frame(v, p) for v, p in decoded)
        self.assertEqual(data[: len(encoded)], encoded)

    @PROPERTY
    @given(streams(CLIENT_FRAMES + SERVER_FRAMES))
    def test_a_one_byte_feed_never_holds_more_than_a_header(self, data):
        decoder = FrameDecoder(lambda verb, payload: None)
        try:
            for i in range(len(data)):
                decoder.feed(data[i : i + 1])
                self.assertDecoderBounded(decoder)
        except ProtocolError:
            self.assertTrue(decoder.stopped)
            self.assertEqual(decoder.buffered, 0)


SERVER_EVENTS = (
    HandshakeComplete,
    DataReceived,
    EndReceived,
    ErrorReceived,
    ProtocolFailed,
)
CLIENT_EVENTS = (
    ServerKeyReceived,
    HandshakeComplete,
    TicketReceived,
    DataReceived,
    EndReceived,
    ErrorReceived,
    ProtocolFailed,
)


class ServerProperties(unittest.TestCase, Invariants):
    def setUp(self):
        # Every example offers a server the same few KEYs: each is decrypted once.
        decrypt_each_key_once(self)

    def run_server(self, chunks, authorized):
        server = vector_server(authorized_keys=AUTHORIZED if authorized else None)
        hello = server.data_to_send()
        self.assertEqual(hello, hexbytes("hello_frame"))
        events, output = [], b""
        for chunk in chunks:
            events += server.receive_data(chunk)
            output += server.data_to_send()
            self.assertDecoderBounded(server._decoder)
        self.assertOneAnswer(server, events, output, SERVER_EVENTS)
        return server, events, output

    @PROPERTY
    @given(streams(CLIENT_FRAMES), chunkings(), st.booleans())
    def test_any_stream_any_chunking(self, data, sizes, authorized):
        _, events, output = self.run_server(chunked(data, sizes), authorized)
        # Fed only by the peer, the server says nothing but its key
        # confirmation (one empty MSG, once a KEY was decrypted) and its own
        # ERROR (none when it was the peer that sent ERROR).
        failed = any(isinstance(e, ProtocolFailed) for e in events)
        sent = frames(output)
        said = [v for v, _ in sent if v != "ERROR"]
        self.assertIn(said, ([], ["MSG"]))
        if said:
            self.assertEqual(len(sent[0][1]), 16)
        self.assertEqual([v for v, _ in sent if v == "ERROR"], ["ERROR"] if failed else [])
        # Chunking changes nothing.
        _, whole_events, whole_output = self.run_server([data], authorized)
        self.assertEqual(events, whole_events)
        self.assertEqual(output, whole_output)
        # Application data only after the handshake, and only once opened.
        if any(isinstance(e, DataReceived) for e in events):
            first_data = next(i for i, e in enumerate(events) if isinstance(e, DataReceived))
            self.assertIn(HandshakeComplete(events[0].peer_fingerprint), events[:first_data])

    @PROPERTY
    @given(streams(CLIENT_FRAMES), chunkings())
    def test_after_an_error_nothing_more(self, data, sizes):
        server, _, _ = self.run_server(chunked(data, sizes), True)
        closed = server.closed
        more = server.receive_data(b"".join(CLIENT_FRAMES) + data)
        if closed:
            self.assertEqual(more, [])
            self.assertEqual(server.data_to_send(), b"")
            self.assertEqual(server._decoder.buffered, 0)


class ClientProperties(unittest.TestCase, Invariants):
    @PROPERTY
    @given(streams(SERVER_FRAMES), chunkings(), st.booleans())
    def test_any_stream_any_chunking(self, data, sizes, trusting):
        client = vector_client()
        events, output = [], b""
        for chunk in chunked(data, sizes):
            new = client.receive_data(chunk)
            events += new
            for event in new:
                if isinstance(event, ServerKeyReceived) and not client.closed:
                    # The trust decision, either way (unless frames after
                    # HELLO in the same chunk already ended the connection).
                    if trusting:
                        events += client.accept_key()
                    else:
                        events += client.reject_key("not trusted in this example")
            output += client.data_to_send()
            self.assertDecoderBounded(client._decoder)
        self.assertOneAnswer(client, events, output, CLIENT_EVENTS)
        sent = [verb for verb, _ in frames(output)]
        # KEY only after a HELLO that was trusted, and then exactly once.
        if "KEY" in sent:
            self.assertTrue(trusting)
            self.assertEqual(sent.count("KEY"), 1)
            self.assertIsInstance(events[0], ServerKeyReceived)
        # Data only after the key was confirmed by an opened record.
        if any(isinstance(e, DataReceived) for e in events):
            self.assertIn(HandshakeComplete, [type(e) for e in events])


@implementer(IHalfCloseableProtocol)
class Recorder(Protocol):
    """Keeps what it gets; never ends on its own, so that everything the
    peer sends reaches the state machine."""

    def connectionMade(self):
        self.factory.made.append(self)
        self.data = b""

    def dataReceived(self, data):
        self.data += data

    def readConnectionLost(self):
        pass

    def writeConnectionLost(self):
        pass


class AdapterProperties(unittest.TestCase, Invariants):
    """The daemon reads with LineReceiver, not FrameDecoder: the two paths
    must give the same answer to the same bytes."""

    def setUp(self):
        # Every example offers a server the same few KEYs: each is decrypted once.
        decrypt_each_key_once(self)

    def adapter(self, chunks, authorized):
        apps = Factory.forProtocol(Recorder)
        apps.made = []

        class Vector(SecureChannelFactory):
            def make_connection(self):
                return handshake.ServerConnection(
                    self.identity,
                    authorized_keys=self.authorized_keys,
                    random=replay(hexbytes("nonce"), b"\0" * 32),
                )

        factory = Vector(
            apps, IDENTITY, reactor=Clock(), authorized_keys=AUTHORIZED if authorized else None
        )
        proto = factory.buildProtocol(address())
        transport = StringTransport()
        proto.makeConnection(transport)
        for chunk in chunks:
            proto.dataReceived(chunk)
            factory.reactor.advance(0)
            if not proto._closing:
                if proto.line_mode:
                    self.assertLessEqual(len(proto._buffer), HEADER_MAX + 1)
                else:
                    self.assertLess(len(proto._payload), proto._length)
        sent = frames(transport.value())
        verbs = [verb for verb, _ in sent]
        self.assertEqual(verbs[0], "HELLO")
        self.assertLessEqual(verbs.count("ERROR"), 1)
        error = None
        if "ERROR" in verbs:
            self.assertEqual(verbs[-1], "ERROR")
            self.assertTrue(transport.disconnecting)
            error = json.loads(sent[-1][1])
        data = b"".join(app.data for app in apps.made)
        return error, data

    @PROPERTY
    @given(streams(CLIENT_FRAMES), chunkings(), st.booleans())
    def test_same_answer_as_the_state_machine(self, data, sizes, authorized):
        error, app_data = self.adapter(chunked(data, sizes), authorized)
        server = vector_server(authorized_keys=AUTHORIZED if authorized else None)
        server.data_to_send()
        events = server.receive_data(data)
        expected = None
        if server.closed and isinstance(events[-1], ProtocolFailed):
            expected = {"error": events[-1].code, "detail": events[-1].detail}
        self.assertEqual(error, expected)
        self.assertEqual(app_data, b"".join(e.data for e in events if isinstance(e, DataReceived)))


# -- revision 3: the hybrid KEY layout and OCB records (§12, §13) -------------------

_FULL3 = ("sessions", OCB, "full")
_KEY3 = revision3_hexbytes(*_FULL3, "key_payload")
_RSA3 = len(_KEY3) - mlkem.CIPHERTEXT_LENGTH


def _record3(name):
    return revision3_hexbytes(*_FULL3, "records", name)


REVISION3_CLIENT_FRAMES = [
    encode_frame("KEY", _KEY3),
    encode_frame("MSG", _record3("client_msg_seq0")),
    encode_frame("MSG", _record3("client_msg_seq1")),
    encode_frame("END", _record3("client_end_seq2")),
    # The downgrades of §12.5: the ML-KEM ciphertext dropped, cut, altered.
    encode_frame("KEY", _KEY3[:_RSA3]),
    encode_frame("KEY", _KEY3[:-1]),
    encode_frame("KEY", _KEY3[:_RSA3] + bytes(mlkem.CIPHERTEXT_LENGTH)),
]
REVISION3_SERVER_FRAMES = [
    revision3_hexbytes(*_FULL3, "hello_frame"),
    encode_frame("MSG", _record3("server_msg_seq0")),
    encode_frame("TICKET", _record3("server_ticket_seq1")),
    encode_frame("MSG", _record3("server_msg_seq2")),
    encode_frame("UPDATE", _record3("server_update_seq3")),
    encode_frame("MSG", _record3("server_msg_after_update_seq0")),
    encode_frame("END", _record3("server_end_seq1")),
]


class Revision3Properties(unittest.TestCase, Invariants):
    """The revision-3 server and client on any stream of the hybrid KEY
    layout and OCB records, whole or damaged, in any chunking."""

    def setUp(self):
        # Every example offers a server the same few KEYs: each is decrypted once.
        decrypt_each_key_once(self)

    def run_server(self, chunks, required):
        server = rev3.vector_server(
            OCB, revision3_hexbytes(*_FULL3, "nonce"), require_post_quantum=required
        )
        server.data_to_send()
        events, output = [], b""
        for chunk in chunks:
            events += server.receive_data(chunk)
            output += server.data_to_send()
            self.assertDecoderBounded(server._decoder)
        self.assertOneAnswer(server, events, output, SERVER_EVENTS)
        return events, output

    @PROPERTY
    @given(streams(REVISION3_CLIENT_FRAMES), chunkings(), st.booleans())
    def test_server_any_stream_any_chunking(self, data, sizes, required):
        events, output = self.run_server(chunked(data, sizes), required)
        self.assertEqual((events, output), self.run_server([data], required))
        complete = [e for e in events if isinstance(e, HandshakeComplete)]
        # Only the honest hybrid KEY completes; with ML-KEM required, never a
        # revision-2 one.
        for event in complete:
            self.assertEqual((event.post_quantum, event.record_cipher), (True, OCB))

    @PROPERTY
    @given(streams(REVISION3_SERVER_FRAMES), chunkings())
    def test_client_any_stream_any_chunking(self, data, sizes):
        client = rev3.vector_client(OCB)
        events, output = [], b""
        for chunk in chunked(data, sizes):
            new = client.receive_data(chunk)
            events += new
            for event in new:
                if isinstance(event, ServerKeyReceived) and not client.closed:
                    events += client.accept_key()
            output += client.data_to_send()
            self.assertDecoderBounded(client._decoder)
        self.assertOneAnswer(client, events, output, CLIENT_EVENTS)
        sent = [verb for verb, _ in frames(output)]
        if "KEY" in sent:
            # Always the hybrid KEY: the client never falls back by itself.
            self.assertEqual(frames(output)[0], ("KEY", _KEY3))
        for event in events:
            if isinstance(event, HandshakeComplete):
                self.assertEqual((event.post_quantum, event.record_cipher), (True, OCB))
