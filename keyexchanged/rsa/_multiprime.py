"""Multi-prime RSA keys (RFC 8017 §3.2): ``MultiPrimePrivateKey``.

A modulus of three primes instead of two makes the private-key operation
cheaper: three exponentiations with 1024-bit moduli and exponents cost about
half of two with 1536-bit ones (exponentiation grows with the cube of the
size).  The public half is an ordinary (n, e): nobody who encrypts or
verifies can tell, and nothing on the wire changes.

The price is a factor that is smaller than in a two-prime key, so an attack
that looks for one factor (ECM) gets easier as primes are added.  OpenSSL
caps the count by size (``rsa_multip_cap``: 3 primes below 4096 bits, 4
below 8192, else 5) so that ECM on one prime stays harder than the number
field sieve on n; :func:`prime_count` is that cap, and both generation and
``validate()`` hold to it.

These keys are for keys that live in memory only (the server's ephemeral
keys): a key *file* stays two-prime, the format every tool reads.  For tests
and the lab, :func:`private_key_to_der` writes PKCS #1's RSAPrivateKey
version 1 with ``OtherPrimeInfos`` (RFC 8017 appendix A.1.2), which OpenSSL
reads back.

The private-key operation is the two-prime one (``_keys.PrivateKey``)
extended prime by prime: the input is blinded per prime with a pair that is
squared between uses, each prime gets one secret-exponent exponentiation
(``powmod_sec`` with gmpy2), the residues are recombined with Garner's method
as RFC 8017 §5.1.2 step 2b writes it, and the result is re-encrypted mod n
and compared with the caller's input before it leaves (the fault check).
The number of primes is public and every step runs once per prime, so no
branch depends on a secret.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from keyexchanged.rsa import _keys, _primes
from keyexchanged.rsa._backends import selection
from keyexchanged.rsa._encoding import check_int
from keyexchanged.rsa._generate import PUBLIC_EXPONENT
from keyexchanged.rsa._keys import (
    _BLINDING_USES,
    MIN_VALIDATE_BITS,
    PQ_DISTANCE_SLACK_BITS,
    PrivateKey,
    PublicKey,
)

#: RFC 8017 allows any count; OpenSSL reads up to five (RSA_MAX_PRIME_NUM).
MAX_PRIMES = 5
#: Multi-prime generation accepts what two-prime generation does.
MIN_GENERATE_BITS = 2048
MAX_GENERATE_BITS = 8192


def prime_count(bits: int) -> int:
    """How many primes a ``bits``-bit modulus may have: OpenSSL's cap
    (``rsa_multip_cap``), the most for which ECM on one prime stays harder
    than the number field sieve on n."""
    if bits < 1024:
        return 2
    if bits < 4096:
        return 3
    if bits < 8192:
        return 4
    return 5


def prime_sizes(bits: int, count: int) -> tuple[int, ...]:
    """The sizes of ``count`` primes for a ``bits``-bit modulus: as equal as
    possible, the larger ones first (as OpenSSL splits them)."""
    quotient, remainder = divmod(bits, count)
    return tuple(quotient + (i < remainder) for i in range(count))


def _lcm_of_decrements(primes):
    return math.lcm(*(r - 1 for r in primes))


def generate_multi_prime_key(bits: int, count: int | None = None) -> MultiPrimePrivateKey:
    """A multi-prime key of exactly ``bits`` bits, e = 65537.

    ``count`` defaults to :func:`prime_count` (three primes from 2048 to 4095
    bits) and may not exceed it.  Each prime is made as two-prime generation
    makes p and q (FIPS 186-5 A.1.3's conditions: probable prime with Table
    B.1's Miller–Rabin rounds for its size, gcd(e, r − 1) = 1), from a lower
    bound that makes the product exactly ``bits`` bits long; any two primes
    differ by more than 2^(size − 100), and d = e⁻¹ mod λ(n) > 2^(bits/2).
    """
    if type(bits) is not int or not MIN_GENERATE_BITS <= bits <= MAX_GENERATE_BITS or bits % 8:
        raise ValueError(
            f"multi-prime key size must be an int from {MIN_GENERATE_BITS} to "
            f"{MAX_GENERATE_BITS} in steps of 8, not {bits!r}"
        )
    cap = prime_count(bits)
    if count is None:
        count = cap
    if type(count) is not int or not 3 <= count <= cap:
        raise ValueError(f"a {bits}-bit key has 3 to {cap} primes, not {count!r}")
    backend = selection.backend
    e = PUBLIC_EXPONENT
    sizes = prime_sizes(bits, count)
    tested = [0]
    while True:
        primes = []
        for size in sizes:
            # Table B.1 counts rounds by prime size: as for a two-prime key
            # with primes of this size.
            rounds = _primes.miller_rabin_rounds(2 * size)
            lower = _primes.prime_lower_bound(size, count)
            min_distance = 1 << (size - PQ_DISTANCE_SLACK_BITS)
            while True:
                r = _primes.generate_prime(size, e, backend, rounds, None, tested, lower)
                if all(abs(r - other) > min_distance for other in primes):
                    break
            primes.append(r)
        d = pow(e, -1, _lcm_of_decrements(primes))
        if d > 1 << (bits // 2):
            return MultiPrimePrivateKey(math.prod(primes), e, d, primes)


class MultiPrimePrivateKey(PrivateKey):
    """An RSA private key with three or more primes (RFC 8017 §3.2).

    ``primes`` are r₁, r₂, …, rᵤ in RFC 8017's order; ``p`` and ``q`` are r₁
    and r₂, as in the two-prime key.  The constructor checks that the numbers
    fit together (n = r₁·…·rᵤ, distinct coprime primes, e·d ≡ 1 mod λ(n));
    ``validate()`` adds primality, the size policy and the prime-count cap.
    ``decrypt_oaep`` and ``sign_pss`` are the two-prime key's.
    """

    __slots__ = ("primes",)

    def __init__(self, n: int, e: int, d: int, primes: Sequence[int]) -> None:
        d = check_int(d, "private exponent d")
        primes = tuple(check_int(r, "prime") for r in primes)
        self._public = public = PublicKey(n, e)
        n, e = public.n, public.e
        if not 3 <= len(primes) <= MAX_PRIMES:
            raise ValueError(f"a multi-prime RSA key has 3 to {MAX_PRIMES} primes")
        if min(primes) < 3 or math.prod(primes) != n:
            raise ValueError("RSA key is inconsistent: n is not the product of its primes")
        # Pairwise coprime primes are what the CRT (and its fault check) rely on.
        if any(math.gcd(a, b) != 1 for i, a in enumerate(primes) for b in primes[i + 1 :]):
            raise ValueError("RSA key is invalid: its primes are not distinct")
        if not 1 < d < n:
            raise ValueError("RSA private exponent d is out of range")
        if (e * d) % _lcm_of_decrements(primes) != 1:
            raise ValueError("RSA key is inconsistent: e * d != 1 mod lambda(n)")
        self.n, self.e, self.d = n, e, d
        self.primes = primes
        self.p, self.q = primes[0], primes[1]
        self.size = public.size
        self.byte_size = self.k = public.k
        self._cache = {}
        self._blinding = {}

    def __reduce__(self):
        # As for the two-prime key: a copy starts without caches or blinding.
        return (MultiPrimePrivateKey, (self.n, self.e, self.d, self.primes))

    def crt_values(self) -> tuple[tuple[int, int, int], ...]:
        """RFC 8017 §3.2's (rᵢ, dᵢ, tᵢ) for every prime, as plain ints.

        dᵢ = d mod (rᵢ − 1); t₁ is unused (0), t₂ is qInv = r₂⁻¹ mod r₁, and
        tᵢ = (r₁·…·rᵢ₋₁)⁻¹ mod rᵢ from the third prime on.
        """
        primes, d = self.primes, self.d
        values = [(primes[0], d % (primes[0] - 1), 0)]
        values.append((primes[1], d % (primes[1] - 1), pow(primes[1], -1, primes[0])))
        product = primes[0] * primes[1]
        for r in primes[2:]:
            values.append((r, d % (r - 1), pow(product, -1, r)))
            product *= r
        return tuple(values)

    def _numbers(self, backend):
        """(n, e, primes, dᵢ, qInv, ((rᵢ, r₁·…·rᵢ₋₁, tᵢ) from i = 3), n − 1)
        in backend form, cached."""
        numbers = self._cache.get(backend.name)
        if numbers is None:
            num = backend.number
            primes = tuple(num(r) for r in self.primes)
            exponents = tuple(num(self.d % (r - 1)) for r in self.primes)
            q_inv = backend.invert(primes[1], primes[0])
            others = []
            product = primes[0] * primes[1]
            for r in primes[2:]:
                others.append((r, product, backend.invert(product % r, r)))
                product = product * r
            numbers = self._cache[backend.name] = (
                num(self.n),
                num(self.e),
                primes,
                exponents,
                q_inv,
                tuple(others),
                self.n - 1,
            )
        return numbers

    def _blinding_pair(self, backend, numbers):
        """(rᵉ mod rᵢ for each prime, r⁻¹ mod rᵢ for each prime).

        The two-prime key's blinding (see ``PrivateKey._blinding_pair``),
        kept mod every prime: a fresh r every ``_BLINDING_USES`` operations
        and after a fork, the previous pair squared in between; the pair is
        taken out of the key before any exponentiation starts.
        """
        _, e, primes = numbers[:3]
        state = self._blinding.pop(backend.name, None)
        if state is not None and state[2] > 0 and state[3] == _keys._fork_generation:
            blind, unblind, uses, generation = state
            blind = tuple(a * a % r for a, r in zip(blind, primes))
            unblind = tuple(a * a % r for a, r in zip(unblind, primes))
            uses -= 1
        else:
            num, power, invert = backend.number, backend.powmod_public, backend.invert
            while True:
                r = num(_keys._randbelow(numbers[6]) + 1)
                residues = tuple(r % prime for prime in primes)
                try:
                    unblind = tuple(invert(x, prime) for x, prime in zip(residues, primes))
                except (ValueError, ZeroDivisionError):
                    # gcd(r, n) ≠ 1: probability below 2^-600, but draw again.
                    continue
                break
            blind = tuple(power(x, e, prime) for x, prime in zip(residues, primes))
            uses, generation = _BLINDING_USES - 1, _keys._fork_generation
        self._blinding[backend.name] = (blind, unblind, uses, generation)
        return blind, unblind

    def _private_op(self, c):
        """Return c^d mod n, or None if the result fails its fault check."""
        backend = selection.backend
        numbers = self._numbers(backend)
        n, e, primes, exponents, q_inv, others, _ = numbers
        secret_power = backend.powmod_secret
        blind, unblind = self._blinding_pair(backend, numbers)
        c_in = c  # the caller's value, kept apart from every reduction below
        c = backend.number(c)
        # One blinded exponentiation per prime: (c·rᵉ)^dᵢ ≡ c^dᵢ · r (mod rᵢ).
        residues = [
            secret_power(c % r * a % r, d_i, r) * a_inv % r
            for r, d_i, a, a_inv in zip(primes, exponents, blind, unblind)
        ]
        # Garner's recombination, RFC 8017 §5.1.2 step 2b: m ≡ mᵢ (mod rᵢ).
        p, q = primes[0], primes[1]
        m_p, m_q = residues[0], residues[1]
        m = m_q + (m_p - m_q) * q_inv % p * q
        for (r, product, t), m_i in zip(others, residues[2:]):
            m = m + (m_i - m) * t % r * product
        # The fault check, against the c the caller passed (see _keys).
        if backend.powmod_public(m, e, n) != c_in:
            return None
        return int(m)

    def __repr__(self) -> str:
        return super().__repr__().replace("<PrivateKey", f"<PrivateKey {len(self.primes)}-prime", 1)

    def validate(self, min_bits: int = MIN_VALIDATE_BITS) -> None:
        """Check the key fully; raise ValueError naming the problem.

        The size policy, no more primes than :func:`prime_count` allows for
        the size, every prime a probable prime (Miller–Rabin with Table B.1's
        rounds for its size), and any two primes further apart than
        2^(size − 100).
        """
        self._public.validate(min_bits)
        if len(self.primes) > prime_count(self.size):
            raise ValueError(
                f"RSA key is invalid: a {self.size}-bit modulus may have at most "
                f"{prime_count(self.size)} primes"
            )
        backend = selection.backend
        for index, prime in enumerate(self.primes, 1):
            rounds = _primes.miller_rabin_rounds(2 * prime.bit_length())
            if not _primes.is_probable_prime(prime, rounds, backend):
                raise ValueError(f"RSA key is invalid: prime {index} is not prime")
        smallest = min(r.bit_length() for r in self.primes)
        min_distance = 1 << (smallest - PQ_DISTANCE_SLACK_BITS)
        for i, a in enumerate(self.primes):
            for b in self.primes[i + 1 :]:
                if abs(a - b) <= min_distance:
                    raise ValueError("RSA key is invalid: two of its primes are too close")


# -- Export: PKCS #1 RSAPrivateKey version 1 (RFC 8017 appendix A.1.2) ------


def _der_length(length):
    if length < 0x80:
        return bytes([length])
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets


def _der_integer(value):
    # Two's complement, big-endian, shortest form: a leading zero octet
    # keeps a value whose top bit is set positive.
    content = value.to_bytes(value.bit_length() // 8 + 1, "big")
    return b"\x02" + _der_length(len(content)) + content


def _der_sequence(*elements):
    content = b"".join(elements)
    return b"\x30" + _der_length(len(content)) + content


def private_key_to_der(key: MultiPrimePrivateKey) -> bytes:
    """The key as DER: RSAPrivateKey version 1 (``multi``) with its third
    and later primes in ``otherPrimeInfos``, each (rᵢ, dᵢ, tᵢ).

    For tests and the lab only: a multi-prime key is never written to disk
    by the daemon, and this writes no file and takes no passphrase.
    """
    if not isinstance(key, MultiPrimePrivateKey):
        raise TypeError("private_key_to_der writes multi-prime keys")
    (p, dp, _), (q, dq, q_inv), *others = key.crt_values()
    other_infos = _der_sequence(*(_der_sequence(*map(_der_integer, info)) for info in others))
    return _der_sequence(
        _der_integer(1),  # version multi: otherPrimeInfos present
        _der_integer(key.n),
        _der_integer(key.e),
        _der_integer(key.d),
        _der_integer(p),
        _der_integer(q),
        _der_integer(dp),
        _der_integer(dq),
        _der_integer(q_inv),
        other_infos,
    )


def private_key_to_pem(key: MultiPrimePrivateKey) -> bytes:
    """:func:`private_key_to_der` as PEM ("RSA PRIVATE KEY"), for ``openssl``."""
    import base64
    import textwrap

    body = base64.b64encode(private_key_to_der(key)).decode("ascii")
    lines = "\n".join(textwrap.wrap(body, 64))
    return f"-----BEGIN RSA PRIVATE KEY-----\n{lines}\n-----END RSA PRIVATE KEY-----\n".encode()
