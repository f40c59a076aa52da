"""Hashes, MGF1 and argument checks shared by OAEP, PSS and the keys."""

from __future__ import annotations

import functools
import hashlib

# Hash names (hashlib spelling) accepted for OAEP, PSS and MGF1.  MD5 and
# friends are refused; SHAKE is refused because MGF1 needs a fixed-size digest.
ALLOWED_HASHES = (
    "sha1",  # only for the published RFC 8017 vectors and old peers
    "sha224",
    "sha256",
    "sha384",
    "sha512",
    "sha512_224",
    "sha512_256",
    "sha3_224",
    "sha3_256",
    "sha3_384",
    "sha3_512",
)

_hash_infos = {}


def hash_info(name):
    """Return (constructor, digest size) for an allowed hash name."""
    info = _hash_infos.get(name) if isinstance(name, str) else None
    if info is not None:
        return info
    if name not in ALLOWED_HASHES:
        raise ValueError(f"unsupported hash {name!r}; use one of {', '.join(ALLOWED_HASHES)}")
    # The named constructors skip hashlib.new's name lookup on every call.
    constructor = getattr(hashlib, name, None) or functools.partial(hashlib.new, name)
    try:
        size = constructor(b"").digest_size
    except ValueError:
        raise ValueError(f"hash {name!r} is not available in this Python") from None
    info = _hash_infos[name] = (constructor, size)
    return info


def mgf1(seed, length, constructor, digest_size):
    """MGF1 (RFC 8017 B.2.1): hash seed ‖ counter for counter = 0, 1, … ."""
    # Hashing the seed once and copying the state saves rehashing it per block.
    prefix = constructor(seed)
    blocks = []
    for counter in range(-(-length // digest_size)):
        block = prefix.copy()
        block.update(counter.to_bytes(4, "big"))
        blocks.append(block.digest())
    return b"".join(blocks)[:length]


def as_bytes(value, what):
    """``value`` as bytes (bytearray and memoryview are copied); else TypeError."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{what} must be bytes, not {type(value).__name__}")


def check_int(value, what):
    """Return value as a plain int; refuse floats, strings and bools."""
    # bool is an int subclass, but True as a modulus is a bug, not a key.
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    return int(value)
