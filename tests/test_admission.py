"""Who counts as one source for --max-per-source (keyexchanged.admission),
and the limit applied with it by the server factory."""

import json

from twisted.internet import error
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python import usage
from twisted.trial import unittest

from keyexchanged import protocol, tap
from keyexchanged.admission import DEFAULT_IPV6_PREFIX, Admission, source_key
from tests.fixtures import ServerFiles, frames, server_factory


class SourceKeyTests(unittest.TestCase):
    def test_ipv4_is_the_address(self):
        self.assertEqual(source_key("192.0.2.1"), "192.0.2.1")
        self.assertNotEqual(source_key("192.0.2.1"), source_key("192.0.2.2"))

    def test_ipv6_is_its_64_by_default(self):
        self.assertEqual(DEFAULT_IPV6_PREFIX, 64)
        key = source_key("2001:db8:1:2::1")
        self.assertEqual(key, "2001:db8:1:2::/64")
        for same in ["2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:0db8:0001:0002:0:0:0:7"]:
            self.assertEqual(source_key(same), key, same)
        for other in ["2001:db8:1:3::1", "2001:db8:2:2::1"]:
            self.assertNotEqual(source_key(other), key, other)

    def test_other_prefixes(self):
        self.assertEqual(source_key("2001:db8:1:2::1", 48), "2001:db8:1::/48")
        self.assertEqual(source_key("2001:db8:1:ff::1", 48), "2001:db8:1::/48")
        self.assertEqual(source_key("2001:db8::1", 128), "2001:db8::1/128")
        self.assertNotEqual(source_key("2001:db8::1", 128), source_key("2001:db8::2", 128))
        self.assertEqual(source_key("2001:db8::1", 1), source_key("7fff::1", 1))

    def test_ipv4_mapped_is_the_ipv4_address(self):
        self.assertEqual(source_key("::ffff:192.0.2.1"), "192.0.2.1")
        self.assertEqual(source_key("::ffff:c000:201"), "192.0.2.1")
        # Two IPv4 clients behind a dual-stack socket are two sources, not
        # one ::ffff:0:0/96 network.
        self.assertNotEqual(source_key("::ffff:192.0.2.1"), source_key("::ffff:192.0.2.2"))

    def test_no_address(self):
        self.assertIsNone(source_key(None))
        self.assertEqual(source_key("/run/keyexchanged.sock"), "/run/keyexchanged.sock")


def v6(host, port=40000):
    return IPv6Address("TCP", host, port)


def v4(host, port=40000):
    return IPv4Address("TCP", host, port)


class AdmissionTests(unittest.TestCase):
    """The counting on its own, without a factory."""

    def test_limits_and_release(self):
        admission = Admission(max_connections=3, max_per_source=2)
        a = admission.source("2001:db8::1")
        b = admission.source("192.0.2.1")
        self.assertEqual(a, admission.source("2001:db8::2"))  # the same /64
        for session in ("s1", "s2"):
            self.assertIsNone(admission.refusal(a))
            admission.admit(session, a)
        self.assertEqual(admission.refusal(a), "too many connections from this address")
        admission.admit("s3", b)
        self.assertEqual(admission.refusal(b), "too many connections")
        admission.release("s1")
        self.assertIsNone(admission.refusal(a))
        admission.release("s2")
        admission.release("s3")
        admission.release("s3")  # twice is harmless
        self.assertEqual((admission.connections, admission.per_source), (set(), {}))

    def test_private_key_work(self):
        admission = Admission(max_handshakes=1)
        self.assertTrue(admission.start_work())
        self.assertFalse(admission.start_work())
        admission.end_work()
        self.assertEqual(admission.working, 0)
        self.assertTrue(admission.start_work())


