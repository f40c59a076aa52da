"""The server's side: its per-key identity, and one connection's state machine."""

import base64
import json
import secrets
from typing import ClassVar

from keyexchanged import keys, mlkem, schedule
from keyexchanged.errors import StaleTicket
from keyexchanged.framing import (
    AUTH_FAILED,
    AUTH_REQUIRED,
    MALFORMED_FRAME,
    NO_POST_QUANTUM,
    STALE_TICKET,
    UNEXPECTED_FRAME,
    ProtocolError,
)
from keyexchanged.handshake._decoding import _b64decode, _json_object, check_public_key
from keyexchanged.handshake._events import (
    DecryptionNeeded,
    HandshakeComplete,
    SigningNeeded,
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
    _Connection,
)
from keyexchanged.records import GCM, OCB, RECORD_CIPHERS, RecordOpener, RecordSealer
from keyexchanged.rsa import DecryptionError, FaultError
from keyexchanged.schedule import derive_keys, transcript_hash

#: Marks the private-key work away as the announcement's signature (§14.3).
_SIGNING = object()

#: What a server accepts as a client key in AUTH (§8): verifying costs a
#: public-key operation on a key a stranger chose, so it is bounded harder
#: than a server key.  e = 65537 makes the cost ~17 squarings.
DEFAULT_CLIENT_KEY_MAX_BITS = 4096
CLIENT_KEY_EXPONENT = 65537


