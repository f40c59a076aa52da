"""SIGHUP reloads the real daemon: a broken config changes nothing and it
keeps serving; a good one takes effect for new sessions while an open
session goes on with what it started with."""

import os

from twisted.internet import defer, endpoints, reactor
from twisted.internet.protocol import Factory, Protocol

from keyexchanged import keys, protocol
from keyexchanged.trust import PinnedKey
from tests.daemon import MESSAGE, Daemon, DaemonTestCase, connect_here
from tests.fixtures import CLIENT_KEY
from tests.vectors import RAW

FINGERPRINT = RAW["server_fingerprint"]


class Echoed(Protocol):
    """A session kept open: each write waits for its echo."""

    def __init__(self):
        self.data = b""
        self._waiting = None

    def echo(self, data):
        self.data = b""
        self._waiting = (data, defer.Deferred())
        self.transport.write(data)
        return self._waiting[1]

    def dataReceived(self, data):
        self.data += data
        if self._waiting is not None and self.data == self._waiting[0]:
            waiting, self._waiting = self._waiting[1], None
            waiting.callback(self.data)


class ReloadTests(DaemonTestCase):
    # A reload below changes workers: each config says workers itself.
    light_config = "ephemeral-bits = 2048\n"

    @defer.inlineCallbacks
    def test_bad_reload_keeps_serving_good_reload_takes_effect(self):
        self.write_config("application = echo\nworkers = 0\n")
        daemon = Daemon.start(["--config", self.conf])
        self.addCleanup(daemon.stop)
        port = yield daemon.listening
        # A session open across both reloads, under the echo application.
        old = Echoed()
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        yield protocol.connect(
            reactor, endpoint, PinnedKey(FINGERPRINT), Factory.forProtocol(lambda: old)
        )
        self.assertEqual((yield old.echo(b"before")), b"before")

        # A broken file: nothing changes, and it says where and why.
        yield self.assert_reload_refused(daemon, "application = echo\nworkers = 0\n")
        self.assertEqual((yield old.echo(b"still")), b"still")

        # A good one: new sessions get the message application.
        self.write_config("application = message\nmessage = reloaded!\nworkers = 1\n")
        daemon.signal("HUP")
        output = yield daemon.wait_for(b"reload: done")
        self.assertIn(b"reload: workers changes only at a restart", output)
        out, err, code = yield connect_here(port)
        self.assertEqual((out, code), (b"reloaded!", 0), err)
        # ... while the old session still echoes.
        self.assertEqual((yield old.echo(b"after")), b"after")
        old.transport.loseConnection()

    @defer.inlineCallbacks
    def test_a_new_long_term_key_is_logged_with_both_fingerprints(self):
        self.write_config("workers = 0\n")
        daemon = Daemon.start(["--config", self.conf])
        self.addCleanup(daemon.stop)
        port = yield daemon.listening
        # Another key (the vectors' client key: the test knows its fingerprint).
        other = os.path.join(self.dir, "other.key")
        keys.save_private_key(CLIENT_KEY, other)
        self.key = other
        self.write_config("workers = 0\n")
        daemon.signal("HUP")
        output = yield daemon.wait_for(b"reload: done")
        new = keys.fingerprint(CLIENT_KEY.public_key())
        self.assertIn(f"the long-term key changed from {FINGERPRINT} to {new}".encode(), output)
        # Clients pinned to the old key now refuse: the new one is served.
        _out, err, code = yield connect_here(port)
        self.assertEqual(code, 3, err)
        _out, err, code = yield connect_here(port, new)
        self.assertEqual(code, 0, err)


class ReloadIdentityTests(DaemonTestCase):
    """A key is generated only at the first start: a reload that finds no
    key file is refused as a whole, and the served key stays."""

    def connect(self, port):
        return connect_here(port)

    @defer.inlineCallbacks
    def assert_missing_key_refused(self, daemon, port, refusal):
        # A first session: the daemon serves, so SIGHUP has its handler.
        _out, err, code = yield self.connect(port)
        self.assertEqual(code, 0, err)
        os.unlink(self.key)
        daemon.signal("HUP")
        output = yield daemon.wait_for(refusal)
        self.assertIn(
            f"{self.key}: no such key file: a reload never makes a new key".encode(), output
        )
        # A session after the refusal: the reactor has gone on since, and
        # the old key still serves the clients pinned to it.
        out, err, code = yield self.connect(port)
        self.assertEqual(code, 0, err)
        self.assertEqual(out, MESSAGE)
        self.assertFalse(os.path.exists(self.key), "a reload generated a key")
        self.assertNotIn(b"generating", daemon.output)
        self.assertNotIn(b"reload done", daemon.output)
        self.assertNotIn(b"reload: done", daemon.output)
        self.assertNotIn(b"Traceback", daemon.output)

    @defer.inlineCallbacks
    def test_a_missing_key_file_is_refused(self):
        self.write_config("")
        daemon = Daemon.start(["--config", self.conf])
        self.addCleanup(daemon.stop)
        port = yield daemon.listening
        yield self.assert_missing_key_refused(daemon, port, b"reload failed, nothing changed: ")

    @defer.inlineCallbacks
    def test_a_missing_key_file_is_refused_by_the_processes_parent(self):
        self.write_config("processes = 2\n")
        daemon = Daemon.start(["--config", self.conf])
        self.addCleanup(daemon.stop)
        port = yield daemon.listening
        yield daemon.wait_for(b"all 2 child processes serve")
        yield self.assert_missing_key_refused(
            daemon, port, b"reload failed, nothing changed (no child told): "
        )
        # The parent logged SIGHUP once; no child was told.
        self.assertEqual(daemon.output.count(b"SIGHUP: reloading"), 1)

    @defer.inlineCallbacks
    def test_a_refused_reload_is_not_called_done(self):
        self.write_config("")
        daemon = Daemon.start(["--config", self.conf])
        self.addCleanup(daemon.stop)
        port = yield daemon.listening
        _out, err, code = yield self.connect(port)  # SIGHUP has its handler now
        self.assertEqual(code, 0, err)
        yield self.assert_reload_refused(daemon, "")
        _out, err, code = yield self.connect(port)
        self.assertEqual(code, 0, err)
        self.assertNotIn(b"reload done", daemon.output)
