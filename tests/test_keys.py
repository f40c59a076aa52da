"""Tests for keyexchanged.keys: key file formats, permissions, atomic writes,
fingerprints, and interoperability with OpenSSL.

No key is generated here except by openssl (fast): the test keys are the
KX/1 vector keys and the OpenSSL-made fixtures in tests/data/keys_*.
"""

import errno
import os
import shutil
import subprocess

from Crypto.IO import PEM
from Crypto.PublicKey import RSA
from Crypto.Util.asn1 import DerSequence
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from keyexchanged import keys
from keyexchanged.rsa import PrivateKey, PublicKey
from tests.fixtures import (
    DATA,
    PASSPHRASE,
    components,
    data,
    openssl,
    openssl_fingerprint,
    openssl_pipeline_fingerprint,
    vector_key,
)
from tests.vectors import RAW


def _flipped(blob, position, mask):
    """``blob`` with the byte at ``position`` (modulo its length) XORed."""
    position %= len(blob)
    return blob[:position] + bytes([blob[position] ^ mask]) + blob[position + 1 :]


KEY_FIXTURES = sorted(
    name
    for name in os.listdir(DATA)
    if name.startswith("keys_openssl_") and "fingerprint" not in name
)


def write(path, content, mode=0o600):
    with open(path, "wb") as f:
        f.write(content)
    os.chmod(path, mode)
    return path


def require_openssl():
    if shutil.which("openssl") is None:
        raise SkipTest("openssl is not installed")


class TemporaryDirectoryMixin:
    def make_directory(self):
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        return path


class VectorTests(SynchronousTestCase):
    """The KX/1 vector keys, whose fingerprints peers already know."""

    def test_server_fingerprint(self):
        key = vector_key()
        self.assertEqual(key.size, 2048)
        expected = "SHA256:QP4xoWz7o57B9UI8lLLHNSEk1qwz2Iy6L5ClcTnZFCY"
        self.assertEqual(RAW["server_fingerprint"], expected)
        self.assertEqual(keys.fingerprint(key), expected)
        self.assertEqual(keys.fingerprint(key.public_key()), expected)

    def test_server_spki(self):
        key = vector_key()
        der = bytes.fromhex(RAW["server_spki_der"])
        self.assertEqual(keys.public_key_to_der(key.public_key()), der)
        self.assertEqual(keys.public_key_to_der(key), der)
        self.assertEqual(keys.public_key_from_der(der), key.public_key())
        self.assertEqual(keys.fingerprint(der), RAW["server_fingerprint"])

    def test_client_fingerprint(self):
        key = keys.private_key_from_bytes(RAW["client_private_key_pem"])
        self.assertEqual(keys.fingerprint(key), RAW["client_fingerprint"])


