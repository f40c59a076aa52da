"""Prometheus metrics for the daemon (``--metrics ENDPOINT``).

:class:`Metrics` holds every metric in a ``CollectorRegistry`` of its own,
never prometheus_client's global one: one daemon, one set of numbers, and
several :class:`Metrics` side by side in a test process.  The server calls
its methods where things happen (one line each); :class:`MetricsService`
serves the text format at ``/metrics`` (any other path: 404) on a Twisted
endpoint, off by default.

Several daemon processes (``--processes N``)
-------------------------------------------

N processes share one listening socket, so a scrape of any one of them
sees a random N-th of the traffic.  The numbers must be added up, and we use
prometheus_client's own multiprocess mode for it:

- each process started with ``PROMETHEUS_MULTIPROC_DIR`` in its
  environment (:func:`process_environment`) keeps its values in small
  memory-mapped files there, one set per process id, instead of memory;
- the one process that serves ``/metrics`` makes its :class:`Metrics` with
  ``process_directory`` and adds those files (``MultiProcessCollector``) to
  its own numbers on every scrape.

Why this, of the three ways there are:

- *A ``process`` label, one endpoint per process*: a scrape of a shared port
  reaches one process at random, so each would need a port of its own and
  every Prometheus a list of them; a replaced process also takes its
  counters with it.
- *The parent collecting snapshots from its children*: a protocol of our own
  between processes, with numbers as old as the last snapshot, and the same
  loss when a child dies between two.
- *The files*: nothing to design or keep in step, the values are current at
  every scrape, and a child that dies or is replaced leaves its counters
  behind, so the sums never go backwards (Prometheus would read a drop as a
  reset and count the rest twice).  Gauges are ``livesum``: when the parent
  calls :func:`process_ended` for a child, its open connections and queue
  stop counting.

prometheus_client picks the mode once, when it is first imported, from the
environment; a process cannot switch afterwards.  That is why the children
are told by their environment (a fresh interpreter, as ``spawnProcess``
starts, reads it before anything imports prometheus_client), while the
parent, which has imported it already, keeps its own values in memory and
adds the children's files when it serves.  :class:`Metrics` checks that the
two agree and says so plainly when they do not.

Worker processes (``--workers``) do private-key arithmetic and nothing else:
they never call these methods, and every number here is counted in the
daemon process, whose reactor sends them the work.

The session end
---------------

:meth:`Metrics.session_ended` takes any object with these attributes (the
same as :class:`keyexchanged.logs.SessionEnd`): ``peer``, ``outcome``,
``resumed`` (or ``kind``: "full" or "resumed"), ``forward_secrecy``,
``bytes_in``, ``bytes_out``, ``duration`` and ``client_fingerprint``.
"""

import glob
import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from twisted.application import service
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.web.resource import Resource
from twisted.web.server import Site

from keyexchanged.framing import ERROR_CODES
from keyexchanged.listening import listen_now

__all__ = [
    "DIRECTORY_VARIABLE",
    "Metrics",
    "MetricsError",
    "MetricsService",
    "metrics_service",
    "metrics_site",
    "prepare_process_directory",
    "process_ended",
    "process_environment",
]

#: What prometheus_client reads, when first imported, to keep values in files.
DIRECTORY_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

#: Handshake times, in seconds.  A resumed handshake on a LAN takes well
#: under a millisecond of server time, a full one with RSA-3072 a few ms
#: plus the client's round trips; the top buckets reach the default
#: --handshake-timeout (10 s), past which nothing completes.
HANDSHAKE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: The classic text format, which every Prometheus and its look-alikes read.
#: (prometheus_client 0.22 and later say "version=1.0.0" for the same text
#: when the names need no escaping, as ours never do; older servers do not
#: know that version.)
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

#: Every label takes its values from a short list, so that nothing a peer
#: sends can make new time series (each costs memory in every Prometheus
#: that scrapes us).  A value not in its list is counted as "other", with
#: one error logged.
KINDS = ("full", "resumed")
#: How a handshake or session ended: "ok", an ERROR code sent or received,
#: or one of the ends without an ERROR that protocol.py names.
OUTCOMES = (
    "ok",
    *sorted(ERROR_CODES),
    "unknown",
    "closed",
    "truncated",
    "idle-timeout",
    "shutdown",
)
DIRECTIONS = ("in", "out")

#: What the metrics port holds at most.  A Prometheus scrapes over one
#: connection and in milliseconds; these keep a stranger who can reach the
#: port from holding file descriptors that the KX/1 port needs (idle
#: connections are otherwise kept as long as one byte comes now and then).
MAX_PER_SOURCE = 4
MAX_CONNECTIONS = 16
#: Seconds a metrics connection may last in all, however busy.
CONNECTION_DEADLINE = 10.0
ERROR_SENT_CODES = tuple(sorted(ERROR_CODES))
RELOAD_RESULTS = ("ok", "failed")
OTHER = "other"


