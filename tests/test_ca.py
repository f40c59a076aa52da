"""The operator CA and the server's certificate chain (keyexchanged.ca), and
the ``keyexchange ca`` and ``connect`` trust options (keyexchanged.cli)."""

import datetime
import os
import stat

from cryptography import x509
from twisted.trial import unittest

from keyexchanged import ca, cli, keys
from keyexchanged.trust import CertificateAuthority
from tests import certs
from tests.certs import world
from tests.fixtures import CLIENT_KEY, SERVER_KEY, CommandTestCase, openssl


class SubjectPublicKeyInfoTests(unittest.TestCase):
    def test_is_the_key_der_exactly(self):
        for certificate in (world()["root"], certs.build(SERVER_KEY, names=["a.example"])):
            spki = ca.subject_public_key_info(certificate)
            self.assertIn(spki, certificate.tbs_certificate_bytes)
        own = certs.build(SERVER_KEY, names=["a.example"])
        self.assertEqual(ca.subject_public_key_info(own), keys.public_key_to_der(SERVER_KEY))

    def test_openssl_certificate(self):
        o = world()["openssl"]
        path = o.server(world()["server_key_file"], "spki.pem", names=["a.example"])
        certificate = ca.read_certificates(path)[0]
        self.assertEqual(
            ca.subject_public_key_info(certificate), keys.public_key_to_der(SERVER_KEY)
        )


class OperatorCATests(unittest.TestCase):
    def setUp(self):
        self.dir = os.path.join(os.path.abspath(self.mktemp()), "ca")
        os.makedirs(self.dir)
        self.ca_key = world()["other_key"]

    def test_init(self):
        certificate = ca.init_ca(self.dir, self.ca_key, name="Ops CA", days=10)
        key_path = os.path.join(self.dir, ca.CA_KEY)
        self.assertEqual(stat.S_IMODE(os.stat(key_path).st_mode), 0o600)
        self.assertEqual(
            keys.fingerprint(keys.load_private_key(key_path)), keys.fingerprint(self.ca_key)
        )
        on_disk = ca.read_certificates(os.path.join(self.dir, ca.CA_CERTIFICATE))[0]
        self.assertEqual(on_disk, certificate)
        self.assertEqual(certificate.subject, certificate.issuer)
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
        self.assertTrue(constraints.critical)
        self.assertTrue(constraints.value.ca)
        self.assertTrue(
            certificate.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
        )
        life = ca.not_valid_after(certificate) - ca.not_valid_before(certificate)
        self.assertEqual(life, datetime.timedelta(days=10) + ca.CLOCK_SKEW)
        # openssl agrees it is a CA that signed itself.
        openssl("verify", "-CAfile", os.path.join(self.dir, ca.CA_CERTIFICATE),
                os.path.join(self.dir, ca.CA_CERTIFICATE))  # fmt: skip

    def test_init_never_replaces_a_ca(self):
        ca.init_ca(self.dir, self.ca_key)
        with open(os.path.join(self.dir, ca.CA_CERTIFICATE), "rb") as f:
            before = f.read()
        with self.assertRaises(ca.CertificateFileError) as caught:
            ca.init_ca(self.dir, SERVER_KEY)
        self.assertIn("not replacing a CA", str(caught.exception))
        with open(os.path.join(self.dir, ca.CA_CERTIFICATE), "rb") as f:
            self.assertEqual(f.read(), before)

    def test_issue(self):
        ca.init_ca(self.dir, self.ca_key)
        certificate = ca.issue_certificate(
            self.dir,
            SERVER_KEY.public_key(),
            names=["Srv.Example."],
            addresses=["127.0.0.1", "::1"],
        )
        self.assertEqual(ca.describe_names(certificate), "DNS:srv.example, IP:127.0.0.1, IP:::1")
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage)
        self.assertTrue(usage.critical)
        self.assertTrue(usage.value.key_encipherment)
        self.assertFalse(usage.value.digital_signature)
        self.assertFalse(
            certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        )
        self.assertEqual(
            ca.subject_public_key_info(certificate), keys.public_key_to_der(SERVER_KEY)
        )
        out = os.path.join(self.dir, "server.crt")
        ca.save_certificate(certificate, out)
        # openssl checks our certificate as a TLS server certificate would be.
        openssl("verify", "-CAfile", os.path.join(self.dir, ca.CA_CERTIFICATE),
                "-purpose", "sslserver", out)  # fmt: skip
        CertificateAuthority.from_file(os.path.join(self.dir, ca.CA_CERTIFICATE)).verify(
            "srv.example", certs.offer(SERVER_KEY, [certificate])
        )

    def test_issue_never_outlives_the_ca(self):
        ca.init_ca(self.dir, self.ca_key, days=5)
        certificate = ca.issue_certificate(self.dir, SERVER_KEY.public_key(), names=["a.example"])
        ca_certificate = ca.read_certificates(os.path.join(self.dir, ca.CA_CERTIFICATE))[0]
        self.assertEqual(ca.not_valid_after(certificate), ca.not_valid_after(ca_certificate))

    def test_issue_checks_names(self):
        ca.init_ca(self.dir, self.ca_key)
        for names, addresses in [((), ()), (("-bad-.example",), ()), (("10.0.0.1",), ()),
                                 ((), ("999.1.1.1",))]:  # fmt: skip
            with self.assertRaises(ValueError):
                ca.issue_certificate(self.dir, SERVER_KEY.public_key(), names, addresses)

    def test_issue_refuses_a_mismatched_ca(self):
        ca.init_ca(self.dir, self.ca_key)
        keys.save_private_key(CLIENT_KEY, os.path.join(self.dir, ca.CA_KEY), force=True)
        with self.assertRaises(ca.CertificateFileError) as caught:
            ca.issue_certificate(self.dir, SERVER_KEY.public_key(), names=["a.example"])
        self.assertIn("is not the certificate of ca.key", str(caught.exception))


