"""Key rotation (docs/spec/kx1.rst §14): the server's announcement of its
next key, in the state machines, and what keyexchanged.rotation checks."""

import base64
import json

from twisted.trial import unittest

from keyexchanged import keys, rotation
from keyexchanged.framing import MALFORMED_FRAME, UNEXPECTED_FRAME, encode_frame
from keyexchanged.handshake import (
    AnnouncementIgnored,
    ClientConnection,
    HandshakeComplete,
    NextKeyAnnounced,
    ProtocolFailed,
    ServerConnection,
    ServerIdentity,
    TicketReceived,
)
from tests.fixtures import CLIENT_KEY, SERVER_KEY, frames
from tests.vectors import RESUME_RAW

#: The next key in these tests: the vectors' client key (2048 bits).
NEXT_KEY = rotation.NextKey.from_private_key(CLIENT_KEY)
#: A key the server does not hold as its next key: the vectors' ephemeral key.
OTHER_KEY = keys.private_key_from_bytes(RESUME_RAW["ephemeral_private_key_pem"].encode())
CURRENT_DER = keys.public_key_to_der(SERVER_KEY.public_key())
CURRENT = keys.fingerprint(CURRENT_DER)
REVOKED = "SHA256:" + "A" * 43


ANNOUNCEMENT = rotation.ServerAnnouncement(NEXT_KEY)


def identity(announcement=ANNOUNCEMENT):
    return ServerIdentity(SERVER_KEY, announcement=announcement)


def session(server_identity, announcements=True, authorized=None, client_identity=None):
    """A full handshake in memory; the server's and the client's events,
    and the frames each sent."""
    server = ServerConnection(server_identity, authorized_keys=authorized)
    server.start()
    client = ClientConnection(
        identity=client_identity, require_forward_secrecy=False, announcements=announcements
    )
    hello = server.data_to_send()
    client_events = client.receive_data(hello)
    client_events += client.accept_key()
    sent = client.data_to_send()
    server_events = server.receive_data(sent)
    answer = server.data_to_send()
    client_events += client.receive_data(answer)
    return server, client, server_events, client_events, frames(sent), frames(answer)


def verbs(pairs):
    return [verb for verb, _ in pairs]


def of_type(events, kind):
    return [event for event in events if isinstance(event, kind)]


class OfferTests(unittest.TestCase):
    def test_hello_offers_rotation_only_with_an_announcement(self):
        with_one = json.loads(identity().hello_payload(b"\0" * 32))
        without = json.loads(ServerIdentity(SERVER_KEY).hello_payload(b"\0" * 32))
        self.assertIs(with_one["rotation"], True)
        self.assertNotIn("rotation", without)

    def test_a_value_other_than_true_is_no_offer(self):
        hello = json.loads(identity().hello_payload(b"\1" * 32))
        hello["rotation"] = 1
        client = ClientConnection(require_forward_secrecy=False, announcements=True)
        client.receive_data(encode_frame("HELLO", json.dumps(hello).encode()))
        client.accept_key()
        self.assertNotIn("NEXTKEY", verbs(frames(client.data_to_send())))


