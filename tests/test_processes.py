"""``--processes N``: a parent that listens and N children that serve.

The system tests run the real ``twistd -n keyexchange --processes 2`` on
127.0.0.1.  Which child accepts a connection is the kernel's choice, so
they make it for the kernel: a child stopped with SIGSTOP accepts nothing,
and the other one gets every connection; every wait is on a log line or a
connection, bounded by trial's timeout.  The restart backoff, the shared
ticket keys and the log relay are tested on a Clock.
"""

import json
import os
import re
import signal
import subprocess
import sys

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import abstract, defer, endpoints, reactor, task
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger, LogLevel, eventAsJSON, formatEvent
from twisted.trial import unittest
from twisted.web.client import Agent, readBody
from zope.interface import implementer

from keyexchanged import processes, protocol, tickets
from keyexchanged.config import ConfigError
from keyexchanged.trust import PinnedKey
from tests.daemon import (
    LIGHT,
    MESSAGE,
    ROOT,
    TWISTD,
    Daemon,
    DaemonTestCase,
    connect_here,
    environment,
)
from tests.fixtures import plant_module
from tests.vectors import RAW

FINGERPRINT = RAW["server_fingerprint"]
LOCAL = "tcp:0:interface=127.0.0.1"

#: How long orphaned children may take to notice and stop.
ORPHANS_STOP_WITHIN = 30

_STARTED = re.compile(rb"child (\d) \(pid (\d+)\) started")
_SESSION = re.compile(rb"child (\d) pid (\d+)\] connection from \S+ ended: ok; (\w+)")
_METRICS = re.compile(rb"metrics on http://127\.0\.0\.1:(\d+)/metrics")
_SERVES_AGAIN = re.compile(rb"child (\d) \(pid (\d+)\) serves again")


class Held(Protocol):
    """A raw TCP connection that says nothing: fires ``received`` with the
    server's first bytes (its HELLO), ``ended`` when the server is gone."""

    def __init__(self):
        self.received = defer.Deferred()
        self.ended = defer.Deferred()

    def dataReceived(self, data):
        if not self.received.called:
            self.received.callback(data)

    def connectionLost(self, reason):
        self.ended.callback(None)


@implementer(IHalfCloseableProtocol)
class Open(Held):
    """A client application that answers the server's END with nothing:
    its session stays open until the server cuts it.  ``received`` fires
    with the application's first bytes."""

    def readConnectionLost(self):
        pass

    def writeConnectionLost(self):
        pass


