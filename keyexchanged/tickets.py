"""Resumption tickets (docs/spec/kx1.rst §11): the server's keys, and the client's store.

A ticket lets the server, and only the server, recover what a session left
behind for its resumption: the resumption secret, the long-term key's
fingerprint, the client's fingerprint when it authenticated, and an expiry.
The format is ours (the spec leaves it to the server)::

    ticket = key_id (16) ‖ nonce (12) ‖ AES-256-GCM(ticket key, nonce,
                                                    aad = key_id, state JSON) ‖ tag (16)

``key_id`` is derived from the ticket key, so that daemons sharing a
ticket-key file name the same key the same way.  A ticket is opaque to the
client and never names anything in clear.

Server side: :class:`TicketKeys` (the key that encrypts first, then the ones
that still decrypt) and :class:`TicketIssuer`, which makes and opens tickets
with a clock it is given.  Client side: :class:`TicketStore`, tickets by the
host and port dialled, in memory or in a 0600 file.
"""

import base64
import binascii
import hashlib
import json
import os
import secrets

from Crypto.Cipher import AES
from twisted.logger import Logger

from keyexchanged import files, keys
from keyexchanged.errors import StaleTicket, TicketKeyFileError
from keyexchanged.files import PRIVATE_FILE_MODE

__all__ = [
    "StaleTicket",
    "StoredTicket",
    "TicketIssuer",
    "TicketKeyFileError",
    "TicketKeys",
    "TicketStore",
    "load_ticket_keys",
    "new_ticket_key_file",
    "rotate_ticket_key_file",
    "write_ticket_key_file",
]

TICKET_KEY_LENGTH = 32
KEY_ID_LENGTH = 16
NONCE_LENGTH = 12
TAG_LENGTH = 16
#: The spec bounds a ticket to 1–512 bytes and a lifetime to 1–86 400 s.
MAX_TICKET_LENGTH = 512
MAX_LIFETIME = 86400
DEFAULT_LIFETIME = 3600
_KEY_ID_CONTEXT = b"kx/1 ticket key id\x00"


def key_id(key):
    """A public name for a ticket key: the same in every daemon sharing it."""
    return hashlib.sha256(_KEY_ID_CONTEXT + key).digest()[:KEY_ID_LENGTH]


class TicketKeys:
    """Ticket keys, newest first: the first encrypts, every one decrypts."""

    def __init__(self, keys_):
        keys_ = [bytes(k) for k in keys_]
        if not keys_:
            raise ValueError("at least one ticket key is needed")
        for k in keys_:
            if len(k) != TICKET_KEY_LENGTH:
                raise ValueError("a ticket key is 32 bytes")
        self._keys = keys_
        self._by_id = {key_id(k): k for k in keys_}

    @classmethod
    def random(cls):
        return cls([secrets.token_bytes(TICKET_KEY_LENGTH)])

    def rotated(self):
        """A fresh key first and the current one kept to decrypt: older
        ones are destroyed (a ticket lives at most one lifetime)."""
        return TicketKeys([secrets.token_bytes(TICKET_KEY_LENGTH), self._keys[0]])

    @property
    def encrypting(self):
        return self._keys[0]

    def __len__(self):
        return len(self._keys)

    def find(self, kid):
        return self._by_id.get(kid)


