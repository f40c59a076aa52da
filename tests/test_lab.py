"""The lab (keyexchanged.lab): every lesson's attack works against the
original exercise's scheme and fails against KX/1 — both checked.

Each lesson runs for real on 127.0.0.1: the weak halves in the test's own
thread (they need no reactor), the KX/1 halves in a thread of trial's pool,
while the reactor serves the daemon they attack.  The weak halves are seeded
(:data:`SEED`), so their keys, session keys and the padding oracle's query
count are the same on every run.
"""

import base64
import hashlib
import io
import json
import os
import subprocess
import sys

from twisted.internet import defer, threads
from twisted.trial import unittest

from keyexchanged import cli, handshake, keys
from keyexchanged import lab as lab_package
from keyexchanged.lab import (
    forward_secrecy,
    mitm,
    padding_oracle,
    post_quantum,
    replay,
    runner,
    textbook_rsa,
    unauthenticated_aes,
    weak,
    wire,
)
from keyexchanged.records import RecordSealer
from tests.daemon import environment, run_client
from tests.fixtures import CLIENT_KEY, SERVER_KEY
from tests.vectors import RESUME_PATH

#: One seed for every weak half.  With it the padding oracle needs 5 336
#: queries on its 512-bit key (half a second); a seed takes 50 000 on
#: average, see padding_oracle.MAX_QUERIES.
SEED = 1
SEED_QUERIES = 5336

HERE = os.path.dirname(os.path.abspath(__file__))
REPOSITORY = os.path.dirname(HERE)
#: The revision 2 vectors of the independent implementation (in the repository).
SHARED_EPHEMERAL_VECTORS = RESUME_PATH


class LessonTestCase(unittest.TestCase):
    """A lab with the vector server key (no key generation per test)."""

    timeout = 60
    lesson = None

    def setUp(self):
        self.out = io.StringIO()
        self.lab = runner.Lab(out=self.out, seed=SEED, kx1_key=SERVER_KEY)
        self.addCleanup(self.lab.close)

    def weak(self):
        return self.lesson.against_weak(self.lab)

    def kx1(self):
        return threads.deferToThread(self.lesson.against_kx1, self.lab)


class TextbookRSATests(LessonTestCase):
    lesson = textbook_rsa

    def test_integer_root(self):
        for k in (2, 3, 65537):
            for x in (0, 1, 2, 7, 8, 9, 2**300, 3**300 - 1, 12345**k, 12345**k - 1):
                r = textbook_rsa.integer_root(x, k)
                self.assertTrue(r**k <= x < (r + 1) ** k, (x, k, r))

    def test_weak_cube_root_and_malleability(self):
        outcome = self.weak()
        self.assertTrue(outcome.worked, self.out.getvalue())
        self.assertEqual(outcome.evidence["recovered"], outcome.evidence["victim_key"])
        self.assertEqual(outcome.evidence["read"], textbook_rsa.COMMANDS)
        self.assertTrue(outcome.evidence["related"])

    @defer.inlineCallbacks
    def test_kx1_refuses(self):
        outcome = yield self.kx1()
        self.assertFalse(outcome.worked, self.out.getvalue())
        evidence = outcome.evidence
        self.assertFalse(evidence["root_exact"])
        # The forged KEY decodes to nothing (the vector key is the long-term
        # one while the daemon has no ephemeral keys), and opens nothing.
        self.assertIn(evidence["decodes"], (False, None))
        self.assertEqual(evidence["opened"], [])
        victim = evidence["victim"]
        self.assertEqual((victim.outcome, victim.code), ("error-sent", "bad-record"))
        self.assertFalse(victim.confirmed)
        self.assertEqual(evidence["payments"], [])
        self.assertIn("ended: bad-record", evidence["log"])


