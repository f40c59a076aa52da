"""System tests of trust: the real ``twistd keyexchange`` with
certificates and authorized keys, and the real ``keyexchange connect`` with
--ca, known hosts (answering its prompt through a pseudo-terminal) and
--identity, as child processes on 127.0.0.1."""

import os
import select
import subprocess
import time

from twisted.internet import defer, threads

from keyexchanged import keys
from tests import certs
from tests.certs import world
from tests.daemon import CLIENT, MESSAGE, Daemon, DaemonTestCase, environment, run_client
from tests.fixtures import CLIENT_KEY, SERVER_KEY, public_pem
from tests.vectors import RAW

SERVER_FP = RAW["server_fingerprint"]
CLIENT_FP = RAW["client_fingerprint"]

#: How long a session on the pseudo-terminal may take, start to exit.
TERMINAL_DEADLINE = 60.0


def run_on_terminal(args, answer, env):
    """Run ``keyexchange ARGS`` on a pseudo-terminal, type ``answer`` at its
    yes/no prompt; fires with ``(everything it wrote, exit code)``.

    The terminal is driven from a thread, every wait bounded, so that the
    reactor goes on serving the daemon's output meanwhile."""
    return threads.deferToThread(_terminal_session, [*CLIENT, *args], answer, env)


def _terminal_session(argv, answer, env):
    master, slave = os.openpty()
    process = subprocess.Popen(
        argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
    )
    os.close(slave)
    output = b""
    answered = False
    deadline = time.monotonic() + TERMINAL_DEADLINE
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([master], [], [], left)[0]:
                break
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child has closed the terminal
                break
            if not chunk:
                break
            output += chunk
            if not answered and b"(yes/no)? " in output:
                os.write(master, answer + b"\n")
                answered = True
    finally:
        os.close(master)
    try:
        code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        process.kill()
        code = process.wait()
    return output, code