class PerSourceLimitTests(unittest.TestCase):
    """The factory counts connections by source_key."""

    def connect(self, factory, address):
        proto = factory.buildProtocol(address)
        transport = StringTransport()
        proto.makeConnection(transport)
        if isinstance(proto, protocol.ServerChannelProtocol):
            return proto
        (verb, payload), *_ = frames(transport.value())
        self.assertEqual(verb, "ERROR")
        return json.loads(payload)

    def assertServed(self, result):
        self.assertIsInstance(result, protocol.ServerChannelProtocol)

    def assertBusy(self, result):
        self.assertIsInstance(result, dict, "served where ERROR busy was due")
        self.assertEqual(result["error"], "busy")

    def test_addresses_in_one_64_share_the_limit(self):
        factory = server_factory(max_per_source=2)
        first = self.connect(factory, v6("2001:db8:0:1::1"))
        self.assertServed(first)
        self.assertServed(self.connect(factory, v6("2001:db8:0:1::2")))
        self.assertBusy(self.connect(factory, v6("2001:db8:0:1:dead:beef:0:3")))
        # Another /64 is another source.
        self.assertServed(self.connect(factory, v6("2001:db8:0:2::1")))
        # A connection that ends frees its place in its /64.
        first.connectionLost(error.ConnectionDone())
        self.assertServed(self.connect(factory, v6("2001:db8:0:1::4")))
        self.assertEqual(
            factory.admission.per_source, {"2001:db8:0:1::/64": 2, "2001:db8:0:2::/64": 1}
        )

    def test_configured_prefix(self):
        factory = server_factory(max_per_source=1, ipv6_source_prefix=128)
        self.assertServed(self.connect(factory, v6("2001:db8::1")))
        self.assertServed(self.connect(factory, v6("2001:db8::2")))
        self.assertBusy(self.connect(factory, v6("2001:db8::1", 2)))

    def test_ipv4_is_per_address_as_before(self):
        factory = server_factory(max_per_source=1)
        self.assertServed(self.connect(factory, v4("192.0.2.1")))
        self.assertServed(self.connect(factory, v4("192.0.2.2")))
        self.assertBusy(self.connect(factory, v4("192.0.2.1", 2)))

    def test_mapped_address_counts_with_its_ipv4_address(self):
        factory = server_factory(max_per_source=2)
        self.assertServed(self.connect(factory, v4("192.0.2.1")))
        self.assertServed(self.connect(factory, v6("::ffff:192.0.2.1")))
        self.assertBusy(self.connect(factory, v6("::ffff:192.0.2.1", 2)))
        self.assertBusy(self.connect(factory, v4("192.0.2.1", 2)))
        self.assertServed(self.connect(factory, v6("::ffff:192.0.2.2")))

    def test_unix_socket_peers(self):
        factory = server_factory(max_per_source=1)
        self.assertServed(self.connect(factory, UNIXAddress(None)))
        self.assertBusy(self.connect(factory, UNIXAddress(None)))


class OptionTests(ServerFiles, unittest.TestCase):
    def setUp(self):
        super().setUp()
        self.write_config("workers = 0\n")

    def parse(self, *argv):
        options = tap.Options(environ={})
        options.parseOptions(["--config", self.conf, *argv])
        return options

    def test_default_and_command_line_reach_the_factory(self):
        self.assertEqual(self.parse().settings["ipv6-source-prefix"], 64)
        options = self.parse("--ipv6-source-prefix", "48", "--max-per-source", "1")
        factory = tap.makeService(options, reactor=Clock()).factory
        self.assertEqual(factory.admission.ipv6_prefix, 48)
        self.assertIsInstance(
            factory.buildProtocol(v6("2001:db8:1::1")), protocol.ServerChannelProtocol
        )
        self.assertIsInstance(factory.buildProtocol(v6("2001:db8:1:ff::1")), protocol.BusyProtocol)
        self.assertIsInstance(
            factory.buildProtocol(v6("2001:db8:2::1")), protocol.ServerChannelProtocol
        )

    def test_bad_command_line_values(self):
        for value in ["0", "129", "x", "-64", "64.5"]:
            with self.assertRaises(usage.UsageError) as caught:
                self.parse("--ipv6-source-prefix", value)
            self.assertEqual(
                str(caught.exception),
                f"--ipv6-source-prefix: ipv6-source-prefix = {value!r}: "
                "must be a prefix length from 1 to 128",
            )


class RefusalNamesTests(unittest.TestCase):
    """Each refusal names the limit that made it, where the limit is
    checked (what the rate-limited warnings count by)."""

    def test_each_limit_is_named(self):
        refused = []
        admission = Admission(max_connections=2, max_per_source=1, max_handshakes=1)
        admission.on_refused = refused.append
        admission.admit(object(), "10.0.0.1")
        self.assertEqual(admission.refusal("10.0.0.1"), "too many connections from this address")
        admission.admit(object(), "10.0.0.2")
        self.assertEqual(admission.refusal("10.0.0.3"), "too many connections")
        self.assertTrue(admission.start_work())
        self.assertFalse(admission.start_work())
        self.assertIsNone(Admission().refusal("10.0.0.9"))
        self.assertEqual(refused, ["per-source", "busy", "max-handshakes"])

    def test_the_factory_tells_its_limit_warnings(self):
        from keyexchanged.logs import LimitWarnings
        from tests.fixtures import server_factory

        clock = Clock()
        warnings = LimitWarnings(clock)
        told = []
        self.patch(warnings, "refused", told.append)
        factory = server_factory(clock=clock, max_per_source=1, limit_warnings=warnings)
        factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 1))
        busy = factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 2))
        self.assertIsInstance(busy, protocol.BusyProtocol)
        self.assertEqual(told, ["per-source"])
