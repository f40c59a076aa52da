"""Every mistake a user makes at start, run as a real process: one line on
standard error saying what is wrong and what to do, the documented exit
status, and never a traceback, in the output or in the log.

``twistd keyexchange`` exits 1 for a setting, a file or a port it cannot
use and 2 for a mistake on the command line; ``keyexchange`` exits 1 for a
file or a setting and 4 when it cannot connect (the README's table).
"""

import os

from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory

from keyexchanged import keys
from keyexchanged.errors import EXIT_STATUS_TABLE
from tests.daemon import (
    CLIENT,
    MESSAGE,
    TWISTD,
    Daemon,
    DaemonTestCase,
    Output,
    connect_here,
    environment,
)
from tests.fixtures import SERVER_KEY
from tests.vectors import RAW

FINGERPRINT = RAW["server_fingerprint"]


def run(argv, env=None):
    """Run ``argv``; fires with ``(stdout, stderr, exit code)``."""
    output = Output()
    reactor.spawnProcess(output, argv[0], argv, env=env or environment())
    return output.done


class StartupErrorTests(DaemonTestCase):
    def setUp(self):
        super().setUp()
        self.write_config("")
        self.log = os.path.join(self.dir, "twistd.log")

    def taken_port(self):
        """A port of 127.0.0.1 that another listener holds."""
        port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @defer.inlineCallbacks
    def refused(self, argv, status, line):
        """``argv`` exits ``status`` with exactly ``line`` (the start of it)
        as its one line on stderr, and nothing that looks like a crash."""
        out, err, code = yield run(argv)
        self.assertEqual(code, status, (out + err).decode())
        lines = err.decode().splitlines()
        self.assertEqual(len(lines), 1, err.decode())
        self.assertTrue(lines[0].startswith(line), lines[0])
        everything = out + err
        if os.path.exists(self.log):
            with open(self.log, "rb") as f:
                everything += f.read()
        self.assertNotIn(b"Traceback", everything)
        self.assertNotIn(b"Unhandled Error", everything)
        self.assertNotIn(b"Usage:", everything)
        # Refused before it served: nothing listened first.
        self.assertNotIn(b"listening on", everything)
        return lines[0]

    def daemon(self, *args, status=1, line, foreground=True):
        twistd = [*TWISTD, "--pidfile", os.path.join(self.dir, "twistd.pid")]
        twistd += ["--logfile", self.log]
        if foreground:
            twistd.append("-n")
        return self.refused([*twistd, "keyexchange", "--config", self.conf, *args], status, line)

    # -- --listen ----------------------------------------------------------------------

    def test_listen_port_out_of_range(self):
        return self.daemon(
            "--listen", "tcp:99999",
            line="twistd keyexchange: listen tcp:99999: port 99999 is not a port (0 to 65535)",
        )  # fmt: skip

    def test_listen_negative_port(self):
        return self.daemon(
            "--listen", "tcp:-1",
            line="twistd keyexchange: listen tcp:-1: port -1 is not a port (0 to 65535)",
        )  # fmt: skip

    def test_listen_port_not_a_number(self):
        return self.daemon(
            "--listen", "tcp:abc",
            line="twistd keyexchange: listen tcp:abc: not an endpoint (the port must be a number)",
        )  # fmt: skip

    def test_listen_unknown_endpoint_type(self):
        return self.daemon(
            "--listen", "tpc:12345",
            line="twistd keyexchange: listen tpc:12345: not an endpoint "
            "(Unknown endpoint type: 'tpc')",
        )  # fmt: skip

    def test_listen_bare_port(self):
        return self.daemon(
            "--listen", "12345",
            line="twistd keyexchange: --listen: listen = '12345': must be an endpoint "
            "description such as tcp:51424",
        )  # fmt: skip

    def test_listen_interface_not_an_address(self):
        return self.daemon(
            "--listen", "tcp:0:interface=127.0.0.999",
            line="twistd keyexchange: cannot listen on tcp:0:interface=127.0.0.999: "
            "127.0.0.999 is not an address of this machine",
        )  # fmt: skip

    def test_listen_port_in_use(self):
        port = self.taken_port()
        return self.daemon(
            "--listen", f"tcp:{port}:interface=127.0.0.1",
            line=f"twistd keyexchange: cannot listen on tcp:{port}:interface=127.0.0.1: "
            "Address already in use: another process listens there",
        )  # fmt: skip

    def test_listen_port_in_use_daemonized(self):
        """The same line on the terminal when twistd would daemonize: the
        port is tried before it forks."""
        port = self.taken_port()
        return self.daemon(
            "--listen", f"tcp:{port}:interface=127.0.0.1",
            foreground=False,
            line=f"twistd keyexchange: cannot listen on tcp:{port}:interface=127.0.0.1: "
            "Address already in use",
        )  # fmt: skip

    def test_listen_systemd_socket_not_passed(self):
        return self.daemon(
            "--listen", "systemd:domain=INET:name=keyexchanged",
            line="twistd keyexchange: listen systemd:domain=INET:name=keyexchanged: no "
            "socket named 'keyexchanged' was passed by systemd",
        )  # fmt: skip

    def test_listen_unix_socket_in_a_missing_directory(self):
        missing = os.path.join(self.dir, "missing")
        return self.daemon(
            "--listen", f"unix:{missing}/kx.sock",
            line=f"twistd keyexchange: cannot listen on unix:{missing}/kx.sock: {missing} "
            "is not a directory: create it first",
        )  # fmt: skip

    # -- --metrics ---------------------------------------------------------------------

    def test_metrics_bare_port(self):
        return self.daemon(
            "--metrics", "9464",
            line="twistd keyexchange: --metrics 9464: not an endpoint",
        )  # fmt: skip

    def test_metrics_port_in_use(self):
        """Refused before the KX/1 port listens (``refused`` checks that)."""
        port = self.taken_port()
        return self.daemon(
            "--metrics", f"tcp:{port}:interface=127.0.0.1",
            line=f"twistd keyexchange: --metrics tcp:{port}:interface=127.0.0.1: cannot "
            "listen: Address already in use",
        )  # fmt: skip

    # -- the config file and the command line -----------------------------------------

    def test_unknown_setting(self):
        self.write_config("colour = blue\n")
        return self.daemon(
            line=f"twistd keyexchange: {self.conf}, line 4: unknown setting 'colour'"
        )

    def test_bad_value(self):
        self.write_config("idle-timeout = never\n")
        return self.daemon(
            line=f"twistd keyexchange: {self.conf}, line 4: idle-timeout = 'never': "
            "must be a number of seconds"
        )

    def test_missing_config_file(self):
        self.conf = os.path.join(self.dir, "missing.conf")
        return self.daemon(
            line=f"twistd keyexchange: {self.conf}: cannot read config file: "
            "No such file or directory"
        )

    def test_unknown_option(self):
        return self.daemon(
            "--colour", "blue",
            status=2,
            line="twistd keyexchange: option --colour not recognized: "
            "see twistd keyexchange --help",
        )  # fmt: skip

    def test_encrypted_key_without_passphrase(self):
        keys.save_private_key(SERVER_KEY, self.key, passphrase=b"correct horse", force=True)
        return self.daemon(
            line=f"twistd keyexchange: {self.key}: the private key is encrypted: give its "
            "passphrase in a file with --private-key-passphrase-file FILE",
        )

    # -- keyexchange -------------------------------------------------------------------

    def test_tunnel_bare_port(self):
        return self.refused(
            [*CLIENT, "tunnel", "--listen", "6380", "--server", "127.0.0.1", "--insecure"],
            1,
            "keyexchange: error: --listen 6380: not an endpoint",
        )

    @defer.inlineCallbacks
    def test_connect_to_a_closed_port(self):
        listening = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        port = listening.getHost().port
        yield listening.stopListening()
        yield self.refused(
            [*CLIENT, "connect", f"127.0.0.1:{port}", "--fingerprint", FINGERPRINT],
            4,
            "keyexchange: error: cannot connect: connection refused",
        )


class PassphraseFileTests(DaemonTestCase):
    @defer.inlineCallbacks
    def test_encrypted_key_with_its_passphrase_file_serves(self):
        keys.save_private_key(SERVER_KEY, self.key, passphrase=b"correct horse", force=True)
        passphrase = os.path.join(self.dir, "passphrase")
        with open(passphrase, "w") as f:
            f.write("correct horse\n")
        self.write_config(f"private-key-passphrase-file = {passphrase}\n")
        daemon = Daemon.start(["--config", self.conf])
        self.addCleanup(daemon.stop)
        port = yield daemon.listening
        out, err, code = yield connect_here(port)
        self.assertEqual((out, code), (MESSAGE, 0), err)


class HelpTests(DaemonTestCase):
    @defer.inlineCallbacks
    def test_twistd_keyexchange_help_ends_with_the_exit_statuses(self):
        out, err, code = yield run([*TWISTD, "keyexchange", "--help"])
        self.assertEqual(code, 0, err)
        text = out.decode().rstrip("\n")
        self.assertTrue(text.endswith(EXIT_STATUS_TABLE.rstrip("\n")), text[-600:])