class TicketIssuer:
    """Makes and opens this server's tickets.

    ``clock`` returns the time in seconds (the reactor's ``seconds``);
    ``lifetime`` is how long a ticket may resume, at most one day;
    ``random`` draws the GCM nonces (tests make it repeatable).
    """

    def __init__(
        self, ticket_keys, lifetime=DEFAULT_LIFETIME, clock=None, random=secrets.token_bytes
    ):
        if not 1 <= lifetime <= MAX_LIFETIME:
            raise ValueError(f"ticket lifetime must be 1 to {MAX_LIFETIME} seconds")
        self.keys = ticket_keys
        self.lifetime = lifetime
        self._random = random
        if clock is None:
            import time

            clock = time.time
        self._clock = clock

    def issue(self, secret, server_fingerprint, client_fingerprint=None, post_quantum=False):
        """Return ``(ticket, lifetime)`` for a session with ``secret``;
        ``post_quantum``: the session had an ML-KEM secret (revision 3)."""
        expires = int(self._clock()) + self.lifetime
        fields = {
            "secret": base64.b64encode(secret).decode("ascii"),
            "expires": expires,
            "server": server_fingerprint,
            "client": client_fingerprint,
        }
        if post_quantum:
            # Only then: a ticket of revision 2 keeps its former state.
            fields["post_quantum"] = True
        state = json.dumps(fields).encode("utf-8")
        key = self.keys.encrypting
        kid = key_id(key)
        nonce = self._random(NONCE_LENGTH)
        cipher = AES.new(key, AES.MODE_GCM, nonce=nonce)
        cipher.update(kid)
        body, tag = cipher.encrypt_and_digest(state)
        ticket = kid + nonce + body + tag
        assert len(ticket) <= MAX_TICKET_LENGTH  # fingerprints bound the state
        return ticket, self.lifetime

    def open(self, ticket, server_fingerprint):
        """Return ``(secret, client_fingerprint)``, or raise :class:`StaleTicket`."""
        secret, client, _ = self.open_session(ticket, server_fingerprint)
        return secret, client

    def open_session(self, ticket, server_fingerprint):
        """Return ``(secret, client_fingerprint, post_quantum)``, or raise
        :class:`StaleTicket`; ``post_quantum`` as given to :meth:`issue`."""
        if len(ticket) < KEY_ID_LENGTH + NONCE_LENGTH + TAG_LENGTH:
            raise StaleTicket("ticket too short")
        kid = ticket[:KEY_ID_LENGTH]
        key = self.keys.find(kid)
        if key is None:
            raise StaleTicket("unknown or retired ticket key")
        nonce = ticket[KEY_ID_LENGTH : KEY_ID_LENGTH + NONCE_LENGTH]
        body = ticket[KEY_ID_LENGTH + NONCE_LENGTH : -TAG_LENGTH]
        cipher = AES.new(key, AES.MODE_GCM, nonce=nonce)
        cipher.update(kid)
        try:
            state = json.loads(cipher.decrypt_and_verify(body, ticket[-TAG_LENGTH:]))
            secret = base64.b64decode(state["secret"], validate=True)
            expires, server, client = state["expires"], state["server"], state["client"]
            post_quantum = state.get("post_quantum") is True
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise StaleTicket("ticket does not open") from None
        if not isinstance(expires, int) or expires <= self._clock():
            raise StaleTicket("ticket expired")
        if server != server_fingerprint:
            raise StaleTicket("ticket issued under another server key")
        return secret, client, post_quantum


class TicketKeyRotation:
    """Keeps a :class:`TicketIssuer`'s keys current, on the reactor's clock.

    Without a file: a fresh random key every ``lifetime``, the previous one
    kept to decrypt, older ones destroyed, so a ticket key lives at most
    two lifetimes.  With a file (shared by the daemons behind one address):
    the file is read again every ``check_interval`` seconds when it changed;
    a file that has become unusable is logged and the keys in use are kept.
    """

    log = Logger()

    def __init__(self, issuer, reactor, path=None, check_interval=30.0):
        self.issuer = issuer
        self.reactor = reactor
        self.path = path
        self.check_interval = check_interval
        self._call = None
        self._stamp = self._file_stamp()

    def _file_stamp(self):
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def use_file(self, path, ticket_keys):
        """A reload named ``path`` (or no file: ``None``) for the ticket keys:
        serve ``ticket_keys`` (read from it already), and watch that file
        from now on — or rotate random keys, with no file."""
        if path is not None:
            self.issuer.keys = ticket_keys
        was_watching = self.path is not None
        self.path = path
        self._stamp = self._file_stamp()
        if self._call is not None and was_watching != (path is not None):
            # The next tick is of the other kind: start over.
            self.stop()
            self.start()

    def start(self):
        delay = self.issuer.lifetime if self.path is None else self.check_interval
        self._call = self.reactor.callLater(delay, self._tick)

    def stop(self):
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _tick(self):
        self._call = None
        if self.path is None:
            self.issuer.keys = self.issuer.keys.rotated()
            self.log.info("ticket keys rotated")
        else:
            self.reload()
        self.start()

    def reload(self):
        """Read the ticket-key file again if it changed; True if it did."""
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return False
        try:
            self.issuer.keys = load_ticket_keys(self.path)
        except TicketKeyFileError as error:
            self.log.error("keeping the ticket keys in use: {error}", error=str(error))
            return False
        self._stamp = stamp
        self.log.info(
            "ticket keys reloaded from {path}: {count} key(s)",
            path=self.path,
            count=len(self.issuer.keys),
        )
        return True


