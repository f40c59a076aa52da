"""Hostile input through the Twisted layer (docs/spec/kx1.rst §6).

Every bad input gets one precise answer: the ERROR code *and* detail of
§6, or a silent close where the peer is already gone.  Each test also shows
that only that connection ends: a bystander session of the same factory,
established before the attack and still open during it, goes on and ends
cleanly afterwards.

The attacker is :class:`Hostile`: the sans-IO ClientConnection driven by
hand, so it holds the real session keys and can seal records an honest
client never would.  No sockets; a Clock drives the reactor.
"""

import base64
import json

from twisted.internet import error
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial import unittest
from zope.interface import implementer

from keyexchanged import handshake, keys, rsa
from keyexchanged.applications import MessageFactory
from keyexchanged.framing import HEADER_MAX, encode_frame
from keyexchanged.handshake import ClientConnection, ServerKeyReceived
from keyexchanged.protocol import (
    ChannelClientFactory,
    HandshakeFailed,
    ProtocolFailure,
    SecureChannelFactory,
    Truncated,
)
from keyexchanged.records import MAX_RECORDS_PER_KEY
from keyexchanged.trust import PinnedKey
from tests.fixtures import (
    CLIENT_KEY,
    IDENTITY,
    SERVER_KEY,
    Collector,
    address,
    assert_every_case,
    decrypt_each_key_once,
    ended_sessions,
    frames,
    replay,
    vector_client,
)
from tests.vectors import RAW, hexbytes, record

K = IDENTITY.key_bytes
BYSTANDER_HOST = "10.0.0.9"
HOSTILE_HOST = "10.6.6.6"
AUTHORIZED = frozenset({RAW["client_fingerprint"]})


@implementer(IHalfCloseableProtocol)
class ServerApp(Protocol):
    """Echoes and records.  After the peer's END it ends too, unless told
    to ``linger`` (so a record after END reaches the state machine)."""

    linger = False

    def connectionMade(self):
        self.data = b""
        self.reason = None
        self.read_closed = False
        self.factory.made.append(self)

    def dataReceived(self, data):
        self.data += data
        self.transport.write(data)

    def readConnectionLost(self):
        self.read_closed = True
        if not self.linger:
            self.transport.loseConnection()

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        self.reason = reason


class ServerApps(Factory):
    protocol = ServerApp

    def __init__(self):
        self.made = []


class VectorFactory(SecureChannelFactory):
    """Serves the vector nonce to HOSTILE_HOST so that the vector KEY and
    records are valid there; everyone else gets fresh randomness.  With
    ``hostile_apps``, the attacker's sessions run that application instead."""

    hostile_apps = None

    def buildProtocol(self, addr):
        self._next_host = addr.host
        return super().buildProtocol(addr)

    def make_connection(self):
        if self._next_host != HOSTILE_HOST:
            return super().make_connection()
        return handshake.ServerConnection(
            self.identity,
            authorized_keys=self.authorized_keys,
            random=replay(hexbytes("nonce"), b"\0" * 32),
        )

    def build_application(self, address, channel):
        if self.hostile_apps is not None and address.host == HOSTILE_HOST:
            return self.hostile_apps.buildProtocol(address)
        return super().build_application(address, channel)


class Bystander:
    """An honest session of the same factory, half-way through when the
    attack comes; :meth:`finish` shows it was not disturbed."""

    def __init__(self, factory, clock):
        self.factory = factory
        self.app = Collector()
        client_factory = ChannelClientFactory(
            Factory.forProtocol(lambda: self.app),
            PinnedKey(IDENTITY.fingerprint),
            identity=CLIENT_KEY,  # accepted whether AUTH is required or not
            reactor=clock,
            # The vector server of revision 1: no ephemeral key.
            require_forward_secrecy=False,
        )
        self.client, self.server, self.pump = iosim.connectedServerAndClient(
            lambda: factory.buildProtocol(address(BYSTANDER_HOST, 5000)),
            lambda: client_factory.buildProtocol(address("127.0.0.1", 51424)),
            clock=clock,
        )
        self.pump.flush()
        assert self.app.made
        self.app.transport.write(b"before ")
        self.pump.flush()
        assert self.app.data == b"before "

    def finish(self, test):
        test.assertIn(self.server, self.factory.connections)
        self.app.transport.write(b"after")
        self.app.transport.loseConnection()
        self.pump.flush()
        test.assertEqual(self.app.data, b"before after")
        test.assertIsInstance(self.app.reason.value, error.ConnectionDone)
        test.assertNotIn(self.server, self.factory.connections)


