"""KX/1 over Twisted: a secure channel that wraps any application protocol.

The shape is Twisted's own TLS wrapper: :class:`SecureChannelFactory` wraps
an application factory, and the application protocol it builds sees an
ordinary transport and plain bytes.  It is connected (``connectionMade``)
only after key confirmation, and it is told how the connection ended:

- :class:`~twisted.internet.error.ConnectionDone` after the peer's END;
- :class:`Truncated` when the TCP connection closed before END arrived;
- :class:`PeerError` when the peer sent ERROR, :class:`ProtocolFailure` when
  we did (a bad record, a timeout);
- :class:`IdleTimeout` when the server closed an idle session.

:class:`ChannelProtocol` is the thin adapter: a ``LineReceiver`` that reads
one header line, switches to raw mode for exactly the announced payload, and
hands both to the I/O-free state machine of keyexchanged.handshake.  Everything it
reads is bounded by what the header announced, and the header is refused
before a payload byte is kept.
"""

from twisted.internet import defer, error, interfaces
from twisted.internet.protocol import ClientFactory, Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from keyexchanged import handshake
from keyexchanged.admission import DEFAULT_IPV6_PREFIX, source_key
from keyexchanged.errors import UntrustedKey
from keyexchanged.framing import (
    BUSY,
    HEADER_MAX,
    INTERNAL,
    MALFORMED_FRAME,
    RECORD_DATA_MAX,
    STALE_TICKET,
    TIMEOUT,
    encode_frame,
)

__all__ = [
    "ChannelClientFactory",
    "ChannelProtocol",
    "HandshakeFailed",
    "IdleSessions",
    "IdleTimeout",
    "PeerError",
    "ProtocolFailure",
    "SecureChannelFactory",
    "SecureTransport",
    "SessionOpener",
    "Truncated",
    "UntrustedKey",
    "cause_of",
    "connect",
]


class Truncated(error.ConnectionLost):
    """The connection closed before the peer's END: the data may be cut short."""


class PeerError(error.ConnectionLost):
    """The peer ended the connection with ERROR."""

    def __init__(self, code, detail):
        super().__init__(f"peer sent ERROR {code}: {detail}")
        self.code = code
        self.detail = detail


class ProtocolFailure(error.ConnectionLost):
    """We ended the connection with ERROR."""

    def __init__(self, code, detail):
        super().__init__(f"sent ERROR {code}: {detail}")
        self.code = code
        self.detail = detail


class IdleTimeout(error.ConnectionLost):
    """The server ended a session that was idle for too long."""


class HandshakeFailed(Exception):
    """The connection ended before the handshake completed."""

    def __init__(self, reason):
        super().__init__(str(reason))
        self.reason = reason


def cause_of(value):
    """The exception that ended a session, out of its :class:`HandshakeFailed`
    and :class:`~twisted.python.failure.Failure` wrappers."""
    while True:
        if isinstance(value, Failure):
            value = value.value
        elif isinstance(value, HandshakeFailed):
            value = value.reason
        else:
            return value


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


