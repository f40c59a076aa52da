"""The fixes of the outside security review (issue 12), items 1, 5, 7, 10
and 11, each with the tests that fail without it.

1. An AUTH a server did not ask for is private-key-sized work a stranger
   triggers: it is checked in the workers, counted against max-handshakes,
   and its key is bounded (``client-key-max-bits``, e = 65537).
5. Nothing in a peer's ERROR (or HELLO) can raise, and every ERROR we send
   fits its frame, whatever the detail holds.
7. An optional AUTH names the client before the application starts.
10. A trust refusal tells the server only that we refused.
11. The client ends a session whose server has gone silent.

No sockets: the cores are driven directly, the channel through iosim or a
StringTransport, and time by a Clock.
"""

import io
import json
import math
import os
import random
import time

from twisted.internet import defer, error
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.python import log, usage
from twisted.test import iosim
from twisted.test.proto_helpers import StringTransport
from twisted.trial import unittest
from zope.interface import implementer

from keyexchanged import cli, client, config, keys, protocol, rsa, tap
from keyexchanged.framing import MAX_PAYLOAD, encode_frame
from keyexchanged.handshake import (
    ClientConnection,
    DecryptionNeeded,
    ErrorReceived,
    HandshakeComplete,
    ProtocolFailed,
    ServerConnection,
    ServerKeyReceived,
    VerificationNeeded,
    error_payload,
    parse_error_payload,
)
from keyexchanged.knownhosts import KnownHostsTrust
from keyexchanged.protocol import ChannelClientFactory, PeerError, ProtocolFailure
from keyexchanged.trust import PinnedKey, UntrustedKey
from tests.fixtures import (
    CLIENT_KEY,
    IDENTITY,
    MESSAGE,
    SERVER_KEY,
    Collector,
    CommandTestCase,
    FakePool,
    Pair,
    address,
    client_writes,
    ended_sessions,
    frames,
    rev1_client,
    server_factory,
)
from tests.rev2 import EPHEMERAL_PRIVATE
from tests.vectors import RAW

CLIENT_FP = RAW["client_fingerprint"]
SERVER_FP = IDENTITY.fingerprint
#: Some other key's fingerprint: what a pin or a known-hosts line expects.
OTHER_FP = keys.fingerprint(EPHEMERAL_PRIVATE.public_key())

#: All a refused server learns (item 10).
GENERIC_REFUSAL = {"error": "untrusted-key", "detail": "the client does not trust this key"}


class JunkIdentity:
    """A stranger's AUTH: a public key of its choosing and a signature of
    random numbers below n, which costs the server a whole verification
    and never verifies.  Nobody holds the private key: none is needed."""

    def __init__(self, bits, e=65537, seed=0):
        draw = random.Random(f"{bits}-{e}-{seed}")
        n = 0
        while math.gcd(n, e) != 1:
            n = draw.getrandbits(bits) | 1 << (bits - 1) | 1
        self._public = rsa.PublicKey(n, e)
        self._draw = draw
        self.fingerprint = keys.fingerprint(self._public)

    def public_key(self):
        return self._public

    def sign_pss(self, message, salt_length, **options):
        value = self._draw.randrange(self._public.n)
        return value.to_bytes(self._public.k, "big")


def core_pair(identity, **server_options):
    """A server core that has sent HELLO and a client core that trusts it
    (revision 1: no ephemeral key, cheaper and the same for AUTH)."""
    server = ServerConnection(IDENTITY, **server_options)
    server.start()
    client_core = rev1_client(identity=identity)
    (offer,) = client_core.receive_data(server.data_to_send())
    assert isinstance(offer, ServerKeyReceived), offer
    client_core.accept_key()
    return server, client_core


def deliver(protocol_instance, data):
    """Hand bytes to a protocol as the reactor does: an exception it raises
    is logged ("Unhandled Error"), not thrown at the caller."""
    log.callWithLogger(protocol_instance, protocol_instance.dataReceived, data)


