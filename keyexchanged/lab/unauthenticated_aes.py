"""Lesson unauthenticated-aes: encryption is not integrity.

The weak half attacks the original exercise's scheme, DELIBERATELY INSECURE
(:mod:`keyexchanged.lab.weak`), for teaching.  docs/lab.rst explains it.

AES-CTR encrypts by XOR with a keystream: flip a bit of the ciphertext and
the same bit of the plaintext flips.  An attacker who knows (or guesses)
where "100" sits turns it into "900" without knowing the key — and nothing
tells the server.  And since the end of the TCP stream is the only end the
exercise knows, an attacker who cuts the stream early (dropping a CANCEL)
leaves a server that believes the session ended normally.

KX/1 seals every record with AES-256-GCM (docs/spec/kx1.rst §5): the 16-byte tag
covers the ciphertext, the verb and the record's sequence number, so a
flipped bit is ``ERROR bad-record`` and nothing reaches the application.
And a session ends with a sealed END: a connection that closes before it is
reported to the application as ``Truncated``, not as a clean end.
"""

from keyexchanged.framing import BAD_RECORD, TAG_LENGTH
from keyexchanged.lab import wire
from keyexchanged.lab.bank import Bank
from keyexchanged.lab.replay import _describe
from keyexchanged.lab.runner import Kx1Client, Outcome
from keyexchanged.lab.weak import WeakServer, weak_client, weak_generate_key
from keyexchanged.trust import PinnedKey

NAME = "unauthenticated-aes"
TITLE = "AES without a tag, and a stream without an end"

WEAK_BITS = 1024
WEAK_EXPONENT = 65537

PAY = ["LOGIN alice hunter2", "PAY 100 TO bob"]
#: Where the attacker flips: the second command, byte 4 ("1" of "100").
FLIP_COMMAND, FLIP_OFFSET = 1, 4
FLIP_MASK = ord("1") ^ ord("9")

CANCELLED = ["LOGIN alice hunter2", "PAY 100 TO bob", "CANCEL"]
#: Where the attacker cuts: before the third command (the CANCEL).
CUT_COMMAND = 2


def _flip(data, offset, mask):
    data = bytearray(data)
    data[offset] ^= mask
    return bytes(data)


def _weak_hook(action):
    """A relay hook that applies ``action`` to the n-th DATA line the client sends."""

    def hook(line, relayed):
        if not line.startswith(b"DATA "):
            return line
        index = relayed.notes["commands"] = relayed.notes.get("commands", -1) + 1
        return action(index, line)

    return hook


def against_weak(lab):
    rng = lab.rng(NAME)
    key = weak_generate_key(WEAK_BITS, WEAK_EXPONENT, rng)

    def flip(index, line):
        if index != FLIP_COMMAND:
            return line
        ciphertext = bytes.fromhex(line[5:].strip().decode())
        return b"DATA " + _flip(ciphertext, FLIP_OFFSET, FLIP_MASK).hex().encode() + b"\n"

    def cut(index, line):
        return wire.CUT if index == CUT_COMMAND else line

    bank = Bank()
    with WeakServer(key, bank) as server:
        lab.say("server", f"the exercise's server on 127.0.0.1:{server.port}, AES-128-CTR, no tag")
        with wire.Relay(server.port, "lines", to_server=_weak_hook(flip)) as mitm:
            victim = weak_client(mitm.port, PAY, rng)
            mitm.last()
        flipped = server.sessions[-1].teller
        lab.say("victim", f"sent {PAY} via the attacker at 127.0.0.1:{mitm.port}")
        lab.say(
            "attacker",
            f"XORed byte {FLIP_OFFSET} of the second DATA line with "
            f"0x{FLIP_MASK:02x} ('1' XOR '9'), knowing nothing of the key",
        )
        lab.say("server", f"decrypted and acted on: {flipped.commands}")
        lab.say("victim", f"read back {victim.received}: its program checks nothing")
        flip_payments = bank.payments()
        lab.say("server", f"ledger: {_describe(flip_payments)}")

        bank_before = len(bank.payments())
        with wire.Relay(server.port, "lines", to_server=_weak_hook(cut)) as mitm:
            weak_client(mitm.port, CANCELLED, rng)
            mitm.last()
        truncated = server.sessions[-1].teller
        lab.say(
            "victim",
            f"sent {CANCELLED}: changed its mind, the CANCEL withdraws the payment",
        )
        lab.say(
            "attacker",
            "dropped the CANCEL line and closed both connections, as if each side had finished",
        )
        lab.say(
            "server",
            f"read {truncated.commands}, then the end of the stream: as far as it can tell a "
            f"{truncated.ended} end",
        )
        cut_payments = bank.payments()[bank_before:]
        lab.say("server", f"ledger: {_describe(cut_payments)}")
    flip_worked = any(p.amount == 900 for p in flip_payments)
    cut_worked = any(p.amount == 100 for p in cut_payments)
    return Outcome(
        flip_worked and cut_worked,
        "PAY 100 became PAY 900 with one XOR, and a cancelled payment was made because "
        "the CANCEL was cut off; the server noticed neither",
        {"flip_payments": flip_payments, "cut_payments": cut_payments},
    )