class ProcessExit(abstract.FileDescriptor):
    """``ended`` fires when process ``pid`` (not ours to wait for) exits:
    its pidfd becomes readable."""

    def __init__(self, pid):
        super().__init__(reactor)
        self.pid = pid
        self.fd = os.pidfd_open(pid)
        self.ended = defer.Deferred()
        self.startReading()

    def fileno(self):
        return self.fd

    def doRead(self):
        self.close()
        self.ended.callback(None)

    def close(self):
        if self.fd != -1:
            self.stopReading()
            os.close(self.fd)
            self.fd = -1


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class ProcessesSystemTests(DaemonTestCase):
    timeout = 150

    @defer.inlineCallbacks
    def start(self, *args):
        daemon = Daemon.start(["--processes", "2", *LIGHT, *args])
        self.addCleanup(daemon.stop)
        port = yield daemon.listening
        output = yield daemon.wait_for(b"all 2 child processes serve")
        pids = {int(i): int(pid) for i, pid in _STARTED.findall(output)}
        self.assertEqual(sorted(pids), [1, 2])
        for pid in pids.values():
            # Whatever happens to the test, no child stays stopped.
            self.addCleanup(self.resume, pid)
        return daemon, port, pids

    def resume(self, pid):
        if alive(pid):
            os.kill(pid, signal.SIGCONT)

    def connect(self, port, **options):
        return connect_here(port, FINGERPRINT, **options)

    @defer.inlineCallbacks
    def session(self, daemon, port, number, **options):
        """Connect; return (child index, child pid, kind) of the ``number``-th
        session that ended, as the parent logged it."""
        out, err, code = yield self.connect(port, **options)
        self.assertEqual(code, 0, err)
        self.assertEqual(out, MESSAGE)
        output = yield daemon.wait_for(b"ended: ok;", count=number)
        index, pid, kind = _SESSION.findall(output)[number - 1]
        return int(index), int(pid), kind.decode()

    @defer.inlineCallbacks
    def scrape(self, daemon):
        """The parent's /metrics, parsed: {(sample name, labels): value}."""
        output = yield daemon.wait_for(b"metrics on http://")
        port = int(_METRICS.search(output).group(1))
        response = yield Agent(reactor).request(b"GET", f"http://127.0.0.1:{port}/metrics".encode())
        body = yield readBody(response)
        self.assertEqual(response.code, 200, body)
        samples = {}
        for family in text_string_to_metric_families(body.decode("utf-8")):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples

    @staticmethod
    def handshakes(samples, kind):
        return samples[("keyexchanged_handshakes_total", (("kind", kind), ("outcome", "ok")))]

    @defer.inlineCallbacks
    def test_both_children_serve_share_tickets_and_stop_with_the_parent(self):
        cache = tickets.TicketStore()
        daemon, port, pids = yield self.start(
            "--listen", LOCAL, "--private-key", self.key, "--metrics", LOCAL
        )
        # Child 2 stopped: child 1 takes the connection, and issues a ticket.
        os.kill(pids[2], signal.SIGSTOP)
        served = yield self.session(daemon, port, 1, tickets=cache)
        self.assertEqual(served, (1, pids[1], "full"))
        # Child 1 stopped: child 2 takes it, and resumes child 1's ticket.
        os.kill(pids[2], signal.SIGCONT)
        os.kill(pids[1], signal.SIGSTOP)
        served = yield self.session(daemon, port, 2, tickets=cache)
        self.assertEqual(served, (2, pids[2], "resumed"))
        os.kill(pids[1], signal.SIGCONT)

        # The parent's /metrics adds up both children.
        samples = yield self.scrape(daemon)
        self.assertEqual(self.handshakes(samples, "full"), 1)
        self.assertEqual(self.handshakes(samples, "resumed"), 1)
        self.assertEqual(samples[("keyexchanged_connections_open", ())], 0)

        # SIGTERM: the children stop, then the parent; none is left behind.
        code = yield daemon.stop()
        self.assertEqual(code, 0, daemon.output.decode())
        self.assertIn(b"every child process has ended", daemon.output)
        for pid in pids.values():
            self.assertFalse(alive(pid), f"child {pid} outlived its parent")

    @defer.inlineCallbacks
    def test_a_killed_child_is_logged_replaced_and_its_counts_kept(self):
        daemon, port, pids = yield self.start(
            "--listen", LOCAL, "--private-key", self.key, "--metrics", LOCAL
        )
        os.kill(pids[2], signal.SIGSTOP)
        served = yield self.session(daemon, port, 1)
        self.assertEqual(served[:2], (1, pids[1]))
        # A connection held open on child 1 (child 2 still stopped).
        held = Held()
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        yield endpoint.connect(Factory.forProtocol(lambda: held))
        yield held.received
        samples = yield self.scrape(daemon)
        self.assertEqual(samples[("keyexchanged_connections_open", ())], 1)

        os.kill(pids[1], signal.SIGKILL)
        yield held.ended
        output = yield daemon.wait_for(b"died unexpectedly (killed by SIGKILL)")
        self.assertIn(f"child 1 (pid {pids[1]}) died unexpectedly".encode(), output)
        # Its handshake is still counted; its open connection no longer is.
        samples = yield self.scrape(daemon)
        self.assertEqual(self.handshakes(samples, "full"), 1)
        self.assertEqual(samples[("keyexchanged_connections_open", ())], 0)

        # A new child 1 serves (child 2 is still stopped).
        output = yield daemon.wait_for(b"serves again")
        index, new_pid = (int(n) for n in _SERVES_AGAIN.search(output).groups())
        self.assertEqual(index, 1)
        self.assertNotEqual(new_pid, pids[1])
        served = yield self.session(daemon, port, 2)
        self.assertEqual(served[:2], (1, new_pid))
        os.kill(pids[2], signal.SIGCONT)
        samples = yield self.scrape(daemon)
        self.assertEqual(self.handshakes(samples, "full"), 2)
        code = yield daemon.stop()
        self.assertEqual(code, 0, daemon.output.decode())
        self.assertFalse(alive(new_pid))

    @defer.inlineCallbacks
    def test_sigterm_from_parent_and_systemd_is_one_stop_a_second_one_cuts(self):
        daemon, port, pids = yield self.start(
            "--listen", LOCAL, "--private-key", self.key, "--application", "echo"
        )
        # An established session whose client never ends it.
        session = Open()
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        yield protocol.connect(
            reactor, endpoint, PinnedKey(FINGERPRINT), Factory.forProtocol(lambda: session)
        )
        session.transport.write(b"ping")
        self.assertEqual((yield session.received), b"ping")
        daemon.signal("TERM")
        yield daemon.wait_for(b"SIGTERM: no new connections", count=2)
        # systemd's KillMode=control-group sends SIGTERM to every process:
        # still one stop, with its grace period.
        for pid in pids.values():
            if alive(pid):
                os.kill(pid, signal.SIGTERM)
        # The operator's second signal, to the parent: the session is cut.
        daemon.signal("TERM")
        yield session.ended
        code = yield daemon.ended
        self.assertEqual(code, 0, daemon.output.decode())
        # By the parent's signal, not by systemd's SIGTERM (which a child
        # would log the same way, had it taken it for a second stop).
        self.assertIn(b"SIGUSR1 again: cutting the open sessions now", daemon.output)
        self.assertNotIn(b"SIGTERM again: cutting", daemon.output)

    @defer.inlineCallbacks
    def test_children_stop_when_the_parent_is_killed(self):
        runtime = os.path.join(self.dir, "run")
        os.makedirs(runtime)
        daemon = Daemon.start(
            ["--processes", "2", *LIGHT, "--listen", LOCAL, "--private-key", self.key],
            env=environment(RUNTIME_DIRECTORY=runtime),
        )
        self.addCleanup(daemon.stop)
        yield daemon.listening
        output = yield daemon.wait_for(b"all 2 child processes serve")
        pids = [int(pid) for _, pid in _STARTED.findall(output)]
        exits = [ProcessExit(pid) for pid in pids]
        for e in exits:
            self.addCleanup(e.close)
        daemon.signal("KILL")
        yield daemon.ended
        # No parent to stop them: each sees its stdin close, and stops,
        # well within the bound (with no session open it takes a moment).
        deadline = task.deferLater(reactor, ORPHANS_STOP_WITHIN, lambda: None)
        every_exit = defer.gatherResults([e.ended for e in exits])
        yield defer.DeferredList([every_exit, deadline], fireOnOneCallback=True)
        if not deadline.called:
            deadline.cancel()
        deadline.addErrback(lambda failure: failure.trap(defer.CancelledError))
        running = [e.pid for e in exits if not e.ended.called]
        for pid in running:
            os.kill(pid, signal.SIGKILL)  # not left behind by the test
        self.assertEqual(
            running, [], f"still running {ORPHANS_STOP_WITHIN} s after their parent was killed"
        )
        self.assertEqual(len(exits), 2)

    @defer.inlineCallbacks
    def test_children_import_nothing_from_the_working_directory(self):
        """A module planted in the directory the daemon runs in (one another
        user may write) does not run in the children, which hold the keys."""
        directory = os.path.join(self.dir, "shared")
        os.makedirs(directory)
        marker = os.path.join(self.dir, "ran")
        plant_module(directory, "socket", marker)
        # The parent itself is started safely here: only the children are tested.
        argv = [sys.executable, "-P", *TWISTD[1:], "-n", "--pidfile=", "--logfile=-"]
        daemon = Daemon.spawn(
            [
                *argv,
                "keyexchange",
                "--processes",
                "2",
                *LIGHT,
                "--listen",
                LOCAL,
                "--private-key",
                self.key,
            ],
            env=environment(PYTHONPATH=ROOT),  # no empty entry: that, too, is the directory
            cwd=directory,
        )
        self.addCleanup(daemon.stop)
        yield daemon.listening
        yield daemon.wait_for(b"all 2 child processes serve")
        self.assertFalse(os.path.exists(marker), "the planted module ran in a child")

    @defer.inlineCallbacks
    def test_a_killed_parents_runtime_directory_is_removed_at_the_next_start(self):
        runtime = os.path.join(self.dir, "run")
        os.makedirs(runtime)
        argv = ["--processes", "2", *LIGHT, "--listen", LOCAL, "--private-key", self.key]
        env = environment(RUNTIME_DIRECTORY=runtime)
        daemon = Daemon.start(argv, env=env)
        self.addCleanup(daemon.stop)
        output = yield daemon.wait_for(b"all 2 child processes serve")
        pids = [int(pid) for _, pid in _STARTED.findall(output)]
        exits = [ProcessExit(pid) for pid in pids]
        daemon.signal("KILL")
        yield daemon.ended
        yield defer.gatherResults([e.ended for e in exits])
        (left,) = os.listdir(runtime)  # with the ticket keys in it
        self.assertIn("ticket.keys", os.listdir(os.path.join(runtime, left)))
        again = Daemon.start(argv, env=env)
        self.addCleanup(again.stop)
        # The parent makes its runtime directory, and removes the stale
        # ones, before it listens: its children need not serve for that.
        yield again.listening
        self.assertNotIn(left, os.listdir(runtime))
        self.assertEqual(len(os.listdir(runtime)), 1)  # the new parent's own

    @defer.inlineCallbacks
    def test_children_read_the_proxy_header_with_haproxy_listen(self):
        daemon, port, _pids = yield self.start(
            "--listen",
            "haproxy:" + LOCAL,
            "--trusted-proxies",
            "127.0.0.1/32",
            "--private-key",
            self.key,
        )
        held = Held()
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        yield endpoint.connect(Factory.forProtocol(lambda: held))
        held.transport.write(b"PROXY TCP4 192.0.2.7 127.0.0.1 4242 51424\r\n")
        hello = yield held.received
        self.assertTrue(hello.startswith(b"HELLO "), hello)
        held.transport.loseConnection()
        yield held.ended
        # The child saw the client the header named, not the proxy.
        output = yield daemon.wait_for(b"connection from 192.0.2.7:4242 ended")
        self.assertRegex(output.decode(), r"child \d pid \d+\] connection from 192\.0\.2\.7:4242")

    def write(self, body):
        self.write_config(f"processes = 2\n{body}")

    @defer.inlineCallbacks
    def test_reload_checked_by_the_parent_done_by_every_child(self):
        self.write("message = first\n")
        daemon, port, _pids = yield self.start("--config", self.conf)
        out, err, code = yield self.connect(port)
        self.assertEqual((out, code), (b"first", 0), err)

        # A broken file: the parent refuses it and no child is told.
        yield self.assert_reload_refused(daemon, "processes = 2\nmessage = second\n")
        out, err, code = yield self.connect(port)
        self.assertEqual((out, code), (b"first", 0), err)

        # A good one: every child reloads; new sessions get the new message.
        self.write("message = second\n")
        daemon.signal("HUP")
        output = yield daemon.wait_for(b"reload: done;", count=2)
        self.assertIn(b"SIGHUP sent to 2 child process(es)", output)
        # Each child's lines come in order: had the broken file reached
        # them, its lines would be here by now.  The parent reloaded twice,
        # each child once.
        self.assertEqual(output.count(b"SIGHUP: reloading"), 4)
        self.assertNotIn(b"reload failed, nothing changed: ", output)
        for _ in range(2):
            out, err, code = yield self.connect(port)
            self.assertEqual((out, code), (b"second", 0), err)

    @defer.inlineCallbacks
    def test_a_port_in_use_stops_the_parent_and_leaves_no_runtime_directory(self):
        import socket

        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        runtime = os.path.join(self.dir, "run")
        os.makedirs(runtime)
        daemon = Daemon.start(
            [
                "--processes=2",
                "--private-key",
                self.key,
                "--listen",
                f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1",
            ],
            env=environment(RUNTIME_DIRECTORY=runtime),
        )
        code = yield daemon.refused()
        self.assertNotEqual(code, 0)
        self.assertIn(b"cannot listen on tcp:", daemon.output)
        self.assertEqual(os.listdir(runtime), [])


