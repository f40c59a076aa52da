"""The I/O-free KX/1 state machines, driven with the vector file."""

import base64
import json
import time

from Crypto.PublicKey import RSA as PyCryptodomeRSA
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from keyexchanged import handshake, keys, mlkem, schedule, tickets
from keyexchanged.ephemeral import EphemeralKey, sign_ephemeral
from keyexchanged.framing import MAX_PAYLOAD, encode_frame
from keyexchanged.handshake import (
    ClientConnection,
    DataReceived,
    DecryptionNeeded,
    EndReceived,
    ErrorReceived,
    HandshakeComplete,
    ProtocolFailed,
    ServerConnection,
    ServerIdentity,
    ServerKeyReceived,
    TicketReceived,
    VerificationNeeded,
    error_payload,
    parse_error_payload,
)
from keyexchanged.records import GCM, OCB, RecordOpener, RecordSealer
from keyexchanged.rsa import DecryptionError, PublicKey
from tests import rev3
from tests.fixtures import (
    CLIENT_KEY,
    EPHEMERAL,
    EPHEMERAL_PRIVATE,
    IDENTITY,
    SERVER_KEY,
    JunkIdentity,
    assert_every_case,
    decrypt_each_key_once,
    ephemeral_key,
    frames,
    replay,
    rev1_client,
    vector_client,
    vector_server,
)
from tests.vectors import RAW, RESUME_RAW, hexbytes, record, resume_hexbytes, revision3_hexbytes

SERVER_FINGERPRINT = IDENTITY.fingerprint


def frame(verb, name):
    return encode_frame(verb, record(name))


class VectorTests(unittest.TestCase):
    """Every step of the vector file, byte for byte."""

    def test_hello(self):
        server = vector_server()
        self.assertEqual(server.data_to_send(), hexbytes("hello_frame"))
        self.assertEqual(IDENTITY.hello_payload(hexbytes("nonce")), hexbytes("hello_payload"))
        self.assertEqual(IDENTITY.der, hexbytes("server_spki_der"))
        self.assertEqual(IDENTITY.fingerprint, RAW["server_fingerprint"])

    def test_client_reads_hello_and_sends_key(self):
        client = vector_client()
        events = client.receive_data(hexbytes("hello_frame"))
        self.assertEqual(len(events), 1)
        offer = events[0]
        self.assertIsInstance(offer, ServerKeyReceived)
        self.assertEqual(offer.fingerprint, RAW["server_fingerprint"])
        self.assertEqual(offer.der, hexbytes("server_spki_der"))
        self.assertEqual(offer.certificates, [])
        self.assertEqual(client.data_to_send(), b"")  # nothing before trust
        client.accept_key()
        sent = frames(client.data_to_send())
        self.assertEqual(sent[0], ("KEY", hexbytes("key_payload")))
        # Without a key of its own, its first record at once: an empty MSG.
        self.assertEqual([(v, len(p)) for v, p in sent[1:]], [("MSG", 16)])
        self.assertEqual(client.transcript_hash, hexbytes("transcript_hash"))

    def test_key_schedule(self):
        th = handshake.transcript_hash(hexbytes("hello_payload"), hexbytes("key_payload"))
        self.assertEqual(th, hexbytes("transcript_hash"))
        client_key, server_key = handshake.derive_keys(hexbytes("secret"), hexbytes("nonce"), th)
        self.assertEqual(client_key, hexbytes("client_key"))
        self.assertEqual(server_key, hexbytes("server_key"))

    def test_server_decrypts_key_and_confirms(self):
        server = vector_server()
        server.data_to_send()
        events = server.receive_data(encode_frame("KEY", hexbytes("key_payload")))
        # Keys agreed: the confirmation (an empty MSG) goes out at once; the
        # application waits for the client's first record.
        self.assertEqual(events, [])
        self.assertEqual(server.transcript_hash, hexbytes("transcript_hash"))
        confirmation = server.data_to_send()
        self.assertEqual([(v, len(p)) for v, p in frames(confirmation)], [("MSG", 16)])
        client = vector_client()
        client.receive_data(hexbytes("hello_frame"))
        client.accept_key()
        _key, first = frames(client.data_to_send())
        self.assertEqual(
            client.receive_data(confirmation), [HandshakeComplete(IDENTITY.fingerprint)]
        )
        self.assertEqual(server.receive_data(encode_frame(*first)), [HandshakeComplete(None)])

    def test_server_sends_records_after_its_confirmation(self):
        server = vector_server()
        server.data_to_send()
        server.receive_data(encode_frame("KEY", hexbytes("key_payload")))
        server.send_data(hexbytes("server_message"))
        server.send_end()
        client = vector_client()
        client.receive_data(hexbytes("hello_frame"))
        client.accept_key()
        self.assertEqual(
            client.receive_data(server.data_to_send()),
            [
                HandshakeComplete(IDENTITY.fingerprint),
                DataReceived(hexbytes("server_message")),
                EndReceived(),
            ],
        )

    def test_client_auth_record(self):
        client = vector_client(identity=CLIENT_KEY)
        client.receive_data(hexbytes("hello_frame"))
        client.accept_key()
        self.assertEqual(client.auth_plaintext(), hexbytes("auth_plaintext"))
        self.assertEqual(
            frames(client.data_to_send()),
            [("KEY", hexbytes("key_payload")), ("AUTH", record("client_auth_seq0"))],
        )
        client.send_data(hexbytes("client_message"))
        client.send_end()
        self.assertEqual(
            client.data_to_send(), frame("MSG", "client_msg_seq1") + frame("END", "client_end_seq2")
        )

    def test_server_checks_the_vector_auth(self):
        server = vector_server(authorized_keys={RAW["client_fingerprint"]})
        server.data_to_send()
        self.assertEqual(server.receive_data(encode_frame("KEY", hexbytes("key_payload"))), [])
        events = server.receive_data(
            frame("AUTH", "client_auth_seq0")
            + frame("MSG", "client_msg_seq1")
            + frame("END", "client_end_seq2")
        )
        self.assertEqual(
            events,
            [
                HandshakeComplete(RAW["client_fingerprint"]),
                DataReceived(hexbytes("client_message")),
                EndReceived(),
            ],
        )

    def test_optional_auth_names_the_client_before_the_application_starts(self):
        server = vector_server()
        server.receive_data(encode_frame("KEY", hexbytes("key_payload")))
        events = server.receive_data(frame("AUTH", "client_auth_seq0"))
        self.assertEqual(events, [HandshakeComplete(RAW["client_fingerprint"])])

    def test_client_opens_server_records(self):
        client = vector_client()
        client.receive_data(hexbytes("hello_frame"))
        client.accept_key()
        events = client.receive_data(
            frame("MSG", "server_msg_seq0") + frame("END", "server_end_seq1")
        )
        self.assertEqual(
            events,
            [
                HandshakeComplete(RAW["server_fingerprint"]),
                DataReceived(hexbytes("server_message")),
                EndReceived(),
            ],
        )
        self.assertFalse(client.finished)
        client.send_end()
        self.assertTrue(client.finished)

    def test_key_update_vector(self):
        # The sealer's side of the vector is in test_records; here the
        # server updates its key when its limit says so, and the client
        # follows the vector's records across the update.
        server = vector_server(max_records=2)
        server.data_to_send()
        server.receive_data(encode_frame("KEY", hexbytes("key_payload")))
        server.send_data(hexbytes("server_message"))
        self.assertEqual([v for v, _ in frames(server.data_to_send())], ["MSG", "UPDATE", "MSG"])
        client = vector_client()
        client.receive_data(hexbytes("hello_frame"))
        client.accept_key()
        events = client.receive_data(
            frame("MSG", "server_msg_seq0")
            + frame("UPDATE", "server_update_seq1")
            + frame("MSG", "server_msg_after_update_seq0")
        )
        self.assertEqual(
            events[1:], [DataReceived(hexbytes("server_message")), DataReceived(b"after update")]
        )

    def test_every_chunk_size_server(self):
        decrypt_each_key_once(self)  # the same KEY at every chunk size
        stream = (
            encode_frame("KEY", hexbytes("key_payload"))
            + frame("AUTH", "client_auth_seq0")
            + frame("MSG", "client_msg_seq1")
            + frame("END", "client_end_seq2")
        )
        expected = [
            HandshakeComplete(RAW["client_fingerprint"]),
            DataReceived(hexbytes("client_message")),
            EndReceived(),
        ]
        for size in range(1, len(stream) + 1):
            server = vector_server(authorized_keys={RAW["client_fingerprint"]})
            events = []
            for i in range(0, len(stream), size):
                events += server.receive_data(stream[i : i + size])
            self.assertEqual(events, expected, f"chunk size {size}")

    def test_every_chunk_size_client(self):
        # The server sends nothing after HELLO until it has our KEY, so the
        # HELLO and the records are chunked separately, around accept_key().
        hello = hexbytes("hello_frame")
        tail = frame("MSG", "server_msg_seq0") + frame("END", "server_end_seq1")
        for size in range(1, len(hello) + len(tail) + 1):
            client = vector_client()
            events = []
            for i in range(0, len(hello), size):
                events += client.receive_data(hello[i : i + size])
            self.assertIsInstance(events[-1], ServerKeyReceived, f"chunk size {size}")
            events += client.accept_key()
            self.assertEqual(
                frames(client.data_to_send())[0], ("KEY", hexbytes("key_payload")), size
            )
            for i in range(0, len(tail), size):
                events += client.receive_data(tail[i : i + size])
            self.assertEqual(
                [type(e) for e in events],
                [ServerKeyReceived, HandshakeComplete, DataReceived, EndReceived],
                f"chunk size {size}",
            )