class Setup:
    """A factory on a Clock, with a bystander session already running."""

    def __init__(self, app_factory=None, **options):
        self.clock = Clock()
        self.apps = app_factory or ServerApps()
        self.factory = VectorFactory(self.apps, IDENTITY, reactor=self.clock, **options)
        self.bystander = Bystander(self.factory, self.clock)


class Hostile:
    """One attacking connection: a StringTransport into the real
    ServerChannelProtocol, and a hand-driven ClientConnection for keys."""

    def __init__(self, setup, identity=None, port=6000):
        self.setup = setup
        #: How the server's log names this connection.
        self.peer = f"{HOSTILE_HOST}:{port}"
        self.transport = StringTransport(peerAddress=address(HOSTILE_HOST, port))
        self.proto = setup.factory.buildProtocol(address(HOSTILE_HOST, port))
        self.proto.makeConnection(self.transport)
        self.hello = self.take()
        self.client = ClientConnection(identity=identity, require_forward_secrecy=False)

    def take(self):
        value = self.transport.value()
        self.transport.clear()
        return value

    def send(self, data):
        self.proto.dataReceived(data)
        self.setup.clock.advance(0)  # let coalesced application writes out

    def key_only(self):
        """Send the KEY alone, not the client's first record: the test
        seals that itself (from sequence number 0).  Returns what the
        server sent."""
        events = self.client.receive_data(self.hello)
        assert isinstance(events[0], ServerKeyReceived), events
        self.client.accept_key()
        self.send(encode_frame(*frames(self.client.data_to_send())[0]))
        self.client._sealer.sequence = 0
        return frames(self.take())

    def handshake(self):
        """An honest handshake; returns the server's frames after HELLO."""
        events = self.client.receive_data(self.hello)
        assert isinstance(events[0], ServerKeyReceived), events
        self.client.accept_key()
        self.send(self.client.data_to_send())
        sent = self.take()
        for event in self.client.receive_data(sent):
            assert not isinstance(event, handshake.ProtocolFailed), event
        return frames(sent)

    def sealed(self, verb, plaintext=b""):
        """A record sealed with the session's real client key."""
        return encode_frame(verb, self.client._sealer.seal(verb, plaintext))

    @property
    def app(self):
        """The server application of this connection (the latest made)."""
        return self.setup.apps.made[-1]

    def close(self):
        self.proto.connectionLost(Failure(error.ConnectionDone()))


class HostileTestCase(unittest.TestCase):
    def assertRefused(self, setup, hostile, data, code, detail):
        """``data`` gets exactly ERROR {code, detail} and a close; the
        bystander then finishes.  Returns the frames sent before ERROR."""
        hostile.send(data)
        sent = frames(hostile.take())
        self.assertTrue(sent, "nothing was sent")
        self.assertEqual(sent[-1][0], "ERROR", sent)
        self.assertEqual(json.loads(sent[-1][1]), {"error": code, "detail": detail})
        self.assertNotIn("ERROR", [verb for verb, _ in sent[:-1]])
        self.assertTrue(hostile.transport.disconnecting)
        # After ERROR nothing is read or sent.
        hostile.send(b"MSG 0\r\nKEY 256\r\n" + b"x" * 300)
        self.assertEqual(hostile.take(), b"")
        hostile.close()
        self.assertEqual(setup.factory.connections, {setup.bystander.server})
        setup.bystander.finish(self)
        self.assertEqual(setup.factory.connections, set())
        return sent[:-1]

    def refuse(self, data, code, detail, setup=None, handshake=False, identity=None):
        setup = setup or Setup()
        hostile = Hostile(setup, identity=identity)
        if handshake == "key":
            hostile.key_only()
        elif handshake:
            hostile.handshake()
        return self.assertRefused(setup, hostile, data, code, detail), hostile