class ServerChainTests(unittest.TestCase):
    def write(self, *certificates):
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(certs.pem(*certificates))
        return path

    def test_chain_in_order(self):
        w = world()
        leaf = certs.build(SERVER_KEY, w["inter_key"], w["inter"], names=["a.example"])
        ders, warnings = ca.load_server_chain(self.write(leaf, w["inter"]), SERVER_KEY)
        self.assertEqual(ders, [certs.der(leaf), certs.der(w["inter"])])
        self.assertEqual(warnings, [])

    def test_certificate_for_another_key_is_refused(self):
        leaf = certs.build(CLIENT_KEY, names=["a.example"])
        path = self.write(leaf)
        with self.assertRaises(ca.CertificateFileError) as caught:
            ca.load_server_chain(path, SERVER_KEY)
        message = str(caught.exception)
        self.assertIn(path, message)
        self.assertIn(keys.fingerprint(CLIENT_KEY), message)
        self.assertIn(keys.fingerprint(SERVER_KEY), message)

    def test_warns_within_30_days(self):
        soon = certs.build(SERVER_KEY, names=["a.example"], not_after=certs.now() + 10 * certs.DAY)
        _, warnings = ca.load_server_chain(self.write(soon), SERVER_KEY)
        self.assertEqual(len(warnings), 1)
        self.assertIn("expires on", warnings[0])
        self.assertIn("in 9 days", warnings[0])
        later = certs.build(SERVER_KEY, names=["a.example"], not_after=certs.now() + 31 * certs.DAY)
        self.assertEqual(ca.load_server_chain(self.write(later), SERVER_KEY)[1], [])

    def test_warns_expired_and_not_yet_valid(self):
        old = certs.build(SERVER_KEY, names=["a"], not_before=certs.now() - 9 * certs.DAY,
                          not_after=certs.now() - certs.DAY)  # fmt: skip
        self.assertIn("EXPIRED", ca.load_server_chain(self.write(old), SERVER_KEY)[1][0])
        new = certs.build(SERVER_KEY, names=["a"], not_before=certs.now() + certs.DAY)
        self.assertIn("not valid before", ca.load_server_chain(self.write(new), SERVER_KEY)[1][0])

    def test_not_a_certificate(self):
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(keys.private_key_to_pem(SERVER_KEY))
        with self.assertRaises(ca.CertificateFileError) as caught:
            ca.load_server_chain(path, SERVER_KEY)
        self.assertIn("no PEM certificate", str(caught.exception))