class ChannelProtocol(LineReceiver):
    """Frames on the wire ↔ the KX/1 state machine ↔ the application."""

    delimiter = b"\r\n"
    # The header line is all we ever read in line mode: 32 bytes is the
    # protocol's cap, and LineReceiver refuses a longer line as soon as the
    # bytes it holds without a CRLF exceed it.  (What it holds is at most
    # one socket read: a payload is read in raw mode, against the announced
    # length, and a header is refused before any payload byte is kept.)
    MAX_LENGTH = HEADER_MAX

    log = Logger()

    def __init__(self, connection, reactor):
        self.connection = connection
        self.reactor = reactor
        self.application = None
        self.peer_fingerprint = None
        self._verb = None
        self._length = 0
        # A bytearray only while a payload is being read: an idle session
        # holds no buffer.
        self._payload = b""
        self._pending = ()  # a list while there is something to flush
        self._pending_length = 0
        self._flush_call = None
        self._closing = False
        self._outcome = None
        self._started = None

    # -- LineReceiver -----------------------------------------------------------

    def connectionMade(self):
        self._started = self.reactor.seconds()

    def lineReceived(self, line):
        if self._closing:
            return
        header = self.connection.receive_header(line)
        if header is None:
            self._handle_events(self.connection.next_events())
            return
        self._verb, self._length = header
        if self._length == 0:
            self._frame_complete(b"")
        else:
            self.setRawMode()

    def rawDataReceived(self, data):
        if self._closing:
            return
        need = self._length - len(self._payload)
        if len(data) < need:
            # Part of a payload: kept in a bytearray (at most the announced
            # length), and only while the payload is incomplete.
            if self._payload:
                self._payload += data
            else:
                self._payload = bytearray(data)
            return
        if self._payload:
            self._payload += memoryview(data)[:need]
            payload = bytes(self._payload)
        else:
            payload = data[:need]  # all in this read: one copy at most
        self._payload = b""
        self._frame_complete(payload)
        if not self._closing:
            self.setLineMode(data[need:])

    def lineLengthExceeded(self, line):
        if self._closing:
            return
        self._handle_events(
            self.connection.fail(MALFORMED_FRAME, "header line longer than 32 bytes")
        )

    def _frame_complete(self, payload):
        verb, self._verb = self._verb, None
        self._handle_events(self.connection.receive_frame(verb, payload))

    # -- events from the state machine -------------------------------------------

    def _handle_events(self, events):
        for event in events:
            handler = getattr(self, "event_" + type(event).__name__, None)
            if handler is not None:
                handler(event)
            if self._closing:
                break
        self._write_out()
        if self.connection.closed or self.connection.finished:
            self._close()

    def _write_out(self):
        data = self.connection.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def event_ErrorReceived(self, event):
        self._outcome = event.code
        self._reason = Failure(PeerError(event.code, event.detail))

    def event_ProtocolFailed(self, event):
        self._outcome = event.code
        self._reason = Failure(ProtocolFailure(event.code, event.detail))

    def event_DataReceived(self, event):
        self._touch()
        if self.application is not None:
            self.application.dataReceived(event.data)

    def event_EndReceived(self, event):
        self._touch()
        if self.application is None:
            return
        half_close = interfaces.IHalfCloseableProtocol(self.application, None)
        if half_close is not None:
            half_close.readConnectionLost()
        else:
            # An application that cannot half-close is done when its peer
            # is: answer END with END, as TCP's close would.
            self.close_write()

    def event_HandshakeComplete(self, event):
        self.peer_fingerprint = event.peer_fingerprint
        self.handshake_complete(event)

    def handshake_complete(self, event):
        """Build and connect the application; subclasses add to it."""
        self.application = self.factory.build_application(self.transport.getPeer(), self)
        if self.application is None:
            self.close_write()
            return
        self.application.makeConnection(SecureTransport(self))

    # -- writing application data -------------------------------------------------

    def write_application_data(self, data):
        if not data or self._closing or not self.connection.can_send:
            return
        if self._pending:
            self._pending.append(data)
        else:
            self._pending = [data]
        self._pending_length += len(data)
        if self._pending_length >= RECORD_DATA_MAX:
            self.flush()
        elif self._flush_call is None:
            self._flush_call = self.reactor.callLater(0, self.flush)

    def flush(self):
        """Seal what the application wrote: whole 64 KiB records, then the rest."""
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        if not self._pending or not self.connection.can_send:
            return
        data = b"".join(self._pending)
        self._pending, self._pending_length = (), 0
        self.connection.send_data(data)
        self._write_out()

    def fail_internal(self, detail):
        """End with ERROR internal (see :meth:`SecureTransport.failConnection`)."""
        if not self._closing:
            self._handle_events(self.connection.fail(INTERNAL, detail))

    def close_write(self):
        """Flush, then send END (once)."""
        if self._closing or not self.connection.can_send:
            return
        self.flush()
        self.connection.send_end()
        self._write_out()
        if self.connection.finished:
            self._close()

    #: Seconds a closing connection may take to deliver what we last wrote
    #: (our END, say) to a peer that has stopped reading; then it is cut.
    #: Without the bound such a peer would hold its connection slot forever.
    CLOSE_TIMEOUT = 10.0

    _abort_call = None

    def _close(self):
        if not self._closing:
            self._closing = True
            self._cancel_timers()
            if self.transport is not None:
                # A paused streaming producer (an application's, or a
                # forwarded connection) would be resumed by a draining
                # transport instead of letting it close: nothing more is
                # wanted from it now.
                if getattr(self.transport, "producer", None) is not None:
                    self.transport.unregisterProducer()
                self.transport.loseConnection()
                self._abort_call = self.reactor.callLater(self.CLOSE_TIMEOUT, self._close_expired)

    def _close_expired(self):
        self._abort_call = None
        if self.transport is not None:
            self.transport.abortConnection()

    def _touch(self):
        """Traffic on an established session; subclasses reset timers."""

    def _cancel_timers(self):
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None

    # -- the end ---------------------------------------------------------------------

    _reason = None

    def connectionLost(self, reason=connectionDone):
        self._closing = True
        self._cancel_timers()
        self.connection.connection_lost()
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        self._abort_call = None
        # A clean end needs the peer's END, and either our own END or a
        # clean TCP close: a reset after the peer's END may still have cut
        # what we were sending.
        clean = self.connection.received_end and (
            self.connection.sent_end or reason is None or reason.check(error.ConnectionDone)
        )
        if self._reason is None:
            if clean:
                self._reason = Failure(error.ConnectionDone("END received"))
            elif self.connection.received_end:
                self._reason = Failure(Truncated("connection lost before our END went out"))
            elif self.connection.handshake_done:
                self._reason = Failure(Truncated("connection closed before END"))
            else:
                self._reason = reason
        if self._outcome is None:
            if clean:
                self._outcome = "ok"
            elif self.connection.handshake_done:
                self._outcome = "truncated"
            else:
                self._outcome = "closed"
        application, self.application = self.application, None
        if application is not None:
            application.connectionLost(self._reason)

    @property
    def duration(self):
        if self._started is None:
            return 0.0
        return self.reactor.seconds() - self._started


