"""Private-key work away from the reactor: the core's DecryptionNeeded and
VerificationNeeded steps, the channel that waits for them, and the real
worker processes."""

import os
import signal

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from keyexchanged import rsa, schedule
from keyexchanged.framing import encode_frame
from keyexchanged.handshake import (
    DataReceived,
    DecryptionNeeded,
    HandshakeComplete,
    ProtocolFailed,
    ServerConnection,
    VerificationNeeded,
)
from keyexchanged.protocol import HandshakeFailed
from keyexchanged.workers import WorkerPool, default_workers
from tests.fixtures import (
    CLIENT_KEY,
    IDENTITY,
    MESSAGE,
    SERVER_KEY,
    FakePool,
    Pair,
    plant_module,
    replay,
    server_factory,
)
from tests.vectors import RAW, hexbytes, record

KEY_FRAME = encode_frame("KEY", hexbytes("key_payload"))


def deferred_server(**options):
    server = ServerConnection(
        IDENTITY,
        random=replay(hexbytes("nonce"), b"\0" * 32),
        defer_work=True,
        **options,
    )
    server.start()
    server.data_to_send()
    return server


class CoreTests(unittest.TestCase):
    """ServerConnection(defer_work=True), without I/O."""

    def test_vector_key_and_auth_through_the_deferred_path(self):
        server = deferred_server(authorized_keys={RAW["client_fingerprint"]})
        (event,) = server.receive_data(KEY_FRAME)
        self.assertIsInstance(event, DecryptionNeeded)
        self.assertIs(event.private_key, SERVER_KEY.__class__ and IDENTITY.private_key)
        self.assertEqual(event.label, hexbytes("hello_payload"))
        secret = SERVER_KEY.decrypt_oaep(event.ciphertext, label=event.label)
        self.assertEqual(secret, hexbytes("secret"))
        # The client's AUTH and MSG arrive before the answer: they wait.
        self.assertEqual(
            server.receive_data(
                encode_frame("AUTH", record("client_auth_seq0"))
                + encode_frame("MSG", record("client_msg_seq1"))
            ),
            [],
        )
        # The AUTH signature, on a key the client chose, is work for elsewhere too.
        (event,) = server.key_decrypted(secret)
        self.assertEqual(server.transcript_hash, hexbytes("transcript_hash"))
        self.assertIsInstance(event, VerificationNeeded)
        self.assertEqual(event.message, schedule.auth_message(hexbytes("transcript_hash")))
        self.assertTrue(event.public_key.verify_pss(event.message, event.signature, salt_length=32))
        events = server.auth_verified(True)
        self.assertEqual(
            events,
            [
                HandshakeComplete(RAW["client_fingerprint"]),
                DataReceived(hexbytes("client_message")),
            ],
        )
        # Once complete, the server keeps only what its records need.
        self.assertIsNone(server.transcript_hash)

    def test_a_failed_verification_is_auth_failed(self):
        server = deferred_server()
        server.receive_data(KEY_FRAME)
        server.key_decrypted(hexbytes("secret"))
        (event,) = server.receive_data(encode_frame("AUTH", record("client_auth_seq0")))
        self.assertIsInstance(event, VerificationNeeded)
        self.assertEqual(
            server.auth_verified(False), [ProtocolFailed("auth-failed", "bad AUTH signature")]
        )

    def test_failed_decoding_is_implicit_rejection(self):
        """``None`` from the worker: the same events and bytes as a good
        KEY, under keys the client cannot have."""
        good, bad = deferred_server(), deferred_server()
        good.receive_data(KEY_FRAME)
        bad.receive_data(KEY_FRAME)
        good_events = good.key_decrypted(hexbytes("secret"))
        bad_events = bad.key_decrypted(None)
        self.assertEqual(good_events, bad_events)
        sent_good, sent_bad = good.data_to_send(), bad.data_to_send()
        self.assertEqual(len(sent_good), len(sent_bad))
        self.assertNotEqual(sent_good, sent_bad)

    def test_too_many_waiting_records(self):
        server = deferred_server()
        server.receive_data(KEY_FRAME)
        limit = ServerConnection.MAX_WAITING_RECORDS
        self.assertEqual(server.receive_data(encode_frame("MSG", b"x" * 16) * limit), [])
        (event,) = server.receive_data(encode_frame("MSG", b"x" * 16))
        self.assertIsInstance(event, ProtocolFailed)
        self.assertEqual(event.code, "unexpected-frame")

    def test_waiting_records_are_checked_after_the_key(self):
        server = deferred_server()
        server.receive_data(KEY_FRAME)
        server.receive_data(encode_frame("MSG", b"not a record"))
        events = server.key_decrypted(hexbytes("secret"))
        # A record that does not open never starts the application.
        self.assertEqual([type(e) for e in events], [ProtocolFailed])
        self.assertEqual(events[0].code, "bad-record")

    def test_answer_after_failure_is_ignored(self):
        server = deferred_server()
        server.receive_data(KEY_FRAME)
        server.fail("timeout", "handshake took too long")
        self.assertEqual(server.key_decrypted(hexbytes("secret")), [])


