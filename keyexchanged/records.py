"""Sealed records, one direction at a time (docs/spec/kx1.rst §5, §13).

A direction is a key, a record cipher and a 64-bit sequence number.  Every
record sealed in that direction (AUTH, MSG, UPDATE, END) takes the next
number, which is the nonce, and the verb is the additional data, so a
record cannot be replayed, reordered, dropped or passed off as another verb
without the tag failing.

The record cipher is AES-256-GCM (revisions 1 and 2) or, in a revision-3
session whose HELLO names it, AES-256-OCB (RFC 7253, 128-bit tag): the
same nonce, additional data and payload layout, at about a quarter of
GCM's set-up cost per record in pycryptodome.

A key is retired before it has sealed 2**32 records or 2**34 bytes: the
sender seals UPDATE under the old key and both sides step to
``HKDF-Expand(old_key, "kx/1 update", 32)`` with the sequence number back at
0.  The limits can be lowered so tests reach them.

AES-GCM comes from pycryptodome, whose documented API makes one cipher
object per record: a GCM object is bound to its nonce and takes a single
message, and nothing documented keeps the key schedule or the GHASH key from
one nonce to the next.  Making it costs about 35 µs whatever the record size
(an empty record seals in about 35 µs, a 64 KiB one in about 65 µs:
``benchmarks/bench_records.py``), so callers should seal few, large records;
see the coalescing in keyexchanged.protocol.  Copies are not the cost: sealing into a
preallocated buffer or opening through a memoryview measured no faster,
within the few per cent that separate two runs.
"""

import hashlib
import hmac

from Crypto.Cipher import AES

__all__ = [
    "GCM",
    "OCB",
    "RECORD_CIPHERS",
    "BadRecord",
    "RecordOpener",
    "RecordSealer",
    "hkdf_expand",
    "next_key",
]

#: The record ciphers of §13, by the names HELLO uses.
GCM = "aes-256-gcm"
OCB = "aes-256-ocb"
RECORD_CIPHERS = {GCM: AES.MODE_GCM, OCB: AES.MODE_OCB}

TAG_LENGTH = 16
KEY_LENGTH = 32

#: The protocol's ceilings for one key.  GCM's safety margin for random-free
#: nonces is far beyond 2**32 records; 2**34 bytes keeps the key well inside
#: the usual confidentiality bound for AES-GCM.
MAX_RECORDS_PER_KEY = 2**32
MAX_BYTES_PER_KEY = 2**34

#: A sequence number is 64 bits and never wraps.
MAX_SEQUENCE = 2**64 - 1

_UPDATE_INFO = b"kx/1 update"


class BadRecord(Exception):
    """A record did not open.  Always the same message: no oracle."""

    def __init__(self):
        super().__init__("record failed to authenticate")


class SequenceExhausted(Exception):
    """The 64-bit sequence number would wrap; the connection must close."""


def hkdf_expand(prk, info, length):
    """HKDF-Expand of RFC 5869 with SHA-256.

    pycryptodome's HKDF always runs Extract first, and key update must not:
    the old key already is a pseudorandom key.  Not ``cryptography``'s
    HKDFExpand: it would load that library (8 MiB more per process) into
    the core and the channel, which test_errors keeps free of it.
    """
    if length > 255 * 32:
        raise ValueError("HKDF-Expand output too long")
    blocks, previous = [], b""
    for counter in range(1, -(-length // 32) + 1):
        previous = hmac.new(prk, previous + info + bytes([counter]), hashlib.sha256).digest()
        blocks.append(previous)
    return b"".join(blocks)[:length]


def next_key(key):
    """The key that follows ``key`` after an UPDATE."""
    return hkdf_expand(key, _UPDATE_INFO, KEY_LENGTH)


class _Direction:
    # Two per session, alive as long as it is: no instance dict.
    __slots__ = ("_key", "_mode", "bytes_sealed", "sequence")

    def __init__(self, key, cipher=GCM):
        if len(key) != KEY_LENGTH:
            raise ValueError("record keys are 32 bytes")
        self._key = key
        self._mode = RECORD_CIPHERS[cipher]
        self.sequence = 0
        self.bytes_sealed = 0

    @property
    def cipher(self):
        """The record cipher's name (§13)."""
        return OCB if self._mode == AES.MODE_OCB else GCM

    def _cipher(self, verb):
        cipher = AES.new(
            self._key, self._mode, nonce=self.sequence.to_bytes(12, "big"), mac_len=TAG_LENGTH
        )
        cipher.update(verb.encode("ascii"))
        return cipher

    def _advance(self, length):
        if self.sequence >= MAX_SEQUENCE:
            raise SequenceExhausted("sequence number exhausted")
        self.sequence += 1
        self.bytes_sealed += length

    def _update(self):
        self._key = next_key(self._key)
        self.sequence = 0
        self.bytes_sealed = 0


class RecordSealer(_Direction):
    """Seals the records we send.

    ``max_records`` and ``max_bytes`` are this sender's key-update thresholds
    (at most the protocol's); tests lower them to reach an UPDATE.
    ``cipher`` is the record cipher's name (§13).
    """

    __slots__ = ("max_bytes", "max_records")

    def __init__(
        self, key, max_records=MAX_RECORDS_PER_KEY, max_bytes=MAX_BYTES_PER_KEY, cipher=GCM
    ):
        super().__init__(key, cipher)
        if not 2 <= max_records <= MAX_RECORDS_PER_KEY:
            raise ValueError("max_records must be between 2 and 2**32")
        if not 1 <= max_bytes <= MAX_BYTES_PER_KEY:
            raise ValueError("max_bytes must be between 1 and 2**34")
        self.max_records = max_records
        self.max_bytes = max_bytes

    def needs_update(self, length):
        """True when a record of ``length`` bytes must wait for an UPDATE.

        The UPDATE itself is sealed under the old key, so one record slot is
        kept for it.
        """
        return self.sequence + 2 > self.max_records or self.bytes_sealed + length > self.max_bytes

    def seal(self, verb, plaintext=b""):
        """Return the payload of one record: ciphertext ‖ tag."""
        cipher = self._cipher(verb)
        ciphertext, tag = cipher.encrypt_and_digest(plaintext)
        self._advance(len(plaintext))
        return ciphertext + tag

    def seal_update(self):
        """Seal UPDATE under the current key, then step to the next one."""
        payload = self.seal("UPDATE")
        self._update()
        return payload


class RecordOpener(_Direction):
    """Opens the records we receive; refuses anything that does not open."""

    __slots__ = ()

    def open(self, verb, payload):
        """Return the plaintext of a record or raise :class:`BadRecord`."""
        if len(payload) < TAG_LENGTH:
            raise BadRecord()
        # The peer must have updated before these; a record beyond them is
        # a broken or hostile sender, and is refused like a forged one.
        if (
            self.sequence >= MAX_RECORDS_PER_KEY
            or self.bytes_sealed + len(payload) - TAG_LENGTH > MAX_BYTES_PER_KEY
        ):
            raise BadRecord()
        cipher = self._cipher(verb)
        view = memoryview(payload)  # slices without copying a 64 KiB record
        try:
            plaintext = cipher.decrypt_and_verify(view[:-TAG_LENGTH], view[-TAG_LENGTH:])
        except ValueError:
            raise BadRecord() from None
        self._advance(len(plaintext))
        return plaintext

    def open_update(self, payload):
        """Open an UPDATE record and step to the next key."""
        if self.open("UPDATE", payload):
            # UPDATE seals the empty string; anything else is not an UPDATE.
            raise BadRecord()
        self._update()
