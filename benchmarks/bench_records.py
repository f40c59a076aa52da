"""Records: sealing and opening one AES-256-GCM or AES-256-OCB record, µs per record.

Four contestants, each sealing with the verb as additional data and a
64-bit sequence number as the 12-byte nonce, as docs/spec/kx1.rst §5 says:

- ``ours``: ``keyexchanged.records`` (``RecordSealer.seal``,
  ``RecordOpener.open``), as the daemon uses it.
- ``per-record AES.new``: pycryptodome's documented path written out the
  way records.py did it before issue 14 (a GCM object per record, ``update``
  with the verb, ``encrypt_and_digest``, ciphertext + tag concatenated; on
  opening, the payload sliced into ciphertext and tag), so one run shows
  before and after side by side.
- ``ours OCB``: the same with AES-256-OCB, the record cipher a revision-3
  daemon names (§13).
- ``OpenSSL AESGCM``: ``cryptography``'s ``AESGCM``, one object per key and
  a nonce per call: what the same record costs when nothing is rebuilt per
  record.  A yardstick, not a candidate (KX/1 keeps pycryptodome's GCM).

Record sizes 0 B (END, UPDATE), 1 KiB and 64 KiB (the largest MSG).
Each figure is the median over rounds of a batch's time per record.
"""

import sys

import harness

from keyexchanged import records

SIZES = (0, 1024, 65536)
KEY = bytes(range(32))
VERB = "MSG"


def add_options(parser):
    parser.add_argument("--rounds", type=int, default=9)


def _before():
    """(seal, open) as records.py did them before issue 14."""
    from Crypto.Cipher import AES

    nonce = (7).to_bytes(12, "big")
    aad = VERB.encode("ascii")

    def seal(plaintext):
        cipher = AES.new(KEY, AES.MODE_GCM, nonce=nonce)
        cipher.update(aad)
        ciphertext, tag = cipher.encrypt_and_digest(plaintext)
        return ciphertext + tag

    def open_(payload):
        cipher = AES.new(KEY, AES.MODE_GCM, nonce=nonce)
        cipher.update(aad)
        return cipher.decrypt_and_verify(payload[:-16], payload[-16:])

    return seal, open_


def _ours():
    sealer = records.RecordSealer(KEY)
    opener = records.RecordOpener(KEY)

    def seal(plaintext):
        return sealer.seal(VERB, plaintext)

    def open_(payload):
        # Every payload below was sealed at sequence 0.
        opener.sequence = opener.bytes_sealed = 0
        return opener.open(VERB, payload)

    return seal, open_


def _ours_ocb():
    sealer = records.RecordSealer(KEY, cipher=records.OCB)
    opener = records.RecordOpener(KEY, records.OCB)

    def seal(plaintext):
        return sealer.seal(VERB, plaintext)

    def open_(payload):
        opener.sequence = opener.bytes_sealed = 0
        return opener.open(VERB, payload)

    return seal, open_


def _openssl():
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead = AESGCM(KEY)
    nonce = (7).to_bytes(12, "big")
    aad = VERB.encode("ascii")
    return (
        lambda plaintext: aead.encrypt(nonce, plaintext, aad),
        lambda payload: aead.decrypt(nonce, payload, aad),
    )


def contestants():
    """{name: (seal, open, payload for size)} with payloads each can open."""
    table = {}
    for name, make in (
        ("ours", _ours),
        ("ours OCB", _ours_ocb),
        ("per-record AES.new", _before),
        ("OpenSSL AESGCM", _openssl),
    ):
        seal, open_ = make()
        if name == "ours":
            payloads = {size: records.RecordSealer(KEY).seal(VERB, bytes(size)) for size in SIZES}
        elif name == "ours OCB":
            payloads = {
                size: records.RecordSealer(KEY, cipher=records.OCB).seal(VERB, bytes(size))
                for size in SIZES
            }
        else:
            payloads = {size: seal(bytes(size)) for size in SIZES}
        for size in SIZES:
            if open_(payloads[size]) != bytes(size):
                raise RuntimeError(f"{name}: a sealed {size}-byte record did not open")
        table[name] = (seal, open_, payloads)
    return table


def batch_for(size):
    # About 10–20 ms per batch for the slowest contestant.
    return 100 if size >= 65536 else 300


def main():
    args = harness.arguments(__doc__.split("\n\n")[0], add_options)
    rounds = 3 if args.quick else args.rounds
    report = harness.Report("Records (AES-256-GCM and AES-256-OCB)", args.summary)
    table = contestants()
    plaintexts = {size: bytes(size) for size in SIZES}
    order = [
        (operation, size, name)
        for operation in ("seal", "open")
        for size in SIZES
        for name in table
    ]
    samples = {}
    for _, (operation, size, name) in harness.interleave(order, rounds):
        seal, open_, payloads = table[name]
        if operation == "seal":
            plaintext = plaintexts[size]

            def run(seal=seal, plaintext=plaintext):
                seal(plaintext)

        else:
            payload = payloads[size]

            def run(open_=open_, payload=payload):
                open_(payload)

        samples.setdefault((operation, size, name), []).append(
            harness.per_call(run, batch_for(size)) * 1e6
        )
    figures = {}
    for operation in ("seal", "open"):
        for size in SIZES:
            for name in table:
                figures[operation, size, name] = report.figure(
                    f"{operation} {size} B", name, samples[operation, size, name], "µs"
                )
    for operation in ("seal", "open"):
        for size in SIZES:
            report.ratio(
                f"{operation} {size} B ours / per-record AES.new (after / before)",
                figures[operation, size, "ours"],
                figures[operation, size, "per-record AES.new"],
            )
            report.ratio(
                f"{operation} {size} B ours GCM / ours OCB (OCB's speed-up)",
                figures[operation, size, "ours"],
                figures[operation, size, "ours OCB"],
            )
            report.ratio(
                f"{operation} {size} B ours / OpenSSL AESGCM",
                figures[operation, size, "ours"],
                figures[operation, size, "OpenSSL AESGCM"],
            )
    report.save()


if __name__ == "__main__":
    sys.exit(main())
