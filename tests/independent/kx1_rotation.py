"""Key rotation (docs/spec/kx1.rst §14) for the independent KX/1 peer,
written from the spec only, on ``cryptography`` and the helpers of
:mod:`tests.independent.kx1_peer` (nothing of keyexchanged).

- :class:`RotatingServer` offers rotation in HELLO and, to a client that
  asks, announces its next key (§14.3) before its message; it can also
  forge the announcement (signed by a key it does not announce, or replayed
  from its first session), to test what a client does with a bad one.
- :func:`announced_session` is a client that asks for the announcement and
  checks it (§14.4), pinning the server's key (§7.1).
- :func:`make_vectors` writes ``kx1-key-rotation.json``.

The PSS signature of the vectors needs a fixed salt, which ``cryptography``
cannot take: :func:`pss_sign_with_salt` encodes EMSA-PSS (RFC 8017 §9.1.1)
itself and checks the result with ``cryptography``.
"""

import base64
import hashlib
import json
import os
import socket
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization

from tests.independent import kx1_peer as kx1

#: §14.3: what the next key signs begins with this.
NEXT_KEY_CONTEXT = b"kx/1 next key\x00"
#: §14.3: an announcement's plaintext is at most this long.
ANNOUNCEMENT_LIMIT = 8192
SALT_LENGTH = 32


def next_key_message(th, current_der, next_der):
    """§14.3: context ‖ th ‖ SHA-256(DER of HELLO's key) ‖ DER of the next key."""
    return NEXT_KEY_CONTEXT + th + hashlib.sha256(current_der).digest() + next_der


def _mgf1(seed, length):
    out = b""
    counter = 0
    while len(out) < length:
        out += hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    return out[:length]


