"""RSA for keyexchanged, written out in full so it can be read and audited.

What is here
------------
* ``generate_private_key`` — FIPS 186-5 appendix A.1.3 style key generation
  (probable primes, e = 65537, d = e⁻¹ mod λ(n)) for 2048 to 8192-bit moduli.
* ``PublicKey`` / ``PrivateKey`` — plain holders of the integers, with the
  checks needed when a key is imported (``PrivateKey.validate`` and
  ``PublicKey.validate``).
* RSAES-OAEP (RFC 8017 §7.1): ``PublicKey.encrypt_oaep`` and
  ``PrivateKey.decrypt_oaep``.
* RSASSA-PSS (RFC 8017 §8.1): ``PrivateKey.sign_pss`` and
  ``PublicKey.verify_pss``.

There is deliberately no PKCS #1 v1.5 encryption (its padding oracle cannot be
closed in Python) and no ASN.1: serialising keys is the job of ``keys.py``.

Why write RSA at all
--------------------
KX/1 needs exactly one RSA encryption and one signature scheme.  Owning those
few hundred lines lets us document every check the protocol relies on (fault
check, blinding, single decryption error) instead of trusting that a wrapper
passes the right flags to a library, and lets the daemon run with nothing but
the standard library when gmpy2 is unavailable.

Big-integer backends
--------------------
All modular exponentiation goes through a small backend object:

* ``"gmpy2"`` (used when gmpy2 imports): ``gmpy2.powmod_sec`` — GMP's
  side-channel-silent exponentiation — for every secret exponent, and the
  faster ``gmpy2.powmod`` for public exponents.
* ``"python"``: the built-in ``pow``.  It is *not* constant time; base
  blinding hides which ciphertext is being exponentiated, but the timing of
  ``pow`` still depends on the secret exponent's bits.  Prefer gmpy2 for a
  daemon that faces the network.

Setting ``KEYEXCHANGE_PURE_PYTHON=1`` in the environment before import forces
the Python backend.  ``BACKEND`` names the active backend and
``AVAILABLE_BACKENDS`` lists those that can be used; ``_use_backend(name)``
is a context manager that switches backends temporarily so that the tests and
benchmarks exercise both on every run (it swaps module state: not thread-safe,
not for production code).

Private-key operations
----------------------
Every decryption and signature uses the Chinese remainder theorem with values
precomputed once per key, blinds the input with a secret r that differs every
time, and checks the result by re-applying the public exponent mod n and
comparing with the input as it was given (never a reduced copy of it) before
anything leaves the function.  A mismatch (a fault, e.g. a glitch in one CRT half, which would
otherwise reveal a prime factor of n through gcd(sᵉ − m, n)) raises
``DecryptionError`` for OAEP and ``FaultError`` for PSS; a wrong value is
never returned.

Every OAEP decryption failure — wrong length, ciphertext ≥ n, wrong label,
wrong hash, corrupted padding, a fault — raises ``DecryptionError`` with the
same message, and the padding checks are combined before a single exit so the
reason is not revealed by an early return (Manger's attack needs exactly that
distinction).

Test-vector keywords
--------------------
``encrypt_oaep(..., seed=...)`` and ``sign_pss(..., salt=...)`` make the
otherwise random seed and salt fixed.  They exist only so the published RFC
8017 / PKCS #1 vectors can be reproduced byte for byte; using them in
production would make encryption deterministic and must not be done.

Key sizes
---------
Generation accepts 2048 to 8192 bits in steps of 8.  The constructors accept
1024 to 16384 bits: 1024 is the smallest size of the published PKCS #1 test
vectors, which must load, and 16384 bounds the work a peer can make us do with
a huge modulus.  ``validate()`` applies the policy for real keys (at least
2048 bits unless told otherwise); code importing keys from files or peers
should call it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import math
import os
import secrets
from bisect import bisect_left
from itertools import compress

__all__ = [
    "AVAILABLE_BACKENDS",
    "BACKEND",
    "DecryptionError",
    "FaultError",
    "PrivateKey",
    "PublicKey",
    "generate_bits_ok",
    "generate_private_key",
]


# ---------------------------------------------------------------------------
# Constants, each with its reason
# ---------------------------------------------------------------------------

# F4: the public exponent everyone uses.  Prime, so gcd(e, p − 1) = 1 is just
# p mod e ≠ 1, and FIPS 186-5 requires 2^16 < e < 2^256.
PUBLIC_EXPONENT = 65537

# FIPS 186-5 A.1.1 sets nlen ≥ 2048; above 8192 bits generation with the
# Python backend takes minutes and buys nothing KX/1 needs.
MIN_GENERATE_BITS = 2048
MAX_GENERATE_BITS = 8192
# Whole-byte moduli like other tools make; it also keeps nlen even, as A.1.3
# needs for primes of nlen/2 bits.
GENERATE_BITS_STEP = 8
# NIST SP 800-57 part 1: 3072 bits ≈ 128-bit security, acceptable past 2030.
DEFAULT_BITS = 3072
#: The rule above in words, for every message that states it.
GENERATE_BITS_RULE = (
    f"from {MIN_GENERATE_BITS} to {MAX_GENERATE_BITS} in steps of {GENERATE_BITS_STEP}"
)

# Smallest modulus the constructors take: the PKCS #1 v2.1 test vectors start at
# 1024 bits.  Real keys are held to ``validate()``'s stricter minimum.
MIN_IMPORT_BITS = 1024
# A public key from a peer decides how much work encryption costs us.
MAX_IMPORT_BITS = 16384
# NIST SP 800-131A: nothing below 2048 bits for new use.
MIN_VALIDATE_BITS = 2048

# FIPS 186-5 A.1.3 step 5.4: |p − q| must exceed 2^(nlen/2 − 100) so n cannot be
# factored by Fermat's method.
PQ_DISTANCE_SLACK_BITS = 100

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

# One message for every OAEP failure, so the message cannot become an oracle.
_DECRYPTION_FAILED = "decryption failed"

# reprs show this many characters (size and the first hex digits of n): enough
# to tell keys apart in a log, nothing secret.
_REPR_PREFIX = 40

# Blinding: a blinding pair (rᵉ, r⁻¹) serves this many operations, each one
# the square of the previous one's, before a fresh random r is drawn.  32 is
# OpenSSL's BN_BLINDING_COUNTER: a fresh pair costs a public exponentiation
# and two inverses (about 35 µs at 3072 bits with gmpy2), a squared one four
# half-size multiplications (about 2 µs).  See PrivateKey._blinding_pair.
_BLINDING_USES = 32

# RFC 8017 §9.1.1 step 5: M' starts with eight zero bytes.
_PSS_PADDING1 = bytes(8)
# RFC 8017 §9.1.1 step 12: the trailer field of EMSA-PSS.
_PSS_TRAILER = 0xBC


# ---------------------------------------------------------------------------
# Exceptions
# ---------------------------------------------------------------------------


class DecryptionError(Exception):
    """Raised for every OAEP decryption failure, always with the same text."""

    def __init__(self, *_ignored) -> None:
        # Whatever a caller (or unpickling) passes, the text stays the same.
        super().__init__(_DECRYPTION_FAILED)


class FaultError(RuntimeError):
    """A private-key computation failed its self-check; nothing was output.

    Seeing this means the hardware (or something tampering with it)
    miscalculated; the signature that would have leaked a factor of n was
    discarded.
    """


# ---------------------------------------------------------------------------
# Big-integer backends
# ---------------------------------------------------------------------------


class _Backend:
    """The handful of integer operations RSA needs, for one integer library.

    ``number`` converts a Python int into the library's integer type;
    ``powmod_public`` is for exponents anyone may know, ``powmod_secret`` for
    exponents that must not leak (d mod p − 1, Miller–Rabin exponents of a
    prime we keep).  ``invert`` is a modular inverse.
    """

    __slots__ = ("invert", "name", "number", "powmod_public", "powmod_secret")

    def __init__(self, name, number, powmod_public, powmod_secret, invert):
        self.name = name
        self.number = number
        self.powmod_public = powmod_public
        self.powmod_secret = powmod_secret
        self.invert = invert

    def __repr__(self) -> str:
        return f"<rsa backend {self.name}>"


def _python_invert(x, m):
    return pow(x, -1, m)


_BACKENDS = {"python": _Backend("python", int, pow, pow, _python_invert)}

try:
    import gmpy2
except ImportError:  # pragma: no cover - depends on the installation
    gmpy2 = None
else:
    _BACKENDS["gmpy2"] = _Backend("gmpy2", gmpy2.mpz, gmpy2.powmod, gmpy2.powmod_sec, gmpy2.invert)

AVAILABLE_BACKENDS = tuple(sorted(_BACKENDS))

if os.environ.get("KEYEXCHANGE_PURE_PYTHON") == "1" or "gmpy2" not in _BACKENDS:
    _backend = _BACKENDS["python"]
else:
    _backend = _BACKENDS["gmpy2"]

BACKEND = _backend.name


@contextlib.contextmanager
def _use_backend(name):
    """Run the body with backend ``name`` ("gmpy2" or "python"), then restore.

    For tests and benchmarks only: it changes module-wide state.
    """
    global _backend, BACKEND
    try:
        chosen = _BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown or unavailable RSA backend {name!r}") from None
    saved = _backend
    _backend, BACKEND = chosen, chosen.name
    try:
        yield chosen
    finally:
        _backend, BACKEND = saved, saved.name


# Module-level so the tests can watch (and the blinding test can prove) how
# randomness is drawn.
_randbelow = secrets.randbelow
_token_bytes = secrets.token_bytes

# Counts the forks this process descends from.  A blinding pair remembers
# the count it was made under, so a child never squares its parent's pair
# (the two would blind with the same values from then on).
_fork_generation = 0


def _after_fork_in_child():
    global _fork_generation
    _fork_generation += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# ---------------------------------------------------------------------------
# Hashes and MGF1
# ---------------------------------------------------------------------------


_hash_infos = {}


def _hash_info(name):
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


def _mgf1(seed, length, constructor, digest_size):
    """MGF1 (RFC 8017 B.2.1): hash seed ‖ counter for counter = 0, 1, … ."""
    # Hashing the seed once and copying the state saves rehashing it per block.
    prefix = constructor(seed)
    blocks = []
    for counter in range(-(-length // digest_size)):
        block = prefix.copy()
        block.update(counter.to_bytes(4, "big"))
        blocks.append(block.digest())
    return b"".join(blocks)[:length]


def _as_bytes(value, what):
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{what} must be bytes, not {type(value).__name__}")


# ---------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------


def _check_int(value, what):
    """Return value as a plain int; refuse floats, strings and bools."""
    # bool is an int subclass, but True as a modulus is a bug, not a key.
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    return int(value)


class PublicKey:
    """An RSA public key (n, e).

    The constructor checks the shape of the key (n odd, 1024 ≤ bits ≤ 16384,
    e odd with 3 ≤ e < n); ``validate()`` adds the policy for real keys.
    """

    __slots__ = ("_cache", "byte_size", "e", "k", "n", "size")

    def __init__(self, n: int, e: int) -> None:
        n = _check_int(n, "modulus n")
        e = _check_int(e, "public exponent e")
        size = n.bit_length()
        if not MIN_IMPORT_BITS <= size <= MAX_IMPORT_BITS:
            raise ValueError(
                f"RSA modulus of {size} bits is outside {MIN_IMPORT_BITS}..{MAX_IMPORT_BITS}"
            )
        if not n & 1:
            raise ValueError("RSA modulus must be odd")
        if not 3 <= e < n or not e & 1:
            raise ValueError("RSA public exponent must be odd and in 3 <= e < n")
        self.n = n
        self.e = e
        self.size = size
        self.byte_size = self.k = (size + 7) // 8
        # (n, e) converted to each backend's integer type, filled on first use.
        self._cache = {}

    def _numbers(self, backend):
        numbers = self._cache.get(backend.name)
        if numbers is None:
            numbers = self._cache[backend.name] = (backend.number(self.n), backend.number(self.e))
        return numbers

    def _public_op(self, x):
        backend = _backend
        n, e = self._numbers(backend)
        return int(backend.powmod_public(backend.number(x), e, n))

    def __eq__(self, other):
        if not isinstance(other, PublicKey):
            return NotImplemented
        return self.n == other.n and self.e == other.e

    def __hash__(self):
        return hash((self.n, self.e))

    def __repr__(self) -> str:
        return f"<PublicKey {self.size}-bit n={self.n:x}"[:_REPR_PREFIX] + "…>"

    def validate(self, min_bits: int = MIN_VALIDATE_BITS) -> None:
        """Check the key is fit for real use; raise ValueError if not.

        Beyond the constructor's checks: the size policy, no prime factor
        below 1000 (SP 800-89 §5.3.3's cheap partial validation) and that n is
        composite.  Full proof that n is a product of two primes needs the
        private key; see ``PrivateKey.validate``.
        """
        if self.size < min_bits:
            raise ValueError(f"RSA key of {self.size} bits is below the minimum of {min_bits}")
        if math.gcd(self.n, _small_primes_product()) != 1:
            raise ValueError("RSA modulus has a small prime factor")
        # One base-2 round: a prime always passes it, a product of two large
        # primes essentially never does (a false "not composite" here would
        # need n to be a base-2 strong pseudoprime).
        if _strong_probable_prime(self.n, 2, pow):
            raise ValueError("RSA modulus is not composite")

    # -- RSAES-OAEP ---------------------------------------------------------

    def encrypt_oaep(
        self,
        message: bytes,
        label: bytes = b"",
        hash: str = "sha256",
        mgf_hash: str | None = None,
        *,
        seed: bytes | None = None,
    ) -> bytes:
        """RSAES-OAEP-ENCRYPT (RFC 8017 §7.1.1).

        ``seed`` fixes the otherwise random seed (it must be the hash's size);
        it exists only to reproduce published test vectors.
        """
        message = _as_bytes(message, "message")
        label = _as_bytes(label, "label")
        hash_new, h_len = _hash_info(hash)
        mgf_new, mgf_len = _hash_info(hash if mgf_hash is None else mgf_hash)
        k = self.k
        db_len = k - h_len - 1
        # Step 1b; also covers keys too small for the hash at all.
        if len(message) > k - 2 * h_len - 2:
            raise ValueError("message too long")
        if seed is None:
            seed = _token_bytes(h_len)
        else:
            seed = _as_bytes(seed, "seed")
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
        masked_db = db ^ int.from_bytes(_mgf1(seed, db_len, mgf_new, mgf_len), "big")
        masked_db_bytes = masked_db.to_bytes(db_len, "big")
        masked_seed = int.from_bytes(seed, "big") ^ int.from_bytes(
            _mgf1(masked_db_bytes, h_len, mgf_new, mgf_len), "big"
        )
        # EM = 0x00 ‖ maskedSeed ‖ maskedDB; the leading zero byte keeps EM < n.
        em = (masked_seed << (8 * db_len)) | masked_db
        return self._public_op(em).to_bytes(k, "big")

    # -- RSASSA-PSS ---------------------------------------------------------

    def verify_pss(
        self,
        message: bytes,
        signature: bytes,
        hash: str = "sha256",
        mgf_hash: str | None = None,
        salt_length: int | None = None,
    ) -> bool:
        """RSASSA-PSS-VERIFY (RFC 8017 §8.1.2); True only for a valid signature.

        Any malformed signature (wrong length, s ≥ n, bad encoding, wrong
        salt length) gives False; only an unsupported hash name or a negative
        salt length, which are programming errors, raise ValueError.
        """
        message = _as_bytes(message, "message")
        hash_new, h_len = _hash_info(hash)
        mgf_new, mgf_len = _hash_info(hash if mgf_hash is None else mgf_hash)
        s_len = h_len if salt_length is None else _check_salt_length(salt_length)
        if not isinstance(signature, (bytes, bytearray, memoryview)):
            return False
        signature = bytes(signature)
        # §8.1.2 step 1: the signature is exactly k octets.
        if len(signature) != self.k:
            return False
        s = int.from_bytes(signature, "big")
        if s >= self.n:
            return False
        m = self._public_op(s)
        return _emsa_pss_verify(
            hash_new(message).digest(), m, self.size - 1, hash_new, h_len, mgf_new, mgf_len, s_len
        )


def _check_salt_length(salt_length):
    _check_int(salt_length, "salt_length")
    if salt_length < 0:
        raise ValueError("salt_length must not be negative")
    return salt_length


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
    db = masked_db ^ int.from_bytes(_mgf1(h, db_len, mgf_new, mgf_len), "big")
    db &= (1 << (em_bits - 8 * h_len - 8)) - 1
    # Step 10: DB = PS (zeros) ‖ 0x01 ‖ salt; with PS zero, everything above the
    # salt must be exactly the single 0x01 byte.
    if db >> (8 * s_len) != 1:
        return False
    salt = (db & ((1 << (8 * s_len)) - 1)).to_bytes(s_len, "big")
    # Steps 12–14.
    h_check = hash_new(_PSS_PADDING1 + m_hash + salt).digest()
    return hmac.compare_digest(h, h_check)


class PrivateKey:
    """An RSA private key with its two primes.

    The constructor checks that the numbers fit together (n = p·q, e odd in
    range, e·d ≡ 1 mod λ(n)) and precomputes the CRT values; the primality
    of p and q and the size policy are checked by ``validate()``, which an
    importer should call.
    """

    __slots__ = (
        "_blinding",
        "_cache",
        "_public",
        "byte_size",
        "d",
        "e",
        "k",
        "n",
        "p",
        "q",
        "size",
    )

    def __init__(self, n: int, e: int, d: int, p: int, q: int) -> None:
        d = _check_int(d, "private exponent d")
        p = _check_int(p, "prime p")
        q = _check_int(q, "prime q")
        # Checks n and e; its messages never contain the secret values.
        self._public = public = PublicKey(n, e)
        n, e = public.n, public.e
        if p < 3 or q < 3 or p * q != n:
            raise ValueError("RSA key is inconsistent: n != p * q")
        # Coprime p and q are what the CRT (and its fault check) rely on.
        if p == q or math.gcd(p, q) != 1:
            raise ValueError("RSA key is invalid: p and q are not distinct primes")
        if not 1 < d < n:
            raise ValueError("RSA private exponent d is out of range")
        if (e * d) % _carmichael_lambda(p, q) != 1:
            raise ValueError("RSA key is inconsistent: e * d != 1 mod lcm(p - 1, q - 1)")
        self.n, self.e, self.d, self.p, self.q = n, e, d, p, q
        self.size = self._public.size
        self.byte_size = self.k = self._public.k
        # CRT values per backend, built on first use (see _numbers).
        self._cache = {}
        # The last blinding pair used, per backend (see _blinding_pair).
        self._blinding = {}

    def __reduce__(self):
        # A copy or an unpickled key starts from the numbers alone: caches
        # are rebuilt, and above all the blinding pair is not carried into
        # another process, which would then blind with the same values.
        return (PrivateKey, (self.n, self.e, self.d, self.p, self.q))

    def _numbers(self, backend):
        """(n, e, p, q, dp, dq, qinv, n − 1) in backend form, cached.

        dp, dq and qinv let each operation run two half-size exponentiations
        (about 3× faster than one with d); n − 1 stays a Python int because
        it bounds the random blinding value.
        """
        numbers = self._cache.get(backend.name)
        if numbers is None:
            p, q, d = self.p, self.q, self.d
            num = backend.number
            numbers = self._cache[backend.name] = (
                num(self.n),
                num(self.e),
                num(p),
                num(q),
                num(d % (p - 1)),
                num(d % (q - 1)),
                num(pow(q, -1, p)),
                self.n - 1,
            )
        return numbers

    def _blinding_pair(self, backend, numbers):
        """(rᵉ mod p, rᵉ mod q, r⁻¹ mod p, r⁻¹ mod q) for one operation.

        The first operation (and every ``_BLINDING_USES``-th after it, and the
        first after a fork) draws r uniform in [1, n) and invertible; the
        others square the previous pair: (rᵉ)² = (r²)ᵉ and (r⁻¹)² = (r²)⁻¹,
        so the pair stays consistent while r becomes r², r⁴, …  This is
        OpenSSL's BN_BLINDING update, and it is safe for the same reason
        blinding works at all: the secret exponentiation sees c·rᵉ, and r
        never leaves this object, so to the attacker who chose c each r in
        the chain is a secret it cannot compute without an earlier one, and
        c·rᵉ is as unpredictable as with a fresh draw.  Knowing one r would
        give away the next ones; the chain is restarted after 32 uses to
        bound what such a leak could serve.  The pair is taken out of
        the key and replaced by its successor before any exponentiation
        starts, so an operation that overlaps another (a second thread)
        squares the pair in use, or draws afresh if it comes in between: two
        operations never blind with the same pair.  A forked child draws
        afresh (``_fork_generation``), and a copied or unpickled key starts
        without a pair (``__reduce__``).

        Everything is kept mod p and mod q, where the exponentiations run:
        two half-size inverses cost about 60 % of one mod n, and squaring
        four half-size numbers is cheaper than two full ones.
        """
        _, e, p, q = numbers[:4]
        state = self._blinding.pop(backend.name, None)
        if state is not None and state[4] > 0 and state[5] == _fork_generation:
            a_p, a_q, ai_p, ai_q, uses, generation = state
            a_p, a_q = a_p * a_p % p, a_q * a_q % q
            ai_p, ai_q = ai_p * ai_p % p, ai_q * ai_q % q
            uses -= 1
        else:
            num, power, invert = backend.number, backend.powmod_public, backend.invert
            while True:
                r = num(_randbelow(numbers[7]) + 1)
                r_p, r_q = r % p, r % q
                try:
                    ai_p, ai_q = invert(r_p, p), invert(r_q, q)
                except (ValueError, ZeroDivisionError):
                    # gcd(r, n) ≠ 1: probability below 2^-1000, but draw again.
                    continue
                break
            a_p, a_q = power(r_p, e, p), power(r_q, e, q)
            uses, generation = _BLINDING_USES - 1, _fork_generation
        self._blinding[backend.name] = (a_p, a_q, ai_p, ai_q, uses, generation)
        return a_p, a_q, ai_p, ai_q

    def _private_op(self, c):
        """Return c^d mod n, or None if the result fails its fault check.

        The input is blinded with a pair from ``_blinding_pair``, so the
        secret exponentiations only ever see c·rᵉ, a value unrelated to the
        c an attacker chose, and the result is multiplied by r⁻¹.
        """
        backend = _backend
        numbers = self._numbers(backend)
        n, e, p, q, dp, dq, qinv, _ = numbers
        power, secret_power = backend.powmod_public, backend.powmod_secret
        a_p, a_q, ai_p, ai_q = self._blinding_pair(backend, numbers)
        c_in = c  # the caller's value, kept apart from every reduction below
        c = backend.number(c)
        c_p, c_q = c % p, c % q
        # (c·rᵉ)^dp ≡ c^dp · r (mod p), so multiplying by r⁻¹ unblinds.
        m_p = secret_power(c_p * a_p % p, dp, p) * ai_p % p
        m_q = secret_power(c_q * a_q % q, dq, q) * ai_q % q
        # Garner's recombination: m ≡ m_p (mod p), m ≡ m_q (mod q), 0 ≤ m < n.
        m = m_q + (m_p - m_q) * qinv % p * q
        # The fault check: re-encrypt the final m mod n and compare with the
        # c the caller passed, so a fault anywhere above (either reduction
        # of c, either half, unblinding, recombination) is caught; a result
        # right mod q but wrong mod p would give away q.  It must not reuse
        # c_p or c_q: a fault in reducing c would then feed the exponentiation
        # and the check alike, and pass (issue 12).
        if power(m, e, n) != c_in:
            return None
        return int(m)

    def public_key(self) -> PublicKey:
        return self._public

    def __repr__(self) -> str:
        # Only the public part: reprs end up in logs.
        return f"<PrivateKey {self.size}-bit n={self.n:x}"[: _REPR_PREFIX + 1] + "…>"

    def validate(self, min_bits: int = MIN_VALIDATE_BITS) -> None:
        """Check an imported key fully; raise ValueError naming the problem.

        Beyond the constructor's checks: the size is within
        ``min_bits``..16384, p and q are probable primes (Miller–Rabin with
        FIPS 186-5 Table B.1 round counts; those counts assume the primes were
        generated honestly, which is the point: whoever could craft a bad
        private key already holds it), and |p − q| > 2^(nlen/2 − 100).
        Tests use ``min_bits=1024`` for the published vectors.
        """
        self._public.validate(min_bits)
        rounds = _miller_rabin_rounds(self.size)
        backend = _backend
        for prime, name in ((self.p, "p"), (self.q, "q")):
            if not _is_probable_prime(prime, rounds, backend):
                raise ValueError(f"RSA key is invalid: {name} is not prime")
        if abs(self.p - self.q) <= 1 << (self.size // 2 - PQ_DISTANCE_SLACK_BITS):
            raise ValueError("RSA key is invalid: p and q are too close together")

    # -- RSAES-OAEP ---------------------------------------------------------

    def decrypt_oaep(
        self,
        ciphertext: bytes,
        label: bytes = b"",
        hash: str = "sha256",
        mgf_hash: str | None = None,
    ) -> bytes:
        """RSAES-OAEP-DECRYPT (RFC 8017 §7.1.2).

        Raises ``DecryptionError`` ("decryption failed") for every failure;
        an unsupported hash name (a programming error) raises ValueError.
        """
        label = _as_bytes(label, "label")
        hash_new, h_len = _hash_info(hash)
        mgf_new, mgf_len = _hash_info(hash if mgf_hash is None else mgf_hash)
        k = self.k
        # Step 1: public length checks; failing them reveals nothing secret.
        if (
            not isinstance(ciphertext, (bytes, bytearray, memoryview))
            or len(ciphertext) != k
            or k < 2 * h_len + 2
        ):
            raise DecryptionError
        c = int.from_bytes(ciphertext, "big")
        if c >= self.n:
            raise DecryptionError
        m = self._private_op(c)
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
            _mgf1(masked_db.to_bytes(db_len, "big"), h_len, mgf_new, mgf_len), "big"
        )
        db = masked_db ^ int.from_bytes(
            _mgf1(seed.to_bytes(h_len, "big"), db_len, mgf_new, mgf_len), "big"
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

    # -- RSASSA-PSS ---------------------------------------------------------

    def sign_pss(
        self,
        message: bytes,
        hash: str = "sha256",
        mgf_hash: str | None = None,
        salt_length: int | None = None,
        *,
        salt: bytes | None = None,
    ) -> bytes:
        """RSASSA-PSS-SIGN (RFC 8017 §8.1.1) with EMSA-PSS, emBits = modBits − 1.

        ``salt_length`` defaults to the hash's size.  ``salt`` fixes the
        otherwise random salt; it exists only to reproduce published test
        vectors.  Raises ``FaultError`` if the signature fails its check.
        """
        message = _as_bytes(message, "message")
        hash_new, h_len = _hash_info(hash)
        mgf_new, mgf_len = _hash_info(hash if mgf_hash is None else mgf_hash)
        if salt is not None:
            salt = _as_bytes(salt, "salt")
            if salt_length is not None and salt_length != len(salt):
                raise ValueError("salt_length does not match the length of salt")
            s_len = len(salt)
        else:
            s_len = h_len if salt_length is None else _check_salt_length(salt_length)
        em_bits = self.size - 1
        em_len = (em_bits + 7) // 8
        # §9.1.1 step 3.
        if em_len < h_len + s_len + 2:
            raise ValueError("RSA key too small for this hash and salt length")
        if salt is None:
            salt = _token_bytes(s_len)
        m_hash = hash_new(message).digest()
        h = hash_new(_PSS_PADDING1 + m_hash + salt).digest()
        db_len = em_len - h_len - 1
        # DB = PS ‖ 0x01 ‖ salt, with the zero PS implicit in the integer.
        db = (1 << (8 * s_len)) | int.from_bytes(salt, "big")
        masked_db = db ^ int.from_bytes(_mgf1(h, db_len, mgf_new, mgf_len), "big")
        # Step 11: clear the leftmost 8·emLen − emBits bits so EM < 2^emBits < n.
        masked_db &= (1 << (em_bits - 8 * h_len - 8)) - 1
        em = (masked_db << (8 * h_len + 8)) | (int.from_bytes(h, "big") << 8) | _PSS_TRAILER
        s = self._private_op(em)
        if s is None:
            raise FaultError("RSA signature failed its consistency check; nothing was output")
        return s.to_bytes(self.k, "big")


def _carmichael_lambda(p, q):
    return (p - 1) * (q - 1) // math.gcd(p - 1, q - 1)


# ---------------------------------------------------------------------------
# Primality
# ---------------------------------------------------------------------------


def _miller_rabin_rounds(nlen):
    """Random-base Miller–Rabin rounds for the primes of an nlen-bit modulus.

    FIPS 186-5 Table B.1 (probable primes p and q): 5 rounds for 1024-bit
    primes (error ≤ 2^-112, nlen 2048), 4 rounds for 1536-bit primes
    (2^-128, nlen 3072) and 4 for 2048-bit primes (2^-144, nlen 4096).  The
    error bound only falls as the primes grow, so 4 stays enough above 4096.
    Below 2048 (test-vector keys only) the table has no row; 7 rounds keeps
    an error ≤ 2^-100 for 512-bit primes by the same Damgård–Landrock–
    Pomerance bound.
    """
    if nlen >= 3072:
        return 4
    if nlen >= 2048:
        return 5
    return 7


def _strong_probable_prime(w, base, powmod):
    """One Miller–Rabin round (FIPS 186-5 B.3.1 steps 4.3–4.7) with a given base."""
    w_1 = w - 1
    a = (w_1 & -w_1).bit_length() - 1  # w − 1 = 2^a · m with m odd
    z = powmod(base, w_1 >> a, w)
    if z == 1 or z == w_1:
        return True
    for _ in range(a - 1):
        z = z * z % w
        if z == w_1:
            return True
        if z == 1:
            # A non-trivial square root of 1: certainly composite.
            return False
    return False


def _miller_rabin(w, w_number, rounds, backend):
    """``rounds`` Miller–Rabin rounds with random bases (FIPS 186-5 B.3.1).

    These are the rounds FIPS 186-5 counts.  They run almost only on real
    primes, the ones we keep secret, hence the secret-exponent pow.
    ``w_number`` is w in the backend's integer type.
    """
    for _ in range(rounds):
        # B.3.1 step 4.2: b uniform in [2, w − 2].
        base = backend.number(_randbelow(w - 3) + 2)
        if not _strong_probable_prime(w_number, base, backend.powmod_secret):
            return False
    return True


def _is_probable_prime(w, rounds, backend):
    """Trial division, a base-2 test, then ``rounds`` random-base MR rounds.

    The cheap steps come first because nearly every candidate is composite.
    """
    if w < 3 or not w & 1:
        return w == 2
    if w < _SMALL_PRIMES_LIMIT:
        return w in _small_prime_set()
    if math.gcd(w, _small_primes_product()) != 1:
        return False
    w_number = backend.number(w)
    if not _strong_probable_prime(w_number, 2, backend.powmod_public):
        return False
    return _miller_rabin(w, w_number, rounds, backend)


# Trial division before Miller–Rabin in validate(): primes below this.  SP
# 800-89 §5.3.3 asks that n have no factor below 752.
_SMALL_PRIMES_LIMIT = 1000


@functools.cache
def _odd_primes_below(limit):
    """Odd primes below ``limit`` (sieve of Eratosthenes over odd numbers)."""
    # index i stands for 2i + 1
    sieve = bytearray([1]) * (limit // 2)
    sieve[0] = 0  # 1 is not prime
    for i in range(1, (math.isqrt(limit) + 1) // 2):
        if sieve[i]:
            p = 2 * i + 1
            first = p * p // 2
            sieve[first::p] = bytes(len(range(first, len(sieve), p)))
    return tuple(compress(range(1, 2 * len(sieve), 2), sieve))


@functools.cache
def _small_prime_set():
    return frozenset((2, *_odd_primes_below(_SMALL_PRIMES_LIMIT)))


@functools.cache
def _small_primes_product():
    return math.prod(_small_prime_set())


# ---------------------------------------------------------------------------
# Key generation
# ---------------------------------------------------------------------------

# Candidate primes are searched in windows of this many consecutive integers
# (half of them odd).  At 1024-bit primes one integer in ~710 is prime, so a
# window holds ~23 primes and almost never none; at 4096-bit primes (nlen
# 8192) still ~6.  Larger windows cost more small-prime sieving per prime found.
_WINDOW = 16384

# Primes below this mark their multiples in a window by slice assignment (they
# can hit several times); the primes above it hit at most once per window.
_SLICE_SIEVE_LIMIT = _WINDOW

# Sieve bound B per backend: the window is cleared of multiples of every prime
# below B before any Miller–Rabin test.  Each prime in the table costs ~0.15 µs
# per window; in exchange a k-bit prime needs about e^-γ·ln(2^k)/ln B base-2
# tests (Mertens), e.g. 48 at B = 2^18 and 43 at 2^20 for k = 1536.  With
# Python's pow a test costs ~7.5 ms at 1536 bits and the total is flat from
# 2^20 to 2^21; with GMP's ~1 ms the optimum is 2^17..2^18 (measured).
_SIEVE_BOUND = {"python": 1 << 20, "gmpy2": 1 << 18}

# Large sieve primes are reduced through products of this many bits: one
# big-by-medium division per group, then cheap medium-by-small ones; measured
# ~2× faster than reducing the 1536-bit start by every prime directly.
_SIEVE_GROUP_BITS = 240


@functools.cache
def _sieve_tables(bound):
    """(small primes, groups of large primes with their products) below bound."""
    primes = _odd_primes_below(bound)
    split = bisect_left(primes, _SLICE_SIEVE_LIMIT)
    small = primes[:split]
    groups = []
    group, product = [], 1
    for p in primes[split:]:
        if group and product.bit_length() + p.bit_length() > _SIEVE_GROUP_BITS:
            groups.append((product, tuple(group)))
            group, product = [], 1
        group.append(p)
        product *= p
    if group:
        groups.append((product, tuple(group)))
    return small, tuple(groups)


def _sieve_window(base, e, bound):
    """Offsets j (odd) such that base + j may be prime, base even.

    Removes every j where base + j has a prime factor below ``bound``, and
    where base + j ≡ 1 (mod e), i.e. gcd(e, base + j − 1) ≠ 1 for prime e.
    """
    small, groups = _sieve_tables(bound)
    # Even offsets start cleared: base is even.
    window = bytearray(b"\x00\x01") * (_WINDOW // 2)
    negative = -base
    for p in small:
        first = negative % p  # base + first ≡ 0 (mod p)
        window[first::p] = bytes(len(range(first, _WINDOW, p)))
    # Every large prime exceeds the window, so it hits at most one offset.
    # The residues come out of map() so the per-prime work stays in C.
    hits = []
    extend = hits.extend
    in_window = _WINDOW.__gt__
    for product, primes in groups:
        extend(filter(in_window, map((negative % product).__mod__, primes)))
    for offset in hits:
        window[offset] = 0
    first = (1 - base) % e  # base + first ≡ 1 (mod e)
    window[first::e] = bytes(len(range(first, _WINDOW, e)))
    return list(compress(range(_WINDOW), window))


def _prime_lower_bound(bits):
    """The least integer ≥ √2 · 2^(bits−1), computed exactly.

    x ≥ √2·2^(bits−1) ⇔ x² ≥ 2^(2·bits−1); that power of two is not a
    square, so the least such x is isqrt(2^(2·bits−1)) + 1.
    """
    return math.isqrt(1 << (2 * bits - 1)) + 1


def _generate_prime(bits, e, backend, rounds, progress, tested):
    """A random prime p, √2·2^(bits−1) ≤ p < 2^bits, with gcd(p − 1, e) = 1.

    FIPS 186-5 A.1.3 draws a fresh random odd candidate each time; doing that
    in Python would spend most of the time on candidates with tiny factors.
    Instead each window starts at a random point, is sieved once, and its
    survivors are tested in random order, so the prime returned is uniform
    among the window's primes (a sequential scan would favour primes after
    long gaps).  Every A.1.3 acceptance condition is still checked.

    ``tested`` is a one-element list counting Miller–Rabin candidates.
    """
    lower = _prime_lower_bound(bits)
    upper = 1 << bits
    bound = _SIEVE_BOUND[backend.name]
    power = backend.powmod_public
    while True:
        # An even base, uniform among those whose odd offsets base + j
        # (0 < j < _WINDOW) all lie in [lower, upper): base ≥ lower − 1 and
        # base + _WINDOW ≤ upper.
        base = 2 * (lower // 2 + _randbelow((upper - _WINDOW) // 2 - lower // 2 + 1))
        survivors = _sieve_window(base, e, bound)
        while survivors:
            # Draw without replacement: swap a random survivor to the end.
            i = _randbelow(len(survivors))
            survivors[i], survivors[-1] = survivors[-1], survivors[i]
            candidate = base + survivors.pop()
            tested[0] += 1
            if progress is not None:
                progress("candidate", tested[0])
            # The base-2 screen rejects almost every composite for one pow;
            # the candidate is then either discarded or about to be tested
            # with secret-exponent rounds anyway.
            number = backend.number(candidate)
            if not _strong_probable_prime(number, 2, power):
                continue
            if _miller_rabin(candidate, number, rounds, backend):
                return candidate


def generate_bits_ok(bits):
    """Whether :func:`generate_private_key` makes keys of ``bits`` bits
    (:data:`GENERATE_BITS_RULE`): the one statement of the rule, which the
    command line and the daemon's settings check too."""
    return (
        type(bits) is int
        and MIN_GENERATE_BITS <= bits <= MAX_GENERATE_BITS
        and bits % GENERATE_BITS_STEP == 0
    )


def _check_generate_bits(bits):
    if not generate_bits_ok(bits):
        raise ValueError(f"RSA key size must be an int {GENERATE_BITS_RULE}, not {bits!r}")


def generate_private_key(bits: int = DEFAULT_BITS, progress=None) -> PrivateKey:
    """Generate an RSA key per FIPS 186-5 A.1.3 (probable primes), e = 65537.

    ``bits`` is the modulus size: 2048 to 8192 in steps of 8.

    ``progress``, if given, is called as ``progress(event, count)``:
    ``("candidate", n)`` each time the n-th candidate that survived the sieve
    is about to be Miller–Rabin tested, then ``("p", n)`` and ``("q", n)``
    when p and q are found (n = candidates tested so far for the key).  It
    runs in the generating thread; an exception it raises aborts generation.

    Resulting key: n of exactly ``bits`` bits, p and q in
    [√2·2^(bits/2−1), 2^(bits/2)), |p − q| > 2^(bits/2−100),
    gcd(e, p − 1) = gcd(e, q − 1) = 1, d = e⁻¹ mod lcm(p − 1, q − 1) with
    d > 2^(bits/2).
    """
    _check_generate_bits(bits)
    if progress is not None and not callable(progress):
        raise TypeError("progress must be callable")
    backend = _backend
    e = PUBLIC_EXPONENT
    half = bits // 2
    rounds = _miller_rabin_rounds(bits)
    tested = [0]
    min_distance = 1 << (half - PQ_DISTANCE_SLACK_BITS)
    while True:
        p = _generate_prime(half, e, backend, rounds, progress, tested)
        if progress is not None:
            progress("p", tested[0])
        # A.1.3 step 5.4: a q too close to p is replaced, p is kept.
        while True:
            q = _generate_prime(half, e, backend, rounds, progress, tested)
            if abs(p - q) > min_distance:
                break
        if progress is not None:
            progress("q", tested[0])
        d = pow(e, -1, _carmichael_lambda(p, q))
        # FIPS 186-5 A.1.1: 2^(nlen/2) < d < λ(n).  Failing that is
        # astronomically unlikely; start over as the standard says.
        if d > 1 << half:
            return PrivateKey(p * q, e, d, p, q)