class MemoryEndpoint:
    """An endpoint whose connections reach ``server_factory`` through iosim."""

    def __init__(self, server_factory, clock):
        self.server_factory = server_factory
        self.clock = clock
        self.server = None
        self.pump = None

    def connect(self, factory):
        client_protocol, self.server, self.pump = iosim.connectedServerAndClient(
            lambda: self.server_factory.buildProtocol(address()),
            lambda: factory.buildProtocol(address("127.0.0.1", 51424)),
            clock=self.clock,
        )
        return defer.succeed(client_protocol)


# -- item 1: AUTH is bounded, checked in the workers, counted -------------------------


class AuthKeyBoundTests(unittest.TestCase):
    """Item 1 (a): the key of an AUTH, in the core."""

    def test_8192_bit_key_is_refused_by_default(self):
        server, client_core = core_pair(JunkIdentity(8192))
        self.assertEqual(
            server.receive_data(client_core.data_to_send()),
            [ProtocolFailed("auth-failed", "RSA modulus of 8192 bits")],
        )
        self.assertEqual(
            json.loads(frames(server.data_to_send())[-1][1]),
            {"error": "auth-failed", "detail": "RSA modulus of 8192 bits"},
        )

    def test_4096_bits_is_the_default_bound(self):
        # Refused on its size, before its (junk) signature is looked at.
        server, client_core = core_pair(JunkIdentity(4104))
        self.assertEqual(
            server.receive_data(client_core.data_to_send()),
            [ProtocolFailed("auth-failed", "RSA modulus of 4104 bits")],
        )
        # Passes the bound, then fails on its signature.
        server, client_core = core_pair(JunkIdentity(4096))
        self.assertEqual(
            server.receive_data(client_core.data_to_send()),
            [ProtocolFailed("auth-failed", "bad AUTH signature")],
        )

    def test_8192_bit_key_is_accepted_when_allowed(self):
        identity = JunkIdentity(8192)
        server, client_core = core_pair(identity, client_key_max_bits=8192, defer_work=True)
        (decryption,) = server.receive_data(client_core.data_to_send())
        self.assertIsInstance(decryption, DecryptionNeeded)
        secret = decryption.private_key.decrypt_oaep(decryption.ciphertext, label=decryption.label)
        (verification,) = server.key_decrypted(secret)
        # Passed the bound: the signature goes to be verified.
        self.assertIsInstance(verification, VerificationNeeded)
        self.assertEqual(verification.public_key, identity.public_key())
        self.assertEqual(server.auth_verified(True), [HandshakeComplete(identity.fingerprint)])

    def test_8192_bit_key_allowed_is_verified_inline_without_workers(self):
        server, client_core = core_pair(JunkIdentity(8192), client_key_max_bits=8192)
        self.assertEqual(
            server.receive_data(client_core.data_to_send()),
            [ProtocolFailed("auth-failed", "bad AUTH signature")],
        )

    def test_public_exponent_must_be_65537(self):
        for e in (65539, 3, 2**255 + 1):
            server, client_core = core_pair(JunkIdentity(2048, e=e))
            self.assertEqual(
                server.receive_data(client_core.data_to_send()),
                [ProtocolFailed("auth-failed", "RSA public exponent is not 65537")],
                e,
            )

    def test_a_real_key_still_authenticates(self):
        server, client_core = core_pair(CLIENT_KEY)
        events = server.receive_data(client_core.data_to_send())
        self.assertEqual(events, [HandshakeComplete(CLIENT_FP)])


