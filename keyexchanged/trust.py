"""Deciding whether to trust a peer's key (docs/spec/kx1.rst §7 and §8).

Client side, a trust policy has one method, ``verify(server_name, offer)``,
where ``offer`` is the :class:`~keyexchanged.handshake.ServerKeyReceived`
event.  It returns (or fires with) anything to accept the key and raises
:class:`UntrustedKey` to refuse it; refusing sends ``ERROR untrusted-key``
before KEY, so no secret is ever encrypted to a key we do not trust.

- :class:`PinnedKey`: one fingerprint;
- known hosts, trust on first use: :mod:`keyexchanged.knownhosts`;
- :class:`CertificateAuthority`: a certificate chain to a CA the user names;
- :class:`Insecure`: anything, with a warning.

Server side, :func:`load_authorized_keys` reads the client keys allowed to
authenticate with AUTH.
"""

import hmac
import ipaddress
import re

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from OpenSSL import crypto
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)

from keyexchanged import ca, files, keys, knownhosts
from keyexchanged.errors import AuthorizedKeysError, UntrustedKey
from keyexchanged.keys import check_fingerprint_syntax, same_fingerprint

__all__ = [
    "AuthorizedKeysError",
    "CertificateAuthority",
    "Insecure",
    "NoTrustAnchor",
    "PinnedKey",
    "UntrustedKey",
    "check_fingerprint_syntax",
    "load_authorized_keys",
    "parse_authorized_keys",
    "policy_for",
]


class PinnedKey:
    """Trust exactly one key, named by its fingerprint.

    :param fingerprint: ``SHA256:`` and 43 base64 characters, as
        ``keyexchange fingerprint`` and the daemon's log print it.
    :raises ValueError: for a malformed fingerprint.
    """

    def __init__(self, fingerprint):
        self.fingerprint = check_fingerprint_syntax(fingerprint)

    def verify(self, server_name, offer):
        """Accept the server's key, or refuse it.

        :param server_name: the host name or address that was dialled.
        :param offer: the server's HELLO, a
            :class:`~keyexchanged.handshake.ServerKeyReceived`.
        :raises ~keyexchanged.errors.UntrustedKey: when the key is another.
        """
        if not same_fingerprint(offer.fingerprint, self.fingerprint):
            raise UntrustedKey(
                f"the server's key {offer.fingerprint} does not match the pinned "
                f"fingerprint {self.fingerprint}"
            )


class Insecure:
    """Trust any key.  Only by an explicit choice, and never silently.

    :param warn: called with a warning (one line of text) at every check.
    """

    def __init__(self, warn):
        self.warn = warn

    def verify(self, server_name, offer):
        """Accept any key, with the warning."""
        self.warn(
            f"WARNING: not verifying the server's key ({offer.fingerprint}); anyone "
            "on the path can read this session"
        )


class NoTrustAnchor:
    """No way to check the key was given: refuse, and say how to pin it."""

    def verify(self, server_name, offer):
        raise UntrustedKey(
            f"no way to check the server's key {offer.fingerprint}; if it is right, "
            f"run again with --fingerprint {offer.fingerprint}"
        )


