"""Forward secrecy: the server's short-lived RSA keys (docs/spec/kx1.rst §10).

Without them the secret of every session is encrypted to the long-term key,
and whoever steals that key later decrypts every recording.  With them, a
KEY is encrypted to a key that exists only in this process's memory, signed
by the long-term key, replaced every *interval* and dropped soon after.

:class:`EphemeralKey` is one such key with its signature and the HELLO
member that offers it; :class:`EphemeralKeys` makes them off the reactor,
rotates them on the reactor's clock and drops a retired key as soon as no
connection that was offered it still waits for its KEY, and at the latest
one handshake timeout after it retired.  The forward-secrecy window is
therefore at most interval + handshake timeout.

With ``post_quantum`` (revision 3, §12), every ephemeral RSA key comes with
an ML-KEM-768 key, made, signed, offered, retired and destroyed with it.
"""

import base64
import time

from twisted.internet import defer
from twisted.logger import Logger

from keyexchanged import keys, mlkem, schedule

__all__ = ["EphemeralKey", "EphemeralKeys", "max_interval", "sign_ephemeral", "signed_key"]

DEFAULT_INTERVAL = 60
MIN_INTERVAL = 10
MAX_INTERVAL = 86400
DEFAULT_BITS = 3072
MIN_BITS = 2048
#: How much later than "made + interval + handshake timeout" a key's
#: signature runs out: room for clocks that disagree a little.
EXPIRY_SLACK = 60
#: A server never signs an ``expires`` further ahead than this.
MAX_SIGNED_AHEAD = 86400
#: ... and a revision-3 server no further than this (§12.2): a revision-3
#: client refuses an offer signed for longer.
MAX_SIGNED_AHEAD_POST_QUANTUM = 1800


def sign_ephemeral(long_term, ephemeral_der, expires, salt=None):
    """The long-term key's PSS signature over an ephemeral key (§10.1)."""
    message = schedule.ephemeral_message(keys.public_key_to_der(long_term), expires, ephemeral_der)
    options = {} if salt is None else {"salt": salt}
    return long_term.sign_pss(message, salt_length=schedule.PSS_SALT_LENGTH, **options)


def signed_key(private_key, expires, long_term, post_quantum=True):
    """An :class:`EphemeralKey` offering ``private_key`` until ``expires``,
    signed here by ``long_term`` (§10.1); with ``post_quantum``, a fresh
    ML-KEM-768 key beside it under its own signature (§12.1)."""
    der = keys.public_key_to_der(private_key.public_key())
    signature = sign_ephemeral(long_term, der, expires)
    if not post_quantum:
        return EphemeralKey(private_key, expires, signature)
    mlkem_key = mlkem.generate()
    mlkem_signature = long_term.sign_pss(
        schedule.hybrid_message(keys.public_key_to_der(long_term), expires, der, mlkem_key.ek),
        salt_length=schedule.PSS_SALT_LENGTH,
    )
    return EphemeralKey(private_key, expires, signature, mlkem_key, mlkem_signature)


def max_interval(handshake_timeout, post_quantum):
    """The longest rotation interval: with ML-KEM, one whose keys are
    signed for at most MAX_SIGNED_AHEAD_POST_QUANTUM (§12.2)."""
    if not post_quantum:
        return MAX_INTERVAL
    return MAX_SIGNED_AHEAD_POST_QUANTUM - int(handshake_timeout) - EXPIRY_SLACK


class EphemeralKey:
    """One ephemeral key pair and what HELLO says of it.

    ``waiting`` counts the connections that were offered this key and have
    not yet sent their KEY; once the key is retired and nobody waits, its
    private half is dropped (``private_key`` becomes ``None``), and so is
    the ML-KEM key offered with it (``mlkem_key``, revision 3, with
    ``mlkem_member`` the HELLO member that offers it; ``None`` without).
    """

    def __init__(self, private_key, expires, signature, mlkem_key=None, mlkem_signature=None):
        self.private_key = private_key
        self.public_key = private_key.public_key()
        self.der = keys.public_key_to_der(self.public_key)
        self.fingerprint = keys.fingerprint(self.der)
        self.key_bytes = (self.public_key.n.bit_length() + 7) // 8
        self.bits = self.public_key.n.bit_length()
        self.expires = expires
        self.signature = signature
        self.member = {
            "key": base64.b64encode(self.der).decode("ascii"),
            "expires": expires,
            "signature": base64.b64encode(signature).decode("ascii"),
        }
        self.mlkem_key = mlkem_key
        self.mlkem_member = None
        if mlkem_key is not None:
            self.mlkem_member = {
                "key": base64.b64encode(mlkem_key.ek).decode("ascii"),
                "signature": base64.b64encode(mlkem_signature).decode("ascii"),
            }
        self.waiting = 0
        self.retired = False
        self._on_released = None
        #: Called with the private half when it is dropped: the workers
        #: holding it drop it too (``WorkerPool.forget``).
        self.forget = None

    def acquire(self):
        """A connection was offered this key."""
        self.waiting += 1

    def release(self):
        """A connection offered this key no longer needs it (its KEY was
        decrypted, it resumed instead, or it ended)."""
        self.waiting -= 1
        if self.waiting <= 0 and self.retired and self._on_released is not None:
            self._on_released(self)

    def destroy(self):
        """Let go of the private halves, here and in the workers: nothing
        the daemon runs can decrypt with them any more."""
        private_key, self.private_key = self.private_key, None
        self.mlkem_key = None
        if private_key is not None and self.forget is not None:
            self.forget(private_key)


