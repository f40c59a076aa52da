"""The key objects: ``PublicKey`` and ``PrivateKey``.

The constructors check the shape of a key, ``validate()`` the policy for
real ones.  Every private-key operation (``PrivateKey._private_op``) uses the
Chinese remainder theorem with values precomputed once per key, blinds its
input with a secret r that differs every time, and checks the result by
re-applying the public exponent mod n and comparing with the input as it was
given (never a reduced copy of it) before anything leaves the function.  A
mismatch (a fault, e.g. a glitch in one CRT half, which would otherwise reveal
a prime factor of n through gcd(sᵉ − m, n)) gives None, which OAEP turns into
``DecryptionError`` and PSS into ``FaultError``; a wrong value is never
returned.

The padding schemes live in ``_oaep.py`` and ``_pss.py``; the key methods
that the rest of keyexchanged calls hand over to them.
"""

from __future__ import annotations

import math
import os
import secrets

from keyexchanged.rsa import _oaep, _pss
from keyexchanged.rsa._backends import selection
from keyexchanged.rsa._encoding import check_int
from keyexchanged.rsa._primes import (
    is_probable_prime,
    miller_rabin_rounds,
    small_primes_product,
    strong_probable_prime,
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

# reprs show this many characters (size and the first hex digits of n): enough
# to tell keys apart in a log, nothing secret.
_REPR_PREFIX = 40

# Blinding: a blinding pair (rᵉ, r⁻¹) serves this many operations, each one
# the square of the previous one's, before a fresh random r is drawn.  32 is
# OpenSSL's BN_BLINDING_COUNTER: a fresh pair costs a public exponentiation
# and two inverses (about 35 µs at 3072 bits with gmpy2), a squared one four
# half-size multiplications (about 2 µs).  See PrivateKey._blinding_pair.
_BLINDING_USES = 32

# Module-level so the tests can watch (and the blinding test can prove) how
# the blinding value r is drawn.
_randbelow = secrets.randbelow

# Counts the forks this process descends from.  A blinding pair remembers
# the count it was made under, so a child never squares its parent's pair
# (the two would blind with the same values from then on).
_fork_generation = 0


def _after_fork_in_child():
    global _fork_generation
    _fork_generation += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def carmichael_lambda(p, q):
    return (p - 1) * (q - 1) // math.gcd(p - 1, q - 1)


class PublicKey:
    """An RSA public key (n, e).

    The constructor checks the shape of the key (n odd, 1024 ≤ bits ≤ 16384,
    e odd with 3 ≤ e < n); ``validate()`` adds the policy for real keys.
    """

    __slots__ = ("_cache", "byte_size", "e", "k", "n", "size")

    def __init__(self, n: int, e: int) -> None:
        n = check_int(n, "modulus n")
        e = check_int(e, "public exponent e")
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
        backend = selection.backend
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
        if math.gcd(self.n, small_primes_product()) != 1:
            raise ValueError("RSA modulus has a small prime factor")
        # One base-2 round: a prime always passes it, a product of two large
        # primes essentially never does (a false "not composite" here would
        # need n to be a base-2 strong pseudoprime).  n is public, so the
        # backend's fastest pow will do (Python's takes ~30 ms at 3072 bits).
        backend = selection.backend
        n = self._numbers(backend)[0]
        if strong_probable_prime(n, 2, backend.powmod_public):
            raise ValueError("RSA modulus is not composite")

    # -- RSAES-OAEP and RSASSA-PSS (_oaep.py, _pss.py) ----------------------

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
        return _oaep.encrypt(self, message, label, hash, mgf_hash, seed)

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
        return _pss.verify(self, message, signature, hash, mgf_hash, salt_length)


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
        d = check_int(d, "private exponent d")
        p = check_int(p, "prime p")
        q = check_int(q, "prime q")
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
        if (e * d) % carmichael_lambda(p, q) != 1:
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

    @property
    def primes(self) -> tuple[int, ...]:
        """The primes of n in RFC 8017's order: (p, q) for this key."""
        return (self.p, self.q)

    @classmethod
    def from_primes(cls, n: int, e: int, d: int, primes) -> PrivateKey:
        """The key of these numbers: a ``PrivateKey`` for two primes, a
        ``MultiPrimePrivateKey`` for more; ``(key.n, key.e, key.d,
        key.primes)`` rebuilds any key."""
        if len(primes) == 2:
            return PrivateKey(n, e, d, *primes)
        from keyexchanged.rsa._multiprime import MultiPrimePrivateKey

        return MultiPrimePrivateKey(n, e, d, primes)

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
            b_p, b_q = num(p), num(q)
            numbers = self._cache[backend.name] = (
                num(self.n),
                num(self.e),
                b_p,
                b_q,
                num(d % (p - 1)),
                num(d % (q - 1)),
                # The backend's inverse: Python's pow(q, -1, p) takes about
                # 140 µs at 3072 bits, gmpy2's a few, and a worker process
                # builds these for every request (workers.py).
                backend.invert(b_q, b_p),
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
        backend = selection.backend
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
        # and the check alike, and pass.
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
        rounds = miller_rabin_rounds(self.size)
        backend = selection.backend
        for prime, name in ((self.p, "p"), (self.q, "q")):
            if not is_probable_prime(prime, rounds, backend):
                raise ValueError(f"RSA key is invalid: {name} is not prime")
        if abs(self.p - self.q) <= 1 << (self.size // 2 - PQ_DISTANCE_SLACK_BITS):
            raise ValueError("RSA key is invalid: p and q are too close together")

    # -- RSAES-OAEP and RSASSA-PSS (_oaep.py, _pss.py) ----------------------

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
        return _oaep.decrypt(self, ciphertext, label, hash, mgf_hash)

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
        return _pss.sign(self, message, hash, mgf_hash, salt_length, salt)
