"""Known hosts, trust on first use (keyexchanged.knownhosts): the file, the
policy, the prompt.  The terminal is a StringIO here; tests/test_daemon_trust.py
answers the real prompt through a pseudo-terminal."""

import contextlib
import io
import json
import os
import stat

from twisted.trial import unittest

from keyexchanged import keys, knownhosts, protocol
from keyexchanged.knownhosts import (
    HostKeyRecorded,
    KnownHosts,
    KnownHostsError,
    KnownHostsTrust,
    NotRevoked,
    ask_yes_no,
)
from keyexchanged.trust import PinnedKey, UntrustedKey
from tests import certs
from tests.fixtures import CLIENT_KEY, IDENTITY, SERVER_KEY, Pair, client_writes, frames
from tests.vectors import RAW

SERVER_FP = IDENTITY.fingerprint
OTHER_FP = RAW["client_fingerprint"]
OFFER = certs.offer(SERVER_KEY)


class Asker:
    """A user at a terminal who answers ``answer`` and remembers the question."""

    def __init__(self, answer):
        self.answer = answer
        self.questions = []

    def __call__(self, question, fingerprint):
        self.questions.append(question)
        return self.answer


class FileTests(unittest.TestCase):
    def test_parse(self):
        text = (
            "# a comment\n"
            "\n"
            f"Example.ORG:51424 {SERVER_FP}\n"
            f"  [2001:DB8::1]:7 {OTHER_FP}   # trailing comment\n"
            f"@revoked {OTHER_FP}\n"
            f"example.org:51424 {OTHER_FP}\n"
        )
        known = KnownHosts.parse(text, "kh")
        self.assertEqual([e.line for e in known.lookup("example.org", 51424)], [3, 6])
        self.assertEqual([e.line for e in known.lookup("EXAMPLE.org.", 51424)], [3, 6])
        self.assertEqual(known.lookup("example.org", 51425), [])
        self.assertEqual(known.lookup("2001:db8:0::1", 7)[0].fingerprint, OTHER_FP)
        self.assertEqual(known.revoked(OTHER_FP).line, 5)
        self.assertIsNone(known.revoked(SERVER_FP))

    def test_bad_lines_are_errors_naming_the_line(self):
        for line, fragment in [
            (f"example.org {SERVER_FP}", "not host:port"),
            (f"example.org:0 {SERVER_FP}", "not host:port"),
            (f"example.org:70000 {SERVER_FP}", "not host:port"),
            ("example.org:1 SHA256:short", "not a key fingerprint"),
            (f"example.org:1 {SERVER_FP} extra", "expected"),
            (f"@revokd {SERVER_FP}", "unknown marker"),
            ("@revoked", "expected"),
        ]:
            with self.assertRaises(KnownHostsError) as caught:
                KnownHosts.parse(f"# fine\n{line}\n", "/home/u/kh")
            self.assertIn("/home/u/kh, line 2: ", str(caught.exception))
            self.assertIn(fragment, str(caught.exception))

    def test_missing_file_is_empty(self):
        known = KnownHosts.load(os.path.join(self.mktemp(), "known_hosts"))
        self.assertEqual(known.entries, [])

    def test_default_path(self):
        path = knownhosts.default_path
        self.assertEqual(
            path({"XDG_CONFIG_HOME": "/x/config", "HOME": "/h"}),
            "/x/config/keyexchange/known_hosts",
        )
        self.assertEqual(path({"HOME": "/h"}), "/h/.config/keyexchange/known_hosts")
        self.assertEqual(
            path({"XDG_CONFIG_HOME": "", "HOME": "/h"}), "/h/.config/keyexchange/known_hosts"
        )
        # The XDG rule: a relative value is ignored.
        self.assertEqual(
            path({"XDG_CONFIG_HOME": "rel", "HOME": "/h"}), "/h/.config/keyexchange/known_hosts"
        )

    def test_host_entry(self):
        self.assertEqual(knownhosts.host_entry("Example.org.", 5), "example.org:5")
        self.assertEqual(knownhosts.host_entry("::1", 5), "[::1]:5")
        self.assertEqual(knownhosts.host_entry("[0:0::1]", 5), "[::1]:5")
        self.assertEqual(knownhosts.host_entry("127.0.0.1", 5), "127.0.0.1:5")

    def test_add_creates_directory_0700_and_file_0600(self):
        directory = os.path.join(os.path.abspath(self.mktemp()), "keyexchange")
        path = os.path.join(directory, "known_hosts")
        known = KnownHosts.load(path)
        self.assertEqual(known.add("Example.org", 51424, SERVER_FP), 1)
        self.assertEqual(known.add("::1", 2, OTHER_FP), 2)
        with open(path) as f:
            self.assertEqual(f.read(), f"example.org:51424 {SERVER_FP}\n[::1]:2 {OTHER_FP}\n")
        self.assertEqual(stat.S_IMODE(os.stat(directory).st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(os.listdir(directory), ["known_hosts"])  # no temporary left
        self.assertEqual(KnownHosts.load(path).lookup("example.org", 51424)[0].line, 1)

    def test_add_keeps_what_is_there(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(f"# mine\nexample.org:1 {OTHER_FP}")  # no final newline
        os.chmod(path, 0o644)
        self.assertEqual(KnownHosts.load(path).add("example.org", 2, SERVER_FP), 3)
        with open(path) as f:
            self.assertEqual(
                f.read(), f"# mine\nexample.org:1 {OTHER_FP}\nexample.org:2 {SERVER_FP}\n"
            )
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o644)

    def test_add_reads_the_file_again(self):
        """Another client added lines since we loaded: none is lost, and the
        same entry is not written twice."""
        path = self.mktemp()
        stale = KnownHosts.load(path)
        KnownHosts.load(path).add("a.example", 1, SERVER_FP)
        self.assertEqual(stale.add("b.example", 1, SERVER_FP), 2)
        self.assertEqual(stale.add("a.example", 1, SERVER_FP), 1)
        with open(path) as f:
            self.assertEqual(len(f.read().splitlines()), 2)

    def test_add_never_gives_a_host_a_second_key(self):
        """Another client recorded another key for the host since we loaded:
        HostKeyRecorded, naming the line, and the file is left as it was."""
        path = self.mktemp()
        stale = KnownHosts.load(path)
        KnownHosts.load(path).add("a.example", 1, OTHER_FP)
        with self.assertRaises(HostKeyRecorded) as caught:
            stale.add("a.example", 1, SERVER_FP)
        self.assertEqual(caught.exception.host, "a.example:1")
        self.assertEqual([e.line for e in caught.exception.entries], [1])
        with open(path) as f:
            self.assertEqual(f.read(), f"a.example:1 {OTHER_FP}\n")

    def test_add_through_a_symlink_updates_the_target(self):
        target = os.path.abspath(self.mktemp())
        link = os.path.abspath(self.mktemp())
        os.symlink(target, link)
        KnownHosts.load(link).add("a.example", 1, SERVER_FP)
        self.assertTrue(os.path.islink(link))
        with open(target) as f:
            self.assertIn("a.example:1", f.read())

    def test_add_failure_names_the_file(self):
        if os.getuid() == 0:
            raise unittest.SkipTest("running as root: permissions do not stop writing")
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        os.chmod(directory, 0o500)
        self.addCleanup(os.chmod, directory, 0o700)
        path = os.path.join(directory, "known_hosts")
        with self.assertRaises(KnownHostsError) as caught:
            KnownHosts.load(path).add("a.example", 1, SERVER_FP)
        self.assertIn(path, str(caught.exception))

    def test_add_failure_where_a_file_blocks_the_directory(self):
        blocker = os.path.abspath(self.mktemp())
        with open(blocker, "w") as f:
            f.write("not a directory")
        path = os.path.join(blocker, "known_hosts")
        with self.assertRaises(KnownHostsError) as caught:
            KnownHosts.load(path).add("a.example", 1, SERVER_FP)
        self.assertIn(path, str(caught.exception))


class PolicyTests(unittest.TestCase):
    def setUp(self):
        self.path = os.path.join(os.path.abspath(self.mktemp()), "kh", "known_hosts")
        self.reports = []

    def write(self, text):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with open(self.path, "w") as f:
            f.write(text)

    def content(self):
        with open(self.path) as f:
            return f.read()

    def trust(self, ask=None, accept_new=False, port=51424):
        return KnownHostsTrust(
            self.path, port, ask=ask, accept_new=accept_new, report=self.reports.append
        )

    def refused(self, policy, host="example.org", offer=OFFER):
        with self.assertRaises(UntrustedKey) as caught:
            policy.verify(host, offer)
        return caught.exception

    def test_unknown_host_without_a_terminal_says_what_connect_offers(self):
        self.write("")
        refusal = self.refused(self.trust())
        self.assertIn(
            "run again on a terminal to be asked, or with --accept-new", refusal.explanation
        )
        self.assertIn(f"--fingerprint {SERVER_FP} to pin it", refusal.explanation)

    def test_unknown_host_advice_of_a_command_without_prompt(self):
        """tunnel has no prompt and no --accept-new: it says what it has."""
        self.write("")
        policy = self.trust()
        policy.unknown_host_advice = "pin it with --fingerprint {fingerprint}."
        refusal = self.refused(policy)
        self.assertNotIn("--accept-new", refusal.explanation)
        self.assertNotIn("terminal", refusal.explanation)
        self.assertIn(f"pin it with --fingerprint {SERVER_FP}.", refusal.explanation)

    def test_known_key_is_accepted_silently(self):
        # The same key on two lines says one thing twice: still known.
        self.write(
            f"example.org:1 {OTHER_FP}\nexample.org:51424 {SERVER_FP}\n"
            f"example.org:51424 {SERVER_FP}\n"
        )
        asker = Asker(False)
        self.trust(ask=asker).verify("Example.org", OFFER)
        self.assertEqual((asker.questions, self.reports), ([], []))

    def test_two_keys_for_one_host_are_refused_whichever_is_offered(self):
        """A file written by hand or by an older version may list two keys
        for a host: neither
        is trusted, and the user is told which lines to settle."""
        self.write(f"# servers\nexample.org:51424 {OTHER_FP}\nexample.org:51424 {SERVER_FP}\n")
        before = self.content()
        asker = Asker(True)
        policies = (self.trust(), self.trust(ask=asker), self.trust(accept_new=True))
        for policy in policies:
            for offer in (OFFER, certs.offer(CLIENT_KEY)):
                refusal = self.refused(policy, offer=offer)
                self.assertEqual(
                    str(refusal),
                    "the known hosts list more than one key for example.org:51424 "
                    "(lines 2, 3); none is trusted",
                )
                self.assertIn(
                    f"{self.path}, lines 2, 3 give example.org:51424", refusal.explanation
                )
                self.assertIn(f"line 2: {OTHER_FP}", refusal.explanation)
                self.assertIn(f"line 3: {SERVER_FP}", refusal.explanation)
                self.assertIn(f"The server offered {offer.fingerprint}", refusal.explanation)
                self.assertIn(f"keep only that line in {self.path}", refusal.explanation)
        self.assertEqual((asker.questions, self.reports), ([], []))
        self.assertEqual(self.content(), before)

    def assertOneKeyRecorded(self, refusal, fingerprint):
        """The race below ends as a changed key, and the file still gives
        example.org:51424 the one key the other client recorded."""
        self.assertEqual(
            str(refusal),
            f"the key of example.org:51424 has changed: {SERVER_FP} is not the known "
            f"{fingerprint} (known hosts, line 1)",
        )
        self.assertIn(f"Known from {self.path}, line 1.", refusal.explanation)
        self.assertEqual(self.content(), f"example.org:51424 {fingerprint}\n")
        self.assertEqual(self.reports, [])

    def test_another_key_recorded_while_the_user_was_asked(self):
        """Another client recorded a different key for the host while this
        one asked its user: refused as a changed key, and no
        second line is written."""

        def other_client_meanwhile(question, fingerprint):
            KnownHosts.load(self.path).add("example.org", 51424, OTHER_FP)
            return True

        self.assertOneKeyRecorded(self.refused(self.trust(ask=other_client_meanwhile)), OTHER_FP)

    def test_another_key_recorded_just_before_the_lock(self):
        """The same race with --accept-new: the other client writes between
        the policy's lookup and the locked re-read in add()."""
        real_locked = knownhosts._locked

        @contextlib.contextmanager
        def other_client_first(directory):
            with real_locked(directory):
                with open(self.path, "a") as f:
                    f.write(f"example.org:51424 {OTHER_FP}\n")
            with real_locked(directory):
                yield

        self.patch(knownhosts, "_locked", other_client_first)
        self.assertOneKeyRecorded(self.refused(self.trust(accept_new=True)), OTHER_FP)

    def test_changed_key_is_refused_loudly(self):
        self.write(f"# servers\nexample.org:51424 {OTHER_FP}\n")
        before = self.content()
        for policy in (self.trust(), self.trust(ask=Asker(True)), self.trust(accept_new=True)):
            refusal = self.refused(policy)
            self.assertIn("has changed", str(refusal))
            self.assertIn(f"{self.path}, line 2", refusal.explanation)
            self.assertIn(f"delete that line from {self.path}", refusal.explanation)
            self.assertIn(SERVER_FP, refusal.explanation)
            self.assertIn(OTHER_FP, refusal.explanation)
            # What goes to the server names no local file.
            self.assertNotIn(self.path, str(refusal))
        self.assertEqual(self.content(), before)

    def test_same_host_other_port_is_unknown_not_changed(self):
        self.write(f"example.org:1 {OTHER_FP}\n")
        refusal = self.refused(self.trust())
        self.assertIn("not a known host", str(refusal))

    def test_revoked_key_is_refused_even_for_its_host(self):
        self.write(f"example.org:51424 {SERVER_FP}\n@revoked {SERVER_FP}\n")
        for policy in (self.trust(), self.trust(accept_new=True), self.trust(ask=Asker(True))):
            refusal = self.refused(policy)
            self.assertIn("is revoked", str(refusal))
            self.assertIn(f"{self.path}, line 2 revokes", refusal.explanation)

    def test_revoked_key_of_a_new_host_is_not_offered(self):
        self.write(f"@revoked {SERVER_FP}\n")
        asker = Asker(True)
        self.refused(self.trust(ask=asker, accept_new=True))
        self.assertEqual(asker.questions, [])
        self.assertNotIn("example.org", self.content())

    def test_unknown_host_without_a_terminal(self):
        refusal = self.refused(self.trust())
        self.assertIn("example.org:51424 is not a known host", str(refusal))
        self.assertIn("--accept-new", refusal.explanation)
        self.assertIn(f"--fingerprint {SERVER_FP}", refusal.explanation)
        self.assertFalse(os.path.exists(self.path))

    def test_accept_new_adds_without_asking(self):
        asker = Asker(False)
        self.trust(ask=asker, accept_new=True).verify("example.org", OFFER)
        self.assertEqual(asker.questions, [])
        self.assertEqual(self.content(), f"example.org:51424 {SERVER_FP}\n")
        self.assertIn(f"added example.org:51424 ({SERVER_FP})", self.reports[0])
        self.trust().verify("example.org", OFFER)  # and known from now on

    def test_asked_yes(self):
        asker = Asker(True)
        self.trust(ask=asker).verify("example.org", OFFER)
        question = asker.questions[0]
        for shown in ("example.org:51424", "RSA-2048", SERVER_FP, "(yes/no)"):
            self.assertIn(shown, question)
        self.assertEqual(self.content(), f"example.org:51424 {SERVER_FP}\n")
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    def test_asked_no(self):
        asker = Asker(False)
        refusal = self.refused(self.trust(ask=asker))
        self.assertEqual(len(asker.questions), 1)
        self.assertIn("was not accepted", str(refusal))
        self.assertFalse(os.path.exists(self.path))

    def test_accepted_but_not_saved_still_connects(self):
        """As ssh: the user said yes for this session; the failure to
        remember it is a warning."""

        def full(path, data, mode, force):
            raise keys.KeyFileError(f"{path}: cannot write: No space left on device")

        self.patch(knownhosts.files, "write_atomically", full)
        self.trust(accept_new=True).verify("example.org", OFFER)
        self.assertIn("could not add example.org:51424", self.reports[0])
        self.assertIn("No space left on device", self.reports[0])

    def test_unreadable_file_refuses(self):
        os.makedirs(self.path)  # a directory where the file should be
        refusal = self.refused(self.trust(accept_new=True))
        self.assertIn("cannot be used", str(refusal))
        self.assertIn(f"{self.path}: cannot read", refusal.explanation)

    def test_broken_file_refuses_with_its_line(self):
        self.write("example.org 123\n")
        refusal = self.refused(self.trust(accept_new=True))
        self.assertIn(f"{self.path}, line 1", refusal.explanation)

    def test_not_revoked_wraps_other_policies(self):
        self.write(f"@revoked {SERVER_FP}\n")
        refusal = self.refused(NotRevoked(self.path, PinnedKey(SERVER_FP)))
        self.assertIn("is revoked", str(refusal))
        NotRevoked(self.path, PinnedKey(OTHER_FP)).verify("x", certs.offer(CLIENT_KEY))
        with self.assertRaises(UntrustedKey):
            NotRevoked(self.path, PinnedKey(OTHER_FP)).verify("x", OFFER)

    def test_refusal_on_the_wire(self):
        """ERROR untrusted-key and nothing else: no KEY for an unknown host."""
        sent = client_writes(self)
        pair = Pair(trust=self.trust())
        pair.flush()
        failure = self.failureResultOf(pair.handshake, protocol.HandshakeFailed)
        self.assertIsInstance(failure.value.reason.value, UntrustedKey)
        verbs = frames(b"".join(sent))
        self.assertEqual([verb for verb, _ in verbs], ["ERROR"])
        error = json.loads(verbs[0][1])
        self.assertEqual(error["error"], "untrusted-key")
        self.assertNotIn(self.path, error["detail"])

    def test_accepted_on_the_wire(self):
        self.write(f"example:51424 {SERVER_FP}\n")
        pair = Pair(trust=self.trust())
        pair.flush()
        self.assertTrue(pair.application.made)


class PromptTests(unittest.TestCase):
    def ask(self, typed):
        output = io.StringIO()
        answer = ask_yes_no("Trust it (yes/no)? ", SERVER_FP, io.StringIO(typed), output)
        return answer, output.getvalue()

    def test_answers(self):
        for typed, expected in [
            ("yes\n", True),
            ("YES\n", True),
            (f"{SERVER_FP}\n", True),
            ("no\n", False),
            ("", False),  # end of input
            ("maybe\nyes\n", True),
            ("y\nn\n", False),
            ("a\nb\nc\nyes\n", False),  # three tries, then no
            (f"{OTHER_FP}\nno\n", False),
        ]:
            answer, shown = self.ask(typed)
            self.assertEqual(answer, expected, typed)
            self.assertEqual(shown[: len("Trust it (yes/no)? ")], "Trust it (yes/no)? ", typed)
        _, shown = self.ask("maybe\nno\n")
        self.assertIn("Please type 'yes', 'no' or the fingerprint", shown)


# -- key rotation: @next lines (docs/spec/kx1.rst §14.5) ---------------------------

#: A third fingerprint, for a key no host has.
THIRD_FP = "SHA256:" + "B" * 42 + "A"


def announcement(next_fingerprint=OTHER_FP, revoked=()):
    from keyexchanged.rotation import Announcement

    return Announcement(next_fingerprint, 2048 if next_fingerprint else None, tuple(revoked))


class NextKeyFileTests(unittest.TestCase):
    def setUp(self):
        self.path = os.path.join(self.mktemp(), "known_hosts")
        os.makedirs(os.path.dirname(self.path))

    def write(self, text):
        with open(self.path, "w") as f:
            f.write(text)
        os.chmod(self.path, 0o600)

    def read(self):
        with open(self.path) as f:
            return f.read()

    def test_parse_next_lines_apart_from_the_host_key(self):
        known = KnownHosts.parse(f"h:1 {SERVER_FP}\n@next h:1 {OTHER_FP}\n", "kh")
        self.assertEqual([e.fingerprint for e in known.lookup("h", 1)], [SERVER_FP])
        self.assertEqual(known.next_key("h", 1).line, 2)
        self.assertIsNone(known.next_key("h", 2))

    def test_a_malformed_next_line_is_named(self):
        with self.assertRaises(KnownHostsError) as caught:
            KnownHosts.parse(f"h:1 {SERVER_FP}\n@next {OTHER_FP}\n", "kh")
        self.assertIn("kh, line 2: expected '@next host:port fingerprint'", str(caught.exception))

    def test_learn_records_the_next_key_of_a_host_with_the_session_key(self):
        self.write(f"# mine\nh:1 {SERVER_FP}\n")
        done = KnownHosts(self.path).learn("h", 1, SERVER_FP, announcement())
        self.assertEqual(self.read(), f"# mine\nh:1 {SERVER_FP}\n@next h:1 {OTHER_FP}\n")
        self.assertIn("learned the next key of h:1", done[0])
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    def test_learn_again_changes_nothing(self):
        text = f"h:1 {SERVER_FP}\n@next h:1 {OTHER_FP}\n"
        self.write(text)
        self.assertEqual(KnownHosts(self.path).learn("h", 1, SERVER_FP, announcement()), [])
        self.assertEqual(self.read(), text)

    def test_a_newer_announcement_replaces_the_next_key(self):
        self.write(f"h:1 {SERVER_FP}\n@next h:1 {THIRD_FP}\n")
        KnownHosts(self.path).learn("h", 1, SERVER_FP, announcement())
        self.assertEqual(self.read(), f"h:1 {SERVER_FP}\n@next h:1 {OTHER_FP}\n")

    def test_no_next_key_for_a_host_on_file_with_another_key(self):
        text = f"h:1 {THIRD_FP}\n"
        self.write(text)
        done = KnownHosts(self.path).learn("h", 1, SERVER_FP, announcement())
        self.assertIn("does not give h:1 this session's key", done[0])
        self.assertEqual(self.read(), text)

    def test_no_next_key_that_is_revoked_here(self):
        text = f"h:1 {SERVER_FP}\n@revoked {OTHER_FP}\n"
        self.write(text)
        done = KnownHosts(self.path).learn("h", 1, SERVER_FP, announcement())
        self.assertIn("it is revoked here", done[0])
        self.assertEqual(self.read(), text)

    def test_revoked_keys_are_recorded(self):
        self.write(f"h:1 {SERVER_FP}\n@next h:1 {THIRD_FP}\n")
        KnownHosts(self.path).learn("h", 1, SERVER_FP, announcement(None, [THIRD_FP]))
        # The host's @next line with that key goes too.
        self.assertEqual(self.read(), f"h:1 {SERVER_FP}\n@revoked {THIRD_FP}\n")

    def test_a_host_cannot_revoke_another_hosts_key(self):
        text = f"h:1 {SERVER_FP}\nother:1 {THIRD_FP}\n"
        self.write(text)
        done = KnownHosts(self.path).learn("h", 1, SERVER_FP, announcement(None, [THIRD_FP]))
        self.assertIn("cannot revoke another host's key", done[0])
        self.assertEqual(self.read(), text)

    def test_promote_puts_the_next_key_in_place_of_the_old(self):
        self.write(
            f"a:1 {THIRD_FP}\nh:1 {SERVER_FP}  # note\nb:1 {THIRD_FP}\n@next h:1 {OTHER_FP}\n"
        )
        self.assertTrue(KnownHosts(self.path).promote_next("h", 1, OTHER_FP))
        self.assertEqual(self.read(), f"a:1 {THIRD_FP}\nh:1 {OTHER_FP}\nb:1 {THIRD_FP}\n")

    def test_promote_refuses_a_key_that_is_no_longer_the_next(self):
        text = f"h:1 {SERVER_FP}\n"
        self.write(text)
        self.assertFalse(KnownHosts(self.path).promote_next("h", 1, OTHER_FP))
        self.assertEqual(self.read(), text)

    def test_learning_reads_the_file_again_under_the_lock(self):
        # Two clients read the file, then each learns for its own host: the
        # second must not write back the file as it read it, losing the first.
        self.write(f"a:1 {SERVER_FP}\nb:1 {SERVER_FP}\n")
        first, second = KnownHosts.load(self.path), KnownHosts.load(self.path)
        first.learn("a", 1, SERVER_FP, announcement())
        second.learn("b", 1, SERVER_FP, announcement(THIRD_FP))
        self.assertEqual(
            self.read(),
            f"a:1 {SERVER_FP}\nb:1 {SERVER_FP}\n@next a:1 {OTHER_FP}\n@next b:1 {THIRD_FP}\n",
        )

    def test_the_file_is_written_under_the_lock(self):
        import fcntl

        from keyexchanged import files

        self.write(f"h:1 {SERVER_FP}\n")
        directory = os.path.dirname(os.path.realpath(self.path))
        write = files.write_atomically
        held = []

        def checking(*args, **kwargs):
            fd = os.open(directory, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held.append(True)
            finally:
                os.close(fd)
            return write(*args, **kwargs)

        self.patch(files, "write_atomically", checking)
        KnownHosts(self.path).learn("h", 1, SERVER_FP, announcement())
        self.assertEqual(held, [True])


class NextKeyPolicyTests(unittest.TestCase):
    def setUp(self):
        self.path = os.path.join(self.mktemp(), "known_hosts")
        os.makedirs(os.path.dirname(self.path))
        self.reports = []

    def policy(self):
        return KnownHostsTrust(self.path, 1, report=self.reports.append)

    def test_the_recorded_next_key_is_accepted_without_a_question(self):
        with open(self.path, "w") as f:
            f.write(f"h:1 {OTHER_FP}\n@next h:1 {SERVER_FP}\n")
        self.policy().verify("h", OFFER)  # no ask: a question would refuse
        with open(self.path) as f:
            self.assertEqual(f.read(), f"h:1 {SERVER_FP}\n")
        self.assertIn("now uses the next key it announced", self.reports[0])

    def test_without_it_the_change_is_refused(self):
        with open(self.path, "w") as f:
            f.write(f"h:1 {OTHER_FP}\n@next h:1 {THIRD_FP}\n")
        with self.assertRaises(UntrustedKey):
            self.policy().verify("h", OFFER)

    def test_only_known_hosts_ask_for_announcements(self):
        self.assertTrue(self.policy().announcements)
        self.assertFalse(getattr(PinnedKey(SERVER_FP), "announcements", False))
        self.assertFalse(
            getattr(NotRevoked(self.path, PinnedKey(SERVER_FP)), "announcements", False)
        )

    def test_an_ignored_announcement_is_one_warning_and_no_file(self):
        from keyexchanged.handshake import AnnouncementIgnored

        self.policy().announced("h", AnnouncementIgnored("the signature does not verify"))
        self.assertEqual(len(self.reports), 1)
        self.assertIn("warning: ignored the key announcement of h:1", self.reports[0])
        self.assertFalse(os.path.exists(self.path))