class FormatTests(TemporaryDirectoryMixin, SynchronousTestCase):
    """Every format we read, as files, PEM and DER."""

    def setUp(self):
        self.key = keys.private_key_from_bytes(data("keys_openssl_pkcs8.pem"))
        self.dir = self.make_directory()

    def load_private(self, name, content, passphrase=None):
        return keys.load_private_key(write(os.path.join(self.dir, name), content), passphrase)

    def load_public(self, name, content):
        return keys.load_public_key(write(os.path.join(self.dir, name), content, 0o644))

    def test_openssl_private_formats(self):
        """PKCS#1 and PKCS#8, PEM and DER, clear and encrypted, as openssl writes them."""
        for name, passphrase in [
            ("keys_openssl_pkcs8.pem", None),
            ("keys_openssl_pkcs8.der", None),
            ("keys_openssl_pkcs1.pem", None),
            ("keys_openssl_pkcs8_encrypted.pem", PASSPHRASE),
            ("keys_openssl_pkcs1_encrypted.pem", PASSPHRASE),
        ]:
            loaded = self.load_private(name, data(name), passphrase)
            self.assertIsInstance(loaded, PrivateKey)
            self.assertEqual(components(loaded), components(self.key), name)
            self.assertEqual(keys.fingerprint(loaded), openssl_fingerprint(), name)

    def test_openssl_public_formats(self):
        for name in [
            "keys_openssl_spki.pem",
            "keys_openssl_spki.der",
            "keys_openssl_pkcs1_public.pem",
        ]:
            loaded = self.load_public(name, data(name))
            self.assertIsInstance(loaded, PublicKey)
            self.assertEqual(loaded, self.key.public_key(), name)
            self.assertEqual(keys.fingerprint(loaded), openssl_fingerprint(), name)

    def test_private_round_trip(self):
        """What we write, we read: PKCS#8 PEM, clear and encrypted."""
        path = os.path.join(self.dir, "k")
        keys.save_private_key(self.key, path)
        with open(path, "rb") as f:
            self.assertEqual(f.readline(), b"-----BEGIN PRIVATE KEY-----\n")
        self.assertEqual(components(keys.load_private_key(path)), components(self.key))

        encrypted = os.path.join(self.dir, "e")
        keys.save_private_key(self.key, encrypted, passphrase=b"s3cret")
        with open(encrypted, "rb") as f:
            self.assertEqual(f.readline(), b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n")
        for passphrase in (b"s3cret", "s3cret"):
            self.assertEqual(
                components(keys.load_private_key(encrypted, passphrase)), components(self.key)
            )

    def test_pycryptodome_formats(self):
        """The same formats, from the other encoder we have at hand."""
        rsa_key = RSA.import_key(data("keys_openssl_pkcs8.pem"))
        public = rsa_key.public_key()
        pkcs1_public_der = DerSequence([public.n, public.e]).encode()
        private_cases = {
            "pkcs1.der": (rsa_key.export_key("DER", pkcs=1), None),
            "pkcs8.der": (rsa_key.export_key("DER", pkcs=8), None),
            "pkcs8-enc.der": (rsa_key.export_key("DER", pkcs=8, passphrase="pw"), "pw"),
            "pkcs8-scrypt.pem": (
                rsa_key.export_key(
                    pkcs=8,
                    passphrase="pw",
                    protection="scryptAndAES256-CBC",
                    prot_params={"iteration_count": 1024},
                ),
                "pw",
            ),
        }
        for name, (content, passphrase) in private_cases.items():
            loaded = self.load_private(name, content, passphrase)
            self.assertEqual(components(loaded), components(self.key), name)
        public_cases = {
            "spki.der": public.export_key("DER"),
            "spki.pem": public.export_key("PEM"),
            "pkcs1-public.der": pkcs1_public_der,
            "pkcs1-public.pem": PEM.encode(pkcs1_public_der, "RSA PUBLIC KEY").encode(),
        }
        for name, content in public_cases.items():
            self.assertEqual(self.load_public(name, content), self.key.public_key(), name)

    def test_public_half_of_private_file(self):
        path = write(os.path.join(self.dir, "k"), data("keys_openssl_pkcs1.pem"))
        self.assertEqual(keys.load_public_key(path), self.key.public_key())

    def test_public_half_of_encrypted_private_file(self):
        path = write(os.path.join(self.dir, "k"), data("keys_openssl_pkcs8_encrypted.pem"))
        error = self.assertRaises(keys.KeyFileError, keys.load_public_key, path)
        self.assertIn("passphrase is required", str(error))
        self.assertEqual(keys.load_public_key(path, PASSPHRASE), self.key.public_key())

    def test_pem_among_other_text(self):
        """A key block among comments and a certificate, as some tools write."""
        content = (
            b"Bag Attributes: comment\n"
            + data("keys_openssl_pkcs8.pem")
            + b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        )
        self.assertEqual(components(self.load_private("k", content)), components(self.key))

    def test_two_keys_refused(self):
        content = data("keys_openssl_pkcs8.pem") + data("keys_openssl_pkcs1.pem")
        error = self.assertRaises(keys.KeyFileError, self.load_private, "two", content)
        self.assertIn("2 keys", str(error))

    def test_label_must_match_contents(self):
        """A public key dressed as a private one, and the other way round."""
        public_der = data("keys_openssl_spki.der")
        as_private = PEM.encode(public_der, "PRIVATE KEY").encode()
        self.assertRaises(keys.KeyFileError, self.load_private, "p", as_private)
        self.assertRaises(keys.KeyFileError, self.load_public, "p2", as_private)
        pkcs1_private = RSA.import_key(data("keys_openssl_pkcs1.pem")).export_key("DER")
        as_public = PEM.encode(pkcs1_private, "PUBLIC KEY").encode()
        self.assertRaises(keys.KeyFileError, self.load_public, "q", as_public)
        spki_as_pkcs1 = PEM.encode(public_der, "RSA PUBLIC KEY").encode()
        self.assertRaises(keys.KeyFileError, self.load_public, "r", spki_as_pkcs1)


class PassphraseTests(TemporaryDirectoryMixin, SynchronousTestCase):
    def setUp(self):
        self.dir = self.make_directory()
        self.path = write(os.path.join(self.dir, "enc"), data("keys_openssl_pkcs8_encrypted.pem"))
        self.legacy = write(
            os.path.join(self.dir, "legacy"), data("keys_openssl_pkcs1_encrypted.pem")
        )

    def test_wrong_passphrase(self):
        for path in (self.path, self.legacy):
            for passphrase in ("wrong horse", b"correct horse!"):
                error = self.assertRaises(
                    keys.KeyFileError, keys.load_private_key, path, passphrase
                )
                message = str(error)
                self.assertTrue(message.startswith(path + ": "), message)
                self.assertIn("wrong passphrase", message)
                self.assertNotIn("horse", message)

    def test_missing_passphrase(self):
        for path in (self.path, self.legacy):
            error = self.assertRaises(keys.KeyFileError, keys.load_private_key, path)
            self.assertEqual(
                str(error), f"{path}: private key is encrypted: a passphrase is required"
            )

    def test_passphrase_ignored_for_clear_key(self):
        path = write(os.path.join(self.dir, "clear"), data("keys_openssl_pkcs8.pem"))
        self.assertIsInstance(keys.load_private_key(path, "unused"), PrivateKey)

    def test_unicode_passphrase_is_utf8(self):
        """str and its UTF-8 bytes are the same passphrase."""
        key = keys.private_key_from_bytes(data("keys_openssl_pkcs8.pem"))
        pem = keys.private_key_to_pem(key, "pässwörd ✓")
        loaded = keys.private_key_from_bytes(pem, "pässwörd ✓".encode())
        self.assertEqual(components(loaded), components(key))

    def test_empty_passphrase_refused_on_write(self):
        key = keys.private_key_from_bytes(data("keys_openssl_pkcs8.pem"))
        self.assertRaises(ValueError, keys.private_key_to_pem, key, b"")
        path = os.path.join(self.dir, "never")
        self.assertRaises(ValueError, keys.save_private_key, key, path, "")
        self.assertFalse(os.path.exists(path))

    def test_strong_encryption(self):
        """PBES2 with PBKDF2-HMAC-SHA256 (600 000 rounds) and AES-256-CBC, not
        the legacy PEM encryption."""
        key = keys.private_key_from_bytes(data("keys_openssl_pkcs8.pem"))
        pem = keys.private_key_to_pem(key, "pw")
        der = PEM.decode(pem.decode())[0]
        self.assertNotIn(b"Proc-Type", pem)
        for oid in (
            "2a864886f70d01050d",  # PBES2
            "2a864886f70d01050c",  # PBKDF2
            "2a864886f70d0209",  # HMAC-SHA256
            "60864801650304012a",  # AES-256-CBC
        ):
            self.assertIn(oid, der.hex())
        self.assertIn("02030927c0", der.hex())  # INTEGER 600000


class BadFileTests(TemporaryDirectoryMixin, SynchronousTestCase):
    def setUp(self):
        self.dir = self.make_directory()

    def assertKeyFileError(self, path, *fragments, loader=keys.load_private_key):
        error = self.assertRaises(keys.KeyFileError, loader, path)
        message = str(error)
        self.assertTrue(message.startswith(f"{path}: "), message)
        self.assertNotIn("\n", message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return message

    def test_missing_file(self):
        path = os.path.join(self.dir, "absent")
        self.assertKeyFileError(path, "No such file")
        self.assertKeyFileError(path, "No such file", loader=keys.load_public_key)

    def test_directory(self):
        self.assertKeyFileError(self.dir, "not a regular file")

    def test_garbage(self):
        for name, content in [
            ("empty", b""),
            ("text", b"hello world\n"),
            ("binary", bytes(range(256))),
            ("der-ish", b"\x30\x82\xff\xff"),
            ("bad-base64", b"-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n"),
            (
                "openssh",
                b"-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----",
            ),
        ]:
            path = write(os.path.join(self.dir, name), content)
            self.assertKeyFileError(path, "not an RSA key in a supported format")

    def test_public_key_as_private(self):
        path = write(os.path.join(self.dir, "pub"), data("keys_openssl_spki.pem"))
        self.assertKeyFileError(path, "public key, not a private key")

    def test_no_key_material_in_messages(self):
        """Even a key damaged inside shows none of itself in the error."""
        pem = data("keys_openssl_pkcs1.pem")
        damaged = pem[:200] + (b"A" if pem[200:201] != b"A" else b"B") + pem[201:]
        path = write(os.path.join(self.dir, "damaged"), damaged)
        message = self.assertKeyFileError(path)
        for line in pem.splitlines()[1:-1]:
            self.assertNotIn(line[:16].decode(), message)

    def test_invalid_private_key(self):
        """A key pycryptodome parses but our validation refuses."""

        def refuse(key):
            raise ValueError("nope")

        self.patch(PrivateKey, "validate", refuse)
        path = write(os.path.join(self.dir, "k"), data("keys_openssl_pkcs8.pem"))
        message = self.assertKeyFileError(path)
        self.assertEqual(message, f"{path}: not a valid RSA private key (nope)")

    def test_small_keys(self):
        """Private keys meet rsa's policy (they are about to be used); public
        keys need only the right shape, policy being the protocol's."""
        small = RSA.generate(1024)
        path = write(os.path.join(self.dir, "small"), small.export_key(pkcs=8))
        self.assertKeyFileError(path, "not a valid RSA private key", "2048")
        public = write(os.path.join(self.dir, "small.pub"), small.public_key().export_key())
        self.assertEqual(keys.load_public_key(public).size, 1024)

    def test_too_large(self):
        path = write(os.path.join(self.dir, "big"), b"\n" * (keys.MAX_KEY_FILE_SIZE + 1))
        self.assertKeyFileError(path, "too large")

    @settings(max_examples=200, deadline=None)
    @given(
        st.one_of(
            st.binary(max_size=600),
            st.sampled_from(KEY_FIXTURES).map(data),
            st.tuples(
                st.sampled_from(KEY_FIXTURES), st.integers(0, 10_000), st.integers(1, 255)
            ).map(lambda t: _flipped(data(t[0]), t[1], t[2])),
        )
    )
    def test_arbitrary_bytes(self, blob):
        """A key of the kind asked for, or KeyFormatError with a message:
        nothing else, whatever the bytes.  Real key files (some damaged)
        are mixed in so that both outcomes are reached."""
        outcomes = {}
        for decode, kind in (
            (keys.private_key_from_bytes, PrivateKey),
            (keys.public_key_from_bytes, PublicKey),
            (keys.public_key_from_der, PublicKey),
        ):
            try:
                key = decode(blob)
            except keys.KeyFormatError as e:
                self.assertTrue(str(e), f"{decode.__name__}: an empty message")
                outcomes[decode.__name__] = None
            else:
                self.assertIsInstance(key, kind, decode.__name__)
                outcomes[decode.__name__] = key
        private = outcomes["private_key_from_bytes"]
        public = outcomes["public_key_from_bytes"]
        if private is not None:
            # The public half of the same file is that key's public half.
            self.assertEqual(public, private.public_key())
        der_key = outcomes["public_key_from_der"]
        if der_key is not None:
            # Strict DER: only the one canonical encoding is accepted.
            self.assertEqual(keys.public_key_to_der(der_key), blob)
            self.assertEqual(public, der_key)

    @settings(max_examples=200, deadline=None)
    @given(st.integers(0, 293), st.integers(1, 255))
    def test_damaged_spki(self, position, flip):
        original = data("keys_openssl_spki.der")
        der = _flipped(original, position, flip)
        try:
            key = keys.public_key_from_der(der)
        except keys.KeyFormatError as e:
            # Refused either as DER, or as RSA numbers (an even exponent, say).
            message = str(e)
            if not message.startswith("not a valid RSA public key ("):
                self.assertEqual(
                    message, "not a DER SubjectPublicKeyInfo holding an RSA public key"
                )
            return
        # A flip inside the modulus can still make a valid-looking key: a
        # different key, whose canonical encoding is the damaged bytes.
        self.assertNotEqual(key, keys.public_key_from_der(original))
        self.assertEqual(keys.public_key_to_der(key), der)


class StrictDerTests(SynchronousTestCase):
    def setUp(self):
        self.der = data("keys_openssl_spki.der")

    def test_accepts_spki(self):
        key = keys.public_key_from_der(self.der)
        self.assertEqual(keys.public_key_to_der(key), self.der)

    def test_refuses(self):
        rsa_key = RSA.import_key(data("keys_openssl_pkcs1.pem"))
        for blob in [
            self.der + b"\x00",
            self.der + b"garbage",
            b"\x00" + self.der,
            self.der[:-1],
            b"",
            data("keys_openssl_spki.pem"),
            DerSequence([rsa_key.n, rsa_key.e]).encode(),  # PKCS#1, not SPKI
            rsa_key.export_key("DER"),  # a private key
            rsa_key.public_key().export_key("OpenSSH"),
        ]:
            error = self.assertRaises(ValueError, keys.public_key_from_der, blob)
            self.assertIsInstance(error, keys.KeyFormatError)
            self.assertRaises(ValueError, keys.fingerprint, blob)

    def test_refuses_pss_oid(self):
        """RSASSA-PSS SubjectPublicKeyInfo is not what KX/1 sends."""
        pss = self.der.replace(
            bytes.fromhex("2a864886f70d010101"), bytes.fromhex("2a864886f70d01010a")
        )
        self.assertNotEqual(pss, self.der)
        self.assertRaises(ValueError, keys.public_key_from_der, pss)


class PermissionTests(TemporaryDirectoryMixin, SynchronousTestCase):
    """Group or others may not access a private key file; owner-only is fine.
    The check is on the mode bits, so it holds for root too."""

    def setUp(self):
        self.dir = self.make_directory()
        self.path = os.path.join(self.dir, "key")
        write(self.path, data("keys_openssl_pkcs8.pem"))

    def test_owner_only_accepted(self):
        for mode in (0o600, 0o400):
            os.chmod(self.path, mode)
            self.assertIsInstance(keys.load_private_key(self.path), PrivateKey)

    def test_readable_by_others_refused(self):
        for mode in (0o644, 0o640, 0o604, 0o660, 0o666):
            os.chmod(self.path, mode)
            error = self.assertRaises(keys.KeyFileError, keys.load_private_key, self.path)
            self.assertEqual(
                str(error),
                f"{self.path}: private key is readable by others (mode {mode:04o}); "
                f"run: chmod 600 {self.path}",
            )

    def test_writable_by_others_refused(self):
        os.chmod(self.path, 0o620)
        error = self.assertRaises(keys.KeyFileError, keys.load_private_key, self.path)
        self.assertIn("mode 0620", str(error))
        self.assertIn("chmod 600", str(error))

    def test_checked_before_passphrase(self):
        """An exposed key is refused, not decrypted."""
        write(self.path, data("keys_openssl_pkcs8_encrypted.pem"), 0o644)
        for passphrase in (None, "wrong", PASSPHRASE):
            error = self.assertRaises(
                keys.KeyFileError, keys.load_private_key, self.path, passphrase
            )
            self.assertIn("chmod 600", str(error))
        error = self.assertRaises(keys.KeyFileError, keys.load_public_key, self.path)
        self.assertIn("chmod 600", str(error))

    def test_public_half_needs_private_file(self):
        os.chmod(self.path, 0o644)
        error = self.assertRaises(keys.KeyFileError, keys.load_public_key, self.path)
        self.assertIn("chmod 600", str(error))

    def test_public_key_may_be_world_readable(self):
        public = write(os.path.join(self.dir, "pub"), data("keys_openssl_spki.pem"), 0o644)
        self.assertIsInstance(keys.load_public_key(public), PublicKey)

    def test_path_quoted_in_advice(self):
        path = write(os.path.join(self.dir, "my key"), data("keys_openssl_pkcs8.pem"), 0o644)
        error = self.assertRaises(keys.KeyFileError, keys.load_private_key, path)
        self.assertTrue(str(error).endswith(f"run: chmod 600 '{path}'"), str(error))


def _name_of(uid):
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "an unknown user"


class OwnerTests(TemporaryDirectoryMixin, SynchronousTestCase):
    """A private key must be owned by the user we run as, or root: a 0600
    key another user owns may be one they planted.  The files are
    given away with chown, which takes root; ``keys._effective_uid`` plays
    a user other than root."""

    NOBODY = 65534
    USER = 4242

    def setUp(self):
        if os.name != "posix" or os.geteuid() != 0:
            raise SkipTest("giving a file to another user takes root")
        self.dir = self.make_directory()
        self.path = write(os.path.join(self.dir, "key"), data("keys_openssl_pkcs8.pem"))

    def owned_by(self, uid, mode=0o600):
        os.chown(self.path, uid, -1)
        os.chmod(self.path, mode)  # chown may clear bits; the mode is the test's
        return self.path

    def test_another_users_key_is_refused(self):
        self.owned_by(self.NOBODY)
        expected = (
            f"{self.path}: private key is owned by {_name_of(self.NOBODY)} "
            f"(uid {self.NOBODY}), not by root; refusing a key another user could "
            "have put there"
        )
        error = self.assertRaises(keys.KeyFileError, keys.load_private_key, self.path)
        self.assertEqual(str(error), expected)
        # The public half of such a file is refused too: it is a private key file.
        error = self.assertRaises(keys.KeyFileError, keys.load_public_key, self.path)
        self.assertEqual(str(error), expected)

    def test_root_and_own_keys_load(self):
        self.patch(keys, "_effective_uid", lambda: self.USER)
        for uid in (0, self.USER):
            self.owned_by(uid)
            self.assertIsInstance(keys.load_private_key(self.path), PrivateKey)

    def test_as_another_user_a_third_users_key_is_refused(self):
        self.patch(keys, "_effective_uid", lambda: self.USER)
        self.owned_by(self.NOBODY)
        error = self.assertRaises(keys.KeyFileError, keys.load_private_key, self.path)
        self.assertEqual(
            str(error),
            f"{self.path}: private key is owned by {_name_of(self.NOBODY)} "
            f"(uid {self.NOBODY}), not by {_name_of(self.USER)} (uid {self.USER}) or root; "
            "refusing a key another user could have put there",
        )

    def test_own_key_open_to_others_is_still_refused(self):
        self.patch(keys, "_effective_uid", lambda: self.USER)
        self.owned_by(self.USER, 0o640)
        error = self.assertRaises(keys.KeyFileError, keys.load_private_key, self.path)
        self.assertEqual(
            str(error),
            f"{self.path}: private key is readable by others (mode 0640); "
            f"run: chmod 600 {self.path}",
        )


class WriteTests(TemporaryDirectoryMixin, SynchronousTestCase):
    def setUp(self):
        self.key = vector_key()
        self.dir = self.make_directory()
        self.private = os.path.join(self.dir, "server.key")
        self.public = os.path.join(self.dir, "server.pub")

    def mode(self, path):
        return os.stat(path).st_mode & 0o7777

    def with_umask(self, umask):
        old = os.umask(umask)
        self.addCleanup(os.umask, old)

    def test_modes(self):
        """0600 and 0644 exactly, whatever the umask."""
        for umask in (0o022, 0o077, 0o000):
            self.with_umask(umask)
            keys.save_private_key(self.key, self.private, force=True)
            keys.save_public_key(self.key.public_key(), self.public, force=True)
            self.assertEqual(self.mode(self.private), 0o600)
            self.assertEqual(self.mode(self.public), 0o644)
        self.assertEqual(sorted(os.listdir(self.dir)), ["server.key", "server.pub"])

    def test_public_from_private(self):
        keys.save_public_key(self.key, self.public)
        self.assertEqual(keys.load_public_key(self.public), self.key.public_key())
        with open(self.public, "rb") as f:
            self.assertEqual(f.readline(), b"-----BEGIN PUBLIC KEY-----\n")

    def test_overwrite_refused(self):
        for path, save in [
            (
                self.private,
                lambda force: keys.save_private_key(self.key, self.private, force=force),
            ),
            (self.public, lambda force: keys.save_public_key(self.key, self.public, force=force)),
        ]:
            write(path, b"precious", 0o600)
            error = self.assertRaises(keys.KeyFileExistsError, save, False)
            self.assertIsInstance(error, keys.KeyFileError)
            self.assertIn(path, str(error))
            with open(path, "rb") as f:
                self.assertEqual(f.read(), b"precious")
            save(True)
            with open(path, "rb") as f:
                self.assertEqual(f.read(11), b"-----BEGIN ")
        self.assertEqual(sorted(os.listdir(self.dir)), ["server.key", "server.pub"])

    def test_overwrite_refused_for_dangling_symlink(self):
        """Writing through a symlink could land anywhere."""
        os.symlink(os.path.join(self.dir, "elsewhere"), self.private)
        self.assertRaises(keys.KeyFileExistsError, keys.save_private_key, self.key, self.private)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "elsewhere")))

    def test_file_created_concurrently_not_clobbered(self):
        """The no-overwrite check holds at the moment of installing the file."""
        real_fsync = os.fsync

        def fsync_then_race(fd):
            real_fsync(fd)
            if not os.path.exists(self.private):
                write(self.private, b"theirs")

        self.patch(os, "fsync", fsync_then_race)
        self.assertRaises(keys.KeyFileExistsError, keys.save_private_key, self.key, self.private)
        with open(self.private, "rb") as f:
            self.assertEqual(f.read(), b"theirs")
        self.assertEqual(os.listdir(self.dir), ["server.key"])

    def test_without_hard_links(self):
        """File systems without link() fall back to check-and-rename."""

        def no_link(source, target):
            raise OSError(errno.EPERM, "Operation not permitted")

        self.patch(os, "link", no_link)
        keys.save_private_key(self.key, self.private)
        self.assertEqual(components(keys.load_private_key(self.private)), components(self.key))
        self.assertRaises(keys.KeyFileExistsError, keys.save_private_key, self.key, self.private)
        self.assertEqual(os.listdir(self.dir), ["server.key"])

    def assertFailsCleanly(self, force, exception=keys.KeyFileError):
        return self.assertRaises(
            exception, keys.save_private_key, self.key, self.private, force=force
        )

    def test_disk_full(self):
        """ENOSPC while writing, syncing or renaming: no file, no temporary."""

        def disk_full(*args):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        for name, force in [
            ("write", False),
            ("fsync", False),
            ("link", False),
            ("replace", True),
            ("write", True),
        ]:
            patcher = self.patch(os, name, disk_full)
            try:
                error = self.assertFailsCleanly(force)
            finally:
                patcher.restore()
            self.assertEqual(
                str(error), f"{self.private}: cannot write: No space left on device", name
            )
            self.assertEqual(os.listdir(self.dir), [], name)

    def test_failed_overwrite_keeps_old_file(self):
        write(self.private, b"old key", 0o600)

        def disk_full(*args):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        self.patch(os, "replace", disk_full)
        self.assertFailsCleanly(True)
        self.assertEqual(os.listdir(self.dir), ["server.key"])
        with open(self.private, "rb") as f:
            self.assertEqual(f.read(), b"old key")

    def test_interrupted(self):
        """Even KeyboardInterrupt leaves nothing behind."""

        def interrupt(fd):
            raise KeyboardInterrupt

        self.patch(os, "fsync", interrupt)
        self.assertFailsCleanly(False, KeyboardInterrupt)
        self.assertEqual(os.listdir(self.dir), [])

    def test_missing_directory(self):
        path = os.path.join(self.dir, "no", "such", "key")
        error = self.assertRaises(keys.KeyFileError, keys.save_private_key, self.key, path)
        self.assertEqual(str(error), f"{path}: cannot write: No such file or directory")

    def test_unwritable_directory(self):
        if os.geteuid() == 0:
            raise SkipTest("root writes into read-only directories (see test_disk_full)")
        os.chmod(self.dir, 0o500)
        self.addCleanup(os.chmod, self.dir, 0o700)
        error = self.assertRaises(keys.KeyFileError, keys.save_public_key, self.key, self.public)
        self.assertEqual(str(error), f"{self.public}: cannot write: Permission denied")
        self.assertEqual(os.listdir(self.dir), [])


