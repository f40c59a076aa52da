"""Private-key work away from the reactor: the core's DecryptionNeeded and
VerificationNeeded steps, the channel that waits for them, and the real
worker processes."""

import os
import signal

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel
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
        key = rsa.PrivateKey.from_primes(*numbers)
        self.assertIs(type(key), rsa.PrivateKey)
        self.assertEqual(key.n.bit_length(), 2048)
        key.validate()

    @defer.inlineCallbacks
    def test_generates_and_decrypts_with_a_three_prime_key(self):
        """An ephemeral key's numbers go to a worker and back with all
        three primes, and a worker decrypts with them."""
        numbers = yield self.pool.generate(2048, 3)
        key = rsa.PrivateKey.from_primes(*numbers)
        self.assertIs(type(key), rsa.MultiPrimePrivateKey)
        self.assertEqual(len(key.primes), 3)
        key.validate()
        ciphertext = key.public_key().encrypt_oaep(b"s" * 32, label=b"hello")
        secret = yield self.pool.decrypt(key, ciphertext, b"hello")
        self.assertEqual(secret, b"s" * 32)
        signature = yield self.pool.sign(key, b"message", 32)
        self.assertTrue(key.public_key().verify_pss(b"message", signature, salt_length=32))

    @defer.inlineCallbacks
    def held(self, worker):
        """The keys (by n) ``worker`` holds, as the worker itself says."""
        answer = defer.Deferred()
        worker.request(("held",), answer, None)
        self.pool.pending += 1
        held = yield answer
        return held

    @defer.inlineCallbacks
    def test_a_worker_is_sent_a_key_once_and_keeps_it(self):
        sent = []
        yield self.decrypt(hexbytes("key_payload"), hexbytes("hello_payload"))
        (worker,) = self.pool._running
        original = worker.request

        def recording(message, *args):
            sent.append(message)
            return original(message, *args)

        self.patch(worker, "request", recording)
        secret = yield self.decrypt(hexbytes("key_payload"), hexbytes("hello_payload"))
        self.assertEqual(secret, hexbytes("secret"))
        # Named by n, without its numbers: the worker has it.
        self.assertEqual(sent[0][:3], ("decrypt", SERVER_KEY.n, None))
        self.assertEqual((yield self.held(worker)), [SERVER_KEY.n])
        self.assertEqual(list(worker.kept), [SERVER_KEY.n])

    @defer.inlineCallbacks
    def test_forget_drops_the_key_in_the_worker(self):
        """What ``EphemeralKey.destroy`` relies on: after ``forget`` no
        worker holds the key, and the next request sends it again."""
        key = rsa.generate_multi_prime_key(2048)
        ciphertext = key.public_key().encrypt_oaep(b"s" * 32, label=b"hello")
        self.assertEqual((yield self.pool.decrypt(key, ciphertext, b"hello")), b"s" * 32)
        yield self.decrypt(hexbytes("key_payload"), hexbytes("hello_payload"))
        (worker,) = self.pool._running
        self.assertEqual(sorted((yield self.held(worker))), sorted([key.n, SERVER_KEY.n]))
        self.pool.forget(key)
        self.assertEqual((yield self.held(worker)), [SERVER_KEY.n])
        self.assertEqual(list(worker.kept), [SERVER_KEY.n])
        self.assertEqual((yield self.pool.decrypt(key, ciphertext, b"hello")), b"s" * 32)

    @defer.inlineCallbacks
    def test_a_worker_keeps_a_bounded_number_of_keys(self):
        from keyexchanged import workerloop

        made = [rsa.generate_multi_prime_key(2048) for _ in range(workerloop.KEPT_KEYS + 2)]
        for key in made:
            ciphertext = key.public_key().encrypt_oaep(b"k" * 32, label=b"")
            self.assertEqual((yield self.pool.decrypt(key, ciphertext, b"")), b"k" * 32)
        (worker,) = self.pool._running
        newest = [key.n for key in made[-workerloop.KEPT_KEYS :]]
        self.assertEqual((yield self.held(worker)), newest)
        self.assertEqual(list(worker.kept), newest)

    @defer.inlineCallbacks
    def test_a_worker_imports_nothing_from_the_working_directory(self):
        """A file in the daemon's working directory named like a module
        the worker needs is not imported in its place."""
        directory = self.mktemp()
        os.makedirs(directory)
        with open(os.path.join(directory, "secrets.py"), "w") as shadow:
            shadow.write("raise SystemExit('imported from the working directory')\n")
        here = os.getcwd()
        os.chdir(directory)
        self.addCleanup(os.chdir, here)
        secret = yield self.decrypt(hexbytes("key_payload"), hexbytes("hello_payload"))
        self.assertEqual(secret, hexbytes("secret"))

    @defer.inlineCallbacks
    def test_a_dead_worker_fails_its_requests_closed_and_is_replaced(self):
        label = hexbytes("hello_payload")
        yield self.decrypt(hexbytes("key_payload"), label)
        (worker,) = self.pool._running
        pid = worker.transport.pid
        ended = defer.Deferred()
        original = worker.processEnded

        def process_ended(reason):
            original(reason)
            ended.callback(None)

        self.patch(worker, "processEnded", process_ended)
        logged = []
        self.patch(WorkerPool, "log", Logger(observer=logged.append))
        waiting = self.decrypt(hexbytes("key_payload"), label)
        os.kill(pid, signal.SIGKILL)
        yield ended
        # Its request fails closed (None: implicit rejection), and is logged.
        self.assertIsNone((yield waiting))
        self.assertEqual(self.pool.pending, 0)
        self.assertEqual(self.pool._running, [])
        secret = yield self.decrypt(hexbytes("key_payload"), label)
        self.assertEqual(secret, hexbytes("secret"))
        self.assertNotEqual(self.pool._running[0].transport.pid, pid)
        (event,) = logged
        self.assertEqual(event["log_level"], LogLevel.error)
        self.assertIn("worker failed", event["log_format"])

    @defer.inlineCallbacks
    def test_a_worker_that_fails_a_request_is_replaced(self):
        """An answer other than a result or a fault is a bug: that request
        fails closed, and the worker (whose keys may no longer be the ones
        the daemon thinks) is ended and replaced."""
        yield self.decrypt(hexbytes("key_payload"), hexbytes("hello_payload"))
        (worker,) = self.pool._running
        pid = worker.transport.pid
        ended = defer.Deferred()
        original = worker.processEnded
        self.patch(worker, "processEnded", lambda reason: (original(reason), ended.callback(None)))
        logged = []
        self.patch(WorkerPool, "log", Logger(observer=logged.append))
        answer = self.pool._submit(None, lambda worker: ("no such request",))
        self.assertIsNone((yield answer))
        yield ended
        self.assertIn("failed in a worker", logged[0]["log_format"])
        secret = yield self.decrypt(hexbytes("key_payload"), hexbytes("hello_payload"))
        self.assertEqual(secret, hexbytes("secret"))
        self.assertNotEqual(self.pool._running[0].transport.pid, pid)

    @defer.inlineCallbacks
    def test_a_dead_worker_spares_the_others(self):
        pool = WorkerPool(2, self.pool.reactor)
        self.addCleanup(pool.close)
        label = hexbytes("hello_payload")
        first = pool.decrypt(SERVER_KEY, hexbytes("key_payload"), label)
        second = pool.decrypt(SERVER_KEY, hexbytes("key_payload"), label)
        self.assertEqual(len(pool._running), 2)
        yield defer.gatherResults([first, second])
        doomed, spared = pool._running
        ended = defer.Deferred()
        original = doomed.processEnded
        self.patch(doomed, "processEnded", lambda reason: (original(reason), ended.callback(None)))
        os.kill(doomed.transport.pid, signal.SIGKILL)
        yield ended
        self.assertEqual(pool._running, [spared])
        answers = yield defer.gatherResults(
            [pool.decrypt(SERVER_KEY, hexbytes("key_payload"), label) for _ in range(3)]
        )
        self.assertEqual(answers, [hexbytes("secret")] * 3)
        self.assertIs(pool._running[0], spared)

    @defer.inlineCallbacks
    def test_close_waits_for_every_worker_and_later_requests_fail_closed(self):
        yield self.decrypt(hexbytes("key_payload"), hexbytes("hello_payload"))
        (worker,) = self.pool._running
        yield self.pool.close()
        self.assertEqual(self.pool._running, [])
        self.assertIsNotNone(worker.transport.status)
        self.assertIsNone((yield self.decrypt(hexbytes("key_payload"), b"")))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_default_workers(self):
        self.assertGreaterEqual(default_workers(), 1)
