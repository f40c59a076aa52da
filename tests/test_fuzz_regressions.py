"""Replay what the fuzzer ever found, and its seeds, without atheris.

Every file in ``tests/fuzz/regressions/`` (the crashes of ``make fuzz``,
kept once fixed, and inputs seeded from bugs fixed before) and in
``tests/fuzz/corpus/`` goes through the same target function the fuzzer
runs; the target raises when an invariant breaks.  A regression file must
also produce exactly the server events recorded for it in
``regressions/expected.json``, where its entry says which bug it guards.
See ``tests/fuzz/fuzz_server.py`` for the input layout.
"""

import json
import os

from twisted.trial import unittest

from keyexchanged import handshake
from tests.fixtures import assert_every_case, frames
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

EXPECTED = os.path.join(REGRESSIONS, "expected.json")
NOT_INPUTS = {"README", "expected.json"}


def _inputs(directory):
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if os.path.isfile(path) and name not in NOT_INPUTS:
            with open(path, "rb") as f:
                yield name, f.read()


def _expected():
    with open(EXPECTED, encoding="utf-8") as f:
        return json.load(f)


class RegressionTests(unittest.TestCase):
    def test_every_regression_file(self):
        """No invariant breaks, no exception escapes, and the server says
        what it said once the bug was fixed: the same events, and exactly
        one ERROR when (and only when) it refused the input."""
        expected = _expected()

        def check(case):
            name, data = case
            fuzz_one_input(data)
            stream, size, authorized = decode_input(data)
            events, output = run_server(chunks(stream, size), authorized)
            self.assertIn(name, expected, f"{name}: add its entry to expected.json")
            self.assertEqual([repr(e) for e in events], expected[name]["events"], name)
            errors = [payload for verb, payload in frames(output) if verb == "ERROR"]
            failed = [e for e in events if isinstance(e, handshake.ProtocolFailed)]
            self.assertEqual(len(errors), len(failed), name)
            for payload, event in zip(errors, failed):
                self.assertEqual(
                    json.loads(payload), {"error": event.code, "detail": event.detail}, name
                )

        assert_every_case(self, list(_inputs(REGRESSIONS)), check, label=lambda case: case[0])

    def test_every_expectation_has_its_file(self):
        on_disk = {name for name, _ in _inputs(REGRESSIONS)}
        self.assertEqual(sorted(set(_expected()) - on_disk), [])

    def test_the_seeded_bugs_are_there(self):
        # A directory of only its README would replay nothing: the inputs
        # for the bugs fixed before fuzzing stay.
        names = set(_expected())
        for name in (
            "auth-nested-json",
            "auth-noncanonical-base64",
            "error-bad-json",
            "header-over-32-bytes-then-junk",
            "key-equal-to-n",
            "msg-over-limit-in-await-key",
        ):
            self.assertIn(name, names)


class CorpusTests(unittest.TestCase):
    def test_seeds_are_the_committed_corpus(self):
        on_disk = dict(_inputs(CORPUS))
        for name, data in fuzz_server.seeds().items():
            self.assertEqual(on_disk.get(name), data, name)

    def test_every_seed_runs_clean(self):
        assert_every_case(
            self,
            list(_inputs(CORPUS)),
            lambda case: fuzz_one_input(case[1]),
            label=lambda case: case[0],
        )

    def test_honest_seeds_reach_the_end_of_a_session(self):
        # Seeds that stop at the parser would leave the fuzzer there.
        for name in (
            "raw-honest-auth-whole",
            "ops-honest-auth",
            "ops-updates",
            "raw-resumed-whole",
            "raw-resumed-chunks-of-11",
        ):
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
        def crash(self, *args):
            raise KeyError("boom")

        self.patch(handshake.ServerConnection, "_key_agreed", crash)
        self.assertRaises(KeyError, fuzz_one_input, fuzz_server.seeds()["raw-honest-auth-whole"])

    def test_empty_and_flag_only_inputs(self):
        for data in (b"", b"\x00", b"\xff", b"\x02\x07"):
            fuzz_one_input(data)


class Revision3CorpusTests(unittest.TestCase):
    """The revision-3 seeds (``KX3`` first) reach the hybrid server, and each
    downgrade of the spec's §12.5 ends as it says."""

    def run_seed(self, name):
        stream, size, required = decode_input(fuzz_server.seeds()[name])
        events, _ = run_server(chunks(stream, size), required, revision3=True)
        return events

    def test_honest_seeds_reach_the_end_of_a_hybrid_session(self):
        for name in ("kx3-ops-honest", "kx3-raw-honest"):
            events = self.run_seed(name)
            self.assertEqual(
                events[0], handshake.HandshakeComplete(None, False, True, "aes-256-ocb"), name
            )
            self.assertIsInstance(events[-1], handshake.EndReceived, name)

    def test_downgrades(self):
        for name, code in [
            ("kx3-ops-truncated-mlkem", "malformed-frame"),
            ("kx3-ops-altered-mlkem", "bad-record"),
            ("kx3-ops-mlkem-dropped", "bad-record"),
            ("kx3-ops-mlkem-dropped-required", "no-post-quantum"),
        ]:
            (event,) = self.run_seed(name)
            self.assertEqual(event.code, code, name)

    def test_the_revision3_server_offers_the_vector_hello(self):
        # run_server checks HELLO against the vector; an empty stream is enough.
        self.assertEqual(run_server([b""], False, revision3=True), ([], b""))
