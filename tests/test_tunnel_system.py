"""The tunnel as a user runs it: a TCP service started here, the real
``twistd keyexchange --application forward`` and the real ``keyexchange
tunnel``, all on 127.0.0.1; and an application plugin found on the plugin
path."""

import hashlib
import os
import shutil
import socket

from twisted.internet import defer, endpoints, error, interfaces, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.trial import unittest
from zope.interface import implementer

from tests.daemon import CLIENT, LIGHT, Daemon, DaemonTestCase, connect_here, environment
from tests.fixtures import Pusher, Target
from tests.vectors import RAW

FINGERPRINT = RAW["server_fingerprint"]

SIZE = int(os.environ.get("KX_TUNNEL_SIZE", 64 * 1024 * 1024))


@implementer(interfaces.IHalfCloseableProtocol)
class _Both(Pusher):
    """Sends ``total`` bytes, then FIN; hashes what comes back; closes when
    both directions are done."""

    def __init__(self, total):
        super().__init__(total, seed=b"tunnel")
        self.received = hashlib.sha256()
        self.count = 0
        self.read_done = self.write_done = False
        self.lost = defer.Deferred()

    def dataReceived(self, data):
        self.received.update(data)
        self.count += len(data)

    def readConnectionLost(self):
        self.read_done = True
        if self.write_done:
            self.transport.loseConnection()

    def writeConnectionLost(self):
        self.write_done = True
        if self.read_done:
            self.transport.loseConnection()

    def connectionLost(self, reason):
        self.lost.callback(reason.value)


class SystemTunnelTests(DaemonTestCase):
    @defer.inlineCallbacks
    def start_daemon(self, *args, env=None):
        daemon = Daemon.start(
            ["--listen", "tcp:0:interface=127.0.0.1", "--private-key", self.key, *LIGHT, *args],
            env=env,
        )
        self.addCleanup(daemon.stop)
        port = yield daemon.listening
        return daemon, port

    @defer.inlineCallbacks
    def start_tunnel(self, target_port):
        """The real daemon forwarding to ``target_port``, and the real
        ``keyexchange tunnel`` in front of it; fires with (daemon, local port)."""
        daemon, port = yield self.start_daemon(
            "--application", "forward", "--forward-to", f"tcp:127.0.0.1:{target_port}"
        )
        self.tunnel = Daemon.tunnel(port)
        self.addCleanup(self.tunnel.stop)
        local_port = yield self.tunnel.listening
        return daemon, local_port

    @defer.inlineCallbacks
    def test_64_mib_both_ways_through_tunnel_and_forward(self):
        targets = []
        service = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(lambda: targets.append(Target(echo=True)) or targets[-1])
        )
        self.addCleanup(service.stopListening)
        daemon, local_port = yield self.start_tunnel(service.getHost().port)
        both = _Both(SIZE)
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", local_port)
        yield endpoints.connectProtocol(endpoint, both)
        reason = yield both.lost
        self.assertIsInstance(reason, error.ConnectionDone)
        self.assertEqual(both.sent, SIZE)
        self.assertEqual(both.count, SIZE)
        self.assertEqual(both.received.digest(), both.digest.digest())
        (target,) = targets
        self.assertEqual(len(target.data), SIZE)
        self.assertEqual(hashlib.sha256(target.data).digest(), both.digest.digest())
        yield daemon.wait_for(b"ended: ok")
        self.assertEqual((yield self.tunnel.stop()), 0)

    @defer.inlineCallbacks
    def test_plugin_on_the_plugin_path_is_found_and_served(self):
        plugins = os.path.join(self.dir, "site", "keyexchanged", "plugins")
        os.makedirs(plugins)
        with open(os.path.join(plugins, "shout.py"), "w") as f:
            f.write(
                "from twisted.internet.protocol import Factory, Protocol\n"
                "from keyexchanged.applications import Application\n\n"
                "class Shout(Protocol):\n"
                "    def dataReceived(self, data):\n"
                "        self.transport.write(data.upper())\n\n"
                "shout = Application('shout', 'answer in capitals',\n"
                "                    lambda settings, reactor: Factory.forProtocol(Shout))\n"
            )
        site = os.path.join(self.dir, "site")
        env = environment()
        env["PYTHONPATH"] = site + os.pathsep + env["PYTHONPATH"]
        listing = Daemon.start(["--help-applications"], env=env)
        code = yield listing.refused()
        self.assertEqual(code, 0, listing.output)
        self.assertIn(b"shout", listing.output)
        self.assertIn(b"answer in capitals", listing.output)
        _, port = yield self.start_daemon("--application", "shout", env=env)
        out, err, code = yield connect_here(port, send=b"hello")
        self.assertEqual((out, code), (b"HELLO", 0), err)

    @defer.inlineCallbacks
    def test_redis_through_the_tunnel(self):
        """The issue's own check: a real redis-server, reached through
        ``keyexchange tunnel`` → ``twistd keyexchange --application forward``."""
        server = shutil.which("redis-server")
        if server is None:
            raise unittest.SkipTest("redis-server is not installed (apt-get install redis-server)")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            redis_port = s.getsockname()[1]
        redis = Daemon.spawn(
            [server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir]
        )  # fmt: skip
        redis.listening.addErrback(lambda failure: None)  # it never says "listening on"
        self.addCleanup(redis.stop)
        yield redis.wait_for(b"Ready to accept connections")
        _, local_port = yield self.start_tunnel(redis_port)
        value = bytes(range(256)) * 64  # binary-safe, 16 KiB
        request = (
            b"*1\r\n$4\r\nPING\r\n"
            + b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$%d\r\n%s\r\n" % (len(value), value)
            + b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n"
        )
        expected = b"+PONG\r\n+OK\r\n$%d\r\n%s\r\n" % (len(value), value)
        reply = Reply(len(expected))
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", local_port)
        yield endpoints.connectProtocol(endpoint, reply)
        reply.transport.write(request)
        answer = yield reply.complete
        self.assertEqual(answer, expected)
        reply.transport.loseConnection()

    @defer.inlineCallbacks
    def test_an_unknown_host_is_refused_with_what_tunnel_can_do(self):
        """No terminal prompt and no --accept-new in a tunnel: its advice
        names connect and --fingerprint instead."""
        port = self.shared_daemon().port  # the tunnel only connects to it
        known_hosts = os.path.join(self.dir, "known_hosts")
        open(known_hosts, "w").close()
        server = f"127.0.0.1:{port}"
        argv = [*CLIENT, "tunnel", "--listen", "tcp:0:interface=127.0.0.1"]
        tunnel = Daemon.spawn([*argv, "--server", server, "--known-hosts", known_hosts])
        self.addCleanup(tunnel.stop)
        local_port = yield tunnel.listening
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", local_port)
        local = Target(echo=False)
        yield endpoints.connectProtocol(endpoint, local)
        output = yield tunnel.wait_for(b"is not a known host")
        text = " ".join(output.decode().split())
        self.assertIn(f"add it with 'keyexchange connect {server}'", text)
        self.assertIn(f"give this tunnel --fingerprint {FINGERPRINT}", text)
        self.assertNotIn("run again on a terminal", text)


class Reply(Protocol):
    """Collects ``size`` bytes of answer."""

    def __init__(self, size):
        self.size = size
        self.data = b""
        self.complete = defer.Deferred()

    def dataReceived(self, data):
        self.data += data
        if len(self.data) >= self.size and not self.complete.called:
            self.complete.callback(self.data)

    def connectionLost(self, reason):
        if not self.complete.called:
            self.complete.callback(self.data)
