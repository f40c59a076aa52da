"""A minimal KX/1 revision 3 peer, written from ``docs/spec/kx1.rst`` only.

It exists to judge keyexchanged: the tests run it against the real daemon
and the real client.  It therefore shares no code with keyexchanged (it
imports nothing from it) and uses the plainest tools there are: blocking
sockets with timeouts, one thread per server, and ``cryptography`` (OpenSSL)
for RSA, HKDF, ML-KEM-768, AES-GCM and AES-OCB3.  The HPKE export of §12.3
is written here from RFC 9180, on HMAC and HKDF-Expand.  Section numbers
(§n) are those of the spec.

The client speaks revision 2 (``revision=2``, the default: the daemon's
own tests rely on it) or revision 3 (§12, §13); the server speaks both at
once, as a revision-3 server does (§12.5).

- :class:`IndependentClient` requires forward secrecy (§10.3), pins the
  server's long-term key by fingerprint (§7.1), sends KEY under the
  ephemeral key or RESUME with a stored ticket (§11.3), and reports the
  server's data, whether the session was resumed, and the tickets it got.
- :class:`IndependentServer` serves a bounded number of connections on
  127.0.0.1: HELLO with a signed ephemeral key (§10.1) or without one, KEY
  with implicit rejection (§3), RESUME with tickets of its own format
  (§11.2), key confirmation, one TICKET, then a message and END.

Everything a stranger sends is checked as strictly as the spec allows:
this peer is meant to notice deviations, not to smooth them over.
"""

import base64
import hashlib
import hmac
import json
import os
import re
import socket
import struct
import threading
import time

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.mlkem import (
    MLKEM768PrivateKey,
    MLKEM768PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESOCB3
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

PROTOCOL = "kx/1"

#: Every socket operation of this peer waits at most this long.
SOCKET_TIMEOUT = 10.0

# -- §1 framing -------------------------------------------------------------------

#: The largest payload of each verb (§1 table).
PAYLOAD_LIMITS = {
    "HELLO": 65536,
    "KEY": 1024 + 1088,  # revision 3: the RSA and the ML-KEM ciphertexts
    "RESUME": 512,
    "AUTH": 8192,
    "TICKET": 1024,
    "MSG": 65536 + 16,
    "END": 16,
    "UPDATE": 16,
    "ERROR": 1024,
    "NEXTKEY": 16384 + 16,  # §14 (kx1_rotation.py)
}
#: A header line longer than this (CRLF not counted) is malformed-frame.
HEADER_LIMIT = 32
_HEADER = re.compile(rb"([A-Z]{1,8}) (0|[1-9][0-9]{0,7})")

#: The application data of one MSG record (§5).
MSG_DATA_LIMIT = 65536
TAG_LENGTH = 16


class ProtocolFailure(Exception):
    """This peer found the other side at fault; ``code`` is the §6 code
    it answers with (in an ERROR frame, when the connection still allows)."""

    def __init__(self, code, detail):
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class PeerError(Exception):
    """The other side sent ERROR (§6)."""

    def __init__(self, code, detail):
        super().__init__(f"peer sent ERROR {code}: {detail}")
        self.code = code
        self.detail = detail


class Truncated(Exception):
    """The connection closed before the frame or the END we waited for (§5)."""


def encode_frame(verb, payload):
    """``verb SP length CRLF payload`` (§1)."""
    if verb not in PAYLOAD_LIMITS or len(payload) > PAYLOAD_LIMITS[verb]:
        raise ValueError(f"no such frame: {verb} of {len(payload)} bytes")
    return verb.encode("ascii") + b" " + str(len(payload)).encode("ascii") + b"\r\n" + payload


def error_payload(code, detail):
    return json.dumps({"error": code, "detail": detail}).encode("utf-8")


class FrameSocket:
    """Frames over a blocking socket whose every operation has a timeout.

    The header line is checked (grammar and verb, then size) before a
    single payload byte is read, as §1 requires of a receiver.
    """

    def __init__(self, sock):
        self.sock = sock
        self._buffer = b""

    def send(self, verb, payload):
        self.sock.sendall(encode_frame(verb, payload))

    def _fill(self, what):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise Truncated(f"connection closed while waiting for {what}")
        self._buffer += chunk

    def receive(self):
        """The next frame, as ``(verb, payload)``."""
        while True:
            end = self._buffer.find(b"\r\n", 0, HEADER_LIMIT + 2)
            if end >= 0:
                break
            if len(self._buffer) > HEADER_LIMIT + 1:
                raise ProtocolFailure("malformed-frame", "header line longer than 32 bytes")
            self._fill("a frame")
        line = self._buffer[:end]
        match = _HEADER.fullmatch(line)
        if match is None or match.group(1).decode("ascii") not in PAYLOAD_LIMITS:
            raise ProtocolFailure("malformed-frame", f"bad header line {line[:40]!r}")
        verb = match.group(1).decode("ascii")
        length = int(match.group(2))
        if length > PAYLOAD_LIMITS[verb]:
            raise ProtocolFailure(
                "frame-too-large", f"{verb} of {length} bytes (at most {PAYLOAD_LIMITS[verb]})"
            )
        self._buffer = self._buffer[end + 2 :]
        while len(self._buffer) < length:
            self._fill(f"the rest of {verb}")
        payload, self._buffer = self._buffer[:length], self._buffer[length:]
        return verb, payload

    def wait_closed(self):
        """Returns once the peer has closed; any byte before that is an
        unexpected frame (nothing may follow both ENDs)."""
        while True:
            if self._buffer:
                raise ProtocolFailure("unexpected-frame", "data after both ENDs")
            chunk = self.sock.recv(65536)
            if not chunk:
                return
            self._buffer += chunk


def read_error(payload):
    """A received ERROR, read leniently: it can only end the connection."""
    try:
        value = json.loads(payload.decode("utf-8"))
        return str(value["error"]), str(value.get("detail", ""))[:200]
    except (ValueError, KeyError, TypeError, AttributeError):
        return "unreadable", repr(payload[:80])


# -- strict decoding (§2) -----------------------------------------------------------

_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def strict_b64decode(text, what, code="malformed-frame"):
    """Standard base64 with padding; any character outside the alphabet, a
    missing pad, or a spelling that is not the canonical one is refused."""
    if not isinstance(text, str) or _BASE64.fullmatch(text) is None:
        raise ProtocolFailure(code, f"{what} is not strict base64")
    raw = base64.b64decode(text)
    if base64.b64encode(raw).decode("ascii") != text:
        raise ProtocolFailure(code, f"{what} is not canonical base64")
    return raw


def _unique_members(pairs):
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError("a member name occurs twice")
    return dict(pairs)


def _no_constants(name):
    raise ValueError(f"{name} is not JSON")


def json_object(payload, what, code="malformed-frame"):
    """A UTF-8 JSON object, without duplicate members or NaN/Infinity."""
    try:
        value = json.loads(
            payload.decode("utf-8"),
            object_pairs_hook=_unique_members,
            parse_constant=_no_constants,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolFailure(code, f"{what} is not a JSON object ({exc})") from None
    if not isinstance(value, dict):
        raise ProtocolFailure(code, f"{what} is not a JSON object")
    return value


def member(obj, name, kind, what, code="malformed-frame"):
    """A required member of a JSON type; ``bool`` is never an integer."""
    value = obj.get(name)
    if value is None or not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolFailure(code, f"{what} needs a member {name!r} of type {kind.__name__}")
    return value


# -- keys (§2, §10) -----------------------------------------------------------------


def spki_der(public_key):
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def fingerprint(der):
    """``SHA256:`` ‖ base64 without padding of SHA-256(DER SPKI) (§2)."""
    digest = base64.b64encode(hashlib.sha256(der).digest()).decode("ascii")
    return "SHA256:" + digest.rstrip("=")


def acceptable_key(der, what, code):
    """The RSA key in ``der`` if §2 accepts it: 2048 to 8192 bits, odd e
    with 2^16 < e < 2^256.  Anything else is answered with ``code``."""
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, TypeError) as exc:
        raise ProtocolFailure(code, f"{what} is not a DER public key ({exc})") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ProtocolFailure(code, f"{what} is not an RSA key")
    if spki_der(key) != der:
        raise ProtocolFailure(code, f"{what} is not in canonical DER")
    numbers = key.public_numbers()
    if not 2048 <= numbers.n.bit_length() <= 8192:
        raise ProtocolFailure(code, f"{what} has {numbers.n.bit_length()} bits")
    e = numbers.e
    if e % 2 == 0 or not 2**16 < e < 2**256:
        raise ProtocolFailure(code, f"{what} has the public exponent {e}")
    return key


def modulus_bytes(key):
    return (key.key_size + 7) // 8


PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)