class DaemonTrustTests(DaemonTestCase):
    def setUp(self):
        super().setUp()
        keys.save_public_key(SERVER_KEY, self.key + ".pub")
        self.client_key = os.path.join(self.dir, "client.key")
        keys.save_private_key(CLIENT_KEY, self.client_key)
        self.write_config()
        self.known_hosts = os.path.join(self.dir, "config", "keyexchange", "known_hosts")
        # The client's own files stay in the test's directory.
        self.env = environment(
            XDG_CONFIG_HOME=os.path.join(self.dir, "config"), HOME=os.path.join(self.dir, "home")
        )

    def write(self, name, content):
        path = os.path.join(self.dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb" if isinstance(content, bytes) else "w") as f:
            f.write(content)
        return path

    @defer.inlineCallbacks
    def start(self, *args):
        daemon = Daemon.start(["--config", self.conf, *args])
        self.addCleanup(daemon.stop)
        self.port = yield daemon.listening
        return daemon

    def shared(self):
        """The daemon of this config, for a test that only connects to it."""
        daemon = self.shared_daemon()
        self.port = daemon.port
        return daemon

    def connect(self, *args, host="127.0.0.1"):
        return run_client("connect", f"{host}:{self.port}", *args, env=self.env)

    # -- certificates ---------------------------------------------------------------

    @defer.inlineCallbacks
    def test_keyexchange_ca_certificate(self):
        """--ca connects, a wrong name is refused."""
        cadir = os.path.join(self.dir, "ca")
        out, err, code = yield run_client("ca", "init", cadir, "--bits", "2048", env=self.env)
        self.assertEqual(code, 0, err)
        out, err, code = yield run_client(
            "ca", "issue", cadir, "--key", self.key + ".pub", "--name", "localhost", env=self.env
        )
        self.assertEqual(code, 0, err)
        certificate = os.path.join(self.dir, "server.crt")
        self.assertIn(certificate.encode(), out)
        daemon = yield self.start("--certificate", certificate)
        self.assertIn(b"sending 1 certificate(s)", daemon.output)
        ca_pem = os.path.join(cadir, "ca.pem")

        out, err, code = yield self.connect("--ca", ca_pem, host="localhost")
        self.assertEqual((out, code), (MESSAGE, 0), err)
        out, err, code = yield self.connect("--ca", ca_pem)
        self.assertEqual((out, code), (b"", 3))
        self.assertIn(b"does not match the IP address 127.0.0.1", err)
        self.assertIn(b"it is for DNS:localhost", err)
        yield daemon.wait_for(b"ended: untrusted-key")

    @defer.inlineCallbacks
    def test_openssl_certificate_chain_from_the_config_file(self):
        # The process's openssl CAs (two openssl key generations, made once).
        o = world()["openssl"]
        made = o.server(
            self.key, "daemon-trust-chain.pem", names=["other.example"], ips=["127.0.0.1"],
            issuer="intermediate",
        )  # fmt: skip
        with open(made, "rb") as f:
            chain = self.write(os.path.join("openssl", "server-chain.pem"), f.read())
        self.write_config(f"certificate = {os.path.relpath(chain, self.dir)}\n")
        yield self.start()

        out, err, code = yield self.connect("--ca", o.root)
        self.assertEqual((out, code), (MESSAGE, 0), err)
        _, err, code = yield self.connect("--ca", o.root, host="localhost")
        self.assertEqual(code, 3)
        self.assertIn(b"does not match the host name localhost", err)
        stranger = self.write("stranger.pem", certs.pem(world()["other_root"]))
        _, err, code = yield self.connect("--ca", stranger)
        self.assertEqual(code, 3)
        self.assertIn(b"does not lead to a CA in the CA file", err)

    @defer.inlineCallbacks
    def test_certificate_for_another_key_is_refused_at_start(self):
        wrong = self.write("wrong.pem", certs.pem(certs.build(CLIENT_KEY, names=["localhost"])))
        daemon = Daemon.start(["--config", self.conf, "--certificate", wrong])
        code = yield daemon.refused()
        self.assertNotEqual(code, 0)
        self.assertIn(f"is for the key {CLIENT_FP}".encode(), daemon.output)
        self.assertNotIn(b"Traceback", daemon.output)

    @defer.inlineCallbacks
    def test_chain_too_large_for_hello_is_refused_at_start(self):
        leaf = certs.build(SERVER_KEY, names=["localhost"])
        chain = self.write("long.pem", certs.pem(*[leaf] * 100))  # about 100 KB of HELLO
        daemon = Daemon.start(["--config", self.conf, "--certificate", chain])
        listened = []

        def started(port):
            listened.append(port)  # the bug: stop it, and fail below
            daemon.stop()

        daemon.listening.addCallback(started)
        code = yield daemon.refused()
        self.assertEqual(listened, [], "the daemon started with the chain")
        self.assertEqual(code, 1, daemon.output.decode())
        self.assertRegex(
            daemon.output.decode(),
            rf"{chain}: HELLO would be \d+ bytes, over the limit of 57344 \(KX/1 allows 65536",
        )
        self.assertNotIn(b"Traceback", daemon.output)

    @defer.inlineCallbacks
    def test_certificate_expiring_soon_is_a_warning(self):
        soon = certs.build(SERVER_KEY, names=["localhost"], not_after=certs.now() + 5 * certs.DAY)
        daemon = yield self.start("--certificate", self.write("soon.pem", certs.pem(soon)))
        self.assertIn(b"the certificate expires on", daemon.output)
        self.assertIn(b"issue a new one", daemon.output)

    # -- known hosts --------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_prompt_yes_then_silent(self):
        """An empty known-hosts file prompts on a terminal,
        and the second connection is silent."""
        self.write(self.known_hosts, "")
        self.shared()
        output, code = yield run_on_terminal(
            ["connect", f"127.0.0.1:{self.port}"], b"yes", self.env
        )
        self.assertEqual(code, 0, output)
        for shown in (f"127.0.0.1:{self.port}", "RSA-2048", SERVER_FP, "(yes/no)?"):
            self.assertIn(shown.encode(), output)
        self.assertIn(MESSAGE, output)
        with open(self.known_hosts) as f:
            self.assertEqual(f.read(), f"127.0.0.1:{self.port} {SERVER_FP}\n")

        out, err, code = yield self.connect()
        self.assertEqual((out, err, code), (MESSAGE, b"", 0))

    @defer.inlineCallbacks
    def test_prompt_no(self):
        daemon = self.shared()
        output, code = yield run_on_terminal(["connect", f"127.0.0.1:{self.port}"], b"no", self.env)
        self.assertEqual(code, 3, output)
        self.assertIn(b"was not accepted", output)
        self.assertNotIn(MESSAGE, output)
        self.assertFalse(os.path.exists(self.known_hosts))
        yield daemon.wait_for(b"ended: untrusted-key")

    @defer.inlineCallbacks
    def test_unknown_host_without_a_terminal(self):
        self.shared()
        out, err, code = yield self.connect()
        self.assertEqual((out, code), (b"", 3))
        self.assertIn(b"--accept-new", err)
        self.assertFalse(os.path.exists(self.known_hosts))

        out, err, code = yield self.connect("--accept-new")
        self.assertEqual((out, code), (MESSAGE, 0), err)
        self.assertIn(b"added 127.0.0.1", err)
        self.assertEqual(os.stat(self.known_hosts).st_mode & 0o777, 0o600)
        out, err, code = yield self.connect()
        self.assertEqual((out, err, code), (MESSAGE, b"", 0))

    @defer.inlineCallbacks
    def test_changed_key_names_the_line(self):
        """A changed key is refused naming the line, even
        with --accept-new."""
        self.shared()
        path = os.path.join(self.dir, "hosts")
        self.write(path, f"# our servers\n127.0.0.1:{self.port} {CLIENT_FP}\n")
        for extra in ((), ("--accept-new",)):
            out, err, code = yield self.connect("--known-hosts", path, *extra)
            self.assertEqual((out, code), (b"", 3))
            self.assertIn(b"HAS CHANGED", err)
            self.assertIn(f"{path}, line 2".encode(), err)
            self.assertIn(SERVER_FP.encode(), err)

    @defer.inlineCallbacks
    def test_revoked_key_is_refused_everywhere(self):
        self.shared()
        self.write(self.known_hosts, f"127.0.0.1:{self.port} {SERVER_FP}\n@revoked {SERVER_FP}\n")
        for extra in ((), ("--fingerprint", SERVER_FP), ("--insecure",)):
            out, err, code = yield self.connect(*extra)
            self.assertEqual((out, code), (b"", 3), extra)
            self.assertIn(b"is revoked", err)
            self.assertIn(f"{self.known_hosts}, line 2".encode(), err)

    # -- client keys -------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_authorized_keys(self):
        """--identity is served, a client without is refused."""
        pem = public_pem(CLIENT_KEY)
        authorized = self.write(
            "authorized_keys", f"# alice\n{pem}\n# bob\n{'SHA256:' + 'A' * 43}\n"
        )
        daemon = yield self.start("--authorized-keys", authorized)
        self.assertIn(b"AUTH required: 2 client key(s)", daemon.output)

        out, err, code = yield self.connect(
            "--fingerprint", SERVER_FP, "--identity", self.client_key
        )
        self.assertEqual((out, code), (MESSAGE, 0), err)
        yield daemon.wait_for(b"ended: ok")
        yield daemon.wait_for(f"client key {CLIENT_FP}".encode())

        out, err, code = yield self.connect("--fingerprint", SERVER_FP)
        self.assertEqual((out, code), (b"", 4))
        self.assertIn(b"auth-required", err)

        out, err, code = yield self.connect("--fingerprint", SERVER_FP, "--identity", self.key)
        self.assertEqual((out, code), (b"", 4))
        self.assertIn(b"auth-failed", err)
        self.assertIn(b"not authorized", err)
        yield daemon.wait_for(b"ended: auth-failed")

    @defer.inlineCallbacks
    def test_bad_authorized_keys_file_is_refused_at_start(self):
        bad = self.write("authorized_keys", "SHA256:nope\n")
        daemon = Daemon.start(["--config", self.conf, "--authorized-keys", bad])
        code = yield daemon.refused()
        self.assertNotEqual(code, 0)
        self.assertIn(f"{bad}, line 1".encode(), daemon.output)
