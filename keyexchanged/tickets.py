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
import contextlib
import dataclasses
import fcntl
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
    "TicketState",
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
#: The state is padded to this many bytes: it takes at most 260 with a
#: client key named and the post-quantum flag (fingerprints are of one
#: length), and a ticket 332.
STATE_LENGTH = 288
_KEY_ID_CONTEXT = b"kx/1 ticket key id\x00"
#: A daemon remembers the tickets that resumed until they expire, so that
#: each resumes once.  Each costs about 150 bytes (30 MB for all): past
#: this many at once (some 55 resumptions a second for an hour-long
#: lifetime), a ticket is refused, which costs a full handshake, rather
#: than one forgotten.
MAX_USED_TICKETS = 200_000
#: Used tickets are filed by key id and by this many seconds of expiry, so
#: that those that expired go a whole group at a time.
USED_BUCKET_SECONDS = 60


def key_id(key):
    """A public name for a ticket key: the same in every daemon sharing it."""
    return hashlib.sha256(_KEY_ID_CONTEXT + key).digest()[:KEY_ID_LENGTH]


class TicketKeys:
    """Ticket keys, newest first: the first encrypts, every one decrypts.

    :param keys_: the 32-byte keys, newest first.
    :raises ValueError: for no key, or a key of another length.
    """

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
        """One fresh random key: what a daemon without a ticket-key file
        uses."""
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


@dataclasses.dataclass(frozen=True)
class TicketState:
    """What a ticket gives back to the server that issued it."""

    secret: bytes
    #: The client key's fingerprint, when the session's full handshake had AUTH.
    client_fingerprint: "str | None"
    #: When that full handshake took place (seconds since the epoch).
    authenticated: int
    #: The session had an ML-KEM secret (revision 3, §12.5).
    post_quantum: bool = False


