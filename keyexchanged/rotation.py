"""Key rotation: the server announces its next key (docs/spec/kx1.rst §14).

A server that holds a *next* key offers rotation in HELLO; a client that
trusts by known hosts asks (a NEXTKEY record before its first record), and
the server answers, once the handshake is complete, with the next key and
a signature by that key over this session's transcript hash and the
current key's hash: a proof of possession nobody can replay to another
session.  The client records the next key for the host; after the switch
the host's new key is accepted without a question.

This module holds the pieces both sides share, free of I/O: the signed
message, the server's :class:`ServerAnnouncement` (and how the daemon loads
its next key and revoked keys), and :func:`read_announcement`, the client's
strict check.  The state machines (keyexchanged.handshake) carry the
frames; keyexchanged.knownhosts records what a good announcement says.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass

from keyexchanged import keys, schedule
from keyexchanged.errors import ConfigError, KeyexchangedError
from keyexchanged.framing import ProtocolError
from keyexchanged.handshake._decoding import _b64decode, _json_object, check_public_key
from keyexchanged.rsa import FaultError

__all__ = [
    "MAX_ANNOUNCEMENT",
    "MAX_REVOKED",
    "MIN_NEXT_KEY_BITS",
    "Announcement",
    "BadAnnouncement",
    "NextKey",
    "ServerAnnouncement",
    "load_next_key",
    "next_key_message",
    "read_announcement",
]

#: §14.3: what the next key signs starts with this context string.
NEXT_KEY_CONTEXT = b"kx/1 next key\x00"
#: §14.3: the largest announcement plaintext a client reads; a longer one
#: is ignored (the frame itself may be up to 16 KiB, so that it is).
MAX_ANNOUNCEMENT = 8192
#: §14.3: at most this many revoked fingerprints in one announcement.
MAX_REVOKED = 16
#: §14.6: a next key is at least this large.
MIN_NEXT_KEY_BITS = 2048


class BadAnnouncement(Exception):
    """An announcement a client ignores (§14.4); ``str()`` says why, in
    public words."""


def next_key_message(th: bytes, current_der: bytes, next_der: bytes) -> bytes:
    """What the next key signs (§14.3): bound to this session (``th``) and
    to the key it replaces (its SHA-256)."""
    return NEXT_KEY_CONTEXT + th + hashlib.sha256(current_der).digest() + next_der


@dataclass(frozen=True)
class NextKey:
    """The server's next key: the private key, its DER and fingerprint."""

    private_key: object
    der: bytes
    fingerprint: str

    @classmethod
    def from_private_key(cls, private_key) -> NextKey:
        der = keys.public_key_to_der(private_key.public_key())
        return cls(private_key, der, keys.fingerprint(der))


@dataclass(frozen=True)
class ServerAnnouncement:
    """What a server announces: its next key (or None) and the fingerprints
    of keys it no longer uses."""

    next_key: NextKey | None = None
    revoked: tuple = ()

    def message(self, th: bytes, current_der: bytes) -> bytes | None:
        """What the next key signs for the session ``th`` (None: no next key)."""
        if self.next_key is None:
            return None
        return next_key_message(th, current_der, self.next_key.der)

    def plaintext(self, th: bytes, current_der: bytes, salt: bytes | None = None) -> bytes:
        """The JSON of the server's NEXTKEY record for the session ``th``,
        signed here.  Signing is a private-key operation on the next key,
        one per session that asks; ``salt`` fixes the PSS salt (vectors)."""
        signature = None
        if self.next_key is not None:
            options = {} if salt is None else {"salt": salt}
            signature = self.next_key.private_key.sign_pss(
                self.message(th, current_der), salt_length=schedule.PSS_SALT_LENGTH, **options
            )
        return self.signed_plaintext(signature)

    def signed_plaintext(self, signature: bytes | None) -> bytes:
        """The JSON of the NEXTKEY record, with ``signature`` made elsewhere
        over :meth:`message` (a worker process)."""
        body = {}
        if self.next_key is not None:
            body["next"] = {
                "key": base64.b64encode(self.next_key.der).decode("ascii"),
                "signature": base64.b64encode(signature).decode("ascii"),
            }
        if self.revoked:
            body["revoked"] = list(self.revoked)
        return json.dumps(body).encode("ascii")


def load_next_key(path: str, current_private_key) -> NextKey:
    """The next key in the file ``path`` for a server whose key is
    ``current_private_key``; raises :class:`KeyexchangedError` (one line,
    naming the file) for a key that is unreadable, readable by others,
    weaker than 2 048 bits, not acceptable to clients (§2), or the current
    key itself."""
    private_key = keys.load_private_key(path)  # refuses a file others can read
    bits = private_key.n.bit_length()
    if bits < MIN_NEXT_KEY_BITS:
        raise ConfigError(
            f"next-private-key: {path}: a {bits}-bit key is too weak; the next key "
            f"needs at least {MIN_NEXT_KEY_BITS} bits"
        )
    try:
        check_public_key(private_key.public_key(), "weak-key")
    except ProtocolError as error:
        raise ConfigError(
            f"next-private-key: {path}: clients would refuse this key: {error.detail}"
        ) from None
    next_key = NextKey.from_private_key(private_key)
    if next_key.fingerprint == keys.fingerprint(current_private_key.public_key()):
        raise ConfigError(
            f"next-private-key: {path} is the current key ({next_key.fingerprint}); "
            "the next key must be a new one (keyexchange keygen makes one)"
        )
    return next_key


def check_revoked(revoked, current_fingerprint, next_key):
    """The daemon's revoked keys, refused when they name a key it serves."""
    for fingerprint in revoked:
        if fingerprint == current_fingerprint:
            raise ConfigError(f"revoked-keys: lists the current key {fingerprint}")
        if next_key is not None and fingerprint == next_key.fingerprint:
            raise ConfigError(f"revoked-keys: lists the next key {fingerprint}")
    return tuple(sorted(revoked))