class HeaderRefusalTests(HostileTestCase):
    """Refused on the header line, whatever the state."""

    def test_each_bad_header(self):
        cases = [
            # header too long, with and without a CRLF in reach
            (b"A" * (HEADER_MAX + 2), "malformed-frame", "header line longer than 32 bytes"),
            (b"MSG 1" + b" " * 28 + b"\r\n", "malformed-frame", "header line longer than 32 bytes"),
            (b"KEY256\r\n", "malformed-frame", "header is not VERB SP LENGTH"),
            (b"key 256\r\n", "malformed-frame", "header is not VERB SP LENGTH"),
            (b"Key 256\r\n", "malformed-frame", "header is not VERB SP LENGTH"),
            (b"KEY +256\r\n", "malformed-frame", "header is not VERB SP LENGTH"),
            (b"KEY -256\r\n", "malformed-frame", "header is not VERB SP LENGTH"),
            (b"KEY 0256\r\n", "malformed-frame", "header is not VERB SP LENGTH"),
            (b"KEY 2_56\r\n", "malformed-frame", "header is not VERB SP LENGTH"),
            (b"KEY 256 \r\n", "malformed-frame", "header is not VERB SP LENGTH"),
            (b"PING 0\r\n", "malformed-frame", "unknown verb"),
            (b"PING 99999999\r\n", "malformed-frame", "unknown verb"),
            (b"KEY 2113\r\n", "frame-too-large", "KEY payload over 2112 bytes"),
            (b"ERROR 1025\r\n", "frame-too-large", "ERROR payload over 1024 bytes"),
            (b"HELLO 65537\r\n", "frame-too-large", "HELLO payload over 65536 bytes"),
            (b"KEY 255\r\n", "malformed-frame", f"KEY must be {K} bytes, not 255"),
            (b"KEY 0\r\n", "malformed-frame", f"KEY must be {K} bytes, not 0"),
            (b"MSG 16\r\n", "unexpected-frame", "MSG not expected in state await-key"),
            (b"END 16\r\n", "unexpected-frame", "END not expected in state await-key"),
            (b"AUTH 100\r\n", "unexpected-frame", "AUTH not expected in state await-key"),
            (b"HELLO 2\r\n{}", "unexpected-frame", "HELLO not expected in state await-key"),
        ]
        assert_every_case(self, cases, lambda case: self.refuse(*case))

    def test_lf_without_cr_is_not_a_line_end(self):
        # "KEY 256\n" then more: the line goes on, and is too long at 34 bytes.
        sent, _ = self.refuse(
            b"KEY 256\n" + b"x" * 40, "malformed-frame", "header line longer than 32 bytes"
        )
        self.assertEqual(sent, [])

    def test_binary_noise(self):
        noise = bytes((i * 151 + 7) % 256 for i in range(4096))
        self.refuse(noise, "malformed-frame", "header line longer than 32 bytes")

    def test_oversized_is_refused_before_buffering(self):
        setup = Setup()
        hostile = Hostile(setup)
        hostile.handshake()
        hostile.send(b"MSG 65553\r\n" + b"x" * 70000)
        self.assertEqual(hostile.proto._payload, b"")
        self.assertTrue(hostile.proto.line_mode, "switched to raw mode")
        sent = frames(hostile.take())
        self.assertEqual(
            json.loads(sent[-1][1]),
            {"error": "frame-too-large", "detail": "MSG payload over 65552 bytes"},
        )

    def test_frame_too_large_wins_over_the_state(self):
        # The limit is checked before the state (docs/spec/kx1.rst §1).
        self.refuse(b"MSG 65553\r\n", "frame-too-large", "MSG payload over 65552 bytes")

    def test_wrong_state_after_the_handshake(self):
        key = encode_frame("KEY", b"\x01" * K)
        self.refuse(key, "unexpected-frame", "KEY not expected in state open", handshake=True)
        self.refuse(
            encode_frame("HELLO", b"{}"),
            "unexpected-frame",
            "HELLO not expected in state open",
            handshake=True,
        )

    def test_second_key_while_auth_is_awaited(self):
        setup = Setup(authorized_keys=AUTHORIZED)
        self.refuse(
            encode_frame("KEY", b"\x01" * K),
            "unexpected-frame",
            "KEY not expected in state await-auth",
            setup=setup,
            handshake="key",
        )


