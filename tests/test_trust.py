"""Trust policies (keyexchanged.trust): pinned keys, certificate authorities,
authorized client keys.  No sockets: policies are called with the event a
client sees, and the channel is joined in memory where the wire matters."""

import io
import json
import os

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.test import iosim
from twisted.trial import unittest

from keyexchanged import ca, client, keys, knownhosts, protocol, trust
from keyexchanged.applications import MessageFactory
from keyexchanged.handshake import (
    ServerIdentity,
)
from keyexchanged.knownhosts import KnownHostsTrust
from keyexchanged.protocol import (
    PeerError,
    SecureChannelFactory,
)
from keyexchanged.trust import (
    AuthorizedKeysError,
    CertificateAuthority,
    PinnedKey,
    UntrustedKey,
    load_authorized_keys,
    parse_authorized_keys,
)
from tests import certs
from tests.certs import world
from tests.fixtures import (
    CLIENT_KEY,
    EPHEMERAL_PRIVATE,
    IDENTITY,
    SERVER_KEY,
    Collector,
    MemoryEndpoint,
    Pair,
    StaticEphemeralKeys,
    address,
    client_writes,
    data,
    frames,
    openssl_fingerprint,
    public_pem,
    server_factory,
    vector_client,
)
from tests.vectors import RAW, hexbytes

SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH
#: A CA certificate whose keyUsage also passes the keyEncipherment check.
CA_AND_SERVER_USAGE = certs.key_usage(key_encipherment=True, key_cert_sign=True, crl_sign=True)


def leaf(names=("server.example",), ips=(), key=SERVER_KEY, issuer="root", **options):
    w = world()
    return certs.build(
        key, w[issuer + "_key"], w[issuer], subject="server", names=names, ips=ips, **options
    )


def policy(*anchors, now=None):
    return CertificateAuthority(anchors or [world()["root"]], now=now)


class PinnedKeyTests(unittest.TestCase):
    def test_accepts_its_key(self):
        PinnedKey(IDENTITY.fingerprint).verify("example", certs.offer(SERVER_KEY))

    def test_refuses_another(self):
        with self.assertRaises(UntrustedKey) as caught:
            PinnedKey(IDENTITY.fingerprint).verify("example", certs.offer(CLIENT_KEY))
        self.assertIn("does not match the pinned fingerprint", str(caught.exception))

    def test_refuses_a_malformed_fingerprint(self):
        self.assertRaises(ValueError, PinnedKey, "SHA256:short")


class PolicyForTests(unittest.TestCase):
    """trust.policy_for: what the options of connect and tunnel choose."""

    def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.known_hosts = os.path.join(self.dir, "known_hosts")

    def policy(self, **options):
        return trust.policy_for(51424, known_hosts=self.known_hosts, **options)

    def test_each_choice_behind_the_revoked_keys(self):
        pinned = self.policy(fingerprint=IDENTITY.fingerprint)
        self.assertIsInstance(pinned, knownhosts.NotRevoked)
        self.assertIsInstance(pinned.policy, PinnedKey)
        anchors = os.path.join(self.dir, "ca.pem")
        with open(anchors, "wb") as f:
            f.write(certs.pem(world()["root"]))
        self.assertIsInstance(self.policy(ca_file=anchors).policy, CertificateAuthority)
        self.assertIsInstance(self.policy(insecure=True).policy, trust.Insecure)
        known = self.policy(accept_new=True)
        self.assertIsInstance(known, knownhosts.KnownHostsTrust)
        self.assertTrue(known.accept_new)

    def test_nonsense_is_a_value_error(self):
        self.assertRaises(ValueError, self.policy, fingerprint="SHA256:short")
        self.assertRaises(ValueError, self.policy, accept_new=True, insecure=True)

    def test_unusable_files_before_connecting(self):
        with open(self.known_hosts, "w") as f:
            f.write("not a line\n")
        self.assertRaises(knownhosts.KnownHostsError, self.policy, insecure=True)
        os.unlink(self.known_hosts)
        missing = os.path.join(self.dir, "missing.pem")
        self.assertRaises(ca.CertificateFileError, self.policy, ca_file=missing)


