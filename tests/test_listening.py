"""keyexchanged.listening: endpoints checked before serving, listened on at once."""

import socket

from twisted.internet import defer, error, reactor
from twisted.internet.protocol import Factory
from twisted.trial import unittest

from keyexchanged.errors import ConfigError
from keyexchanged.listening import CannotListen, check_endpoint, listen_now


class ListenNowTests(unittest.TestCase):
    def test_a_port_at_once_goes_to_on_listening(self):
        ports = []
        listening = listen_now(lambda: defer.succeed("port"), "cannot listen on x", ports.append)
        self.assertEqual(ports, ["port"])
        self.assertTrue(listening.called)

    def test_a_failure_at_once_raises_one_line(self):
        def listen():
            return defer.fail(error.CannotListenError("", 1, OSError("Address already in use")))

        failed = self.assertRaises(CannotListen, listen_now, listen, "cannot listen on tcp:1")
        self.assertIn("cannot listen on tcp:1: ", str(failed))
        self.assertIn("Address already in use", str(failed))
        self.assertNotIn("\n", str(failed))

    def test_a_failure_at_once_raises_the_error_asked_for(self):
        class Mine(Exception):
            pass

        self.assertRaises(
            Mine, listen_now, lambda: defer.fail(OSError("no")), "--metrics x", error=Mine
        )

    def test_a_later_failure_goes_to_on_late_failure(self):
        later = defer.Deferred()
        ports, failures = [], []
        listen_now(lambda: later, "cannot listen on x", ports.append, failures.append)
        later.errback(OSError("gone"))
        self.assertEqual(ports, [])
        self.assertEqual([f.getErrorMessage() for f in failures], ["gone"])


class CheckEndpointTests(unittest.TestCase):
    def test_a_free_port_passes(self):
        check_endpoint(reactor, "tcp:0:interface=127.0.0.1", "listen")

    def test_a_port_in_use(self):
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            failed = self.assertRaises(
                CannotListen, check_endpoint, reactor, f"tcp:{port}:interface=127.0.0.1", "listen"
            )
        self.assertIn(f"cannot listen on tcp:{port}:interface=127.0.0.1: ", str(failed))

    def test_the_port_is_free_again_after_the_check(self):
        port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        number = port.getHost().port
        d = port.stopListening()

        def check(_):
            check_endpoint(reactor, f"tcp:{number}:interface=127.0.0.1", "listen")
            # The check closed its socket: Twisted can listen there now.
            again = reactor.listenTCP(number, Factory(), interface="127.0.0.1")
            return again.stopListening()

        return d.addCallback(check)

    def test_not_an_endpoint(self):
        failed = self.assertRaises(ConfigError, check_endpoint, reactor, "tpc:1", "--metrics")
        self.assertTrue(str(failed).startswith("--metrics tpc:1: not an endpoint"), str(failed))

    def test_an_ipv6_interface(self):
        if not socket.has_ipv6:
            raise unittest.SkipTest("no IPv6 here")
        try:
            with socket.socket(socket.AF_INET6) as probe:
                probe.bind(("::1", 0))
        except OSError:
            raise unittest.SkipTest("no ::1 here") from None
        check_endpoint(reactor, "tcp6:0:interface=\\:\\:1", "listen")