def keyed(authorized=None, identity=None):
    """A server that has the client's KEY and nothing else, and the client,
    whose own first record was not delivered: the test seals one itself."""
    server = ServerConnection(IDENTITY, authorized_keys=authorized)
    server.start()
    client = rev1_client(identity=identity)
    client.receive_data(server.data_to_send())
    client.accept_key()
    key = frames(client.data_to_send())[0]
    server.receive_data(encode_frame(*key))
    server.data_to_send()
    client._sealer.sequence = 0
    return server, client


def established(authorized=None, identity=None, **limits):
    """A server and a client that finished the handshake, in memory."""
    server = ServerConnection(IDENTITY, authorized_keys=authorized, **limits)
    server.start()
    client = rev1_client(identity=identity, **limits)
    client.receive_data(server.data_to_send())
    client.accept_key()
    server_events = server.receive_data(client.data_to_send())
    # The server's key confirmation is the client's first record to open.
    client.receive_data(server.data_to_send())
    return server, client, server_events


class RoundTripTests(unittest.TestCase):
    def test_both_ways_with_updates(self):
        server, client, events = established(max_records=3, max_bytes=1000)
        self.assertEqual(events, [HandshakeComplete(None)])
        received = []
        for i in range(20):
            server.send_data(b"s%d" % i * 40)
            client.send_data(b"c%d" % i * 40)
        for event in client.receive_data(server.data_to_send()):
            if isinstance(event, DataReceived):
                received.append(event.data)
        self.assertEqual(b"".join(received), b"".join(b"s%d" % i * 40 for i in range(20)))
        events = server.receive_data(client.data_to_send())
        self.assertEqual(
            b"".join(e.data for e in events if isinstance(e, DataReceived)),
            b"".join(b"c%d" % i * 40 for i in range(20)),
        )

    def test_large_write_is_split_into_64k_records(self):
        server, client, _ = established()
        server.send_data(b"x" * (3 * 65536 + 1))
        sent = frames(server.data_to_send())
        self.assertEqual([len(p) - 16 for _, p in sent], [65536, 65536, 65536, 1])
        events = client.receive_data(b"".join(encode_frame(v, p) for v, p in sent))
        self.assertEqual(
            sum(len(e.data) for e in events if isinstance(e, DataReceived)), 3 * 65536 + 1
        )

    def test_confirmation_is_one_empty_record(self):
        server = ServerConnection(IDENTITY)
        server.start()
        client = rev1_client()
        client.receive_data(server.data_to_send())
        client.accept_key()
        key, first = frames(client.data_to_send())
        server.receive_data(encode_frame(*key))
        sent = frames(server.data_to_send())
        self.assertEqual([(v, len(p)) for v, p in sent], [("MSG", 16)])
        self.assertEqual(server.receive_data(encode_frame(*first)), [HandshakeComplete(None)])
        self.assertEqual(server.data_to_send(), b"")  # no second confirmation
        self.assertEqual(
            client.receive_data(encode_frame(*sent[0])), [HandshakeComplete(IDENTITY.fingerprint)]
        )

    def test_no_sending_after_end(self):
        server, _, _ = established()
        server.send_end()
        self.assertRaises(RuntimeError, server.send_data, b"x")
        self.assertRaises(RuntimeError, server.send_end)


class ImplicitRejectionTests(unittest.TestCase):
    """A KEY that does not decode gets exactly what a good one gets."""

    def server_output_for(self, ciphertext):
        server = ServerConnection(IDENTITY)
        server.start()
        hello = server.data_to_send()
        events = server.receive_data(encode_frame("KEY", ciphertext))
        return hello, events, [(v, len(p)) for v, p in frames(server.data_to_send())]

    def test_bad_keys_look_like_good_ones(self):
        k = IDENTITY.key_bytes
        n = SERVER_KEY.n
        good_client = rev1_client()
        server = ServerConnection(IDENTITY)
        server.start()
        good_client.receive_data(server.data_to_send())
        good_client.accept_key()
        good_key = frames(good_client.data_to_send())[0][1]
        good_events = server.receive_data(encode_frame("KEY", good_key))
        good_out = [(v, len(p)) for v, p in frames(server.data_to_send())]

        wrong_label = IDENTITY.public_key.encrypt_oaep(b"s" * 32, label=b"another HELLO")
        short_secret = IDENTITY.public_key.encrypt_oaep(b"s" * 16)
        for ciphertext in [
            b"\x00" * k,
            b"\xff" * k,  # above n
            n.to_bytes(k, "big"),  # exactly n
            (n - 1).to_bytes(k, "big"),
            wrong_label,
            short_secret,
            good_key,  # replayed into another connection: the label differs
        ]:
            _, events, out = self.server_output_for(ciphertext)
            self.assertEqual(events, good_events)
            self.assertEqual(out, good_out)
        self.assertEqual(good_out, [("MSG", 16)])

    def test_client_then_fails_to_open(self):
        server = ServerConnection(IDENTITY)
        server.start()
        client = rev1_client()
        client.receive_data(server.data_to_send())
        client.accept_key()
        client.data_to_send()
        server.receive_data(encode_frame("KEY", b"\x01" * IDENTITY.key_bytes))
        events = client.receive_data(server.data_to_send())
        self.assertEqual(events, [ProtocolFailed("bad-record", "MSG record failed to open")])
        error = frames(client.data_to_send())
        self.assertEqual(error[0][0], "ERROR")
        self.assertEqual(json.loads(error[0][1])["error"], "bad-record")


def error_of(connection):
    out = frames(connection.data_to_send())
    assert out[-1][0] == "ERROR", out
    return json.loads(out[-1][1])


class ServerRefusalTests(unittest.TestCase):
    def assertFails(self, server, data, code):
        events = server.receive_data(data)
        self.assertEqual(len(events), 1, events)
        self.assertIsInstance(events[0], ProtocolFailed)
        self.assertEqual(events[0].code, code)
        self.assertEqual(error_of(server)["error"], code)
        self.assertTrue(server.closed)
        # Nothing more is read or sent.
        self.assertEqual(server.receive_data(b"MSG 0\r\n"), [])
        self.assertEqual(server.data_to_send(), b"")
        return events[0]

    def fresh(self, **options):
        server = ServerConnection(IDENTITY, **options)
        server.start()
        server.data_to_send()
        return server

    def test_msg_before_key(self):
        self.assertFails(self.fresh(), encode_frame("MSG", b"x" * 16), "unexpected-frame")

    def test_hello_from_client(self):
        self.assertFails(self.fresh(), encode_frame("HELLO", b"{}"), "unexpected-frame")

    def test_wrong_state_refused_before_payload(self):
        # Only the header arrived: it is refused at once.
        self.assertFails(self.fresh(), b"MSG 65552\r\n", "unexpected-frame")

    def test_key_wrong_length(self):
        for length in (0, 1, IDENTITY.key_bytes - 1, IDENTITY.key_bytes + 1):
            event = self.assertFails(self.fresh(), b"KEY %d\r\n" % length, "malformed-frame")
            self.assertIn(str(IDENTITY.key_bytes), event.detail)

    def test_second_key(self):
        server, _client, _ = established()
        key = encode_frame("KEY", b"\x00" * IDENTITY.key_bytes)
        self.assertFails(server, key, "unexpected-frame")

    def test_record_that_fails_to_open(self):
        server, _, _ = established()
        self.assertFails(server, encode_frame("MSG", b"\x00" * 40), "bad-record")

    def test_record_after_end(self):
        server, client, _ = established()
        client.send_end()
        self.assertEqual(server.receive_data(client.data_to_send()), [EndReceived()])
        late = encode_frame("MSG", client._sealer.seal("MSG", b"late"))
        self.assertFails(server, late, "unexpected-frame")

    def test_bad_update(self):
        server, _, _ = established()
        self.assertFails(server, encode_frame("UPDATE", b"\x00" * 16), "bad-record")

    def test_short_end(self):
        server, _, _ = established()
        self.assertFails(server, encode_frame("END", b"\x00" * 5), "bad-record")

    def test_auth_required(self):
        server = self.fresh(authorized_keys=set())
        client = rev1_client()
        client.receive_data(hello_with())
        client.accept_key()
        key, first = frames(client.data_to_send())
        self.assertEqual(server.receive_data(encode_frame(*key)), [])
        self.assertEqual(server.data_to_send(), b"")  # no confirmation before AUTH
        # The client's empty first MSG is answered at once, not at a timeout.
        self.assertFails(server, encode_frame(*first), "auth-required")

    def test_auth_unauthorized_key(self):
        stranger = {"SHA256:" + "A" * 43}
        _server, _client, events = established(authorized=stranger, identity=CLIENT_KEY)
        self.assertEqual(events[-1].code, "auth-failed")
        self.assertEqual(events[-1].detail, "client key is not authorized")

    def test_auth_bad_signature(self):
        server, client = keyed(authorized={RAW["client_fingerprint"]})
        obj = json.loads(hexbytes("auth_plaintext"))  # signed over another th
        payload = client._sealer.seal("AUTH", json.dumps(obj).encode())
        event = self.assertFails(server, encode_frame("AUTH", payload), "auth-failed")
        self.assertEqual(event.detail, "bad AUTH signature")

    def test_auth_garbage(self):
        for plaintext in [
            b"",
            b"not json",
            b"[]",
            b'{"key": 1}',
            b'{"key": "!!", "signature": ""}',
            b'{"key": "AAAA", "signature": "AAAA"}',
            b"\xff\xfe",
        ]:
            server, client = keyed()
            payload = client._sealer.seal("AUTH", plaintext)
            event = self.assertFails(server, encode_frame("AUTH", payload), "auth-failed")
            self.assertIn(event.detail, {"malformed AUTH", "AUTH is not a JSON object"})

    def test_auth_not_first(self):
        server, client, _ = established()
        client.send_data(b"first")
        server.receive_data(client.data_to_send())
        client.identity = CLIENT_KEY
        payload = client._sealer.seal("AUTH", client.auth_plaintext())
        self.assertFails(server, encode_frame("AUTH", payload), "unexpected-frame")

    def test_error_from_client(self):
        server = self.fresh()
        events = server.receive_data(encode_frame("ERROR", b'{"error": "weak-key", "detail": "x"}'))
        self.assertEqual(events, [ErrorReceived("weak-key", "x")])
        self.assertTrue(server.closed)
        self.assertEqual(server.data_to_send(), b"")

    def test_unreadable_error(self):
        server = self.fresh()
        events = server.receive_data(encode_frame("ERROR", b'{"error": "\\u0000made-up"}'))
        self.assertEqual(events, [ErrorReceived("unknown", "")])

    def test_timeout(self):
        server = self.fresh()
        self.assertEqual(
            server.fail("timeout", "handshake took too long"),
            [ProtocolFailed("timeout", "handshake took too long")],
        )
        self.assertEqual(
            error_of(server), {"error": "timeout", "detail": "handshake took too long"}
        )