# -- the parent's logic, on a Clock ---------------------------------------------------------


class FakeTransport:
    def __init__(self, pid):
        self.pid = pid
        self.signals = []

    def signalProcess(self, name):
        self.signals.append(name)


class FakeOptions:
    argv = ("--processes", "2")

    def __init__(self, **settings):
        self.environ = {}
        self.settings = {
            "listen": LOCAL,
            "grace-period": 10.0,
            "trusted-proxies": None,
            "processes": 2,
            **settings,
        }


class Supervised:
    """A ProcessesService on a Clock, with children that are fakes."""

    def __init__(self, count=2, options=None):
        self.clock = task.Clock()
        self.events = []
        self.spawned = []
        self.next_pid = 100
        self.service = processes.ProcessesService(
            options or FakeOptions(),
            count,
            self.clock,
            spawn=self.spawn,
            observer=self.events.append,
            handle_signals=False,
        )
        self.logged = []
        self.service.log = Logger(observer=self.logged.append)
        self.service.port = FakePort()

    def spawn(self, child, index, fd):
        self.next_pid += 1
        transport = FakeTransport(self.next_pid)
        child.makeConnection(transport)
        self.spawned.append((index, child))
        return transport

    def start(self):
        for index in range(1, self.service.count + 1):
            self.service._start_child(index)

    def die(self, index, value=None):
        child = self.service.children[index]
        child.processEnded(_Reason(value or ProcessTerminated(signal=signal.SIGKILL)))
        return child


