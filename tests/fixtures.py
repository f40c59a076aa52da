"""Fixtures shared by the test modules: the vector keys and identities,
helpers for the sans-IO state machines, key files and openssl, a server and
client joined in memory, and the pieces the tunnel tests share.

Test modules import from here (and from ``tests.vectors``, ``tests.certs``,
``tests.daemon``), never from one another: importing a test module runs
its import-time work again and, for a TestCase, its tests.
"""

import hashlib
import io
import math
import os
import random
import shlex
import shutil
import subprocess
import sys
import time

from Crypto.IO import PEM
from twisted.internet import defer, interfaces
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.test import iosim
from twisted.trial.unittest import SkipTest, SynchronousTestCase
from zope.interface import implementer

from keyexchanged import cli, handshake, keys, rsa
from keyexchanged.applications import MessageFactory
from keyexchanged.ephemeral import signed_key
from keyexchanged.handshake import (
    ClientConnection,
    ServerConnection,
    ServerIdentity,
)
from keyexchanged.protocol import (
    ChannelClientFactory,
    SecureChannelFactory,
)
from keyexchanged.trust import PinnedKey
from tests.vectors import RAW, RESUME_RAW, hexbytes

# -- many cases, one test -------------------------------------------------------


def assert_every_case(testcase, cases, check, label=repr):
    """Run ``check(case)`` for every case and fail once, naming each case
    that failed and why.

    trial ignores sub-tests (``unittest``'s): a loop of assertions stops at the first
    failing case and hides the others.  This runs them all.
    """
    cases = list(cases)
    failures = []
    for case in cases:
        try:
            check(case)
        except Exception as e:  # an unexpected error is a failing case too
            failures.append(f"{label(case)}: {type(e).__name__}: {e}")
    if failures:
        testcase.fail(f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures))


# -- the vector keys -----------------------------------------------------------

SERVER_KEY = keys.private_key_from_bytes(RAW["server_private_key_pem"].encode())
CLIENT_KEY = keys.private_key_from_bytes(RAW["client_private_key_pem"].encode())
IDENTITY = ServerIdentity(SERVER_KEY)


# -- an ephemeral key the tests can offer (forward secrecy, spec §10) -----------
#
# The key of ``kx1-ephemeral-resume.json`` (2048 bits, so cheap), signed by
# the vector server key with an expiry an hour from the import: valid by the
# client's real clock whatever Clock the test drives.

EPHEMERAL_PRIVATE = keys.private_key_from_bytes(RESUME_RAW["ephemeral_private_key_pem"].encode())


def ephemeral_key(
    private_key=EPHEMERAL_PRIVATE, expires=None, long_term=SERVER_KEY, post_quantum=True
):
    """A fresh :class:`EphemeralKey` offering ``private_key``, signed by
    ``long_term`` with an expiry ten minutes ahead (valid by the client's
    real clock whatever Clock the test drives, and within the 30 minutes a
    revision-3 client accepts); with ``post_quantum``, an ML-KEM-768 key
    beside it, as the daemon offers it (revision 3, §12)."""
    if expires is None:
        expires = int(time.time()) + 600
    return signed_key(private_key, expires, long_term, post_quantum)


#: Signed once, at import: tests that patch the RSA code (to corrupt a
#: client's signature, say) leave it alone.
EPHEMERAL = ephemeral_key()


class StaticEphemeralKeys:
    """What SecureChannelFactory needs of EphemeralKeys: a current key."""

    def __init__(self, key=None):
        self.current = key if key is not None else EPHEMERAL


# -- the sans-IO state machines ------------------------------------------------


def replay(*values):
    """A ``random`` that hands out the given byte strings in order."""
    pending = list(values)

    def draw(n):
        value = pending.pop(0)
        assert len(value) == n, (len(value), n)
        return value

    return draw


def frames(data):
    """Split bytes we produced into (verb, payload) pairs."""
    out = []
    decoder = handshake.FrameDecoder(lambda verb, payload: out.append((verb, payload)))
    decoder.feed(data)
    return out


