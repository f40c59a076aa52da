"""Lesson mitm: nobody checks the server's key.

The weak half attacks the original exercise's scheme, DELIBERATELY INSECURE
(:mod:`keyexchanged.lab.weak`), for teaching.  docs/lab.rst explains it.

"Here is my public key" proves nothing: whoever is on the path can say it.
The attacker sits on a second port, hands the victim a key of its own,
decrypts the session key the victim sends, re-encrypts it to the real server
and relays the session, reading every line.  Neither side notices.

A KX/1 client checks the key in HELLO before it encrypts anything to it
(docs/spec/kx1.rst §7): a pinned fingerprint, known hosts or a CA.  A key it does
not trust ends the connection with ``ERROR untrusted-key``, and KEY is never
sent: the attacker gets nothing to decrypt.
"""

import base64
import json
import os
import time

from keyexchanged import keys, knownhosts, rsa
from keyexchanged.ephemeral import sign_ephemeral
from keyexchanged.lab import wire
from keyexchanged.lab.bank import Bank
from keyexchanged.lab.runner import Kx1Client, Outcome, short
from keyexchanged.lab.weak import (
    WeakPublicKey,
    WeakServer,
    WeakStream,
    weak_client,
    weak_generate_key,
    weak_pkcs1_pad,
    weak_pkcs1_unpad,
)
from keyexchanged.trust import PinnedKey

NAME = "mitm"
TITLE = "a man in the middle swaps the server's key"

WEAK_BITS = 1024
WEAK_EXPONENT = 65537

COMMANDS = ["LOGIN alice hunter2", "PAY 100 TO bob"]
GREETING = ["The secret message: the vault code is 4711."]


def against_weak(lab):
    rng = lab.rng(NAME)
    attacker_rng = lab.rng(NAME + " attacker")
    server_key = weak_generate_key(WEAK_BITS, WEAK_EXPONENT, rng)
    attacker_key = weak_generate_key(WEAK_BITS, WEAK_EXPONENT, attacker_rng)
    bank = Bank()

    def to_client(line, relayed):
        notes = relayed.notes
        if line.startswith(b"PUBKEY "):
            notes["server_key"] = WeakPublicKey.from_line(line.rstrip(b"\n"))
            return attacker_key.line() + b"\n"  # our key instead of the server's
        if line.startswith(b"DATA ") and "from_server" in notes:
            text = notes["from_server"].apply(bytes.fromhex(line[5:].strip().decode()))
            notes["read"].append("server: " + text.decode("utf-8", "replace"))
        return line

    def to_server(line, relayed):
        notes = relayed.notes
        if line.startswith(b"KEY "):
            # Decrypt with our own key, then encrypt again to the real server.
            m = attacker_key.weak_decrypt_int(int(line.split()[1], 16))
            session_key = notes["key"] = weak_pkcs1_unpad(m, attacker_key.k)
            notes["from_client"] = WeakStream(session_key, "client")
            notes["from_server"] = WeakStream(session_key, "server")
            notes["read"] = []
            real = notes["server_key"]
            return b"KEY %x\n" % real.weak_encrypt_int(
                weak_pkcs1_pad(session_key, real.k, attacker_rng)
            )
        if line.startswith(b"DATA ") and "from_client" in notes:
            text = notes["from_client"].apply(bytes.fromhex(line[5:].strip().decode()))
            notes["read"].append("victim: " + text.decode("utf-8", "replace"))
        return line

    with (
        WeakServer(server_key, bank, greeting=GREETING) as server,
        wire.Relay(server.port, "lines", to_server, to_client) as mitm,
    ):
        lab.say(
            "server", f"the exercise's server on 127.0.0.1:{server.port}, RSA-{server_key.size}"
        )
        lab.say(
            "attacker",
            f"listens on 127.0.0.1:{mitm.port} and relays to the server; the victim "
            "connects there (on a real network: an ARP or DNS spoof, a rogue Wi-Fi)",
        )
        victim = weak_client(mitm.port, COMMANDS, rng)
        relayed = mitm.last()
    notes = relayed.notes
    lab.say(
        "victim",
        f"took the key it was given, n = {short(victim.server_key.n)} (the attacker's; the "
        f"server's is {short(server_key.n)}), sent its session key and commands; it read back:",
    )
    lab.show(victim.received)
    read = notes.get("read", [])
    lab.say("attacker", "swapped the key, decrypted the session key, and read all of it:")
    lab.show(read)
    worked = notes.get("key") == victim.key and any("hunter2" in line for line in read)
    return Outcome(
        worked,
        "the secret message and alice's password, read by the man in the middle; "
        "the session worked and neither side noticed",
        {"read": read, "victim_received": victim.received, "payments": bank.payments()},
    )


