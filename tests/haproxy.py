"""A real HAProxy for the system tests, driven by the reactor.

Its listening sockets are made here and handed to it as file descriptors
(``bind fd@3``, ``fd@4``, ...): they are listening before HAProxy starts,
so a client connects at once and its connection waits in the queue; there
is nothing to poll and no port to guess.  HAProxy runs in the foreground
(``-db``) with its warnings (a server going DOWN, say) on stderr, which is
collected in :attr:`HAProxy.output`.  If it fails to start, it exits, and
:meth:`HAProxy.unless_dies` turns the wait of a test into a failure with
its output.
"""

import os
import shutil
import socket

from twisted.internet import defer, protocol, reactor
from twisted.python.failure import Failure

HAPROXY = shutil.which(
    "haproxy", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
)
SKIP = None if HAPROXY else "haproxy is not installed (apt-get install -y haproxy)"


class HAProxy(protocol.ProcessProtocol):
    """``haproxy -db -f CONFIG``; see :meth:`start`."""

    def __init__(self):
        self.output = b""
        self.ended = defer.Deferred()
        #: The port of each listening socket handed over, fd@3 first.
        self.ports = []
        self._waiters = []

    @classmethod
    def start(cls, testcase, config, frontends=1):
        """Write ``config`` (its frontends ``bind fd@3``, ``fd@4``, ... up to
        ``frontends`` of them) into a temporary directory of ``testcase``
        and run HAProxy on it; it is stopped at the test's cleanup."""
        directory = os.path.abspath(testcase.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "haproxy.cfg")
        with open(path, "w") as f:
            f.write(config)
        haproxy = cls()
        sockets = []
        for _ in range(frontends):
            front = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            front.bind(("127.0.0.1", 0))
            front.listen(128)
            sockets.append(front)
            haproxy.ports.append(front.getsockname()[1])
        child_fds = {0: "w", 1: "r", 2: "r"}
        child_fds.update({3 + index: front.fileno() for index, front in enumerate(sockets)})
        reactor.spawnProcess(
            haproxy,
            HAPROXY,
            [HAPROXY, "-db", "-f", path],
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            childFDs=child_fds,
        )
        # HAProxy holds the sockets now: if it dies, connections are
        # refused instead of waiting in a queue nobody reads.
        for front in sockets:
            front.close()
        testcase.addCleanup(haproxy.stop)
        return haproxy

    def outReceived(self, data):
        self.output += data
        for waiter in list(self._waiters):
            pattern, d = waiter
            if pattern in self.output:
                self._waiters.remove(waiter)
                d.callback(self.output)

    errReceived = outReceived

    def processEnded(self, reason):
        self.ended.callback(reason.value.exitCode)

    def wait_for(self, pattern):
        """Fires when ``pattern`` (bytes) has appeared in HAProxy's output."""
        d = defer.Deferred()
        if pattern in self.output:
            d.callback(self.output)
        else:
            self._waiters.append((pattern, d))
        return self.unless_dies(d)

    @defer.inlineCallbacks
    def stop(self):
        if not self.ended.called:
            self.transport.signalProcess("TERM")
        yield self.ended

    def unless_dies(self, d):
        """``d``'s result, or a failure with HAProxy's output if it exits first."""
        result = defer.Deferred()

        def died(code):
            if not result.called:
                output = self.output.decode(errors="replace")
                result.errback(RuntimeError(f"haproxy exited ({code}):\n{output}"))
            return code

        def done(outcome):
            if not result.called:
                if isinstance(outcome, Failure):
                    result.errback(outcome)
                else:
                    result.callback(outcome)

        self.ended.addCallback(died)
        d.addBoth(done)
        return result