class ChannelTests(unittest.TestCase):
    """The Twisted layer waits for the pool without blocking anyone."""

    def pair(self, pool, clock, **options):
        factory = server_factory(clock=clock, **options)
        factory.work = pool
        return Pair(clock=clock, factory=factory, identity=CLIENT_KEY)

    def test_session_completes_after_the_answer(self):
        pool, clock = FakePool(), Clock()
        pair = self.pair(pool, clock)
        pair.flush()
        self.assertEqual(len(pool.requests), 1)
        self.assertEqual(pair.server_factory.admission.working, 1)
        self.assertNoResult(pair.handshake)
        pool.answer()  # the KEY
        pair.flush()
        # The optional AUTH: checked in the pool as well, counted the same.
        self.assertEqual(len(pool.requests), 1)
        self.assertEqual(pair.server_factory.admission.working, 1)
        pool.answer()
        pair.flush()
        self.assertEqual(pair.application.data, MESSAGE)
        self.assertEqual(pair.server_factory.admission.working, 0)
        self.assertEqual(pair.server_factory.connections, set())

    def test_beyond_max_handshakes_is_busy_and_others_go_on(self):
        pool, clock = FakePool(), Clock()
        first = self.pair(pool, clock, max_handshakes=1)
        first.flush()
        second = Pair(clock=clock, factory=first.server_factory, identity=CLIENT_KEY)
        second.flush()
        failure = self.failureResultOf(second.handshake)
        self.assertEqual(failure.value.reason.value.code, "busy")
        self.assertIn("too many handshakes", failure.value.reason.value.detail)
        pool.answer()  # the first one's KEY, then its AUTH
        first.flush()
        pool.answer()
        first.flush()
        self.assertEqual(first.application.data, MESSAGE)

    def test_timeout_while_decrypting(self):
        pool, clock = FakePool(), Clock()
        pair = self.pair(pool, clock)
        pair.flush()
        clock.advance(10)
        pair.flush()
        failure = self.failureResultOf(pair.handshake)
        self.assertEqual(failure.value.reason.value.code, "timeout")
        pool.answer()  # late: ignored, counted back
        self.assertEqual(pair.server_factory.admission.working, 0)

    def test_connection_lost_while_decrypting(self):
        pool, clock = FakePool(), Clock()
        pair = self.pair(pool, clock)
        pair.flush()
        pair.client.transport.loseConnection()
        pair.flush()
        self.assertEqual(pair.server_factory.connections, set())
        self.failureResultOf(pair.handshake, HandshakeFailed)
        pool.answer()
        self.assertEqual(pair.server_factory.admission.working, 0)

    def test_pool_failure_is_implicit_rejection(self):
        pool, clock = FakePool(), Clock()
        pair = self.pair(pool, clock)
        pair.flush()
        pool.requests.pop()[3].errback(RuntimeError("worker died"))
        pair.flush()
        # The client cannot open the server's first record: bad-record, no data.
        failure = self.failureResultOf(pair.handshake)
        self.assertEqual(failure.value.reason.value.code, "bad-record")
        self.assertEqual(pair.application.data, b"")


