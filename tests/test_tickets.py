"""Resumption tickets: the server's ticket keys and their file, and the
client's ticket store (spec §11)."""

import base64
import json
import os
import stat

from Crypto.Cipher import AES
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from keyexchanged import cli, keys, tickets
from keyexchanged.handshake import ClientConnection, ServerConnection, TicketReceived
from tests.daemon import MESSAGE, DaemonTestCase, run_client
from tests.fixtures import (
    CLIENT_KEY,
    IDENTITY,
    assert_every_case,
    log_events,
    temporary_directory,
)
from tests.vectors import RAW

CLIENT_FINGERPRINT = keys.fingerprint(CLIENT_KEY)

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


class SingleUseTests(unittest.TestCase):
    """A daemon resumes each ticket once, remembering the used ones, in
    bounded memory, until they expire."""

    def setUp(self):
        self.now = [NOW]
        self.issuer = tickets.TicketIssuer(
            tickets.TicketKeys.random(), lifetime=600, clock=lambda: self.now[0]
        )

    def issue(self):
        return self.issuer.issue(b"s" * 32, IDENTITY.fingerprint)[0]

    def test_a_ticket_opens_once(self):
        ticket = self.issue()
        self.assertEqual(self.issuer.open(ticket, IDENTITY.fingerprint), (b"s" * 32, None))
        error = self.assertRaises(
            tickets.StaleTicket, self.issuer.open, ticket, IDENTITY.fingerprint
        )
        self.assertEqual(str(error), "ticket already used")
        self.assertIsNotNone(self.issuer.open(self.issue(), IDENTITY.fingerprint))

    def test_a_used_ticket_is_forgotten_once_it_has_expired(self):
        self.issuer.open(self.issue(), IDENTITY.fingerprint)
        self.assertEqual(self.issuer.used_tickets, 1)
        self.now[0] += 600 + tickets.USED_BUCKET_SECONDS
        self.issuer.open(self.issue(), IDENTITY.fingerprint)
        self.assertEqual(self.issuer.used_tickets, 1)

    def test_a_full_memory_refuses_to_resume_rather_than_forget(self):
        self.patch(tickets, "MAX_USED_TICKETS", 3)
        for _ in range(3):
            self.issuer.open(self.issue(), IDENTITY.fingerprint)
        fresh = self.issue()
        error = self.assertRaises(
            tickets.StaleTicket, self.issuer.open, fresh, IDENTITY.fingerprint
        )
        self.assertEqual(str(error), "too many used tickets to remember another")
        # Once the old ones have expired there is room again.
        self.now[0] += 600 + tickets.USED_BUCKET_SECONDS
        self.issuer.open(self.issue(), IDENTITY.fingerprint)

    def test_tickets_of_a_retired_key_are_forgotten(self):
        self.issuer.open(self.issue(), IDENTITY.fingerprint)
        self.issuer.keys = tickets.TicketKeys.random()
        self.now[0] += tickets.USED_BUCKET_SECONDS
        self.issuer.open(self.issue(), IDENTITY.fingerprint)
        self.assertEqual(self.issuer.used_tickets, 1)


