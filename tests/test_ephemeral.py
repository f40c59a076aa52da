"""Ephemeral keys on the server's clock (spec §10.2): rotation, retirement,
destruction, failures — and that a recorded session cannot be decrypted
with anything the server still holds afterwards."""

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from keyexchanged import ephemeral, keys, rsa, schedule
from keyexchanged.applications import MessageFactory
from keyexchanged.framing import encode_frame
from keyexchanged.handshake import ClientConnection, ServerKeyReceived
from keyexchanged.protocol import SecureChannelFactory
from keyexchanged.workers import InlineWork
from tests.fixtures import IDENTITY, SERVER_KEY, address, assert_every_case, frames

INTERVAL = 60
TIMEOUT = 10


class KeyMill:
    """Work that "generates" keys from a short list made once (generating
    a key per rotation would make these tests slow), and fails on demand."""

    _keys = None

    def __init__(self):
        if KeyMill._keys is None:
            KeyMill._keys = [rsa.generate_private_key(2048) for _ in range(4)]
        self.made = 0
        self.fail_next = 0

    def generate(self, bits):
        if self.fail_next:
            self.fail_next -= 1
            return defer.fail(RuntimeError("worker died"))
        key = self._keys[self.made % len(self._keys)]
        self.made += 1
        return defer.succeed((key.n, key.e, key.d, key.p, key.q))

    def sign(self, private_key, message, salt_length):
        return defer.succeed(private_key.sign_pss(message, salt_length=salt_length))


def manager(clock, work=None, interval=INTERVAL):
    keys_ = ephemeral.EphemeralKeys(
        SERVER_KEY,
        work=work or KeyMill(),
        reactor=clock,
        interval=interval,
        bits=2048,
        handshake_timeout=TIMEOUT,
    )
    # The first key as a daemon makes it, before listening: here from the mill.
    keys_.current = keys_._make().result
    keys_.start()
    return keys_


class RotationTests(unittest.TestCase):
    def test_a_new_key_every_interval_signed_by_the_long_term_key(self):
        clock = Clock()
        clock.advance(1_800_000_000)
        keys_ = manager(clock)
        first = keys_.current
        self.assertEqual(first.expires, 1_800_000_000 + INTERVAL + TIMEOUT + ephemeral.EXPIRY_SLACK)
        message = schedule.ephemeral_message(IDENTITY.der, first.expires, first.der)
        self.assertTrue(
            SERVER_KEY.public_key().verify_pss(message, first.signature, salt_length=32)
        )
        clock.advance(INTERVAL)
        self.assertIsNot(keys_.current, first)
        self.assertEqual(keys_.rotations, 1)
        # Nobody was offered the first: it is gone at once.
        self.assertIsNone(first.private_key)
        self.assertEqual(keys_.held(), [keys_.current])

    def test_expires_is_never_more_than_a_day_ahead(self):
        clock = Clock()
        keys_ = manager(clock, interval=86400)
        self.assertEqual(keys_.current.expires, ephemeral.MAX_SIGNED_AHEAD)

    def test_interval_and_bits_bounds(self):
        def check(case):
            options, message = case
            error = self.assertRaises(
                ValueError,
                ephemeral.EphemeralKeys,
                SERVER_KEY,
                work=KeyMill(),
                reactor=Clock(),
                **options,
            )
            self.assertEqual(str(error), message)

        cases = [
            ({"interval": 9}, "ephemeral interval must be 10 to 86400 seconds"),
            ({"interval": 86401}, "ephemeral interval must be 10 to 86400 seconds"),
            ({"bits": 1024}, "ephemeral keys have at least 2048 bits"),
        ]
        assert_every_case(self, cases, check)

    def test_a_failed_rotation_keeps_the_key_and_retries(self):
        clock = Clock()
        mill = KeyMill()
        keys_ = manager(clock, work=mill)
        first = keys_.current
        mill.fail_next = 2
        clock.advance(INTERVAL)
        self.assertIs(keys_.current, first)
        self.assertIsNotNone(first.private_key)
        clock.advance(keys_.RETRY_DELAY)
        self.assertIs(keys_.current, first)
        clock.advance(keys_.RETRY_DELAY)
        self.assertIsNot(keys_.current, first)
        self.assertEqual(keys_.failures, 2)
        self.assertEqual(len(self.flushLoggedErrors()), 0)  # logged, not raised

    def test_stop_destroys_everything(self):
        clock = Clock()
        keys_ = manager(clock)
        first = keys_.current
        first.acquire()
        clock.advance(INTERVAL)
        keys_.stop()
        self.assertEqual(keys_.held(), [])
        self.assertIsNone(first.private_key)
        self.assertEqual(clock.getDelayedCalls(), [])