class FakePort:
    def fileno(self):
        return 7

    def stopListening(self):
        return None


class _Reason:
    def __init__(self, value):
        self.value = value


class BackoffTests(unittest.TestCase):
    def test_doubles_to_the_maximum_and_resets_after_a_long_life(self):
        backoff = processes.Backoff(initial=1, maximum=30, reset_after=60)
        delays = [backoff.delay(lived=0.5) for _ in range(7)]
        self.assertEqual(delays, [1, 2, 4, 8, 16, 30, 30])
        self.assertEqual(backoff.delay(lived=60), 1)
        self.assertEqual(backoff.delay(lived=3), 2)

    def test_a_crash_loop_is_restarted_later_and_later(self):
        supervised = Supervised(count=1)
        supervised.start()
        restarted_after = []
        for _ in range(4):
            pid = supervised.die(1).pid
            self.assertNotIn(1, supervised.service.children)
            calls = supervised.clock.getDelayedCalls()
            self.assertEqual(len(calls), 1)
            delay = calls[0].getTime() - supervised.clock.seconds()
            restarted_after.append(delay)
            supervised.clock.advance(delay)
            self.assertNotEqual(supervised.service.children[1].pid, pid)
        self.assertEqual(restarted_after, [1, 2, 4, 8])
        died = [e for e in supervised.logged if "died unexpectedly" in e["log_format"]]
        self.assertEqual([e["delay"] for e in died], [1, 2, 4, 8])
        self.assertEqual({e["how"] for e in died}, {"killed by SIGKILL"})
        # A child that has served a minute: the next death is restarted in 1 s.
        supervised.clock.advance(60)
        supervised.die(1)
        (call,) = supervised.clock.getDelayedCalls()
        self.assertEqual(call.getTime() - supervised.clock.seconds(), 1)

    def test_a_child_that_cannot_be_started_is_tried_again_later(self):
        supervised = Supervised(count=1)
        failures = [OSError(11, "Resource temporarily unavailable")] * 2
        spawn = supervised.spawn

        def failing(child, index, fd):
            if failures:
                raise failures.pop()
            return spawn(child, index, fd)

        supervised.service.spawn = failing
        supervised.start()
        self.assertEqual(supervised.service.children, {})
        supervised.clock.advance(1)
        self.assertEqual(supervised.service.children, {})
        supervised.clock.advance(2)
        self.assertIn(1, supervised.service.children)
        tried = [e for e in supervised.logged if "cannot start child" in e["log_format"]]
        self.assertEqual([e["delay"] for e in tried], [1, 2])

    def test_no_restart_while_stopping(self):
        supervised = Supervised(count=2)
        supervised.start()
        stopped = supervised.service.stopService()
        for index in (1, 2):
            child = supervised.service.children[index]
            self.assertEqual(child.transport.signals, ["TERM"])
        self.assertNoResult(stopped)
        supervised.die(1, ProcessDone(0))
        self.assertNoResult(stopped)
        supervised.die(2, ProcessDone(0))
        self.successResultOf(stopped)
        self.assertEqual(supervised.clock.getDelayedCalls(), [])

    def test_a_child_that_outlives_its_grace_is_killed(self):
        supervised = Supervised(count=1)
        supervised.start()
        stopped = supervised.service.stopService()
        child = supervised.service.children[1]
        supervised.clock.advance(10.0 + processes.KILL_AFTER)
        self.assertEqual(child.transport.signals, ["TERM", "KILL"])
        supervised.die(1)
        self.successResultOf(stopped)


