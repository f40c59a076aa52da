"""Run the real ``twistd keyexchange`` and ``keyexchange`` for system tests.

Both are child processes driven by the reactor: we wait on their output
and exit, never on a timer, and every wait is bounded by trial's timeout.
A :class:`SharedDaemon` serves the tests that only connect to a daemon
of one configuration, one per test process.
"""

import atexit
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile

from twisted.internet import defer, endpoints, protocol, reactor
from twisted.internet.error import ConnectionDone, ProcessExitedAlready
from twisted.internet.interfaces import IReadDescriptor
from twisted.trial import unittest
from zope.interface import implementer

from keyexchanged import client, keys
from keyexchanged.trust import PinnedKey
from tests.fixtures import CLIENT_KEY, SERVER_KEY, ServerFiles
from tests.vectors import RAW

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
CLIENT = [sys.executable, "-m", "keyexchanged.cli"]

#: What a daemon with the default settings sends (``message``).
MESSAGE = b"The secret message: hello from keyexchanged."

_LISTENING = re.compile(rb"listening on ([0-9.]+):(\d+)")


def environment(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("KEYEXCHANGED_CONFIG", None)
    env.update(extra)
    return env


class Daemon(protocol.ProcessProtocol):
    """``twistd -n keyexchange ...`` with its log on stdout."""

    def __init__(self):
        self.output = b""
        self.port = None
        self.listening = defer.Deferred()
        self.ended = defer.Deferred()
        self._waiters = []

    @classmethod
    def start(cls, args, env=None, cwd=None):
        return cls.spawn(
            [*TWISTD, "-n", "--pidfile=", "--logfile=-", "keyexchange", *args], env, cwd
        )

    @classmethod
    def spawn(cls, argv, env=None, cwd=None):
        """Any long-running command that says ``listening on HOST:PORT``
        (``keyexchange tunnel``, say)."""
        daemon = cls()
        reactor.spawnProcess(daemon, argv[0], argv, env=env or environment(), path=cwd)
        return daemon

    @classmethod
    def tunnel(cls, port, fingerprint=None):
        """``keyexchange tunnel`` on a free port of 127.0.0.1 to the daemon
        on ``port``, pinning ``fingerprint`` (the vector server key's)."""
        fingerprint = fingerprint or RAW["server_fingerprint"]
        listen, server = "tcp:0:interface=127.0.0.1", f"127.0.0.1:{port}"
        pin = ["--fingerprint", fingerprint]
        return cls.spawn([*CLIENT, "tunnel", "--listen", listen, "--server", server, *pin])

    def outReceived(self, data):
        self.output += data
        if self.port is None:
            match = _LISTENING.search(self.output)
            if match:
                self.port = int(match.group(2))
                self.listening.callback(self.port)
        for waiter in list(self._waiters):
            pattern, count, d = waiter
            if self.output.count(pattern) >= count:
                self._waiters.remove(waiter)
                d.callback(self.output)

    errReceived = outReceived

    def wait_for(self, pattern, count=1):
        """Fires when ``pattern`` (bytes) has appeared in the output
        (``count`` times)."""
        d = defer.Deferred()
        if self.output.count(pattern) >= count:
            d.callback(self.output)
        else:
            self._waiters.append((pattern, count, d))
        return d

    def processEnded(self, reason):
        code = reason.value.exitCode
        if not self.listening.called:
            self.listening.errback(
                RuntimeError(f"twistd exited ({code}) before listening:\n{self.output.decode()}")
            )
        self.ended.callback(code)

    def signal(self, name):
        self.transport.signalProcess(name)

    def refused(self):
        """Fires with the exit code of a daemon expected never to listen."""
        self.listening.addErrback(lambda failure: None)
        return self.ended

    @defer.inlineCallbacks
    def stop(self):
        if not self.ended.called:
            try:
                self.signal("TERM")
            except (OSError, ProcessExitedAlready):
                pass  # it has ended, or is ending: what stop waits for
        code = yield self.ended
        return code


class Output(protocol.ProcessProtocol):
    def __init__(self, stdin=None):
        self.stdin = stdin
        self.out = b""
        self.err = b""
        self.done = defer.Deferred()

    def connectionMade(self):
        if self.stdin is not None:
            self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data):
        self.out += data

    def errReceived(self, data):
        self.err += data

    def processEnded(self, reason):
        self.done.callback((self.out, self.err, reason.value.exitCode))


def run_client(*args, stdin=None, env=None):
    """Run ``keyexchange ARGS``; fires with ``(stdout, stderr, exit code)``."""
    output = Output(stdin)
    argv = CLIENT + list(args)
    reactor.spawnProcess(output, argv[0], argv, env=env or environment())
    return output.done


