"""Private-key work away from the reactor, so the reactor never waits for it.

An RSA-3072 decryption costs the server about 2.5 ms of CPU; done in the
reactor, a burst of KEYs freezes every established session for as long.
The same goes for anything of that size a stranger can trigger (an AUTH
signature on a key the client chose) and for making ephemeral keys.

Two ways to do it, with one interface — ``decrypt``, ``verify``,
``generate`` and ``sign``, each returning a Deferred that fires in the
reactor thread:

- :class:`WorkerPool`: processes of a ``concurrent.futures`` pool, started
  with ``spawn`` (no copy of the daemon's reactor, sockets or threads);
- :class:`InlineWork`: in the reactor itself (``--workers 0``), except key
  generation, which runs in a thread.

The worker processes keep no key.  Every request carries the numbers of the
key it needs, so that an ephemeral key the daemon has dropped exists in no
process at all (docs/spec/kx1.rst §10.2); rebuilding the key costs about
20 µs against 2.5 ms for the decryption.  A decryption's answer is always 33
bytes (a flag and a 32-byte secret, random when decoding failed), so that a
failure neither takes a different path back nor a different size (implicit
rejection, §3).

A worker is a new Python, started by ``multiprocessing`` as ``python -c
...`` in the daemon's working directory, which would put that directory
first on its import path: a ``multiprocessing.py`` left there by another
user would run in a process that is handed private keys.  Workers are
started with ``PYTHONSAFEPATH=1`` (Python 3.11 and later), which leaves the
working directory off the path.
"""

import concurrent.futures
import contextlib
import multiprocessing
import os
import secrets

from twisted.internet import defer, threads
from twisted.logger import Logger

from keyexchanged import rsa

__all__ = ["InlineWork", "WorkerPool", "default_workers"]

SECRET_LENGTH = 32


def _numbers(key):
    return (key.n, key.e, key.d, key.p, key.q)


def _decrypt(numbers, ciphertext, label):
    """Flag byte ``1`` and the secret, or ``0`` and random bytes."""
    try:
        secret = rsa.PrivateKey(*numbers).decrypt_oaep(ciphertext, label=label)
        ok = len(secret) == SECRET_LENGTH
    except (rsa.DecryptionError, rsa.FaultError):
        secret, ok = None, False
    if not ok:
        secret = secrets.token_bytes(SECRET_LENGTH)
    return (b"\1" if ok else b"\0") + secret


def _verify(n, e, signature, message, salt_length):
    return rsa.PublicKey(n, e).verify_pss(message, signature, salt_length=salt_length)


def _generate(bits):
    return _numbers(rsa.generate_private_key(bits))


def _sign(numbers, message, salt_length):
    return rsa.PrivateKey(*numbers).sign_pss(message, salt_length=salt_length)


@contextlib.contextmanager
def safe_path():
    """While in it, a Python started by this process (a worker spawned by
    ``submit``) does not import from its working directory; the variable is
    ours only while we start workers."""
    saved = os.environ.get("PYTHONSAFEPATH")
    os.environ["PYTHONSAFEPATH"] = "1"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["PYTHONSAFEPATH"]
        else:
            os.environ["PYTHONSAFEPATH"] = saved


def _decrypted(answer):
    return answer[1:] if answer[:1] == b"\1" else None


def default_workers():
    """One worker per CPU the daemon may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class InlineWork:
    """Private-key work in the reactor (``--workers 0``); key generation,
    a second or so of pure Python, in a thread unless ``threaded`` is false
    (tests driven by a Clock have no thread pool)."""

    pending = 0

    def __init__(self, reactor=None, threaded=True):
        self.reactor = reactor
        self.threaded = threaded

    def decrypt(self, private_key, ciphertext, label):
        return defer.maybeDeferred(
            lambda: _decrypted(_decrypt(_numbers(private_key), ciphertext, label))
        )

    def verify(self, public_key, signature, message, salt_length):
        return defer.maybeDeferred(
            public_key.verify_pss, message, signature, salt_length=salt_length
        )

    def generate(self, bits):
        if self.threaded:
            if self.reactor is None:
                return threads.deferToThread(_generate, bits)
            return threads.deferToThreadPool(
                self.reactor, self.reactor.getThreadPool(), _generate, bits
            )
        return defer.maybeDeferred(_generate, bits)

    def sign(self, private_key, message, salt_length):
        return defer.maybeDeferred(private_key.sign_pss, message, salt_length=salt_length)

    def close(self):
        pass


class WorkerPool:
    """Private-key work in worker processes.

    A request that cannot be answered (a worker died, the pool is shutting
    down) fails closed: a decryption answers ``None`` (implicit rejection),
    a verification ``False``, generation and signing fail their Deferred.
    A broken pool is replaced for the next request.
    """

    log = Logger()

    def __init__(self, workers, reactor):
        self.workers = workers
        self.reactor = reactor
        self._executor = None
        #: Requests sent and not yet answered.
        self.pending = 0

    def _pool(self):
        if self._executor is None:
            self._executor = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
            )
        return self._executor

    def decrypt(self, private_key, ciphertext, label):
        working = self._submit(None, _decrypt, _numbers(private_key), ciphertext, label)
        return working.addCallback(lambda answer: None if answer is None else _decrypted(answer))

    def verify(self, public_key, signature, message, salt_length):
        working = self._submit(
            False, _verify, public_key.n, public_key.e, signature, message, salt_length
        )
        return working.addCallback(bool)

    def generate(self, bits):
        return self._submit(_RAISE, _generate, bits)

    def sign(self, private_key, message, salt_length):
        return self._submit(_RAISE, _sign, _numbers(private_key), message, salt_length)

    def _submit(self, failed, function, *args):
        result = defer.Deferred()
        try:
            executor = self._pool()
            # submit starts the workers it needs, in this thread.
            with safe_path():
                future = executor.submit(function, *args)
        except Exception as error:  # a broken or shut-down pool, no processes left (EMFILE)
            if self._executor is None:
                self.log.error("cannot start workers ({error})", error=type(error).__name__)
            self._broken(self._executor, error)
            self._fail(result, failed, error)
            return result
        self.pending += 1

        def done(future):
            # In the pool's thread: hand the outcome to the reactor thread.
            self.reactor.callFromThread(self._answer, executor, future, result, failed)

        future.add_done_callback(done)
        return result

    def _answer(self, executor, future, result, failed):
        self.pending -= 1
        try:
            answer = future.result()
        except concurrent.futures.CancelledError as error:  # the daemon is stopping
            self._fail(result, failed, error)
            return
        except rsa.FaultError as error:  # a signature failed its check: nothing out
            self._fail(result, failed, error)
            return
        except Exception as error:  # a worker died: fail closed, and say so
            self._broken(executor, error)
            self._fail(result, failed, error)
            return
        result.callback(answer)

    @staticmethod
    def _fail(result, failed, error):
        if failed is _RAISE:
            result.errback(error)
        else:
            result.callback(failed)

    def _broken(self, executor, error):
        """``executor`` failed: replace it, unless that was done already (the
        late answers of a dead pool must not shut down the new one)."""
        if executor is None or executor is not self._executor:
            return
        self.log.error("worker failed ({error}); starting new workers", error=type(error).__name__)
        self._executor = None
        executor.shutdown(wait=False, cancel_futures=True)

    def close(self):
        """Stop the workers (the daemon is stopping)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


#: For ``_submit``: a request whose failure fails its Deferred.
_RAISE = object()
