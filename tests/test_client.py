"""keyexchanged.client: what --explain says, the error lines, and the
reading of ``HOST[:PORT]`` (the default port and the errors a user sees)."""

import io

from twisted.internet import defer, error, protocol, reactor
from twisted.trial import unittest

from keyexchanged import client
from tests.daemon import CLIENT, MESSAGE, DaemonTestCase, environment
from tests.vectors import RAW

FINGERPRINT = RAW["server_fingerprint"]


class Connection:
    """What the explainer reads of a client connection."""

    hello_payload = b'{"kx": 1}'
    key_payload = b"\0" * 384
    transcript_hash = b"\1" * 32
    identity = None
    post_quantum_session = False
    record_cipher = "aes-256-gcm"

    def __init__(self, resumed, ephemeral=None):
        self.resumed = resumed
        self.ephemeral = ephemeral


class ExplainerTests(unittest.TestCase):
    def explained(self, connection):
        stream = io.StringIO()
        explainer = client.Explainer(stream)
        explainer.key_accepted(connection)
        explainer.confirmed()
        return stream.getvalue().splitlines()[-1]

    def test_a_resumed_session_proves_the_ticket_key(self):
        line = self.explained(Connection(resumed=True))
        self.assertIn("it holds the ticket key that opened our ticket", line)
        self.assertNotIn("private key.", line)

    def test_a_full_handshake_proves_the_ephemeral_key(self):
        line = self.explained(Connection(resumed=False, ephemeral=object()))
        self.assertIn("it holds the private half of the ephemeral key.", line)

    def test_without_forward_secrecy_the_servers_key(self):
        line = self.explained(Connection(resumed=False))
        self.assertIn("it holds the private half of the server's key.", line)


class DescribeTests(unittest.TestCase):
    def test_connection_refused_says_so(self):
        text, status = client.describe(error.ConnectionRefusedError(111))
        self.assertEqual(status, 4)
        self.assertTrue(text.startswith("cannot connect: connection refused: "), text)
        self.assertNotIn("111", text)


class Output(io.BytesIO):
    def __init__(self, terminal):
        super().__init__()
        self.terminal = terminal

    def isatty(self):
        return self.terminal


class EndLineTests(unittest.TestCase):
    def received(self, data, terminal):
        output = Output(terminal)
        application = client.StdioApplication(output)
        application.dataReceived(data)
        application.end_line()
        return output.getvalue()

    def test_a_terminal_gets_a_newline_after_the_message(self):
        self.assertEqual(self.received(b"hello", terminal=True), b"hello\n")

    def test_not_a_second_one(self):
        self.assertEqual(self.received(b"hello\n", terminal=True), b"hello\n")

    def test_a_pipe_gets_the_bytes_exactly(self):
        self.assertEqual(self.received(b"hello", terminal=False), b"hello")

    def test_nothing_received_nothing_added(self):
        self.assertEqual(self.received(b"", terminal=True), b"")


class _Terminal(protocol.ProcessProtocol):
    """A command on a pseudo-terminal: what the user's screen shows."""

    def __init__(self):
        self.output = b""
        self.done = defer.Deferred()

    def childDataReceived(self, fd, data):
        self.output += data

    def processEnded(self, reason):
        self.done.callback((self.output, reason.value.exitCode))


class TerminalTests(DaemonTestCase):
    @defer.inlineCallbacks
    def test_on_a_terminal_the_message_ends_its_line(self):
        port = self.shared_daemon().port
        terminal = _Terminal()
        argv = [*CLIENT, "connect", f"127.0.0.1:{port}", "--fingerprint", FINGERPRINT]
        reactor.spawnProcess(terminal, argv[0], argv, env=environment(), usePTY=True)
        output, code = yield terminal.done
        self.assertEqual(code, 0, output)
        # The terminal's line discipline makes "\n" "\r\n".
        self.assertTrue(output.endswith(MESSAGE + b"\r\n"), output)


class ParseServerTests(unittest.SynchronousTestCase):
    def test_the_default_port_is_51424(self):
        self.assertEqual(client.parse_server("localhost"), ("localhost", 51424))
        self.assertEqual(client.parse_server("[::1]"), ("::1", 51424))

    def test_a_port_given(self):
        self.assertEqual(client.parse_server("kx.example:1"), ("kx.example", 1))
        self.assertEqual(client.parse_server("[2001:db8::1]:65535"), ("2001:db8::1", 65535))

    def test_an_ipv6_address_without_brackets_is_all_host(self):
        self.assertEqual(client.parse_server("2001:db8::1"), ("2001:db8::1", 51424))

    def test_errors_name_the_text_and_what_is_wrong(self):
        refused = {}
        for text in ("[::1", "[::1]x", ":5", "h:port", "h:0", "h:65536"):
            try:
                client.parse_server(text)
            except ValueError as error:
                refused[text] = str(error)
        self.assertEqual(
            refused,
            {
                "[::1": "'[::1': unclosed [ in IPv6 address",
                "[::1]x": "'[::1]x': expected :PORT after ]",
                ":5": "':5': no host name",
                "h:port": "'h:port': the port must be a number",
                "h:0": "'h:0': the port must be from 1 to 65535",
                "h:65536": "'h:65536': the port must be from 1 to 65535",
            },
        )