def hello_with(**members):
    hello = {
        "protocol": "kx/1",
        "key": IDENTITY.key_b64,
        "nonce": base64.b64encode(b"n" * 32).decode(),
    }
    hello.update(members)
    hello = {k: v for k, v in hello.items() if v is not None}
    return encode_frame("HELLO", json.dumps(hello).encode())


class ClientRefusalTests(unittest.TestCase):
    def assertFails(self, data, code, client=None):
        client = client or rev1_client()
        events = client.receive_data(data)
        self.assertEqual([type(e) for e in events], [ProtocolFailed], events)
        self.assertEqual(events[0].code, code)
        out = frames(client.data_to_send())
        self.assertEqual([v for v, _ in out], ["ERROR"])  # and no KEY
        return events[0]

    def test_valid_hello(self):
        events = rev1_client().receive_data(hello_with())
        self.assertIsInstance(events[0], ServerKeyReceived)

    def test_unknown_members_ignored(self):
        events = rev1_client().receive_data(hello_with(extra=[1, 2], more={"a": None}))
        self.assertIsInstance(events[0], ServerKeyReceived)

    def test_malformed_hellos(self):
        nonce = base64.b64encode(b"n" * 32).decode()
        for data in [
            encode_frame("HELLO", b"not json"),
            encode_frame("HELLO", b"[1, 2]"),
            encode_frame("HELLO", b"\xff" * 10),
            encode_frame("HELLO", b"[" * 60000),
            hello_with(protocol=None),
            hello_with(protocol=1),
            hello_with(key=None),
            hello_with(key=5),
            hello_with(key="!!!!"),
            hello_with(key=IDENTITY.key_b64[:-2]),  # bad padding
            hello_with(key=base64.b64encode(b"not DER").decode()),
            hello_with(nonce=None),
            hello_with(nonce=base64.b64encode(b"n" * 31).decode()),
            hello_with(nonce=nonce.replace("=", "")),
            hello_with(nonce=nonce[:-2] + "5="),  # non-canonical trailing bits
            hello_with(certificates="AAAA"),
            hello_with(certificates=[5]),
            encode_frame(
                "HELLO",
                b'{"protocol": "kx/1", "protocol": "kx/2", "key": "%s", "nonce": "%s"}'
                % (IDENTITY.key_b64.encode(), nonce.encode()),
            ),
        ]:
            self.assertFails(data, "malformed-frame")

    def test_other_protocol(self):
        event = self.assertFails(hello_with(protocol="kx/2"), "unsupported-protocol")
        self.assertIn("kx/2", event.detail)

    def test_weak_keys(self):
        small = PyCryptodomeRSA.generate(1024)
        e3 = PyCryptodomeRSA.construct((SERVER_KEY.n, 3))
        for key in [small.public_key(), e3]:
            der = key.export_key("DER")
            self.assertFails(hello_with(key=base64.b64encode(der).decode()), "weak-key")

    def test_frames_before_hello(self):
        for verb in ("MSG", "END", "KEY", "AUTH", "UPDATE"):
            self.assertFails(b"%s 16\r\n" % verb.encode(), "unexpected-frame")

    def test_frames_while_deciding_trust(self):
        client = rev1_client()
        client.receive_data(hello_with())
        self.assertFails(b"MSG 16\r\n", "unexpected-frame", client)

    def test_second_hello(self):
        client = rev1_client()
        client.receive_data(hello_with())
        client.accept_key()
        client.data_to_send()
        self.assertFails(hello_with(), "unexpected-frame", client)

    def test_reject_key_sends_error_and_no_key(self):
        client = rev1_client()
        client.receive_data(hello_with())
        events = client.reject_key("fingerprint mismatch")
        self.assertEqual(events, [ProtocolFailed("untrusted-key", "fingerprint mismatch")])
        self.assertEqual([v for v, _ in frames(client.data_to_send())], ["ERROR"])
        self.assertRaises(RuntimeError, client.accept_key)

    def test_error_detail_is_bounded_and_printable(self):
        client = rev1_client()
        client.fail("internal", "\x1b[31m" + "x" * 5000)
        error = frames(client.data_to_send())[0][1]
        self.assertLessEqual(len(error), MAX_PAYLOAD["ERROR"])
        self.assertNotIn(b"\x1b", error)


# -- the client's AUTH and a peer's ERROR, whatever they hold ---------------------------

CLIENT_FP = RAW["client_fingerprint"]


def core_pair(identity, **server_options):
    """A server core that has sent HELLO and a client core that trusts it
    (revision 1: no ephemeral key, cheaper and the same for AUTH)."""
    server = ServerConnection(IDENTITY, **server_options)
    server.start()
    client_core = rev1_client(identity=identity)
    (offer,) = client_core.receive_data(server.data_to_send())
    assert isinstance(offer, ServerKeyReceived), offer
    client_core.accept_key()
    return server, client_core


class AuthKeyBoundTests(unittest.TestCase):
    """The key of an AUTH is bounded (``client-key-max-bits``, e = 65537)."""

    def test_8192_bit_key_is_refused_by_default(self):
        server, client_core = core_pair(JunkIdentity(8192))
        self.assertEqual(
            server.receive_data(client_core.data_to_send()),
            [ProtocolFailed("auth-failed", "RSA modulus of 8192 bits")],
        )
        self.assertEqual(
            json.loads(frames(server.data_to_send())[-1][1]),
            {"error": "auth-failed", "detail": "RSA modulus of 8192 bits"},
        )

    def test_4096_bits_is_the_default_bound(self):
        # Refused on its size, before its (junk) signature is looked at.
        server, client_core = core_pair(JunkIdentity(4104))
        self.assertEqual(
            server.receive_data(client_core.data_to_send()),
            [ProtocolFailed("auth-failed", "RSA modulus of 4104 bits")],
        )
        # Passes the bound, then fails on its signature.
        server, client_core = core_pair(JunkIdentity(4096))
        self.assertEqual(
            server.receive_data(client_core.data_to_send()),
            [ProtocolFailed("auth-failed", "bad AUTH signature")],
        )

    def test_8192_bit_key_is_accepted_when_allowed(self):
        identity = JunkIdentity(8192)
        server, client_core = core_pair(identity, client_key_max_bits=8192, defer_work=True)
        (decryption,) = server.receive_data(client_core.data_to_send())
        self.assertIsInstance(decryption, DecryptionNeeded)
        secret = decryption.private_key.decrypt_oaep(decryption.ciphertext, label=decryption.label)
        (verification,) = server.key_decrypted(secret)
        # Passed the bound: the signature goes to be verified.
        self.assertIsInstance(verification, VerificationNeeded)
        self.assertEqual(verification.public_key, identity.public_key())
        self.assertEqual(server.auth_verified(True), [HandshakeComplete(identity.fingerprint)])

    def test_8192_bit_key_allowed_is_verified_inline_without_workers(self):
        server, client_core = core_pair(JunkIdentity(8192), client_key_max_bits=8192)
        self.assertEqual(
            server.receive_data(client_core.data_to_send()),
            [ProtocolFailed("auth-failed", "bad AUTH signature")],
        )

    def test_public_exponent_must_be_65537(self):
        for e in (65539, 3, 2**255 + 1):
            server, client_core = core_pair(JunkIdentity(2048, e=e))
            self.assertEqual(
                server.receive_data(client_core.data_to_send()),
                [ProtocolFailed("auth-failed", "RSA public exponent is not 65537")],
                e,
            )

    def test_a_real_key_still_authenticates(self):
        server, client_core = core_pair(CLIENT_KEY)
        events = server.receive_data(client_core.data_to_send())
        self.assertEqual(events, [HandshakeComplete(CLIENT_FP)])


BAD_TYPES = ([], ["busy"], {}, {"error": "busy"}, 5, 1.5, None, True)


#: Characters that JSON escapes into 6 or 12 bytes, or that must not
#: reach a log as they are.
WIDE = ("€", "\U0001f600", "\u2028", "\x00", '"', "\\", "\ud800")


