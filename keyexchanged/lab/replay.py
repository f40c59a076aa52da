"""Lesson replay: a recorded session, played again, is accepted again.

The weak half attacks the original exercise's scheme, DELIBERATELY INSECURE
(:mod:`keyexchanged.lab.weak`), for teaching.  docs/lab.rst explains it.

In the exercise the session key is whatever the client's KEY decrypts to,
and nothing the server contributes goes into it.  So the bytes of a recorded
session are a valid session on their own: an attacker who sends them again,
without understanding one of them, is logged in as the victim and repeats
every command — here a payment.

In KX/1 the server's HELLO carries a fresh 32-byte nonce, and the KEY is
OAEP-encrypted with the HELLO payload as its label (docs/spec/kx1.rst §3); the
keys also derive from the nonce and the transcript (§4).  A KEY replayed
into a new connection does not decode under the new label (implicit
rejection: the server just picks a random secret), so the replayed records
do not open: ``ERROR bad-record``.
"""

from keyexchanged.framing import BAD_RECORD
from keyexchanged.handshake import parse_error_payload
from keyexchanged.lab import runner, wire
from keyexchanged.lab.bank import Bank
from keyexchanged.lab.runner import Kx1Client, Outcome
from keyexchanged.lab.weak import WeakServer, weak_client, weak_generate_key
from keyexchanged.trust import PinnedKey

NAME = "replay"
TITLE = "a recorded session, replayed"

WEAK_BITS = 1024
WEAK_EXPONENT = 65537

COMMANDS = ["LOGIN alice hunter2", "PAY 100 TO bob"]


def _describe(payments):
    if not payments:
        return "no payment"
    return "; ".join(
        f"{p.payer} paid {p.amount} to {p.payee} (session {p.session})" for p in payments
    )


def against_weak(lab):
    rng = lab.rng(NAME)
    key = weak_generate_key(WEAK_BITS, WEAK_EXPONENT, rng)
    bank = Bank()
    with WeakServer(key, bank) as server, wire.Relay(server.port, "lines") as tap:
        lab.say("server", f"the exercise's server on 127.0.0.1:{server.port}, RSA-{key.size}")
        weak_client(tap.port, COMMANDS, rng)
        recorded = tap.last().seen("client")
        lab.say(
            "victim",
            f"logged in and paid, via 127.0.0.1:{tap.port}; ledger: {_describe(bank.payments())}",
        )
        lab.say(
            "attacker",
            f"recorded what the victim sent ({len(recorded)} lines: KEY and DATA), "
            "and sends the same lines again on a new connection, reading none of them",
        )
        conn = wire.LineSocket.to(server.port)
        conn.read_line()  # the server's key: not even needed
        conn.send_lines([line.rstrip(b"\n") for line in recorded])
        conn.close_write()
        answers = []
        while (line := conn.read_line()) is not None:
            answers.append(line)
        conn.close()
        replayed = server.sessions[-1].teller
    lab.say(
        "server",
        f"answered the replay with {len(answers)} lines; inside, it read the commands "
        f"{replayed.commands} and logged in {replayed.user}",
    )
    payments = bank.payments()
    lab.say("server", f"ledger: {_describe(payments)}")
    worked = len([p for p in payments if p.payer == "alice"]) == 2
    return Outcome(
        worked,
        "the attacker was taken for alice and her payment was made a second time, without "
        "the attacker knowing her key or her password",
        {"payments": payments, "replayed_user": replayed.user},
    )


def against_kx1(lab):
    bank = Bank()
    with lab.kx1_server(bank) as server:
        lab.say("server", f"the daemon on 127.0.0.1:{server.port}")
        with wire.Relay(server.port, "frames") as tap:
            victim = Kx1Client(tap.port, PinnedKey(server.fingerprint)).run(COMMANDS)
            recorded = tap.last()
        server.wait_for_log("ended:")  # the victim's session is over
        lab.say(
            "victim",
            f"logged in and paid, via 127.0.0.1:{tap.port}: {victim.describe()}; "
            f"ledger: {_describe(bank.payments())}",
        )
        to_server = recorded.seen("client")
        old_hello = runner.read_hello(recorded.seen("server")[0].payload)
        lab.say(
            "attacker",
            "recorded what the victim sent (" + ", ".join(map(str, to_server)) + ") and sends "
            "the same frames again on a new connection",
        )
        conn = wire.FrameSocket.to(server.port)
        new_hello = runner.read_hello(conn.read_frame().payload)
        conn.send(*to_server)
        answers = conn.read_all()
        conn.close()
        lab.say(
            "attacker",
            f"the new HELLO's nonce is {new_hello.nonce[:8].hex()}..., the recorded one was "
            f"{old_hello.nonce[:8].hex()}...: the KEY was sealed to the old HELLO",
        )
        lab.say("server", "answered: " + ", ".join(map(str, answers)))
        ended = server.wait_for_log("ended:", count=2)
    error = next((frame for frame in answers if frame.verb == "ERROR"), None)
    code, detail = parse_error_payload(error.payload) if error is not None else (None, None)
    lab.say("server", f"log: {ended[1]}")
    payments = bank.payments()
    lab.say("server", f"ledger: {_describe(payments)}")
    alice = [p for p in payments if p.payer == "alice"]
    worked = len(alice) != 1 or code != BAD_RECORD
    return Outcome(
        worked,
        f"ERROR {code}: {detail}.  The replayed KEY does not decode under the new HELLO, "
        "so the replayed records do not open, and the payment was made once"
        if not worked
        else "KX/1 accepted a replayed session (this is a bug)",
        {"payments": payments, "code": code, "answers": answers, "log": ended[1]},
    )
