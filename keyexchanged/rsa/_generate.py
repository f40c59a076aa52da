"""Key generation: FIPS 186-5 A.1.3 (probable primes), e = 65537."""

from __future__ import annotations

from keyexchanged.rsa import _primes
from keyexchanged.rsa._backends import selection
from keyexchanged.rsa._keys import PQ_DISTANCE_SLACK_BITS, PrivateKey, carmichael_lambda

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
    backend = selection.backend
    e = PUBLIC_EXPONENT
    half = bits // 2
    rounds = _primes.miller_rabin_rounds(bits)
    tested = [0]
    min_distance = 1 << (half - PQ_DISTANCE_SLACK_BITS)
    while True:
        p = _primes.generate_prime(half, e, backend, rounds, progress, tested)
        if progress is not None:
            progress("p", tested[0])
        # A.1.3 step 5.4: a q too close to p is replaced, p is kept.
        while True:
            q = _primes.generate_prime(half, e, backend, rounds, progress, tested)
            if abs(p - q) > min_distance:
                break
        if progress is not None:
            progress("q", tested[0])
        d = pow(e, -1, carmichael_lambda(p, q))
        # FIPS 186-5 A.1.1: 2^(nlen/2) < d < λ(n).  Failing that is
        # astronomically unlikely; start over as the standard says.
        if d > 1 << half:
            return PrivateKey(p * q, e, d, p, q)