class ServerIdentity:
    """Everything about the server's long-term key that is the same for
    every connection: its DER, fingerprint, certificate chain, and the HELLO
    around the nonce (made once per ephemeral key, not per connection).

    :param private_key: the server's long-term
        :class:`~keyexchanged.rsa.PrivateKey`
        (:func:`keyexchanged.keys.load_private_key` reads one).
    :param certificates: the DER certificate chain HELLO carries, leaf
        first, for clients that check with a CA
        (``keyexchanged.ca.load_server_chain`` reads and checks one);
        empty by default.
    :param announcement: a :class:`~keyexchanged.rotation.ServerAnnouncement`
        of the next key, or ``None``: HELLO offers no rotation (§14).
    :param record_cipher: the cipher HELLO names beside an ML-KEM key
        (revision 3, §13): used only with a client whose KEY is of
        revision 3.
    :raises ValueError: for a record cipher KX/1 does not define.

    ``fingerprint`` is the key's ``SHA256:...`` fingerprint, what clients
    pin.
    """

    def __init__(self, private_key, certificates=(), announcement=None, record_cipher=OCB):
        if record_cipher not in RECORD_CIPHERS:
            raise ValueError(f"no record cipher {record_cipher!r}")
        self.record_cipher = record_cipher
        self.private_key = private_key
        self.public_key = private_key.public_key()
        self.der = keys.public_key_to_der(self.public_key)
        self.key_b64 = base64.b64encode(self.der).decode("ascii")
        self.fingerprint = keys.fingerprint(self.public_key)
        self.key_bytes = (self.public_key.n.bit_length() + 7) // 8
        self.certificates = tuple(certificates)
        self.certificates_b64 = [base64.b64encode(c).decode("ascii") for c in self.certificates]
        self.announcement = announcement
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
            if ephemeral.mlkem_member is not None:
                # Beside the revision-2 member, which stays as it was (§12.1).
                hello["mlkem768"] = ephemeral.mlkem_member
                hello["record"] = self.record_cipher
        if self.announcement is not None:
            hello["rotation"] = True
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
    tests replace it to replay the vectors.  ``require_post_quantum``
    refuses a KEY or ticket of revision 2 with ``no-post-quantum`` (§12.5).

    An established session keeps only what its records need: ``ephemeral``
    is ``None`` once the KEY or RESUME has arrived (or the connection
    ended), and ``transcript_hash`` (AUTH signs it) is ``None`` once the
    handshake is complete.
    """

    __slots__ = (
        "_announcement",
        "_authenticated",
        "_hello",
        "_holds_ephemeral",
        "_mlkem_secret",
        "_named_record",
        "_nonce",
        "_pending",
        "_random",
        "_resumption_secret",
        "authorized_keys",
        "client_fingerprint",
        "client_key_max_bits",
        "defer_work",
        "ephemeral",
        "forward_secrecy",
        "identity",
        "post_quantum_session",
        "record_cipher",
        "require_post_quantum",
        "tickets",
    )

    def __init__(
        self,
        identity,
        authorized_keys=None,
        random=secrets.token_bytes,
        defer_work=False,
        ephemeral=None,
        tickets=None,
        client_key_max_bits=DEFAULT_CLIENT_KEY_MAX_BITS,
        require_post_quantum=False,
        **limits,
    ):
        super().__init__(**limits)
        self.identity = identity
        self.require_post_quantum = require_post_quantum
        #: Whether the session's keys depend on an ML-KEM secret, and the
        #: cipher of its records (§12, §13): known once KEY or RESUME came.
        self.post_quantum_session = False
        self.record_cipher = GCM
        self._mlkem_secret = None
        # The cipher this connection's HELLO names, or None (no ML-KEM key).
        self._named_record = None
        self.authorized_keys = authorized_keys
        self._random = random
        self.defer_work = defer_work
        self.ephemeral = ephemeral
        self.tickets = tickets
        self.client_key_max_bits = client_key_max_bits
        self._hello = None
        self._nonce = None
        self._resumption_secret = None
        self._authenticated = None  # when a resumed session's chain began
        self._pending = None  # what the private-key work away will complete
        self.client_fingerprint = None
        self.forward_secrecy = ephemeral is not None
        self._holds_ephemeral = False
        # The NEXTKEY plaintext to send when the handshake completes (§14.3).
        self._announcement = None
        self.state = State.AWAIT_KEY

    def start(self):
        """Queue HELLO; call once the connection is accepted."""
        self._nonce = self._random(NONCE_LENGTH)
        self._hello = self.identity.hello_payload(self._nonce, self.ephemeral)
        if self.ephemeral is not None and self.ephemeral.mlkem_member is not None:
            self._named_record = self.identity.record_cipher
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
        # §12.2: the KEY's length tells its revision, on the header line.
        if verb == "KEY":
            k = self.ephemeral.key_bytes if self.ephemeral is not None else self.identity.key_bytes
            if self._named_record is not None and length == k + mlkem.CIPHERTEXT_LENGTH:
                return
            if length != k:
                expected = (
                    f"{k}"
                    if self._named_record is None
                    else f"{k} or {k + mlkem.CIPHERTEXT_LENGTH}"
                )
                raise ProtocolError(MALFORMED_FRAME, f"KEY must be {expected} bytes, not {length}")
            if self.require_post_quantum:
                raise ProtocolError(
                    NO_POST_QUANTUM, "this server requires ML-KEM (a KEY of KX/1 revision 3, §12)"
                )

    def _on_key(self, verb, payload):
        # Implicit rejection (§3): the replacement is drawn every time,
        # before decrypting, so that a failed decoding does no extra work and
        # the server goes on exactly as after a good one.  The client learns
        # of a bad KEY only when it cannot open our first record.
        fallback = self._random(SECRET_LENGTH)
        private_key = self._decrypting_key()
        if self._named_record is not None:
            k = self.ephemeral.key_bytes
            if len(payload) == k + mlkem.CIPHERTEXT_LENGTH:
                payload = bytes(payload)
                self._start_hybrid(payload[k:])
                rsa_part = payload[:k]
            else:
                rsa_part = payload
        else:
            rsa_part = payload
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
        value = int.from_bytes(rsa_part, "big")
        in_range = value < n
        ciphertext = rsa_part if in_range else (value % n).to_bytes(len(rsa_part), "big")
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

    def _start_hybrid(self, ciphertext):
        """A revision-3 KEY: decapsulate here (about 0.1 ms, no private-key
        work to hand out); the RSA half follows its usual path."""
        key = self.ephemeral.mlkem_key
        if key is None:
            # The offered keys are gone (KEY later than a handshake timeout
            # after retirement): nothing can decrypt; carry on regardless.
            self._mlkem_secret = self._random(mlkem.SECRET_LENGTH)
        else:
            self._mlkem_secret = mlkem.decapsulate(key, ciphertext)
        self.post_quantum_session = True
        self.record_cipher = self._named_record

    def _key_agreed(self, payload, secret, fallback, in_range):
        good = in_range and secret is not None and len(secret) == SECRET_LENGTH
        secret = secret if good else fallback
        if self.post_quantum_session:
            # §12.3: both secrets, concatenated, under a label of their own.
            secret, self._mlkem_secret = secret + self._mlkem_secret, None
        self._derive(secret, payload, resumed=False)
        if self.authorized_keys is not None:
            self._enter(State.AWAIT_AUTH)
        else:
            self._enter(State.AWAIT_FIRST)
            self._confirm()

    def _derive(self, ikm, payload, resumed):
        self.transcript_hash = transcript_hash(self._hello, payload)
        client_key, server_key = derive_keys(
            ikm, self._nonce, self.transcript_hash, resumed, self.post_quantum_session
        )
        if self.tickets is not None:
            self._resumption_secret = schedule.resumption_secret(
                ikm, self._nonce, self.transcript_hash
            )
        # No longer needed: an idle session should hold as little as it can.
        self._hello = self._nonce = None
        self._sealer = RecordSealer(
            server_key, self._max_records, self._max_bytes, self.record_cipher
        )
        self._opener = RecordOpener(client_key, self.record_cipher)

    # -- RESUME ------------------------------------------------------------------

    def _on_resume(self, verb, payload):
        self._release_ephemeral()
        if self.tickets is None:
            raise ProtocolError(STALE_TICKET, "this server does not resume sessions")
        try:
            opened = self.tickets.open_state(bytes(payload), self.identity.fingerprint)
        except StaleTicket as error:
            raise ProtocolError(STALE_TICKET, str(error)) from None
        secret, client = opened.secret, opened.client_fingerprint
        self._authenticated = opened.authenticated
        post_quantum = opened.post_quantum
        if not post_quantum and self.require_post_quantum:
            raise ProtocolError(
                NO_POST_QUANTUM, "this server requires ML-KEM (a ticket of KX/1 revision 3, §12)"
            )
        # §12.5: a revision-3 ticket makes a revision-3 session, with the
        # cipher this HELLO names (GCM when it names none).
        self.post_quantum_session = post_quantum
        if post_quantum and self._named_record is not None:
            self.record_cipher = self._named_record
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
            self._event(VerificationNeeded(public_key, signature, message, AUTH_SALT_LENGTH))
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
        if verb not in ("AUTH", "NEXTKEY") and self.state in (
            State.AWAIT_FIRST,
            State.AWAIT_FIRST_RESUMED,
        ):
            self._complete()

    def _complete(self):
        self._enter(State.OPEN)
        self._event(
            HandshakeComplete(
                self.client_fingerprint, self.resumed, self.post_quantum_session, self.record_cipher
            )
        )
        if self._announcement:
            # §14.3: before TICKET and before any application data.
            self._seal("NEXTKEY", self._announcement)
        self._announcement = None
        if self._resumption_secret is not None:
            # One TICKET per session, once the client is known (it names
            # the client's key when there was an AUTH).
            self._send_ticket()
        # The handshake is over: what only it needed goes.  (The record
        # keys stay; the HELLO, nonce and secrets went as they were used.)
        self.transcript_hash = None

    # -- NEXTKEY: the client asks for the announcement (§14.2) ----------------------

    def _on_next_key_request(self, verb, payload):
        if self.identity.announcement is None:
            raise ProtocolError(UNEXPECTED_FRAME, "NEXTKEY, but HELLO offered no rotation")
        if self._announcement is not None:
            raise ProtocolError(UNEXPECTED_FRAME, "a second NEXTKEY")
        if self._open("NEXTKEY", payload):
            raise ProtocolError(MALFORMED_FRAME, "a NEXTKEY request that is not empty")
        # Signed now, while the client's first record is on its way: the
        # announcement is ready when the handshake completes, and a
        # signature elsewhere never holds back a started application.
        announcement = self.identity.announcement
        message = announcement.message(self.transcript_hash, self.identity.der)
        if message is None:  # revoked keys only: nothing to sign
            self._announcement = announcement.signed_plaintext(None)
        elif self.defer_work:
            self._announcement = b""  # asked; empty until signed
            self._pending = (_SIGNING, self.state)
            self._enter(State.WORKING)
            self._event(
                SigningNeeded(announcement.next_key.private_key, message, schedule.PSS_SALT_LENGTH)
            )
        else:
            try:
                self._announcement = announcement.plaintext(self.transcript_hash, self.identity.der)
            except FaultError:
                # Advisory: a signature that fails its own check is not
                # sent, and the session goes on.
                self._announcement = b""

    def announcement_signed(self, signature):
        """The answer to :class:`SigningNeeded`: the signature, or ``None``
        when it failed (no announcement is sent).  Returns the events."""
        pending = self._pending
        if self.state is State.WORKING and isinstance(pending, tuple) and pending[0] is _SIGNING:
            self._pending = None
            self._enter(pending[1])
            if signature is not None:
                self._announcement = self.identity.announcement.signed_plaintext(signature)
            self._replay_waiting()
        return self._take_events()

    # -- our records ---------------------------------------------------------------

    def _confirm(self):
        """Key confirmation (§5): our first record, as soon as the keys are
        agreed (and AUTH checked, when required), before any application
        exists; the client completes its handshake when it opens."""
        self._seal("MSG", b"")

    def _send_ticket(self):
        secret, self._resumption_secret = self._resumption_secret, None
        issued = self.tickets.issue(
            secret,
            self.identity.fingerprint,
            self.client_fingerprint,
            self._authenticated,
            post_quantum=self.post_quantum_session,
        )
        if issued is None:
            return  # the chain of resumptions has run its time: a full handshake next
        ticket, lifetime = issued
        plaintext = json.dumps(
            {"ticket": base64.b64encode(ticket).decode("ascii"), "lifetime": lifetime}
        ).encode("ascii")
        super()._seal("TICKET", plaintext)

    # -- the end -----------------------------------------------------------------------

    def _release_ephemeral(self):
        """This connection no longer waits for a KEY under its offered key:
        it lets go of the key (``ephemeral`` becomes ``None``), so that an
        established session holds no reference to a key that has retired."""
        ephemeral, self.ephemeral = self.ephemeral, None
        if self._holds_ephemeral:
            self._holds_ephemeral = False
            ephemeral.release()

    def _release(self):
        self._release_ephemeral()
        self._resumption_secret = self._mlkem_secret = None
        self._authenticated = None  # when a resumed session's chain began
        self._pending = None

    _AUTH_REQUIRED = Refuse(AUTH_REQUIRED, "this server requires AUTH first")
    _AUTH_NOT_FIRST = Refuse(UNEXPECTED_FRAME, "AUTH must be the first client record")

    RULES: ClassVar[dict] = {
        State.AWAIT_KEY: {"KEY": _on_key, "RESUME": _on_resume},
        State.WORKING: {"AUTH": WAIT, "MSG": WAIT, "END": WAIT, "UPDATE": WAIT, "NEXTKEY": WAIT},
        State.AWAIT_AUTH: {
            "NEXTKEY": _on_next_key_request,
            "AUTH": _on_auth,
            "MSG": _AUTH_REQUIRED,
            "END": _AUTH_REQUIRED,
            "UPDATE": _AUTH_REQUIRED,
        },
        State.AWAIT_FIRST: {
            "NEXTKEY": _on_next_key_request,
            "AUTH": _on_auth,
            "MSG": _Connection._on_msg,
            "END": _Connection._on_end,
            "UPDATE": _Connection._on_update,
        },
        State.AWAIT_FIRST_RESUMED: {
            "NEXTKEY": _on_next_key_request,
            "AUTH": Refuse(UNEXPECTED_FRAME, "AUTH after RESUME: the ticket names the client"),
            "MSG": _Connection._on_msg,
            "END": _Connection._on_end,
            "UPDATE": _Connection._on_update,
        },
        State.OPEN: {
            "NEXTKEY": Refuse(UNEXPECTED_FRAME, "NEXTKEY after the client's first record"),
            "AUTH": _AUTH_NOT_FIRST,
            "MSG": _Connection._on_msg,
            "END": _Connection._on_end,
            "UPDATE": _Connection._on_update,
        },
    }