def policy_for(
    port,
    fingerprint=None,
    ca_file=None,
    insecure=False,
    known_hosts=None,
    accept_new=False,
    ask=None,
    report=None,
):
    """The client's trust policy for a server on ``port``, as the options of
    ``keyexchange connect`` and ``tunnel`` choose it, checked before any
    connection: the pinned ``fingerprint``, the CA certificates of
    ``ca_file``, anything (``insecure``, with a warning through
    ``report``), or by default the known hosts.  Whatever the choice, a key
    revoked in the known-hosts file is refused.

    :param port: the server's port (known hosts are ``host:port``).
    :param fingerprint: a fingerprint to pin, or ``None``.
    :param ca_file: a PEM file of CA certificates, or ``None``.
    :param insecure: trust any key.
    :param known_hosts: the known-hosts file (default:
        :func:`keyexchanged.knownhosts.default_path`).
    :param accept_new: add unknown hosts without asking.
    :param ask: puts a yes/no question to the user (see
        :class:`~keyexchanged.knownhosts.KnownHostsTrust`).
    :param report: tells the user what was done, and the ``insecure``
        warning.
    :returns: the policy, for :func:`keyexchanged.protocol.connect`.
    :raises ValueError: for a choice that makes no sense (a malformed
        fingerprint, ``accept_new`` without known hosts).
    :raises ~keyexchanged.errors.KnownHostsError: when the known-hosts file
        cannot be used.
    :raises ~keyexchanged.errors.CertificateFileError: when ``ca_file``
        cannot be used.
    """
    known_hosts = known_hosts or knownhosts.default_path()
    if accept_new and (fingerprint or ca_file or insecure):
        raise ValueError(
            "--accept-new is for known hosts; not with --fingerprint, --ca, --insecure"
        )
    # Read now for a clear error before connecting; each check reads it
    # again, as another client may have added to it meanwhile.
    knownhosts.KnownHosts.load(known_hosts)
    if fingerprint is not None:
        policy = PinnedKey(fingerprint)
    elif ca_file is not None:
        policy = CertificateAuthority.from_file(ca_file)
    elif insecure:
        policy = Insecure(report)
    else:
        return knownhosts.KnownHostsTrust(
            known_hosts, port, ask=ask, accept_new=accept_new, report=report
        )
    return knownhosts.NotRevoked(known_hosts, policy)


# --- Certificates ------------------------------------------------------------------

#: OpenSSL's verification errors that mean "no path to a CA you trust", and
#: what each means for a user of --ca (X509_V_ERR_* in x509_vfy.h).
_NOT_VALID_YET = 9
_EXPIRED = 10
_NO_PATH_TO_ANCHOR = {
    2: "an intermediate certificate is missing from the chain the server sent",
    18: "the server's certificate is self-signed and not in the CA file",
    19: "the chain ends in a self-signed certificate that is not in the CA file",
    20: "the chain does not lead to a CA in the CA file",
    21: "the chain does not lead to a CA in the CA file",
}


#: extendedKeyUsage purposes as OpenSSL names them, for the messages.
_PURPOSES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning",
    ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
    ExtendedKeyUsageOID.TIME_STAMPING: "timeStamping",
    ExtendedKeyUsageOID.OCSP_SIGNING: "OCSPSigning",
    ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE: "anyExtendedKeyUsage",
}