class PaddingOracleTests(LessonTestCase):
    lesson = padding_oracle

    def test_weak_bleichenbacher(self):
        outcome = self.weak()
        self.assertTrue(outcome.worked, self.out.getvalue())
        evidence = outcome.evidence
        self.assertEqual(evidence["recovered"], evidence["victim_key"])
        self.assertIn("LOGIN alice hunter2", evidence["read"])
        # Seeded: the same key, the same victim, the same queries every run.
        self.assertEqual(evidence["queries"], SEED_QUERIES)
        self.assertIn("oracle queries", outcome.summary)

    def test_seeded_runs_repeat(self):
        first = weak.weak_generate_key(512, 65537, self.lab.rng(padding_oracle.NAME))
        again = weak.weak_generate_key(512, 65537, runner.Lab(seed=SEED).rng(padding_oracle.NAME))
        other = weak.weak_generate_key(512, 65537, runner.Lab(seed=SEED + 1).rng("padding-oracle"))
        self.assertEqual((first.n, first.d), (again.n, again.d))
        self.assertNotEqual(first.n, other.n)
        self.assertEqual(first.size, 512)

    def test_weak_server_is_an_oracle(self):
        """The two answers the attack reads, and another try after each."""
        rng = self.lab.rng("oracle test")
        key = weak.weak_generate_key(512, 65537, rng)
        with weak.WeakServer(key, weak_bank(), oracle=True) as server:
            conn = wire.LineSocket.to(server.port)
            conn.read_line()
            bad_padding = key.weak_encrypt_int(1)
            bad_message = key.weak_encrypt_int(weak.weak_pkcs1_pad(b"x" * 5, key.k, rng))
            good = key.weak_encrypt_int(weak.weak_pkcs1_pad(b"k" * 16, key.k, rng))
            conn.send_lines([b"KEY %x" % c for c in (bad_padding, bad_message, good)])
            answers = [conn.read_line() for _ in range(3)]
            conn.close()
        self.assertEqual(answers, [b"ERROR bad-padding", b"ERROR bad-message", b"OK"])

    def test_budget_is_a_bound(self):
        """An attack that runs out of queries stops, and says so."""
        rng = self.lab.rng("budget test")
        key = weak.weak_generate_key(512, 65537, rng)
        c0 = key.weak_encrypt_int(weak.weak_pkcs1_pad(b"k" * 16, key.k, rng))
        with weak.WeakServer(key, weak_bank(), oracle=True) as server:
            oracle = padding_oracle.Oracle(server.port, key.public_key(), max_queries=100)
            try:
                self.assertRaises(
                    padding_oracle.OracleExhausted, padding_oracle.bleichenbacher, oracle, c0, rng
                )
            finally:
                oracle.close()
        self.assertLessEqual(oracle.queries, 100)
        self.assertGreater(oracle.queries, 100 - padding_oracle.SEARCH_BATCH)

    @defer.inlineCallbacks
    def test_kx1_gives_one_answer(self):
        outcome = yield self.kx1()
        self.assertFalse(outcome.worked, self.out.getvalue())
        answers = outcome.evidence["answers"]
        conforming = answers["conforming (a valid OAEP KEY made for this HELLO)"]
        garbage = answers["not conforming (random bytes below n)"]
        self.assertEqual(set(conforming), set(garbage))
        self.assertEqual(outcome.evidence["distinct"], {("MSG", 16)})


class MitmTests(LessonTestCase):
    lesson = mitm

    def test_weak_man_in_the_middle_reads_everything(self):
        outcome = self.weak()
        self.assertTrue(outcome.worked, self.out.getvalue())
        read = outcome.evidence["read"]
        self.assertIn("victim: LOGIN alice hunter2", read)
        self.assertIn("server: " + mitm.GREETING[0], read)
        # The session went on as usual: the victim saw nothing wrong.
        self.assertIn("welcome alice", outcome.evidence["victim_received"])

    @defer.inlineCallbacks
    def test_kx1_refuses_before_key(self):
        outcome = yield self.kx1()
        self.assertFalse(outcome.worked, self.out.getvalue())
        evidence = outcome.evidence
        for session in (evidence["pinned"], evidence["known"]):
            self.assertEqual((session.outcome, session.code), ("untrusted", "untrusted-key"))
            self.assertEqual(session.sent, ["ERROR"])
            self.assertIsNone(session.secret)
        self.assertEqual(evidence["sent"], ["ERROR", "ERROR"])
        self.assertIn("does not match the pinned fingerprint", evidence["pinned"].detail)
        self.assertIn("HAS CHANGED", evidence["known"].explanation)
        self.assertEqual(evidence["payments"], [])