class EphemeralKeys:
    """Make, sign, offer, rotate and destroy ephemeral keys.

    Give it to :class:`~keyexchanged.protocol.SecureChannelFactory` as
    ``ephemeral_keys``, :meth:`start` it before listening and :meth:`stop`
    it when done (which destroys every key it holds).

    :param long_term: the server's long-term
        :class:`~keyexchanged.rsa.PrivateKey`, which signs once per
        ephemeral key and does nothing else while forward secrecy is on.
    :param work: generates keys and signs off the reactor: a
        :class:`~keyexchanged.workers.WorkerPool` or
        :class:`~keyexchanged.workers.InlineWork` (the default, a thread).
    :param reactor: the reactor whose clock rotates the keys (default: the
        global reactor).
    :param interval: seconds between rotations, 10 to 86 400.
    :param bits: size of the ephemeral keys, at least 2048.
    :param handshake_timeout: the server's handshake timeout: how long a
        retired key may still be needed by a connection offered it.
    :param clock: wall-clock seconds for the signed ``expires`` (default:
        the reactor's clock).
    :raises ValueError: for an ``interval`` or ``bits`` out of range.
    """

    log = Logger()

    #: Called each time a new key is put in service (a metrics counter).
    on_rotated = None

    #: Seconds before a failed rotation is tried again.
    RETRY_DELAY = 5.0

    def __init__(
        self,
        long_term,
        work=None,
        reactor=None,
        interval=DEFAULT_INTERVAL,
        bits=DEFAULT_BITS,
        handshake_timeout=10.0,
        clock=None,
        post_quantum=True,
    ):
        if not MIN_INTERVAL <= interval <= MAX_INTERVAL:
            raise ValueError(f"ephemeral interval must be {MIN_INTERVAL} to {MAX_INTERVAL} seconds")
        longest = max_interval(handshake_timeout, post_quantum)
        if interval > longest:
            raise ValueError(
                f"with ML-KEM the ephemeral interval is at most {longest} seconds "
                f"(keys are signed for at most {MAX_SIGNED_AHEAD_POST_QUANTUM} s)"
            )
        #: Revision 3: an ML-KEM-768 key with every ephemeral key.
        self.post_quantum = post_quantum
        if bits < MIN_BITS:
            raise ValueError(f"ephemeral keys have at least {MIN_BITS} bits")
        if reactor is None:
            from twisted.internet import reactor
        if work is None:
            from keyexchanged.workers import InlineWork

            work = InlineWork(reactor)
        self.long_term = long_term
        self._long_term_der = keys.public_key_to_der(long_term)
        self.work = work
        self.reactor = reactor
        self.interval = interval
        self.bits = bits
        #: Multi-prime (RFC 8017 §3.2): as many primes as OpenSSL allows
        #: for the size, three below 4096 bits, which halves the cost of a
        #: decryption.  The key lives in memory only and its public half is
        #: an ordinary (n, e), so nothing on the wire tells.
        from keyexchanged.rsa import multi_prime_count

        self.primes = multi_prime_count(bits)
        self.handshake_timeout = handshake_timeout
        #: Wall-clock seconds for ``expires`` (the reactor's clock in tests).
        self._clock = clock if clock is not None else reactor.seconds
        self.current = None
        #: Retired keys that a connection may still need, with the call that
        #: drops them at the latest.
        self.retired = {}
        self.rotations = 0
        self.failures = 0
        self._call = None
        self._stopped = False

    def prime(self):
        """Make the first key here and now, before the daemon listens (a
        fraction of a second with gmpy2): there is always a key to offer.
        :meth:`start` does it when nobody did."""
        from keyexchanged.rsa import generate_multi_prime_key

        private_key = generate_multi_prime_key(self.bits, self.primes)
        self.current = signed_key(private_key, self._expires(), self.long_term, self.post_quantum)
        self.current.forget = getattr(self.work, "forget", None)
        self.rotations += 1
        self._log_new(self.current)
        if self.on_rotated is not None:
            self.on_rotated()

    def rekey(self, long_term):
        """The long-term key changed (a reload): sign a new ephemeral key
        with it at once; the current one retires as at a rotation."""
        self.long_term = long_term
        self._long_term_der = keys.public_key_to_der(long_term)
        old, self.current = self.current, None
        self.prime()
        if old is not None:
            self._retire(old)

    def start(self):
        """Offer a key from now on (making the first with :meth:`prime` if
        there is none) and replace it every ``interval`` seconds."""
        if self.current is None:
            self.prime()
        self._stopped = False
        if self._call is None:
            self._call = self.reactor.callLater(self.interval, self._rotate)

    def stop(self):
        """Stop rotating and destroy every key held: no connection can use
        one any more."""
        self._stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        for key, call in list(self.retired.items()):
            if call.active():
                call.cancel()
            key.destroy()
        self.retired.clear()
        if self.current is not None:
            self.current.destroy()
            self.current = None

    def held(self):
        """Every ephemeral key whose private half this process still holds."""
        found = [k for k in self.retired if k.private_key is not None]
        if self.current is not None and self.current.private_key is not None:
            found.append(self.current)
        return found

    def _expires(self):
        made = int(self._clock())
        expires = made + self.interval + int(self.handshake_timeout) + EXPIRY_SLACK
        ahead = MAX_SIGNED_AHEAD_POST_QUANTUM if self.post_quantum else MAX_SIGNED_AHEAD
        return min(expires, made + ahead)

    def _message(self, private_key, expires):
        return schedule.ephemeral_message(
            self._long_term_der, expires, keys.public_key_to_der(private_key.public_key())
        )

    def _mlkem_message(self, private_key, expires, mlkem_key):
        return schedule.hybrid_message(
            self._long_term_der,
            expires,
            keys.public_key_to_der(private_key.public_key()),
            mlkem_key.ek,
        )

    @defer.inlineCallbacks
    def _make(self):
        from keyexchanged.rsa import PrivateKey

        numbers = yield self.work.generate(self.bits, self.primes)
        private_key = PrivateKey.from_primes(*numbers)
        expires = self._expires()
        signature = yield self.work.sign(
            self.long_term, self._message(private_key, expires), schedule.PSS_SALT_LENGTH
        )
        mlkem_key = mlkem_signature = None
        if self.post_quantum:
            # Key generation is about 0.1 ms: here; the signature, like the
            # other, in a worker.
            mlkem_key = mlkem.generate()
            mlkem_signature = yield self.work.sign(
                self.long_term,
                self._mlkem_message(private_key, expires, mlkem_key),
                schedule.PSS_SALT_LENGTH,
            )
        key = EphemeralKey(private_key, expires, signature, mlkem_key, mlkem_signature)
        key.forget = getattr(self.work, "forget", None)
        return key

    @defer.inlineCallbacks
    def _rotate(self):
        """Replace the current key; a failure keeps it in service and retries."""
        self._call = None
        signer = self.long_term
        try:
            new = yield self._make()
        except Exception as error:
            self.failures += 1
            self.log.error(
                "ephemeral key rotation failed ({error}); keeping the current key, "
                "retrying in {delay:g} s",
                error=type(error).__name__,
                delay=self.RETRY_DELAY,
            )
            if not self._stopped:
                self._call = self.reactor.callLater(self.RETRY_DELAY, self._rotate)
            return
        if self._stopped:
            new.destroy()
            return
        if self.long_term is not signer:
            # A reload changed the long-term key meanwhile, and rekey() put a
            # key signed by the new one in service: this one would fail
            # every client's check until the next rotation.
            new.destroy()
            self.log.info("discarded an ephemeral key signed by the replaced long-term key")
            self._call = self.reactor.callLater(self.interval, self._rotate)
            return
        old, self.current = self.current, new
        self.rotations += 1
        if self.on_rotated is not None:
            self.on_rotated()
        if old is not None:
            self._retire(old)
        self._log_new(new)
        self._call = self.reactor.callLater(self.interval, self._rotate)

    def _log_new(self, key):
        self.log.info(
            "new ephemeral key {fingerprint} ({bits} bits), signed until {until}",
            fingerprint=key.fingerprint,
            bits=key.bits,
            expires=key.expires,
            until=_utc(key.expires),
        )

    def _retire(self, key):
        key.retired = True
        if key.waiting <= 0:
            key.destroy()
            return
        # Every connection offered it has sent KEY or timed out within one
        # handshake timeout; keep it no longer than that.
        call = self.reactor.callLater(self.handshake_timeout, self._drop, key)
        self.retired[key] = call
        key._on_released = self._drop

    def _drop(self, key):
        call = self.retired.pop(key, None)
        if call is not None and call.active():
            call.cancel()
        key._on_released = None
        key.destroy()


def _utc(seconds):
    """A log's date for ``seconds`` since the epoch: 2026-12-06 04:40:01 UTC."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))
