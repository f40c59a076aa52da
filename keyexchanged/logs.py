"""Logs as JSON lines, the session-end event, and warnings for limits hit.

JSON lines (``--log-format json``)
----------------------------------

One flat JSON object per line, for ``jq`` and log shippers::

    {"time": "2026-12-06T04:40:01.250Z", "level": "info",
     "logger": "keyexchanged.service.KeyexchangeService",
     "message": "listening on 127.0.0.1:51424"}

``time`` is RFC 3339 in UTC, ``level`` one of debug, info, warn, error,
critical, ``logger`` the event's namespace, ``message`` the text a text log
would show.  The end of a session is one event, ``"event": "session_end"``,
with its fields beside the message (:data:`SESSION_END_FIELDS`).  Events a
child of ``--processes N`` logged carry ``child`` and ``child_pid``; a
failure's traceback, if ever there is one, is in ``traceback``.  No other
field of an event is written: the message is made from the fields its
format names, which never hold a secret, and the session's are listed one
by one (docs/deployment.rst has the schema).

Two ways in:

- ``twistd --logger keyexchanged.logs.json_observer keyexchange ...``:
  twistd calls :func:`json_observer` with no arguments; it writes to
  standard output, for a daemon run in the foreground (systemd, a container).
- ``--log-format json``: ``makeService`` wraps its service with
  :func:`use_json_logs`.  twistd sets up its log observer *after*
  ``makeService`` returns, and takes the application's ``ILogObserver``
  component when it has one; the wrapper sets that component when twistd
  makes it the application's child.  :func:`twistd_log_file` picks the file
  twistd itself would have written to (``--logfile``, ``--nodaemon``), and
  SIGUSR1 rotates it, as twistd's own log.

The children of ``--processes N`` write :func:`relay_observer`'s lines
instead, for their parent only: Twisted's own serialisation of each event
(:func:`twisted.logger.eventAsJSON`), which the parent reads back into
events and logs as its own.  A field whose name says secret, ticket,
password or token, and any bytes value, is replaced by a placeholder
there: a second line of defence, for our events carry no secret.
"""
import datetime
import json
import signal
import sys
import time
from typing import Optional, Protocol

from twisted.application import service
from twisted.logger import ILogObserver, Logger, formatEvent, jsonFileLogObserver
from twisted.python import logfile
from zope.interface import implementer

__all__ = [
    "LIMITS",
    "SESSION_END_FIELDS",
    "JSONLines",
    "JSONLogging",
    "LimitWarnings",
    "RateLimitedLog",
    "RelayLines",
    "SessionEnd",
    "flat_event",
    "json_file_observer",
    "json_observer",
    "log_session_end",
    "relay_observer",
    "session_end_fields",
    "twistd_log_file",
    "use_json_logs",
]


# -- the session end --------------------------------------------------------------------


class SessionEnd(Protocol):
    """What a session's end reports (the server's ``SessionSummary``)."""

    #: The peer's address: "host:port", or an IAddress with host and port.
    peer: object
    #: How it ended: "ok", an ERROR code, "closed", "idle-timeout"...
    outcome: str
    #: Resumed from a ticket (else a full handshake).  An object may give
    #: ``kind`` ("full" or "resumed") instead.
    resumed: bool
    forward_secrecy: bool
    bytes_in: int
    bytes_out: int
    #: Seconds from the connection to its end.
    duration: float
    #: The client's key fingerprint ("SHA256:..."), when it authenticated.
    client_fingerprint: Optional[str]
    #: Optional: the session's secret also came from a post-quantum KEM
    #: (false when the summary does not say).
    post_quantum: bool
    #: Optional: the records' AEAD (RECORD_CIPHER when the summary does not say).
    record_cipher: str


#: The fields of the session-end event, and the only ones it has.
SESSION_END_FIELDS = (
    "peer",
    "client_fingerprint",
    "kind",
    "forward_secrecy",
    "post_quantum",
    "record_cipher",
    "bytes_in",
    "bytes_out",
    "duration",
    "outcome",
)

