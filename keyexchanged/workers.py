"""Private-key work away from the reactor, so the reactor never waits for it.

An RSA-3072 decryption costs the server about 1.3 ms of CPU with the
three-prime ephemeral key (2.6 ms with a two-prime one); done in the
reactor, a burst of KEYs freezes every established session for as long.
The same goes for anything of that size a stranger can trigger (an AUTH
signature on a key the client chose) and for making ephemeral keys.

Two ways to do it, with one interface — ``decrypt``, ``verify``,
``generate``, ``sign`` and ``forget``, the first four returning a Deferred
that fires in the reactor thread (``generate(bits, primes)`` answers a new
key's numbers ``(n, e, d, primes)``, which ``rsa.PrivateKey.from_primes``
rebuilds):

- :class:`WorkerPool`: worker processes (``workerloop.py``) that the
  reactor talks to over their stdin and stdout, one pipe pair each, with
  no thread in between;
- :class:`InlineWork`: in the reactor itself (``--workers 0``), except key
  generation, which runs in a thread.

Keys in the workers: a worker keeps the keys it was sent (at most
``workerloop.KEPT_KEYS``), so a request carries a key's numbers only the
first time that worker sees the key; later ones name it by n.  ``forget``
drops a key in every worker that holds it, and ``EphemeralKey.destroy``
calls it when the daemon drops an ephemeral key, so the key leaves the
workers when it leaves the daemon (docs/deployment.rst weighs this against
rebuilding the key for every request).  A decryption's answer is always 33
bytes (a flag and a 32-byte secret, random when decoding failed), so that
a failure neither takes a different path back nor a different size
(implicit rejection, §3).
"""

import collections
import os
import pickle
import sys

from twisted.internet import defer, protocol, threads
from twisted.internet.error import ProcessExitedAlready
from twisted.logger import Logger

from keyexchanged import rsa, workerloop

__all__ = ["InlineWork", "WorkerError", "WorkerPool", "default_workers"]

SECRET_LENGTH = workerloop.SECRET_LENGTH

#: How a worker starts.  ``-I`` (isolated): neither the current directory
#: nor the script's is on its sys.path and no PYTHON* variable applies, so
#: a file in the daemon's working directory cannot be imported in place of
#: a module of ours; the daemon's own sys.path (without "", the current
#: directory) is put in place before anything but ``sys`` is imported.
_BOOTSTRAP = (
    "import sys; sys.path[:] = sys.argv[1:]; "
    "from keyexchanged.workerloop import main; sys.exit(main())"
)


def _worker_argv():
    return [sys.executable, "-I", "-c", _BOOTSTRAP, *(entry for entry in sys.path if entry)]


