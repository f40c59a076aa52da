"""Interoperability: keyexchanged against an independent KX/1 peer.

``tests/independent/kx1_peer.py`` is a second implementation of
``docs/spec/kx1.rst``, written from the text alone and sharing no code with
keyexchanged.  First it must reproduce the spec's vectors byte for byte
(:class:`IndependentPeerVectorTests`); then it judges the real daemon and
the real client: the independent client, requiring forward
secrecy, completes a full and a resumed session against ``twistd
keyexchange`` with default settings, and ``keyexchange connect`` completes
against the independent server.

The independent peer uses blocking sockets with timeouts: its client runs
in a thread (``deferToThread``), its server in a thread of its own, and the
reactor never waits on either.
"""

import ast
import hashlib
import json
import os
import socket
import time

from cryptography.hazmat.primitives import serialization
from twisted.internet import defer, threads
from twisted.trial.unittest import SynchronousTestCase

from tests.daemon import Daemon, DaemonTestCase, run_client
from tests.independent import kx1_peer as kx1
from tests.vectors import (
    RAW,
    RESUME_RAW,
    REVISION3_RAW,
    hexbytes,
    record,
    resume_hexbytes,
    resume_record,
)

FINGERPRINT = RESUME_RAW["server_fingerprint"]
MESSAGE = resume_hexbytes("server_message")


def _private_key(pem):
    return serialization.load_pem_private_key(pem.encode("ascii"), password=None)


# -- RFC 8017 encodings with a chosen seed and salt -----------------------------------
#
# OpenSSL draws the OAEP seed and the PSS salt itself; to reproduce the
# vectors' KEY and signature byte for byte, the test encodes them by hand.


def _mgf1(seed, length):
    out = b""
    counter = 0
    while len(out) < length:
        out += hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    return out[:length]


def _xor(a, b):
    return bytes(x ^ y for x, y in zip(a, b))


def oaep_encrypt_with_seed(public_key, message, label, seed):
    """RSAES-OAEP-ENCRYPT (RFC 8017 §7.1.1), SHA-256, with ``seed`` given."""
    numbers = public_key.public_numbers()
    k = (numbers.n.bit_length() + 7) // 8
    db = (
        hashlib.sha256(label).digest()
        + b"\x00" * (k - len(message) - 2 * 32 - 2)
        + b"\x01"
        + message
    )
    masked_db = _xor(db, _mgf1(seed, k - 32 - 1))
    masked_seed = _xor(seed, _mgf1(masked_db, 32))
    em = int.from_bytes(b"\x00" + masked_seed + masked_db, "big")
    return pow(em, numbers.e, numbers.n).to_bytes(k, "big")


