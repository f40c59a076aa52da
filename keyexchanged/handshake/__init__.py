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

Errors are ``keyexchanged.framing.ProtocolError``; a connection that
raises one sends ERROR and is over.  Details in ERROR frames and in events
are public text: no secret is ever put in one.

The package's modules, by job: ``_events`` (what the machines report),
``_decoding`` (strict decoders, key checks, ERROR payloads), ``_machine``
(states, the table's dispatch, records), ``_server`` and ``_client``.
Everything public is imported from here.
"""

from keyexchanged.framing import FrameDecoder
from keyexchanged.handshake._client import (
    CLOCK_SKEW,
    MAX_EPHEMERAL_AHEAD,
    ClientConnection,
)
from keyexchanged.handshake._decoding import (
    MAX_EXPONENT_EXCLUSIVE,
    MAX_KEY_BITS,
    MIN_EXPONENT_EXCLUSIVE,
    MIN_KEY_BITS,
    check_public_key,
    error_payload,
    parse_error_payload,
)
from keyexchanged.handshake._events import (
    AnnouncementIgnored,
    DataReceived,
    DecryptionNeeded,
    EndReceived,
    EphemeralOffer,
    ErrorReceived,
    Event,
    HandshakeComplete,
    NextKeyAnnounced,
    ProtocolFailed,
    ServerKeyReceived,
    SigningNeeded,
    TicketReceived,
    VerificationNeeded,
)
from keyexchanged.handshake._machine import (
    AUTH_SALT_LENGTH,
    NONCE_LENGTH,
    PROTOCOL_NAME,
    SECRET_LENGTH,
    WAIT,
    Refuse,
    State,
)
from keyexchanged.handshake._server import (
    CLIENT_KEY_EXPONENT,
    DEFAULT_CLIENT_KEY_MAX_BITS,
    ServerConnection,
    ServerIdentity,
)
from keyexchanged.schedule import derive_keys, transcript_hash

__all__ = [
    "AUTH_SALT_LENGTH",
    "CLIENT_KEY_EXPONENT",
    "CLOCK_SKEW",
    "DEFAULT_CLIENT_KEY_MAX_BITS",
    "MAX_EPHEMERAL_AHEAD",
    "MAX_EXPONENT_EXCLUSIVE",
    "MAX_KEY_BITS",
    "MIN_EXPONENT_EXCLUSIVE",
    "MIN_KEY_BITS",
    "NONCE_LENGTH",
    "PROTOCOL_NAME",
    "SECRET_LENGTH",
    "WAIT",
    "AnnouncementIgnored",
    "ClientConnection",
    "DataReceived",
    "DecryptionNeeded",
    "EndReceived",
    "EphemeralOffer",
    "ErrorReceived",
    "Event",
    "FrameDecoder",
    "HandshakeComplete",
    "NextKeyAnnounced",
    "ProtocolFailed",
    "Refuse",
    "ServerConnection",
    "ServerIdentity",
    "ServerKeyReceived",
    "SigningNeeded",
    "State",
    "TicketReceived",
    "VerificationNeeded",
    "check_public_key",
    "derive_keys",
    "error_payload",
    "parse_error_payload",
    "transcript_hash",
]