class WorkerError(RuntimeError):
    """A worker could not answer a request (it names the exception type)."""


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
    (tests driven by a Clock have no thread pool).

    :param reactor: the reactor whose thread pool generates keys (default:
        the global reactor's).
    :param threaded: generate keys in a thread.
    """

    pending = 0

    def __init__(self, reactor=None, threaded=True):
        self.reactor = reactor
        self.threaded = threaded

    def decrypt(self, private_key, ciphertext, label):
        return defer.maybeDeferred(
            lambda: _decrypted(workerloop.decrypt(private_key, ciphertext, label))
        )

    def verify(self, public_key, signature, message, salt_length):
        return defer.maybeDeferred(
            public_key.verify_pss, message, signature, salt_length=salt_length
        )

    def generate(self, bits, primes=2):
        generate = workerloop.generate
        if self.threaded:
            if self.reactor is None:
                return threads.deferToThread(generate, bits, primes)
            return threads.deferToThreadPool(
                self.reactor, self.reactor.getThreadPool(), generate, bits, primes
            )
        return defer.maybeDeferred(generate, bits, primes)

    def sign(self, private_key, message, salt_length):
        return defer.maybeDeferred(private_key.sign_pss, message, salt_length=salt_length)

    def forget(self, private_key):
        """Nothing to do: the reactor's process holds only the daemon's keys."""

    def close(self):
        pass


class _Worker(protocol.ProcessProtocol):
    """One worker process, seen from the reactor.

    @ivar waiting: (Deferred, what a failure answers) per request sent and
        not yet answered, in order: a worker answers in the order it was asked.
    @ivar kept: the keys (by n) the worker holds, least recently used first,
        kept exactly as ``workerloop.KeptKeys`` keeps them.
    """

    def __init__(self, pool):
        self.pool = pool
        self.waiting = collections.deque()
        self.kept = collections.OrderedDict()
        self._buffer = bytearray()

    def key(self, private_key):
        """(n, numbers) for a request with ``private_key``; numbers is None
        when the worker holds the key already."""
        n = private_key.n
        if n in self.kept:
            self.kept.move_to_end(n)
            return n, None
        self.kept[n] = None
        while len(self.kept) > workerloop.KEPT_KEYS:
            self.kept.popitem(last=False)
        return n, workerloop.numbers(private_key)

    def request(self, message, result=None, failed=None):
        frame = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self.transport.writeSequence((workerloop.LENGTH.pack(len(frame)), frame))
        if result is not None:
            self.waiting.append((result, failed))

    def childDataReceived(self, fd, data):
        if fd != 1:
            return
        buffer = self._buffer
        buffer += data
        header = workerloop.LENGTH.size
        while len(buffer) >= header:
            (length,) = workerloop.LENGTH.unpack_from(buffer)
            if length > workerloop.MAX_FRAME or not self.waiting:
                # Not a worker of ours any more: end it; its requests fail closed.
                del buffer[:]
                try:
                    self.transport.signalProcess("KILL")
                except ProcessExitedAlready:
                    pass
                return
            if len(buffer) < header + length:
                return
            # From the process we started, over a pipe only it holds.
            answer = pickle.loads(bytes(buffer[header : header + length]))  # noqa: S301
            del buffer[: header + length]
            result, failed = self.waiting.popleft()
            self.pool._answered(self, result, failed, answer)

    def processEnded(self, reason):
        waiting, self.waiting = self.waiting, collections.deque()
        self.pool._ended(self, waiting, reason)


class WorkerPool:
    """Private-key work in ``workers`` worker processes, started on first use.

    A request goes to an idle worker, or to a new one while fewer than
    ``workers`` run, else to the least busy.  A request that cannot be
    answered (its worker died, the pool is stopping) fails closed: a
    decryption answers ``None`` (implicit rejection), a verification
    ``False``, generation and signing fail their Deferred.  A dead worker
    is replaced by the next request that needs one.

    :param workers: how many processes (:func:`default_workers`: one per
        CPU).
    :param reactor: the reactor the answers are delivered on.
    """

    log = Logger()

    def __init__(self, workers, reactor):
        self.workers = workers
        self.reactor = reactor
        #: Requests sent and not yet answered.
        self.pending = 0
        self._running = []
        self._closing = None

    def decrypt(self, private_key, ciphertext, label):
        def request(worker):
            n, key_numbers = worker.key(private_key)
            return ("decrypt", n, key_numbers, ciphertext, label)

        working = self._submit(None, request)
        return working.addCallback(lambda answer: None if answer is None else _decrypted(answer))

    def verify(self, public_key, signature, message, salt_length):
        request = ("verify", public_key.n, public_key.e, signature, message, salt_length)
        return self._submit(False, lambda worker: request).addCallback(bool)

    def generate(self, bits, primes=2):
        return self._submit(_RAISE, lambda worker: ("generate", bits, primes))

    def sign(self, private_key, message, salt_length):
        def request(worker):
            n, key_numbers = worker.key(private_key)
            return ("sign", n, key_numbers, message, salt_length)

        return self._submit(_RAISE, request)

    def forget(self, private_key):
        """Drop ``private_key`` in every worker that holds it."""
        n = private_key.n
        for worker in self._running:
            if n in worker.kept:
                del worker.kept[n]
                worker.request(("forget", n))

    def _worker(self):
        best = None
        for worker in self._running:
            if best is None or len(worker.waiting) < len(best.waiting):
                best = worker
        if (best is None or best.waiting) and len(self._running) < self.workers:
            best = self._start()
        return best

    def _start(self):
        reactor = self.reactor
        if reactor is None:
            from twisted.internet import reactor
        worker = _Worker(self)
        reactor.spawnProcess(
            worker,
            sys.executable,
            _worker_argv(),
            env=dict(os.environ),
            childFDs={0: "w", 1: "r", 2: 2},
        )
        self._running.append(worker)
        return worker

    def _submit(self, failed, make_request):
        result = defer.Deferred()
        if self._closing is not None:
            self._fail(result, failed, WorkerError("the workers are stopping"))
            return result
        try:
            worker = self._worker()
            worker.request(make_request(worker), result, failed)
        except Exception as error:  # no process could start (EMFILE, EAGAIN)
            self.log.error("cannot start workers ({error})", error=type(error).__name__)
            self._fail(result, failed, error)
            return result
        self.pending += 1
        return result

    def _answered(self, worker, result, failed, answer):
        self.pending -= 1
        status, value = answer
        if status == "ok":
            result.callback(value)
        elif status == "fault":  # a signature failed its check: nothing out
            self._fail(result, failed, rsa.FaultError())
        else:
            # Nothing a peer sends makes a worker fail: this is a bug, and
            # the keys the worker holds may no longer be the ones we think.
            # End it (what it was still asked fails closed); the next
            # request starts a new one.
            self.log.error("private-key work failed in a worker ({error})", error=value)
            self._fail(result, failed, WorkerError(value))
            try:
                worker.transport.signalProcess("KILL")
            except ProcessExitedAlready:
                pass

    def _ended(self, worker, waiting, reason):
        if worker in self._running:
            self._running.remove(worker)
        if self._closing is None:
            self.log.error(
                "worker failed ({error}); the next request starts a new one",
                error=reason.type.__name__,
            )
        for result, failed in waiting:
            self.pending -= 1
            self._fail(result, failed, WorkerError("the worker ended"))
        if self._closing is not None and not self._running:
            closing, self._closing = self._closing, []
            for done in closing:
                done.callback(None)

    @staticmethod
    def _fail(result, failed, error):
        if failed is _RAISE:
            result.errback(error)
        else:
            result.callback(failed)

    def close(self):
        """Stop the workers (the daemon is stopping): each ends once it has
        answered what it was asked.  The Deferred fires when all have."""
        if self._closing is None:
            self._closing = []
        if not self._running:
            return defer.succeed(None)
        done = defer.Deferred()
        self._closing.append(done)
        for worker in self._running:
            worker.transport.closeStdin()
        return done


#: For ``_submit``: a request whose failure fails its Deferred.
_RAISE = object()
