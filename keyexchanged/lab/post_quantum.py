"""Lesson post-quantum: store now, decrypt later.

Forward secrecy (lesson forward-secrecy) protects a recording against a
long-term key stolen later.  It does not protect it against someone who
can later *factor the ephemeral RSA modulus*, which travels in the clear in
the recorded HELLO: a large quantum computer running Shor's algorithm
could.  The lab has no quantum computer; it stands one in by taking the
daemon's ephemeral private key at the time of the session, which is
exactly what factoring its public modulus would yield.

The weak half records a KX/1 revision 2 session (the client sends only the
RSA ciphertext; the daemon serves it as revision 2 does) and opens it with
that key.  The KX/1 half records a revision 3 session (docs/spec/kx1.rst
§12): the KEY also carries an ML-KEM-768 ciphertext, and the session keys
are derived from both secrets.  The same key recovers the RSA secret and
nothing more: without the ML-KEM secret the records stay closed.
"""

from keyexchanged.lab import runner, wire
from keyexchanged.lab.bank import Bank
from keyexchanged.lab.runner import Kx1Client, Outcome, short
from keyexchanged.records import GCM, OCB, BadRecord
from keyexchanged.rsa import DecryptionError
from keyexchanged.trust import PinnedKey

NAME = "post-quantum"
TITLE = "a recording opens once its ephemeral key is factored"

COMMANDS = ["LOGIN alice hunter2", "PAY 100 TO bob"]
GREETING = ["The secret message: the vault code is 4711."]

#: Why the lesson cannot run against this daemon.
NOT_OFFERED = "the daemon offers no ephemeral key (started with --no-forward-secrecy?)"


def _record(lab, post_quantum):
    """One session through a recording relay; ``(frames, the ephemeral
    private key the HELLO offered or None, the session)``."""
    bank = Bank()
    with lab.kx1_server(bank, greeting=GREETING) as server:
        with wire.Relay(server.port, "frames") as tap:
            ephemeral_keys = server.service.factory.ephemeral_keys
            # What factoring the modulus in the recorded HELLO would give.
            factored = ephemeral_keys.current.private_key if ephemeral_keys else None
            session = Kx1Client(
                tap.port, PinnedKey(server.fingerprint), post_quantum=post_quantum
            ).run(COMMANDS)
            recorded = tap.last()
    frames = [("server", frame) for frame in recorded.seen("server")]
    frames += [("client", frame) for frame in recorded.seen("client")]
    return frames, factored, session


def _attack(lab, frames, factored):
    """Decrypt the RSA half of the recorded KEY with the factored key, then
    try to open the records with what that gives.  ``(hello, rsa secret or
    None, plaintexts or None)``."""
    hello = runner.read_hello(next(f.payload for d, f in frames if f.verb == "HELLO"))
    key_payload = next(f.payload for d, f in frames if f.verb == "KEY")
    k = (factored.n.bit_length() + 7) // 8
    rsa_part, rest = key_payload[:k], key_payload[k:]
    lab.say(
        "attacker",
        f"the recorded KEY is {len(key_payload)} bytes: an RSA-OAEP ciphertext of {k}"
        + (f" and {len(rest)} more (an ML-KEM-768 ciphertext)" if rest else ", nothing else"),
    )
    try:
        secret = factored.decrypt_oaep(rsa_part, label=hello.payload)
    except DecryptionError:
        return hello, None, None
    lab.say("attacker", f"decrypts the RSA half with the factored key: secret {short(secret, 32)}")
    # The attacker tries every schedule KX/1 has with what it holds: the
    # RSA secret alone, under either record cipher.
    for cipher in (GCM, OCB):
        try:
            return (
                hello,
                secret,
                runner.open_with_secret(secret, hello, key_payload, frames, cipher=cipher),
            )
        except BadRecord:
            continue
    return hello, secret, None


def _show(lab, plaintexts):
    lab.show(
        f"{'victim' if direction == 'client' else 'server'}: {line}"
        for direction, data in plaintexts
        for line in data.decode("utf-8", "replace").splitlines()
    )


def against_weak(lab):
    lab.say("lab", "a KX/1 revision 2 client: KEY carries the RSA ciphertext only")
    frames, factored, _ = _record(lab, post_quantum=False)
    if factored is None:
        return Outcome(False, NOT_OFFERED, pending=NOT_OFFERED)
    lab.say("victim", "logged in and paid; the session was recorded")
    lab.say(
        "attacker",
        f"years later: factors the ephemeral RSA-{factored.n.bit_length()} modulus from the "
        "recorded HELLO (a quantum computer could; the lab takes the daemon's key instead)",
    )
    hello, secret, plaintexts = _attack(lab, frames, factored)
    if plaintexts is not None:
        lab.say("attacker", "derives the session keys from it, and the recording reads:")
        _show(lab, plaintexts)
    worked = plaintexts is not None and any(b"hunter2" in data for _, data in plaintexts)
    return Outcome(
        worked,
        "the recorded revision 2 session, password and secret message included, opened "
        "with the factored ephemeral key: forward secrecy does not outlast RSA itself"
        if worked
        else "the factored key did not open the revision 2 recording (this is a bug)",
        {"hello": hello, "secret": secret, "plaintexts": plaintexts},
    )


def against_kx1(lab):
    lab.say("lab", "a KX/1 revision 3 client: KEY carries the RSA and the ML-KEM ciphertexts")
    frames, factored, session = _record(lab, post_quantum=True)
    if factored is None:
        return Outcome(False, NOT_OFFERED, pending=NOT_OFFERED)
    lab.say("victim", f"logged in and paid; the session was recorded ({session.describe()})")
    lab.say(
        "attacker",
        f"years later: factors the ephemeral RSA-{factored.n.bit_length()} modulus, as before",
    )
    hello, secret, plaintexts = _attack(lab, frames, factored)
    lab.say(
        "attacker",
        "derives keys from the RSA secret alone: "
        + (
            "the records do not open; the keys also need the ML-KEM secret, which only "
            "the destroyed ML-KEM private key (or breaking ML-KEM) gives"
            if plaintexts is None
            else "the recording OPENED"
        ),
    )
    hybrid = hello.obj.get("mlkem768") is not None
    return Outcome(
        plaintexts is not None,
        "the factored ephemeral key recovers the RSA secret, not the session: the keys "
        "also depend on the ML-KEM-768 secret, so the recording stays closed unless RSA "
        "and ML-KEM are both broken"
        if plaintexts is None
        else "the factored RSA key opened a revision 3 recording (this is a bug)",
        {"hello": hello, "secret": secret, "plaintexts": plaintexts, "hybrid": hybrid},
    )