class CertificateAuthorityTests(unittest.TestCase):
    """Every accept path and every refusal of --ca."""

    def assertRefused(self, verifier, offer, fragment, server_name="server.example"):
        with self.assertRaises(UntrustedKey) as caught:
            verifier.verify(server_name, offer)
        self.assertIn(fragment, str(caught.exception))
        return caught.exception

    # -- accepted ------------------------------------------------------------------

    def test_host_name(self):
        policy().verify("server.example", certs.offer(SERVER_KEY, [leaf()]))
        policy().verify("SERVER.Example", certs.offer(SERVER_KEY, [leaf()]))

    def test_ip_address(self):
        chain = [leaf(names=(), ips=("127.0.0.1", "::1"))]
        policy().verify("127.0.0.1", certs.offer(SERVER_KEY, chain))
        policy().verify("::1", certs.offer(SERVER_KEY, chain))
        policy().verify("[::1]", certs.offer(SERVER_KEY, chain))

    def test_intermediate_from_the_chain(self):
        chain = [leaf(issuer="inter"), world()["inter"]]
        policy().verify("server.example", certs.offer(SERVER_KEY, chain))

    def test_no_key_usage_extension_is_fine(self):
        chain = [leaf(usage=None)]
        policy().verify("server.example", certs.offer(SERVER_KEY, chain))

    def test_server_certificates_by_their_extended_key_usage(self):
        """serverAuth, alone or among others, or no extendedKeyUsage at all."""
        for purposes in ([SERVER_AUTH], [CLIENT_AUTH, SERVER_AUTH], None):
            chain = [leaf(purposes=purposes)]
            policy().verify("server.example", certs.offer(SERVER_KEY, chain))

    def test_any_anchor_of_the_bundle(self):
        w = world()
        bundle = os.path.join(w["dir"], "bundle.pem")
        with open(bundle, "wb") as f:
            f.write(certs.pem(w["other_root"], w["root"]))
        verifier = CertificateAuthority.from_file(bundle)
        self.assertEqual(len(verifier.anchors), 2)
        verifier.verify("server.example", certs.offer(SERVER_KEY, [leaf()]))

    def test_openssl_made_certificates(self):
        o = world()["openssl"]
        key_file = world()["server_key_file"]
        direct = o.server(key_file, "direct.pem", names=["server.example"], ips=["127.0.0.1"])
        chained = o.server(key_file, "chained.pem", names=["server.example"], issuer="intermediate")
        verifier = CertificateAuthority.from_file(o.root)
        cases = [(direct, "server.example"), (direct, "127.0.0.1"), (chained, "server.example")]
        for path, name in cases:
            verifier.verify(name, certs.offer(SERVER_KEY, certs.load_chain(path)))
        self.assertEqual(len(certs.load_chain(chained)), 2)

    def test_keyexchange_ca_made_certificates(self):
        directory = os.path.join(self.mktemp(), "ca")
        os.makedirs(directory)
        ca.init_ca(directory, world()["other_key"])
        issued = ca.issue_certificate(
            directory, SERVER_KEY.public_key(), names=["server.example"], addresses=["10.0.0.7"]
        )
        verifier = CertificateAuthority.from_file(os.path.join(directory, ca.CA_CERTIFICATE))
        verifier.verify("server.example", certs.offer(SERVER_KEY, [issued]))
        verifier.verify("10.0.0.7", certs.offer(SERVER_KEY, [issued]))
        self.assertRefused(verifier, certs.offer(SERVER_KEY, [issued]), "10.0.0.8", "10.0.0.8")

    # -- refused -------------------------------------------------------------------

    def test_expired(self):
        old = leaf(not_before=certs.now() - 60 * certs.DAY, not_after=certs.now() - certs.DAY)
        self.assertRefused(policy(), certs.offer(SERVER_KEY, [old]), "has expired")

    def test_not_yet_valid(self):
        new = leaf(not_before=certs.now() + certs.DAY, not_after=certs.now() + 60 * certs.DAY)
        self.assertRefused(policy(), certs.offer(SERVER_KEY, [new]), "is not valid yet")

    def test_validity_is_checked_at_the_given_time(self):
        """The openssl certificates are valid 30 days: a check 31 days on
        refuses them, one a day before they began too."""
        o = world()["openssl"]
        path = o.server(world()["server_key_file"], "timed.pem", names=["server.example"])
        offer = certs.offer(SERVER_KEY, certs.load_chain(path))
        later = CertificateAuthority.from_file(o.root, now=certs.now() + 31 * certs.DAY)
        self.assertRefused(later, offer, "has expired")
        earlier = CertificateAuthority.from_file(o.root, now=certs.now() - certs.DAY)
        self.assertRefused(earlier, offer, "not valid yet")

    def test_expired_intermediate(self):
        w = world()
        inter = certs.build(
            w["inter_key"], w["root_key"], w["root"], subject="Our Intermediate", ca=True,
            usage="ca", not_after=certs.now() - certs.DAY, not_before=certs.now() - 9 * certs.DAY,
        )  # fmt: skip
        chain = [leaf(issuer="inter"), inter]
        refusal = self.assertRefused(policy(), certs.offer(SERVER_KEY, chain), "has expired")
        self.assertIn("certificate 2", str(refusal))

    def test_wrong_host_name(self):
        self.assertRefused(
            policy(),
            certs.offer(SERVER_KEY, [leaf()]),
            "does not match the host name other.example (it is for DNS:server.example)",
            server_name="other.example",
        )

    def test_ip_address_mismatch(self):
        chain = [leaf(names=("server.example",), ips=("127.0.0.1",))]
        self.assertRefused(
            policy(), certs.offer(SERVER_KEY, chain), "IP address 127.0.0.2", "127.0.0.2"
        )

    def test_a_host_name_does_not_match_an_ip_address(self):
        """A DNS name of "127.0.0.1" is not the address 127.0.0.1 (RFC 6125)."""
        chain = [leaf(names=("localhost",), ips=())]
        self.assertRefused(policy(), certs.offer(SERVER_KEY, chain), "IP address", "127.0.0.1")

    def test_no_host_name(self):
        self.assertRefused(
            policy(), certs.offer(SERVER_KEY, [leaf()]), "no host name", server_name=None
        )

    def test_unknown_ca(self):
        self.assertRefused(
            policy(world()["other_root"]),
            certs.offer(SERVER_KEY, [leaf()]),
            "does not lead to a CA in the CA file",
        )

    def test_unknown_ca_made_by_openssl(self):
        o = world()["openssl"]
        path = o.server(world()["server_key_file"], "unknown.pem", names=["server.example"])
        self.assertRefused(
            policy(), certs.offer(SERVER_KEY, certs.load_chain(path)), "does not lead to a CA"
        )

    def test_broken_chain(self):
        """The intermediate is missing from what the server sent."""
        self.assertRefused(
            policy(), certs.offer(SERVER_KEY, [leaf(issuer="inter")]), "does not lead to a CA"
        )

    def test_self_signed_leaf(self):
        own = certs.build(SERVER_KEY, subject="server", names=["server.example"])
        self.assertRefused(policy(), certs.offer(SERVER_KEY, [own]), "self-signed")

    def test_an_intermediate_is_not_an_anchor(self):
        """A self-signed root sent by the server in its chain is not trusted."""
        w = world()
        chain = [leaf(issuer="inter"), w["inter"], w["root"]]
        self.assertRefused(policy(w["other_root"]), certs.offer(SERVER_KEY, chain), "CA file")

    def test_leaf_key_is_not_hello_key(self):
        w = world()
        other = certs.build(CLIENT_KEY, w["root_key"], w["root"], names=["server.example"])
        self.assertRefused(
            policy(), certs.offer(SERVER_KEY, [other]), "the certificate's key is not the key"
        )

    def test_key_usage_without_key_encipherment(self):
        chain = [leaf(usage=certs.key_usage(digital_signature=True))]
        self.assertRefused(
            policy(), certs.offer(SERVER_KEY, chain), "keyUsage does not allow keyEncipherment"
        )

    def test_key_usage_without_key_encipherment_by_openssl(self):
        o = world()["openssl"]
        path = o.server(
            world()["server_key_file"], "signing.pem", names=["server.example"],
            usage="digitalSignature",
        )  # fmt: skip
        verifier = CertificateAuthority.from_file(o.root)
        offer = certs.offer(SERVER_KEY, certs.load_chain(path))
        self.assertRefused(verifier, offer, "keyEncipherment")

    def test_not_for_a_server(self):
        """A certificate issued for other purposes than serverAuth."""
        for purposes, named in [
            ([CLIENT_AUTH], "clientAuth"),
            ([ExtendedKeyUsageOID.CODE_SIGNING], "codeSigning"),
            ([ExtendedKeyUsageOID.EMAIL_PROTECTION], "emailProtection"),
            ([CLIENT_AUTH, ExtendedKeyUsageOID.EMAIL_PROTECTION], "clientAuth, emailProtection"),
            ([ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE], "anyExtendedKeyUsage"),
            ([x509.ObjectIdentifier("1.2.3.4")], "1.2.3.4"),
        ]:
            chain = [leaf(purposes=purposes)]
            refusal = self.assertRefused(policy(), certs.offer(SERVER_KEY, chain), "")
            self.assertEqual(
                str(refusal),
                "the server's certificate is not a server certificate: its "
                f"extendedKeyUsage allows {named}, not serverAuth",
            )
            self.assertIn(
                f"The certificate for DNS:server.example was issued for {named} only",
                refusal.explanation,
            )
            self.assertIn("serverAuth", refusal.explanation)

    def test_refusal_explanation_escapes_control_characters(self):
        """The names come from the certificate and go to a terminal."""
        chain = [leaf(names=("server.example", "x\x1b[2Jy"), purposes=[CLIENT_AUTH])]
        refusal = self.assertRefused(policy(), certs.offer(SERVER_KEY, chain), "clientAuth")
        self.assertIn("DNS:server.example, DNS:x\\x1b[2Jy was issued", refusal.explanation)
        self.assertNotIn("\x1b", refusal.explanation)

    def test_not_for_a_server_by_openssl(self):
        o = world()["openssl"]
        path = o.server(
            world()["server_key_file"], "client-only.pem", names=["server.example"],
            purposes="clientAuth",
        )  # fmt: skip
        verifier = CertificateAuthority.from_file(o.root)
        offer = certs.offer(SERVER_KEY, certs.load_chain(path))
        self.assertRefused(verifier, offer, "extendedKeyUsage allows clientAuth, not serverAuth")

    def test_a_ca_certificate_as_the_servers(self):
        """CA:TRUE on the leaf, whatever its keyUsage and extendedKeyUsage
        refused, though the chain and the name are right."""
        for usage, purposes in [(CA_AND_SERVER_USAGE, [SERVER_AUTH]), ("ca", None)]:
            chain = [leaf(ca=True, usage=usage, purposes=purposes)]
            refusal = self.assertRefused(policy(), certs.offer(SERVER_KEY, chain), "")
            self.assertEqual(
                str(refusal),
                "the server's certificate is a CA certificate (basicConstraints CA:TRUE), "
                "not a server certificate",
            )
            self.assertIn(
                "a CA certificate (for DNS:server.example) as its own", refusal.explanation
            )
            self.assertIn("CA:FALSE", refusal.explanation)

    def test_the_ca_itself_as_the_servers(self):
        """The server's key is the CA's: its certificate is in the CA file,
        so the chain checks out, and it is still no server certificate."""
        own_ca = certs.build(
            SERVER_KEY, subject="Server CA", names=["server.example"], ca=True,
            usage=CA_AND_SERVER_USAGE,
        )  # fmt: skip
        self.assertRefused(policy(own_ca), certs.offer(SERVER_KEY, [own_ca]), "is a CA certificate")

    def test_no_certificate(self):
        self.assertRefused(policy(), certs.offer(SERVER_KEY), "sent no certificate")

    def test_garbage_certificate(self):
        self.assertRefused(policy(), certs.offer(SERVER_KEY, [b"\x30\x03\x02\x01\x01"]), "not DER")

    def test_leaf_must_come_first(self):
        chain = [world()["inter"], leaf(issuer="inter")]
        self.assertRefused(policy(), certs.offer(SERVER_KEY, chain), "the certificate's key")

    def test_ca_file_errors(self):
        missing = os.path.join(self.mktemp(), "nothing.pem")
        with self.assertRaises(ca.CertificateFileError) as caught:
            CertificateAuthority.from_file(missing)
        self.assertIn(missing, str(caught.exception))
        empty = self.mktemp()
        with open(empty, "w") as f:
            f.write("not a certificate\n")
        with self.assertRaises(ca.CertificateFileError) as caught:
            CertificateAuthority.from_file(empty)
        self.assertIn("no PEM certificate", str(caught.exception))


