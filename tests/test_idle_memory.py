"""What an established, idle session keeps: memory per session.

Thousands of idle sessions are the daemon's steady state, so each keeps
its state in slots rather than an instance dict, refers to what every
connection shares through its factory, and lets go of what only the
handshake needed once the handshake is over.
"""

from twisted.trial import unittest

from keyexchanged import tickets
from keyexchanged.applications import EchoFactory
from keyexchanged.framing import encode_frame
from keyexchanged.handshake import ClientConnection, HandshakeComplete, ServerConnection, State
from keyexchanged.protocol import ServerChannelProtocol
from tests.fixtures import (
    EPHEMERAL,
    IDENTITY,
    Collector,
    Pair,
    StaticEphemeralKeys,
    ephemeral_key,
    frames,
)


def issuer():
    return tickets.TicketIssuer(tickets.TicketKeys.random(), clock=lambda: 1_000_000)


class IdleChannelTests(unittest.TestCase):
    def established(self, **server_options):
        """A server session after a full handshake with forward secrecy and
        a ticket, idle: the echo application, a client that says nothing."""
        server_options.setdefault("tickets", issuer())
        pair = Pair(app=EchoFactory(), client_app=Collector(), server_options=server_options)
        pair.flush()
        server = pair.server
        self.assertIsInstance(server, ServerChannelProtocol)
        self.assertIs(server.connection.state, State.OPEN)
        self.assertTrue(server.connection.forward_secrecy)
        return pair, server

    def test_state_is_in_slots_not_an_instance_dict(self):
        # An instance dict that had outgrown its class's shared keys was a
        # table of 1.5 KB per session in the daemon: every attribute, ours
        # and Twisted's, is a slot now.
        _, server = self.established()
        self.assertEqual(vars(server), {})
        self.assertFalse(hasattr(server.connection, "__dict__"))

    def test_what_every_connection_shares_comes_from_the_factory(self):
        pair, server = self.established()
        factory = pair.server_factory
        self.assertIs(server.reactor, factory.reactor)
        self.assertIn(server, factory.idle_sessions)
        self.assertIn(server, factory.connections)

    def test_the_handshake_state_is_gone_once_established(self):
        keys = StaticEphemeralKeys(ephemeral_key())
        _, server = self.established(ephemeral_keys=keys)
        connection = server.connection
        # The offered ephemeral key: no reference, and no longer waited for.
        self.assertIsNone(connection.ephemeral)
        self.assertEqual(keys.current.waiting, 0)
        # The transcript hash (what AUTH signs) and the HELLO's nonce.
        self.assertIsNone(connection.transcript_hash)
        # What the records need stays: the session still works.
        self.assertTrue(connection.can_send)


class ServerConnectionTests(unittest.TestCase):
    """The same, on the sans-IO state machine alone."""

    def handshake(self, **options):
        server = ServerConnection(IDENTITY, ephemeral=EPHEMERAL, **options)
        server.start()
        client = ClientConnection()
        client.receive_data(server.data_to_send())
        client.accept_key()
        events = server.receive_data(client.data_to_send())
        return server, client, events

    def test_ephemeral_key_let_go_at_key_and_transcript_hash_at_completion(self):
        server, _, events = self.handshake(tickets=issuer())
        self.assertIn(HandshakeComplete(None, False), events)
        self.assertIsNone(server.ephemeral)
        self.assertIsNone(server.transcript_hash)
        self.assertTrue(server.forward_secrecy)
        # The ticket went out all the same, after the confirmation.
        self.assertEqual([verb for verb, _ in frames(server.data_to_send())], ["MSG", "TICKET"])

    def test_transcript_hash_kept_until_the_handshake_completes(self):
        # AUTH signs it: between KEY and the client's first record it stays.
        server = ServerConnection(IDENTITY, ephemeral=EPHEMERAL)
        server.start()
        client = ClientConnection()
        client.receive_data(server.data_to_send())
        client.accept_key()
        key_frame, first_record = frames(client.data_to_send())
        self.assertEqual(key_frame[0], "KEY")
        server.receive_data(encode_frame(*key_frame))
        self.assertIs(server.state, State.AWAIT_FIRST)
        self.assertIsNone(server.ephemeral)
        self.assertEqual(server.transcript_hash, client.transcript_hash)
        server.receive_data(encode_frame(*first_record))
        self.assertIs(server.state, State.OPEN)
        self.assertIsNone(server.transcript_hash)
