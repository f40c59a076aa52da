"""The KX/1 key schedule and the byte strings that are signed.

Everything here is a pure function of its arguments (docs/spec/kx1.rst §4,
§8, §10.1, §11.1, §12.1, §12.3): the state machines of keyexchanged.handshake call it, and the
tests check it against the published vectors.  The labels are ASCII with no
terminator; HELLO, KEY and RESUME payloads are the bytes on the wire.
"""

import hashlib
import hmac
import struct

from keyexchanged.records import hkdf_expand

__all__ = [
    "auth_message",
    "derive_keys",
    "ephemeral_message",
    "hybrid_message",
    "resumption_secret",
    "transcript_hash",
]

KEYS_INFO = b"kx/1 keys"
HYBRID_KEYS_INFO = b"kx/1 hybrid keys"
RESUMED_KEYS_INFO = b"kx/1 resumed keys"
RESUMPTION_INFO = b"kx/1 resumption"
AUTH_CONTEXT = b"kx/1 client auth"
EPHEMERAL_CONTEXT = b"kx/1 ephemeral key\x00"
#: Differs from EPHEMERAL_CONTEXT within six bytes, and neither is a prefix
#: of the other: no signature is valid as both.
HYBRID_CONTEXT = b"kx/1 hybrid ephemeral keys\x00"

#: PSS salt length of AUTH and ephemeral-key signatures, fixed by the protocol.
PSS_SALT_LENGTH = 32


def transcript_hash(hello_payload, key_payload):
    """``th``: SHA-256 of the HELLO payload and the KEY (or RESUME) payload."""
    return hashlib.sha256(hello_payload + key_payload).digest()


def hkdf(ikm, salt, info, length):
    """HKDF-SHA256 (RFC 5869): Extract, then Expand.  The standard library's
    HMAC: about 45 µs a handshake less than pycryptodome's HKDF object."""
    return hkdf_expand(hmac.new(salt, ikm, hashlib.sha256).digest(), info, length)


def derive_keys(ikm, nonce, th, resumed=False, hybrid=False):
    """Return ``(client_key, server_key)``.

    ``ikm`` is the KEY's secret (after a revision-3 KEY, the RSA secret ‖
    the ML-KEM secret, ``hybrid``), or for a resumed session the
    resumption secret its ticket carried; the labels keep the kinds of
    session from ever sharing keys.
    """
    if resumed:
        label = RESUMED_KEYS_INFO
    else:
        label = HYBRID_KEYS_INFO if hybrid else KEYS_INFO
    info = label + th
    okm = hkdf(ikm, nonce, info, 64)
    return okm[:32], okm[32:]


def resumption_secret(ikm, nonce, th):
    """The secret a ticket for this session lets the server recover."""
    return hkdf(ikm, nonce, RESUMPTION_INFO + th, 32)


def auth_message(th):
    """What a client signs in AUTH: its proof is bound to this transcript."""
    return AUTH_CONTEXT + th


def ephemeral_message(long_term_der, expires, ephemeral_der):
    """What the long-term key signs to vouch for an ephemeral key.

    The long-term key's hash ties the signature to the key it is checked
    under; ``expires`` is a big-endian uint64, so no two spellings of one
    time exist.
    """
    return (
        EPHEMERAL_CONTEXT
        + hashlib.sha256(long_term_der).digest()
        + struct.pack(">Q", expires)
        + ephemeral_der
    )


def hybrid_message(long_term_der, expires, ephemeral_der, encapsulation_key):
    """What the long-term key signs to vouch for an ML-KEM key offered with
    an ephemeral RSA key (revision 3): fixed length, so one reading only."""
    return (
        HYBRID_CONTEXT
        + hashlib.sha256(long_term_der).digest()
        + struct.pack(">Q", expires)
        + hashlib.sha256(ephemeral_der).digest()
        + encapsulation_key
    )