def oaep(label):
    """RSAES-OAEP with SHA-256, MGF1-SHA-256 and the HELLO payload as label (§3)."""
    return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=label)


def ephemeral_signed_message(long_term_der, expires, ephemeral_der):
    """The message the long-term key signs (§10.1)."""
    return (
        b"kx/1 ephemeral key"
        + b"\x00"
        + hashlib.sha256(long_term_der).digest()
        + struct.pack(">Q", expires)
        + ephemeral_der
    )


#: §10.3: clocks may disagree by this much.
CLOCK_SLACK = 300
#: §10.2: no server signs an ``expires`` further ahead than this.
LONGEST_EXPIRY = 86400


def ephemeral_member(long_term_private, ephemeral_public, expires):
    """The ``ephemeral`` member of HELLO (§10.1), signed now."""
    long_term_der = spki_der(long_term_private.public_key())
    der = spki_der(ephemeral_public)
    message = ephemeral_signed_message(long_term_der, expires, der)
    signature = long_term_private.sign(message, PSS, hashes.SHA256())
    return {
        "key": base64.b64encode(der).decode("ascii"),
        "expires": expires,
        "signature": base64.b64encode(signature).decode("ascii"),
    }


# -- §2 HELLO -----------------------------------------------------------------------


class Hello:
    """A parsed HELLO.  ``payload`` is the bytes as received: they are the
    OAEP label and enter the transcript hash (§3, §4)."""

    def __init__(self, payload, key_der, nonce, certificates, ephemeral, mlkem=None, record=None):
        self.payload = payload
        self.key_der = key_der
        self.nonce = nonce
        self.certificates = certificates
        #: ``(der, expires, signature)`` or None.
        self.ephemeral = ephemeral
        #: Revision 3 (§12.1): ``(encapsulation key, signature)`` or None,
        #: and the record cipher HELLO names, or None.
        self.mlkem = mlkem
        self.record = record

    @property
    def fingerprint(self):
        return fingerprint(self.key_der)


