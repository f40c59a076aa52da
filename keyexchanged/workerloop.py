"""What a worker process runs: private-key requests from the daemon, one
at a time, answered in order (see workers.py for the other side).

Requests and answers are frames on the worker's stdin and stdout: a 4-byte
big-endian length, then a pickled tuple.  Only the daemon that started the
worker writes to its stdin, and only this loop writes the answers: anything
else printing to stdout would garble them, so stdout is moved aside at start
and fd 1 then points at stderr.

Keys: a request names its key by n and carries the key's numbers only when
this worker does not hold it yet; the worker keeps at most ``KEPT_KEYS``,
the least recently used going first, and drops one at once on ``forget``.
The daemon mirrors the same list, so it knows which keys each worker holds.
"""

import collections
import os
import pickle
import secrets
import signal
import struct
import sys

from keyexchanged import rsa

#: Keys a worker holds at most: the current ephemeral key, the one before
#: it while it serves its last KEYs, and the long-term key that signs them.
KEPT_KEYS = 4
#: The longest request a worker reads: a generated 8192-bit key's numbers
#: pickle to about 5 KiB, a KEY's ciphertext and HELLO to less.
MAX_FRAME = 1 << 20
LENGTH = struct.Struct(">I")
SECRET_LENGTH = 32


def decrypt(key, ciphertext, label):
    """Flag byte ``1`` and the secret, or ``0`` and random bytes."""
    try:
        secret = key.decrypt_oaep(ciphertext, label=label)
        ok = len(secret) == SECRET_LENGTH
    except (rsa.DecryptionError, rsa.FaultError):
        secret, ok = None, False
    if not ok:
        secret = secrets.token_bytes(SECRET_LENGTH)
    return (b"\1" if ok else b"\0") + secret


def numbers(key):
    """What rebuilds ``key`` elsewhere: ``rsa.PrivateKey.from_primes(*numbers)``."""
    return (key.n, key.e, key.d, key.primes)


def generate(bits, primes):
    if primes == 2:
        return numbers(rsa.generate_private_key(bits))
    return numbers(rsa.generate_multi_prime_key(bits, primes))


class KeptKeys:
    """The keys one worker holds, by n, least recently used first."""

    def __init__(self):
        self._keys = collections.OrderedDict()

    def get(self, n, key_numbers):
        if key_numbers is None:
            self._keys.move_to_end(n)  # KeyError: the daemon lost track
            return self._keys[n]
        key = self._keys[n] = rsa.PrivateKey.from_primes(*key_numbers)
        while len(self._keys) > KEPT_KEYS:
            self._keys.popitem(last=False)
        return key

    def forget(self, n):
        self._keys.pop(n, None)

    def held(self):
        return list(self._keys)


def answer(kept, request):
    """The answer tuple for one request, or None for ``forget``."""
    operation, *args = request
    try:
        if operation == "decrypt":
            n, key_numbers, ciphertext, label = args
            return ("ok", decrypt(kept.get(n, key_numbers), ciphertext, label))
        if operation == "sign":
            n, key_numbers, message, salt_length = args
            key = kept.get(n, key_numbers)
            return ("ok", key.sign_pss(message, salt_length=salt_length))
        if operation == "verify":
            n, e, signature, message, salt_length = args
            public = rsa.PublicKey(n, e)
            return ("ok", public.verify_pss(message, signature, salt_length=salt_length))
        if operation == "generate":
            return ("ok", generate(*args))
        if operation == "forget":
            kept.forget(*args)
            return None
        if operation == "held":
            return ("ok", kept.held())
        return ("error", f"unknown request {operation!r}")
    except rsa.FaultError:
        return ("fault", None)
    except Exception as error:  # answered, never a dead worker for one bad request
        return ("error", type(error).__name__)


def _read_exactly(fd, count):
    chunks = []
    while count:
        chunk = os.read(fd, min(count, 1 << 16))
        if not chunk:
            return None
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def main() -> int:
    # The daemon decides when a worker ends (it closes the worker's stdin);
    # a Ctrl-C meant for the daemon's terminal must not kill a worker first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    answers = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    kept = KeptKeys()
    while True:
        header = _read_exactly(0, LENGTH.size)
        if header is None:
            return 0  # the daemon closed our stdin: stop
        (length,) = LENGTH.unpack(header)
        if length > MAX_FRAME:
            return 1
        frame = _read_exactly(0, length)
        if frame is None:
            return 1
        # From the daemon that started us, over a pipe only it holds.
        result = answer(kept, pickle.loads(frame))  # noqa: S301 (our parent's frame)
        if result is not None:
            data = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
            _write_all(answers, LENGTH.pack(len(data)) + data)


if __name__ == "__main__":
    sys.exit(main())