class ChainTests(unittest.TestCase):
    """Sessions resumed from sessions resumed from a full handshake: what the
    tickets say stays that of the full handshake, for a bounded time."""

    def setUp(self):
        self.now = NOW
        self.issuer = tickets.TicketIssuer(
            tickets.TicketKeys.random(), lifetime=600, clock=lambda: self.now
        )

    def session(self, ticket=None, identity=None):
        """A session, resumed with ``ticket`` (a TicketReceived) or full; the
        TicketReceived it left, or None."""
        server = ServerConnection(IDENTITY, tickets=self.issuer)
        server.start()
        stored = None
        if ticket is not None:
            stored = tickets.StoredTicket(
                "h", 1, ticket.server_fingerprint, ticket.secret, ticket.ticket, NOW + 86400
            )
        client = ClientConnection(identity=identity, require_forward_secrecy=False, ticket=stored)
        client.receive_data(server.data_to_send())
        client.accept_key()
        server.receive_data(client.data_to_send())
        events = client.receive_data(server.data_to_send())
        self.assertTrue(client.resumed if ticket is not None else not client.resumed)
        found = [e for e in events if isinstance(e, TicketReceived)]
        return found[0] if found else None

    def test_a_chain_of_resumptions_ends_one_lifetime_after_its_full_handshake(self):
        ticket = self.session()
        self.assertEqual(ticket.lifetime, 600)
        self.now += 400
        ticket = self.session(ticket)
        self.assertEqual(ticket.lifetime, 200)  # not 600 more
        self.now += 150
        ticket = self.session(ticket)
        self.assertEqual(ticket.lifetime, 50)
        self.now += 50
        # The chain is over: that ticket has expired, a full handshake follows.
        self.assertRaises(
            tickets.StaleTicket, self.issuer.open, ticket.ticket, IDENTITY.fingerprint
        )

    def test_the_authenticated_identity_and_its_time_are_carried(self):
        ticket = self.session(identity=CLIENT_KEY)
        self.now += 100
        ticket = self.session(ticket)
        state = self.issuer.open_state(ticket.ticket, IDENTITY.fingerprint)
        self.assertEqual(state.client_fingerprint, CLIENT_FINGERPRINT)
        self.assertEqual(state.authenticated, NOW)

    def test_a_ticket_says_nothing_of_the_client_by_its_length(self):
        lengths = {
            len(self.issuer.issue(b"s" * 32, IDENTITY.fingerprint, client, post_quantum=pq)[0])
            for client in (None, CLIENT_FINGERPRINT)
            for pq in (False, True)
        }
        self.assertEqual(len(lengths), 1, lengths)
        self.assertLessEqual(lengths.pop(), tickets.MAX_TICKET_LENGTH)

    def test_a_ticket_without_the_authentication_time_still_opens(self):
        """As the spec's vector ticket, and tickets of an earlier version:
        their chain ends one lifetime after they were issued."""
        state = json.dumps(
            {
                "secret": base64.b64encode(b"s" * 32).decode(),
                "expires": NOW + 600,
                "server": IDENTITY.fingerprint,
                "client": None,
            }
        ).encode()
        key = self.issuer.keys.encrypting
        kid = tickets.key_id(key)
        cipher = AES.new(key, AES.MODE_GCM, nonce=b"n" * 12)
        cipher.update(kid)
        body, tag = cipher.encrypt_and_digest(state)
        opened = self.issuer.open_state(kid + b"n" * 12 + body + tag, IDENTITY.fingerprint)
        self.assertEqual((opened.secret, opened.authenticated), (b"s" * 32, NOW))


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
        warned = [e for e in events if e.get("log_format", "").startswith("ticket cache")]
        self.assertEqual(len(warned), 1, warned)
        self.assertTrue(warned[0]["text"].startswith(path), warned)
        # and it starts afresh: the next ticket is written over the junk
        store.add(tickets.StoredTicket("h", 1, "SHA256:x", b"S" * 32, b"t", NOW + 60))
        self.assertEqual(len(tickets.TicketStore(path, clock=lambda: NOW)), 1)


