"""The parent of ``--processes N``: it listens, starts and watches the
children, relays their log events as its own, passes on signals and reloads,
and on stop waits for them (see the package's docstring)."""

import os
import shutil
import signal
import sys

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger, eventFromJSON, globalLogPublisher
from twisted.python import usage

from keyexchanged import proxyproto, systemd
from keyexchanged.listening import CannotListen, listen_now
from keyexchanged.processes._children import Backoff, _Child, _how_it_ended, spawn_child
from keyexchanged.processes._settings import (
    CHILD_FD,
    CHILD_VARIABLE,
    CUT_SIGNAL,
    FD_VARIABLE,
    KILL_AFTER,
    READY_FIELD,
    SYSTEMD_VARIABLES,
    TICKET_KEYS_VARIABLE,
)

# ``python -c`` puts the working directory first on the import path, and a
# child holds the long-term and ticket keys: a module another user left in
# that directory must not run in it.  -P (Python 3.11 and later) leaves it
# off; on older Pythons the program drops it before it imports anything.
_TWISTD = (
    "import sys; sys.path[:] = [p for p in sys.path if p not in ('', '.')]; "
    "from twisted.scripts.twistd import run; run()"
)
_SAFE_PATH = ["-P"] if sys.version_info >= (3, 11) else []


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
        endpoint = serverFromString(self.reactor, inner)
        result = []
        try:
            listen_now(
                lambda: endpoint.listen(_NoAccept()),
                f"cannot listen on {self.listen}",
                result.append,
            )
        except CannotListen as error:
            self.log.critical("{error}", error=str(error))
            # The process ends here: stopService will not clean up.
            if self.runtime is not None:
                shutil.rmtree(self.runtime, ignore_errors=True)
            raise
        if not result:
            raise CannotListen(f"cannot listen on {self.listen}: no answer from the endpoint")
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
        # keyexchanged/processes/_parent.py: three levels below the root.
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        # An empty entry would stand for the working directory (see _TWISTD).
        inherited = env.get("PYTHONPATH", "").split(os.pathsep)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, *inherited) if p)
        env[CHILD_VARIABLE] = str(index)
        env[FD_VARIABLE] = str(CHILD_FD)
        env.pop(TICKET_KEYS_VARIABLE, None)
        # Here, not at the top: a child, which imports this module too, has
        # no use for prometheus_client (keyexchanged.metrics imports it).
        from keyexchanged import metrics as metrics_module

        env.pop(metrics_module.DIRECTORY_VARIABLE, None)
        if self.shared_ticket_keys is not None:
            env[TICKET_KEYS_VARIABLE] = self.shared_ticket_keys.path
        if self.metrics is not None:
            env.update(metrics_module.process_environment(self.metrics.process_directory))
        return env

    def child_argv(self):
        return [
            sys.executable,
            *_SAFE_PATH,
            "-c",
            _TWISTD,
            "--nodaemon",
            "--pidfile=",
            "--logger",
            "keyexchanged.logs.relay_observer",
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
            from keyexchanged import metrics as metrics_module  # as in child_environment

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
        try:
            new = old.reread()
        except usage.UsageError as error_:
            self.log.error(
                "reload failed, nothing changed (no child told): {reason}", reason=str(error_)
            )
            if self.metrics is not None:
                self.metrics.reload("failed")
            raise systemd.ReloadRefused(str(error_)) from None
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