def hello_payload(key_der, nonce, ephemeral=None, mlkem=None, record=None):
    """The HELLO a server sends (§2): ``ephemeral`` is the member of §10.1,
    ``mlkem`` and ``record`` those of §12.1."""
    hello = {
        "protocol": PROTOCOL,
        "key": base64.b64encode(key_der).decode("ascii"),
        "nonce": base64.b64encode(nonce).decode("ascii"),
    }
    if ephemeral is not None:
        hello["ephemeral"] = ephemeral
    if mlkem is not None:
        hello["mlkem768"] = mlkem
        hello["record"] = record
    return json.dumps(hello).encode("utf-8")


def parse_hello(payload, revision=2):
    """§2, §10.1 and (``revision`` 3) §12.1: the members, strictly; unknown
    members are ignored, so a revision-2 reader ignores those of §12."""
    hello = json_object(payload, "HELLO")
    protocol = member(hello, "protocol", str, "HELLO")
    if protocol != PROTOCOL:
        raise ProtocolFailure("unsupported-protocol", f"HELLO names protocol {protocol[:40]!r}")
    key_der = strict_b64decode(member(hello, "key", str, "HELLO"), "HELLO key")
    nonce = strict_b64decode(member(hello, "nonce", str, "HELLO"), "HELLO nonce")
    if len(nonce) != 32:
        raise ProtocolFailure("malformed-frame", f"HELLO nonce of {len(nonce)} bytes, not 32")
    certificates = None
    if "certificates" in hello:
        chain = member(hello, "certificates", list, "HELLO")
        certificates = [strict_b64decode(c, "HELLO certificate") for c in chain]
    ephemeral = None
    if "ephemeral" in hello:
        offer = member(hello, "ephemeral", dict, "HELLO")
        ephemeral = (
            strict_b64decode(member(offer, "key", str, "ephemeral"), "ephemeral key"),
            member(offer, "expires", int, "ephemeral"),
            strict_b64decode(member(offer, "signature", str, "ephemeral"), "ephemeral signature"),
        )
    mlkem = record = None
    if revision >= 3 and ("mlkem768" in hello or "record" in hello):
        # §12.4: together, and only with an ephemeral offer.
        if "mlkem768" not in hello or "record" not in hello or ephemeral is None:
            raise ProtocolFailure(
                "malformed-frame", "HELLO mlkem768 and record go together, with ephemeral"
            )
        offer = member(hello, "mlkem768", dict, "HELLO")
        mlkem = (
            strict_b64decode(member(offer, "key", str, "mlkem768"), "ML-KEM key"),
            strict_b64decode(member(offer, "signature", str, "mlkem768"), "ML-KEM signature"),
        )
        record = member(hello, "record", str, "HELLO")
        if record not in RECORD_CIPHERS:
            raise ProtocolFailure(
                "malformed-frame", f"HELLO names the record cipher {record[:40]!r}"
            )
    return Hello(payload, key_der, nonce, certificates, ephemeral, mlkem, record)


def verify_ephemeral(hello, long_term_key, now, longest=LONGEST_EXPIRY):
    """§10.3: the ephemeral key as any server key, its signature under the
    long-term key, and its expiry window (``longest`` ahead: a day in
    revision 2, 1 800 s in revision 3).  Any failure is untrusted-key."""
    der, expires, signature = hello.ephemeral
    key = acceptable_key(der, "the ephemeral key", "untrusted-key")
    if not 0 <= expires < 2**64:
        raise ProtocolFailure("untrusted-key", f"ephemeral expires {expires} is no uint64")
    try:
        long_term_key.verify(
            signature, ephemeral_signed_message(hello.key_der, expires, der), PSS, hashes.SHA256()
        )
    except InvalidSignature:
        raise ProtocolFailure(
            "untrusted-key", "the ephemeral key's signature does not verify"
        ) from None
    if not now - CLOCK_SLACK <= expires <= now + longest + CLOCK_SLACK:
        raise ProtocolFailure(
            "untrusted-key", f"the ephemeral key expires at {expires}, outside the window"
        )
    return key


# -- §12 ML-KEM-768 and the hybrid key exchange ------------------------------------------

#: FIPS 203 sizes of ML-KEM-768.
MLKEM768_KEY_LENGTH = 1184
MLKEM768_CIPHERTEXT_LENGTH = 1088
#: §12.2: a revision-3 server signs ``expires`` at most this far ahead.
LONGEST_EXPIRY_REVISION3 = 1800

HYBRID_CONTEXT = b"kx/1 hybrid ephemeral keys"
HPKE_INFO = b"kx/1 hybrid ml-kem-768"
HPKE_EXPORTER_CONTEXT = b"kx/1 hybrid secret"
#: RFC 9180 §5.1: "HPKE" ‖ kem_id (ML-KEM-768) ‖ kdf_id (HKDF-SHA256) ‖
#: aead_id (export only).
HPKE_SUITE_ID = b"HPKE" + struct.pack(">HHH", 0x0041, 0x0001, 0xFFFF)


def hybrid_signed_message(long_term_der, expires, ephemeral_der, encapsulation_key):
    """The message the long-term key signs in ``mlkem768`` (§12.1)."""
    return (
        HYBRID_CONTEXT
        + b"\x00"
        + hashlib.sha256(long_term_der).digest()
        + struct.pack(">Q", expires)
        + hashlib.sha256(ephemeral_der).digest()
        + encapsulation_key
    )


