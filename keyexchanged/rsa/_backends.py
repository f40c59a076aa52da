"""The big-integer backends: the handful of operations RSA needs, per library.

Every modular exponentiation in the package goes through a :class:`Backend`
passed in explicitly; only the key objects' methods (the public API) ask
:data:`selection` which one is in use.

* ``"gmpy2"`` (when gmpy2 imports): ``gmpy2.powmod_sec`` — GMP's
  side-channel-silent exponentiation — for every secret exponent, and the
  faster ``gmpy2.powmod`` for public exponents.
* ``"python"``: the built-in ``pow``.  It is *not* constant time; base
  blinding hides which ciphertext is being exponentiated, but the timing of
  ``pow`` still depends on the secret exponent's bits.  Prefer gmpy2 for a
  daemon that faces the network.

``KEYEXCHANGE_PURE_PYTHON=1`` in the environment at import forces the
Python backend.
"""

from __future__ import annotations

import contextlib
import os


class Backend:
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


#: Every backend this installation can use, by name.
BACKENDS = {"python": Backend("python", int, pow, pow, _python_invert)}

try:
    import gmpy2
except ImportError:  # pragma: no cover - depends on the installation
    gmpy2 = None
else:
    BACKENDS["gmpy2"] = Backend("gmpy2", gmpy2.mpz, gmpy2.powmod, gmpy2.powmod_sec, gmpy2.invert)

AVAILABLE_BACKENDS = tuple(sorted(BACKENDS))


class Selection:
    """Which backend the key objects use: one per process, chosen at import.

    ``backend`` is read at the start of every key operation; :meth:`use`
    changes it for the length of a ``with`` block.
    """

    __slots__ = ("backend",)

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    @contextlib.contextmanager
    def use(self, name):
        """Run the body with backend ``name`` ("gmpy2" or "python"), then restore.

        For tests and benchmarks only: it changes what every key in the
        process uses, so it is not thread-safe and not for production code.
        """
        try:
            chosen = BACKENDS[name]
        except KeyError:
            raise ValueError(f"unknown or unavailable RSA backend {name!r}") from None
        saved = self.backend
        self.backend = chosen
        try:
            yield chosen
        finally:
            self.backend = saved


def _default_backend() -> Backend:
    if os.environ.get("KEYEXCHANGE_PURE_PYTHON") == "1" or "gmpy2" not in BACKENDS:
        return BACKENDS["python"]
    return BACKENDS["gmpy2"]


#: The process's choice: ``selection.backend``.
selection = Selection(_default_backend())
