"""The events the state machines report, one class each.

What the application or the adapter should know about: a key to trust, work
to do elsewhere, a handshake complete, data, an end.  Events compare equal
by their fields, which is what the vector tests check.

Frozen dataclasses without ``__slots__``: an event lives only until the
adapter has acted on it, and Python 3.9 (our oldest) has no ``slots=True``.
"""

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass(frozen=True)
class Event:
    """Something the application or the adapter should know about."""


@dataclass(frozen=True)
class EphemeralOffer(Event):
    """Client side: the ephemeral key a HELLO offered, already checked
    (size, exponent, signature, expiry): what ``--explain`` shows.

    Revision 3: ``mlkem_fingerprint`` names the ML-KEM-768 key offered
    with it (``SHA256:`` ‖ base64 of SHA-256 of its 1 184 bytes), checked
    and signed, and ``record_cipher`` the cipher HELLO names; both are
    ``None`` when HELLO offers no ML-KEM key or the client reads it as
    revision 2."""

    public_key: Any
    fingerprint: str
    expires: int
    mlkem_fingerprint: Optional[str] = None
    record_cipher: Optional[str] = None
    bits: int = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "bits", self.public_key.n.bit_length())


@dataclass(frozen=True)
class ServerKeyReceived(Event):
    """Client side: HELLO arrived and is well formed; decide whether to trust
    its long-term key.  Answer with :meth:`ClientConnection.accept_key` or
    :meth:`ClientConnection.reject_key`.  ``ephemeral`` is an
    :class:`EphemeralOffer` (checked already) or ``None``; ``rotation``:
    HELLO offers key rotation announcements (§14.1)."""

    public_key: Any
    der: bytes
    fingerprint: str
    certificates: Any
    ephemeral: Optional[EphemeralOffer] = None
    rotation: bool = False


@dataclass(frozen=True)
class DecryptionNeeded(Event):
    """Server with ``defer_work``: the KEY's private-key work is ours to do
    elsewhere (a worker process); answer with
    :meth:`ServerConnection.key_decrypted`.  ``private_key`` is the key to
    decrypt with (the ephemeral key its HELLO offered, or the long-term
    key); ``ciphertext`` is already reduced below n; ``label`` is the OAEP
    label (the HELLO payload)."""

    private_key: Any
    ciphertext: bytes
    label: bytes


@dataclass(frozen=True)
class VerificationNeeded(Event):
    """Server with ``defer_work``: an AUTH signature to check elsewhere,
    on a key the client chose, with the PSS salt length the protocol fixes;
    answer with :meth:`ServerConnection.auth_verified`."""

    public_key: Any
    signature: bytes
    message: bytes
    salt_length: int


@dataclass(frozen=True)
class SigningNeeded(Event):
    """Server with ``defer_work``: the announcement of the next key (§14.3)
    needs its signature, made elsewhere with ``private_key`` (the next
    key); answer with :meth:`ServerConnection.announcement_signed`."""

    private_key: Any
    message: bytes
    salt_length: int


@dataclass(frozen=True)
class HandshakeComplete(Event):
    """The keys are confirmed; application data may flow.

    On the server ``peer_fingerprint`` is the client's key when it
    authenticated (by AUTH, or by the ticket it resumed with), else
    ``None``; on the client it is the server's.  ``resumed`` says whether
    the session came from a ticket.  ``post_quantum``: its keys depend on an
    ML-KEM secret (revision 3, §12); ``record_cipher``: its records' (§13).
    """

    peer_fingerprint: Optional[str] = None
    resumed: bool = False
    post_quantum: bool = False
    record_cipher: str = "aes-256-gcm"


@dataclass(frozen=True)
class TicketReceived(Event):
    """Client side: the server sent a ticket for resuming later.  ``secret``
    is this session's resumption secret, to be kept with it;
    ``post_quantum`` and ``forward_secrecy`` say whether the session had an
    ML-KEM secret and an ephemeral key (§11.2, §11.3: a client that
    requires one resumes only tickets of sessions that had it)."""

    ticket: bytes
    lifetime: int
    secret: bytes
    server_fingerprint: str
    post_quantum: bool = False
    forward_secrecy: bool = True

    def __repr__(self):  # the secret stays out of logs and test output
        return f"TicketReceived(<{len(self.ticket)} bytes>, lifetime={self.lifetime})"


@dataclass(frozen=True)
class NextKeyAnnounced(Event):
    """Client side: the server's announcement (§14) checked and good:
    ``announcement`` is a :class:`~keyexchanged.rotation.Announcement`."""

    announcement: Any
    server_fingerprint: str


@dataclass(frozen=True)
class AnnouncementIgnored(Event):
    """Client side: the server's announcement (§14.4) is bad and was
    ignored; ``reason`` says why.  The session goes on."""

    reason: str


@dataclass(frozen=True)
class DataReceived(Event):
    data: bytes


@dataclass(frozen=True)
class EndReceived(Event):
    """The peer will send no more records."""


@dataclass(frozen=True)
class ErrorReceived(Event):
    """The peer sent ERROR; the connection is over."""

    code: str
    detail: str


@dataclass(frozen=True)
class ProtocolFailed(Event):
    """We sent ERROR (queued in :meth:`data_to_send`); the connection is over."""

    code: str
    detail: str
