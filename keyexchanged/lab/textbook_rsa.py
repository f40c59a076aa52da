"""Lesson textbook-rsa: RSA with no padding, and e = 3.

The weak half attacks the original exercise's scheme, DELIBERATELY INSECURE
(:mod:`keyexchanged.lab.weak`), for teaching.  docs/lab.rst explains it.

Textbook RSA sends c = m^e mod n.  With e = 3 and a 16-byte key m, m^3 has
at most 384 bits, far below a 1024-bit n: the "mod n" never happens, and the
key is the ordinary integer cube root of c.  And whatever the exponent,
textbook RSA is malleable: c·s^e = (s·m)^e mod n, so anyone can turn a
ciphertext of m into one of s·m without knowing m.

KX/1 sends the secret with OAEP (docs/spec/kx1.rst §3): a full-size, randomized,
hashed block that decodes only if it is exactly what the client made, and
refuses e ≤ 2^16 outright (§2).  A KEY that does not decode is not
reported — implicit rejection — the server just uses a random secret, and
nobody can open its first record.
"""

from keyexchanged.framing import BAD_RECORD
from keyexchanged.lab import runner, wire
from keyexchanged.lab.bank import Bank
from keyexchanged.lab.runner import Kx1Client, Outcome, short
from keyexchanged.lab.weak import (
    WeakPublicKey,
    WeakServer,
    WeakStream,
    weak_client,
    weak_generate_key,
)
from keyexchanged.records import BadRecord
from keyexchanged.rsa import DecryptionError
from keyexchanged.trust import PinnedKey

NAME = "textbook-rsa"
TITLE = "RSA with no padding and e = 3"

#: The exercise's key: 1024 bits, e = 3.
WEAK_BITS = 1024
WEAK_EXPONENT = 3
#: The attacker's multiplier s.
FACTOR = 2

COMMANDS = ["LOGIN alice hunter2", "PAY 100 TO bob"]