class RecordRefusalTests(HostileTestCase):
    """Records that do not open: ERROR bad-record, nothing reaches the app."""

    def setUp(self):
        self.setup = Setup()
        self.hostile = Hostile(self.setup)
        self.hostile.handshake()

    def assertBadRecord(self, data, verb):
        self.assertRefused(
            self.setup, self.hostile, data, "bad-record", f"{verb} record failed to open"
        )
        self.assertEqual(self.hostile.app.data, b"")
        reason = self.hostile.app.reason.value
        self.assertIsInstance(reason, ProtocolFailure)
        self.assertEqual(reason.code, "bad-record")

    def test_flipped_bit(self):
        frame = bytearray(self.hostile.sealed("MSG", b"forged"))
        frame[-1] ^= 1
        self.assertBadRecord(bytes(frame), "MSG")

    def test_forged_record(self):
        self.assertBadRecord(encode_frame("MSG", b"\0" * 40), "MSG")

    def test_shorter_than_a_tag(self):
        self.assertBadRecord(encode_frame("MSG", b"\0" * 15), "MSG")
        self.setUp()
        self.assertBadRecord(encode_frame("END", b""), "END")

    def test_replayed_record(self):
        frame = self.hostile.sealed("MSG", b"once")
        self.hostile.send(frame)
        self.assertEqual(self.hostile.app.data, b"once")
        self.hostile.app.data = b""
        self.assertBadRecord(frame, "MSG")

    def test_reordered_records(self):
        first = self.hostile.sealed("MSG", b"one")
        second = self.hostile.sealed("MSG", b"two")
        self.assertBadRecord(second + first, "MSG")

    def test_record_relabelled_as_another_verb(self):
        # The verb is the additional data: an empty MSG is not an END.
        payload = self.hostile.client._sealer.seal("MSG", b"")
        self.assertBadRecord(encode_frame("END", payload), "END")

    def test_server_key_instead_of_client_key(self):
        # A record sealed with the server's direction key (a reflection).
        server_sealer = self.hostile.proto.connection._sealer
        frame = encode_frame("MSG", server_sealer.seal("MSG", b"reflected"))
        self.assertBadRecord(frame, "MSG")


class RecordAfterEndTests(HostileTestCase):
    def lingering(self):
        setup = Setup()
        hostile = Hostile(setup)
        hostile.handshake()
        hostile.app.linger = True
        hostile.send(hostile.sealed("MSG", b"data") + hostile.sealed("END"))
        self.assertTrue(hostile.app.read_closed)
        self.assertEqual(hostile.app.data, b"data")
        return setup, hostile

    def test_msg_after_end(self):
        setup, hostile = self.lingering()
        late = hostile.sealed("MSG", b"late")  # a record that would open
        sent = self.assertRefused(setup, hostile, late, "unexpected-frame", "MSG after END")
        self.assertEqual(hostile.app.data, b"data")
        self.assertNotIn(b"late", b"".join(payload for _, payload in sent))

    def test_end_and_update_after_end(self):
        for verb in ("END", "UPDATE"):
            setup, hostile = self.lingering()
            self.assertRefused(
                setup, hostile, hostile.sealed(verb), "unexpected-frame", f"{verb} after END"
            )

    def test_nothing_after_a_clean_finish(self):
        """Once both ENDs have passed the server is closing: whatever the
        peer sends before the TCP close is ignored, a long line as much as
        a short one, and the session stays a clean end."""
        ended = ended_sessions(self)
        setup, hostile = self.lingering()
        hostile.take()
        hostile.app.transport.loseConnection()  # the server's END: finished
        self.assertEqual([verb for verb, _ in frames(hostile.take())], ["END"])
        self.assertTrue(hostile.transport.disconnecting)
        hostile.send(b"MSG 5\r\n")
        hostile.send(b"x" * 40)
        self.assertEqual(hostile.take(), b"")
        hostile.close()
        self.assertIsInstance(hostile.app.reason.value, error.ConnectionDone)
        self.assertEqual(ended[hostile.peer], "ok")
        setup.bystander.finish(self)

    def test_daemon_application_closes_after_both_ends(self):
        """The message application ENDs at once; after the client's END
        the connection is finished and a late record is never read."""
        ended = ended_sessions(self)
        setup = Setup()
        setup.factory.hostile_apps = MessageFactory(b"the message")
        hostile = Hostile(setup)
        sent = hostile.handshake()
        # The confirmation, then (the client's first record opened) the
        # application's message and END.
        self.assertEqual((sent[0][0], len(sent[0][1])), ("MSG", 16))
        self.assertEqual([verb for verb, _ in sent], ["MSG", "MSG", "END"])
        hostile.send(hostile.sealed("END") + hostile.sealed("MSG", b"late"))
        self.assertEqual(hostile.take(), b"")  # no ERROR: the peer was done
        self.assertTrue(hostile.transport.disconnecting)
        hostile.close()
        self.assertEqual(ended[hostile.peer], "ok")
        setup.bystander.finish(self)


