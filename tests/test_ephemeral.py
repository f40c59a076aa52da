"""Ephemeral keys on the server's clock (spec §10.2): rotation, retirement,
destruction, failures — and that a recorded session cannot be decrypted
with anything the server still holds afterwards."""

import base64
import time

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent
from twisted.trial import unittest

from keyexchanged import ephemeral, keys, mlkem, rsa, schedule
from keyexchanged.applications import MessageFactory
from keyexchanged.framing import encode_frame
from keyexchanged.handshake import ClientConnection, ServerKeyReceived
from keyexchanged.protocol import SecureChannelFactory
from keyexchanged.workers import InlineWork
from tests.fixtures import CLIENT_KEY, IDENTITY, SERVER_KEY, address, assert_every_case, frames

INTERVAL = 60
TIMEOUT = 10


class KeyMill:
    """Work that "generates" keys from a short list made once (generating
    a key per rotation would make these tests slow), and fails on demand."""

    _keys = None

    def __init__(self):
        if KeyMill._keys is None:
            KeyMill._keys = [rsa.generate_multi_prime_key(2048) for _ in range(4)]
        self.made = 0
        self.fail_next = 0
        self.asked = []
        self.forgotten = []

    def generate(self, bits, primes):
        self.asked.append((bits, primes))
        if self.fail_next:
            self.fail_next -= 1
            return defer.fail(RuntimeError("worker died"))
        key = self._keys[self.made % len(self._keys)]
        self.made += 1
        return defer.succeed((key.n, key.e, key.d, key.primes))

    def sign(self, private_key, message, salt_length):
        return defer.succeed(private_key.sign_pss(message, salt_length=salt_length))

    def forget(self, private_key):
        self.forgotten.append(private_key)


