"""KX/1 revision 2 in the sans-IO core: forward secrecy (spec §10) and
resumption (§11), byte for byte against kx1-ephemeral-resume.json, and
every refusal those sections name."""

import base64
import json

from Crypto.PublicKey import RSA as PyCryptodomeRSA
from twisted.trial import unittest

from keyexchanged import keys, schedule, tickets
from keyexchanged.ephemeral import EphemeralKey, sign_ephemeral
from keyexchanged.framing import encode_frame
from keyexchanged.handshake import (
    ClientConnection,
    DataReceived,
    EndReceived,
    HandshakeComplete,
    ProtocolFailed,
    ServerConnection,
    ServerIdentity,
    ServerKeyReceived,
    TicketReceived,
)
from keyexchanged.records import RecordOpener, RecordSealer
from keyexchanged.rsa import DecryptionError, PublicKey
from tests.fixtures import (
    CLIENT_KEY,
    IDENTITY,
    SERVER_KEY,
    assert_every_case,
    frames,
    replay,
)
from tests.rev2 import EPHEMERAL_PRIVATE, ephemeral_key
from tests.vectors import RESUME_RAW, resume_hexbytes

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


# -- §10.3: what a client refuses ----------------------------------------------------


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


class ClientRefusalTests(unittest.TestCase):
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


# -- §11.3: what a server refuses ---------------------------------------------------------


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
