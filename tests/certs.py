"""Certificates for the trust tests, made at run time.

Two makers, so that the verifier is checked against more than our own
builder: :class:`OpenSSLCA` drives the ``openssl`` command line exactly as
docs/trust.rst tells operators to, and :func:`build` uses cryptography's
builder directly for what neither ``openssl x509`` nor ``keyexchange ca``
will make on request (certificates already expired, not valid yet, or with
the wrong keyUsage or extendedKeyUsage).
"""

import atexit
import datetime
import ipaddress
import os
import shutil
import subprocess
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa as crypto_rsa
from cryptography.x509.oid import NameOID

from keyexchanged import handshake, keys
from tests.fixtures import SERVER_KEY

UTC = datetime.timezone.utc
DAY = datetime.timedelta(days=1)


def now():
    return datetime.datetime.now(UTC)


def fast_key():
    """A fresh 2048-bit key as our PrivateKey (cryptography generates it:
    our own generator is tested elsewhere, and is slower)."""
    generated = crypto_rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = generated.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return keys.private_key_from_bytes(pem)


_crypto_keys = {}


def _crypto_private(key):
    """``key`` as cryptography's, converted once per key: loading checks
    the key (its primes too), ~35 ms each, and a key signs many
    certificates."""
    numbers = (key.n, key.e, key.d)
    if numbers not in _crypto_keys:
        pem = keys.private_key_to_pem(key)
        _crypto_keys[numbers] = serialization.load_pem_private_key(pem, None)
    return _crypto_keys[numbers]


def _crypto_public(key):
    return serialization.load_der_public_key(keys.public_key_to_der(key))


def key_usage(**allowed):
    names = [
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
        "encipher_only",
        "decipher_only",
    ]
    return x509.KeyUsage(**{name: allowed.get(name, False) for name in names})


