"""ML-KEM-768 through pycryptodome's HPKE (docs/spec/kx1.rst §12.3),
against the independent implementation's vectors (kx1-revision3.json)."""

from twisted.trial import unittest

from keyexchanged import mlkem
from tests.rev3 import CIPHERS, MLKEM_SEED, session
from tests.vectors import revision3_hexbytes


class VectorTests(unittest.TestCase):
    def test_key_from_the_seed(self):
        key = mlkem.from_seed(MLKEM_SEED)
        self.assertEqual(key.ek, revision3_hexbytes("mlkem_encapsulation_key"))
        self.assertEqual(len(key.ek), mlkem.ENCAPSULATION_KEY_LENGTH)

    def test_decapsulation_gives_the_exported_secret(self):
        key = mlkem.from_seed(MLKEM_SEED)
        for cipher in CIPHERS:
            ciphertext = session(cipher, "full", "mlkem_ciphertext")
            self.assertEqual(len(ciphertext), mlkem.CIPHERTEXT_LENGTH)
            self.assertEqual(
                mlkem.decapsulate(key, ciphertext), session(cipher, "full", "mlkem_secret")
            )

    def test_hpke_parameters_are_the_spec_s(self):
        self.assertEqual(mlkem.HPKE_INFO, revision3_hexbytes("hpke", "info"))
        self.assertEqual(mlkem.EXPORTER_CONTEXT, revision3_hexbytes("hpke", "exporter_context"))


class RoundTripTests(unittest.TestCase):
    def test_encapsulate_then_decapsulate(self):
        key = mlkem.generate()
        ciphertext, secret = mlkem.encapsulate(mlkem.public_key(key.ek))
        self.assertEqual(len(secret), mlkem.SECRET_LENGTH)
        self.assertEqual(mlkem.decapsulate(key, ciphertext), secret)

    def test_an_altered_ciphertext_gives_another_secret_not_an_error(self):
        key = mlkem.generate()
        ciphertext, secret = mlkem.encapsulate(mlkem.public_key(key.ek))
        altered = bytes([ciphertext[0] ^ 1]) + ciphertext[1:]
        self.assertNotEqual(mlkem.decapsulate(key, altered), secret)

    def test_public_key_of_the_wrong_length(self):
        ek = mlkem.generate().ek
        self.assertRaises(ValueError, mlkem.public_key, ek[:-1])
        self.assertRaises(ValueError, mlkem.public_key, ek + b"\0")

    def test_public_key_that_fails_the_modulus_check(self):
        # FIPS 203 §7.2: every 12-bit coefficient below q = 3329.
        self.assertRaises(ValueError, mlkem.public_key, b"\xff" * mlkem.ENCAPSULATION_KEY_LENGTH)

    def test_fingerprint(self):
        ek = revision3_hexbytes("mlkem_encapsulation_key")
        fingerprint = mlkem.fingerprint(ek)
        self.assertTrue(fingerprint.startswith("SHA256:"))
        self.assertEqual(len(fingerprint), 7 + 43)
        self.assertNotEqual(fingerprint, mlkem.fingerprint(ek[:-1] + b"\0"))