class ExchangeTests(unittest.TestCase):
    def test_the_client_asks_before_its_first_record_and_learns_the_next_key(self):
        _server, _client, _s, client_events, sent, answer = session(identity())
        self.assertEqual(verbs(sent), ["KEY", "NEXTKEY", "MSG"])
        # Key confirmation first, then the announcement, before any data.
        self.assertEqual(verbs(answer)[:2], ["MSG", "NEXTKEY"])
        (announced,) = of_type(client_events, NextKeyAnnounced)
        self.assertEqual(announced.announcement.next_fingerprint, NEXT_KEY.fingerprint)
        self.assertEqual(announced.announcement.next_bits, 2048)
        self.assertEqual(announced.server_fingerprint, CURRENT)
        self.assertFalse(of_type(client_events, ProtocolFailed))

    def test_a_client_that_does_not_ask_never_sees_an_announcement(self):
        _server, _client, _s, client_events, sent, answer = session(identity(), announcements=False)
        self.assertEqual(verbs(sent), ["KEY", "MSG"])
        self.assertNotIn("NEXTKEY", verbs(answer))
        self.assertTrue(of_type(client_events, HandshakeComplete))

    def test_no_request_to_a_server_that_offers_nothing(self):
        _server, _client, _s, client_events, sent, answer = session(ServerIdentity(SERVER_KEY))
        self.assertEqual(verbs(sent), ["KEY", "MSG"])
        self.assertNotIn("NEXTKEY", verbs(answer))
        self.assertFalse(of_type(client_events, NextKeyAnnounced))

    def test_with_auth_required_the_request_comes_before_auth(self):
        authorized = {keys.fingerprint(OTHER_KEY.public_key())}
        _server, _client, server_events, client_events, sent, answer = session(
            identity(), authorized=authorized, client_identity=OTHER_KEY
        )
        self.assertEqual(verbs(sent), ["KEY", "NEXTKEY", "AUTH"])
        self.assertFalse(of_type(server_events, ProtocolFailed))
        self.assertEqual(verbs(answer)[:2], ["MSG", "NEXTKEY"])
        self.assertTrue(of_type(client_events, NextKeyAnnounced))

    def test_a_resumed_session_carries_it_too(self):
        from keyexchanged.tickets import StoredTicket, TicketIssuer, TicketKeys

        issuer = TicketIssuer(TicketKeys.random())
        server = ServerConnection(identity(), tickets=issuer)
        server.start()
        first = ClientConnection(require_forward_secrecy=False, announcements=True)
        first.receive_data(server.data_to_send())
        first.accept_key()
        server.receive_data(first.data_to_send())
        (ticket,) = of_type(first.receive_data(server.data_to_send()), TicketReceived)
        stored = StoredTicket("h", 1, CURRENT, ticket.secret, ticket.ticket, 2**40)

        server = ServerConnection(identity(), tickets=issuer)
        server.start()
        client = ClientConnection(require_forward_secrecy=False, announcements=True, ticket=stored)
        client.receive_data(server.data_to_send())
        client.accept_key()
        sent = client.data_to_send()
        server.receive_data(sent)
        events = client.receive_data(server.data_to_send())
        self.assertEqual(verbs(frames(sent)), ["RESUME", "NEXTKEY", "MSG"])
        self.assertTrue(client.resumed)
        (announced,) = of_type(events, NextKeyAnnounced)
        self.assertEqual(announced.announcement.next_fingerprint, NEXT_KEY.fingerprint)

    def test_revoked_keys_are_announced(self):
        announcement = rotation.ServerAnnouncement(NEXT_KEY, (REVOKED,))
        *_, client_events, _sent, _answer = session(identity(announcement))
        (announced,) = of_type(client_events, NextKeyAnnounced)
        self.assertEqual(announced.announcement.revoked, (REVOKED,))


class DeferredSigningTests(unittest.TestCase):
    """With ``defer_work`` (the daemon's worker processes), the signature
    is work handed out like KEY's decryption, and the handshake waits."""

    def asked(self):
        from keyexchanged.handshake import DecryptionNeeded, SigningNeeded

        server = ServerConnection(identity(), defer_work=True)
        server.start()
        secret = b"\7" * 32
        client = ClientConnection(
            require_forward_secrecy=False, announcements=True, random=lambda n: secret
        )
        client.receive_data(server.data_to_send())
        client.accept_key()
        (_decrypt,) = of_type(server.receive_data(client.data_to_send()), DecryptionNeeded)
        events = server.key_decrypted(secret)
        (signing,) = of_type(events, SigningNeeded)
        self.assertFalse(of_type(events, HandshakeComplete))
        return server, client, signing

    def test_the_signature_is_made_elsewhere_and_the_handshake_waits_for_it(self):
        server, client, signing = self.asked()
        self.assertIs(signing.private_key, CLIENT_KEY)
        self.assertEqual(
            signing.message,
            rotation.next_key_message(client.transcript_hash, CURRENT_DER, NEXT_KEY.der),
        )
        signature = CLIENT_KEY.sign_pss(signing.message, salt_length=signing.salt_length)
        events = server.announcement_signed(signature)
        self.assertTrue(of_type(events, HandshakeComplete))  # the first record waited
        client_events = client.receive_data(server.data_to_send())
        (announced,) = of_type(client_events, NextKeyAnnounced)
        self.assertEqual(announced.announcement.next_fingerprint, NEXT_KEY.fingerprint)

    def test_a_failed_signature_sends_no_announcement(self):
        server, client, _signing = self.asked()
        events = server.announcement_signed(None)
        self.assertTrue(of_type(events, HandshakeComplete))
        answer = server.data_to_send()
        self.assertNotIn("NEXTKEY", verbs(frames(answer)))
        client_events = client.receive_data(answer)
        self.assertTrue(of_type(client_events, HandshakeComplete))
        self.assertFalse(of_type(client_events, ProtocolFailed))


