"""Lesson padding-oracle: Bleichenbacher's attack on PKCS #1 v1.5 (1998).

The weak half attacks the original exercise's scheme, DELIBERATELY INSECURE
(:mod:`keyexchanged.lab.weak`), for teaching.  docs/lab.rst explains it.

The exercise pads the session key with PKCS #1 v1.5 (00 02 random 00 key)
and its server, trying to be helpful, answers a KEY that does not start with
00 02 with ``ERROR bad-padding`` and anything else that fails with ``ERROR
bad-message``, then lets the client try again.  That one bit — "does c^d mod
n start with 00 02?" — is an oracle.  Multiply a recorded ciphertext c0 by
s^e and ask: every "yes" says that m0·s mod n lies in [2B, 3B), B =
2^(8(k−2)), and Bleichenbacher's algorithm turns those answers into a
shrinking set of intervals that ends in m0 itself.

KX/1 decodes OAEP with implicit rejection (docs/spec/kx1.rst §3): whether the KEY
decodes or not, the server goes on with the same frames; the oracle has
nothing to say.
"""

import itertools
import secrets
import time

from keyexchanged.lab import runner, wire
from keyexchanged.lab.bank import Bank
from keyexchanged.lab.runner import Kx1Client, Outcome, short
from keyexchanged.lab.textbook_rsa import read_data
from keyexchanged.lab.weak import WeakServer, weak_client, weak_generate_key, weak_pkcs1_unpad
from keyexchanged.trust import PinnedKey

NAME = "padding-oracle"
TITLE = "a padding oracle: Bleichenbacher's attack on PKCS #1 v1.5"

#: Small enough that the attack takes seconds in Python: the number of
#: queries hardly depends on the size, the cost of each one does.
WEAK_BITS = 512
WEAK_EXPONENT = 65537

#: Queries sent before the answers are read.  The server answers in order,
#: so a batch costs one round trip instead of one each; the answers after
#: the first "conforming" one in a batch are not needed (and are counted).
SEARCH_BATCH = 64
#: Step 2a draws its s from [n/3B, SEARCH_SPAN·n/3B): some 340 turns of
#: m0·s mod n around the circle (see bleichenbacher).  Fewer turns, and for
#: some m0 most of them miss the window; more, and step 3 is left with more
#: intervals (up to about SEARCH_SPAN/3) for step 2b to sort out.
SEARCH_SPAN = 1024
#: Step 2c finds its s within a few candidates: small batches waste little.
NARROW_BATCH = 4
#: A bound on the attack, which keeps a lesson under about 20 s.  Nearly all
#: the queries are step 2a's, each conforming with a chance of about B/n
#: (2^-16 to 2^-15): some 30 000 to 65 000 on average, a few times that for
#: an unlucky run (the bound is reached about once in a few hundred runs).
MAX_QUERIES = 350_000

#: Ciphertexts of each kind the attacker sends to KX/1.
KX1_TRIES = 3

COMMANDS = ["LOGIN alice hunter2", "PAY 100 TO bob"]


class OracleExhausted(Exception):
    """The attack used up its query budget."""


class Oracle:
    """The attacker's end of the padding oracle: one connection to the weak
    server, kept open; a query is a KEY line, the answer is whether the
    server said anything but ``ERROR bad-padding``."""

    def __init__(self, port, public_key, max_queries=MAX_QUERIES):
        self.port = port
        self.public_key = public_key
        self.max_queries = max_queries
        self.queries = 0
        self.conn = None

    def _connect(self):
        self.conn = wire.LineSocket.to(self.port)
        self.conn.read_line()  # PUBKEY

    def first_conforming(self, c0, candidates, batch):
        """The first s of ``candidates`` for which c0·s^e mod n is PKCS
        conforming (decrypts to 00 02 ...), asking ``batch`` at a time."""
        n = self.public_key.n
        candidates = iter(candidates)
        while True:
            chunk = list(itertools.islice(candidates, batch))
            if not chunk:
                return None
            if self.queries + len(chunk) > self.max_queries:
                raise OracleExhausted(f"no answer within {self.max_queries} queries")
            if self.conn is None:
                self._connect()
            self.conn.send_lines(
                [b"KEY %x" % (c0 * self.public_key.weak_encrypt_int(s) % n) for s in chunk]
            )
            self.queries += len(chunk)
            found = None
            for s in chunk:
                answer = self.conn.read_line()
                if answer == b"ERROR bad-padding":
                    continue
                if answer == b"ERROR bad-message":
                    found = s if found is None else found
                    continue
                # "OK": the block happened to hold a whole 16-byte key and the
                # server started a session; the rest of the batch is lost.
                # Start afresh on a new connection.
                self.conn.close()
                self.conn = None
                return s if found is None else found
            if found is not None:
                return found

    def close(self):
        if self.conn is not None:
            self.conn.close()


