"""KX/1 frames: one ASCII header line, then exactly LENGTH payload bytes.

::

    frame   = verb SP length CRLF payload
    verb    = 1*8 %x41-5A
    length  = "0" / %x31-39 *7DIGIT

Everything a peer can make us buffer is decided here, on the header line,
before a single payload byte is kept: the header is capped at 32 bytes, and
every verb has its own payload limit.  The checks run in the order the
protocol fixes: grammar and verb (``malformed-frame``), then the verb's
length limit (``frame-too-large``).  The connection state
(``unexpected-frame``) is the state machine's business, in keyexchanged.handshake.

This module imports nothing of ours and nothing of Twisted's; the Twisted
adapter feeds header lines and payloads to the state machines itself, and
:class:`FrameDecoder` does the same job for code that only has bytes (the
blocking client, the benchmarks, the fuzzer and the tests).
"""

import re

__all__ = [
    "HEADER_MAX",
    "MAX_PAYLOAD",
    "FrameDecoder",
    "ProtocolError",
    "encode_frame",
    "parse_header",
]

#: ERROR codes of docs/spec/kx1.rst §6.
MALFORMED_FRAME = "malformed-frame"
UNEXPECTED_FRAME = "unexpected-frame"
FRAME_TOO_LARGE = "frame-too-large"
UNSUPPORTED_PROTOCOL = "unsupported-protocol"
WEAK_KEY = "weak-key"
UNTRUSTED_KEY = "untrusted-key"
NO_FORWARD_SECRECY = "no-forward-secrecy"
NO_POST_QUANTUM = "no-post-quantum"
STALE_TICKET = "stale-ticket"
BAD_RECORD = "bad-record"
AUTH_REQUIRED = "auth-required"
AUTH_FAILED = "auth-failed"
TIMEOUT = "timeout"
BUSY = "busy"
INTERNAL = "internal"

ERROR_CODES = frozenset(
    {
        MALFORMED_FRAME,
        UNEXPECTED_FRAME,
        FRAME_TOO_LARGE,
        UNSUPPORTED_PROTOCOL,
        WEAK_KEY,
        UNTRUSTED_KEY,
        NO_FORWARD_SECRECY,
        NO_POST_QUANTUM,
        STALE_TICKET,
        BAD_RECORD,
        AUTH_REQUIRED,
        AUTH_FAILED,
        TIMEOUT,
        BUSY,
        INTERNAL,
    }
)

#: The longest header line, CRLF excluded.  "UPDATE 65552" is 12 bytes; the
#: grammar's longest line is 8 + 1 + 8 = 17 bytes.  32 leaves room and is what
#: the protocol fixes, so a peer can never make us hold more than this while
#: we look for the end of a line.
HEADER_MAX = 32

#: The most application data one MSG record carries.
RECORD_DATA_MAX = 65536
#: AES-GCM tag length; every sealed record ends with one.
TAG_LENGTH = 16

#: Payload limits per verb (docs/spec/kx1.rst §1).  These are the only sizes a peer
#: can make us allocate for a payload.
MAX_PAYLOAD = {
    "HELLO": 65536,  # a JSON object with a key and a certificate chain
    # An RSA ciphertext (8192-bit keys: 1024 bytes), then in revision 3 an
    # ML-KEM-768 ciphertext of 1088 bytes.
    "KEY": 1024 + 1088,
    "RESUME": 512,  # a ticket, opaque to the client
    "TICKET": 1024,  # sealed JSON: a base64 ticket of 512 bytes and its lifetime
    "AUTH": 8192,  # JSON with an 8192-bit SPKI and signature, base64, sealed
    "MSG": RECORD_DATA_MAX + TAG_LENGTH,
    "END": TAG_LENGTH,  # the tag of an empty record, exactly
    "UPDATE": TAG_LENGTH,  # likewise
    "ERROR": 1024,  # a code and a short detail
    # The next key, its signature and revoked fingerprints: 8 KiB of JSON
    # at most; twice that before the frame itself is refused (§14.3).
    "NEXTKEY": 16384 + TAG_LENGTH,
}