class ServerRefusalTests(unittest.TestCase):
    def asked(self, server_identity, extra):
        """The client's KEY, its NEXTKEY request, then ``extra`` records."""
        server = ServerConnection(server_identity)
        server.start()
        client = ClientConnection(require_forward_secrecy=False, announcements=True)
        client.receive_data(server.data_to_send())
        client.rotation_offered = True  # as if HELLO had offered it
        client.accept_key()
        for verb, plaintext in extra:
            client._seal(verb, plaintext)
        events = server.receive_data(client.data_to_send())
        return [e.code for e in of_type(events, ProtocolFailed)]

    def test_a_request_without_an_offer_is_unexpected(self):
        self.assertEqual(self.asked(ServerIdentity(SERVER_KEY), []), [UNEXPECTED_FRAME])

    def test_a_request_after_the_first_record_is_unexpected(self):
        # accept_key sent NEXTKEY then MSG: one more NEXTKEY follows the MSG.
        self.assertEqual(self.asked(identity(), [("NEXTKEY", b"")]), [UNEXPECTED_FRAME])

    def test_a_request_that_is_not_empty_is_malformed(self):
        server = ServerConnection(identity())
        server.start()
        client = ClientConnection(require_forward_secrecy=False)
        client.receive_data(server.data_to_send())
        client.accept_key()
        key, _first = frames(client.data_to_send())
        client._sealer.sequence = 0
        client._seal("NEXTKEY", b"x")
        request = frames(client.data_to_send())[0]
        events = server.receive_data(encode_frame(*key) + encode_frame(*request))
        self.assertEqual([e.code for e in of_type(events, ProtocolFailed)], [MALFORMED_FRAME])


class ClientRefusalTests(unittest.TestCase):
    def test_an_announcement_nobody_asked_for_is_unexpected(self):
        server, client, _s, _c, _sent, _answer = session(identity(), announcements=False)
        server._seal("NEXTKEY", b"{}")
        events = client.receive_data(server.data_to_send())
        self.assertEqual([e.code for e in of_type(events, ProtocolFailed)], [UNEXPECTED_FRAME])


class Scripted:
    """An announcement of the test's making: ``plaintext_for(th)``."""

    def __init__(self, plaintext_for):
        self.plaintext_for = plaintext_for

    def message(self, th, current_der):
        return b"signed here"

    def plaintext(self, th, current_der):
        return self.plaintext_for(th)


def announced(plaintext_for):
    """The client's events in a session whose server announces
    ``plaintext_for(th)``."""
    return session(identity(Scripted(plaintext_for)))[3]


def signed(th, key=CLIENT_KEY, current_der=CURRENT_DER, next_der=None, revoked=None):
    next_der = next_der or keys.public_key_to_der(CLIENT_KEY.public_key())
    signature = key.sign_pss(rotation.next_key_message(th, current_der, next_der), salt_length=32)
    body = {
        "next": {
            "key": base64.b64encode(next_der).decode(),
            "signature": base64.b64encode(signature).decode(),
        }
    }
    if revoked is not None:
        body["revoked"] = revoked
    return json.dumps(body).encode()


