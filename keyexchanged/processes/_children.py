"""One child process as the parent sees it: how it is started, its output
read line by line, how it ended, and the delay before it is started again."""

import signal

from twisted.internet import error, protocol

from keyexchanged.processes._settings import CHILD_FD


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