def decrypt_each_key_once(testcase):
    """For ``testcase``, answer a repeated RSA-OAEP decryption from memory.

    Patches :meth:`keyexchanged.rsa.PrivateKey.decrypt_oaep` so that each
    (key, ciphertext, label, hashes) is decrypted for real once, and its
    plaintext (or its error, raised afresh) given again when the same
    arguments come back.  For the tests that feed the same KEY to a server
    many times over (every chunk size, every cut, every chunking): their
    subject is what the server does around the decryption, and a server that
    reassembled another ciphertext would ask for a decryption not yet made.
    """
    decrypt = rsa.PrivateKey.decrypt_oaep
    answers = {}

    def decrypt_oaep(key, ciphertext, label=b"", hash="sha256", mgf_hash=None):
        question = (key.n, key.d, bytes(ciphertext), bytes(label), hash, mgf_hash)
        if question not in answers:
            try:
                answers[question] = decrypt(key, ciphertext, label, hash, mgf_hash), None
            except Exception as e:
                answers[question] = None, e
        plaintext, error = answers[question]
        if error is not None:
            raise type(error)(*error.args)
        return plaintext

    testcase.patch(rsa.PrivateKey, "decrypt_oaep", decrypt_oaep)


def vector_server(**options):
    server = ServerConnection(IDENTITY, random=replay(hexbytes("nonce"), b"\x00" * 32), **options)
    server.start()
    return server


def rev1_client(**options):
    """A client that talks to a server without ephemeral keys (revision 1):
    the vectors of kx1-handshake.json, and most tests of the core."""
    options.setdefault("require_forward_secrecy", False)
    return ClientConnection(**options)


def vector_client(identity=None, **options):
    return rev1_client(
        identity=identity,
        random=replay(hexbytes("secret")),
        oaep_seed=hexbytes("oaep_seed"),
        pss_salt=hexbytes("pss_salt"),
        **options,
    )


# -- key files and openssl -----------------------------------------------------

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")

PASSPHRASE = "correct horse"  # of the encrypted OpenSSL fixtures


def vector_key():
    """A new copy of the vector server key (what a patched generator returns)."""
    return keys.private_key_from_bytes(RAW["server_private_key_pem"].encode())


def data(name):
    with open(os.path.join(DATA, name), "rb") as f:
        return f.read()


def openssl_fingerprint():
    return "SHA256:" + data("keys_openssl_fingerprint.txt").decode().strip()


def components(key):
    """What makes two private keys the same key (p and q in either order)."""
    return key.n, key.e, key.d, frozenset((key.p, key.q))


def public_pem(key):
    """The PEM SubjectPublicKeyInfo of a key, as in a ``.pub`` file."""
    return PEM.encode(keys.public_key_to_der(key), "PUBLIC KEY") + "\n"


def openssl(*args, input=None):
    """Run openssl; its stdout, or a test failure with its stderr."""
    result = subprocess.run(["openssl", *args], input=input, capture_output=True, check=False)
    if result.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed: {result.stderr.decode()}")
    return result.stdout


def openssl_pipeline_fingerprint(public_path):
    """The fingerprint as the documentation tells users to compute it."""
    command = (
        f"openssl pkey -pubin -in {shlex.quote(public_path)} -outform DER"
        " | openssl dgst -sha256 -binary | base64 | tr -d ="
    )
    output = subprocess.run(command, shell=True, capture_output=True, check=True, text=True).stdout
    return "SHA256:" + output.strip()


# -- the files a server starts from ------------------------------------------


def temporary_directory(testcase):
    """A new, empty directory of the test's own (an absolute path)."""
    path = os.path.abspath(testcase.mktemp())
    os.makedirs(path)
    return path


class ServerFiles:
    """Mixed into a TestCase: a temporary directory (``self.dir``) with the
    vector server key in it (``self.key``, mode 0600) and the path of a
    config file beside it (``self.conf``), which :meth:`write_config` writes."""

    #: Settings every config of the test case starts with.
    base_config = ""

    def setUp(self):
        super().setUp()
        self.dir = temporary_directory(self)
        self.key = os.path.join(self.dir, "server.key")
        keys.save_private_key(SERVER_KEY, self.key)
        self.conf = os.path.join(self.dir, "keyexchanged.conf")

    def write_config(self, body="", key=None):
        """Write ``self.conf``: :attr:`base_config`, the key (``self.key``
        unless ``key`` names another), then ``body`` (which starts on line
        4 when the base is one line)."""
        key = self.key if key is None else key
        with open(self.conf, "w", encoding="utf-8") as f:
            f.write(f"[keyexchanged]\n{self.base_config}private-key = {key}\n{body}")
        return self.conf