@defer.inlineCallbacks
def connect_here(port, fingerprint=RAW["server_fingerprint"], **options):
    """``keyexchange connect 127.0.0.1:PORT --fingerprint FINGERPRINT`` in
    this process: for a test of the daemon that needs a session but not the
    CLI's own behaviour (a client process costs ~0.35 s of CPU, mostly its
    imports).  It runs the command's session
    (:func:`keyexchanged.client.run_connect`: the same output and exit
    codes) on the test's reactor, trusting the pinned key alone (the command
    would also refuse a key revoked in the user's known-hosts file).  Fires
    with ``(stdout, stderr, exit code)`` as :func:`run_client` does.
    ``options`` are ``run_connect``'s: ``send``, ``tickets`` (a
    :class:`~keyexchanged.tickets.TicketStore`, ``--ticket-cache``),
    ``require_forward_secrecy`` (``--allow-no-forward-secrecy``)..."""
    out, err = io.BytesIO(), io.StringIO()
    code = yield client.run_connect(
        reactor, "127.0.0.1", port, PinnedKey(fingerprint), output=out, errors=err, **options
    )
    return out.getvalue(), err.getvalue().encode(), code


#: For a daemon whose key sizes and worker processes are not under test:
#: a 2048-bit ephemeral key costs a tenth of a 3072-bit one to make, and
#: worker processes, each a Python interpreter, only add to the CPU time
#: of a test.
LIGHT = ("--workers", "0", "--ephemeral-bits", "2048")
LIGHT_CONFIG = "workers = 0\nephemeral-bits = 2048\n"


class DaemonTestCase(ServerFiles, unittest.TestCase):
    """The server's files (:class:`~tests.fixtures.ServerFiles`); a config
    written with :meth:`write_config` listens on 127.0.0.1, a free port,
    and ends with :attr:`light_config`."""

    timeout = 120
    base_config = "listen = tcp:0:interface=127.0.0.1\n"
    #: After the test's own settings (so that its line numbers stay):
    #: :data:`LIGHT_CONFIG`, or what a test case that measures the defaults
    #: or sets these itself keeps of it.
    light_config = LIGHT_CONFIG

    def write_config(self, body="", key=None):
        return super().write_config(body + self.light_config, key)

    def shared_daemon(self, *args, light=True):
        """The :class:`SharedDaemon` of this process with the vector
        server key, :data:`LIGHT` (unless not ``light``) and ``args``,
        listening on 127.0.0.1, for a test that only connects to it: what
        it logs from now (a :class:`SharedDaemonView`).  When the test
        ends, every connection it made has ended in the log."""
        view = SharedDaemonView(SharedDaemon.get((*LIGHT, *args) if light else args))
        self.addCleanup(view.finish)
        return view

    @defer.inlineCallbacks
    def assert_reload_refused(self, daemon, body):
        """Write ``body`` and a broken line to the config, send SIGHUP: the
        daemon refuses the reload and says which setting and why."""
        self.write_config(body + "max-connections = many\n")
        daemon.signal("HUP")
        output = yield daemon.wait_for(b"reload failed, nothing changed")
        self.assertIn(b"max-connections = 'many': must be a whole number of at least 1", output)


# -- one daemon for the tests that only connect to it ------------------------------

#: ``twistd`` given the listening socket as systemd gives it (LISTEN_FDS,
#: LISTEN_FDNAMES, LISTEN_PID, the socket as descriptor 3): LISTEN_PID can
#: only be the child's own, so the child sets it before Twisted reads it, at
#: import.  It also ends with the test process that started it (Linux's
#: parent-death signal), whatever way that one ends.
_ACTIVATED = """\
import os, signal, sys
fd = int(os.environ.pop("KEYEXCHANGED_TEST_SOCKET"))
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
if sys.platform == "linux":
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
if os.getppid() != int(os.environ.pop("KEYEXCHANGED_TEST_PARENT")):
    sys.exit("the test process has ended")
from twisted.scripts.twistd import run
run()
"""


#: The shared daemons of this process, by their arguments.
_SHARED = {}


@implementer(IReadDescriptor)
class _LogReader:
    """The shared daemon's log pipe in the reactor, only while a test
    waits on it: between tests nothing of the reactor's is left over."""

    def __init__(self, daemon):
        self.daemon = daemon

    def fileno(self):
        return self.daemon.process.stdout.fileno()

    def logPrefix(self):
        return "shared twistd keyexchange"

    def doRead(self):
        try:
            data = os.read(self.fileno(), 65536)
        except BlockingIOError:
            return None
        if not data:
            return ConnectionDone()
        self.daemon.received(data)
        return None

    def connectionLost(self, reason):
        self.daemon.lost()


