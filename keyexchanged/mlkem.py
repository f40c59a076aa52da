"""ML-KEM-768 for the hybrid key exchange (docs/spec/kx1.rst §12).

pycryptodome's public way to encapsulate to an ML-KEM key is HPKE
(RFC 9180) with the ML-KEM KEM of draft-ietf-hpke-pq: base mode, export
only.  ``HPKE.new`` with the server's public key makes the ciphertext
(``enc``) and a context to export from; with the private key and that
ciphertext, the same export.  The KEM id (0x0041), the KDF (HKDF-SHA256)
and the mode follow from the key; the spec fixes the rest (``info``, the
exporter context, 32 bytes), so that a peer on another library — the
independent one in ``tests/independent/`` writes RFC 9180 out by hand —
derives the same ``mlkem_secret``.

ML-KEM rejects implicitly: decapsulating an altered ciphertext of the
right length gives a pseudorandom secret, not an error, so the server
carries on exactly as after any other KEY.
"""

import base64
import hashlib

from Crypto.Protocol import HPKE
from Crypto.PublicKey import MLKEM

__all__ = [
    "CIPHERTEXT_LENGTH",
    "ENCAPSULATION_KEY_LENGTH",
    "SECRET_LENGTH",
    "decapsulate",
    "encapsulate",
    "fingerprint",
    "generate",
    "public_key",
]

#: FIPS 203 sizes of ML-KEM-768.
ENCAPSULATION_KEY_LENGTH = 1184
CIPHERTEXT_LENGTH = 1088
#: The exported secret that joins the RSA secret in the schedule.
SECRET_LENGTH = 32

#: §12.3: HPKE's ``info`` and the exporter context.
HPKE_INFO = b"kx/1 hybrid ml-kem-768"
EXPORTER_CONTEXT = b"kx/1 hybrid secret"


def generate():
    """A new ML-KEM-768 private key (from 64 fresh random bytes d ‖ z)."""
    return MLKEM.generate(param_set=MLKEM.ML_KEM_768)


def from_seed(seed):
    """The private key of a 64-byte seed d ‖ z (the vectors publish one)."""
    return MLKEM.construct(param_set=MLKEM.ML_KEM_768, seed=seed)


def public_key(encapsulation_key):
    """The public key of 1 184 bytes ``ek``; ``ValueError`` when it has
    another length or fails FIPS 203's modulus check (§7.2)."""
    if len(encapsulation_key) != ENCAPSULATION_KEY_LENGTH:
        raise ValueError(f"an ML-KEM-768 key is {ENCAPSULATION_KEY_LENGTH} bytes")
    return MLKEM.construct(param_set=MLKEM.ML_KEM_768, ek=bytes(encapsulation_key))


def fingerprint(encapsulation_key):
    """``SHA256:`` ‖ unpadded base64 of SHA-256 of the 1 184 key bytes: the
    spelling of an RSA key's fingerprint (§2), for logs and ``--explain``."""
    digest = base64.b64encode(hashlib.sha256(encapsulation_key).digest()).decode("ascii")
    return "SHA256:" + digest.rstrip("=")


def encapsulate(public):
    """The client's half (§12.3): ``(ciphertext, mlkem_secret)``."""
    context = HPKE.new(receiver_key=public, aead_id=HPKE.AEAD.EXPORT_ONLY, info=HPKE_INFO)
    return context.enc, context.export(EXPORTER_CONTEXT, SECRET_LENGTH)


def decapsulate(private, ciphertext):
    """The server's half: ``mlkem_secret`` for ``ciphertext``, which must be
    :data:`CIPHERTEXT_LENGTH` bytes (the KEY's length was checked)."""
    context = HPKE.new(
        receiver_key=private,
        aead_id=HPKE.AEAD.EXPORT_ONLY,
        info=HPKE_INFO,
        enc=bytes(ciphertext),
    )
    return context.export(EXPORTER_CONTEXT, SECRET_LENGTH)
