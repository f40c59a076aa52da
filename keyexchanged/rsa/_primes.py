"""Primality testing and prime generation (FIPS 186-5 B.3.1 and A.1.3).

Every function takes the big-integer backend it runs on
(:class:`keyexchanged.rsa._backends.Backend`) as an argument.
"""

from __future__ import annotations

import functools
import math
from bisect import bisect_left
from itertools import compress
from secrets import randbelow

# ---------------------------------------------------------------------------
# Primality
# ---------------------------------------------------------------------------


def miller_rabin_rounds(nlen):
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


def strong_probable_prime(w, base, powmod):
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


def miller_rabin(w, w_number, rounds, backend):
    """``rounds`` Miller–Rabin rounds with random bases (FIPS 186-5 B.3.1).

    These are the rounds FIPS 186-5 counts.  They run almost only on real
    primes, the ones we keep secret, hence the secret-exponent pow.
    ``w_number`` is w in the backend's integer type.
    """
    for _ in range(rounds):
        # B.3.1 step 4.2: b uniform in [2, w − 2].
        base = backend.number(randbelow(w - 3) + 2)
        if not strong_probable_prime(w_number, base, backend.powmod_secret):
            return False
    return True


def is_probable_prime(w, rounds, backend):
    """Trial division, a base-2 test, then ``rounds`` random-base MR rounds.

    The cheap steps come first because nearly every candidate is composite.
    """
    if w < 3 or not w & 1:
        return w == 2
    if w < SMALL_PRIMES_LIMIT:
        return w in small_prime_set()
    if math.gcd(w, small_primes_product()) != 1:
        return False
    w_number = backend.number(w)
    if not strong_probable_prime(w_number, 2, backend.powmod_public):
        return False
    return miller_rabin(w, w_number, rounds, backend)


# Trial division before Miller–Rabin in validate(): primes below this.  SP
# 800-89 §5.3.3 asks that n have no factor below 752.
SMALL_PRIMES_LIMIT = 1000


@functools.cache
def odd_primes_below(limit):
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
def small_prime_set():
    return frozenset((2, *odd_primes_below(SMALL_PRIMES_LIMIT)))


@functools.cache
def small_primes_product():
    return math.prod(small_prime_set())


# ---------------------------------------------------------------------------
# Prime generation
# ---------------------------------------------------------------------------

# Candidate primes are searched in windows of this many consecutive integers
# (half of them odd).  At 1024-bit primes one integer in ~710 is prime, so a
# window holds ~23 primes and almost never none; at 4096-bit primes (nlen
# 8192) still ~6.  Larger windows cost more small-prime sieving per prime found.
WINDOW = 16384

# Primes below this mark their multiples in a window by slice assignment (they
# can hit several times); the primes above it hit at most once per window.
SLICE_SIEVE_LIMIT = WINDOW

# Sieve bound B per backend: the window is cleared of multiples of every prime
# below B before any Miller–Rabin test.  Each prime in the table costs ~0.15 µs
# per window; in exchange a k-bit prime needs about e^-γ·ln(2^k)/ln B base-2
# tests (Mertens), e.g. 48 at B = 2^18 and 43 at 2^20 for k = 1536.  With
# Python's pow a test costs ~7.5 ms at 1536 bits and the total is flat from
# 2^20 to 2^21; with GMP's ~1 ms the optimum is 2^17..2^18 (measured).
SIEVE_BOUND = {"python": 1 << 20, "gmpy2": 1 << 18}

# Large sieve primes are reduced through products of this many bits: one
# big-by-medium division per group, then cheap medium-by-small ones; measured
# ~2× faster than reducing the 1536-bit start by every prime directly.
SIEVE_GROUP_BITS = 240


@functools.cache
def sieve_tables(bound):
    """(small primes, groups of large primes with their products) below bound."""
    primes = odd_primes_below(bound)
    split = bisect_left(primes, SLICE_SIEVE_LIMIT)
    small = primes[:split]
    groups = []
    group, product = [], 1
    for p in primes[split:]:
        if group and product.bit_length() + p.bit_length() > SIEVE_GROUP_BITS:
            groups.append((product, tuple(group)))
            group, product = [], 1
        group.append(p)
        product *= p
    if group:
        groups.append((product, tuple(group)))
    return small, tuple(groups)


