"""The events the state machines report, one class each.

What the application or the adapter should know about: a key to trust, work
to do elsewhere, a handshake complete, data, an end.  Events compare equal
by their fields, which is what the vector tests check.
"""


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
    (size, exponent, signature, expiry): what ``--explain`` shows.

    Revision 3: ``mlkem_fingerprint`` names the ML-KEM-768 key offered
    with it (``SHA256:`` ‖ base64 of SHA-256 of its 1 184 bytes), checked
    and signed, and ``record_cipher`` the cipher HELLO names; both are
    ``None`` when HELLO offers no ML-KEM key or the client reads it as
    revision 2."""

    __slots__ = (
        "bits",
        "expires",
        "fingerprint",
        "mlkem_fingerprint",
        "public_key",
        "record_cipher",
    )

    def __init__(
        self, public_key, fingerprint, expires, mlkem_fingerprint=None, record_cipher=None
    ):
        self.public_key = public_key
        self.fingerprint = fingerprint
        self.expires = expires
        self.bits = public_key.n.bit_length()
        self.mlkem_fingerprint = mlkem_fingerprint
        self.record_cipher = record_cipher


class ServerKeyReceived(Event):
    """Client side: HELLO arrived and is well formed; decide whether to trust
    its long-term key.  Answer with :meth:`ClientConnection.accept_key` or
    :meth:`ClientConnection.reject_key`.  ``ephemeral`` is an
    :class:`EphemeralOffer` (checked already) or ``None``; ``rotation``
    says whether HELLO offers key rotation announcements (§14)."""

    __slots__ = ("certificates", "der", "ephemeral", "fingerprint", "public_key", "rotation")

    def __init__(self, public_key, der, fingerprint, certificates, ephemeral=None, rotation=False):
        self.public_key = public_key
        self.der = der
        self.fingerprint = fingerprint
        self.certificates = certificates
        self.ephemeral = ephemeral
        #: HELLO offers key rotation announcements (§14.1).
        self.rotation = rotation


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
    on a key the client chose, with the PSS salt length the protocol fixes;
    answer with :meth:`ServerConnection.auth_verified`."""

    __slots__ = ("message", "public_key", "salt_length", "signature")

    def __init__(self, public_key, signature, message, salt_length):
        self.public_key = public_key
        self.signature = signature
        self.message = message
        self.salt_length = salt_length


class SigningNeeded(Event):
    """Server with ``defer_work``: the announcement of the next key (§14.3)
    needs its signature, made elsewhere with ``private_key`` (the next
    key); answer with :meth:`ServerConnection.announcement_signed`."""

    __slots__ = ("message", "private_key", "salt_length")

    def __init__(self, private_key, message, salt_length):
        self.private_key = private_key
        self.message = message
        self.salt_length = salt_length


class HandshakeComplete(Event):
    """The keys are confirmed; application data may flow.

    On the server ``peer_fingerprint`` is the client's key when it
    authenticated (by AUTH, or by the ticket it resumed with), else
    ``None``; on the client it is the server's.  ``resumed`` says whether
    the session came from a ticket.  ``post_quantum``: its keys depend on an
    ML-KEM secret (revision 3, §12); ``record_cipher``: its records' (§13).
    """

    __slots__ = ("peer_fingerprint", "post_quantum", "record_cipher", "resumed")

    def __init__(
        self, peer_fingerprint=None, resumed=False, post_quantum=False, record_cipher="aes-256-gcm"
    ):
        self.peer_fingerprint = peer_fingerprint
        self.resumed = resumed
        self.post_quantum = post_quantum
        self.record_cipher = record_cipher


class TicketReceived(Event):
    """Client side: the server sent a ticket for resuming later.  ``secret``
    is this session's resumption secret, to be kept with it;
    ``post_quantum`` and ``forward_secrecy`` say whether the session had an
    ML-KEM secret and an ephemeral key (§11.2, §11.3: a client that
    requires one resumes only tickets of sessions that had it)."""

    __slots__ = (
        "forward_secrecy",
        "lifetime",
        "post_quantum",
        "secret",
        "server_fingerprint",
        "ticket",
    )

    def __init__(
        self,
        ticket,
        lifetime,
        secret,
        server_fingerprint,
        post_quantum=False,
        forward_secrecy=True,
    ):
        self.ticket = ticket
        self.lifetime = lifetime
        self.secret = secret
        self.server_fingerprint = server_fingerprint
        self.post_quantum = post_quantum
        self.forward_secrecy = forward_secrecy

    def __repr__(self):  # the secret stays out of logs and test output
        return f"TicketReceived(<{len(self.ticket)} bytes>, lifetime={self.lifetime})"


class NextKeyAnnounced(Event):
    """Client side: the server's announcement (§14) checked and good:
    ``announcement`` is a :class:`~keyexchanged.rotation.Announcement`."""

    __slots__ = ("announcement", "server_fingerprint")

    def __init__(self, announcement, server_fingerprint):
        self.announcement = announcement
        self.server_fingerprint = server_fingerprint


class AnnouncementIgnored(Event):
    """Client side: the server's announcement (§14.4) is bad and was
    ignored; ``reason`` says why.  The session goes on."""

    __slots__ = ("reason",)

    def __init__(self, reason):
        self.reason = reason


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
