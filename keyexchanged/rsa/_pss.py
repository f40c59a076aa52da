"""RSASSA-PSS (RFC 8017 §8.1) with EMSA-PSS (§9.1), behind
``PrivateKey.sign_pss`` and ``PublicKey.verify_pss``."""

from __future__ import annotations

import hmac
from secrets import token_bytes

from keyexchanged.rsa._encoding import as_bytes, check_int, hash_info, mgf1
from keyexchanged.rsa._errors import FaultError

# RFC 8017 §9.1.1 step 5: M' starts with eight zero bytes.
_PSS_PADDING1 = bytes(8)
# RFC 8017 §9.1.1 step 12: the trailer field of EMSA-PSS.
_PSS_TRAILER = 0xBC


def check_salt_length(salt_length):
    check_int(salt_length, "salt_length")
    if salt_length < 0:
        raise ValueError("salt_length must not be negative")
    return salt_length


def sign(private_key, message, hash, mgf_hash, salt_length, salt):
    """RSASSA-PSS-SIGN (RFC 8017 §8.1.1); see ``PrivateKey.sign_pss``."""
    message = as_bytes(message, "message")
    hash_new, h_len = hash_info(hash)
    mgf_new, mgf_len = hash_info(hash if mgf_hash is None else mgf_hash)
    if salt is not None:
        salt = as_bytes(salt, "salt")
        if salt_length is not None and salt_length != len(salt):
            raise ValueError("salt_length does not match the length of salt")
        s_len = len(salt)
    else:
        s_len = h_len if salt_length is None else check_salt_length(salt_length)
    em_bits = private_key.size - 1
    em_len = (em_bits + 7) // 8
    # §9.1.1 step 3.
    if em_len < h_len + s_len + 2:
        raise ValueError("RSA key too small for this hash and salt length")
    if salt is None:
        salt = token_bytes(s_len)
    m_hash = hash_new(message).digest()
    h = hash_new(_PSS_PADDING1 + m_hash + salt).digest()
    db_len = em_len - h_len - 1
    # DB = PS ‖ 0x01 ‖ salt, with the zero PS implicit in the integer.
    db = (1 << (8 * s_len)) | int.from_bytes(salt, "big")
    masked_db = db ^ int.from_bytes(mgf1(h, db_len, mgf_new, mgf_len), "big")
    # Step 11: clear the leftmost 8·emLen − emBits bits so EM < 2^emBits < n.
    masked_db &= (1 << (em_bits - 8 * h_len - 8)) - 1
    em = (masked_db << (8 * h_len + 8)) | (int.from_bytes(h, "big") << 8) | _PSS_TRAILER
    s = private_key._private_op(em)
    if s is None:
        raise FaultError("RSA signature failed its consistency check; nothing was output")
    return s.to_bytes(private_key.k, "big")


def verify(public_key, message, signature, hash, mgf_hash, salt_length):
    """RSASSA-PSS-VERIFY (RFC 8017 §8.1.2); see ``PublicKey.verify_pss``."""
    message = as_bytes(message, "message")
    hash_new, h_len = hash_info(hash)
    mgf_new, mgf_len = hash_info(hash if mgf_hash is None else mgf_hash)
    s_len = h_len if salt_length is None else check_salt_length(salt_length)
    if not isinstance(signature, (bytes, bytearray, memoryview)):
        return False
    signature = bytes(signature)
    # §8.1.2 step 1: the signature is exactly k octets.
    if len(signature) != public_key.k:
        return False
    s = int.from_bytes(signature, "big")
    if s >= public_key.n:
        return False
    m = public_key._public_op(s)
    return _emsa_pss_verify(
        hash_new(message).digest(), m, public_key.size - 1, hash_new, h_len, mgf_new, mgf_len, s_len
    )


def _emsa_pss_verify(m_hash, m, em_bits, hash_new, h_len, mgf_new, mgf_len, s_len):
    """EMSA-PSS-VERIFY (RFC 8017 §9.1.2) on the integer m = sᵉ mod n."""
    em_len = (em_bits + 7) // 8
    # Step 3: room for the hash, the salt, the 0x01 byte and the trailer.
    if em_len < h_len + s_len + 2:
        return False
    # Steps 2 and 6 at once: I2OSP(m, emLen) must fit and the leftmost
    # 8·emLen − emBits bits of maskedDB must be zero, i.e. m < 2^emBits.
    if m >> em_bits:
        return False
    # Step 4: the trailer byte.
    if m & 0xFF != _PSS_TRAILER:
        return False
    db_len = em_len - h_len - 1
    h = ((m >> 8) & ((1 << (8 * h_len)) - 1)).to_bytes(h_len, "big")
    masked_db = m >> (8 * h_len + 8)
    # Steps 7–9: unmask DB and clear the bits that do not belong to emBits.
    db = masked_db ^ int.from_bytes(mgf1(h, db_len, mgf_new, mgf_len), "big")
    db &= (1 << (em_bits - 8 * h_len - 8)) - 1
    # Step 10: DB = PS (zeros) ‖ 0x01 ‖ salt; with PS zero, everything above the
    # salt must be exactly the single 0x01 byte.
    if db >> (8 * s_len) != 1:
        return False
    salt = (db & ((1 << (8 * s_len)) - 1)).to_bytes(s_len, "big")
    # Steps 12–14.
    h_check = hash_new(_PSS_PADDING1 + m_hash + salt).digest()
    return hmac.compare_digest(h, h_check)