# -- the server ---------------------------------------------------------------------


class ServerChannelProtocol(ChannelProtocol):
    """Server side: HELLO at once, timeouts, the connection log line."""

    def __init__(self, connection, reactor, handshake_timeout, idle_timeout):
        super().__init__(connection, reactor)
        self._handshake_timeout = handshake_timeout
        self._idle_timeout = idle_timeout
        self._handshake_timer = None

    def connectionMade(self):
        super().connectionMade()
        self.connection.start()
        self._write_out()
        if self._handshake_timeout:
            self._handshake_timer = self.reactor.callLater(
                self._handshake_timeout, self._handshake_expired
            )

    def _handshake_expired(self):
        self._handshake_timer = None
        self._handle_events(self.connection.fail(TIMEOUT, "handshake took too long"))

    def handshake_complete(self, event):
        self._cancel_handshake_timer()
        if self._idle_timeout:
            self.factory.idle_sessions.add(self)
        super().handshake_complete(event)

    def event_DecryptionNeeded(self, event):
        work = self.factory.work
        self._private_key_work(
            lambda: work.decrypt(event.private_key, event.ciphertext, event.label),
            self.connection.key_decrypted,
            None,
        )

    def event_VerificationNeeded(self, event):
        work = self.factory.work
        self._private_key_work(
            lambda: work.verify(
                event.public_key, event.signature, event.message, handshake.AUTH_SALT_LENGTH
            ),
            self.connection.auth_verified,
            False,
        )

    def _private_key_work(self, submit, answer, failed):
        """Work a stranger made us do: counted against max-handshakes, done
        away from the reactor, and read nothing more until it is back."""
        if not self.factory.start_work():
            self._handle_events(self.connection.fail(BUSY, "too many handshakes in progress"))
            return
        # Read nothing more until the work is back (what was read waits in
        # LineReceiver's buffer, at most one socket read).
        self.pauseProducing()
        working = defer.maybeDeferred(submit)

        def failed_work(failure):
            # Fail closed all the same: the client learns nothing new.
            self.log.error("private-key work failed: {error}", error=failure.type.__name__)
            return failed

        working.addErrback(failed_work)
        working.addCallback(self._work_done, answer)
        working.addErrback(self._application_failed)

    def _work_done(self, result, answer):
        self.factory.end_work()
        if self._closing:
            return
        # Undo our own pause only: the application that the events below may
        # start (a forward, say) can pause reading for reasons of its own.
        self.paused = False
        self.transport.resumeProducing()
        self._handle_events(answer(result))
        if not self._closing:
            self.dataReceived(b"")  # the frames LineReceiver kept meanwhile

    def _application_failed(self, failure):
        """The application raised while the session started: drop it."""
        self.log.failure("application failed to start", failure)
        if self.transport is not None:
            self.transport.abortConnection()

    def _touch(self):
        self.factory.idle_sessions.touch(self)

    def write_application_data(self, data):
        self._touch()
        super().write_application_data(data)

    def idle_expired(self):
        """Called by :class:`IdleSessions` after ``idle_timeout`` of silence."""
        if self._closing:
            return
        self._reason = Failure(IdleTimeout("idle session closed"))
        self._outcome = "idle-timeout"
        # An application still producing has more to send: no END, which
        # would pass what went out for the whole; the close is a truncation.
        if self.connection.can_send and not self._application_producing():
            self.flush()
            self.connection.send_end()
            self._write_out()
        self._close()

    def shut_down(self):
        """The daemon is stopping: finish cleanly if we can."""
        if self.connection.handshake_done:
            self._outcome = "shutdown"
            if not self._application_producing():
                self.close_write()
            # else it sends END itself when done, within the grace period.
        else:
            self._handle_events(self.connection.fail(BUSY, "server is shutting down"))

    def _application_producing(self):
        """The application is the registered producer of this session (the
        message application, a record at a time): it has more to send."""
        producer = getattr(self.transport, "producer", None)
        return producer is not None and producer is self.application

    def _cancel_handshake_timer(self):
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._handshake_timer = None

    def _cancel_timers(self):
        super()._cancel_timers()
        self._cancel_handshake_timer()
        self.factory.idle_sessions.remove(self)

    def connectionLost(self, reason=connectionDone):
        try:
            super().connectionLost(reason)
        finally:
            # Counted out even if the application's connectionLost raised.
            self.factory.connection_ended(self)