class SharedStoreTests(unittest.TestCase):
    """The cache file as several clients (and identities) use it."""

    def setUp(self):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.path = os.path.join(directory, "tickets.json")
        self.warnings = []

    def store(self):
        return tickets.TicketStore(self.path, clock=lambda: NOW, warn=self.warnings.append)

    def test_two_clients_sharing_a_cache_never_take_the_same_ticket(self):
        self.store().add_received("h", 1, received())
        first, second = self.store(), self.store()  # both started with the ticket
        self.assertIsNotNone(first.take("h", 1))
        self.assertIsNone(second.take("h", 1))

    def test_a_ticket_added_by_another_client_is_found(self):
        first, second = self.store(), self.store()
        first.add_received("h", 1, received())
        self.assertIsNotNone(second.take("h", 1))

    def test_a_ticket_is_taken_only_under_its_identity(self):
        store = self.store()
        store.add_received("h", 1, received(ticket=b"A" * 40), "SHA256:a")
        store.add_received("h", 1, received(ticket=b"N" * 40))
        self.assertIsNone(store.take("h", 1, "SHA256:b"))
        self.assertEqual(store.take("h", 1, "SHA256:a").ticket, b"A" * 40)
        self.assertIsNone(store.take("h", 1, "SHA256:a"))
        self.assertEqual(store.take("h", 1).ticket, b"N" * 40)
        self.assertEqual(self.warnings, [])

    def damaged(self, document):
        with open(self.path, "wb") as f:
            f.write(document if isinstance(document, bytes) else document.encode())
        os.chmod(self.path, 0o600)
        store = self.store()
        self.assertEqual(len(store), 0)
        self.assertEqual(len(self.warnings), 1, self.warnings)
        self.assertTrue(self.warnings[0].startswith(f"{self.path}: is damaged ("))
        # ... and it is replaced by a good one at the next ticket.
        store.add_received("h", 1, received())
        self.assertEqual(len(self.store()), 1)
        self.assertEqual(len(self.warnings), 1)

    def entry(self, **changes):
        entry = {
            "host": "h",
            "port": 1,
            "server": IDENTITY.fingerprint,
            "client": None,
            "secret": base64.b64encode(b"S" * 32).decode(),
            "ticket": base64.b64encode(b"T" * 40).decode(),
            "expires": NOW + 60,
        }
        entry.update(changes)
        return json.dumps({"tickets": [entry]})

    def test_damaged_expiry(self):
        self.damaged(self.entry(expires="tomorrow"))

    def test_damaged_host(self):
        self.damaged(self.entry(host=["h"]))

    def test_damaged_port(self):
        self.damaged(self.entry(port=70000))

    def test_damaged_secret(self):
        self.damaged(self.entry(secret=base64.b64encode(b"short").decode()))

    def test_no_client_member(self):
        self.damaged(
            json.dumps({"tickets": [{**json.loads(self.entry())["tickets"][0], "client": 5}]})
        )

    def test_damaged_list(self):
        self.damaged('{"tickets": {"h": 1}}')

    def test_not_an_object(self):
        self.damaged("[1, 2]")

    def test_not_utf8(self):
        self.damaged(b'{"tickets": [], "x": "\xff"}')

    def test_a_missing_directory_keeps_tickets_in_memory(self):
        path = os.path.join(self.path, "nowhere", "tickets.json")
        store = tickets.TicketStore(path, clock=lambda: NOW, warn=self.warnings.append)
        store.add_received("h", 1, received())
        self.assertEqual(store.take("h", 1).ticket, b"T" * 40)
        self.assertEqual(len(self.warnings), 1)
        self.assertIn("does not exist; tickets are kept in memory only", self.warnings[0])


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


