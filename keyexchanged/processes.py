"""Several daemon processes on one listening socket (``--processes N|auto``).

One reactor is one core.  With ``--processes N`` (N > 1) the process that
twistd starts becomes a *parent* that serves no connection itself:

- it listens as the daemon always has (``tcp:``, ``systemd:`` socket
  activation, ``haproxy:tcp:``) and stops reading from the port at once, so
  that the kernel queues every connection for the children;
- it starts N children, each a fresh ``twistd keyexchange`` with the same
  command line (so the same config file and the same checks) and the
  listening socket as its fd 3, which it adopts (``adoptStreamPort``) and
  wraps as it would its own (the PROXY-protocol reader for ``haproxy:``).
  What makes it a child is in its environment: :data:`CHILD_VARIABLE`
  (its index), :data:`FD_VARIABLE`, and :data:`TICKET_KEYS_VARIABLE` when
  the parent keeps the ticket keys; nothing secret travels in argv or env.

Why one inherited socket rather than ``SO_REUSEPORT`` (one socket per
child): a systemd socket unit hands over one socket, which reuse-port
cannot split; a child that dies takes the connections queued on its own
socket with it, where on a shared one they wait for the others; and a
shared socket needs nothing of the address family or the endpoint kind.
The cost is that every idle child is woken for each connection and one
wins the accept(2) (the others get EAGAIN): cheap next to a handshake.

The children log JSON lines (``keyexchanged.logs.json_observer``) on
their standard output; the parent reads them back as events and logs
them as its own, with ``child_index`` and ``child_pid`` fields and
``[namespace#level, child I pid P]`` as their system, so that one log (text
or JSON, as ``--log-format`` says) holds every process, each line naming
its child.  A child says it is serving with an event carrying
:data:`READY_FIELD`.  Its standard input is a pipe from the parent, which
it watches: the parent gone (even by SIGKILL), the child stops.

Signals to the parent: SIGTERM and SIGINT stop every child (SIGTERM to
each, the grace period, then SIGKILL for one that outlives it by
:data:`KILL_AFTER` s; a second SIGTERM or SIGINT sends :data:`CUT_SIGNAL`,
which cuts the open sessions) and then the parent; SIGHUP checks the config again
in the parent (the same parse as a single daemon's reload), and only if it
is good sends SIGHUP to every child, which reloads as a single daemon
does.  A child that dies unexpectedly is logged and started again after a
delay (:class:`Backoff`).

Ticket keys: with ``ticket-keys`` set the children share that file already.
Without it, the parent writes random keys to a file in its private runtime
directory (:class:`SharedTicketKeys`) and every child uses it as if it were
``--ticket-keys``, so a ticket issued by one child resumes on another.

Metrics: each child keeps its numbers in files in the runtime directory
(prometheus_client's multiprocess mode; see keyexchanged/metrics.py); the
parent serves ``/metrics`` and adds them up.
"""

import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile

from twisted.application import service
from twisted.internet import abstract, defer, error, fdesc, protocol
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger, eventFromJSON, globalLogPublisher
from twisted.python import usage
from twisted.python.failure import Failure

from keyexchanged import metrics as metrics_module
from keyexchanged import proxyproto, systemd, tickets
from keyexchanged.errors import ConfigError

__all__ = [
    "CHILD_VARIABLE",
    "FD_VARIABLE",
    "TICKET_KEYS_VARIABLE",
    "Backoff",
    "ChildSettings",
    "ProcessesService",
    "SharedTicketKeys",
    "child_settings",
    "resolve_processes",
    "workers_per_process",
]