def sieve_window(base, e, bound):
    """Offsets j (odd) such that base + j may be prime, base even.

    Removes every j where base + j has a prime factor below ``bound``, and
    where base + j ≡ 1 (mod e), i.e. gcd(e, base + j − 1) ≠ 1 for prime e.
    """
    small, groups = sieve_tables(bound)
    # Even offsets start cleared: base is even.
    window = bytearray(b"\x00\x01") * (WINDOW // 2)
    negative = -base
    for p in small:
        first = negative % p  # base + first ≡ 0 (mod p)
        window[first::p] = bytes(len(range(first, WINDOW, p)))
    # Every large prime exceeds the window, so it hits at most one offset.
    # The residues come out of map() so the per-prime work stays in C.
    hits = []
    extend = hits.extend
    in_window = WINDOW.__gt__
    for product, primes in groups:
        extend(filter(in_window, map((negative % product).__mod__, primes)))
    for offset in hits:
        window[offset] = 0
    first = (1 - base) % e  # base + first ≡ 1 (mod e)
    window[first::e] = bytes(len(range(first, WINDOW, e)))
    return list(compress(range(WINDOW), window))


def integer_root(x, k):
    """⌊x^(1/k)⌋ for an int x ≥ 0 (Newton's method on integers)."""
    if k == 2:
        return math.isqrt(x)
    if x < 2:
        return x
    # Start above the root: 2^⌈bits/k⌉ > x^(1/k); Newton then falls to it.
    y = 1 << -(-x.bit_length() // k)
    while True:
        z = ((k - 1) * y + x // y ** (k - 1)) // k
        if z >= y:
            return y
        y = z


def prime_lower_bound(bits, count=2):
    """The least integer ≥ 2^((count−1)/count) · 2^(bits−1), computed exactly.

    ``count`` primes of ``bits`` bits at or above it multiply to a modulus of
    exactly count·bits bits: their product is at least 2^(count·bits − 1).
    For two primes this is FIPS 186-5's √2 · 2^(bits−1).  x reaches the bound
    exactly when x^count ≥ 2^(count·bits − 1); that power of two is not a
    count-th power, so the least such x is its integer root plus one.
    """
    return integer_root(1 << (count * bits - 1), count) + 1


def generate_prime(bits, e, backend, rounds, progress, tested, lower=None):
    """A random prime p, √2·2^(bits−1) ≤ p < 2^bits, with gcd(p − 1, e) = 1.

    ``lower`` replaces the √2·2^(bits−1) bound (multi-prime keys, whose
    primes have a higher one: see :func:`prime_lower_bound`).

    FIPS 186-5 A.1.3 draws a fresh random odd candidate each time; doing that
    in Python would spend most of the time on candidates with tiny factors.
    Instead each window starts at a random point, is sieved once, and its
    survivors are tested in random order, so the prime returned is uniform
    among the window's primes (a sequential scan would favour primes after
    long gaps).  Every A.1.3 acceptance condition is still checked.

    ``tested`` is a one-element list counting Miller–Rabin candidates.
    """
    if lower is None:
        lower = prime_lower_bound(bits)
    upper = 1 << bits
    bound = SIEVE_BOUND[backend.name]
    power = backend.powmod_public
    while True:
        # An even base, uniform among those whose odd offsets base + j
        # (0 < j < WINDOW) all lie in [lower, upper): base ≥ lower − 1 and
        # base + WINDOW ≤ upper.
        base = 2 * (lower // 2 + randbelow((upper - WINDOW) // 2 - lower // 2 + 1))
        survivors = sieve_window(base, e, bound)
        while survivors:
            # Draw without replacement: swap a random survivor to the end.
            i = randbelow(len(survivors))
            survivors[i], survivors[-1] = survivors[-1], survivors[i]
            candidate = base + survivors.pop()
            tested[0] += 1
            if progress is not None:
                progress("candidate", tested[0])
            # The base-2 screen rejects almost every composite for one pow;
            # the candidate is then either discarded or about to be tested
            # with secret-exponent rounds anyway.
            number = backend.number(candidate)
            if not strong_probable_prime(number, 2, power):
                continue
            if miller_rabin(candidate, number, rounds, backend):
                return candidate