def describe(announcement):
    """What ``announcement`` says, for the log and to compare two."""
    if announcement is None:
        return "no key rotation announced"
    parts = []
    if announcement.next_key is not None:
        bits = announcement.next_key.private_key.n.bit_length()
        parts.append(f"next key {announcement.next_key.fingerprint} (RSA-{bits})")
    if announcement.revoked:
        parts.append(f"{len(announcement.revoked)} revoked key(s)")
    return "announcing " + " and ".join(parts)


def log_announcement(log, announcement, prefix=""):
    """One line: what the server announces to clients that ask (§14)."""
    if announcement is not None or prefix:
        log.info("{prefix}{what}", prefix=prefix, what=describe(announcement))


@dataclass(frozen=True)
class Switched:
    """What :func:`switch_keys` did: the fingerprints, and where the old key went."""

    retired: str
    current: str
    retired_path: str


def switch_keys(key_path: str, next_path: str) -> Switched:
    """The switch (§14.6): the next key becomes the key at ``key_path``,
    the key there is kept as ``key_path + ".retired"`` (to roll back), and
    ``next_path`` is gone.  The public halves (``.pub``) follow.

    ``key_path`` names a key file at every moment: the old key is linked to
    its retired name first, then the next key is renamed over it
    (atomically).  Refused (:class:`KeyexchangedError`, nothing changed)
    when either key cannot be read or is readable by others, when the next
    key is the current key or weaker than 2 048 bits, or when a retired key
    is already there.
    """
    current_key = keys.load_private_key(key_path)
    next_key = load_next_key(next_path, current_key)
    retired_path = key_path + ".retired"
    for path in (retired_path, retired_path + ".pub"):
        if os.path.lexists(path):
            raise ConfigError(
                f"{path} exists (an earlier rotation's key): move it away or delete it first"
            )
    try:
        os.link(key_path, retired_path)
        if os.path.exists(key_path + ".pub"):
            os.link(key_path + ".pub", retired_path + ".pub")
        os.replace(next_path, key_path)
    except OSError as error:
        raise ConfigError(f"cannot switch the keys: {error}") from None
    keys.save_public_key(next_key.private_key, key_path + ".pub", force=True)
    if os.path.exists(next_path + ".pub"):
        os.unlink(next_path + ".pub")
    return Switched(keys.fingerprint(current_key), next_key.fingerprint, retired_path)


# -- the client's check ---------------------------------------------------------------


@dataclass(frozen=True)
class Announcement:
    """A good announcement (§14.4): the next key (``None`` when only keys
    are revoked) and the revoked fingerprints."""

    next_fingerprint: str | None
    next_bits: int | None
    revoked: tuple


def read_announcement(plaintext: bytes, th: bytes, current_der: bytes) -> Announcement:
    """Check the server's announcement for the session ``th`` under the
    server key ``current_der``; raises :class:`BadAnnouncement` (§14.4)."""
    if len(plaintext) > MAX_ANNOUNCEMENT:
        raise BadAnnouncement(
            f"the announcement is {len(plaintext)} bytes, over the limit of {MAX_ANNOUNCEMENT}"
        )
    try:
        body = _json_object(plaintext, "malformed-frame", "announcement")
    except ProtocolError as error:
        raise BadAnnouncement(error.detail) from None
    current = keys.fingerprint(current_der)
    next_member = body.get("next")
    revoked_member = body.get("revoked", [])
    if next_member is None and not revoked_member:
        raise BadAnnouncement("the announcement names no next key and no revoked key")
    if not isinstance(revoked_member, list) or len(revoked_member) > MAX_REVOKED:
        raise BadAnnouncement(f"revoked is not a list of at most {MAX_REVOKED} fingerprints")
    revoked = []
    for entry in revoked_member:
        try:
            revoked.append(keys.check_fingerprint_syntax(entry))
        except (TypeError, ValueError, AttributeError):
            raise BadAnnouncement("revoked lists something that is not a fingerprint") from None
    next_fingerprint = next_bits = None
    if next_member is not None:
        next_fingerprint, next_bits = _check_next(next_member, th, current_der, current)
    for fingerprint in revoked:
        if keys.same_fingerprint(fingerprint, current):
            raise BadAnnouncement("the announcement revokes the key of this very session")
        if next_fingerprint is not None and keys.same_fingerprint(fingerprint, next_fingerprint):
            raise BadAnnouncement("the announcement revokes its own next key")
    return Announcement(next_fingerprint, next_bits, tuple(revoked))


def _check_next(member, th, current_der, current):
    if not isinstance(member, dict):
        raise BadAnnouncement("next is not an object")
    try:
        der = _b64decode(member.get("key"), "next key")
        signature = _b64decode(member.get("signature"), "next signature")
        public_key = keys.public_key_from_der(der)
        check_public_key(public_key, "weak-key")
    except ProtocolError as error:
        raise BadAnnouncement(error.detail) from None
    except ValueError:
        raise BadAnnouncement("next key is not an RSA public key") from None
    fingerprint = keys.fingerprint(der)
    if keys.same_fingerprint(fingerprint, current):
        raise BadAnnouncement("the next key is the current key")
    try:
        good = public_key.verify_pss(
            next_key_message(th, current_der, der),
            signature,
            salt_length=schedule.PSS_SALT_LENGTH,
        )
    except (FaultError, ValueError, KeyexchangedError):
        good = False
    if not good:
        raise BadAnnouncement(
            f"the signature of the next key {fingerprint} does not verify for this session"
        )
    return fingerprint, public_key.n.bit_length()