class UpdateAbuseTests(HostileTestCase):
    def established(self, **options):
        setup = Setup(**options)
        hostile = Hostile(setup)
        hostile.handshake()
        return setup, hostile

    def test_update_before_key(self):
        self.refuse(
            encode_frame("UPDATE", b"\0" * 16),
            "unexpected-frame",
            "UPDATE not expected in state await-key",
        )

    def test_update_before_auth(self):
        self.refuse(
            encode_frame("UPDATE", b"\0" * 16),
            "auth-required",
            "this server requires AUTH first",
            setup=Setup(authorized_keys=AUTHORIZED),
            handshake="key",
        )

    def test_update_with_content(self):
        # UPDATE seals the empty string: 16 bytes exactly.
        self.refuse(
            b"UPDATE 17\r\n", "frame-too-large", "UPDATE payload over 16 bytes", handshake=True
        )

    def test_update_too_short_or_forged(self):
        def check(payload):
            setup, hostile = self.established()
            self.assertRefused(
                setup,
                hostile,
                encode_frame("UPDATE", payload),
                "bad-record",
                "UPDATE record failed to open",
            )

        assert_every_case(self, (b"", b"\0" * 15, b"\0" * 16), check)

    def test_update_replayed(self):
        setup, hostile = self.established()
        update = encode_frame("UPDATE", hostile.client._sealer.seal_update())
        hostile.send(update)
        self.assertEqual(hostile.take(), b"")
        # The same UPDATE again is under the old key: it cannot open.
        self.assertRefused(setup, hostile, update, "bad-record", "UPDATE record failed to open")

    def test_old_key_after_update(self):
        setup, hostile = self.established()
        stale = encode_frame("MSG", hostile.client._sealer.seal("MSG", b"stale"))
        # Undo the sequence step: "stale" was sealed at the number UPDATE takes.
        hostile.client._sealer.sequence -= 1
        update = encode_frame("UPDATE", hostile.client._sealer.seal_update())
        self.assertRefused(
            setup, hostile, update + stale, "bad-record", "MSG record failed to open"
        )
        self.assertEqual(hostile.app.data, b"")

    def test_update_storm_is_harmless(self):
        """A thousand UPDATEs in a row are legal: each steps the key once,
        holds nothing, and the session goes on."""
        setup, hostile = self.established()
        storm = b"".join(
            encode_frame("UPDATE", hostile.client._sealer.seal_update()) for _ in range(1000)
        )
        hostile.send(storm + hostile.sealed("MSG", b"still here"))
        self.assertEqual(hostile.app.data, b"still here")
        self.assertEqual(hostile.proto.connection._opener.sequence, 1)
        echoed = hostile.client.receive_data(hostile.take())
        self.assertEqual(echoed, [handshake.DataReceived(b"still here")])
        hostile.send(hostile.sealed("END"))
        self.assertTrue(hostile.transport.disconnecting)
        hostile.close()
        setup.bystander.finish(self)

    def test_peer_that_never_updates(self):
        # A sender must update before 2**32 records; one that does not is
        # refused like a forgery.  The count is set, not reached.
        setup, hostile = self.established()
        hostile.proto.connection._opener.sequence = MAX_RECORDS_PER_KEY
        hostile.client._sealer.sequence = MAX_RECORDS_PER_KEY
        frame = encode_frame("MSG", hostile.client._sealer.seal("MSG", b"one too many"))
        self.assertRefused(setup, hostile, frame, "bad-record", "MSG record failed to open")


