"""Fixtures for KX/1 revision 3: the vector file's ephemeral RSA key with
its ML-KEM-768 key (``kx1-revision3.json``), and a fresh offer of both that
a test server can make with the real clock."""

import functools
import time

from keyexchanged import handshake, keys, mlkem, schedule
from keyexchanged.ephemeral import EphemeralKey, sign_ephemeral
from keyexchanged.records import GCM, OCB
from tests.fixtures import EPHEMERAL_PRIVATE, SERVER_KEY, ephemeral_key, replay
from tests.vectors import REVISION3_RAW, revision3_hexbytes

CIPHERS = (OCB, GCM)
EXPIRES = REVISION3_RAW["ephemeral_expires"]
#: The vectors' clock: a minute before the ephemeral key's expiry.
NOW = EXPIRES - 60
MLKEM_SEED = revision3_hexbytes("mlkem_seed")


def session(cipher, part, name):
    """A byte string of one session of the file: ``part`` is ``"full"`` or
    ``"resumed"``."""
    return revision3_hexbytes("sessions", cipher, part, name)


def session_record(cipher, part, name):
    return revision3_hexbytes("sessions", cipher, part, "records", name)


def offer(
    private_key=EPHEMERAL_PRIVATE,
    expires=None,
    mlkem_key=None,
    long_term=SERVER_KEY,
    salts=(None, None),
):
    """An :class:`EphemeralKey` with an ML-KEM key, both signed by
    ``long_term`` (ten minutes from now unless ``expires``: a revision-3
    client takes no offer signed for more than 30 minutes)."""
    return EphemeralKey(*offer_arguments(private_key, expires, mlkem_key, long_term, salts))


def offer_arguments(private_key, expires, mlkem_key, long_term, salts):
    """:func:`offer`'s :class:`EphemeralKey` arguments: the two signatures
    are made here."""
    if expires is None:
        expires = int(time.time()) + 600
    if mlkem_key is None:
        mlkem_key = mlkem.generate()
    der = keys.public_key_to_der(private_key.public_key())
    signature = sign_ephemeral(long_term, der, expires, salt=salts[0])
    options = {} if salts[1] is None else {"salt": salts[1]}
    hybrid_signature = long_term.sign_pss(
        schedule.hybrid_message(keys.public_key_to_der(long_term), expires, der, mlkem_key.ek),
        salt_length=schedule.PSS_SALT_LENGTH,
        **options,
    )
    return private_key, expires, signature, mlkem_key, hybrid_signature


def classical_offer():
    """An ephemeral RSA key without ML-KEM, signed for ten minutes."""
    return ephemeral_key(post_quantum=False)


def vector_offer():
    """The file's ephemeral RSA and ML-KEM keys with its signatures: a fresh
    :class:`EphemeralKey` each time, of arguments made once (with the file's
    salts and expiry the signatures are always the same)."""
    return EphemeralKey(*_vector_offer_arguments())


@functools.cache
def _vector_offer_arguments():
    return offer_arguments(
        EPHEMERAL_PRIVATE,
        EXPIRES,
        mlkem.from_seed(MLKEM_SEED),
        SERVER_KEY,
        (revision3_hexbytes("ephemeral_pss_salt"), revision3_hexbytes("hybrid_pss_salt")),
    )


def vector_encapsulation(cipher):
    """The ``encapsulate`` that replays the file's ML-KEM ciphertext."""

    def encapsulate(public):
        assert public.ek == revision3_hexbytes("mlkem_encapsulation_key")
        return session(cipher, "full", "mlkem_ciphertext"), session(cipher, "full", "mlkem_secret")

    return encapsulate


def vector_client(cipher, **options):
    """A revision-3 client that replays the file's full ``cipher`` session."""
    return handshake.ClientConnection(
        random=replay(session(cipher, "full", "secret")),
        oaep_seed=session(cipher, "full", "oaep_seed"),
        clock=lambda: NOW,
        post_quantum=True,
        encapsulate=vector_encapsulation(cipher),
        **options,
    )


def vector_server(cipher, nonce, **options):
    """A server that offers the file's keys, names ``cipher`` and uses
    ``nonce``; started (its HELLO is waiting in ``data_to_send``)."""
    identity = handshake.ServerIdentity(SERVER_KEY, record_cipher=cipher)
    server = handshake.ServerConnection(
        identity, ephemeral=vector_offer(), random=replay(nonce, b"\0" * 32), **options
    )
    server.start()
    return server
