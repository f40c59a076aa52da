"""Faults, with the real daemon and the real client.

- SIGTERM or SIGINT while a session is open: the daemon stops accepting,
  lets the session finish (its data whole, its END delivered) inside the
  grace period, cuts what is left when the period ends, and exits 0.
- A server that vanishes mid-session: ``keyexchange connect`` exits 5 and
  says the output is truncated; it never reports success.
- Key generation into an unwritable or full location: a clear error, and
  no key file left behind.
- A bad setting: start-up refused with the line (or option) and the reason.

Processes are driven by their output and exit, never by a timer.  The
tmpfs cases need root and mount(8); they are skipped elsewhere, and the
in-process cases cover the same ground with a patched ``os.write``.
"""

import errno
import hashlib
import os
import subprocess

from twisted.internet import defer, endpoints, error, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.trial import unittest

from keyexchanged import keys, rsa, tap
from keyexchanged.framing import encode_frame
from keyexchanged.handshake import (
    ClientConnection,
    DataReceived,
    EndReceived,
    ErrorReceived,
    HandshakeComplete,
    ServerConnection,
    ServerKeyReceived,
)
from tests.daemon import Daemon, DaemonTestCase, run_client
from tests.fixtures import EPHEMERAL, IDENTITY, SERVER_KEY, temporary_directory
from tests.vectors import RAW

FINGERPRINT = RAW["server_fingerprint"]
#: The largest message the daemon serves.  Far more than the loopback
#: socket buffers hold, so while the client is not reading, much of it is
#: still in the daemon's own write buffer when the signal comes.
BIG = 16 * 1024 * 1024


class SlowClient(Protocol):
    """A KX/1 client the test drives step by step (the sans-IO client
    under a plain TCP protocol)."""

    def __init__(self, pause_after_handshake=False):
        self.connection = ClientConnection()
        self.pause_after_handshake = pause_after_handshake
        self.received = []
        self.events = []
        self.hello = defer.Deferred()
        self.confirmed = defer.Deferred()
        self.ended = defer.Deferred()
        self.closed = defer.Deferred()
        self.accept = True

    @property
    def data(self):
        return b"".join(self.received)

    def dataReceived(self, data):
        for event in self.connection.receive_data(data):
            self.events.append(event)
            if isinstance(event, ServerKeyReceived):
                if event.fingerprint != FINGERPRINT:
                    self.connection.reject_key("not the test key")
                elif self.accept:
                    self.connection.accept_key()
                self.hello.callback(event)
            elif isinstance(event, HandshakeComplete):
                if self.pause_after_handshake:
                    self.transport.pauseProducing()
                self.confirmed.callback(event)
            elif isinstance(event, DataReceived):
                self.received.append(event.data)
            elif isinstance(event, EndReceived):
                self.ended.callback(event)
        self.flush()

    def flush(self):
        out = self.connection.data_to_send()
        if out:
            self.transport.write(out)

    def send(self, data):
        self.connection.send_data(data)
        self.flush()

    def end(self):
        self.connection.send_end()
        self.flush()

    def connectionLost(self, reason):
        self.closed.callback(reason.value)


class DaemonCase(DaemonTestCase):
    @defer.inlineCallbacks
    def start(self, *args):
        daemon = Daemon.start(["--config", self.conf, *args])
        self.addCleanup(daemon.stop)
        self.port = yield daemon.listening
        self.endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        return daemon

    def connect(self, protocol):
        return endpoints.connectProtocol(self.endpoint, protocol)

    @defer.inlineCallbacks
    def assertNotServed(self):
        """A new connection is refused, or (when it reached the listen
        backlog just before the port closed) reset without a byte: either
        way it is not served.  A served one would get HELLO at once."""
        probe = Probe()
        try:
            yield self.connect(probe)
        except error.ConnectionRefusedError:
            return
        yield probe.lost
        self.assertEqual(probe.received, b"", "a connection was served after the signal")


class Probe(Protocol):
    def __init__(self):
        self.received = b""
        self.lost = defer.Deferred()

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.lost.callback(None)