#: The child's index (1 to N): its presence makes a ``twistd keyexchange`` a child.
CHILD_VARIABLE = "KEYEXCHANGED_CHILD"
#: The fd of the inherited listening socket.
FD_VARIABLE = "KEYEXCHANGED_LISTEN_FD"
#: The parent's ticket-key file, for children whose config names none.
TICKET_KEYS_VARIABLE = "KEYEXCHANGED_SHARED_TICKET_KEYS"
#: Where the child finds the listening socket: the first fd after stdio,
#: as systemd does it.
CHILD_FD = 3
#: The event field with which a child says it serves.
READY_FIELD = "keyexchanged_child_ready"
#: The parent speaks to systemd, the children never: and it is the parent
#: that adopted the socket systemd handed over.
SYSTEMD_VARIABLES = (
    "NOTIFY_SOCKET",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
)
#: The parent's second SIGTERM or SIGINT, to its children: cut the open
#: sessions now.  Not SIGTERM, which a child may get from systemd as well
#: as from its parent, for one and the same stop.
CUT_SIGNAL = signal.SIGUSR1
#: Seconds past the grace period after which a child still running on
#: stop is killed: it has had its grace and ignored it.
KILL_AFTER = 10.0
#: How often a child looks at the parent's ticket-key file: a second, so
#: that every child serves a rotated key within a second of the others.
SHARED_TICKET_KEYS_CHECK = 1.0
#: The parent's ticket keys rotate every ticket lifetime, but no more
#: often than this: each rotation takes the children a few seconds to see.
MIN_ROTATION_INTERVAL = 10.0

_TWISTD = "from twisted.scripts.twistd import run; run()"


def resolve_processes(value):
    """``processes`` as a number: ``auto`` is one per CPU."""
    if value == "auto":
        return max(1, os.cpu_count() or 1)
    return value