class ReplayTests(LessonTestCase):
    lesson = replay

    def test_weak_replay_pays_twice(self):
        outcome = self.weak()
        self.assertTrue(outcome.worked, self.out.getvalue())
        payments = outcome.evidence["payments"]
        self.assertEqual(
            [(p.payer, p.amount, p.session) for p in payments],
            [
                ("alice", 100, 1),
                ("alice", 100, 2),
            ],
        )
        self.assertEqual(outcome.evidence["replayed_user"], "alice")

    @defer.inlineCallbacks
    def test_kx1_refuses_replayed_key(self):
        outcome = yield self.kx1()
        self.assertFalse(outcome.worked, self.out.getvalue())
        self.assertEqual(outcome.evidence["code"], "bad-record")
        self.assertEqual([p.session for p in outcome.evidence["payments"]], [1])
        self.assertIn("ended: bad-record", outcome.evidence["log"])
        # The server never echoed a command of the replay: its key
        # confirmation, then the ERROR.
        self.assertEqual([frame.verb for frame in outcome.evidence["answers"]], ["MSG", "ERROR"])


class UnauthenticatedAESTests(LessonTestCase):
    lesson = unauthenticated_aes

    def test_weak_bit_flip_and_truncation(self):
        outcome = self.weak()
        self.assertTrue(outcome.worked, self.out.getvalue())
        flipped = outcome.evidence["flip_payments"]
        self.assertEqual([(p.amount, p.payee) for p in flipped], [(900, "bob")])
        cut = outcome.evidence["cut_payments"]
        self.assertEqual([(p.amount, p.payee) for p in cut], [(100, "bob")])

    @defer.inlineCallbacks
    def test_kx1_refuses_flip_and_reports_truncation(self):
        outcome = yield self.kx1()
        self.assertFalse(outcome.worked, self.out.getvalue())
        evidence = outcome.evidence
        flipped = evidence["flipped"]
        self.assertEqual((flipped.outcome, flipped.code), ("error-received", "bad-record"))
        self.assertIn("ended: bad-record", evidence["flip_log"])
        self.assertIn("ended: truncated", evidence["cut_log"])
        self.assertEqual(evidence["truncated"].outcome, "truncated")
        self.assertEqual(evidence["payments"], [])


def weak_bank():
    from keyexchanged.lab.bank import Bank

    return Bank()


def revision_2_recording(long_term, ephemeral, nonce=b"\x01" * 32, expires=1764259200):
    """A KX/1 revision 2 session (docs/spec/kx1.rst §10), made here from the spec
    with the project's primitives, as the lab's relay would record it."""
    long_term_der = keys.public_key_to_der(long_term.public_key())
    ephemeral_der = keys.public_key_to_der(ephemeral.public_key())
    signed = (
        b"kx/1 ephemeral key\x00"
        + hashlib.sha256(long_term_der).digest()
        + expires.to_bytes(8, "big")
        + ephemeral_der
    )
    hello = {
        "protocol": "kx/1",
        "key": base64.b64encode(long_term_der).decode(),
        "nonce": base64.b64encode(nonce).decode(),
        "ephemeral": {
            "key": base64.b64encode(ephemeral_der).decode(),
            "expires": expires,
            "signature": base64.b64encode(long_term.sign_pss(signed, salt_length=32)).decode(),
        },
    }
    hello = json.dumps(hello).encode()
    secret = os.urandom(32)
    key_payload = ephemeral.public_key().encrypt_oaep(secret, label=hello)
    client_key, server_key = handshake.derive_keys(
        secret, nonce, handshake.transcript_hash(hello, key_payload)
    )
    server, client = RecordSealer(server_key), RecordSealer(client_key)
    return [
        ("server", wire.Frame("HELLO", hello)),
        ("server", wire.Frame("MSG", server.seal("MSG", b"the vault code is 4711"))),
        ("server", wire.Frame("END", server.seal("END"))),
        ("client", wire.Frame("KEY", key_payload)),
        ("client", wire.Frame("MSG", client.seal("MSG", b"LOGIN alice hunter2\n"))),
        ("client", wire.Frame("END", client.seal("END"))),
    ]


