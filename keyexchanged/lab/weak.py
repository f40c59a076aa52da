"""The original exercise's scheme.  DELIBERATELY INSECURE — for teaching only.

This is the classroom exercise keyexchanged grew out of, written the way it
usually is written, so that the lab can attack it:

1. the server sends its RSA public key:       ``PUBKEY <n in hex> <e>``
2. the client draws a 16-byte AES key, encrypts it under that public key
   (textbook RSA, or PKCS #1 v1.5 padding) and sends it: ``KEY <hex>``
3. from then on both sides send ``DATA <hex>`` lines, AES-128-CTR under
   that key, one keystream per direction.

Every weakness the lessons exploit is here on purpose, and named ``weak_*``:
no padding or a padding with an oracle, e = 3, a public key nobody checks,
nothing fresh from the server in the key, no authentication of the data, no
end-of-stream marker, and one long-term key that decrypts everything ever
recorded.  Do not copy any of it.

Nothing outside :mod:`keyexchanged.lab` imports this module, and it is not an
application plugin: ``twistd keyexchange`` can never serve it.

What is *not* home-made: the RSA arithmetic.  Keys are made with the primality
test of :mod:`keyexchanged.rsa` and every exponentiation goes through its
big-integer backend (GMP when gmpy2 is installed) — the same code as the
daemon's RSA, only without OAEP, blinding and the fault check around it.
rsa.py itself will not hold a key below 1024 bits or generate one with
e = 3, on purpose; hence the small wrappers here.
"""

import collections
import threading

from Crypto.Cipher import AES

from keyexchanged import rsa
from keyexchanged.lab import wire

__all__ = [
    "WEAK_KEY_BYTES",
    "WeakBadMessage",
    "WeakBadPadding",
    "WeakClientSession",
    "WeakPrivateKey",
    "WeakPublicKey",
    "WeakServer",
    "WeakStream",
    "weak_client",
    "weak_generate_key",
    "weak_pkcs1_pad",
    "weak_pkcs1_unpad",
]

#: The exercise's session key: one AES-128 key.
WEAK_KEY_BYTES = 16

#: CTR needs a nonce per key; the exercise fixes one per direction, so the
#: keystream depends on the session key alone (which is what makes a replay
#: decrypt exactly as the original did).
_NONCE = {"client": b"client->", "server": b"server->"}


# -- RSA without its safety equipment ------------------------------------------------


class WeakPublicKey:
    """An RSA public key (n, e), used the textbook way: c = m^e mod n."""

    def __init__(self, n, e):
        self.n = n
        self.e = e
        self.size = n.bit_length()
        self.k = (self.size + 7) // 8

    def weak_encrypt_int(self, m):
        """Textbook RSA encryption of the integer m < n: m^e mod n, nothing else."""
        backend = rsa._backend
        return int(backend.powmod_public(backend.number(m), self.e, self.n))

    def line(self):
        return b"PUBKEY %x %d" % (self.n, self.e)

    @classmethod
    def from_line(cls, line):
        verb, n, e = line.split(b" ")
        if verb != b"PUBKEY":
            raise ValueError("not a PUBKEY line")
        return cls(int(n, 16), int(e))


class WeakPrivateKey(WeakPublicKey):
    """An RSA key with its primes; decrypts the textbook way: m = c^d mod n."""

    def __init__(self, p, q, e):
        super().__init__(p * q, e)
        self.p = p
        self.q = q
        self.d = pow(e, -1, (p - 1) * (q - 1))
        # The Chinese remainder theorem, as rsa.PrivateKey uses it: two
        # half-size exponentiations instead of one (the oracle lesson makes
        # tens of thousands of decryptions).
        self._dp, self._dq, self._q_inv = self.d % (p - 1), self.d % (q - 1), pow(q, -1, p)

    def public_key(self):
        return WeakPublicKey(self.n, self.e)

    def weak_decrypt_int(self, c):
        """c^d mod n — no blinding, no fault check, no padding check."""
        backend = rsa._backend
        power, number = backend.powmod_secret, backend.number
        c = number(c)
        m_p = power(c % self.p, self._dp, self.p)
        m_q = power(c % self.q, self._dq, self.q)
        return int(m_q + (m_p - m_q) * self._q_inv % self.p * self.q)