class BadAnnouncementTests(unittest.TestCase):
    """Each is ignored with one reason, and the session goes on."""

    def ignored(self, plaintext_for):
        events = announced(plaintext_for)
        self.assertFalse(of_type(events, ProtocolFailed))
        self.assertFalse(of_type(events, NextKeyAnnounced))
        (ignored,) = of_type(events, AnnouncementIgnored)
        return ignored.reason

    def test_a_good_one_for_comparison(self):
        events = announced(signed)
        self.assertTrue(of_type(events, NextKeyAnnounced))

    def test_signed_by_a_key_the_server_does_not_hold(self):
        reason = self.ignored(lambda th: signed(th, key=OTHER_KEY))
        self.assertIn("does not verify for this session", reason)

    def test_replayed_from_another_session(self):
        reason = self.ignored(lambda th: signed(b"\0" * 32))
        self.assertIn("does not verify", reason)

    def test_bound_to_another_current_key(self):
        other_der = keys.public_key_to_der(OTHER_KEY.public_key())
        reason = self.ignored(lambda th: signed(th, current_der=other_der))
        self.assertIn("does not verify", reason)

    def test_the_current_key_as_next(self):
        reason = self.ignored(lambda th: signed(th, key=SERVER_KEY, next_der=CURRENT_DER))
        self.assertIn("is the current key", reason)

    def test_too_large(self):
        reason = self.ignored(lambda th: b" " * (rotation.MAX_ANNOUNCEMENT + 1))
        self.assertIn("over the limit", reason)

    def test_not_json(self):
        self.ignored(lambda th: b"not json")

    def test_revoking_the_session_key(self):
        reason = self.ignored(lambda th: signed(th, revoked=[CURRENT]))
        self.assertIn("this very session", reason)

    def test_revoking_its_own_next_key(self):
        reason = self.ignored(lambda th: signed(th, revoked=[NEXT_KEY.fingerprint]))
        self.assertIn("its own next key", reason)

    def test_too_many_revoked(self):
        self.ignored(lambda th: signed(th, revoked=[REVOKED] * (rotation.MAX_REVOKED + 1)))

    def test_a_revoked_entry_that_is_not_a_fingerprint(self):
        self.ignored(lambda th: signed(th, revoked=[17]))

    def test_nothing_announced(self):
        self.ignored(lambda th: b"{}")


# -- the vectors of docs/spec/vectors/kx1-key-rotation.json ------------------------------


def _vectors():
    import json as json_
    import os

    from tests.vectors import DIRECTORY

    with open(os.path.join(DIRECTORY, "kx1-key-rotation.json"), encoding="utf-8") as f:
        return json_.load(f)


VECTORS = _vectors()


def vector(name):
    return bytes.fromhex(VECTORS[name])


def vector_record(name):
    return bytes.fromhex(VECTORS["records"][name])


class FixedSalt:
    """The server's announcement, signed with the vectors' PSS salt."""

    def __init__(self, announcement):
        self.announcement = announcement

    def message(self, th, current_der):
        return self.announcement.message(th, current_der)

    def plaintext(self, th, current_der):
        return self.announcement.plaintext(th, current_der, salt=vector("pss_salt"))


class VectorTests(unittest.TestCase):
    """keyexchanged reproduces kx1-key-rotation.json, made by the
    independent implementation (tests/independent/kx1_rotation.py)."""

    def test_the_signed_message_and_the_announcement(self):
        th = vector("transcript_hash")
        self.assertEqual(
            rotation.next_key_message(th, CURRENT_DER, vector("next_spki_der")),
            vector("signed_message"),
        )
        self.assertEqual(
            FixedSalt(ANNOUNCEMENT).plaintext(th, CURRENT_DER), vector("announcement_plaintext")
        )
        self.assertEqual(NEXT_KEY.fingerprint, VECTORS["next_fingerprint"])

    def test_the_client_asks_and_reads_the_announcement(self):
        from keyexchanged.tickets import StoredTicket

        stored = StoredTicket(
            "h", 1, CURRENT, vector("resumption_secret"), vector("resume_payload"), 2**40
        )
        expires = json.loads(vector("hello_payload"))["ephemeral"]["expires"]
        client = ClientConnection(announcements=True, ticket=stored, clock=lambda: expires - 100)
        client.receive_data(encode_frame("HELLO", vector("hello_payload")))
        client.accept_key()
        self.assertEqual(
            client.data_to_send(),
            encode_frame("RESUME", vector("resume_payload"))
            + encode_frame("NEXTKEY", vector_record("client_nextkey"))
            + encode_frame("MSG", vector_record("client_first_msg")),
        )
        events = client.receive_data(
            encode_frame("MSG", vector_record("server_confirmation"))
            + encode_frame("NEXTKEY", vector_record("server_nextkey"))
        )
        (announced,) = of_type(events, NextKeyAnnounced)
        self.assertEqual(announced.announcement.next_fingerprint, VECTORS["next_fingerprint"])

    def test_the_server_offers_and_announces(self):
        from keyexchanged import tickets
        from keyexchanged.ephemeral import EphemeralKey
        from tests.fixtures import EPHEMERAL_PRIVATE, replay

        member = json.loads(vector("hello_payload"))["ephemeral"]
        offered = EphemeralKey(
            EPHEMERAL_PRIVATE, member["expires"], base64.b64decode(member["signature"])
        )
        private = RESUME_RAW["ticket_server_private"]
        ticket_key = bytes.fromhex(private["ticket_key"])
        ticket_keys = tickets.TicketKeys([ticket_key])
        ticket_keys._by_id = {bytes.fromhex(private["key_id"]): ticket_key}
        issuer = tickets.TicketIssuer(ticket_keys, clock=lambda: member["expires"] - 100)
        server = ServerConnection(
            identity(FixedSalt(ANNOUNCEMENT)),
            random=replay(vector("nonce")),
            ephemeral=offered,
            tickets=issuer,
        )
        server.start()
        self.assertEqual(server.data_to_send(), encode_frame("HELLO", vector("hello_payload")))
        server.receive_data(
            encode_frame("RESUME", vector("resume_payload"))
            + encode_frame("NEXTKEY", vector_record("client_nextkey"))
            + encode_frame("MSG", vector_record("client_first_msg"))
        )
        sent = frames(server.data_to_send())
        self.assertEqual(
            sent[:2],
            [
                ("MSG", vector_record("server_confirmation")),
                ("NEXTKEY", vector_record("server_nextkey")),
            ],
        )


