"""Records: AES-256-GCM sealing, sequence numbers and key update."""

import hashlib
import hmac

from Crypto.Hash import SHA256
from Crypto.Protocol.KDF import HKDF
from twisted.trial import unittest

from keyexchanged import records
from keyexchanged.records import BadRecord, RecordOpener, RecordSealer, hkdf_expand, next_key
from tests import rev3
from tests.vectors import hexbytes, record, revision3_hexbytes


class HKDFExpandTests(unittest.TestCase):
    def test_matches_pycryptodome_extract_then_expand(self):
        # pycryptodome's HKDF is Extract then Expand; Extract is one HMAC.
        for length in (1, 32, 42, 64, 100):
            salt, ikm, info = b"salt" * 5, b"input keying material", b"context"
            prk = hmac.new(salt, ikm, hashlib.sha256).digest()
            expected = HKDF(ikm, length, salt, SHA256, context=info)
            self.assertEqual(hkdf_expand(prk, info, length), expected)

    def test_update_vector(self):
        self.assertEqual(next_key(hexbytes("server_key")), hexbytes("server_key_after_update"))


class RecordVectorTests(unittest.TestCase):
    def test_server_records(self):
        sealer = RecordSealer(hexbytes("server_key"))
        self.assertEqual(sealer.seal("MSG", hexbytes("server_message")), record("server_msg_seq0"))
        self.assertEqual(sealer.seal("END"), record("server_end_seq1"))

    def test_client_records_after_auth(self):
        sealer = RecordSealer(hexbytes("client_key"))
        self.assertEqual(
            sealer.seal("AUTH", hexbytes("auth_plaintext")), record("client_auth_seq0")
        )
        self.assertEqual(sealer.seal("MSG", hexbytes("client_message")), record("client_msg_seq1"))
        self.assertEqual(sealer.seal("END"), record("client_end_seq2"))

    def test_key_update(self):
        sealer = RecordSealer(hexbytes("server_key"), max_records=2)
        self.assertEqual(sealer.seal("MSG", hexbytes("server_message")), record("server_msg_seq0"))
        self.assertTrue(sealer.needs_update(0))
        self.assertEqual(sealer.seal_update(), record("server_update_seq1"))
        self.assertEqual(sealer.sequence, 0)
        after = sealer.seal("MSG", b"after update")
        self.assertEqual(after, record("server_msg_after_update_seq0"))

    def test_opener_follows(self):
        opener = RecordOpener(hexbytes("server_key"))
        self.assertEqual(opener.open("MSG", record("server_msg_seq0")), hexbytes("server_message"))
        opener.open_update(record("server_update_seq1"))
        self.assertEqual(
            opener.open("MSG", record("server_msg_after_update_seq0")), b"after update"
        )


