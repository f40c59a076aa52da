"""The documentation's runnable example keeps running."""

import importlib.util
import os

from twisted.internet import defer, error, reactor
from twisted.trial import unittest

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