#: KX/1's record cipher, for a summary that does not name its own.
RECORD_CIPHER = "aes-256-gcm"

#: The ``event`` of a session end in JSON lines.
SESSION_END_EVENT = "session_end"

SESSION_END_FORMAT = (
    "session with {peer} ended: {outcome}; {kind}, forward secrecy: {forward_secrecy}, "
    "post-quantum: {post_quantum}, {record_cipher}; "
    "{bytes_in} bytes in, {bytes_out} bytes out, {duration} s; "
    "client key: {client_fingerprint}"
)

SESSION_NAMESPACE = "keyexchanged.session"

session_log = Logger(namespace=SESSION_NAMESPACE)


def _address(peer):
    host = getattr(peer, "host", None)
    if host is None:
        return str(peer)
    return f"{host}:{getattr(peer, 'port', '')}"


def session_end_fields(summary):
    """The session-end event's fields, as JSON-ready values."""
    kind = getattr(summary, "kind", None)
    if kind is None:
        kind = "resumed" if summary.resumed else "full"
    fingerprint = summary.client_fingerprint
    return {
        "peer": _address(summary.peer),
        "client_fingerprint": None if fingerprint is None else str(fingerprint),
        "kind": str(kind),
        "forward_secrecy": bool(summary.forward_secrecy),
        "post_quantum": bool(getattr(summary, "post_quantum", False)),
        "record_cipher": str(getattr(summary, "record_cipher", None) or RECORD_CIPHER),
        "bytes_in": int(summary.bytes_in),
        "bytes_out": int(summary.bytes_out),
        # To the microsecond, in the field itself: a format spec would be
        # lost when the JSON is read back (twisted.logger keeps the value).
        "duration": round(float(summary.duration), 6),
        "outcome": str(summary.outcome),
    }


def log_session_end(summary, log=session_log):
    """Log the end of a session (one info event; see the module docstring)."""
    log.info(SESSION_END_FORMAT, **session_end_fields(summary))


# -- JSON lines -------------------------------------------------------------------------

#: Words that, as a part of a field's name ("ticket", "session_secret"),
#: keep its value out of JSON logs.
SECRET_WORDS = frozenset({"secret", "secrets", "ticket", "tickets", "password", "token"})
REDACTED = "[redacted]"


def _secret_name(name):
    parts = name.lower().replace("-", "_").split("_")
    return not SECRET_WORDS.isdisjoint(parts)


def _redacted(event):
    """A copy of ``event`` fit for a JSON line (see the module docstring)."""
    copy = {}
    for name, value in event.items():
        if name == "log_flattened":
            # Made from the original fields by an earlier observer: made
            # again from the copy's.
            continue
        if isinstance(value, (bytes, bytearray, memoryview)):
            value = f"[{len(value)} bytes]"
        elif _secret_name(name):
            value = REDACTED
        copy[name] = value
    return copy


def _rfc3339(when):
    """``when`` (seconds since the epoch) as RFC 3339 in UTC, to the millisecond."""
    if when is None:
        when = time.time()
    stamp = datetime.datetime.fromtimestamp(when, datetime.timezone.utc)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def flat_event(event):
    """The JSON object written for ``event`` (see the module docstring)."""
    level = event.get("log_level")
    record = {
        "time": _rfc3339(event.get("log_time")),
        "level": getattr(level, "name", None) or "info",
        "logger": event.get("log_namespace") or "-",
        # From the placeholders' copy: a field named as a secret, or bytes,
        # stays out of the text too.
        "message": formatEvent(_redacted(event)),
    }
    if "child_index" in event:
        record["child"] = event["child_index"]
        record["child_pid"] = event.get("child_pid")
    failure = event.get("log_failure")
    if failure is not None:
        try:
            record["traceback"] = failure.getTraceback()
        except Exception:  # a failure read back from a child's line
            record["traceback"] = str(failure)
    if event.get("log_namespace") == SESSION_NAMESPACE and "outcome" in event:
        record["event"] = SESSION_END_EVENT
        for name in SESSION_END_FIELDS:
            record[name] = event.get(name)
    return record


