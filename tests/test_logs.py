"""keyexchanged.logs: JSON lines, the session-end event, limit warnings."""

import io
import json
import os
import re
import shutil
import signal
import sys
import tempfile

from twisted.application import service
from twisted.internet import defer, endpoints, protocol, reactor
from twisted.internet.task import Clock
from twisted.logger import (
    ILogObserver,
    Logger,
    LogLevel,
    eventsFromJSONLogFile,
    formatEvent,
)
from twisted.logger._flatten import flattenEvent
from twisted.python import logfile
from twisted.trial import unittest

from keyexchanged import logs
from keyexchanged.logs import SESSION_END_FIELDS, LimitWarnings
from tests.daemon import MESSAGE, TWISTD, Daemon, DaemonTestCase, connect_here, environment
from tests.test_service import Notifications

FINGERPRINT = "SHA256:" + "B" * 43


class Summary:
    """A session's end, holding more than it may tell (as the server's does)."""

    def __init__(self, **changes):
        self.peer = "192.0.2.7:51000"
        self.outcome = "ok"
        self.resumed = False
        self.forward_secrecy = True
        self.bytes_in = 1234
        self.bytes_out = 56789
        self.duration = 1.25
        self.client_fingerprint = FINGERPRINT
        # What no log may show.
        self.ticket = "TICKET-never-in-a-log"
        self.secret = b"SECRET-never-in-a-log"
        self.session_key = "KEY-never-in-a-log"
        self.__dict__.update(changes)


class Address:
    host = "2001:db8::1"
    port = 4000


def json_lines(stream):
    text = stream.getvalue()
    assert text.endswith("\n"), text
    return [json.loads(line) for line in text.splitlines()]


def own_fields(event):
    return {name for name in event if not name.startswith("log_")}


#: Every JSON line has these; a session end also "event" and SESSION_END_FIELDS.
LINE_FIELDS = {"time", "level", "logger", "message"}
RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")
LEVELS = {"debug", "info", "warn", "error", "critical"}
SESSION_TYPES = {
    "peer": str,
    "client_fingerprint": (str, type(None)),
    "kind": str,
    "forward_secrecy": bool,
    "post_quantum": bool,
    "record_cipher": str,
    "bytes_in": int,
    "bytes_out": int,
    "duration": (int, float),
    "outcome": str,
}


def assert_schema(test, record):
    """``record`` is a JSON line as docs/deployment.rst describes it."""
    optional = {"child", "child_pid", "traceback"}
    if record.get("event") == "session_end":
        test.assertEqual(set(record) - optional, LINE_FIELDS | {"event"} | set(SESSION_END_FIELDS))
        for name, kind in SESSION_TYPES.items():
            test.assertIsInstance(record[name], kind, name)
    else:
        test.assertEqual(set(record) - optional, LINE_FIELDS, record)
    test.assertRegex(record["time"], RFC3339_UTC)
    test.assertIn(record["level"], LEVELS)
    test.assertIsInstance(record["logger"], str)
    test.assertIsInstance(record["message"], str)


