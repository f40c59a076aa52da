"""sd_notify without libsystemd: the datagrams a real AF_UNIX socket
receives, and the SIGHUP reload that ``ExecReload=`` relies on."""

import os
import shutil
import signal
import socket
import tempfile
import time
import uuid

from twisted.internet import defer
from twisted.logger import Logger, formatEvent
from twisted.trial import unittest

from keyexchanged import systemd
from tests.fixtures import log_events


class Listener:
    """The systemd end: a bound SOCK_DGRAM socket we read without waiting
    (a datagram to an AF_UNIX socket is queued before sendto returns)."""

    def __init__(self, testcase, abstract=False):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        testcase.addCleanup(self.sock.close)
        if abstract:
            name = "kx-notify-test-" + uuid.uuid4().hex
            self.sock.bind("\0" + name)
            self.name = "@" + name
        else:
            # Short: an AF_UNIX path is limited to 107 bytes, which trial's
            # temporary directories can exceed.
            directory = tempfile.mkdtemp(prefix="kx-notify-")
            testcase.addCleanup(shutil.rmtree, directory)
            self.name = os.path.join(directory, "notify")
            self.sock.bind(self.name)
        self.sock.setblocking(False)

    def received(self):
        out = []
        while True:
            try:
                out.append(self.sock.recv(65536))
            except BlockingIOError:
                return out


class NotifierTests(unittest.SynchronousTestCase):
    def notifier(self, abstract=False):
        listener = Listener(self, abstract)
        return listener, systemd.Notifier({"NOTIFY_SOCKET": listener.name}, lambda: 1234567)

    def test_path_socket_gets_each_notification(self):
        listener, notifier = self.notifier()
        self.assertTrue(notifier.ready())
        self.assertTrue(notifier.reloading())
        self.assertTrue(notifier.ready())
        self.assertTrue(notifier.stopping())
        self.assertTrue(notifier.status("serving on 127.0.0.1:51424"))
        self.assertEqual(
            listener.received(),
            [
                b"READY=1",
                b"RELOADING=1\nMONOTONIC_USEC=1234567",
                b"READY=1",
                b"STOPPING=1",
                b"STATUS=serving on 127.0.0.1:51424",
            ],
        )

    def test_abstract_socket(self):
        listener, notifier = self.notifier(abstract=True)
        self.assertTrue(notifier.ready("serving"))
        self.assertEqual(listener.received(), [b"READY=1\nSTATUS=serving"])

    def test_status_is_one_line(self):
        listener, notifier = self.notifier()
        notifier.status("reload failed: line one\nREADY=1")
        # The second line must not become an assignment of its own.
        self.assertEqual(listener.received(), [b"STATUS=reload failed: line one READY=1"])

    def test_monotonic_usec_is_clock_monotonic_in_microseconds(self):
        listener = Listener(self)
        notifier = systemd.Notifier({"NOTIFY_SOCKET": listener.name})
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        notifier.reloading()
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        [message] = listener.received()
        first, second = message.split(b"\n")
        self.assertEqual(first, b"RELOADING=1")
        name, value = second.split(b"=")
        self.assertEqual(name, b"MONOTONIC_USEC")
        self.assertTrue(before <= int(value) <= after, (before, value, after))

    def test_no_notify_socket_is_a_no_op(self):
        events = log_events(self)
        notifier = systemd.Notifier({})
        for call in (notifier.ready, notifier.reloading, notifier.stopping):
            self.assertFalse(call())
        self.assertFalse(notifier.status("x"))
        self.assertEqual(events, [])

    def test_module_functions_use_the_environment(self):
        listener = Listener(self, abstract=True)
        self.patch(os, "environ", {"NOTIFY_SOCKET": listener.name})
        self.assertTrue(systemd.ready())
        self.assertTrue(systemd.status("up"))
        self.assertTrue(systemd.stopping())
        self.assertTrue(systemd.reloading())
        got = listener.received()
        self.assertEqual(got[:3], [b"READY=1", b"STATUS=up", b"STOPPING=1"])
        self.assertTrue(got[3].startswith(b"RELOADING=1\nMONOTONIC_USEC="))
        self.patch(os, "environ", {})
        self.assertFalse(systemd.ready())

    def test_unreachable_socket_is_logged_not_raised(self):
        events = log_events(self)
        missing = os.path.join(tempfile.gettempdir(), "kx-no-such-" + uuid.uuid4().hex)
        notifier = systemd.Notifier({"NOTIFY_SOCKET": missing})
        self.assertFalse(notifier.ready())
        [event] = events
        self.assertEqual(event["socket"], missing)
        self.assertEqual(event["reason"], "No such file or directory")

    def test_unsupported_address_is_logged_not_raised(self):
        events = log_events(self)
        notifier = systemd.Notifier({"NOTIFY_SOCKET": "vsock:2:1234"})
        self.assertFalse(notifier.ready())
        self.assertEqual(events[0]["reason"], "not a socket path or @abstract name")

    def test_full_queue_drops_the_notice_instead_of_blocking(self):
        # Nobody reads: the receiver's queue fills (net.unix.max_dgram_qlen
        # datagrams, or its buffer).  A blocking send would hang here.
        listener, notifier = self.notifier()
        for _ in range(100000):
            if not notifier.status("x" * 1024):
                break
        else:
            self.fail("the queue never filled")
        self.assertGreater(len(listener.received()), 0)


