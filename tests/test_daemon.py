"""System tests: the real ``twistd keyexchange`` and ``keyexchange connect``
as child processes on 127.0.0.1."""

import json
import os
import re
import socket

from twisted.internet import defer, endpoints, reactor
from twisted.internet.protocol import Factory, Protocol

from keyexchanged import config, keys, protocol, tickets
from keyexchanged.framing import encode_frame
from keyexchanged.trust import PinnedKey
from tests.daemon import (
    LIGHT,
    MESSAGE,
    Daemon,
    DaemonTestCase,
    connect_here,
    environment,
    run_client,
)
from tests.fixtures import SERVER_KEY, frames
from tests.vectors import RAW

FINGERPRINT = RAW["server_fingerprint"]


class Raw(Protocol):
    """A plain TCP peer for sending junk."""

    def __init__(self, data):
        self.data = data
        self.received = b""
        self.closed = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self.data)

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.closed.callback(self.received)


class DaemonTests(DaemonTestCase):
    def setUp(self):
        super().setUp()
        self.write_config()

    @defer.inlineCallbacks
    def start(self, *args):
        daemon = Daemon.start(["--config", self.conf, *args])
        self.addCleanup(daemon.stop)
        self.port = yield daemon.listening
        return daemon

    def shared(self):
        """The daemon of this config, for a test that only connects to it."""
        daemon = self.shared_daemon()
        self.port = daemon.port
        return daemon

    @defer.inlineCallbacks
    def test_pinned_client_gets_the_message(self):
        daemon = yield self.start()
        out, err, code = yield run_client(
            "connect", f"127.0.0.1:{self.port}", "--fingerprint", FINGERPRINT
        )
        self.assertEqual((out, code), (MESSAGE, 0), err)
        self.assertIn(f"serving RSA-2048 key {FINGERPRINT}".encode(), daemon.output)
        yield daemon.wait_for(b"ended: ok")
        code = yield daemon.stop()
        self.assertEqual(code, 0, daemon.output.decode())

    @defer.inlineCallbacks
    def test_explain_narrates_public_values_only(self):
        self.shared()
        out, err, code = yield run_client(
            "connect", f"127.0.0.1:{self.port}", "--fingerprint", FINGERPRINT, "--explain"
        )
        self.assertEqual((out, code), (MESSAGE, 0), err)
        for step in (
            b"2048 bits",
            FINGERPRINT.encode(),
            b"OAEP",
            b"ephemeral RSA key of 2048 bits",
            b"signature by the long-term key verifies",
            b"forward secrecy",
            b"256 bytes",
            b"transcript hash",
            b"server_key",
            b"Handshake complete",
        ):
            self.assertIn(step, err)

    @defer.inlineCallbacks
    def test_wrong_fingerprint_is_refused_before_key(self):
        daemon = self.shared()
        wrong = "SHA256:" + "A" * 43
        out, err, code = yield run_client(
            "connect", f"127.0.0.1:{self.port}", "--fingerprint", wrong
        )
        self.assertEqual((out, code), (b"", 3))
        self.assertIn(b"does not match the pinned fingerprint", err)
        # The server saw ERROR untrusted-key and never a KEY.
        log = yield daemon.wait_for(b"ended: untrusted-key")
        line = next(x for x in log.splitlines() if b"ended: untrusted-key" in x)
        bytes_in = int(re.search(rb"; (\d+) bytes in", line).group(1))
        self.assertLess(bytes_in, SERVER_KEY.n.bit_length() // 8)

    @defer.inlineCallbacks
    def test_no_trust_anchor_says_how_to_pin(self):
        self.shared()
        _, err, code = yield run_client("connect", f"127.0.0.1:{self.port}")
        self.assertEqual(code, 3)
        self.assertIn(f"--fingerprint {FINGERPRINT}".encode(), err)

    @defer.inlineCallbacks
    def test_stdin_goes_to_the_server(self):
        self.shared()
        out, err, code = yield run_client(
            "connect", f"127.0.0.1:{self.port}", "--fingerprint", FINGERPRINT, stdin=b"x" * 100000
        )
        self.assertEqual((out, code), (MESSAGE, 0), err)

    @defer.inlineCallbacks
    def test_send_file_and_stdin_dash(self):
        """A secret from a file, and from stdin with ``--send-file -``: what
        the echo application sends back is the file, byte for byte."""
        daemon = yield self.start("--application", "echo")
        secret = b"\x00 not for ps \xff" * 5000
        path = os.path.join(self.dir, "secret")
        with open(path, "wb") as f:
            f.write(secret)
        server = f"127.0.0.1:{self.port}"
        out, err, code = yield run_client(
            "connect", server, "--fingerprint", FINGERPRINT, "--send-file", path
        )
        self.assertEqual((out, code), (secret, 0), err)
        out, err, code = yield run_client(
            "connect", server, "--fingerprint", FINGERPRINT, "--send-file", "-", stdin=secret
        )
        self.assertEqual((out, code), (secret, 0), err)
        self.assertNotIn(b"not for ps", daemon.output)

    @defer.inlineCallbacks
    def test_message_on_the_command_line_is_warned_of(self):
        daemon = yield self.start("--message", "visible in ps")
        self.assertIn(b"--message is in the process list", daemon.output)
        out, err, code = yield connect_here(self.port)
        self.assertEqual((out, code), (b"visible in ps", 0), err)

    @defer.inlineCallbacks
    def test_keeps_serving_after_bad_connections(self):
        daemon = self.shared()
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        for junk, code in [
            (b"GET / HTTP/1.1\r\n\r\n", "malformed-frame"),
            (b"KEY 99999\r\n", "frame-too-large"),
            (b"MSG 16\r\n", "unexpected-frame"),
            (encode_frame("KEY", b"\0" * 10), "malformed-frame"),
        ]:
            raw = Raw(junk)
            yield endpoints.connectProtocol(endpoint, raw)
            received = yield raw.closed
            verbs = frames(received)
            self.assertEqual([v for v, _ in verbs], ["HELLO", "ERROR"])
            self.assertEqual(json.loads(verbs[1][1])["error"], code)
            yield daemon.wait_for(b"ended: " + code.encode())
        out, err, exit_code = yield run_client(
            "connect", f"127.0.0.1:{self.port}", "--fingerprint", FINGERPRINT
        )
        self.assertEqual((out, exit_code), (MESSAGE, 0), err)

    @defer.inlineCallbacks
    def test_key_readable_by_others_refused(self):
        os.chmod(self.key, 0o640)
        daemon = Daemon.start(["--config", self.conf])
        code = yield daemon.refused()
        self.assertNotEqual(code, 0)
        self.assertIn(b"chmod 600", daemon.output)

    @defer.inlineCallbacks
    def test_first_start_without_a_key_or_config(self):
        """``twistd -n keyexchange`` on a fresh install, told only where to
        listen: the default port, 51424, is tested without binding it
        (test_config's and test_client's default tests)."""
        home = os.path.join(self.dir, "home")
        env = environment(HOME=home, XDG_DATA_HOME="")
        if os.getuid() == 0:
            # root's default is /var/lib/keyexchanged: use the systemd
            # override instead of writing there.
            env["STATE_DIRECTORY"] = os.path.join(self.dir, "state")
        else:
            env.pop("STATE_DIRECTORY", None)
        daemon = Daemon.start(["--listen", "tcp:0:interface=127.0.0.1"], env=env)
        self.addCleanup(daemon.stop)
        port = yield daemon.listening
        key_path = config.default_key_path(env)
        self.assertTrue(key_path.startswith(self.dir), key_path)
        self.assertEqual(os.stat(key_path).st_mode & 0o777, 0o600)
        fingerprint = keys.fingerprint(keys.load_public_key(key_path + ".pub"))
        self.assertIn(f"RSA-3072 key {fingerprint}".encode(), daemon.output)
        out, err, code = yield connect_here(port, fingerprint)
        self.assertEqual((out, code), (MESSAGE, 0), err)


class PostQuantumTests(DaemonTestCase):
    """KX/1 revision 3 end to end: the real daemon with its defaults (ML-KEM
    on, AES-256-OCB named) and the real ``keyexchange connect``."""

    def setUp(self):
        super().setUp()
        self.write_config("")

    @defer.inlineCallbacks
    def start(self, *args):
        daemon = Daemon.start(["--config", self.conf, *args])
        self.addCleanup(daemon.stop)
        self.port = yield daemon.listening
        return daemon

    def connect(self, *args):
        return run_client("connect", f"127.0.0.1:{self.port}", "--fingerprint", FINGERPRINT, *args)

    @defer.inlineCallbacks
    def test_full_then_resumed_hybrid_sessions_with_ocb(self):
        daemon = self.shared_daemon()
        self.port = daemon.port
        started = yield daemon.started()
        self.assertIn(b"post-quantum: an ML-KEM-768 key with each ephemeral key", started)
        cache = os.path.join(self.dir, "tickets.json")
        out, err, code = yield self.connect("--explain", "--ticket-cache", cache)
        self.assertEqual((out, code), (MESSAGE, 0), err)
        for step in (
            b"HELLO: ML-KEM-768 key (1184 bytes, FIPS 203)",
            b"'kx/1 hybrid ephemeral keys'",
            b"the server names the record cipher aes-256-ocb",
            b"a 1088-byte ciphertext after the RSA one in KEY (",
            b"'kx/1 hybrid keys'",
            b"records in AES-256-OCB",
        ):
            self.assertIn(step, err)
        yield daemon.wait_for(b"ended: ok; full, forward secrecy, post-quantum, aes-256-ocb")
        out, err, code = yield self.connect("--explain", "--ticket-cache", cache)
        self.assertEqual((out, code), (MESSAGE, 0), err)
        self.assertIn(b"resuming: RESUME", err)
        self.assertIn(b"this session inherits it", err)
        self.assertIn(b"records in AES-256-OCB", err)
        yield daemon.wait_for(
            b"ended: ok; resumed (secrecy bounded by the ticket keys), post-quantum"
        )

    @defer.inlineCallbacks
    def test_no_post_quantum_warns_and_the_client_refuses_it(self):
        daemon = yield self.start("--no-post-quantum")
        self.assertIn(b"post-quantum is OFF (--no-post-quantum)", daemon.output)
        out, err, code = yield self.connect()
        self.assertEqual((out, code), (b"", 3), err)
        self.assertIn(b"the server offers no ML-KEM key", err)
        self.assertIn(b"--allow-classical", err)
        yield daemon.wait_for(b"ended: no-post-quantum")
        out, err, code = yield self.connect("--allow-classical")
        self.assertEqual((out, code), (MESSAGE, 0), err)
        log = yield daemon.wait_for(b"ended: ok; full, forward secrecy")
        self.assertNotIn(b"ended: ok; full, forward secrecy, post-quantum", log)

    @defer.inlineCallbacks
    def test_record_cipher_gcm_named(self):
        daemon = yield self.start("--record-cipher", "aes-256-gcm")
        out, err, code = yield self.connect("--explain")
        self.assertEqual((out, code), (MESSAGE, 0), err)
        self.assertIn(b"records in AES-256-GCM", err)
        yield daemon.wait_for(b"ended: ok; full, forward secrecy, post-quantum, aes-256-gcm")

    @defer.inlineCallbacks
    def test_contradicting_flags_are_a_usage_error(self):
        daemon = Daemon.start(
            ["--config", self.conf, "--no-post-quantum", "--require-post-quantum"]
        )
        daemon.listening.addErrback(lambda failure: None)  # it never listens
        code = yield daemon.ended
        self.assertNotEqual(code, 0)
        self.assertIn(b"--no-post-quantum and --require-post-quantum contradict", daemon.output)


def free_port():
    """A port nobody listens on now (for a daemon restarted on the same one)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Collect(Protocol):
    def __init__(self):
        self.data = b""
        self.ended = defer.Deferred()
        self._waiting = None

    def received(self, data):
        """Fires once ``data`` has arrived (bounded by the test's timeout)."""
        self._waiting = (data, defer.Deferred())
        self.dataReceived(b"")
        return self._waiting[1]

    def dataReceived(self, data):
        self.data += data
        if self._waiting is not None and self.data == self._waiting[0]:
            waiting, self._waiting = self._waiting[1], None
            waiting.callback(None)

    def connectionLost(self, reason):
        self.ended.callback(reason.value)


class ForwardSecrecyAndResumptionTests(DaemonTestCase):
    """Forward secrecy by default, full then resumed sessions, daemons
    sharing a ticket-key file, a restarted daemon's stale tickets, and the
    tunnel resuming its connections."""

    @defer.inlineCallbacks
    def start(self, *args, listen="tcp:0:interface=127.0.0.1"):
        daemon = Daemon.start(["--listen", listen, "--private-key", self.key, *LIGHT, *args])
        self.addCleanup(daemon.stop)
        port = yield daemon.listening
        return daemon, port

    def connect(self, port, *args):
        return run_client("connect", f"127.0.0.1:{port}", "--fingerprint", FINGERPRINT, *args)

    @defer.inlineCallbacks
    def test_full_then_resumed_with_a_ticket_cache(self):
        daemon = self.shared_daemon()
        port = daemon.port
        cache = os.path.join(self.dir, "tickets.json")
        out, err, code = yield self.connect(port, "--ticket-cache", cache)
        self.assertEqual((out, code), (MESSAGE, 0), err)
        yield daemon.wait_for(b"ended: ok; full, forward secrecy")
        self.assertEqual(os.stat(cache).st_mode & 0o777, 0o600)
        out, err, code = yield self.connect(port, "--ticket-cache", cache, "--explain")
        self.assertEqual((out, code), (MESSAGE, 0), err)
        self.assertIn(b"resuming: RESUME carries the ticket", err)
        self.assertNotIn(b"KEY: secret encrypted", err)
        log = yield daemon.wait_for(b"ended: ok; resumed")
        # Neither a ticket nor a secret reaches the log.
        with open(cache) as f:
            import json

            stored = json.load(f)["tickets"]
        self.assertEqual(len(stored), 1)  # the new ticket from the resumed session
        for entry in stored:
            self.assertNotIn(entry["ticket"].encode(), log)
            self.assertNotIn(entry["secret"].encode(), log)

    @defer.inlineCallbacks
    def test_no_forward_secrecy_is_refused_unless_allowed(self):
        daemon, port = yield self.start("--no-forward-secrecy")
        yield daemon.wait_for(b"forward secrecy is OFF")
        out, err, code = yield self.connect(port)
        self.assertEqual((out, code), (b"", 3), err)
        self.assertIn(b"--allow-no-forward-secrecy", err)
        out, err, code = yield self.connect(port, "--allow-no-forward-secrecy")
        self.assertEqual((out, code), (MESSAGE, 0), err)
        yield daemon.wait_for(b"ended: ok; full, no forward secrecy")

    @defer.inlineCallbacks
    def session(self, port, store, address=("cluster.example", 51424)):
        """One session through the Python API, tickets filed under ``address``
        whichever daemon answers (as behind one balanced address)."""
        app = Collect()
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        application = yield protocol.connect(
            reactor,
            endpoint,
            PinnedKey(FINGERPRINT),
            Factory.forProtocol(lambda: app),
            server_name="127.0.0.1",
            tickets=store,
            server_address=address,
        )
        resumed = application.transport.resumed
        yield app.ended
        self.assertEqual(app.data, MESSAGE)
        return resumed

    @defer.inlineCallbacks
    def test_two_daemons_sharing_ticket_keys_resume_each_others_tickets(self):
        keyfile = os.path.join(self.dir, "ticket.keys")
        tickets.new_ticket_key_file(keyfile)
        first, first_port = yield self.start("--ticket-keys", keyfile)
        second, second_port = yield self.start("--ticket-keys", keyfile)
        store = tickets.TicketStore()
        self.assertFalse((yield self.session(first_port, store)))
        self.assertTrue((yield self.session(second_port, store)))
        self.assertTrue((yield self.session(first_port, store)))
        yield second.wait_for(b"ended: ok; resumed")
        yield first.wait_for(b"ended: ok; resumed")

    @defer.inlineCallbacks
    def test_a_daemon_without_its_old_ticket_keys_is_stale_and_the_client_falls_back(self):
        port = free_port()
        listen = f"tcp:{port}:interface=127.0.0.1"
        daemon, _ = yield self.start(listen=listen)
        cache = os.path.join(self.dir, "tickets.json")
        out, err, code = yield self.connect(port, "--ticket-cache", cache)
        self.assertEqual((out, code), (MESSAGE, 0), err)
        self.assertEqual((yield daemon.stop()), 0)
        # Restarted: new random ticket keys, the client's ticket is stale.
        daemon, _ = yield self.start(listen=listen)
        out, err, code = yield self.connect(port, "--ticket-cache", cache, "--explain")
        self.assertEqual((out, code), (MESSAGE, 0), err)
        self.assertIn(b"stale-ticket", err)
        log = yield daemon.wait_for(b"ended: ok; full, forward secrecy")
        self.assertIn(b"ended: stale-ticket", log)

    @defer.inlineCallbacks
    def test_the_tunnel_resumes_every_connection_after_the_first(self):
        targets = []

        class Echo(Protocol):
            def dataReceived(self, data):
                self.transport.write(data)

        service = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(lambda: targets.append(Echo()) or targets[-1])
        )
        self.addCleanup(service.stopListening)
        daemon, port = yield self.start(
            "--application", "forward", "--forward-to", f"tcp:127.0.0.1:{service.getHost().port}"
        )
        tunnel = Daemon.tunnel(port)
        self.addCleanup(tunnel.stop)
        local = yield tunnel.listening
        kinds = []
        for i in range(3):
            app = Collect()
            endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", local)
            yield endpoints.connectProtocol(endpoint, app)
            app.transport.write(b"ping %d" % i)
            yield app.received(b"ping %d" % i)
            name = b"tunnel from 127.0.0.1:%d to 127.0.0.1: " % app.transport.getHost().port
            either = [tunnel.wait_for(name + kind) for kind in (b"full handshake", b"resumed")]
            yield defer.DeferredList(either, fireOnOneCallback=True)
            kinds += [kind for kind, d in zip((b"full handshake", b"resumed"), either) if d.called]
            app.transport.loseConnection()
            yield app.ended
        self.assertEqual(kinds, [b"full handshake", b"resumed", b"resumed"])
        log = yield daemon.wait_for(b"ended: ok; resumed")
        self.assertIn(b"ended: ok; full, forward secrecy", log)
