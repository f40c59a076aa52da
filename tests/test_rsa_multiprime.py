"""Tests for keyexchanged.rsa's multi-prime keys (rsa/_multiprime.py).

As in test_rsa, the classes that compute come in one flavour per big-integer
backend.  Keys are made once per backend and size per test process.
"""

import math
import os
import pickle
import subprocess
import sys

from Crypto.Cipher import PKCS1_OAEP
from Crypto.Hash import SHA256
from Crypto.PublicKey import RSA
from twisted.trial.unittest import SkipTest, TestCase

from keyexchanged import rsa
from keyexchanged.rsa import _backends, _keys, _multiprime, _primes
from tests.fixtures import openssl_path, write_file

HAVE_GMPY2 = "gmpy2" in rsa.AVAILABLE_BACKENDS
NO_GMPY2 = None if HAVE_GMPY2 else "gmpy2 is not installed"
FAILED = "decryption failed"

_made = {}


def _key(backend, bits=3072):
    """One three-prime key per (backend, size), made with that backend."""
    if (backend, bits) not in _made:
        with rsa._use_backend(backend):
            _made[backend, bits] = rsa.generate_multi_prime_key(bits)
    return _made[backend, bits]


def _copy(key):
    """The same numbers without the original's caches and blinding pair."""
    return rsa.MultiPrimePrivateKey(key.n, key.e, key.d, key.primes)


def _run(test, *args, data=None, ok=True):
    result = subprocess.run(args, input=data, capture_output=True, check=False)
    if ok:
        test.assertEqual(result.returncode, 0, result.stderr)
    return result


class _BackendMixin:
    backend = None

    def setUp(self):
        context = rsa._use_backend(self.backend)
        context.__enter__()
        self.addCleanup(context.__exit__, None, None, None)

    def key(self):
        # The Python backend makes its own keys at 2048 bits (faster tests).
        return _copy(_key(self.backend, 3072 if self.backend == "gmpy2" else 2048))


# ---------------------------------------------------------------------------
# Generation and the shape of a key
# ---------------------------------------------------------------------------