class SharedDaemon:
    """``twistd -n keyexchange`` with the vector server key and ``args``,
    started the first time a test of this process asks for it (through
    :meth:`DaemonTestCase.shared_daemon`) and stopped when the process
    exits; never the reactor's, so trial's check for what a test leaves
    behind has nothing to find.

    Its socket is bound and listening before the daemon starts (systemd's
    socket activation): a client may connect at once, and waits in the
    backlog until the daemon accepts.  Its log is read through the reactor
    while a test waits on it."""

    @classmethod
    def get(cls, args):
        args = tuple(args)
        if args not in _SHARED:
            _SHARED[args] = cls(args)
        return _SHARED[args]

    def __init__(self, args):
        # In trial's working directory, which its next run removes should
        # this process end without its atexit.
        self.directory = os.path.abspath(tempfile.mkdtemp(prefix="shared-daemon-", dir="."))
        key = os.path.join(self.directory, "server.key")
        keys.save_private_key(SERVER_KEY, key)
        # A second key, for a configuration that names one (by a path
        # relative to the daemon's directory, its working directory).
        keys.save_private_key(CLIENT_KEY, os.path.join(self.directory, "client.key"))
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(128)
            self.port = listener.getsockname()[1]
            fd = listener.fileno()
            argv = [sys.executable, "-c", _ACTIVATED, "-n", "--pidfile=", "--logfile=-"]
            argv += ["keyexchange", "--private-key", key, *args]
            argv += ["--listen", "systemd:domain=INET:name=shared"]
            env = environment(
                LISTEN_FDS="1",
                LISTEN_FDNAMES="shared",
                KEYEXCHANGED_TEST_SOCKET=str(fd),
                KEYEXCHANGED_TEST_PARENT=str(os.getpid()),
            )
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(fd,),
                env=env,
                cwd=self.directory,
            )
        # Our copy of the socket is closed: if the daemon ends, its clients
        # are refused at once rather than left in the backlog.
        os.set_blocking(self.process.stdout.fileno(), False)
        self.output = b""
        self.ended = False
        self._reader = _LogReader(self)
        self._waiters = []
        atexit.register(self.stop)

    def received(self, data):
        self.output += data
        for waiter in list(self._waiters):
            pattern, count, since, d = waiter
            if self.output.count(pattern, since) >= count:
                self._waiters.remove(waiter)
                d.callback(self.output[since:])
        self._read_while_waited_on()

    def lost(self):
        self.ended = True
        waiters, self._waiters = self._waiters, []
        for pattern, _, _, d in waiters:
            d.errback(
                RuntimeError(f"the shared twistd ended before {pattern!r}:\n{self.output.decode()}")
            )

    def wait_for(self, pattern, count=1, since=0):
        """Fires with the log from ``since`` once ``pattern`` (bytes) has
        appeared in it ``count`` times."""

        def cancel(d):
            self._waiters[:] = [waiter for waiter in self._waiters if waiter[3] is not d]
            self._read_while_waited_on()

        d = defer.Deferred(cancel)
        if self.output.count(pattern, since) >= count:
            d.callback(self.output[since:])
        elif self.ended:
            d.errback(RuntimeError(f"the shared twistd has ended:\n{self.output.decode()}"))
        else:
            self._waiters.append((pattern, count, since, d))
            self._read_while_waited_on()
        return d

    def _read_while_waited_on(self):
        if self.ended:
            return
        if self._waiters:
            reactor.addReader(self._reader)
        else:
            reactor.removeReader(self._reader)

    @defer.inlineCallbacks
    def settle(self):
        """Fires once every connection made so far has ended in the log.

        A connection of our own, closed at once, ends after those opened
        before it (the daemon has their end to read first): what a test
        left unfinished cannot end in the next test's part of the log."""
        code = self.process.poll()
        if code is not None:
            # Ended: what it said, for the failure of the test that found it.
            fd = self.process.stdout.fileno()
            try:
                while data := os.read(fd, 65536):
                    self.output += data
            except (BlockingIOError, OSError):
                pass
            raise RuntimeError(f"the shared twistd ended ({code}):\n{self.output.decode()}")
        since = len(self.output)
        closed = defer.Deferred()
        local = []

        class Closed(protocol.Protocol):
            def connectionMade(self):
                local.append(self.transport.getHost().port)
                self.transport.loseConnection()

            def connectionLost(self, reason):
                closed.callback(None)

        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        yield endpoints.connectProtocol(endpoint, Closed())
        yield closed
        yield self.wait_for(b"connection from 127.0.0.1:%d ended: " % local[0], since=since)

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()
        shutil.rmtree(self.directory, ignore_errors=True)


class SharedDaemonView:
    """What one test sees of a :class:`SharedDaemon`: its port, and its
    log from the test's start (``output``, :meth:`wait_for`)."""

    def __init__(self, daemon):
        self.daemon = daemon
        self.port = daemon.port
        self.since = len(daemon.output)
        self._waiting = []

    @property
    def output(self):
        return self.daemon.output[self.since :]

    def _wait(self, d):
        self._waiting.append(d)
        return d

    def wait_for(self, pattern, count=1):
        return self._wait(self.daemon.wait_for(pattern, count, self.since))

    def started(self):
        """Fires with what the daemon said until it listened."""
        return self._wait(self.daemon.wait_for(b"listening on "))

    def finish(self):
        """The test's end: a wait it left (a test that timed out) is
        cancelled, and the daemon settles (:meth:`SharedDaemon.settle`)."""
        for d in self._waiting:
            if not d.called:
                d.cancel()
                d.addErrback(lambda failure: failure.trap(defer.CancelledError))
        return self.daemon.settle()
