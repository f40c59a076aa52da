"""The KX/1 state machines, free of I/O (PROTOCOL.md §2–§8).

:class:`ServerConnection` and :class:`ClientConnection` take bytes (or,
from the Twisted adapter, header lines and payloads) and give back events
and bytes to send.  They never touch a socket, a clock or a reactor, which
is what lets the tests drive them byte for byte with the vector file, and
lets the Twisted protocol, the benchmarks and the fuzzer share them.

Each side moves through explicit states, and each state names the frames it
accepts.  Anything else is ``unexpected-frame`` (or, for a server that
requires client authentication, ``auth-required``), decided on the header
line before the payload is read.

What a session looks like::

    S: HELLO            {"protocol": "kx/1", "key": ..., "nonce": ...}
    C: KEY              RSA-OAEP(secret), label = the HELLO payload
    C: AUTH             only with a client key
    S: MSG* END         records sealed with server_key
    C: MSG* END         records sealed with client_key

Errors are :class:`~keyexchanged.framing.ProtocolError`; a connection that
raises one sends ERROR and is over.  Details in ERROR frames and in events
are public text: no secret is ever put in one.
"""

import base64
import enum
import hashlib
import json
import secrets
from typing import ClassVar

from Crypto.Hash import SHA256
from Crypto.Protocol.KDF import HKDF