class RelayTests(unittest.TestCase):
    def test_child_events_are_logged_with_the_child(self):
        supervised = Supervised(count=1)
        supervised.start()
        child = supervised.service.children[1]
        line = eventAsJSON(
            {
                "log_format": "listening on {port}",
                "port": 5,
                "log_namespace": "keyexchanged.tap",
                "log_level": LogLevel.info,
                "log_time": 1.0,
            }
        ).encode()
        # Split anywhere: lines are put together before they are read.
        child.childDataReceived(1, line[:10])
        child.childDataReceived(1, line[10:] + b"\nnot json\n")
        relayed = [e for e in supervised.events if e.get("port") == 5]
        self.assertEqual(len(relayed), 1)
        event = relayed[0]
        self.assertEqual((event["child_index"], event["child_pid"]), (1, child.pid))
        self.assertEqual(event["log_system"], f"keyexchanged.tap#info, child 1 pid {child.pid}")
        self.assertEqual(formatEvent(event), "listening on 5")
        # A line that is no event (a traceback before logging began) is kept too.
        (raw,) = [e for e in supervised.logged if e.get("line") == "not json"]
        self.assertEqual(raw["child_index"], 1)

    def test_ready_once_every_child_serves_and_a_pending_reload_follows(self):
        supervised = Supervised(count=2)
        supervised.start()
        first, second = supervised.service.children[1], supervised.service.children[2]
        ready = json.dumps({"log_format": "child serves", processes.READY_FIELD: True}).encode()
        first.childDataReceived(1, ready + b"\n")
        self.assertFalse(supervised.service._announced)
        second.reload_pending = True
        second.childDataReceived(1, ready + b"\n")
        self.assertTrue(supervised.service._announced)
        # A child that started before a reload was checked reloads once it serves.
        self.assertEqual(second.transport.signals, ["HUP"])
        self.assertEqual(first.transport.signals, [])