class PeerErrorCoreTests(unittest.TestCase):
    """Nothing in a peer's ERROR (or HELLO) can raise, and every ERROR we
    send fits its frame, whatever the detail holds: every member of a peer's
    ERROR is type-checked."""

    def cores(self):
        server = ServerConnection(IDENTITY)
        server.start()
        server.data_to_send()
        return server, rev1_client()

    def test_error_member_of_any_other_type_is_unknown(self):
        for code in BAD_TYPES:
            for core in self.cores():
                payload = json.dumps({"error": code, "detail": "why"}).encode()
                self.assertEqual(
                    core.receive_data(encode_frame("ERROR", payload)),
                    [ErrorReceived("unknown", "why")],
                    code,
                )
                self.assertTrue(core.closed)
                self.assertEqual(core.data_to_send(), b"")  # no ERROR for an ERROR

    def test_detail_that_is_not_a_string(self):
        for detail in BAD_TYPES:
            for core in self.cores():
                payload = json.dumps({"error": "busy", "detail": detail}).encode()
                self.assertEqual(
                    core.receive_data(encode_frame("ERROR", payload)),
                    [ErrorReceived("busy", "(detail is not a string)")],
                    detail,
                )

    def test_detail_missing_or_unprintable(self):
        self.assertEqual(parse_error_payload(b'{"error": "busy"}'), ("busy", ""))
        self.assertEqual(
            parse_error_payload(json.dumps({"error": "timeout", "detail": "a\nb\x1b[2J"}).encode()),
            ("timeout", "a?b?[2J"),
        )
        self.assertEqual(
            parse_error_payload(b"[1, 2]"), ("malformed-frame", "unreadable ERROR frame")
        )

    def test_our_error_fits_whatever_the_detail(self):
        for character in WIDE:
            for length in (1, 100, 200, 300, 5000):
                payload = error_payload("unsupported-protocol", character * length)
                self.assertLessEqual(len(payload), MAX_PAYLOAD["ERROR"])
                payload.decode("ascii")
                obj = json.loads(payload)
                self.assertEqual(obj["error"], "unsupported-protocol")
                self.assertTrue(obj["detail"])
                encode_frame("ERROR", payload)  # does not raise

    def hello(self, protocol_name):
        return encode_frame("HELLO", json.dumps({"protocol": protocol_name}).encode())

    def test_non_ascii_protocol_in_hello(self):
        for character in ("€", "\U0001f600"):
            name = character * 300
            client_core = rev1_client()
            self.assertEqual(
                client_core.receive_data(self.hello(name)),
                [ProtocolFailed("unsupported-protocol", f"protocol {name!r} is not kx/1")],
            )
            ((verb, payload),) = frames(client_core.data_to_send())
            self.assertEqual(verb, "ERROR")
            self.assertLessEqual(len(payload), 1024)
            obj = json.loads(payload)
            self.assertEqual(set(obj), {"error", "detail"})
            self.assertEqual(obj["error"], "unsupported-protocol")
            self.assertTrue(obj["detail"].startswith("protocol '" + character * 10))
            # What the server makes of it.
            code, _ = parse_error_payload(payload)
            self.assertEqual(code, "unsupported-protocol")

    def test_every_hello_member_of_every_type(self):
        """Whatever type a HELLO member has, the client answers ERROR and
        raises nothing."""
        good = json.loads(IDENTITY.hello_payload(b"\0" * 32))
        # What a client without forward secrecy takes: no chain, no ephemeral key.
        valid = [("certificates", []), ("ephemeral", None)]
        for member in ("protocol", "key", "nonce", "certificates", "ephemeral"):
            for value in (None, True, 5, 1.5, [], {}, "x", [5], [None], ["no base64!"], {"key": 5}):
                hello = dict(good, **{member: value})
                events = rev1_client().receive_data(
                    encode_frame("HELLO", json.dumps(hello).encode())
                )
                expected = ServerKeyReceived if (member, value) in valid else ProtocolFailed
                self.assertEqual([type(e) for e in events], [expected], (member, value))

    def test_every_auth_member_of_every_type(self):
        for member in ("key", "signature"):
            for value in (*BAD_TYPES, "x", "AAAA"):
                plaintext = {"key": "AAAA", "signature": "AAAA", member: value}
                self.assertEqual(
                    self.auth_with(json.dumps(plaintext).encode()),
                    [ProtocolFailed("auth-failed", "malformed AUTH")],
                    (member, value),
                )
        for plaintext in (b"[]", b"5", b"null", b'"key"', b"{"):
            self.assertEqual(
                self.auth_with(plaintext),
                [ProtocolFailed("auth-failed", "AUTH is not a JSON object")],
            )

    def auth_with(self, plaintext):
        server = ServerConnection(IDENTITY)
        server.start()
        # The connection has slots: patch the class for this one call.
        self.patch(type(rev1_client()), "auth_plaintext", lambda _self: plaintext)
        client_core = rev1_client(identity=CLIENT_KEY)
        client_core.receive_data(server.data_to_send())
        client_core.accept_key()
        return server.receive_data(client_core.data_to_send())


# -- forward secrecy (§10) and resumption (§11), byte for byte against
# kx1-ephemeral-resume.json, and every refusal those sections name ---------------------

EXPIRES = RESUME_RAW["ephemeral_expires"]


#: The vectors' clock: a minute before the ephemeral key's expiry.
NOW = EXPIRES - 60


def vector_ephemeral():
    """The vector's ephemeral key with the vector's signature (fixed salt)."""
    der = resume_hexbytes("ephemeral_spki_der")
    signature = sign_ephemeral(SERVER_KEY, der, EXPIRES, salt=resume_hexbytes("ephemeral_pss_salt"))
    return EphemeralKey(EPHEMERAL_PRIVATE, EXPIRES, signature)


def vector_ticket_keys():
    """Ticket keys that know the vector's key under the vector's key id (the
    independent implementation names its keys its own way)."""
    private = RESUME_RAW["ticket_server_private"]
    ticket_keys = tickets.TicketKeys([bytes.fromhex(private["ticket_key"])])
    ticket_keys._by_id = {bytes.fromhex(private["key_id"]): bytes.fromhex(private["ticket_key"])}
    return ticket_keys


def full_client(**options):
    return ClientConnection(
        random=replay(resume_hexbytes("full", "secret")),
        oaep_seed=resume_hexbytes("full", "oaep_seed"),
        clock=lambda: NOW,
        **options,
    )


def stored_ticket():
    return tickets.StoredTicket(
        "server.example",
        51424,
        RESUME_RAW["server_fingerprint"],
        resume_hexbytes("full", "resumption_secret"),
        resume_hexbytes("ticket"),
        NOW + 3600,
    )


class EphemeralVectorTests(unittest.TestCase):
    def test_signed_message(self):
        self.assertEqual(
            schedule.ephemeral_message(
                IDENTITY.der, EXPIRES, resume_hexbytes("ephemeral_spki_der")
            ),
            resume_hexbytes("ephemeral_signed_message"),
        )

    def test_signature_and_member(self):
        ephemeral = vector_ephemeral()
        self.assertEqual(ephemeral.der, resume_hexbytes("ephemeral_spki_der"))
        self.assertEqual(ephemeral.member, RESUME_RAW["ephemeral_member"])

    def test_hello_with_the_ephemeral_member(self):
        hello = IDENTITY.hello_payload(resume_hexbytes("full", "nonce"), vector_ephemeral())
        self.assertEqual(hello, resume_hexbytes("full", "hello_payload"))
        resumed = IDENTITY.hello_payload(resume_hexbytes("resumed", "nonce"), vector_ephemeral())
        self.assertEqual(resumed, resume_hexbytes("resumed", "hello_payload"))

    def test_server_says_the_vector_hello(self):
        server = ServerConnection(
            IDENTITY,
            ephemeral=vector_ephemeral(),
            random=replay(resume_hexbytes("full", "nonce")),
        )
        server.start()
        self.assertEqual(
            server.data_to_send(), encode_frame("HELLO", resume_hexbytes("full", "hello_payload"))
        )

    def test_client_checks_the_ephemeral_key_and_sends_key_under_it(self):
        client = full_client()
        (offer,) = client.receive_data(
            encode_frame("HELLO", resume_hexbytes("full", "hello_payload"))
        )
        self.assertIsInstance(offer, ServerKeyReceived)
        self.assertEqual(offer.fingerprint, RESUME_RAW["server_fingerprint"])
        self.assertEqual(offer.ephemeral.expires, EXPIRES)
        self.assertEqual(offer.ephemeral.bits, 2048)
        self.assertEqual(
            offer.ephemeral.fingerprint, keys.fingerprint(resume_hexbytes("ephemeral_spki_der"))
        )
        client.accept_key()
        key, first = frames(client.data_to_send())
        self.assertEqual(key, ("KEY", resume_hexbytes("full", "key_payload")))
        self.assertEqual(client.transcript_hash, resume_hexbytes("full", "transcript_hash"))
        # The client's first record is the vector's empty MSG.
        self.assertEqual(first, ("MSG", resume_hexbytes("full", "records", "client_msg_seq0")))

    def test_key_schedule_and_resumption_secret(self):
        full = RESUME_RAW["full"]
        th = schedule.transcript_hash(
            resume_hexbytes("full", "hello_payload"), resume_hexbytes("full", "key_payload")
        )
        self.assertEqual(th.hex(), full["transcript_hash"])
        secret, nonce = resume_hexbytes("full", "secret"), resume_hexbytes("full", "nonce")
        client_key, server_key = schedule.derive_keys(secret, nonce, th)
        self.assertEqual(
            (client_key.hex(), server_key.hex()), (full["client_key"], full["server_key"])
        )
        self.assertEqual(
            schedule.resumption_secret(secret, nonce, th).hex(), full["resumption_secret"]
        )

    def test_server_decrypts_key_with_the_ephemeral_key(self):
        server = ServerConnection(
            IDENTITY,
            ephemeral=vector_ephemeral(),
            random=replay(resume_hexbytes("full", "nonce"), b"\0" * 32),
        )
        server.start()
        server.data_to_send()
        server.receive_data(encode_frame("KEY", resume_hexbytes("full", "key_payload")))
        self.assertEqual(server.transcript_hash, resume_hexbytes("full", "transcript_hash"))
        opener = RecordOpener(resume_hexbytes("full", "server_key"))
        ((verb, confirmation),) = frames(server.data_to_send())
        self.assertEqual((verb, opener.open("MSG", confirmation)), ("MSG", b""))
        events = server.receive_data(
            encode_frame("MSG", resume_hexbytes("full", "records", "client_msg_seq0"))
        )
        self.assertEqual(events, [HandshakeComplete(None)])

    def test_records(self):
        sealer = RecordSealer(resume_hexbytes("full", "server_key"))
        self.assertEqual(
            sealer.seal("MSG", resume_hexbytes("server_message")),
            resume_hexbytes("full", "records", "server_msg_seq0"),
        )
        self.assertEqual(
            sealer.seal("TICKET", resume_hexbytes("full", "ticket_plaintext")),
            resume_hexbytes("full", "records", "server_ticket_seq1"),
        )
        self.assertEqual(sealer.seal("END"), resume_hexbytes("full", "records", "server_end_seq2"))

    def test_client_takes_the_vector_ticket(self):
        client = full_client()
        client.receive_data(encode_frame("HELLO", resume_hexbytes("full", "hello_payload")))
        client.accept_key()
        records = RESUME_RAW["full"]["records"]
        stream = b"".join(
            encode_frame(verb, bytes.fromhex(records[name]))
            for verb, name in [
                ("MSG", "server_msg_seq0"),
                ("TICKET", "server_ticket_seq1"),
                ("END", "server_end_seq2"),
            ]
        )
        events = client.receive_data(stream)
        self.assertEqual(
            [type(e) for e in events],
            [HandshakeComplete, DataReceived, TicketReceived, EndReceived],
        )
        ticket = events[2]
        self.assertEqual(ticket.ticket, resume_hexbytes("ticket"))
        self.assertEqual(ticket.lifetime, 3600)
        self.assertEqual(ticket.secret, resume_hexbytes("full", "resumption_secret"))
        self.assertEqual(ticket.server_fingerprint, RESUME_RAW["server_fingerprint"])
        self.assertNotIn(ticket.secret.hex(), repr(ticket))