class CertificateAuthority:
    """Trust a key that a CA we hold vouches for (docs/spec/kx1.rst §7.3).

    The HELLO ``certificates`` chain (leaf first) must, in this order:

    1. hold a leaf whose SubjectPublicKeyInfo *is* HELLO's ``key``, byte for byte;
    2. verify with OpenSSL (pyOpenSSL's ``X509StoreContext``) up to one of
       ``anchors``, the other certificates serving as intermediates, each
       valid at the time of the check;
    3. name the host name or IP address that was dialled (RFC 6125, by
       service-identity);
    4. be a server certificate: not a CA certificate (basicConstraints
       CA:TRUE), and if it has an extendedKeyUsage extension, list serverAuth
       in it (anyExtendedKeyUsage alone is not enough, as with OpenSSL's
       server purpose);
    5. if it has a keyUsage extension, allow keyEncipherment: that is what
       KX/1 does with the key.

    Step 4 is checked here with cryptography's x509 objects: pyOpenSSL's
    ``X509Store`` has no way to set OpenSSL's verification purpose, and that
    purpose would not refuse a CA:TRUE leaf anyway.

    :param anchors: the CA certificates trusted (pyOpenSSL ``X509``).
    :param now: fixes the time of the check (tests); by default it is the
        current time.
    :raises ValueError: for no anchor.
    """

    def __init__(self, anchors, now=None):
        self.anchors = list(anchors)
        if not self.anchors:
            raise ValueError("a CertificateAuthority needs at least one CA certificate")
        self.now = now

    @classmethod
    def from_file(cls, path, now=None):
        """The policy that trusts the CA certificates of the PEM bundle
        ``path``.

        :raises ~keyexchanged.errors.CertificateFileError: when the file
            cannot be read or holds no certificate.
        """
        return cls(ca.read_certificates(path), now=now)

    def verify(self, server_name, offer):
        """Accept the server's key, or refuse it.

        :param server_name: the host name or address that was dialled.
        :param offer: the server's HELLO, a
            :class:`~keyexchanged.handshake.ServerKeyReceived`.
        :raises ~keyexchanged.errors.UntrustedKey: when the chain fails any
            of the checks above, saying which.
        """
        if not offer.certificates:
            raise UntrustedKey("the server sent no certificate, and a CA was required")
        chain = []
        for number, der in enumerate(offer.certificates, 1):
            try:
                chain.append(x509.load_der_x509_certificate(der))
            except ValueError:
                raise UntrustedKey(
                    f"certificate {number} from the server is not DER X.509"
                ) from None
        leaf = chain[0]
        self._check_key(leaf, offer)
        self._check_chain(chain)
        self._check_name(leaf, server_name)
        self._check_server_certificate(leaf)
        self._check_key_usage(leaf)

    def _check_key(self, leaf, offer):
        try:
            spki = ca.subject_public_key_info(leaf)
        except ValueError:
            spki = None
        if spki is None or not hmac.compare_digest(spki, offer.der):
            raise UntrustedKey(
                f"the certificate's key is not the key the server offered ({offer.fingerprint})"
            )

    def _check_chain(self, chain):
        store = crypto.X509Store()
        for anchor in self.anchors:
            store.add_cert(crypto.X509.from_cryptography(anchor))
        if self.now is not None:
            store.set_time(self.now)
        context = crypto.X509StoreContext(
            store,
            crypto.X509.from_cryptography(chain[0]),
            [crypto.X509.from_cryptography(c) for c in chain[1:]],
        )
        try:
            context.verify_certificate()
        except crypto.X509StoreContextError as error:
            code, depth, message = error.errors
            failed = error.certificate.to_cryptography()
            which = "the server's certificate" if depth == 0 else f"certificate {depth + 1}"
            if code == _EXPIRED:
                reason = (
                    f"{which} has expired (valid until "
                    f"{ca.not_valid_after(failed):%Y-%m-%d %H:%M} UTC)"
                )
            elif code == _NOT_VALID_YET:
                reason = (
                    f"{which} is not valid yet (valid from "
                    f"{ca.not_valid_before(failed):%Y-%m-%d %H:%M} UTC)"
                )
            elif code in _NO_PATH_TO_ANCHOR:
                reason = f"{_NO_PATH_TO_ANCHOR[code]} ({message})"
            else:
                reason = f"{which}: {message}"
            raise UntrustedKey(f"certificate chain not trusted: {reason}") from None

    def _check_name(self, leaf, server_name):
        if not server_name:
            raise UntrustedKey("no host name to check the certificate against")
        name = server_name.strip("[]")
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            address = None
        try:
            if address is not None:
                verify_certificate_ip_address(leaf, str(address))
            else:
                verify_certificate_hostname(leaf, name)
        except (VerificationError, CertificateError, ValueError):
            what = "IP address" if address is not None else "host name"
            raise UntrustedKey(
                f"the certificate does not match the {what} {name} "
                f"(it is for {ca.describe_names(leaf)})"
            ) from None

    def _check_server_certificate(self, leaf):
        # The certificate's own text, bound for a terminal: no control characters.
        names = "".join(
            c if c.isprintable() else f"\\x{ord(c):02x}" for c in ca.describe_names(leaf)
        )
        try:
            constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is not None and constraints.ca:
            raise UntrustedKey(
                "the server's certificate is a CA certificate (basicConstraints CA:TRUE), "
                "not a server certificate",
                f"The server presents a CA certificate (for {names}) as its own.\n"
                "A CA's certificate is for signing others, and a server holding a CA's\n"
                "key could make itself a certificate for any name.  The server needs a\n"
                "certificate of its own, with CA:FALSE (keyexchange ca issue makes one).",
            )
        try:
            purposes = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            return
        if ExtendedKeyUsageOID.SERVER_AUTH not in purposes:
            purposes_named = ", ".join(_PURPOSES.get(o, o.dotted_string) for o in purposes)
            raise UntrustedKey(
                f"the server's certificate is not a server certificate: its "
                f"extendedKeyUsage allows {purposes_named}, not serverAuth",
                f"The certificate for {names} was issued for {purposes_named} only.\n"
                "A server's certificate must list serverAuth in its extendedKeyUsage, or\n"
                "have no extendedKeyUsage at all.  Ask the server's operator for one\n"
                "(keyexchange ca issue makes one; openssl: extendedKeyUsage=serverAuth).",
            )

    def _check_key_usage(self, leaf):
        try:
            usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            return
        if not usage.key_encipherment:
            raise UntrustedKey(
                "the certificate's keyUsage does not allow keyEncipherment, "
                "which is what KX/1 does with the key"
            )