class OpenRefusalTests(unittest.TestCase):
    def setUp(self):
        self.key = bytes(range(32))
        self.payload = RecordSealer(self.key).seal("MSG", b"hello")

    def assertBad(self, verb, payload, opener=None):
        opener = opener or RecordOpener(self.key)
        with self.assertRaises(BadRecord) as caught:
            opener.open(verb, payload)
        self.assertEqual(str(caught.exception), "record failed to authenticate")
        self.assertEqual(opener.sequence, 0)

    def test_every_bit_flip(self):
        for i in range(len(self.payload) * 8):
            flipped = bytearray(self.payload)
            flipped[i // 8] ^= 1 << (i % 8)
            self.assertBad("MSG", bytes(flipped))

    def test_wrong_verb(self):
        self.assertBad("END", self.payload)

    def test_short(self):
        for n in range(16):
            self.assertBad("MSG", self.payload[:n])

    def test_replay_or_reorder(self):
        opener = RecordOpener(self.key)
        opener.open("MSG", self.payload)
        with self.assertRaises(BadRecord):
            opener.open("MSG", self.payload)  # sequence 1 now: a replay fails

    def test_wrong_key(self):
        opener = RecordOpener(bytes(32))
        self.assertBad("MSG", self.payload, opener)

    def test_update_abuse_is_refused(self):
        # An UPDATE record must be an UPDATE: a MSG's payload will not do.
        opener = RecordOpener(self.key)
        with self.assertRaises(BadRecord):
            opener.open_update(self.payload)


class LimitTests(unittest.TestCase):
    def test_byte_limit_triggers_update(self):
        sealer = RecordSealer(bytes(32), max_bytes=100)
        self.assertFalse(sealer.needs_update(100))
        sealer.seal("MSG", b"x" * 60)
        self.assertTrue(sealer.needs_update(41))
        self.assertFalse(sealer.needs_update(40))

    def test_limits_are_checked(self):
        self.assertRaises(ValueError, RecordSealer, bytes(32), max_records=1)
        self.assertRaises(ValueError, RecordSealer, bytes(32), max_records=2**32 + 1)
        self.assertRaises(ValueError, RecordSealer, bytes(32), max_bytes=0)
        self.assertRaises(ValueError, RecordSealer, bytes(16))

    def test_receiver_refuses_past_protocol_ceiling(self):
        sealer = RecordSealer(bytes(32))
        opener = RecordOpener(bytes(32))
        sealer.sequence = opener.sequence = records.MAX_RECORDS_PER_KEY
        with self.assertRaises(BadRecord):
            opener.open("MSG", sealer.seal("MSG", b""))

    def test_sequence_never_wraps(self):
        sealer = RecordSealer(bytes(32))
        sealer.sequence = records.MAX_SEQUENCE
        self.assertRaises(records.SequenceExhausted, sealer.seal, "MSG", b"")


class RecordCipherTests(unittest.TestCase):
    """§13: AES-256-OCB and AES-256-GCM seal alike but are different ciphers,
    and each reproduces the revision-3 vectors."""

    def test_ocb_reproduces_the_vectors(self):
        self.check_vectors(records.OCB)

    def test_gcm_reproduces_the_vectors(self):
        self.check_vectors(records.GCM)

    def check_vectors(self, cipher):
        sealer = RecordSealer(rev3.session(cipher, "full", "client_key"), cipher=cipher)
        self.assertEqual(sealer.cipher, cipher)
        self.assertEqual(sealer.seal("MSG"), rev3.session_record(cipher, "full", "client_msg_seq0"))
        self.assertEqual(
            sealer.seal("MSG", revision3_hexbytes("client_message")),
            rev3.session_record(cipher, "full", "client_msg_seq1"),
        )
        self.assertEqual(sealer.seal("END"), rev3.session_record(cipher, "full", "client_end_seq2"))
        opener = RecordOpener(rev3.session(cipher, "full", "server_key"), cipher)
        for verb, name in [("MSG", "server_msg_seq0"), ("TICKET", "server_ticket_seq1")]:
            opener.open(verb, rev3.session_record(cipher, "full", name))
        self.assertEqual(
            opener.open("MSG", rev3.session_record(cipher, "full", "server_msg_seq2")),
            revision3_hexbytes("server_message"),
        )
        opener.open_update(rev3.session_record(cipher, "full", "server_update_seq3"))
        self.assertEqual(
            opener.open("MSG", rev3.session_record(cipher, "full", "server_msg_after_update_seq0")),
            revision3_hexbytes("server_message_after_update"),
        )

    def test_one_cipher_does_not_open_the_other_s_record(self):
        key = b"k" * 32
        sealed = RecordSealer(key, cipher=records.OCB).seal("MSG", b"data")
        self.assertRaises(BadRecord, RecordOpener(key, records.GCM).open, "MSG", sealed)
        self.assertEqual(RecordOpener(key, records.OCB).open("MSG", sealed), b"data")

    def test_ocb_refuses_a_forged_record(self):
        sealed = RecordSealer(b"k" * 32, cipher=records.OCB).seal("MSG", b"data")
        forged = sealed[:-1] + bytes([sealed[-1] ^ 1])
        self.assertRaises(BadRecord, RecordOpener(b"k" * 32, records.OCB).open, "MSG", forged)
        self.assertRaises(BadRecord, RecordOpener(b"k" * 32, records.OCB).open, "END", sealed)

    def test_unknown_cipher(self):
        self.assertRaises(KeyError, RecordSealer, b"k" * 32, cipher="aes-128-ocb")
