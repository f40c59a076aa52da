"""Replay what the fuzzer ever found, and its seeds, without atheris.

Every file in ``tests/fuzz/regressions/`` (the crashes of ``make fuzz``,
kept once fixed) and in ``tests/fuzz/corpus/`` goes through the same
target function the fuzzer runs; the target raises when an invariant
breaks.  See ``tests/fuzz/fuzz_server.py`` for the input layout.
"""

import os

from twisted.trial import unittest

from keyexchanged import handshake
from tests.fuzz import fuzz_server
from tests.fuzz.fuzz_server import (
    CORPUS,
    REGRESSIONS,
    InvariantBroken,
    chunks,
    decode_input,
    fuzz_one_input,
    run_server,
)


def _inputs(directory):
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if os.path.isfile(path) and name != "README":
            with open(path, "rb") as f:
                yield name, f.read()


class RegressionTests(unittest.TestCase):
    def test_every_regression_file(self):
        for name, data in _inputs(REGRESSIONS):
            with self.subTest(name):
                fuzz_one_input(data)

    def test_the_directory_is_kept(self):
        self.assertTrue(os.path.isfile(os.path.join(REGRESSIONS, "README")))


class CorpusTests(unittest.TestCase):
    def test_seeds_are_the_committed_corpus(self):
        on_disk = dict(_inputs(CORPUS))
        for name, data in fuzz_server.seeds().items():
            self.assertEqual(on_disk.get(name), data, name)

    def test_every_seed_runs_clean(self):
        for name, data in _inputs(CORPUS):
            with self.subTest(name):
                fuzz_one_input(data)

    def test_honest_seeds_reach_the_end_of_a_session(self):
        # Seeds that stop at the parser would leave the fuzzer there.
        for name in ("raw-honest-auth-whole", "ops-honest-auth", "ops-updates"):
            stream, size, authorized = decode_input(fuzz_server.seeds()[name])
            events, _ = run_server(chunks(stream, size), authorized)
            self.assertIsInstance(events[0], handshake.HandshakeComplete, name)
            self.assertIsInstance(events[-1], handshake.EndReceived, name)

    def test_ops_reach_behind_the_record_layer(self):
        stream, _, _ = decode_input(fuzz_server.seeds()["ops-auth-garbage"])
        events, _ = run_server([stream], True)
        self.assertEqual(events, [handshake.ProtocolFailed("auth-failed", "malformed AUTH")])


class TargetTests(unittest.TestCase):
    """The target itself must be able to fail, or it guards nothing."""

    def test_an_invariant_break_raises(self):
        def broken_receive(self, data):
            return [handshake.ProtocolFailed("bad-record", "x")] * 2

        self.patch(handshake.ServerConnection, "receive_data", broken_receive)
        self.assertRaises(InvariantBroken, fuzz_one_input, b"\x00KEY 1\r\n")

    def test_an_exception_in_the_server_escapes(self):
        def crash(self, payload):
            raise KeyError("boom")

        self.patch(handshake.ServerConnection, "_on_KEY", crash)
        self.assertRaises(KeyError, fuzz_one_input, fuzz_server.seeds()["raw-honest-auth-whole"])

    def test_empty_and_flag_only_inputs(self):
        for data in (b"", b"\x00", b"\xff", b"\x02\x07"):
            fuzz_one_input(data)