class ResumeVectorTests(unittest.TestCase):
    def test_client_resumes_with_the_vector_ticket(self):
        client = ClientConnection(ticket=stored_ticket(), clock=lambda: NOW)
        client.receive_data(encode_frame("HELLO", resume_hexbytes("resumed", "hello_payload")))
        client.accept_key()
        resume, first = frames(client.data_to_send())
        self.assertEqual(encode_frame(*resume), resume_hexbytes("resumed", "resume_frame"))
        self.assertTrue(client.resumed)
        self.assertEqual(client.transcript_hash, resume_hexbytes("resumed", "transcript_hash"))
        # No AUTH after RESUME, and the first record is the vector's.
        self.assertEqual(first, ("MSG", resume_hexbytes("resumed", "records", "client_msg_seq0")))
        records = RESUME_RAW["resumed"]["records"]
        events = client.receive_data(
            encode_frame("MSG", bytes.fromhex(records["server_msg_seq0"]))
            + encode_frame("END", bytes.fromhex(records["server_end_seq1"]))
        )
        self.assertEqual(
            events,
            [
                HandshakeComplete(RESUME_RAW["server_fingerprint"], resumed=True),
                DataReceived(resume_hexbytes("server_message")),
                EndReceived(),
            ],
        )

    def test_resumed_key_schedule(self):
        resumed = RESUME_RAW["resumed"]
        th = resume_hexbytes("resumed", "transcript_hash")
        ikm = resume_hexbytes("full", "resumption_secret")
        nonce = resume_hexbytes("resumed", "nonce")
        client_key, server_key = schedule.derive_keys(ikm, nonce, th, resumed=True)
        self.assertEqual(
            (client_key.hex(), server_key.hex()), (resumed["client_key"], resumed["server_key"])
        )
        self.assertEqual(
            schedule.resumption_secret(ikm, nonce, th).hex(), resumed["resumption_secret"]
        )

    def test_server_opens_the_vector_ticket_and_resumes(self):
        issuer = tickets.TicketIssuer(vector_ticket_keys(), clock=lambda: NOW)
        server = ServerConnection(
            IDENTITY,
            ephemeral=vector_ephemeral(),
            tickets=issuer,
            random=replay(resume_hexbytes("resumed", "nonce")),
        )
        server.start()
        server.data_to_send()
        server.receive_data(resume_hexbytes("resumed", "resume_frame"))
        self.assertTrue(server.resumed)
        self.assertFalse(server.forward_secrecy)
        opener = RecordOpener(resume_hexbytes("resumed", "server_key"))
        ((verb, confirmation),) = frames(server.data_to_send())
        self.assertEqual((verb, opener.open("MSG", confirmation)), ("MSG", b""))
        # The application starts only when the client's first record opened.
        events = server.receive_data(
            encode_frame("MSG", resume_hexbytes("resumed", "records", "client_msg_seq0"))
        )
        self.assertEqual(events, [HandshakeComplete(None, resumed=True)])
        # ... and a new ticket for the next time, right after.
        ((verb, sealed),) = frames(server.data_to_send())
        self.assertEqual(verb, "TICKET")
        new = json.loads(opener.open("TICKET", sealed))
        self.assertEqual(new["lifetime"], 3600)
        self.assertNotEqual(base64.b64decode(new["ticket"]), resume_hexbytes("ticket"))

    def test_vector_ticket_state(self):
        private = RESUME_RAW["ticket_server_private"]
        issuer = tickets.TicketIssuer(vector_ticket_keys(), clock=lambda: NOW)
        secret, client = issuer.open(resume_hexbytes("ticket"), RESUME_RAW["server_fingerprint"])
        self.assertEqual(secret, resume_hexbytes("full", "resumption_secret"))
        self.assertIsNone(client)
        state = json.loads(bytes.fromhex(private["state"]))
        self.assertEqual(state["server"], RESUME_RAW["server_fingerprint"])


# -- §10.3: what a client refuses -----------------------------------------------------


def hello_offering(member, key=IDENTITY):
    hello = {
        "protocol": "kx/1",
        "key": key.key_b64,
        "nonce": base64.b64encode(b"n" * 32).decode(),
    }
    if member is not None:
        hello["ephemeral"] = member
    return encode_frame("HELLO", json.dumps(hello).encode())


def member(private_key=EPHEMERAL_PRIVATE, expires=NOW + 120, signer=SERVER_KEY, e=None, der=None):
    if der is None:
        der = keys.public_key_to_der(private_key.public_key())
    if e is not None:
        der = keys.public_key_to_der(PublicKey(private_key.n, e))
    signature = sign_ephemeral(signer, der, expires)
    return {
        "key": base64.b64encode(der).decode(),
        "expires": expires,
        "signature": base64.b64encode(signature).decode(),
    }


class EphemeralKeyRefusalTests(unittest.TestCase):
    def assertRefused(self, hello, code, detail, **options):
        client = ClientConnection(clock=lambda: NOW, **options)
        events = client.receive_data(hello)
        self.assertEqual(events, [ProtocolFailed(code, detail)])
        sent = frames(client.data_to_send())
        self.assertEqual([v for v, _ in sent], ["ERROR"])  # and never a KEY
        self.assertEqual(json.loads(sent[0][1]), {"error": code, "detail": detail})

    def test_a_good_member_is_accepted(self):
        client = ClientConnection(clock=lambda: NOW)
        (event,) = client.receive_data(hello_offering(member()))
        self.assertIsInstance(event, ServerKeyReceived)

    def test_no_ephemeral_key(self):
        self.assertRefused(
            hello_offering(None),
            "no-forward-secrecy",
            "the server offers no ephemeral key (forward secrecy)",
        )

    def test_no_ephemeral_key_allowed_explicitly(self):
        client = ClientConnection(require_forward_secrecy=False, clock=lambda: NOW)
        (event,) = client.receive_data(hello_offering(None))
        self.assertIsNone(event.ephemeral)
        client.accept_key()
        (key, _first) = frames(client.data_to_send())
        # Then KEY goes to the long-term key, the original exercise's scheme.
        self.assertEqual(len(key[1]), IDENTITY.key_bytes)

    def test_bad_signature(self):
        bad = member()
        signature = bytearray(base64.b64decode(bad["signature"]))
        signature[-1] ^= 1
        bad["signature"] = base64.b64encode(bytes(signature)).decode()
        self.assertRefused(
            hello_offering(bad), "untrusted-key", "ephemeral key signature does not verify"
        )

    def test_signature_by_another_key(self):
        self.assertRefused(
            hello_offering(member(signer=CLIENT_KEY)),
            "untrusted-key",
            "ephemeral key signature does not verify",
        )

    def test_signature_over_another_expiry(self):
        moved = member()
        moved["expires"] += 1
        self.assertRefused(
            hello_offering(moved), "untrusted-key", "ephemeral key signature does not verify"
        )

    def test_expired(self):
        # 300 s of clock skew are forgiven; 301 are not.
        ClientConnection(clock=lambda: NOW).receive_data(hello_offering(member(expires=NOW - 300)))
        self.assertRefused(
            hello_offering(member(expires=NOW - 301)),
            "untrusted-key",
            "ephemeral key expired 301 s ago",
        )

    def test_valid_too_long(self):
        limit = NOW + 86400 + 300
        (ok,) = ClientConnection(clock=lambda: NOW).receive_data(
            hello_offering(member(expires=limit))
        )
        self.assertIsInstance(ok, ServerKeyReceived)
        self.assertRefused(
            hello_offering(member(expires=limit + 1)),
            "untrusted-key",
            "ephemeral key is signed for more than a day",
        )

    def test_too_small(self):
        # Our own key generation refuses to make one: pycryptodome's does.
        small = PyCryptodomeRSA.generate(1024).public_key().export_key("DER")
        self.assertRefused(
            hello_offering(member(der=small)),
            "untrusted-key",
            "ephemeral key: RSA modulus of 1024 bits",
        )

    def test_bad_exponent(self):
        assert_every_case(
            self,
            (3, 2**16 - 1, 2**256 + 1),
            lambda e: self.assertRefused(
                hello_offering(member(e=e)),
                "untrusted-key",
                "ephemeral key: RSA public exponent out of range",
            ),
        )

    def test_ill_typed_members(self):
        good = member()

        def check(case):
            name, value = case
            bad = dict(good, **{name: value})
            event = ClientConnection(clock=lambda: NOW).receive_data(hello_offering(bad))[0]
            self.assertEqual(event.code, "malformed-frame")

        cases = [
            ("expires", "1764259200"),
            ("expires", True),
            ("expires", 1.5),
            ("key", 5),
            ("key", "!!"),
            ("signature", None),
        ]
        assert_every_case(self, cases, check)
        for value in ("text", [1], 5):
            event = ClientConnection(clock=lambda: NOW).receive_data(hello_offering(value))[0]
            self.assertEqual(
                event, ProtocolFailed("malformed-frame", "HELLO ephemeral is not an object")
            )