def manager(clock, work=None, interval=INTERVAL, post_quantum=False):
    keys_ = ephemeral.EphemeralKeys(
        SERVER_KEY,
        work=work or KeyMill(),
        reactor=clock,
        interval=interval,
        bits=2048,
        handshake_timeout=TIMEOUT,
        # Revision 2's bounds (a day-long interval) unless asked; see
        # PostQuantumTests below.
        post_quantum=post_quantum,
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

    def test_rotation_asks_for_a_three_prime_key(self):
        clock = Clock()
        mill = KeyMill()
        keys_ = manager(clock, work=mill)
        clock.advance(INTERVAL)
        self.assertEqual(mill.asked, [(2048, 3), (2048, 3)])
        self.assertIs(type(keys_.current.private_key), rsa.MultiPrimePrivateKey)
        self.assertEqual(len(keys_.current.private_key.primes), 3)

    def test_a_dropped_key_is_forgotten_by_the_workers(self):
        """Whenever the daemon drops an ephemeral key (retired with nobody
        waiting, or at stop), the work that holds keys is told to drop it."""
        clock, mill = Clock(), KeyMill()
        keys_ = manager(clock, work=mill)
        first = keys_.current.private_key
        clock.advance(INTERVAL)
        self.assertEqual(mill.forgotten, [first])
        second = keys_.current.private_key
        keys_.stop()
        self.assertEqual(mill.forgotten, [first, second])

    def test_the_first_key_has_three_primes_and_an_ordinary_public_half(self):
        """``prime`` (the key made before listening) is multi-prime too, and
        what HELLO offers of it is a plain (n, e) public key."""
        keys_ = ephemeral.EphemeralKeys(
            SERVER_KEY, work=KeyMill(), reactor=Clock(), bits=2048, handshake_timeout=TIMEOUT
        )
        keys_.prime()
        key = keys_.current
        self.assertEqual(len(key.private_key.primes), 3)
        self.assertEqual(key.bits, 2048)
        offered = keys.public_key_from_der(key.der)
        self.assertEqual((offered.n, offered.e), (key.private_key.n, key.private_key.e))
        secret = key.private_key.decrypt_oaep(offered.encrypt_oaep(b"k" * 32))
        self.assertEqual(secret, b"k" * 32)

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


class HeldSignatures(KeyMill):
    """A mill whose signatures, once ``hold`` is set, wait for :meth:`release`."""

    hold = False

    def __init__(self):
        super().__init__()
        self.pending = []

    def sign(self, private_key, message, salt_length):
        if not self.hold:
            return super().sign(private_key, message, salt_length)
        waiting = defer.Deferred()
        self.pending.append((waiting, private_key.sign_pss(message, salt_length=salt_length)))
        return waiting

    def release(self):
        pending, self.pending = self.pending, []
        for waiting, signature in pending:
            waiting.callback(signature)


class ReloadDuringRotationTests(unittest.TestCase):
    def test_a_key_signed_by_the_replaced_long_term_key_is_never_offered(self):
        clock = Clock()
        work = HeldSignatures()
        keys_ = manager(clock, work)
        work.hold = True
        clock.advance(INTERVAL)  # a rotation: its key waits for its signature
        self.assertEqual(len(work.pending), 1)
        keys_.rekey(CLIENT_KEY)  # a reload with another long-term key
        signed_by_the_new_key = keys_.current
        work.hold = False
        work.release()  # the old key's signature arrives late
        current = keys_.current
        message = schedule.ephemeral_message(
            keys.public_key_to_der(CLIENT_KEY), current.expires, current.der
        )
        self.assertTrue(
            CLIENT_KEY.public_key().verify_pss(message, current.signature, salt_length=32)
        )
        self.assertIs(current, signed_by_the_new_key)
        self.assertEqual(keys_.held(), [current])  # the late key's private half is gone
        # ... and rotations go on, under the new key.
        clock.advance(INTERVAL)
        self.assertIsNot(keys_.current, current)
        message = schedule.ephemeral_message(
            keys.public_key_to_der(CLIENT_KEY), keys_.current.expires, keys_.current.der
        )
        self.assertTrue(
            CLIENT_KEY.public_key().verify_pss(message, keys_.current.signature, salt_length=32)
        )


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
        key = rsa.PrivateKey.from_primes(*numbers)
        self.assertIs(type(key), rsa.PrivateKey)
        self.assertEqual(key.n.bit_length(), 2048)
        self.assertEqual(keys.fingerprint(key)[:7], "SHA256:")


class PostQuantumTests(unittest.TestCase):
    """Revision 3 (§12.2): an ML-KEM-768 key with every ephemeral key, signed
    under the revision-3 context, rotated and destroyed with it."""

    def manager(self, clock):
        return manager(clock, post_quantum=True)

    def test_each_key_has_an_mlkem_key_signed_beside_it(self):
        keys_ = self.manager(Clock())
        first = keys_.current
        self.assertEqual(len(first.mlkem_key.ek), mlkem.ENCAPSULATION_KEY_LENGTH)
        self.assertEqual(base64.b64decode(first.mlkem_member["key"]), first.mlkem_key.ek)
        message = schedule.hybrid_message(
            IDENTITY.der, first.expires, first.der, first.mlkem_key.ek
        )
        signature = base64.b64decode(first.mlkem_member["signature"])
        self.assertTrue(SERVER_KEY.public_key().verify_pss(message, signature, salt_length=32))
        # The revision-2 signature is still there, unchanged in meaning.
        self.assertTrue(
            SERVER_KEY.public_key().verify_pss(
                schedule.ephemeral_message(IDENTITY.der, first.expires, first.der),
                first.signature,
                salt_length=32,
            )
        )

    def test_rotated_and_destroyed_with_the_rsa_key(self):
        clock = Clock()
        keys_ = self.manager(clock)
        first = keys_.current
        first_ek = first.mlkem_key.ek
        clock.advance(INTERVAL)
        self.assertNotEqual(keys_.current.mlkem_key.ek, first_ek)
        self.assertIsNone(first.private_key)
        self.assertIsNone(first.mlkem_key)
        keys_.stop()

    def test_expires_within_thirty_minutes(self):
        clock = Clock()
        keys_ = self.manager(clock)
        self.assertLessEqual(keys_.current.expires, ephemeral.MAX_SIGNED_AHEAD_POST_QUANTUM)

    def test_interval_bounded_by_the_signing_limit(self):
        longest = ephemeral.max_interval(TIMEOUT, post_quantum=True)
        self.assertEqual(longest, 1800 - TIMEOUT - ephemeral.EXPIRY_SLACK)
        error = self.assertRaises(
            ValueError,
            ephemeral.EphemeralKeys,
            SERVER_KEY,
            work=KeyMill(),
            reactor=Clock(),
            interval=longest + 1,
            handshake_timeout=TIMEOUT,
            post_quantum=True,
        )
        self.assertIn(f"at most {longest} seconds", str(error))
        ephemeral.EphemeralKeys(
            SERVER_KEY, work=KeyMill(), reactor=Clock(), interval=longest + 1, post_quantum=False
        )

    def test_prime_makes_both(self):
        keys_ = ephemeral.EphemeralKeys(
            SERVER_KEY, work=KeyMill(), reactor=Clock(), bits=2048, post_quantum=True
        )
        keys_.prime()
        self.assertIsNotNone(keys_.current.mlkem_key)
        keys_.stop()
        self.assertEqual(keys_.held(), [])


class LogTests(unittest.TestCase):
    def test_a_new_key_is_logged_with_its_expiry_as_a_date(self):
        logged = []
        clock = Clock()
        clock.advance(1_800_000_000)
        keys_ = manager(clock)
        keys_.log = Logger(observer=logged.append)
        clock.advance(INTERVAL)
        (event,) = logged
        expires = 1_800_000_000 + 2 * INTERVAL + TIMEOUT + ephemeral.EXPIRY_SLACK
        self.assertEqual(event["expires"], expires)
        self.assertIn(
            "signed until " + time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(expires)),
            formatEvent(event),
        )
        self.assertNotIn(str(expires), formatEvent(event))