class AuthGarbageTests(HostileTestCase):
    """AUTH that does not parse or verify: ERROR auth-failed (or bad-record
    when it does not even open), and the application is never connected."""

    def auth(self, plaintext, code, detail, frame=None):
        setup = Setup(authorized_keys=AUTHORIZED)
        hostile = Hostile(setup)
        self.assertEqual(hostile.key_only(), [])  # no record before AUTH
        made = len(setup.apps.made)
        if frame is None:
            frame = hostile.sealed("AUTH", plaintext)
        self.assertRefused(setup, hostile, frame, code, detail)
        # Only the bystander's application was ever made.
        self.assertEqual(len(setup.apps.made), made)

    def test_not_json(self):
        assert_every_case(
            self,
            [b"", b"not json", b"\xff\xfe", b"[]", b'"key"', b"[" * 8000],
            lambda plaintext: self.auth(plaintext, "auth-failed", "AUTH is not a JSON object"),
            label=lambda plaintext: repr(plaintext[:20]),
        )

    def test_duplicate_members(self):
        self.auth(
            b'{"key": "AAAA", "key": "AAAA", "signature": ""}',
            "auth-failed",
            "AUTH is not a JSON object",
        )

    def test_bad_members(self):
        good = json.loads(hexbytes("auth_plaintext"))
        cases = [
            {},
            {"key": good["key"]},
            {"signature": good["signature"]},
            {"key": 5, "signature": good["signature"]},
            {"key": "!!!!", "signature": good["signature"]},
            {"key": good["key"][:-4], "signature": good["signature"]},
            {"key": good["key"], "signature": good["signature"].rstrip("=")},
            {"key": "AAAA", "signature": good["signature"]},
            {"key": RAW["client_private_key_pem"], "signature": good["signature"]},
        ]
        assert_every_case(
            self,
            cases,
            lambda obj: self.auth(json.dumps(obj).encode(), "auth-failed", "malformed AUTH"),
            label=lambda obj: repr(sorted(obj)),
        )

    def test_signature_of_another_session(self):
        # The vector AUTH: well formed, signed over another transcript.
        self.auth(hexbytes("auth_plaintext"), "auth-failed", "bad AUTH signature")

    def test_signature_of_the_wrong_length(self):
        good = json.loads(hexbytes("auth_plaintext"))
        for signature in [b"", b"\0" * (K - 1), b"\xff" * K, b"\0" * (K + 1)]:
            obj = {"key": good["key"], "signature": _b64(signature)}
            self.auth(json.dumps(obj).encode(), "auth-failed", "bad AUTH signature")

    def test_weak_client_key(self):
        weak = rsa.PublicKey(SERVER_KEY.n, 3)
        obj = {"key": _b64(keys.public_key_to_der(weak)), "signature": "AAAA"}
        self.auth(json.dumps(obj).encode(), "auth-failed", "RSA public exponent is not 65537")

    def test_unauthorized_key(self):
        # A sound key and a valid signature, but not a key on the list.
        setup = Setup(authorized_keys=AUTHORIZED)
        hostile = Hostile(setup, identity=SERVER_KEY)
        events = hostile.client.receive_data(hostile.hello)
        self.assertIsInstance(events[0], ServerKeyReceived)
        hostile.client.accept_key()
        self.assertRefused(
            setup,
            hostile,
            hostile.client.data_to_send(),
            "auth-failed",
            "client key is not authorized",
        )

    def test_auth_that_does_not_open(self):
        frame = encode_frame("AUTH", b"\0" * 40)
        self.auth(None, "bad-record", "AUTH record failed to open", frame=frame)

    def test_auth_too_large(self):
        frame = b"AUTH 8193\r\n"
        self.auth(None, "frame-too-large", "AUTH payload over 8192 bytes", frame=frame)

    def test_auth_twice(self):
        setup = Setup(authorized_keys=AUTHORIZED)
        hostile = Hostile(setup, identity=CLIENT_KEY)
        hostile.handshake()
        hostile.take()
        again = hostile.sealed("AUTH", hostile.client.auth_plaintext())
        self.assertRefused(
            setup, hostile, again, "unexpected-frame", "AUTH must be the first client record"
        )

    def test_msg_instead_of_auth(self):
        frame = encode_frame("MSG", b"\0" * 16)
        self.auth(None, "auth-required", "this server requires AUTH first", frame=frame)


def _b64(raw):
    return base64.b64encode(raw).decode("ascii")