# -- §11.3: what a server refuses -----------------------------------------------------


class Resumption:
    """A server with tickets on a settable clock, and a full session with it
    that left a ticket behind."""

    def __init__(self, authorized=None, identity=None, lifetime=3600):
        self.now = 1_800_000_000
        self.issuer = tickets.TicketIssuer(
            tickets.TicketKeys.random(), lifetime=lifetime, clock=lambda: self.now
        )
        self.authorized = authorized
        self.identity = identity
        self.ticket = self.full_session()

    def server(self, identity=IDENTITY):
        server = ServerConnection(
            identity,
            authorized_keys=self.authorized,
            ephemeral=ephemeral_key(long_term=identity.private_key),
            tickets=self.issuer,
        )
        server.start()
        return server

    def full_session(self):
        server = self.server()
        client = ClientConnection(identity=self.identity)
        client.receive_data(server.data_to_send())
        client.accept_key()
        server.receive_data(client.data_to_send())
        events = client.receive_data(server.data_to_send())
        (ticket,) = [e for e in events if isinstance(e, TicketReceived)]
        return tickets.StoredTicket(
            "h", 1, ticket.server_fingerprint, ticket.secret, ticket.ticket, self.now + 3600
        )

    def resume(self, ticket=None, server=None):
        """A new connection that RESUMEs; returns (server, client, server events)."""
        server = server or self.server()
        client = ClientConnection(ticket=ticket or self.ticket)
        client.receive_data(server.data_to_send())
        client.accept_key()
        return server, client, server.receive_data(client.data_to_send())


class ServerResumptionTests(unittest.TestCase):
    def test_resumed_session(self):
        r = Resumption()
        server, client, events = r.resume()
        self.assertTrue(client.resumed)
        self.assertEqual(events, [HandshakeComplete(None, resumed=True)])
        server.send_data(b"welcome back")
        events = client.receive_data(server.data_to_send())
        self.assertEqual(
            [type(e) for e in events], [HandshakeComplete, TicketReceived, DataReceived]
        )

    def test_the_ticket_names_the_authenticated_client(self):
        client_fp = keys.fingerprint(CLIENT_KEY)
        r = Resumption(authorized={client_fp}, identity=CLIENT_KEY)
        _server, _client, events = r.resume()
        self.assertEqual(events, [HandshakeComplete(client_fp, resumed=True)])

    def assertStale(self, r, detail, ticket=None, server=None):
        server, _client, events = r.resume(ticket=ticket, server=server)
        self.assertEqual(events, [ProtocolFailed("stale-ticket", detail)])
        (error,) = frames(server.data_to_send())
        self.assertEqual(json.loads(error[1]), {"error": "stale-ticket", "detail": detail})

    def test_tampered(self):
        r = Resumption()

        def check(position):
            ticket = bytearray(r.ticket.ticket)
            ticket[position] ^= 1
            stored = tickets.StoredTicket(
                "h", 1, r.ticket.server_fingerprint, r.ticket.secret, bytes(ticket), 0
            )
            detail = "unknown or retired ticket key" if position == 0 else "ticket does not open"
            self.assertStale(r, detail, ticket=stored)

        assert_every_case(self, (0, 20, 40, -1), check)

    def test_too_short(self):
        r = Resumption()
        short = tickets.StoredTicket("h", 1, r.ticket.server_fingerprint, b"s" * 32, b"x", 0)
        self.assertStale(r, "ticket too short", ticket=short)

    def test_foreign(self):
        r, other = Resumption(), Resumption()
        self.assertStale(r, "unknown or retired ticket key", ticket=other.ticket)

    def test_expired(self):
        r = Resumption(lifetime=100)
        r.now += 100
        self.assertStale(r, "ticket expired")

    def test_retired_key(self):
        r = Resumption()
        r.issuer.keys = r.issuer.keys.rotated()
        # One rotation later the ticket still resumes; two, and it is stale.
        r.resume()
        r.issuer.keys = r.issuer.keys.rotated()
        self.assertStale(r, "unknown or retired ticket key")

    def test_issued_under_another_long_term_key(self):
        r = Resumption()
        other = ServerIdentity(CLIENT_KEY)
        stored = tickets.StoredTicket(
            "h", 1, other.fingerprint, r.ticket.secret, r.ticket.ticket, 0
        )
        self.assertStale(
            r, "ticket issued under another server key", ticket=stored, server=r.server(other)
        )

    def test_client_key_no_longer_authorized(self):
        client_fp = keys.fingerprint(CLIENT_KEY)
        r = Resumption(authorized={client_fp}, identity=CLIENT_KEY)
        r.authorized = {keys.fingerprint(SERVER_KEY)}
        self.assertStale(r, "the ticket's client key is not authorized")

    def test_ticket_without_client_when_auth_is_now_required(self):
        r = Resumption()
        r.authorized = {keys.fingerprint(CLIENT_KEY)}
        self.assertStale(r, "the ticket's client key is not authorized")

    def test_resumption_off(self):
        server = ServerConnection(IDENTITY, ephemeral=ephemeral_key())
        server.start()
        server.data_to_send()
        events = server.receive_data(encode_frame("RESUME", b"t" * 60))
        self.assertEqual(
            events, [ProtocolFailed("stale-ticket", "this server does not resume sessions")]
        )

    def test_resume_after_key(self):
        r = Resumption()
        server = r.server()
        client = ClientConnection()
        client.receive_data(server.data_to_send())
        client.accept_key()
        server.receive_data(client.data_to_send())
        server.data_to_send()
        events = server.receive_data(encode_frame("RESUME", r.ticket.ticket))
        self.assertEqual(
            events, [ProtocolFailed("unexpected-frame", "RESUME not expected in state open")]
        )

    def test_ticket_from_a_client(self):
        server, client, _ = Resumption().resume()
        sealed = client._sealer.seal("TICKET", b'{"ticket": "AAAA", "lifetime": 1}')
        events = server.receive_data(encode_frame("TICKET", sealed))
        self.assertEqual(
            events, [ProtocolFailed("unexpected-frame", "TICKET not expected in state open")]
        )

    def test_auth_after_resume(self):
        r = Resumption()
        server = r.server()
        client = ClientConnection(ticket=r.ticket)
        client.receive_data(server.data_to_send())
        client.accept_key()
        resume, _first = frames(client.data_to_send())
        server.receive_data(encode_frame(*resume))
        server.data_to_send()
        events = server.receive_data(encode_frame("AUTH", b"\0" * 40))
        self.assertEqual(
            events,
            [ProtocolFailed("unexpected-frame", "AUTH after RESUME: the ticket names the client")],
        )

    def test_a_replayed_resume_gets_nothing_it_can_read(self):
        """An eavesdropper who replays RESUME gets the confirmation and waits:
        the application never starts, and nothing it can open is said."""
        r = Resumption()
        r.resume()
        # On another daemon sharing the ticket keys: this one refuses a used ticket.
        r.issuer = tickets.TicketIssuer(r.issuer.keys, clock=lambda: r.now)
        replayer = r.server()
        replayer.data_to_send()  # HELLO, to someone else
        replayer.receive_data(encode_frame("RESUME", r.ticket.ticket))
        ((verb, sealed),) = frames(replayer.data_to_send())
        self.assertEqual((verb, len(sealed)), ("MSG", 16))
        # Without the resumption secret its first record cannot be sealed.
        events = replayer.receive_data(encode_frame("MSG", b"\0" * 16))
        self.assertEqual(events, [ProtocolFailed("bad-record", "MSG record failed to open")])


class ClientTicketRefusalTests(unittest.TestCase):
    def test_a_ticket_for_another_server_key_is_not_offered(self):
        r = Resumption()
        stored = tickets.StoredTicket(
            "h", 1, keys.fingerprint(CLIENT_KEY), r.ticket.secret, r.ticket.ticket, 0
        )
        server = r.server()
        client = ClientConnection(ticket=stored)
        client.receive_data(server.data_to_send())
        client.accept_key()
        self.assertEqual(frames(client.data_to_send())[0][0], "KEY")
        self.assertFalse(client.resumed)

    def test_ticket_before_the_first_record(self):
        server = ServerConnection(IDENTITY, ephemeral=ephemeral_key())
        server.start()
        client = ClientConnection()
        client.receive_data(server.data_to_send())
        client.accept_key()
        events = client.receive_data(encode_frame("TICKET", b"\0" * 40))
        self.assertEqual(
            events,
            [ProtocolFailed("unexpected-frame", "TICKET before the server's first record")],
        )

    def test_malformed_ticket_plaintext(self):
        def check(case):
            plaintext, detail = case
            server = ServerConnection(IDENTITY, ephemeral=ephemeral_key())
            server.start()
            client = ClientConnection()
            client.receive_data(server.data_to_send())
            client.accept_key()
            server.receive_data(client.data_to_send())
            client.receive_data(server.data_to_send())  # the confirmation
            sealed = server._sealer.seal("TICKET", plaintext)
            events = client.receive_data(encode_frame("TICKET", sealed))
            self.assertEqual(events, [ProtocolFailed("malformed-frame", detail)])

        cases = [
            (b"[]", "TICKET is not a JSON object"),
            (b'{"ticket": "", "lifetime": 5}', "TICKET ticket is not 1 to 512 bytes"),
            (
                b'{"ticket": "' + base64.b64encode(b"t" * 513) + b'", "lifetime": 5}',
                "TICKET ticket is not 1 to 512 bytes",
            ),
            (b'{"ticket": "AAAA", "lifetime": 0}', "TICKET lifetime is not 1 to 86400 seconds"),
            (b'{"ticket": "AAAA", "lifetime": 86401}', "TICKET lifetime is not 1 to 86400 seconds"),
            (b'{"ticket": "AAAA", "lifetime": "5"}', "TICKET lifetime is not 1 to 86400 seconds"),
        ]
        assert_every_case(self, cases, check, label=lambda case: repr(case[0][:30]))


