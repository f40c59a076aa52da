"""Lesson forward-secrecy: the server's key, stolen later, and old recordings.

The weak half attacks the original exercise's scheme, DELIBERATELY INSECURE
(:mod:`keyexchanged.lab.weak`), for teaching.  docs/lab.rst explains it.

Record a session today; steal the server's private key next year (a backup,
a decommissioned disk, a court order).  In the exercise the session key
travelled under that long-term key, so the key opens the recording, and
every other recording ever made.

KX/1 revision 2 (docs/spec/kx1.rst §10) encrypts the session secret under a
short-lived *ephemeral* RSA key instead: made in memory, signed by the
long-term key, offered in HELLO, and destroyed minutes later.  The
long-term key only signs; it never decrypts a KEY, so stealing it opens no
recording.  This lesson reads the recorded HELLO: with an ``ephemeral``
member it shows the stolen key failing; without one (a revision 1 daemon)
it says so, and shows that the stolen key opens the recording.
"""

import base64
import hashlib

from keyexchanged import keys
from keyexchanged.lab import runner, wire
from keyexchanged.lab.bank import Bank
from keyexchanged.lab.runner import Kx1Client, Outcome, short
from keyexchanged.lab.textbook_rsa import read_data
from keyexchanged.lab.weak import WeakServer, weak_client, weak_generate_key, weak_pkcs1_unpad
from keyexchanged.records import BadRecord
from keyexchanged.rsa import DecryptionError
from keyexchanged.trust import PinnedKey

NAME = "forward-secrecy"
TITLE = "a key stolen later opens old recordings"

WEAK_BITS = 1024
WEAK_EXPONENT = 65537

COMMANDS = ["LOGIN alice hunter2", "PAY 100 TO bob"]
GREETING = ["The secret message: the vault code is 4711."]

#: Why the KX/1 half cannot show forward secrecy against this daemon yet.
NOT_OFFERED = "the daemon does not offer ephemeral keys (started with --no-forward-secrecy?)"

#: docs/spec/kx1.rst §10.1: what the long-term key signs for an ephemeral key.
EPHEMERAL_CONTEXT = b"kx/1 ephemeral key\x00"
EPHEMERAL_SALT_LENGTH = 32


def against_weak(lab):
    rng = lab.rng(NAME)
    key = weak_generate_key(WEAK_BITS, WEAK_EXPONENT, rng)
    bank = Bank()
    with (
        WeakServer(key, bank, greeting=GREETING) as server,
        wire.Relay(server.port, "lines") as tap,
    ):
        lab.say("server", f"the exercise's server on 127.0.0.1:{server.port}, RSA-{key.size}")
        weak_client(tap.port, COMMANDS, rng)
        recorded = tap.last()
        lab.say("victim", f"logged in and paid, via 127.0.0.1:{tap.port}, where it was recorded")
    lab.say("attacker", "months later: steals the server's private key (a backup, an old disk)")
    stolen = key
    to_server, to_client = recorded.seen("client"), recorded.seen("server")
    c = int(to_server[0].split()[1], 16)
    session_key = weak_pkcs1_unpad(stolen.weak_decrypt_int(c), stolen.k)
    read = [f"victim: {line}" for line in read_data(to_server, session_key, "client")]
    read += [f"server: {line}" for line in read_data(to_client, session_key, "server")]
    lab.say(
        "attacker",
        f"decrypts the recorded KEY with it: session key {short(session_key, 32)}; "
        "the recording reads:",
    )
    lab.show(read)
    worked = any("hunter2" in line for line in read)
    return Outcome(
        worked,
        "the recorded session, password and secret message included, opened with the "
        "stolen long-term key; so would every session this server ever had",
        {"read": read},
    )


def ephemeral_signature_ok(hello):
    """Check the ephemeral key's signature by the long-term key (§10.1)."""
    expires = hello.expires
    if not isinstance(expires, int) or not 0 <= expires < 2**64:
        return False
    signature = base64.b64decode(hello.obj["ephemeral"].get("signature", ""))
    message = (
        EPHEMERAL_CONTEXT
        + hashlib.sha256(hello.key_der).digest()
        + expires.to_bytes(8, "big")
        + hello.ephemeral_der
    )
    return hello.key.verify_pss(message, signature, salt_length=EPHEMERAL_SALT_LENGTH)