class PostQuantumTests(LessonTestCase):
    """Store now, decrypt later: both halves run the daemon (the weak one
    records a revision 2 session), so both run off the reactor thread."""

    lesson = post_quantum

    @defer.inlineCallbacks
    def test_revision2_recording_opens_once_the_ephemeral_key_is_factored(self):
        outcome = yield threads.deferToThread(post_quantum.against_weak, self.lab)
        self.assertIsNone(outcome.pending, self.out.getvalue())
        self.assertTrue(outcome.worked, self.out.getvalue())
        # The daemon offered ML-KEM; the revision 2 client did not use it.
        self.assertIsNotNone(outcome.evidence["hello"].obj.get("mlkem768"))
        read = b"".join(data for _, data in outcome.evidence["plaintexts"])
        self.assertIn(b"LOGIN alice hunter2", read)
        self.assertIn(post_quantum.GREETING[0].encode(), read)

    @defer.inlineCallbacks
    def test_revision3_recording_stays_closed_with_the_rsa_half_alone(self):
        outcome = yield self.kx1()
        self.assertIsNone(outcome.pending, self.out.getvalue())
        self.assertFalse(outcome.worked, self.out.getvalue())
        # The factored key did its part: the RSA secret is the attacker's...
        self.assertEqual(len(outcome.evidence["secret"]), 32)
        self.assertTrue(outcome.evidence["hybrid"])
        # ...and opens nothing.
        self.assertIsNone(outcome.evidence["plaintexts"])


class ForwardSecrecyTests(LessonTestCase):
    lesson = forward_secrecy

    def test_weak_stolen_key_opens_the_recording(self):
        outcome = self.weak()
        self.assertTrue(outcome.worked, self.out.getvalue())
        read = outcome.evidence["read"]
        self.assertIn("victim: LOGIN alice hunter2", read)
        self.assertIn("server: " + forward_secrecy.GREETING[0], read)

    @defer.inlineCallbacks
    def test_kx1_recording_stays_closed(self):
        outcome = yield self.kx1()
        # The daemon offers ephemeral keys by default (revision 2): a lesson
        # that finds none has found a regression, not a reason to skip.
        self.assertIsNone(outcome.pending, self.out.getvalue())
        self.assertFalse(outcome.worked, self.out.getvalue())
        self.assertIsNotNone(outcome.evidence["hello"].ephemeral)
        self.assertIsNone(outcome.evidence["plaintexts"])

    def test_revision_2_recording_is_read_from_hello(self):
        """What the KX/1 half does once HELLO carries ``ephemeral``: the
        stolen long-term key opens nothing; the ephemeral key (which the
        server destroys) would have."""
        frames = revision_2_recording(SERVER_KEY, CLIENT_KEY)
        hello, plaintexts = forward_secrecy.open_recording(frames, SERVER_KEY)
        self.assertEqual(hello.ephemeral, CLIENT_KEY.public_key())
        self.assertEqual(hello.encryption_key, CLIENT_KEY.public_key())
        self.assertTrue(forward_secrecy.ephemeral_signature_ok(hello))
        self.assertIsNone(plaintexts)
        _, opened = forward_secrecy.open_recording(frames, CLIENT_KEY)
        self.assertEqual(
            opened,
            [
                ("server", b"the vault code is 4711"),
                ("server", b""),
                ("client", b"LOGIN alice hunter2\n"),
                ("client", b""),
            ],
        )

    def test_revision_1_recording_opens_with_the_stolen_key(self):
        frames = revision_2_recording(SERVER_KEY, CLIENT_KEY)
        hello = json.loads(frames[0][1].payload)
        del hello["ephemeral"]
        hello = json.dumps(hello).encode()
        secret = os.urandom(32)
        key_payload = SERVER_KEY.public_key().encrypt_oaep(secret, label=hello)
        _, server_key = handshake.derive_keys(
            secret, b"\x01" * 32, handshake.transcript_hash(hello, key_payload)
        )
        frames = [
            ("server", wire.Frame("HELLO", hello)),
            ("server", wire.Frame("MSG", RecordSealer(server_key).seal("MSG", b"secret"))),
            ("client", wire.Frame("KEY", key_payload)),
        ]
        parsed, plaintexts = forward_secrecy.open_recording(frames, SERVER_KEY)
        self.assertIsNone(parsed.ephemeral)
        self.assertEqual(plaintexts, [("server", b"secret")])

    def test_shared_revision_2_vectors(self):
        """The recorded session of the independent implementation's vectors."""
        with open(SHARED_EPHEMERAL_VECTORS, encoding="utf-8") as f:
            vectors = json.load(f)
        full = vectors["full"]
        records = full["records"]
        frames = [
            ("server", wire.Frame("HELLO", bytes.fromhex(full["hello_payload"]))),
            ("server", wire.Frame("MSG", bytes.fromhex(records["server_msg_seq0"]))),
            ("server", wire.Frame("TICKET", bytes.fromhex(records["server_ticket_seq1"]))),
            ("server", wire.Frame("END", bytes.fromhex(records["server_end_seq2"]))),
            ("client", wire.Frame("KEY", bytes.fromhex(full["key_payload"]))),
            ("client", wire.Frame("MSG", bytes.fromhex(records["client_msg_seq0"]))),
        ]
        long_term = keys.private_key_from_bytes(vectors["server_private_key_pem"].encode())
        ephemeral = keys.private_key_from_bytes(vectors["ephemeral_private_key_pem"].encode())
        hello, plaintexts = forward_secrecy.open_recording(frames, long_term)
        self.assertIsNotNone(hello.ephemeral)
        self.assertTrue(forward_secrecy.ephemeral_signature_ok(hello))
        self.assertIsNone(plaintexts)
        _, opened = forward_secrecy.open_recording(frames, ephemeral)
        self.assertEqual(opened[0], ("server", bytes.fromhex(vectors["server_message"])))


