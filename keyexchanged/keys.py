"""Key files: RSA keys to and from the standard PEM and DER formats.

Our RSA mathematics lives in :mod:`keyexchanged.rsa`; this module only moves
its key objects in and out of files, and it is the one place where
pycryptodome touches RSA keys: its ASN.1 and PEM code does the encoding
(:func:`Crypto.PublicKey.RSA.import_key`, :func:`~Crypto.PublicKey.RSA.construct`
and ``export_key``), never any RSA operation.

Read, as PEM or DER:

* private keys: PKCS#1 (``RSA PRIVATE KEY``, also with the legacy PEM
  encryption), PKCS#8 (``PRIVATE KEY``) and passphrase-protected PKCS#8
  (``ENCRYPTED PRIVATE KEY``);
* public keys: SubjectPublicKeyInfo (``PUBLIC KEY``) and PKCS#1
  (``RSA PUBLIC KEY``).

Written: private keys as PKCS#8 PEM (encrypted with PBES2, PBKDF2-HMAC-SHA256
and AES-256-CBC when there is a passphrase), public keys as
SubjectPublicKeyInfo PEM.  Files are written atomically
(``keyexchanged.files.write_atomically``): a reader sees the old file, the
complete new one, or nothing.

A private key file that the group or others may access is refused, as
OpenSSH does, and so is one owned by a user other than the one we run as
(or root).  Every private key read must pass ``PrivateKey.validate``
(primes, sizes from 2048 bits: it is about to be used); a public key only
needs the right shape (:meth:`PublicKey.validate` checks), as the policy for peers'
keys (sizes, exponents) belongs to the protocol code.

Every failure a user can cause with a file raises :class:`KeyFileError`, with
one message that names the file and never contains key material or the
passphrase.  Functions working on bytes raise :class:`KeyFormatError` (a
``ValueError``) instead.  Passphrases are ``bytes`` or ``str``; a ``str`` is
encoded as UTF-8 (like the bytes a terminal gives ``openssl``).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import re
import shlex
import stat
from contextlib import suppress
from typing import Union

from Crypto import IncorrectPassphraseError, KdfLimitError, PassphraseRequiredError
from Crypto.IO import PEM
from Crypto.PublicKey import RSA
from Crypto.Util.asn1 import DerSequence

from keyexchanged import files, rsa
from keyexchanged.errors import KeyFileError, KeyFileExistsError, KeyFormatError
from keyexchanged.files import PRIVATE_FILE_MODE, PUBLIC_FILE_MODE
from keyexchanged.rsa import PrivateKey, PublicKey

__all__ = [
    "KeyFileError",
    "KeyFileExistsError",
    "KeyFormatError",
    "check_fingerprint_syntax",
    "create_key_pair",
    "fingerprint",
    "load_private_key",
    "load_public_key",
    "private_key_from_bytes",
    "private_key_to_pem",
    "public_key_from_bytes",
    "public_key_from_der",
    "public_key_to_der",
    "read_passphrase_file",
    "read_private_file",
    "same_fingerprint",
    "save_private_key",
    "save_public_key",
]

Passphrase = Union[bytes, str, None]
StrPath = Union[str, "os.PathLike[str]"]

#: Encryption of private keys written with a passphrase.  scrypt would be
#: stronger per second of work, but OpenSSL caps scrypt at 32 MiB by default
#: and cannot read keys made with a sound cost; PBKDF2 at the OWASP count
#: (600 000 for HMAC-SHA256) is read everywhere.  16-byte salt as NIST asks.
PROTECTION = "PBKDF2WithHMAC-SHA256AndAES256-CBC"
PROTECTION_PARAMS = {"iteration_count": 600_000, "salt_size": 16}

#: A passphrase is one line; anything longer is not a passphrase file.
MAX_PASSPHRASE_LINE = 64 * 1024

#: Larger than any key file (a 16384-bit private key is about 12 KiB of PEM);
#: bounds what a wrong path (a log file, say) makes us read.
MAX_KEY_FILE_SIZE = 1 << 20


_PRIVATE_LABELS = frozenset({"RSA PRIVATE KEY", "PRIVATE KEY", "ENCRYPTED PRIVATE KEY"})
_PUBLIC_LABELS = frozenset({"RSA PUBLIC KEY", "PUBLIC KEY"})
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----", re.DOTALL)

_UNSUPPORTED = (
    "not an RSA key in a supported format (PEM or DER: PKCS#1, PKCS#8 or SubjectPublicKeyInfo)"
)
_MSG_LOCKED = "private key is encrypted: a passphrase is required"
_MSG_UNLOCK_FAILED = "wrong passphrase (or the encrypted key is corrupted)"


class _PassphraseError(KeyFormatError):
    """An encrypted private key without its right passphrase."""


# --- Conversions between our key objects and pycryptodome's -----------------


def _public_half(key: PublicKey | PrivateKey) -> PublicKey:
    if isinstance(key, PrivateKey):
        return key.public_key()
    if isinstance(key, PublicKey):
        return key
    raise TypeError(f"expected an RSA PublicKey or PrivateKey, not {type(key).__name__}")


def _to_crypto_public(key: PublicKey | PrivateKey) -> RSA.RsaKey:
    public = _public_half(key)
    return RSA.construct((int(public.n), int(public.e)))


def _to_crypto_private(key: PrivateKey) -> RSA.RsaKey:
    if not isinstance(key, PrivateKey):
        raise TypeError(f"expected an RSA PrivateKey, not {type(key).__name__}")
    try:
        # The consistency check (p*q == n, primes, e*d == 1) makes sure we
        # never write a file that no tool could use.
        return RSA.construct(tuple(int(x) for x in (key.n, key.e, key.d, key.p, key.q)))
    except ValueError:
        raise ValueError("not a valid RSA private key") from None


def _from_crypto(rsa_key: RSA.RsaKey) -> PublicKey | PrivateKey:
    # rsa's messages name the problem, never a secret value, so they may show.
    if rsa_key.has_private():
        try:
            key = PrivateKey(rsa_key.n, rsa_key.e, rsa_key.d, rsa_key.p, rsa_key.q)
            # The full check, size policy included: a private key is ours to
            # use, and rsa says importers must call it.
            key.validate()
        except ValueError as exc:
            raise KeyFormatError(f"not a valid RSA private key ({exc})") from None
        return key
    try:
        # Only the shape (n odd, 1024..16384 bits, e odd and < n): size policy
        # is the caller's, and PublicKey.validate's primality test on n would
        # let a peer sending a huge key cost us seconds before policy refuses it.
        return PublicKey(rsa_key.n, rsa_key.e)
    except ValueError as exc:
        raise KeyFormatError(f"not a valid RSA public key ({exc})") from None


def _passphrase_bytes(passphrase: Passphrase) -> bytes | None:
    if passphrase is None or isinstance(passphrase, bytes):
        return passphrase
    if isinstance(passphrase, str):
        # pycryptodome would encode a str as Latin-1; UTF-8 is what openssl
        # gets from a terminal or a file, so keys stay interchangeable.
        return passphrase.encode("utf-8")
    if isinstance(passphrase, (bytearray, memoryview)):
        return bytes(passphrase)
    raise TypeError(f"passphrase must be bytes or str, not {type(passphrase).__name__}")


# --- Decoding ----------------------------------------------------------------


def _import_der(der: bytes, passphrase: bytes | None) -> RSA.RsaKey:
    # The messages are ours: pycryptodome's never carry key material either,
    # but ours say what the user can do about it.
    try:
        return RSA.import_key(der, passphrase)
    except PassphraseRequiredError:
        raise _PassphraseError(_MSG_LOCKED) from None
    except IncorrectPassphraseError:
        raise _PassphraseError(_MSG_UNLOCK_FAILED) from None
    except KdfLimitError:
        raise KeyFormatError(
            "encrypted key demands an excessive key-derivation cost; refused"
        ) from None
    except (ValueError, IndexError, TypeError, KeyError):
        raise KeyFormatError(_UNSUPPORTED) from None


def _find_pem_block(data: bytes) -> tuple[str, str]:
    """The one key block of PEM text, as (label, block); other blocks, such
    as certificates sharing the file, are ignored."""
    blocks = []
    for match in _PEM_BLOCK.finditer(data):
        label = match.group(1).decode("ascii")
        if label in _PRIVATE_LABELS or label in _PUBLIC_LABELS:
            blocks.append((label, match.group(0)))
    if not blocks:
        raise KeyFormatError(_UNSUPPORTED)
    if len(blocks) > 1:
        raise KeyFormatError(f"holds {len(blocks)} keys; expected exactly one")
    label, block = blocks[0]
    try:
        return label, block.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFormatError(_UNSUPPORTED) from None


def _decode(data: bytes | str, passphrase: Passphrase) -> PublicKey | PrivateKey:
    """Any supported private or public key, PEM or DER."""
    # PEM is text, and often arrives as str (from JSON or a config file).
    data = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    passphrase = _passphrase_bytes(passphrase)
    label = None
    if data[:1] == b"\x30":  # a DER SEQUENCE: every format we read starts so
        der = data
    else:
        label, block = _find_pem_block(data)
        try:
            der, _, decrypted = PEM.decode(block, passphrase)
        except PassphraseRequiredError:
            raise _PassphraseError(_MSG_LOCKED) from None
        except IncorrectPassphraseError:
            raise _PassphraseError(_MSG_UNLOCK_FAILED) from None
        except (ValueError, IndexError, TypeError, KeyError):
            raise KeyFormatError(_UNSUPPORTED) from None
        if decrypted:  # legacy PEM encryption, already undone
            passphrase = None
    rsa_key = _import_der(der, passphrase)
    if rsa_key.has_private():
        if label in _PUBLIC_LABELS:
            raise KeyFormatError(f"PEM label {label!r} does not match its contents")
    else:
        # Public keys are public, so exactness costs nothing: the DER must be
        # precisely what its label promises (this also refuses certificates
        # and non-canonical encodings that pycryptodome would accept).
        spki = rsa_key.export_key("DER")
        pkcs1 = DerSequence([rsa_key.n, rsa_key.e]).encode()
        expected = {"PUBLIC KEY": (spki,), "RSA PUBLIC KEY": (pkcs1,), None: (spki, pkcs1)}
        if label in _PRIVATE_LABELS or der not in expected[label]:
            raise KeyFormatError(_UNSUPPORTED)
    return _from_crypto(rsa_key)


def private_key_from_bytes(data: bytes | str, passphrase: Passphrase = None) -> PrivateKey:
    """The private key in ``data``: PEM (bytes or str) or DER, PKCS#1 or
    PKCS#8, possibly encrypted with ``passphrase``.

    :raises ~keyexchanged.errors.KeyFormatError: for anything else, a
        missing or wrong passphrase, or a key that fails validation.
    """
    key = _decode(data, passphrase)
    if not isinstance(key, PrivateKey):
        raise KeyFormatError("holds a public key, not a private key")
    return key


def public_key_from_bytes(data: bytes | str, passphrase: Passphrase = None) -> PublicKey:
    """The public key in ``data`` (PEM, bytes or str, or DER; SubjectPublicKeyInfo
    or PKCS#1),
    or the public half of a private key (which may need its ``passphrase``).

    :raises ~keyexchanged.errors.KeyFormatError: for anything else.
    """
    return _public_half(_decode(data, passphrase))


def public_key_from_der(der: bytes) -> PublicKey:
    """The public key of a DER SubjectPublicKeyInfo, as sent on the wire.

    Strict: exactly one canonical rsaEncryption SubjectPublicKeyInfo, nothing
    before or after it.

    The same server key arrives in every HELLO, and the same client key in
    every AUTH: parsed keys are remembered by their exact bytes (a pure
    function of them; refusals are not remembered), which spares a client
    or server about half a millisecond of ASN.1 per handshake.

    :raises ~keyexchanged.errors.KeyFormatError: for anything else.
    """
    return _parse_public_der(bytes(der))


@functools.lru_cache(maxsize=256)
def _parse_public_der(der: bytes) -> PublicKey:
    refused = KeyFormatError("not a DER SubjectPublicKeyInfo holding an RSA public key")
    try:
        # The shape first, SEQUENCE { SEQUENCE, BIT STRING }: import_key would
        # also take PEM or OpenSSH text, and would run primality tests on a
        # private key a peer sent instead.
        outer = DerSequence().decode(der, nr_elements=2)
        if outer[0][:1] != b"\x30" or outer[1][:1] != b"\x03":
            raise refused
        rsa_key = RSA.import_key(der)
    except (ValueError, IndexError, TypeError, KeyError):
        raise refused from None
    if rsa_key.has_private() or rsa_key.export_key("DER") != der:
        raise refused
    return _from_crypto(rsa_key)


# --- Encoding ----------------------------------------------------------------


def public_key_to_der(key: PublicKey | PrivateKey) -> bytes:
    """DER SubjectPublicKeyInfo of a public key (or of a private key's public half).

    :raises TypeError: when ``key`` is not an RSA key of ours.
    """
    return _to_crypto_public(key).export_key("DER")


def _public_key_to_pem(key: PublicKey | PrivateKey) -> bytes:
    return _to_crypto_public(key).export_key("PEM") + b"\n"


def private_key_to_pem(key: PrivateKey, passphrase: Passphrase = None) -> bytes:
    """PKCS#8 PEM of ``key``; ``ENCRYPTED PRIVATE KEY`` if there is a passphrase.

    :raises ValueError: for an empty passphrase.
    """
    passphrase = _passphrase_bytes(passphrase)
    rsa_key = _to_crypto_private(key)
    if passphrase is None:
        return rsa_key.export_key("PEM", pkcs=8) + b"\n"
    if not passphrase:
        raise ValueError("the passphrase must not be empty")
    pem = rsa_key.export_key(
        "PEM",
        passphrase=passphrase,
        pkcs=8,
        protection=PROTECTION,
        prot_params=PROTECTION_PARAMS,
    )
    return pem + b"\n"


def fingerprint(key: PublicKey | PrivateKey | bytes) -> str:
    """``SHA256:`` and the unpadded base64 of SHA-256 over the DER
    SubjectPublicKeyInfo, as OpenSSH prints fingerprints.

    :param key: a public key, a private key (its public half counts) or
        the DER SubjectPublicKeyInfo itself.
    :returns: ``SHA256:`` and 43 base64 characters.
    :raises ~keyexchanged.errors.KeyFormatError: for DER that
        :func:`public_key_from_der` refuses.
    """
    if isinstance(key, (bytes, bytearray, memoryview)):
        der = bytes(key)
        public_key_from_der(der)
    else:
        der = public_key_to_der(key)
    digest = hashlib.sha256(der).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


# SHA256: and 43 characters of unpadded base64 (32 bytes).
_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]")


def check_fingerprint_syntax(text: str) -> str:
    """``text``, if it is a well-formed fingerprint.

    :raises ValueError: when it is not, saying what one looks like.
    """
    if not _FINGERPRINT.fullmatch(text):
        raise ValueError(f"{text!r} is not a key fingerprint (SHA256: and 43 base64 characters)")
    return text


def same_fingerprint(a: str, b: str) -> bool:
    """Whether two fingerprints are the same, compared in constant time."""
    return hmac.compare_digest(a.encode(), b.encode())


# --- Files -------------------------------------------------------------------


def _read_key_file(name: str) -> tuple[bytes, os.stat_result]:
    """The content of a key file and the status of the very file read."""
    return files.read_regular_file(
        name, MAX_KEY_FILE_SIZE, KeyFileError, "too large for a key file"
    )


# Module-level so the tests can run as a user other than the one they are.
_effective_uid = getattr(os, "geteuid", None)


def _user_name(uid: int) -> str:
    import pwd  # POSIX only, as is the check that needs it

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "an unknown user"


def _check_private_mode(name: str, st: os.stat_result) -> None:
    """Refuse a private key file that is not ours alone: owned by another
    user than the one we run as (or root), or open to group or others.

    The owner matters as much as the mode: a 0600 key that someone else
    owns is theirs to replace, and root reading a key another user planted
    in a shared directory would serve with a key that user knows.
    """
    if os.name != "posix":  # Windows modes say nothing about who may read
        return
    euid = _effective_uid()
    if st.st_uid not in (euid, 0):
        allowed = "root" if euid == 0 else f"{_user_name(euid)} (uid {euid}) or root"
        raise KeyFileError(
            f"{name}: private key is owned by {_user_name(st.st_uid)} (uid {st.st_uid}), "
            f"not by {allowed}; refusing a key another user could have put there"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        how = "readable" if mode & 0o044 else "accessible"
        raise KeyFileError(
            f"{name}: private key is {how} by others (mode {mode:04o}); "
            f"run: chmod 600 {shlex.quote(name)}"
        )


def read_passphrase_file(path: StrPath) -> bytes:
    """The first line of ``path``, without its line ending, as bytes (so
    that a UTF-8 passphrase means the same to us as to ``openssl -passin``).
    A pipe will do (``<(pass show key)``).

    :raises ~keyexchanged.errors.KeyFileError: when it cannot be read, or
        its first line is empty or too long.
    """
    line = files.read_file(
        path,
        MAX_PASSPHRASE_LINE,
        KeyFileError,
        "first line too long for a passphrase",
        cannot="cannot read passphrase file",
        line=True,
    )
    passphrase = line.rstrip(b"\r\n")
    if not passphrase:
        raise KeyFileError(f"{path}: passphrase file is empty (its first line is the passphrase)")
    return passphrase


def read_private_file(path: StrPath) -> bytes:
    """The content of a file that must be private to its owner, as a
    private key file must (a ticket-key file, say).

    :raises ~keyexchanged.errors.KeyFileError: when it cannot be read, or
        is not private to its owner.
    """
    name = os.fsdecode(path)
    data, st = _read_key_file(name)
    _check_private_mode(name, st)
    return data


def load_private_key(path: StrPath, passphrase: Passphrase = None) -> PrivateKey:
    """The private key in the file ``path``: PEM or DER, PKCS#1 or PKCS#8,
    possibly encrypted with ``passphrase``.

    The file must be private to its owner (no permission bits for group or
    others), and that owner the user we run as or root, as checked on the
    file actually opened.

    :param path: the key file.
    :param passphrase: for an encrypted key (a ``str`` is UTF-8).
    :returns: the key, validated (primes, sizes from 2048 bits).
    :raises ~keyexchanged.errors.KeyFileError: when the file cannot be
        read, is open to others or owned by another user, needs another
        passphrase, or does not hold a private key; the message names the
        file and what to do, never the key or the passphrase.
    """
    name = os.fsdecode(path)
    data, st = _read_key_file(name)
    # Before decoding: an exposed key is not worth a passphrase attempt.
    _check_private_mode(name, st)
    try:
        return private_key_from_bytes(data, passphrase)
    except KeyFormatError as exc:
        raise KeyFileError(f"{name}: {exc}") from None


def load_public_key(path: StrPath, passphrase: Passphrase = None) -> PublicKey:
    """The public key in the file ``path`` (PEM or DER, SubjectPublicKeyInfo
    or PKCS#1), or the public half of a private key file, which must then be
    private to its owner and may need ``passphrase``.

    :raises ~keyexchanged.errors.KeyFileError: when the file cannot be
        read or does not hold an RSA key, naming the file.
    """
    name = os.fsdecode(path)
    data, st = _read_key_file(name)
    try:
        key = _decode(data, passphrase)
    except _PassphraseError as exc:
        _check_private_mode(name, st)  # only private keys are encrypted
        raise KeyFileError(f"{name}: {exc}") from None
    except KeyFormatError as exc:
        raise KeyFileError(f"{name}: {exc}") from None
    if isinstance(key, PrivateKey):
        _check_private_mode(name, st)
    return _public_half(key)


def save_private_key(
    key: PrivateKey, path: StrPath, passphrase: Passphrase = None, force: bool = False
) -> None:
    """Write ``key`` to ``path`` as PKCS#8 PEM, mode 0600, encrypted if a
    ``passphrase`` is given; atomically, and only over an existing file if
    ``force``.

    :raises ~keyexchanged.errors.KeyFileExistsError: when ``path`` exists
        and ``force`` is false.
    :raises ~keyexchanged.errors.KeyFileError: when it cannot be written.
    """
    files.write_atomically(path, private_key_to_pem(key, passphrase), PRIVATE_FILE_MODE, force)


def save_public_key(key: PublicKey | PrivateKey, path: StrPath, force: bool = False) -> None:
    """Write ``key`` (or a private key's public half) to ``path`` as
    SubjectPublicKeyInfo PEM, mode 0644; atomically, and only over an
    existing file if ``force``.

    :raises ~keyexchanged.errors.KeyFileExistsError: when ``path`` exists
        and ``force`` is false.
    :raises ~keyexchanged.errors.KeyFileError: when it cannot be written.
    """
    files.write_atomically(path, _public_key_to_pem(key), PUBLIC_FILE_MODE, force)


def create_key_pair(
    path: StrPath,
    bits: int,
    passphrase: Passphrase = None,
    force: bool = False,
    replace_public: bool | None = None,
    progress=None,
) -> PrivateKey:
    """Generate an RSA key of ``bits`` bits and write the pair: the private
    key to ``path`` (as :func:`save_private_key`, encrypted if a
    ``passphrase`` is given), its public key to ``path.pub``.

    Both or neither: when the public key cannot be written, the private key
    is taken back, as half a key pair is worse than none (the next start of
    a daemon would serve a key whose public half was never written).
    ``force`` writes over existing files; ``replace_public`` (default:
    ``force``) over an existing ``.pub`` only, which a daemon making its
    first key does to a stale one.  ``progress`` is passed to
    ``keyexchanged.rsa.generate_private_key``.

    :returns: the private key.
    :raises ~keyexchanged.errors.KeyFileExistsError: when either file
        exists and may not be overwritten.
    :raises ~keyexchanged.errors.KeyFileError: when a file cannot be
        written.
    :raises ValueError: for a size ``keyexchanged.rsa`` does not make.
    """
    key = rsa.generate_private_key(bits, progress=progress)
    name = os.fsdecode(path)
    save_private_key(key, name, passphrase=passphrase, force=force)
    try:
        save_public_key(
            key, name + ".pub", force=force if replace_public is None else replace_public
        )
    except BaseException:
        with suppress(OSError):
            os.unlink(name)
        raise
    return key
