"""The KX/1 state machines, free of I/O (docs/spec/kx1.rst §2–§11).

:class:`ServerConnection` and :class:`ClientConnection` take bytes (or,
from the Twisted adapter, header lines and payloads) and give back events
and bytes to send.  They never touch a socket or a reactor; the clock and
the randomness are handed in.  That is what lets the tests drive them byte
for byte with the vector files, and lets the Twisted protocol, the
benchmarks and the fuzzer share them.

Which frame a side accepts in which state is decided in ONE place: the
``RULES`` table of each side, ``state → {verb: handler or refusal}``.  A
verb missing from a state's row is ``unexpected-frame``; a refusal names
its own code (``auth-required``, say).  The decision is made on the header
line, before the payload is read.  Adding a verb is a row entry and its
handler.

What a session looks like::

    S: HELLO            {"protocol": "kx/1", "key": ..., "nonce": ..., "ephemeral": ...}
    C: KEY | RESUME     RSA-OAEP(secret) under the ephemeral key, or a ticket
    C: AUTH | MSG       the client's first record, at once
    S: MSG              key confirmation: an empty record, at once
    S: TICKET (MSG | TICKET)* END          sealed with server_key
    C: MSG* END                            sealed with client_key

The server seals its first record, an empty MSG, as soon as the keys are
agreed (after AUTH when AUTH is required): opening it is the client's key
confirmation.  It starts the application only when the client's first
record has opened: then it knows who the client is (AUTH or not), and,
after RESUME, that the client holds the resumption secret.  The session's
TICKET follows at that moment.

Errors are :class:`~keyexchanged.framing.ProtocolError`; a connection that
raises one sends ERROR and is over.  Details in ERROR frames and in events
are public text: no secret is ever put in one.
"""

import base64
import enum
import json
import secrets
import time
from typing import ClassVar

from keyexchanged import keys, schedule
from keyexchanged.errors import StaleTicket
from keyexchanged.framing import (
    AUTH_FAILED,
    AUTH_REQUIRED,
    BAD_RECORD,
    ERROR_CODES,
    MALFORMED_FRAME,
    MAX_PAYLOAD,
    NO_FORWARD_SECRECY,
    RECORD_DATA_MAX,
    STALE_TICKET,
    UNEXPECTED_FRAME,
    UNSUPPORTED_PROTOCOL,
    UNTRUSTED_KEY,
    WEAK_KEY,
    FrameDecoder,
    ProtocolError,
    encode_frame,
    parse_header,
)
from keyexchanged.records import (
    MAX_BYTES_PER_KEY,
    MAX_RECORDS_PER_KEY,
    BadRecord,
    RecordOpener,
    RecordSealer,
)
from keyexchanged.rsa import DecryptionError, FaultError
from keyexchanged.schedule import derive_keys, transcript_hash

__all__ = [
    "ClientConnection",
    "DataReceived",
    "DecryptionNeeded",
    "EndReceived",
    "EphemeralOffer",
    "ErrorReceived",
    "HandshakeComplete",
    "ProtocolFailed",
    "ServerConnection",
    "ServerIdentity",
    "ServerKeyReceived",
    "TicketReceived",
    "VerificationNeeded",
    "derive_keys",
]

PROTOCOL_NAME = "kx/1"
NONCE_LENGTH = 32
SECRET_LENGTH = 32
#: PSS salt length for AUTH signatures, fixed by the protocol.
AUTH_SALT_LENGTH = schedule.PSS_SALT_LENGTH

#: What a client accepts as a server key (§2).  Below 2048 bits RSA is
#: within reach; above 8192 a single operation is slow enough to be a
#: denial of service.
MIN_KEY_BITS = 2048
MAX_KEY_BITS = 8192
#: e = 3 and friends invite small-exponent attacks on bad padding; a huge e
#: makes every public operation slow.
MIN_EXPONENT_EXCLUSIVE = 2**16
MAX_EXPONENT_EXCLUSIVE = 2**256

#: What a server accepts as a client key in AUTH (§8): verifying costs a
#: public-key operation on a key a stranger chose, so it is bounded harder
#: than a server key.  e = 65537 makes the cost ~17 squarings.
DEFAULT_CLIENT_KEY_MAX_BITS = 4096
CLIENT_KEY_EXPONENT = 65537

