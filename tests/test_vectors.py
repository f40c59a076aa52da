"""The vector files beside the specification (``docs/spec/vectors/``).

The first two must be copies of the shared files (but for the members
the repository adds), the independent implementation must reproduce the
revision-3 file, and the formulas that
``docs/spec/kx1.rst`` §10 and §11 state must reproduce the revision 2
vectors: a spec text that disagreed with its own vectors would mislead
whoever implements it next.  (The handshake file, §2–§8, is checked against
the code by ``test_handshake``, ``test_records`` and the others.)
"""

import base64
import copy
import hashlib
import json
import os

from Crypto.Cipher import AES
from Crypto.Hash import SHA256
from Crypto.Protocol.KDF import HKDF
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from keyexchanged import handshake, keys
from keyexchanged.records import RecordOpener
from tests import vectors
from tests.independent import revision3_vectors
from tests.vectors import RESUME_RAW, hexbytes, resume_hexbytes, resume_record


class CopyTests(SynchronousTestCase):
    def test_copies_equal_the_shared_files(self):
        if not os.path.isdir(vectors.SHARED_DIRECTORY):
            raise SkipTest("shared/vectors is not checked out beside the repository")
        for name in vectors.FILES:
            with open(os.path.join(vectors.DIRECTORY, name), "rb") as f:
                ours = json.load(f)
            with open(os.path.join(vectors.SHARED_DIRECTORY, name), "rb") as f:
                shared = json.load(f)
            for member in vectors.LOCAL_MEMBERS:
                ours.pop(member, None)
                shared.pop(member, None)
            self.assertEqual(ours, shared, name)

    def test_descriptions_cite_only_the_repository(self):
        for raw in (vectors.RAW, RESUME_RAW, vectors.REVISION3_RAW):
            self.assertNotIn("PROTOCOL.md", raw["description"])
            self.assertIn("kx1.rst", raw["description"])

    def test_message_after_the_update(self):
        opener = RecordOpener(hexbytes("server_key_after_update"))
        self.assertEqual(
            opener.open("MSG", vectors.record("server_msg_after_update_seq0")),
            hexbytes("server_message_after_update"),
        )

    def test_both_files_are_loaded(self):
        self.assertEqual(vectors.RAW["server_fingerprint"], RESUME_RAW["server_fingerprint"])
        self.assertEqual(hexbytes("server_message"), resume_hexbytes("server_message"))


def _hkdf(ikm, length, salt, info):
    return HKDF(ikm, length, salt, SHA256, context=info)