class IdleSessions:
    """The idle timeout of every established session, on one timer.

    A DelayedCall per session (with its bound methods, argument tuple and
    keyword dict) was about 600 bytes, an eighth of an idle session; here a
    session is one dict entry.  Every session has the same timeout, so the
    order of last activity is the order of expiry: the dict keeps sessions
    in that order (a touched session moves to the end) and the timer is
    always set for the first.
    """

    log = Logger()

    def __init__(self, reactor, timeout):
        self.reactor = reactor
        self.timeout = timeout
        self._deadlines = {}
        self._call = None

    def __len__(self):
        return len(self._deadlines)

    def __contains__(self, session):
        return session in self._deadlines

    def add(self, session):
        """Start timing ``session`` (its handshake is complete)."""
        self._deadlines.pop(session, None)
        self._deadlines[session] = self.reactor.seconds() + self.timeout
        if self._call is None:
            self._call = self.reactor.callLater(self.timeout, self._expire)

    def touch(self, session):
        """Traffic on ``session``: its idle time starts again (if timed)."""
        if self._deadlines.pop(session, None) is not None:
            self._deadlines[session] = self.reactor.seconds() + self.timeout

    def remove(self, session):
        self._deadlines.pop(session, None)
        if not self._deadlines and self._call is not None:
            # Nothing left to time: no call left behind in the reactor.
            self._call.cancel()
            self._call = None

    def _expire(self):
        self._call = None
        now = self.reactor.seconds()
        while self._deadlines:
            session, deadline = next(iter(self._deadlines.items()))
            if deadline > now:
                if self._call is None:
                    self._call = self.reactor.callLater(deadline - now, self._expire)
                return
            del self._deadlines[session]
            try:
                session.idle_expired()
            except Exception:
                # One session's failure must not stop the others expiring.
                self.log.failure("idle session failed to close")


