"""The revision-3 test vectors (``docs/spec/vectors/kx1-revision3.json``),
made and checked by the independent implementation alone.

``python -m tests.independent.revision3_vectors --write`` makes the file;
:func:`check` recomputes every value of a file from its inputs, and the
tests run it on the published one.  Nothing of keyexchanged is imported.

Every input is fixed except one: ``cryptography`` encapsulates with fresh
randomness (FIPS 203's ``m`` is not an input of its API), so each ML-KEM
ciphertext is made once and then published with the shared secret it
carries; :func:`check` (and any other implementation) recovers that
secret by decapsulating with the published seed.  The OAEP seed and the
PSS salts are inputs, so the OAEP and PSS encodings are written here from
RFC 8017 over raw RSA, and checked against ``cryptography``'s own.
"""

import base64
import hashlib
import json
import os
import struct
import sys

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey

from tests.independent import kx1_peer as kx1

HERE = os.path.dirname(os.path.abspath(__file__))
DIRECTORY = os.path.join(HERE, os.pardir, os.pardir, "docs", "spec", "vectors")
PATH = os.path.join(DIRECTORY, "kx1-revision3.json")
#: The long-term and ephemeral RSA keys are those of revision 2.
REVISION2_PATH = os.path.join(DIRECTORY, "kx1-ephemeral-resume.json")

SERVER_MESSAGE = b"The secret message: hello from keyexchanged."
SERVER_MESSAGE_AFTER_UPDATE = b"After the key update."
CLIENT_MESSAGE = b"thanks"
TICKET_LIFETIME = 3600
CIPHERS = ("aes-256-ocb", "aes-256-gcm")

DESCRIPTION = (
    "KX/1 revision 3 vectors (docs/spec/kx1.rst §12 and §13): an ephemeral RSA key with "
    "its ML-KEM-768 key and both signatures, the HPKE export of §12.3 step by step, and "
    "for each record cipher a full hybrid handshake that issues a ticket and the session "
    "resumed from it.  Byte strings are hex.  The RSA keys are those of "
    "kx1-ephemeral-resume.json.  The ML-KEM ciphertexts were made with fresh randomness: "
    "decapsulate them with mlkem_seed to recover mlkem_shared_secret.  Records are named "
    "by direction, verb and sequence number; server_msg_after_update_seq0 is the first "
    "record under the server's key after its UPDATE, and its plaintext is "
    "server_message_after_update.  JSON is spelled as the spec's Conformance section says."
)


def _fixed(label, length=32):
    """A fixed input, named by its label (not secret: these are vectors)."""
    out = b""
    counter = 0
    while len(out) < length:
        out += hashlib.sha256(b"kx/1 revision 3 vectors: " + label + bytes([counter])).digest()
        counter += 1
    return out[:length]


# -- RFC 8017 over raw RSA, with the seed and the salt as inputs ---------------------------