class Session:
    """A connection to ``factory`` driven by hand: HELLO now, KEY when told."""

    def __init__(self, factory):
        from twisted.internet.testing import StringTransport

        clock = factory.reactor
        self.transport = StringTransport(peerAddress=address())
        self.proto = factory.buildProtocol(address())
        self.proto.makeConnection(self.transport)
        self.hello = frames(self.transport.value())[0][1]
        self.transport.clear()
        # The client's clock is the server's, for the ephemeral key's expiry.
        self.client = ClientConnection(clock=clock.seconds)
        (event,) = self.client.receive_data(encode_frame("HELLO", self.hello))
        assert isinstance(event, ServerKeyReceived)

    def send_key(self):
        self.client.accept_key()
        self.key = frames(self.client.data_to_send())
        self.proto.dataReceived(b"".join(encode_frame(*f) for f in self.key))
        return self.client.receive_data(self.transport.value())


class RetirementTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.keys = manager(self.clock)
        self.factory = SecureChannelFactory(
            MessageFactory(b"m"),
            IDENTITY,
            reactor=self.clock,
            ephemeral_keys=self.keys,
            handshake_timeout=TIMEOUT,
        )

    def offered_just_before_a_rotation(self):
        """A connection offered the current key 5 s before it retires."""
        self.clock.advance(INTERVAL - 5)
        session = Session(self.factory)
        offered = self.keys.current
        self.clock.advance(5)
        return session, offered

    def test_a_hello_offered_before_a_rotation_completes_after_it(self):
        session, offered = self.offered_just_before_a_rotation()
        self.assertIsNot(self.keys.current, offered)
        # Still held: a connection that was offered it waits for its KEY.
        self.assertIn(offered, self.keys.held())
        events = session.send_key()
        self.assertEqual(type(events[0]).__name__, "HandshakeComplete")
        # Its KEY is in: nobody waits any more, and the key is gone at once.
        self.assertIsNone(offered.private_key)
        self.assertNotIn(offered, self.keys.held())

    def test_a_retired_key_is_gone_one_handshake_timeout_later(self):
        session, offered = self.offered_just_before_a_rotation()
        self.clock.advance(TIMEOUT - 5 - 0.001)
        self.assertIn(offered, self.keys.held())
        self.clock.advance(0.001)
        # The connection timed out and the key was dropped with it.
        self.assertTrue(session.transport.disconnecting)
        self.assertIsNone(offered.private_key)
        self.assertEqual(self.keys.held(), [self.keys.current])

    def test_dropped_at_the_latest_one_handshake_timeout_after_retiring(self):
        # A factory without its own handshake timer: the key still goes.
        self.factory.handshake_timeout = 0
        session, offered = self.offered_just_before_a_rotation()
        self.clock.advance(TIMEOUT - 0.001)
        self.assertIsNotNone(offered.private_key)
        self.clock.advance(0.001)
        self.assertIsNone(offered.private_key)
        # A KEY that comes later still gets its confirmation, and nothing
        # can decrypt it: implicit rejection, the client cannot open it.
        events = session.send_key()
        self.assertEqual(
            [(type(e).__name__, getattr(e, "code", None)) for e in events],
            [("ProtocolFailed", "bad-record")],
        )

    def test_a_closed_connection_lets_go_of_its_key(self):
        from twisted.internet import error
        from twisted.python.failure import Failure

        session, offered = self.offered_just_before_a_rotation()
        self.assertIn(offered, self.keys.held())
        session.proto.connectionLost(Failure(error.ConnectionDone()))
        self.assertIsNone(offered.private_key)

    def test_a_recording_cannot_be_decrypted_with_anything_the_server_holds(self):
        """Record a session's HELLO and KEY, let the window pass, then try
        every private key the server's objects still hold on the KEY."""
        session = Session(self.factory)
        offered = self.keys.current
        session.send_key()
        hello, key = session.hello, session.key[0][1]
        # While it is current, the offered key is what opens the recording.
        self.assertEqual(len(offered.private_key.decrypt_oaep(key, label=hello)), 32)
        self.clock.advance(INTERVAL)
        self.clock.advance(TIMEOUT)
        held = [k.private_key for k in self.keys.held()]
        held.append(self.factory.identity.private_key)
        for retired in self.keys.retired:
            self.assertIsNone(retired.private_key)
        self.assertEqual(len(held), 2)  # the newest ephemeral key and the long-term key
        assert_every_case(
            self,
            held,
            lambda private_key: self.assertRaises(
                rsa.DecryptionError, private_key.decrypt_oaep, key, label=hello
            ),
            label=keys.fingerprint,
        )


class InlineWorkTests(unittest.TestCase):
    def test_generate_without_threads_for_a_clock(self):
        numbers = InlineWork(threaded=False).generate(2048).result
        key = rsa.PrivateKey(*numbers)
        self.assertEqual(key.n.bit_length(), 2048)
        self.assertEqual(keys.fingerprint(key)[:7], "SHA256:")