class SecureChannelFactory(Factory):
    """Serve KX/1, wrapping ``wrapped_factory`` the way TLS wrappers do.

    ``identity`` is a :class:`~keyexchanged.handshake.ServerIdentity`.
    ``authorized_keys``: fingerprints allowed to AUTH (AUTH then required).
    """

    noisy = False  # one log line per connection is ours to write

    protocol = ServerChannelProtocol
    log = Logger()

    def __init__(
        self,
        wrapped_factory,
        identity,
        reactor=None,
        handshake_timeout=10.0,
        idle_timeout=300.0,
        max_connections=1024,
        max_per_source=32,
        authorized_keys=None,
        record_limits=None,
        work=None,
        max_handshakes=64,
        ephemeral_keys=None,
        tickets=None,
        client_key_max_bits=handshake.DEFAULT_CLIENT_KEY_MAX_BITS,
        ipv6_source_prefix=DEFAULT_IPV6_PREFIX,
    ):
        if reactor is None:
            from twisted.internet import reactor
        self.wrapped_factory = wrapped_factory
        self.identity = identity
        #: Where private-key work is done: a workers.WorkerPool (or
        #: InlineWork), or ``None`` to do it in the state machine itself.
        self.work = work
        self.max_handshakes = max_handshakes
        #: KEYs and AUTHs whose private-key work is under way.
        self.working = 0
        #: An ephemeral.EphemeralKeys whose current key every HELLO offers,
        #: or ``None``: no forward secrecy, KEY under the long-term key.
        self.ephemeral_keys = ephemeral_keys
        #: A tickets.TicketIssuer, or ``None``: resumption off.
        self.tickets = tickets
        self.client_key_max_bits = client_key_max_bits
        self.reactor = reactor
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.idle_sessions = IdleSessions(reactor, idle_timeout)
        self.max_connections = max_connections
        self.max_per_source = max_per_source
        self.ipv6_source_prefix = ipv6_source_prefix
        self.authorized_keys = authorized_keys
        self.record_limits = record_limits or {}
        self.connections = set()
        # Counted by host and released by host.  (Twisted's
        # LimitConnectionsByPeer adds by host but removes by (host, port).)
        self.per_source = {}
        self.shutting_down = False
        self._all_closed = None

    def startFactory(self):
        self.wrapped_factory.doStart()

    def stopFactory(self):
        self.wrapped_factory.doStop()

    def buildProtocol(self, addr):
        source = source_key(getattr(addr, "host", None), self.ipv6_source_prefix)
        if self.shutting_down:
            return BusyProtocol("server is shutting down")
        if len(self.connections) >= self.max_connections:
            return BusyProtocol("too many connections")
        if self.per_source.get(source, 0) >= self.max_per_source:
            return BusyProtocol("too many connections from this address")
        connection = self.make_connection()
        protocol = self.protocol(
            connection, self.reactor, self.handshake_timeout, self.idle_timeout
        )
        protocol.factory = self
        protocol.source = source
        self.connections.add(protocol)
        self.per_source[source] = self.per_source.get(source, 0) + 1
        return protocol

    def make_connection(self):
        """The state machine for one new connection."""
        ephemeral = self.ephemeral_keys.current if self.ephemeral_keys is not None else None
        return handshake.ServerConnection(
            self.identity,
            authorized_keys=self.authorized_keys,
            defer_work=self.work is not None,
            ephemeral=ephemeral,
            tickets=self.tickets,
            client_key_max_bits=self.client_key_max_bits,
            **self.record_limits,
        )

    def start_work(self):
        """Count one more private-key operation a peer asked for; False
        when ``max_handshakes`` are under way already."""
        if self.working >= self.max_handshakes:
            return False
        self.working += 1
        return True

    def end_work(self):
        self.working -= 1

    def shutdown(self, grace_period):
        """Stop serving: established sessions get END and ``grace_period``
        seconds to finish; handshakes still under way are told ERROR busy.
        Fires when every connection is closed."""
        self.shutting_down = True
        if not self.connections:
            return defer.succeed(None)
        self._all_closed = defer.Deferred()
        for protocol in list(self.connections):
            protocol.shut_down()
        deadline = self.reactor.callLater(grace_period, self.abort_all)

        def cancel_deadline(result):
            if deadline.active():
                deadline.cancel()
            return result

        self._all_closed.addBoth(cancel_deadline)
        return self._all_closed

    def abort_all(self):
        """Cut every connection now (the grace period is over, or was refused)."""
        for protocol in list(self.connections):
            protocol.transport.abortConnection()

    def build_application(self, address, channel):
        application = self.wrapped_factory.buildProtocol(address)
        if application is not None:
            # What an application may want to know of its peer (and what
            # the forwarding and message applications log).
            application.peer_fingerprint = channel.peer_fingerprint
        return application

    def connection_ended(self, protocol):
        self.connections.discard(protocol)
        remaining = self.per_source.get(protocol.source, 1) - 1
        if remaining:
            self.per_source[protocol.source] = remaining
        else:
            self.per_source.pop(protocol.source, None)
        if self._all_closed is not None and not self.connections:
            self._all_closed, done = None, self._all_closed
            done.callback(None)
        connection = protocol.connection
        self.log.info(
            "connection from {peer} ended: {outcome}; {kind}; {bytes_in} bytes in, "
            "{bytes_out} bytes out, {duration:.3f} s{client}",
            peer=_describe(protocol.transport.getPeer()),
            outcome=protocol._outcome,
            kind=_session_kind(connection),
            bytes_in=connection.bytes_received,
            bytes_out=connection.bytes_sent,
            duration=protocol.duration,
            client=(
                f"; client key {protocol.peer_fingerprint}" if protocol.peer_fingerprint else ""
            ),
        )


