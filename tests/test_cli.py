"""Tests for the keyexchange command (keyexchanged.cli).

Commands run in-process through main() with stdout and stderr captured,
except for one real keygen in a subprocess (python -m keyexchanged.cli),
shared by the tests that need a freshly generated key.  Elsewhere key
generation is replaced by the KX/1 vector key, so the tests stay fast.
"""

import atexit
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile

from twisted.internet import defer
from twisted.trial import unittest
from twisted.trial.unittest import SkipTest

from keyexchanged import cli, client, keys
from keyexchanged.cli import _session
from keyexchanged.errors import EXIT_STATUS_TABLE
from tests.fixtures import (
    PASSPHRASE,
    CommandTestCase,
    components,
    data,
    openssl_fingerprint,
    openssl_pipeline_fingerprint,
    vector_key,
)

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_subprocess(*args, cwd):
    """python -m keyexchanged.cli ARGS, as a user would run it."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPOSITORY, env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "keyexchanged.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


_generated = None


def generated_key_directory():
    """A directory holding key and key.pub from one real 2048-bit keygen run
    in a subprocess, with its result; made once per test process."""
    global _generated
    if _generated is None:
        directory = tempfile.mkdtemp(prefix="keyexchange-cli-test-")
        atexit.register(shutil.rmtree, directory, True)
        result = run_subprocess("keygen", "--bits", "2048", "--out", "key", cwd=directory)
        _generated = directory, result
    return _generated


class TTY(io.StringIO):
    """A captured stderr that says it is a terminal."""

    def isatty(self):
        return True


class RealKeygenTests(CommandTestCase):
    """One real generation, run as users run it."""

    def setUp(self):
        super().setUp()
        self.keydir, self.result = generated_key_directory()
        self.private = os.path.join(self.keydir, "key")
        self.public = self.private + ".pub"

    def test_succeeds_quietly(self):
        self.assertEqual(self.result.returncode, 0, self.result.stderr)
        # Not a terminal: no spinner, nothing at all on stderr.
        self.assertEqual(self.result.stderr, "")
        lines = self.result.stdout.splitlines()
        self.assertEqual(len(lines), 3, self.result.stdout)
        self.assertRegex(lines[0], r"^Fingerprint: SHA256:[A-Za-z0-9+/]{43}$")
        self.assertEqual(lines[1], "Private key: key")
        self.assertEqual(lines[2], "Public key:  key.pub")

    def test_files(self):
        self.assertEqual(os.stat(self.private).st_mode & 0o7777, 0o600)
        self.assertEqual(os.stat(self.public).st_mode & 0o7777, 0o644)
        key = keys.load_private_key(self.private)
        self.assertEqual(key.size, 2048)
        self.assertEqual(keys.load_public_key(self.public), key.public_key())
        self.assertEqual(sorted(os.listdir(self.keydir)), ["key", "key.pub"])

    def test_openssl_checks_key(self):
        if shutil.which("openssl") is None:
            raise SkipTest("openssl is not installed")
        result = subprocess.run(
            ["openssl", "rsa", "-check", "-noout", "-in", self.private],
            capture_output=True,
            text=True,
            check=False,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("RSA key ok", result.stdout)

    def test_fingerprint_command_matches_openssl(self):
        if shutil.which("openssl") is None:
            raise SkipTest("openssl is not installed")
        expected = openssl_pipeline_fingerprint(self.public)
        printed = self.result.stdout.splitlines()[0].split(": ", 1)[1]
        self.assertEqual(printed, expected)
        for path in (self.public, self.private):
            status, out, err = self.run_main("fingerprint", path)
            self.assertEqual((status, err), (0, ""))
            self.assertEqual(out, expected + "\n")

    def test_error_in_subprocess(self):
        """A bad file, for real: one line, status 1, no traceback."""
        garbage = self.write("garbage", b"not a key\n")
        result = run_subprocess("fingerprint", garbage, cwd=self.dir)
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stdout, "")
        self.assertOneErrorLine(result.stderr, garbage, "not an RSA key")


class KeygenTests(CommandTestCase):
    def test_default_output(self):
        """Without --out: keyexchange.key (and .pub) in the current directory."""
        cwd = os.getcwd()
        os.chdir(self.dir)
        self.addCleanup(os.chdir, cwd)
        status, out, err = self.run_main("keygen")
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(self.generations, [3072])
        self.assertEqual(sorted(os.listdir(self.dir)), ["keyexchange.key", "keyexchange.key.pub"])
        fingerprint = keys.fingerprint(vector_key())
        self.assertEqual(
            out,
            f"Fingerprint: {fingerprint}\n"
            "Private key: keyexchange.key\n"
            "Public key:  keyexchange.key.pub\n",
        )

    def test_bits(self):
        for bits in ("2048", "2056", "4096", "8192"):
            status, _, err = self.run_main("keygen", "--bits", bits, "--out", self.path(bits))
            self.assertEqual((status, err), (0, ""))
        self.assertEqual(self.generations, [2048, 2056, 4096, 8192])

    def test_bits_out_of_range(self):
        for bits in ("1024", "2047", "2049", "8200", "16384", "0", "-2048"):
            self.assertBadOption(
                ["keygen", "--bits", bits, "--out", self.path("k")],
                "--bits",
                "from 2048 to 8192 in steps of 8",
            )
        self.assertEqual(self.generations, [])
        self.assertEqual(os.listdir(self.dir), [])

    def test_bits_not_a_number(self):
        """argparse's usage error, with the rule: status 2, no traceback."""
        self.assertBadOption(
            ["keygen", "--bits", "many"], "--bits", "from 2048 to 8192 in steps of 8"
        )

    def test_refuses_overwrite(self):
        """Either file existing stops keygen before it generates anything."""
        key = self.path("k")
        for existing in (key, key + ".pub"):
            self.write(os.path.basename(existing), b"precious")
            self.assertFails(["keygen", "--out", key], existing, "--force")
            self.assertEqual(os.listdir(self.dir), [os.path.basename(existing)])
            with open(existing, "rb") as f:
                self.assertEqual(f.read(), b"precious")
            os.unlink(existing)
        self.assertEqual(self.generations, [])

    def test_force(self):
        key = self.path("k")
        self.write("k", b"old")
        self.write("k.pub", b"old", 0o644)
        status, _, err = self.run_main("keygen", "--out", key, "--force")
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(components(keys.load_private_key(key)), components(vector_key()))
        self.assertEqual(keys.load_public_key(key + ".pub"), vector_key().public_key())
        self.assertEqual(os.stat(key).st_mode & 0o777, 0o600)

    def test_passphrase_file(self):
        key = self.path("k")
        passfile = self.write("pass", b"open sesame\r\nsecond line ignored\n")
        status, _, err = self.run_main("keygen", "--out", key, "--passphrase-file", passfile)
        self.assertEqual((status, err), (0, ""))
        with open(key, "rb") as f:
            self.assertEqual(f.readline(), b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n")
        loaded = keys.load_private_key(key, b"open sesame")
        self.assertEqual(components(loaded), components(vector_key()))

    def test_empty_passphrase_file(self):
        passfile = self.write("pass", b"\n")
        self.assertFails(
            ["keygen", "--out", self.path("k"), "--passphrase-file", passfile], passfile, "empty"
        )
        self.assertEqual(self.generations, [])

    def test_missing_passphrase_file(self):
        passfile = self.path("absent")
        self.assertFails(
            ["keygen", "--out", self.path("k"), "--passphrase-file", passfile],
            passfile,
            "No such file",
        )

    def test_missing_directory(self):
        self.assertFails(["keygen", "--out", self.path("no", "k")], "no such directory")
        self.assertEqual(self.generations, [])

    def test_unwritable_location(self):
        """A write that fails after generation: one line, and no half pair."""

        def refuse(*args):
            raise OSError(13, "Permission denied")

        self.patch(os, "link", refuse)
        self.patch(os, "replace", refuse)
        key = self.path("k")
        self.assertFails(["keygen", "--out", key], key, "Permission denied")
        self.assertEqual(os.listdir(self.dir), [])

    def test_public_write_fails(self):
        """The private key is taken back when its .pub cannot be written."""
        key = self.path("k")
        real_save = keys.save_public_key

        def create_then_save(key_, path, force=False):
            self.write("k.pub", b"appeared meanwhile")
            return real_save(key_, path, force)

        self.patch(keys, "save_public_key", create_then_save)
        self.assertFails(["keygen", "--out", key], key + ".pub", "already exists")
        self.assertEqual(os.listdir(self.dir), ["k.pub"])

    def test_directory_in_the_way(self):
        """Caught before generating, even with --force."""
        key = self.path("k")
        os.mkdir(key + ".pub")
        self.assertFails(["keygen", "--out", key, "--force"], key + ".pub", "is a directory")
        self.assertEqual(self.generations, [])
        self.assertEqual(os.listdir(self.dir), ["k.pub"])

    def test_interrupted(self):
        def interrupted(bits=3072, progress=None):
            raise KeyboardInterrupt

        self.patch(cli.rsa, "generate_private_key", interrupted)
        self.assertFails(["keygen", "--out", self.path("k")], "interrupted", status=130)
        self.assertEqual(os.listdir(self.dir), [])

    def test_spinner_on_terminal(self):
        tty = TTY()
        status, _, err = self.run_main("keygen", "--out", self.path("k"), stderr=tty)
        self.assertEqual(status, 0)
        self.assertIn("\rGenerating an RSA key of 3072 bits...", err)
        self.assertTrue(err.endswith("\r"), repr(err))  # the line is wiped
        self.assertNotIn("\n", err)

    def test_no_spinner_otherwise(self):
        status, _, err = self.run_main("keygen", "--out", self.path("k"))
        self.assertEqual((status, err), (0, ""))


class FingerprintTests(CommandTestCase):
    def test_formats(self):
        """Public and private keys, PEM and DER."""
        expected = openssl_fingerprint() + "\n"
        for name in (
            "keys_openssl_spki.pem",
            "keys_openssl_spki.der",
            "keys_openssl_pkcs1_public.pem",
            "keys_openssl_pkcs8.pem",
            "keys_openssl_pkcs8.der",
            "keys_openssl_pkcs1.pem",
        ):
            path = self.write(name, data(name))
            status, out, err = self.run_main("fingerprint", path)
            self.assertEqual((status, out, err), (0, expected, ""), name)

    def test_encrypted(self):
        path = self.write("enc", data("keys_openssl_pkcs8_encrypted.pem"))
        passfile = self.write("pass", PASSPHRASE.encode() + b"\n")
        status, out, err = self.run_main("fingerprint", path, "--passphrase-file", passfile)
        self.assertEqual((status, out, err), (0, openssl_fingerprint() + "\n", ""))
        self.assertFails(["fingerprint", path], path, "encrypted", "passphrase")

    def test_wrong_passphrase(self):
        path = self.write("enc", data("keys_openssl_pkcs8_encrypted.pem"))
        passfile = self.write("pass", b"wrong horse\n")
        err = self.assertFails(
            ["fingerprint", path, "--passphrase-file", passfile], path, "wrong passphrase"
        )
        self.assertNotIn("horse", err)

    def test_missing_file(self):
        path = self.path("absent")
        self.assertFails(["fingerprint", path], path, "No such file")

    def test_unreadable_file(self):
        path = self.write("locked", data("keys_openssl_spki.pem"), 0o000)
        if os.access(path, os.R_OK):
            raise SkipTest("running as root: permissions do not stop reading")
        self.assertFails(["fingerprint", path], path, "Permission denied")

    def test_directory(self):
        self.assertFails(["fingerprint", self.dir], self.dir, "not a regular file")

    def test_garbage(self):
        for name, content in [
            ("empty", b""),
            ("text", b"hello\n"),
            ("binary", os.urandom(300)),
            ("truncated", data("keys_openssl_spki.pem")[:200]),
        ]:
            path = self.write(name, content)
            self.assertFails(["fingerprint", path], path, "not an RSA key")

    def test_exposed_private_key(self):
        path = self.write("key", data("keys_openssl_pkcs8.pem"), 0o644)
        self.assertFails(["fingerprint", path], path, f"chmod 600 {path}")

    def test_usage(self):
        status, out, err = self.run_main("fingerprint")
        self.assertEqual((status, out), (2, ""))
        self.assertIn("usage:", err)


class ParserTests(CommandTestCase):
    #: Every command, in the order --help lists them.
    COMMANDS = (
        "keygen",
        "fingerprint",
        "connect",
        "ca",
        "tunnel",
        "ticket-keys",
        "rotate-key",
        "lab",
    )

    def test_no_command(self):
        status, _, err = self.run_main()
        self.assertEqual(status, 2)
        self.assertIn("usage:", err)

    def test_help(self):
        status, out, _ = self.run_main("--help")
        self.assertEqual(status, 0)
        for command in ("keygen", "fingerprint"):
            self.assertIn(command, out)
        status, out, _ = self.run_main("keygen", "--help")
        self.assertEqual(status, 0)
        self.assertIn("keyexchange.key", out)


    def test_help_lists_every_command(self):
        status, out, _ = self.run_main("--help")
        self.assertEqual(status, 0)
        listed = re.findall(r"^    (\S+)", out, re.MULTILINE)
        self.assertEqual(tuple(listed), self.COMMANDS)

    def test_unknown_command(self):
        """A mistake is told with every command to choose from."""
        status, out, err = self.run_main("conect", "localhost")
        self.assertEqual((status, out), (2, ""))
        self.assertIn("invalid choice: 'conect'", err)
        for name in self.COMMANDS:
            self.assertIn(repr(name), err)


class ImportTests(unittest.TestCase):
    """A command imports what it runs: connect does not pay for the CA's,
    the lab's or the daemon's imports (each test that runs keyexchange, each
    user)."""

    #: What connect's parser leaves out.  Running it imports the reactor,
    #: and cryptography.x509 with it (pyOpenSSL, Twisted's TLS), but not
    #: the others.
    UNUSED = (
        "keyexchanged.cli._ca",
        "keyexchanged.cli._keys",
        "keyexchanged.cli._lab",
        "keyexchanged.ca",
        "keyexchanged.lab",
        "keyexchanged.proxyproto",
        "cryptography.x509",
        "prometheus_client",
        "twisted.web",
    )

    PROGRAM = (
        "import contextlib, io, json, sys\n"
        "from keyexchanged import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    status = cli.main(['connect', '--help'])\n"
        "print(json.dumps([status, 'HOST[:PORT]' in out.getvalue(),\n"
        "                  [name for name in sys.argv[1:] if name in sys.modules]]))\n"
    )

    def test_connect_imports_only_its_own_command(self):
        # In a fresh interpreter: this one has imported every command.
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPOSITORY, env.get("PYTHONPATH")]))
        result = subprocess.run(
            [sys.executable, "-c", self.PROGRAM, "keyexchanged.cli._session", *self.UNUSED],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(json.loads(result.stdout), [0, True, ["keyexchanged.cli._session"]])


class SessionCommandTests(CommandTestCase):
    """connect and tunnel: what is refused before any connection is made."""

    def test_bad_server_address(self):
        for command in (
            ["connect", "host:port"],
            ["tunnel", "--listen", "tcp:0", "--server", "h:0"],
        ):
            status, out, err = self.run_main(*command, "--insecure")
            self.assertEqual((status, out), (2, ""), err)
            self.assertIn("keyexchange: error:", err)

    def test_connect_timeout_must_be_positive(self):
        for value in ("0", "-1", "nan", "inf", "soon"):
            self.assertBadOption(
                ["connect", "localhost", "--insecure", "--timeout", value],
                "--timeout",
                "a number of seconds greater than 0",
            )
            self.assertBadOption(
                ["tunnel", "--listen", "tcp:0", "--server", "h", "--idle-timeout", value],
                "--idle-timeout",
                "a number of seconds greater than 0",
            )

    def test_tunnel_cannot_listen(self):
        import socket

        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            listen = f"tcp:{port}:interface=127.0.0.1"
            # In a child process: the command runs (and stops) a reactor.
            result = run_subprocess(
                "tunnel", "--listen", listen, "--server", "127.0.0.1", "--insecure", cwd=self.dir
            )
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertIn(f"cannot listen on {listen}", result.stderr)

    def test_tunnel_never_asks_about_unknown_hosts(self):
        """A relay serves connections in the background: no yes/no prompt,
        even on a terminal (connect would ask)."""
        self.patch(_session, "isatty", lambda stream: True)
        args = cli.build_parser().parse_args(
            ["tunnel", "--listen", "tcp:0", "--server", "h", "--known-hosts", self.dir + "/kh"]
        )
        self.assertIsNone(_session._trust_policy(args, 51424, interactive=False).ask)
        args = cli.build_parser().parse_args(["connect", "h", "--known-hosts", self.dir + "/kh"])
        self.assertIsNotNone(_session._trust_policy(args, 51424).ask)


class SendFileTests(CommandTestCase):
    """``connect --send-file``: a secret out of the process list.  What the
    command hands the session is checked here,
    with the reactor and the session replaced; a real one is in
    test_daemon."""

    def setUp(self):
        super().setUp()
        from twisted.internet import defer, task

        from keyexchanged import client

        self.sessions = []

        def run_connect(reactor, host, port, policy, **options):
            self.sessions.append(options)
            return defer.succeed(0)

        self.patch(client, "run_connect", run_connect)
        self.patch(task, "react", lambda main: main(None))

    def connect(self, *argv):
        return self.run_main("connect", "h", "--insecure", "--known-hosts", self.path("kh"), *argv)

    def test_file_contents_are_sent(self):
        secret = b"\x00not in ps\xff\n"
        status, out, err = self.connect("--send-file", self.write("secret", secret))
        self.assertEqual((status, out), (0, ""), err)
        self.assertEqual(self.sessions[0]["send"], secret)
        self.assertFalse(self.sessions[0]["stream_stdin"])

    def test_dash_reads_stdin(self):
        self.patch(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"from stdin\n")))
        status, _, err = self.connect("--send-file", "-")
        self.assertEqual(status, 0, err)
        self.assertEqual(self.sessions[0]["send"], b"from stdin\n")
        self.assertFalse(self.sessions[0]["stream_stdin"])

    def test_missing_file_is_one_clear_error_before_connecting(self):
        missing = self.path("nope")
        self.assertFails(
            [
                "connect",
                "h",
                "--insecure",
                "--known-hosts",
                self.path("kh"),
                "--send-file",
                missing,
            ],
            f"{missing}: cannot read --send-file: No such file or directory",
        )
        self.assertEqual(self.sessions, [])

    def test_directory(self):
        self.assertFails(
            [
                "connect",
                "h",
                "--insecure",
                "--known-hosts",
                self.path("kh"),
                "--send-file",
                self.dir,
            ],
            f"{self.dir}: cannot read --send-file: Is a directory",
        )

    def test_too_large(self):
        self.patch(_session, "_MAX_SEND_FILE", 10)
        path = self.write("big", b"x" * 11)
        self.assertFails(
            ["connect", "h", "--insecure", "--known-hosts", self.path("kh"), "--send-file", path],
            f"{path}: more than 16 MiB, too much for --send-file",
        )
        self.assertEqual(self.sessions, [])

    def test_not_with_send(self):
        status, out, err = self.connect("--send", "x", "--send-file", "-")
        self.assertEqual((status, out), (2, ""))
        self.assertIn("not allowed with argument", err)
        self.assertEqual(self.sessions, [])

    def test_help_warns_of_the_process_list(self):
        status, out, _ = self.run_main("connect", "--help")
        self.assertEqual(status, 0)
        text = " ".join(out.split())
        self.assertIn("--send puts TEXT in the process list, where every local user can read", text)
        self.assertIn("TEXT is in the process list, which every local user can read (ps)", text)
        self.assertIn("for a secret use --send-file", text)
        self.assertIn("--send-file FILE send the contents of FILE", text)


