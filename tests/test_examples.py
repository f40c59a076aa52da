"""The documentation's runnable example keeps running."""

import importlib.util
import os
import sys

from twisted.internet import defer, error, reactor, utils
from twisted.trial import unittest

from keyexchanged import keys

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs", "examples", "lines.py")


def load_example():
    spec = importlib.util.spec_from_file_location("lines_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class LinesExampleTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_conversation(self):
        lines = []
        yield load_example().conversation(reactor, ("ping", "bye"), lines.append)
        self.assertEqual(
            lines,
            [
                "> ping",
                "> bye",
                "< hello, an anonymous client",
                "< PING",
                "< BYE",
                f"session ended: {error.ConnectionDone.__name__}",
            ],
        )


EMBEDDING = os.path.join(os.path.dirname(EXAMPLE), "embedding.py")


def load_embedding():
    spec = importlib.util.spec_from_file_location("embedding_example", EMBEDDING)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class EmbeddingExampleTests(unittest.TestCase):
    """docs/examples/embedding.py: the README's Python API section."""

    timeout = 60

    @defer.inlineCallbacks
    def test_greeting(self):
        """The server's key comes from the file, and the client reaches the
        server pinned to the fingerprint of the public key file."""
        example = load_embedding()
        directory = self.mktemp()
        os.mkdir(directory)
        key_file = example.key_files(directory)
        fingerprint = keys.fingerprint(keys.load_private_key(key_file))
        lines = []
        yield example.greet(reactor, key_file, b"reader", lines.append)
        self.assertEqual(
            lines,
            [
                f"server {fingerprint} said: hello, reader",
                f"session ended: {error.ConnectionDone.__name__}",
            ],
        )

    def test_key_files_kept(self):
        """A second run uses the key pair the first one made."""
        example = load_embedding()
        directory = self.mktemp()
        os.mkdir(directory)
        first = keys.load_private_key(example.key_files(directory))
        second = keys.load_private_key(example.key_files(directory))
        self.assertEqual(keys.fingerprint(first), keys.fingerprint(second))

    @defer.inlineCallbacks
    def test_runs_as_a_program(self):
        """``python docs/examples/embedding.py``, as the page says."""
        out, err, code = yield utils.getProcessOutputAndValue(
            sys.executable, [EMBEDDING], env=os.environ
        )
        self.assertEqual((code, err), (0, b""))
        lines = out.decode().splitlines()
        self.assertEqual(len(lines), 2, lines)
        self.assertRegex(lines[0], r"^server SHA256:[A-Za-z0-9+/]{43} said: hello, world$")
        self.assertEqual(lines[1], "session ended: ConnectionDone")