# fullmatch() is used, so no anchors are needed; "$" would also accept a
# trailing newline.  int() alone would take "1_000", " +12 " and "٣".
_HEADER = re.compile(rb"([A-Z]{1,8}) (0|[1-9][0-9]{0,7})")


class ProtocolError(Exception):
    """A peer broke KX/1.  ``code`` is the ERROR code to answer with.

    ``detail`` is a short public text: it never holds a secret, because it
    is what we send back to the peer.
    """

    def __init__(self, code, detail):
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def parse_header(line):
    """Check a header line (CRLF removed); return ``(verb, length)``.

    Raises :class:`ProtocolError` with ``malformed-frame`` or
    ``frame-too-large``.
    """
    if len(line) > HEADER_MAX:
        raise ProtocolError(MALFORMED_FRAME, "header line longer than 32 bytes")
    match = _HEADER.fullmatch(line)
    if match is None:
        raise ProtocolError(MALFORMED_FRAME, "header is not VERB SP LENGTH")
    verb = match.group(1).decode("ascii")
    limit = MAX_PAYLOAD.get(verb)
    if limit is None:
        raise ProtocolError(MALFORMED_FRAME, "unknown verb")
    length = int(match.group(2))
    if length > limit:
        raise ProtocolError(FRAME_TOO_LARGE, f"{verb} payload over {limit} bytes")
    return verb, length


def encode_frame(verb, payload):
    """Return the bytes of one frame.  Our own frames are checked too."""
    limit = MAX_PAYLOAD[verb]
    if len(payload) > limit:
        raise ValueError(f"{verb} payload of {len(payload)} bytes is over {limit}")
    return b"%s %d\r\n%s" % (verb.encode("ascii"), len(payload), payload)


class FrameDecoder:
    """Turn a byte stream into frames, holding at most one frame's worth.

    ``on_header(verb, length)`` is called for each header before its payload
    is read, so it can refuse a frame (the state check) before a payload byte
    is kept; ``on_frame(verb, payload)`` is called for each complete frame, in
    order, so that each header is judged in the state the frames before it
    left.  Either may raise :class:`ProtocolError`, which ends decoding: the
    connection is over.  :meth:`stop` ends it quietly.

    However large a chunk :meth:`feed` gets, the buffer never holds more than
    ``HEADER_MAX + 2`` bytes or the current frame's announced payload.
    """

    __slots__ = ("_buffer", "_length", "_on_frame", "_on_header", "_verb", "stopped")

    def __init__(self, on_frame, on_header=None):
        self._on_frame = on_frame
        self._on_header = on_header
        self._buffer = bytearray()
        self._verb = None
        self._length = 0
        self.stopped = False

    @property
    def buffered(self):
        """How many bytes are held right now."""
        return len(self._buffer)

    def stop(self):
        """Ignore everything from now on and let go of the buffer."""
        self.stopped = True
        self._buffer = bytearray()

    def feed(self, data):
        view = memoryview(data)
        pos = 0
        try:
            while pos < len(view) and not self.stopped:
                if self._verb is None:
                    pos = self._feed_header(view, pos)
                else:
                    take = min(len(view) - pos, self._length - len(self._buffer))
                    self._buffer += view[pos : pos + take]
                    pos += take
                    if len(self._buffer) == self._length:
                        self._emit()
        except ProtocolError:
            self.stop()
            raise

    def _feed_header(self, view, pos):
        held = len(self._buffer)
        take = min(len(view) - pos, HEADER_MAX + 2 - held)
        self._buffer += view[pos : pos + take]
        # A CR that ended the previous chunk may pair with this chunk's LF.
        end = self._buffer.find(b"\r\n", max(held - 1, 0))
        if end < 0:
            if len(self._buffer) >= HEADER_MAX + 2:
                raise ProtocolError(MALFORMED_FRAME, "header line longer than 32 bytes")
            return pos + take
        verb, length = parse_header(bytes(self._buffer[:end]))
        if self._on_header is not None:
            self._on_header(verb, length)
        consumed = end + 2 - held
        self._buffer = bytearray()
        self._verb, self._length = verb, length
        if length == 0:
            self._emit()
        return pos + consumed

    def _emit(self):
        verb, payload = self._verb, bytes(self._buffer)
        self._verb, self._buffer = None, bytearray()
        self._on_frame(verb, payload)