class RecordingNotifier:
    def __init__(self):
        self.sent = []

    def ready(self, text=None):
        self.sent.append(("ready", text))

    def reloading(self, text=None):
        self.sent.append(("reloading", text))


class FakeReactor:
    def __init__(self):
        self.calls = []

    def callFromThread(self, f, *args):
        self.calls.append((f, args))


class ReloadOnHangupTests(unittest.SynchronousTestCase):
    def setUp(self):
        self.notifier = RecordingNotifier()
        self.reloads = []

    def reloader(self, reload=None):
        return systemd.ReloadOnHangup(
            FakeReactor(), reload or (lambda: self.reloads.append(1)), self.notifier
        )

    def test_reload_is_framed_by_reloading_and_ready(self):
        hup = self.reloader()
        self.successResultOf(hup.reload_now())
        self.assertEqual(self.reloads, [1])
        self.assertEqual(
            self.notifier.sent, [("reloading", "reloading"), ("ready", "serving; reloaded")]
        )

    def test_failed_reload_still_says_ready(self):
        def reload():
            raise ValueError("tickets.keys: cannot read ticket keys")

        hup = self.reloader(reload)
        hup.reload_now()
        self.assertEqual(
            self.notifier.sent[-1],
            ("ready", "serving; reload failed: tickets.keys: cannot read ticket keys"),
        )
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_refused_reload_says_ready_and_not_done(self):
        """A refusal was logged by the reload itself, with its reason: no
        traceback, no "reload done"."""

        def reload():
            raise systemd.ReloadRefused("server.key: no such key file")

        logged = []
        self.patch(systemd, "log", Logger(observer=logged.append))
        self.reloader(reload).reload_now()
        self.assertEqual(
            self.notifier.sent[-1],
            ("ready", "serving; reload failed: server.key: no such key file"),
        )
        self.assertEqual([formatEvent(event) for event in logged], ["SIGHUP: reloading"])

    def test_hangup_during_a_reload_reloads_once_more_after_it(self):
        pending = []

        def reload():
            pending.append(defer.Deferred())
            return pending[-1]

        hup = self.reloader(reload)
        hup.reload_now()
        hup.reload_now()
        hup.reload_now()
        self.assertEqual(len(pending), 1)
        pending[0].callback(None)
        self.assertEqual(len(pending), 2)  # the two signals: one more reload
        pending[1].callback(None)
        self.assertEqual(len(pending), 2)
        self.assertEqual([kind for kind, _ in self.notifier.sent], ["reloading", "ready"] * 2)

    def test_sighup_hands_the_reload_to_the_reactor(self):
        hup = self.reloader()
        before = signal.getsignal(signal.SIGHUP)
        hup.install()
        self.addCleanup(hup.uninstall)
        os.kill(os.getpid(), signal.SIGHUP)
        # Still alive (the default action would have ended the process),
        # and nothing was done inside the signal handler itself.
        self.assertEqual(hup.reactor.calls, [(hup.reload_now, ())])
        self.assertEqual(self.reloads, [])
        hup.uninstall()
        self.assertEqual(signal.getsignal(signal.SIGHUP), before)
