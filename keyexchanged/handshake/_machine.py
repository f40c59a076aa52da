"""What both sides share: the states, the table, records, END, UPDATE, ERROR.

Each side's ``RULES`` table maps ``state → {verb: handler | Refuse | WAIT}``;
:class:`_Connection` consults it on the header line, before the payload is
read, and nothing else decides which frame is allowed when.
"""

import enum
from typing import ClassVar

from keyexchanged import schedule
from keyexchanged.framing import (
    BAD_RECORD,
    RECORD_DATA_MAX,
    UNEXPECTED_FRAME,
    FrameDecoder,
    ProtocolError,
    encode_frame,
    parse_header,
)
from keyexchanged.handshake._decoding import error_payload, parse_error_payload
from keyexchanged.handshake._events import (
    DataReceived,
    EndReceived,
    ErrorReceived,
    ProtocolFailed,
)
from keyexchanged.records import MAX_BYTES_PER_KEY, MAX_RECORDS_PER_KEY, BadRecord

PROTOCOL_NAME = "kx/1"
NONCE_LENGTH = 32
SECRET_LENGTH = 32
#: PSS salt length for AUTH signatures, fixed by the protocol.
AUTH_SALT_LENGTH = schedule.PSS_SALT_LENGTH


class State(enum.Enum):
    AWAIT_HELLO = "await-hello"  # client
    TRUST = "trust"  # client: deciding on the server's key
    AWAIT_CONFIRM = "await-confirm"  # client: KEY or RESUME sent, no record opened yet
    AWAIT_KEY = "await-key"  # server: HELLO sent
    WORKING = "working"  # server: private-key work elsewhere (KEY or AUTH)
    AWAIT_AUTH = "await-auth"  # server that requires AUTH: keys agreed
    AWAIT_FIRST = "await-first"  # server: keys agreed, the client's first record next
    AWAIT_FIRST_RESUMED = "await-first-resumed"  # the same after RESUME: no AUTH
    OPEN = "open"
    CLOSED = "closed"


class Refuse:
    """A table entry: this verb, in this state, ends the connection with ``code``."""

    __slots__ = ("code", "detail")

    def __init__(self, code, detail):
        self.code = code
        self.detail = detail


#: A table entry: a record that arrives while private-key work is away
#: waits for it (a few at most), and is judged in the state that follows.
WAIT = object()

_RECORD_VERBS = frozenset({"MSG", "END", "UPDATE", "AUTH", "TICKET", "NEXTKEY"})


def _queue(items, item):
    """Append ``item`` to ``items``, a list, or ``()`` when empty.

    A connection keeps several queues that are empty nearly all its life;
    an empty tuple is shared, an empty list is 56 bytes per queue.
    """
    if items:
        items.append(item)
        return items
    return [item]


