"""Applications: discovery as plugins, lookup, and the built-in ones in memory
(the daemon serving a plugin from the plugin path is in test_tunnel_system)."""

import os
import sys

from twisted.trial import unittest

from keyexchanged import applications, plugins
from keyexchanged.applications import Application, UnknownApplication
from keyexchanged.interfaces import IApplication
from tests.fixtures import MESSAGE, Collector, Pair, server_factory


class DiscoveryTests(unittest.TestCase):
    def add_plugin_directory(self, source, name="extra_apps"):
        """A directory on the plugin path holding one plugin module."""
        directory = os.path.abspath(self.mktemp())
        package = os.path.join(directory, "keyexchanged", "plugins")
        os.makedirs(package)
        with open(os.path.join(package, name + ".py"), "w") as f:
            f.write(source)
        self.patch(plugins, "__path__", [*plugins.__path__, package])
        self.addCleanup(sys.modules.pop, "keyexchanged.plugins." + name, None)

    def test_builtins(self):
        found = applications.find_applications()
        self.assertEqual(sorted(found), ["echo", "forward", "message"])
        for application in found.values():
            self.assertTrue(IApplication.providedBy(application))
            self.assertTrue(application.description)
        self.assertEqual([s.name for s in found["forward"].settings], ["forward-to"])

    def test_a_plugin_on_the_path_is_found(self):
        self.add_plugin_directory(
            "from twisted.internet.protocol import Factory, Protocol\n"
            "from keyexchanged.applications import Application\n"
            "shout = Application('shout', 'in capitals',\n"
            "                    lambda s, r: Factory.forProtocol(Protocol))\n"
        )
        self.assertIn("shout", applications.find_applications())

    def test_a_plugin_cannot_shadow_a_builtin(self):
        self.add_plugin_directory(
            "from keyexchanged.applications import Application\n"
            "impostor = Application('aaa-first', 'x', None)\n"
            "impostor.name = 'message'\n",
            name="aaa_impostor",
        )
        found = applications.find_applications()
        self.assertEqual(found["message"].description.split()[0], "send")

    def test_unknown_name_lists_the_installed(self):
        with self.assertRaises(UnknownApplication) as caught:
            applications.get_application("nope")
        message = str(caught.exception)
        self.assertIn("no application named 'nope'", message)
        self.assertIn("echo, forward, message", message)

    def test_names_are_checked(self):
        for bad in ["", "Echo", "with space", "x" * 33, "-lead"]:
            with self.assertRaises(ValueError):
                Application(bad, "d", None)


class BuiltinTests(unittest.TestCase):
    def factory(self, name, **settings):
        return applications.get_application(name).makeFactory(
            {"message": MESSAGE, **settings}, None
        )

    def test_message(self):
        pair = Pair(factory=server_factory(self.factory("message")))
        pair.flush()
        self.assertEqual(pair.application.data, MESSAGE)

    def test_echo(self):
        class Talker(Collector):
            def connectionMade(self):
                self.transport.write(b"say it back")
                self.transport.loseConnection()

        talker = Talker()
        pair = Pair(factory=server_factory(self.factory("echo")), client_app=talker)
        pair.flush()
        self.assertEqual(talker.data, b"say it back")

    def test_forward_needs_a_target(self):
        with self.assertRaises(ValueError) as caught:
            self.factory("forward")
        self.assertIn("--forward-to", str(caught.exception))
        with self.assertRaises(ValueError) as caught:
            self.factory("forward", **{"forward-to": "nonsense:1"})
        self.assertIn("nonsense:1", str(caught.exception))