def mlkem_member(long_term_private, expires, ephemeral_der, encapsulation_key):
    """The ``mlkem768`` member of HELLO (§12.1), signed now."""
    long_term_der = spki_der(long_term_private.public_key())
    message = hybrid_signed_message(long_term_der, expires, ephemeral_der, encapsulation_key)
    signature = long_term_private.sign(message, PSS, hashes.SHA256())
    return {
        "key": base64.b64encode(encapsulation_key).decode("ascii"),
        "signature": base64.b64encode(signature).decode("ascii"),
    }


def verify_mlkem(hello, long_term_key):
    """§12.4: the encapsulation key (length, FIPS 203 modulus check) and
    its signature; any failure is untrusted-key.  Returns the public key."""
    encapsulation_key, signature = hello.mlkem
    if len(encapsulation_key) != MLKEM768_KEY_LENGTH:
        raise ProtocolFailure(
            "untrusted-key", f"an ML-KEM-768 key of {len(encapsulation_key)} bytes"
        )
    try:
        public = MLKEM768PublicKey.from_public_bytes(encapsulation_key)
    except ValueError:
        raise ProtocolFailure("untrusted-key", "the ML-KEM-768 key fails its check") from None
    ephemeral_der, expires, _ = hello.ephemeral
    message = hybrid_signed_message(hello.key_der, expires, ephemeral_der, encapsulation_key)
    try:
        long_term_key.verify(signature, message, PSS, hashes.SHA256())
    except InvalidSignature:
        raise ProtocolFailure(
            "untrusted-key", "the ML-KEM key's signature does not verify"
        ) from None
    return public


def _hkdf_extract(salt, ikm):
    """RFC 5869 §2.2: an empty salt is HashLen zero bytes."""
    return hmac.new(salt or bytes(32), ikm, hashlib.sha256).digest()


def _hkdf_expand(prk, info, length):
    return HKDFExpand(algorithm=hashes.SHA256(), length=length, info=info).derive(prk)


def labeled_extract(salt, label, ikm):
    """RFC 9180 §4."""
    return _hkdf_extract(salt, b"HPKE-v1" + HPKE_SUITE_ID + label + ikm)


def labeled_expand(prk, label, info, length):
    """RFC 9180 §4."""
    return _hkdf_expand(
        prk, struct.pack(">H", length) + b"HPKE-v1" + HPKE_SUITE_ID + label + info, length
    )


def hpke_export(shared_secret):
    """RFC 9180 §5.1 (base mode, export only) and §5.3, step by step, with
    the parameters of §12.3: every intermediate value, ``mlkem_secret`` last."""
    steps = {"shared_secret": shared_secret}
    steps["psk_id_hash"] = labeled_extract(b"", b"psk_id_hash", b"")
    steps["info_hash"] = labeled_extract(b"", b"info_hash", HPKE_INFO)
    steps["key_schedule_context"] = b"\x00" + steps["psk_id_hash"] + steps["info_hash"]
    steps["secret"] = labeled_extract(shared_secret, b"secret", b"")
    steps["exporter_secret"] = labeled_expand(
        steps["secret"], b"exp", steps["key_schedule_context"], 32
    )
    steps["mlkem_secret"] = labeled_expand(
        steps["exporter_secret"], b"sec", HPKE_EXPORTER_CONTEXT, 32
    )
    return steps


def encapsulate(public):
    """§12.3, client: ``(ML-KEM ciphertext, mlkem_secret)``."""
    shared_secret, ciphertext = public.encapsulate()
    assert len(ciphertext) == MLKEM768_CIPHERTEXT_LENGTH
    return ciphertext, hpke_export(shared_secret)["mlkem_secret"]


def decapsulate(private, ciphertext):
    """§12.3, server: ``mlkem_secret`` (ML-KEM rejects implicitly)."""
    return hpke_export(private.decapsulate(ciphertext))["mlkem_secret"]


# -- §4, §11.1 key schedule ---------------------------------------------------------


def transcript_hash(hello, key_or_resume_payload):
    return hashlib.sha256(hello + key_or_resume_payload).digest()


def _hkdf(ikm, salt, info, length):
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def session_keys(ikm, nonce, th, resumed, hybrid=False):
    """``(client_key, server_key, resumption_secret)`` (§4, §11.1; §12.3
    after a revision-3 KEY, whose ``ikm`` is both secrets)."""
    if resumed:
        label = b"kx/1 resumed keys"
    else:
        label = b"kx/1 hybrid keys" if hybrid else b"kx/1 keys"
    okm = _hkdf(ikm, nonce, label + th, 64)
    return okm[:32], okm[32:], _hkdf(ikm, nonce, b"kx/1 resumption" + th, 32)


def next_key(key):
    """The direction key after UPDATE (§5)."""
    return HKDFExpand(algorithm=hashes.SHA256(), length=32, info=b"kx/1 update").derive(key)


# -- §5 records ---------------------------------------------------------------------

#: §13: the record ciphers a HELLO may name.  Both seal alike: 12-byte
#: nonce, the verb as associated data, a 16-byte tag.
RECORD_CIPHERS = {"aes-256-gcm": AESGCM, "aes-256-ocb": AESOCB3}
CLASSICAL_RECORD = "aes-256-gcm"