def against_kx1(lab):
    bank = Bank()
    attacker_key = rsa.generate_private_key(2048)
    attacker_der = keys.public_key_to_der(attacker_key.public_key())
    # A careful attacker also offers an ephemeral key of its own, signed by
    # its own key, so that the signature check passes and only the check of
    # the long-term key is left to stop it.
    attacker_ephemeral = rsa.generate_private_key(2048)
    ephemeral_der = keys.public_key_to_der(attacker_ephemeral.public_key())
    expires = int(time.time()) + 120
    ephemeral_member = {
        "key": base64.b64encode(ephemeral_der).decode("ascii"),
        "expires": expires,
        "signature": base64.b64encode(sign_ephemeral(attacker_key, ephemeral_der, expires)).decode(
            "ascii"
        ),
    }

    def swap_key(frame, relayed):
        if frame.verb != "HELLO":
            return frame
        hello = json.loads(frame.payload)
        hello["key"] = base64.b64encode(attacker_der).decode("ascii")
        if "ephemeral" in hello:
            hello["ephemeral"] = ephemeral_member
        return wire.Frame("HELLO", json.dumps(hello).encode("utf-8"))

    with (
        lab.kx1_server(bank, greeting=GREETING) as server,
        wire.Relay(server.port, "frames", to_client=swap_key) as mitm,
    ):
        lab.say(
            "server",
            f"the daemon on 127.0.0.1:{server.port}, key {server.fingerprint}",
        )
        lab.say(
            "attacker",
            f"on 127.0.0.1:{mitm.port}, puts its own key in HELLO: "
            f"{keys.fingerprint(attacker_der)}",
        )

        pinned = Kx1Client(mitm.port, PinnedKey(server.fingerprint)).run(COMMANDS)
        pinned_frames = mitm.last().seen("client")
        lab.say("victim 1", f"pinned --fingerprint {server.fingerprint}: {pinned.describe()}")
        lab.say("attacker", "received from victim 1: " + ", ".join(map(str, pinned_frames)))

        known_hosts = lab.path("known_hosts")
        with open(known_hosts, "w") as f:
            f.write(f"127.0.0.1:{mitm.port} {server.fingerprint}\n")
        os.chmod(known_hosts, 0o600)
        trust = knownhosts.KnownHostsTrust(known_hosts, mitm.port)
        known = Kx1Client(mitm.port, trust).run(COMMANDS)
        known_frames = mitm.last().seen("client")
        lab.say(
            "victim 2",
            f"known hosts (it had seen the real key at 127.0.0.1:{mitm.port} before):",
        )
        lab.show((known.explanation or "").splitlines())
        lab.say("attacker", "received from victim 2: " + ", ".join(map(str, known_frames)))

    sent = [frame.verb for frame in pinned_frames + known_frames]
    refused = all(s.outcome == "untrusted" for s in (pinned, known))
    worked = "KEY" in sent or not refused
    return Outcome(
        worked,
        "ERROR untrusted-key from both victims, before KEY: no secret was ever encrypted "
        "to the attacker's key, nothing to read, nothing relayed to the server"
        if not worked
        else "a KX/1 client sent KEY to the attacker (this is a bug)",
        {
            "pinned": pinned,
            "known": known,
            "sent": sent,
            "payments": bank.payments(),
        },
    )