class EphemeralKeyTests(SynchronousTestCase):
    """§10.1: the signed ephemeral member, and KEY under the ephemeral key."""

    def setUp(self):
        self.server = keys.private_key_from_bytes(RESUME_RAW["server_private_key_pem"].encode())
        self.ephemeral = keys.private_key_from_bytes(
            RESUME_RAW["ephemeral_private_key_pem"].encode()
        )
        self.member = RESUME_RAW["ephemeral_member"]

    def test_signed_message(self):
        server_der = keys.public_key_to_der(self.server.public_key())
        message = (
            b"kx/1 ephemeral key"
            + b"\x00"
            + hashlib.sha256(server_der).digest()
            + RESUME_RAW["ephemeral_expires"].to_bytes(8, "big")
            + resume_hexbytes("ephemeral_spki_der")
        )
        self.assertEqual(message, resume_hexbytes("ephemeral_signed_message"))
        signature = base64.b64decode(self.member["signature"])
        self.assertTrue(self.server.public_key().verify_pss(message, signature, salt_length=32))
        self.assertFalse(
            self.server.public_key().verify_pss(message + b"\x00", signature, salt_length=32)
        )

    def test_member_in_hello(self):
        self.assertEqual(
            base64.b64decode(self.member["key"]), resume_hexbytes("ephemeral_spki_der")
        )
        self.assertEqual(self.member["expires"], RESUME_RAW["ephemeral_expires"])
        hello = json.loads(resume_hexbytes("full", "hello_payload"))
        self.assertEqual(hello["ephemeral"], self.member)
        self.assertEqual(base64.b64decode(hello["nonce"]), resume_hexbytes("full", "nonce"))

    def test_key_is_encrypted_under_the_ephemeral_key(self):
        payload = resume_hexbytes("full", "key_payload")
        self.assertEqual(len(payload), self.ephemeral.size // 8)
        secret = self.ephemeral.decrypt_oaep(
            payload, label=resume_hexbytes("full", "hello_payload")
        )
        self.assertEqual(secret, resume_hexbytes("full", "secret"))


class ResumptionTests(SynchronousTestCase):
    """§11: the full handshake's keys and ticket, then the resumed session."""

    def test_full_handshake_keys_and_resumption_secret(self):
        th = handshake.transcript_hash(
            resume_hexbytes("full", "hello_payload"), resume_hexbytes("full", "key_payload")
        )
        self.assertEqual(th, resume_hexbytes("full", "transcript_hash"))
        secret, nonce = resume_hexbytes("full", "secret"), resume_hexbytes("full", "nonce")
        client_key, server_key = handshake.derive_keys(secret, nonce, th)
        self.assertEqual(client_key, resume_hexbytes("full", "client_key"))
        self.assertEqual(server_key, resume_hexbytes("full", "server_key"))
        self.assertEqual(
            _hkdf(secret, 32, nonce, b"kx/1 resumption" + th),
            resume_hexbytes("full", "resumption_secret"),
        )

    def test_ticket_record(self):
        opener = RecordOpener(resume_hexbytes("full", "server_key"))
        self.assertEqual(
            opener.open("MSG", resume_record("full", "server_msg_seq0")),
            resume_hexbytes("server_message"),
        )
        plaintext = opener.open("TICKET", resume_record("full", "server_ticket_seq1"))
        self.assertEqual(plaintext, resume_hexbytes("full", "ticket_plaintext"))
        self.assertEqual(opener.open("END", resume_record("full", "server_end_seq2")), b"")
        body = json.loads(plaintext)
        self.assertEqual(base64.b64decode(body["ticket"]), resume_hexbytes("ticket"))
        self.assertEqual(body["lifetime"], 3600)

    def test_ticket_in_the_recommended_format(self):
        ticket = resume_hexbytes("ticket")
        key_id, nonce, sealed = ticket[:16], ticket[16:28], ticket[28:]
        self.assertEqual(key_id, resume_hexbytes("ticket_server_private", "key_id"))
        self.assertEqual(nonce, resume_hexbytes("ticket_server_private", "nonce"))
        cipher = AES.new(
            resume_hexbytes("ticket_server_private", "ticket_key"), AES.MODE_GCM, nonce=nonce
        )
        cipher.update(key_id)
        state = cipher.decrypt_and_verify(sealed[:-16], sealed[-16:])
        self.assertEqual(state, resume_hexbytes("ticket_server_private", "state"))
        recovered = json.loads(state)
        self.assertEqual(
            base64.b64decode(recovered["secret"]), resume_hexbytes("full", "resumption_secret")
        )
        self.assertEqual(recovered["server"], RESUME_RAW["server_fingerprint"])

    def test_resumed_session(self):
        ticket = resume_hexbytes("ticket")
        # Built by hand: the framing module does not know RESUME yet.
        frame = b"RESUME %d\r\n" % len(ticket) + ticket
        self.assertEqual(resume_hexbytes("resumed", "resume_frame"), frame)
        hello = resume_hexbytes("resumed", "hello_payload")
        th = handshake.transcript_hash(hello, ticket)
        self.assertEqual(th, resume_hexbytes("resumed", "transcript_hash"))
        ikm = resume_hexbytes("full", "resumption_secret")
        nonce = resume_hexbytes("resumed", "nonce")
        okm = _hkdf(ikm, 64, nonce, b"kx/1 resumed keys" + th)
        self.assertEqual(okm[:32], resume_hexbytes("resumed", "client_key"))
        self.assertEqual(okm[32:], resume_hexbytes("resumed", "server_key"))
        self.assertEqual(
            _hkdf(ikm, 32, nonce, b"kx/1 resumption" + th),
            resume_hexbytes("resumed", "resumption_secret"),
        )
        server = RecordOpener(okm[32:])
        self.assertEqual(
            server.open("MSG", resume_record("resumed", "server_msg_seq0")),
            resume_hexbytes("server_message"),
        )
        self.assertEqual(server.open("END", resume_record("resumed", "server_end_seq1")), b"")
        client = RecordOpener(okm[:32])
        self.assertEqual(client.open("MSG", resume_record("resumed", "client_msg_seq0")), b"")


class IndependentRevision3Tests(SynchronousTestCase):
    """The independent implementation reproduces kx1-revision3.json from
    its inputs (the ML-KEM ciphertexts by decapsulation)."""

    def test_the_file_reproduces(self):
        revision3_vectors.check(copy.deepcopy(vectors.REVISION3_RAW))

    def test_a_changed_record_is_noticed(self):
        changed = copy.deepcopy(vectors.REVISION3_RAW)
        records = changed["sessions"]["aes-256-ocb"]["resumed"]["records"]
        records["server_end_seq3"] = "00" + records["server_end_seq3"][2:]
        self.assertRaises(AssertionError, revision3_vectors.check, changed)

    def test_a_changed_mlkem_ciphertext_is_noticed(self):
        changed = copy.deepcopy(vectors.REVISION3_RAW)
        full = changed["sessions"]["aes-256-gcm"]["full"]
        full["mlkem_ciphertext"] = "00" + full["mlkem_ciphertext"][2:]
        self.assertRaises(AssertionError, revision3_vectors.check, changed)
