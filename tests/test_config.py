"""Settings: the config file, the command line, and every bad value."""

import base64
import io
import json
import os
import re
import subprocess
import sys
import time

from twisted.internet.task import Clock
from twisted.python import usage
from twisted.trial import unittest

from keyexchanged import config, keys, rsa, tap
from keyexchanged.config import ConfigError, read_config
from keyexchanged.protocol import PeerError
from tests import certs
from tests.daemon import environment
from tests.fixtures import (
    CLIENT_KEY,
    EPHEMERAL_PRIVATE,
    SERVER_KEY,
    JunkIdentity,
    Pair,
    ServerFiles,
)

SHIPPED = os.path.join(os.path.dirname(__file__), os.pardir, "etc", "keyexchanged.conf")


class ReadConfigTests(unittest.TestCase):
    def write(self, text):
        path = os.path.join(self.mktemp() + "-dir", "keyexchanged.conf")
        os.makedirs(os.path.dirname(path))
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def test_shipped_file_is_valid_and_listens_on_51424(self):
        values = read_config(SHIPPED)
        self.assertEqual(values["listen"], "tcp:51424")
        self.assertEqual(os.path.basename(values["private-key"]), "server.key")

    def test_shipped_file_mentions_every_setting(self):
        with open(SHIPPED, encoding="utf-8") as f:
            text = f.read()
        for setting in tap.Options.all_settings:
            self.assertRegex(text, rf"(?m)^#? ?{re.escape(setting.name)} = ", setting.name)

    def test_values_and_relative_paths(self):
        path = self.write(
            "[keyexchanged]\nlisten = tcp:1234:interface=127.0.0.1\nprivate-key = keys/server.key\n"
            "handshake-timeout = 2.5\nmax-connections = 7\n"
        )
        values = read_config(path)
        self.assertEqual(values["listen"], "tcp:1234:interface=127.0.0.1")
        self.assertEqual(
            values["private-key"],
            os.path.abspath(os.path.join(os.path.dirname(path), "keys", "server.key")),
        )
        self.assertEqual(values["handshake-timeout"], 2.5)
        self.assertEqual(values["max-connections"], 7)

    def assertRefused(self, text, *fragments):
        path = self.write(text)
        with self.assertRaises(ConfigError) as caught:
            read_config(path)
        message = str(caught.exception)
        self.assertTrue(message.startswith(path), message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return message

    def test_bad_values_name_line_and_reason(self):
        cases = [
            ("max-connections = 0", "at least 1"),
            ("max-connections = ten", "at least 1"),
            ("max-per-source = -3", "at least 1"),
            ("handshake-timeout = 0", "greater than 0"),
            ("handshake-timeout = nan", "greater than 0"),
            ("idle-timeout = soon", "greater than 0"),
            ("grace-period = -1", "0 or more"),
            ("key-bits = 1024", "2048 to 8192"),
            ("key-bits = 2049", "2048 to 8192"),
            ("listen = 51424", "endpoint description"),
            ("max-handshakes = 0", "at least 1"),
            ("workers = -1", "auto, or a whole number of at least 0"),
            ("workers = many", "auto, or a whole number of at least 0"),
            ("processes = 0", "auto, or a whole number of at least 1"),
            ("application = Echo!", "application name"),
            ("ipv6-source-prefix = 0", "must be a prefix length from 1 to 128"),
            ("ipv6-source-prefix = 129", "must be a prefix length from 1 to 128"),
            ("ipv6-source-prefix = x", "must be a prefix length from 1 to 128"),
        ]
        for line, reason in cases:
            message = self.assertRefused(
                "# comment\n[keyexchanged]\n" + line + "\n", "line 3", reason
            )
            self.assertIn(line.split(" =")[0], message)

    def test_processes_is_auto_or_at_least_one(self):
        self.assertEqual(config.processes("auto"), "auto")
        self.assertEqual(config.processes("1"), 1)
        self.assertEqual(config.processes("16"), 16)
        refused = {}
        for text in ("0", "-1", "abc", "", "1.5", "Auto"):
            try:
                config.processes(text)
            except ValueError as error:
                refused[text] = str(error)
        reason = "must be auto, or a whole number of at least 1"
        self.assertEqual(refused, dict.fromkeys(("0", "-1", "abc", "", "1.5", "Auto"), reason))

    def test_unknown_setting(self):
        self.assertRefused(
            "[keyexchanged]\nlisten = tcp:1\nport = 5\n", "line 3", "unknown setting 'port'"
        )

    def test_unknown_section(self):
        self.assertRefused("[server]\nlisten = tcp:1\n", "unknown section [server]")

    def test_not_ini(self):
        self.assertRefused("listen = tcp:1\n", "no section")

    def test_unreadable(self):
        with self.assertRaises(ConfigError) as caught:
            read_config("/nonexistent/keyexchanged.conf")
        self.assertIn("cannot read config file", str(caught.exception))


class FindConfigTests(unittest.TestCase):
    def test_order(self):
        self.assertEqual(config.find_config("a.conf", {"KEYEXCHANGED_CONFIG": "b.conf"}), "a.conf")
        self.assertEqual(config.find_config(None, {"KEYEXCHANGED_CONFIG": "b.conf"}), "b.conf")

    def test_default_key_path(self):
        self.assertEqual(config.default_key_path({}, uid=0), "/var/lib/keyexchanged/server.key")
        self.assertEqual(
            config.default_key_path({"XDG_DATA_HOME": "/x"}, uid=1000),
            "/x/keyexchanged/server.key",
        )
        self.assertEqual(
            config.default_key_path({"HOME": "/home/u"}, uid=1000),
            "/home/u/.local/share/keyexchanged/server.key",
        )
        self.assertEqual(
            config.default_key_path({"STATE_DIRECTORY": "/var/lib/kx:/other"}, uid=0),
            "/var/lib/kx/server.key",
        )


class OptionsTests(ServerFiles, unittest.TestCase):
    def setUp(self):
        super().setUp()
        self.write_config("max-connections = 5\nmessage = from file\n")

    def parse(self, *argv, environ=None):
        options = tap.Options(environ=environ if environ is not None else {})
        options.parseOptions(list(argv))
        return options

    def test_a_reload_never_generates_a_key(self):
        options = self.parse("--config", self.conf)
        os.unlink(self.key)
        with self.assertRaises(usage.UsageError) as caught:
            options.reread()
        self.assertIn("no such key file: a reload never makes a new key", str(caught.exception))
        self.assertFalse(os.path.exists(self.key))

    def test_a_child_of_processes_never_generates_a_key(self):
        os.unlink(self.key)
        child = {"KEYEXCHANGED_CHILD": "1", "KEYEXCHANGED_LISTEN_FD": "3"}
        with self.assertRaises(usage.UsageError) as caught:
            self.parse("--config", self.conf, environ=child)
        self.assertIn("no such key file", str(caught.exception))
        self.assertFalse(os.path.exists(self.key))

    def test_config_then_command_line(self):
        options = self.parse("--config", self.conf, "--max-connections", "9")
        self.assertEqual(options.settings["max-connections"], 9)
        self.assertEqual(options.settings["message"], b"from file")
        self.assertEqual(options.settings["private-key"], self.key)
        self.assertEqual(options.identity.fingerprint, keys.fingerprint(SERVER_KEY.public_key()))

    def test_listens_on_51424_on_every_interface_by_default(self):
        options = self.parse("--private-key", self.key)
        self.assertEqual(options.settings["listen"], "tcp:51424")

    def test_environment_names_the_config(self):
        options = self.parse(environ={"KEYEXCHANGED_CONFIG": self.conf})
        self.assertEqual(options.settings["max-connections"], 5)

    def test_message_file(self):
        message = os.path.join(self.dir, "message.txt")
        with open(message, "wb") as f:
            f.write(b"\x00binary\xff")
        options = self.parse("--config", self.conf, "--message-file", message)
        self.assertEqual(options.settings["message"], b"\x00binary\xff")

    def test_post_quantum_by_default_with_ocb(self):
        options = self.parse("--config", self.conf)
        self.assertEqual(options.settings["post-quantum"], "yes")
        self.assertEqual(options.identity.record_cipher, "aes-256-ocb")
        self.assertEqual(options.warnings, [])

    def test_post_quantum_flags(self):
        self.assertEqual(
            self.parse("--config", self.conf, "--require-post-quantum").settings["post-quantum"],
            "require",
        )
        options = self.parse("--config", self.conf, "--no-post-quantum")
        self.assertEqual(options.settings["post-quantum"], "no")
        self.assertIn("post-quantum is OFF (--no-post-quantum)", options.warnings[0])

    def test_post_quantum_refusals(self):
        for argv, message in [
            (
                ("--no-forward-secrecy", "--require-post-quantum"),
                "--require-post-quantum needs forward secrecy",
            ),
            (
                ("--ephemeral-interval", "1800"),
                "ephemeral-interval: at most 1730 s with post-quantum on",
            ),
            (("--post-quantum", "maybe"), "must be yes, no or require"),
            (("--record-cipher", "aes-128-gcm"), "must be aes-256-ocb or aes-256-gcm"),
        ]:
            with self.assertRaises(usage.UsageError) as caught:
                self.parse("--config", self.conf, *argv)
            self.assertIn(message, str(caught.exception), argv)
        # Without ML-KEM the day-long interval of revision 2 stays allowed.
        options = self.parse(
            "--config", self.conf, "--no-post-quantum", "--ephemeral-interval", "1800"
        )
        self.assertEqual(options.settings["ephemeral-interval"], 1800)

    def test_no_forward_secrecy_turns_post_quantum_off_with_a_warning(self):
        options = self.parse("--config", self.conf, "--no-forward-secrecy")
        self.assertEqual(options.settings["post-quantum"], "no")
        self.assertTrue(any("post-quantum is OFF too" in w for w in options.warnings))

    def test_help_warns_that_message_is_in_the_process_list(self):
        # Compared without white space: usage wraps lines (even inside
        # --message-file) wherever its column widths say.
        text = "".join(tap.Options().getUsage().split())
        for expected in (
            "--message= the secret message the server sends. On the command line it is in "
            "the process list, which every local user can read (ps): use --message-file",
            "--message-file= read the secret message from this file",
        ):
            self.assertIn("".join(expected.split()), text)

    def test_message_on_the_command_line_is_warned_of(self):
        warning = (
            "--message is in the process list, which every local user can read: "
            "give the message with --message-file, or in the config file"
        )
        options = self.parse("--config", self.conf, "--message", "shh")
        self.assertEqual(options.warnings, [warning])
        self.assertEqual(options.settings["message"], b"shh")
        # From the config file (this one sets it) or a file: no warning.
        self.assertEqual(self.parse("--config", self.conf).warnings, [])

    def test_bad_command_line_values(self):
        for argv, fragment in [
            (["--max-connections", "0"], "--max-connections"),
            (["--handshake-timeout", "-1"], "greater than 0"),
            (["--listen", "nonsense port"], "endpoint description"),
            (["--message-file", "/nonexistent"], "cannot read message file"),
            (["--config", "/nonexistent.conf"], "cannot read config file"),
            (["--workers", "two"], "auto, or a whole number"),
            (
                ["--processes", "0"],
                "processes = '0': must be auto, or a whole number of at least 1",
            ),
            (["--max-handshakes", "-5"], "--max-handshakes"),
            (["--application", "nope"], "no application named 'nope'"),
            (["--application", "forward"], "needs --forward-to"),
            (["--application", "forward", "--forward-to", "bogus:1"], "Unknown endpoint type"),
        ]:
            with self.assertRaises(usage.UsageError) as caught:
                self.parse("--config", self.conf, *argv) if "--config" not in argv else self.parse(
                    *argv
                )
            self.assertIn(fragment, str(caught.exception))

    def test_service_serves_the_factory_options_checked(self):
        """The application's factory is made once, in Options, and served;
        made again only for another reactor (a test's Clock)."""
        with open(self.conf, "a") as f:
            f.write("application = forward\nforward-to = tcp:127.0.0.1:6379\nworkers = 0\n")
        options = self.parse("--config", self.conf)
        from twisted.internet import reactor

        service = tap.makeService(options, reactor=reactor)
        self.assertIs(service.factory.wrapped_factory, options.wrapped_factory)
        clock = Clock()
        service = tap.makeService(options, reactor=clock)
        self.assertIsNot(service.factory.wrapped_factory, options.wrapped_factory)
        self.assertIs(service.factory.wrapped_factory.endpoint._reactor, clock)

    def test_application_settings_from_file_and_command_line(self):
        with open(self.conf, "a") as f:
            f.write("application = forward\nforward-to = tcp:127.0.0.1:6379\nworkers = 0\n")
        options = self.parse("--config", self.conf)
        self.assertEqual(options.application.name, "forward")
        self.assertEqual(options.wrapped_factory.target, "tcp:127.0.0.1:6379")
        self.assertEqual(options.settings["workers"], 0)
        options = self.parse("--config", self.conf, "--application", "echo")
        self.assertEqual(options.application.name, "echo")

    def test_help_applications_lists_them(self):
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        with self.assertRaises(SystemExit) as caught:
            self.parse("--help-applications")
        self.assertEqual(caught.exception.code, 0)
        for name in ("message", "echo", "forward", "--forward-to"):
            self.assertIn(name, out.getvalue())

    def test_key_readable_by_others_is_refused(self):
        os.chmod(self.key, 0o644)
        with self.assertRaises(usage.UsageError) as caught:
            self.parse("--config", self.conf)
        self.assertIn("chmod 600", str(caught.exception))

    def test_first_start_generates_a_key(self):
        path = os.path.join(self.dir, "new", "server.key")
        reports = []
        key, generated = tap.load_or_create_key(path, 2048, report=reports.append)
        self.assertTrue(generated)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertEqual(keys.load_public_key(path + ".pub"), key.public_key())
        self.assertIn("generating a 2048-bit RSA key", reports[0])
        again, generated = tap.load_or_create_key(path, 2048, report=reports.append)
        self.assertFalse(generated)
        self.assertEqual(again.public_key(), key.public_key())


class StartupImportTests(ServerFiles, unittest.TestCase):
    """What a daemon imports is what its settings use: every start pays for
    its imports (each test that starts a daemon, each user)."""

    #: Imported only by a daemon whose settings use them: --certificate,
    #: --authorized-keys or --revoked-keys, --metrics.  cryptography.x509 is
    #: not among them: pyOpenSSL imports it with the reactor (Twisted's TLS).
    UNUSED = (
        "keyexchanged.ca",
        "keyexchanged.trust",
        "keyexchanged.knownhosts",
        "keyexchanged.metrics",
        "prometheus_client",
        "twisted.web",
        "keyexchanged.lab",
    )

    PROGRAM = (
        "import json, sys\n"
        "from twisted.internet.task import Clock\n"
        "from twisted.plugins.keyexchanged_plugin import keyexchange\n"
        "from keyexchanged import tap\n"
        "options = keyexchange.options()  # what twistd parses: the ports are tried\n"
        "options.parseOptions(['--config', sys.argv[1]])\n"
        "tap.makeService(options, reactor=Clock())\n"
        "print(json.dumps([name for name in sys.argv[2:] if name in sys.modules]))\n"
    )

    def test_a_plain_daemon_imports_nothing_it_does_not_use(self):
        # In a fresh interpreter: this one has imported everything.
        self.write_config("listen = tcp:0:interface=127.0.0.1\nworkers = 0\nforward-secrecy = no\n")
        result = subprocess.run(
            [sys.executable, "-c", self.PROGRAM, self.conf, "keyexchanged.tap", *self.UNUSED],
            capture_output=True,
            text=True,
            env=environment(),
            cwd=self.dir,
            timeout=120,
            check=False,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(json.loads(result.stdout), ["keyexchanged.tap"])


class HelloSizeTests(ServerFiles, unittest.TestCase):
    """A certificate chain that makes HELLO too large is refused at start:
    accepted, it would break every connection."""

    def setUp(self):
        super().setUp()
        self.write_config("workers = 0\n")
        self.leaf = certs.build(SERVER_KEY, names=["a.example"])

    def chain(self, count):
        """The leaf ``count`` times in a PEM file, and the size of the HELLO
        it makes, per docs/spec/kx1.rst (JSON, base64 of the key, nonce and each
        certificate)."""
        path = os.path.join(self.dir, f"chain-{count}.pem")
        with open(path, "wb") as f:
            f.write(certs.pem(*[self.leaf] * count))
        hello = {
            "protocol": "kx/1",
            "key": base64.b64encode(keys.public_key_to_der(SERVER_KEY)).decode(),
            "nonce": base64.b64encode(b"\0" * 32).decode(),
            "certificates": [base64.b64encode(certs.der(self.leaf)).decode()] * count,
        }
        return path, len(json.dumps(hello))

    def start(self, path):
        options = tap.Options(environ={})
        options.parseOptions(["--config", self.conf, "--certificate", path])
        return tap.makeService(options, reactor=Clock())

    def count_for(self, low, high):
        """The number of certificates whose HELLO is in (low, high]."""
        for count in range(1, 200):
            path, size = self.chain(count)
            if low < size <= high:
                return count, path, size
        self.fail(f"no chain makes a HELLO of {low + 1} to {high} bytes")

    def assertRefused(self, path, size):
        with self.assertRaises(usage.UsageError) as caught:
            self.start(path)
        self.assertEqual(
            str(caught.exception),
            f"{path}: HELLO would be {size} bytes, over the limit of 57344 (KX/1 allows "
            "65536, less 8192 kept for the ephemeral keys): send fewer "
            "certificates (clients hold the root already)",
        )

    def test_limit(self):
        self.assertEqual(tap.HELLO_RESERVE, 8192)
        self.assertEqual(tap.HELLO_LIMIT, 65536 - 8192)

    def test_chain_over_the_frame_limit_is_refused(self):
        _, path, size = self.count_for(65536, 1 << 20)
        self.assertRefused(path, size)

    def test_chain_in_the_reserved_room_is_refused(self):
        _, path, size = self.count_for(65536 - 8192, 65536)
        self.assertRefused(path, size)

    def test_largest_chain_that_fits_is_served(self):
        step = len(base64.b64encode(certs.der(self.leaf))) + len('"", ')
        count, path, size = self.count_for(65536 - 8192 - step, 65536 - 8192)
        service = self.start(path)
        self.assertEqual(len(service.factory.identity.certificates), count)
        self.assertEqual(len(service.factory.identity.hello_payload(b"\1" * 32)), size)


class AuthKeyBoundOptionTests(ServerFiles, unittest.TestCase):
    """``--client-key-max-bits`` and the config file, from the option to
    the wire."""

    def setUp(self):
        super().setUp()
        self.write_config("workers = 0\nmessage = hi\n")
        # The first ephemeral key is made at start: the vector one, at once.
        self.patch(rsa, "generate_private_key", lambda bits: EPHEMERAL_PRIVATE)

    def write(self, text, name="k.conf"):
        path = os.path.join(self.dir, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def factory(self, *argv):
        options = tap.Options(environ={})
        options.parseOptions(["--config", self.conf, *argv])
        # The ephemeral key's expiry comes from this clock, and the client
        # checks it against the real one.
        clock = Clock()
        clock.advance(time.time())
        return tap.makeService(options, reactor=clock).factory

    def auth(self, factory, identity):
        pair = Pair(clock=factory.reactor, factory=factory, identity=identity)
        pair.flush()
        return pair

    def assertAuthFailed(self, pair, detail):
        self.assertEqual(pair.application.data, b"")
        self.assertIsInstance(pair.application.reason.value, PeerError)
        self.assertEqual(
            (pair.application.reason.value.code, pair.application.reason.value.detail),
            ("auth-failed", detail),
        )

    def test_default_is_4096(self):
        factory = self.factory()
        self.assertEqual(factory.client_key_max_bits, 4096)
        self.assertEqual(factory.make_connection().client_key_max_bits, 4096)
        self.assertAuthFailed(self.auth(factory, JunkIdentity(8192)), "RSA modulus of 8192 bits")

    def test_command_line_8192_lets_the_key_through(self):
        factory = self.factory("--client-key-max-bits", "8192")
        self.assertEqual(factory.make_connection().client_key_max_bits, 8192)
        # Past the bound: refused only for its junk signature.
        self.assertAuthFailed(self.auth(factory, JunkIdentity(8192)), "bad AUTH signature")

    def test_config_file_value(self):
        self.conf = self.write(
            "[keyexchanged]\nprivate-key = server.key\nworkers = 0\nmessage = hi\n"
            "client-key-max-bits = 3072\n"
        )
        factory = self.factory()
        self.assertEqual(factory.client_key_max_bits, 3072)
        self.assertAuthFailed(self.auth(factory, JunkIdentity(4096)), "RSA modulus of 4096 bits")
        pair = self.auth(factory, CLIENT_KEY)  # 2048 bits: fine
        self.assertEqual(pair.application.data, b"hi")

    def test_a_real_key_within_the_bound_authenticates(self):
        pair = self.auth(self.factory(), CLIENT_KEY)
        self.assertEqual(pair.application.data, b"hi")

    BAD_VALUES = ("1024", "2047", "8193", "16384", "-4096", "4k", "4096.0", "")

    def test_bad_values_in_the_config_file(self):
        for value in self.BAD_VALUES:
            path = self.write(f"[keyexchanged]\nclient-key-max-bits = {value}\n", "bad.conf")
            with self.assertRaises(config.ConfigError) as caught:
                config.read_config(path)
            self.assertEqual(
                str(caught.exception),
                f"{path}, line 2: client-key-max-bits = {value!r}: "
                "must be a number of bits from 2048 to 8192",
            )

    def test_bad_values_on_the_command_line(self):
        for value in self.BAD_VALUES:
            with self.assertRaises(usage.UsageError) as caught:
                self.factory(f"--client-key-max-bits={value}")
            self.assertEqual(
                str(caught.exception),
                f"--client-key-max-bits: client-key-max-bits = {value!r}: "
                "must be a number of bits from 2048 to 8192",
            )

    def test_bounds_are_accepted(self):
        for value in ("2048", "8192", " 4096 "):
            path = self.write(f"[keyexchanged]\nclient-key-max-bits = {value}\n", "ok.conf")
            self.assertEqual(config.read_config(path)["client-key-max-bits"], int(value))