class CommandTests(unittest.TestCase):
    """``keyexchange lab``."""

    def run_main(self, *argv):
        out, err = io.StringIO(), io.StringIO()
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = out, err
        try:
            code = cli.main(list(argv))
        finally:
            sys.stdout, sys.stderr = saved
        return code, out.getvalue(), err.getvalue()

    def test_list(self):
        code, out, _ = self.run_main("lab", "--list")
        self.assertEqual(code, 0)
        for number, lesson in enumerate(lab_package.LESSONS, 1):
            self.assertIn(f"{number}. {lesson.name}", out)
        self.assertEqual(len(lab_package.LESSONS), 7)

    def test_no_lesson_lists_and_says_how(self):
        code, out, _ = self.run_main("lab")
        self.assertEqual(code, 0)
        self.assertIn("textbook-rsa", out)
        self.assertIn("--all", out)

    def test_unknown_lesson(self):
        code, _, err = self.run_main("lab", "textbook")
        self.assertEqual(code, 2)
        self.assertIn("no lesson 'textbook'; the lessons are: textbook-rsa,", err)

    def test_names_and_all(self):
        code, _, err = self.run_main("lab", "mitm", "--all")
        self.assertEqual(code, 2)
        self.assertIn("not both", err)

    def test_every_lesson_loads(self):
        for lesson in lab_package.LESSONS:
            module = lab_package.load(lesson.name)
            self.assertEqual(module.NAME, lesson.name)
            self.assertTrue(callable(module.against_weak) and callable(module.against_kx1))

    @defer.inlineCallbacks
    def test_runs_lessons_end_to_end(self):
        """The real command: its own reactor thread, its own daemon key."""
        out, err, code = yield run_client("lab", "mitm", "replay", "--seed", str(SEED))
        out = out.decode()
        self.assertEqual(code, 0, out + err.decode())
        self.assertIn(f"seed {SEED}", out)
        self.assertEqual(out.count("=> ATTACK SUCCEEDED"), 2)
        self.assertEqual(out.count("=> REFUSED"), 2)
        self.assertIn("mitm                 weak: broken; KX/1: refused", out)
        self.assertIn("ERROR untrusted-key", out)
        self.assertIn("ERROR bad-record", out)


class IsolationTests(unittest.TestCase):
    """The weak code can never be served by the daemon."""

    def test_daemon_modules_do_not_import_the_lab(self):
        program = (
            "import sys\n"
            "import keyexchanged.tap, keyexchanged.protocol, keyexchanged.applications\n"
            "from twisted.plugins import keyexchanged_plugin\n"
            "print(sorted(m for m in sys.modules if m.startswith('keyexchanged.lab')))\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", program],
            capture_output=True,
            text=True,
            env=environment(),
            cwd=REPOSITORY,
            timeout=120,
            check=False,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.strip(), "[]")

    def test_not_an_application(self):
        from keyexchanged.applications import find_applications

        for name, application in find_applications().items():
            self.assertNotIn("lab", name)
            self.assertFalse(type(application).__module__.startswith("keyexchanged.lab"))

    def test_lab_package_is_installed(self):
        """setup.cfg finds the packages: the lab is among those it finds."""
        import configparser

        from setuptools import find_namespace_packages

        config = configparser.ConfigParser()
        config.read(os.path.join(REPOSITORY, "setup.cfg"))
        self.assertEqual(config["options"]["packages"].strip(), "find_namespace:")
        include = config["options.packages.find"]["include"].split()
        found = find_namespace_packages(where=REPOSITORY, include=include)
        self.assertIn("keyexchanged.lab", found)
