"""The daemon as systemd runs it: the unit files, socket activation with
the real ``systemd-socket-activate``, readiness and reload notifications,
and ``--listen haproxy:...``; all with the real ``twistd keyexchange`` on
127.0.0.1."""

import json
import os
import re
import shutil
import socket
import tempfile
import time

from twisted.internet import defer, endpoints, reactor
from twisted.internet.protocol import DatagramProtocol, Protocol
from twisted.trial import unittest

from keyexchanged import tickets
from tests.daemon import (
    LIGHT,
    LIGHT_CONFIG,
    MESSAGE,
    TWISTD,
    Daemon,
    DaemonTestCase,
    connect_here,
    environment,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACTIVATE = shutil.which("systemd-socket-activate")
NO_ACTIVATE = "systemd-socket-activate is not installed (apt-get install -y systemd)"
PENDING = "needs integration in tap.py (pending restructure)"


def unit(name):
    """A unit file as [(section, key, value)], in order; keys may repeat."""
    entries = []
    section = None
    with open(os.path.join(ROOT, "etc", name)) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = line.strip("[]")
                continue
            key, _, value = line.partition("=")
            entries.append((section, key.strip(), value.strip()))
    return entries


def values(entries, section, key):
    return [v for s, k, v in entries if (s, k) == (section, key)]


class UnitFileTests(unittest.SynchronousTestCase):
    def setUp(self):
        self.service = unit("keyexchanged.service")
        self.socket = unit("keyexchanged.socket")

    def test_notify_and_reload(self):
        self.assertEqual(values(self.service, "Service", "Type"), ["notify"])
        self.assertEqual(values(self.service, "Service", "NotifyAccess"), ["main"])
        self.assertEqual(values(self.service, "Service", "ExecReload"), ["/bin/kill -HUP $MAINPID"])

    def test_service_listens_on_the_socket_units_name(self):
        [start] = values(self.service, "Service", "ExecStart")
        [name] = values(self.socket, "Socket", "FileDescriptorName")
        listen = re.search(r"--listen (\S+)", start).group(1)
        self.assertEqual(listen, f"systemd:domain=INET6:name={name}")
        self.assertEqual(values(self.socket, "Socket", "ListenStream"), ["51424"])
        self.assertIn("keyexchanged.socket", values(self.service, "Unit", "Requires"))
        self.assertIn("-n", start.split())  # systemd supervises the foreground process

    def test_hardening_is_kept(self):
        service = dict(((s, k), v) for s, k, v in self.service)
        for key, value in {
            "NoNewPrivileges": "yes",
            "ProtectSystem": "strict",
            "DynamicUser": "yes",
            "PrivateTmp": "yes",
            "PrivateDevices": "yes",
            "MemoryDenyWriteExecute": "yes",
            "CapabilityBoundingSet": "",
            # AF_UNIX: also the notification socket's family.
            "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        }.items():
            self.assertEqual(service[("Service", key)], value, key)
        self.assertEqual(
            values(self.service, "Service", "SystemCallFilter"),
            ["@system-service", "~@privileged @resources"],
        )


def free_port(family=socket.AF_INET, host="127.0.0.1"):
    # systemd-socket-activate binds the port itself and will not take 0.
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class SocketActivationTests(DaemonTestCase):
    """``systemd-socket-activate`` listens, waits for a connection, then
    runs twistd with the socket (LISTEN_FDS, LISTEN_FDNAMES), as systemd
    does with keyexchanged.socket."""

    skip = None if ACTIVATE else NO_ACTIVATE

    @defer.inlineCallbacks
    def activate(self, address, listen, port, shown=None):
        argv = [
            ACTIVATE,
            "--listen",
            address,
            "--fdname=keyexchanged",
            *TWISTD,
            "-n",
            "--pidfile=",
            "--logfile=-",
            "keyexchange",
            "--private-key",
            self.key,
            *LIGHT,
            "--listen",
            listen,
        ]
        daemon = Daemon.spawn(argv)
        self.addCleanup(daemon.stop)
        daemon.listening.addErrback(lambda failure: None)  # checked below
        yield daemon.wait_for(f"Listening on {shown or address} as 3.".encode())
        # Socket activation: nothing runs until the first connection.
        self.assertNotIn(b"keyexchange", daemon.output.split(b"as 3.", 1)[1])
        out, err, code = yield connect_here(port)
        self.assertEqual((out, code), (MESSAGE, 0), err + daemon.output)
        yield daemon.wait_for(b"ended: ok")
        return daemon

    @defer.inlineCallbacks
    def test_session_through_an_inherited_socket_by_name(self):
        port = free_port()
        daemon = yield self.activate(
            f"127.0.0.1:{port}", "systemd:domain=INET:name=keyexchanged", port
        )
        # tap.py's "listening on" line names the inherited socket's address.
        self.assertIn(f"listening on 127.0.0.1:{port}".encode(), daemon.output)
        self.assertEqual(daemon.port, port)
        code = yield daemon.stop()
        self.assertEqual(code, 0, daemon.output.decode())

    @defer.inlineCallbacks
    def test_session_through_an_inherited_socket_by_index(self):
        port = free_port()
        daemon = yield self.activate(f"127.0.0.1:{port}", "systemd:domain=INET:index=0", port)
        self.assertEqual(daemon.port, port)

    @defer.inlineCallbacks
    def test_dual_stack_socket_as_the_unit_has_it(self):
        # ListenStream=PORT: one IPv6 socket that also takes IPv4 clients,
        # served with domain=INET6 as in keyexchanged.service.
        if not socket.has_ipv6:
            raise unittest.SkipTest("no IPv6 on this host")
        try:
            port = free_port(socket.AF_INET6, "::")
        except OSError as error:
            raise unittest.SkipTest(f"no IPv6 on this host: {error}") from None
        daemon = yield self.activate(
            str(port), "systemd:domain=INET6:name=keyexchanged", port, shown=f"[::]:{port}"
        )
        # An IPv6 address is written without brackets: ":::PORT".
        self.assertIn(f"listening on :::{port}".encode(), daemon.output)
        self.assertIn(b"connection from ::ffff:127.0.0.1:", daemon.output)


class Notifications(DatagramProtocol):
    """The systemd end of NOTIFY_SOCKET, in the reactor."""

    def __init__(self):
        self.received = []
        self._waiters = []

    def datagramReceived(self, data, addr):
        self.received.append(data)
        for waiter in list(self._waiters):
            count, d = waiter
            if len(self.received) >= count:
                self._waiters.remove(waiter)
                d.callback(self.received[:count])

    def until(self, count):
        """Fires with the first ``count`` datagrams."""
        d = defer.Deferred()
        if len(self.received) >= count:
            d.callback(self.received[:count])
        else:
            self._waiters.append((count, d))
        return d


class NotifyTests(DaemonTestCase):
    """READY=1 once listening, RELOADING=1/READY=1 around a SIGHUP reload,
    STOPPING=1 on SIGTERM, from the real daemon."""

    def setUp(self):
        super().setUp()
        directory = tempfile.mkdtemp(prefix="kx-notify-")  # AF_UNIX paths are short
        self.addCleanup(shutil.rmtree, directory)
        self.notify_path = os.path.join(directory, "notify")
        self.notifications = Notifications()
        port = reactor.listenUNIXDatagram(self.notify_path, self.notifications)
        self.addCleanup(port.stopListening)

    @defer.inlineCallbacks
    def start(self, *args):
        daemon = Daemon.start(
            [
                "--listen",
                "tcp:0:interface=127.0.0.1",
                "--private-key",
                self.key,
                "--no-forward-secrecy",
                "--workers",
                "0",
                *args,
            ],
            env=environment(NOTIFY_SOCKET=self.notify_path),
        )
        self.addCleanup(daemon.stop)
        self.port = yield daemon.listening
        return daemon

    @defer.inlineCallbacks
    def test_ready_after_listening_and_stopping_on_sigterm(self):
        daemon = yield self.start()
        [ready] = yield self.notifications.until(1)
        self.assertTrue(ready.startswith(b"READY=1"), ready)
        code = yield daemon.stop()
        self.assertEqual(code, 0)
        self.assertTrue(self.notifications.received[1].startswith(b"STOPPING=1"))

    @defer.inlineCallbacks
    def test_sighup_reloads_and_keeps_serving(self):
        daemon = yield self.start()
        yield self.notifications.until(1)
        daemon.signal("HUP")
        _, reloading, ready = yield self.notifications.until(3)
        self.assertRegex(reloading, rb"^RELOADING=1\nMONOTONIC_USEC=\d+")
        self.assertTrue(ready.startswith(b"READY=1"), ready)
        out, err, code = yield connect_here(self.port, require_forward_secrecy=False)
        self.assertEqual((out, code), (MESSAGE, 0), err)


class Raw(Protocol):
    def __init__(self, data):
        self.data = data
        self.received = b""
        self.closed = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self.data)

    def dataReceived(self, data):
        self.received += data
        if b"\r\n" in self.received:
            self.transport.loseConnection()  # the first frame is enough

    def connectionLost(self, reason):
        self.closed.callback(self.received)


class ProxiedDaemonTests(DaemonTestCase):
    """``--listen haproxy:tcp:...`` with ``--trusted-proxies``."""

    @defer.inlineCallbacks
    def start(self, trusted):
        daemon = Daemon.start(
            [
                "--listen",
                "haproxy:tcp:0:interface=127.0.0.1",
                "--trusted-proxies",
                trusted,
                "--private-key",
                self.key,
                "--no-forward-secrecy",
                "--workers",
                "0",
            ]
        )
        self.addCleanup(daemon.stop)
        self.port = yield daemon.listening
        return daemon

    def send(self, data):
        raw = Raw(data)
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        endpoints.connectProtocol(endpoint, raw)
        return raw.closed

    @defer.inlineCallbacks
    def test_hello_after_the_header_and_the_client_in_the_log(self):
        daemon = yield self.start("127.0.0.1/32")
        received = yield self.send(b"PROXY TCP4 192.0.2.7 127.0.0.1 51000 51424\r\n")
        self.assertTrue(received.startswith(b"HELLO "), received)
        yield daemon.wait_for(b"connection from 192.0.2.7:51000 ended")

    @defer.inlineCallbacks
    def test_header_from_an_untrusted_address_is_dropped(self):
        daemon = yield self.start("10.0.0.0/8")
        received = yield self.send(b"PROXY TCP4 192.0.2.7 127.0.0.1 51000 51424\r\n")
        self.assertEqual(received, b"")
        yield daemon.wait_for(b"not a trusted proxy (trusted: 10.0.0.0/8)")

    @defer.inlineCallbacks
    def test_bad_trusted_proxies_stop_the_daemon(self):
        daemon = Daemon.start(
            [
                "--listen",
                "haproxy:tcp:0",
                "--trusted-proxies",
                "10.0.0.1/8",
                "--private-key",
                self.key,
            ]
        )
        code = yield daemon.refused()
        self.assertNotEqual(code, 0)
        self.assertIn(b"has host bits set (the network is 10.0.0.0/8)", daemon.output)


class ReloadForgetTests(unittest.TestCase):
    """A reload that changes the long-term key tells the workers, which
    keep the keys they were sent, to drop the old one."""

    def test_the_workers_forget_the_old_long_term_key(self):
        from twisted.internet.task import Clock

        from keyexchanged import keys, tap
        from tests.fixtures import CLIENT_KEY, SERVER_KEY

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        key_path = os.path.join(directory, "server.key")
        keys.save_private_key(SERVER_KEY, key_path)
        conf = os.path.join(directory, "k.conf")
        with open(conf, "w") as f:
            f.write("[keyexchanged]\nprivate-key = server.key\n" + LIGHT_CONFIG)
        options = tap.Options(environ={})
        options.parseOptions(["--config", conf])
        service = tap.makeService(options, reactor=Clock())
        service.options = options

        forgotten = []

        class Work:
            def forget(self, private_key):
                forgotten.append(private_key)

        service.factory.work = Work()
        # The same key again: nothing to forget.
        service.reload()
        self.assertEqual(forgotten, [])
        os.remove(key_path)
        keys.save_private_key(CLIENT_KEY, key_path)
        service.reload()
        self.assertEqual([key.n for key in forgotten], [SERVER_KEY.n])
        self.assertNotEqual(service.factory.identity.private_key.n, SERVER_KEY.n)
        if service.factory.ephemeral_keys is not None:
            service.factory.ephemeral_keys.stop()


class ReloadRestartOnlyTests(DaemonTestCase):
    @defer.inlineCallbacks
    def test_a_reload_keeps_the_ticket_lifetime_as_it_says(self):
        self.write_config("ticket-lifetime = 600\n")
        daemon = Daemon.start(["--config", self.conf])
        self.addCleanup(daemon.stop)
        port = yield daemon.listening
        # A session first: by then the daemon's reactor runs (and handles SIGHUP).
        out, err, code = yield connect_here(port)
        self.assertEqual((out, code), (MESSAGE, 0), err)
        self.write_config("ticket-lifetime = 100\n")
        daemon.signal("HUP")
        output = yield daemon.wait_for(b"reload: done")
        self.assertIn(b"reload: ticket-lifetime changes only at a restart", output)
        cache = os.path.join(self.dir, "tickets.json")
        before = time.time()
        out, err, code = yield connect_here(port, tickets=tickets.TicketStore(cache))
        self.assertEqual((out, code), (MESSAGE, 0), err)
        with open(cache) as f:
            (ticket,) = json.load(f)["tickets"]
        # The lifetime the TICKET gave: still 600 s, as the log said.
        self.assertGreaterEqual(ticket["expires"], int(before) + 600)