class PassphraseFileTests(TemporaryDirectoryMixin, SynchronousTestCase):
    """keys.read_passphrase_file: the one reader of every --passphrase-file."""

    def setUp(self):
        self.dir = self.make_directory()

    def test_first_line_without_its_ending(self):
        path = write(os.path.join(self.dir, "p"), "pässword\r\nsecond line\n".encode())
        self.assertEqual(keys.read_passphrase_file(path), "pässword".encode())

    def test_refusals_name_the_file(self):
        empty = write(os.path.join(self.dir, "empty"), b"\n")
        long = write(os.path.join(self.dir, "long"), b"x" * (keys.MAX_PASSPHRASE_LINE + 1))
        missing = os.path.join(self.dir, "missing")
        for path, words in (
            (empty, "passphrase file is empty"),
            (long, "first line too long for a passphrase"),
            (missing, "cannot read passphrase file: No such file or directory"),
        ):
            error = self.assertRaises(keys.KeyFileError, keys.read_passphrase_file, path)
            self.assertEqual(str(error).split(" (")[0], f"{path}: {words}")


class KeyPairTests(TemporaryDirectoryMixin, SynchronousTestCase):
    """keys.create_key_pair: what keygen and the daemon's first start share."""

    def setUp(self):
        self.dir = self.make_directory()
        self.path = os.path.join(self.dir, "key")
        self.patch(keys.rsa, "generate_private_key", lambda bits, progress=None: vector_key())

    def test_both_files(self):
        key = keys.create_key_pair(self.path, 2048)
        self.assertEqual(components(keys.load_private_key(self.path)), components(key))
        self.assertEqual(keys.load_public_key(self.path + ".pub"), key.public_key())

    def test_stale_public_file(self):
        """Refused, and no private key left without its public half; replaced
        when asked (a daemon's first start)."""
        write(self.path + ".pub", b"stale", 0o644)
        self.assertRaises(keys.KeyFileExistsError, keys.create_key_pair, self.path, 2048)
        self.assertEqual(os.listdir(self.dir), ["key.pub"])
        key = keys.create_key_pair(self.path, 2048, replace_public=True)
        self.assertEqual(keys.load_public_key(self.path + ".pub"), key.public_key())