class SignalTests(DaemonCase):
    @defer.inlineCallbacks
    def stop_during_a_session(self, signal):
        message = os.urandom(BIG)
        message_file = os.path.join(self.dir, "message.bin")
        with open(message_file, "wb") as f:
            f.write(message)
        self.write_config(f"message-file = {message_file}\ngrace-period = 60\n")
        daemon = yield self.start()
        # A session past its handshake, not reading, still to send its data.
        client = SlowClient(pause_after_handshake=True)
        yield self.connect(client)
        yield client.confirmed
        client.send(b"sent before the signal; ")

        daemon.signal(signal)
        yield daemon.wait_for(b"(TCP Port %d Closed)" % self.port)
        # No new connections...
        yield self.assertNotServed()
        # ...but the open session goes on: it still sends, and reads all.
        client.send(b"and after it")
        client.transport.resumeProducing()
        yield client.ended
        client.end()
        yield client.closed
        code = yield daemon.ended

        self.assertEqual(code, 0, daemon.output.decode())
        # Compared by length and digest: a diff of the whole message would
        # drown the report.
        self.assertEqual(len(client.data), len(message), "the message arrived cut")
        self.assertEqual(
            hashlib.sha256(client.data).hexdigest(),
            hashlib.sha256(message).hexdigest(),
            "the message arrived changed",
        )
        self.assertEqual([type(e) for e in client.events][-1], EndReceived)
        self.assertIn(signal.encode(), daemon.output)
        # The daemon read every byte the client sent, and the session ended
        # as a shutdown, not as an error or a cut.
        self.assertIn(
            b"ended: shutdown; full, forward secrecy; %d bytes in" % client.connection.bytes_sent,
            daemon.output,
        )
        self.assertNotIn(b"Traceback", daemon.output)

    def test_sigterm_lets_the_open_session_finish(self):
        return self.stop_during_a_session("TERM")

    def test_sigint_lets_the_open_session_finish(self):
        return self.stop_during_a_session("INT")

    @defer.inlineCallbacks
    def test_grace_period_ends_what_is_left(self):
        """A handshake under way is told ERROR busy; a session that never
        ENDs is cut when the grace period is over; the exit is still 0."""
        self.write_config("grace-period = 0.5\n")
        daemon = yield self.start()
        lingering = SlowClient()
        yield self.connect(lingering)
        yield lingering.ended  # the message and END; it never answers END
        halfway = SlowClient()
        halfway.accept = False  # HELLO read, no KEY sent
        yield self.connect(halfway)
        yield halfway.hello

        daemon.signal("TERM")
        yield halfway.closed
        self.assertEqual(halfway.events[-1], ErrorReceived("busy", "server is shutting down"))
        reason = yield lingering.closed
        code = yield daemon.ended
        self.assertEqual(code, 0, daemon.output.decode())
        # Cut, not closed cleanly: it had not said END.
        self.assertFalse(lingering.connection.finished)
        self.assertIsInstance(reason, error.ConnectionClosed)
        self.assertIn(b"ended: busy", daemon.output)

    @defer.inlineCallbacks
    def test_a_second_signal_cuts_at_once(self):
        """The operator will not wait out a long grace period: the second
        SIGTERM cuts what is left, and the exit is still 0."""
        self.write_config("grace-period = 300\n")
        daemon = yield self.start()
        lingering = SlowClient()
        yield self.connect(lingering)
        yield lingering.ended  # it never answers END
        daemon.signal("TERM")
        yield daemon.wait_for(b"SIGTERM: no new connections")
        daemon.signal("TERM")
        reason = yield lingering.closed
        code = yield daemon.ended
        self.assertEqual(code, 0, daemon.output.decode())
        self.assertIsInstance(reason, error.ConnectionClosed)
        self.assertIn(b"SIGTERM again: cutting the open sessions now", daemon.output)
        self.assertNotIn(b"Traceback", daemon.output)


