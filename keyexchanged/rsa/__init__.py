"""RSA for keyexchanged, written out in full so it can be read and audited.

The standard library is all it needs; gmpy2, when installed, is an optional
faster (and constant-time) backend.

What is here
------------
* ``generate_private_key`` — FIPS 186-5 appendix A.1.3 style key generation
  (probable primes, e = 65537, d = e⁻¹ mod λ(n)) for 2048 to 8192-bit moduli.
* ``generate_multi_prime_key`` and ``MultiPrimePrivateKey`` — RFC 8017
  §3.2 keys of three or more primes (three below 4096 bits, OpenSSL's cap),
  whose private operation costs about half; for keys that live in memory
  only (the server's ephemeral keys), since key files stay two-prime.
* ``PublicKey`` / ``PrivateKey`` — plain holders of the integers, with the
  checks needed when a key is imported (``PrivateKey.validate`` and
  ``PublicKey.validate``).
* RSAES-OAEP (RFC 8017 §7.1): ``PublicKey.encrypt_oaep`` and
  ``PrivateKey.decrypt_oaep``.
* RSASSA-PSS (RFC 8017 §8.1): ``PrivateKey.sign_pss`` and
  ``PublicKey.verify_pss``.

There is deliberately no PKCS #1 v1.5 encryption (its padding oracle cannot be
closed in Python) and no ASN.1: serialising keys is the job of ``keys.py``.
The one exception is ``multi_prime_key_to_pem``, for tests and the lab: the
libraries ``keys.py`` uses cannot write a multi-prime key.

Why write RSA at all
--------------------
KX/1 needs exactly one RSA encryption and one signature scheme.  Owning those
few hundred lines lets us document every check the protocol relies on (fault
check, blinding, single decryption error) instead of trusting that a wrapper
passes the right flags to a library, and lets the daemon run with nothing but
the standard library when gmpy2 is unavailable.

Big-integer backends
--------------------
All modular exponentiation goes through a small backend object
(``_backends.py``): ``"gmpy2"`` when gmpy2 imports — ``gmpy2.powmod_sec``,
GMP's side-channel-silent exponentiation, for every secret exponent — and
``"python"``, the built-in ``pow``, which is *not* constant time (base
blinding hides which ciphertext is being exponentiated, but the timing of
``pow`` still depends on the secret exponent's bits; prefer gmpy2 for a
daemon that faces the network).

Setting ``KEYEXCHANGE_PURE_PYTHON=1`` in the environment before import forces
the Python backend.  ``BACKEND`` names the active backend and
``AVAILABLE_BACKENDS`` lists those that can be used.  The internal functions
take their backend as an argument; only the key objects' methods ask which
one is selected.  ``_use_backend(name)`` is a context manager that selects
another one temporarily so that the tests and benchmarks exercise both on
every run (it changes the choice for the whole process: not thread-safe, not
for production code).

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

Where things are
----------------
A package of private modules, one job each; everything public is re-exported
here and imported from here:

* ``_backends.py`` — the integer backends and which one is selected;
* ``_encoding.py`` — allowed hashes, MGF1, argument checks;
* ``_primes.py`` — Miller–Rabin, the small-prime sieve, prime generation;
* ``_keys.py`` — ``PublicKey`` and ``PrivateKey``: checks, CRT, blinding,
  the fault check;
* ``_oaep.py`` and ``_pss.py`` — the two padding schemes;
* ``_generate.py`` — ``generate_private_key`` and its size rule;
* ``_multiprime.py`` — multi-prime keys: generation, the operation over
  every prime, and their PKCS #1 export;
* ``_errors.py`` — ``DecryptionError`` and ``FaultError``.

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

# The ``NAME as NAME`` imports are constants importers use from here; they are
# re-exported without joining __all__, which is what it was before the split.
from keyexchanged.rsa import _primes
from keyexchanged.rsa._backends import AVAILABLE_BACKENDS, selection
from keyexchanged.rsa._encoding import ALLOWED_HASHES as ALLOWED_HASHES
from keyexchanged.rsa._errors import DecryptionError, FaultError
from keyexchanged.rsa._generate import DEFAULT_BITS as DEFAULT_BITS
from keyexchanged.rsa._generate import GENERATE_BITS_RULE as GENERATE_BITS_RULE
from keyexchanged.rsa._generate import GENERATE_BITS_STEP as GENERATE_BITS_STEP
from keyexchanged.rsa._generate import MAX_GENERATE_BITS as MAX_GENERATE_BITS
from keyexchanged.rsa._generate import MIN_GENERATE_BITS as MIN_GENERATE_BITS
from keyexchanged.rsa._generate import PUBLIC_EXPONENT as PUBLIC_EXPONENT
from keyexchanged.rsa._generate import generate_bits_ok, generate_private_key
from keyexchanged.rsa._keys import MAX_IMPORT_BITS as MAX_IMPORT_BITS
from keyexchanged.rsa._keys import MIN_IMPORT_BITS as MIN_IMPORT_BITS
from keyexchanged.rsa._keys import MIN_VALIDATE_BITS as MIN_VALIDATE_BITS
from keyexchanged.rsa._keys import PQ_DISTANCE_SLACK_BITS as PQ_DISTANCE_SLACK_BITS
from keyexchanged.rsa._keys import PrivateKey, PublicKey
from keyexchanged.rsa._multiprime import MultiPrimePrivateKey, generate_multi_prime_key
from keyexchanged.rsa._multiprime import prime_count as multi_prime_count
from keyexchanged.rsa._multiprime import private_key_to_pem as multi_prime_key_to_pem

__all__ = [
    "AVAILABLE_BACKENDS",
    "BACKEND",
    "DecryptionError",
    "FaultError",
    "MultiPrimePrivateKey",
    "PrivateKey",
    "PublicKey",
    "generate_bits_ok",
    "generate_multi_prime_key",
    "generate_private_key",
    "multi_prime_count",
    "multi_prime_key_to_pem",
]

#: Tests and benchmarks: ``with _use_backend("python"): ...``.
_use_backend = selection.use

# lab/weak.py builds its deliberately weak keys with rsa's own primality test.
_is_probable_prime = _primes.is_probable_prime
_miller_rabin_rounds = _primes.miller_rabin_rounds


def __getattr__(name):
    # BACKEND (the selected backend's name) and _backend (the backend object,
    # which lab/weak.py computes with) follow the selection, so neither is a
    # module global that could go stale.
    if name == "BACKEND":
        return selection.backend.name
    if name == "_backend":
        return selection.backend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), "BACKEND"])