class Direction:
    """One direction of a connection: its key, cipher (§13) and 64-bit
    sequence number."""

    def __init__(self, key, cipher=CLASSICAL_RECORD):
        self.key = key
        self.aead = RECORD_CIPHERS[cipher]
        self.sequence = 0

    def _nonce(self):
        if self.sequence >= 2**64 - 1:
            raise ProtocolFailure("internal", "sequence number exhausted")
        return self.sequence.to_bytes(12, "big")

    def seal(self, verb, plaintext):
        sealed = self.aead(self.key).encrypt(self._nonce(), plaintext, verb.encode("ascii"))
        self.sequence += 1
        return sealed

    def open(self, verb, payload):
        if len(payload) < TAG_LENGTH:
            raise ProtocolFailure("bad-record", f"{verb} shorter than a tag")
        try:
            plaintext = self.aead(self.key).decrypt(self._nonce(), payload, verb.encode("ascii"))
        except InvalidTag:
            raise ProtocolFailure(
                "bad-record", f"{verb} number {self.sequence} does not open"
            ) from None
        self.sequence += 1
        return plaintext

    def update(self):
        self.key = next_key(self.key)
        self.sequence = 0


# -- the client ---------------------------------------------------------------------


class Ticket:
    """A ticket as §11.2 says a client keeps it."""

    def __init__(
        self,
        ticket,
        secret,
        lifetime,
        expires,
        fingerprint,
        host,
        port,
        forward_secrecy=True,
        hybrid=False,
    ):
        self.ticket = ticket
        self.secret = secret
        self.lifetime = lifetime
        self.expires = expires
        self.fingerprint = fingerprint
        self.host = host
        self.port = port
        #: What the issuing session had (§11.2): an ephemeral key, and an
        #: ML-KEM secret (revision 3).
        self.forward_secrecy = forward_secrecy
        self.hybrid = hybrid


def ticket_plaintext(ticket, lifetime):
    """The plaintext of a TICKET record (§11.2)."""
    value = {"ticket": base64.b64encode(ticket).decode("ascii"), "lifetime": lifetime}
    return json.dumps(value).encode("utf-8")


def parse_ticket(plaintext):
    """``(ticket bytes, lifetime)`` from a TICKET record's plaintext (§11.2)."""
    value = json_object(plaintext, "TICKET", code="unexpected-frame")
    ticket = strict_b64decode(member(value, "ticket", str, "TICKET"), "ticket")
    lifetime = member(value, "lifetime", int, "TICKET")
    if not 1 <= len(ticket) <= 512:
        raise ProtocolFailure("malformed-frame", f"a ticket of {len(ticket)} bytes")
    if not 1 <= lifetime <= 86400:
        raise ProtocolFailure("malformed-frame", f"a ticket lifetime of {lifetime} s")
    return ticket, lifetime


class ServerRecords:
    """What a client does with the server's frames once the keys exist.

    The first record that opens is the key confirmation (§5); TICKET may
    only follow it (§11.2); UPDATE switches the receiving key (§5); END
    ends the server's data.  ``on_ticket(ticket, lifetime)`` sees tickets.
    """

    def __init__(self, server_key, on_ticket, cipher=CLASSICAL_RECORD, on_confirmed=None):
        self.direction = Direction(server_key, cipher)
        self.on_ticket = on_ticket
        self.on_confirmed = on_confirmed
        self.confirmed = False
        self.ended = False
        self.data = b""
        self.updates = 0

    def receive(self, verb, payload):
        if verb == "ERROR":
            raise PeerError(*read_error(payload))
        if self.ended or verb not in ("MSG", "TICKET", "UPDATE", "END"):
            raise ProtocolFailure("unexpected-frame", f"{verb} from the server here")
        if verb == "TICKET" and not self.confirmed:
            raise ProtocolFailure("unexpected-frame", "TICKET before the server's first record")
        plaintext = self.direction.open(verb, payload)
        if not self.confirmed:
            self.confirmed = True
            if self.on_confirmed is not None:
                self.on_confirmed()
        if verb == "MSG":
            self.data += plaintext
        elif verb == "TICKET":
            self.on_ticket(*parse_ticket(plaintext))
        elif plaintext:
            raise ProtocolFailure("bad-record", f"{verb} that is not empty")
        elif verb == "UPDATE":
            self.direction.update()
            self.updates += 1
        else:
            self.ended = True


class SessionResult:
    """What :meth:`IndependentClient.connect` reports."""

    def __init__(self, data, resumed, tickets, ephemeral, updates, hybrid=False, record=None):
        self.data = data
        self.resumed = resumed
        self.tickets = tickets
        #: Revision 3: whether the session's keys depend on an ML-KEM
        #: secret (§12), and its record cipher (§13).
        self.hybrid = hybrid
        self.record = record or CLASSICAL_RECORD
        #: True when HELLO offered a valid ephemeral key (§10).
        self.forward_secrecy = ephemeral is not None
        #: Its size in bits and its ``expires``, or None.
        self.ephemeral_bits = ephemeral and ephemeral[0].key_size
        self.ephemeral_expires = ephemeral and ephemeral[1]
        #: How many UPDATE records the server sent (§5).
        self.updates = updates

    @property
    def ticket(self):
        """The newest ticket the server issued, or None."""
        return self.tickets[-1] if self.tickets else None