class _UsedTickets:
    """The nonces of the tickets that resumed, by key id and expiry, until
    they expire or their key is retired (docs/spec/kx1.rst §11.4)."""

    def __init__(self):
        self._groups = {}  # (key id, expiry // USED_BUCKET_SECONDS) -> {nonce}
        self.count = 0
        self._next_prune = None

    def record(self, kid, nonce, expires, now, ticket_keys):
        """Note a ticket's use; raise :class:`StaleTicket` if it was used
        already, or if there is no room to remember it."""
        group = self._groups.get((kid, expires // USED_BUCKET_SECONDS))
        if group is not None and nonce in group:
            raise StaleTicket("ticket already used")
        if self._next_prune is None or now >= self._next_prune or self.count >= MAX_USED_TICKETS:
            self._prune(now, ticket_keys)
        if self.count >= MAX_USED_TICKETS:
            raise StaleTicket("too many used tickets to remember another")
        self._groups.setdefault((kid, expires // USED_BUCKET_SECONDS), set()).add(nonce)
        self.count += 1

    def _prune(self, now, ticket_keys):
        self._next_prune = now + USED_BUCKET_SECONDS
        for where in list(self._groups):
            kid, group = where
            if ticket_keys.find(kid) is None or (group + 1) * USED_BUCKET_SECONDS <= now:
                self.count -= len(self._groups.pop(where))


class TicketIssuer:
    """Makes and opens this server's tickets.  Give it to
    :class:`~keyexchanged.protocol.SecureChannelFactory` as ``tickets``.

    :param ticket_keys: the :class:`TicketKeys` (:func:`load_ticket_keys`
        reads a file of them, :meth:`TicketKeys.random` makes one).
    :param lifetime: seconds a ticket may resume, 1 to 86 400.
    :param clock: the time in seconds (default: :func:`time.time`; the
        reactor's ``seconds`` in the daemon).
    :param random: draws the GCM nonces (tests make it repeatable).
    :raises ValueError: for a ``lifetime`` out of range.
    """

    def __init__(
        self, ticket_keys, lifetime=DEFAULT_LIFETIME, clock=None, random=secrets.token_bytes
    ):
        if not 1 <= lifetime <= MAX_LIFETIME:
            raise ValueError(f"ticket lifetime must be 1 to {MAX_LIFETIME} seconds")
        self.keys = ticket_keys
        self.lifetime = lifetime
        self._random = random
        self._used = _UsedTickets()
        if clock is None:
            import time

            clock = time.time
        self._clock = clock

    def issue(
        self,
        secret,
        server_fingerprint,
        client_fingerprint=None,
        authenticated=None,
        post_quantum=False,
    ):
        """A ticket for a session.

        A ticket never outlives the full handshake at the start of its
        chain by more than one lifetime, however often it is resumed and
        renewed.

        :param secret: the session's resumption secret.
        :param server_fingerprint: the long-term key's fingerprint, which
            the ticket will only resume under.
        :param client_fingerprint: the client's, when it authenticated.
        :param authenticated: when the chain's full handshake took place
            (``None``: now, for a full handshake).
        :param post_quantum: the session had an ML-KEM secret (revision 3).
        :returns: ``(ticket, lifetime)``: the ticket's bytes and its
            lifetime in seconds; or ``None`` when the chain has run out.
        """
        now = int(self._clock())
        if authenticated is None:
            authenticated = now
        expires = min(now + self.lifetime, authenticated + self.lifetime)
        if expires <= now:
            return None
        fields = {
            "secret": base64.b64encode(secret).decode("ascii"),
            "expires": expires,
            "server": server_fingerprint,
            "client": client_fingerprint,
            "authenticated": authenticated,
        }
        if post_quantum:
            # Only then: a ticket of revision 2 keeps its former state.
            fields["post_quantum"] = True
        state = json.dumps(fields).encode("utf-8")
        # One length whether a client key is named or not: a RESUME's size
        # must not tell an onlooker that the session was authenticated.
        state = state.ljust(STATE_LENGTH)
        key = self.keys.encrypting
        kid = key_id(key)
        nonce = self._random(NONCE_LENGTH)
        cipher = AES.new(key, AES.MODE_GCM, nonce=nonce)
        cipher.update(kid)
        body, tag = cipher.encrypt_and_digest(state)
        ticket = kid + nonce + body + tag
        assert len(ticket) <= MAX_TICKET_LENGTH  # fingerprints bound the state
        return ticket, expires - now

    def open(self, ticket, server_fingerprint):
        """What a ticket this server issued holds.

        :param ticket: the ticket's bytes, from RESUME.
        :param server_fingerprint: the long-term key's fingerprint now.
        :returns: ``(secret, client_fingerprint)``; the second is ``None``
            when the client did not authenticate.
        :raises ~keyexchanged.errors.StaleTicket: when the ticket does not
            open with any of the keys, has expired, was used already, or
            was issued under another server key.
        """
        state = self.open_state(ticket, server_fingerprint)
        return state.secret, state.client_fingerprint

    def open_state(self, ticket, server_fingerprint):
        """The :class:`TicketState` in ``ticket``; a ticket opens once.

        :raises ~keyexchanged.errors.StaleTicket: as :meth:`open`.
        """
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
            # Tickets of earlier versions (and the spec's vector) have no
            # authentication time: their chain ends one lifetime after they
            # were issued.
            authenticated = state.get("authenticated", expires - self.lifetime)
            post_quantum = state.get("post_quantum") is True
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
            raise StaleTicket("ticket does not open") from None
        if not isinstance(expires, int) or expires <= self._clock():
            raise StaleTicket("ticket expired")
        if not isinstance(authenticated, int):
            raise StaleTicket("ticket does not open")
        if server != server_fingerprint:
            raise StaleTicket("ticket issued under another server key")
        self._used.record(kid, nonce, expires, self._clock(), self.keys)
        return TicketState(secret, client, authenticated, post_quantum)

    @property
    def used_tickets(self):
        """How many used tickets are remembered now."""
        return self._used.count


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

    :param path: the file, which must be private to its owner, like a
        private key.
    :returns: its :class:`TicketKeys`, in the file's order.
    :raises ~keyexchanged.errors.TicketKeyFileError: naming the file and
        the line.
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
    """Write (or replace) a ticket-key file holding ``ticket_keys``
    (:class:`TicketKeys`), mode 0600, atomically.

    :raises ~keyexchanged.errors.KeyFileError: when it cannot be written.
    """
    files.write_atomically(path, _key_file_text(ticket_keys), PRIVATE_FILE_MODE, True)


def new_ticket_key_file(path):
    """Make a ticket-key file at ``path`` with one fresh key (0600).

    :raises ~keyexchanged.errors.KeyFileExistsError: when there is a file
        there already (it is never overwritten).
    :raises ~keyexchanged.errors.KeyFileError: when it cannot be written.
    """
    files.write_atomically(path, _key_file_text(TicketKeys.random()), PRIVATE_FILE_MODE, False)


def rotate_ticket_key_file(path):
    """Put a fresh key first in the ticket-key file ``path`` and keep the
    current first key after it (older ones are dropped); atomically.

    :raises ~keyexchanged.errors.TicketKeyFileError: when the file cannot
        be read.
    :raises ~keyexchanged.errors.KeyFileError: when it cannot be written.
    """
    current = load_ticket_keys(path)
    files.write_atomically(path, _key_file_text(current.rotated()), PRIVATE_FILE_MODE, True)


# -- the client's store ------------------------------------------------------------


class StoredTicket:
    """What a client keeps of a ticket (§11.2): the ``host`` and ``port``
    it was received from, the ``server_fingerprint``, the resumption
    ``secret``, the opaque ``ticket``, when it ``expires`` (Unix time), and
    the ``client_fingerprint`` of the session that earned it (``None``: no
    AUTH), since the ticket carries that identity: it resumes only under
    the same one."""

    __slots__ = (
        "client_fingerprint",
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
        client_fingerprint=None,
    ):
        self.host = host
        self.port = port
        self.server_fingerprint = server_fingerprint
        self.secret = secret
        self.ticket = ticket
        self.expires = expires
        self.client_fingerprint = client_fingerprint
        #: The issuing session had an ML-KEM secret (revision 3), and an
        #: ephemeral key (§10).
        self.post_quantum = post_quantum
        self.forward_secrecy = forward_secrecy

    def as_json(self):
        obj = {
            "host": self.host,
            "port": self.port,
            "server": self.server_fingerprint,
            "client": self.client_fingerprint,
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
        """The ticket ``obj`` describes; :class:`ValueError` saying what is
        wrong when it is not one we could have written."""
        if not isinstance(obj, dict):
            raise ValueError("an entry is not an object")
        for name, kinds in _STORED_FIELDS.items():
            if name not in obj:
                raise ValueError(f"an entry has no {name!r}")
            value = obj[name]
            if isinstance(value, bool) or not isinstance(value, kinds):
                raise ValueError(f"an entry's {name!r} is not what it should be")
        if not 0 < obj["port"] < 65536:
            raise ValueError("an entry's port is not one")
        try:
            secret = base64.b64decode(obj["secret"], validate=True)
            ticket = base64.b64decode(obj["ticket"], validate=True)
        except binascii.Error:
            raise ValueError("an entry's secret or ticket is not base64") from None
        if len(secret) != 32 or not 1 <= len(ticket) <= MAX_TICKET_LENGTH:
            raise ValueError("an entry's secret or ticket has the wrong length")
        return cls(
            obj["host"],
            obj["port"],
            obj["server"],
            secret,
            ticket,
            obj["expires"],
            post_quantum=obj.get("post_quantum") is True,
            forward_secrecy=obj.get("forward_secrecy") is not False,
            client_fingerprint=obj["client"],
        )


#: The members of a stored ticket and their JSON types.
_STORED_FIELDS = {
    "host": str,
    "port": int,
    "server": str,
    "client": (str, type(None)),
    "secret": str,
    "ticket": str,
    "expires": int,
}


class TicketStore:
    """The client's resumption tickets, by the host and port dialled and
    the client key used, each used once.  Give it to
    :func:`~keyexchanged.protocol.connect` as ``tickets``.

    Several clients may share the file: every change is made under a lock
    (``path`` + ``.lock``), on what the file holds at that moment, so that
    two of them never take the same ticket.  The file is only a cache: one
    that is damaged is replaced, and one that cannot be written (its
    directory does not exist) leaves the tickets in memory; either is said
    once through ``warn``.

    :param path: a file to keep them in between runs (mode 0600, written
        atomically, expired tickets pruned on every write), or ``None`` to
        keep them in memory.
    :param per_server: how many are kept for one server (a tunnel keeps a
        small pool).
    :param clock: wall-clock seconds (default: :func:`time.time`).
    :param warn: a callable taking one line that begins with the path (a
        logged warning by default).
    :raises ~keyexchanged.errors.TicketKeyFileError: when ``path`` exists
        and others may read it.
    """

    log = Logger()

    def __init__(self, path=None, per_server=4, clock=None, warn=None):
        if clock is None:
            import time

            clock = time.time
        self._clock = clock
        self._warn = warn or (lambda text: self.log.warn("ticket cache {text}", text=text))
        self._warned = set()
        self.path = path
        self.per_server = per_server
        self._tickets = {}
        if path is not None:
            directory = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(directory):
                self._give_up_file(f"the directory {directory} does not exist")
            else:
                # Refused now (readable by others) rather than mid-session.
                self._load(at_start=True)

    def __len__(self):
        return sum(len(v) for v in self._tickets.values())

    def take(self, host, port, client_fingerprint=None):
        """A ticket for ``host:port`` that has not expired, removed from the
        store (a ticket is used once).

        :param client_fingerprint: the client key of this session
            (``None``: without AUTH); only a ticket earned under it is taken.
        :returns: a :class:`StoredTicket`, or ``None`` when there is none.
        """
        with self._shared() as changed:
            now = self._clock()
            tickets_ = [t for t in self._tickets.get((host, port), ()) if t.expires > now]
            found = None
            for ticket in reversed(tickets_):
                if ticket.client_fingerprint == client_fingerprint:
                    found = ticket
                    break
            if found is not None:
                tickets_.remove(found)
                changed.append(True)
            self._set((host, port), tickets_)
        return found

    def add(self, ticket):
        """Keep ``ticket``, a :class:`StoredTicket`, for its host and port.
        Tickets under another server key for that place are dropped, and
        only the newest ``per_server`` kept."""
        with self._shared() as changed:
            where = (ticket.host, ticket.port)
            entry = [t for t in self._tickets.get(where, ()) if t is not ticket]
            # Never mix server keys: a ticket under a new key replaces the old.
            entry = [t for t in entry if t.server_fingerprint == ticket.server_fingerprint]
            entry.append(ticket)
            self._set(where, entry[-self.per_server :])
            changed.append(True)

    def add_received(self, host, port, event, client_fingerprint=None):
        """Keep the ticket the server sent to ``host:port``.

        :param event: the :class:`~keyexchanged.handshake.TicketReceived`
            that brought it.
        :param client_fingerprint: the client key of the session (``None``:
            without AUTH).
        """
        expires = int(self._clock()) + event.lifetime
        self.add(
            StoredTicket(
                host,
                port,
                event.server_fingerprint,
                event.secret,
                event.ticket,
                expires,
                post_quantum=event.post_quantum,
                forward_secrecy=event.forward_secrecy,
                client_fingerprint=client_fingerprint,
            )
        )

    def forget(self, host, port):
        """Drop every ticket for ``host:port`` (the server said stale-ticket)."""
        with self._shared() as changed:
            if self._tickets.pop((host, port), None) is not None:
                changed.append(True)

    def _set(self, where, entry):
        if entry:
            self._tickets[where] = entry
        else:
            self._tickets.pop(where, None)

    @contextlib.contextmanager
    def _shared(self):
        """Hold the file's lock, with the tickets read from the file; write
        them back if the body appended to the list it was given."""
        changed = []
        if self.path is None:
            yield changed
            return
        try:
            lock = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as error:
            self._give_up_file(f"cannot be locked: {error.strerror or error}")
            yield changed
            return
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._load()
            yield changed
            if changed:
                self._save()
        finally:
            os.close(lock)  # and with it the lock

    def _give_up_file(self, reason):
        self._say(f"{reason}; tickets are kept in memory only")
        self.path = None

    def _say(self, text):
        if text not in self._warned:
            self._warned.add(text)
            self._warn(f"{self.path}: {text}")

    def _load(self, at_start=False):
        self._tickets = {}
        try:
            data = keys.read_private_file(self.path)
        except keys.KeyFileError as error:
            if not os.path.lexists(self.path):
                return
            message = str(error).replace("private key", "ticket cache")
            if at_start:
                raise TicketKeyFileError(message) from None
            self._give_up_file(message)
            return
        try:
            document = json.loads(data.decode("utf-8"))
            entries = document["tickets"] if isinstance(document, dict) else None
            if not isinstance(entries, list):
                raise ValueError("no list of tickets")
            tickets_ = [StoredTicket.from_json(e) for e in entries]
        except (ValueError, KeyError) as error:
            # A cache is only a cache: start empty rather than refuse to run.
            self._say(f"is damaged ({error}); starting with no tickets")
            return
        now = self._clock()
        for ticket in tickets_:
            if ticket.expires > now:
                self._tickets.setdefault((ticket.host, ticket.port), []).append(ticket)

    def _save(self):
        now = self._clock()
        entries = [t.as_json() for v in self._tickets.values() for t in v if t.expires > now]
        data = json.dumps({"tickets": entries}).encode("utf-8")
        try:
            files.write_atomically(self.path, data, PRIVATE_FILE_MODE, force=True)
        except keys.KeyFileError as error:
            self._give_up_file(str(error).replace(f"{self.path}: ", "", 1))