def integer_root(x, k):
    """The largest integer r with r^k <= x, found bit by bit from the top."""
    r = 0
    # x < 2^L, so its k-th root is below 2^(L/k): at most L//k + 1 bits.
    for bit in reversed(range(x.bit_length() // k + 1)):
        candidate = r | (1 << bit)
        if candidate**k <= x:
            r = candidate
    return r


def read_data(lines, key, direction):
    """Decrypt the DATA lines of one direction of a recorded weak session."""
    stream = WeakStream(key, direction)
    out = []
    for line in lines:
        if line.startswith(b"DATA "):
            out.append(
                stream.apply(bytes.fromhex(line[5:].strip().decode())).decode("utf-8", "replace")
            )
    return out


def against_weak(lab):
    rng = lab.rng(NAME)
    key = weak_generate_key(WEAK_BITS, WEAK_EXPONENT, rng)
    bank = Bank()
    with (
        WeakServer(key, bank, padding="textbook") as server,
        wire.Relay(server.port, "lines") as tap,
    ):
        lab.say(
            "server",
            f"the exercise's server on 127.0.0.1:{server.port}: RSA-{key.size} with "
            f"e = {key.e}; it takes the session key as the last 16 bytes of c^d mod n",
        )
        victim = weak_client(tap.port, COMMANDS, rng, padding="textbook")
        lab.say(
            "victim",
            f"connected via 127.0.0.1:{tap.port}, where the attacker listens in; sent "
            f"KEY = key^3 mod n and {len(COMMANDS)} commands",
        )
        recorded = tap.last()
        public = WeakPublicKey.from_line(recorded.seen("server")[0].rstrip(b"\n"))
        to_server = recorded.seen("client")
        c = int(to_server[0].split()[1], 16)

        # The attack: the integer cube root, nothing else.
        m = integer_root(c, public.e)
        exact = m**public.e == c
        lab.say(
            "attacker",
            f"recorded KEY = {short(c)} ({c.bit_length()} bits: far below n's {public.size}, "
            "so no reduction mod n happened)",
        )
        lab.say(
            "attacker",
            f"integer cube root: {short(m, 32)}; cubed again it {'IS' if exact else 'is not'} "
            "the KEY, exactly",
        )
        recovered = m.to_bytes(16, "big") if exact and m.bit_length() <= 128 else None
        read = read_data(to_server, recovered, "client") if recovered else []
        if read:
            lab.say("attacker", "that is the session key; the recorded commands decrypt to:")
            lab.show(read)

        # Malleability: c·s^e decrypts to s·m, and the attacker needs no m for it.
        forged = c * public.weak_encrypt_int(FACTOR) % public.n
        conn = wire.LineSocket.to(server.port)
        conn.read_line()
        conn.send_line(b"KEY %x" % forged)
        conn.close_write()
        while conn.read_line() is not None:
            pass
        conn.close()
        decrypted = server.sessions[-1].key_int
        victim_int = int.from_bytes(victim.key, "big")
        related = decrypted == FACTOR * victim_int
        lab.say(
            "attacker",
            f"sent KEY x {FACTOR}^{public.e} mod n on a connection of its own; inside the "
            f"server (the lab can look) RSA decryption gave {short(decrypted, 32)}, which "
            f"{'is' if related else 'is not'} {FACTOR} x the victim's key",
        )
    worked = recovered == victim.key and related
    return Outcome(
        worked,
        "the session key from the ciphertext alone (an integer cube root), alice's "
        f"password with it, and a KEY the server decrypted to {FACTOR} x the victim's key"
        if worked
        else "the textbook attacks did not work on this run",
        {
            "recovered": recovered,
            "victim_key": victim.key,
            "read": read,
            "related": related,
        },
    )


def against_kx1(lab):
    bank = Bank()
    with lab.kx1_server(bank) as server:
        lab.say(
            "server",
            f"the daemon on 127.0.0.1:{server.port}: RSA-{server.private_key.size}, "
            f"e = {server.private_key.e}, OAEP; the victim pins its fingerprint",
        )

        def note_hello(frame, relayed):
            if frame.verb == "HELLO":
                relayed.notes["hello"] = runner.read_hello(frame.payload)
            return frame

        def multiply_key(frame, relayed):
            # The same manipulation, in flight: KEY x s^e mod n.
            if frame.verb != "KEY":
                return frame
            target = relayed.notes["hello"].encryption_key
            c = int.from_bytes(frame.payload, "big")
            forged = c * pow(FACTOR, target.e, target.n) % target.n
            relayed.notes["key"] = frame.payload
            relayed.notes["forged"] = forged.to_bytes(len(frame.payload), "big")
            return wire.Frame("KEY", relayed.notes["forged"])

        with wire.Relay(server.port, "frames", multiply_key, note_hello) as mitm:
            victim = Kx1Client(mitm.port, PinnedKey(server.fingerprint)).run(COMMANDS)
            relayed = mitm.last()
        ended = server.wait_for_log("ended:")[0]
    hello, original, forged = relayed.notes["hello"], relayed.notes["key"], relayed.notes["forged"]
    target = hello.encryption_key

    c = int.from_bytes(original, "big")
    root = integer_root(c, target.e)
    exact = pow(root, target.e) == c
    lab.say(
        "attacker",
        f"recorded KEY: {len(original)} bytes, {c.bit_length()} bits; its integer "
        f"{target.e}th root is {root}, and that to the power e is "
        f"{'the KEY' if exact else 'not the KEY'}: OAEP fills the whole block",
    )
    lab.say(
        "attacker",
        f"replaced the KEY in flight by KEY x {FACTOR}^e mod n, as against the exercise",
    )
    lab.say("victim", victim.describe())
    if hello.ephemeral is None:
        try:
            server.private_key.decrypt_oaep(forged, label=hello.payload)
            decodes = True
        except DecryptionError:
            decodes = False
        lab.say(
            "lab",
            "with the server's private key the forged KEY "
            + ("DECODES" if decodes else "decodes to nothing (OAEP: decryption failed)")
            + "; the server said nothing of it and carried on with a random secret",
        )
    else:
        decodes = None

    # The attacker's best guesses for the server's secret: what textbook RSA
    # would have given (s·m), and even the victim's own secret m.
    first_record = next((frame for frame in relayed.seen("server") if frame.verb == "MSG"), None)
    secret = victim.secret
    guesses = {
        "m": secret,
        f"{FACTOR} x m": (FACTOR * int.from_bytes(secret, "big") % 2**256).to_bytes(32, "big"),
    }
    opened = []
    for name, guess in guesses.items() if first_record is not None else ():
        try:
            runner.open_with_secret(guess, hello, forged, [("server", first_record)])
            opened.append(name)
        except BadRecord:
            pass
    if first_record is None:
        lab.say("attacker", "the server sent no record to try keys on")
    else:
        lab.say(
            "attacker",
            "tried to open the server's first record with keys from the secret "
            + " and from ".join(guesses)
            + f": {'opened with ' + ', '.join(opened) if opened else 'neither opens it'}",
        )
    lab.say("server", f"log: {ended}")
    lab.say("server", f"ledger: {bank.payments() or 'no payment'}")
    refused = victim.outcome == "error-sent" and victim.code == BAD_RECORD
    worked = bool(opened) or victim.confirmed or not refused or bool(decodes) or exact
    return Outcome(
        worked,
        f"no cube root (e = {target.e}, OAEP); the forged KEY decodes to nothing and "
        "the server says nothing (implicit rejection); its first record opens with no "
        f"guess, so the victim itself ends it: ERROR {BAD_RECORD} before any command was sent"
        if not worked
        else "KX/1 accepted a manipulated KEY (this is a bug)",
        {
            "root_exact": exact,
            "decodes": decodes,
            "opened": opened,
            "victim": victim,
            "payments": bank.payments(),
            "log": ended,
        },
    )