def pss_sign_with_salt(private_key, message, salt):
    """RSASSA-PSS-SIGN (RFC 8017 §8.1.1), SHA-256 and MGF1-SHA-256, ``salt`` given."""
    numbers = private_key.private_numbers()
    n = numbers.public_numbers.n
    em_bits = n.bit_length() - 1
    em_len = (em_bits + 7) // 8
    h = hashlib.sha256(b"\x00" * 8 + hashlib.sha256(message).digest() + salt).digest()
    db = b"\x00" * (em_len - len(salt) - 32 - 2) + b"\x01" + salt
    masked_db = bytearray(_xor(db, _mgf1(h, em_len - 32 - 1)))
    masked_db[0] &= 0xFF >> (8 * em_len - em_bits)
    em = int.from_bytes(bytes(masked_db) + h + b"\xbc", "big")
    return pow(em, numbers.d, n).to_bytes((n.bit_length() + 7) // 8, "big")


class IndependentPeerVectorTests(SynchronousTestCase):
    """The independent peer reproduces both vector files, byte for byte,
    before it is trusted to judge keyexchanged."""

    def setUp(self):
        self.server = _private_key(RESUME_RAW["server_private_key_pem"])
        self.server_der = kx1.spki_der(self.server.public_key())
        self.ephemeral = _private_key(RESUME_RAW["ephemeral_private_key_pem"])
        self.full = RESUME_RAW["full"]

    def test_shares_no_code_with_keyexchanged(self):
        """The peer imports the standard library and ``cryptography`` only."""
        with open(kx1.__file__, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                imported.add("." if node.level else node.module.split(".")[0])
        standard = {
            "base64",
            "hashlib",
            "hmac",
            "json",
            "os",
            "re",
            "socket",
            "struct",
            "threading",
            "time",
        }
        self.assertEqual(imported - standard, {"cryptography"})

    def test_fingerprint(self):
        self.assertEqual(kx1.fingerprint(self.server_der), FINGERPRINT)
        self.assertEqual(self.server_der, hexbytes("server_spki_der"))

    def test_ephemeral_signature(self):
        """§10.1: the signed message, the signature with the vector's salt,
        and the member of HELLO."""
        expires = RESUME_RAW["ephemeral_expires"]
        ephemeral_der = resume_hexbytes("ephemeral_spki_der")
        self.assertEqual(kx1.spki_der(self.ephemeral.public_key()), ephemeral_der)
        message = kx1.ephemeral_signed_message(self.server_der, expires, ephemeral_der)
        self.assertEqual(message, resume_hexbytes("ephemeral_signed_message"))
        signature = pss_sign_with_salt(self.server, message, resume_hexbytes("ephemeral_pss_salt"))
        member = RESUME_RAW["ephemeral_member"]
        self.assertEqual(kx1.strict_b64decode(member["signature"], "signature"), signature)
        # The peer's own member, signed with a random salt, differs only there.
        ours = kx1.ephemeral_member(self.server, self.ephemeral.public_key(), expires)
        self.assertEqual(
            {k: v for k, v in ours.items() if k != "signature"},
            {k: v for k, v in member.items() if k != "signature"},
        )

    def test_hello_parsed_and_ephemeral_verified(self):
        payload = resume_hexbytes("full", "hello_payload")
        hello = kx1.parse_hello(payload)
        self.assertEqual(hello.key_der, self.server_der)
        self.assertEqual(hello.nonce, resume_hexbytes("full", "nonce"))
        self.assertEqual(hello.fingerprint, FINGERPRINT)
        member = RESUME_RAW["ephemeral_member"]
        self.assertEqual(
            hello.ephemeral,
            (
                resume_hexbytes("ephemeral_spki_der"),
                member["expires"],
                kx1.strict_b64decode(member["signature"], "signature"),
            ),
        )
        # The server side writes the same bytes.
        self.assertEqual(kx1.hello_payload(self.server_der, hello.nonce, member), payload)
        expires = member["expires"]
        key = kx1.verify_ephemeral(hello, self.server.public_key(), now=expires)
        self.assertEqual(kx1.spki_der(key), resume_hexbytes("ephemeral_spki_der"))

    def test_ephemeral_refusals(self):
        """§10.3: outside the window, a bad signature, the wrong long-term
        key: each is untrusted-key."""
        hello = kx1.parse_hello(resume_hexbytes("full", "hello_payload"))
        expires = hello.ephemeral[1]
        for now in (expires + 301, expires - 86400 - 301):
            with self.assertRaises(kx1.ProtocolFailure) as caught:
                kx1.verify_ephemeral(hello, self.server.public_key(), now=now)
            self.assertEqual(caught.exception.code, "untrusted-key")
        # The window's edges are inside it.
        kx1.verify_ephemeral(hello, self.server.public_key(), now=expires + 300)
        kx1.verify_ephemeral(hello, self.server.public_key(), now=expires - 86400 - 300)
        der, _, signature = hello.ephemeral
        hello.ephemeral = (der, expires, signature[:-1] + bytes([signature[-1] ^ 1]))
        with self.assertRaises(kx1.ProtocolFailure) as caught:
            kx1.verify_ephemeral(hello, self.server.public_key(), now=expires)
        self.assertEqual(caught.exception.code, "untrusted-key")
        hello.ephemeral = (der, expires, signature)
        with self.assertRaises(kx1.ProtocolFailure) as caught:
            kx1.verify_ephemeral(hello, self.ephemeral.public_key(), now=expires)
        self.assertEqual(caught.exception.code, "untrusted-key")

    def test_key_under_the_ephemeral_key(self):
        """§3 with §10: KEY is OAEP under the ephemeral key, labelled with
        HELLO; the server side decrypts it to the secret."""
        hello = resume_hexbytes("full", "hello_payload")
        secret = resume_hexbytes("full", "secret")
        key_payload = oaep_encrypt_with_seed(
            self.ephemeral.public_key(), secret, hello, resume_hexbytes("full", "oaep_seed")
        )
        self.assertEqual(key_payload, resume_hexbytes("full", "key_payload"))
        self.assertEqual(self.ephemeral.decrypt(key_payload, kx1.oaep(hello)), secret)

    def test_full_key_schedule_and_records(self):
        hello = resume_hexbytes("full", "hello_payload")
        th = kx1.transcript_hash(hello, resume_hexbytes("full", "key_payload"))
        self.assertEqual(th, resume_hexbytes("full", "transcript_hash"))
        client_key, server_key, resumption = kx1.session_keys(
            resume_hexbytes("full", "secret"), resume_hexbytes("full", "nonce"), th, False
        )
        self.assertEqual(client_key, resume_hexbytes("full", "client_key"))
        self.assertEqual(server_key, resume_hexbytes("full", "server_key"))
        self.assertEqual(resumption, resume_hexbytes("full", "resumption_secret"))

        # The server's side seals them...
        ticket = resume_hexbytes("ticket")
        plaintext = kx1.ticket_plaintext(ticket, 3600)
        self.assertEqual(plaintext, resume_hexbytes("full", "ticket_plaintext"))
        sending = kx1.Direction(server_key)
        self.assertEqual(sending.seal("MSG", MESSAGE), resume_record("full", "server_msg_seq0"))
        self.assertEqual(
            sending.seal("TICKET", plaintext), resume_record("full", "server_ticket_seq1")
        )
        self.assertEqual(sending.seal("END", b""), resume_record("full", "server_end_seq2"))
        self.assertEqual(
            kx1.Direction(client_key).seal("MSG", b""), resume_record("full", "client_msg_seq0")
        )

        # ... and the client's side opens them.
        tickets = []
        records = kx1.ServerRecords(server_key, lambda *t: tickets.append(t))
        records.receive("MSG", resume_record("full", "server_msg_seq0"))
        self.assertTrue(records.confirmed)
        records.receive("TICKET", resume_record("full", "server_ticket_seq1"))
        self.assertEqual(tickets, [(ticket, 3600)])
        records.receive("END", resume_record("full", "server_end_seq2"))
        self.assertEqual((records.data, records.ended), (MESSAGE, True))

    def test_resumed_key_schedule_and_records(self):
        ticket = resume_hexbytes("ticket")
        self.assertEqual(
            kx1.encode_frame("RESUME", ticket), resume_hexbytes("resumed", "resume_frame")
        )
        hello = resume_hexbytes("resumed", "hello_payload")
        th = kx1.transcript_hash(hello, ticket)
        self.assertEqual(th, resume_hexbytes("resumed", "transcript_hash"))
        client_key, server_key, resumption = kx1.session_keys(
            resume_hexbytes("full", "resumption_secret"),
            kx1.parse_hello(hello).nonce,
            th,
            True,
        )
        self.assertEqual(client_key, resume_hexbytes("resumed", "client_key"))
        self.assertEqual(server_key, resume_hexbytes("resumed", "server_key"))
        self.assertEqual(resumption, resume_hexbytes("resumed", "resumption_secret"))
        self.assertEqual(
            kx1.Direction(client_key).seal("MSG", b""),
            resume_record("resumed", "client_msg_seq0"),
        )
        records = kx1.ServerRecords(server_key, None)
        records.receive("MSG", resume_record("resumed", "server_msg_seq0"))
        records.receive("END", resume_record("resumed", "server_end_seq1"))
        self.assertEqual((records.data, records.ended), (MESSAGE, True))

    def test_revision_1_handshake_and_key_update(self):
        """``kx1-handshake.json``: HELLO without ``ephemeral``, KEY under the
        long-term key, AUTH, MSG and END, and an UPDATE received (§5)."""
        hello = hexbytes("hello_payload")
        self.assertEqual(kx1.encode_frame("HELLO", hello), hexbytes("hello_frame"))
        parsed = kx1.parse_hello(hello)
        self.assertIsNone(parsed.ephemeral)
        self.assertEqual(parsed.fingerprint, RAW["server_fingerprint"])
        self.assertEqual(kx1.hello_payload(parsed.key_der, parsed.nonce), hello)
        key_payload = oaep_encrypt_with_seed(
            self.server.public_key(), hexbytes("secret"), hello, hexbytes("oaep_seed")
        )
        self.assertEqual(key_payload, hexbytes("key_payload"))
        th = kx1.transcript_hash(hello, key_payload)
        self.assertEqual(th, hexbytes("transcript_hash"))
        client_key, server_key, _ = kx1.session_keys(hexbytes("secret"), parsed.nonce, th, False)
        self.assertEqual((client_key, server_key), (hexbytes("client_key"), hexbytes("server_key")))

        client = kx1.Direction(client_key)
        self.assertEqual(
            client.seal("AUTH", hexbytes("auth_plaintext")), record("client_auth_seq0")
        )
        self.assertEqual(client.seal("MSG", hexbytes("client_message")), record("client_msg_seq1"))
        self.assertEqual(client.seal("END", b""), record("client_end_seq2"))

        records = kx1.ServerRecords(server_key, None)
        records.receive("MSG", record("server_msg_seq0"))
        records.receive("UPDATE", record("server_update_seq1"))
        self.assertEqual(records.direction.key, hexbytes("server_key_after_update"))
        self.assertEqual(records.direction.sequence, 0)
        records.receive("MSG", record("server_msg_after_update_seq0"))
        self.assertEqual(records.data, hexbytes("server_message") + b"after update")
        self.assertEqual(records.updates, 1)

    def test_client_records_refused(self):
        """A record that does not open is bad-record; TICKET before the
        first record, or anything after END, is unexpected-frame."""
        server_key = resume_hexbytes("full", "server_key")
        records = kx1.ServerRecords(server_key, None)
        with self.assertRaises(kx1.ProtocolFailure) as caught:
            records.receive("TICKET", resume_record("full", "server_ticket_seq1"))
        self.assertEqual(caught.exception.code, "unexpected-frame")
        tampered = bytearray(resume_record("full", "server_msg_seq0"))
        tampered[0] ^= 1
        with self.assertRaises(kx1.ProtocolFailure) as caught:
            records.receive("MSG", bytes(tampered))
        self.assertEqual(caught.exception.code, "bad-record")
        # The verb is the associated data: MSG does not open as END.
        with self.assertRaises(kx1.ProtocolFailure) as caught:
            kx1.ServerRecords(server_key, None).receive(
                "END", resume_record("full", "server_end_seq2")
            )
        self.assertEqual(caught.exception.code, "bad-record")

    def test_strict_decoding(self):
        for text in ("AAA", "AA=A", "AB==", "A A=", "QQ==\n"):
            with self.assertRaises(kx1.ProtocolFailure):
                kx1.strict_b64decode(text, "x")
        self.assertEqual(kx1.strict_b64decode("QQ==", "x"), b"A")
        hello = resume_hexbytes("full", "hello_payload")
        for payload, code in [
            (hello.replace(b'"kx/1"', b'"kx/2"'), "unsupported-protocol"),
            (b'{"protocol": "kx/1", "protocol": "kx/1"}', "malformed-frame"),
            (
                hello.replace(b'"expires": 1764259200', b'"expires": "1764259200"'),
                "malformed-frame",
            ),
            (b"[]", "malformed-frame"),
        ]:
            with self.assertRaises(kx1.ProtocolFailure) as caught:
                kx1.parse_hello(payload)
            self.assertEqual(caught.exception.code, code, payload[:60])


class IndependentRevision3Tests(SynchronousTestCase):
    """The independent peer's reading of §12.4 on the revision-3 vectors."""

    def setUp(self):
        self.full = REVISION3_RAW["sessions"]["aes-256-ocb"]["full"]
        self.hello = bytes.fromhex(self.full["hello_payload"])
        self.long_term = _private_key(REVISION3_RAW["server_private_key_pem"]).public_key()

    def test_hello_parsed_and_mlkem_verified(self):
        hello = kx1.parse_hello(self.hello, revision=3)
        self.assertEqual(hello.record, "aes-256-ocb")
        public = kx1.verify_mlkem(hello, self.long_term)
        self.assertEqual(public.public_bytes_raw().hex(), REVISION3_RAW["mlkem_encapsulation_key"])

    def test_revision2_reader_ignores_the_new_members(self):
        hello = kx1.parse_hello(self.hello, revision=2)
        self.assertEqual((hello.mlkem, hello.record), (None, None))

    def refused(self, payload, code):
        with self.assertRaises(kx1.ProtocolFailure) as caught:
            hello = kx1.parse_hello(payload, revision=3)
            kx1.verify_mlkem(hello, self.long_term)
        self.assertEqual(caught.exception.code, code)

    def test_revision2_signature_presented_as_revision3(self):
        member = REVISION3_RAW["mlkem768_member"]
        self.refused(
            self.hello.replace(
                member["signature"].encode(),
                REVISION3_RAW["ephemeral_member"]["signature"].encode(),
            ),
            "untrusted-key",
        )

    def test_unknown_record_cipher(self):
        self.refused(self.hello.replace(b'"aes-256-ocb"', b'"aes-128-ocb"'), "malformed-frame")

    def test_truncated_mlkem_key(self):
        key = REVISION3_RAW["mlkem768_member"]["key"].encode()
        self.refused(self.hello.replace(key, key[:-8]), "untrusted-key")

    def test_record_without_mlkem768(self):
        payload = json.loads(self.hello)
        del payload["mlkem768"]
        self.refused(json.dumps(payload).encode(), "malformed-frame")


class IndependentPeersTests(SynchronousTestCase):
    """The independent client and server complete with each other, over
    127.0.0.1: the peer is consistent before it meets keyexchanged."""

    def serve(self, **options):
        server = kx1.IndependentServer(**options)
        server.start()
        self.addCleanup(server.stop)
        return server

    def test_full_then_resumed(self):
        server = self.serve(connections=2, message=b"x" * 70000, key_update=True)
        client = kx1.IndependentClient(server.fingerprint, send=b"from the client")
        first = client.connect("127.0.0.1", server.port)
        self.assertEqual((first.data, first.resumed, first.updates), (b"x" * 70000, False, 1))
        second = client.connect("127.0.0.1", server.port, first.ticket)
        self.assertEqual((second.data, second.resumed), (b"x" * 70000, True))
        sessions = server.wait_for_sessions(2)
        self.assertEqual(
            [(s.kind, s.outcome) for s in sessions], [("full", "ok"), ("resumed", "ok")]
        )
        self.assertEqual(sessions[0].received, b"from the client")
        self.assertEqual(sessions[1].resume_payload, sessions[0].tickets_issued[0])

    def test_client_requires_forward_secrecy(self):
        server = self.serve(ephemeral=False, connections=2)
        with self.assertRaises(kx1.ProtocolFailure) as caught:
            kx1.IndependentClient(server.fingerprint).connect("127.0.0.1", server.port)
        self.assertEqual(caught.exception.code, "no-forward-secrecy")
        result = kx1.IndependentClient(server.fingerprint, require_forward_secrecy=False).connect(
            "127.0.0.1", server.port
        )
        self.assertEqual(result.data, server.message)
        sessions = server.wait_for_sessions(2)
        self.assertEqual(sessions[0].peer_error, "no-forward-secrecy")
        self.assertEqual(sessions[1].decrypted_with, "long-term")

    def test_revision3_full_then_resumed_with_ocb(self):
        server = self.serve(connections=2, key_update=True)
        client = kx1.IndependentClient(server.fingerprint, send=b"from the client", revision=3)
        first = client.connect("127.0.0.1", server.port)
        self.assertEqual((first.hybrid, first.record, first.updates), (True, "aes-256-ocb", 1))
        self.assertTrue(first.ticket.hybrid)
        second = client.connect("127.0.0.1", server.port, first.ticket)
        self.assertEqual(
            (second.resumed, second.hybrid, second.record), (True, True, "aes-256-ocb")
        )
        self.assertEqual(second.data, server.message)
        sessions = server.wait_for_sessions(2)
        self.assertEqual(
            [(s.kind, s.hybrid, s.record, s.outcome) for s in sessions],
            [("full", True, "aes-256-ocb", "ok"), ("resumed", True, "aes-256-ocb", "ok")],
        )
        self.assertEqual(sessions[0].received, b"from the client")
        # §11.3: the resumed session gets a new ticket.
        self.assertEqual(len(sessions[1].tickets_issued), 1)
        self.assertNotEqual(sessions[1].tickets_issued, sessions[0].tickets_issued)

    def test_revision3_with_the_gcm_the_server_names(self):
        server = self.serve(record="aes-256-gcm")
        result = kx1.IndependentClient(server.fingerprint, revision=3).connect(
            "127.0.0.1", server.port
        )
        self.assertEqual((result.hybrid, result.record), (True, "aes-256-gcm"))
        (session,) = server.wait_for_sessions(1)
        self.assertEqual((session.hybrid, session.record), (True, "aes-256-gcm"))

    def test_revision2_client_served_with_gcm(self):
        server = self.serve()
        result = kx1.IndependentClient(server.fingerprint, revision=2).connect(
            "127.0.0.1", server.port
        )
        self.assertEqual(
            (result.hybrid, result.record, result.data), (False, "aes-256-gcm", server.message)
        )
        (session,) = server.wait_for_sessions(1)
        self.assertEqual(
            (session.hybrid, session.record, session.outcome), (False, "aes-256-gcm", "ok")
        )

    def test_server_requiring_post_quantum_refuses_revision2(self):
        server = self.serve(require_post_quantum=True)
        with self.assertRaises(kx1.PeerError) as caught:
            kx1.IndependentClient(server.fingerprint, revision=2).connect("127.0.0.1", server.port)
        self.assertEqual(caught.exception.code, "no-post-quantum")

    def test_revision3_client_requires_post_quantum(self):
        server = self.serve(post_quantum=False, connections=2)
        with self.assertRaises(kx1.ProtocolFailure) as caught:
            kx1.IndependentClient(server.fingerprint, revision=3).connect("127.0.0.1", server.port)
        self.assertEqual(caught.exception.code, "no-post-quantum")
        result = kx1.IndependentClient(
            server.fingerprint, revision=3, allow_classical=True
        ).connect("127.0.0.1", server.port)
        self.assertEqual((result.hybrid, result.record), (False, "aes-256-gcm"))
        sessions = server.wait_for_sessions(2)
        self.assertEqual(sessions[0].peer_error, "no-post-quantum")

    def test_stale_ticket(self):
        server = self.serve(connections=2)
        client = kx1.IndependentClient(server.fingerprint)
        first = client.connect("127.0.0.1", server.port)
        server.wait_for_sessions(1)
        server.retire_ticket_keys()
        with self.assertRaises(kx1.PeerError) as caught:
            client.connect("127.0.0.1", server.port, first.ticket)
        self.assertEqual(caught.exception.code, "stale-ticket")

    def test_server_implicit_rejection(self):
        """§3: a KEY that does not decode gets the same frames as one that
        does (confirmation, TICKET), then our record fails: bad-record.  A
        KEY of the wrong length is malformed-frame."""
        server = self.serve(connections=2)
        k = server.ephemeral.key_size // 8
        for key_payload, expected in [
            (b"\x00" + b"\x01" * (k - 1), ["MSG", "TICKET", "ERROR"]),
            (b"\x01" * (k - 1), ["ERROR"]),
        ]:
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                frames = kx1.FrameSocket(sock)
                self.assertEqual(frames.receive()[0], "HELLO")
                frames.send("KEY", key_payload)
                frames.send("MSG", kx1.Direction(b"\x00" * 32).seal("MSG", b""))
                received = []
                while not received or received[-1][0] != "ERROR":
                    received.append(frames.receive())
                self.assertEqual([verb for verb, _ in received], expected)
        sessions = server.wait_for_sessions(2)
        self.assertEqual(
            [(s.decryption_failed, s.outcome) for s in sessions],
            [(True, "bad-record"), (False, "malformed-frame")],
        )

    def test_wrong_pin_sends_nothing_secret(self):
        server = self.serve()
        with self.assertRaises(kx1.ProtocolFailure) as caught:
            kx1.IndependentClient("SHA256:" + "A" * 43).connect("127.0.0.1", server.port)
        self.assertEqual(caught.exception.code, "untrusted-key")
        (session,) = server.wait_for_sessions(1)
        self.assertEqual((session.kind, session.peer_error), (None, "untrusted-key"))


# -- the independent client against twistd keyexchange --------------------------------


class DaemonInteropTests(DaemonTestCase):
    """An independent client that requires forward secrecy
    against ``twistd keyexchange`` with default settings."""

    timeout = 60
    light_config = ""  # the defaults are under test

    def shared_default_daemon(self):
        """The daemon with the default settings, for the tests that only
        connect to it."""
        return self.shared_daemon(light=False)

    @defer.inlineCallbacks
    def test_full_then_resumed_session(self):
        daemon = self.shared_default_daemon()
        port = daemon.port
        client = kx1.IndependentClient(FINGERPRINT)

        first = yield threads.deferToThread(client.connect, "127.0.0.1", port)
        self.assertEqual(first.data, MESSAGE)
        self.assertFalse(first.resumed)
        # §10.2 defaults: 3072 bits; expires = made + 60 + 10 + 60, and the
        # key was made at most one interval ago.
        self.assertEqual((first.forward_secrecy, first.ephemeral_bits), (True, 3072))
        self.assertTrue(
            70 - 1 <= first.ephemeral_expires - time.time() <= 130 + 1, first.ephemeral_expires
        )
        self.assertEqual(first.ticket.lifetime, 3600)
        yield daemon.wait_for(b"ended: ok; full, forward secrecy")

        second = yield threads.deferToThread(client.connect, "127.0.0.1", port, first.ticket)
        self.assertEqual(second.data, MESSAGE)
        self.assertTrue(second.resumed)
        log = yield daemon.wait_for(b"ended: ok; resumed")
        self.assertEqual(log.count(b"ended: ok;"), 2, log.decode())
        # The peer speaks revision 2 here: the default daemon serves it as
        # before, with AES-256-GCM and no ML-KEM (§12.5).
        self.assertEqual((first.hybrid, first.record), (False, "aes-256-gcm"))
        self.assertNotIn(b"post-quantum, aes", log)

    def start_daemon(self, *args):
        with open(self.conf, "w") as f:
            f.write(
                "[keyexchanged]\nlisten = tcp:0:interface=127.0.0.1\nprivate-key = server.key\n"
            )
        daemon = Daemon.start(["--config", self.conf, *args])
        self.addCleanup(daemon.stop)
        return daemon

    @defer.inlineCallbacks
    def test_revision3_full_then_resumed_hybrid_ocb_session(self):
        """The issue's "done when": an independent client on cryptography
        completes a hybrid OCB session, full then resumed, against the
        daemon with default settings."""
        daemon = self.shared_default_daemon()
        port = daemon.port
        client = kx1.IndependentClient(FINGERPRINT, revision=3, send=b"from the peer")
        first = yield threads.deferToThread(client.connect, "127.0.0.1", port)
        self.assertEqual((first.data, first.resumed), (MESSAGE, False))
        self.assertEqual((first.hybrid, first.record), (True, "aes-256-ocb"))
        # §12.2: expires within 30 minutes, as the revision-3 client checked.
        self.assertLessEqual(first.ephemeral_expires - time.time(), 1800 + 1)
        self.assertTrue(first.ticket.hybrid)
        yield daemon.wait_for(b"ended: ok; full, forward secrecy, post-quantum, aes-256-ocb")
        second = yield threads.deferToThread(client.connect, "127.0.0.1", port, first.ticket)
        self.assertEqual((second.data, second.resumed), (MESSAGE, True))
        self.assertEqual((second.hybrid, second.record), (True, "aes-256-ocb"))
        # §11.3: a new ticket in the resumed session too.
        self.assertEqual(len(second.tickets), 1)
        self.assertNotEqual(second.ticket.ticket, first.ticket.ticket)
        yield daemon.wait_for(
            b"ended: ok; resumed (secrecy bounded by the ticket keys), post-quantum"
        )

    @defer.inlineCallbacks
    def test_require_post_quantum_refuses_a_revision2_peer(self):
        daemon = self.start_daemon("--require-post-quantum")
        port = yield daemon.listening
        with self.assertRaises(kx1.PeerError) as caught:
            yield threads.deferToThread(
                kx1.IndependentClient(FINGERPRINT).connect, "127.0.0.1", port
            )
        self.assertEqual(caught.exception.code, "no-post-quantum")
        yield daemon.wait_for(b"ended: no-post-quantum")
        # A revision-3 peer is served.
        result = yield threads.deferToThread(
            kx1.IndependentClient(FINGERPRINT, revision=3).connect, "127.0.0.1", port
        )
        self.assertEqual((result.data, result.hybrid), (MESSAGE, True))


# -- keyexchange connect against the independent server -------------------------------


class ClientInteropTests(DaemonTestCase):
    """``keyexchange connect`` against a server that is not
    keyexchanged, offering ephemeral keys and tickets."""

    timeout = 60

    def serve(self, **options):
        server = kx1.IndependentServer(**options)
        server.start()
        self.addCleanup(threads.deferToThread, server.stop)
        return server

    def sessions(self, server, count):
        return threads.deferToThread(server.wait_for_sessions, count)

    def connect(self, server, *args):
        return run_client(
            "connect",
            f"127.0.0.1:{server.port}",
            "--fingerprint",
            server.fingerprint,
            "--timeout",
            "10",
            *args,
        )

    @defer.inlineCallbacks
    def test_full_then_resumed_from_the_ticket_cache(self):
        """A full session, then two resumed ones: each with the ticket the
        previous session issued (§11.3: a ticket is used at most once), and
        the cache file has mode 0600 (§11.2)."""
        server = self.serve(connections=3)
        cache = os.path.join(self.dir, "tickets")
        out, err, code = yield self.connect(server, "--ticket-cache", cache)
        self.assertEqual((out, code), (server.message, 0), err)
        (first,) = yield self.sessions(server, 1)
        self.assertEqual((first.kind, first.outcome), ("full", "ok"), first)
        self.assertEqual(first.decrypted_with, "ephemeral")
        self.assertFalse(first.decryption_failed)
        self.assertEqual(os.stat(cache).st_mode & 0o777, 0o600)

        out, err, code = yield self.connect(server, "--ticket-cache", cache)
        self.assertEqual((out, code), (server.message, 0), err)
        _, second = yield self.sessions(server, 2)
        self.assertEqual((second.kind, second.outcome), ("resumed", "ok"), second)
        self.assertEqual(second.resume_payload, first.tickets_issued[0])

        out, err, code = yield self.connect(server, "--ticket-cache", cache)
        self.assertEqual((out, code), (server.message, 0), err)
        _, _, third = yield self.sessions(server, 3)
        self.assertEqual((third.kind, third.outcome), ("resumed", "ok"), third)
        self.assertEqual(third.resume_payload, second.tickets_issued[0])

    @defer.inlineCallbacks
    def test_no_forward_secrecy_refused_unless_allowed(self):
        server = self.serve(connections=2, ephemeral=False)
        out, err, code = yield self.connect(server)
        self.assertEqual((out, code), (b"", 3), err)
        self.assertIn(b"--allow-no-forward-secrecy", err)
        (first,) = yield self.sessions(server, 1)
        self.assertEqual((first.kind, first.peer_error), (None, "no-forward-secrecy"), first)

        out, err, code = yield self.connect(server, "--allow-no-forward-secrecy")
        self.assertEqual((out, code), (server.message, 0), err)
        _, second = yield self.sessions(server, 2)
        self.assertEqual((second.kind, second.outcome), ("full", "ok"), second)
        self.assertEqual(second.decrypted_with, "long-term")
        self.assertFalse(second.decryption_failed)

    @defer.inlineCallbacks
    def test_stale_ticket_falls_back_to_a_full_handshake(self):
        server = self.serve(connections=3)
        cache = os.path.join(self.dir, "tickets")
        out, err, code = yield self.connect(server, "--ticket-cache", cache)
        self.assertEqual((out, code), (server.message, 0), err)
        yield self.sessions(server, 1)
        server.retire_ticket_keys()

        out, err, code = yield self.connect(server, "--ticket-cache", cache)
        self.assertEqual((out, code), (server.message, 0), err)
        _, stale, full = yield self.sessions(server, 3)
        self.assertEqual(stale.outcome, "stale-ticket", stale)
        self.assertEqual(stale.stale_reason, "ticket key unknown or retired")
        self.assertEqual((full.kind, full.outcome), ("full", "ok"), full)

    @defer.inlineCallbacks
    def test_key_update_from_the_server(self):
        """§5: the server updates its key before its message."""
        server = self.serve(key_update=True)
        out, err, code = yield self.connect(server)
        self.assertEqual((out, code), (server.message, 0), err)
        (session,) = yield self.sessions(server, 1)
        self.assertEqual(session.outcome, "ok", session)