class MetricsError(Exception):
    """Metrics cannot be counted as asked (multiprocess mode set up wrong)."""


def _in_files():
    """True when prometheus_client keeps values in files in this process
    (it read ``PROMETHEUS_MULTIPROC_DIR`` when first imported)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


class Metrics:
    """The daemon's numbers, and what the server calls to count them.

    Every method is cheap and never raises for a label value it does not
    know (see :data:`OUTCOMES`): a metric must not end a connection.

    ``process_directory``: serve, besides this process's own values, those
    that other daemon processes keep in that directory (see the module's
    docstring).  A process that writes there itself (started with
    :func:`process_environment`) and serves too gives the same directory.

    @ivar registry: this process's metrics (never the global registry).
    @ivar shared: True when this process's values go to files in the
        multiprocess directory rather than memory.
    """

    log = Logger()

    def __init__(self, process_directory=None):
        self.shared = _in_files()
        own_directory = os.environ.get(DIRECTORY_VARIABLE) if self.shared else None
        if process_directory is not None:
            process_directory = os.path.abspath(process_directory)
            if not os.path.isdir(process_directory):
                raise MetricsError(
                    f"{process_directory}: no such directory for the daemon processes' metrics"
                )
            if self.shared and os.path.abspath(own_directory) != process_directory:
                raise MetricsError(
                    f"this process keeps its metrics in {own_directory} "
                    f"(${DIRECTORY_VARIABLE}), not in {process_directory}"
                )
        self.process_directory = process_directory
        self._unknown_logged = set()
        self.registry = registry = CollectorRegistry()
        self._connections_open = Gauge(
            "keyexchanged_connections_open",
            "Connections accepted and not yet closed (refused ones are not counted).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._handshakes = Counter(
            "keyexchanged_handshakes",
            "Handshakes by kind and how they ended: ok, or why not.",
            ["kind", "outcome"],
            registry=registry,
        )
        self._handshake_seconds = Histogram(
            "keyexchanged_handshake_seconds",
            "Time from the connection to the handshake's completion, completed ones only.",
            ["kind"],
            registry=registry,
            buckets=HANDSHAKE_BUCKETS,
        )
        self._sessions = Counter(
            "keyexchanged_sessions",
            "Connections ended, by kind and how they ended.",
            ["kind", "outcome"],
            registry=registry,
        )
        self._private_key_queue = Gauge(
            "keyexchanged_private_key_queue",
            "Private-key operations (KEY decryptions, AUTH verifications) under way.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._bytes = Counter(
            "keyexchanged_bytes",
            "Bytes on the wire of KX/1 connections, by direction (in: from peers).",
            ["direction"],
            registry=registry,
        )
        self._errors_sent = Counter(
            "keyexchanged_errors_sent",
            "ERROR frames sent, by code.",
            ["code"],
            registry=registry,
        )
        self._ephemeral_rotations = Counter(
            "keyexchanged_ephemeral_rotations",
            "Ephemeral keys put in service (forward secrecy).",
            registry=registry,
        )
        self._health_checks = Counter(
            "keyexchanged_health_checks",
            "A proxy's health checks (PROXY protocol LOCAL connections that sent "
            "nothing): not counted as handshakes or sessions.",
            registry=registry,
        )
        self._reloads = Counter(
            "keyexchanged_reloads",
            "Reloads of the configuration and keys (SIGHUP), by result.",
            ["result"],
            registry=registry,
        )
        # Series that every daemon has show from the start, at 0, so that
        # rate() and increase() see their first increase.
        for kind in KINDS:
            self._handshakes.labels(kind=kind, outcome="ok")
            self._sessions.labels(kind=kind, outcome="ok")
        for direction in DIRECTIONS:
            self._bytes.labels(direction=direction)
        for result in RELOAD_RESULTS:
            self._reloads.labels(result=result)
        self._exposition = _Exposition(self)

    # -- what the server calls ----------------------------------------------------------

    def connection_opened(self):
        """A connection was accepted (not one refused with ERROR busy)."""
        self._connections_open.inc()

    def connection_closed(self):
        """An accepted connection is gone, whatever the reason."""
        self._connections_open.dec()

    def handshake_done(self, kind, outcome, seconds=None):
        """Once per connection: ``outcome`` "ok" when the handshake
        completed, after ``seconds``; else why it did not ("busy",
        "timeout", "untrusted-key", "closed"...; ``seconds`` is ignored).
        ``kind`` is "resumed" only for a ticket accepted, else "full"."""
        kind = self._known("kind", kind, KINDS)
        outcome = self._known("outcome", outcome, OUTCOMES)
        self._handshakes.labels(kind=kind, outcome=outcome).inc()
        if outcome == "ok" and seconds is not None:
            self._handshake_seconds.labels(kind=kind).observe(seconds)

    def bytes(self, direction, n):
        """``n`` more bytes "in" (from the peer) or "out".  Called by
        :meth:`session_ended`; call it only for bytes no summary counts."""
        if n:
            direction = self._known("direction", direction, DIRECTIONS)
            self._bytes.labels(direction=direction).inc(n)

    def error_sent(self, code):
        """An ERROR frame with ``code`` went out."""
        self._errors_sent.labels(code=self._known("code", code, ERROR_SENT_CODES)).inc()

    def private_key_queue(self, n):
        """``n`` private-key operations are under way now."""
        self._private_key_queue.set(n)

    def ephemeral_rotated(self):
        """A new ephemeral key is in service."""
        self._ephemeral_rotations.inc()

    def health_check(self):
        """A proxy's health check came and went: a PROXY-protocol LOCAL
        connection that sent nothing.  Its connection is counted closed."""
        self._connections_open.dec()
        self._health_checks.inc()

    def reload(self, result):
        """A reload ended: "ok" or "failed"."""
        self._reloads.labels(result=self._known("result", result, RELOAD_RESULTS)).inc()

    def session_ended(self, summary):
        """A connection ended (see the module docstring for ``summary``):
        counts the session by how it ended, and its bytes each way."""
        kind = getattr(summary, "kind", None)
        if kind is None:
            kind = "resumed" if summary.resumed else "full"
        kind = self._known("kind", kind, KINDS)
        outcome = self._known("outcome", summary.outcome, OUTCOMES)
        self._sessions.labels(kind=kind, outcome=outcome).inc()
        self.bytes("in", summary.bytes_in)
        self.bytes("out", summary.bytes_out)

    def _known(self, label, value, known):
        if value in known:
            return value
        if label not in self._unknown_logged:
            # Once per label: the mistake is in our code, and a flood of
            # the same line would help nobody.
            self._unknown_logged.add(label)
            self.log.error(
                "metrics: {label} {value!r} is not one of {known}; counted as {other}",
                label=label,
                value=value,
                known=", ".join(known),
                other=OTHER,
            )
        return OTHER

    # -- what a scrape reads ------------------------------------------------------------

    def render(self):
        """The Prometheus text format: this process's numbers, plus those
        of the processes writing to ``process_directory``."""
        return generate_latest(self._exposition)


class _Exposition:
    """A collector that adds up the sources of one daemon's numbers.

    Counters, histograms (cumulative buckets, counts and sums) and our
    ``livesum`` gauges all add.  The ``_created`` samples do not (they are
    times), and files do not have them: they are left out, the same for
    one process as for many.
    """

    def __init__(self, metrics):
        self.metrics = metrics

    def _sources(self):
        if not self.metrics.shared:
            yield self.metrics.registry.collect()
        if self.metrics.process_directory is not None:
            # Files that vanish between listing and reading (a dead
            # process's gauges) are handled by MultiProcessCollector.
            yield MultiProcessCollector(None, path=self.metrics.process_directory).collect()

    def collect(self):
        families = {}
        for source in self._sources():
            for family in source:
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = (
                        Metric(family.name, family.documentation, family.type),
                        {},
                    )
                totals = merged[1]
                for sample in family.samples:
                    if sample.name.endswith("_created"):
                        continue
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    totals[key] = totals.get(key, 0.0) + sample.value
        for name in sorted(families):
            metric, totals = families[name]
            for (sample_name, labels), value in totals.items():
                metric.add_sample(sample_name, dict(labels), value)
            yield metric


# -- several daemon processes -----------------------------------------------------------


def prepare_process_directory(path):
    """Make ``path`` (0700) for the processes' metric files, emptied of a
    previous run's: counters must start from zero with the daemon."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    for stale in glob.glob(os.path.join(path, "*.db")):
        os.unlink(stale)
    return os.path.abspath(path)