class TicketCacheSystemTests(DaemonTestCase):
    """``keyexchange connect --ticket-cache`` against the real daemon."""

    def start(self):
        """The daemon the tickets are for: a client's tickets are in its
        cache, the test's own, and the test sees the log from its start."""
        daemon = self.shared_daemon()
        return daemon, daemon.port

    def connect(self, port, *args):
        return run_client(
            "connect", f"127.0.0.1:{port}", "--fingerprint", RAW["server_fingerprint"], *args
        )

    @defer.inlineCallbacks
    def test_a_ticket_is_resumed_only_under_the_identity_it_was_issued_to(self):
        daemon, port = self.start()
        identity = os.path.join(self.dir, "client.key")
        keys.save_private_key(CLIENT_KEY, identity)
        cache = os.path.join(self.dir, "tickets.json")
        out, err, code = yield self.connect(port, "--identity", identity, "--ticket-cache", cache)
        self.assertEqual((out, code), (MESSAGE, 0), err)
        yield daemon.wait_for(b"ended: ok;")
        # Without the identity, the ticket of a session that had one is not used.
        out, err, code = yield self.connect(port, "--ticket-cache", cache)
        self.assertEqual((out, code), (MESSAGE, 0), err)
        log = yield daemon.wait_for(b"ended: ok;", count=2)
        last = [line for line in log.splitlines() if b"ended: ok;" in line][-1]
        self.assertIn(b"ended: ok; full", last)
        self.assertNotIn(CLIENT_FINGERPRINT.encode(), last)

    @defer.inlineCallbacks
    def test_a_ticket_resumes_once_on_a_daemon(self):
        daemon, port = self.start()
        cache = os.path.join(self.dir, "tickets.json")
        out, err, code = yield self.connect(port, "--ticket-cache", cache)
        self.assertEqual((out, code), (MESSAGE, 0), err)
        with open(cache, "rb") as f:
            copy = f.read()
        out, err, code = yield self.connect(port, "--ticket-cache", cache)
        self.assertEqual((out, code), (MESSAGE, 0), err)
        yield daemon.wait_for(b"ended: ok; resumed")
        # The same ticket again (a copied cache, a second client): refused.
        with open(cache, "wb") as f:
            f.write(copy)
        out, err, code = yield self.connect(port, "--ticket-cache", cache, "--explain")
        self.assertEqual((out, code), (MESSAGE, 0), err)
        self.assertIn(b"stale-ticket", err)
        log = yield daemon.wait_for(b"ended: ok; full", count=2)
        self.assertEqual(log.count(b"ended: ok; resumed"), 1)
        self.assertIn(b"ended: stale-ticket", log)

    @defer.inlineCallbacks
    def test_a_cache_in_a_missing_directory_is_a_warning(self):
        _, port = self.start()
        cache = os.path.join(self.dir, "no", "such", "tickets.json")
        out, err, code = yield self.connect(port, "--ticket-cache", cache)
        self.assertEqual((out, code), (MESSAGE, 0), err)
        self.assertIn(b"keyexchange: warning: --ticket-cache " + cache.encode(), err)
        self.assertNotIn(b"Traceback", err)
        self.assertNotIn(b"Unhandled", err)
        self.assertFalse(os.path.exists(os.path.dirname(cache)))

    @defer.inlineCallbacks
    def test_a_damaged_cache_is_a_warning_and_starts_empty(self):
        daemon, port = self.start()
        cache = os.path.join(self.dir, "tickets.json")
        entry = {
            "host": "127.0.0.1",
            "port": port,
            "server": RAW["server_fingerprint"],
            "client": None,
            "secret": base64.b64encode(b"S" * 32).decode(),
            "ticket": base64.b64encode(b"T" * 64).decode(),
            "expires": "tomorrow",
        }
        with open(cache, "w") as f:
            json.dump({"tickets": [entry]}, f)
        os.chmod(cache, 0o600)
        out, err, code = yield self.connect(port, "--ticket-cache", cache)
        self.assertEqual((out, code), (MESSAGE, 0), err)
        self.assertIn(b"keyexchange: warning: --ticket-cache " + cache.encode(), err)
        self.assertNotIn(b"Traceback", err)
        yield daemon.wait_for(b"ended: ok; full")
        with open(cache) as f:
            (kept,) = json.load(f)["tickets"]  # the damaged one replaced by the new one
        self.assertIsInstance(kept["expires"], int)


class PostQuantumTicketTests(unittest.TestCase):
    """§12.5: a ticket records whether its session had an ML-KEM secret, for
    the server inside it and for the client beside it."""

    def test_issuer_records_it(self):
        issuer = tickets.TicketIssuer(tickets.TicketKeys.random(), clock=lambda: NOW)
        hybrid, _ = issuer.issue(b"\1" * 32, IDENTITY.fingerprint, post_quantum=True)
        classical, _ = issuer.issue(b"\1" * 32, IDENTITY.fingerprint)
        self.assertTrue(issuer.open_state(hybrid, IDENTITY.fingerprint).post_quantum)
        self.assertFalse(issuer.open_state(classical, IDENTITY.fingerprint).post_quantum)

    def test_store_keeps_it_in_its_file(self):
        path = self.mktemp()
        store = tickets.TicketStore(path, clock=lambda: NOW)
        store.add_received(
            "h", 1, TicketReceived(b"T" * 40, 60, b"S" * 32, IDENTITY.fingerprint, True)
        )
        store.add_received("h", 2, received())
        again = tickets.TicketStore(path, clock=lambda: NOW)
        self.assertTrue(again.take("h", 1).post_quantum)
        self.assertFalse(again.take("h", 2).post_quantum)


class ForwardSecrecyTicketTests(unittest.TestCase):
    """§11.3: a client that requires forward secrecy never resumes a ticket
    of a session that had none; the store keeps what the session had."""

    def test_store_keeps_it_in_its_file(self):
        path = self.mktemp()
        store = tickets.TicketStore(path, clock=lambda: NOW)
        store.add_received(
            "h", 1, TicketReceived(b"T" * 40, 60, b"S" * 32, IDENTITY.fingerprint, False, False)
        )
        store.add_received("h", 2, received())
        again = tickets.TicketStore(path, clock=lambda: NOW)
        self.assertFalse(again.take("h", 1).forward_secrecy)
        self.assertTrue(again.take("h", 2).forward_secrecy)
