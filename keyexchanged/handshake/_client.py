"""The client's side: one connection's state machine."""

import base64
import json
import secrets
import time
from typing import ClassVar

from keyexchanged import keys, mlkem, rotation, schedule
from keyexchanged.framing import (
    MALFORMED_FRAME,
    NO_FORWARD_SECRECY,
    NO_POST_QUANTUM,
    UNEXPECTED_FRAME,
    UNSUPPORTED_PROTOCOL,
    UNTRUSTED_KEY,
    WEAK_KEY,
    ProtocolError,
)
from keyexchanged.handshake._decoding import (
    _b64decode,
    _integer,
    _json_object,
    check_public_key,
)
from keyexchanged.handshake._events import (
    AnnouncementIgnored,
    EphemeralOffer,
    HandshakeComplete,
    NextKeyAnnounced,
    ServerKeyReceived,
    TicketReceived,
)
from keyexchanged.handshake._machine import (
    AUTH_SALT_LENGTH,
    NONCE_LENGTH,
    PROTOCOL_NAME,
    SECRET_LENGTH,
    Refuse,
    State,
    _Connection,
)
from keyexchanged.records import GCM, RECORD_CIPHERS, RecordOpener, RecordSealer
from keyexchanged.schedule import derive_keys, transcript_hash

#: §10.3: clocks disagree; an ephemeral key's ``expires`` may be this far
#: in the past, and this far beyond the one-day maximum, and still pass.
CLOCK_SKEW = 300
MAX_EPHEMERAL_AHEAD = 86400
#: A revision-3 client bounds it to minutes (§10.3, §12.2): a signed offer
#: can be replayed until it expires.
MAX_EPHEMERAL_AHEAD_POST_QUANTUM = 1800