class BusyProtocol(Protocol):
    """Sends ERROR busy and closes, before any key work: serves nothing."""

    def __init__(self, detail):
        self.detail = detail

    def connectionMade(self):
        self.transport.write(encode_frame("ERROR", handshake.error_payload(BUSY, self.detail)))
        self.transport.loseConnection()


def _session_kind(connection):
    """Full or resumed, with or without forward secrecy: for the log line."""
    if connection.resumed:
        return "resumed (secrecy bounded by the ticket keys)"
    if connection.forward_secrecy:
        return "full, forward secrecy"
    return "full, no forward secrecy"


def _describe(address):
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None:
        return str(address)
    return f"{host}:{port}"


# -- the client ---------------------------------------------------------------------


class ClientChannelProtocol(ChannelProtocol):
    """Client side: the trust decision, then KEY, then wait for confirmation.

    The server gets ``factory.handshake_timeout`` seconds to send HELLO, and
    as many again to confirm the key after KEY; the time a person takes to
    answer a known-hosts question in between does not count.
    """

    _timer = None

    def connectionMade(self):
        super().connectionMade()
        self._start_timer()

    def _start_timer(self):
        timeout = self.factory.handshake_timeout
        if timeout and not self._closing:
            self._timer = self.reactor.callLater(timeout, self._handshake_expired)

    def _stop_timer(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _handshake_expired(self):
        self._timer = None
        self._handle_events(
            self.connection.fail(
                TIMEOUT, f"no handshake from the server in {self.factory.handshake_timeout:g} s"
            )
        )

    def _cancel_timers(self):
        super()._cancel_timers()
        self._stop_timer()
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self._idle_call = None

    def event_ServerKeyReceived(self, event):
        self._stop_timer()
        checking = defer.maybeDeferred(self.factory.trust.verify, self.factory.server_name, event)
        checking.addCallbacks(self._trusted, self._untrusted)
        checking.addErrback(self._internal_failure)

    def _internal_failure(self, failure):
        """A bug on our side while deciding or sending KEY: end the connection."""
        self.log.failure("client handshake failed", failure)
        if not self._closing:
            self._handle_events(self.connection.fail(INTERNAL, "client error"))

    def _trusted(self, _):
        if self._closing or self.connection.closed:
            return
        events = self.connection.accept_key()
        self.factory.key_accepted(self.connection)
        self._start_timer()
        self._handle_events(events)

    def _untrusted(self, failure):
        if self._closing:
            return None
        # The server (perhaps the man in the middle) learns only that we
        # refused; the full story (which check, which known-hosts line) is
        # the local user's, and travels with the exception unchanged.
        self._handle_events(self.connection.reject_key("the client does not trust this key"))
        if not failure.check(UntrustedKey):
            # A policy that broke (a bug, a file gone) refuses all the same,
            # and keeps what broke as the refusal's cause.
            refusal = UntrustedKey("trust check failed: " + failure.getErrorMessage())
            refusal.__cause__ = failure.value
            failure = Failure(refusal)
        self._reason = failure
        self._outcome = "untrusted-key"
        return None

    def event_TicketReceived(self, event):
        self.factory.ticket_received(event)

    def handshake_complete(self, event):
        self._stop_timer()
        super().handshake_complete(event)
        if self.factory.idle_timeout and not self._closing:
            self._idle_call = self.reactor.callLater(self.factory.idle_timeout, self._idle_expired)
        self.factory.handshake_done(self.application)

    _idle_call = None

    def _touch(self):
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.reset(self.factory.idle_timeout)

    def write_application_data(self, data):
        self._touch()
        super().write_application_data(data)

    def _idle_expired(self):
        self._idle_call = None
        self._handle_events(
            self.connection.fail(
                TIMEOUT, f"the server sent nothing for {self.factory.idle_timeout:g} s"
            )
        )

    def connectionLost(self, reason=connectionDone):
        super().connectionLost(reason)
        self.factory.connection_ended(self, self._reason)


class ChannelClientFactory(ClientFactory):
    """Connect to a KX/1 server and run ``wrapped_factory``'s protocol over it.

    ``trust`` has ``verify(server_name, ServerKeyReceived)`` returning (or
    firing with) anything to accept and raising :class:`UntrustedKey` to
    refuse.  ``handshake`` fires with the application protocol once the
    server has proved it holds the key; it fails with
    :class:`HandshakeFailed` (its ``reason`` says why) otherwise.

    ``tickets`` is a :class:`~keyexchanged.tickets.TicketStore`: a ticket
    for ``server_address`` is used to resume, and the server's new ticket is
    kept there.  ``require_forward_secrecy`` refuses a server without
    ephemeral keys.  ``idle_timeout`` ends a session in which the server has
    sent nothing for that long (``None``: never).
    """

    noisy = False  # one log line per connection is ours to write

    protocol = ClientChannelProtocol

    def __init__(
        self,
        wrapped_factory,
        trust,
        server_name=None,
        identity=None,
        reactor=None,
        observer=None,
        record_limits=None,
        handshake_timeout=30.0,
        require_forward_secrecy=True,
        tickets=None,
        server_address=None,
        idle_timeout=None,
    ):
        if reactor is None:
            from twisted.internet import reactor
        self.wrapped_factory = wrapped_factory
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.trust = trust
        self.server_name = server_name
        self.identity = identity
        self.reactor = reactor
        self.observer = observer
        self.record_limits = record_limits or {}
        self.require_forward_secrecy = require_forward_secrecy
        self.tickets = tickets
        self.server_address = server_address
        #: Whether this connection offered a ticket (RESUME) rather than KEY.
        self.offered_ticket = False
        self.handshake = defer.Deferred()
        self.done = defer.Deferred()

    def buildProtocol(self, addr):
        ticket = None
        if self.tickets is not None and self.server_address is not None:
            ticket = self.tickets.take(*self.server_address)
        self.offered_ticket = ticket is not None
        connection = handshake.ClientConnection(
            identity=self.identity,
            require_forward_secrecy=self.require_forward_secrecy,
            ticket=ticket,
            **self.record_limits,
        )
        protocol = self.protocol(connection, self.reactor)
        protocol.factory = self
        self._protocol = protocol
        return protocol

    def build_application(self, address, channel):
        return self.wrapped_factory.buildProtocol(address)

    def key_accepted(self, connection):
        if self.observer is not None:
            self.observer.key_accepted(connection)

    def ticket_received(self, event):
        if self.tickets is not None and self.server_address is not None:
            self.tickets.add_received(*self.server_address, event)

    def handshake_done(self, application):
        if not self.handshake.called:
            self.handshake.callback(application)

    def connection_ended(self, protocol, reason):
        if not self.handshake.called:
            self.handshake.errback(Failure(HandshakeFailed(reason)))
        if not self.done.called:
            # The exception itself: a Failure handed to callback() would
            # travel down the errback chain and be reported as unhandled.
            self.done.callback(reason.value if isinstance(reason, Failure) else reason)

    def clientConnectionFailed(self, connector, reason):
        self.connection_ended(None, reason)


def _stale_ticket(failure):
    reason = cause_of(failure) if failure.check(HandshakeFailed) else None
    return isinstance(reason, PeerError) and reason.code == STALE_TICKET


def connect(
    reactor,
    endpoint,
    trust,
    application_factory,
    server_name=None,
    identity=None,
    observer=None,
    record_limits=None,
    handshake_timeout=30.0,
    require_forward_secrecy=True,
    tickets=None,
    server_address=None,
    idle_timeout=None,
):
    """Open a KX/1 session through ``endpoint`` running ``application_factory``.

    Returns a Deferred that fires with the application protocol once the
    handshake is complete (the server has proved it holds its key), or
    fails with :class:`HandshakeFailed`.  ``server_name`` is the host name
    or address that was dialled: the known-hosts and certificate checks use
    it.  With ``tickets`` (a TicketStore) and ``server_address`` (the host
    and port it files tickets under), a stored ticket resumes the session;
    when the server calls it stale, the tickets for that server are
    forgotten and one full handshake follows on a new connection.
    """

    def attempt():
        factory = ChannelClientFactory(
            application_factory,
            trust,
            server_name=server_name,
            identity=identity,
            reactor=reactor,
            observer=observer,
            record_limits=record_limits,
            handshake_timeout=handshake_timeout,
            require_forward_secrecy=require_forward_secrecy,
            tickets=tickets,
            server_address=server_address,
            idle_timeout=idle_timeout,
        )
        connecting = endpoint.connect(factory)

        def failed(failure):
            factory.clientConnectionFailed(None, failure)

        connecting.addErrback(failed)
        return factory

    first = attempt()

    def retry(failure):
        if first.offered_ticket and _stale_ticket(failure):
            tickets.forget(*server_address)
            if observer is not None and hasattr(observer, "stale_ticket"):
                observer.stale_ticket()
            return attempt().handshake
        return failure

    return first.handshake.addErrback(retry)


class SessionOpener:
    """Opens KX/1 sessions to one server, each with what they all share:
    the trust policy, our key, the timeouts, the ticket store.

    ``host`` and ``port`` are dialled (giving up after ``timeout`` seconds)
    unless an ``endpoint`` is given; ``host`` is the name the trust checks
    use, and ``(host, port)`` where tickets are kept.  ``timeout`` also
    bounds the handshake.  The other arguments are :func:`connect`'s.
    """

    def __init__(
        self,
        reactor,
        host,
        port,
        trust,
        identity=None,
        timeout=30.0,
        require_forward_secrecy=True,
        tickets=None,
        idle_timeout=None,
        observer=None,
        endpoint=None,
    ):
        if endpoint is None:
            from twisted.internet.endpoints import HostnameEndpoint

            endpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
        self.reactor = reactor
        self.host = host
        self.port = port
        self.endpoint = endpoint
        self.trust = trust
        self.identity = identity
        self.timeout = timeout
        self.require_forward_secrecy = require_forward_secrecy
        self.tickets = tickets
        self.idle_timeout = idle_timeout
        self.observer = observer

    def open(self, application_factory):
        """A new session running ``application_factory``: see :func:`connect`."""
        return connect(
            self.reactor,
            self.endpoint,
            self.trust,
            application_factory,
            server_name=self.host,
            identity=self.identity,
            observer=self.observer,
            handshake_timeout=self.timeout,
            require_forward_secrecy=self.require_forward_secrecy,
            tickets=self.tickets,
            server_address=(self.host, self.port),
            idle_timeout=self.idle_timeout,
        )