#: §10.3: clocks disagree; an ephemeral key's ``expires`` may be this far
#: in the past, and this far beyond the one-day maximum, and still pass.
CLOCK_SKEW = 300
MAX_EPHEMERAL_AHEAD = 86400

#: ERROR details are short public text.
_DETAIL_MAX = 200


# -- events -----------------------------------------------------------------


class Event:
    """Something the application or the adapter should know about."""

    __slots__ = ()

    def __eq__(self, other):
        return type(self) is type(other) and all(
            getattr(self, name) == getattr(other, name) for name in self.__slots__
        )

    def __repr__(self):
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"


class EphemeralOffer(Event):
    """Client side: the ephemeral key a HELLO offered, already checked
    (size, exponent, signature, expiry): what ``--explain`` shows."""

    __slots__ = ("bits", "expires", "fingerprint", "public_key")

    def __init__(self, public_key, fingerprint, expires):
        self.public_key = public_key
        self.fingerprint = fingerprint
        self.expires = expires
        self.bits = public_key.n.bit_length()


class ServerKeyReceived(Event):
    """Client side: HELLO arrived and is well formed; decide whether to trust
    its long-term key.  Answer with :meth:`ClientConnection.accept_key` or
    :meth:`ClientConnection.reject_key`.  ``ephemeral`` is an
    :class:`EphemeralOffer` (checked already) or ``None``."""

    __slots__ = ("certificates", "der", "ephemeral", "fingerprint", "public_key")

    def __init__(self, public_key, der, fingerprint, certificates, ephemeral=None):
        self.public_key = public_key
        self.der = der
        self.fingerprint = fingerprint
        self.certificates = certificates
        self.ephemeral = ephemeral


class DecryptionNeeded(Event):
    """Server with ``defer_work``: the KEY's private-key work is ours to do
    elsewhere (a worker process); answer with
    :meth:`ServerConnection.key_decrypted`.  ``private_key`` is the key to
    decrypt with (the ephemeral key its HELLO offered, or the long-term
    key); ``ciphertext`` is already reduced below n; ``label`` is the OAEP
    label (the HELLO payload)."""

    __slots__ = ("ciphertext", "label", "private_key")

    def __init__(self, private_key, ciphertext, label):
        self.private_key = private_key
        self.ciphertext = ciphertext
        self.label = label


class VerificationNeeded(Event):
    """Server with ``defer_work``: an AUTH signature to check elsewhere,
    on a key the client chose; answer with :meth:`ServerConnection.auth_verified`."""

    __slots__ = ("message", "public_key", "signature")

    def __init__(self, public_key, signature, message):
        self.public_key = public_key
        self.signature = signature
        self.message = message


class HandshakeComplete(Event):
    """The keys are confirmed; application data may flow.

    On the server ``peer_fingerprint`` is the client's key when it
    authenticated (by AUTH, or by the ticket it resumed with), else
    ``None``; on the client it is the server's.  ``resumed`` says whether
    the session came from a ticket.
    """

    __slots__ = ("peer_fingerprint", "resumed")

    def __init__(self, peer_fingerprint=None, resumed=False):
        self.peer_fingerprint = peer_fingerprint
        self.resumed = resumed


class TicketReceived(Event):
    """Client side: the server sent a ticket for resuming later.  ``secret``
    is this session's resumption secret, to be kept with it."""

    __slots__ = ("lifetime", "secret", "server_fingerprint", "ticket")

    def __init__(self, ticket, lifetime, secret, server_fingerprint):
        self.ticket = ticket
        self.lifetime = lifetime
        self.secret = secret
        self.server_fingerprint = server_fingerprint

    def __repr__(self):  # the secret stays out of logs and test output
        return f"TicketReceived(<{len(self.ticket)} bytes>, lifetime={self.lifetime})"


class DataReceived(Event):
    __slots__ = ("data",)

    def __init__(self, data):
        self.data = data


class EndReceived(Event):
    """The peer will send no more records."""

    __slots__ = ()


class ErrorReceived(Event):
    """The peer sent ERROR; the connection is over."""

    __slots__ = ("code", "detail")

    def __init__(self, code, detail):
        self.code = code
        self.detail = detail


class ProtocolFailed(Event):
    """We sent ERROR (queued in :meth:`data_to_send`); the connection is over."""

    __slots__ = ("code", "detail")

    def __init__(self, code, detail):
        self.code = code
        self.detail = detail


# -- small strict decoders ----------------------------------------------------


