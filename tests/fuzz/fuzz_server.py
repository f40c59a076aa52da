"""Fuzz the frame parser and the server state machine with atheris.

    make fuzz SECONDS=120
    .venv/bin/python tests/fuzz/fuzz_server.py -max_total_time=120 tests/fuzz/corpus

:func:`fuzz_one_input` is the target.  It takes any bytes and raises only
when an invariant breaks (or when the code under test raises, which is the
same thing: the server must never raise on input).
``tests/test_fuzz_regressions.py`` replays every file of
``tests/fuzz/regressions/`` and ``tests/fuzz/corpus/`` through it without
atheris, so a crash found once stays fixed.

Input layout.  Byte 0 holds flags: bit 0 makes the server require AUTH
(from the vector client key); bit 1 selects *ops* mode; bits 2–7 are the
chunk size the stream is fed in (0: all at once).  In raw mode the rest is
the byte stream itself.  In ops mode the rest is a program whose steps add
to the stream, so that the fuzzer reaches what lies behind the record
layer instead of dying on a forged tag:

    0 n BYTES    n raw bytes                 4   END, sealed
    1            the vector KEY frame        5   UPDATE, sealed (key steps)
    2 nn BYTES   AUTH sealing those bytes    6   the vector AUTH frame
    3 n BYTES    MSG sealing those bytes     7 v nn  a bare header: verb v, length nn

("sealed" means with the client key the vector KEY establishes; n is one
byte, nn two, big-endian.)  The server uses the vector nonce, so the
vector KEY is valid and the sealed records open when the steps are in an
honest order.

Revision 3.  An input that starts with ``KX3`` runs a revision-3 server
instead: it offers the ephemeral RSA and ML-KEM-768 keys of
``kx1-revision3.json`` and names AES-256-OCB, with the vector nonce of its
OCB session.  The byte after ``KX3`` holds the flags as above, bit 0 now
meaning ``require_post_quantum``; in ops mode the steps are

    0 n BYTES    n raw bytes                 4   END, sealed
    1            the vector hybrid KEY       5   UPDATE, sealed (key steps)
    2 n          that KEY, n bytes short     6 n BYTES  that KEY, its ML-KEM
    3 n BYTES    MSG sealing those bytes            ciphertext made of BYTES
    7            the RSA half alone (a revision-2 KEY)

sealed with the client key of that session, in AES-256-OCB.

Run as a script, new inputs go to a scratch directory (the seed corpus is
only read; set ``FUZZ_WORK_DIR`` to keep them from one run to the next) and
crash files to ``tests/fuzz/regressions/``, where the regression test picks
them up.
"""

import binascii
import json
import os
import sys
import tempfile

from keyexchanged import handshake, keys, mlkem, schedule, tickets
from keyexchanged.ephemeral import EphemeralKey
from keyexchanged.framing import (
    ERROR_CODES,
    FRAME_TOO_LARGE,
    HEADER_MAX,
    MALFORMED_FRAME,
    MAX_PAYLOAD,
    FrameDecoder,
    ProtocolError,
    encode_frame,
)
from keyexchanged.records import OCB, RecordSealer

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")
REGRESSIONS = os.path.join(HERE, "regressions")

# The vectors beside the specification (tests/vectors.py is not importable
# when this file runs as a script).
_VECTORS = os.path.join(HERE, os.pardir, os.pardir, "docs", "spec", "vectors", "kx1-handshake.json")
with open(_VECTORS, encoding="utf-8") as _f:
    VECTORS = json.load(_f)
with open(os.path.join(os.path.dirname(_VECTORS), "kx1-revision3.json"), encoding="utf-8") as _f:
    VECTORS3 = json.load(_f)


def _hex(name):
    return binascii.unhexlify(VECTORS[name])


def _record(name):
    return binascii.unhexlify(VECTORS["records"][name])


IDENTITY = handshake.ServerIdentity(
    keys.private_key_from_bytes(VECTORS["server_private_key_pem"].encode())
)
AUTHORIZED = frozenset({VECTORS["client_fingerprint"]})


