"""Resumption tickets: the server's ticket keys and their file, and the
client's ticket store (spec §11)."""

import base64
import json
import os
import stat

from twisted.internet.task import Clock
from twisted.trial import unittest

from keyexchanged import cli, tickets
from keyexchanged.handshake import TicketReceived
from tests.fixtures import IDENTITY, assert_every_case, log_events, temporary_directory

NOW = 1_800_000_000


def key_line(byte):
    return base64.b64encode(bytes([byte]) * 32).decode()


class TicketFileTests(unittest.TestCase):
    def setUp(self):
        self.dir = temporary_directory(self)
        self.path = os.path.join(self.dir, "ticket.keys")

    def write(self, text, mode=0o600):
        with open(self.path, "w") as f:
            f.write(text)
        os.chmod(self.path, mode)

    def test_first_key_encrypts_every_key_decrypts(self):
        self.write(f"# shared by the daemons behind kx.example\n{key_line(1)}\n\n{key_line(2)}\n")
        loaded = tickets.load_ticket_keys(self.path)
        self.assertEqual(loaded.encrypting, b"\1" * 32)
        old = tickets.TicketIssuer(tickets.TicketKeys([b"\2" * 32]), clock=lambda: NOW)
        ticket, _ = old.issue(b"s" * 32, IDENTITY.fingerprint)
        new = tickets.TicketIssuer(loaded, clock=lambda: NOW)
        self.assertEqual(new.open(ticket, IDENTITY.fingerprint), (b"s" * 32, None))

    def test_malformed_lines_are_named(self):
        def check(case):
            text, message = case
            self.write(text)
            error = self.assertRaises(
                tickets.TicketKeyFileError, tickets.load_ticket_keys, self.path
            )
            self.assertEqual(
                str(error),
                f"{self.path}, {message}" if "line" in message else f"{self.path}: {message}",
            )

        cases = [
            (f"{key_line(1)}\nnot base64!\n", "line 2: not base64"),
            (
                f"# c\n{base64.b64encode(b'short').decode()}\n",
                "line 2: a ticket key is 32 bytes, this one is 5",
            ),
            ("# only a comment\n", "no ticket key in the file"),
            ("", "no ticket key in the file"),
        ]
        assert_every_case(self, cases, check)

    def test_readable_by_others_is_refused(self):
        self.write(key_line(1) + "\n", mode=0o640)
        error = self.assertRaises(tickets.TicketKeyFileError, tickets.load_ticket_keys, self.path)
        self.assertIn("ticket-key file is readable by others (mode 0640)", str(error))
        self.assertIn("chmod 600", str(error))

    def test_missing(self):
        error = self.assertRaises(tickets.TicketKeyFileError, tickets.load_ticket_keys, self.path)
        self.assertIn("cannot read", str(error))

    def test_new_and_rotate_commands(self):
        self.assertEqual(cli.main(["ticket-keys", "new", self.path]), 0)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        first = tickets.load_ticket_keys(self.path)
        self.assertEqual(len(first), 1)
        # new never overwrites
        self.assertEqual(cli.main(["ticket-keys", "new", self.path]), 1)
        self.assertEqual(cli.main(["ticket-keys", "rotate", self.path]), 0)
        second = tickets.load_ticket_keys(self.path)
        self.assertEqual(len(second), 2)
        self.assertEqual(second._keys[1], first.encrypting)
        self.assertNotEqual(second.encrypting, first.encrypting)
        self.assertEqual(cli.main(["ticket-keys", "rotate", self.path]), 0)
        third = tickets.load_ticket_keys(self.path)
        # The previous first key stays; the one before it is dropped.
        self.assertEqual(third._keys, [third.encrypting, second.encrypting])
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    def test_rotate_a_missing_file(self):
        self.assertEqual(cli.main(["ticket-keys", "rotate", self.path]), 1)