def open_recording(frames, private_key):
    """What the holder of ``private_key`` gets from a recorded KX/1 session.

    ``frames`` is ``[(direction, Frame), ...]`` with direction ``"server"``
    or ``"client"``, each direction in order.  Returns ``(hello,
    plaintexts)``: the HELLO as read, and ``[(direction, bytes), ...]`` for
    every record, or ``None`` when the key does not open the recording.
    """
    hello = runner.read_hello(next(f.payload for d, f in frames if f.verb == "HELLO"))
    key_payload = next(f.payload for d, f in frames if f.verb == "KEY")
    try:
        secret = private_key.decrypt_oaep(key_payload, label=hello.payload)
    except DecryptionError:
        return hello, None
    try:
        return hello, runner.open_with_secret(secret, hello, key_payload, frames)
    except BadRecord:
        return hello, None


def against_kx1(lab):
    bank = Bank()
    with lab.kx1_server(bank, greeting=GREETING) as server:
        lab.say(
            "server", f"the daemon on 127.0.0.1:{server.port}, long-term key {server.fingerprint}"
        )
        with wire.Relay(server.port, "frames") as tap:
            Kx1Client(tap.port, PinnedKey(server.fingerprint)).run(COMMANDS)
            recorded = tap.last()
        lab.say("victim", f"logged in and paid, via 127.0.0.1:{tap.port}, where it was recorded")
        stolen = server.private_key
    lab.say("attacker", "months later, the daemon long stopped: steals its long-term private key")
    frames = [("server", frame) for frame in recorded.seen("server")]
    frames += [("client", frame) for frame in recorded.seen("client")]
    hello, plaintexts = open_recording(frames, stolen)
    key_frame = next(frame for direction, frame in frames if frame.verb == "KEY")

    if hello.ephemeral is None:
        lab.say(
            "attacker",
            "the recorded HELLO has no 'ephemeral' member: the KEY was encrypted under "
            "the long-term key itself",
        )
        if plaintexts is not None:
            lab.say("attacker", "the stolen key decrypts the KEY, and the recording reads:")
            lab.show(
                f"{'victim' if direction == 'client' else 'server'}: {line}"
                for direction, data in plaintexts
                for line in data.decode("utf-8", "replace").splitlines()
            )
        return Outcome(
            plaintexts is not None,
            f"{NOT_OFFERED}: the stolen long-term key "
            + (
                "opened the recording, as in the exercise"
                if plaintexts is not None
                else "did not open it"
            )
            + ".  Once HELLO offers an ephemeral key (docs/spec/kx1.rst §10), the KEY is "
            "encrypted under it instead, and this lesson shows the recording staying closed",
            {"hello": hello, "plaintexts": plaintexts},
            pending=NOT_OFFERED,
        )

    lab.say(
        "attacker",
        f"the recorded HELLO offered an ephemeral RSA-{hello.ephemeral.size} key "
        f"{keys.fingerprint(hello.ephemeral_der)}, expiring at {hello.expires}, signed by "
        f"the long-term key ({'valid' if ephemeral_signature_ok(hello) else 'INVALID'} "
        "signature); the KEY "
        f"({len(key_frame.payload)} bytes) was encrypted under it",
    )
    lab.say(
        "attacker",
        "tries the stolen long-term key on the recorded KEY: "
        + (
            "decryption failed; the records stay closed"
            if plaintexts is None
            else "it OPENED the recording"
        ),
    )
    lab.say(
        "server",
        "destroyed the ephemeral key minutes after that session, so no key left anywhere opens it",
    )
    return Outcome(
        plaintexts is not None,
        "the stolen long-term key does not decrypt the recorded KEY (it was encrypted "
        "under an ephemeral key the server destroyed): the recording stays closed"
        if plaintexts is None
        else "the stolen long-term key opened a recording made with an ephemeral key "
        "(this is a bug)",
        {"hello": hello, "plaintexts": plaintexts},
    )
