"""Key rotation with the real daemon and the real client (docs/spec/kx1.rst
§14): the operator's procedure of docs/deployment.rst, step by step, and
the next keys a daemon refuses, at start and at a reload."""

import os
import shutil

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa as crypto_rsa
from twisted.internet import defer

from keyexchanged import keys
from tests import certs
from tests.daemon import Daemon, DaemonTestCase, connect_here, environment, run_client
from tests.fixtures import CLIENT_KEY, SERVER_KEY

CURRENT_FP = keys.fingerprint(SERVER_KEY.public_key())
#: The next key: the vectors' client key, 2048 bits.
NEXT_FP = keys.fingerprint(CLIENT_KEY.public_key())


class RotationProcedureTests(DaemonTestCase):
    """docs/deployment.rst, "Rotating the server's key", each step."""

    def setUp(self):
        super().setUp()
        keys.save_public_key(SERVER_KEY, self.key + ".pub")
        self.next = os.path.join(self.dir, "next.key")
        self.env = environment(HOME=os.path.join(self.dir, "home"))

    def hosts(self, name):
        return os.path.join(self.dir, name + "_known_hosts")

    def read(self, name):
        with open(self.hosts(name)) as f:
            return f.read()

    def connect(self, *args):
        return run_client("connect", f"127.0.0.1:{self.port}", *args, env=self.env)

    def connect_known(self, name, *args):
        return self.connect("--known-hosts", self.hosts(name), *args)

    @defer.inlineCallbacks
    def test_the_procedure(self):
        self.write_config("")
        daemon = Daemon.start(["--config", self.conf])
        self.addCleanup(daemon.stop)
        self.port = yield daemon.listening
        host = f"127.0.0.1:{self.port}"
        # Two users who trust on first use; one will be away during the
        # overlap, and has the same known-hosts line (a second first use
        # would run the same code again, in another process).
        _out, err, code = yield self.connect_known("present", "--accept-new")
        self.assertEqual(code, 0, err)
        self.assertEqual(self.read("present"), f"{host} {CURRENT_FP}\n")
        shutil.copyfile(self.hosts("present"), self.hosts("away"))

        # Step 1: make the next key.
        _out, err, code = yield run_client("keygen", "--bits", "2048", "--out", self.next)
        self.assertEqual(code, 0, err)
        # (The vectors' client key stands in for it, so that the test knows
        # its fingerprint; keygen is how an operator makes one.)
        keys.save_private_key(CLIENT_KEY, self.next, force=True)
        keys.save_public_key(CLIENT_KEY, self.next + ".pub", force=True)

        # Step 2: name it in the config and reload.
        self.write_config(f"next-private-key = {self.next}\n")
        daemon.signal("HUP")
        output = yield daemon.wait_for(b"reload: announcing next key")
        self.assertIn(NEXT_FP.encode(), output)

        # Step 3, the overlap: clients that use known hosts learn the key.
        before = self.read("present")
        out, err, code = yield self.connect_known("present", "--explain")
        self.assertEqual(code, 0, err)
        self.assertIn(b"offers key rotation announcements; asking", err)
        self.assertIn(b"learned the next key of " + host.encode(), err)
        after = self.read("present")
        self.assertEqual(before, f"{host} {CURRENT_FP}\n")
        self.assertEqual(after, f"{host} {CURRENT_FP}\n@next {host} {NEXT_FP}\n")
        # A second session changes nothing more, and says nothing of it.
        _out, err, code = yield self.connect_known("present")
        self.assertEqual(code, 0, err)
        self.assertNotIn(b"learned", err)
        self.assertEqual(self.read("present"), after)
        # Pinned clients do not ask, and --explain says why.
        _out, err, code = yield self.connect("--fingerprint", CURRENT_FP, "--explain")
        self.assertEqual(code, 0, err)
        self.assertIn(b"not asking: a pinned --fingerprint or a --ca", err)
        self.assertNotIn(b"NEXTKEY: the server's next key", err)

        # Step 4, the switch: the next key becomes the key, the config
        # stops naming it, and a reload serves it.
        self.write_config("")
        out, err, code = yield run_client("rotate-key", self.key, self.next, env=self.env)
        self.assertEqual(code, 0, err)
        self.assertIn(NEXT_FP.encode(), out)
        self.assertFalse(os.path.exists(self.next))
        self.assertEqual(keys.fingerprint(keys.load_private_key(self.key)), NEXT_FP)
        self.assertEqual(keys.fingerprint(keys.load_public_key(self.key + ".pub")), NEXT_FP)
        self.assertEqual(keys.fingerprint(keys.load_private_key(self.key + ".retired")), CURRENT_FP)
        daemon.signal("HUP")
        output = yield daemon.wait_for(b"reload: done", count=2)
        self.assertIn(b"the long-term key changed from " + CURRENT_FP.encode(), output)
        self.assertIn(b"reload: no key rotation announced", output)

        # Step 5: the client that learned connects, no question (there is
        # no terminal: a key it did not know would be refused), exit 0.
        out, err, code = yield self.connect_known("present")
        self.assertEqual(code, 0, err)
        self.assertIn(b"now uses the next key it announced, " + NEXT_FP.encode(), err)
        self.assertEqual(self.read("present"), f"{host} {NEXT_FP}\n")
        _out, err, code = yield self.connect_known("present")
        self.assertEqual((code, err), (0, b""))

        # The one that was away is refused as on any key change, told both keys.
        _out, err, code = yield self.connect_known("away")
        self.assertEqual(code, 3, err)
        self.assertIn(f"The key {host} offered:  {NEXT_FP}".encode(), err)
        self.assertIn(f"The key known for it:  {CURRENT_FP}".encode(), err)
        self.assertEqual(self.read("away"), f"{host} {CURRENT_FP}\n")
        # And the pinned client too: its pin is updated by other means.
        _out, err, code = yield self.connect("--fingerprint", CURRENT_FP)
        self.assertEqual(code, 3, err)
        _out, err, code = yield self.connect("--fingerprint", NEXT_FP)
        self.assertEqual(code, 0, err)