# -- a server and a client joined in memory ------------------------------------

MESSAGE = hexbytes("server_message")


def ended_sessions(testcase):
    """How the server says each connection ended, from now on: a dict of
    ``host:port`` to the outcome in its "connection from ... ended" log
    line (``ok``, ``truncated``, ``closed``, an ERROR code...)."""
    ended = {}

    def observe(event):
        if event.get("log_format", "").startswith("connection from {peer} ended:"):
            ended[event["peer"]] = event["outcome"]

    globalLogPublisher.addObserver(observe)
    testcase.addCleanup(globalLogPublisher.removeObserver, observe)
    return ended


def log_events(testcase):
    """Every log event published from now until the test ends, in a list."""
    events = []
    globalLogPublisher.addObserver(events.append)
    testcase.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


def address(host="10.0.0.1", port=40000):
    return IPv4Address("TCP", host, port)


class Collector(Protocol):
    """An application that records what happens to it."""

    def __init__(self):
        self.data = b""
        self.made = False
        self.reason = None

    def connectionMade(self):
        self.made = True

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.reason = reason


class ServerFactory(SecureChannelFactory):
    """Replays the vector nonce when asked to."""

    vector = False

    def make_connection(self):
        if self.vector:
            return handshake.ServerConnection(
                self.identity, random=replay(hexbytes("nonce"), b"\0" * 32)
            )
        return super().make_connection()


def server_factory(app=None, clock=None, **options):
    """A server as the daemon runs it by default: with an ephemeral key."""
    options.setdefault("ephemeral_keys", StaticEphemeralKeys())
    return ServerFactory(
        app or MessageFactory(MESSAGE), IDENTITY, reactor=clock or Clock(), **options
    )


def client_writes(testcase):
    """Every write the iosim client transports make, from now on, in a list."""
    sent = []
    original = iosim.FakeTransport.write

    def write(transport, data):
        if not transport.isServer:
            sent.append(data)
        original(transport, data)

    testcase.patch(iosim.FakeTransport, "write", write)
    return sent


class Pair:
    """A server and a client joined in memory by iosim."""

    def __init__(
        self,
        app=None,
        client_app=None,
        trust=None,
        clock=None,
        host="10.0.0.1",
        server_options=None,
        identity=None,
        factory=None,
    ):
        self.clock = clock or Clock()
        self.server_factory = factory or server_factory(app, self.clock, **(server_options or {}))
        self.application = client_app or Collector()
        self.client_factory = ChannelClientFactory(
            Factory.forProtocol(lambda: self.application),
            trust or PinnedKey(IDENTITY.fingerprint),
            server_name="example",
            identity=identity,
            reactor=self.clock,
        )
        self.handshake = self.client_factory.handshake
        self.client, self.server, self.pump = iosim.connectedServerAndClient(
            lambda: self.server_factory.buildProtocol(address(host)),
            lambda: self.client_factory.buildProtocol(address("127.0.0.1", 51424)),
            clock=self.clock,
        )

    def flush(self):
        self.pump.flush()


class FakePool:
    """Private-key work whose answers the test gives, when it chooses."""

    def __init__(self):
        self.requests = []

    def decrypt(self, private_key, ciphertext, label):
        d = defer.Deferred()
        self.requests.append((private_key, ciphertext, label, d))
        return d

    def verify(self, public_key, signature, message, salt_length):
        d = defer.Deferred()
        self.requests.append((public_key, signature, message, d))
        return d

    def answer(self, index=0):
        key, first, second, d = self.requests.pop(index)
        if isinstance(key, rsa.PrivateKey):
            try:
                result = key.decrypt_oaep(first, label=second)
            except Exception:
                result = None
        else:
            result = key.verify_pss(second, first, salt_length=32)
        d.callback(result)


# -- the keyexchange command ---------------------------------------------------