def workers_per_process(cpus, processes):
    """``workers = auto`` with several processes: the CPUs shared out, at
    least one each, so that N processes do not start N × CPUs workers
    (each a Python interpreter of some 20 MB) to compete for CPUs."""
    return max(1, cpus // max(1, processes))


class ChildSettings:
    """What a child learns from its environment (see the module docstring)."""

    def __init__(self, index, fd, ticket_keys=None):
        self.index = index
        self.fd = fd
        self.ticket_keys = ticket_keys


def child_settings(environ):
    """The :class:`ChildSettings` in ``environ``, or None for a daemon that
    is no child.  Raises :class:`ConfigError` for a broken one."""
    raw = environ.get(CHILD_VARIABLE)
    if not raw:
        return None
    try:
        index = int(raw)
        fd = int(environ.get(FD_VARIABLE, ""))
    except ValueError:
        raise ConfigError(
            f"${CHILD_VARIABLE} = {raw!r} needs a whole number, and ${FD_VARIABLE} "
            "the listening socket's fd: set by the parent process, never by hand"
        ) from None
    return ChildSettings(index, fd, environ.get(TICKET_KEYS_VARIABLE) or None)


def adopt_listening_socket(reactor, fd, factory):
    """Listen on the socket at ``fd`` (inherited from the parent), of
    whatever family it is; the fd itself is closed (the port has its own)."""
    sock = socket.socket(fileno=fd)
    try:
        return reactor.adoptStreamPort(sock.fileno(), sock.family, factory)
    finally:
        sock.close()


class _ParentWatch(abstract.FileDescriptor):
    """Reads the child's standard input, a pipe from the parent: its end
    (the parent exited, or was killed) calls ``gone``."""

    def __init__(self, reactor, fd, gone):
        super().__init__(reactor)
        self.fd = fd
        self.gone = gone
        fdesc.setNonBlocking(fd)

    def fileno(self):
        return self.fd

    def doRead(self):
        return fdesc.readFromFD(self.fd, lambda data: None)

    def connectionLost(self, reason):
        super().connectionLost(reason)
        # End of file: the parent's end closed.  Not the reactor letting
        # go of every descriptor as it shuts down (ConnectionLost).
        if reason.check(error.ConnectionDone):
            self.gone()


def watch_parent(reactor, gone, fd=0):
    """Call ``gone`` when the parent's end of ``fd`` closes."""
    watch = _ParentWatch(reactor, fd, gone)
    watch.startReading()
    return watch


class Backoff:
    """Delays before starting a dead child again: ``initial`` seconds,
    doubling up to ``maximum`` while children die young, and back to
    ``initial`` after one lived ``reset_after`` seconds: a child that
    crashes at start does not make the parent spin, one that crashed after
    a day of service is back at once."""

    def __init__(self, initial=1.0, maximum=30.0, reset_after=60.0):
        self.initial = initial
        self.maximum = maximum
        self.reset_after = reset_after
        self._next = initial

    def delay(self, lived):
        """The delay before the next start, for a child that lived ``lived`` s."""
        if lived >= self.reset_after:
            self._next = self.initial
        delay = self._next
        self._next = min(self.maximum, delay * 2)
        return delay


class SharedTicketKeys:
    """The parent's ticket-key file (0600) for children with no file of
    their own: random keys, rotated every ``interval`` seconds.

    A rotation is two writes, ``announce`` seconds apart: first the new key
    after the ones in use (every child can open tickets under it), then the
    new key first (children issue under it) and the previous one kept to
    open the tickets it issued, the one before dropped.  The children read
    the file every :data:`SHARED_TICKET_KEYS_CHECK` s: a ticket issued by a
    child that already switched opens on one that has not yet.
    """

    log = Logger()

    def __init__(self, path, interval, reactor, announce=5.0):
        self.path = path
        self.interval = interval
        self.reactor = reactor
        self.announce = announce
        self._keys = [secrets.token_bytes(tickets.TICKET_KEY_LENGTH)]
        self._call = None

    def write(self, keys):
        self._keys = keys
        tickets.write_ticket_key_file(self.path, tickets.TicketKeys(keys))

    def start(self):
        if not os.path.exists(self.path):
            self.write(self._keys)
        self._call = self.reactor.callLater(self.interval, self._announce)

    def _announce(self):
        new = secrets.token_bytes(tickets.TICKET_KEY_LENGTH)
        self.write([*self._keys, new])
        self._call = self.reactor.callLater(self.announce, self._promote, new)

    def _promote(self, new):
        self.write([new, self._keys[0]])
        self.log.info("shared ticket keys rotated")
        self._call = self.reactor.callLater(self.interval, self._announce)

    def stop(self):
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


class _Child(protocol.ProcessProtocol):
    """One child process: its output, read line by line, and its end."""

    #: A line longer than this is cut (a log line is a few hundred bytes;
    #: a runaway child must not make the parent buffer without bound).
    MAX_LINE = 1024 * 1024

    def __init__(self, supervisor, index):
        self.supervisor = supervisor
        self.index = index
        self.pid = None
        self.started = None
        self.ready = False
        self.reload_pending = False
        self.ended = False
        self._buffers = {1: b"", 2: b""}

    def connectionMade(self):
        self.pid = self.transport.pid

    def childDataReceived(self, fd, data):
        if fd not in self._buffers:
            return
        buffered = self._buffers[fd] + data
        *lines, rest = buffered.split(b"\n")
        if len(rest) > self.MAX_LINE:
            lines.append(rest)
            rest = b""
        self._buffers[fd] = rest
        for line in lines:
            self.supervisor.child_line(self, line, fd)

    def processEnded(self, reason):
        self.ended = True
        for fd in self._buffers:
            if self._buffers[fd]:
                self.supervisor.child_line(self, self._buffers[fd], fd)
                self._buffers[fd] = b""
        self.supervisor.child_ended(self, reason.value)

    def signal(self, name):
        try:
            self.transport.signalProcess(name)
        except (error.ProcessExitedAlready, OSError):
            pass


def _how_it_ended(value):
    number = getattr(value, "signal", None)
    if number is not None:
        try:
            return f"killed by {signal.Signals(number).name}"
        except ValueError:
            return f"killed by signal {number}"
    return f"exit code {getattr(value, 'exitCode', None)}"


def runtime_directory(environ):
    """A new private (0700) directory for the ticket-key file and the
    metrics files: under ``$RUNTIME_DIRECTORY`` (systemd's
    ``RuntimeDirectory=``), else the system's temporary directory."""
    base = (environ.get("RUNTIME_DIRECTORY") or "").split(":")[0] or None
    return tempfile.mkdtemp(prefix="keyexchanged-", dir=base)


def spawn_child(reactor, child, argv, env, cwd, fd):
    """Start ``argv`` with the listening socket at ``fd`` as its fd 3, its
    stdin a pipe from us (its parent-watch), stdout and stderr to us."""
    return reactor.spawnProcess(
        child,
        argv[0],
        argv,
        env=env,
        path=cwd,
        childFDs={0: "w", 1: "r", 2: "r", CHILD_FD: fd},
    )


class ProcessesService(service.Service):
    """The parent: listens, starts and watches ``count`` children.

    ``spawn(child, index, fd)`` starts a child process for the
    :class:`_Child` protocol ``child`` and returns its transport (tests give
    their own); ``reactor`` also provides ``callLater`` and ``seconds``;
    ``backoff()`` makes a :class:`Backoff` for each child.
    """

    log = Logger()

    def __init__(
        self,
        options,
        count,
        reactor,
        runtime=None,
        metrics=None,
        shared_ticket_keys=None,
        spawn=None,
        observer=None,
        backoff=Backoff,
        handle_signals=True,
    ):
        self.options = options
        self.count = count
        self.reactor = reactor
        self.runtime = runtime
        self.metrics = metrics
        self.shared_ticket_keys = shared_ticket_keys
        self.spawn = spawn if spawn is not None else self._spawn_twistd
        self.observer = observer if observer is not None else globalLogPublisher
        #: Each child's own delays: one child's crash loop does not slow
        #: the restart of another.
        self.backoff = {index: backoff() for index in range(1, count + 1)}
        self.handle_signals = handle_signals
        self.children = {}
        self.port = None
        self.stopping = False
        self._restarts = {}
        self._announced = False
        self._all_ended = None
        self._kill_call = None
        self._cwd = os.getcwd()
        settings = options.settings
        self.listen = settings["listen"]
        self.grace_period = settings["grace-period"]

    # -- listening ---------------------------------------------------------------------

    def privilegedStartService(self):
        super().privilegedStartService()
        self._listen()

    def _listen(self):
        if self.port is not None:
            return
        settings = self.options.settings
        inner, _wrap = proxyproto.parse_listen(self.listen, settings["trusted-proxies"])
        listening = serverFromString(self.reactor, inner).listen(_NoAccept())
        result = []
        listening.addBoth(result.append)
        if not result or isinstance(result[0], Failure):
            reason = result[0].getErrorMessage() if result else "no answer from the endpoint"
            self.log.critical(
                "cannot listen on {listen}: {reason}", listen=self.listen, reason=reason
            )
            # The process ends here: stopService will not clean up.
            if self.runtime is not None:
                shutil.rmtree(self.runtime, ignore_errors=True)
            raise ConfigError(f"cannot listen on {self.listen}: {reason}")
        self.port = result[0]
        # The children accept; the parent never does.
        self.port.stopReading()
        address = self.port.getHost()
        self.log.info(
            "listening on {host}:{port} for {count} child processes",
            host=getattr(address, "host", address),
            port=getattr(address, "port", ""),
            count=self.count,
        )

    # -- starting ------------------------------------------------------------------------

    def startService(self):
        super().startService()
        self._listen()
        if self.shared_ticket_keys is not None:
            self.shared_ticket_keys.start()
        self.reactor.callWhenRunning(self._start)

    def _start(self):
        if self.handle_signals:
            self._install_signals()
        for index in range(1, self.count + 1):
            self._start_child(index)

    def child_environment(self, index):
        env = {k: v for k, v in os.environ.items() if k not in SYSTEMD_VARIABLES}
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        env[CHILD_VARIABLE] = str(index)
        env[FD_VARIABLE] = str(CHILD_FD)
        env.pop(TICKET_KEYS_VARIABLE, None)
        env.pop(metrics_module.DIRECTORY_VARIABLE, None)
        if self.shared_ticket_keys is not None:
            env[TICKET_KEYS_VARIABLE] = self.shared_ticket_keys.path
        if self.metrics is not None:
            env.update(metrics_module.process_environment(self.metrics.process_directory))
        return env

    def child_argv(self):
        return [
            sys.executable,
            "-c",
            _TWISTD,
            "--nodaemon",
            "--pidfile=",
            "--logger",
            "keyexchanged.logs.json_observer",
            "keyexchange",
            *self.options.argv,
        ]

    def _spawn_twistd(self, child, index, fd):
        return spawn_child(
            self.reactor, child, self.child_argv(), self.child_environment(index), self._cwd, fd
        )

    def _start_child(self, index):
        self._restarts.pop(index, None)
        if self.stopping:
            return
        child = _Child(self, index)
        try:
            transport = self.spawn(child, index, self.port.fileno())
        except OSError as error_:
            # Out of processes or descriptors, say: not at once again.
            delay = self.backoff[index].delay(0.0)
            self.log.error(
                "cannot start child {index}: {reason}; trying again in {delay:g} s",
                index=index,
                reason=str(error_),
                delay=delay,
            )
            self._schedule_restart(index, delay)
            return
        child.pid = transport.pid
        child.started = self.reactor.seconds()
        self.children[index] = child
        self.log.info("child {index} (pid {pid}) started", index=index, pid=child.pid)

    # -- what the children say ------------------------------------------------------------

    def child_line(self, child, line, fd):
        text = line.decode("utf-8", "replace").rstrip("\r")
        if not text.strip():
            return
        event = None
        if fd == 1:
            try:
                event = eventFromJSON(text)
            except (ValueError, TypeError):
                event = None
        if not isinstance(event, dict):
            # Standard error: what a child says before its logging starts,
            # such as why its options were refused.
            emit = self.log.info if fd == 1 else self.log.warn
            emit(
                "child {child_index} (pid {child_pid}): {line}",
                child_index=child.index,
                child_pid=child.pid,
                line=text,
            )
            return
        self._relay(child, event)
        if event.get(READY_FIELD) and not child.ready:
            self._ready(child)

    def _relay(self, child, event):
        level = event.get("log_level")
        system = event.get("log_system") or "{}#{}".format(
            event.get("log_namespace", "-"), getattr(level, "name", "-")
        )
        event["log_system"] = f"{system}, child {child.index} pid {child.pid}"
        event["child_index"] = child.index
        event["child_pid"] = child.pid
        self.observer(event)

    def _ready(self, child):
        child.ready = True
        if child.reload_pending:
            # Its config may have been read before the reload's files were.
            child.reload_pending = False
            child.signal("HUP")
        if self._announced:
            self.log.info(
                "child {index} (pid {pid}) serves again", index=child.index, pid=child.pid
            )
            return
        if len(self.children) == self.count and all(c.ready for c in self.children.values()):
            self._announced = True
            self.log.info("all {count} child processes serve", count=self.count)
            systemd.ready(f"serving with {self.count} processes")

    def child_ended(self, child, value):
        if self.children.get(child.index) is child:
            del self.children[child.index]
        if self.metrics is not None and child.pid is not None:
            metrics_module.process_ended(self.metrics.process_directory, child.pid)
        how = _how_it_ended(value)
        if self.stopping:
            self.log.info(
                "child {index} (pid {pid}) ended: {how}", index=child.index, pid=child.pid, how=how
            )
            if not self.children and self._all_ended is not None:
                all_ended, self._all_ended = self._all_ended, None
                all_ended.callback(None)
            return
        lived = self.reactor.seconds() - (child.started or 0.0)
        delay = self.backoff[child.index].delay(lived)
        self.log.error(
            "child {index} (pid {pid}) died unexpectedly ({how}) after {lived:.1f} s; "
            "starting a new one in {delay:g} s",
            index=child.index,
            pid=child.pid,
            how=how,
            lived=lived,
            delay=delay,
        )
        self._schedule_restart(child.index, delay)

    def _schedule_restart(self, index, delay):
        self._restarts[index] = self.reactor.callLater(delay, self._start_child, index)

    # -- signals ---------------------------------------------------------------------------

    def _install_signals(self):
        def stop(number, frame):
            self.reactor.callFromThread(self.stop_requested, signal.Signals(number).name)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        systemd.ReloadOnHangup(self.reactor, self.reload).install()

    def stop_requested(self, name):
        """SIGTERM or SIGINT: stop the children, then ourselves.  Again: the
        children cut their open sessions at once."""
        if self.stopping:
            self.log.info("{signal} again: the children cut their open sessions", signal=name)
            self._signal_children(CUT_SIGNAL)
            return
        systemd.stopping()
        self.log.info(
            "{signal}: stopping {count} child processes (open sessions get {grace} s)",
            signal=name,
            count=len(self.children),
            grace=self.grace_period,
        )
        self.reactor.stop()

    def _signal_children(self, name):
        for child in list(self.children.values()):
            child.signal(name)

    def reload(self):
        """SIGHUP: the config checked here first; if good, SIGHUP to every
        child, which reloads it (a child still starting does once it
        serves); if not, nothing changes anywhere."""
        old = self.options
        new = type(old)(environ=old.environ)
        try:
            new.parseOptions(old.argv)
        except usage.UsageError as error_:
            self.log.error(
                "reload failed, nothing changed (no child told): {reason}", reason=str(error_)
            )
            if self.metrics is not None:
                self.metrics.reload("failed")
            return
        if str(new.settings.get("processes")) != str(old.settings.get("processes")):
            self.log.warn(
                "reload: processes changes only at a restart; still {count}", count=self.count
            )
        self.options = new
        if self.metrics is not None:
            self.metrics.reload("ok")
        told = 0
        for child in self.children.values():
            if child.ready:
                child.signal("HUP")
                told += 1
            else:
                child.reload_pending = True
        self.log.info("reload: config good; SIGHUP sent to {count} child process(es)", count=told)

    # -- stopping ----------------------------------------------------------------------------

    def stopService(self):
        super().stopService()
        self.stopping = True
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        if self.shared_ticket_keys is not None:
            self.shared_ticket_keys.stop()
        ended = defer.succeed(None)
        if self.children:
            ended = self._all_ended = defer.Deferred()
            self._signal_children("TERM")
            self._kill_call = self.reactor.callLater(
                self.grace_period + KILL_AFTER, self._kill_stragglers
            )
        ended.addCallback(self._stopped)
        return ended

    def _kill_stragglers(self):
        self._kill_call = None
        for child in list(self.children.values()):
            self.log.warn(
                "child {index} (pid {pid}) outlived its grace period: SIGKILL",
                index=child.index,
                pid=child.pid,
            )
            child.signal("KILL")

    def _stopped(self, _):
        if self._kill_call is not None and self._kill_call.active():
            self._kill_call.cancel()
        self._kill_call = None
        port, self.port = self.port, None
        stopping = port.stopListening() if port is not None else None
        if self.runtime is not None:
            shutil.rmtree(self.runtime, ignore_errors=True)
        self.log.info("every child process has ended")
        return stopping


class _NoAccept(protocol.Factory):
    """The parent's factory: it never reads from the port, and would close
    at once a connection it accepted by mistake."""

    noisy = False

    def buildProtocol(self, addr):
        return None