class ThroughTheChannelTests(unittest.TestCase):
    """A refusal on the wire: ERROR untrusted-key, and never a KEY."""

    def client_bytes(self):
        sent = client_writes(self)
        return sent

    def pair_with_chain(self, chain):
        """A session whose server sends ``chain`` in HELLO; the client dials "example"."""
        identity = ServerIdentity(SERVER_KEY, chain)
        factory = SecureChannelFactory(
            MessageFactory(hexbytes("server_message")),
            identity,
            Clock(),
            ephemeral_keys=StaticEphemeralKeys(),
        )
        return Pair(trust=policy(), factory=factory, clock=factory.reactor)

    def test_certificate_in_hello_is_checked(self):
        sent = self.client_bytes()
        pair = self.pair_with_chain([certs.der(leaf(names=("other.example",)))])
        pair.flush()
        failure = self.failureResultOf(pair.handshake, protocol.HandshakeFailed)
        self.assertIsInstance(failure.value.reason.value, UntrustedKey)
        self.assertIn("host name example", str(failure.value.reason.value))
        verbs = frames(b"".join(sent))
        self.assertEqual([verb for verb, _ in verbs], ["ERROR"])
        self.assertEqual(json.loads(verbs[0][1])["error"], "untrusted-key")

    def test_certificate_accepted(self):
        pair = self.pair_with_chain([certs.der(leaf(names=("example",)))])
        pair.flush()
        self.assertTrue(pair.application.made)
        self.assertEqual(pair.application.data, hexbytes("server_message"))


