"""Fixtures for KX/1 revisions 2 and 3: an ephemeral key the tests can offer.

The key is the one of ``kx1-ephemeral-resume.json`` (2048 bits, so cheap),
signed by the vector server key with an expiry ten minutes from the import
(valid by the client's real clock whatever Clock the test drives, and
within the 30 minutes a revision-3 client accepts), and by default with an
ML-KEM-768 key beside it, as the daemon offers it (revision 3, §12).
"""

import time

from keyexchanged import keys, mlkem, schedule
from keyexchanged.ephemeral import EphemeralKey, sign_ephemeral
from tests.vectors import RAW, RESUME_RAW

SERVER_KEY = keys.private_key_from_bytes(RAW["server_private_key_pem"].encode())
EPHEMERAL_PRIVATE = keys.private_key_from_bytes(RESUME_RAW["ephemeral_private_key_pem"].encode())


def ephemeral_key(
    private_key=EPHEMERAL_PRIVATE, expires=None, long_term=SERVER_KEY, post_quantum=True
):
    """A fresh :class:`EphemeralKey` offering ``private_key``, signed by
    ``long_term``; with ``post_quantum``, an ML-KEM key beside it."""
    if expires is None:
        expires = int(time.time()) + 600
    der = keys.public_key_to_der(private_key.public_key())
    signature = sign_ephemeral(long_term, der, expires)
    if not post_quantum:
        return EphemeralKey(private_key, expires, signature)
    mlkem_key = mlkem.generate()
    mlkem_signature = long_term.sign_pss(
        schedule.hybrid_message(keys.public_key_to_der(long_term), expires, der, mlkem_key.ek),
        salt_length=schedule.PSS_SALT_LENGTH,
    )
    return EphemeralKey(private_key, expires, signature, mlkem_key, mlkem_signature)


#: Signed once, at import: tests that patch the RSA code (to corrupt a
#: client's signature, say) leave it alone.
EPHEMERAL = ephemeral_key()


class StaticEphemeralKeys:
    """What SecureChannelFactory needs of EphemeralKeys: a current key."""

    def __init__(self, key=None):
        self.current = key if key is not None else EPHEMERAL