class SwitchKeysTests(unittest.TestCase):
    """rotation.switch_keys, what ``keyexchange rotate-key`` does."""

    def setUp(self):
        import os

        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.key = os.path.join(self.dir, "server.key")
        self.next = os.path.join(self.dir, "next.key")
        keys.save_private_key(SERVER_KEY, self.key)
        keys.save_public_key(SERVER_KEY, self.key + ".pub")

    def test_the_next_key_becomes_the_key_and_the_old_one_is_kept(self):
        import os

        keys.save_private_key(CLIENT_KEY, self.next)
        switched = rotation.switch_keys(self.key, self.next)
        self.assertEqual((switched.retired, switched.current), (CURRENT, NEXT_KEY.fingerprint))
        self.assertEqual(keys.fingerprint(keys.load_private_key(self.key)), NEXT_KEY.fingerprint)
        self.assertEqual(
            keys.fingerprint(keys.load_public_key(self.key + ".pub")), NEXT_KEY.fingerprint
        )
        self.assertEqual(keys.fingerprint(keys.load_private_key(self.key + ".retired")), CURRENT)
        self.assertFalse(os.path.exists(self.next))

    def test_refused_when_the_next_key_is_the_key(self):
        from keyexchanged.errors import KeyexchangedError

        keys.save_private_key(SERVER_KEY, self.next)
        with self.assertRaises(KeyexchangedError) as caught:
            rotation.switch_keys(self.key, self.next)
        self.assertIn("is the current key", str(caught.exception))
        self.assertEqual(keys.fingerprint(keys.load_private_key(self.key)), CURRENT)

    def test_refused_when_a_retired_key_is_there(self):
        import os

        from keyexchanged.errors import KeyexchangedError

        keys.save_private_key(CLIENT_KEY, self.next)
        keys.save_private_key(OTHER_KEY, self.key + ".retired")
        with self.assertRaises(KeyexchangedError) as caught:
            rotation.switch_keys(self.key, self.next)
        self.assertIn("server.key.retired exists", str(caught.exception))
        self.assertEqual(keys.fingerprint(keys.load_private_key(self.key)), CURRENT)
        self.assertTrue(os.path.exists(self.next))

    def test_revoked_keys_may_not_name_a_key_the_server_serves(self):
        from keyexchanged.errors import ConfigError

        with self.assertRaises(ConfigError):
            rotation.check_revoked({CURRENT}, CURRENT, NEXT_KEY)
        with self.assertRaises(ConfigError):
            rotation.check_revoked({NEXT_KEY.fingerprint}, CURRENT, NEXT_KEY)
        self.assertEqual(rotation.check_revoked({REVOKED}, CURRENT, NEXT_KEY), (REVOKED,))
