"""RSAES-OAEP (RFC 8017 §7.1), behind ``PublicKey.encrypt_oaep`` and
``PrivateKey.decrypt_oaep``.

Every decryption failure — wrong length, ciphertext ≥ n, wrong label, wrong
hash, corrupted padding, a fault — raises ``DecryptionError`` with the same
message, and the padding checks are combined before a single exit so the
reason is not revealed by an early return (Manger's attack needs exactly that
distinction).
"""

from __future__ import annotations

import hmac
from secrets import token_bytes

from keyexchanged.rsa._encoding import as_bytes, hash_info, mgf1
from keyexchanged.rsa._errors import DecryptionError


def encrypt(public_key, message, label, hash, mgf_hash, seed):
    """RSAES-OAEP-ENCRYPT (RFC 8017 §7.1.1); see ``PublicKey.encrypt_oaep``."""
    message = as_bytes(message, "message")
    label = as_bytes(label, "label")
    hash_new, h_len = hash_info(hash)
    mgf_new, mgf_len = hash_info(hash if mgf_hash is None else mgf_hash)
    k = public_key.k
    db_len = k - h_len - 1
    # Step 1b; also covers keys too small for the hash at all.
    if len(message) > k - 2 * h_len - 2:
        raise ValueError("message too long")
    if seed is None:
        seed = token_bytes(h_len)
    else:
        seed = as_bytes(seed, "seed")
        if len(seed) != h_len:
            raise ValueError(f"OAEP seed must be {h_len} bytes for {hash}")
    # DB = lHash ‖ PS ‖ 0x01 ‖ M.  Built as an integer: the zero padding
    # PS is then free, and XOR with the mask is one operation.
    message_bits = 8 * len(message)
    db = (
        (int.from_bytes(hash_new(label).digest(), "big") << (8 * (db_len - h_len)))
        | (1 << message_bits)
        | int.from_bytes(message, "big")
    )
    masked_db = db ^ int.from_bytes(mgf1(seed, db_len, mgf_new, mgf_len), "big")
    masked_db_bytes = masked_db.to_bytes(db_len, "big")
    masked_seed = int.from_bytes(seed, "big") ^ int.from_bytes(
        mgf1(masked_db_bytes, h_len, mgf_new, mgf_len), "big"
    )
    # EM = 0x00 ‖ maskedSeed ‖ maskedDB; the leading zero byte keeps EM < n.
    em = (masked_seed << (8 * db_len)) | masked_db
    return public_key._public_op(em).to_bytes(k, "big")


def decrypt(private_key, ciphertext, label, hash, mgf_hash):
    """RSAES-OAEP-DECRYPT (RFC 8017 §7.1.2); see ``PrivateKey.decrypt_oaep``."""
    label = as_bytes(label, "label")
    hash_new, h_len = hash_info(hash)
    mgf_new, mgf_len = hash_info(hash if mgf_hash is None else mgf_hash)
    k = private_key.k
    # Step 1: public length checks; failing them reveals nothing secret.
    if (
        not isinstance(ciphertext, (bytes, bytearray, memoryview))
        or len(ciphertext) != k
        or k < 2 * h_len + 2
    ):
        raise DecryptionError
    c = int.from_bytes(ciphertext, "big")
    if c >= private_key.n:
        raise DecryptionError
    m = private_key._private_op(c)
    if m is None:
        raise DecryptionError
    # Step 3, EME-OAEP decoding.  From here on everything depends on the
    # plaintext, so all checks are computed first and combined into one
    # branch at the end.
    db_len = k - h_len - 1
    y = m >> (8 * (k - 1))
    masked_seed = ((m >> (8 * db_len)) & ((1 << (8 * h_len)) - 1)).to_bytes(h_len, "big")
    masked_db = m & ((1 << (8 * db_len)) - 1)
    seed = int.from_bytes(masked_seed, "big") ^ int.from_bytes(
        mgf1(masked_db.to_bytes(db_len, "big"), h_len, mgf_new, mgf_len), "big"
    )
    db = masked_db ^ int.from_bytes(
        mgf1(seed.to_bytes(h_len, "big"), db_len, mgf_new, mgf_len), "big"
    )
    rest_bits = 8 * (db_len - h_len)
    l_hash = (db >> rest_bits).to_bytes(h_len, "big")
    # rest = PS ‖ 0x01 ‖ M.  Instead of scanning for the first non-zero
    # byte (a loop whose length depends on the secret), read it from the
    # bit length: PS is all zeros and the next byte is 0x01 exactly when
    # the highest set bit is the lowest bit of its byte.
    rest = db & ((1 << rest_bits) - 1)
    top_bit = rest.bit_length()
    hash_ok = hmac.compare_digest(l_hash, hash_new(label).digest())
    # Non-zero if Y ≠ 0, lHash differs, or the 0x01 separator is missing
    # (top_bit % 8 != 1, which includes rest == 0).
    bad = y | (hash_ok ^ 1) | ((top_bit & 7) ^ 1)
    if bad:
        raise DecryptionError
    message_len = (top_bit - 1) >> 3
    return (rest ^ (1 << (top_bit - 1))).to_bytes(message_len, "big")