class IndependentClient:
    """A KX/1 client: pinned key, forward secrecy required by default.

    ``send`` is the application data, sent once the server's first record
    has opened (§5: at most four records before the key confirmation).
    ``revision`` 3 makes it a revision-3 client (§12.4): it requires
    ML-KEM unless ``allow_classical``.
    """

    def __init__(
        self,
        fingerprint,
        require_forward_secrecy=True,
        send=b"",
        timeout=SOCKET_TIMEOUT,
        clock=time.time,
        revision=2,
        allow_classical=False,
    ):
        self.fingerprint = fingerprint
        self.require_forward_secrecy = require_forward_secrecy
        self.send = send
        self.timeout = timeout
        self.clock = clock
        self.revision = revision
        self.allow_classical = allow_classical

    def connect(self, host, port, ticket=None):
        """One session; a :class:`SessionResult`, or an exception that says
        how it failed (:class:`ProtocolFailure`, :class:`PeerError`,
        :class:`Truncated`, :class:`OSError`)."""
        with socket.create_connection((host, port), timeout=self.timeout) as sock:
            sock.settimeout(self.timeout)
            frames = FrameSocket(sock)
            try:
                return self._session(frames, host, port, ticket)
            except ProtocolFailure as failure:
                try:
                    frames.send("ERROR", error_payload(failure.code, failure.detail[:200]))
                except OSError:
                    pass
                raise

    def _session(self, frames, host, port, ticket):
        verb, payload = frames.receive()
        if verb == "ERROR":
            raise PeerError(*read_error(payload))
        if verb != "HELLO":
            raise ProtocolFailure("unexpected-frame", f"{verb} before HELLO")
        hello = parse_hello(payload, self.revision)
        long_term = acceptable_key(hello.key_der, "the server key", "weak-key")
        now = self.clock()
        # §2's order: the ephemeral offer, the ML-KEM offer, then trust.
        encrypt_to, ephemeral = long_term, None
        if hello.ephemeral is not None:
            longest = LONGEST_EXPIRY_REVISION3 if self.revision >= 3 else LONGEST_EXPIRY
            encrypt_to = verify_ephemeral(hello, long_term, now, longest)
            ephemeral = (encrypt_to, hello.ephemeral[1])
        elif self.require_forward_secrecy:
            raise ProtocolFailure("no-forward-secrecy", "HELLO offers no ephemeral key")
        mlkem_public = None
        if self.revision >= 3:
            if hello.mlkem is not None:
                mlkem_public = verify_mlkem(hello, long_term)
            elif not self.allow_classical:
                raise ProtocolFailure("no-post-quantum", "HELLO offers no ML-KEM-768 key")
        # §7.1: the long-term key is the one pinned, whatever else HELLO offers.
        if hello.fingerprint != self.fingerprint:
            raise ProtocolFailure(
                "untrusted-key", f"{hello.fingerprint} is not the pinned fingerprint"
            )

        usable = (
            ticket is not None
            and ticket.fingerprint == hello.fingerprint
            and (ticket.host, ticket.port) == (host, port)
            and now < ticket.expires
            # §11.3: never a ticket from a session weaker than we require.
            and (ticket.forward_secrecy or not self.require_forward_secrecy)
            and (ticket.hybrid or self.revision < 3 or self.allow_classical)
        )
        if usable:
            frames.send("RESUME", ticket.ticket)
            th = transcript_hash(hello.payload, ticket.ticket)
            ikm = ticket.secret
            hybrid = ticket.hybrid
        else:
            secret = os.urandom(32)
            key_payload = encrypt_to.encrypt(secret, oaep(hello.payload))
            assert len(key_payload) == modulus_bytes(encrypt_to)
            ikm, hybrid = secret, mlkem_public is not None
            if hybrid:
                ciphertext, mlkem_secret = encapsulate(mlkem_public)
                key_payload += ciphertext
                ikm = secret + mlkem_secret
            frames.send("KEY", key_payload)
            th = transcript_hash(hello.payload, key_payload)
        forward_secrecy = ephemeral is not None and (not usable or ticket.forward_secrecy)
        # §12.5: a revision-3 session uses the cipher HELLO names.
        record = hello.record if hybrid and hello.record else CLASSICAL_RECORD
        client_key, server_key, resumption_secret = session_keys(
            ikm, hello.nonce, th, usable, hybrid
        )

        tickets = []

        def on_ticket(opaque, lifetime):
            tickets.append(
                Ticket(
                    opaque,
                    resumption_secret,
                    lifetime,
                    self.clock() + lifetime,
                    hello.fingerprint,
                    host,
                    port,
                    forward_secrecy=forward_secrecy,
                    hybrid=hybrid,
                )
            )

        sending = Direction(client_key, record)
        # §5: the first record right after KEY or RESUME, an empty MSG.
        frames.send("MSG", sending.seal("MSG", b""))

        def on_confirmed():
            for start in range(0, len(self.send), MSG_DATA_LIMIT):
                frames.send("MSG", sending.seal("MSG", self.send[start : start + MSG_DATA_LIMIT]))

        records = ServerRecords(server_key, on_ticket, record, on_confirmed)
        while not records.ended:
            try:
                verb, payload = frames.receive()
            except Truncated as exc:
                raise Truncated(f"{exc} (no END from the server: truncated)") from None
            records.receive(verb, payload)
        frames.send("END", sending.seal("END", b""))
        frames.wait_closed()
        return SessionResult(
            records.data, usable, tickets, ephemeral, records.updates, hybrid, record
        )