class ImplicitRejectionTests(unittest.TestCase):
    """A KEY that fails OAEP, even one at or above n, looks like a good one
    from outside: the same frames, the same lengths, the same work."""

    def setUp(self):
        # Counting private-key operations stands in for timing, which a
        # test cannot measure reliably: the same work takes about the same
        # time, and a KEY refused before the RSA operation is measurably
        # faster (microseconds against a millisecond).
        self.private_ops = []
        original = rsa.PrivateKey._private_op

        def counting(key, c):
            self.private_ops.append(c)
            return original(key, c)

        self.patch(rsa.PrivateKey, "_private_op", counting)

    def served(self, make_key):
        clock = Clock()
        factory = SecureChannelFactory(MessageFactory(b"m" * 100), IDENTITY, reactor=clock)
        transport = StringTransport(peerAddress=address(HOSTILE_HOST, 1))
        proto = factory.buildProtocol(address(HOSTILE_HOST, 1))
        proto.makeConnection(transport)
        hello = transport.value()
        transport.clear()
        del self.private_ops[:]
        proto.dataReceived(encode_frame("KEY", make_key(hello)))
        clock.advance(0)
        out = [(verb, len(payload)) for verb, payload in frames(transport.value())]
        return out, len(self.private_ops), transport.disconnecting, proto.connection.handshake_done

    def test_same_frames_lengths_and_work(self):
        def genuine(hello):
            client = ClientConnection(require_forward_secrecy=False)
            client.receive_data(hello)
            client.accept_key()
            return frames(client.data_to_send())[0][1]

        n = SERVER_KEY.n
        expected = self.served(genuine)
        # The key confirmation alone: the application waits for the
        # client's first record, which a forger cannot seal.
        self.assertEqual(expected, ([("MSG", 16)], 1, False, False))
        cases = [
            (
                "random below n",
                lambda hello: (int.from_bytes(b"\x5a" * K, "big") % n).to_bytes(K, "big"),
            ),
            ("zero", lambda hello: b"\0" * K),
            ("n - 1", lambda hello: (n - 1).to_bytes(K, "big")),
            ("exactly n", lambda hello: n.to_bytes(K, "big")),
            ("n + 1", lambda hello: (n + 1).to_bytes(K, "big")),
            ("all ones, above n", lambda hello: b"\xff" * K),
        ]
        assert_every_case(
            self,
            cases,
            lambda case: self.assertEqual(self.served(case[1]), expected),
            label=lambda case: case[0],
        )

    def test_a_good_ciphertext_plus_n_is_not_accepted(self):
        """c + n is c mod n: were it decrypted as c, a KEY would have two
        spellings.  It is a decoding failure like any other value ≥ n."""
        clock = Clock()
        factory = SecureChannelFactory(MessageFactory(b"m"), IDENTITY, reactor=clock)
        n = SERVER_KEY.n
        for attempt in range(200):
            transport = StringTransport(peerAddress=address(HOSTILE_HOST, attempt))
            proto = factory.buildProtocol(address(HOSTILE_HOST, attempt))
            proto.makeConnection(transport)
            client = ClientConnection(require_forward_secrecy=False)
            client.receive_data(transport.value())
            transport.clear()
            client.accept_key()
            c = int.from_bytes(client.key_payload, "big")
            if c + n < 2 ** (8 * K):
                break
            proto.connectionLost(Failure(error.ConnectionDone()))
        else:
            self.fail("no ciphertext small enough in 200 tries")
        proto.dataReceived(encode_frame("KEY", (c + n).to_bytes(K, "big")))
        self.assertEqual(len(self.private_ops), 1)
        # As far as anyone can see, the keys were agreed: a confirmation.
        self.assertEqual([(v, len(p)) for v, p in frames(transport.value())], [("MSG", 16)])
        client.data_to_send()
        events = client.receive_data(transport.value())
        self.assertEqual(
            events, [handshake.ProtocolFailed("bad-record", "MSG record failed to open")]
        )


