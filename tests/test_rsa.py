"""Tests for keyexchanged.rsa.

Most test classes come in two flavours, one per big-integer backend, so every
run exercises both the gmpy2 and the pure-Python code paths (the gmpy2 flavour
is skipped only when gmpy2 is not installed).  Published vectors come from the
cryptography-vectors package; interoperability is checked against pycryptodome
and, when it is on PATH, the openssl command.
"""

import functools
import hashlib
import math
import os
import subprocess
import sys
from secrets import randbits

import cryptography_vectors
from Crypto.Cipher import PKCS1_OAEP
from Crypto.Hash import SHA1, SHA256, SHA384, SHA512
from Crypto.Math.Primality import PROBABLY_PRIME, test_probable_prime
from Crypto.PublicKey import RSA
from Crypto.Signature import pss
from Crypto.Util.number import getPrime, sieve_base
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SkipTest, TestCase

import keyexchanged
from keyexchanged import rsa
from keyexchanged.rsa import _backends, _keys, _primes
from tests.fixtures import openssl_path, write_file

HAVE_GMPY2 = "gmpy2" in rsa.AVAILABLE_BACKENDS
NO_GMPY2 = None if HAVE_GMPY2 else "gmpy2 is not installed"

FAILED = "decryption failed"

# Property tests run under trial on a 2-core machine: keep them short, and
# allow slow examples (the pure-Python backend takes milliseconds per op).
# Each property runs from two classes (one per backend) on purpose, which
# Hypothesis flags as "differing executors"; with no example database there is
# nothing to replay wrongly.
PROPERTY = settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors],
)


# ---------------------------------------------------------------------------
# Vector parsing
# ---------------------------------------------------------------------------


def _read_vectors(*parts):
    name = os.path.join("asymmetric", "RSA", *parts)
    with cryptography_vectors.open_vector_file(name, "r") as f:
        return f.read()


def _fields(text):
    """The "# Name:" fields of a PKCS #1 vector file, in order, with their hex.

    Comment lines that do not end in a colon (example titles) are returned
    with a value of None so callers can see where examples start.
    """
    fields = []
    name, hexdigits = None, []

    def flush():
        if name is not None:
            fields.append((name, "".join(hexdigits)))

    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#"):
            flush()
            body = line[1:].strip()
            if body.endswith(":"):
                name, hexdigits = body[:-1].strip(), []
            else:
                name, hexdigits = None, []
                if body and not body.startswith(("-", "=")):
                    fields.append((body, None))
        elif line and name is not None:
            hexdigits.append(line.replace(" ", ""))
        elif not line:
            flush()
            name, hexdigits = None, []
    flush()
    return fields


def _pkcs1_examples(text, data_names):
    """[(key numbers dict, example dict)] for a PKCS #1 style vector file.

    ``data_names`` are the per-example fields (e.g. "Message", "Seed",
    "Encryption"); the example is complete when the last one is seen.
    """
    examples = []
    key = {}
    current = {}
    title = None
    for name, value in _fields(text):
        if value is None:
            title = name
            continue
        if name == "Modulus":
            key = {"n": int(value, 16)}
        elif name == "Public exponent":
            key["e"] = int(value, 16)
        elif name == "Exponent":
            # Once under "Public key" (e), once under "Private key" (d).
            key["d" if "e" in key else "e"] = int(value, 16)
        elif name == "Prime 1":
            key["p"] = int(value, 16)
        elif name == "Prime 2":
            key["q"] = int(value, 16)
        elif name in data_names:
            current[name] = bytes.fromhex(value)
            if name == data_names[-1]:
                current["title"] = title
                examples.append((dict(key), current))
                current = {}
    return examples


def _key_from(numbers):
    return rsa.PrivateKey(numbers["n"], numbers["e"], numbers["d"], numbers["p"], numbers["q"])


def _oaep_rfc_examples():
    return _pkcs1_examples(
        _read_vectors("pkcs-1v2-1d2-vec", "oaep-vect.txt"), ("Message", "Seed", "Encryption")
    )


def _pss_rfc_examples():
    return _pkcs1_examples(
        _read_vectors("pkcs-1v2-1d2-vec", "pss-vect.txt"),
        ("Message to be signed", "Salt", "Signature"),
    )


OAEP_CUSTOM_HASHES = ("sha1", "sha224", "sha256", "sha384", "sha512")


def _oaep_custom_examples():
    """(hash, mgf hash, key numbers, example) for every oaep-custom vector."""
    out = []
    for first in OAEP_CUSTOM_HASHES:
        for second in OAEP_CUSTOM_HASHES:
            if first == second == "sha1":
                continue  # that is the RFC set, oaep-vect.txt
            text = _read_vectors("oaep-custom", f"oaep-{first}-{second}.txt")
            for numbers, example in _pkcs1_examples(text, ("Message", "Encryption")):
                # The title says which is which: "OAEP Example 1 alg=X mgf1=Y".
                words = dict(w.split("=") for w in example["title"].split() if "=" in w)
                out.append((words["alg"], words["mgf1"], numbers, example))
    return out


# ---------------------------------------------------------------------------
# Shared keys and helpers
# ---------------------------------------------------------------------------

_generated = {}


def _generated_key(backend, bits):
    """One key per (backend, size) per test process, made with that backend.

    Returns the key, the progress events, and how many secret-exponent
    exponentiations (random-base Miller–Rabin rounds) generation ran.
    """
    if (backend, bits) not in _generated:
        events = []
        with rsa._use_backend(backend) as chosen:
            original = chosen.powmod_secret
            calls = []

            def counting(*args):
                calls.append(None)
                return original(*args)

            chosen.powmod_secret = counting
            try:
                key = rsa.generate_private_key(bits, progress=lambda *ev: events.append(ev))
            finally:
                chosen.powmod_secret = original
        _generated[backend, bits] = (key, events, len(calls))
    return _generated[backend, bits]


def _shared_key():
    """A 2048-bit key for the padding tests (whichever backend is fastest)."""
    return _generated_key("gmpy2" if HAVE_GMPY2 else "python", 2048)[0]


@functools.cache
def _vector_primes(bits):
    """The ``bits``-bit primes of the RFC 8017 OAEP and PSS vector keys, in
    file order: primes made by someone else, where a test needs known primes
    of a size rather than fresh ones (searching for fresh 1024-bit primes with
    pycryptodome takes tenths of a second each).  Every one is usable with
    e = 65537: gcd(65537, p − 1) = 1."""
    primes = []
    for numbers, _ in _oaep_rfc_examples() + _pss_rfc_examples():
        for prime in (numbers["p"], numbers["q"]):
            if prime.bit_length() == bits and prime not in primes:
                primes.append(prime)
    return tuple(primes)


#: The product of the odd primes below 1000 (pycryptodome's table, not ours).
_SMALL_ODD_PRIMES = math.prod(p for p in sieve_base if 2 < p < 1000)


