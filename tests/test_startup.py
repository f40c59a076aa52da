"""A program's start runs without the cycle collector, and what it made is
frozen before the program serves (keyexchanged.startup): for the
``keyexchange`` command and for ``twistd keyexchange``'s plugin, while
:func:`keyexchanged.cli.main` called as a function leaves the collector as
it found it."""

import gc
import sys

from twisted.internet import defer, task
from twisted.trial import unittest

from keyexchanged import allocator, cli, client, startup
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
    """``keyexchange connect``, with the reactor and the session replaced:
    its start (here, what runs before the reactor) without the collector,
    its session with it."""

    def setUp(self):
        super().setUp()
        self.seen = {}

        def tune():
            self.seen["starting"] = gc.isenabled()

        def react(main):
            self.seen["serving"] = (gc.isenabled(), gc.get_freeze_count())
            return main(None)

        self.patch(allocator, "tune", tune)
        self.patch(task, "react", react)
        self.patch(client, "run_connect", lambda *args, **options: defer.succeed(0))
        self.argv = ["connect", "127.0.0.1:1", "--fingerprint", RAW["server_fingerprint"]]

    def test_the_program_starts_without_the_collector_and_serves_with_it(self):
        self.patch(sys, "argv", ["keyexchange", *self.argv])
        with self.assertRaises(SystemExit) as exit:
            cli.run()
        self.assertEqual(exit.exception.code, 0)
        self.assertIs(self.seen["starting"], False)
        enabled, frozen = self.seen["serving"]
        self.assertTrue(enabled)
        self.assertGreater(frozen, self.frozen)

    def test_main_as_a_function_leaves_the_collector_alone(self):
        self.assertEqual(cli.main(self.argv), 0)
        self.assertIs(self.seen["starting"], True)
        self.assertEqual(self.seen["serving"], (True, self.frozen))


class TwistdPluginTests(ServerFiles, CollectorTestCase):
    """What twistd does with the plugin: its options (the start begins),
    then makeService (the start is over)."""

    def test_options_to_make_service(self):
        self.write_config("listen = tcp:0:interface=127.0.0.1\nworkers = 0\n")
        options = keyexchange.options()
        self.assertFalse(gc.isenabled())
        options.parseOptions(["--config", self.conf])
        self.assertFalse(gc.isenabled())
        keyexchange.makeService(options)
        self.assertTrue(gc.isenabled())
        self.assertGreater(gc.get_freeze_count(), self.frozen)
