"""A real HAProxy (TCP mode, ``send-proxy-v2``) in front of a KX/1 server
built here and wrapped by ProxyProtocolFactory; all on 127.0.0.1.

HAProxy's listening socket is made here and handed to it as a file
descriptor (``bind fd@3``): it is listening before HAProxy starts, so the
client connects at once and its connection waits in the queue; there is
nothing to poll and no port to guess.  If HAProxy fails to start, it exits
and the test fails with its output.
"""

import os
import shutil
import socket

from twisted.internet import defer, endpoints, protocol, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest

from keyexchanged.protocol import SecureChannelFactory, connect
from keyexchanged.proxyproto import ProxyProtocolFactory, parse_trusted_proxies
from keyexchanged.trust import PinnedKey
from tests.fixtures import IDENTITY, ended_sessions
from tests.rev2 import StaticEphemeralKeys

HAPROXY = shutil.which(
    "haproxy", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
)
SKIP = None if HAPROXY else "haproxy is not installed (apt-get install -y haproxy)"

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


class HAProxy(protocol.ProcessProtocol):
    def __init__(self):
        self.output = b""
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason):
        self.ended.callback(reason.value.exitCode)


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
    def start(self, check=""):
        """The server, and HAProxy in front of it; returns HAProxy's port."""
        application = Factory.forProtocol(Reporter)
        application.seen = self.seen = []
        server = Server(
            application, IDENTITY, reactor=reactor, ephemeral_keys=StaticEphemeralKeys()
        )
        self.proxied = ProxyProtocolFactory(server, parse_trusted_proxies("127.0.0.1/32"), reactor)
        port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            self.proxied
        )
        self.addCleanup(port.stopListening)

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        config = os.path.join(directory, "haproxy.cfg")
        with open(config, "w") as f:
            f.write(CONFIG.format(port=port.getHost().port, check=check))
        front = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        front.bind(("127.0.0.1", 0))
        front.listen(16)
        self.haproxy = HAProxy()
        reactor.spawnProcess(
            self.haproxy,
            HAPROXY,
            [HAPROXY, "-db", "-f", config],
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            childFDs={0: "w", 1: "r", 2: "r", 3: front.fileno()},
        )
        front_port = front.getsockname()[1]
        # HAProxy holds the socket now: if it dies, connections are refused
        # instead of waiting in a queue nobody reads.
        front.close()
        self.addCleanup(self.stop_haproxy)
        return front_port

    @defer.inlineCallbacks
    def stop_haproxy(self):
        if not self.haproxy.ended.called:
            self.haproxy.transport.signalProcess("TERM")
        yield self.haproxy.ended

    def unless_haproxy_dies(self, d):
        """``d``'s result, or a failure with HAProxy's output if it exits first."""
        result = defer.Deferred()

        def died(code):
            if not result.called:
                output = self.haproxy.output.decode(errors="replace")
                result.errback(RuntimeError(f"haproxy exited ({code}):\n{output}"))
            return code

        def done(outcome):
            if not result.called:
                if isinstance(outcome, Failure):
                    result.errback(outcome)
                else:
                    result.callback(outcome)

        self.haproxy.ended.addCallback(died)
        d.addBoth(done)
        return result

    @defer.inlineCallbacks
    def test_client_address_reaches_the_server_through_haproxy(self):
        ended = ended_sessions(self)
        front_port = yield self.start()
        client = Listener()
        endpoint = endpoints.TCP4ClientEndpoint(
            reactor, "127.0.0.1", front_port, bindAddress=("127.0.0.2", 0)
        )
        yield self.unless_haproxy_dies(
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
        local = defer.Deferred()

        def observe(event):
            if event.get("log_format", "").startswith("PROXY protocol: LOCAL") and not local.called:
                local.callback(event["proxy"])

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        # check-send-proxy: the health check carries a LOCAL header.
        yield self.start(check=" check check-send-proxy inter 200")
        proxy = yield self.unless_haproxy_dies(local)
        self.assertTrue(proxy.startswith("127.0.0.1:"), proxy)
        self.assertEqual(self.seen, [])  # no session, no application


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