def process_environment(path):
    """What to add to a daemon process's environment so that it keeps its
    metrics in ``path`` (it must be a new interpreter, as spawnProcess
    starts: prometheus_client reads this when first imported)."""
    return {DIRECTORY_VARIABLE: os.path.abspath(path)}


def process_ended(path, pid):
    """A daemon process writing to ``path`` has exited: its gauges (open
    connections, queue) stop counting; its counters stay in the sums."""
    mark_process_dead(pid, path)


# -- serving ----------------------------------------------------------------------------


class MetricsPage(Resource):
    """``/metrics``: the text format, made in the reactor (a few
    microseconds for our few series, plus a file read per process)."""

    log = Logger()

    def __init__(self, metrics):
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request):
        try:
            body = self.metrics.render()
        except Exception:
            # A damaged metrics file, say: the scrape fails, the daemon not.
            self.log.failure("cannot collect the metrics")
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"cannot collect the metrics: see the daemon's log\n"
        request.setHeader(b"content-type", CONTENT_TYPE)
        return body


class _QuietSite(Site):
    """A Site that keeps no access log: a scrape every 15 s is not news."""

    noisy = False

    def log(self, request):
        pass


def metrics_site(metrics, reactor=None):
    """The web site: ``/metrics``, and 404 everywhere else."""
    root = Resource()
    root.putChild(b"metrics", MetricsPage(metrics))
    return _QuietSite(root, reactor=reactor)