@implementer(ILogObserver)
class JSONLines:
    """Writes each event to ``stream`` as one flat JSON object, one line
    (flushed); ``stream`` may be twistd's rotating log file."""

    def __init__(self, stream):
        self.stream = stream

    def __call__(self, event):
        line = json.dumps(flat_event(event), ensure_ascii=False, default=str)
        self.stream.write(line + "\n")
        self.stream.flush()


@implementer(ILogObserver)
class RelayLines:
    """For a child of ``--processes N``: each event as Twisted serialises
    it, one line, for the parent to read back (see the module docstring)."""

    def __init__(self, stream):
        self._write = jsonFileLogObserver(stream, recordSeparator="")

    def __call__(self, event):
        self._write(_redacted(event))


def json_file_observer(stream):
    """A log observer writing one flat JSON object per line to ``stream``."""
    return JSONLines(stream)


def json_observer():
    """For ``twistd --logger keyexchanged.logs.json_observer``: JSON lines
    on standard output."""
    return JSONLines(sys.stdout)


def relay_observer():
    """For a child of ``--processes N`` (``twistd --logger
    keyexchanged.logs.relay_observer``): its events for its parent, on
    standard output."""
    return RelayLines(sys.stdout)


def twistd_log_file(options):
    """Where twistd would log, for options whose ``parent`` is twistd's
    (a plugin's options): standard output with ``--nodaemon`` and no
    ``--logfile`` (or ``--logfile -``), else the file (twistd.log by
    default), rotated as twistd rotates it.  Without twistd, standard
    output.  Raises ValueError for a daemon asked to log to stdout."""
    server = getattr(options, "parent", None)
    if server is None:
        return sys.stdout
    name = server.get("logfile") or ""
    foreground = bool(server.get("nodaemon"))
    if name == "-":
        if not foreground:
            raise ValueError("a daemon cannot log to standard output: give --nodaemon or a file")
        return sys.stdout
    if foreground and not name:
        return sys.stdout
    return logfile.LogFile.fromFullPath(name or "twistd.log")


class JSONLogging(service.MultiService):
    """Holds the daemon's service; made a child of twistd's application,
    makes ``observer`` the application's log observer, which twistd then
    uses instead of its own (twisted.application.app.AppLogger.start).

    twistd rotates its own log file on SIGUSR1, and not one an application
    brings: a ``rotate``-able file (``twistd_log_file``'s) gets the same
    handler here, installed as twistd installs its own (only over the
    default or an ignored signal)."""

    def __init__(self, observer, log_file=None):
        super().__init__()
        self.observer = observer
        self.log_file = log_file

    def privilegedStartService(self):
        rotate = getattr(self.log_file, "rotate", None)
        if rotate is not None and hasattr(signal, "SIGUSR1"):
            if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, signal.SIG_IGN):
                from twisted.internet import reactor

                def rotate_on_signal(number, frame):
                    reactor.callFromThread(rotate)

                signal.signal(signal.SIGUSR1, rotate_on_signal)
        super().privilegedStartService()

    def setServiceParent(self, parent):
        set_component = getattr(parent, "setComponent", None)
        if set_component is not None:
            # twistd's Application is a Componentized; a plain
            # MultiService parent (a test, an embedding) has no logging.
            set_component(ILogObserver, self.observer)
        return super().setServiceParent(parent)


def use_json_logs(top, stream):
    """``top`` (the service ``makeService`` would return) inside a
    :class:`JSONLogging` that writes JSON lines to ``stream``: return this
    from ``makeService`` instead of ``top``."""
    wrapper = JSONLogging(json_file_observer(stream), log_file=stream)
    top.setServiceParent(wrapper)
    return wrapper