def _ceil_div(a, b):
    return -(-a // b)


def _narrow(intervals, s, n, B):
    """Step 3: the m0 consistent with "m0·s mod n is conforming"."""
    narrowed = set()
    for a, b in intervals:
        for r in range(_ceil_div(a * s - 3 * B + 1, n), (b * s - 2 * B) // n + 1):
            low = max(a, _ceil_div(2 * B + r * n, s))
            high = min(b, (3 * B - 1 + r * n) // s)
            if low <= high:
                narrowed.add((low, high))
    return sorted(narrowed)


def _step_2c_candidates(a, b, s, n, B):
    """Step 2c: with one interval [a, b] left, s values that halve it."""
    r = _ceil_div(2 * (b * s - 2 * B), n)
    while True:
        yield from range(_ceil_div(2 * B + r * n, b), _ceil_div(3 * B + r * n, a))
        r += 1


def bleichenbacher(oracle, c0, rng, report=None):
    """Decrypt c0 (a PKCS #1 v1.5 ciphertext) with the padding oracle alone.

    Returns m0, the padded block, as an integer.  ``rng`` draws the
    multipliers of step 2a; ``report(step, text)``, if given, hears about the
    milestones.  The steps are those of Bleichenbacher's paper (CRYPTO '98);
    step 1 (blinding) is not needed, because c0 is itself a conforming
    ciphertext.
    """
    report = report or (lambda step, text: None)
    n, k = oracle.public_key.n, oracle.public_key.k
    B = 1 << 8 * (k - 2)
    intervals = [(2 * B, 3 * B - 1)]  # every conforming m0 lies here
    # Step 2a: an s >= n/3B that makes c0·s^e conforming.  The paper tries
    # n/3B, n/3B + 1, ... in turn: m0·s mod n then walks around the circle
    # (of circumference n) in steps of m0, and for some m0 it keeps stepping
    # over the window [2B, 3B) for hundreds of thousands of queries.  Drawn
    # at random over many turns of the circle, every s has the same chance,
    # about B/n, whatever m0; a larger s only leaves step 3 a few more
    # intervals, which step 2b then sorts out.
    low = _ceil_div(n, 3 * B)
    draws = (rng.randrange(low, SEARCH_SPAN * low) for _ in itertools.count())
    s = oracle.first_conforming(c0, draws, SEARCH_BATCH)
    report("2a", f"a conforming multiplier s1 = {s} after {oracle.queries} queries")
    rounds = 1
    while True:
        intervals = _narrow(intervals, s, n, B)  # step 3
        if len(intervals) == 1 and intervals[0][0] == intervals[0][1]:
            report("4", f"one candidate left after {rounds} rounds and {oracle.queries} queries")
            return intervals[0][0]  # step 4: m0 = a (s0 = 1)
        rounds += 1
        if len(intervals) > 1:
            # Step 2b: several intervals.  The paper searches s + 1, s + 2,
            # ... one by one, which for some m0 takes hundreds of thousands
            # of queries; instead (Bardou et al., CRYPTO 2012) run the
            # search of step 2c for each interval, taking turns: whichever
            # interval holds m0 soon gives a conforming s.
            searches = [_step_2c_candidates(a, b, s, n, B) for a, b in intervals]
            turns = (next(search) for search in itertools.cycle(searches))
            batch = min(NARROW_BATCH * len(searches), SEARCH_BATCH)
            s = oracle.first_conforming(c0, turns, batch)
        else:
            # Step 2c: one interval: each conforming s about halves it.
            a, b = intervals[0]
            s = oracle.first_conforming(c0, _step_2c_candidates(a, b, s, n, B), NARROW_BATCH)
        if rounds % 128 == 0:
            width = intervals[0][1] - intervals[0][0]
            report("2c", f"round {rounds}: m0 known to within {width.bit_length()} bits")


def against_weak(lab):
    rng = lab.rng(NAME)
    key = weak_generate_key(WEAK_BITS, WEAK_EXPONENT, rng)
    bank = Bank()
    with (
        WeakServer(key, bank, padding="pkcs1", oracle=True) as server,
        wire.Relay(server.port, "lines") as tap,
    ):
        lab.say(
            "server",
            f"the exercise's server on 127.0.0.1:{server.port}: RSA-{key.size}, PKCS #1 v1.5; "
            "a bad KEY gets ERROR bad-padding or ERROR bad-message, and another try",
        )
        victim = weak_client(tap.port, COMMANDS, rng)
        lab.say("victim", f"connected via 127.0.0.1:{tap.port}, where the attacker listens in")
        recorded = tap.last()
        to_server = recorded.seen("client")
        c0 = int(to_server[0].split()[1], 16)
        lab.say("attacker", f"recorded KEY c0 = {short(c0)}; now asks the server about c0 x s^e")
        oracle = Oracle(server.port, key.public_key())
        started = time.monotonic()
        try:
            m0 = bleichenbacher(
                oracle,
                c0,
                lab.rng(NAME + " attacker"),
                lambda step, text: lab.say("attacker", f"step {step}: {text}"),
            )
        except OracleExhausted as exhausted:
            m0 = None
            lab.say("attacker", f"gave up: {exhausted}")
        finally:
            oracle.close()
        elapsed = time.monotonic() - started
    recovered = weak_pkcs1_unpad(m0, key.k) if m0 is not None else None
    read = read_data(to_server, recovered, "client") if recovered and len(recovered) == 16 else []
    if m0 is not None:
        lab.say(
            "attacker",
            f"m0 = {short(m0.to_bytes(key.k, 'big'), 24)}: 00 02, padding, 00, and the key "
            f"{short(recovered, 32)}; the recorded commands decrypt to:",
        )
        lab.show(read)
    worked = recovered == victim.key
    evidence = {"recovered": recovered, "victim_key": victim.key, "queries": oracle.queries}
    evidence["read"] = read
    if m0 is None:
        return Outcome(
            False,
            f"the attack gave up after {oracle.queries} queries ({elapsed:.1f} s): this key "
            "is one of the unlucky ones for step 2a, not a safe one.  Run the lesson again "
            "(a new seed, a new key) to see it through",
            evidence,
            pending=f"gave up after {oracle.queries} queries (an unlucky key: run again)",
        )
    return Outcome(
        worked,
        f"the recorded session key, and alice's password, after {oracle.queries} oracle "
        f"queries in {elapsed:.1f} s, without the private key"
        if worked
        else "the attack's answer was not the session key (this is a bug in the lab)",
        evidence,
    )


def _ask_kx1(port, make_key):
    """One query to KX/1: a fresh connection, our KEY, and the next frame
    the server sends (what an oracle would have to go by)."""
    conn = wire.FrameSocket.to(port)
    try:
        hello = runner.read_hello(conn.read_frame().payload)
        conn.send(wire.Frame("KEY", make_key(hello)))
        answer = conn.read_frame()
    finally:
        conn.close()
    return (answer.verb, len(answer.payload)) if answer is not None else ("closed", 0)


def against_kx1(lab):
    bank = Bank()
    with lab.kx1_server(bank) as server:
        lab.say(
            "server",
            f"the daemon on 127.0.0.1:{server.port}: RSA-{server.private_key.size}, OAEP "
            "with implicit rejection",
        )
        with wire.Relay(server.port, "frames") as tap:
            Kx1Client(tap.port, PinnedKey(server.fingerprint)).run(COMMANDS)
            recorded = tap.last()
        c0_payload = next(frame.payload for frame in recorded.seen("client") if frame.verb == "KEY")

        def valid(hello):
            return hello.encryption_key.encrypt_oaep(secrets.token_bytes(32), label=hello.payload)

        def garbage(hello):
            n = hello.encryption_key.n
            return secrets.randbelow(n).to_bytes(hello.encryption_key.k, "big")

        def multiplied(hello):
            target = hello.encryption_key
            c = int.from_bytes(c0_payload, "big") * pow(2, target.e, target.n) % target.n
            return c.to_bytes(target.k, "big")

        kinds = {
            "conforming (a valid OAEP KEY made for this HELLO)": valid,
            "not conforming (random bytes below n)": garbage,
            "the victim's recorded KEY": lambda hello: c0_payload,
            "the recorded KEY x 2^e mod n (Bleichenbacher's first kind of query)": multiplied,
        }
        answers = {}
        for name, make_key in kinds.items():
            answers[name] = [_ask_kx1(server.port, make_key) for _ in range(KX1_TRIES)]
            seen = ", ".join(sorted({f"{verb} ({length} bytes)" for verb, length in answers[name]}))
            lab.say("attacker", f"{KX1_TRIES} x {name}: the server's next frame was {seen}")
        ended = server.wait_for_log("ended:", count=1 + KX1_TRIES * len(kinds))
    distinct = {answer for replies in answers.values() for answer in replies}
    lab.say(
        "server",
        f"log: all {len(ended) - 1} of the attacker's connections ended the same way: "
        + ", ".join(sorted({line.split("ended: ")[1].split(";")[0] for line in ended[1:]})),
    )
    worked = len(distinct) != 1
    verb, length = next(iter(distinct))
    return Outcome(
        worked,
        f"one answer for every KEY, conforming or not: the server's first record, "
        f"{verb} of {length} bytes, sealed under a secret nobody but a KEY's maker "
        "knows; the oracle says nothing"
        if not worked
        else f"KX/1 answered differently: {sorted(distinct)} (this is a bug)",
        {"answers": answers, "distinct": distinct},
    )