# -- the ticket-key file --------------------------------------------------------

_MAX_TICKET_KEY_FILE = 64 * 1024


def load_ticket_keys(path):
    """Read a ticket-key file: one base64 32-byte key per line, ``#`` comments.

    The file must be private to its owner, like a private key.  Raises
    :class:`TicketKeyFileError` naming the file and the line.
    """
    name = os.fsdecode(path)
    try:
        data = keys.read_private_file(name)
    except keys.KeyFileError as error:
        raise TicketKeyFileError(str(error).replace("private key", "ticket-key file")) from None
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise TicketKeyFileError(f"{name}: not ASCII text") from None
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            key = base64.b64decode(line, validate=True)
        except binascii.Error:
            raise TicketKeyFileError(f"{name}, line {number}: not base64") from None
        if len(key) != TICKET_KEY_LENGTH:
            raise TicketKeyFileError(
                f"{name}, line {number}: a ticket key is 32 bytes, this one is {len(key)}"
            )
        found.append(key)
    if not found:
        raise TicketKeyFileError(f"{name}: no ticket key in the file")
    return TicketKeys(found)


def _key_file_text(ticket_keys):
    lines = ["# keyexchanged ticket keys: the first encrypts, every one decrypts."]
    lines += [base64.b64encode(k).decode("ascii") for k in ticket_keys._keys]
    return ("\n".join(lines) + "\n").encode("ascii")


def write_ticket_key_file(path, ticket_keys):
    """Write (or replace) a ticket-key file holding ``ticket_keys`` (0600)."""
    files.write_atomically(path, _key_file_text(ticket_keys), PRIVATE_FILE_MODE, True)


def new_ticket_key_file(path):
    """Make a ticket-key file with one fresh key (0600; never overwrites)."""
    files.write_atomically(path, _key_file_text(TicketKeys.random()), PRIVATE_FILE_MODE, False)


def rotate_ticket_key_file(path):
    """Put a fresh key first and keep the current first key after it."""
    current = load_ticket_keys(path)
    files.write_atomically(path, _key_file_text(current.rotated()), PRIVATE_FILE_MODE, True)


# -- the client's store ------------------------------------------------------------


class StoredTicket:
    """What a client keeps of a ticket (§11.2)."""

    __slots__ = (
        "expires",
        "forward_secrecy",
        "host",
        "port",
        "post_quantum",
        "secret",
        "server_fingerprint",
        "ticket",
    )

    def __init__(
        self,
        host,
        port,
        server_fingerprint,
        secret,
        ticket,
        expires,
        post_quantum=False,
        forward_secrecy=True,
    ):
        self.host = host
        self.port = port
        self.server_fingerprint = server_fingerprint
        self.secret = secret
        self.ticket = ticket
        self.expires = expires
        #: The issuing session had an ML-KEM secret (revision 3), and an
        #: ephemeral key (§10).
        self.post_quantum = post_quantum
        self.forward_secrecy = forward_secrecy

    def as_json(self):
        obj = {
            "host": self.host,
            "port": self.port,
            "server": self.server_fingerprint,
            "secret": base64.b64encode(self.secret).decode("ascii"),
            "ticket": base64.b64encode(self.ticket).decode("ascii"),
            "expires": self.expires,
        }
        if self.post_quantum:
            obj["post_quantum"] = True
        if not self.forward_secrecy:
            obj["forward_secrecy"] = False
        return obj

    @classmethod
    def from_json(cls, obj):
        return cls(
            obj["host"],
            obj["port"],
            obj["server"],
            base64.b64decode(obj["secret"], validate=True),
            base64.b64decode(obj["ticket"], validate=True),
            obj["expires"],
            obj.get("post_quantum") is True,
            obj.get("forward_secrecy") is not False,
        )