from keyexchanged import keys
from keyexchanged.framing import (
    AUTH_FAILED,
    AUTH_REQUIRED,
    BAD_RECORD,
    ERROR_CODES,
    MALFORMED_FRAME,
    RECORD_DATA_MAX,
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
from keyexchanged.rsa import DecryptionError

__all__ = [
    "ClientAuthenticated",
    "ClientConnection",
    "DataReceived",
    "EndReceived",
    "ErrorReceived",
    "HandshakeComplete",
    "ProtocolFailed",
    "ServerConnection",
    "ServerIdentity",
    "ServerKeyReceived",
    "derive_keys",
]

PROTOCOL_NAME = "kx/1"
NONCE_LENGTH = 32
SECRET_LENGTH = 32
KEYS_INFO = b"kx/1 keys"
AUTH_CONTEXT = b"kx/1 client auth"
#: PSS salt length for AUTH signatures, fixed by the protocol.
AUTH_SALT_LENGTH = 32

#: What a client accepts as a server key (PROTOCOL.md §2), and what a server
#: accepts as a client key in AUTH.  Below 2048 bits RSA is within reach;
#: above 8192 a single operation is slow enough to be a denial of service.
MIN_KEY_BITS = 2048
MAX_KEY_BITS = 8192
#: e = 3 and friends invite small-exponent attacks on bad padding; a huge e
#: makes every public operation slow.
MIN_EXPONENT_EXCLUSIVE = 2**16
MAX_EXPONENT_EXCLUSIVE = 2**256

#: ERROR details are short public text; this keeps an ERROR under its
#: 1 024-byte frame limit whatever a caller passes.
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


class ServerKeyReceived(Event):
    """Client side: HELLO arrived and is well formed; decide whether to trust it.

    Answer with :meth:`ClientConnection.accept_key` or
    :meth:`ClientConnection.reject_key`.
    """

    __slots__ = ("certificates", "der", "fingerprint", "public_key")

    def __init__(self, public_key, der, fingerprint, certificates):
        self.public_key = public_key
        self.der = der
        self.fingerprint = fingerprint
        self.certificates = certificates


class DecryptionNeeded(Event):
    """Server with ``defer_decryption``: the KEY's private-key work is ours
    to do elsewhere (a worker process); answer with
    :meth:`ServerConnection.key_decrypted`.  ``ciphertext`` is already
    reduced below n and ``label`` is the OAEP label (the HELLO payload)."""

    __slots__ = ("ciphertext", "label")

    def __init__(self, ciphertext, label):
        self.ciphertext = ciphertext
        self.label = label


class HandshakeComplete(Event):
    """The keys are confirmed; application data may flow.

    On the server ``peer_fingerprint`` is the client's key when AUTH was
    required and verified, else ``None``; on the client it is the server's.
    """

    __slots__ = ("peer_fingerprint",)

    def __init__(self, peer_fingerprint=None):
        self.peer_fingerprint = peer_fingerprint


class ClientAuthenticated(Event):
    """Server side: an optional AUTH was verified after the handshake."""

    __slots__ = ("fingerprint",)

    def __init__(self, fingerprint):
        self.fingerprint = fingerprint


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


# -- the key schedule -------------------------------------------------------


def transcript_hash(hello_payload, key_payload):
    return hashlib.sha256(hello_payload + key_payload).digest()


def derive_keys(secret, nonce, th):
    """Return ``(client_key, server_key)`` (PROTOCOL.md §4)."""
    okm = HKDF(secret, 64, nonce, SHA256, context=KEYS_INFO + th)
    return okm[:32], okm[32:]


def auth_message(th):
    return AUTH_CONTEXT + th


# -- small strict decoders ----------------------------------------------------


def _b64decode(text, what):
    """Strict, canonical RFC 4648 base64: one spelling per byte string."""
    if not isinstance(text, str):
        raise ProtocolError(MALFORMED_FRAME, f"{what} is not a string")
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raise ProtocolError(MALFORMED_FRAME, f"{what} is not valid base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise ProtocolError(MALFORMED_FRAME, f"{what} is not canonical base64")
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
        obj = json.loads(payload.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError):
        # RecursionError: 64 KiB of "[" nests deeper than the parser's stack.
        raise ProtocolError(code, f"{what} is not a JSON object") from None
    if not isinstance(obj, dict):
        raise ProtocolError(code, f"{what} is not a JSON object")
    return obj


def check_public_key(public_key, code):
    """Refuse keys outside the protocol's sizes and exponents."""
    if not MIN_KEY_BITS <= public_key.n.bit_length() <= MAX_KEY_BITS:
        raise ProtocolError(code, f"RSA modulus of {public_key.n.bit_length()} bits")
    e = public_key.e
    if e % 2 == 0 or not MIN_EXPONENT_EXCLUSIVE < e < MAX_EXPONENT_EXCLUSIVE:
        raise ProtocolError(code, "RSA public exponent out of range")


def _printable(text):
    text = "".join(c if c.isprintable() else "?" for c in str(text))
    return text[:_DETAIL_MAX]


def error_payload(code, detail):
    return json.dumps({"error": code, "detail": _printable(detail)}).encode("utf-8")


def parse_error_payload(payload):
    """Read a peer's ERROR leniently: it ends the connection whatever it says."""
    try:
        obj = _json_object(payload, MALFORMED_FRAME, "ERROR")
    except ProtocolError:
        return "malformed-frame", "unreadable ERROR frame"
    code = obj.get("error")
    if code not in ERROR_CODES:
        code = "unknown"
    return code, _printable(obj.get("detail", ""))


# -- the per-key part of a server ------------------------------------------------


class ServerIdentity:
    """Everything about the server's key that is the same for every connection.

    Built once at start-up: the DER and base64 of the public key, its
    fingerprint and the certificate chain are not recomputed per handshake.
    """

    def __init__(self, private_key, certificates=()):
        self.private_key = private_key
        self.public_key = private_key.public_key()
        self.der = keys.public_key_to_der(self.public_key)
        self.key_b64 = base64.b64encode(self.der).decode("ascii")
        self.fingerprint = keys.fingerprint(self.public_key)
        self.key_bytes = (self.public_key.n.bit_length() + 7) // 8
        self.certificates = tuple(certificates)
        self.certificates_b64 = [base64.b64encode(c).decode("ascii") for c in self.certificates]
        # The HELLO JSON is the same for every connection but for the nonce:
        # serialize it once, around a marker, and splice each nonce in.
        # (Base64 needs no JSON escaping, so the bytes equal json.dumps's.)
        marker = "\0nonce\0"
        hello = {"protocol": PROTOCOL_NAME, "key": self.key_b64, "nonce": marker}
        if self.certificates_b64:
            hello["certificates"] = self.certificates_b64
        head, tail = json.dumps(hello).split(json.dumps(marker)[1:-1])
        self._hello_head, self._hello_tail = head.encode("utf-8"), tail.encode("utf-8")

    def hello_payload(self, nonce):
        return self._hello_head + base64.b64encode(nonce) + self._hello_tail


# -- the common machinery ---------------------------------------------------------


class _State(enum.Enum):
    AWAIT_HELLO = "await-hello"  # client
    TRUST = "trust"  # client: deciding on the server's key
    AWAIT_KEY = "await-key"  # server
    DECRYPTING = "decrypting"  # server: KEY received, private-key work elsewhere
    AWAIT_AUTH = "await-auth"  # server that requires AUTH
    AWAIT_CONFIRM = "await-confirm"  # client: KEY sent, no record opened yet
    OPEN = "open"
    CLOSED = "closed"


_RECORD_VERBS = frozenset({"MSG", "END", "UPDATE", "AUTH"})


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
    """What both sides share: framing, records, END, UPDATE and ERROR."""

    #: verb -> the states in which it is accepted; set by each side.
    _ACCEPTS: ClassVar[dict] = {}

    def __init__(self, max_records=MAX_RECORDS_PER_KEY, max_bytes=MAX_BYTES_PER_KEY):
        self._max_records = max_records
        self._max_bytes = max_bytes
        # Frames to send and events to report: a list only while there are
        # some, so that an idle session holds none (see _queue).
        self._outgoing = ()
        self._events = ()
        # Made on the first receive_data: the Twisted adapter reads frames
        # itself, and a decoder per idle session would be memory for nothing.
        self._decoder = None
        self._sealer = None
        self._opener = None
        self.state = None
        self.sent_end = False
        self.received_end = False
        self.transcript_hash = None
        #: Counts for the connection log line and the benchmarks.
        self.bytes_received = 0
        self.bytes_sent = 0
        self.records_sent = 0

    # -- what the adapter calls -------------------------------------------------

    def receive_data(self, data):
        """Feed bytes from the wire; return the events they caused."""
        self.bytes_received += len(data)
        if self.state is not _State.CLOSED:
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
        if self.state is _State.CLOSED:
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
        if self.state is not _State.CLOSED:
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
        return self.state is _State.CLOSED

    @property
    def finished(self):
        """True once both ENDs have passed: the TCP connection may close."""
        return self.sent_end and self.received_end

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

    def send_end(self):
        """Say that we will send no more records."""
        self._check_can_send()
        self._seal("END", b"")
        self.sent_end = True

    def fail(self, code, detail):
        """End the connection with ERROR ``code`` (a timeout, say)."""
        if self.state is not _State.CLOSED:
            self._fail(ProtocolError(code, detail))
        return self._take_events()

    # -- inside ---------------------------------------------------------------

    def _check_can_send(self):
        if self._sealer is None:
            raise RuntimeError("no keys yet: the handshake has not got that far")
        if self.sent_end:
            raise RuntimeError("END was sent: no more records")
        if self.state is _State.CLOSED:
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
        self.state = _State.CLOSED
        self._stop_decoding()
        # Whatever was queued and not yet taken is dropped: after an error
        # only the ERROR goes out.
        self._outgoing = [encode_frame("ERROR", error_payload(error.code, error.detail))]
        self._event(ProtocolFailed(error.code, error.detail))

    def _header_received(self, verb, length):
        if verb == "ERROR":
            return
        if self.state not in self._ACCEPTS.get(verb, ()):
            self._refuse(verb)
        if verb in ("MSG", "END", "UPDATE", "AUTH") and self.received_end:
            raise ProtocolError(UNEXPECTED_FRAME, f"{verb} after END")
        self._check_length(verb, length)

    def _refuse(self, verb):
        raise ProtocolError(UNEXPECTED_FRAME, f"{verb} not expected in state {self.state.value}")

    def _check_length(self, verb, length):
        pass

    def _frame_received(self, verb, payload):
        if verb == "ERROR":
            code, detail = parse_error_payload(payload)
            self.state = _State.CLOSED
            self._stop_decoding()
            self._outgoing = ()
            self._event(ErrorReceived(code, detail))
            return
        getattr(self, "_on_" + verb)(payload)

    def _open(self, verb, payload):
        try:
            return self._opener.open(verb, payload)
        except BadRecord:
            raise ProtocolError(BAD_RECORD, f"{verb} record failed to open") from None

    def _record_opened(self):
        """Hook: a record opened (the client's key confirmation)."""

    def _on_MSG(self, payload):
        data = self._open("MSG", payload)
        self._record_opened()
        if data:
            self._event(DataReceived(data))

    def _on_END(self, payload):
        self._open("END", payload)
        self._record_opened()
        self.received_end = True
        self._event(EndReceived())

    def _on_UPDATE(self, payload):
        try:
            self._opener.open_update(payload)
        except BadRecord:
            raise ProtocolError(BAD_RECORD, "UPDATE record failed to open") from None
        self._record_opened()


# -- the server ---------------------------------------------------------------------


class ServerConnection(_Connection):
    """One accepted connection, server side.

    ``authorized_keys``: when not ``None``, a container of client key
    fingerprints, and AUTH is required.  ``random`` draws bytes (the nonce and
    the implicit-rejection secret); tests replace it to replay the vectors.
    """

    # While the KEY is decrypted elsewhere, the client's records (it may
    # send AUTH and MSG right after KEY) wait; they are checked against the
    # state that follows once the key is agreed.
    _ACCEPTS: ClassVar[dict] = {
        "KEY": {_State.AWAIT_KEY},
        "AUTH": {_State.AWAIT_AUTH, _State.OPEN, _State.DECRYPTING},
        "MSG": {_State.OPEN, _State.DECRYPTING},
        "END": {_State.OPEN, _State.DECRYPTING},
        "UPDATE": {_State.OPEN, _State.DECRYPTING},
    }

    #: Records that may wait for a KEY being decrypted elsewhere.  (The
    #: Twisted adapter stops reading meanwhile, so only users of
    #: ``receive_data`` — a whole buffer at once — ever need the queue.)
    MAX_WAITING_RECORDS = 4

    def __init__(
        self,
        identity,
        authorized_keys=None,
        random=secrets.token_bytes,
        defer_decryption=False,
        **limits,
    ):
        super().__init__(**limits)
        self.identity = identity
        self.authorized_keys = authorized_keys
        self._random = random
        self.defer_decryption = defer_decryption
        self._key_payload = None
        self._fallback = None
        self._in_range = False
        self._waiting = ()
        self._hello = None
        self._nonce = None
        self.client_fingerprint = None
        self._client_records = 0
        self.state = _State.AWAIT_KEY

    def start(self):
        """Queue HELLO; call once the connection is accepted."""
        self._nonce = self._random(NONCE_LENGTH)
        self._hello = self.identity.hello_payload(self._nonce)
        self._send_frame("HELLO", self._hello)

    def confirm(self):
        """Key confirmation: our first record must go out as soon as the
        handshake is done, so send an empty MSG if the application had
        nothing to say."""
        if self.state is _State.OPEN and self.records_sent == 0:
            self.send_data(b"")

    @property
    def handshake_done(self):
        return self.state is _State.OPEN

    def _refuse(self, verb):
        if self.state is _State.AWAIT_AUTH and verb in ("MSG", "END", "UPDATE"):
            raise ProtocolError(AUTH_REQUIRED, "this server requires AUTH first")
        if verb == "AUTH" and self.state is _State.OPEN:
            raise ProtocolError(UNEXPECTED_FRAME, "AUTH must be the first client record")
        super()._refuse(verb)

    def _header_received(self, verb, length):
        if verb == "AUTH" and self.state is _State.OPEN and self._client_records:
            raise ProtocolError(UNEXPECTED_FRAME, "AUTH must be the first client record")
        super()._header_received(verb, length)

    def _check_length(self, verb, length):
        if verb == "KEY" and length != self.identity.key_bytes:
            raise ProtocolError(
                MALFORMED_FRAME, f"KEY must be {self.identity.key_bytes} bytes, not {length}"
            )

    def _record_opened(self):
        self._client_records += 1

    def _on_KEY(self, payload):
        # Implicit rejection (PROTOCOL.md §3): the replacement is drawn every
        # time, before decrypting, so that a failed decoding does no extra
        # work and the server goes on exactly as after a good one.  The
        # client learns of a bad KEY only when it cannot open our first
        # record.  No branch here depends on which of the two secrets is used
        # except the final choice.
        fallback = self._random(SECRET_LENGTH)
        # A ciphertext at or above n would be refused before any private-key
        # work, and answered a millisecond sooner than any other KEY.  That
        # says nothing secret, but the protocol wants every KEY to cost the
        # same: decrypt c mod n instead, and throw the result away.
        n = self.identity.public_key.n
        value = int.from_bytes(payload, "big")
        in_range = value < n
        ciphertext = payload if in_range else (value % n).to_bytes(len(payload), "big")
        if self.defer_decryption:
            self._key_payload, self._fallback, self._in_range = payload, fallback, in_range
            self.state = _State.DECRYPTING
            self._event(DecryptionNeeded(ciphertext, self._hello))
            return
        try:
            secret = self.identity.private_key.decrypt_oaep(ciphertext, label=self._hello)
        except DecryptionError:
            secret = None
        self._key_agreed(payload, secret, fallback, in_range)

    def key_decrypted(self, secret):
        """The answer to :class:`DecryptionNeeded`: the OAEP plaintext, or
        ``None`` when decoding failed (implicit rejection follows, exactly
        as for a KEY decrypted here).  Returns the events that follow."""
        if self.state is not _State.DECRYPTING:
            # The connection failed (a timeout, say) while the work was away.
            return self._take_events()
        payload, fallback, in_range = self._key_payload, self._fallback, self._in_range
        self._key_payload = self._fallback = None
        self._key_agreed(payload, secret, fallback, in_range)
        waiting, self._waiting = self._waiting, ()
        for verb, record in waiting:
            if self.state is _State.CLOSED:
                break
            try:
                self._header_received(verb, len(record))
                self._frame_received(verb, record)
            except ProtocolError as error:
                self._fail(error)
        return self._take_events()

    def _frame_received(self, verb, payload):
        if self.state is _State.DECRYPTING and verb != "ERROR":
            if len(self._waiting) >= self.MAX_WAITING_RECORDS:
                raise ProtocolError(UNEXPECTED_FRAME, "too many records before the key was agreed")
            self._waiting = _queue(self._waiting, (verb, payload))
            return
        super()._frame_received(verb, payload)

    def _key_agreed(self, payload, secret, fallback, in_range):
        good = in_range and secret is not None and len(secret) == SECRET_LENGTH
        secret = secret if good else fallback

        self.transcript_hash = transcript_hash(self._hello, payload)
        client_key, server_key = derive_keys(secret, self._nonce, self.transcript_hash)
        # No longer needed: an idle session should hold as little as it can.
        self._hello = self._nonce = None
        self._sealer = RecordSealer(server_key, self._max_records, self._max_bytes)
        self._opener = RecordOpener(client_key)
        if self.authorized_keys is not None:
            self.state = _State.AWAIT_AUTH
        else:
            self.state = _State.OPEN
            self._event(HandshakeComplete(None))

    def _on_AUTH(self, payload):
        plaintext = self._open("AUTH", payload)
        self._record_opened()
        fingerprint = self._verify_auth(plaintext)
        self.client_fingerprint = fingerprint
        if self.state is _State.AWAIT_AUTH:
            self.state = _State.OPEN
            self._event(HandshakeComplete(fingerprint))
        else:
            self._event(ClientAuthenticated(fingerprint))

    def _verify_auth(self, plaintext):
        obj = _json_object(plaintext, AUTH_FAILED, "AUTH")
        try:
            der = _b64decode(obj.get("key"), "AUTH key")
            signature = _b64decode(obj.get("signature"), "AUTH signature")
            public_key = keys.public_key_from_der(der)
        except (ProtocolError, ValueError):
            raise ProtocolError(AUTH_FAILED, "malformed AUTH") from None
        check_public_key(public_key, AUTH_FAILED)
        fingerprint = keys.fingerprint(der)
        if self.authorized_keys is not None and fingerprint not in self.authorized_keys:
            raise ProtocolError(AUTH_FAILED, "client key is not authorized")
        if not public_key.verify_pss(
            auth_message(self.transcript_hash), signature, salt_length=AUTH_SALT_LENGTH
        ):
            raise ProtocolError(AUTH_FAILED, "bad AUTH signature")
        return fingerprint


# -- the client -------------------------------------------------------------------


class ClientConnection(_Connection):
    """One connection, client side.

    ``identity``: our own :class:`~keyexchanged.rsa.PrivateKey` for AUTH, or
    ``None``.  ``random`` draws the session secret.  ``oaep_seed`` and
    ``pss_salt`` exist only to reproduce the published vectors.
    """

    _ACCEPTS: ClassVar[dict] = {
        "HELLO": {_State.AWAIT_HELLO},
        "MSG": {_State.AWAIT_CONFIRM, _State.OPEN},
        "END": {_State.AWAIT_CONFIRM, _State.OPEN},
        "UPDATE": {_State.AWAIT_CONFIRM, _State.OPEN},
    }

    def __init__(
        self, identity=None, random=secrets.token_bytes, oaep_seed=None, pss_salt=None, **limits
    ):
        super().__init__(**limits)
        self.identity = identity
        self._random = random
        self._oaep_seed = oaep_seed
        self._pss_salt = pss_salt
        self.state = _State.AWAIT_HELLO
        self.hello_payload = None
        self.key_payload = None
        self.server_key = None
        self.server_fingerprint = None
        self.certificates = ()

    @property
    def handshake_done(self):
        return self.state is _State.OPEN

    def _on_HELLO(self, payload):
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

        self.hello_payload = payload
        self._nonce = nonce
        self.server_key = public_key
        self.server_fingerprint = keys.fingerprint(der)
        self.certificates = certificates
        self.state = _State.TRUST
        self._event(ServerKeyReceived(public_key, der, self.server_fingerprint, certificates))

    def accept_key(self):
        """The server's key is trusted: send KEY (and AUTH with a client key)."""
        if self.state is not _State.TRUST:
            raise RuntimeError("accept_key() answers ServerKeyReceived only")
        secret = self._random(SECRET_LENGTH)
        options = {} if self._oaep_seed is None else {"seed": self._oaep_seed}
        ciphertext = self.server_key.encrypt_oaep(secret, label=self.hello_payload, **options)
        self.key_payload = ciphertext
        self._send_frame("KEY", ciphertext)
        self.transcript_hash = transcript_hash(self.hello_payload, ciphertext)
        client_key, server_key = derive_keys(secret, self._nonce, self.transcript_hash)
        self._sealer = RecordSealer(client_key, self._max_records, self._max_bytes)
        self._opener = RecordOpener(server_key)
        self.state = _State.AWAIT_CONFIRM
        if self.identity is not None:
            self._seal("AUTH", self.auth_plaintext())
        return self._take_events()

    def auth_plaintext(self):
        """The JSON of our AUTH record (PROTOCOL.md §8)."""
        options = {} if self._pss_salt is None else {"salt": self._pss_salt}
        signature = self.identity.sign_pss(
            auth_message(self.transcript_hash), salt_length=AUTH_SALT_LENGTH, **options
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

    def _record_opened(self):
        if self.state is _State.AWAIT_CONFIRM:
            # Only the holder of the private key could derive server_key.
            self.state = _State.OPEN
            self._event(HandshakeComplete(self.server_fingerprint))