class OpenSSLTests(TemporaryDirectoryMixin, SynchronousTestCase):
    """What we write, openssl reads, and the other way round."""

    def setUp(self):
        require_openssl()
        self.key = vector_key()
        self.dir = self.make_directory()

    def test_fingerprint_matches_openssl_pipeline(self):
        public = os.path.join(self.dir, "server.pub")
        keys.save_public_key(self.key, public)
        self.assertEqual(openssl_pipeline_fingerprint(public), keys.fingerprint(self.key))
        self.assertEqual(
            openssl_pipeline_fingerprint(os.path.join(DATA, "keys_openssl_spki.pem")),
            openssl_fingerprint(),
        )

    def test_openssl_reads_private_key(self):
        path = os.path.join(self.dir, "server.key")
        keys.save_private_key(self.key, path)
        openssl("pkey", "-in", path, "-noout")
        self.assertIn(b"RSA key ok", openssl("rsa", "-check", "-noout", "-in", path))
        public_pem = openssl("pkey", "-in", path, "-pubout")
        self.assertEqual(keys.public_key_from_bytes(public_pem), self.key.public_key())

    def test_openssl_reads_encrypted_private_key(self):
        path = os.path.join(self.dir, "server.key")
        passphrase = "pässphrase with spaces"
        keys.save_private_key(self.key, path, passphrase=passphrase)
        passfile = write(os.path.join(self.dir, "pass"), passphrase.encode() + b"\n")
        # Each openssl run below derives the key anew (600 000 PBKDF2 rounds).
        output = openssl("rsa", "-check", "-noout", "-in", path, "-passin", f"file:{passfile}")
        self.assertIn(b"RSA key ok", output)
        clear = openssl("pkey", "-in", path, "-passin", f"file:{passfile}")  # openssl reads it
        self.assertEqual(components(keys.private_key_from_bytes(clear)), components(self.key))
        wrong = subprocess.run(
            ["openssl", "pkey", "-in", path, "-noout", "-passin", "pass:wrong"],
            capture_output=True,
            check=False,
        )
        self.assertNotEqual(wrong.returncode, 0)

    def test_we_read_openssl_keys(self):
        """A fresh openssl key in each of its output formats."""
        pkcs8 = os.path.join(self.dir, "pkcs8.pem")
        openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", pkcs8)
        os.chmod(pkcs8, 0o600)
        pkcs1 = write(
            os.path.join(self.dir, "pkcs1.pem"), openssl("rsa", "-in", pkcs8, "-traditional")
        )
        der = write(
            os.path.join(self.dir, "pkcs8.der"), openssl("pkey", "-in", pkcs8, "-outform", "DER")
        )
        encrypted = write(
            os.path.join(self.dir, "enc.pem"),
            openssl("pkey", "-in", pkcs8, "-aes256", "-passout", "pass:hunter2"),
        )
        public = write(
            os.path.join(self.dir, "pub.pem"), openssl("pkey", "-in", pkcs8, "-pubout"), 0o644
        )
        with open(pkcs1, "rb") as f:
            self.assertEqual(f.readline(), b"-----BEGIN RSA PRIVATE KEY-----\n")
        expected = keys.load_private_key(pkcs8)
        self.assertEqual(expected.size, 2048)
        for path, passphrase in [(pkcs1, None), (der, None), (encrypted, "hunter2")]:
            self.assertEqual(
                components(keys.load_private_key(path, passphrase)), components(expected)
            )
        self.assertEqual(keys.load_public_key(public), expected.public_key())
        self.assertEqual(keys.fingerprint(expected), openssl_pipeline_fingerprint(public))
