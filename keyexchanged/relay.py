"""Splicing two connections byte for byte: what tunnels are made of.

A :class:`Splice` joins two protocols, each the :class:`End` of one
connection.  What one end reads, the other writes.  Three things make it a
tunnel rather than a copy loop:

- **Half-close both ways.**  An end that reads end-of-stream (a TCP FIN, or
  the peer's END inside a KX/1 session) closes only the *write* side of the
  other connection, which may go on sending the other way.  The splice
  ends when both directions have closed.
- **Backpressure.**  Each connection's transport is registered as the
  producer feeding the other: when one side's send buffer fills, Twisted
  pauses reading on the other, so memory stays bounded however fast the
  sender is and however slow the receiver.
- **Errors cross over.**  A connection that fails (reset, truncated
  session, refused target) aborts the other one, so the far client sees a
  failure and not a clean end of data; the reason is logged once.

The first end may start before the second is connected (a tunnel accepts a
local client, then dials out): until :meth:`Splice.join`, it stops reading
and keeps at most :data:`PENDING_LIMIT` bytes that were already in flight.
"""

from twisted.internet import defer, error, interfaces
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["PENDING_LIMIT", "READ_SIZE", "End", "Splice"]

#: The most a plain TCP end reads at once, and what it buffers for writing
#: before it pauses its partner (Twisted uses one number for both).  Four
#: KX/1 records: a tunnel that reads 64 KiB at a time gets whatever arrived
#: by then, often less, and every record costs the same ~25 µs of GCM setup
#: whatever its size; reading more at once seals mostly full records
#: (``make bench``: a third fewer records, a quarter less CPU at the
#: encrypting end of ``keyexchange tunnel``).
READ_SIZE = 256 * 1024

#: Bytes an end may receive before its partner is connected.  Reading is
#: paused at once, so this only covers what was already read from the
#: socket (one read is at most READ_SIZE; a KX/1 record at most 64 KiB).
PENDING_LIMIT = 2 * READ_SIZE


def _clean(reason):
    return reason is None or reason.check(error.ConnectionDone) is not None


@implementer(interfaces.IHalfCloseableProtocol)
class End(Protocol):
    """One connection of a splice."""

    def __init__(self, splice):
        self.splice = splice
        self.read_closed = False
        self.lost = False

    def connectionMade(self):
        if hasattr(self.transport, "bufferSize"):
            # A plain TCP connection (not a KX/1 session's transport).
            self.transport.bufferSize = READ_SIZE
        self.splice.end_connected(self)

    def dataReceived(self, data):
        self.splice.forward(self, data)

    def readConnectionLost(self):
        self.read_closed = True
        self.splice.read_closed(self)

    def writeConnectionLost(self):
        pass  # our half-close went out; the other direction goes on

    def connectionLost(self, reason=None):
        self.lost = True
        self.splice.end_lost(self, reason)


class Splice:
    """Two :class:`End` protocols, ``first`` and ``second``, relayed both ways.

    ``name`` says in log lines what this splice is (``forward to
    tcp:host:port for 127.0.0.1:40000``, say).  When ``first`` connects,
    ``connect(second)`` is called to make the second connection and returns
    a Deferred; its failure ends the first.  ``on_done`` is called once, with
    the failure that ended the splice or ``None`` for a clean end.
    """

    log = Logger()

    def __init__(self, name, connect=None, on_done=None):
        self.name = name
        self.connect = connect
        self.on_done = on_done
        self.first = End(self)
        self.second = End(self)
        self._pending = []
        self._pending_length = 0
        self._joined = False
        self._done = False

    def other(self, end):
        return self.second if end is self.first else self.first

    # -- the two ends come up --------------------------------------------------

    def end_connected(self, end):
        if end is self.first and not self._joined:
            # Nothing to write to yet: stop reading until the second is up.
            end.transport.pauseProducing()
            if self.connect is not None:
                connecting = defer.maybeDeferred(self.connect, self.second)
                connecting.addErrback(self.fail_to_join)
        if self.first.transport is not None and self.second.transport is not None:
            self.join()

    def join(self):
        """Both connections are up: flush what waited and start relaying."""
        if self._joined:
            return
        if self._done or self.first.lost or self.second.lost:
            # One side went away while the other was still coming up.
            for end in (self.first, self.second):
                if end.transport is not None and not end.lost:
                    end.transport.loseConnection()
            self._finish(None)
            return
        self._joined = True
        first, second = self.first.transport, self.second.transport
        first.registerProducer(second, True)
        second.registerProducer(first, True)
        pending, self._pending, self._pending_length = self._pending, [], 0
        if pending:
            second.write(b"".join(pending))
        if self.first.read_closed:
            # The first side ended before the second was up (see read_closed).
            second.unregisterProducer()
            second.loseWriteConnection()
        if not self.first.lost:
            first.resumeProducing()

    def fail_to_join(self, reason):
        """The second connection could not be made: end the first."""
        if self._done or self._joined:
            return
        self._finish(reason)
        transport = self.first.transport
        if transport is not None and not self.first.lost:
            fail = getattr(transport, "failConnection", None)
            if fail is not None:
                # The reason (host names, errno) is logged here, not sent.
                fail("the service behind this server is unavailable")
            else:
                transport.abortConnection()

    # -- relaying ----------------------------------------------------------------

    def forward(self, end, data):
        if not self._joined:
            self._pending.append(data)
            self._pending_length += len(data)
            if self._pending_length > PENDING_LIMIT:
                self._abort(RuntimeError(f"more than {PENDING_LIMIT} bytes before connecting"))
            return
        self.other(end).transport.write(data)

    def read_closed(self, end):
        if not self._joined:
            return  # join() passes the half-close on
        other = self.other(end)
        if not other.lost:
            # Nothing more will come from ``end``: stop it feeding ``other``
            # first.  (A transport whose streaming producer is paused resumes
            # the producer when its buffer drains instead of half-closing,
            # and a producer at end-of-stream never writes again.)
            other.transport.unregisterProducer()
            other.transport.loseWriteConnection()
        if self.first.read_closed and self.second.read_closed:
            # Both directions are finished: close what is left.
            self.first.transport.loseConnection()
            self.second.transport.loseConnection()

    def end_lost(self, end, reason):
        other = self.other(end)
        if not _clean(reason):
            self._finish(reason)
            if other.transport is not None and not other.lost:
                other.transport.abortConnection()
            return
        if other.transport is not None and not other.lost:
            # A clean close of one side: the other finishes writing, then closes.
            other.transport.unregisterProducer()
            other.transport.loseConnection()
        if other.lost or other.transport is None:
            self._finish(None)

    def _abort(self, exception):
        self._finish(Failure(exception))
        for each in (self.first, self.second):
            if each.transport is not None and not each.lost:
                each.transport.abortConnection()

    def _finish(self, reason):
        if self._done:
            return
        self._done = True
        if reason is not None:
            self.log.warn(
                "{name}: ended by {reason}", name=self.name, reason=reason.getErrorMessage()
            )
        if self.on_done is not None:
            self.on_done(reason)
