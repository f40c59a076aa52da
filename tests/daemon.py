"""Run the real ``twistd keyexchange`` and ``keyexchange`` for system tests.

Both are child processes driven by the reactor: we wait on their output
and exit, never on a timer, and every wait is bounded by trial's timeout.
"""

import os
import re
import sys

from twisted.internet import defer, protocol, reactor
from twisted.internet.error import ProcessExitedAlready
from twisted.trial import unittest

from tests.fixtures import ServerFiles

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
CLIENT = [sys.executable, "-m", "keyexchanged.cli"]

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

    @defer.inlineCallbacks
    def assert_reload_refused(self, daemon, body):
        """Write ``body`` and a broken line to the config, send SIGHUP: the
        daemon refuses the reload and says which setting and why."""
        self.write_config(body + "max-connections = many\n")
        daemon.signal("HUP")
        output = yield daemon.wait_for(b"reload failed, nothing changed")
        self.assertIn(b"max-connections = 'many': must be a whole number of at least 1", output)