def build(
    subject_key,
    issuer_key=None,
    issuer=None,
    subject="test",
    names=(),
    ips=(),
    not_before=None,
    not_after=None,
    ca=False,
    usage="server",
    purposes=None,
):
    """A cryptography certificate for ``subject_key`` (ours), signed by
    ``issuer_key`` under the name of ``issuer`` (a certificate), or
    self-signed.  ``usage``: "server" (keyEncipherment), "ca", None (no
    keyUsage extension) or a :class:`x509.KeyUsage`.  ``purposes``: the
    OIDs of an extendedKeyUsage extension, or None for none."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name = issuer.subject if issuer is not None else name
    signer = _crypto_private(issuer_key if issuer_key is not None else subject_key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(_crypto_public(subject_key))
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now() - DAY)
        .not_valid_after(not_after or now() + 90 * DAY)
        .add_extension(
            x509.BasicConstraints(ca=ca, path_length=None if not ca else 1), critical=True
        )
    )
    if usage == "server":
        usage = key_usage(key_encipherment=True)
    elif usage == "ca":
        usage = key_usage(key_cert_sign=True, crl_sign=True)
    if usage is not None:
        builder = builder.add_extension(usage, critical=True)
    if purposes is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(purposes), critical=False)
    alt = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
    if alt:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    return builder.sign(signer, hashes.SHA256())


def der(certificate):
    return certificate.public_bytes(serialization.Encoding.DER)


def pem(*certificates):
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def offer(server_key, chain=()):
    """The ServerKeyReceived event a client sees for ``server_key`` and a
    chain of certificates (cryptography objects or DER bytes)."""
    public = server_key.public_key()
    spki = keys.public_key_to_der(public)
    ders = [c if isinstance(c, bytes) else der(c) for c in chain]
    return handshake.ServerKeyReceived(public, spki, keys.fingerprint(spki), ders)


def openssl(*args, cwd):
    result = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, check=False, timeout=120
    )
    if result.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed: {result.stderr.decode()}")
    return result.stdout


class OpenSSLCA:
    """A root CA and an intermediate CA made with the openssl command, and
    server certificates they sign: the commands of docs/trust.rst."""

    def __init__(self, directory, name="Test Root"):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self._serial = 1
        openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes",
            "-keyout", "root.key", "-out", "root.pem", "-days", "30",
            "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=directory,
        )  # fmt: skip
        self.root = self.path("root.pem")
        openssl(
            "req", "-new", "-newkey", "rsa:2048", "-nodes",
            "-keyout", "intermediate.key", "-out", "intermediate.csr",
            "-subj", f"/CN={name} Intermediate",
            cwd=directory,
        )  # fmt: skip
        self._write(
            "intermediate.ext",
            "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n",
        )
        self._sign("intermediate.csr", "root", "intermediate.ext", "intermediate.pem")
        self.intermediate = self.path("intermediate.pem")

    def path(self, name):
        return os.path.join(self.dir, name)

    def _write(self, name, text):
        with open(self.path(name), "w") as f:
            f.write(text)

    def _sign(self, csr, issuer, extensions, out, days="30"):
        self._serial += 1
        openssl(
            "x509", "-req", "-in", csr, "-CA", f"{issuer}.pem", "-CAkey", f"{issuer}.key",
            "-set_serial", str(self._serial), "-days", days, "-sha256",
            "-extfile", extensions, "-out", out,
            cwd=self.dir,
        )  # fmt: skip

    def server(
        self,
        key_path,
        out,
        names=(),
        ips=(),
        issuer="root",
        usage="keyEncipherment",
        purposes="serverAuth",
    ):
        """Sign a certificate for the key in ``key_path``; return its path.
        With ``issuer="intermediate"`` the file holds the leaf, then the
        intermediate, as the daemon's --certificate wants.  ``purposes`` is
        openssl's extendedKeyUsage value, or None for no such extension."""
        subject = names[0] if names else ips[0]
        openssl(
            "req", "-new", "-key", os.path.abspath(key_path), "-out", out + ".csr",
            "-subj", f"/CN={subject}",
            cwd=self.dir,
        )  # fmt: skip
        alt = ",".join([f"DNS:{n}" for n in names] + [f"IP:{a}" for a in ips])
        extensions = f"subjectAltName={alt}\nkeyUsage=critical,{usage}\n"
        if purposes is not None:
            extensions += f"extendedKeyUsage={purposes}\n"
        self._write(out + ".ext", extensions + "basicConstraints=CA:FALSE\n")
        self._sign(out + ".csr", issuer, out + ".ext", out)
        if issuer == "intermediate":
            with open(self.path(out), "ab") as f, open(self.intermediate, "rb") as i:
                f.write(i.read())
        return self.path(out)


def load_chain(path):
    """The DER certificates of a PEM file, in order."""
    with open(path, "rb") as f:
        return [der(c) for c in x509.load_pem_x509_certificates(f.read())]


def save_key(key, path):
    keys.save_private_key(key, path)
    return path


#: How each of the shared CAs and keys is made, from the others.
_WORLD_MAKERS = {
    "root_key": lambda w: fast_key(),
    "root": lambda w: build(w["root_key"], subject="Our Root", ca=True, usage="ca"),
    "inter_key": lambda w: fast_key(),
    "inter": lambda w: build(
        w["inter_key"], w["root_key"], w["root"], subject="Our Intermediate", ca=True, usage="ca"
    ),
    "other_key": lambda w: fast_key(),
    "other_root": lambda w: build(w["other_key"], subject="Other Root", ca=True, usage="ca"),
    "openssl": lambda w: OpenSSLCA(os.path.join(w["dir"], "openssl")),
    "server_key_file": lambda w: save_key(SERVER_KEY, os.path.join(w["dir"], "server.key")),
}


class _World(dict):
    """The shared CAs and keys by name, each made on first use: the openssl
    CA (three openssl runs, each generating a key) only for the tests that
    ask for it."""

    def __missing__(self, name):
        value = self[name] = _WORLD_MAKERS[name](self)
        return value


_world = None


def world():
    """CAs and keys shared by the tests of one process: made once, since
    each openssl run costs a key generation, and only when first asked for."""
    global _world
    if _world is None:
        directory = tempfile.mkdtemp(prefix="keyexchange-trust-test-")
        atexit.register(shutil.rmtree, directory, True)
        _world = _World(dir=directory)
    return _world
