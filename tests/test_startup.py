"""A program's start runs without the cycle collector, and what it made is
frozen before the program serves (keyexchanged.startup): for the
``keyexchange`` command and for ``twistd keyexchange``'s plugin, while
:func:`keyexchanged.cli.main` called as a function leaves the collector as
it found it."""

import gc
import sys

from twisted.internet import defer, task
from twisted.trial import unittest

from keyexchanged import cli, client, keys, startup, tunnel
from keyexchanged.cli import _session
from tests.fixtures import ServerFiles
from tests.vectors import RAW
from twisted.plugins.keyexchanged_plugin import keyexchange


class CollectorTestCase(unittest.TestCase):
    """Each test leaves the collector as it found it: on, nothing frozen,
    no start pending."""

    def setUp(self):
        super().setUp()
        self.addCleanup(gc.unfreeze)
        self.addCleanup(gc.enable)
        self.addCleanup(setattr, startup, "_starting", False)
        self.frozen = gc.get_freeze_count()


class BeginStartedTests(CollectorTestCase):
    def test_off_from_begin_to_started(self):
        startup.begin()
        self.assertFalse(gc.isenabled())
        startup.started()
        self.assertTrue(gc.isenabled())

    def test_started_freezes_what_the_start_made(self):
        startup.begin()
        made = [[] for _ in range(10)]  # lists: objects the collector tracks
        startup.started()
        self.assertGreaterEqual(gc.get_freeze_count(), self.frozen + len(made))

    def test_started_without_begin_changes_nothing(self):
        startup.started()
        self.assertTrue(gc.isenabled())
        self.assertEqual(gc.get_freeze_count(), self.frozen)

    def test_a_collector_turned_off_before_stays_off(self):
        gc.disable()
        startup.begin()
        startup.started()
        self.assertFalse(gc.isenabled())
        self.assertEqual(gc.get_freeze_count(), self.frozen)

    def test_started_twice_freezes_once(self):
        startup.begin()
        startup.started()
        frozen = gc.get_freeze_count()
        made = [[] for _ in range(10)]
        startup.started()
        self.assertEqual(gc.get_freeze_count(), frozen, made)


class KeyexchangeCommandTests(CollectorTestCase):
    """``keyexchange connect`` and ``tunnel``, reactor and sessions replaced:
    its imports without the collector, frozen before it reads a secret
    (the ticket cache, the identity key), its session with the collector."""

    def setUp(self):
        super().setUp()
        self.seen = {}

        def server_address(text):
            self.seen["importing"] = gc.isenabled()
            return address(text)

        def session_options(args):
            self.seen["reading secrets"] = (gc.isenabled(), gc.get_freeze_count())
            return options(args)

        def react(main):
            self.seen["serving"] = gc.isenabled()
            return main(None)

        address, options = _session._server_address, _session._session_options
        self.patch(_session, "_server_address", server_address)
        self.patch(_session, "_session_options", session_options)
        self.patch(task, "react", react)
        self.patch(client, "run_connect", lambda *args, **options: defer.succeed(0))
        self.argv = ["connect", "127.0.0.1:1", "--fingerprint", RAW["server_fingerprint"]]

    def program(self, argv):
        """``keyexchange ARGV`` as its own process runs it: cli.run()."""
        self.patch(sys, "argv", ["keyexchange", *argv])
        with self.assertRaises(SystemExit) as exit:
            cli.run()
        self.assertEqual(exit.exception.code, 0)
        self.assertIs(self.seen["importing"], False)
        enabled, frozen = self.seen["reading secrets"]
        self.assertTrue(enabled)
        self.assertGreater(frozen, self.frozen)
        self.assertIs(self.seen["serving"], True)

    def test_connect_freezes_its_imports_before_it_reads_a_secret(self):
        self.program(self.argv)

    def test_tunnel_freezes_its_imports_before_it_reads_a_secret(self):
        self.patch(tunnel, "run_tunnel", lambda *args, **options: defer.succeed(None))
        fingerprint = RAW["server_fingerprint"]
        self.program(
            ["tunnel", "--listen", "tcp:0", "--server", "127.0.0.1", "--fingerprint", fingerprint]
        )

    def test_main_as_a_function_leaves_the_collector_alone(self):
        self.assertEqual(cli.main(self.argv), 0)
        self.assertIs(self.seen["importing"], True)
        self.assertEqual(self.seen["reading secrets"], (True, self.frozen))


class TwistdPluginTests(ServerFiles, CollectorTestCase):
    """What twistd asks of the plugin first, its options: the daemon's
    modules are imported and frozen, before any key is read."""

    def test_options_frozen_before_the_key_is_read(self):
        self.write_config("listen = tcp:0:interface=127.0.0.1\nworkers = 0\n")
        load = keys.load_private_key
        reads = []

        def load_private_key(*args, **kwargs):
            reads.append((gc.isenabled(), gc.get_freeze_count()))
            return load(*args, **kwargs)

        self.patch(keys, "load_private_key", load_private_key)
        options = keyexchange.options()
        self.assertTrue(gc.isenabled())
        frozen = gc.get_freeze_count()
        self.assertGreater(frozen, self.frozen)
        options.parseOptions(["--config", self.conf])
        self.assertEqual(reads, [(True, frozen)])