class _Deadline(ProtocolWrapper):
    """One metrics connection: cut when its time is up, whatever it sends."""

    def makeConnection(self, transport):
        self._cut = self.factory.reactor.callLater(CONNECTION_DEADLINE, transport.abortConnection)
        super().makeConnection(transport)

    def connectionLost(self, reason):
        if self._cut.active():
            self._cut.cancel()
        super().connectionLost(reason)


class BoundedConnections(WrappingFactory):
    """Wraps the metrics site: at most :data:`MAX_CONNECTIONS` connections,
    :data:`MAX_PER_SOURCE` from one address, each for at most
    :data:`CONNECTION_DEADLINE` seconds; one more is closed at once."""

    protocol = _Deadline

    def __init__(self, site, reactor):
        super().__init__(site)
        self.reactor = reactor
        self._per_source = {}

    def buildProtocol(self, addr):
        source = getattr(addr, "host", None)
        held = self._per_source.get(source, 0)
        if len(self.protocols) >= MAX_CONNECTIONS or held >= MAX_PER_SOURCE:
            return None
        wrapper = super().buildProtocol(addr)
        if wrapper is not None:
            wrapper._source = source
            self._per_source[source] = held + 1
        return wrapper

    def unregisterProtocol(self, p):
        super().unregisterProtocol(p)
        source = p._source
        left = self._per_source.get(source, 1) - 1
        if left > 0:
            self._per_source[source] = left
        else:
            self._per_source.pop(source, None)


_EVERY_INTERFACE = ("", "0.0.0.0", "::")  # noqa: S104 -- what we warn about


class MetricsService(service.Service):
    """Serves :func:`metrics_site` on ``endpoint`` while running.

    Listens in :meth:`privilegedStartService` (before twistd drops
    privileges), and a port that cannot be had raises there, so that the
    daemon stops with the reason instead of running unwatched.

    @ivar listening: fires with the port once listening.
    """

    log = Logger()

    def __init__(self, endpoint, description, metrics, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.endpoint = endpoint
        self.description = description
        self.metrics = metrics
        self.listening = None
        self.port = None

    def privilegedStartService(self):
        super().privilegedStartService()
        self._listen()

    def startService(self):
        super().startService()
        self._listen()

    def _listen(self):
        if self.listening is not None:
            return
        self.listening = listen_now(
            lambda: self.endpoint.listen(
                BoundedConnections(metrics_site(self.metrics, self.reactor), self.reactor)
            ),
            f"--metrics {self.description}: cannot listen",
            self._listened,
            self._cannot_listen,
            error=MetricsError,
        )

    def _cannot_listen(self, failure):
        self.log.critical(
            "--metrics {description}: cannot listen: {reason}",
            description=self.description,
            reason=failure.getErrorMessage(),
        )

    def _listened(self, port):
        self.port = port
        address = port.getHost()
        self.log.info(
            "metrics on http://{host}:{port}/metrics",
            host=getattr(address, "host", address),
            port=getattr(address, "port", ""),
        )
        if getattr(address, "host", None) in _EVERY_INTERFACE:
            self.log.warn(
                "--metrics {description} listens on every interface: whoever can reach "
                "it reads the daemon's numbers; listen on 127.0.0.1 or a private "
                "address, or firewall the port",
                description=self.description,
            )
        return port

    def stopService(self):
        super().stopService()
        port, self.port = self.port, None
        self.listening = None
        if port is not None:
            return port.stopListening()
        return None


def metrics_service(description, metrics, reactor):
    """A service serving ``metrics`` at ``/metrics`` on the endpoint
    ``description`` (``tcp:9464:interface=127.0.0.1``).  Raises
    :class:`MetricsError` with the reason for a description that is no
    endpoint; call it in ``postOptions`` to make that a usage error."""
    try:
        endpoint = serverFromString(reactor, description)
    except (ValueError, KeyError, TypeError) as error:
        raise MetricsError(f"--metrics {description}: not an endpoint: {error}") from None
    return MetricsService(endpoint, description, metrics, reactor)