class InMemoryEndpoint:
    """A client endpoint joined by iosim to ``server_factory``."""

    def __init__(self, server_factory, clock):
        self.server_factory = server_factory
        self.clock = clock
        self.pump = None

    def connect(self, factory):
        client, _, self.pump = iosim.connectedServerAndClient(
            lambda: self.server_factory.buildProtocol(address()),
            lambda: factory.buildProtocol(address("127.0.0.1", 51424)),
            clock=self.clock,
        )
        return defer.succeed(client)


class ExplainedRefusalTests(unittest.TestCase):
    """What ``keyexchange connect --ca ... --explain`` prints when the
    server's certificate is not a server certificate."""

    def connect(self, chain, trust_policy=None):
        clock = Clock()
        identity = ServerIdentity(SERVER_KEY, [certs.der(c) for c in chain])
        endpoint = InMemoryEndpoint(
            SecureChannelFactory(
                MessageFactory(b"secret"), identity, clock, ephemeral_keys=StaticEphemeralKeys()
            ),
            clock,
        )
        output, errors = io.BytesIO(), io.StringIO()
        done = client.run_connect(
            clock, "server.example", 51424, trust_policy or policy(), explain=True,
            output=output, errors=errors, endpoint=endpoint,
        )  # fmt: skip
        endpoint.pump.flush()
        self.assertEqual(self.successResultOf(done), client.EXIT_UNTRUSTED)
        self.assertEqual(output.getvalue(), b"")
        return errors.getvalue().splitlines()

    def test_client_auth_certificate(self):
        lines = self.connect([leaf(purposes=[CLIENT_AUTH])])
        self.assertIn("keyexchange: HELLO: 1 certificate(s) offered", lines)
        self.assertTrue(
            any(
                line.startswith("The certificate for DNS:server.example was issued for clientAuth")
                for line in lines
            ),
            lines,
        )
        self.assertEqual(
            lines[-1],
            "keyexchange: error: untrusted server key: the server's certificate is not a "
            "server certificate: its extendedKeyUsage allows clientAuth, not serverAuth",
        )

    def test_broken_policy(self):
        """A policy that fails in an unexpected way refuses the key (exit 3),
        and the user is told what broke, not a bare refusal."""

        class Broken:
            def verify(self, server_name, offer):
                raise OSError("the trust store went away")

        lines = self.connect([], Broken())
        self.assertEqual(
            lines[-1],
            "keyexchange: error: the trust check failed: OSError: the trust store went away",
        )
        self.flushLoggedErrors()

    def test_ca_certificate(self):
        lines = self.connect([leaf(ca=True, usage=CA_AND_SERVER_USAGE)])
        self.assertTrue(
            any(
                line.startswith("The server presents a CA certificate (for DNS:server.example)")
                for line in lines
            ),
            lines,
        )
        self.assertEqual(
            lines[-1],
            "keyexchange: error: untrusted server key: the server's certificate is a CA "
            "certificate (basicConstraints CA:TRUE), not a server certificate",
        )


