"""The child's side: adopting the parent's listening socket, and stopping
when the parent is gone."""

import socket

from twisted.internet import abstract, error, fdesc


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