class CACommandTests(CommandTestCase):
    """``keyexchange ca init`` and ``issue`` in-process (key generation is
    the fast stand-in of CommandTestCase)."""

    def setUp(self):
        super().setUp()
        public = self.path("server.key.pub")
        keys.save_public_key(SERVER_KEY, public)
        self.public = public
        # The CA's key must differ from the server's: use another one.
        self.patch(
            cli.rsa, "generate_private_key", lambda bits=3072, progress=None: world()["other_key"]
        )

    def test_init_then_issue(self):
        directory = self.path("ca")
        code, out, err = self.run_main("ca", "init", directory, "--name", "Ops")
        self.assertEqual(code, 0, err)
        self.assertIn(f"--ca {directory}/ca.pem", out)
        self.assertEqual(stat.S_IMODE(os.stat(directory).st_mode), 0o700)
        code, out, err = self.run_main(
            "ca",
            "issue",
            directory,
            "--key",
            self.public,
            "--name",
            "srv.example",
            "--ip",
            "10.1.2.3",
        )
        self.assertEqual(code, 0, err)
        crt = self.path("server.crt")  # beside the key, named after it
        self.assertIn(f"Certificate: {crt}", out)
        self.assertIn("DNS:srv.example, IP:10.1.2.3", out)
        chain = certs.load_chain(crt)
        verifier = CertificateAuthority.from_file(os.path.join(directory, "ca.pem"))
        verifier.verify("10.1.2.3", certs.offer(SERVER_KEY, chain))
        # Not twice without --force.
        self.assertFails(
            ["ca", "issue", directory, "--key", self.public, "--name", "srv.example"],
            "already exists",
        )
        code, _, err = self.run_main(
            "ca", "issue", directory, "--key", self.public, "--name", "b.example", "--force"
        )
        self.assertEqual(code, 0, err)

    def test_init_refuses_an_existing_ca(self):
        directory = self.path("ca")
        self.assertEqual(self.run_main("ca", "init", directory)[0], 0)
        self.assertFails(["ca", "init", directory], "not replacing a CA")

    def test_issue_usage_errors(self):
        directory = self.path("ca")
        self.run_main("ca", "init", directory)
        for argv, fragment in [
            (["--key", self.public], "at least one --name"),
            (["--key", self.public, "--ip", "nope"], "not an IP address"),
            (["--key", self.public, "--name", "a b"], "not a host name"),
        ]:
            self.assertFails(["ca", "issue", directory, *argv], fragment, status=2)
        for days in ("0", "36601", "many"):
            self.assertBadOption(
                ["ca", "issue", directory, "--key", self.public, "--name", "a", "--days", days],
                "--days",
                "a number of days from 1 to 36600",
            )
            self.assertBadOption(
                ["ca", "init", self.path("other"), "--days", days],
                "--days",
                "a number of days from 1 to 36600",
            )
        self.assertBadOption(
            ["ca", "init", self.path("other"), "--bits", "1024"],
            "--bits",
            "from 2048 to 8192 in steps of 8",
        )

    def test_issue_without_a_ca(self):
        self.assertFails(
            ["ca", "issue", self.path("none"), "--key", self.public, "--name", "a"], "ca.key"
        )

    def test_issue_refuses_a_weak_key(self):
        directory = self.path("ca")
        self.run_main("ca", "init", directory)
        weak = self.write("weak.pub", _weak_public_pem())
        self.assertFails(
            ["ca", "issue", directory, "--key", weak, "--name", "a"], "clients would refuse"
        )


def _weak_public_pem():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class ConnectOptionTests(CommandTestCase):
    """Options of ``keyexchange connect`` refused before connecting."""

    def test_accept_new_is_for_known_hosts(self):
        self.assertFails(
            ["connect", "h", "--accept-new", "--fingerprint", "SHA256:" + "A" * 43],
            "--accept-new is for known hosts",
            status=2,
        )

    def test_trust_models_are_exclusive(self):
        code, _, err = self.run_main("connect", "h", "--ca", "x.pem", "--insecure")
        self.assertEqual(code, 2)
        self.assertIn("not allowed with", err)

    def test_missing_ca_file(self):
        missing = self.path("none.pem")
        self.assertFails(
            ["connect", "h", "--ca", missing, "--known-hosts", self.path("kh")], missing
        )

    def test_broken_known_hosts_file(self):
        path = self.write("kh", b"example.org 1\n")
        self.assertFails(["connect", "h", "--known-hosts", path], f"{path}, line 1")