class AuthorizedKeysTests(unittest.TestCase):
    def test_fingerprints_pem_and_comments(self):
        pem = public_pem(CLIENT_KEY)
        text = (
            "# who may log in\n"
            f"{IDENTITY.fingerprint}   # the server's own key, why not\n"
            "\n"
            f"  {pem.strip()}\n"
            "   # indented comment\n"
        )
        self.assertEqual(
            parse_authorized_keys(text), {IDENTITY.fingerprint, RAW["client_fingerprint"]}
        )

    def test_pkcs1_public_key(self):
        pkcs1 = data("keys_openssl_pkcs1_public.pem").decode()
        self.assertIn("BEGIN RSA PUBLIC KEY", pkcs1)
        self.assertEqual(parse_authorized_keys(pkcs1), {openssl_fingerprint()})

    def test_errors_name_the_line(self):
        for text, line, fragment in [
            ("# ok\nSHA256:nope\n", 2, "not a key fingerprint"),
            (f"{IDENTITY.fingerprint} trailing words\n", 1, "a # comment"),
            ("\n\n-----BEGIN PUBLIC KEY-----\nAAAA\n", 3, "no -----END PUBLIC KEY-----"),
            ("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", 1, "not an RSA key"),
            ("ssh-rsa AAAAB3Nza user@host\n", 1, "fingerprint"),
        ]:
            with self.assertRaises(AuthorizedKeysError) as caught:
                parse_authorized_keys(text, "keys.txt")
            self.assertIn(f"keys.txt, line {line}: ", str(caught.exception))
            self.assertIn(fragment, str(caught.exception))

    def test_empty_file_authorizes_nobody(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("# nobody yet\n")
        self.assertEqual(load_authorized_keys(path), frozenset())

    def test_missing_file(self):
        path = self.mktemp()
        with self.assertRaises(AuthorizedKeysError) as caught:
            load_authorized_keys(path)
        self.assertIn(path, str(caught.exception))


class ClientAuthenticationTests(unittest.TestCase):
    """AUTH through the channel, with an authorized-keys file read from disk."""

    def authorized(self, *entries):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("\n".join(entries) + "\n")
        return load_authorized_keys(path)

    def pair(self, identity, authorized):
        seen = []

        class Recorder(Collector):
            def connectionMade(self):
                seen.append((self.transport.peer_fingerprint, self.peer_fingerprint))
                self.transport.write(b"hello")
                self.transport.loseConnection()

        pair = Pair(
            app=Factory.forProtocol(Recorder),
            identity=identity,
            server_options={"authorized_keys": authorized},
        )
        pair.flush()
        return pair, seen

    def test_authorized_key(self):
        pair, seen = self.pair(CLIENT_KEY, self.authorized(RAW["client_fingerprint"]))
        self.assertEqual(pair.application.data, b"hello")
        self.assertEqual(seen, [(RAW["client_fingerprint"], RAW["client_fingerprint"])])

    def test_auth_missing(self):
        pair, seen = self.pair(None, self.authorized(RAW["client_fingerprint"]))
        failure = self.failureResultOf(pair.handshake, protocol.HandshakeFailed)
        self.assertEqual(failure.value.reason.value.code, "auth-required")
        self.assertEqual(seen, [])

    def test_unauthorized_key(self):
        pair, seen = self.pair(CLIENT_KEY, self.authorized(IDENTITY.fingerprint))
        failure = self.failureResultOf(pair.handshake, protocol.HandshakeFailed)
        self.assertEqual(failure.value.reason.value.code, "auth-failed")
        self.assertIn("not authorized", failure.value.reason.value.detail)
        self.assertEqual(seen, [])

    def test_bad_signature(self):
        original = type(CLIENT_KEY).sign_pss

        def corrupt(key, message, **options):
            signature = bytearray(original(key, message, **options))
            signature[-1] ^= 1
            return bytes(signature)

        self.patch(type(CLIENT_KEY), "sign_pss", corrupt)
        pair, seen = self.pair(CLIENT_KEY, self.authorized(RAW["client_fingerprint"]))
        failure = self.failureResultOf(pair.handshake, protocol.HandshakeFailed)
        self.assertEqual(failure.value.reason.value.code, "auth-failed")
        self.assertEqual(failure.value.reason.value.detail, "bad AUTH signature")
        self.assertEqual(seen, [])


class AuthVectorTests(unittest.TestCase):
    """The AUTH record of the vector file, from a key file read as
    ``keyexchange connect --identity FILE`` reads it."""

    def test_identity_file_reproduces_the_vector_auth(self):
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(RAW["client_private_key_pem"].encode())
        os.chmod(path, 0o600)
        identity = keys.load_private_key(path)
        self.assertEqual(keys.fingerprint(identity), RAW["client_fingerprint"])
        client = vector_client(identity=identity)
        client.receive_data(hexbytes("hello_frame"))
        client.accept_key()
        self.assertEqual(client.auth_plaintext(), hexbytes("auth_plaintext"))
        sent = frames(client.data_to_send())
        self.assertEqual(sent[1], ("AUTH", bytes.fromhex(RAW["records"]["client_auth_seq0"])))


SERVER_FP = IDENTITY.fingerprint


#: Some other key's fingerprint: what a pin or a known-hosts line expects.
OTHER_FP = keys.fingerprint(EPHEMERAL_PRIVATE.public_key())


#: All a refused server learns.
GENERIC_REFUSAL = {"error": "untrusted-key", "detail": "the client does not trust this key"}


class TrustRefusalTests(unittest.TestCase):
    """A trust refusal tells the server only that we refused: what a
    refused server receives, and what the user reads."""

    def setUp(self):
        self.known_hosts = os.path.join(os.path.abspath(self.mktemp()), "known_hosts")
        os.makedirs(os.path.dirname(self.known_hosts))

    def write_known_hosts(self, text):
        with open(self.known_hosts, "w") as f:
            f.write(text)

    def refused_on_the_wire(self, policy):
        """The one frame the client sent, decoded, and what the server made of it."""
        sent = client_writes(self)
        pair = Pair(trust=policy)
        pair.flush()
        failure = self.failureResultOf(pair.handshake, protocol.HandshakeFailed)
        ((verb, payload),) = frames(b"".join(sent))
        self.assertEqual(verb, "ERROR")
        peer = pair.server._reason.value
        self.assertIsInstance(peer, PeerError)
        return json.loads(payload), (peer.code, peer.detail), failure.value.reason.value

    def connect(self, policy):
        clock = Clock()
        factory = server_factory(clock=clock)
        endpoint = MemoryEndpoint(factory, clock)
        output, errors = io.BytesIO(), io.StringIO()
        done = client.run_connect(
            clock, "server.example", 51424, policy,
            output=output, errors=errors, endpoint=endpoint,
        )  # fmt: skip
        endpoint.pump.flush()
        self.assertEqual(self.successResultOf(done), client.EXIT_UNTRUSTED)
        self.assertEqual(output.getvalue(), b"")
        server_saw = endpoint.server._reason.value
        self.assertEqual((server_saw.code, server_saw.detail), tuple(GENERIC_REFUSAL.values()))
        return errors.getvalue()

    def test_pinned_fingerprint_mismatch(self):
        sent, server_saw, reason = self.refused_on_the_wire(PinnedKey(OTHER_FP))
        self.assertEqual(sent, GENERIC_REFUSAL)
        self.assertEqual(server_saw, tuple(GENERIC_REFUSAL.values()))
        # The full story stays here.
        self.assertIsInstance(reason, UntrustedKey)
        self.assertEqual(
            str(reason),
            f"the server's key {SERVER_FP} does not match the pinned fingerprint {OTHER_FP}",
        )
        self.assertEqual(
            self.connect(PinnedKey(OTHER_FP)),
            f"keyexchange: error: untrusted server key: the server's key {SERVER_FP} does "
            f"not match the pinned fingerprint {OTHER_FP}\n",
        )

    def test_known_hosts_changed_key(self):
        self.write_known_hosts(
            f"# mine\nexample:51424 {OTHER_FP}\nserver.example:51424 {OTHER_FP}\n"
        )
        policy = KnownHostsTrust(self.known_hosts, 51424, report=self.fail)
        sent, server_saw, reason = self.refused_on_the_wire(policy)
        self.assertEqual(sent, GENERIC_REFUSAL)
        self.assertEqual(server_saw, tuple(GENERIC_REFUSAL.values()))
        self.assertIn("line 2", str(reason))
        stderr = self.connect(policy)
        lines = stderr.splitlines()
        self.assertEqual(
            lines[-1],
            f"keyexchange: error: untrusted server key: the key of server.example:51424 has "
            f"changed: {SERVER_FP} is not the known {OTHER_FP} (known hosts, line 3)",
        )
        explanation = "\n".join(lines[:-1])
        self.assertIn(f"{self.known_hosts}, line 3", explanation)
        self.assertIn(SERVER_FP, explanation)
        self.assertIn(OTHER_FP, explanation)

    def test_unknown_host_and_no_terminal(self):
        self.write_known_hosts("")
        policy = KnownHostsTrust(self.known_hosts, 51424, ask=None, report=self.fail)
        sent, _, reason = self.refused_on_the_wire(policy)
        self.assertEqual(sent, GENERIC_REFUSAL)
        self.assertIn("no terminal", str(reason))
        stderr = self.connect(policy)
        self.assertIn("there is no terminal to ask", stderr)
        self.assertIn(f"--fingerprint {SERVER_FP}", stderr)

    def test_a_policy_that_breaks(self):
        class Broken:
            def verify(self, server_name, offer):
                raise OSError(f"/secret/path/{offer.fingerprint} unreadable")

        sent, _, reason = self.refused_on_the_wire(Broken())
        self.assertEqual(sent, GENERIC_REFUSAL)
        self.assertIn("/secret/path/", str(reason))