class ClientConnection(_Connection):
    """One connection, client side.

    ``identity``: our own :class:`~keyexchanged.rsa.PrivateKey` for AUTH, or
    ``None``.  ``require_forward_secrecy``: refuse a HELLO without an
    ephemeral key (the default, §10.3).  ``ticket``: a
    :class:`~keyexchanged.tickets.StoredTicket` to resume with when HELLO's
    key is the one it was issued under.  ``clock`` gives the time for the
    ephemeral key's expiry.  ``random`` draws the session secret;
    ``oaep_seed`` and ``pss_salt`` exist only to reproduce the vectors.
    ``announcements``: ask for the server's next key when HELLO offers
    rotation (§14; the known-hosts trust does, pinned and CA trust do not).

    ``post_quantum`` makes this a revision-3 client (§12.4): it encapsulates
    to HELLO's ML-KEM key and uses the record cipher HELLO names, and
    refuses a HELLO without one (``no-post-quantum``) unless
    ``allow_classical``.  ``encapsulate`` replaces
    :func:`keyexchanged.mlkem.encapsulate` (the vectors' ciphertexts were
    made with randomness no API takes).
    """

    __slots__ = (
        "_announcement",
        "_clock",
        "_encapsulate",
        "_mlkem_public",
        "_nonce",
        "_oaep_seed",
        "_pss_salt",
        "_random",
        "_record_named",
        "_resumption_secret",
        "_ticket_forward_secrecy",
        "allow_classical",
        "certificates",
        "ephemeral",
        "hello_payload",
        "identity",
        "key_payload",
        "post_quantum",
        "post_quantum_session",
        "record_cipher",
        "require_forward_secrecy",
        "rotation_offered",
        "server_fingerprint",
        "server_key",
        "ticket",
        "want_announcements",
    )

    def __init__(
        self,
        identity=None,
        random=secrets.token_bytes,
        oaep_seed=None,
        pss_salt=None,
        require_forward_secrecy=True,
        ticket=None,
        clock=time.time,
        announcements=False,
        post_quantum=False,
        allow_classical=False,
        encapsulate=mlkem.encapsulate,
        **limits,
    ):
        super().__init__(**limits)
        self.want_announcements = announcements
        self.rotation_offered = False
        # None: not asked; "asked": NEXTKEY sent; "received": the answer came.
        self._announcement = None
        self.identity = identity
        self.post_quantum = post_quantum
        self.allow_classical = allow_classical
        self._encapsulate = encapsulate
        self._mlkem_public = None
        self._record_named = None
        self._ticket_forward_secrecy = False
        #: Once KEY or RESUME is sent: whether the session's keys depend on
        #: an ML-KEM secret, and its record cipher (§12, §13).
        self.post_quantum_session = False
        self.record_cipher = GCM
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

    @property
    def forward_secrecy(self):
        """Whether the session's secret went to the server's ephemeral key
        (§10): a full handshake with one offered."""
        return self.ephemeral is not None and not self.resumed

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
        if self.post_quantum:
            ephemeral = self._check_mlkem(hello, ephemeral, public_key, der)

        self.hello_payload = bytes(payload)
        self._nonce = nonce
        self.server_key = public_key
        self.server_fingerprint = keys.fingerprint(der)
        self.certificates = certificates
        self.ephemeral = ephemeral
        # §14.1: only the JSON true offers rotation.
        self.rotation_offered = hello.get("rotation") is True
        self._enter(State.TRUST)
        self._event(
            ServerKeyReceived(
                public_key,
                der,
                self.server_fingerprint,
                certificates,
                ephemeral,
                self.rotation_offered,
            )
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
        if self.post_quantum:
            if expires > now + MAX_EPHEMERAL_AHEAD_POST_QUANTUM + CLOCK_SKEW:
                raise ProtocolError(
                    UNTRUSTED_KEY, "ephemeral key is signed for more than 30 minutes"
                )
        elif expires > now + MAX_EPHEMERAL_AHEAD + CLOCK_SKEW:
            raise ProtocolError(UNTRUSTED_KEY, "ephemeral key is signed for more than a day")
        return EphemeralOffer(public_key, keys.fingerprint(der), expires)

    def _check_mlkem(self, hello, ephemeral, long_term, long_term_der):
        """§12.4: the ML-KEM key beside the ephemeral key, its signature, and
        the record cipher; returns the offer with them, or refuses."""
        member, record = hello.get("mlkem768"), hello.get("record")
        if member is None and record is None:
            # No ephemeral key, and forward secrecy not required: the user
            # took the original exercise's scheme, and ML-KEM keys only ever
            # come with ephemeral keys (§12.4).
            if not self.allow_classical and ephemeral is not None:
                raise ProtocolError(
                    NO_POST_QUANTUM, "the server offers no ML-KEM key (post-quantum secrecy)"
                )
            return ephemeral
        if member is None or record is None or ephemeral is None:
            raise ProtocolError(
                MALFORMED_FRAME, "HELLO mlkem768 and record go together, with ephemeral"
            )
        if not isinstance(member, dict):
            raise ProtocolError(MALFORMED_FRAME, "HELLO mlkem768 is not an object")
        encapsulation_key = _b64decode(member.get("key"), "HELLO mlkem768 key")
        signature = _b64decode(member.get("signature"), "HELLO mlkem768 signature")
        if not isinstance(record, str):
            raise ProtocolError(MALFORMED_FRAME, "HELLO record is not a string")
        if record not in RECORD_CIPHERS:
            raise ProtocolError(MALFORMED_FRAME, f"HELLO names an unknown record cipher {record!r}")
        try:
            public = mlkem.public_key(encapsulation_key)
        except ValueError:
            raise ProtocolError(UNTRUSTED_KEY, "ML-KEM key is not an ML-KEM-768 key") from None
        message = schedule.hybrid_message(
            long_term_der,
            ephemeral.expires,
            keys.public_key_to_der(ephemeral.public_key),
            encapsulation_key,
        )
        if not long_term.verify_pss(message, signature, salt_length=schedule.PSS_SALT_LENGTH):
            raise ProtocolError(UNTRUSTED_KEY, "ML-KEM key signature does not verify")
        self._mlkem_public = public
        self._record_named = record
        return EphemeralOffer(
            ephemeral.public_key,
            ephemeral.fingerprint,
            ephemeral.expires,
            mlkem.fingerprint(encapsulation_key),
            record,
        )

    # -- KEY or RESUME --------------------------------------------------------------

    def accept_key(self):
        """The server's key is trusted: send RESUME when our ticket was issued
        under this key, else KEY; then our first record (AUTH with a client
        key, else an empty MSG, §5).  Returns the events."""
        if self.state is not State.TRUST:
            raise RuntimeError("accept_key() answers ServerKeyReceived only")
        ticket, self.ticket = self.ticket, None
        usable = ticket is not None and ticket.server_fingerprint == self.server_fingerprint
        # §11.3: never resume a session weaker than we require.
        if usable and self.post_quantum and not self.allow_classical:
            usable = ticket.post_quantum
        if usable and self.require_forward_secrecy:
            usable = ticket.forward_secrecy
        if usable:
            self._resume(ticket)
        else:
            self._send_key()
        self._enter(State.AWAIT_CONFIRM)
        if self.want_announcements and self.rotation_offered:
            # §14.2: before our first record, so that the server knows of
            # it when its handshake completes.
            self._seal("NEXTKEY", b"")
            self._announcement = "asked"
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
        self._mlkem_public, public = None, self._mlkem_public
        if public is not None:
            # §12.3: KEY = RSA ciphertext ‖ ML-KEM ciphertext; both secrets.
            mlkem_ciphertext, mlkem_secret = self._encapsulate(public)
            ciphertext += mlkem_ciphertext
            secret += mlkem_secret
            self._revision3()
        self.key_payload = ciphertext
        self._send_frame("KEY", ciphertext)
        self._derive(secret, ciphertext, resumed=False)

    def _revision3(self):
        self.post_quantum_session = True
        self.record_cipher = self._record_named

    def _resume(self, ticket):
        self.resumed = True
        self._ticket_forward_secrecy = ticket.forward_secrecy
        # §12.5: a revision-3 ticket, the cipher this HELLO names.
        self._mlkem_public = None
        if ticket.post_quantum:
            self.post_quantum_session = True
            if self._record_named is not None:
                self.record_cipher = self._record_named
        self.key_payload = ticket.ticket
        self._send_frame("RESUME", ticket.ticket)
        self._derive(ticket.secret, ticket.ticket, resumed=True)

    def _derive(self, ikm, payload, resumed):
        self.transcript_hash = transcript_hash(self.hello_payload, payload)
        hybrid = self.post_quantum_session and not resumed
        client_key, server_key = derive_keys(
            ikm, self._nonce, self.transcript_hash, resumed, hybrid
        )
        self._resumption_secret = schedule.resumption_secret(ikm, self._nonce, self.transcript_hash)
        self._sealer = RecordSealer(
            client_key, self._max_records, self._max_bytes, self.record_cipher
        )
        self._opener = RecordOpener(server_key, self.record_cipher)

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
            self._event(
                HandshakeComplete(
                    self.server_fingerprint,
                    self.resumed,
                    self.post_quantum_session,
                    self.record_cipher,
                )
            )

    def _on_ticket(self, verb, payload):
        obj = _json_object(self._open("TICKET", payload), MALFORMED_FRAME, "TICKET")
        ticket = _b64decode(obj.get("ticket"), "TICKET ticket")
        lifetime = obj.get("lifetime")
        if not 1 <= len(ticket) <= 512:
            raise ProtocolError(MALFORMED_FRAME, "TICKET ticket is not 1 to 512 bytes")
        if not _integer(lifetime) or not 1 <= lifetime <= 86400:
            raise ProtocolError(MALFORMED_FRAME, "TICKET lifetime is not 1 to 86400 seconds")
        self._event(
            TicketReceived(
                ticket,
                lifetime,
                self._resumption_secret,
                self.server_fingerprint,
                self.post_quantum_session,
                # The chain's: a resumed session has what its ticket's had.
                self._ticket_forward_secrecy if self.resumed else self.ephemeral is not None,
            )
        )

    def _on_next_key(self, verb, payload):
        if self._announcement != "asked":
            raise ProtocolError(UNEXPECTED_FRAME, "NEXTKEY that was not asked for")
        self._announcement = "received"
        plaintext = self._open("NEXTKEY", payload)
        try:
            announcement = rotation.read_announcement(
                plaintext, self.transcript_hash, keys.public_key_to_der(self.server_key)
            )
        except rotation.BadAnnouncement as bad:
            self._event(AnnouncementIgnored(str(bad)))
        else:
            self._event(NextKeyAnnounced(announcement, self.server_fingerprint))

    RULES: ClassVar[dict] = {
        State.AWAIT_HELLO: {"HELLO": _on_hello},
        State.AWAIT_CONFIRM: {
            "MSG": _Connection._on_msg,
            "END": _Connection._on_end,
            "UPDATE": _Connection._on_update,
            "TICKET": Refuse(UNEXPECTED_FRAME, "TICKET before the server's first record"),
            "NEXTKEY": Refuse(UNEXPECTED_FRAME, "NEXTKEY before the server's first record"),
        },
        State.OPEN: {
            "MSG": _Connection._on_msg,
            "END": _Connection._on_end,
            "UPDATE": _Connection._on_update,
            "TICKET": _on_ticket,
            "NEXTKEY": _on_next_key,
        },
    }
