"""The transport an application sees inside the channel, and the batching
of what it writes into records."""

from twisted.internet import interfaces
from zope.interface import implementer

from keyexchanged.framing import RECORD_DATA_MAX


@implementer(interfaces.ITransport, interfaces.ITCPTransport, interfaces.IConsumer)
class SecureTransport:
    """The transport an application protocol sees inside the channel.

    Writes are gathered and sealed together at the end of the reactor turn
    (pycryptodome's GCM costs about 100 µs per record whatever its size), and
    a full 64 KiB record goes out at once.
    """

    # One per session, alive as long as it is: no instance dict.
    __slots__ = ("_channel", "disconnecting")

    def __init__(self, channel):
        self._channel = channel
        self.disconnecting = False

    @property
    def peer_fingerprint(self):
        """The client's key fingerprint after AUTH (server side), or the
        server's (client side); ``None`` when the client did not authenticate."""
        return self._channel.peer_fingerprint

    @property
    def resumed(self):
        """True when the session was resumed from a ticket (no RSA)."""
        return self._channel.connection.resumed

    def write(self, data):
        self._channel.write_application_data(data)

    def writeSequence(self, data):
        self._channel.write_application_data(b"".join(data))

    def loseConnection(self):
        self.disconnecting = True
        self._channel.close_write()

    def loseWriteConnection(self):
        self._channel.close_write()

    def abortConnection(self):
        """Drop the connection without END: the peer sees a truncation."""
        self.disconnecting = True
        self._channel.transport.abortConnection()

    def failConnection(self, detail):
        """End the session with ``ERROR internal`` and ``detail`` (no secrets):
        for an application that cannot serve this session (a forwarding
        target that refused, say), so the peer learns it failed."""
        self.disconnecting = True
        self._channel.fail_internal(detail)

    def getPeer(self):
        return self._channel.transport.getPeer()

    def getHost(self):
        return self._channel.transport.getHost()

    def getHandle(self):
        return self._channel.transport.getHandle()

    def getTcpNoDelay(self):
        return self._channel.transport.getTcpNoDelay()

    def setTcpNoDelay(self, enabled):
        return self._channel.transport.setTcpNoDelay(enabled)

    def getTcpKeepAlive(self):
        return self._channel.transport.getTcpKeepAlive()

    def setTcpKeepAlive(self, enabled):
        return self._channel.transport.setTcpKeepAlive(enabled)

    # Flow control passes straight through: records are written to the TCP
    # transport as they are sealed, so its buffer is what a producer must
    # respect, and pausing us pauses reading from the socket.
    def registerProducer(self, producer, streaming):
        self._channel.transport.registerProducer(producer, streaming)

    def unregisterProducer(self):
        self._channel.transport.unregisterProducer()

    def pauseProducing(self):
        self._channel.transport.pauseProducing()

    def resumeProducing(self):
        self._channel.transport.resumeProducing()

    def stopProducing(self):
        # A consumer that stops us (its connection is gone) ends the
        # session cleanly: END, not a bare TCP close the peer would take
        # for a truncation.
        self.loseConnection()


class AggregateWrites:
    """What an application writes, gathered into as few records as it can be.

    pycryptodome's GCM costs about 100 µs per record whatever its size, so
    writes are sealed together at the end of the reactor turn, and a full
    64 KiB record's worth goes out at once (the shape of Twisted's
    ``tls._AggregateSmallWrites``).

    @ivar _seal: called with the bytes gathered, to seal and send them.
    @ivar _clock: the reactor that runs the end-of-turn flush.
    @ivar _pending: the writes since the last flush: a list while there are
        some, else an empty tuple (shared: an idle session holds no list).
    @ivar _length: their total length.
    @ivar _call: the end-of-turn flush, while one is scheduled.
    """

    __slots__ = ("_call", "_clock", "_length", "_pending", "_seal")

    def __init__(self, seal, clock):
        self._seal = seal
        self._clock = clock
        self._pending = ()
        self._length = 0
        self._call = None

    def __len__(self):
        return self._length

    def write(self, data):
        if self._pending:
            self._pending.append(data)
        else:
            self._pending = [data]
        self._length += len(data)
        if self._length >= RECORD_DATA_MAX:
            self.flush()
        elif self._call is None:
            self._call = self._clock.callLater(0, self.flush)

    def flush(self):
        """Seal what was written, now."""
        self.cancel()
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending, self._length = (), 0
        self._seal(data)

    def cancel(self):
        """No end-of-turn flush (the session is closing)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