def _kx1_hook(action):
    """A relay hook that applies ``action`` to the n-th client record with data
    (records of more than a tag: the empty MSG after KEY is skipped)."""

    def hook(frame, relayed):
        if frame.verb != "MSG" or len(frame.payload) <= TAG_LENGTH:
            return frame
        index = relayed.notes["commands"] = relayed.notes.get("commands", -1) + 1
        return action(index, frame)

    return hook


def against_kx1(lab):
    def flip(index, frame):
        if index != FLIP_COMMAND:
            return frame
        # The record is ciphertext ‖ tag, and GCM encrypts with CTR: the
        # same XOR at the same place would make the same change.
        return wire.Frame("MSG", _flip(frame.payload, FLIP_OFFSET, FLIP_MASK))

    def cut(index, frame):
        return wire.CUT if index == CUT_COMMAND else frame

    bank = Bank()
    with lab.kx1_server(bank) as server:
        lab.say("server", f"the daemon on 127.0.0.1:{server.port}: AES-256-GCM records, END")
        with wire.Relay(server.port, "frames", to_server=_kx1_hook(flip)) as mitm:
            flipped = Kx1Client(mitm.port, PinnedKey(server.fingerprint)).run(PAY)
            mitm.last()
        flip_log = server.wait_for_log("ended:")[-1]
        lab.say("victim", f"sent {PAY}, each command a record, via the attacker")
        lab.say(
            "attacker",
            f"XORed byte {FLIP_OFFSET} of the second record, the same flip as before",
        )
        lab.say("victim", flipped.describe())
        lab.say("server", f"log: {flip_log}")
        lab.say("server", f"ledger: {_describe(bank.payments())}")

        with wire.Relay(server.port, "frames", to_server=_kx1_hook(cut)) as mitm:
            truncated = Kx1Client(mitm.port, PinnedKey(server.fingerprint)).run(CANCELLED)
            mitm.last()
        cut_log = server.wait_for_log("ended:", count=2)[-1]
        lab.say("victim", f"sent {CANCELLED}, then END")
        lab.say(
            "attacker",
            "dropped the CANCEL record and the END, and closed both connections",
        )
        lab.say("server", f"log: {cut_log}")
        lab.say("victim", truncated.describe())
        payments = bank.payments()
        lab.say("server", f"ledger: {_describe(payments)}")
    flip_refused = flipped.code == BAD_RECORD and "ended: bad-record" in flip_log
    cut_refused = "ended: truncated" in cut_log
    worked = bool(payments) or not (flip_refused and cut_refused)
    return Outcome(
        worked,
        f"the flipped record failed its tag: ERROR {BAD_RECORD}, and nothing reached the "
        "bank; the cut session was reported to the bank as truncated (no END), so it "
        "committed nothing"
        if not worked
        else "KX/1 let a tampered or truncated session through (this is a bug)",
        {
            "flipped": flipped,
            "truncated": truncated,
            "flip_log": flip_log,
            "cut_log": cut_log,
            "payments": payments,
        },
    )