def _usable_prime_after(x, e=rsa.PUBLIC_EXPONENT):
    """The least prime q ≥ x (x odd) with gcd(e, q − 1) = 1, by
    pycryptodome's test, after a gcd with the small primes that turns away
    ~85 % of the candidates for far less than that test costs."""
    while (
        math.gcd(x, _SMALL_ODD_PRIMES) != 1
        or test_probable_prime(x) != PROBABLY_PRIME
        or math.gcd(e, x - 1) != 1
    ):
        x += 2
    return x


@functools.cache
def _close_primes():
    """(p, q): a 1024-bit vector prime p and the next usable prime q after
    it, as close as two such primes get."""
    p = _vector_primes(1024)[0]
    return p, _usable_prime_after(p + 2)


def _flip(data, bit):
    data = bytearray(data)
    data[bit // 8] ^= 0x80 >> (bit % 8)
    return bytes(data)


class _BackendMixin:
    """Runs each test with ``backend`` selected in keyexchanged.rsa."""

    backend = None

    def setUp(self):
        context = rsa._use_backend(self.backend)
        context.__enter__()
        self.addCleanup(context.__exit__, None, None, None)

    def assertDecryptionFails(self, key, ciphertext, *args, **kwargs):
        exc = self.assertRaises(rsa.DecryptionError, key.decrypt_oaep, ciphertext, *args, **kwargs)
        self.assertEqual(str(exc), FAILED)
        self.assertIs(type(exc), rsa.DecryptionError)


def _pycryptodome_key(key):
    return RSA.construct((key.n, key.e, key.d, key.p, key.q))


# ---------------------------------------------------------------------------
# Published vectors
# ---------------------------------------------------------------------------


class _VectorTests(_BackendMixin):
    def first_of_each(self, examples, group):
        """``examples`` to run with the private key on this backend: all of
        them, except on the pure-Python backend when gmpy2 is there too, where
        the first of each ``group(example)``.  The padding is the same code
        on both backends and every example runs on gmpy2; in pure Python,
        where each private-key operation costs milliseconds, one per key
        (per size) or per hash pair checks the arithmetic."""
        if self.backend != "python" or not HAVE_GMPY2:
            return examples
        first = {}
        for example in examples:
            first.setdefault(group(example), example)
        return list(first.values())

    def test_oaep_rfc_vectors_decrypt(self):
        examples = _oaep_rfc_examples()
        self.assertEqual(len(examples), 60)
        keys = {}
        for numbers, example in self.first_of_each(examples, lambda x: x[0]["n"]):
            key = keys.get(numbers["n"])
            if key is None:
                key = keys[numbers["n"]] = _key_from(numbers)
                key.validate(min_bits=1024)
            self.assertEqual(
                key.decrypt_oaep(example["Encryption"], hash="sha1"),
                example["Message"],
                example["title"],
            )
        self.assertEqual(len(keys), 10)

    def test_oaep_rfc_vectors_encrypt_with_seed(self):
        for numbers, example in _oaep_rfc_examples():
            public = rsa.PublicKey(numbers["n"], numbers["e"])
            self.assertEqual(
                public.encrypt_oaep(example["Message"], hash="sha1", seed=example["Seed"]),
                example["Encryption"],
                example["title"],
            )

    def test_oaep_custom_hash_vectors(self):
        examples = _oaep_custom_examples()
        self.assertEqual(len(examples), 24 * 60)
        combos = set()
        keys = {}
        # 1 440 decryptions in pure Python would take 10 s.
        for alg, mgf1, numbers, example in self.first_of_each(examples, lambda x: x[:2]):
            key = keys.get(numbers["n"])
            if key is None:
                key = keys[numbers["n"]] = _key_from(numbers)
            combos.add((alg, mgf1))
            self.assertEqual(
                key.decrypt_oaep(example["Encryption"], hash=alg, mgf_hash=mgf1),
                example["Message"],
                (alg, mgf1, example["title"]),
            )
        self.assertEqual(len(combos), 24)

    def test_oaep_label_vector(self):
        entries = []
        for line in _read_vectors("oaep-label.txt").splitlines():
            name, equals, value = line.strip().partition(" = ")
            if name == "COUNT":
                entries.append({})
            elif equals and entries:
                entries[-1][name] = value
        self.assertTrue(entries)
        for entry in entries:
            theirs = RSA.import_key(bytes.fromhex(entry["KEY"]))
            key = rsa.PrivateKey(
                *(int(x) for x in (theirs.n, theirs.e, theirs.d, theirs.p, theirs.q))
            )
            digest = entry["OAEPDigest"].lower()
            plaintext = key.decrypt_oaep(
                bytes.fromhex(entry["Input"]), bytes.fromhex(entry["OAEPLabel"]), hash=digest
            )
            self.assertEqual(plaintext, entry["Output"].strip('"').encode())

    def test_pss_rfc_vectors_verify(self):
        examples = _pss_rfc_examples()
        self.assertEqual(len(examples), 60)
        for numbers, example in examples:
            public = rsa.PublicKey(numbers["n"], numbers["e"])
            message, signature = example["Message to be signed"], example["Signature"]
            self.assertTrue(public.verify_pss(message, signature, hash="sha1"), example["title"])
            self.assertFalse(public.verify_pss(message + b"x", signature, hash="sha1"))

    def test_pss_rfc_vectors_sign_with_salt(self):
        examples = _pss_rfc_examples()
        self.assertEqual(len(examples), 60)
        keys = {}
        for numbers, example in self.first_of_each(examples, lambda x: x[0]["n"]):
            key = keys.get(numbers["n"])
            if key is None:
                key = keys[numbers["n"]] = _key_from(numbers)
                key.validate(min_bits=1024)
            signature = key.sign_pss(
                example["Message to be signed"], hash="sha1", salt=example["Salt"]
            )
            self.assertEqual(signature, example["Signature"], example["title"])
        self.assertEqual(len(keys), 10)


class VectorPythonTests(_VectorTests, TestCase):
    backend = "python"


class VectorGmpy2Tests(_VectorTests, TestCase):
    backend = "gmpy2"
    skip = NO_GMPY2


# ---------------------------------------------------------------------------
# OAEP behaviour and properties
# ---------------------------------------------------------------------------

MAX_SHA256_MESSAGE = 256 - 2 * 32 - 2  # for the shared 2048-bit key


class _OAEPTests(_BackendMixin):
    @PROPERTY
    @given(
        message=st.binary(max_size=MAX_SHA256_MESSAGE),
        label=st.binary(max_size=64),
    )
    def test_round_trip(self, message, label):
        key = _shared_key()
        ciphertext = key.public_key().encrypt_oaep(message, label)
        self.assertEqual(len(ciphertext), key.k)
        self.assertEqual(key.decrypt_oaep(ciphertext, label), message)

    def test_encryption_is_randomised(self):
        public = _shared_key().public_key()
        self.assertNotEqual(public.encrypt_oaep(b"same"), public.encrypt_oaep(b"same"))

    def test_message_length_limit(self):
        key = _shared_key()
        public = key.public_key()
        longest = b"\xff" * MAX_SHA256_MESSAGE
        self.assertEqual(key.decrypt_oaep(public.encrypt_oaep(longest)), longest)
        exc = self.assertRaises(ValueError, public.encrypt_oaep, longest + b"\x00")
        self.assertEqual(str(exc), "message too long")
        # SHA-512 leaves 256 − 2·64 − 2 = 126 bytes.
        self.assertEqual(len(public.encrypt_oaep(b"a" * 126, hash="sha512")), 256)
        self.assertRaises(ValueError, public.encrypt_oaep, b"a" * 127, hash="sha512")

    def test_other_hashes_round_trip(self):
        key = _shared_key()
        names = [n for n in rsa.ALLOWED_HASHES if n in hashlib.algorithms_available]
        self.assertIn("sha512_256", names)
        for name in names:
            for mgf in (None, "sha1", "sha384"):
                ciphertext = key.public_key().encrypt_oaep(b"msg", b"L", hash=name, mgf_hash=mgf)
                self.assertEqual(
                    key.decrypt_oaep(ciphertext, b"L", hash=name, mgf_hash=mgf), b"msg"
                )

    def test_refuses_weak_or_unknown_hashes(self):
        key = _shared_key()
        public = key.public_key()
        ciphertext = public.encrypt_oaep(b"x")
        for name in ("md5", "shake_128", "SHA256", "sha-256", "", None, b"sha256"):
            self.assertRaises(ValueError, public.encrypt_oaep, b"x", hash=name)
            self.assertRaises(ValueError, public.encrypt_oaep, b"x", mgf_hash=name or "md5")
            self.assertRaises(ValueError, key.decrypt_oaep, ciphertext, hash=name)

    def test_seed_must_match_hash_length(self):
        public = _shared_key().public_key()
        self.assertRaises(ValueError, public.encrypt_oaep, b"x", seed=b"\x00" * 31)
        fixed = public.encrypt_oaep(b"x", seed=b"\x01" * 32)
        self.assertEqual(fixed, public.encrypt_oaep(b"x", seed=b"\x01" * 32))

    @PROPERTY
    @given(data=st.data())
    def test_any_bit_flip_fails(self, data):
        key = _shared_key()
        label = data.draw(st.binary(max_size=16))
        ciphertext = key.public_key().encrypt_oaep(data.draw(st.binary(max_size=64)), label)
        bit = data.draw(st.integers(0, 8 * key.k - 1))
        self.assertDecryptionFails(key, _flip(ciphertext, bit), label)

    @PROPERTY
    @given(cut=st.integers(1, 256), extra=st.binary(min_size=1, max_size=8))
    def test_wrong_lengths_fail(self, cut, extra):
        key = _shared_key()
        ciphertext = key.public_key().encrypt_oaep(b"hello")
        self.assertDecryptionFails(key, ciphertext[:-cut])
        self.assertDecryptionFails(key, ciphertext + extra)
        self.assertDecryptionFails(key, extra + ciphertext)

    def test_ciphertext_not_below_n_fails(self):
        key = _shared_key()
        for c in (key.n, key.n + 1, key.n + 12345, 2 ** (8 * key.k) - 1):
            self.assertDecryptionFails(key, c.to_bytes(key.k, "big"))
        self.assertDecryptionFails(key, b"\xff" * key.k)
        self.assertDecryptionFails(key, bytes(key.k))
        self.assertDecryptionFails(key, (1).to_bytes(key.k, "big"))
        self.assertDecryptionFails(key, "not bytes")

    def test_wrong_label_or_hash_fails(self):
        key = _shared_key()
        ciphertext = key.public_key().encrypt_oaep(b"secret", b"label")
        self.assertDecryptionFails(key, ciphertext)
        self.assertDecryptionFails(key, ciphertext, b"label!")
        self.assertDecryptionFails(key, ciphertext, b"label", hash="sha384")
        self.assertDecryptionFails(key, ciphertext, b"label", mgf_hash="sha1")
        self.assertDecryptionFails(key, ciphertext, b"label", hash="sha1", mgf_hash="sha256")
        self.assertEqual(key.decrypt_oaep(ciphertext, b"label"), b"secret")

    def test_each_padding_condition_fails_alike(self):
        """Hand-built encodings that break exactly one OAEP rule each."""
        key = _shared_key()
        public = key.public_key()
        k, h_len = key.k, 32
        l_hash = hashlib.sha256(b"").digest()

        def mgf1(seed, length):
            out = b"".join(
                hashlib.sha256(seed + i.to_bytes(4, "big")).digest()
                for i in range(-(-length // h_len))
            )
            return out[:length]

        def encode(db, y=0, seed=b"\x42" * 32):
            masked_db = bytes(a ^ b for a, b in zip(db, mgf1(seed, len(db))))
            masked_seed = bytes(a ^ b for a, b in zip(seed, mgf1(masked_db, h_len)))
            em = bytes([y]) + masked_seed + masked_db
            return public._public_op(int.from_bytes(em, "big")).to_bytes(k, "big")

        ps_len = k - 2 * h_len - 2 - 5
        good = l_hash + bytes(ps_len) + b"\x01" + b"hello"
        self.assertEqual(key.decrypt_oaep(encode(good)), b"hello")
        broken = {
            "Y != 0": encode(good, y=1),
            "lHash mismatch": encode(hashlib.sha256(b"x").digest() + good[h_len:]),
            "no separator": encode(l_hash + bytes(len(good) - h_len)),
            "non-zero PS": encode(l_hash + b"\x02" + bytes(ps_len - 1) + b"\x01hello"),
            "separator 0x02": encode(l_hash + bytes(ps_len) + b"\x02hello"),
        }
        for what, ciphertext in broken.items():
            exc = self.assertRaises(rsa.DecryptionError, key.decrypt_oaep, ciphertext)
            self.assertEqual(str(exc), FAILED, what)


class OAEPPythonTests(_OAEPTests, TestCase):
    backend = "python"


class OAEPGmpy2Tests(_OAEPTests, TestCase):
    backend = "gmpy2"
    skip = NO_GMPY2


# ---------------------------------------------------------------------------
# PSS behaviour and properties
# ---------------------------------------------------------------------------


def _pss_encode(m_hash, salt, em_bits, trailer=0xBC, top_bits=0, ps_fill=0, separator=1):
    """EMSA-PSS encoding with SHA-256, written independently, with tamper knobs."""
    h_len = 32
    em_len = (em_bits + 7) // 8
    h = hashlib.sha256(bytes(8) + m_hash + salt).digest()
    ps = bytearray(em_len - len(salt) - h_len - 2)
    if ps and ps_fill:
        ps[-1] = ps_fill
    db = bytes(ps) + bytes([separator]) + salt
    mask = b"".join(hashlib.sha256(h + i.to_bytes(4, "big")).digest() for i in range(8))
    masked = bytearray(a ^ b for a, b in zip(db, mask))
    masked[0] &= 0xFF >> (8 * em_len - em_bits)
    masked[0] |= top_bits
    return int.from_bytes(bytes(masked) + h + bytes([trailer]), "big")


class _PSSTests(_BackendMixin):
    @PROPERTY
    @given(message=st.binary(max_size=512))
    def test_round_trip(self, message):
        key = _shared_key()
        signature = key.sign_pss(message)
        self.assertEqual(len(signature), key.k)
        self.assertTrue(key.public_key().verify_pss(message, signature))

    @PROPERTY
    @given(data=st.data())
    def test_any_bit_flip_is_rejected(self, data):
        key = _shared_key()
        public = key.public_key()
        message = data.draw(st.binary(min_size=1, max_size=64))
        signature = key.sign_pss(message)
        bit = data.draw(st.integers(0, 8 * key.k - 1))
        self.assertFalse(public.verify_pss(message, _flip(signature, bit)))
        bit = data.draw(st.integers(0, 8 * len(message) - 1))
        self.assertFalse(public.verify_pss(_flip(message, bit), signature))

    def test_malformed_signatures_give_false(self):
        key = _shared_key()
        public = key.public_key()
        signature = key.sign_pss(b"m")
        k = key.k
        for bad in (
            b"",
            signature[:-1],
            signature + b"\x00",
            b"\x00" + signature,
            key.n.to_bytes(k, "big"),
            (key.n + 5).to_bytes(k, "big"),
            b"\xff" * k,
            bytes(k),
            None,
            12345,
            "text",
        ):
            self.assertIs(public.verify_pss(b"m", bad), False)
        self.assertIs(public.verify_pss(b"m", bytearray(signature)), True)
        self.assertIs(public.verify_pss(b"m", memoryview(signature)), True)
        # Wrong hash, MGF hash or salt length.
        self.assertFalse(public.verify_pss(b"m", signature, hash="sha384"))
        self.assertFalse(public.verify_pss(b"m", signature, mgf_hash="sha1"))
        self.assertFalse(public.verify_pss(b"m", signature, salt_length=31))
        self.assertFalse(public.verify_pss(b"m", signature, salt_length=0))
        self.assertFalse(public.verify_pss(b"m", signature, salt_length=10_000))

    def test_encoding_rules(self):
        """Hand-built encodings, each breaking one EMSA-PSS-VERIFY rule."""
        key = _shared_key()
        public = key.public_key()
        em_bits = key.size - 1
        m_hash = hashlib.sha256(b"msg").digest()
        salt = b"\x33" * 32

        def signature_for(em):
            return key._private_op(em).to_bytes(key.k, "big")

        good = signature_for(_pss_encode(m_hash, salt, em_bits))
        self.assertTrue(public.verify_pss(b"msg", good))
        self.assertEqual(key.sign_pss(b"msg", salt=salt), good)
        for what, em in {
            "trailer": _pss_encode(m_hash, salt, em_bits, trailer=0xBD),
            "non-zero PS": _pss_encode(m_hash, salt, em_bits, ps_fill=0x01),
            "separator": _pss_encode(m_hash, salt, em_bits, separator=0x02),
        }.items():
            self.assertFalse(public.verify_pss(b"msg", signature_for(em)), what)
        # The top bit of EM set, so m ≥ 2^emBits, yet everything else valid
        # (unmasking clears that bit again, so only the explicit rule catches
        # it).  Such an EM must also be below n to be signed: about half are.
        for byte in range(256):
            other_salt = bytes([byte]) * 32
            em = _pss_encode(m_hash, other_salt, em_bits, top_bits=0x80)
            if em < key.n:
                break
        else:
            self.fail("no encoding with the top bit set below n")
        self.assertGreaterEqual(em, 2**em_bits)
        self.assertFalse(public.verify_pss(b"msg", signature_for(em)))
        # The longer salt fits inside the zero padding: the salt length is checked.
        self.assertFalse(
            public.verify_pss(b"msg", signature_for(_pss_encode(m_hash, b"\x00" + salt, em_bits)))
        )

    def test_salt_lengths_and_hashes(self):
        key = _shared_key()
        public = key.public_key()
        for salt_length in (0, 1, 20, 32, 64, 256 - 32 - 2):
            signature = key.sign_pss(b"x", salt_length=salt_length)
            self.assertTrue(public.verify_pss(b"x", signature, salt_length=salt_length))
        self.assertRaises(ValueError, key.sign_pss, b"x", salt_length=256 - 32 - 1)
        self.assertRaises(ValueError, key.sign_pss, b"x", salt_length=-1)
        self.assertRaises(ValueError, key.sign_pss, b"x", salt=b"ab", salt_length=3)
        self.assertRaises(ValueError, public.verify_pss, b"x", b"sig", hash="md5")
        self.assertRaises(ValueError, key.sign_pss, b"x", hash="md5")
        for name, mgf in (("sha1", None), ("sha512", "sha256"), ("sha3_256", None)):
            signature = key.sign_pss(b"x", hash=name, mgf_hash=mgf)
            self.assertTrue(public.verify_pss(b"x", signature, hash=name, mgf_hash=mgf))
        first, second = key.sign_pss(b"x"), key.sign_pss(b"x")
        self.assertNotEqual(first, second)  # random salt


class PSSPythonTests(_PSSTests, TestCase):
    backend = "python"


class PSSGmpy2Tests(_PSSTests, TestCase):
    backend = "gmpy2"
    skip = NO_GMPY2


# ---------------------------------------------------------------------------
# Fault check and blinding
# ---------------------------------------------------------------------------


class _FaultAndBlindingTests(_BackendMixin):
    def _copy(self, key):
        return rsa.PrivateKey(key.n, key.e, key.d, key.p, key.q)

    def test_corrupted_crt_exponent_is_caught(self):
        key = self._copy(_shared_key())
        ciphertext = key.public_key().encrypt_oaep(b"payload")
        self.assertEqual(key.decrypt_oaep(ciphertext), b"payload")
        backend = _backends.BACKENDS[self.backend]
        numbers = list(key._numbers(backend))
        numbers[4] = backend.number(int(numbers[4]) ^ 2)  # dp
        key._cache[self.backend] = tuple(numbers)
        exc = self.assertRaises(rsa.DecryptionError, key.decrypt_oaep, ciphertext)
        self.assertEqual(str(exc), FAILED)
        self.assertRaises(rsa.FaultError, key.sign_pss, b"message")

    def test_fault_in_one_crt_half_is_caught(self):
        """A glitch in the mod-p exponentiation: the output would reveal q."""
        key = self._copy(_shared_key())
        c = 0x1234567890ABCDEF
        backend = _backends.BACKENDS[self.backend]
        original = backend.powmod_secret
        injected = []

        def glitch(base, exponent, modulus):
            result = original(base, exponent, modulus)
            if modulus == key.p:
                injected.append(True)
                result = (result + 1) % modulus
            return result

        self.patch(backend, "powmod_secret", glitch)
        # Decryption would fail on the padding anyway; _private_op shows it is
        # the fault check that refuses the value, and signing shows no bad
        # signature comes out.
        self.assertIsNone(key._private_op(c))
        ciphertext = key.public_key().encrypt_oaep(b"payload")
        self.assertRaises(rsa.DecryptionError, key.decrypt_oaep, ciphertext)
        self.assertRaises(rsa.FaultError, key.sign_pss, b"message")
        self.assertEqual(len(injected), 3)

    def _fault_reducing(self, key, target):
        """From now on, reducing the input ``target`` mod p (``c % p`` in
        ``_private_op``) comes out one too high: a glitch in that one step.
        Returns the list each injected fault is appended to."""
        backend = _backends.BACKENDS[self.backend]
        key._numbers(backend)  # n, p, q... converted before the patch, untouched
        original = backend.number
        injected = []

        class FaultyReduction:
            def __init__(self, value):
                self.value = value

            def __mod__(self, modulus):
                result = self.value % modulus
                if modulus == key.p:
                    injected.append(modulus)
                    result = (result + 1) % modulus
                return result

        def number(value):
            converted = original(value)
            return FaultyReduction(converted) if value == target else converted

        self.patch(backend, "number", number)
        return injected

    def test_fault_in_reducing_the_input_is_caught(self):
        """A glitch in ``c mod p`` feeds the exponentiation mod p.  The old
        check compared mᵉ mod p with that same faulty c_p, so it passed, and
        the output — right mod q, wrong mod p — gave away q through
        gcd(mᵉ − c, n).  The check against the caller's c mod n
        refuses it."""
        key = self._copy(_shared_key())
        n, e, p, q = key.n, key.e, key.p, key.q
        c = 0x1234567890ABCDEF

        # What the fault makes of m, and why it mattered: the old check, mod
        # p and mod q with the reduced input, accepts it; it factors n; the
        # check mod n with c as given refuses it.
        faulty_c_p = (c % p + 1) % p
        m_p, m_q = pow(faulty_c_p, key.d % (p - 1), p), pow(c, key.d % (q - 1), q)
        m = m_q + (m_p - m_q) * pow(q, -1, p) % p * q
        self.assertEqual((pow(m % p, e, p), pow(m % q, e, q)), (faulty_c_p, c % q))
        self.assertEqual(math.gcd(pow(m, e, n) - c, n), q)
        self.assertNotEqual(pow(m, e, n), c)

        injected = self._fault_reducing(key, c)
        self.assertIsNone(key._private_op(c))
        self.assertEqual(injected, [p])

    def test_fault_in_reducing_the_input_never_signs(self):
        """The same glitch while signing: FaultError, where the old code
        returned a signature s with gcd(s − s_good, n) = q."""
        key = self._copy(_shared_key())
        salt = b"\x5a" * 32
        good = key.sign_pss(b"message", salt=salt)
        em = pow(int.from_bytes(good, "big"), key.e, key.n)
        injected = self._fault_reducing(key, em)
        try:
            bad = key.sign_pss(b"message", salt=salt)
        except rsa.FaultError:
            pass
        else:
            factor = math.gcd(int.from_bytes(bad, "big") - int.from_bytes(good, "big"), key.n)
            self.fail(f"a faulty signature came out; gcd(s - s_good, n) is q: {factor == key.q}")
        self.assertEqual(injected, [key.p])

    def _record_blinding(self, key):
        """Record r's draws and the values the mod-p exponentiation sees;
        returns (draws, bases)."""
        backend = _backends.BACKENDS[self.backend]
        original = backend.powmod_secret
        bases, draws = [], []

        def recording(base, exponent, modulus):
            if modulus == key.p:
                bases.append(int(base))
            return original(base, exponent, modulus)

        real_randbelow = _keys._randbelow

        def recording_randbelow(bound):
            value = real_randbelow(bound)
            draws.append(value)
            return value

        self.patch(backend, "powmod_secret", recording)
        self.patch(_keys, "_randbelow", recording_randbelow)
        return draws, bases

    def test_blinding_differs_every_operation(self):
        """One r drawn, then squared: every operation still blinds with its
        own value, and the exponentiation never sees the real ciphertext."""
        key = self._copy(_shared_key())
        ciphertext = key.public_key().encrypt_oaep(b"payload")
        c = int.from_bytes(ciphertext, "big")
        draws, bases = self._record_blinding(key)
        for _ in range(4):
            self.assertEqual(key.decrypt_oaep(ciphertext), b"payload")
        self.assertEqual(len(draws), 1)
        self.assertEqual(len(bases), 4)
        self.assertEqual(len(set(bases)), 4)
        self.assertNotIn(c % key.p, bases)
        # Each is the last one's pair squared: base_i = c·r^(e·2^i) mod p.
        p, e = key.p, key.e
        r_e = bases[0] * pow(c, -1, p) % p
        for i, base in enumerate(bases):
            self.assertEqual(base, c * pow(r_e, 2**i, p) % p)
        self.assertEqual(pow(r_e, 1, p), pow(draws[0] + 1, e, p))

        # Control: with r forced to 1 (1² = 1) the same assertions would
        # fail, so the test above can fail.
        bases.clear()
        self.patch(_keys, "_randbelow", lambda bound: 0)
        fresh = self._copy(key)
        fresh.decrypt_oaep(ciphertext)
        fresh.decrypt_oaep(ciphertext)
        self.assertEqual(bases, [c % key.p] * 2)

    def test_blinding_is_drawn_afresh_after_its_uses(self):
        key = self._copy(_shared_key())
        self.patch(_keys, "_BLINDING_USES", 3)
        draws, bases = self._record_blinding(key)
        for _ in range(7):
            signature = key.sign_pss(b"message")
        self.assertTrue(key.public_key().verify_pss(b"message", signature))
        # Operations 1, 4 and 7 draw; the others square.
        self.assertEqual(len(draws), 3)
        self.assertEqual(len(set(bases)), 7)

    def test_blinding_is_drawn_afresh_after_fork(self):
        """A forked child must not square its parent's pair: parent and
        child would then blind with the same values."""
        if not hasattr(os, "fork") or not hasattr(os, "register_at_fork"):
            raise SkipTest("needs os.fork and os.register_at_fork")
        key = self._copy(_shared_key())
        c = 0x1234567890ABCDEF
        draws, bases = self._record_blinding(key)
        key._private_op(c)
        self.assertEqual(len(draws), 1)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through the pipe
            status = 1
            try:
                os.close(read_end)
                key._private_op(c)
                os.write(write_end, b"%d %d" % (len(draws), bases[-1]))
                status = 0
            finally:
                os._exit(status)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            child_draws, child_base = map(int, pipe.read().split())
        _, status = os.waitpid(pid, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0)
        key._private_op(c)  # the parent squares its pair
        self.assertEqual(len(draws), 1)
        self.assertEqual(child_draws, 2)
        self.assertNotEqual(child_base, bases[-1])

    def test_overlapping_operations_never_share_a_pair(self):
        """An operation that starts while another runs (a second thread)
        must not blind with the pair the first one is using."""
        key = self._copy(_shared_key())
        c = 0x1234567890ABCDEF
        key._private_op(c)  # a stored pair, to be squared next
        _, bases = self._record_blinding(key)
        backend = _backends.BACKENDS[self.backend]
        recording = backend.powmod_secret
        inner = []

        def overlapping(base, exponent, modulus):
            if not inner:
                inner.append(None)  # only once: the inner call comes back here
                inner[0] = key._private_op(c)
            return recording(base, exponent, modulus)

        self.patch(backend, "powmod_secret", overlapping)
        outer = key._private_op(c)
        self.assertEqual(outer, inner[0])
        self.assertEqual(pow(outer, key.e, key.n), c)
        # The inner operation's base is recorded first, then the outer's.
        self.assertEqual(len(bases), 2)
        self.assertNotEqual(bases[0], bases[1])

    def test_copies_do_not_carry_the_blinding_pair(self):
        import copy
        import pickle

        key = self._copy(_shared_key())
        key._private_op(0x1234567890ABCDEF)
        for other in (pickle.loads(pickle.dumps(key)), copy.copy(key), copy.deepcopy(key)):
            self.assertEqual(
                (other.n, other.e, other.d, other.p, other.q), (key.n, key.e, key.d, key.p, key.q)
            )
            self.assertEqual(other._blinding, {})
        self.assertNotEqual(key._blinding, {})


class FaultAndBlindingPythonTests(_FaultAndBlindingTests, TestCase):
    backend = "python"


class FaultAndBlindingGmpy2Tests(_FaultAndBlindingTests, TestCase):
    backend = "gmpy2"
    skip = NO_GMPY2


# ---------------------------------------------------------------------------
# Key generation
# ---------------------------------------------------------------------------


class _KeyGenerationTests(_BackendMixin):
    def assertFIPSKey(self, bits):
        key, events, secret_pows = _generated_key(self.backend, bits)
        n, e, d, p, q = key.n, key.e, key.d, key.p, key.q
        half = bits // 2
        self.assertEqual(e, 65537)
        self.assertEqual(n, p * q)
        self.assertEqual(n.bit_length(), bits)
        self.assertEqual((key.size, key.k, key.byte_size), (bits, bits // 8, bits // 8))
        for prime in (p, q):
            # √2·2^(half−1) ≤ prime < 2^half, squared to stay in integers.
            self.assertGreaterEqual(prime * prime, 2 ** (2 * half - 1))
            self.assertLess(prime, 2**half)
            self.assertEqual(test_probable_prime(prime), PROBABLY_PRIME)
            self.assertEqual(math.gcd(e, prime - 1), 1)
        self.assertGreater(abs(p - q), 2 ** (half - 100))
        lam = math.lcm(p - 1, q - 1)
        self.assertEqual(d, pow(e, -1, lam))
        self.assertGreater(d, 2**half)
        key.validate()
        # The random-base Miller–Rabin rounds of FIPS 186-5 Table B.1 ran on
        # both primes (composites almost never get past the base-2 screen).
        rounds = {2048: 5, 3072: 4}[bits]
        self.assertGreaterEqual(_primes.miller_rabin_rounds(bits), rounds)
        self.assertEqual(secret_pows, 2 * _primes.miller_rabin_rounds(bits))
        # Progress: candidates counted up, then p, then q, each once.
        names = [name for name, _ in events]
        self.assertEqual([x for x in names if x != "candidate"], ["p", "q"])
        self.assertEqual(names[-1], "q")
        counts = [count for name, count in events if name == "candidate"]
        self.assertEqual(counts, list(range(1, len(counts) + 1)))
        self.assertEqual(events[-1][1], counts[-1])
        # The key works under both backends.
        for backend in rsa.AVAILABLE_BACKENDS:
            with rsa._use_backend(backend):
                ciphertext = key.public_key().encrypt_oaep(b"k")
                self.assertEqual(key.decrypt_oaep(ciphertext), b"k")

    def test_fips_conditions_2048(self):
        self.assertFIPSKey(2048)

    def test_fips_conditions_3072(self):
        self.assertFIPSKey(3072)

    def test_openssl_accepts_generated_keys(self):
        openssl = openssl_path()
        for bits in (2048, 3072):
            key = _generated_key(self.backend, bits)[0]
            path = write_file(self, "key.pem", _pycryptodome_key(key).export_key("PEM"))
            result = subprocess.run(
                [openssl, "rsa", "-check", "-noout", "-in", path],
                capture_output=True,
                check=False,
            )
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertIn(b"RSA key ok", result.stdout)

    def test_progress_can_abort(self):
        class Stop(Exception):
            pass

        def progress(event, count):
            if count >= 3:
                raise Stop

        self.assertRaises(Stop, rsa.generate_private_key, 2048, progress)


class KeyGenerationPythonTests(_KeyGenerationTests, TestCase):
    backend = "python"


class KeyGenerationGmpy2Tests(_KeyGenerationTests, TestCase):
    backend = "gmpy2"
    skip = NO_GMPY2


class KeyGenerationArgumentTests(TestCase):
    def test_invalid_sizes(self):
        for bits in (
            2047,
            2049,
            2044,
            2052,
            1024,
            0,
            -3072,
            8200,
            16384,
            3072.0,
            "3072",
            True,
            None,
        ):
            exc = self.assertRaises(ValueError, rsa.generate_private_key, bits)
            self.assertIn("2048", str(exc))

    def test_progress_must_be_callable(self):
        self.assertRaises(TypeError, rsa.generate_private_key, 2048, progress="spinner")

    def test_lower_bound_is_exact(self):
        for bits in (8, 9, 64, 1024, 1536, 2048, 4096):
            bound = _primes.prime_lower_bound(bits)
            self.assertGreater(bound * bound, 2 ** (2 * bits - 1))
            self.assertLess((bound - 1) ** 2, 2 ** (2 * bits - 1))
        # Spot check against a known value: ⌈√2 · 2^7⌉ = ⌈181.02⌉ = 182.
        self.assertEqual(_primes.prime_lower_bound(8), 182)

    def test_sieve_keeps_exactly_the_candidates_without_a_small_factor(self):
        base = 2 * ((1 << 1022) | randbits(1022))  # a random even 1024-bit base
        e = rsa.PUBLIC_EXPONENT
        survivors = _primes.sieve_window(base, e, 1 << 16)
        self.assertTrue(survivors)
        self.assertEqual([j for j in survivors if j % 2 == 0], [])
        # The sieve in its plainest form, with every odd prime below the
        # bound from pycryptodome's table (not ours): a survivor has none of
        # them as a factor and is not 1 mod e, and every such candidate
        # (every prime among them) survives.
        removed = {j for j in range(0, _primes.WINDOW, 2)}
        for p in (p for p in sieve_base if 2 < p < 1 << 16):
            removed.update(range(-base % p, _primes.WINDOW, p))
        removed.update(range((1 - base) % e, _primes.WINDOW, e))
        expected = [j for j in range(_primes.WINDOW) if j not in removed]
        self.assertEqual(sorted(survivors), expected)

    def test_sieve_drops_candidates_one_mod_e(self):
        e = rsa.PUBLIC_EXPONENT
        small_primes = math.prod(_primes.odd_primes_below(1 << 16))
        # base ≡ 0 (mod e) and even, so base + 1 ≡ 1 (mod e); pick one where
        # base + 1 has no small factor, so only the e rule can remove it.
        base = 2 * e * ((1 << 998) | randbits(998))  # 2e times a random 999-bit number
        while math.gcd(base + 1, small_primes) != 1:
            base += 2 * e
        survivors = _primes.sieve_window(base, e, 1 << 16)
        self.assertNotIn(1, survivors)
        # Control: with a different e the same offset survives.
        self.assertIn(1, _primes.sieve_window(base, 65539, 1 << 16))

    def test_close_q_is_replaced(self):
        """FIPS 186-5 A.1.3 step 5.4: q too close to p is drawn again."""
        e = rsa.PUBLIC_EXPONENT

        p, close_q = _close_primes()
        far_q = _vector_primes(1024)[1]
        self.assertEqual(math.gcd(e, far_q - 1), 1)
        drawn = iter([p, close_q, far_q])
        self.patch(_primes, "generate_prime", lambda *args: next(drawn))
        key = rsa.generate_private_key(2048)
        self.assertEqual((key.p, key.q), (p, far_q))

    def test_miller_rabin_rounds_follow_fips_table(self):
        self.assertEqual(_primes.miller_rabin_rounds(2048), 5)
        self.assertEqual(_primes.miller_rabin_rounds(3072), 4)
        self.assertEqual(_primes.miller_rabin_rounds(4096), 4)

    def test_primality_check(self):
        # 149491 · 747451 · 34233211: no factor below 1000 and a strong
        # pseudoprime to every prime base up to 23, so only the random-base
        # rounds can reject it (each passes with probability ≤ 1/4).
        strong_pseudoprime = 3825123056546413051
        self.assertTrue(_primes.strong_probable_prime(strong_pseudoprime, 2, pow))
        carmichael = 41 * 61 * 101  # 252601, a Carmichael number
        p, q = _vector_primes(512)[:2]
        for backend in rsa.AVAILABLE_BACKENDS:
            be = _backends.BACKENDS[backend]
            self.assertTrue(_primes.is_probable_prime(p, 5, be))
            self.assertTrue(_primes.is_probable_prime(q, 5, be))
            self.assertFalse(_primes.is_probable_prime(p * q, 5, be))
            self.assertFalse(_primes.is_probable_prime(strong_pseudoprime, 30, be))
            self.assertFalse(_primes.is_probable_prime(carmichael, 10, be))
            self.assertTrue(_primes.is_probable_prime(997, 5, be))
            self.assertFalse(_primes.is_probable_prime(1, 5, be))


# ---------------------------------------------------------------------------
# Key objects
# ---------------------------------------------------------------------------


class KeyObjectTests(TestCase):
    def test_repr_hides_secrets(self):
        key = _shared_key()
        for text in (repr(key), repr(key.public_key()), str(key)):
            self.assertIn("2048-bit", text)
            for secret in (key.d, key.p, key.q):
                for form in (f"{secret:x}", str(secret)):
                    self.assertNotIn(form[:16], text)
            self.assertLess(len(text), 64)

    def test_public_key_equality(self):
        key = _shared_key()
        public = key.public_key()
        same = rsa.PublicKey(key.n, key.e)
        self.assertEqual(public, same)
        self.assertEqual(hash(public), hash(same))
        self.assertNotEqual(public, rsa.PublicKey(key.n, 3))
        self.assertNotEqual(public, (key.n, key.e))
        self.assertEqual(public.size, 2048)
        self.assertEqual(public.k, public.byte_size)

    def test_public_key_shape_checks(self):
        n = _shared_key().n
        for args in (
            (n + 1, 65537),
            (n, 65538),
            (n, 1),
            (n, n),
            (n, n + 2),
            (getPrime(256) * getPrime(256), 65537),
            (2**16400 + 1, 65537),
        ):
            self.assertRaises(ValueError, rsa.PublicKey, *args)
        self.assertRaises(TypeError, rsa.PublicKey, float(3), 65537)
        self.assertRaises(TypeError, rsa.PublicKey, n, True)

    def test_public_key_validate(self):
        n = _shared_key().n
        rsa.PublicKey(n, 65537).validate()
        exc = self.assertRaises(ValueError, rsa.PublicKey(3 * n, 65537).validate)
        self.assertIn("small prime factor", str(exc))
        mersenne_prime = 2**2203 - 1
        exc = self.assertRaises(ValueError, rsa.PublicKey(mersenne_prime, 65537).validate)
        self.assertIn("not composite", str(exc))
        small = _oaep_rfc_examples()[0][0]
        public = rsa.PublicKey(small["n"], small["e"])
        self.assertRaises(ValueError, public.validate)
        public.validate(min_bits=1024)

    def test_private_key_consistency_checks_hide_secrets(self):
        key = _shared_key()
        n, e, d, p, q = key.n, key.e, key.d, key.p, key.q
        cases = [
            (n, e, d, p + 2, q),  # n != p·q
            (n, e, d + 2, p, q),  # e·d ≢ 1
            (n, e, 1, p, q),
            (n, e, n + d, p, q),
            (n, e + 2, d, p, q),
            (n + 2, e, d, p, q),
        ]
        for args in cases:
            exc = self.assertRaises(ValueError, rsa.PrivateKey, *args)
            for secret in (d, p, q):
                self.assertNotIn(str(secret)[:20], str(exc))
                self.assertNotIn(f"{secret:x}"[:20], str(exc))
        self.assertRaises(TypeError, rsa.PrivateKey, n, e, str(d), p, q)

    def test_validate_rejects_composite_prime(self):
        q = _vector_primes(1024)[0]
        # A product of two 512-bit primes, as long as q, e invertible mod λ.
        halves = _vector_primes(512)
        for fake_p in (a * b for a in halves for b in halves if a < b):
            lam = math.lcm(fake_p - 1, q - 1)
            if fake_p.bit_length() == 1024 and math.gcd(65537, lam) == 1:
                break
        self.assertEqual(math.gcd(65537, lam), 1)
        key = rsa.PrivateKey(fake_p * q, 65537, pow(65537, -1, lam), fake_p, q)
        for backend in rsa.AVAILABLE_BACKENDS:
            with rsa._use_backend(backend):
                exc = self.assertRaises(ValueError, key.validate, min_bits=1024)
                self.assertIn("p is not prime", str(exc))

    def test_validate_rejects_close_primes(self):
        p, q = _close_primes()
        lam = math.lcm(p - 1, q - 1)
        key = rsa.PrivateKey(p * q, 65537, pow(65537, -1, lam), p, q)
        exc = self.assertRaises(ValueError, key.validate, min_bits=1024)
        self.assertIn("too close", str(exc))

    def test_validate_size_policy(self):
        small = _key_from(_oaep_rfc_examples()[0][0])
        self.assertRaises(ValueError, small.validate)
        small.validate(min_bits=1024)


# ---------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------


class BackendTests(TestCase):
    def test_available_and_default(self):
        self.assertIn("python", rsa.AVAILABLE_BACKENDS)
        self.assertIn(rsa.BACKEND, rsa.AVAILABLE_BACKENDS)
        if HAVE_GMPY2 and os.environ.get("KEYEXCHANGE_PURE_PYTHON") != "1":
            self.assertEqual(rsa.BACKEND, "gmpy2")

    def test_use_backend_switches_and_restores(self):
        before = rsa.BACKEND
        with rsa._use_backend("python") as backend:
            self.assertEqual(rsa.BACKEND, "python")
            self.assertIs(rsa._backend, backend)
        self.assertEqual(rsa.BACKEND, before)
        self.assertRaises(ValueError, rsa._use_backend("nonsense").__enter__)
        self.assertEqual(rsa.BACKEND, before)

    def test_environment_forces_pure_python(self):
        root = os.path.dirname(os.path.dirname(os.path.abspath(keyexchanged.__file__)))
        env = dict(os.environ, KEYEXCHANGE_PURE_PYTHON="1", PYTHONPATH=root)
        result = subprocess.run(
            [sys.executable, "-c", "from keyexchanged import rsa; print(rsa.BACKEND)"],
            env=env,
            capture_output=True,
            check=True,
        )
        self.assertEqual(result.stdout.strip(), b"python")

    def test_backends_interoperate(self):
        if not HAVE_GMPY2:
            raise SkipTest(NO_GMPY2)
        key = _shared_key()
        with rsa._use_backend("gmpy2"):
            ciphertext = key.public_key().encrypt_oaep(b"across", b"L")
            signature = key.sign_pss(b"across")
        with rsa._use_backend("python"):
            self.assertEqual(key.decrypt_oaep(ciphertext, b"L"), b"across")
            self.assertTrue(key.public_key().verify_pss(b"across", signature))


# ---------------------------------------------------------------------------
# Interoperability
# ---------------------------------------------------------------------------


class _InteropTests(_BackendMixin):
    def test_pycryptodome_oaep_both_ways(self):
        key = _shared_key()
        theirs = _pycryptodome_key(key)
        for algorithm, mgf_algorithm, name, mgf_name in (
            (SHA256, SHA256, "sha256", None),
            (SHA384, SHA1, "sha384", "sha1"),
            (SHA512, SHA256, "sha512", "sha256"),
        ):

            def mgf(seed, length, mgf_algorithm=mgf_algorithm):
                return pss.MGF1(seed, length, mgf_algorithm)

            cipher = PKCS1_OAEP.new(theirs, hashAlgo=algorithm, mgfunc=mgf, label=b"label")
            ours = key.public_key().encrypt_oaep(b"to them", b"label", name, mgf_name)
            self.assertEqual(cipher.decrypt(ours), b"to them")
            self.assertEqual(
                key.decrypt_oaep(cipher.encrypt(b"to us"), b"label", name, mgf_name), b"to us"
            )

    def test_pycryptodome_pss_both_ways(self):
        key = _shared_key()
        theirs = _pycryptodome_key(key)
        for algorithm, name in ((SHA256, "sha256"), (SHA512, "sha512")):
            ours = key.sign_pss(b"signed by us", name)
            pss.new(theirs).verify(algorithm.new(b"signed by us"), ours)
            signature = pss.new(theirs).sign(algorithm.new(b"signed by them"))
            self.assertTrue(key.public_key().verify_pss(b"signed by them", signature, name))
        # A different MGF hash and salt length, as pycryptodome spells them.
        signature = pss.new(
            theirs, mask_func=lambda s, n: pss.MGF1(s, n, SHA1), salt_bytes=20
        ).sign(SHA384.new(b"mixed"))
        self.assertTrue(
            key.public_key().verify_pss(b"mixed", signature, "sha384", "sha1", salt_length=20)
        )

    def _openssl_files(self, key):
        openssl = openssl_path()
        theirs = _pycryptodome_key(key)
        private = write_file(self, "key.pem", theirs.export_key("PEM"))
        public = write_file(self, "pub.pem", theirs.publickey().export_key("PEM"))
        return openssl, private, public

    def _command(self, *args, data=None):
        result = subprocess.run(args, input=data, capture_output=True, check=False)
        self.assertEqual(result.returncode, 0, result.stderr)
        return result.stdout

    def test_openssl_oaep_both_ways(self):
        key = _shared_key()
        openssl, private, public = self._openssl_files(key)
        label = b"kx/1 label"
        options = [
            "-pkeyopt",
            "rsa_padding_mode:oaep",
            "-pkeyopt",
            "rsa_oaep_md:sha256",
            "-pkeyopt",
            "rsa_mgf1_md:sha256",
            "-pkeyopt",
            "rsa_oaep_label:" + label.hex(),
        ]
        ours = write_file(self, "ct.bin", key.public_key().encrypt_oaep(b"to openssl", label))
        plaintext = self._command(
            openssl, "pkeyutl", "-decrypt", "-inkey", private, "-in", ours, *options
        )
        self.assertEqual(plaintext, b"to openssl")
        ciphertext = self._command(
            openssl,
            "pkeyutl",
            "-encrypt",
            "-pubin",
            "-inkey",
            public,
            *options,
            data=b"from openssl",
        )
        self.assertEqual(key.decrypt_oaep(ciphertext, label), b"from openssl")

    def test_openssl_pss_both_ways(self):
        key = _shared_key()
        openssl, private, public = self._openssl_files(key)
        message = write_file(self, "message.bin", b"signed message")
        options = ["-sha256", "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32"]
        ours = write_file(self, "ours.sig", key.sign_pss(b"signed message"))
        output = self._command(
            openssl, "dgst", *options, "-verify", public, "-signature", ours, message
        )
        self.assertIn(b"Verified OK", output)
        signature = self._command(openssl, "dgst", *options, "-sign", private, message)
        self.assertTrue(key.public_key().verify_pss(b"signed message", signature))
        self.assertFalse(key.public_key().verify_pss(b"signed messagE", signature))


class InteropPythonTests(_InteropTests, TestCase):
    backend = "python"


class InteropGmpy2Tests(_InteropTests, TestCase):
    backend = "gmpy2"
    skip = NO_GMPY2
