"""The exceptions' leaf module: one root, and imports that stay light."""

import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from keyexchanged import ca, config, errors, keys, knownhosts, tickets, trust
from keyexchanged.applications import UnknownApplication

#: What the certificate checks need, and the adapter must not load.
HEAVY = ("OpenSSL", "cryptography", "service_identity")


def modules_after_import(module):
    """The top-level packages a clean interpreter holds after ``import module``."""
    program = (
        f"import sys, {module}\n"
        "print(' '.join(sorted({name.split('.')[0] for name in sys.modules})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"import {module} failed: {result.stderr}")
    return set(result.stdout.split())


class ImportTests(SynchronousTestCase):
    def test_adapter_imports_no_certificate_code(self):
        """The adapter needs UntrustedKey, which must not import pyOpenSSL,
        cryptography and service-identity through trust."""
        for module in ("keyexchanged.protocol", "keyexchanged.handshake", "keyexchanged.errors"):
            loaded = modules_after_import(module)
            self.assertEqual(loaded & set(HEAVY), set(), module)

    def test_handshake_is_free_of_io(self):
        """The state machines import nothing of the network stack."""
        self.assertNotIn("twisted", modules_after_import("keyexchanged.handshake"))

    def test_errors_is_a_leaf(self):
        loaded = modules_after_import("keyexchanged.errors")
        self.assertNotIn("twisted", loaded)
        self.assertNotIn("Crypto", loaded)


class RootTests(SynchronousTestCase):
    def test_every_user_error_has_the_one_root(self):
        """One ``except KeyexchangedError`` in a front end catches each."""
        for error in (
            trust.UntrustedKey,
            trust.AuthorizedKeysError,
            knownhosts.KnownHostsError,
            ca.CertificateFileError,
            keys.KeyFileError,
            keys.KeyFileExistsError,
            keys.KeyFormatError,
            tickets.TicketKeyFileError,
            tickets.StaleTicket,
            config.ConfigError,
            UnknownApplication,
        ):
            self.assertTrue(issubclass(error, errors.KeyexchangedError), error)

    def test_old_bases_kept(self):
        """What callers caught before still catches them."""
        self.assertTrue(issubclass(keys.KeyFormatError, ValueError))
        self.assertTrue(issubclass(config.ConfigError, ValueError))
        self.assertTrue(issubclass(tickets.TicketKeyFileError, ValueError))
        self.assertTrue(issubclass(UnknownApplication, LookupError))

    def test_explanation(self):
        refusal = errors.UntrustedKey("short", "long\nexplanation")
        self.assertEqual((str(refusal), refusal.explanation), ("short", "long\nexplanation"))
        self.assertIsNone(errors.UntrustedKey("short").explanation)