# -- the server ---------------------------------------------------------------------


class ServedSession:
    """What :class:`IndependentServer` saw on one connection.

    ``kind`` is ``"full"`` (KEY), ``"resumed"`` (RESUME with a ticket that
    opened) or None (neither); ``outcome`` is ``"ok"`` or the error code
    that ended it, ours or the peer's (``peer_error``).
    """

    def __init__(self):
        self.kind = None
        self.outcome = None
        self.decrypted_with = None
        self.decryption_failed = False
        self.resume_payload = None
        #: Revision 3: an ML-KEM secret in the keys, and the record cipher.
        self.hybrid = False
        self.record = None
        self.stale_reason = None
        self.tickets_issued = []
        self.peer_error = None
        self.received = b""
        self.failure = None

    def __repr__(self):
        return (
            f"<ServedSession kind={self.kind} outcome={self.outcome} "
            f"peer_error={self.peer_error} stale={self.stale_reason} failure={self.failure!r}>"
        )


class IndependentServer:
    """A KX/1 server in a thread, serving ``connections`` connections in
    turn on 127.0.0.1 and then stopping.

    Its tickets have a format of its own (§11.2 lets it choose): ``"IT1"`` ‖
    a 12-byte nonce ‖ AES-256-GCM under its ticket key of
    ``uint64-be(expires) ‖ SHA-256(long-term DER) ‖ resumption secret ‖
    revision`` (one byte, 2 or 3: §12.5).

    With ``post_quantum`` (and ``ephemeral``) it offers an ML-KEM-768 key
    and names ``record`` (§12.1), serving revision-2 and revision-3 clients
    alike unless ``require_post_quantum``.
    """

    TICKET_MAGIC = b"IT1"

    def __init__(
        self,
        message=b"independent server says hello",
        connections=1,
        ephemeral=True,
        ticket_lifetime=3600,
        key_update=False,
        timeout=SOCKET_TIMEOUT,
        bits=2048,
        post_quantum=True,
        record="aes-256-ocb",
        require_post_quantum=False,
    ):
        self.message = message
        self.record = record
        self.require_post_quantum = require_post_quantum
        self.mlkem = None
        self._mlkem_member = None
        self.connections = connections
        self.ticket_lifetime = ticket_lifetime
        self.key_update = key_update
        self.timeout = timeout
        self.long_term = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        self.long_term_der = spki_der(self.long_term.public_key())
        self.fingerprint = fingerprint(self.long_term_der)
        self.ephemeral = None
        self.ephemeral_expires = None
        self._ephemeral_member = None
        if ephemeral:
            self.ephemeral = rsa.generate_private_key(public_exponent=65537, key_size=bits)
            # §10.2: made now, plus the interval (60), the handshake timeout
            # (10), and 60 s.
            self.ephemeral_expires = int(time.time()) + 60 + 10 + 60
            self._ephemeral_member = ephemeral_member(
                self.long_term, self.ephemeral.public_key(), self.ephemeral_expires
            )
            if post_quantum:
                # §12.2: made, offered and retired with the ephemeral RSA key.
                self.mlkem = MLKEM768PrivateKey.generate()
                self._mlkem_member = mlkem_member(
                    self.long_term,
                    self.ephemeral_expires,
                    spki_der(self.ephemeral.public_key()),
                    self.mlkem.public_key().public_bytes_raw(),
                )
        self._lock = threading.Condition()
        self._ticket_key = AESGCM.generate_key(bit_length=256)
        self.sessions = []
        self._listener = None
        self._thread = None
        self.port = None

    # -- running

    def start(self):
        """Listen on 127.0.0.1, an ephemeral port; returns the port."""
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self._listener.settimeout(self.timeout)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(
            target=self._serve, name="independent-kx1-server", daemon=True
        )
        self._thread.start()
        return self.port

    def _serve(self):
        try:
            for _ in range(self.connections):
                try:
                    sock, _ = self._listener.accept()
                except OSError:
                    return  # stopped, or no client within the timeout
                with sock:
                    sock.settimeout(self.timeout)
                    session = ServedSession()
                    try:
                        self._session(FrameSocket(sock), session)
                    except Exception as exc:
                        session.failure = exc
                        if session.outcome is None:
                            session.outcome = "failed"
                    with self._lock:
                        self.sessions.append(session)
                        self._lock.notify_all()
        finally:
            self._listener.close()

    def stop(self):
        """Stops accepting and waits (bounded) for the thread."""
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(self.timeout * 2)

    def wait_for_sessions(self, count):
        """Blocks until ``count`` sessions are over (bounded); returns them."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self.sessions) >= count, self.timeout * 2):
                raise AssertionError(f"only {len(self.sessions)} of {count} sessions ended")
            return list(self.sessions)

    def retire_ticket_keys(self):
        """A new ticket key: every ticket issued so far is now stale."""
        with self._lock:
            self._ticket_key = AESGCM.generate_key(bit_length=256)

    # -- tickets

    def _issue_ticket(self, resumption_secret, hybrid):
        expires = int(time.time()) + self.ticket_lifetime
        state = (
            struct.pack(">Q", expires)
            + hashlib.sha256(self.long_term_der).digest()
            + resumption_secret
            + bytes([3 if hybrid else 2])
        )
        nonce = os.urandom(12)
        with self._lock:
            key = self._ticket_key
        return self.TICKET_MAGIC + nonce + AESGCM(key).encrypt(nonce, state, self.TICKET_MAGIC)

    def _open_ticket(self, ticket):
        """``((secret, hybrid), None)``, or ``(None, why it is stale)`` (§11.3)."""
        magic, nonce, sealed = ticket[:3], ticket[3:15], ticket[15:]
        if magic != self.TICKET_MAGIC or len(sealed) < TAG_LENGTH:
            return None, "not one of our tickets"
        with self._lock:
            key = self._ticket_key
        try:
            state = AESGCM(key).decrypt(nonce, sealed, self.TICKET_MAGIC)
        except InvalidTag:
            return None, "ticket key unknown or retired"
        (expires,) = struct.unpack(">Q", state[:8])
        if state[8:40] != hashlib.sha256(self.long_term_der).digest():
            return None, "issued under another long-term key"
        if time.time() >= expires:
            return None, "expired"
        return (state[40:72], state[72] == 3), None

    # -- one connection

    def _session(self, frames, session):
        try:
            self._run(frames, session)
        except ProtocolFailure as failure:
            session.outcome = failure.code
            try:
                frames.send("ERROR", error_payload(failure.code, failure.detail[:200]))
            except OSError:
                pass
        except PeerError as error:
            session.outcome = session.peer_error = error.code

    def _run(self, frames, session):
        nonce = os.urandom(32)
        hello = hello_payload(
            self.long_term_der, nonce, self._ephemeral_member, self._mlkem_member, self.record
        )
        frames.send("HELLO", hello)

        verb, payload = frames.receive()
        if verb == "ERROR":
            raise PeerError(*read_error(payload))
        if verb == "KEY":
            private = self.ephemeral if self.ephemeral is not None else self.long_term
            session.decrypted_with = "ephemeral" if self.ephemeral is not None else "long-term"
            k = modulus_bytes(private)
            # §12.2: the length tells the revision.
            hybrid = self.mlkem is not None and len(payload) == k + MLKEM768_CIPHERTEXT_LENGTH
            if len(payload) != k and not hybrid:
                raise ProtocolFailure("malformed-frame", f"KEY of {len(payload)} bytes")
            if not hybrid and self.require_post_quantum:
                raise ProtocolFailure("no-post-quantum", "this server requires ML-KEM (KX/1 §12)")
            try:
                ikm = private.decrypt(payload[:k], oaep(hello))
            except ValueError:
                # §3 implicit rejection: carry on with a random secret; the
                # client will not open our first record.
                ikm = None
            if ikm is None or len(ikm) != 32:
                session.decryption_failed = True
                ikm = os.urandom(32)
            if hybrid:
                ikm += decapsulate(self.mlkem, payload[k:])
            resumed = False
        elif verb == "RESUME":
            session.resume_payload = payload
            opened, session.stale_reason = self._open_ticket(payload)
            if opened is None:
                raise ProtocolFailure("stale-ticket", session.stale_reason)
            ikm, hybrid = opened
            if not hybrid and self.require_post_quantum:
                raise ProtocolFailure("no-post-quantum", "this server requires ML-KEM (KX/1 §12)")
            resumed = True
        else:
            raise ProtocolFailure("unexpected-frame", f"{verb} in place of KEY or RESUME")
        session.kind = "resumed" if resumed else "full"
        session.hybrid = hybrid
        session.record = record = (
            self.record if hybrid and self._mlkem_member is not None else CLASSICAL_RECORD
        )
        th = transcript_hash(hello, payload)
        client_key, server_key, resumption_secret = session_keys(ikm, nonce, th, resumed, hybrid)
        sending, receiving = Direction(server_key, record), Direction(client_key, record)

        # §5 key confirmation, then a ticket (§11.2: after the first record;
        # §11.3: a new one in every session, resumed or not).
        frames.send("MSG", sending.seal("MSG", b""))
        if self.ticket_lifetime:
            ticket = self._issue_ticket(resumption_secret, hybrid)
            session.tickets_issued.append(ticket)
            plaintext = ticket_plaintext(ticket, self.ticket_lifetime)
            frames.send("TICKET", sending.seal("TICKET", plaintext))

        # §11.3: nothing of the application before the client's first
        # record has opened (after KEY too: no AUTH is required here).
        client_ended = self._client_record(frames, receiving, session)
        if self.key_update:
            frames.send("UPDATE", sending.seal("UPDATE", b""))
            sending.update()
        for start in range(0, len(self.message), MSG_DATA_LIMIT):
            frames.send("MSG", sending.seal("MSG", self.message[start : start + MSG_DATA_LIMIT]))
        frames.send("END", sending.seal("END", b""))
        while not client_ended:
            client_ended = self._client_record(frames, receiving, session)
        session.outcome = "ok"

    def _client_record(self, frames, receiving, session):
        """Opens one client record; True when it was END."""
        verb, payload = frames.receive()
        if verb == "ERROR":
            raise PeerError(*read_error(payload))
        if verb not in ("MSG", "END", "UPDATE"):
            raise ProtocolFailure("unexpected-frame", f"{verb} from the client here")
        plaintext = receiving.open(verb, payload)
        if verb == "MSG":
            session.received += plaintext
            return False
        if plaintext:
            raise ProtocolFailure("bad-record", f"{verb} that is not empty")
        if verb == "UPDATE":
            receiving.update()
            return False
        return True
