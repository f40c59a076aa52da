"""keyexchanged.metrics: scraped over real HTTP on 127.0.0.1 and read with
prometheus_client's own parser; several processes for real."""

import json
import os
import re
import sys

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, protocol, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger, LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool, readBody

from keyexchanged import metrics
from keyexchanged.metrics import Metrics, MetricsError, metrics_service
from tests.daemon import MESSAGE, Daemon, DaemonTestCase, connect_here, environment

LOCAL = "tcp:0:interface=127.0.0.1"


class Summary:
    """A session's end as the server reports it (keyexchanged.logs.SessionEnd)."""

    def __init__(self, outcome="ok", resumed=False, bytes_in=0, bytes_out=0, **extra):
        self.peer = "127.0.0.1:4242"
        self.outcome = outcome
        self.resumed = resumed
        self.forward_secrecy = not resumed
        self.bytes_in = bytes_in
        self.bytes_out = bytes_out
        self.duration = 0.5
        self.client_fingerprint = None
        self.__dict__.update(extra)


def parse(text):
    """{(sample name, frozenset of labels): value} and the families' types."""
    samples, types = {}, {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples, types


def value(samples, name, **labels):
    return samples[(name, frozenset(labels.items()))]


@defer.inlineCallbacks
def get(port, path=b"/metrics"):
    """GET over HTTP; fires with (response, body) once the connection is closed."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    response = yield Agent(reactor, pool=pool).request(
        b"GET", b"http://127.0.0.1:%d%s" % (port, path)
    )
    body = yield readBody(response)
    yield pool.closeCachedConnections()
    return response, body


@defer.inlineCallbacks
def serve(case, instance):
    """Serve ``instance`` on a port of 127.0.0.1 for the test; fires with the port."""
    service = metrics_service(LOCAL, instance, reactor)
    service.startService()
    case.addCleanup(service.stopService)
    yield service.listening
    return service.port.getHost().port


@defer.inlineCallbacks
def scrape(port):
    response, body = yield get(port)
    if response.code != 200:
        raise AssertionError(f"scrape answered {response.code}: {body!r}")
    return parse(body.decode("utf-8"))


class ScrapeTests(unittest.TestCase):
    timeout = 60

    def setUp(self):
        self.metrics = Metrics()

    @defer.inlineCallbacks
    def test_counts_what_was_done(self):
        m = self.metrics
        for _ in range(4):
            m.connection_opened()
        m.connection_closed()
        m.health_check()  # its connection is closed too
        m.handshake_done("full", "ok", 0.004)
        m.handshake_done("full", "ok", 0.2)
        m.handshake_done("resumed", "ok", 0.0005)
        m.handshake_done("full", "timeout", 10.0)
        m.handshake_done("full", "busy")
        m.handshake_done("full", "untrusted-key", None)
        m.error_sent("busy")
        m.error_sent("busy")
        m.error_sent("timeout")
        m.private_key_queue(4)
        m.private_key_queue(2)
        m.ephemeral_rotated()
        m.ephemeral_rotated()
        m.reload("ok")
        m.reload("failed")
        m.session_ended(Summary("ok", bytes_in=100, bytes_out=2000))
        m.session_ended(Summary("idle-timeout", resumed=True, bytes_in=7, bytes_out=0))
        m.bytes("out", 33)
        port = yield serve(self, m)
        samples, types = yield scrape(port)

        self.assertEqual(value(samples, "keyexchanged_connections_open"), 2)
        handshakes = "keyexchanged_handshakes_total"
        self.assertEqual(value(samples, handshakes, kind="full", outcome="ok"), 2)
        self.assertEqual(value(samples, handshakes, kind="resumed", outcome="ok"), 1)
        self.assertEqual(value(samples, handshakes, kind="full", outcome="timeout"), 1)
        self.assertEqual(value(samples, handshakes, kind="full", outcome="busy"), 1)
        self.assertEqual(value(samples, handshakes, kind="full", outcome="untrusted-key"), 1)
        # Completed handshakes only: the 10 s timeout is not a handshake time.
        seconds = "keyexchanged_handshake_seconds"
        self.assertEqual(value(samples, seconds + "_count", kind="full"), 2)
        self.assertAlmostEqual(value(samples, seconds + "_sum", kind="full"), 0.204)
        self.assertEqual(value(samples, seconds + "_bucket", kind="full", le="0.001"), 0)
        self.assertEqual(value(samples, seconds + "_bucket", kind="full", le="0.005"), 1)
        self.assertEqual(value(samples, seconds + "_bucket", kind="full", le="0.25"), 2)
        self.assertEqual(value(samples, seconds + "_bucket", kind="full", le="+Inf"), 2)
        self.assertEqual(value(samples, seconds + "_bucket", kind="resumed", le="0.001"), 1)
        self.assertEqual(value(samples, "keyexchanged_private_key_queue"), 2)
        self.assertEqual(value(samples, "keyexchanged_bytes_total", direction="in"), 107)
        self.assertEqual(value(samples, "keyexchanged_bytes_total", direction="out"), 2033)
        errors = "keyexchanged_errors_sent_total"
        self.assertEqual(value(samples, errors, code="busy"), 2)
        self.assertEqual(value(samples, errors, code="timeout"), 1)
        self.assertEqual(value(samples, "keyexchanged_ephemeral_rotations_total"), 2)
        self.assertEqual(value(samples, "keyexchanged_reloads_total", result="ok"), 1)
        self.assertEqual(value(samples, "keyexchanged_reloads_total", result="failed"), 1)
        self.assertEqual(value(samples, "keyexchanged_health_checks_total"), 1)
        sessions = "keyexchanged_sessions_total"
        self.assertEqual(value(samples, sessions, kind="full", outcome="ok"), 1)
        self.assertEqual(value(samples, sessions, kind="resumed", outcome="idle-timeout"), 1)
        self.assertEqual(
            types,
            {
                "keyexchanged_bytes": "counter",
                "keyexchanged_connections_open": "gauge",
                "keyexchanged_ephemeral_rotations": "counter",
                "keyexchanged_errors_sent": "counter",
                "keyexchanged_handshake_seconds": "histogram",
                "keyexchanged_handshakes": "counter",
                "keyexchanged_health_checks": "counter",
                "keyexchanged_private_key_queue": "gauge",
                "keyexchanged_reloads": "counter",
                "keyexchanged_sessions": "counter",
            },
        )
        # Times of creation do not add up across processes: never served.
        self.assertFalse([key for key in samples if key[0].endswith("_created")])

    @defer.inlineCallbacks
    def test_a_new_daemon_shows_its_series_at_zero(self):
        """rate() needs a series before its first increase."""
        samples, _ = yield scrape((yield serve(self, self.metrics)))
        self.assertEqual(value(samples, "keyexchanged_connections_open"), 0)
        for kind in ("full", "resumed"):
            self.assertEqual(
                value(samples, "keyexchanged_handshakes_total", kind=kind, outcome="ok"), 0
            )
        for direction in ("in", "out"):
            self.assertEqual(value(samples, "keyexchanged_bytes_total", direction=direction), 0)
        self.assertEqual(value(samples, "keyexchanged_reloads_total", result="failed"), 0)

    @defer.inlineCallbacks
    def test_scrapes_follow_the_numbers(self):
        port = yield serve(self, self.metrics)
        self.metrics.connection_opened()
        first, _ = yield scrape(port)
        self.metrics.connection_closed()
        self.metrics.handshake_done("full", "ok", 0.01)
        second, _ = yield scrape(port)
        self.assertEqual(value(first, "keyexchanged_connections_open"), 1)
        self.assertEqual(value(second, "keyexchanged_connections_open"), 0)
        self.assertEqual(
            value(second, "keyexchanged_handshakes_total", kind="full", outcome="ok"), 1
        )

    @defer.inlineCallbacks
    def test_content_type_is_the_text_format(self):
        response, _ = yield get((yield serve(self, self.metrics)))
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"),
            [b"text/plain; version=0.0.4; charset=utf-8"],
        )

    @defer.inlineCallbacks
    def test_other_paths_are_not_found(self):
        port = yield serve(self, self.metrics)
        for path in (b"/", b"/metrics/", b"/metrics/x", b"/metric", b"/favicon.ico"):
            response, _ = yield get(port, path)
            self.assertEqual(response.code, 404, path)

    @defer.inlineCallbacks
    def test_failing_collection_answers_500_and_logs(self):
        def broken():
            raise OSError("metrics file damaged")

        self.metrics.render = broken
        response, body = yield get((yield serve(self, self.metrics)))
        self.assertEqual(response.code, 500)
        self.assertIn(b"cannot collect", body)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    @defer.inlineCallbacks
    def test_stop_closes_the_port(self):
        service = metrics_service(LOCAL, self.metrics, reactor)
        service.startService()
        yield service.listening
        port = service.port.getHost().port
        yield service.stopService()
        self.assertIsNone(service.port)
        agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        yield self.assertFailure(
            agent.request(b"GET", b"http://127.0.0.1:%d/metrics" % port), ConnectionRefusedError
        )


class MetricsTests(unittest.TestCase):
    """Without the network: label values, instances, arguments."""

    def test_instances_are_independent(self):
        one, two = Metrics(), Metrics()
        one.handshake_done("full", "ok", 0.01)
        one.connection_opened()
        samples, _ = parse(two.render().decode())
        self.assertEqual(
            value(samples, "keyexchanged_handshakes_total", kind="full", outcome="ok"), 0
        )
        self.assertEqual(value(samples, "keyexchanged_connections_open"), 0)
        samples, _ = parse(one.render().decode())
        self.assertEqual(
            value(samples, "keyexchanged_handshakes_total", kind="full", outcome="ok"), 1
        )

    def test_unknown_label_values_are_other_and_logged_once(self):
        """Nothing can make new series, and a mistake is said once."""
        events = []
        m = Metrics()
        m.log = Logger(observer=events.append)
        m.handshake_done("full", "invented-by-a-peer")
        m.handshake_done("full", "another-one")
        m.handshake_done("sideways", "ok", 0.01)
        m.error_sent("not-a-code")
        samples, _ = parse(m.render().decode())
        handshakes = "keyexchanged_handshakes_total"
        self.assertEqual(value(samples, handshakes, kind="full", outcome="other"), 2)
        self.assertEqual(value(samples, handshakes, kind="other", outcome="ok"), 1)
        self.assertEqual(value(samples, "keyexchanged_errors_sent_total", code="other"), 1)
        self.assertEqual([event["label"] for event in events], ["outcome", "kind", "code"], events)
        self.assertFalse([key for key in samples if "invented-by-a-peer" in str(key)])

    def test_session_kind_given_as_kind(self):
        """A summary may say ``kind`` instead of ``resumed``."""
        m = Metrics()
        summary = Summary("bad-record", bytes_in=5)
        del summary.resumed
        summary.kind = "resumed"
        m.session_ended(summary)
        samples, _ = parse(m.render().decode())
        self.assertEqual(
            value(samples, "keyexchanged_sessions_total", kind="resumed", outcome="bad-record"),
            1,
        )

    def test_not_an_endpoint(self):
        error = self.assertRaises(
            MetricsError, metrics_service, "nonsense:9464", Metrics(), reactor
        )
        self.assertIn("--metrics nonsense:9464: not an endpoint", str(error))

    def test_port_in_use_raises_at_start(self):
        """A port that cannot be had stops the daemon before it runs."""
        taken = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        description = f"tcp:{taken.getHost().port}:interface=127.0.0.1"
        service = metrics_service(description, Metrics(), reactor)
        error = self.assertRaises(MetricsError, service.privilegedStartService)
        self.assertIn(f"--metrics {description}: cannot listen", str(error))

    def test_process_directory_must_exist(self):
        missing = os.path.abspath(self.mktemp())
        error = self.assertRaises(MetricsError, Metrics, process_directory=missing)
        self.assertIn(missing, str(error))

    def test_prepare_process_directory_empties_a_previous_run(self):
        path = self.mktemp()
        os.makedirs(path)
        for name in ("counter_123.db", "gauge_livesum_123.db", "notes.txt"):
            with open(os.path.join(path, name), "wb") as f:
                f.write(b"x")
        self.assertEqual(metrics.prepare_process_directory(path), os.path.abspath(path))
        self.assertEqual(os.listdir(path), ["notes.txt"])

    def test_prepare_process_directory_is_ours_alone(self):
        path = metrics.prepare_process_directory(os.path.join(self.mktemp(), "metrics"))
        self.assertEqual(os.stat(path).st_mode & 0o077, 0)


# -- several processes ------------------------------------------------------------------

#: A daemon process in miniature: counts what it is told, says so on a line
#: of JSON (with its own view of the sums when told to serve), and keeps
#: living, its gauges with it, until its stdin closes.
CHILD = r"""
import json, os, sys
from keyexchanged.metrics import Metrics
task = json.loads(sys.argv[1])
m = Metrics(process_directory=task.get("serve"))
for _ in range(task["full"]):
    m.handshake_done("full", "ok", 0.003)
for _ in range(task["opened"]):
    m.connection_opened()
m.bytes("in", task["bytes_in"])
m.error_sent("busy")
m.private_key_queue(task["queue"])
view = m.render().decode() if task.get("serve") else None
print(json.dumps({"pid": os.getpid(), "shared": m.shared, "view": view}), flush=True)
sys.stdin.read()
"""


#: What the metrics port holds at most: connections from one address, in
#: all, and seconds for one connection (a scrape takes milliseconds).
PER_SOURCE, TOTAL, DEADLINE = 4, 16, 10


class ConnectionLimitTests(unittest.TestCase):
    """The metrics port holds few connections, none for long: a stranger who
    can reach it cannot take the descriptors the KX/1 port needs."""

    def listening_factory(self, description=r"tcp6:9464:interface=\:\:1"):
        self.reactor = MemoryReactorClock()
        service = metrics_service(description, Metrics(), self.reactor)
        service.startService()
        self.addCleanup(service.stopService)
        return self.reactor.tcpServers[-1][1]

    def connect(self, factory, host):
        channel = factory.buildProtocol(IPv4Address("TCP", host, 40000))
        if channel is None:
            return None
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
        transport.protocol = channel
        channel.makeConnection(transport)
        return transport

    def test_connections_from_one_source_are_bounded(self):
        factory = self.listening_factory()
        held = [self.connect(factory, "192.0.2.1") for _ in range(PER_SOURCE)]
        self.assertNotIn(None, held)
        self.assertIsNone(self.connect(factory, "192.0.2.1"))
        self.assertIsNotNone(self.connect(factory, "192.0.2.2"))

    def test_connections_in_all_are_bounded(self):
        factory = self.listening_factory()
        held = [self.connect(factory, f"192.0.2.{i}") for i in range(TOTAL)]
        self.assertNotIn(None, held)
        self.assertIsNone(self.connect(factory, "198.51.100.1"))

    def test_a_closed_connection_frees_its_place(self):
        factory = self.listening_factory()
        held = [self.connect(factory, "192.0.2.1") for _ in range(PER_SOURCE)]
        held[0].protocol.connectionLost(Failure(ConnectionDone()))
        self.assertIsNotNone(self.connect(factory, "192.0.2.1"))

    def test_a_connection_is_cut_after_its_time_even_if_it_trickles(self):
        factory = self.listening_factory()
        transport = self.connect(factory, "192.0.2.1")
        for _ in range(DEADLINE):
            # One byte a second resets an idle timeout: not this one.
            transport.protocol.dataReceived(b"G")
            self.assertFalse(transport.disconnecting)
            self.reactor.advance(1)
        self.reactor.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_a_scrape_still_works_through_the_limits(self):
        factory = self.listening_factory()
        transport = self.connect(factory, "192.0.2.1")
        transport.protocol.dataReceived(b"GET /metrics HTTP/1.0\r\n\r\n")
        self.assertIn(b"200 OK", transport.value())
        self.assertIn(b"keyexchanged_connections_open", transport.value())

    def test_listening_on_every_interface_warns(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.listening_factory(r"tcp6:9464:interface=\:\:")
        warnings = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn("every interface", warnings[0])

    def test_listening_on_loopback_does_not_warn(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.listening_factory()
        self.assertEqual([e for e in events if e.get("log_level") == LogLevel.warn], [])


class Child(protocol.ProcessProtocol):
    def __init__(self):
        self.out = b""
        self.err = b""
        self.ready = defer.Deferred()
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self.out += data
        if b"\n" in self.out and not self.ready.called:
            self.ready.callback(json.loads(self.out.split(b"\n", 1)[0]))

    def errReceived(self, data):
        self.err += data

    def processEnded(self, reason):
        if not self.ready.called:
            self.ready.errback(RuntimeError(f"child exited early: {self.err.decode()}"))
        self.ended.callback(reason.value.exitCode)


class MultiprocessTests(unittest.TestCase):
    """Two real processes writing to one directory, and the process that
    serves adding them to its own numbers."""

    timeout = 60

    def setUp(self):
        if os.environ.get(metrics.DIRECTORY_VARIABLE):
            raise unittest.SkipTest(f"the test process itself has ${metrics.DIRECTORY_VARIABLE}")
        self.directory = metrics.prepare_process_directory(self.mktemp())

    def spawn(self, **task):
        child = Child()
        env = environment(**metrics.process_environment(self.directory))
        argv = [sys.executable, "-c", CHILD, json.dumps(task)]
        reactor.spawnProcess(child, argv[0], argv, env=env)

        def end():
            child.transport.closeStdin()
            return child.ended

        self.addCleanup(lambda: None if child.ended.called else end())
        child.end = end
        return child

    @defer.inlineCallbacks
    def test_two_processes_and_the_server_add_up(self):
        parent = Metrics(process_directory=self.directory)
        self.assertFalse(parent.shared)
        parent.handshake_done("full", "ok", 0.5)
        parent.connection_opened()
        parent.bytes("in", 10)

        a = self.spawn(full=2, opened=3, bytes_in=100, queue=4)
        a_said = yield a.ready
        self.assertTrue(a_said["shared"], a.err)
        # b writes to the directory and serves from it too: its own
        # numbers are in the files, and must not count twice.
        b = self.spawn(full=5, opened=1, bytes_in=1000, queue=1, serve=self.directory)
        b_said = yield b.ready
        b_view, _ = parse(b_said["view"])
        handshakes = "keyexchanged_handshakes_total"
        self.assertEqual(value(b_view, handshakes, kind="full", outcome="ok"), 7)
        self.assertEqual(value(b_view, "keyexchanged_connections_open"), 4)

        port = yield serve(self, parent)
        samples, types = yield scrape(port)
        self.assertEqual(types["keyexchanged_handshake_seconds"], "histogram")
        self.assertEqual(value(samples, handshakes, kind="full", outcome="ok"), 8)
        seconds = "keyexchanged_handshake_seconds"
        self.assertEqual(value(samples, seconds + "_count", kind="full"), 8)
        self.assertAlmostEqual(value(samples, seconds + "_sum", kind="full"), 0.5 + 7 * 0.003)
        self.assertEqual(value(samples, seconds + "_bucket", kind="full", le="0.005"), 7)
        self.assertEqual(value(samples, seconds + "_bucket", kind="full", le="+Inf"), 8)
        self.assertEqual(value(samples, "keyexchanged_connections_open"), 5)
        self.assertEqual(value(samples, "keyexchanged_private_key_queue"), 5)
        self.assertEqual(value(samples, "keyexchanged_bytes_total", direction="in"), 1110)
        self.assertEqual(value(samples, "keyexchanged_errors_sent_total", code="busy"), 2)
        # One series per label set: no pid label, no duplicates.
        self.assertFalse([key for key in samples if "pid" in dict(key[1])])

        # a exits: its connections and queue are gone, its counts stay.
        yield a.end()
        metrics.process_ended(self.directory, a_said["pid"])
        samples, _ = yield scrape(port)
        self.assertEqual(value(samples, "keyexchanged_connections_open"), 2)
        self.assertEqual(value(samples, "keyexchanged_private_key_queue"), 1)
        self.assertEqual(value(samples, handshakes, kind="full", outcome="ok"), 8)
        self.assertEqual(value(samples, "keyexchanged_bytes_total", direction="in"), 1110)

    @defer.inlineCallbacks
    def test_a_process_that_writes_elsewhere_is_refused(self):
        child = self.spawn(full=0, opened=0, bytes_in=0, queue=0, serve=os.getcwd())
        child.ready.addErrback(lambda failure: None)
        code = yield child.ended
        self.assertNotEqual(code, 0)
        self.assertIn(b"MetricsError", child.err)
        self.assertIn(f"keeps its metrics in {self.directory}".encode(), child.err)


# -- the daemon (needs the wiring) ------------------------------------------------------

_METRICS_AT = re.compile(rb"metrics on http://127\.0\.0\.1:(\d+)/metrics")


class DaemonMetricsTests(DaemonTestCase):
    @defer.inlineCallbacks
    def test_scrape_the_daemon_after_a_session(self):
        self.write_config()
        daemon = Daemon.start(["--config", self.conf, "--metrics", LOCAL])
        self.addCleanup(daemon.stop)
        port = yield daemon.listening
        output = yield daemon.wait_for(b"/metrics")
        metrics_port = int(_METRICS_AT.search(output).group(1))
        out, err, code = yield connect_here(port)
        self.assertEqual((out, code), (MESSAGE, 0), err)
        yield daemon.wait_for(b"ended: ok")
        samples, _ = yield scrape(metrics_port)
        self.assertEqual(
            value(samples, "keyexchanged_handshakes_total", kind="full", outcome="ok"), 1
        )
        self.assertEqual(value(samples, "keyexchanged_handshake_seconds_count", kind="full"), 1)
        self.assertEqual(value(samples, "keyexchanged_connections_open"), 0)
        self.assertGreater(value(samples, "keyexchanged_bytes_total", direction="in"), 256)
        self.assertGreater(value(samples, "keyexchanged_bytes_total", direction="out"), 256)
        self.assertEqual(value(samples, "keyexchanged_private_key_queue"), 0)
        # The first ephemeral key is made before listening.
        self.assertEqual(value(samples, "keyexchanged_ephemeral_rotations_total"), 1)
        self.assertEqual(
            value(samples, "keyexchanged_sessions_total", kind="full", outcome="ok"), 1
        )