class RotationTests(unittest.TestCase):
    def test_random_keys_rotate_every_lifetime(self):
        clock = Clock()
        clock.advance(NOW)
        issuer = tickets.TicketIssuer(
            tickets.TicketKeys.random(), lifetime=100, clock=clock.seconds
        )
        rotation = tickets.TicketKeyRotation(issuer, clock)
        rotation.start()
        ticket, _ = issuer.issue(b"s" * 32, IDENTITY.fingerprint)
        clock.advance(99)
        self.assertEqual(issuer.open(ticket, IDENTITY.fingerprint)[0], b"s" * 32)
        clock.advance(1)  # a rotation; the ticket expires at the same time
        self.assertEqual(len(issuer.keys), 2)
        clock.advance(100)  # a second rotation: the first key is destroyed
        error = self.assertRaises(tickets.StaleTicket, issuer.open, ticket, IDENTITY.fingerprint)
        self.assertEqual(str(error), "unknown or retired ticket key")
        self.assertEqual(issuer.keys.find(ticket[:16]), None)
        rotation.stop()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_the_file_is_read_again_when_it_changes(self):
        directory = temporary_directory(self)
        path = os.path.join(directory, "ticket.keys")
        tickets.new_ticket_key_file(path)
        clock = Clock()
        issuer = tickets.TicketIssuer(tickets.load_ticket_keys(path), clock=clock.seconds)
        rotation = tickets.TicketKeyRotation(issuer, clock, path=path, check_interval=30)
        rotation.start()
        before = issuer.keys.encrypting
        clock.advance(30)
        self.assertEqual(issuer.keys.encrypting, before)  # unchanged file
        tickets.rotate_ticket_key_file(path)
        clock.advance(30)
        self.assertNotEqual(issuer.keys.encrypting, before)
        self.assertIsNotNone(issuer.keys.find(tickets.key_id(before)))
        # A file broken later is logged, and the keys in use are kept.
        current = issuer.keys
        with open(path, "a") as f:
            f.write("garbage\n")
        clock.advance(30)
        self.assertIs(issuer.keys, current)
        rotation.stop()


class IssuerTests(unittest.TestCase):
    def test_ticket_is_opaque_and_bounded(self):
        issuer = tickets.TicketIssuer(tickets.TicketKeys.random(), clock=lambda: NOW)
        long_fingerprint = "SHA256:" + "A" * 43
        ticket, lifetime = issuer.issue(b"\xaa" * 32, long_fingerprint, long_fingerprint)
        self.assertEqual(lifetime, 3600)
        self.assertLessEqual(len(ticket), tickets.MAX_TICKET_LENGTH)
        self.assertNotIn(b"\xaa" * 4, ticket)
        self.assertNotIn(b"SHA256", ticket)

    def test_lifetime_bounds(self):
        for lifetime in (0, 86401):
            self.assertRaises(
                ValueError, tickets.TicketIssuer, tickets.TicketKeys.random(), lifetime=lifetime
            )


def received(ticket=b"T" * 40, lifetime=60, fingerprint=IDENTITY.fingerprint):
    return TicketReceived(ticket, lifetime, b"S" * 32, fingerprint)