# --- Authorized client keys (server side) -------------------------------------------

#: Far above any real list (thousands of keys); bounds a wrong path.
MAX_AUTHORIZED_KEYS_FILE = 4 << 20

_PEM_BEGIN = re.compile(r"-----BEGIN (PUBLIC KEY|RSA PUBLIC KEY)-----")


def parse_authorized_keys(text, path="authorized keys"):
    """The fingerprints of an authorized-keys text.

    One key per entry: a fingerprint (``SHA256:...``) on its own line, or a
    PEM public key block (``PUBLIC KEY`` or ``RSA PUBLIC KEY``).  ``#``
    starts a comment, on its own line or after a fingerprint; blank lines
    are skipped.  Anything else is an error naming the line: a typo in the
    list of who may log in should not pass unnoticed.

    :param text: the content.
    :param path: what the error messages call it.
    :returns: a frozenset of fingerprints, for
        :class:`~keyexchanged.protocol.SecureChannelFactory`'s
        ``authorized_keys``.
    :raises ~keyexchanged.errors.AuthorizedKeysError: naming the line.
    """
    fingerprints = set()
    lines = text.splitlines()
    number = 0
    while number < len(lines):
        line = lines[number].strip()
        number += 1
        where = f"{path}, line {number}"
        if not line or line.startswith("#"):
            continue
        begin = _PEM_BEGIN.fullmatch(line)
        if begin:
            end = f"-----END {begin.group(1)}-----"
            first = number
            while number < len(lines) and lines[number].strip() != end:
                number += 1
            if number == len(lines):
                raise AuthorizedKeysError(f"{where}: no {end} line for this key")
            number += 1
            block = "\n".join(entry.strip() for entry in lines[first - 1 : number])
            try:
                key = keys.public_key_from_bytes(block)
            except ValueError as error:
                raise AuthorizedKeysError(f"{where}: {error}") from None
            fingerprints.add(keys.fingerprint(key))
            continue
        fields = line.split(None, 1)
        if len(fields) == 2 and not fields[1].startswith("#"):
            raise AuthorizedKeysError(
                f"{where}: expected a fingerprint, then nothing or a # comment"
            )
        try:
            fingerprints.add(check_fingerprint_syntax(fields[0]))
        except ValueError as error:
            raise AuthorizedKeysError(f"{where}: {error}") from None
    return frozenset(fingerprints)


def load_authorized_keys(path):
    """The fingerprints authorized by the file ``path``, as
    :func:`parse_authorized_keys` returns them.

    :raises ~keyexchanged.errors.AuthorizedKeysError: when the file cannot
        be read, or naming the line that is wrong.
    """
    data = files.read_file(
        path, MAX_AUTHORIZED_KEYS_FILE, AuthorizedKeysError, "too large for an authorized-keys file"
    )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise AuthorizedKeysError(f"{path}: not UTF-8 text") from None
    return parse_authorized_keys(text, path)
