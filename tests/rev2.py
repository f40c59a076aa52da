"""Fixtures for KX/1 revision 2: an ephemeral key the tests can offer.

The key is the one of ``kx1-ephemeral-resume.json`` (2048 bits, so cheap),
signed by the vector server key with an expiry an hour from the import:
valid by the client's real clock whatever Clock the test drives.
"""

import time

from keyexchanged import keys
from keyexchanged.ephemeral import EphemeralKey, sign_ephemeral
from tests.vectors import RAW, RESUME_RAW

SERVER_KEY = keys.private_key_from_bytes(RAW["server_private_key_pem"].encode())
EPHEMERAL_PRIVATE = keys.private_key_from_bytes(RESUME_RAW["ephemeral_private_key_pem"].encode())


def ephemeral_key(private_key=EPHEMERAL_PRIVATE, expires=None, long_term=SERVER_KEY):
    """A fresh :class:`EphemeralKey` offering ``private_key``, signed by ``long_term``."""
    if expires is None:
        expires = int(time.time()) + 3600
    der = keys.public_key_to_der(private_key.public_key())
    return EphemeralKey(private_key, expires, sign_ephemeral(long_term, der, expires))


#: Signed once, at import: tests that patch the RSA code (to corrupt a
#: client's signature, say) leave it alone.
EPHEMERAL = ephemeral_key()


class StaticEphemeralKeys:
    """What SecureChannelFactory needs of EphemeralKeys: a current key."""

    def __init__(self, key=None):
        self.current = key if key is not None else EPHEMERAL