class ForwardSecrecyTests(unittest.TestCase):
    def test_a_recording_does_not_open_with_the_long_term_key(self):
        """Steal the server's key after the session: the KEY of a recorded
        session was encrypted to the ephemeral key, not to it."""
        ephemeral = ephemeral_key()
        server = ServerConnection(IDENTITY, ephemeral=ephemeral)
        server.start()
        hello = frames(server.data_to_send())[0][1]
        client = ClientConnection()
        client.receive_data(encode_frame("HELLO", hello))
        client.accept_key()
        recorded_key = frames(client.data_to_send())[0][1]
        self.assertRaises(DecryptionError, SERVER_KEY.decrypt_oaep, recorded_key, label=hello)
        # The ephemeral key would have opened it: that is what rotation drops.
        self.assertEqual(len(EPHEMERAL_PRIVATE.decrypt_oaep(recorded_key, label=hello)), 32)


class HostileInputProperties(unittest.TestCase):
    """Any bytes at any chunking: events or exactly one ERROR, never a crash."""

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        st.lists(
            st.one_of(
                st.binary(max_size=40),
                st.sampled_from(
                    [
                        encode_frame("KEY", hexbytes("key_payload")),
                        frame("AUTH", "client_auth_seq0"),
                        frame("MSG", "client_msg_seq1"),
                        frame("END", "client_end_seq2"),
                        b"MSG 16\r\n",
                        b"KEY 256\r\n",
                    ]
                ),
            ),
            max_size=8,
        )
    )
    def test_server(self, chunks):
        server = vector_server(authorized_keys={RAW["client_fingerprint"]})
        failures = 0
        for chunk in chunks:
            for event in server.receive_data(chunk):
                failures += isinstance(event, ProtocolFailed)
            self.assertLessEqual(server._decoder.buffered, max(MAX_PAYLOAD.values()))
        self.assertLessEqual(failures, 1)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        st.lists(
            st.one_of(
                st.binary(max_size=40),
                st.sampled_from(
                    [
                        hexbytes("hello_frame"),
                        frame("MSG", "server_msg_seq0"),
                        frame("END", "server_end_seq1"),
                        frame("UPDATE", "server_update_seq1"),
                        b"HELLO 480\r\n",
                    ]
                ),
            ),
            max_size=8,
        )
    )
    def test_client(self, chunks):
        client = vector_client()
        failures = 0
        for chunk in chunks:
            for event in client.receive_data(chunk):
                failures += isinstance(event, ProtocolFailed)
                if isinstance(event, ServerKeyReceived):
                    client.accept_key()
        self.assertLessEqual(failures, 1)


# -- revision 3: the hybrid key exchange and the record cipher (§12, §13) ------------


def _vector_tickets():
    return tickets.TicketIssuer(
        tickets.TicketKeys([revision3_hexbytes("ticket_key")]), clock=lambda: rev3.NOW
    )


class _Revision3Vectors:
    """kx1-revision3.json, byte for byte, for the cipher ``cipher``."""

    cipher = None

    def full(self, name):
        return rev3.session(self.cipher, "full", name)

    def resumed(self, name):
        return rev3.session(self.cipher, "resumed", name)

    def test_server_says_the_vector_hello(self):
        server = rev3.vector_server(self.cipher, self.full("nonce"))
        self.assertEqual(server.data_to_send(), self.full("hello_frame"))

    def test_client_sends_the_vector_key_and_first_record(self):
        client = rev3.vector_client(self.cipher)
        (offer,) = client.receive_data(self.full("hello_frame"))
        self.assertEqual(offer.ephemeral.record_cipher, self.cipher)
        self.assertEqual(
            offer.ephemeral.mlkem_fingerprint,
            mlkem.fingerprint(revision3_hexbytes("mlkem_encapsulation_key")),
        )
        client.accept_key()
        key, first = frames(client.data_to_send())
        self.assertEqual(key, ("KEY", self.full("key_payload")))
        self.assertEqual(client.transcript_hash, self.full("transcript_hash"))
        self.assertEqual(
            first, ("MSG", rev3.session_record(self.cipher, "full", "client_msg_seq0"))
        )
        self.assertEqual((client.post_quantum_session, client.record_cipher), (True, self.cipher))

    def test_server_derives_the_vector_keys(self):
        server = rev3.vector_server(self.cipher, self.full("nonce"))
        server.data_to_send()
        server.receive_data(encode_frame("KEY", self.full("key_payload")))
        self.assertEqual(server.transcript_hash, self.full("transcript_hash"))
        ((verb, confirmation),) = frames(server.data_to_send())
        self.assertEqual(
            (verb, confirmation),
            ("MSG", rev3.session_record(self.cipher, "full", "server_msg_seq0")),
        )
        events = server.receive_data(
            encode_frame("MSG", rev3.session_record(self.cipher, "full", "client_msg_seq0"))
            + encode_frame("MSG", rev3.session_record(self.cipher, "full", "client_msg_seq1"))
        )
        self.assertEqual(
            events,
            [
                HandshakeComplete(None, False, True, self.cipher),
                DataReceived(revision3_hexbytes("client_message")),
            ],
        )

    def test_client_opens_the_vector_records(self):
        client = rev3.vector_client(self.cipher)
        client.receive_data(self.full("hello_frame"))
        client.accept_key()
        records = [
            ("MSG", "server_msg_seq0"),
            ("TICKET", "server_ticket_seq1"),
            ("MSG", "server_msg_seq2"),
            ("UPDATE", "server_update_seq3"),
            ("MSG", "server_msg_after_update_seq0"),
            ("END", "server_end_seq1"),
        ]
        events = client.receive_data(
            b"".join(
                encode_frame(verb, rev3.session_record(self.cipher, "full", name))
                for verb, name in records
            )
        )
        complete, ticket, message, after, end = events
        self.assertEqual(complete, HandshakeComplete(SERVER_FINGERPRINT, False, True, self.cipher))
        self.assertEqual(ticket.ticket, self.full("ticket"))
        self.assertEqual(ticket.secret, self.full("resumption_secret"))
        self.assertTrue(ticket.post_quantum)
        self.assertEqual(message, DataReceived(revision3_hexbytes("server_message")))
        self.assertEqual(after, DataReceived(revision3_hexbytes("server_message_after_update")))
        self.assertIsInstance(end, EndReceived)

    def stored_ticket(self, post_quantum=True):
        return tickets.StoredTicket(
            "server.example",
            51424,
            SERVER_FINGERPRINT,
            self.full("resumption_secret"),
            self.full("ticket"),
            rev3.NOW + 3600,
            post_quantum,
        )

    def test_client_resumes(self):
        client = handshake.ClientConnection(
            ticket=self.stored_ticket(), clock=lambda: rev3.NOW, post_quantum=True
        )
        client.receive_data(encode_frame("HELLO", self.resumed("hello_payload")))
        client.accept_key()
        resume, first = frames(client.data_to_send())
        self.assertEqual(encode_frame(*resume), self.resumed("resume_frame"))
        self.assertEqual(
            first, ("MSG", rev3.session_record(self.cipher, "resumed", "client_msg_seq0"))
        )
        events = client.receive_data(
            b"".join(
                encode_frame(verb, rev3.session_record(self.cipher, "resumed", name))
                for verb, name in [
                    ("MSG", "server_msg_seq0"),
                    ("TICKET", "server_ticket_seq1"),
                    ("MSG", "server_msg_seq2"),
                    ("END", "server_end_seq3"),
                ]
            )
        )
        self.assertEqual(events[0], HandshakeComplete(SERVER_FINGERPRINT, True, True, self.cipher))
        self.assertEqual(events[1].ticket, self.resumed("ticket"))
        self.assertTrue(events[1].post_quantum)
        self.assertEqual(events[2], DataReceived(revision3_hexbytes("server_message")))

    def test_server_resumes_and_sends_a_new_ticket(self):
        server = rev3.vector_server(self.cipher, self.resumed("nonce"), tickets=_vector_tickets())
        self.assertEqual(
            server.data_to_send(), encode_frame("HELLO", self.resumed("hello_payload"))
        )
        server.receive_data(self.resumed("resume_frame"))
        ((verb, confirmation),) = frames(server.data_to_send())
        self.assertEqual(
            confirmation, rev3.session_record(self.cipher, "resumed", "server_msg_seq0")
        )
        events = server.receive_data(
            encode_frame("MSG", rev3.session_record(self.cipher, "resumed", "client_msg_seq0"))
        )
        self.assertEqual(events, [HandshakeComplete(None, True, True, self.cipher)])
        ((verb, sealed),) = frames(server.data_to_send())
        self.assertEqual(verb, "TICKET")
        opener = RecordOpener(self.resumed("server_key"), self.cipher)
        opener.open("MSG", confirmation)
        body = json.loads(opener.open("TICKET", sealed))
        opened = _vector_tickets().open_state(base64.b64decode(body["ticket"]), SERVER_FINGERPRINT)
        self.assertTrue(opened.post_quantum)


class Revision3OCBVectorTests(_Revision3Vectors, unittest.TestCase):
    cipher = OCB


class Revision3GCMVectorTests(_Revision3Vectors, unittest.TestCase):
    cipher = GCM