def _weak_prime(bits, e, rng):
    """A random prime of exactly ``bits`` bits with gcd(p − 1, e) = 1.

    Candidates come from ``rng`` (so a seeded lab run is repeatable); the
    primality test is rsa.py's own (trial division, then Miller–Rabin).
    """
    rounds = rsa._miller_rabin_rounds(2 * bits)
    while True:
        # The top two bits set: p·q then has exactly 2·bits bits.
        candidate = rng.getrandbits(bits) | (3 << (bits - 2)) | 1
        if (candidate - 1) % e and rsa._is_probable_prime(candidate, rounds, rsa._backend):
            return candidate


def weak_generate_key(bits, e, rng):
    """An RSA key of ``bits`` bits and public exponent ``e`` (3 is allowed here)."""
    while True:
        p, q = _weak_prime(bits // 2, e, rng), _weak_prime(bits // 2, e, rng)
        if p != q:
            return WeakPrivateKey(p, q, e)


# -- PKCS #1 v1.5, as the exercise decoded it ----------------------------------------------


class WeakBadPadding(ValueError):
    """The block does not start with 00 02."""


class WeakBadMessage(ValueError):
    """The padding looked right but what it held is not a session key."""


def weak_pkcs1_pad(message, k, rng):
    """PKCS #1 v1.5 encryption padding (type 2): 00 02 PS 00 message, as an integer.

    PS is k − 3 − len(message) random non-zero bytes.
    """
    padding = bytes(rng.randrange(1, 256) for _ in range(k - 3 - len(message)))
    return int.from_bytes(b"\x00\x02" + padding + b"\x00" + message, "big")


def weak_pkcs1_unpad(m, k):
    """Undo the padding the way the exercise did — DELIBERATELY INSECURE.

    It says *why* it failed: :class:`WeakBadPadding` when the block does not
    start 00 02, :class:`WeakBadMessage` otherwise.  A server that lets its
    client see the difference is a padding oracle (lesson padding-oracle).
    """
    block = m.to_bytes(k, "big")
    if block[:2] != b"\x00\x02":
        raise WeakBadPadding("bad padding")
    separator = block.find(b"\x00", 2)
    if separator < 0:
        raise WeakBadMessage("no message after the padding")
    return block[separator + 1 :]


# -- AES without a tag --------------------------------------------------------------------------


class WeakStream:
    """One direction of the session: AES-128-CTR, no tag, no sequence number."""

    def __init__(self, key, direction):
        self._cipher = AES.new(key, AES.MODE_CTR, nonce=_NONCE[direction])

    def apply(self, data):
        """Encrypt or decrypt (in CTR mode they are the same XOR)."""
        return self._cipher.encrypt(data)


# -- the server -------------------------------------------------------------------------------


class WeakSession:
    """What the lab can see inside the weak server for one connection (an
    attacker cannot; the lessons use it to show what the server did)."""

    def __init__(self, number):
        self.number = number
        #: The integer the server's RSA decryption gave, and the key it used.
        self.key_int = None
        self.key = None
        #: How many KEYs were refused, by reason (the oracle makes many).
        self.refused = collections.Counter()
        self.errors = []
        self.teller = None


class WeakServer(wire.Acceptor):
    """The exercise's server, one thread per connection, on 127.0.0.1.

    ``padding`` is ``"textbook"`` (the key is the low 16 bytes of c^d mod n)
    or ``"pkcs1"``.  With ``oracle`` the server says ``ERROR bad-padding``
    or ``ERROR bad-message`` and lets the client try another KEY — the
    friendly error message that makes the padding oracle; without it, any bad
    KEY gets ``ERROR bad key`` and the connection is closed.

    ``greeting`` is a list of lines sent (encrypted) right after the key
    exchange; each commands line that follows goes to the :class:`Bank`.
    """

    def __init__(self, key, bank, padding="pkcs1", oracle=False, greeting=()):
        if padding not in ("textbook", "pkcs1"):
            raise ValueError("padding must be 'textbook' or 'pkcs1'")
        self.key = key
        self.bank = bank
        self.padding = padding
        self.oracle = oracle
        self.greeting = list(greeting)
        self.sessions = []
        self._lock = threading.Lock()
        self._threads = []
        self._sockets = []
        self.start_accepting()

    thread_name = "lab-weak-server"

    def accepted(self, sock):
        with self._lock:
            session = WeakSession(len(self.sessions) + 1)
            self.sessions.append(session)
            self._sockets.append(sock)
        thread = threading.Thread(
            target=self._serve, args=(sock, session), name="lab-weak-session", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def _decode_key(self, c, session):
        m = self.key.weak_decrypt_int(c)
        session.key_int = m
        if self.padding == "textbook":
            # The exercise took the last 16 bytes of the decrypted block.
            return (m % (1 << 8 * WEAK_KEY_BYTES)).to_bytes(WEAK_KEY_BYTES, "big")
        key = weak_pkcs1_unpad(m, self.key.k)
        if len(key) != WEAK_KEY_BYTES:
            raise WeakBadMessage(f"the key is {len(key)} bytes, not {WEAK_KEY_BYTES}")
        return key

    def _serve(self, sock, session):
        conn = wire.LineSocket(sock)
        try:
            conn.send_line(self.key.line())
            key = self._receive_key(conn, session)
            if key is None:
                return
            session.key = key
            conn.send_line(b"OK")
            session.teller = teller = self.bank.session()
            to_client = WeakStream(key, "server")
            from_client = WeakStream(key, "client")
            conn.send_lines(
                [b"DATA " + to_client.apply(line.encode()).hex().encode() for line in self.greeting]
            )
            clean = self._serve_commands(conn, teller, to_client, from_client)
            # The end of the TCP stream is all the exercise knows of an end:
            # a clean close and an attacker's cut look the same.
            teller.end(clean=clean)
        except (OSError, ValueError) as error:
            session.errors.append(str(error))
            if session.teller is not None and session.teller.ended is None:
                session.teller.end(clean=False)
        finally:
            sock.close()

    def _receive_key(self, conn, session):
        while True:
            line = conn.read_line()
            if line is None:
                return None
            verb, _, argument = line.partition(b" ")
            if verb != b"KEY":
                conn.send_line(b"ERROR expected KEY")
                return None
            try:
                return self._decode_key(int(argument, 16), session)
            except WeakBadPadding:
                session.refused["bad padding"] += 1
                if not self.oracle:
                    conn.send_line(b"ERROR bad key")
                    return None
                conn.send_line(b"ERROR bad-padding")
            except WeakBadMessage:
                session.refused["bad message"] += 1
                if not self.oracle:
                    conn.send_line(b"ERROR bad key")
                    return None
                conn.send_line(b"ERROR bad-message")

    def _serve_commands(self, conn, teller, to_client, from_client):
        """Answer DATA lines until the client closes; True for a (seemingly) clean end."""
        while True:
            line = conn.read_line()
            if line is None:
                return True
            verb, _, argument = line.partition(b" ")
            if verb != b"DATA":
                conn.send_line(b"ERROR expected DATA")
                return False
            text = from_client.apply(bytes.fromhex(argument.decode("ascii")))
            reply = teller.command(text.decode("utf-8", "replace"))
            conn.send_line(b"DATA " + to_client.apply(reply.encode()).hex().encode())

    def close(self):
        self.stop_accepting()
        for sock in self._sockets:
            wire.hang_up(sock)
        for thread in self._threads:
            thread.join(wire.TIMEOUT)


# -- the client --------------------------------------------------------------------------------


class WeakClientSession:
    """What a weak client did and saw."""

    def __init__(self):
        self.server_key = None
        self.key = None
        self.key_ciphertext = None
        #: The decrypted lines it received, in order.
        self.received = []
        self.errors = []


def weak_client(port, commands, rng, padding="pkcs1"):
    """Run one session of the exercise: take whatever key the server sends
    (there is no way to check it), send a fresh session key under it, send
    ``commands``, and read until the server closes."""
    session = WeakClientSession()
    conn = wire.LineSocket.to(port)
    try:
        server_key = session.server_key = WeakPublicKey.from_line(conn.read_line())
        key = session.key = rng.randbytes(WEAK_KEY_BYTES)
        if padding == "textbook":
            c = server_key.weak_encrypt_int(int.from_bytes(key, "big"))
        else:
            c = server_key.weak_encrypt_int(weak_pkcs1_pad(key, server_key.k, rng))
        session.key_ciphertext = c
        to_server = WeakStream(key, "client")
        from_server = WeakStream(key, "server")
        lines = [b"KEY %x" % c]
        lines += [
            b"DATA " + to_server.apply(command.encode()).hex().encode() for command in commands
        ]
        conn.send_lines(lines)
        conn.close_write()
        while (line := conn.read_line()) is not None:
            verb, _, argument = line.partition(b" ")
            if line == b"OK":
                continue
            if verb == b"DATA":
                text = from_server.apply(bytes.fromhex(argument.decode("ascii")))
                session.received.append(text.decode("utf-8", "replace"))
            else:
                session.errors.append(line.decode("ascii", "replace"))
    finally:
        conn.close()
    return session