class CommandTestCase(SynchronousTestCase):
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.generations = []

        def fake_generate(bits=3072, progress=None):
            self.generations.append(bits)
            if progress is not None:
                for _ in range(3):
                    progress()
            return vector_key()

        self.patch(cli.rsa, "generate_private_key", fake_generate)

    def path(self, *names):
        return os.path.join(self.dir, *names)

    def run_main(self, *argv, stderr=None):
        """main(argv) with captured output: (status, stdout, stderr)."""
        out = io.StringIO()
        err = stderr if stderr is not None else io.StringIO()
        patchers = [self.patch(sys, "stdout", out), self.patch(sys, "stderr", err)]
        try:
            status = cli.main(list(argv))
        finally:
            for patcher in patchers:
                patcher.restore()
        return status, out.getvalue(), err.getvalue()

    def assertOneErrorLine(self, stderr, *fragments):
        self.assertNotIn("Traceback", stderr)
        lines = stderr.splitlines()
        self.assertEqual(len(lines), 1, stderr)
        self.assertTrue(lines[0].startswith("keyexchange: error: "), stderr)
        for fragment in fragments:
            self.assertIn(fragment, lines[0])

    def assertBadOption(self, argv, option, reason):
        """argparse refused ``option``'s value by the rule it shares with
        the daemon's settings: status 2, the reason on the last line."""
        code, out, err = self.run_main(*argv)
        self.assertEqual((code, out), (2, ""), err)
        self.assertNotIn("Traceback", err)
        self.assertIn(f": error: argument {option}: must be {reason}", err.splitlines()[-1])

    def assertFails(self, argv, *fragments, status=1):
        code, out, err = self.run_main(*argv)
        self.assertEqual(code, status, err)
        self.assertEqual(out, "")
        self.assertOneErrorLine(err, *fragments)
        return err

    def write(self, name, content, mode=0o600):
        path = self.path(name)
        with open(path, "wb") as f:
            f.write(content)
        os.chmod(path, mode)
        return path


# -- tunnels -------------------------------------------------------------------


@implementer(interfaces.IHalfCloseableProtocol)
class Target(Protocol):
    """The service behind the tunnel; records what happens to it."""

    def __init__(self, echo=False):
        self.echo = echo
        self.data = bytearray()
        self.eof = False
        self.write_done = False
        self.ended = defer.Deferred()  # end of the stream from the client
        self.lost = defer.Deferred()

    def dataReceived(self, data):
        self.data += data
        if self.echo:
            self.transport.write(data)

    def readConnectionLost(self):
        self.eof = True
        self.ended.callback(None)
        if self.echo:
            self.transport.loseWriteConnection()
        elif self.write_done:
            self.transport.loseConnection()

    def writeConnectionLost(self):
        # Both directions are shut: close, as a real service would.
        self.write_done = True
        if self.eof:
            self.transport.loseConnection()

    def connectionLost(self, reason):
        self.lost.callback(reason.value)  # the exception: a Failure would errback


class Pusher(Protocol):
    """Writes ``total`` bytes as fast as its transport lets it."""

    chunk = 64 * 1024

    def __init__(self, total, seed=b"kx"):
        self.total = total
        self.sent = 0
        self.paused = False
        self.digest = hashlib.sha256()
        self.block = (hashlib.sha256(seed).digest() * (self.chunk // 32))[: self.chunk]

    def connectionMade(self):
        self.transport.registerProducer(self, True)
        self.resumeProducing()

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        while not self.paused and self.sent < self.total:
            block = self.block[: self.total - self.sent]
            self.digest.update(block)
            self.sent += len(block)
            self.transport.write(block)
        if self.sent >= self.total:
            self.transport.unregisterProducer()
            self.transport.loseWriteConnection()

    def stopProducing(self):
        self.paused = True


def plant_module(directory, name, marker):
    """Write ``name``.py into ``directory``: a module that, when a Python
    imports it, appends its pid to ``marker`` and then hands over the real
    module of that name (so that whoever imported it goes on working)."""
    source = f"""\
import os, sys
with open({marker!r}, "a") as f:
    f.write(str(os.getpid()) + "\\n")
here = {os.fspath(directory)!r}
sys.path[:] = [p for p in sys.path if p not in ("", ".", here)]
del sys.modules[__name__]
import {name} as _real
sys.modules[__name__] = _real
"""
    with open(os.path.join(directory, name + ".py"), "w") as f:
        f.write(source)


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


# -- files and tools for interoperability tests -----------------------------------


def openssl_path():
    """The ``openssl`` command, or skip the test that needs it."""
    path = shutil.which("openssl")
    if path is None:
        raise SkipTest("openssl is not on PATH")
    return path


def write_file(testcase, name, data):
    """``data`` (bytes) in a new file ``name`` in a fresh directory of
    ``testcase``'s; returns its path."""
    directory = testcase.mktemp()
    os.makedirs(directory)
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.write(data)
    return path