def ticket_issuer():
    """Resumption on, with a fixed clock: RESUME frames are opened, not
    refused.  A new one for every server, as a ticket opens once on each
    (and each input is fed again in other chunks)."""
    return tickets.TicketIssuer(
        tickets.TicketKeys([b"\x07" * 32]),
        clock=lambda: 1_800_000_000,
        random=lambda n: b"\x09" * n,
    )


KEY_FRAME = encode_frame("KEY", _hex("key_payload"))

REVISION3 = b"KX3"
_FULL3 = VECTORS3["sessions"][OCB]["full"]


def _hex3(name):
    return binascii.unhexlify(_FULL3[name])


def _revision3_offer():
    """The vector's ephemeral RSA and ML-KEM keys with its signatures (the
    PSS salts are the vector's, so HELLO is the vector's byte for byte)."""
    long_term = IDENTITY.private_key
    ephemeral = keys.private_key_from_bytes(VECTORS3["ephemeral_private_key_pem"].encode())
    der = keys.public_key_to_der(ephemeral.public_key())
    expires = VECTORS3["ephemeral_expires"]
    mlkem_key = mlkem.from_seed(binascii.unhexlify(VECTORS3["mlkem_seed"]))
    signature = long_term.sign_pss(
        schedule.ephemeral_message(IDENTITY.der, expires, der),
        salt_length=32,
        salt=binascii.unhexlify(VECTORS3["ephemeral_pss_salt"]),
    )
    hybrid_signature = long_term.sign_pss(
        schedule.hybrid_message(IDENTITY.der, expires, der, mlkem_key.ek),
        salt_length=32,
        salt=binascii.unhexlify(VECTORS3["hybrid_pss_salt"]),
    )
    return EphemeralKey(ephemeral, expires, signature, mlkem_key, hybrid_signature)


OFFER3 = _revision3_offer()
KEY3 = _hex3("key_payload")
RSA_LENGTH3 = len(KEY3) - mlkem.CIPHERTEXT_LENGTH
AUTH_FRAME = encode_frame("AUTH", _record("client_auth_seq0"))
VERBS = [*MAX_PAYLOAD, "PING", "key", "ABCDEFGHI", ""]

AUTH_REQUIRED = 0x01
OPS = 0x02

SERVER_EVENTS = (
    handshake.HandshakeComplete,
    handshake.DataReceived,
    handshake.EndReceived,
    handshake.ErrorReceived,
    handshake.ProtocolFailed,
)


class InvariantBroken(AssertionError):
    """The code under test did something it must never do."""


def check(condition, message):
    # Not ``assert``: the checks must hold under ``python -O`` too.
    if not condition:
        raise InvariantBroken(message)


# -- building the stream --------------------------------------------------------


class _Reader:
    def __init__(self, data):
        self.data = data
        self.pos = 0

    def take(self, n):
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def number(self, width):
        return int.from_bytes(self.take(width), "big")

    @property
    def done(self):
        return self.pos >= len(self.data)


def build_stream(program, revision3=False):
    """Run an ops-mode program (see the module docstring); return the bytes."""
    reader = _Reader(program)
    if revision3:
        sealer = RecordSealer(_hex3("client_key"), cipher=OCB)
    else:
        sealer = RecordSealer(_hex("client_key"))
    out = []

    def sealed(verb, plaintext=b""):
        payload = sealer.seal(verb, plaintext)
        out.append(encode_frame(verb, payload[: MAX_PAYLOAD[verb]]))

    while not reader.done:
        op = reader.take(1)[0] & 7
        if revision3 and op in (1, 2, 6, 7):
            out.append(_key3(op, reader))
        elif op == 0:
            out.append(reader.take(reader.number(1)))
        elif op == 1:
            out.append(KEY_FRAME)
        elif op == 2:
            sealed("AUTH", reader.take(reader.number(2)))
        elif op == 3:
            sealed("MSG", reader.take(reader.number(1)))
        elif op == 4:
            sealed("END")
        elif op == 5:
            out.append(encode_frame("UPDATE", sealer.seal_update()))
        elif op == 6:
            out.append(AUTH_FRAME)
        else:
            verb = VERBS[reader.number(1) % len(VERBS)]
            out.append(b"%s %d\r\n" % (verb.encode("ascii"), reader.number(2)))
    return b"".join(out)


