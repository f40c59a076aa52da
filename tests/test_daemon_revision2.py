"""KX/1 revision 2 as a user runs it: the real ``twistd keyexchange`` and
the real ``keyexchange`` on 127.0.0.1 — forward secrecy by default, full
then resumed sessions, daemons sharing a ticket-key file, a restarted
daemon's stale tickets, and the tunnel resuming its connections."""

import os
import socket

from twisted.internet import defer, endpoints, reactor
from twisted.internet.protocol import Factory, Protocol

from keyexchanged import protocol, tickets
from keyexchanged.trust import PinnedKey
from tests.daemon import CLIENT, Daemon, DaemonTestCase, run_client
from tests.vectors import RAW

FINGERPRINT = RAW["server_fingerprint"]
DEFAULT_MESSAGE = b"The secret message: hello from keyexchanged."


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


class Revision2SystemTests(DaemonTestCase):
    @defer.inlineCallbacks
    def start(self, *args, listen="tcp:0:interface=127.0.0.1"):
        daemon = Daemon.start(["--listen", listen, "--private-key", self.key, *args])
        self.addCleanup(daemon.stop)
        port = yield daemon.listening
        return daemon, port

    def connect(self, port, *args):
        return run_client("connect", f"127.0.0.1:{port}", "--fingerprint", FINGERPRINT, *args)

    @defer.inlineCallbacks
    def test_full_then_resumed_with_a_ticket_cache(self):
        daemon, port = yield self.start()
        cache = os.path.join(self.dir, "tickets.json")
        out, err, code = yield self.connect(port, "--ticket-cache", cache)
        self.assertEqual((out, code), (DEFAULT_MESSAGE, 0), err)
        yield daemon.wait_for(b"ended: ok; full, forward secrecy")
        self.assertEqual(os.stat(cache).st_mode & 0o777, 0o600)
        out, err, code = yield self.connect(port, "--ticket-cache", cache, "--explain")
        self.assertEqual((out, code), (DEFAULT_MESSAGE, 0), err)
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
        self.assertEqual((out, code), (DEFAULT_MESSAGE, 0), err)
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
        self.assertEqual(app.data, DEFAULT_MESSAGE)
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
        self.assertEqual((out, code), (DEFAULT_MESSAGE, 0), err)
        self.assertEqual((yield daemon.stop()), 0)
        # Restarted: new random ticket keys, the client's ticket is stale.
        daemon, _ = yield self.start(listen=listen)
        out, err, code = yield self.connect(port, "--ticket-cache", cache, "--explain")
        self.assertEqual((out, code), (DEFAULT_MESSAGE, 0), err)
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
        tunnel = Daemon.spawn(
            [
                *CLIENT,
                "tunnel",
                "--listen",
                "tcp:0:interface=127.0.0.1",
                "--server",
                f"127.0.0.1:{port}",
                "--fingerprint",
                FINGERPRINT,
            ]
        )
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