def _b64decode(text, what, code=MALFORMED_FRAME):
    """Strict, canonical RFC 4648 base64: one spelling per byte string."""
    if not isinstance(text, str):
        raise ProtocolError(code, f"{what} is not a string")
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raise ProtocolError(code, f"{what} is not valid base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise ProtocolError(code, f"{what} is not canonical base64")
    return raw


def _no_duplicates(pairs):
    obj = {}
    for name, value in pairs:
        if name in obj:
            # Two parsers could pick different copies; refuse the ambiguity.
            raise ValueError("duplicate member")
        obj[name] = value
    return obj


def _json_object(payload, code, what):
    try:
        obj = json.loads(bytes(payload).decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError):
        # RecursionError: 64 KiB of "[" nests deeper than the parser's stack.
        raise ProtocolError(code, f"{what} is not a JSON object") from None
    if not isinstance(obj, dict):
        raise ProtocolError(code, f"{what} is not a JSON object")
    return obj


def _integer(value):
    """A JSON integer: ``true`` is an int to Python, not to the protocol."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_public_key(public_key, code, max_bits=MAX_KEY_BITS, exponent=None):
    """Refuse keys outside the protocol's sizes and exponents."""
    bits = public_key.n.bit_length()
    if not MIN_KEY_BITS <= bits <= max_bits:
        raise ProtocolError(code, f"RSA modulus of {bits} bits")
    e = public_key.e
    if exponent is not None:
        if e != exponent:
            raise ProtocolError(code, f"RSA public exponent is not {exponent}")
    elif e % 2 == 0 or not MIN_EXPONENT_EXCLUSIVE < e < MAX_EXPONENT_EXCLUSIVE:
        raise ProtocolError(code, "RSA public exponent out of range")


def _printable(text):
    text = "".join(c if c.isprintable() else "?" for c in str(text))
    return text[:_DETAIL_MAX]


def error_payload(code, detail):
    """The ERROR payload: fits its frame by construction, whatever ``detail``
    holds (JSON escapes a non-ASCII character into up to 12 bytes)."""
    detail = _printable(detail)
    while True:
        payload = json.dumps({"error": code, "detail": detail}).encode("ascii")
        if len(payload) <= MAX_PAYLOAD["ERROR"]:
            return payload
        detail = detail[: len(detail) // 2]


def parse_error_payload(payload):
    """Read a peer's ERROR leniently: it ends the connection whatever it says,
    and nothing in it may raise."""
    try:
        obj = _json_object(payload, MALFORMED_FRAME, "ERROR")
    except ProtocolError:
        return "malformed-frame", "unreadable ERROR frame"
    code = obj.get("error")
    if not isinstance(code, str) or code not in ERROR_CODES:
        code = "unknown"
    detail = obj.get("detail", "")
    if not isinstance(detail, str):
        detail = "(detail is not a string)"
    return code, _printable(detail)


# -- the per-key part of a server ------------------------------------------------


class ServerIdentity:
    """Everything about the server's long-term key that is the same for
    every connection: its DER, fingerprint, certificate chain, and the HELLO
    around the nonce (made once per ephemeral key, not per connection)."""

    def __init__(self, private_key, certificates=()):
        self.private_key = private_key
        self.public_key = private_key.public_key()
        self.der = keys.public_key_to_der(self.public_key)
        self.key_b64 = base64.b64encode(self.der).decode("ascii")
        self.fingerprint = keys.fingerprint(self.public_key)
        self.key_bytes = (self.public_key.n.bit_length() + 7) // 8
        self.certificates = tuple(certificates)
        self.certificates_b64 = [base64.b64encode(c).decode("ascii") for c in self.certificates]
        self._hello_parts = self._split_hello(None)
        # The HELLO around the nonce for the ephemeral key offered last:
        # one key is offered at a time, so one entry is the whole cache.
        self._ephemeral_hello = (None, None)

    def _split_hello(self, ephemeral):
        # The HELLO JSON is the same for every connection but for the nonce:
        # serialize it once, around a marker, and splice each nonce in.
        # (Base64 needs no JSON escaping, so the bytes equal json.dumps's.)
        marker = "\0nonce\0"
        hello = {"protocol": PROTOCOL_NAME, "key": self.key_b64, "nonce": marker}
        if self.certificates_b64:
            hello["certificates"] = self.certificates_b64
        if ephemeral is not None:
            hello["ephemeral"] = ephemeral.member
        head, tail = json.dumps(hello).split(json.dumps(marker)[1:-1])
        return head.encode("utf-8"), tail.encode("utf-8")

    def hello_payload(self, nonce, ephemeral=None):
        """The HELLO payload for ``nonce``, offering ``ephemeral`` (an
        :class:`~keyexchanged.ephemeral.EphemeralKey`) when given."""
        if ephemeral is None:
            head, tail = self._hello_parts
        else:
            cached, parts = self._ephemeral_hello
            if cached is not ephemeral:
                parts = self._split_hello(ephemeral)
                self._ephemeral_hello = (ephemeral, parts)
            head, tail = parts
        return head + base64.b64encode(nonce) + tail


# -- the common machinery ---------------------------------------------------------


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

_RECORD_VERBS = frozenset({"MSG", "END", "UPDATE", "AUTH", "TICKET"})


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
        data = b"".join(self._outgoing)
        self._outgoing = ()
        self.bytes_sent += len(data)
        return data

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

    _was_open = False

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


# -- the server ---------------------------------------------------------------------


class ServerConnection(_Connection):
    """One accepted connection, server side.

    ``identity``: the :class:`ServerIdentity`.  ``ephemeral``: the
    :class:`~keyexchanged.ephemeral.EphemeralKey` this connection's HELLO
    offers (``None``: no forward secrecy, KEY under the long-term key).
    ``tickets``: a :class:`~keyexchanged.tickets.TicketIssuer`, or ``None``
    when resumption is off.  ``authorized_keys``: when not ``None``, a
    container of client key fingerprints, and AUTH is required.
    ``defer_work``: private-key-sized work (KEY decryption, AUTH
    verification) is handed out as events instead of done here.
    ``random`` draws bytes (the nonce and the implicit-rejection secret);
    tests replace it to replay the vectors.
    """

    def __init__(
        self,
        identity,
        authorized_keys=None,
        random=secrets.token_bytes,
        defer_work=False,
        ephemeral=None,
        tickets=None,
        client_key_max_bits=DEFAULT_CLIENT_KEY_MAX_BITS,
        **limits,
    ):
        super().__init__(**limits)
        self.identity = identity
        self.authorized_keys = authorized_keys
        self._random = random
        self.defer_work = defer_work
        self.ephemeral = ephemeral
        self.tickets = tickets
        self.client_key_max_bits = client_key_max_bits
        self._hello = None
        self._nonce = None
        self._resumption_secret = None
        self._pending = None  # what the private-key work away will complete
        self.client_fingerprint = None
        self.forward_secrecy = ephemeral is not None
        self._holds_ephemeral = False
        self.state = State.AWAIT_KEY

    def start(self):
        """Queue HELLO; call once the connection is accepted."""
        self._nonce = self._random(NONCE_LENGTH)
        self._hello = self.identity.hello_payload(self._nonce, self.ephemeral)
        if self.ephemeral is not None:
            self.ephemeral.acquire()
            self._holds_ephemeral = True
        self._send_frame("HELLO", self._hello)

    # -- KEY ---------------------------------------------------------------------

    def _decrypting_key(self):
        if self.ephemeral is not None:
            return self.ephemeral.private_key
        return self.identity.private_key

    def _check_length(self, verb, length):
        if verb == "KEY":
            k = self.ephemeral.key_bytes if self.ephemeral is not None else self.identity.key_bytes
            if length != k:
                raise ProtocolError(MALFORMED_FRAME, f"KEY must be {k} bytes, not {length}")

    def _on_key(self, verb, payload):
        # Implicit rejection (§3): the replacement is drawn every time,
        # before decrypting, so that a failed decoding does no extra work and
        # the server goes on exactly as after a good one.  The client learns
        # of a bad KEY only when it cannot open our first record.
        fallback = self._random(SECRET_LENGTH)
        private_key = self._decrypting_key()
        self._release_ephemeral()
        if private_key is None:
            # The offered key is gone (only when its KEY came later than a
            # handshake timeout after rotation): nothing can decrypt it.
            self._key_agreed(payload, None, fallback, False)
            return
        # A ciphertext at or above n would be refused before any private-key
        # work, and answered a millisecond sooner than any other KEY.  That
        # says nothing secret, but the protocol wants every KEY to cost the
        # same: decrypt c mod n instead, and throw the result away.
        n = private_key.n
        value = int.from_bytes(payload, "big")
        in_range = value < n
        ciphertext = payload if in_range else (value % n).to_bytes(len(payload), "big")
        if self.defer_work:
            self._pending = (payload, fallback, in_range)
            self._enter(State.WORKING)
            self._event(DecryptionNeeded(private_key, ciphertext, self._hello))
            return
        try:
            secret = private_key.decrypt_oaep(ciphertext, label=self._hello)
        except (DecryptionError, FaultError):
            secret = None
        self._key_agreed(payload, secret, fallback, in_range)

    def key_decrypted(self, secret):
        """The answer to :class:`DecryptionNeeded`: the OAEP plaintext, or
        ``None`` when decoding failed (implicit rejection follows, exactly
        as for a KEY decrypted here).  Returns the events that follow."""
        if self.state is State.WORKING and self._pending is not None and len(self._pending) == 3:
            (payload, fallback, in_range), self._pending = self._pending, None
            self._key_agreed(payload, secret, fallback, in_range)
            self._replay_waiting()
        return self._take_events()

    def _key_agreed(self, payload, secret, fallback, in_range):
        good = in_range and secret is not None and len(secret) == SECRET_LENGTH
        secret = secret if good else fallback
        self._derive(secret, payload, resumed=False)
        if self.authorized_keys is not None:
            self._enter(State.AWAIT_AUTH)
        else:
            self._enter(State.AWAIT_FIRST)
            self._confirm()

    def _derive(self, ikm, payload, resumed):
        self.transcript_hash = transcript_hash(self._hello, payload)
        client_key, server_key = derive_keys(ikm, self._nonce, self.transcript_hash, resumed)
        if self.tickets is not None:
            self._resumption_secret = schedule.resumption_secret(
                ikm, self._nonce, self.transcript_hash
            )
        # No longer needed: an idle session should hold as little as it can.
        self._hello = self._nonce = None
        self._sealer = RecordSealer(server_key, self._max_records, self._max_bytes)
        self._opener = RecordOpener(client_key)

    # -- RESUME ------------------------------------------------------------------

    def _on_resume(self, verb, payload):
        self._release_ephemeral()
        if self.tickets is None:
            raise ProtocolError(STALE_TICKET, "this server does not resume sessions")
        try:
            secret, client = self.tickets.open(bytes(payload), self.identity.fingerprint)
        except StaleTicket as error:
            raise ProtocolError(STALE_TICKET, str(error)) from None
        if self.authorized_keys is not None and (
            client is None or client not in self.authorized_keys
        ):
            raise ProtocolError(STALE_TICKET, "the ticket's client key is not authorized")
        self.resumed = True
        self.forward_secrecy = False
        self.client_fingerprint = client
        self._derive(secret, payload, resumed=True)
        self._enter(State.AWAIT_FIRST_RESUMED)
        self._confirm()

    # -- the client's first record: AUTH, or anything else -----------------------

    def _on_auth(self, verb, payload):
        plaintext = self._open("AUTH", payload)
        public_key, signature, fingerprint = self._parse_auth(plaintext)
        message = schedule.auth_message(self.transcript_hash)
        if self.defer_work:
            self._pending = fingerprint
            self._enter(State.WORKING)
            self._event(VerificationNeeded(public_key, signature, message))
            return
        ok = public_key.verify_pss(message, signature, salt_length=AUTH_SALT_LENGTH)
        self._pending = fingerprint
        self._auth_checked(ok)

    def _parse_auth(self, plaintext):
        obj = _json_object(plaintext, AUTH_FAILED, "AUTH")
        try:
            der = _b64decode(obj.get("key"), "AUTH key")
            signature = _b64decode(obj.get("signature"), "AUTH signature")
            public_key = keys.public_key_from_der(der)
        except (ProtocolError, ValueError):
            raise ProtocolError(AUTH_FAILED, "malformed AUTH") from None
        check_public_key(
            public_key, AUTH_FAILED, self.client_key_max_bits, exponent=CLIENT_KEY_EXPONENT
        )
        fingerprint = keys.fingerprint(der)
        if self.authorized_keys is not None and fingerprint not in self.authorized_keys:
            raise ProtocolError(AUTH_FAILED, "client key is not authorized")
        return public_key, signature, fingerprint

    def auth_verified(self, ok):
        """The answer to :class:`VerificationNeeded`.  Returns the events."""
        if self.state is State.WORKING and isinstance(self._pending, str):
            try:
                self._auth_checked(ok)
            except ProtocolError as error:
                self._fail(error)
            else:
                self._replay_waiting()
        return self._take_events()

    def _auth_checked(self, ok):
        fingerprint, self._pending = self._pending, None
        if not ok:
            raise ProtocolError(AUTH_FAILED, "bad AUTH signature")
        self.client_fingerprint = fingerprint
        if self.records_sent == 0:  # AUTH was required: confirm only now
            self._confirm()
        self._complete()

    def _record_opened(self, verb):
        # The client's first record, when it is not AUTH: it proves the
        # client holds the keys (after RESUME, the resumption secret), so
        # the application may start, before what the record carries.
        if verb != "AUTH" and self.state in (State.AWAIT_FIRST, State.AWAIT_FIRST_RESUMED):
            self._complete()

    def _complete(self):
        self._enter(State.OPEN)
        self._event(HandshakeComplete(self.client_fingerprint, self.resumed))
        if self._resumption_secret is not None:
            # One TICKET per session, once the client is known (it names
            # the client's key when there was an AUTH).
            self._send_ticket()

    # -- our records ---------------------------------------------------------------

    def _confirm(self):
        """Key confirmation (§5): our first record, as soon as the keys are
        agreed (and AUTH checked, when required), before any application
        exists; the client completes its handshake when it opens."""
        self._seal("MSG", b"")

    def _send_ticket(self):
        secret, self._resumption_secret = self._resumption_secret, None
        ticket, lifetime = self.tickets.issue(
            secret, self.identity.fingerprint, self.client_fingerprint
        )
        plaintext = json.dumps(
            {"ticket": base64.b64encode(ticket).decode("ascii"), "lifetime": lifetime}
        ).encode("ascii")
        super()._seal("TICKET", plaintext)

    # -- the end -----------------------------------------------------------------------

    def _release_ephemeral(self):
        """This connection no longer waits for a KEY under its offered key."""
        if self._holds_ephemeral:
            self._holds_ephemeral = False
            self.ephemeral.release()

    def _release(self):
        self._release_ephemeral()
        self._resumption_secret = None
        self._pending = None

    _AUTH_REQUIRED = Refuse(AUTH_REQUIRED, "this server requires AUTH first")
    _AUTH_NOT_FIRST = Refuse(UNEXPECTED_FRAME, "AUTH must be the first client record")

    RULES: ClassVar[dict] = {
        State.AWAIT_KEY: {"KEY": _on_key, "RESUME": _on_resume},
        State.WORKING: {"AUTH": WAIT, "MSG": WAIT, "END": WAIT, "UPDATE": WAIT},
        State.AWAIT_AUTH: {
            "AUTH": _on_auth,
            "MSG": _AUTH_REQUIRED,
            "END": _AUTH_REQUIRED,
            "UPDATE": _AUTH_REQUIRED,
        },
        State.AWAIT_FIRST: {
            "AUTH": _on_auth,
            "MSG": _Connection._on_msg,
            "END": _Connection._on_end,
            "UPDATE": _Connection._on_update,
        },
        State.AWAIT_FIRST_RESUMED: {
            "AUTH": Refuse(UNEXPECTED_FRAME, "AUTH after RESUME: the ticket names the client"),
            "MSG": _Connection._on_msg,
            "END": _Connection._on_end,
            "UPDATE": _Connection._on_update,
        },
        State.OPEN: {
            "AUTH": _AUTH_NOT_FIRST,
            "MSG": _Connection._on_msg,
            "END": _Connection._on_end,
            "UPDATE": _Connection._on_update,
        },
    }


# -- the client -------------------------------------------------------------------


class ClientConnection(_Connection):
    """One connection, client side.

    ``identity``: our own :class:`~keyexchanged.rsa.PrivateKey` for AUTH, or
    ``None``.  ``require_forward_secrecy``: refuse a HELLO without an
    ephemeral key (the default, §10.3).  ``ticket``: a
    :class:`~keyexchanged.tickets.StoredTicket` to resume with when HELLO's
    key is the one it was issued under.  ``clock`` gives the time for the
    ephemeral key's expiry.  ``random`` draws the session secret;
    ``oaep_seed`` and ``pss_salt`` exist only to reproduce the vectors.
    """

    def __init__(
        self,
        identity=None,
        random=secrets.token_bytes,
        oaep_seed=None,
        pss_salt=None,
        require_forward_secrecy=True,
        ticket=None,
        clock=time.time,
        **limits,
    ):
        super().__init__(**limits)
        self.identity = identity
        self.require_forward_secrecy = require_forward_secrecy
        self.ticket = ticket
        self._clock = clock
        self._random = random
        self._oaep_seed = oaep_seed
        self._pss_salt = pss_salt
        self._resumption_secret = None
        self.state = State.AWAIT_HELLO
        self.hello_payload = None
        self.key_payload = None
        self.server_key = None
        self.server_fingerprint = None
        self.ephemeral = None
        self.certificates = ()

    # -- HELLO -------------------------------------------------------------------

    def _on_hello(self, verb, payload):
        hello = _json_object(payload, MALFORMED_FRAME, "HELLO")
        protocol = hello.get("protocol")
        if not isinstance(protocol, str):
            raise ProtocolError(MALFORMED_FRAME, "HELLO has no protocol")
        if protocol != PROTOCOL_NAME:
            raise ProtocolError(UNSUPPORTED_PROTOCOL, f"protocol {protocol!r} is not kx/1")
        der = _b64decode(hello.get("key"), "HELLO key")
        nonce = _b64decode(hello.get("nonce"), "HELLO nonce")
        if len(nonce) != NONCE_LENGTH:
            raise ProtocolError(MALFORMED_FRAME, "HELLO nonce is not 32 bytes")
        certificates = hello.get("certificates", [])
        if not isinstance(certificates, list):
            raise ProtocolError(MALFORMED_FRAME, "HELLO certificates is not a list")
        certificates = [_b64decode(c, "HELLO certificate") for c in certificates]
        try:
            public_key = keys.public_key_from_der(der)
        except ValueError:
            raise ProtocolError(MALFORMED_FRAME, "HELLO key is not an RSA public key") from None
        check_public_key(public_key, WEAK_KEY)
        ephemeral = self._check_ephemeral(hello.get("ephemeral"), public_key, der)

        self.hello_payload = bytes(payload)
        self._nonce = nonce
        self.server_key = public_key
        self.server_fingerprint = keys.fingerprint(der)
        self.certificates = certificates
        self.ephemeral = ephemeral
        self._enter(State.TRUST)
        self._event(
            ServerKeyReceived(public_key, der, self.server_fingerprint, certificates, ephemeral)
        )

    def _check_ephemeral(self, member, long_term, long_term_der):
        """§10.3: the ephemeral key, its signature and its expiry, or None."""
        if member is None:
            if self.require_forward_secrecy:
                raise ProtocolError(
                    NO_FORWARD_SECRECY, "the server offers no ephemeral key (forward secrecy)"
                )
            return None
        if not isinstance(member, dict):
            raise ProtocolError(MALFORMED_FRAME, "HELLO ephemeral is not an object")
        expires = member.get("expires")
        if not _integer(expires):
            raise ProtocolError(MALFORMED_FRAME, "HELLO ephemeral expires is not an integer")
        der = _b64decode(member.get("key"), "HELLO ephemeral key")
        signature = _b64decode(member.get("signature"), "HELLO ephemeral signature")
        try:
            public_key = keys.public_key_from_der(der)
        except ValueError:
            raise ProtocolError(UNTRUSTED_KEY, "ephemeral key is not an RSA public key") from None
        try:
            check_public_key(public_key, UNTRUSTED_KEY)
        except ProtocolError as error:
            raise ProtocolError(UNTRUSTED_KEY, f"ephemeral key: {error.detail}") from None
        if not 0 <= expires < 2**64:
            raise ProtocolError(UNTRUSTED_KEY, "ephemeral key expiry out of range")
        message = schedule.ephemeral_message(long_term_der, expires, der)
        if not long_term.verify_pss(message, signature, salt_length=schedule.PSS_SALT_LENGTH):
            raise ProtocolError(UNTRUSTED_KEY, "ephemeral key signature does not verify")
        now = self._clock()
        if expires < now - CLOCK_SKEW:
            raise ProtocolError(UNTRUSTED_KEY, f"ephemeral key expired {int(now - expires)} s ago")
        if expires > now + MAX_EPHEMERAL_AHEAD + CLOCK_SKEW:
            raise ProtocolError(UNTRUSTED_KEY, "ephemeral key is signed for more than a day")
        return EphemeralOffer(public_key, keys.fingerprint(der), expires)

    # -- KEY or RESUME --------------------------------------------------------------

    def accept_key(self):
        """The server's key is trusted: send RESUME when our ticket was issued
        under this key, else KEY; then our first record (AUTH with a client
        key, else an empty MSG, §5).  Returns the events."""
        if self.state is not State.TRUST:
            raise RuntimeError("accept_key() answers ServerKeyReceived only")
        ticket, self.ticket = self.ticket, None
        if ticket is not None and ticket.server_fingerprint == self.server_fingerprint:
            self._resume(ticket)
        else:
            self._send_key()
        self._enter(State.AWAIT_CONFIRM)
        if self.identity is not None and not self.resumed:
            self._seal("AUTH", self.auth_plaintext())
        else:
            self._seal("MSG", b"")
        return self._take_events()

    def _send_key(self):
        secret = self._random(SECRET_LENGTH)
        options = {} if self._oaep_seed is None else {"seed": self._oaep_seed}
        encrypt_to = self.ephemeral.public_key if self.ephemeral is not None else self.server_key
        ciphertext = encrypt_to.encrypt_oaep(secret, label=self.hello_payload, **options)
        self.key_payload = ciphertext
        self._send_frame("KEY", ciphertext)
        self._derive(secret, ciphertext, resumed=False)

    def _resume(self, ticket):
        self.resumed = True
        self.key_payload = ticket.ticket
        self._send_frame("RESUME", ticket.ticket)
        self._derive(ticket.secret, ticket.ticket, resumed=True)

    def _derive(self, ikm, payload, resumed):
        self.transcript_hash = transcript_hash(self.hello_payload, payload)
        client_key, server_key = derive_keys(ikm, self._nonce, self.transcript_hash, resumed)
        self._resumption_secret = schedule.resumption_secret(ikm, self._nonce, self.transcript_hash)
        self._sealer = RecordSealer(client_key, self._max_records, self._max_bytes)
        self._opener = RecordOpener(server_key)

    def auth_plaintext(self):
        """The JSON of our AUTH record (§8)."""
        options = {} if self._pss_salt is None else {"salt": self._pss_salt}
        signature = self.identity.sign_pss(
            schedule.auth_message(self.transcript_hash), salt_length=AUTH_SALT_LENGTH, **options
        )
        der = keys.public_key_to_der(self.identity.public_key())
        return json.dumps(
            {
                "key": base64.b64encode(der).decode("ascii"),
                "signature": base64.b64encode(signature).decode("ascii"),
            }
        ).encode("utf-8")

    def reject_key(self, detail):
        """The server's key is not trusted: ERROR untrusted-key, before KEY."""
        return self.fail(UNTRUSTED_KEY, detail)

    # -- the server's records ---------------------------------------------------------

    def _record_opened(self, verb):
        if self.state is State.AWAIT_CONFIRM:
            # Only the holder of the private key (or of the ticket key)
            # could derive server_key.  Confirmed before the record's own
            # events, so that its data reaches an application that exists.
            self._enter(State.OPEN)
            self._event(HandshakeComplete(self.server_fingerprint, self.resumed))

    def _on_ticket(self, verb, payload):
        obj = _json_object(self._open("TICKET", payload), MALFORMED_FRAME, "TICKET")
        ticket = _b64decode(obj.get("ticket"), "TICKET ticket")
        lifetime = obj.get("lifetime")
        if not 1 <= len(ticket) <= 512:
            raise ProtocolError(MALFORMED_FRAME, "TICKET ticket is not 1 to 512 bytes")
        if not _integer(lifetime) or not 1 <= lifetime <= 86400:
            raise ProtocolError(MALFORMED_FRAME, "TICKET lifetime is not 1 to 86400 seconds")
        self._event(
            TicketReceived(ticket, lifetime, self._resumption_secret, self.server_fingerprint)
        )

    RULES: ClassVar[dict] = {
        State.AWAIT_HELLO: {"HELLO": _on_hello},
        State.AWAIT_CONFIRM: {
            "MSG": _Connection._on_msg,
            "END": _Connection._on_end,
            "UPDATE": _Connection._on_update,
            "TICKET": Refuse(UNEXPECTED_FRAME, "TICKET before the server's first record"),
        },
        State.OPEN: {
            "MSG": _Connection._on_msg,
            "END": _Connection._on_end,
            "UPDATE": _Connection._on_update,
            "TICKET": _on_ticket,
        },
    }