def _key3(op, reader):
    """A revision-3 KEY frame, honest or not (ops 1, 2, 6, 7)."""
    if op == 1:
        return encode_frame("KEY", KEY3)
    if op == 2:
        return encode_frame("KEY", KEY3[: len(KEY3) - reader.number(1)])
    if op == 6:
        pattern = reader.take(reader.number(1)) or b"\0"
        altered = (pattern * (mlkem.CIPHERTEXT_LENGTH // len(pattern) + 1))[
            : mlkem.CIPHERTEXT_LENGTH
        ]
        return encode_frame("KEY", KEY3[:RSA_LENGTH3] + altered)
    return encode_frame("KEY", KEY3[:RSA_LENGTH3])


def decode_input(data):
    """``(stream, chunk size or None, AUTH required)`` for one fuzz input;
    for a revision-3 input (``KX3`` first), the third is
    ``require_post_quantum``."""
    revision3 = data[:3] == REVISION3
    if revision3:
        data = data[3:]
    if not data:
        return b"", None, False
    flags, rest = data[0], data[1:]
    size = flags >> 2 or None
    stream = build_stream(rest, revision3) if flags & OPS else rest
    return stream, size, bool(flags & AUTH_REQUIRED)


def chunks(stream, size):
    if size is None:
        return [stream]
    return [stream[i : i + size] for i in range(0, len(stream), size)]


# -- the checks ----------------------------------------------------------------------


def _check_decoder(decoder):
    if decoder is None:  # made on the first bytes: nothing buffered yet
        return
    if decoder.stopped:
        check(decoder.buffered == 0, "a stopped decoder holds bytes")
    elif decoder._verb is None:
        check(decoder.buffered <= HEADER_MAX + 1, f"header buffer of {decoder.buffered}")
    else:
        check(decoder._length <= MAX_PAYLOAD[decoder._verb], "payload over the verb's limit")
        check(decoder.buffered < decoder._length, "payload buffer over the announced length")


def run_parser(pieces):
    """Decode; return ``(frames, error)``, checking the buffer after each piece."""
    decoded, error = [], None
    decoder = FrameDecoder(lambda verb, payload: decoded.append((verb, payload)))
    for piece in pieces:
        try:
            decoder.feed(piece)
        except ProtocolError as caught:
            check(error is None, "a second error from one decoder")
            check(caught.code in (MALFORMED_FRAME, FRAME_TOO_LARGE), f"parser said {caught.code}")
            error = (caught.code, caught.detail)
        _check_decoder(decoder)
    for verb, payload in decoded:
        check(len(payload) <= MAX_PAYLOAD[verb], f"{verb} frame over its limit")
    return decoded, error


def _frames_of(output):
    decoded, error = run_parser([output])
    check(error is None, f"the server sent a bad frame: {error}")
    return decoded


def run_server(pieces, authorized, revision3=False):
    """Feed the server; return ``(events, output)`` after checking that the
    answer is events, or exactly one ERROR that is the last thing said.
    ``revision3``: the server of revision 3, ``authorized`` then meaning
    that it requires post-quantum clients."""
    if revision3:
        server = handshake.ServerConnection(
            IDENTITY,
            random=_replay(_hex3("nonce"), b"\0" * 32),
            tickets=ticket_issuer(),
            ephemeral=OFFER3,
            require_post_quantum=authorized,
        )
        hello = _hex3("hello_frame")
    else:
        server = handshake.ServerConnection(
            IDENTITY,
            authorized_keys=AUTHORIZED if authorized else None,
            random=_replay(_hex("nonce"), b"\0" * 32),
            tickets=ticket_issuer(),
        )
        hello = _hex("hello_frame")
    server.start()
    check(server.data_to_send() == hello, "HELLO differs from the vector")
    events, output = [], b""
    for piece in pieces:
        was_closed = server.closed
        new = server.receive_data(piece)
        check(not (was_closed and new), "events after the end")
        events += new
        output += server.data_to_send()
        _check_decoder(server._decoder)
    for event in events:
        check(isinstance(event, SERVER_EVENTS), f"unexpected event {event!r}")
    ends = [e for e in events if isinstance(e, (handshake.ProtocolFailed, handshake.ErrorReceived))]
    check(len(ends) <= 1, f"more than one end: {ends!r}")
    sent = _frames_of(output)
    verbs = [verb for verb, _ in sent]
    # Fed only by the peer, the server says nothing but its key
    # confirmation (one empty MSG, once the keys are agreed), a TICKET once
    # the client's first record opened, and a possible ERROR at the end.
    said = [v for v in verbs if v != "ERROR"]
    check(said in ([], ["MSG"], ["MSG", "TICKET"]), f"the server sent {verbs}")
    check("ERROR" not in verbs[:-1], f"ERROR before the end: {verbs}")
    if said:
        check(len(sent[0][1]) == 16, "the key confirmation is not an empty record")
    if ends:
        check(events[-1] is ends[0], "events after the end")
        check(server.closed, "an end, but the connection is not closed")
    failed = [e for e in events if isinstance(e, handshake.ProtocolFailed)]
    if failed:
        check(verbs[-1:] == ["ERROR"], "ProtocolFailed without exactly one ERROR")
        body = json.loads(sent[-1][1])
        check(
            body == {"error": failed[0].code, "detail": failed[0].detail},
            "ERROR differs from ProtocolFailed",
        )
        check(body["error"] in ERROR_CODES, f"unknown ERROR code {body['error']!r}")
    else:
        check("ERROR" not in verbs, "ERROR without ProtocolFailed")
    if server.handshake_done and not server.closed and server.can_send:
        # The send side must work in any state the peer can lead us to.
        server.send_data(b"reply")
        server.send_end()
        check(
            [verb for verb, _ in _frames_of(server.data_to_send())][-1] == "END",
            "END did not go out",
        )
    return events, output


def _replay(*values):
    pending = list(values)
    return lambda n: pending.pop(0)


def fuzz_one_input(data):
    """The fuzz target: raises only when something is wrong."""
    data = bytes(data)
    revision3 = data[:3] == REVISION3
    stream, size, authorized = decode_input(data)
    pieces = chunks(stream, size)
    # The parser: the cut must not change a thing.
    check(run_parser(pieces) == run_parser([stream]), "parser depends on chunking")
    # The server state machine: the same, and its answer well formed.
    events, output = run_server(pieces, authorized, revision3)
    if size is not None:
        check(
            (events, output) == run_server([stream], authorized, revision3),
            "server depends on chunking",
        )


# -- seeds --------------------------------------------------------------------------------


def _resumed_stream():
    """RESUME with a ticket of :func:`ticket_issuer`'s, then the client's first record and
    END sealed under the resumed keys: a whole resumed session (§11)."""
    secret = b"\x5e" * 32
    ticket, _ = ticket_issuer().issue(secret, IDENTITY.fingerprint)
    hello = IDENTITY.hello_payload(_hex("nonce"))
    th = schedule.transcript_hash(hello, ticket)
    client_key, _ = schedule.derive_keys(secret, _hex("nonce"), th, resumed=True)
    sealer = RecordSealer(client_key)
    return (
        encode_frame("RESUME", ticket)
        + encode_frame("MSG", sealer.seal("MSG", b""))
        + encode_frame("MSG", sealer.seal("MSG", b"resumed"))
        + encode_frame("END", sealer.seal("END"))
    )


def seeds():
    """The seed corpus: honest streams built from the vector file, and a few
    near misses.  ``tests/fuzz/corpus/`` holds exactly these."""
    honest = KEY_FRAME + AUTH_FRAME + encode_frame("MSG", _record("client_msg_seq1"))
    honest += encode_frame("END", _record("client_end_seq2"))
    auth = _hex("auth_plaintext")
    resumed = _resumed_stream()
    return {
        "raw-resumed-whole": bytes([0]) + resumed,
        "raw-resumed-chunks-of-11": bytes([11 << 2]) + resumed,
        "raw-resume-stale": bytes([0]) + encode_frame("RESUME", b"\x01" * 60) + resumed[60:],
        "raw-honest-auth-whole": bytes([AUTH_REQUIRED]) + honest,
        "raw-honest-chunks-of-7": bytes([7 << 2]) + honest,
        "raw-bad-header": bytes([0]) + b"KEY 0256\r\n" + honest,
        "ops-honest-auth": bytes([AUTH_REQUIRED | OPS | (13 << 2)])
        + b"\x01"
        + b"\x02"
        + len(auth).to_bytes(2, "big")
        + auth
        + b"\x03\x05hello"
        + b"\x04",
        "ops-updates": bytes([OPS]) + b"\x01\x05\x03\x03one\x05\x05\x03\x03two\x04",
        "ops-auth-garbage": bytes([AUTH_REQUIRED | OPS])
        + b"\x01\x02\x00\x20"
        + b'{"key": "AAAA", "signature": ""}',
        "ops-headers": bytes([OPS | (1 << 2)]) + b"\x07\x01\x01\x00\x07\x02\xff\xff\x00\x03ab\r",
        # Revision 3: the hybrid KEY and its downgrades.
        "kx3-ops-honest": REVISION3 + bytes([OPS | (17 << 2)]) + b"\x01\x03\x02hi\x05\x03\x01!\x04",
        "kx3-raw-honest": REVISION3
        + bytes([0])
        + encode_frame("KEY", KEY3)
        + encode_frame("MSG", binascii.unhexlify(_FULL3["records"]["client_msg_seq0"]))
        + encode_frame("MSG", binascii.unhexlify(_FULL3["records"]["client_msg_seq1"]))
        + encode_frame("END", binascii.unhexlify(_FULL3["records"]["client_end_seq2"])),
        "kx3-ops-truncated-mlkem": REVISION3 + bytes([OPS]) + b"\x02\x01\x03\x00",
        "kx3-ops-altered-mlkem": REVISION3 + bytes([OPS]) + b"\x06\x02\xa5\x5a\x03\x00",
        "kx3-ops-mlkem-dropped": REVISION3 + bytes([OPS]) + b"\x07\x03\x00",
        "kx3-ops-mlkem-dropped-required": REVISION3
        + bytes([OPS | AUTH_REQUIRED])
        + b"\x07\x03\x00",
        "kx3-ops-two-keys": REVISION3 + bytes([OPS | (3 << 2)]) + b"\x07\x01",
    }


def _argv_for_libfuzzer(argv):
    """New inputs to a scratch directory, not into the seed corpus; crash
    files into regressions/ unless the caller said otherwise."""
    options = [a for a in argv[1:] if a.startswith("-")]
    directories = [a for a in argv[1:] if not a.startswith("-")]
    if not any(a.startswith("-artifact_prefix=") for a in options):
        options.append(f"-artifact_prefix={REGRESSIONS}{os.sep}")
    # $FUZZ_WORK_DIR keeps what one run learnt for the next.
    scratch = os.environ.get("FUZZ_WORK_DIR") or tempfile.mkdtemp(prefix="keyexchanged-fuzz-")
    os.makedirs(scratch, exist_ok=True)
    print(f"fuzz_server: new inputs go to {scratch}", file=sys.stderr)
    return [argv[0], *options, scratch, *directories]


def main(argv=None):
    import atheris  # only the fuzzing run needs it

    argv = sys.argv if argv is None else argv
    atheris.instrument_all()
    atheris.Setup(_argv_for_libfuzzer(argv), fuzz_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
