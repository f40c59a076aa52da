"""Logs as JSON lines, the session-end event, and warnings for limits hit.

JSON lines (``--log-format json``)
----------------------------------

One JSON object per line, as ``twisted.logger``'s JSON observer writes them
(:func:`twisted.logger.eventAsJSON`: the event's fields, ``log_format``,
``log_time``, ``log_level``, ``log_namespace``...), so that
:func:`twisted.logger.eventsFromJSONLogFile` reads them back.  Two ways in:

- ``twistd --logger keyexchanged.logs.json_observer keyexchange ...``:
  twistd calls :func:`json_observer` with no arguments; it writes to
  standard output, for a daemon run in the foreground (systemd, a container).
- ``--log-format json``: ``makeService`` wraps its service with
  :func:`use_json_logs`.  twistd sets up its log observer *after*
  ``makeService`` returns, and takes the application's ``ILogObserver``
  component when it has one; the wrapper sets that component when twistd
  makes it the application's child.  :func:`twistd_log_file` picks the file
  twistd itself would have written to (``--logfile``, ``--nodaemon``).

A JSON line holds every field of an event, where the text shows only those
its format names; so the JSON observer writes a copy of the event in which
a field whose name says secret, ticket, password or token, and any bytes
value, is replaced by a placeholder.  That is a second line of defence: our
events carry no secret in the first place.

The session end
---------------

:func:`log_session_end` logs one event per connection, namespace
``keyexchanged.session``, whose fields are exactly
:data:`SESSION_END_FIELDS`, read from the summary's public attributes one by
one (never the summary object itself, nor anything else it holds).

Limits hit
----------

:class:`LimitWarnings`: a limit that refuses connections ("busy",
"per-source", "max-handshakes") logs a warning the first time, then at most
one per interval with the count refused meanwhile, so that a flood of
refusals is a few lines and not a flood of lines.
"""

import sys
from typing import Optional, Protocol

from twisted.application import service
from twisted.logger import ILogObserver, Logger, jsonFileLogObserver
from twisted.python import logfile
from zope.interface import implementer

__all__ = [
    "LIMITS",
    "SESSION_END_FIELDS",
    "JSONLogging",
    "LimitWarnings",
    "RateLimitedLog",
    "SessionEnd",
    "json_file_observer",
    "json_observer",
    "log_session_end",
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


#: The fields of the session-end event, and the only ones it has.
SESSION_END_FIELDS = (
    "peer",
    "client_fingerprint",
    "kind",
    "forward_secrecy",
    "bytes_in",
    "bytes_out",
    "duration",
    "outcome",
)

SESSION_END_FORMAT = (
    "session with {peer} ended: {outcome}; {kind}, forward secrecy: {forward_secrecy}; "
    "{bytes_in} bytes in, {bytes_out} bytes out, {duration} s; "
    "client key: {client_fingerprint}"
)

session_log = Logger(namespace="keyexchanged.session")


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


@implementer(ILogObserver)
class JSONLines:
    """Writes each event to ``stream`` as one line of JSON (flushed)."""

    def __init__(self, stream):
        self.stream = stream
        self._write = jsonFileLogObserver(stream, recordSeparator="")

    def __call__(self, event):
        self._write(_redacted(event))


def json_file_observer(stream):
    """A log observer writing one JSON object per line to ``stream``."""
    return JSONLines(stream)


def json_observer():
    """For ``twistd --logger keyexchanged.logs.json_observer``: JSON lines
    on standard output."""
    return JSONLines(sys.stdout)


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
    uses instead of its own (twisted.application.app.AppLogger.start)."""

    def __init__(self, observer):
        super().__init__()
        self.observer = observer

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
    wrapper = JSONLogging(json_file_observer(stream))
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
