"""Private-key work away from the reactor: the core's DecryptionNeeded step,
the channel that waits for it, and the real worker processes."""

import os
import signal

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from keyexchanged.framing import encode_frame
from keyexchanged.handshake import (
    DataReceived,
    DecryptionNeeded,
    HandshakeComplete,
    ProtocolFailed,
    ServerConnection,
)
from keyexchanged.protocol import HandshakeFailed
from keyexchanged.workers import DecryptionPool, default_workers
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
        defer_decryption=True,
        **options,
    )
    server.start()
    server.data_to_send()
    return server


class CoreTests(unittest.TestCase):
    """ServerConnection(defer_decryption=True), without I/O."""

    def test_vector_key_through_the_deferred_path(self):
        server = deferred_server(authorized_keys={RAW["client_fingerprint"]})
        (event,) = server.receive_data(KEY_FRAME)
        self.assertIsInstance(event, DecryptionNeeded)
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
        events = server.key_decrypted(secret)
        self.assertEqual(
            events,
            [
                HandshakeComplete(RAW["client_fingerprint"]),
                DataReceived(hexbytes("client_message")),
            ],
        )
        self.assertEqual(server.transcript_hash, hexbytes("transcript_hash"))

    def test_failed_decoding_is_implicit_rejection(self):
        """``None`` from the worker: the same events and bytes as a good
        KEY, under keys the client cannot have."""
        good, bad = deferred_server(), deferred_server()
        good.receive_data(KEY_FRAME)
        bad.receive_data(KEY_FRAME)
        good_events = good.key_decrypted(hexbytes("secret"))
        bad_events = bad.key_decrypted(None)
        self.assertEqual([type(e) for e in good_events], [type(e) for e in bad_events])
        good.confirm()
        bad.confirm()
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
        self.assertEqual([type(e) for e in events], [HandshakeComplete, ProtocolFailed])
        self.assertEqual(events[1].code, "bad-record")

    def test_answer_after_failure_is_ignored(self):
        server = deferred_server()
        server.receive_data(KEY_FRAME)
        server.fail("timeout", "handshake took too long")
        self.assertEqual(server.key_decrypted(hexbytes("secret")), [])


class ChannelTests(unittest.TestCase):
    """The Twisted layer waits for the pool without blocking anyone."""

    def pair(self, pool, clock, **options):
        factory = server_factory(clock=clock, **options)
        factory.decryption = pool
        return Pair(clock=clock, factory=factory, identity=CLIENT_KEY)

    def test_session_completes_after_the_answer(self):
        pool, clock = FakePool(), Clock()
        pair = self.pair(pool, clock)
        pair.flush()
        self.assertEqual(len(pool.requests), 1)
        self.assertEqual(pair.server_factory.decrypting, 1)
        self.assertNoResult(pair.handshake)
        pool.answer()
        pair.flush()
        self.assertEqual(pair.application.data, MESSAGE)
        self.assertEqual(pair.server_factory.decrypting, 0)
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
        self.assertEqual(pair.server_factory.decrypting, 0)

    def test_connection_lost_while_decrypting(self):
        pool, clock = FakePool(), Clock()
        pair = self.pair(pool, clock)
        pair.flush()
        pair.client.transport.loseConnection()
        pair.flush()
        self.assertEqual(pair.server_factory.connections, set())
        self.failureResultOf(pair.handshake, HandshakeFailed)
        pool.answer()
        self.assertEqual(pair.server_factory.decrypting, 0)

    def test_pool_failure_is_implicit_rejection(self):
        pool, clock = FakePool(), Clock()
        pair = self.pair(pool, clock)
        pair.flush()
        pool.requests.pop()[2].errback(RuntimeError("worker died"))
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

        self.pool = DecryptionPool(SERVER_KEY, 1, reactor)
        self.addCleanup(self.pool.close)

    @defer.inlineCallbacks
    def test_decrypts_in_a_worker(self):
        secret = yield self.pool.decrypt(hexbytes("key_payload"), hexbytes("hello_payload"))
        self.assertEqual(secret, hexbytes("secret"))
        self.assertEqual(self.pool.pending, 0)

    @defer.inlineCallbacks
    def test_failure_is_none(self):
        label = hexbytes("hello_payload")
        wrong_label = yield self.pool.decrypt(hexbytes("key_payload"), label + b"x")
        self.assertIsNone(wrong_label)
        noise = yield self.pool.decrypt(b"\1" * 256, label)
        self.assertIsNone(noise)

    @defer.inlineCallbacks
    def test_many_at_once(self):
        label = hexbytes("hello_payload")
        answers = yield defer.gatherResults(
            [self.pool.decrypt(hexbytes("key_payload"), label) for _ in range(8)]
        )
        self.assertEqual(answers, [hexbytes("secret")] * 8)

    @defer.inlineCallbacks
    def test_a_dead_worker_is_replaced(self):
        label = hexbytes("hello_payload")
        yield self.pool.decrypt(hexbytes("key_payload"), label)
        (pid,) = list(self.pool._executor._processes)
        os.kill(pid, signal.SIGKILL)
        # The pool notices the death on its next use (or already has): that
        # decryption fails closed (None: implicit rejection), and is logged.
        answers = []
        for _ in range(2):
            answers.append((yield self.pool.decrypt(hexbytes("key_payload"), label)))
        self.assertIn(answers[0], (None, hexbytes("secret")))
        self.assertEqual(answers[-1], hexbytes("secret"))
        self.assertNotIn(pid, self.pool._executor._processes)
        self.flushLoggedErrors()

    def test_default_workers(self):
        self.assertGreaterEqual(default_workers(), 1)