class AuthKeyBoundOptionTests(unittest.TestCase):
    """Item 1 (a) and (c): ``--client-key-max-bits`` and the config file,
    from the option to the wire."""

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        keys.save_private_key(SERVER_KEY, os.path.join(self.dir, "server.key"))
        self.conf = self.write(
            "[keyexchanged]\nprivate-key = server.key\nworkers = 0\nmessage = hi\n"
        )
        # The first ephemeral key is made at start: the vector one, at once.
        self.patch(rsa, "generate_private_key", lambda bits: EPHEMERAL_PRIVATE)

    def write(self, text, name="k.conf"):
        path = os.path.join(self.dir, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def factory(self, *argv):
        options = tap.Options(environ={})
        options.parseOptions(["--config", self.conf, *argv])
        # The ephemeral key's expiry comes from this clock, and the client
        # checks it against the real one.
        clock = Clock()
        clock.advance(time.time())
        return tap.makeService(options, reactor=clock).factory

    def auth(self, factory, identity):
        pair = Pair(clock=factory.reactor, factory=factory, identity=identity)
        pair.flush()
        return pair

    def assertAuthFailed(self, pair, detail):
        self.assertEqual(pair.application.data, b"")
        self.assertIsInstance(pair.application.reason.value, PeerError)
        self.assertEqual(
            (pair.application.reason.value.code, pair.application.reason.value.detail),
            ("auth-failed", detail),
        )

    def test_default_is_4096(self):
        factory = self.factory()
        self.assertEqual(factory.client_key_max_bits, 4096)
        self.assertEqual(factory.make_connection().client_key_max_bits, 4096)
        self.assertAuthFailed(self.auth(factory, JunkIdentity(8192)), "RSA modulus of 8192 bits")

    def test_command_line_8192_lets_the_key_through(self):
        factory = self.factory("--client-key-max-bits", "8192")
        self.assertEqual(factory.make_connection().client_key_max_bits, 8192)
        # Past the bound: refused only for its junk signature.
        self.assertAuthFailed(self.auth(factory, JunkIdentity(8192)), "bad AUTH signature")

    def test_config_file_value(self):
        self.conf = self.write(
            "[keyexchanged]\nprivate-key = server.key\nworkers = 0\nmessage = hi\n"
            "client-key-max-bits = 3072\n"
        )
        factory = self.factory()
        self.assertEqual(factory.client_key_max_bits, 3072)
        self.assertAuthFailed(self.auth(factory, JunkIdentity(4096)), "RSA modulus of 4096 bits")
        pair = self.auth(factory, CLIENT_KEY)  # 2048 bits: fine
        self.assertEqual(pair.application.data, b"hi")

    def test_a_real_key_within_the_bound_authenticates(self):
        pair = self.auth(self.factory(), CLIENT_KEY)
        self.assertEqual(pair.application.data, b"hi")

    BAD_VALUES = ("1024", "2047", "8193", "16384", "-4096", "4k", "4096.0", "")

    def test_bad_values_in_the_config_file(self):
        for value in self.BAD_VALUES:
            path = self.write(f"[keyexchanged]\nclient-key-max-bits = {value}\n", "bad.conf")
            with self.assertRaises(config.ConfigError) as caught:
                config.read_config(path)
            self.assertEqual(
                str(caught.exception),
                f"{path}, line 2: client-key-max-bits = {value!r}: "
                "must be a number of bits from 2048 to 8192",
            )

    def test_bad_values_on_the_command_line(self):
        for value in self.BAD_VALUES:
            with self.assertRaises(usage.UsageError) as caught:
                self.factory(f"--client-key-max-bits={value}")
            self.assertEqual(
                str(caught.exception),
                f"--client-key-max-bits: client-key-max-bits = {value!r}: "
                "must be a number of bits from 2048 to 8192",
            )

    def test_bounds_are_accepted(self):
        for value in ("2048", "8192", " 4096 "):
            path = self.write(f"[keyexchanged]\nclient-key-max-bits = {value}\n", "ok.conf")
            self.assertEqual(config.read_config(path)["client-key-max-bits"], int(value))


class AuthInWorkersTests(unittest.TestCase):
    """Item 1 (b): through the Twisted layer, an AUTH nobody asked for is
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


# -- item 5: a peer's JSON cannot raise; our ERROR fits ----------------------------------


BAD_TYPES = ([], ["busy"], {}, {"error": "busy"}, 5, 1.5, None, True)
#: Characters that JSON escapes into 6 or 12 bytes, or that must not
#: reach a log as they are.
WIDE = ("€", "\U0001f600", "\u2028", "\x00", '"', "\\", "\ud800")


class PeerErrorCoreTests(unittest.TestCase):
    """Item 5, the cores: every member of a peer's ERROR is type-checked."""

    def cores(self):
        server = ServerConnection(IDENTITY)
        server.start()
        server.data_to_send()
        return server, rev1_client()

    def test_error_member_of_any_other_type_is_unknown(self):
        for code in BAD_TYPES:
            for core in self.cores():
                payload = json.dumps({"error": code, "detail": "why"}).encode()
                self.assertEqual(
                    core.receive_data(encode_frame("ERROR", payload)),
                    [ErrorReceived("unknown", "why")],
                    code,
                )
                self.assertTrue(core.closed)
                self.assertEqual(core.data_to_send(), b"")  # no ERROR for an ERROR

    def test_detail_that_is_not_a_string(self):
        for detail in BAD_TYPES:
            for core in self.cores():
                payload = json.dumps({"error": "busy", "detail": detail}).encode()
                self.assertEqual(
                    core.receive_data(encode_frame("ERROR", payload)),
                    [ErrorReceived("busy", "(detail is not a string)")],
                    detail,
                )

    def test_detail_missing_or_unprintable(self):
        self.assertEqual(parse_error_payload(b'{"error": "busy"}'), ("busy", ""))
        self.assertEqual(
            parse_error_payload(json.dumps({"error": "timeout", "detail": "a\nb\x1b[2J"}).encode()),
            ("timeout", "a?b?[2J"),
        )
        self.assertEqual(
            parse_error_payload(b"[1, 2]"), ("malformed-frame", "unreadable ERROR frame")
        )

    def test_our_error_fits_whatever_the_detail(self):
        for character in WIDE:
            for length in (1, 100, 200, 300, 5000):
                payload = error_payload("unsupported-protocol", character * length)
                self.assertLessEqual(len(payload), MAX_PAYLOAD["ERROR"])
                payload.decode("ascii")
                obj = json.loads(payload)
                self.assertEqual(obj["error"], "unsupported-protocol")
                self.assertTrue(obj["detail"])
                encode_frame("ERROR", payload)  # does not raise

    def hello(self, protocol_name):
        return encode_frame("HELLO", json.dumps({"protocol": protocol_name}).encode())

    def test_non_ascii_protocol_in_hello(self):
        for character in ("€", "\U0001f600"):
            name = character * 300
            client_core = rev1_client()
            self.assertEqual(
                client_core.receive_data(self.hello(name)),
                [ProtocolFailed("unsupported-protocol", f"protocol {name!r} is not kx/1")],
            )
            ((verb, payload),) = frames(client_core.data_to_send())
            self.assertEqual(verb, "ERROR")
            self.assertLessEqual(len(payload), 1024)
            obj = json.loads(payload)
            self.assertEqual(set(obj), {"error", "detail"})
            self.assertEqual(obj["error"], "unsupported-protocol")
            self.assertTrue(obj["detail"].startswith("protocol '" + character * 10))
            # What the server makes of it.
            code, _ = parse_error_payload(payload)
            self.assertEqual(code, "unsupported-protocol")

    def test_every_hello_member_of_every_type(self):
        """Whatever type a HELLO member has, the client answers ERROR and
        raises nothing."""
        good = json.loads(IDENTITY.hello_payload(b"\0" * 32))
        # What a client without forward secrecy takes: no chain, no ephemeral key.
        valid = [("certificates", []), ("ephemeral", None)]
        for member in ("protocol", "key", "nonce", "certificates", "ephemeral"):
            for value in (None, True, 5, 1.5, [], {}, "x", [5], [None], ["no base64!"], {"key": 5}):
                hello = dict(good, **{member: value})
                events = rev1_client().receive_data(
                    encode_frame("HELLO", json.dumps(hello).encode())
                )
                expected = ServerKeyReceived if (member, value) in valid else ProtocolFailed
                self.assertEqual([type(e) for e in events], [expected], (member, value))

    def test_every_auth_member_of_every_type(self):
        for member in ("key", "signature"):
            for value in (*BAD_TYPES, "x", "AAAA"):
                plaintext = {"key": "AAAA", "signature": "AAAA", member: value}
                self.assertEqual(
                    self.auth_with(json.dumps(plaintext).encode()),
                    [ProtocolFailed("auth-failed", "malformed AUTH")],
                    (member, value),
                )
        for plaintext in (b"[]", b"5", b"null", b'"key"', b"{"):
            self.assertEqual(
                self.auth_with(plaintext),
                [ProtocolFailed("auth-failed", "AUTH is not a JSON object")],
            )

    def auth_with(self, plaintext):
        server = ServerConnection(IDENTITY)
        server.start()
        # The connection has slots: patch the class for this one call.
        self.patch(type(rev1_client()), "auth_plaintext", lambda _self: plaintext)
        client_core = rev1_client(identity=CLIENT_KEY)
        client_core.receive_data(server.data_to_send())
        client_core.accept_key()
        return server.receive_data(client_core.data_to_send())


class PeerErrorChannelTests(unittest.TestCase):
    """Item 5, the Twisted layer: nothing a peer says reaches the log as a
    traceback (one per connection was a log flood)."""

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


# -- item 7: the client's key is known when the application starts ----------------------


class PeerFingerprintAtStartTests(unittest.TestCase):
    """Item 7: AUTH optional but given: the application knows who it is
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


# -- item 10: the server learns only that we refused --------------------------------------


class TrustRefusalTests(unittest.TestCase):
    """Item 10: what a refused server receives, and what the user reads."""

    def setUp(self):
        self.known_hosts = os.path.join(os.path.abspath(self.mktemp()), "known_hosts")
        os.makedirs(os.path.dirname(self.known_hosts))

    def write_known_hosts(self, text):
        with open(self.known_hosts, "w") as f:
            f.write(text)

    def refused_on_the_wire(self, policy):
        """The one frame the client sent, decoded, and what the server made of it."""
        sent = client_writes(self)
        pair = Pair(trust=policy)
        pair.flush()
        failure = self.failureResultOf(pair.handshake, protocol.HandshakeFailed)
        ((verb, payload),) = frames(b"".join(sent))
        self.assertEqual(verb, "ERROR")
        peer = pair.server._reason.value
        self.assertIsInstance(peer, PeerError)
        return json.loads(payload), (peer.code, peer.detail), failure.value.reason.value

    def connect(self, policy):
        clock = Clock()
        factory = server_factory(clock=clock)
        endpoint = MemoryEndpoint(factory, clock)
        output, errors = io.BytesIO(), io.StringIO()
        done = client.run_connect(
            clock, "server.example", 51424, policy,
            output=output, errors=errors, endpoint=endpoint,
        )  # fmt: skip
        endpoint.pump.flush()
        self.assertEqual(self.successResultOf(done), client.EXIT_UNTRUSTED)
        self.assertEqual(output.getvalue(), b"")
        server_saw = endpoint.server._reason.value
        self.assertEqual((server_saw.code, server_saw.detail), tuple(GENERIC_REFUSAL.values()))
        return errors.getvalue()

    def test_pinned_fingerprint_mismatch(self):
        sent, server_saw, reason = self.refused_on_the_wire(PinnedKey(OTHER_FP))
        self.assertEqual(sent, GENERIC_REFUSAL)
        self.assertEqual(server_saw, tuple(GENERIC_REFUSAL.values()))
        # The full story stays here.
        self.assertIsInstance(reason, UntrustedKey)
        self.assertEqual(
            str(reason),
            f"the server's key {SERVER_FP} does not match the pinned fingerprint {OTHER_FP}",
        )
        self.assertEqual(
            self.connect(PinnedKey(OTHER_FP)),
            f"keyexchange: error: untrusted server key: the server's key {SERVER_FP} does "
            f"not match the pinned fingerprint {OTHER_FP}\n",
        )

    def test_known_hosts_changed_key(self):
        self.write_known_hosts(
            f"# mine\nexample:51424 {OTHER_FP}\nserver.example:51424 {OTHER_FP}\n"
        )
        policy = KnownHostsTrust(self.known_hosts, 51424, report=self.fail)
        sent, server_saw, reason = self.refused_on_the_wire(policy)
        self.assertEqual(sent, GENERIC_REFUSAL)
        self.assertEqual(server_saw, tuple(GENERIC_REFUSAL.values()))
        self.assertIn("line 2", str(reason))
        stderr = self.connect(policy)
        lines = stderr.splitlines()
        self.assertEqual(
            lines[-1],
            f"keyexchange: error: untrusted server key: the key of server.example:51424 has "
            f"changed: {SERVER_FP} is not the known {OTHER_FP} (known hosts, line 3)",
        )
        explanation = "\n".join(lines[:-1])
        self.assertIn(f"{self.known_hosts}, line 3", explanation)
        self.assertIn(SERVER_FP, explanation)
        self.assertIn(OTHER_FP, explanation)

    def test_unknown_host_and_no_terminal(self):
        self.write_known_hosts("")
        policy = KnownHostsTrust(self.known_hosts, 51424, ask=None, report=self.fail)
        sent, _, reason = self.refused_on_the_wire(policy)
        self.assertEqual(sent, GENERIC_REFUSAL)
        self.assertIn("no terminal", str(reason))
        stderr = self.connect(policy)
        self.assertIn("there is no terminal to ask", stderr)
        self.assertIn(f"--fingerprint {SERVER_FP}", stderr)

    def test_a_policy_that_breaks(self):
        class Broken:
            def verify(self, server_name, offer):
                raise OSError(f"/secret/path/{offer.fingerprint} unreadable")

        sent, _, reason = self.refused_on_the_wire(Broken())
        self.assertEqual(sent, GENERIC_REFUSAL)
        self.assertIn("/secret/path/", str(reason))


# -- item 11: the client's idle timeout ----------------------------------------------------


class ClientIdleTimeoutTests(unittest.TestCase):
    """Item 11: a server that goes silent after the handshake."""

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


class IdleTimeoutOptionTests(CommandTestCase):
    """Item 11: ``--idle-timeout`` of connect and tunnel."""

    def setUp(self):
        super().setUp()
        from twisted.internet import task

        from keyexchanged import tunnel

        self.sessions = []
        self.tunnels = []

        def run_connect(reactor, host, port, policy, **options):
            self.sessions.append(options)
            return defer.succeed(0)

        def run_tunnel(reactor, listen, host, port, policy, identity, report, **options):
            self.tunnels.append(options)
            return defer.succeed(None)

        self.patch(client, "run_connect", run_connect)
        self.patch(tunnel, "run_tunnel", run_tunnel)
        self.patch(task, "react", lambda main: main(None))

    def connect(self, *argv):
        return self.run_main("connect", "h", "--insecure", "--known-hosts", self.path("kh"), *argv)

    def tunnel(self, *argv):
        return self.run_main(
            "tunnel", "--listen", "tcp:0", "--server", "h", "--insecure",
            "--known-hosts", self.path("kh"), *argv,
        )  # fmt: skip

    def test_connect_default_and_value(self):
        self.assertEqual(self.connect("--send", "x")[0], 0)
        self.assertEqual(self.connect("--send", "x", "--idle-timeout", "12.5")[0], 0)
        self.assertEqual([s["idle_timeout"] for s in self.sessions], [300.0, 12.5])

    def test_tunnel_accepts_it(self):
        self.assertEqual(self.tunnel()[0], 0)
        self.assertEqual(self.tunnel("--idle-timeout", "45")[0], 0)
        self.assertEqual([t["idle_timeout"] for t in self.tunnels], [300.0, 45.0])

    def test_zero_negative_and_nan_are_usage_errors(self):
        for command in (self.connect, self.tunnel):
            for value in ("0", "-1", "nan", "-0"):
                status, out, err = command(f"--idle-timeout={value}")
                self.assertEqual((status, out), (cli.EXIT_USAGE, ""), err)
                self.assertTrue(
                    err.endswith(
                        "error: argument --idle-timeout: must be a number of seconds "
                        "greater than 0\n"
                    ),
                    err,
                )
        self.assertEqual((self.sessions, self.tunnels), ([], []))

    def test_not_a_number_is_a_usage_error(self):
        status, out, err = self.connect("--idle-timeout", "soon")
        self.assertEqual((status, out), (cli.EXIT_USAGE, ""))
        self.assertIn("argument --idle-timeout: must be a number of seconds greater than 0", err)

    def test_help_documents_it_and_exit_status_4(self):
        status, out, _ = self.run_main("connect", "--help")
        self.assertEqual(status, 0)
        text = " ".join(out.split())
        self.assertIn(
            "--idle-timeout SECONDS end a session on which nothing has passed either "
            "way for SECONDS: a server gone silent (default 300; exit status 4)",
            text,
        )
        _, out, _ = self.run_main("connect", "--help")
        self.assertIn("4 connect: connection or protocol failure", " ".join(out.split()))
        self.assertIn("--idle-timeout", client.__doc__)