class VanishingServer(Protocol):
    """A KX/1 server for the test key that drops the connection part-way."""

    def __init__(self, how):
        self.how = how

    def connectionMade(self):
        self.connection = ServerConnection(IDENTITY, ephemeral=EPHEMERAL)
        self.connection.start()
        self.transport.write(self.connection.data_to_send())

    def dataReceived(self, data):
        for event in self.connection.receive_data(data):
            if isinstance(event, HandshakeComplete):
                getattr(self, "vanish_" + self.how)()
                return

    def vanish_before_confirmation(self):
        self.transport.loseConnection()

    def vanish_between_records(self):
        self.connection.send_data(b"first part, ")
        self.transport.write(self.connection.data_to_send())
        self.transport.loseConnection()

    def vanish_mid_record(self):
        self.connection.send_data(b"first part, ")
        whole = self.connection.data_to_send()
        self.connection.send_data(b"and the rest, which never comes")
        partial = self.connection.data_to_send()
        self.transport.write(whole + partial[: len(partial) // 2])
        self.transport.loseConnection()

    def vanish_mid_end(self):
        self.connection.send_data(b"first part, ")
        self.connection.send_end()
        stream = self.connection.data_to_send()
        self.transport.write(stream[:-3])  # all but the END's last bytes
        self.transport.loseConnection()


class VanishingServerTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def connect_to(self, how):
        port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(lambda: VanishingServer(how))
        )
        self.addCleanup(port.stopListening)
        result = yield run_client(
            "connect", f"127.0.0.1:{port.getHost().port}", "--fingerprint", FINGERPRINT
        )
        return result

    @defer.inlineCallbacks
    def assertTruncated(self, how):
        out, err, code = yield self.connect_to(how)
        self.assertEqual(code, 5, err)
        self.assertEqual(out, b"first part, ")
        self.assertIn(b"connection closed before the server's END: output is truncated", err)

    def test_mid_record(self):
        return self.assertTruncated("mid_record")

    def test_between_records(self):
        return self.assertTruncated("between_records")

    def test_mid_end(self):
        return self.assertTruncated("mid_end")

    @defer.inlineCallbacks
    def test_before_confirmation(self):
        out, err, code = yield self.connect_to("before_confirmation")
        self.assertEqual((out, code), (b"", 4), err)
        self.assertIn(b"connection closed during the handshake", err)


# -- key generation ------------------------------------------------------------------


def _mount_tmpfs(testcase, size, read_only=False):
    """A small tmpfs of ``size`` bytes, unmounted at cleanup; skip if we
    cannot mount one here."""
    if os.geteuid() != 0:
        raise unittest.SkipTest("mounting a tmpfs needs root")
    path = os.path.abspath(testcase.mktemp())
    os.makedirs(path)
    options = f"size={size},mode=0700" + (",ro" if read_only else "")
    try:
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", path],
            capture_output=True,
            check=False,
        )
    except OSError:
        raise unittest.SkipTest("no mount(8) here") from None
    if result.returncode != 0:
        raise unittest.SkipTest(f"cannot mount a tmpfs: {result.stderr.decode().strip()}")
    testcase.addCleanup(subprocess.run, ["umount", "-l", path], check=False)
    return path


def _fill(directory):
    """Fill the file system of ``directory`` to the last byte."""
    fd = os.open(os.path.join(directory, "filler"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as caught:
        if caught.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)


class KeyGenerationTests(DaemonCase):
    @defer.inlineCallbacks
    def refused(self, key_path):
        self.write_config("key-bits = 2048\n", key=key_path)
        daemon = Daemon.start(["--config", self.conf])
        code = yield daemon.refused()
        self.assertNotEqual(code, 0)
        self.assertNotIn(b"Traceback", daemon.output)
        self.assertIn(key_path.encode(), daemon.output)
        return daemon.output

    @defer.inlineCallbacks
    def test_directory_is_a_regular_file(self):
        not_a_directory = os.path.join(self.dir, "file")
        with open(not_a_directory, "w") as f:
            f.write("in the way\n")
        self.write_config()
        before = sorted(os.listdir(self.dir))
        output = yield self.refused(os.path.join(not_a_directory, "server.key"))
        self.assertIn(b"cannot create the key directory", output)
        self.assertEqual(sorted(os.listdir(self.dir)), before)
        with open(not_a_directory) as f:
            self.assertEqual(f.read(), "in the way\n")

    @defer.inlineCallbacks
    def test_deeper_under_a_regular_file(self):
        not_a_directory = os.path.join(self.dir, "file")
        open(not_a_directory, "w").close()
        output = yield self.refused(os.path.join(not_a_directory, "keys", "server.key"))
        self.assertIn(b"cannot create the key directory: Not a directory", output)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "keys")))

    @defer.inlineCallbacks
    def test_read_only_file_system(self):
        mount = _mount_tmpfs(self, 64 * 1024, read_only=True)
        output = yield self.refused(os.path.join(mount, "server.key"))
        self.assertIn(b"cannot write: Read-only file system", output)
        self.assertEqual(os.listdir(mount), [])

    @defer.inlineCallbacks
    def test_full_file_system(self):
        mount = _mount_tmpfs(self, 64 * 1024)
        _fill(mount)
        output = yield self.refused(os.path.join(mount, "server.key"))
        self.assertIn(b"server.key: cannot write: No space left on device", output)
        # Not even a temporary file is left.
        self.assertEqual(os.listdir(mount), ["filler"])

    @defer.inlineCallbacks
    def test_room_for_the_private_key_only(self):
        # One page: the private key fits, its public half does not.
        mount = _mount_tmpfs(self, 4096)
        output = yield self.refused(os.path.join(mount, "server.key"))
        self.assertIn(b"server.key.pub: cannot write: No space left on device", output)
        # Half a key pair is a partial key: the next start would serve a
        # key whose public half was never written.
        self.assertEqual(os.listdir(mount), [])