class StoppableClock(task.Clock):
    stopped = False

    def stop(self):
        self.stopped = True


class NotifyTests(unittest.TestCase):
    """READY=1 once every child serves, STOPPING=1 on SIGTERM: from the
    parent, to the socket in $NOTIFY_SOCKET; the children never see it."""

    def setUp(self):
        import socket

        # An abstract name: a path under trial's temporary directory is
        # longer than AF_UNIX allows.
        name = f"kx-test-notify-{os.getpid()}-{id(self)}"
        self.path = "@" + name
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + name)
        self.sock.setblocking(False)
        self.addCleanup(self.sock.close)
        self.patch(os, "environ", {**os.environ, "NOTIFY_SOCKET": self.path, "LISTEN_FDS": "1"})

    def notices(self):
        found = []
        while True:
            try:
                found.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return found

    def test_ready_when_all_serve_stopping_on_sigterm(self):
        supervised = Supervised(count=2)
        supervised.clock = supervised.service.reactor = StoppableClock()
        supervised.start()
        ready = json.dumps({"log_format": "child serves", processes.READY_FIELD: True}).encode()
        supervised.service.children[1].childDataReceived(1, ready + b"\n")
        self.assertEqual(self.notices(), [])
        supervised.service.children[2].childDataReceived(1, ready + b"\n")
        self.assertEqual(self.notices(), ["READY=1\nSTATUS=serving with 2 processes"])
        supervised.service.stop_requested("SIGTERM")
        self.assertEqual(self.notices(), ["STOPPING=1"])
        self.assertTrue(supervised.clock.stopped)

    def test_children_get_no_systemd_variables_and_no_secret(self):
        supervised = Supervised(count=2)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        shared = processes.SharedTicketKeys(
            os.path.join(directory, "ticket.keys"), 100, supervised.clock
        )
        supervised.service.shared_ticket_keys = shared
        shared.start()
        self.addCleanup(shared.stop)
        env = supervised.service.child_environment(2)
        # The ticket keys' file is named, never a key.
        self.assertEqual(env[processes.TICKET_KEYS_VARIABLE], shared.path)
        with open(shared.path) as f:
            key_lines = [line for line in f.read().splitlines() if not line.startswith("#")]
        self.assertEqual(len(key_lines), 1)
        for value in [*env.values(), *supervised.service.child_argv()]:
            self.assertNotIn(key_lines[0], value)
        for name in ("NOTIFY_SOCKET", "LISTEN_FDS"):
            self.assertNotIn(name, env)
        self.assertEqual(env[processes.CHILD_VARIABLE], "2")
        self.assertEqual(env[processes.FD_VARIABLE], str(processes.CHILD_FD))
        # The command line is the parent's own, after twistd's options.
        argv = supervised.service.child_argv()
        self.assertEqual(argv[-2:], ["--processes", "2"])

    def test_children_import_this_keyexchanged(self):
        """A child's PYTHONPATH starts with the directory that holds the
        parent's keyexchanged package, so that a child runs the same code."""
        import keyexchanged

        env = Supervised(count=1).service.child_environment(1)
        root = os.path.dirname(os.path.dirname(os.path.abspath(keyexchanged.__file__)))
        self.assertEqual(env["PYTHONPATH"].split(os.pathsep)[0], root)