class OtherClientsTests(DaemonTestCase):
    """During the overlap: a --ca client is unaffected, and two clients
    that learn at once leave one correct known-hosts file."""

    def setUp(self):
        super().setUp()
        self.next = os.path.join(self.dir, "next.key")
        keys.save_private_key(CLIENT_KEY, self.next)

    @defer.inlineCallbacks
    def start(self, extra=""):
        self.write_config(f"next-private-key = {self.next}\n{extra}")
        daemon = Daemon.start(["--config", self.conf])
        self.addCleanup(daemon.stop)
        self.port = yield daemon.listening
        return daemon

    @defer.inlineCallbacks
    def test_a_ca_client_does_not_ask(self):
        root_key = certs.fast_key()
        root = certs.build(root_key, subject="Root", ca=True, usage="ca")
        leaf = certs.build(SERVER_KEY, root_key, root, names=["localhost"])
        chain = os.path.join(self.dir, "server.crt")
        ca_file = os.path.join(self.dir, "ca.pem")
        with open(chain, "wb") as f:
            f.write(certs.pem(leaf))
        with open(ca_file, "wb") as f:
            f.write(certs.pem(root))
        yield self.start(f"certificate = {chain}\n")
        known = os.path.join(self.dir, "known_hosts")
        _out, err, code = yield run_client(
            "connect", f"localhost:{self.port}", "--ca", ca_file, "--known-hosts", known,
            "--explain",
        )  # fmt: skip
        self.assertEqual(code, 0, err)
        self.assertIn(b"not asking: a pinned --fingerprint or a --ca", err)
        self.assertNotIn(b"NEXTKEY:", err)
        self.assertFalse(os.path.exists(known))

    @defer.inlineCallbacks
    def test_two_clients_learning_at_once_leave_one_correct_file(self):
        # The daemon announcing the next key (``client.key`` beside the
        # shared daemon's key: the vectors' client key, as ``self.next``).
        self.port = self.shared_daemon("--next-private-key", "client.key").port
        known = os.path.join(self.dir, "known_hosts")
        with open(known, "w") as f:
            f.write(f"127.0.0.1:{self.port} {CURRENT_FP}\nlocalhost:{self.port} {CURRENT_FP}\n")
        results = yield defer.gatherResults(
            [
                run_client("connect", f"{host}:{self.port}", "--known-hosts", known)
                for host in ("127.0.0.1", "localhost")
            ]
        )
        for _out, err, code in results:
            self.assertEqual(code, 0, err)
            self.assertIn(b"learned the next key", err)
        with open(known) as f:
            lines = f.read().splitlines()
        self.assertEqual(
            sorted(lines),
            sorted(
                [
                    f"127.0.0.1:{self.port} {CURRENT_FP}",
                    f"localhost:{self.port} {CURRENT_FP}",
                    f"@next 127.0.0.1:{self.port} {NEXT_FP}",
                    f"@next localhost:{self.port} {NEXT_FP}",
                ]
            ),
        )


