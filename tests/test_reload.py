"""SIGHUP reloads the real daemon: a broken config changes nothing and it
keeps serving; a good one takes effect for new sessions while an open
session goes on with what it started with."""

import os

from twisted.internet import defer, endpoints, reactor
from twisted.internet.protocol import Factory, Protocol

from keyexchanged import protocol
from keyexchanged.trust import PinnedKey
from tests.daemon import Daemon, DaemonTestCase, run_client
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
    # A reload that changes workers needs a daemon started without them.
    light_config = "ephemeral-bits = 2048\n"

    def connect(self, port):
        return run_client("connect", f"127.0.0.1:{port}", "--fingerprint", FINGERPRINT)

    @defer.inlineCallbacks
    def test_bad_reload_keeps_serving_good_reload_takes_effect(self):
        self.write_config("application = echo\n")
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
        yield self.assert_reload_refused(daemon, "application = echo\n")
        self.assertEqual((yield old.echo(b"still")), b"still")

        # A good one: new sessions get the message application.
        self.write_config("application = message\nmessage = reloaded!\nworkers = 0\n")
        daemon.signal("HUP")
        output = yield daemon.wait_for(b"reload: done")
        self.assertIn(b"reload: workers changes only at a restart", output)
        out, err, code = yield self.connect(port)
        self.assertEqual((out, code), (b"reloaded!", 0), err)
        # ... while the old session still echoes.
        self.assertEqual((yield old.echo(b"after")), b"after")
        old.transport.loseConnection()

    @defer.inlineCallbacks
    def test_a_new_long_term_key_is_logged_with_both_fingerprints(self):
        self.write_config("")
        daemon = Daemon.start(["--config", self.conf])
        self.addCleanup(daemon.stop)
        port = yield daemon.listening
        other = os.path.join(self.dir, "other.key")
        _out, err, code = yield run_client("keygen", "--bits", "2048", "--out", other)
        self.assertEqual(code, 0, err)
        self.key = other
        self.write_config("")
        daemon.signal("HUP")
        output = yield daemon.wait_for(b"reload: done")
        self.assertIn(
            b"the long-term key changed from " + FINGERPRINT.encode() + b" to SHA256:", output
        )
        # Clients pinned to the old key now refuse: the new one is served.
        _out, err, code = yield self.connect(port)
        self.assertEqual(code, 3, err)