class ChildSettingsTests(unittest.TestCase):
    def test_no_child(self):
        self.assertIsNone(processes.child_settings({}))

    def test_child(self):
        child = processes.child_settings(
            {
                processes.CHILD_VARIABLE: "2",
                processes.FD_VARIABLE: "3",
                processes.TICKET_KEYS_VARIABLE: "/run/k",
            }
        )
        self.assertEqual((child.index, child.fd, child.ticket_keys), (2, 3, "/run/k"))

    def test_broken(self):
        error = self.assertRaises(
            ConfigError, processes.child_settings, {processes.CHILD_VARIABLE: "x"}
        )
        self.assertIn("set by the parent process", str(error))

    def test_workers_shared_out(self):
        self.assertEqual(processes.workers_per_process(2, 2), 1)
        self.assertEqual(processes.workers_per_process(8, 2), 4)
        self.assertEqual(processes.workers_per_process(2, 4), 1)
        self.assertEqual(processes.workers_per_process(4, 1), 4)


class RuntimeDirectoryTests(unittest.TestCase):
    def setUp(self):
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)

    def made(self, name):
        path = os.path.join(self.base, name)
        os.makedirs(path, 0o700)
        with open(os.path.join(path, "ticket.keys"), "w") as f:
            f.write("secret\n")
        return path

    def test_stale_directories_go_live_ones_and_others_stay(self):
        ended = subprocess.Popen([sys.executable, "-c", ""])
        ended.wait()
        stale = self.made(f"keyexchanged-{ended.pid}-abcd1234")
        live = self.made(f"keyexchanged-{os.getpid()}-abcd1234")
        other = self.made("something-else")
        new = processes.runtime_directory({"RUNTIME_DIRECTORY": self.base})
        self.assertFalse(os.path.exists(stale))
        self.assertTrue(os.path.exists(live))
        self.assertTrue(os.path.exists(other))
        self.assertEqual(os.path.dirname(new), self.base)
        self.assertTrue(os.path.basename(new).startswith(f"keyexchanged-{os.getpid()}-"))
        self.assertEqual(os.stat(new).st_mode & 0o777, 0o700)

    def test_a_link_named_like_one_is_left_alone(self):
        ended = subprocess.Popen([sys.executable, "-c", ""])
        ended.wait()
        target = self.made("target")
        os.symlink(target, os.path.join(self.base, f"keyexchanged-{ended.pid}-abcd1234"))
        processes.runtime_directory({"RUNTIME_DIRECTORY": self.base})
        self.assertTrue(os.path.exists(os.path.join(target, "ticket.keys")))


