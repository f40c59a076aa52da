"""Key rotation (docs/spec/kx1.rst §14) against the independent peer
(tests/independent/kx1_rotation.py): ``keyexchange connect`` learns the
next key an independent server announces and ignores a forged or replayed
announcement; the independent client reads the daemon's announcement; the
independent implementation makes the vector file."""

import json
import os

from cryptography.hazmat.primitives import serialization
from twisted.internet import defer, threads
from twisted.trial.unittest import SynchronousTestCase

from keyexchanged import keys
from tests.daemon import DaemonTestCase, environment, run_client
from tests.fixtures import CLIENT_KEY, SERVER_KEY
from tests.independent import kx1_peer as kx1
from tests.independent import kx1_rotation
from tests.vectors import DIRECTORY, RAW, RESUME_RAW

NEXT_FP = keys.fingerprint(CLIENT_KEY.public_key())


def _next_key():
    return serialization.load_pem_private_key(RAW["client_private_key_pem"].encode(), None)


class VectorFileTests(SynchronousTestCase):
    def test_the_independent_implementation_makes_the_vector_file(self):
        with open(os.path.join(DIRECTORY, "kx1-key-rotation.json"), encoding="utf-8") as f:
            published = json.load(f)
        self.assertEqual(kx1_rotation.make_vectors(RAW, RESUME_RAW), published)


class ClientAgainstIndependentServerTests(DaemonTestCase):
    """``keyexchange connect`` with known hosts, against a server that is
    not keyexchanged."""

    timeout = 60

    def setUp(self):
        super().setUp()
        self.env = environment(HOME=os.path.join(self.dir, "home"))

    def serve(self, connections=1, **options):
        server = kx1_rotation.RotatingServer(_next_key(), connections=connections, **options)
        server.start()
        self.addCleanup(threads.deferToThread, server.stop)
        return server

    def known_hosts(self, server, name="known_hosts"):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(f"127.0.0.1:{server.port} {server.fingerprint}\n")
        return path

    def read(self, path):
        with open(path) as f:
            return f.read()

    def connect(self, server, *args):
        # The independent rotating server offers no ML-KEM key (its §14 is
        # what is under test here), which our client refuses by default.
        return run_client(
            "connect",
            f"127.0.0.1:{server.port}",
            "--timeout",
            "10",
            "--allow-classical",
            *args,
            env=self.env,
        )

    @defer.inlineCallbacks
    def test_the_client_learns_the_announced_key(self):
        server = self.serve()
        path = self.known_hosts(server)
        out, err, code = yield self.connect(server, "--known-hosts", path)
        self.assertEqual((out, code), (server.message, 0), err)
        self.assertEqual(server.asked, [True])
        self.assertEqual(
            self.read(path),
            f"127.0.0.1:{server.port} {server.fingerprint}\n"
            f"@next 127.0.0.1:{server.port} {NEXT_FP}\n",
        )

    @defer.inlineCallbacks
    def test_an_announcement_signed_by_another_key_changes_nothing(self):
        server = self.serve(forge="signer")
        path = self.known_hosts(server)
        before = self.read(path)
        out, err, code = yield self.connect(server, "--known-hosts", path)
        self.assertEqual((out, code), (server.message, 0), err)
        self.assertEqual(err.count(b"warning"), 1, err)
        self.assertIn(b"ignored the key announcement", err)
        self.assertIn(b"does not verify for this session", err)
        self.assertEqual(self.read(path), before)

    @defer.inlineCallbacks
    def test_an_announcement_replayed_from_another_session_changes_nothing(self):
        server = self.serve(connections=2, forge="replay")
        first = self.known_hosts(server, "first")
        _out, err, code = yield self.connect(server, "--known-hosts", first)
        self.assertEqual(code, 0, err)
        self.assertIn(f"@next 127.0.0.1:{server.port} {NEXT_FP}", self.read(first))
        second = self.known_hosts(server, "second")
        before = self.read(second)
        out, err, code = yield self.connect(server, "--known-hosts", second)
        self.assertEqual((out, code), (server.message, 0), err)
        self.assertEqual(err.count(b"warning"), 1, err)
        self.assertIn(b"does not verify for this session", err)
        self.assertEqual(self.read(second), before)

    @defer.inlineCallbacks
    def test_a_pinned_client_does_not_ask(self):
        server = self.serve()
        out, err, code = yield self.connect(
            server, "--fingerprint", server.fingerprint, "--explain"
        )
        self.assertEqual((out, code), (server.message, 0), err)
        self.assertEqual(server.asked, [False])
        self.assertIn(b"not asking: a pinned --fingerprint or a --ca", err)


class IndependentClientAgainstDaemonTests(DaemonTestCase):
    def start(self):
        """The daemon announcing the next key (the client key of the
        vectors, ``client.key`` beside the shared daemon's key)."""
        return self.shared_daemon("--next-private-key", "client.key").port

    @defer.inlineCallbacks
    def test_a_client_that_predates_rotation_never_sees_it(self):
        """The revision 2 independent client, which knows nothing of §14,
        completes as ever: HELLO's new member is ignored, NEXTKEY never
        comes (its frame reader would refuse the verb)."""
        port = self.start()
        client = kx1.IndependentClient(keys.fingerprint(SERVER_KEY.public_key()))
        limits = dict(kx1.PAYLOAD_LIMITS)
        del limits["NEXTKEY"]
        self.patch(kx1, "PAYLOAD_LIMITS", limits)
        result = yield threads.deferToThread(client.connect, "127.0.0.1", port)
        self.assertTrue(result.data)
        self.assertTrue(result.forward_secrecy)

    @defer.inlineCallbacks
    def test_the_independent_client_reads_the_daemons_announcement(self):
        port = self.start()
        announced, data = yield threads.deferToThread(
            kx1_rotation.announced_session,
            "127.0.0.1",
            port,
            keys.fingerprint(SERVER_KEY.public_key()),
        )
        self.assertEqual(announced, NEXT_FP)
        self.assertTrue(data)
