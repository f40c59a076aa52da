"""Private-key work in worker processes, so the reactor never waits for it.

An RSA-3072 decryption costs the server about 3 ms of CPU; done in the
reactor, a burst of KEYs freezes every established session for as long.
:class:`DecryptionPool` sends each KEY's OAEP decryption to a process of a
``concurrent.futures`` pool (started with ``spawn``: no copy of the
daemon's reactor, sockets or threads) and hands the result back to the
reactor thread.

Each worker receives the private key once, when it starts, through the
pool's pipe, and keeps it.  What crosses the pipe per KEY is the ciphertext
and label (public) and the answer: always 33 bytes (a flag and a 32-byte
secret, random when decoding failed), so that a failure neither takes a
different path back nor a different size (implicit rejection,
PROTOCOL.md §3).
"""

import concurrent.futures
import multiprocessing
import os
import secrets

from twisted.internet import defer
from twisted.logger import Logger

from keyexchanged import rsa

__all__ = ["DecryptionPool", "default_workers"]

SECRET_LENGTH = 32

_key = None  # the worker's private key, set once by _start


def _start(n, e, d, p, q):
    global _key
    _key = rsa.PrivateKey(n, e, d, p, q)


def _decrypt(ciphertext, label):
    """In the worker: flag byte ``1`` and the secret, or ``0`` and random bytes."""
    try:
        secret = _key.decrypt_oaep(ciphertext, label=label)
        ok = len(secret) == SECRET_LENGTH
    except (rsa.DecryptionError, rsa.FaultError):
        secret, ok = None, False
    if not ok:
        secret = secrets.token_bytes(SECRET_LENGTH)
    return (b"\1" if ok else b"\0") + secret


def default_workers():
    """One worker per CPU the daemon may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class DecryptionPool:
    """``decrypt(ciphertext, label)`` → Deferred firing with the OAEP
    plaintext, or ``None`` when decoding failed, in the reactor thread."""

    log = Logger()

    def __init__(self, private_key, workers, reactor):
        self.private_key = private_key
        self.workers = workers
        self.reactor = reactor
        self._executor = None
        #: Decryptions sent and not yet answered.
        self.pending = 0

    def _pool(self):
        if self._executor is None:
            key = self.private_key
            self._executor = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start,
                initargs=(key.n, key.e, key.d, key.p, key.q),
            )
        return self._executor

    def decrypt(self, ciphertext, label):
        result = defer.Deferred()
        try:
            executor = self._pool()
            future = executor.submit(_decrypt, ciphertext, label)
        except Exception as error:  # a broken or shut-down pool, no processes left (EMFILE)
            if self._executor is None:
                self.log.error(
                    "cannot start decryption workers ({error})", error=type(error).__name__
                )
            self._broken(self._executor, error)
            result.callback(None)
            return result
        self.pending += 1

        def done(future):
            # In the pool's thread: hand the outcome to the reactor thread.
            self.reactor.callFromThread(self._answer, executor, future, result)

        future.add_done_callback(done)
        return result

    def _answer(self, executor, future, result):
        self.pending -= 1
        try:
            answer = future.result()
        except concurrent.futures.CancelledError:  # the daemon is stopping
            result.callback(None)
            return
        except Exception as error:  # a worker died: implicit rejection, and say so
            self._broken(executor, error)
            result.callback(None)
            return
        result.callback(answer[1:] if answer[:1] == b"\1" else None)

    def _broken(self, executor, error):
        """``executor`` failed: replace it, unless that was done already (the
        late answers of a dead pool must not shut down the new one)."""
        if executor is None or executor is not self._executor:
            return
        self.log.error(
            "decryption worker failed ({error}); starting new workers",
            error=type(error).__name__,
        )
        self._executor = None
        executor.shutdown(wait=False, cancel_futures=True)

    def close(self):
        """Stop the workers (the daemon is stopping)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
