"""ML-KEM: what revision 3's hybrid key exchange adds to a full handshake.

Server side, µs per KEY, measured the way the daemon runs with
``--workers 0`` (every operation in one process): the state machine takes
HELLO's KEY and derives the keys, with an ephemeral RSA-3072 key, for

- ``revision 2``: a KEY of 384 bytes (RSA-OAEP only),
- ``revision 3``: a KEY of 384 + 1 088 bytes (and ML-KEM-768
  decapsulation through pycryptodome's HPKE, and the hybrid schedule).

The difference is the ML-KEM cost per handshake (issue target: at most
0.3 ms).  Also measured on their own: decapsulation, encapsulation (the
client's half) and the key pair that comes with each ephemeral key (made
once a minute).  Each figure is the median over rounds.
"""

import sys
import time

import harness

from keyexchanged import handshake, mlkem
from keyexchanged.ephemeral import signed_key
from keyexchanged.framing import encode_frame
from keyexchanged.rsa import generate_private_key

BITS = 3072


def add_options(parser):
    parser.add_argument("--rounds", type=int, default=15)


def ephemeral_key(private, long_term, post_quantum):
    """An ephemeral key offer as the daemon makes it, with or without ML-KEM."""
    return signed_key(private, int(time.time()) + 600, long_term, post_quantum)


def _handshake_inputs(long_term, offer, post_quantum):
    """(identity, KEY frame) for one client of the revision."""
    identity = handshake.ServerIdentity(long_term)
    server = handshake.ServerConnection(identity, ephemeral=offer, random=lambda n: b"\1" * n)
    server.start()
    hello = server.data_to_send()
    client = handshake.ClientConnection(
        post_quantum=post_quantum, allow_classical=True, clock=lambda: offer.expires - 60
    )
    client.receive_data(hello)
    client.accept_key()
    key, _ = harness_frames(client.data_to_send())
    return identity, encode_frame(*key)


def harness_frames(data):
    out = []
    handshake.FrameDecoder(lambda verb, payload: out.append((verb, payload))).feed(data)
    return out


def time_key(identity, offer, key_frame):
    """Seconds for one server to take one KEY (decryption, decapsulation,
    the schedule and its key confirmation)."""
    server = handshake.ServerConnection(identity, ephemeral=offer, random=lambda n: b"\1" * n)
    server.start()
    server.data_to_send()
    started = time.perf_counter()
    server.receive_data(key_frame)
    elapsed = time.perf_counter() - started
    if not server.data_to_send():
        raise RuntimeError("the server sent no key confirmation")
    return elapsed


def main():
    args = harness.arguments(__doc__.split("\n\n")[0], add_options)
    rounds = 3 if args.quick else args.rounds
    report = harness.Report("ML-KEM-768 in the handshake (RSA-3072)", args.summary)
    long_term = generate_private_key(BITS)
    private = generate_private_key(BITS)
    offers = {
        "revision 2": ephemeral_key(private, long_term=long_term, post_quantum=False),
        "revision 3": ephemeral_key(private, long_term=long_term, post_quantum=True),
    }
    inputs = {
        name: _handshake_inputs(long_term, offer, name == "revision 3")
        for name, offer in offers.items()
    }
    mlkem_key = mlkem.generate()
    public = mlkem.public_key(mlkem_key.ek)
    ciphertext, _ = mlkem.encapsulate(public)
    micro = {
        "decapsulate": lambda: mlkem.decapsulate(mlkem_key, ciphertext),
        "encapsulate": lambda: mlkem.encapsulate(public),
        "key pair": mlkem.generate,
    }
    order = list(offers) + list(micro)
    samples = {}
    for _, name in harness.interleave(order, rounds):
        if name in offers:
            identity, frame = inputs[name]
            samples.setdefault(name, []).append(time_key(identity, offers[name], frame) * 1e6)
        else:
            started = time.perf_counter()
            for _ in range(200):
                micro[name]()
            samples.setdefault(name, []).append((time.perf_counter() - started) / 200 * 1e6)
    figures = {
        name: report.figure(
            "server CPU per full KEY" if name in offers else f"ML-KEM-768 {name}",
            name,
            samples[name],
            "µs",
        )
        for name in order
    }
    report.ratio(
        "server CPU per full KEY, revision 3 / revision 2",
        figures["revision 3"],
        figures["revision 2"],
    )
    report.note(
        "ML-KEM adds (revision 3 − revision 2): "
        f"{figures['revision 3'].median - figures['revision 2'].median:.0f} µs per full handshake"
    )
    report.save()


if __name__ == "__main__":
    sys.exit(main())