class TicketKeysCommandTests(unittest.TestCase):
    def test_new_creates_a_missing_directory_private(self):
        directory = os.path.join(os.path.abspath(self.mktemp()), "keyexchanged")
        path = os.path.join(directory, "ticket.keys")
        self.patch(sys, "stdout", io.StringIO())
        self.assertEqual(cli.main(["ticket-keys", "new", path]), 0)
        self.assertEqual(stat.S_IMODE(os.stat(directory).st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertIn(f"{directory}: created (mode 0700)", sys.stdout.getvalue())


class ExitStatusHelpTests(unittest.TestCase):
    """Every --help ends with the one table of exit statuses."""

    def help_of(self, *argv):
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        self.assertEqual(cli.main([*argv, "--help"]), 0)
        return out.getvalue()

    def assert_table(self, text):
        self.assertTrue(text.endswith(EXIT_STATUS_TABLE), text[-600:])

    def test_keyexchange(self):
        self.assert_table(self.help_of())

    def test_connect(self):
        text = self.help_of("connect")
        self.assert_table(text)
        self.assertIn("2    usage", text)

    def test_tunnel_idle_timeout_is_no_exit_status(self):
        text = self.help_of("tunnel")
        self.assert_table(text)
        self.assertIn("the tunnelled connection is closed", " ".join(text.split()))

    def test_ca_issue(self):
        self.assert_table(self.help_of("ca", "issue"))

    def test_keygen(self):
        self.assert_table(self.help_of("keygen"))


class IdleTimeoutOptionTests(CommandTestCase):
    """``--idle-timeout`` of connect and tunnel."""

    def setUp(self):
        super().setUp()
        from twisted.internet import task

        from keyexchanged import tunnel

        self.sessions = []
        self.tunnels = []

        def run_connect(reactor, host, port, policy, **options):
            self.sessions.append(options)
            return defer.succeed(0)

        def run_tunnel(reactor, listen, host, port, policy, identity, report, **options):
            self.tunnels.append(options)
            return defer.succeed(None)

        self.patch(client, "run_connect", run_connect)
        self.patch(tunnel, "run_tunnel", run_tunnel)
        self.patch(task, "react", lambda main: main(None))

    def connect(self, *argv):
        return self.run_main("connect", "h", "--insecure", "--known-hosts", self.path("kh"), *argv)

    def tunnel(self, *argv):
        return self.run_main(
            "tunnel", "--listen", "tcp:0", "--server", "h", "--insecure",
            "--known-hosts", self.path("kh"), *argv,
        )  # fmt: skip

    def test_connect_default_and_value(self):
        self.assertEqual(self.connect("--send", "x")[0], 0)
        self.assertEqual(self.connect("--send", "x", "--idle-timeout", "12.5")[0], 0)
        self.assertEqual([s["idle_timeout"] for s in self.sessions], [300.0, 12.5])

    def test_tunnel_accepts_it(self):
        self.assertEqual(self.tunnel()[0], 0)
        self.assertEqual(self.tunnel("--idle-timeout", "45")[0], 0)
        self.assertEqual([t["idle_timeout"] for t in self.tunnels], [300.0, 45.0])

    def test_zero_negative_and_nan_are_usage_errors(self):
        for command in (self.connect, self.tunnel):
            for value in ("0", "-1", "nan", "-0"):
                status, out, err = command(f"--idle-timeout={value}")
                self.assertEqual((status, out), (cli.EXIT_USAGE, ""), err)
                self.assertTrue(
                    err.endswith(
                        "error: argument --idle-timeout: must be a number of seconds "
                        "greater than 0\n"
                    ),
                    err,
                )
        self.assertEqual((self.sessions, self.tunnels), ([], []))

    def test_not_a_number_is_a_usage_error(self):
        status, out, err = self.connect("--idle-timeout", "soon")
        self.assertEqual((status, out), (cli.EXIT_USAGE, ""))
        self.assertIn("argument --idle-timeout: must be a number of seconds greater than 0", err)

    def test_help_documents_it_and_exit_status_4(self):
        status, out, _ = self.run_main("connect", "--help")
        self.assertEqual(status, 0)
        text = " ".join(out.split())
        self.assertIn(
            "--idle-timeout SECONDS end a session on which nothing has passed either "
            "way for SECONDS: a server gone silent (default 300; exit status 4)",
            text,
        )
        _, out, _ = self.run_main("connect", "--help")
        self.assertIn("4 connect: connection or protocol failure", " ".join(out.split()))
        self.assertIn("--idle-timeout", client.__doc__)