class _GenerationTests(_BackendMixin):
    def test_three_primes_of_a_third_each(self):
        key = self.key()
        self.assertEqual(len(key.primes), 3)
        self.assertEqual(key.n.bit_length(), key.size)
        self.assertEqual(math.prod(key.primes), key.n)
        sizes = [r.bit_length() for r in key.primes]
        self.assertEqual(sizes, list(_multiprime.prime_sizes(key.size, 3)))
        for r in key.primes:
            self.assertGreaterEqual(r, _primes.prime_lower_bound(r.bit_length(), 3))
            self.assertEqual(math.gcd(r - 1, key.e), 1)
            self.assertTrue(_primes.is_probable_prime(r, 10, _backends.BACKENDS[self.backend]))
        self.assertGreater(key.d, 1 << (key.size // 2))
        key.validate()

    def test_round_trips(self):
        key = self.key()
        public = key.public_key()
        for message, label in ((b"", b""), (b"\x00" * 32, b"kx/1"), (os.urandom(64), b"x" * 200)):
            self.assertEqual(key.decrypt_oaep(public.encrypt_oaep(message, label), label), message)
        signature = key.sign_pss(b"signed")
        self.assertTrue(public.verify_pss(b"signed", signature))
        self.assertFalse(public.verify_pss(b"signeD", signature))
        # Raw operation both ways, and a corrupted ciphertext fails alike.
        c = 0x1234567890ABCDEF
        self.assertEqual(pow(key._private_op(c), key.e, key.n), c)
        ciphertext = bytearray(public.encrypt_oaep(b"payload"))
        ciphertext[5] ^= 1
        exc = self.assertRaises(rsa.DecryptionError, key.decrypt_oaep, bytes(ciphertext))
        self.assertEqual(str(exc), FAILED)

    def test_copies_carry_the_numbers_but_not_the_blinding(self):
        key = self.key()
        key._private_op(0x1234567890ABCDEF)
        other = pickle.loads(pickle.dumps(key))
        self.assertIs(type(other), rsa.MultiPrimePrivateKey)
        self.assertEqual((other.n, other.d, other.primes), (key.n, key.d, key.primes))
        self.assertEqual(other._blinding, {})
        self.assertNotEqual(key._blinding, {})


class GenerationPythonTests(_GenerationTests, TestCase):
    backend = "python"


class GenerationGmpy2Tests(_GenerationTests, TestCase):
    backend = "gmpy2"
    skip = NO_GMPY2


class RulesTests(TestCase):
    def test_prime_count_is_openssls_cap(self):
        self.assertEqual(
            [rsa.multi_prime_count(b) for b in (1023, 1024, 2048, 3072, 4095, 4096, 8191, 8192)],
            [2, 3, 3, 3, 3, 4, 4, 5],
        )

    def test_prime_sizes_add_up(self):
        self.assertEqual(_multiprime.prime_sizes(3072, 3), (1024, 1024, 1024))
        self.assertEqual(_multiprime.prime_sizes(2048, 3), (683, 683, 682))
        self.assertEqual(_multiprime.prime_sizes(2056, 3), (686, 685, 685))

    def test_lower_bound_makes_the_product_full_size(self):
        """At the bound, three primes multiply to exactly the modulus size;
        one below it, they may not."""
        for bits in (682, 683, 1024):
            bound = _primes.prime_lower_bound(bits, 3)
            self.assertGreaterEqual(bound**3, 1 << (3 * bits - 1))
            self.assertLess((bound - 1) ** 3, 1 << (3 * bits - 1))
        self.assertEqual(_primes.prime_lower_bound(8, 2), 182)  # √2·2⁷ = 181.02

    def test_integer_root(self):
        for x in (0, 1, 7, 8, 9, 26, 27, 28, 10**30, (1 << 3071) + 12345):
            for k in (2, 3, 4, 5):
                root = _primes.integer_root(x, k)
                self.assertLessEqual(root**k, x)
                self.assertGreater((root + 1) ** k, x)

    def test_sizes_and_counts_refused(self):
        for bits in (1024, 2047, 2052, 8200, 3072.0, "3072"):
            self.assertRaises(ValueError, rsa.generate_multi_prime_key, bits)
        # Above the cap (and two primes, which is generate_private_key's job).
        self.assertRaises(ValueError, rsa.generate_multi_prime_key, 3072, 4)
        self.assertRaises(ValueError, rsa.generate_multi_prime_key, 3072, 2)

    def test_four_primes_at_4096(self):
        if not HAVE_GMPY2:
            raise SkipTest(NO_GMPY2)
        with rsa._use_backend("gmpy2"):
            key = rsa.generate_multi_prime_key(4096)
            self.assertEqual([r.bit_length() for r in key.primes], [1024] * 4)
            self.assertEqual(key.n.bit_length(), 4096)
            key.validate()
            self.assertEqual(key.decrypt_oaep(key.public_key().encrypt_oaep(b"four")), b"four")


# ---------------------------------------------------------------------------
# RFC 8017 §3.2: the numbers fit together
# ---------------------------------------------------------------------------


class ConsistencyTests(TestCase):
    def setUp(self):
        self.key = _copy(_key("gmpy2" if HAVE_GMPY2 else "python", 3072 if HAVE_GMPY2 else 2048))

    def test_every_exponent_and_coefficient(self):
        """RFC 8017 §3.2: e·dᵢ ≡ 1 (mod rᵢ − 1) for every prime, r₂·qInv ≡ 1
        (mod r₁), and (r₁·…·rᵢ₋₁)·tᵢ ≡ 1 (mod rᵢ) from the third prime on;
        and what the operation uses (``_numbers``) is the same."""
        key = self.key
        values = key.crt_values()
        self.assertEqual([r for r, _, _ in values], list(key.primes))
        lam = math.lcm(*(r - 1 for r in key.primes))
        self.assertEqual(key.e * key.d % lam, 1)
        for r, d_i, _ in values:
            self.assertEqual(d_i, key.d % (r - 1))
            self.assertEqual(key.e * d_i % (r - 1), 1)
        (p, _, _), (q, _, q_inv), *others = values
        self.assertEqual(q * q_inv % p, 1)
        self.assertTrue(0 < q_inv < p)
        product = p * q
        for r, _, t in others:
            self.assertEqual(product * t % r, 1)
            self.assertTrue(0 < t < r)
            product *= r
        for name in rsa.AVAILABLE_BACKENDS:
            numbers = key._numbers(_backends.BACKENDS[name])
            _, _, _, exponents, qinv, rest, _ = numbers
            self.assertEqual([int(x) for x in exponents], [d for _, d, _ in values])
            self.assertEqual(int(qinv), q_inv)
            self.assertEqual(
                [(int(r), int(prod), int(t)) for r, prod, t in rest],
                [(r, p * q, t) for r, _, t in others[:1]]
                + [(r, p * q * others[0][0], t) for r, _, t in others[1:]],
            )

    def test_inconsistent_keys_refused(self):
        key = self.key
        n, e, d, primes = key.n, key.e, key.d, key.primes
        cases = [
            (n + 2, e, d, primes),  # n is not the product
            (n, e, d + 2, primes),  # e·d ≢ 1
            (n, e, 1, primes),  # d out of range
            (n, e, d, primes[:2]),  # two primes: PrivateKey's job
            (primes[0] ** 2 * primes[1], e, d, (primes[0], primes[0], primes[1])),
        ]
        for args in cases:
            exc = self.assertRaises(ValueError, rsa.MultiPrimePrivateKey, *args)
            for prime in primes:
                self.assertNotIn(str(prime), str(exc))
        self.assertRaises(TypeError, rsa.MultiPrimePrivateKey, n, e, d, (1.0, 2, 3))

    def test_validate_refuses_a_composite_or_too_many_primes(self):
        """``validate`` (not only the constructor) refuses a composite prime
        and more primes than the size allows; the numbers are swapped in
        after construction so that only ``validate`` can see them."""
        self.key.validate()
        p, q, r = self.key.primes
        composite = _copy(self.key)
        composite.primes = (p, q, r + 2)
        exc = self.assertRaises(ValueError, composite.validate)
        self.assertEqual(str(exc), "RSA key is invalid: prime 3 is not prime")
        crowded = _copy(self.key)
        crowded.primes = (p, q, r, 7)
        exc = self.assertRaises(ValueError, crowded.validate)
        self.assertIn(f"at most {rsa.multi_prime_count(self.key.size)} primes", str(exc))

    def test_repr_hides_secrets(self):
        text = repr(self.key)
        self.assertIn("3-prime", text)
        for secret in (self.key.d, *self.key.primes):
            self.assertNotIn(f"{secret:x}"[:12], text)


# ---------------------------------------------------------------------------
# The fault check, the blinding, and no branch on a secret
# ---------------------------------------------------------------------------


class _FaultTests(_BackendMixin):
    def _glitch_in(self, index):
        """The exponentiation mod the ``index``-th prime comes out one too
        high: a fault in that one half of the CRT."""
        key = self.key()
        target = key.primes[index]
        backend = _backends.BACKENDS[self.backend]
        original = backend.powmod_secret
        injected = []

        def glitch(base, exponent, modulus):
            result = original(base, exponent, modulus)
            if modulus == target:
                injected.append(modulus)
                result = (result + 1) % modulus
            return result

        c = 0x1234567890ABCDEF
        good = key._private_op(c)
        self.patch(backend, "powmod_secret", glitch)
        # Without the check the output would give the other primes away:
        # gcd(mᵉ − c, n) is n / rᵢ.  With it, nothing comes out.
        self.assertIsNone(key._private_op(c))
        ciphertext = key.public_key().encrypt_oaep(b"payload")
        exc = self.assertRaises(rsa.DecryptionError, key.decrypt_oaep, ciphertext)
        self.assertEqual(str(exc), FAILED)
        self.assertRaises(rsa.FaultError, key.sign_pss, b"message")
        self.assertEqual(injected, [target] * 3)
        self.assertEqual(pow(good, key.e, key.n), c)

    def test_fault_in_the_first_exponentiation_is_caught(self):
        self._glitch_in(0)

    def test_fault_in_the_second_exponentiation_is_caught(self):
        self._glitch_in(1)

    def test_fault_in_the_third_exponentiation_is_caught(self):
        self._glitch_in(2)

    def test_one_secret_exponentiation_per_prime(self):
        """Each prime gets exactly one exponentiation with the backend's
        secret-exponent function (``powmod_sec`` with gmpy2), with dᵢ as
        the exponent; the only public one is the fault check mod n."""
        key = self.key()
        backend = _backends.BACKENDS[self.backend]
        secret, public = [], []
        original_secret, original_public = backend.powmod_secret, backend.powmod_public

        def recording_secret(base, exponent, modulus):
            secret.append((int(exponent), int(modulus)))
            return original_secret(base, exponent, modulus)

        def recording_public(base, exponent, modulus):
            public.append((int(exponent), int(modulus)))
            return original_public(base, exponent, modulus)

        key._private_op(5)  # a blinding pair in place: the next op only squares it
        self.patch(backend, "powmod_secret", recording_secret)
        self.patch(backend, "powmod_public", recording_public)
        self.assertIsNotNone(key._private_op(0x1234567890ABCDEF))
        self.assertEqual(secret, [(key.d % (r - 1), r) for r in key.primes])
        self.assertEqual(public, [(key.e, key.n)])
        if self.backend == "gmpy2":
            import gmpy2

            self.assertIs(original_secret, gmpy2.powmod_sec)

    def test_no_branch_depends_on_the_input(self):
        """The lines ``_private_op`` runs, in order, are the same for any
        two inputs, and for a valid and an invalid OAEP ciphertext up to
        the single exit in the padding check."""
        key = self.key()
        key._private_op(5)  # the first operation draws r; compare squarings
        code = rsa.MultiPrimePrivateKey._private_op.__code__

        def lines(c):
            trace = []

            def tracer(frame, event, arg):
                if frame.f_code is code:
                    if event == "line":
                        trace.append(frame.f_lineno)
                    return tracer
                return None

            sys.settrace(tracer)
            try:
                key._private_op(c)
            finally:
                sys.settrace(None)
            return trace

        small, large = lines(2), lines(key.n - 2)
        self.assertGreater(len(small), 5)
        self.assertEqual(small, large)
        # Control: the trace does see a different path when there is one
        # (a fault makes the check return early).
        backend = _backends.BACKENDS[self.backend]
        original = backend.powmod_public
        self.patch(backend, "powmod_public", lambda b, e, m: original(b, e, m) + 1)
        self.assertNotEqual(lines(2), small)

    def test_blinding_differs_every_operation_and_is_drawn_afresh(self):
        key = self.key()
        backend = _backends.BACKENDS[self.backend]
        original = backend.powmod_secret
        bases = {r: [] for r in key.primes}
        draws = []

        def recording(base, exponent, modulus):
            bases[int(modulus)].append(int(base))
            return original(base, exponent, modulus)

        real = _keys._randbelow

        def recording_randbelow(bound):
            draws.append(bound)
            return real(bound)

        self.patch(backend, "powmod_secret", recording)
        self.patch(_keys, "_randbelow", recording_randbelow)
        self.patch(_multiprime, "_BLINDING_USES", 3)
        c = 0x1234567890ABCDEF
        for _ in range(7):
            self.assertEqual(pow(key._private_op(c), key.e, key.n), c)
        self.assertEqual(len(draws), 3)  # operations 1, 4 and 7 draw
        for r, seen in bases.items():
            self.assertEqual(len(set(seen)), 7)
            self.assertNotIn(c % r, seen)
            # In between, each pair is the last one squared: c·r^(e·2^i).
            r_e = seen[0] * pow(c, -1, r) % r
            self.assertEqual(seen[:3], [c * pow(r_e, 2**i, r) % r for i in range(3)])
        # Control: r forced to 1 blinds with nothing, and it shows.
        self.patch(_keys, "_randbelow", lambda bound: 0)
        fresh = _copy(key)
        for seen in bases.values():
            seen.clear()
        fresh._private_op(c)
        self.assertEqual([seen[0] for seen in bases.values()], [c % r for r in key.primes])


class FaultPythonTests(_FaultTests, TestCase):
    backend = "python"


class FaultGmpy2Tests(_FaultTests, TestCase):
    backend = "gmpy2"
    skip = NO_GMPY2


# ---------------------------------------------------------------------------
# Other implementations encrypt to the public half; OpenSSL reads the export
# ---------------------------------------------------------------------------

OAEP_OPTIONS = [
    "-pkeyopt",
    "rsa_padding_mode:oaep",
    "-pkeyopt",
    "rsa_oaep_md:sha256",
    "-pkeyopt",
    "rsa_mgf1_md:sha256",
]


class _InteropTests(_BackendMixin):
    def test_pycryptodome_encrypts_to_the_public_half(self):
        key = self.key()
        cipher = PKCS1_OAEP.new(RSA.construct((key.n, key.e)), hashAlgo=SHA256, label=b"kx/1")
        for message in (b"", b"s" * 32, os.urandom(100)):
            self.assertEqual(key.decrypt_oaep(cipher.encrypt(message), b"kx/1"), message)

    def test_openssl_encrypts_to_the_public_half(self):
        openssl = openssl_path()
        key = self.key()
        public = write_file(self, "pub.pem", RSA.construct((key.n, key.e)).export_key("PEM"))
        ciphertext = _run(
            self,
            openssl,
            "pkeyutl",
            "-encrypt",
            "-pubin",
            "-inkey",
            public,
            *OAEP_OPTIONS,
            data=b"from openssl",
        ).stdout
        self.assertEqual(key.decrypt_oaep(ciphertext), b"from openssl")

    def test_openssl_reads_the_export_back(self):
        """``openssl pkey -check`` accepts the PKCS #1 export, finds three
        primes in it, and decrypts with it what we encrypted."""
        openssl = openssl_path()
        key = self.key()
        private = write_file(self, "key.pem", rsa.multi_prime_key_to_pem(key))
        checked = _run(self, openssl, "pkey", "-check", "-noout", "-in", private)
        self.assertIn(b"Key is valid", checked.stdout + checked.stderr)
        text = _run(self, openssl, "rsa", "-text", "-noout", "-in", private).stdout
        self.assertIn(b"3 primes", text)
        self.assertIn(b"coefficient3:", text)
        ours = write_file(self, "ct.bin", key.public_key().encrypt_oaep(b"to openssl"))
        plaintext = _run(
            self, openssl, "pkeyutl", "-decrypt", "-inkey", private, "-in", ours, *OAEP_OPTIONS
        ).stdout
        self.assertEqual(plaintext, b"to openssl")

    def test_openssl_refuses_a_wrong_coefficient(self):
        """Control for the test above: the same export with t₃ off by one
        fails ``openssl pkey -check``, so the check does look at it."""
        openssl = openssl_path()
        key = self.key()
        values = list(key.crt_values())
        r, d_i, t = values[2]
        self.patch(type(key), "crt_values", lambda self: (*values[:2], (r, d_i, t + 1)))
        private = write_file(self, "bad.pem", rsa.multi_prime_key_to_pem(key))
        result = _run(self, openssl, "pkey", "-check", "-noout", "-in", private, ok=False)
        self.assertNotEqual(result.returncode, 0)
        self.assertNotIn(b"Key is valid", result.stdout)

    def test_key_files_refuse_a_multi_prime_key(self):
        """A multi-prime key is never written to disk: the key-file writer
        (keys.py, PKCS #8 through pycryptodome) refuses it."""
        from keyexchanged import keys

        self.assertRaises(ValueError, keys.private_key_to_pem, self.key())

    def test_export_refuses_two_prime_keys(self):
        two = rsa.PrivateKey(*(_copy_numbers()))
        self.assertRaises(TypeError, rsa.multi_prime_key_to_pem, two)


def _copy_numbers():
    from tests.fixtures import SERVER_KEY

    return SERVER_KEY.n, SERVER_KEY.e, SERVER_KEY.d, SERVER_KEY.p, SERVER_KEY.q


class InteropPythonTests(_InteropTests, TestCase):
    backend = "python"


class InteropGmpy2Tests(_InteropTests, TestCase):
    backend = "gmpy2"
    skip = NO_GMPY2