class Revision3RefusalTests(unittest.TestCase):
    """§12.4, §12.5: what a revision-3 client and server refuse, and every
    downgrade attempt of §12.5."""

    def client(self, **options):
        options.setdefault("post_quantum", True)
        return handshake.ClientConnection(**options)

    def server(self, ephemeral=None, **options):
        server = ServerConnection(
            IDENTITY, ephemeral=ephemeral if ephemeral is not None else rev3.offer(), **options
        )
        server.start()
        return server

    def hello(self, server):
        ((_verb, payload),) = frames(server.data_to_send())
        return payload

    def refused(self, client, payload, code):
        events = client.receive_data(encode_frame("HELLO", payload))
        self.assertEqual(len(events), 1, events)
        self.assertIsInstance(events[0], ProtocolFailed)
        self.assertEqual(events[0].code, code)
        ((verb, error),) = frames(client.data_to_send())
        self.assertEqual((verb, json.loads(error)["error"]), ("ERROR", code))

    def edited_hello(self, edit, ephemeral=None):
        obj = json.loads(self.hello(self.server(ephemeral)))
        edit(obj)
        return json.dumps(obj).encode()

    def test_hello_without_mlkem_is_no_post_quantum(self):
        payload = self.hello(self.server(rev3.classical_offer()))
        self.refused(self.client(), payload, "no-post-quantum")

    def test_hello_with_the_mlkem_key_stripped(self):
        def strip(obj):
            del obj["mlkem768"], obj["record"]

        self.refused(self.client(), self.edited_hello(strip), "no-post-quantum")

    def test_allow_classical_speaks_revision_2(self):
        server = self.server(rev3.classical_offer())
        client = self.client(allow_classical=True)
        (_offer,) = client.receive_data(server.data_to_send())
        client.accept_key()
        key, _ = frames(client.data_to_send())
        self.assertEqual(len(key[1]), EPHEMERAL.key_bytes)
        self.assertEqual((client.post_quantum_session, client.record_cipher), (False, GCM))

    def test_mlkem_without_record_is_malformed(self):
        def strip(obj):
            del obj["record"]

        self.refused(self.client(), self.edited_hello(strip), "malformed-frame")

    def test_unknown_record_cipher_is_malformed(self):
        def change(obj):
            obj["record"] = "aes-128-ocb"

        self.refused(self.client(), self.edited_hello(change), "malformed-frame")

    def test_revision2_signature_presented_as_revision3(self):
        def swap(obj):
            obj["mlkem768"]["signature"] = obj["ephemeral"]["signature"]

        self.refused(self.client(), self.edited_hello(swap), "untrusted-key")

    def test_truncated_mlkem_key(self):
        def cut(obj):
            raw = base64.b64decode(obj["mlkem768"]["key"])
            obj["mlkem768"]["key"] = base64.b64encode(raw[:-1]).decode()

        self.refused(self.client(), self.edited_hello(cut), "untrusted-key")

    def test_expires_beyond_minutes_is_untrusted(self):
        # Signed properly, but for two hours: a revision-2 client takes it,
        # a revision-3 client does not (§10.3).
        ephemeral = rev3.offer(expires=int(time.time()) + 7200)
        payload = self.hello(self.server(ephemeral))
        self.refused(self.client(), payload, "untrusted-key")
        events = handshake.ClientConnection().receive_data(encode_frame("HELLO", payload))
        self.assertIsInstance(events[0], ServerKeyReceived)

    def run_through(self, client, server, tamper_hello=None, tamper_key=None):
        hello = self.hello(server)
        if tamper_hello is not None:
            hello = tamper_hello(hello)
        client.receive_data(encode_frame("HELLO", hello))
        client.accept_key()
        (key, first) = frames(client.data_to_send())
        payload = key[1] if tamper_key is None else tamper_key(key[1])
        events = server.receive_data(encode_frame("KEY", payload) + encode_frame(*first))
        return events, client.receive_data(server.data_to_send())

    def test_changed_record_cipher_fails_key_confirmation(self):
        server, client = self.server(), self.client()
        _, events = self.run_through(
            client, server, lambda hello: hello.replace(b'"aes-256-ocb"', b'"aes-256-gcm"')
        )
        self.assertEqual(client.record_cipher, GCM)
        self.assertIsInstance(events[0], ProtocolFailed)
        self.assertEqual(events[0].code, "bad-record")

    def test_dropped_mlkem_ciphertext_fails_key_confirmation(self):
        server, client = self.server(), self.client()
        _server_events, events = self.run_through(
            client, server, tamper_key=lambda key: key[: EPHEMERAL.key_bytes]
        )
        self.assertFalse(server.post_quantum_session)
        self.assertIsInstance(events[0], ProtocolFailed)
        self.assertEqual(events[0].code, "bad-record")

    def test_truncated_mlkem_ciphertext_is_malformed(self):
        server, client = self.server(), self.client()
        server_events, _ = self.run_through(client, server, tamper_key=lambda key: key[:-1])
        self.assertEqual(server_events[0].code, "malformed-frame")

    def test_altered_mlkem_ciphertext_fails_key_confirmation(self):
        server, client = self.server(), self.client()

        def flip(key):
            return key[:-1] + bytes([key[-1] ^ 1])

        _server_events, events = self.run_through(client, server, tamper_key=flip)
        self.assertTrue(server.post_quantum_session)
        self.assertEqual(events[0].code, "bad-record")

    def test_hybrid_session_completes(self):
        server, client = self.server(), self.client()
        server_events, events = self.run_through(client, server)
        self.assertEqual(server_events, [HandshakeComplete(None, False, True, OCB)])
        self.assertEqual(events, [HandshakeComplete(SERVER_FINGERPRINT, False, True, OCB)])

    def test_revision2_client_is_served_with_gcm(self):
        server, client = self.server(), handshake.ClientConnection()
        server_events, events = self.run_through(client, server)
        self.assertEqual(server_events, [HandshakeComplete(None, False, False, GCM)])
        self.assertEqual(events, [HandshakeComplete(SERVER_FINGERPRINT, False, False, GCM)])

    def test_server_requiring_post_quantum_refuses_revision2(self):
        server = self.server(require_post_quantum=True)
        client = handshake.ClientConnection()
        server_events, _ = self.run_through(client, server)
        self.assertEqual(server_events[0].code, "no-post-quantum")
        self.assertIn("requires ML-KEM", server_events[0].detail)

    def test_server_requiring_post_quantum_refuses_a_revision2_ticket(self):
        issuer = tickets.TicketIssuer(tickets.TicketKeys.random())
        ticket, _ = issuer.issue(b"\1" * 32, IDENTITY.fingerprint)
        server = self.server(require_post_quantum=True, tickets=issuer)
        server.data_to_send()
        (failed,) = server.receive_data(encode_frame("RESUME", ticket))
        self.assertEqual(failed.code, "no-post-quantum")

    def test_client_does_not_resume_a_revision2_ticket(self):
        ticket = tickets.StoredTicket("h", 1, SERVER_FINGERPRINT, b"\1" * 32, b"t", 2**40)
        client = self.client(ticket=ticket)
        client.receive_data(encode_frame("HELLO", self.hello(self.server())))
        client.accept_key()
        (key, _) = frames(client.data_to_send())
        self.assertEqual(key[0], "KEY")
        self.assertFalse(client.resumed)


class TicketStrengthTests(unittest.TestCase):
    """§11.3: a client resumes only tickets of sessions as strong as it
    requires, and says what its own session had in the TICKET it gets."""

    def ticket(self, forward_secrecy):
        return tickets.StoredTicket(
            "h", 1, SERVER_FINGERPRINT, b"\1" * 32, b"t", 2**40, True, forward_secrecy
        )

    def first_frame(self, client):
        server = ServerConnection(IDENTITY, ephemeral=rev3.offer())
        server.start()
        client.receive_data(server.data_to_send())
        client.accept_key()
        return frames(client.data_to_send())[0][0]

    def test_a_ticket_without_forward_secrecy_is_not_resumed(self):
        client = handshake.ClientConnection(post_quantum=True, ticket=self.ticket(False))
        self.assertEqual(self.first_frame(client), "KEY")

    def test_unless_forward_secrecy_is_not_required(self):
        client = handshake.ClientConnection(
            post_quantum=True, ticket=self.ticket(False), require_forward_secrecy=False
        )
        self.assertEqual(self.first_frame(client), "RESUME")

    def test_a_ticket_with_it_is(self):
        client = handshake.ClientConnection(post_quantum=True, ticket=self.ticket(True))
        self.assertEqual(self.first_frame(client), "RESUME")

    def test_the_new_ticket_says_what_the_session_had(self):
        server = ServerConnection(
            IDENTITY,
            ephemeral=rev3.offer(),
            tickets=tickets.TicketIssuer(tickets.TicketKeys.random()),
        )
        server.start()
        client = handshake.ClientConnection(post_quantum=True)
        client.receive_data(server.data_to_send())
        client.accept_key()
        server.receive_data(client.data_to_send())
        events = client.receive_data(server.data_to_send())
        (ticket,) = [e for e in events if isinstance(e, handshake.TicketReceived)]
        self.assertEqual((ticket.post_quantum, ticket.forward_secrecy), (True, True))

    def test_a_session_without_an_ephemeral_key_says_so(self):
        server = ServerConnection(
            IDENTITY, tickets=tickets.TicketIssuer(tickets.TicketKeys.random())
        )
        server.start()
        client = handshake.ClientConnection(post_quantum=True, require_forward_secrecy=False)
        client.receive_data(server.data_to_send())
        client.accept_key()
        server.receive_data(client.data_to_send())
        events = client.receive_data(server.data_to_send())
        (ticket,) = [e for e in events if isinstance(e, handshake.TicketReceived)]
        self.assertEqual((ticket.post_quantum, ticket.forward_secrecy), (False, False))
