"""Tell systemd how the daemon is doing: sd_notify(3) without libsystemd.

A service with ``Type=notify`` is "started" only when it says ``READY=1``:
then ``systemctl start`` returns once the daemon listens, not when the
process exists, and units ordered after it start against a daemon that
answers.  The protocol is one datagram of newline-separated ``NAME=value``
assignments to the AF_UNIX socket named by ``$NOTIFY_SOCKET``: a path, or
an abstract name written ``@name``.  Outside systemd the variable is unset
and every call here does nothing.

Nothing here raises into the daemon: a notification that cannot be sent is
logged and the daemon goes on serving, which matters more than systemd's
view of it.

:class:`ReloadOnHangup` is the other half of ``ExecReload=/bin/kill -HUP
$MAINPID``: without a SIGHUP handler the signal's default action would end
the process, and systemd would count the reload as a clean stop.
"""

import os
import signal
import socket
import time

from twisted.internet import defer
from twisted.logger import Logger

__all__ = [
    "Notifier",
    "ReloadOnHangup",
    "ReloadRefused",
    "ready",
    "reloading",
    "status",
    "stopping",
]

log = Logger()


def _monotonic_usec():
    # systemd compares it with its own CLOCK_MONOTONIC reading to tell this
    # reload's READY=1 from an earlier one (Type=notify-reload, systemd 253).
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """Sends notifications to the socket in ``environ["NOTIFY_SOCKET"]``.

    Each method returns True when the datagram was sent, False when there
    is nowhere to send it (no ``NOTIFY_SOCKET``) or sending failed (logged).
    ``monotonic_usec`` is for tests: what ``MONOTONIC_USEC`` says.
    """

    def __init__(self, environ=None, monotonic_usec=_monotonic_usec):
        environ = os.environ if environ is None else environ
        self.socket_name = environ.get("NOTIFY_SOCKET") or None
        self._monotonic_usec = monotonic_usec

    def _address(self):
        name = self.socket_name
        if name.startswith("@"):
            # Abstract namespace: a leading NUL, not a file.
            return "\0" + name[1:]
        if name.startswith("/"):
            return name
        # systemd 254 can also name an AF_VSOCK address ("vsock:..."),
        # for a service in a VM: not ours to reach.
        raise ValueError("not a socket path or @abstract name")

    def notify(self, *assignments):
        """Send ``NAME=value`` assignments in one datagram."""
        if self.socket_name is None:
            return False
        message = "\n".join(assignments).encode("utf-8")
        try:
            address = self._address()
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                # A full queue must not stall the reactor: drop the notice.
                sock.setblocking(False)
                sock.sendto(message, address)
        except (OSError, ValueError) as error:
            log.warn(
                "cannot notify systemd at {socket}: {reason}",
                socket=self.socket_name,
                reason=getattr(error, "strerror", None) or str(error),
            )
            return False
        return True

    def ready(self, text=None):
        """Start-up (or a reload) is finished: the daemon serves."""
        return self.notify("READY=1", *self._status(text))

    def reloading(self, text=None):
        """A reload has begun; :meth:`ready` says when it is over.  The
        timestamp is what ``Type=notify-reload`` requires (systemd >= 253);
        ``Type=notify`` with ``ExecReload=`` takes it as well."""
        return self.notify(
            "RELOADING=1", f"MONOTONIC_USEC={self._monotonic_usec()}", *self._status(text)
        )

    def stopping(self, text=None):
        """The daemon is shutting down (open sessions get their grace)."""
        return self.notify("STOPPING=1", *self._status(text))

    def status(self, text):
        """One line for ``systemctl status``."""
        return self.notify(*self._status(text))

    @staticmethod
    def _status(text):
        if text is None:
            return ()
        # A newline would start a new assignment: status is one line.
        return ("STATUS=" + " ".join(str(text).splitlines()),)


def ready(text=None):
    """``READY=1`` to ``$NOTIFY_SOCKET``, if set."""
    return Notifier().ready(text)


def reloading(text=None):
    """``RELOADING=1`` and ``MONOTONIC_USEC`` to ``$NOTIFY_SOCKET``, if set."""
    return Notifier().reloading(text)


def stopping(text=None):
    """``STOPPING=1`` to ``$NOTIFY_SOCKET``, if set."""
    return Notifier().stopping(text)


def status(text):
    """``STATUS=text`` to ``$NOTIFY_SOCKET``, if set."""
    return Notifier().status(text)


class ReloadRefused(Exception):
    """A reload refused as a whole (a setting or a file it cannot use),
    already logged with its reason: the daemon serves what it had."""


class ReloadOnHangup:
    """SIGHUP: tell systemd a reload is under way, run ``reload``, say ready.

    ``reload`` is called in the reactor thread with no arguments and may
    return a Deferred.  "reload done" is logged only when it succeeds.  If
    it raises :class:`ReloadRefused` (logged by ``reload`` itself), or fails
    otherwise (logged here with its traceback), the daemon
    goes on with what it had: READY=1 is still sent (systemd would
    otherwise wait for it until its timeout) with a STATUS saying the
    reload failed.  A SIGHUP during a reload is folded into one more
    reload after it, so the last signal always sees the newest files.
    """

    def __init__(self, reactor, reload, notifier=None):
        self.reactor = reactor
        self.reload = reload
        self.notifier = notifier if notifier is not None else Notifier()
        self._running = None
        self._again = False
        self._previous = None

    def install(self):
        """Replace SIGHUP's handler (call after the reactor installed its own)."""
        self._previous = signal.signal(signal.SIGHUP, self._signalled)

    def uninstall(self):
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None

    def _signalled(self, number, frame):
        # Signal handlers run between bytecodes: hand the work to the reactor.
        self.reactor.callFromThread(self.reload_now)

    def reload_now(self):
        """Reload now, or once more after the reload under way.  Returns the
        Deferred of the reload started, or of the one under way."""
        if self._running is not None:
            self._again = True
            return self._running
        self.notifier.reloading("reloading")
        log.info("SIGHUP: reloading")
        running = self._running = defer.maybeDeferred(self.reload)
        running.addCallbacks(self._reloaded, self._failed)
        # _finished clears _running: at once, if the reload was done at once.
        running.addBoth(self._finished)
        return running

    def _reloaded(self, result):
        self.notifier.ready("serving; reloaded")
        log.info("reload done")

    def _failed(self, failure):
        if not failure.check(ReloadRefused):
            # Not a mistake in the files: a bug, with its traceback.
            log.failure("reload failed; serving with the settings it had", failure)
        self.notifier.ready(f"serving; reload failed: {failure.getErrorMessage()}")

    def _finished(self, result):
        self._running = None
        if self._again:
            self._again = False
            self.reload_now()
        return result
