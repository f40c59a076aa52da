"""A real HAProxy (TCP mode, ``send-proxy-v2``) in front of a KX/1 server
built here and wrapped by ProxyProtocolFactory; all on 127.0.0.1.

HAProxy is run by ``tests.haproxy``: its listening socket is made there and
handed to it, so the client connects at once; if HAProxy fails to start, it
exits and the test fails with its output.
"""

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, endpoints, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from keyexchanged.metrics import Metrics
from keyexchanged.protocol import SecureChannelFactory, connect
from keyexchanged.proxyproto import ProxyProtocolFactory, parse_trusted_proxies
from keyexchanged.trust import PinnedKey
from tests.fixtures import IDENTITY, StaticEphemeralKeys, ended_sessions
from tests.haproxy import SKIP, HAProxy

CONFIG = """\
global
    maxconn 64
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend kx
    bind fd@3
    default_backend kxd
backend kxd
    server kxd 127.0.0.1:{port} send-proxy-v2{check}
"""


class Reporter(Protocol):
    """The server's application: says whom it sees, then ends the session."""

    def connectionMade(self):
        peer = self.transport.getPeer()
        self.factory.seen.append(peer)
        self.transport.write(f"you are {peer.host}:{peer.port}".encode())
        self.transport.loseConnection()


class Server(SecureChannelFactory):
    """Records the address each connection is built for (what the
    per-source limit counts)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.built_for = []

    def buildProtocol(self, addr):
        self.built_for.append(addr)
        return super().buildProtocol(addr)


class Listener(Protocol):
    """The client's application: what the server said, when it ends."""

    def __init__(self):
        self.data = b""
        self.done = defer.Deferred()

    def connectionMade(self):
        self.local = self.transport.getHost()

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.done.callback(self.data)


class HAProxyTests(unittest.TestCase):
    skip = SKIP
    timeout = 30

    @defer.inlineCallbacks
    def start(self, check="", metrics=None):
        """The server, and HAProxy in front of it; returns HAProxy's port."""
        application = Factory.forProtocol(Reporter)
        application.seen = self.seen = []
        server = Server(
            application,
            IDENTITY,
            reactor=reactor,
            ephemeral_keys=StaticEphemeralKeys(),
            metrics=metrics,
        )
        self.proxied = ProxyProtocolFactory(server, parse_trusted_proxies("127.0.0.1/32"), reactor)
        port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            self.proxied
        )
        self.addCleanup(port.stopListening)
        self.haproxy = HAProxy.start(self, CONFIG.format(port=port.getHost().port, check=check))
        return self.haproxy.ports[0]

    @defer.inlineCallbacks
    def test_client_address_reaches_the_server_through_haproxy(self):
        ended = ended_sessions(self)
        front_port = yield self.start()
        client = Listener()
        endpoint = endpoints.TCP4ClientEndpoint(
            reactor, "127.0.0.1", front_port, bindAddress=("127.0.0.2", 0)
        )
        yield self.haproxy.unless_dies(
            connect(
                reactor,
                endpoint,
                PinnedKey(IDENTITY.fingerprint),
                Factory.forProtocol(lambda: client),
                server_name="127.0.0.1",
            )
        )
        said = yield client.done
        # 127.0.0.2 is the client's; HAProxy connects from 127.0.0.1.
        self.assertEqual(client.local.host, "127.0.0.2")
        real = f"127.0.0.2:{client.local.port}"
        self.assertEqual(said.decode(), f"you are {real}")
        [peer] = self.seen
        self.assertEqual((peer.host, peer.port), ("127.0.0.2", client.local.port))
        server = self.proxied.wrappedFactory
        [built_for] = server.built_for
        self.assertEqual((built_for.host, built_for.port), ("127.0.0.2", client.local.port))
        # The server's own log line names the client too.
        yield _until(lambda: real in ended)
        self.assertEqual(ended, {real: "ok"})
        self.assertEqual(server.admission.per_source, {})

    @defer.inlineCallbacks
    def test_health_check_is_a_local_connection(self):
        checked = defer.Deferred()

        def observe(event):
            text = event.get("log_format", "")
            if text.startswith("health check from") and not checked.called:
                checked.callback(event["proxy"])

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        ended = ended_sessions(self)
        # check-send-proxy: the health check carries a LOCAL header.
        metrics = Metrics()
        yield self.start(check=" check check-send-proxy inter 200", metrics=metrics)
        peer = yield self.haproxy.unless_dies(checked)
        self.assertEqual(peer, "127.0.0.1")
        self.assertEqual(self.seen, [])  # no session, no application
        # Logged and counted apart: not a session, not a failed handshake.
        self.assertEqual(ended, {})
        samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(metrics.render().decode("utf-8"))
            for sample in family.samples
        }
        self.assertGreaterEqual(samples["keyexchanged_health_checks_total", ()], 1)
        closed = ("keyexchanged_handshakes_total", (("kind", "full"), ("outcome", "closed")))
        self.assertNotIn(closed, samples)
        self.assertEqual(samples["keyexchanged_connections_open", ()], 0)


def _until(condition):
    """Fires once ``condition()`` holds, checked on each reactor turn (the
    log line comes as the connection closes, a turn after the data)."""
    d = defer.Deferred()

    def check():
        if condition():
            d.callback(None)
        else:
            reactor.callLater(0, check)

    check()
    return d