# -- limits hit -------------------------------------------------------------------------

#: The limits that refuse connections, and what each is, for the warning.
LIMITS = {
    "busy": "connections open (--max-connections)",
    "per-source": "connections from one source (--max-per-source)",
    "max-handshakes": "private-key operations under way (--max-handshakes)",
}

#: One warning per limit per minute at most: often enough to see a problem
#: as it happens, rarely enough that a flood leaves a readable log.
DEFAULT_INTERVAL = 60.0


class RateLimitedLog:
    """Warnings of one kind at most once per ``interval``, so that a flood
    leaves a readable log.

    The first warning of a kind goes out at once.  The ones after it are
    counted, and when ``interval`` seconds have passed (``clock``'s time)
    one line gives their number (``summary``, a format with the fields
    ``kind``, ``count`` and ``seconds``); an interval with none closes the
    account, and the next warning goes out at once again.  ``start`` and
    ``stop`` make it one of the daemon's timers; ``stop`` gives the counts
    not yet told.
    """

    log = Logger(namespace="keyexchanged.limits")

    def __init__(self, clock, summary="", interval=DEFAULT_INTERVAL, log=None):
        if not interval > 0:
            raise ValueError(f"interval must be greater than 0, not {interval!r}")
        self.clock = clock
        self.summary = summary
        self.interval = interval
        if log is not None:
            self.log = log
        #: kind -> warnings counted since its last line
        self._counted = {}
        #: kind -> when its count began
        self._since = {}
        #: kind -> the DelayedCall that reports its count
        self._calls = {}

    def warn(self, kind, format, /, **fields):
        """Log ``format`` with ``fields`` now, or count it if a warning of
        ``kind`` went out less than ``interval`` seconds ago."""
        if kind in self._calls:
            self._counted[kind] += 1
            return
        self.log.warn(format, **fields)
        self._counted[kind] = 0
        self._since[kind] = self.clock.seconds()
        self._calls[kind] = self.clock.callLater(self.interval, self._report, kind)

    def _report(self, kind):
        del self._calls[kind]
        count = self._counted.pop(kind)
        since = self._since.pop(kind)
        if count:
            self._summarize(kind, count, self.clock.seconds() - since)
            self._counted[kind] = 0
            self._since[kind] = self.clock.seconds()
            self._calls[kind] = self.clock.callLater(self.interval, self._report, kind)

    def _summarize(self, kind, count, seconds):
        self.log.warn(self.summary, kind=kind, count=count, seconds=seconds)

    def start(self):
        pass

    def stop(self):
        """Cancel the reports to come, and give their counts now."""
        for kind, call in sorted(self._calls.items()):
            call.cancel()
            count = self._counted[kind]
            if count:
                self._summarize(kind, count, self.clock.seconds() - self._since[kind])
        self._calls.clear()
        self._counted.clear()
        self._since.clear()


class LimitWarnings(RateLimitedLog):
    """Warnings for limits hit (the keys of :data:`LIMITS`), at most one
    per ``interval`` per limit."""

    def __init__(self, clock, interval=DEFAULT_INTERVAL, log=None):
        super().__init__(clock, interval=interval, log=log)

    def refused(self, limit):
        """``limit`` (a key of :data:`LIMITS`) has refused one connection."""
        if limit not in LIMITS:
            raise ValueError(f"unknown limit {limit!r}: one of {', '.join(sorted(LIMITS))}")
        self.warn(
            limit,
            "limit reached: too many {what}; refusing connections, reported at most "
            "every {interval:.0f} s",
            limit=limit,
            what=LIMITS[limit],
            refused=1,
            interval=self.interval,
        )

    def _summarize(self, limit, count, seconds):
        self.log.warn(
            "limit still reached: too many {what}; {refused} connection(s) refused "
            "in the last {seconds:.0f} s",
            limit=limit,
            what=LIMITS[limit],
            refused=count,
            seconds=seconds,
        )