class RevokedKeysTests(DaemonTestCase):
    @defer.inlineCallbacks
    def test_revoked_keys_reach_known_hosts(self):
        revoked = "SHA256:" + "B" * 42 + "A"
        listing = os.path.join(self.dir, "revoked_keys")
        with open(listing, "w") as f:
            f.write(f"{revoked}  # the key that leaked\n")
        self.write_config(f"revoked-keys = {listing}\n")
        daemon = Daemon.start(["--config", self.conf])
        self.addCleanup(daemon.stop)
        port = yield daemon.listening
        self.assertIn(b"announcing 1 revoked key(s)", daemon.output)
        known = os.path.join(self.dir, "known_hosts")
        with open(known, "w") as f:
            f.write(f"127.0.0.1:{port} {CURRENT_FP}\n")
        _out, err, code = yield run_client("connect", f"127.0.0.1:{port}", "--known-hosts", known)
        self.assertEqual(code, 0, err)
        self.assertIn(b"revoked the key " + revoked.encode(), err)
        with open(known) as f:
            self.assertEqual(f.read(), f"127.0.0.1:{port} {CURRENT_FP}\n@revoked {revoked}\n")

    @defer.inlineCallbacks
    def test_revoking_the_current_key_is_refused(self):
        listing = os.path.join(self.dir, "revoked_keys")
        with open(listing, "w") as f:
            f.write(f"{CURRENT_FP}\n")
        self.write_config(f"revoked-keys = {listing}\n")
        daemon = Daemon.start(["--config", self.conf])
        code = yield daemon.refused()
        self.assertNotEqual(code, 0)
        self.assertIn(b"revoked-keys: lists the current key", daemon.output)


class NextKeyRefusalTests(DaemonTestCase):
    """A next key the daemon cannot use stops it at start, and a reload
    that names one is refused as a whole."""

    def setUp(self):
        super().setUp()
        self.next = os.path.join(self.dir, "next.key")

    def write_weak_key(self):
        weak = crypto_rsa.generate_private_key(public_exponent=65537, key_size=1024)
        pem = weak.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        with open(os.open(self.next, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
            f.write(pem)

    @defer.inlineCallbacks
    def assert_start_refused(self, reason):
        self.write_config(f"next-private-key = {self.next}\n")
        daemon = Daemon.start(["--config", self.conf])
        code = yield daemon.refused()
        self.assertNotEqual(code, 0)
        self.assertIn(reason, daemon.output)
        self.assertNotIn(b"Traceback", daemon.output)

    def test_the_current_key(self):
        keys.save_private_key(SERVER_KEY, self.next)
        return self.assert_start_refused(b"is the current key (" + CURRENT_FP.encode())

    def test_a_weak_key(self):
        self.write_weak_key()
        return self.assert_start_refused(b"RSA key of 1024 bits is below the minimum of 2048")

    def test_a_key_others_can_read(self):
        keys.save_private_key(CLIENT_KEY, self.next)
        os.chmod(self.next, 0o644)
        return self.assert_start_refused(b"next.key")

    def test_a_missing_key(self):
        return self.assert_start_refused(b"next.key")

    @defer.inlineCallbacks
    def test_a_reload_with_a_bad_next_key_changes_nothing(self):
        keys.save_private_key(CLIENT_KEY, self.next)
        self.write_config(f"next-private-key = {self.next}\n")
        daemon = Daemon.start(["--config", self.conf])
        self.addCleanup(daemon.stop)
        port = yield daemon.listening
        # One session first: the reactor runs, so SIGHUP has its handler.
        _out, err, code = yield connect_here(port, CURRENT_FP)
        self.assertEqual(code, 0, err)
        # The next key is now the current key: refused, and the key, the
        # next key and the message all stay as they were.
        self.write_config(f"message = REPLACED\nnext-private-key = {self.key}\n")
        daemon.signal("HUP")
        output = yield daemon.wait_for(b"reload failed, nothing changed")
        self.assertIn(b"is the current key", output)
        known = os.path.join(self.dir, "known_hosts")
        with open(known, "w") as f:
            f.write(f"127.0.0.1:{port} {CURRENT_FP}\n")
        out, err, code = yield run_client("connect", f"127.0.0.1:{port}", "--known-hosts", known)
        self.assertEqual(code, 0, err)
        self.assertNotIn(b"REPLACED", out)
        self.assertIn(b"learned the next key", err)
        with open(known) as f:
            self.assertIn(f"@next 127.0.0.1:{port} {NEXT_FP}", f.read())