class SharedTicketKeysTests(unittest.TestCase):
    def test_a_new_key_opens_tickets_before_it_seals_them(self):
        path = os.path.join(os.path.abspath(self.mktemp()))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        clock = task.Clock()
        shared = processes.SharedTicketKeys(path, interval=100, reactor=clock, announce=5)
        shared.start()
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        first = tickets.load_ticket_keys(path)
        self.assertEqual(len(first), 1)
        # A child still on the first key issues a ticket...
        lagging = tickets.TicketIssuer(first, lifetime=1000, clock=clock.seconds)
        ticket, _ = lagging.issue(b"s" * 32, "fp")
        clock.advance(100)
        announced = tickets.load_ticket_keys(path)
        self.assertEqual(announced.encrypting, first.encrypting)
        self.assertEqual(len(announced), 2)
        # ... and one that has read the announced key opens a ticket sealed
        # with it by a child that already switched.
        clock.advance(5)
        promoted = tickets.load_ticket_keys(path)
        self.assertNotEqual(promoted.encrypting, first.encrypting)
        self.assertIsNotNone(announced.find(tickets.key_id(promoted.encrypting)))
        # The previous key still opens the lagging child's ticket.
        switched = tickets.TicketIssuer(promoted, lifetime=1000, clock=clock.seconds)
        self.assertEqual(switched.open(ticket, "fp")[0], b"s" * 32)
        shared.stop()
        self.assertEqual(clock.getDelayedCalls(), [])