class SessionEndTests(unittest.TestCase):
    def setUp(self):
        self.stream = io.StringIO()
        self.log = Logger(namespace="keyexchanged.session", observer=logs.JSONLines(self.stream))

    def test_one_line_with_exactly_the_fields(self):
        logs.log_session_end(Summary(), log=self.log)
        (event,) = json_lines(self.stream)
        assert_schema(self, event)
        self.assertEqual(
            {name: event[name] for name in SESSION_END_FIELDS},
            {
                "peer": "192.0.2.7:51000",
                "client_fingerprint": FINGERPRINT,
                "kind": "full",
                "forward_secrecy": True,
                "post_quantum": False,
                "record_cipher": "aes-256-gcm",
                "bytes_in": 1234,
                "bytes_out": 56789,
                "duration": 1.25,
                "outcome": "ok",
            },
        )
        self.assertEqual(
            (event["event"], event["logger"], event["level"]),
            ("session_end", "keyexchanged.session", "info"),
        )

    def test_a_summary_that_names_its_cipher_and_kem(self):
        summary = Summary(post_quantum=True, record_cipher="aes-256-ocb")
        logs.log_session_end(summary, log=self.log)
        (event,) = json_lines(self.stream)
        self.assertEqual((event["post_quantum"], event["record_cipher"]), (True, "aes-256-ocb"))

    def test_nothing_else_the_summary_holds(self):
        logs.log_session_end(Summary(), log=self.log)
        text = self.stream.getvalue()
        for secret in ("TICKET", "SECRET", "KEY-never"):
            self.assertNotIn(secret, text)

    def test_resumed_without_fingerprint_and_an_address_object(self):
        summary = Summary(
            resumed=True, forward_secrecy=False, client_fingerprint=None, peer=Address()
        )
        logs.log_session_end(summary, log=self.log)
        (event,) = json_lines(self.stream)
        assert_schema(self, event)
        self.assertEqual(event["kind"], "resumed")
        self.assertIs(event["forward_secrecy"], False)
        self.assertIsNone(event["client_fingerprint"])
        self.assertEqual(event["peer"], "2001:db8::1:4000")

    def test_kind_given_as_kind(self):
        summary = Summary(kind="resumed")
        del summary.resumed
        self.assertEqual(logs.session_end_fields(summary)["kind"], "resumed")

    def test_the_message_says_it_all(self):
        logs.log_session_end(Summary(outcome="idle-timeout"), log=self.log)
        (event,) = json_lines(self.stream)
        self.assertEqual(
            event["message"],
            "session with 192.0.2.7:51000 ended: idle-timeout; full, forward secrecy: True, "
            "post-quantum: False, aes-256-gcm; "
            f"1234 bytes in, 56789 bytes out, 1.25 s; client key: {FINGERPRINT}",
        )


class JSONLinesTests(unittest.TestCase):
    def setUp(self):
        self.stream = io.StringIO()
        self.observer = logs.json_file_observer(self.stream)
        self.log = Logger(observer=self.observer, namespace="keyexchanged.test")

    def test_one_flat_object_per_line(self):
        self.log.info("first {n}", n=1)
        self.log.warn("second\nwith a newline {what}", what="in\nit")
        self.log.error("third")
        events = json_lines(self.stream)
        self.assertEqual(len(self.stream.getvalue().splitlines()), 3)
        for event in events:
            assert_schema(self, event)
        self.assertEqual([event["level"] for event in events], ["info", "warn", "error"])
        self.assertEqual(
            [event["message"] for event in events],
            ["first 1", "second\nwith a newline in\nit", "third"],
        )
        self.assertEqual({event["logger"] for event in events}, {"keyexchanged.test"})

    def test_time_is_rfc3339_utc(self):
        self.observer({"log_format": "x", "log_time": 1796527238.25, "log_level": LogLevel.info})
        (event,) = json_lines(self.stream)
        self.assertEqual(event["time"], "2026-12-06T03:20:38.250Z")

    def test_none_of_twisteds_internals(self):
        self.log.info("hello {who}", who=object())
        text = self.stream.getvalue()
        for internal in ("log_flattened", "unpersistable", "__class_uuid__", "log_format"):
            self.assertNotIn(internal, text)

    def test_secret_names_and_bytes_are_not_written(self):
        """Only the message's text is written, made with placeholders for a
        field named as a secret, and for raw bytes."""
        self.log.info(
            "resumed with {ticket}, {payload}",
            ticket="T0PS3CRET-ticket",
            session_secret="T0PS3CRET-secret",
            payload=b"T0PS3CRET-bytes",
        )
        self.assertNotIn("T0PS3CRET", self.stream.getvalue())
        (event,) = json_lines(self.stream)
        self.assertEqual(event["message"], "resumed with [redacted], [15 bytes]")

    def test_json_observer_is_for_twistd_logger(self):
        """``twistd --logger`` calls it with no arguments: stdout."""
        stdout = io.StringIO()
        self.patch(sys, "stdout", stdout)
        observer = logs.json_observer()
        self.assertTrue(ILogObserver.providedBy(observer))
        Logger(observer=observer).info("hello {who}", who="ops")
        (event,) = json_lines(stdout)
        self.assertEqual(event["message"], "hello ops")