class PoolTests(unittest.TestCase):
    """Real worker processes."""

    timeout = 60

    def setUp(self):
        from twisted.internet import reactor

        self.pool = WorkerPool(1, reactor)
        self.addCleanup(self.pool.close)

    def decrypt(self, ciphertext, label):
        return self.pool.decrypt(SERVER_KEY, ciphertext, label)

    @defer.inlineCallbacks
    def test_decrypts_in_a_worker(self):
        secret = yield self.decrypt(hexbytes("key_payload"), hexbytes("hello_payload"))
        self.assertEqual(secret, hexbytes("secret"))
        self.assertEqual(self.pool.pending, 0)

    @defer.inlineCallbacks
    def test_failure_is_none(self):
        label = hexbytes("hello_payload")
        wrong_label = yield self.decrypt(hexbytes("key_payload"), label + b"x")
        self.assertIsNone(wrong_label)
        noise = yield self.decrypt(b"\1" * 256, label)
        self.assertIsNone(noise)

    @defer.inlineCallbacks
    def test_many_at_once(self):
        label = hexbytes("hello_payload")
        answers = yield defer.gatherResults(
            [self.decrypt(hexbytes("key_payload"), label) for _ in range(8)]
        )
        self.assertEqual(answers, [hexbytes("secret")] * 8)

    @defer.inlineCallbacks
    def test_verifies_generates_and_signs_in_a_worker(self):
        message = b"kx/1 test message"
        signature = yield self.pool.sign(SERVER_KEY, message, 32)
        self.assertTrue(SERVER_KEY.public_key().verify_pss(message, signature, salt_length=32))
        ok = yield self.pool.verify(SERVER_KEY.public_key(), signature, message, 32)
        self.assertIs(ok, True)
        bad = yield self.pool.verify(SERVER_KEY.public_key(), signature, message + b"!", 32)
        self.assertIs(bad, False)
        numbers = yield self.pool.generate(2048)
        key = rsa.PrivateKey(*numbers)
        self.assertEqual(key.n.bit_length(), 2048)
        key.validate()

    @defer.inlineCallbacks
    def test_workers_keep_no_key(self):
        """Every request carries its key: a worker holds none between
        requests, so a dropped ephemeral key is in no process at all."""
        from keyexchanged import workers

        yield self.decrypt(hexbytes("key_payload"), hexbytes("hello_payload"))
        held = yield self.pool._submit(None, _module_keys, workers.__name__)
        self.assertEqual(held, [])

    @defer.inlineCallbacks
    def test_a_dead_worker_is_replaced(self):
        label = hexbytes("hello_payload")
        yield self.decrypt(hexbytes("key_payload"), label)
        (pid,) = list(self.pool._executor._processes)
        os.kill(pid, signal.SIGKILL)
        # The pool notices the death on its next use (or already has): that
        # decryption fails closed (None: implicit rejection), and is logged.
        answers = []
        for _ in range(2):
            answers.append((yield self.decrypt(hexbytes("key_payload"), label)))
        self.assertIn(answers[0], (None, hexbytes("secret")))
        self.assertEqual(answers[-1], hexbytes("secret"))
        self.assertNotIn(pid, self.pool._executor._processes)
        self.flushLoggedErrors()

    def test_default_workers(self):
        self.assertGreaterEqual(default_workers(), 1)


class WorkingDirectoryTests(unittest.TestCase):
    """A worker imports nothing from the daemon's working directory, which
    someone else may be able to write (a shared checkout, /tmp)."""

    timeout = 60

    @defer.inlineCallbacks
    def test_a_module_planted_in_the_working_directory_does_not_run(self):
        from twisted.internet import reactor

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        marker = os.path.join(directory, "ran")
        # What a spawned worker imports first, before anything of ours.
        plant_module(directory, "multiprocessing", marker)
        here = os.getcwd()
        os.chdir(directory)
        self.addCleanup(os.chdir, here)
        pool = WorkerPool(1, reactor)
        self.addCleanup(pool.close)
        secret = yield pool.decrypt(SERVER_KEY, hexbytes("key_payload"), hexbytes("hello_payload"))
        self.assertEqual(secret, hexbytes("secret"))
        self.assertFalse(os.path.exists(marker), "the planted module ran in a worker")


def _module_keys(name):
    """In a worker: the RSA keys its workers module holds at module level."""
    import sys

    module = sys.modules[name]
    return [n for n, v in vars(module).items() if isinstance(v, (rsa.PrivateKey, rsa.PublicKey))]