def _mgf1(seed, length):
    out = b""
    for counter in range(-(-length // 32)):
        out += hashlib.sha256(seed + struct.pack(">I", counter)).digest()
    return out[:length]


def _xor(a, b):
    return bytes(x ^ y for x, y in zip(a, b))


def oaep_encrypt(public_key, message, label, seed):
    """RSAES-OAEP-ENCRYPT (RFC 8017 §7.1.1), SHA-256 and MGF1-SHA-256."""
    numbers = public_key.public_numbers()
    k = (numbers.n.bit_length() + 7) // 8
    l_hash = hashlib.sha256(label).digest()
    db = l_hash + bytes(k - len(message) - 2 * 32 - 2) + b"\x01" + message
    masked_db = _xor(db, _mgf1(seed, k - 32 - 1))
    masked_seed = _xor(seed, _mgf1(masked_db, 32))
    em = b"\x00" + masked_seed + masked_db
    return pow(int.from_bytes(em, "big"), numbers.e, numbers.n).to_bytes(k, "big")


def pss_sign(private_key, message, salt):
    """RSASSA-PSS-SIGN (RFC 8017 §8.1.1, §9.1.1), SHA-256, MGF1-SHA-256."""
    numbers = private_key.private_numbers()
    n = numbers.public_numbers.n
    em_bits = n.bit_length() - 1
    em_len = (em_bits + 7) // 8
    m_hash = hashlib.sha256(message).digest()
    h = hashlib.sha256(bytes(8) + m_hash + salt).digest()
    db = bytes(em_len - len(salt) - 32 - 2) + b"\x01" + salt
    masked_db = bytearray(_xor(db, _mgf1(h, em_len - 32 - 1)))
    masked_db[0] &= 0xFF >> (8 * em_len - em_bits)
    em = bytes(masked_db) + h + b"\xbc"
    signature = pow(int.from_bytes(em, "big"), numbers.d, n)
    return signature.to_bytes((n.bit_length() + 7) // 8, "big")


# -- the vectors -------------------------------------------------------------------------


def _load_keys(revision2):
    long_term = serialization.load_pem_private_key(
        revision2["server_private_key_pem"].encode("ascii"), None
    )
    ephemeral = serialization.load_pem_private_key(
        revision2["ephemeral_private_key_pem"].encode("ascii"), None
    )
    return long_term, ephemeral


def _ticket(ticket_key, nonce, state):
    """The recommended ticket format of §11.2 (key id ‖ nonce ‖ GCM)."""
    key_id = hashlib.sha256(b"kx/1 ticket key id\x00" + ticket_key).digest()[:16]
    sealed = kx1.AESGCM(ticket_key).encrypt(nonce, state, key_id)
    return key_id, key_id + nonce + sealed


def _ticket_state(secret, expires, server_fingerprint):
    return json.dumps(
        {
            "secret": base64.b64encode(secret).decode("ascii"),
            "expires": expires,
            "server": server_fingerprint,
            "client": None,
            "post_quantum": True,
        }
    ).encode("utf-8")


def _seal_all(key, cipher, records):
    direction = kx1.Direction(key, cipher)
    sealed = {}
    for name, verb, plaintext in records:
        sealed[name] = direction.seal(verb, plaintext).hex()
        if verb == "UPDATE":
            direction.update()
    return sealed


def make(encapsulations=None):
    """The vector file as a dict.  ``encapsulations`` maps each session
    name to ``(ciphertext, shared secret)``; missing ones are made afresh."""
    with open(REVISION2_PATH, encoding="utf-8") as f:
        revision2 = json.load(f)
    encapsulations = dict(encapsulations or {})
    long_term, ephemeral = _load_keys(revision2)
    long_term_der = kx1.spki_der(long_term.public_key())
    ephemeral_der = kx1.spki_der(ephemeral.public_key())
    fingerprint = kx1.fingerprint(long_term_der)
    expires = revision2["ephemeral_expires"]

    mlkem_seed = _fixed(b"mlkem seed", 64)
    mlkem = MLKEM768PrivateKey.from_seed_bytes(mlkem_seed)
    ek = mlkem.public_key().public_bytes_raw()

    ephemeral_message = kx1.ephemeral_signed_message(long_term_der, expires, ephemeral_der)
    ephemeral_salt = bytes.fromhex(revision2["ephemeral_pss_salt"])
    ephemeral_signature = pss_sign(long_term, ephemeral_message, ephemeral_salt)
    hybrid_message = kx1.hybrid_signed_message(long_term_der, expires, ephemeral_der, ek)
    hybrid_salt = _fixed(b"hybrid pss salt")
    hybrid_signature = pss_sign(long_term, hybrid_message, hybrid_salt)
    ephemeral_member = {
        "key": base64.b64encode(ephemeral_der).decode("ascii"),
        "expires": expires,
        "signature": base64.b64encode(ephemeral_signature).decode("ascii"),
    }
    # The hand-written PSS reproduces revision 2's signature from its salt.
    assert ephemeral_member == revision2["ephemeral_member"]
    mlkem_member = {
        "key": base64.b64encode(ek).decode("ascii"),
        "signature": base64.b64encode(hybrid_signature).decode("ascii"),
    }
    ticket_key = _fixed(b"ticket key")

    out = {
        "description": DESCRIPTION,
        "server_private_key_pem": revision2["server_private_key_pem"],
        "server_fingerprint": fingerprint,
        "ephemeral_private_key_pem": revision2["ephemeral_private_key_pem"],
        "ephemeral_spki_der": ephemeral_der.hex(),
        "ephemeral_expires": expires,
        "ephemeral_pss_salt": ephemeral_salt.hex(),
        "ephemeral_signed_message": ephemeral_message.hex(),
        "ephemeral_member": ephemeral_member,
        "mlkem_seed": mlkem_seed.hex(),
        "mlkem_encapsulation_key": ek.hex(),
        "hybrid_pss_salt": hybrid_salt.hex(),
        "hybrid_signed_message": hybrid_message.hex(),
        "mlkem768_member": mlkem_member,
        "hpke": {
            "suite_id": kx1.HPKE_SUITE_ID.hex(),
            "info": kx1.HPKE_INFO.hex(),
            "exporter_context": kx1.HPKE_EXPORTER_CONTEXT.hex(),
        },
        "ticket_key": ticket_key.hex(),
        "ticket_lifetime": TICKET_LIFETIME,
        "server_message": SERVER_MESSAGE.hex(),
        "server_message_after_update": SERVER_MESSAGE_AFTER_UPDATE.hex(),
        "client_message": CLIENT_MESSAGE.hex(),
        "sessions": {},
    }

    for cipher in CIPHERS:
        label = cipher.encode("ascii")
        # -- the full handshake (§12.3)
        nonce = _fixed(b"full nonce " + label)
        hello = kx1.hello_payload(long_term_der, nonce, ephemeral_member, mlkem_member, cipher)
        secret = _fixed(b"rsa secret " + label)
        oaep_seed = _fixed(b"oaep seed " + label)
        ct_rsa = oaep_encrypt(ephemeral.public_key(), secret, hello, oaep_seed)
        if cipher not in encapsulations:
            shared, ct = mlkem.public_key().encapsulate()
            encapsulations[cipher] = (ct, shared)
        ct_mlkem, shared = encapsulations[cipher]
        steps = kx1.hpke_export(shared)
        key_payload = ct_rsa + ct_mlkem
        th = kx1.transcript_hash(hello, key_payload)
        ikm = secret + steps["mlkem_secret"]
        client_key, server_key, resumption = kx1.session_keys(ikm, nonce, th, False, True)
        ticket_expires = expires + TICKET_LIFETIME
        ticket_nonce = _fixed(b"ticket nonce " + label, 12)
        state = _ticket_state(resumption, ticket_expires, fingerprint)
        key_id, ticket = _ticket(ticket_key, ticket_nonce, state)
        ticket_plaintext = kx1.ticket_plaintext(ticket, TICKET_LIFETIME)
        full = {
            "record": cipher,
            "nonce": nonce.hex(),
            "hello_payload": hello.hex(),
            "hello_frame": kx1.encode_frame("HELLO", hello).hex(),
            "secret": secret.hex(),
            "oaep_seed": oaep_seed.hex(),
            "rsa_ciphertext": ct_rsa.hex(),
            "mlkem_ciphertext": ct_mlkem.hex(),
            "mlkem_shared_secret": shared.hex(),
            "hpke_psk_id_hash": steps["psk_id_hash"].hex(),
            "hpke_info_hash": steps["info_hash"].hex(),
            "hpke_key_schedule_context": steps["key_schedule_context"].hex(),
            "hpke_secret": steps["secret"].hex(),
            "hpke_exporter_secret": steps["exporter_secret"].hex(),
            "mlkem_secret": steps["mlkem_secret"].hex(),
            "key_payload": key_payload.hex(),
            "key_frame_header": kx1.encode_frame("KEY", key_payload)[: -len(key_payload)].hex(),
            "transcript_hash": th.hex(),
            "ikm": ikm.hex(),
            "client_key": client_key.hex(),
            "server_key": server_key.hex(),
            "resumption_secret": resumption.hex(),
            "ticket_nonce": ticket_nonce.hex(),
            "ticket_key_id": key_id.hex(),
            "ticket_state": state.hex(),
            "ticket": ticket.hex(),
            "ticket_plaintext": ticket_plaintext.hex(),
            "server_key_after_update": kx1.next_key(server_key).hex(),
        }
        full["records"] = _seal_all(
            server_key,
            cipher,
            [
                ("server_msg_seq0", "MSG", b""),
                ("server_ticket_seq1", "TICKET", ticket_plaintext),
                ("server_msg_seq2", "MSG", SERVER_MESSAGE),
                ("server_update_seq3", "UPDATE", b""),
                ("server_msg_after_update_seq0", "MSG", SERVER_MESSAGE_AFTER_UPDATE),
                ("server_end_seq1", "END", b""),
            ],
        )
        full["records"].update(
            _seal_all(
                client_key,
                cipher,
                [
                    ("client_msg_seq0", "MSG", b""),
                    ("client_msg_seq1", "MSG", CLIENT_MESSAGE),
                    ("client_end_seq2", "END", b""),
                ],
            )
        )

        # -- the session resumed from that ticket (§11, §12.5)
        r_nonce = _fixed(b"resumed nonce " + label)
        r_hello = kx1.hello_payload(long_term_der, r_nonce, ephemeral_member, mlkem_member, cipher)
        r_th = kx1.transcript_hash(r_hello, ticket)
        r_client, r_server, r_resumption = kx1.session_keys(resumption, r_nonce, r_th, True)
        r_ticket_nonce = _fixed(b"resumed ticket nonce " + label, 12)
        r_state = _ticket_state(r_resumption, ticket_expires, fingerprint)
        _, r_ticket = _ticket(ticket_key, r_ticket_nonce, r_state)
        r_ticket_plaintext = kx1.ticket_plaintext(r_ticket, TICKET_LIFETIME)
        resumed = {
            "record": cipher,
            "nonce": r_nonce.hex(),
            "hello_payload": r_hello.hex(),
            "resume_frame": kx1.encode_frame("RESUME", ticket).hex(),
            "transcript_hash": r_th.hex(),
            "client_key": r_client.hex(),
            "server_key": r_server.hex(),
            "resumption_secret": r_resumption.hex(),
            "ticket_nonce": r_ticket_nonce.hex(),
            "ticket_state": r_state.hex(),
            "ticket": r_ticket.hex(),
            "ticket_plaintext": r_ticket_plaintext.hex(),
        }
        resumed["records"] = _seal_all(
            r_server,
            cipher,
            [
                ("server_msg_seq0", "MSG", b""),
                ("server_ticket_seq1", "TICKET", r_ticket_plaintext),
                ("server_msg_seq2", "MSG", SERVER_MESSAGE),
                ("server_end_seq3", "END", b""),
            ],
        )
        resumed["records"].update(
            _seal_all(
                r_client,
                cipher,
                [("client_msg_seq0", "MSG", b""), ("client_end_seq1", "END", b"")],
            )
        )
        out["sessions"][cipher] = {"full": full, "resumed": resumed}
    return out


def check(vectors):
    """Recompute every value of ``vectors`` from its inputs; raises
    AssertionError at the first difference.  The ML-KEM ciphertexts are
    inputs; their shared secrets are checked by decapsulation."""
    mlkem = MLKEM768PrivateKey.from_seed_bytes(bytes.fromhex(vectors["mlkem_seed"]))
    encapsulations = {}
    for cipher, session in vectors["sessions"].items():
        ct = bytes.fromhex(session["full"]["mlkem_ciphertext"])
        shared = mlkem.decapsulate(ct)
        assert shared.hex() == session["full"]["mlkem_shared_secret"], cipher
        encapsulations[cipher] = (ct, shared)
    again = make(encapsulations)
    _same(again, vectors, "")
    # The hand-written RFC 8017 encodings agree with cryptography's.
    long_term = serialization.load_pem_private_key(
        vectors["server_private_key_pem"].encode("ascii"), None
    )
    ephemeral = serialization.load_pem_private_key(
        vectors["ephemeral_private_key_pem"].encode("ascii"), None
    )
    signature = base64.b64decode(vectors["mlkem768_member"]["signature"])
    long_term.public_key().verify(
        signature, bytes.fromhex(vectors["hybrid_signed_message"]), kx1.PSS, hashes.SHA256()
    )
    for session in vectors["sessions"].values():
        full = session["full"]
        secret = ephemeral.decrypt(
            bytes.fromhex(full["rsa_ciphertext"]),
            kx1.oaep(bytes.fromhex(full["hello_payload"])),
        )
        assert secret.hex() == full["secret"]


def _same(ours, theirs, path):
    if isinstance(ours, dict):
        assert isinstance(theirs, dict) and sorted(ours) == sorted(theirs), path
        for name in ours:
            _same(ours[name], theirs[name], f"{path}/{name}")
    else:
        assert ours == theirs, path


def main(argv):
    if argv[1:] == ["--write"]:
        vectors = make()
        check(vectors)
        with open(PATH, "w", encoding="utf-8") as f:
            json.dump(vectors, f, indent=2)
            f.write("\n")
        print(f"wrote {os.path.normpath(PATH)}")
        return 0
    if argv[1:] == ["--check"]:
        with open(PATH, encoding="utf-8") as f:
            check(json.load(f))
        print(f"{os.path.normpath(PATH)} reproduces")
        return 0
    print("usage: python -m tests.independent.revision3_vectors --write | --check")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