class _Connection:
    """What both sides share: framing, dispatch by the table, records, END,
    UPDATE and ERROR."""

    #: state -> {verb: handler(self, verb, payload) | Refuse | WAIT}; each side's.
    RULES: ClassVar[dict] = {}

    # Thousands of idle sessions each keep one: slots, not a dict (a
    # connection's dict was ~800 bytes, a fifth of an idle session).
    __slots__ = (
        "_decoder",
        "_events",
        "_max_bytes",
        "_max_records",
        "_opener",
        "_outgoing",
        "_sealer",
        "_waiting",
        "_was_open",
        "bytes_received",
        "bytes_sent",
        "received_end",
        "records_sent",
        "resumed",
        "sent_end",
        "state",
        "transcript_hash",
    )

    #: Records that may wait while private-key work is away.  (The Twisted
    #: adapter stops reading meanwhile, so only users of ``receive_data`` —
    #: a whole buffer at once — ever need the queue.)
    MAX_WAITING_RECORDS = 4

    def __init__(self, max_records=MAX_RECORDS_PER_KEY, max_bytes=MAX_BYTES_PER_KEY):
        self._max_records = max_records
        self._max_bytes = max_bytes
        # Frames to send and events to report: a list only while there are
        # some, so that an idle session holds none (see _queue).
        self._outgoing = ()
        self._events = ()
        self._waiting = ()
        # Made on the first receive_data: the Twisted adapter reads frames
        # itself, and a decoder per idle session would be memory for nothing.
        self._decoder = None
        self._sealer = None
        self._opener = None
        self.state = None
        self._was_open = False
        self.sent_end = False
        self.received_end = False
        self.transcript_hash = None
        #: True for a session resumed from a ticket.
        self.resumed = False
        #: Counts for the connection log line and the benchmarks.
        self.bytes_received = 0
        self.bytes_sent = 0
        self.records_sent = 0

    # -- what the adapter calls -------------------------------------------------

    def receive_data(self, data):
        """Feed bytes from the wire; return the events they caused."""
        self.bytes_received += len(data)
        if self.state is not State.CLOSED:
            if self._decoder is None:
                self._decoder = FrameDecoder(self._frame_received, self._header_received)
            try:
                self._decoder.feed(data)
            except ProtocolError as error:
                self._fail(error)
        return self._take_events()

    def receive_header(self, line):
        """Adapter entry for a header line (CRLF removed).

        Returns ``(verb, length)`` of the payload to read next, or ``None``
        when the header was refused (the events say why).
        """
        self.bytes_received += len(line) + 2
        if self.state is State.CLOSED:
            return None
        try:
            verb, length = parse_header(line)
            self._header_received(verb, length)
        except ProtocolError as error:
            self._fail(error)
            return None
        return verb, length

    def receive_frame(self, verb, payload):
        """Adapter entry for a complete payload of a header it had accepted."""
        self.bytes_received += len(payload)
        if self.state is not State.CLOSED:
            try:
                self._frame_received(verb, payload)
            except ProtocolError as error:
                self._fail(error)
        return self._take_events()

    def next_events(self):
        return self._take_events()

    def data_to_send(self):
        """Bytes queued for the wire since the last call."""
        return b"".join(self.frames_to_send())

    def frames_to_send(self):
        """The frames queued for the wire since the last call, as a list."""
        frames, self._outgoing = self._outgoing, ()
        self.bytes_sent += sum(map(len, frames))
        return frames

    @property
    def closed(self):
        """True once an ERROR has passed either way: nothing more will flow."""
        return self.state is State.CLOSED

    @property
    def finished(self):
        """True once both ENDs have passed: the TCP connection may close."""
        return self.sent_end and self.received_end

    @property
    def handshake_done(self):
        return self.state is State.OPEN or (self.state is State.CLOSED and self._was_open)

    @property
    def can_send(self):
        return self._sealer is not None and not self.sent_end and not self.closed

    def send_data(self, data):
        """Seal application data as MSG records of at most 64 KiB each."""
        self._check_can_send()
        view = memoryview(data)
        for start in range(0, len(view), RECORD_DATA_MAX):
            self._seal("MSG", view[start : start + RECORD_DATA_MAX])
        if not view:
            self._seal("MSG", b"")
        return self._take_events()

    def send_end(self):
        """Say that we will send no more records."""
        self._check_can_send()
        self._seal("END", b"")
        self.sent_end = True
        return self._take_events()

    def fail(self, code, detail):
        """End the connection with ERROR ``code`` (a timeout, say)."""
        if self.state is not State.CLOSED:
            self._fail(ProtocolError(code, detail))
        return self._take_events()

    def connection_lost(self):
        """The transport is gone: let go of what the connection still holds."""
        if self.state is not State.CLOSED:
            self._enter(State.CLOSED)
        self._stop_decoding()

    # -- the table --------------------------------------------------------------

    def _rule(self, verb):
        rule = self.RULES.get(self.state, {}).get(verb)
        if rule is None:
            raise ProtocolError(
                UNEXPECTED_FRAME, f"{verb} not expected in state {self.state.value}"
            )
        if isinstance(rule, Refuse):
            raise ProtocolError(rule.code, rule.detail)
        return rule

    def _header_received(self, verb, length):
        if verb == "ERROR":
            return
        rule = self._rule(verb)
        if verb in _RECORD_VERBS and self.received_end:
            raise ProtocolError(UNEXPECTED_FRAME, f"{verb} after END")
        if rule is not WAIT:
            self._check_length(verb, length)

    def _check_length(self, verb, length):
        """Exact lengths some verbs must have (KEY: the key's size)."""

    def _frame_received(self, verb, payload):
        if verb == "ERROR":
            code, detail = parse_error_payload(payload)
            self._enter(State.CLOSED)
            self._stop_decoding()
            self._event(ErrorReceived(code, detail))
            return
        rule = self._rule(verb)
        if rule is WAIT:
            if len(self._waiting) >= self.MAX_WAITING_RECORDS:
                raise ProtocolError(UNEXPECTED_FRAME, "too many records before the key was agreed")
            self._waiting = _queue(self._waiting, (verb, payload))
            return
        rule(self, verb, payload)

    def _replay_waiting(self):
        """Judge the records that waited for private-key work, in order."""
        waiting, self._waiting = self._waiting, ()
        for verb, record in waiting:
            if self.state is State.CLOSED:
                break
            try:
                self._header_received(verb, len(record))
                self._frame_received(verb, record)
            except ProtocolError as error:
                self._fail(error)

    def _enter(self, state):
        if state is State.OPEN:
            self._was_open = True
        if state is State.CLOSED:
            self._release()
        self.state = state

    def _release(self):
        """Hook: the connection is over; drop what it borrowed."""

    # -- records -----------------------------------------------------------------

    def _open(self, verb, payload):
        try:
            plaintext = self._opener.open(verb, payload)
        except BadRecord:
            raise ProtocolError(BAD_RECORD, f"{verb} record failed to open") from None
        self._record_opened(verb)
        return plaintext

    def _record_opened(self, verb):
        """Hook: a record from the peer opened (what completes a handshake)."""

    def _on_msg(self, verb, payload):
        data = self._open("MSG", payload)
        if data:
            self._event(DataReceived(data))

    def _on_end(self, verb, payload):
        self._open("END", payload)
        self.received_end = True
        self._event(EndReceived())

    def _on_update(self, verb, payload):
        try:
            self._opener.open_update(payload)
        except BadRecord:
            raise ProtocolError(BAD_RECORD, "UPDATE record failed to open") from None
        self._record_opened(verb)

    # -- inside ---------------------------------------------------------------

    def _check_can_send(self):
        if self._sealer is None:
            raise RuntimeError("no keys yet: the handshake has not got that far")
        if self.sent_end:
            raise RuntimeError("END was sent: no more records")
        if self.state is State.CLOSED:
            raise RuntimeError("the connection is closed")

    def _seal(self, verb, plaintext):
        if self._sealer.needs_update(len(plaintext)):
            self._send_frame("UPDATE", self._sealer.seal_update())
        self._send_frame(verb, self._sealer.seal(verb, plaintext))
        self.records_sent += 1

    def _send_frame(self, verb, payload):
        self._outgoing = _queue(self._outgoing, encode_frame(verb, payload))

    def _event(self, event):
        self._events = _queue(self._events, event)

    def _take_events(self):
        events, self._events = self._events, ()
        return events or []

    def _stop_decoding(self):
        if self._decoder is not None:
            self._decoder.stop()

    def _fail(self, error):
        self._enter(State.CLOSED)
        self._stop_decoding()
        self._waiting = ()
        # What was queued before the error goes out first (the key
        # confirmation, say): the answer to a stream must not depend on how
        # the stream was cut.  After the ERROR nothing more is said.
        self._outgoing = _queue(
            self._outgoing, encode_frame("ERROR", error_payload(error.code, error.detail))
        )
        self._event(ProtocolFailed(error.code, error.detail))