class TicketStore:
    """Tickets by the host and port dialled, each used once.

    In memory unless ``path`` names a file (mode 0600, written atomically,
    expired tickets pruned on every write).  ``per_server`` bounds how many
    are kept for one server (a tunnel keeps a small pool).
    """

    log = Logger()

    def __init__(self, path=None, per_server=4, clock=None):
        if clock is None:
            import time

            clock = time.time
        self._clock = clock
        self.path = path
        self.per_server = per_server
        self._tickets = {}
        if path is not None:
            self._load()

    def __len__(self):
        return sum(len(v) for v in self._tickets.values())

    def take(self, host, port):
        """A ticket for ``host:port`` that has not expired, removed from the
        store (a ticket is used once), or ``None``."""
        now = self._clock()
        found = None
        kept = [t for t in self._tickets.get((host, port), ()) if t.expires > now]
        if kept:
            found = kept.pop()
        self._set((host, port), kept)
        if found is not None:
            self._save()
        return found

    def add(self, ticket):
        entry = [t for t in self._tickets.get((ticket.host, ticket.port), ()) if t is not ticket]
        # Never mix server keys: a ticket under a new key replaces the old.
        entry = [t for t in entry if t.server_fingerprint == ticket.server_fingerprint]
        entry.append(ticket)
        self._set((ticket.host, ticket.port), entry[-self.per_server :])
        self._save()

    def add_received(self, host, port, event):
        """Keep the ticket of a :class:`~keyexchanged.handshake.TicketReceived`."""
        expires = int(self._clock()) + event.lifetime
        self.add(
            StoredTicket(
                host,
                port,
                event.server_fingerprint,
                event.secret,
                event.ticket,
                expires,
                event.post_quantum,
                event.forward_secrecy,
            )
        )

    def forget(self, host, port):
        """Drop every ticket for ``host:port`` (the server said stale-ticket)."""
        if self._tickets.pop((host, port), None) is not None:
            self._save()

    def _set(self, where, entry):
        if entry:
            self._tickets[where] = entry
        else:
            self._tickets.pop(where, None)

    def _load(self):
        try:
            data = keys.read_private_file(self.path)
        except keys.KeyFileError as error:
            if not os.path.lexists(self.path):
                return
            raise TicketKeyFileError(str(error).replace("private key", "ticket cache")) from None
        try:
            entries = json.loads(data.decode("utf-8"))["tickets"]
            tickets = [StoredTicket.from_json(e) for e in entries]
        except (ValueError, KeyError, TypeError, binascii.Error):
            # A cache is only a cache: start empty rather than refuse to run.
            self.log.warn("ignoring unreadable ticket cache {path}", path=self.path)
            return
        now = self._clock()
        for ticket in tickets:
            if ticket.expires > now:
                where = (ticket.host, ticket.port)
                self._tickets.setdefault(where, []).append(ticket)

    def _save(self):
        if self.path is None:
            return
        now = self._clock()
        entries = [t.as_json() for v in self._tickets.values() for t in v if t.expires > now]
        data = json.dumps({"tickets": entries}).encode("utf-8")
        files.write_atomically(self.path, data, PRIVATE_FILE_MODE, force=True)