class StoreTests(unittest.TestCase):
    def test_used_once(self):
        store = tickets.TicketStore(clock=lambda: NOW)
        store.add_received("kx.example", 51424, received())
        ticket = store.take("kx.example", 51424)
        self.assertEqual((ticket.ticket, ticket.expires), (b"T" * 40, NOW + 60))
        self.assertIsNone(store.take("kx.example", 51424))
        self.assertIsNone(store.take("other.example", 51424))

    def test_expired_tickets_are_never_used(self):
        now = [NOW]
        store = tickets.TicketStore(clock=lambda: now[0])
        store.add_received("h", 1, received(lifetime=60))
        now[0] += 60
        self.assertIsNone(store.take("h", 1))

    def test_never_shared_between_server_keys(self):
        store = tickets.TicketStore(clock=lambda: NOW)
        store.add_received("h", 1, received(ticket=b"old" * 10, fingerprint="SHA256:old"))
        store.add_received("h", 1, received(ticket=b"new" * 10))
        self.assertEqual(len(store), 1)
        self.assertEqual(store.take("h", 1).ticket, b"new" * 10)

    def test_a_small_pool_per_server(self):
        store = tickets.TicketStore(per_server=2, clock=lambda: NOW)
        for i in range(5):
            store.add_received("h", 1, received(ticket=bytes([i]) * 20))
        self.assertEqual(len(store), 2)
        self.assertEqual(store.take("h", 1).ticket, b"\4" * 20)
        self.assertEqual(store.take("h", 1).ticket, b"\3" * 20)

    def test_forget(self):
        store = tickets.TicketStore(clock=lambda: NOW)
        store.add_received("h", 1, received())
        store.forget("h", 1)
        self.assertEqual(len(store), 0)

    def test_file_is_private_survives_and_is_pruned(self):
        directory = temporary_directory(self)
        path = os.path.join(directory, "tickets.json")
        now = [NOW]
        store = tickets.TicketStore(path, clock=lambda: now[0])
        store.add_received("h", 1, received(lifetime=100))
        store.add_received("g", 2, received(lifetime=10))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path) as f:
            self.assertEqual(len(json.load(f)["tickets"]), 2)
        now[0] += 10
        again = tickets.TicketStore(path, clock=lambda: now[0])
        self.assertEqual(len(again), 1)  # the expired one is not loaded
        ticket = again.take("h", 1)
        self.assertEqual(ticket.secret, b"S" * 32)
        with open(path) as f:
            self.assertEqual(json.load(f)["tickets"], [])  # used, so gone

    def test_a_cache_readable_by_others_is_refused(self):
        directory = temporary_directory(self)
        path = os.path.join(directory, "tickets.json")
        with open(path, "w") as f:
            f.write('{"tickets": []}')
        os.chmod(path, 0o644)
        error = self.assertRaises(tickets.TicketKeyFileError, tickets.TicketStore, path)
        self.assertIn("ticket cache is readable by others", str(error))

    def test_an_unreadable_cache_is_ignored(self):
        directory = temporary_directory(self)
        path = os.path.join(directory, "tickets.json")
        with open(path, "w") as f:
            f.write("not json")
        os.chmod(path, 0o600)
        events = log_events(self)
        store = tickets.TicketStore(path, clock=lambda: NOW)
        self.assertEqual(len(store), 0)
        warned = [e for e in events if e.get("log_format", "").startswith("ignoring unreadable")]
        self.assertEqual([e["path"] for e in warned], [path])
        # and it starts afresh: the next ticket is written over the junk
        store.add(tickets.StoredTicket("h", 1, "SHA256:x", b"S" * 32, b"t", NOW + 60))
        self.assertEqual(len(tickets.TicketStore(path, clock=lambda: NOW)), 1)


class ReloadTests(unittest.TestCase):
    """A reload that names a ticket-key file (or drops it) repoints the
    rotation: the file's keys are served and random rotation stops."""

    def test_from_random_keys_to_a_file_and_back(self):
        directory = temporary_directory(self)
        path = os.path.join(directory, "ticket.keys")
        tickets.new_ticket_key_file(path)
        clock = Clock()
        issuer = tickets.TicketIssuer(
            tickets.TicketKeys.random(), lifetime=100, clock=clock.seconds
        )
        rotation = tickets.TicketKeyRotation(issuer, clock)
        rotation.start()
        from_file = tickets.load_ticket_keys(path)
        rotation.use_file(path, from_file)
        self.assertIs(issuer.keys, from_file)
        clock.advance(1000)  # ten lifetimes: no random rotation replaced them
        self.assertIs(issuer.keys, from_file)
        tickets.rotate_ticket_key_file(path)
        clock.advance(30)  # the file is watched now
        self.assertEqual(issuer.keys._keys[1], from_file.encrypting)
        rotation.use_file(None, None)
        kept = issuer.keys
        clock.advance(100)  # without a file: random rotation again
        self.assertEqual(issuer.keys._keys[1], kept.encrypting)
        rotation.stop()
        self.assertEqual(clock.getDelayedCalls(), [])