class RelayLinesTests(unittest.TestCase):
    """A child's lines for its parent: Twisted's serialisation, read back."""

    def setUp(self):
        self.stream = io.StringIO()
        self.observer = logs.RelayLines(self.stream)
        self.log = Logger(observer=self.observer)

    def test_read_back_as_events(self):
        self.log.info("first {n}", n=1)
        (event,) = eventsFromJSONLogFile(io.StringIO(self.stream.getvalue()))
        self.assertEqual((event["n"], formatEvent(event)), (1, "first 1"))

    def test_secret_names_and_bytes_are_not_written(self):
        self.log.info(
            "resumed with {ticket}",
            ticket="T0PS3CRET-ticket",
            session_secret="T0PS3CRET-secret",
            api_token="T0PS3CRET-token",
            payload=b"T0PS3CRET-bytes",
            forward_secrecy=True,
            fingerprint=FINGERPRINT,
            count=3,
        )
        self.assertNotIn("T0PS3CRET", self.stream.getvalue())
        (event,) = json_lines(self.stream)
        self.assertEqual(event["ticket"], "[redacted]")
        self.assertEqual(event["session_secret"], "[redacted]")
        self.assertEqual(event["api_token"], "[redacted]")
        self.assertEqual(event["payload"], "[15 bytes]")
        self.assertEqual((event["forward_secrecy"], event["count"]), (True, 3))
        self.assertEqual(event["fingerprint"], FINGERPRINT)

    def test_an_earlier_flattening_does_not_leak(self):
        """Another observer may have flattened the event (its format's
        fields as text) before ours sees it."""
        event = {
            "log_format": "{ticket}",
            "ticket": "T0PS3CRET",
            "log_level": LogLevel.info,
            "log_namespace": "x",
            "log_time": 0.0,
        }
        flattenEvent(event)
        self.observer(event)
        self.assertNotIn("T0PS3CRET", self.stream.getvalue())
        self.assertEqual(event["ticket"], "T0PS3CRET", "the event itself is left alone")


class UseJSONLogsTests(unittest.TestCase):
    def test_twistd_application_gets_the_observer(self):
        """twistd's AppLogger.start takes the application's ILogObserver
        component before making its own."""
        top = service.Service()
        stream = io.StringIO()
        wrapper = logs.use_json_logs(top, stream)
        self.assertIs(top.parent, wrapper)
        application = service.Application("keyexchange")
        wrapper.setServiceParent(application)
        observer = application.getComponent(ILogObserver)
        self.assertIs(observer, wrapper.observer)
        Logger(observer=observer).info("from {where}", where="twistd")
        (event,) = json_lines(stream)
        self.assertEqual(event["message"], "from twistd")
        # Starting the application starts the daemon's service.
        service.IService(application).startService()
        self.addCleanup(service.IService(application).stopService)
        self.assertTrue(top.running)

    def test_plain_parent(self):
        wrapper = logs.use_json_logs(service.Service(), io.StringIO())
        parent = service.MultiService()
        wrapper.setServiceParent(parent)
        self.assertIs(wrapper.parent, parent)


class Server(dict):
    """twistd's options, as a plugin's options see them (``parent``)."""


class Plugin:
    def __init__(self, **server):
        self.parent = Server(server)


class TwistdLogFileTests(unittest.TestCase):
    def test_no_twistd(self):
        self.assertIs(logs.twistd_log_file(object()), sys.stdout)

    def test_foreground(self):
        self.assertIs(logs.twistd_log_file(Plugin(logfile=None, nodaemon=1)), sys.stdout)
        self.assertIs(logs.twistd_log_file(Plugin(logfile="-", nodaemon=1)), sys.stdout)

    def test_daemon_to_stdout_is_refused(self):
        error = self.assertRaises(ValueError, logs.twistd_log_file, Plugin(logfile="-", nodaemon=0))
        self.assertIn("cannot log to standard output", str(error))

    def test_a_file(self):
        path = os.path.abspath(self.mktemp())
        for options in (Plugin(logfile=path, nodaemon=0), Plugin(logfile=path, nodaemon=1)):
            stream = logs.twistd_log_file(options)
            self.addCleanup(stream.close)
            self.assertIsInstance(stream, logfile.LogFile)
            self.assertEqual(stream.path, path)

    def test_daemon_default_is_twistd_log(self):
        stream = logs.twistd_log_file(Plugin(logfile=None, nodaemon=0))
        self.addCleanup(stream.close)
        self.assertEqual(stream.path, os.path.abspath("twistd.log"))


class LimitWarningsTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.events = []
        self.limits = LimitWarnings(self.clock, 60, log=Logger(observer=self.events.append))

    def told(self):
        """(limit, count, level) of each warning since the last call; their
        texts in ``self.texts``."""
        told = [(e["limit"], e["refused"], e["log_level"].name) for e in self.events]
        self.texts = [formatEvent(e) for e in self.events]
        del self.events[:]
        return told

    def test_first_refusal_warns_at_once_then_a_count_per_interval(self):
        self.limits.refused("busy")
        self.assertEqual(self.told(), [("busy", 1, "warn")])
        self.assertIn("too many connections open (--max-connections)", self.texts[0])
        for _ in range(5):
            self.clock.advance(10)
            self.limits.refused("busy")
        self.assertEqual(self.told(), [])
        self.clock.advance(10)  # 60 s after the first
        self.assertEqual(self.told(), [("busy", 5, "warn")])
        self.assertIn("5 connection(s) refused in the last 60 s", self.texts[0])

    def test_a_quiet_interval_closes_the_account(self):
        self.limits.refused("per-source")
        self.clock.advance(60)
        self.clock.advance(60)
        self.assertEqual(self.told(), [("per-source", 1, "warn")])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.limits.refused("per-source")
        self.assertEqual(self.told(), [("per-source", 1, "warn")])

    def test_a_flood_is_a_line_a_minute(self):
        for _ in range(10):
            for _ in range(1000):
                self.limits.refused("max-handshakes")
            self.clock.advance(60)
        told = self.told()
        self.assertEqual(len(told), 11)
        self.assertEqual(told[0], ("max-handshakes", 1, "warn"))
        self.assertEqual(sum(count for _, count, _ in told), 10000)

    def test_limits_are_counted_apart(self):
        self.limits.refused("busy")
        self.limits.refused("per-source")
        self.limits.refused("per-source")
        self.assertEqual(self.told(), [("busy", 1, "warn"), ("per-source", 1, "warn")])
        self.clock.advance(60)
        self.assertEqual(self.told(), [("per-source", 1, "warn")])

    def test_stop_tells_the_counts_and_leaves_no_timer(self):
        self.limits.refused("busy")
        self.limits.refused("busy")
        self.limits.refused("busy")
        self.clock.advance(30)
        self.told()
        self.limits.stop()
        self.assertEqual(self.told(), [("busy", 2, "warn")])
        self.assertIn("in the last 30 s", self.texts[0])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_unknown_limit(self):
        error = self.assertRaises(ValueError, self.limits.refused, "max-coffee")
        self.assertIn("unknown limit 'max-coffee'", str(error))

    def test_interval_must_be_positive(self):
        self.assertRaises(ValueError, LimitWarnings, self.clock, 0)


# -- the daemon -------------------------------------------------------------------------


class JSONDaemon(Daemon):
    """The daemon with its JSON lines on stdout, apart from stderr."""

    err = b""

    def errReceived(self, data):
        self.err += data