class TruncationTests(HostileTestCase):
    """A peer that goes away mid-frame: a silent close, the partial frame is
    dropped, and the application hears "truncated", never a clean end."""

    def test_payload_shorter_than_announced_then_close(self):
        ended = ended_sessions(self)
        setup = Setup()
        hostile = Hostile(setup)
        hostile.handshake()
        hostile.send(hostile.sealed("MSG", b"whole"))
        frame = hostile.sealed("MSG", b"cut short")
        hostile.send(frame[: len(frame) - 5])
        self.assertEqual(hostile.app.data, b"whole")
        hostile.take()
        hostile.close()
        self.assertEqual(hostile.take(), b"")  # the peer is gone: no ERROR
        self.assertEqual(hostile.app.data, b"whole")
        self.assertIsInstance(hostile.app.reason.value, Truncated)
        self.assertEqual(ended[hostile.peer], "truncated")
        self.assertEqual(setup.factory.connections, {setup.bystander.server})
        setup.bystander.finish(self)

    def test_server_side_closed_at_every_byte(self):
        """KEY, AUTH, MSG, END of the vectors, cut after every byte, with
        AUTH required: the server sends nothing but HELLO until AUTH is
        complete, nothing at all after the close, and forgets the
        connection."""
        decrypt_each_key_once(self)  # the same KEY at every cut past it
        ended = ended_sessions(self)
        stream = (
            encode_frame("KEY", hexbytes("key_payload"))
            + encode_frame("AUTH", record("client_auth_seq0"))
            + encode_frame("MSG", record("client_msg_seq1"))
            + encode_frame("END", record("client_end_seq2"))
        )
        auth_end = len(encode_frame("KEY", hexbytes("key_payload"))) + len(
            encode_frame("AUTH", record("client_auth_seq0"))
        )
        msg_end = auth_end + len(encode_frame("MSG", record("client_msg_seq1")))
        setup = Setup(authorized_keys=AUTHORIZED)
        for cut in range(len(stream)):
            hostile = Hostile(setup, port=10000 + cut)
            self.assertEqual(hostile.hello, hexbytes("hello_frame"))
            made = len(setup.apps.made)
            hostile.send(stream[:cut])
            sent = frames(hostile.take())
            if cut < auth_end:
                self.assertEqual(sent, [], cut)
                self.assertEqual(len(setup.apps.made), made, cut)
            else:
                # The key confirmation, then the echo of what arrived whole.
                self.assertEqual({verb for verb, _ in sent}, {"MSG"}, cut)
            hostile.close()
            self.assertEqual(hostile.take(), b"", cut)
            self.assertEqual(setup.factory.connections, {setup.bystander.server}, cut)
            if cut < auth_end:
                self.assertEqual(ended[hostile.peer], "closed", cut)
            else:
                app = setup.apps.made[-1]
                self.assertIsInstance(app.reason.value, Truncated, cut)
                expected = hexbytes("client_message") if cut >= msg_end else b""
                self.assertEqual(app.data, expected, cut)
        setup.bystander.finish(self)

    def test_client_side_closed_at_every_byte(self):
        """The server's HELLO, MSG, END cut after every byte: before the
        first record opens the handshake fails; after it, the session is
        truncated; only the whole stream is a clean end."""
        hello = hexbytes("hello_frame")
        confirm = encode_frame("MSG", record("server_msg_seq0"))
        stream = hello + confirm + encode_frame("END", record("server_end_seq1"))
        for cut in range(len(stream) + 1):
            app = Collector()
            factory = ChannelClientFactory(
                Factory.forProtocol(lambda app=app: app),
                PinnedKey(IDENTITY.fingerprint),
                reactor=Clock(),
            )
            proto = factory.buildProtocol(address("127.0.0.1", 51424))
            proto.connection = vector_client()
            transport = StringTransport()
            proto.makeConnection(transport)
            proto.dataReceived(stream[:cut])
            sent = frames(transport.value())
            if cut < len(hello):
                self.assertEqual(sent, [], cut)  # no KEY before the whole HELLO
            else:
                self.assertEqual(sent[0], ("KEY", hexbytes("key_payload")), cut)
            self.assertNotIn("ERROR", [verb for verb, _ in sent], cut)
            transport.clear()
            proto.connectionLost(Failure(error.ConnectionLost()))
            self.assertEqual(transport.value(), b"", cut)
            if cut < len(hello) + len(confirm):
                failure = self.failureResultOf(factory.handshake, HandshakeFailed)
                # The cause, not a clean end (reason is a Failure: the old
                # isinstance check on it could never fail).
                self.assertIsInstance(failure.value.reason.value, error.ConnectionLost, cut)
                self.assertFalse(app.made, cut)
                self.assertEqual(app.data, b"", cut)
            else:
                self.successResultOf(factory.handshake)
                self.assertEqual(app.data, hexbytes("server_message"), cut)
                outcome = error.ConnectionDone if cut == len(stream) else Truncated
                self.assertIsInstance(app.reason.value, outcome, cut)
                self.assertIsInstance(self.successResultOf(factory.done), outcome, cut)