class InProcessKeyGenerationTests(unittest.TestCase):
    """The same without a tmpfs: ``os.write`` fails as a full disk does."""

    def setUp(self):
        self.dir = temporary_directory(self)
        self.path = os.path.join(self.dir, "keys", "server.key")
        # Generation itself is not under test here.
        self.patch(rsa, "generate_private_key", lambda bits, progress=None: SERVER_KEY)
        self.reports = []

    def disk_full_after(self, writes):
        real_write = os.write
        budget = [writes]

        def write(fd, data):
            if budget[0] <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            budget[0] -= 1
            return real_write(fd, data)

        self.patch(os, "write", write)

    def files(self):
        found = []
        for root, _, names in os.walk(self.dir):
            found += [os.path.relpath(os.path.join(root, n), self.dir) for n in names]
        return found

    def test_full_before_the_private_key(self):
        self.disk_full_after(0)
        caught = self.assertRaises(
            keys.KeyFileError, tap.load_or_create_key, self.path, 2048, self.reports.append
        )
        self.assertEqual(str(caught), f"{self.path}: cannot write: {os.strerror(errno.ENOSPC)}")
        self.assertEqual(self.files(), [])

    def test_full_before_the_public_key(self):
        self.disk_full_after(1)
        caught = self.assertRaises(
            keys.KeyFileError, tap.load_or_create_key, self.path, 2048, self.reports.append
        )
        self.assertIn(".pub: cannot write: No space left on device", str(caught))
        self.assertEqual(self.files(), [])

    def test_directory_is_a_regular_file_says_so(self):
        in_the_way = os.path.join(self.dir, "keys")
        open(in_the_way, "w").close()
        caught = self.assertRaises(
            keys.KeyFileError, tap.load_or_create_key, self.path, 2048, self.reports.append
        )
        # "File exists" (makedirs' EEXIST) would send the reader looking for
        # the key file; the trouble is that the directory is not one.
        self.assertIn("Not a directory", str(caught))
        self.assertEqual(self.files(), ["keys"])


class BadSettingTests(DaemonCase):
    """test_daemon checks the line of a bad value; these check the reason
    too, for the fault settings, in the file and on the command line."""

    @defer.inlineCallbacks
    def test_bad_grace_period(self):
        self.write_config()
        on_command_line = Daemon.start(["--config", self.conf, "--grace-period", "soon"])
        self.conf = os.path.join(self.dir, "bad.conf")
        self.write_config("\n# stop settings\ngrace-period = -1\n")
        in_file = Daemon.start(["--config", self.conf])
        codes = yield defer.gatherResults([in_file.refused(), on_command_line.refused()])
        self.assertNotIn(0, codes)
        self.assertIn(
            b"line 6: grace-period = '-1': must be a number of seconds, 0 or more",
            in_file.output,
        )
        self.assertIn(
            b"--grace-period: grace-period = 'soon': must be a number of seconds, 0 or more",
            on_command_line.output,
        )
        for daemon in (in_file, on_command_line):
            self.assertNotIn(b"Traceback", daemon.output)
            self.assertNotIn(b"listening on", daemon.output)


class KeyOnly(Protocol):
    """Reads HELLO, sends one KEY of its own making (and no first record),
    and fires ``answered`` with what the daemon sent after HELLO once that
    is at least one whole frame."""

    def __init__(self, make_key):
        self.make_key = make_key
        self.connection = ClientConnection()
        self.buffer = b""
        self.hello_length = None
        self.answered = defer.Deferred()

    def dataReceived(self, data):
        self.buffer += data
        if self.hello_length is None:
            for event in self.connection.receive_data(data):
                if isinstance(event, ServerKeyReceived):
                    self.hello_length = len(self.buffer)
                    self.transport.write(encode_frame("KEY", self.make_key(self.connection)))
            return
        after = self.buffer[self.hello_length :]
        if b"\r\n" in after and not self.answered.called:
            header = after[: after.index(b"\r\n")]
            length = int(header.split(b" ")[1])
            if len(after) >= len(header) + 2 + length:
                self.answered.callback(after)
                self.transport.loseConnection()


def _genuine(connection):
    ephemeral = connection.ephemeral.public_key
    return ephemeral.encrypt_oaep(b"s" * 32, label=connection.hello_payload)


def _at_n(connection):
    n = connection.ephemeral.public_key.n
    return n.to_bytes((n.bit_length() + 7) // 8, "big")


class RawPeerTests(DaemonCase):
    """The real daemon answers a bad KEY value exactly as a good one."""

    @defer.inlineCallbacks
    def test_key_at_or_above_n_gets_the_same_confirmation(self):
        daemon = self.shared_daemon()  # it only answers two connections
        self.endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", daemon.port)
        answers = []
        for make_key in (_genuine, _at_n):
            client = KeyOnly(make_key)
            yield self.connect(client)
            answers.append((yield client.answered))
        # The key confirmation either way: one empty MSG, the same length.
        self.assertEqual([a[:8] for a in answers], [b"MSG 16\r\n"] * 2)
        self.assertEqual([len(a) for a in answers], [24, 24])
