"""The frame ↔ event adapter both sides share: a LineReceiver that reads a
header line, then exactly the payload it announced, and hands both to the
state machine; what the machine reports becomes calls on the application."""

from twisted.internet import error, interfaces
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from keyexchanged.framing import (
    HEADER_MAX,
    INTERNAL,
    MALFORMED_FRAME,
)
from keyexchanged.protocol._exceptions import (
    PeerError,
    ProtocolFailure,
    Truncated,
)
from keyexchanged.protocol._transport import AggregateWrites, SecureTransport


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

    # Thousands of idle sessions each keep one: their state in slots, not
    # in an instance dict.  Twisted's own per-connection attributes
    # (Protocol's transport and connected, LineReceiver's _buffer,
    # _busyReceiving, line_mode and paused) are slots here too, set in
    # __init__.  (In the daemon an instance dict had outgrown the class's
    # shared keys: a table of its own, 1.5 KB a session, a quarter of an
    # idle session.)
    __slots__ = (
        "_abort_call",
        "_buffer",
        "_busyReceiving",
        "_closing",
        "_error_sent",
        "_handshake_seconds",
        "_length",
        "_outcome",
        "_payload",
        "_reason",
        "_started",
        "_verb",
        "_writes",
        "application",
        "connected",
        "connection",
        "line_mode",
        "paused",
        "peer_fingerprint",
        "transport",
    )

    # Each side provides, as it likes (attributes, or properties that read
    # a shared factory): ``reactor``; ``_build_application(address,
    # peer_fingerprint)``, the application protocol for this session, or
    # None to end it at once; ``_ended(protocol, summary)``, called once,
    # when the connection is lost.

    def __init__(self, connection):
        self.connection = connection
        # What Twisted's Protocol and LineReceiver keep as class defaults.
        self.transport = None
        self.connected = 0
        self.line_mode = 1
        self._buffer = b""
        self._busyReceiving = False
        self.paused = False
        self.application = None
        self.peer_fingerprint = None
        self._verb = None
        self._length = 0
        # A bytearray only while a payload is being read: an idle session
        # holds no buffer.
        self._payload = b""
        # Made on the first write: a session that never writes holds none.
        self._writes = None
        self._closing = False
        self._outcome = None
        self._started = None
        self._reason = None
        self._error_sent = None
        self._handshake_seconds = None
        self._abort_call = None

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
        # One write per frame: joining them here would copy every byte
        # once more before Twisted joins its send buffer anyway.
        frames = self.connection.frames_to_send()
        if frames and self.transport is not None:
            self.transport.writeSequence(frames)

    def event_ErrorReceived(self, event):
        self._outcome = event.code
        self._reason = Failure(PeerError(event.code, event.detail))

    def event_ProtocolFailed(self, event):
        self._outcome = self._error_sent = event.code
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
        self._handshake_seconds = self.duration
        self.application = self._build_application(self.transport.getPeer(), self.peer_fingerprint)
        if self.application is None:
            self.close_write()
            return
        self.application.makeConnection(SecureTransport(self))

    # -- writing application data -------------------------------------------------

    def write_application_data(self, data):
        if not data or self._closing or not self.connection.can_send:
            return
        if self._writes is None:
            self._writes = AggregateWrites(self._seal_application_data, self.reactor)
        self._writes.write(data)

    @property
    def pending_length(self):
        """Bytes the application wrote that are not sealed yet."""
        return 0 if self._writes is None else len(self._writes)

    def flush(self):
        """Seal what the application wrote: whole 64 KiB records, then the rest."""
        if self._writes is not None and self.connection.can_send:
            self._writes.flush()

    def _seal_application_data(self, data):
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
        if self._writes is not None:
            self._writes.cancel()

    # -- the end ---------------------------------------------------------------------

    def connectionLost(self, reason=connectionDone):
        try:
            self._lost(reason)
        finally:
            # Reported even if the application's connectionLost raised: the
            # factory counts the session out and logs how it went.
            self._ended(self, self.summary())

    def _lost(self, reason):
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

    def summary(self):
        """How the session went, so far: a :class:`SessionSummary`."""
        connection = self.connection
        return SessionSummary(
            peer=_describe(self.transport.getPeer()) if self.transport is not None else None,
            outcome=self._outcome,
            reason=self._reason,
            resumed=connection.resumed,
            forward_secrecy=connection.forward_secrecy,
            bytes_in=connection.bytes_received,
            bytes_out=connection.bytes_sent,
            duration=self.duration,
            peer_fingerprint=self.peer_fingerprint,
            handshake_seconds=self._handshake_seconds,
            error_sent=self._error_sent,
            post_quantum=connection.post_quantum_session,
            record_cipher=connection.record_cipher,
        )

    @property
    def duration(self):
        if self._started is None:
            return 0.0
        return self.reactor.seconds() - self._started


class SessionSummary:
    """How one session went, in one object: what a channel reports to its
    factory when its connection is lost, and the server logs.

    @ivar peer: the peer's address, ``host:port``.
    @ivar outcome: ``ok``, ``truncated``, ``closed``, ``idle-timeout``,
        ``shutdown``, ``untrusted-key``, or the ERROR code either side sent.
    @ivar reason: the Failure the application was told in connectionLost.
    @ivar resumed: whether the session came from a ticket.
    @ivar forward_secrecy: whether its secret went to an ephemeral key.
    @ivar bytes_in: bytes received, frames and all.
    @ivar bytes_out: bytes sent.
    @ivar duration: seconds from connectionMade to the end.
    @ivar peer_fingerprint: the client's key when it authenticated (on the
        server), the server's (on the client), else ``None``.
    @ivar post_quantum: whether its keys depend on an ML-KEM secret (KX/1
        revision 3), and ``record_cipher`` the cipher of its records.
    """

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "duration",
        "error_sent",
        "forward_secrecy",
        "handshake_seconds",
        "outcome",
        "peer",
        "peer_fingerprint",
        "post_quantum",
        "reason",
        "record_cipher",
        "resumed",
    )

    def __init__(
        self,
        peer,
        outcome,
        reason,
        resumed,
        forward_secrecy,
        bytes_in,
        bytes_out,
        duration,
        peer_fingerprint,
        handshake_seconds=None,
        error_sent=None,
        post_quantum=False,
        record_cipher="aes-256-gcm",
    ):
        self.peer = peer
        self.outcome = outcome
        self.reason = reason
        self.resumed = resumed
        self.forward_secrecy = forward_secrecy
        self.bytes_in = bytes_in
        self.bytes_out = bytes_out
        self.duration = duration
        self.peer_fingerprint = peer_fingerprint
        self.handshake_seconds = handshake_seconds
        #: The code of the ERROR this side sent, if it sent one.
        self.error_sent = error_sent
        self.post_quantum = post_quantum
        self.record_cipher = record_cipher

    @property
    def handshake_kind(self):
        """``full`` or ``resumed``: the label metrics and JSON logs use."""
        return "resumed" if self.resumed else "full"

    @property
    def kind(self):
        """Full or resumed, with or without forward secrecy, and post-quantum
        with its record cipher: for the log line."""
        if self.resumed:
            kind = "resumed (secrecy bounded by the ticket keys)"
        elif self.forward_secrecy:
            kind = "full, forward secrecy"
        else:
            kind = "full, no forward secrecy"
        if self.post_quantum:
            kind += f", post-quantum, {self.record_cipher}"
        return kind


def _describe(address):
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None:
        return str(address)
    return f"{host}:{port}"