class DaemonJSONLogTests(DaemonTestCase):
    def events(self, daemon):
        return [json.loads(line) for line in daemon.output.decode().splitlines()]

    @defer.inlineCallbacks
    def test_twistd_logger_option(self):
        """``twistd --logger keyexchanged.logs.json_observer``: every line
        the daemon writes is a flat JSON object of the schema (a session
        end is an event with its fields under ``log-format = json``)."""
        self.write_config()
        argv = [
            *TWISTD,
            "-n",
            "--pidfile=",
            "--logger",
            "keyexchanged.logs.json_observer",
            "keyexchange",
            "--config",
            self.conf,
        ]
        daemon = JSONDaemon.spawn(argv)
        self.addCleanup(daemon.stop)
        port = yield daemon.listening  # "listening on HOST:PORT" in a message
        # A connection that says nothing: its end is a line too.
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        client = yield endpoint.connect(protocol.Factory.forProtocol(protocol.Protocol))
        client.transport.loseConnection()
        yield daemon.wait_for(b" ended: closed")
        code = yield daemon.stop()
        self.assertEqual(code, 0, daemon.err.decode())
        events = self.events(daemon)
        for event in events:
            assert_schema(self, event)
        (ended,) = [e for e in events if " ended: closed" in e["message"]]
        self.assertIn("connection from 127.0.0.1:", ended["message"])

    @defer.inlineCallbacks
    def test_use_json_logs_under_twistd(self):
        """What makeService returns through use_json_logs becomes twistd's
        log: its own lines are JSON, and no text line is written."""
        tac = os.path.join(self.dir, "json.tac")
        with open(tac, "w") as f:
            f.write(
                "import sys\n"
                "from twisted.application import service\n"
                "from keyexchanged import logs\n"
                "application = service.Application('json')\n"
                "logs.use_json_logs(service.Service(), sys.stdout).setServiceParent(application)\n"
            )
        daemon = JSONDaemon.spawn([*TWISTD, "-n", "--pidfile=", "-y", tac])
        daemon.listening.addErrback(lambda failure: None)
        self.addCleanup(daemon.stop)
        yield daemon.wait_for(b"reactor class: ")  # in JSON, and in text if broken
        yield daemon.stop()
        events = self.events(daemon)
        for event in events:
            assert_schema(self, event)
        self.assertTrue(any(e["message"].startswith("twistd ") for e in events), events)

    @defer.inlineCallbacks
    def test_log_format_json_session_end(self):
        self.write_config()
        daemon = JSONDaemon.start(["--config", self.conf, "--log-format", "json"])
        self.addCleanup(daemon.stop)
        port = yield daemon.listening
        out, err, code = yield connect_here(port)
        self.assertEqual((out, code), (MESSAGE, 0), err)
        yield daemon.wait_for(b'"event": "session_end"')
        yield daemon.stop()
        events = self.events(daemon)
        for event in events:
            assert_schema(self, event)
        (end,) = [e for e in events if e.get("event") == "session_end"]
        # One event per session end: not a text line beside it.
        self.assertEqual([e for e in events if " ended: " in e["message"]], [end])
        self.assertEqual((end["outcome"], end["kind"]), ("ok", "full"))
        self.assertIs(end["forward_secrecy"], True)
        # The daemon's defaults: ML-KEM with each ephemeral key, OCB records.
        self.assertIs(end["post_quantum"], True)
        self.assertEqual(end["record_cipher"], "aes-256-ocb")
        self.assertGreater(end["bytes_in"], 256)
        self.assertTrue(end["peer"].startswith("127.0.0.1:"))

    @defer.inlineCallbacks
    def test_sigusr1_rotates_a_json_log_file(self):
        """twistd rotates its log file on SIGUSR1: the JSON one too."""
        self.write_config()
        # The log is in the file: READY=1 on NOTIFY_SOCKET says it serves.
        directory = tempfile.mkdtemp(prefix="kx-notify-")  # AF_UNIX paths are short
        self.addCleanup(shutil.rmtree, directory)
        notify_path = os.path.join(directory, "notify")
        notifications = Notifications()
        notify = reactor.listenUNIXDatagram(notify_path, notifications)
        self.addCleanup(notify.stopListening)
        free = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
        port = free.getHost().port
        yield free.stopListening()
        log_file = os.path.join(self.dir, "kx.log")
        argv = [*TWISTD, "-n", "--pidfile=", "--logfile", log_file, "keyexchange"]
        argv += ["--config", self.conf, "--log-format", "json"]
        argv += ["--listen", f"tcp:{port}:interface=127.0.0.1"]
        daemon = JSONDaemon.spawn(argv, env=environment(NOTIFY_SOCKET=notify_path))
        daemon.listening.addErrback(lambda failure: None)  # said in the file
        self.addCleanup(daemon.stop)
        [ready] = yield notifications.until(1)
        self.assertTrue(ready.startswith(b"READY=1"), ready)
        daemon.signal(signal.SIGUSR1)  # Twisted knows only HUP, INT, KILL, TERM by name
        out, err, code = yield connect_here(port)
        self.assertEqual((out, code), (MESSAGE, 0), err)
        code = yield daemon.stop()
        self.assertEqual(code, 0, daemon.output.decode())
        with open(log_file + ".1") as f:
            before = [json.loads(line) for line in f]
        with open(log_file) as f:
            after = [json.loads(line) for line in f]
        for event in before + after:
            assert_schema(self, event)
        self.assertTrue(any("listening on" in e["message"] for e in before), before)
        self.assertEqual([e for e in before if e.get("event") == "session_end"], [])
        self.assertEqual(len([e for e in after if e.get("event") == "session_end"]), 1)