def pss_sign_with_salt(private_key, message, salt):
    """RSASSA-PSS with SHA-256, MGF1-SHA-256 and the given salt (RFC 8017
    §8.1.1, §9.1.1), checked with ``cryptography``'s verification."""
    numbers = private_key.private_numbers()
    n, d = numbers.public_numbers.n, numbers.d
    em_bits = n.bit_length() - 1
    em_len = (em_bits + 7) // 8
    m_hash = hashlib.sha256(message).digest()
    h = hashlib.sha256(b"\0" * 8 + m_hash + salt).digest()
    db = b"\0" * (em_len - len(salt) - len(h) - 2) + b"\x01" + salt
    masked = bytes(a ^ b for a, b in zip(db, _mgf1(h, em_len - len(h) - 1), strict=True))
    masked = bytes([masked[0] & (0xFF >> (8 * em_len - em_bits))]) + masked[1:]
    em = masked + h + b"\xbc"
    signature = pow(int.from_bytes(em, "big"), d, n).to_bytes((n.bit_length() + 7) // 8, "big")
    private_key.public_key().verify(signature, message, kx1.PSS, hashes.SHA256())
    return signature


def announcement_plaintext(signer, next_der, th, current_der, revoked=(), salt=None):
    """The server's NEXTKEY plaintext (§14.3); ``signer`` is the next key's
    private half (or, to forge, any other key)."""
    message = next_key_message(th, current_der, next_der)
    if salt is None:
        signature = signer.sign(message, kx1.PSS, hashes.SHA256())
    else:
        signature = pss_sign_with_salt(signer, message, salt)
    body = {
        "next": {
            "key": base64.b64encode(next_der).decode("ascii"),
            "signature": base64.b64encode(signature).decode("ascii"),
        }
    }
    if revoked:
        body["revoked"] = list(revoked)
    return json.dumps(body).encode("utf-8")


def offering_hello(key_der, nonce, ephemeral=None):
    """HELLO with ``"rotation": true`` (§14.1)."""
    hello = json.loads(kx1.hello_payload(key_der, nonce, ephemeral))
    hello["rotation"] = True
    return json.dumps(hello).encode("utf-8")


def read_announcement(plaintext, th, current_der):
    """§14.4: the next key's fingerprint, or ProtocolFailure saying why the
    announcement is bad (a client ignores it)."""
    if len(plaintext) > ANNOUNCEMENT_LIMIT:
        raise kx1.ProtocolFailure("bad-announcement", "over 8192 bytes")
    body = kx1.json_object(plaintext, "announcement", code="bad-announcement")
    next_member = kx1.member(body, "next", dict, "announcement", code="bad-announcement")
    der = kx1.strict_b64decode(next_member.get("key"), "next key", "bad-announcement")
    signature = kx1.strict_b64decode(
        next_member.get("signature"), "next signature", "bad-announcement"
    )
    key = kx1.acceptable_key(der, "the next key", "bad-announcement")
    if der == current_der:
        raise kx1.ProtocolFailure("bad-announcement", "the next key is the current key")
    try:
        key.verify(signature, next_key_message(th, current_der, der), kx1.PSS, hashes.SHA256())
    except InvalidSignature:
        raise kx1.ProtocolFailure("bad-announcement", "signature does not verify") from None
    return kx1.fingerprint(der)


# -- the server -----------------------------------------------------------------------


class RotatingServer(kx1.IndependentServer):
    """An :class:`~kx1_peer.IndependentServer` that offers rotation and
    announces ``next_key`` to clients that ask.  Full handshakes only (no
    tickets: resumption is §11's business, tested elsewhere).

    ``forge`` is None (a true announcement), ``"signer"`` (signed by a key
    the server does not announce, so it does not hold the announced key),
    or ``"replay"`` (every session after the first gets the first
    session's announcement, made for another transcript).
    """

    def __init__(self, next_key, forge=None, revoked=(), **options):
        options.setdefault("ticket_lifetime", 0)
        super().__init__(**options)
        self.next_key = next_key
        self.next_der = kx1.spki_der(next_key.public_key())
        self.forge = forge
        self.revoked = tuple(revoked)
        self._first_announcement = None
        #: Per session: whether the client asked (§14.2).
        self.asked = []

    def _announcement(self, th):
        if self.forge == "replay" and self._first_announcement is not None:
            return self._first_announcement
        signer = self.next_key
        if self.forge == "signer":
            signer = self.ephemeral or self.long_term
        plaintext = announcement_plaintext(
            signer, self.next_der, th, self.long_term_der, self.revoked
        )
        if self._first_announcement is None:
            self._first_announcement = plaintext
        return plaintext

    def _run(self, frames, session):
        nonce = os.urandom(32)
        hello = offering_hello(self.long_term_der, nonce, self._ephemeral_member)
        frames.send("HELLO", hello)
        verb, payload = frames.receive()
        if verb == "ERROR":
            raise kx1.PeerError(*kx1.read_error(payload))
        if verb != "KEY":
            raise kx1.ProtocolFailure("unexpected-frame", f"{verb} in place of KEY")
        private = self.ephemeral if self.ephemeral is not None else self.long_term
        if len(payload) != kx1.modulus_bytes(private):
            raise kx1.ProtocolFailure("malformed-frame", "KEY of the wrong length")
        try:
            ikm = private.decrypt(payload, kx1.oaep(hello))
        except ValueError:
            ikm = None
        if ikm is None or len(ikm) != 32:
            session.decryption_failed = True
            ikm = os.urandom(32)
        session.kind = "full"
        th = kx1.transcript_hash(hello, payload)
        client_key, server_key, _ = kx1.session_keys(ikm, nonce, th, False)
        sending, receiving = kx1.Direction(server_key), kx1.Direction(client_key)
        frames.send("MSG", sending.seal("MSG", b""))  # §5 key confirmation

        # §14.2: NEXTKEY, if any, comes before the client's first record.
        verb, payload = frames.receive()
        asked = verb == "NEXTKEY"
        if asked:
            if receiving.open("NEXTKEY", payload):
                raise kx1.ProtocolFailure("malformed-frame", "a NEXTKEY request with content")
            verb, payload = frames.receive()
        self.asked.append(asked)
        if verb != "MSG":
            raise kx1.ProtocolFailure("unexpected-frame", f"{verb} as the first record")
        session.received += receiving.open("MSG", payload)
        if asked:  # §14.3: before any application data
            frames.send("NEXTKEY", sending.seal("NEXTKEY", self._announcement(th)))
        frames.send("MSG", sending.seal("MSG", self.message))
        frames.send("END", sending.seal("END", b""))
        while not self._client_record(frames, receiving, session):
            pass
        session.outcome = "ok"


# -- a client that asks ------------------------------------------------------------------


def announced_session(host, port, pinned, timeout=kx1.SOCKET_TIMEOUT):
    """One session with a server whose key is ``pinned`` (§7.1), asking for
    the announcement when HELLO offers rotation.  Returns ``(next key's
    fingerprint or None, the server's data)``; a bad announcement raises
    :class:`~kx1_peer.ProtocolFailure` with the code ``bad-announcement``."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        frames = kx1.FrameSocket(sock)
        verb, payload = frames.receive()
        if verb != "HELLO":
            raise kx1.ProtocolFailure("unexpected-frame", f"{verb} before HELLO")
        hello = kx1.parse_hello(payload)
        long_term = kx1.acceptable_key(hello.key_der, "the server key", "weak-key")
        if hello.fingerprint != pinned:
            raise kx1.ProtocolFailure("untrusted-key", "not the pinned key")
        encrypt_to = kx1.verify_ephemeral(hello, long_term, time.time())
        offered = json.loads(payload).get("rotation") is True
        secret = os.urandom(32)
        key_payload = encrypt_to.encrypt(secret, kx1.oaep(hello.payload))
        frames.send("KEY", key_payload)
        th = kx1.transcript_hash(hello.payload, key_payload)
        client_key, server_key, _ = kx1.session_keys(secret, hello.nonce, th, False)
        sending = kx1.Direction(client_key)
        if offered:
            frames.send("NEXTKEY", sending.seal("NEXTKEY", b""))
        frames.send("MSG", sending.seal("MSG", b""))
        receiving = kx1.Direction(server_key)
        announced, data, ended = None, b"", False
        while not ended:
            verb, payload = frames.receive()
            if verb == "ERROR":
                raise kx1.PeerError(*kx1.read_error(payload))
            plaintext = receiving.open(verb, payload)
            if verb == "NEXTKEY":
                if not offered or announced is not None:
                    raise kx1.ProtocolFailure("unexpected-frame", "NEXTKEY not asked for")
                announced = read_announcement(plaintext, th, hello.key_der)
            elif verb == "MSG":
                data += plaintext
            elif verb == "END":
                ended = True
        frames.send("END", sending.seal("END", b""))
        return announced, data


# -- the vectors -------------------------------------------------------------------------


def _pem(private_key):
    return private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def make_vectors(handshake_vectors, resume_vectors):
    """The §14 vectors, as a JSON-ready dict: a session resumed from the
    ticket of ``kx1-ephemeral-resume.json`` (so that nothing in it is
    random), whose HELLO offers rotation; the client's NEXTKEY request and
    first record; the server's confirmation and announcement of its next
    key (the client key of ``kx1-handshake.json``)."""

    def unhex(value):
        return bytes.fromhex(value)

    server = serialization.load_pem_private_key(
        handshake_vectors["server_private_key_pem"].encode(), None
    )
    following = serialization.load_pem_private_key(
        handshake_vectors["client_private_key_pem"].encode(), None
    )
    current_der = kx1.spki_der(server.public_key())
    next_der = kx1.spki_der(following.public_key())
    nonce = hashlib.sha256(b"kx/1 rotation vector nonce").digest()
    hello = offering_hello(current_der, nonce, resume_vectors["ephemeral_member"])
    ticket = unhex(resume_vectors["ticket"])
    secret = unhex(resume_vectors["full"]["resumption_secret"])
    th = kx1.transcript_hash(hello, ticket)
    client_key, server_key, _ = kx1.session_keys(secret, nonce, th, True)
    salt = hashlib.sha256(b"kx/1 rotation vector salt").digest()
    message = next_key_message(th, current_der, next_der)
    plaintext = announcement_plaintext(following, next_der, th, current_der, salt=salt)
    client_records, server_records = kx1.Direction(client_key), kx1.Direction(server_key)
    signature = json.loads(plaintext)["next"]["signature"]
    return {
        "description": (
            "KX/1 revision 3, key rotation (docs/spec/kx1.rst §14); byte strings are hex. "
            "A session resumed with the ticket of kx1-ephemeral-resume.json (its "
            "resumption_secret from the full session there) whose HELLO offers rotation. "
            "The server key is that of kx1-handshake.json; its next key is the client "
            "key of kx1-handshake.json. Client records: NEXTKEY (the request, sequence 0), "
            "then the empty MSG (sequence 1). Server records: the empty MSG (the key "
            "confirmation, sequence 0), then NEXTKEY (the announcement, sequence 1)."
        ),
        "server_fingerprint": kx1.fingerprint(current_der),
        "next_private_key_pem": _pem(following),
        "next_spki_der": next_der.hex(),
        "next_fingerprint": kx1.fingerprint(next_der),
        "nonce": nonce.hex(),
        "hello_payload": hello.hex(),
        "resume_payload": ticket.hex(),
        "resumption_secret": secret.hex(),
        "transcript_hash": th.hex(),
        "client_key": client_key.hex(),
        "server_key": server_key.hex(),
        "pss_salt": salt.hex(),
        "signed_message": message.hex(),
        "signature": base64.b64decode(signature).hex(),
        "announcement_plaintext": plaintext.hex(),
        "records": {
            "client_nextkey": client_records.seal("NEXTKEY", b"").hex(),
            "client_first_msg": client_records.seal("MSG", b"").hex(),
            "server_confirmation": server_records.seal("MSG", b"").hex(),
            "server_nextkey": server_records.seal("NEXTKEY", plaintext).hex(),
        },
    }
