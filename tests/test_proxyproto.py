"""The PROXY protocol in front of the KX/1 server (keyexchanged.proxyproto).

Headers are built here byte by byte from the spec (proxy-protocol.txt,
section 2.2 for v2), fed through StringTransport at every chunk size, and
timed with Clock.  The same factory in front of a real HAProxy is in
test_proxyproto_haproxy.py.
"""

import struct

from twisted.internet import defer, endpoints
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest

from keyexchanged import proxyproto
from keyexchanged.proxyproto import (
    HeaderReader,
    ProxyHeader,
    ProxyHeaderError,
    ProxyProtocolFactory,
    parse_listen,
    parse_trusted_proxies,
)
from tests.daemon import Daemon, DaemonTestCase
from tests.fixtures import frames, server_factory

# -- headers, from the spec ------------------------------------------------------

# Section 2.2: "\r\n\r\n\0\r\nQUIT\n".
SIGNATURE = bytes([0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A])
LOCAL, PROXY = 0x0, 0x1  # the low nibble of byte 13; the high one is the version, 2
UNSPEC, INET, INET6, UNIX = 0x0, 0x1, 0x2, 0x3  # high nibble of byte 14
STREAM, DGRAM = 0x1, 0x2  # its low nibble


def v2(command=PROXY, family=INET, transport=STREAM, block=b"", version=2):
    """A v2 header: signature, version and command, family and transport,
    the length of what follows, then ``block`` (addresses and TLVs)."""
    return (
        SIGNATURE
        + bytes([(version << 4) | command, (family << 4) | transport])
        + len(block).to_bytes(2, "big")
        + block
    )


def inet(source, destination, sport, dport):
    # Section 2.2: src_addr, dst_addr (4 bytes each), src_port, dst_port,
    # all in network byte order.
    return (
        bytes(int(part) for part in source.split("."))
        + bytes(int(part) for part in destination.split("."))
        + struct.pack("!HH", sport, dport)
    )


def inet6(source, destination, sport, dport):
    import ipaddress

    return (
        ipaddress.IPv6Address(source).packed
        + ipaddress.IPv6Address(destination).packed
        + struct.pack("!HH", sport, dport)
    )


def tlv(kind, value):
    return bytes([kind]) + len(value).to_bytes(2, "big") + value


V2_TCP4 = v2(block=inet("192.0.2.7", "198.51.100.1", 51000, 51424))
V2_TCP6 = v2(
    family=INET6,
    block=inet6("2001:db8::7", "2001:db8::1", 51000, 51424)
    # PP2_TYPE_UNIQUE_ID and PP2_TYPE_NOOP: TLVs after the addresses are skipped.
    + tlv(0x05, b"request-42")
    + tlv(0x04, b"\0" * 9),
)
V2_LOCAL = v2(command=LOCAL, family=UNSPEC, transport=UNSPEC)
V1_TCP4 = b"PROXY TCP4 192.0.2.7 198.51.100.1 51000 51424\r\n"
V1_TCP6 = b"PROXY TCP6 2001:db8:0:0::7 2001:db8::1 51000 51424\r\n"

CLIENT4 = IPv4Address("TCP", "192.0.2.7", 51000)
SERVER4 = IPv4Address("TCP", "198.51.100.1", 51424)
CLIENT6 = IPv6Address("TCP", "2001:db8::7", 51000)
SERVER6 = IPv6Address("TCP", "2001:db8::1", 51424)
PROXY_PEER = IPv4Address("TCP", "127.0.0.1", 40000)
PROXY_HOST = IPv4Address("TCP", "127.0.0.1", 51424)

#: Each header, and what it must present as peer and host.
HEADERS = {
    "v1 TCP4": (V1_TCP4, CLIENT4, SERVER4),
    "v1 TCP6": (V1_TCP6, CLIENT6, SERVER6),
    "v1 UNKNOWN": (b"PROXY UNKNOWN\r\n", PROXY_PEER, PROXY_HOST),
    "v2 TCP4": (V2_TCP4, CLIENT4, SERVER4),
    "v2 TCP6 + TLVs": (V2_TCP6, CLIENT6, SERVER6),
    "v2 LOCAL": (V2_LOCAL, PROXY_PEER, PROXY_HOST),
    "v2 UNSPEC": (v2(family=UNSPEC, transport=UNSPEC), PROXY_PEER, PROXY_HOST),
    "v2 UNIX": (v2(family=UNIX, block=b"/run/a".ljust(108, b"\0") * 2), PROXY_PEER, PROXY_HOST),
}


# -- a wrapped server that speaks first, as KX/1's does ---------------------------


class Greeter(Protocol):
    def __init__(self, factory):
        self.factory = factory
        self.data = b""
        self.lost = None

    def connectionMade(self):
        self.peer = self.transport.getPeer()
        self.host = self.transport.getHost()
        self.transport.write(b"HELLO")

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.lost = reason


class Greeters(Factory):
    def __init__(self, refuse=False):
        self.built = []
        self.refuse = refuse

    def buildProtocol(self, addr):
        if self.refuse:
            return None
        protocol = Greeter(self)
        protocol.addr = addr
        self.built.append(protocol)
        return protocol


def refusals(testcase):
    events = []

    def observe(event):
        if event.get("log_format", "").startswith("PROXY protocol: dropped"):
            events.append(event)

    globalLogPublisher.addObserver(observe)
    testcase.addCleanup(globalLogPublisher.removeObserver, observe)
    return events


class Connection:
    """A ProxyProtocolFactory's connection on a StringTransport."""

    def __init__(self, wrapped=None, trusted="127.0.0.0/8", peer=PROXY_PEER, **options):
        self.clock = Clock()
        self.wrapped = wrapped if wrapped is not None else Greeters()
        self.factory = ProxyProtocolFactory(
            self.wrapped, parse_trusted_proxies(trusted), self.clock, **options
        )
        self.protocol = self.factory.buildProtocol(peer)
        self.transport = StringTransport(peerAddress=peer, hostAddress=PROXY_HOST)
        if self.protocol is not None:
            self.protocol.makeConnection(self.transport)

    def feed(self, data, size=None):
        size = size or len(data) or 1
        for start in range(0, len(data), size):
            self.protocol.dataReceived(data[start : start + size])

    @property
    def dropped(self):
        return self.transport.disconnected  # StringTransport: abortConnection


class HeaderTests(unittest.SynchronousTestCase):
    def test_each_header_presents_its_addresses(self):
        for name, (header, peer, host) in HEADERS.items():
            connection = Connection()
            connection.feed(header + b"first bytes")
            [greeter] = connection.wrapped.built
            self.assertEqual((greeter.addr, greeter.peer, greeter.host), (peer, peer, host), name)
            self.assertEqual(greeter.data, b"first bytes", name)
            self.assertEqual(connection.transport.value(), b"HELLO", name)
            self.assertFalse(connection.transport.disconnecting, name)

    def test_every_chunk_size(self):
        for name, (header, peer, host) in HEADERS.items():
            data = header + b"after the header"
            for size in range(1, len(data) + 1):
                connection = Connection()
                connection.feed(data, size)
                [greeter] = connection.wrapped.built
                self.assertEqual((greeter.peer, greeter.host), (peer, host), (name, size))
                self.assertEqual(greeter.data, b"after the header", (name, size))

    def test_nothing_is_written_before_the_whole_header(self):
        for name, (header, _, _) in HEADERS.items():
            connection = Connection()
            connection.feed(header[:-1], 1)
            self.assertEqual(connection.wrapped.built, [], name)
            self.assertEqual(connection.transport.value(), b"", name)
            connection.feed(header[-1:])
            self.assertEqual(connection.transport.value(), b"HELLO", name)

    def test_later_data_goes_to_the_wrapped_protocol(self):
        connection = Connection()
        connection.feed(V2_TCP4)
        connection.feed(b"PROXY TCP4 203.0.113.1 198.51.100.1 1 2\r\n")
        greeter = connection.wrapped.built[0]
        # A second header is data: only the first connection bytes are ours.
        self.assertEqual(greeter.data, b"PROXY TCP4 203.0.113.1 198.51.100.1 1 2\r\n")
        self.assertEqual(greeter.peer, CLIENT4)

    def test_reader_results(self):
        reader = HeaderReader()
        self.assertIsNone(reader.feed(V1_TCP6[:20]))
        header, rest = reader.feed(V1_TCP6[20:] + b"x")
        self.assertEqual(header, ProxyHeader(1, local=False, source=CLIENT6, destination=SERVER6))
        self.assertEqual(rest, b"x")
        header, rest = HeaderReader().feed(V2_LOCAL)
        self.assertEqual((header, rest), (ProxyHeader(2, local=True), b""))

    def test_local_is_served_as_the_proxy(self):
        # A health check (check-send-proxy): served, as the spec asks, with
        # the connection's own addresses; the check sees the server answer.
        connection = Connection()
        connection.feed(V2_LOCAL)
        [greeter] = connection.wrapped.built
        self.assertEqual(greeter.addr, PROXY_PEER)
        self.assertEqual(connection.transport.value(), b"HELLO")

    def test_local_ignores_the_address_block(self):
        connection = Connection()
        connection.feed(v2(command=LOCAL, block=inet("192.0.2.7", "198.51.100.1", 1, 2)))
        self.assertEqual(connection.wrapped.built[0].peer, PROXY_PEER)

    def test_v1_line_of_107_bytes_is_the_limit(self):
        line = b"PROXY UNKNOWN " + b"x" * (107 - 16) + b"\r\n"
        self.assertEqual(len(line), 107)
        connection = Connection()
        connection.feed(line)
        self.assertEqual(len(connection.wrapped.built), 1)

        events = refusals(self)
        connection = Connection()
        connection.feed(line[:-2] + b"x", 1)  # 106 bytes, no CRLF: still waiting
        self.assertFalse(connection.dropped)
        connection.feed(b"\r")  # 107 bytes without CRLF
        self.assertTrue(connection.dropped)
        self.assertEqual(events[0]["reason"], "v1 header without CRLF in its first 107 bytes")


class RefusalTests(unittest.SynchronousTestCase):
    def assertDropped(self, connection, events, reason):
        self.assertTrue(connection.dropped)
        self.assertEqual(connection.transport.value(), b"")
        self.assertEqual(connection.wrapped.built, [])
        self.assertEqual(events[-1]["reason"], reason)
        # The header's timer is gone; only the refusal log's remains, until
        # the port closes.
        connection.factory.doStop()
        self.assertEqual(connection.clock.getDelayedCalls(), [])

    def test_malformed_headers(self):
        cases = {
            b"GET / HTTP/1.0\r\n\r\n": "not a PROXY protocol header",
            # A KX/1 client that bypassed the proxy says nothing; one that
            # sends first is not a proxy either.
            b"KEY 256\r\n": "not a PROXY protocol header",
            b"PROXY TCP4 ::1 198.51.100.1 1 2\r\n": "malformed address '::1' in the header",
            b"PROXY TCP6 192.0.2.7 2001:db8::1 1 2\r\n": (
                "malformed address '192.0.2.7' in the header"
            ),
            b"PROXY TCP4 host 198.51.100.1 1 2\r\n": "malformed address 'host' in the header",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 2\r\n": "malformed v1 header",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 +8_0 2\r\n": "malformed v1 header",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 1\r\n": "malformed v1 header",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 1 2 3\r\n": "malformed v1 header",
            b"PROXY UDP4 192.0.2.7 198.51.100.1 1 2\r\n": "malformed v1 header",
            b"PROXY TCP4 192.0.2.\xff 198.51.100.1 1 2\r\n": "malformed v1 header",
            v2(version=1): "PROXY protocol version 1, not 2",
            v2(command=0x2): "malformed v2 header",
            v2(family=0x4): "malformed v2 header",
            v2(block=b"\x01\x02\x03\x04"): "malformed v2 header",  # INET, 4 of 12 bytes
            v2(transport=DGRAM, block=inet("192.0.2.7", "198.51.100.1", 1, 2)): (
                "v2 header for a datagram connection"
            ),
        }
        for data, reason in cases.items():
            for size in (1, len(data)):
                events = refusals(self)
                connection = Connection()
                connection.feed(data, size)
                self.assertDropped(connection, events, reason)

    def test_refused_at_the_first_wrong_byte(self):
        events = refusals(self)
        connection = Connection()
        connection.feed(b"\r\n\r\n\0\r\nQUIX")
        self.assertDropped(connection, events, "not a PROXY protocol header")

    def test_oversized_v2_header_is_refused_from_its_length(self):
        events = refusals(self)
        connection = Connection()
        # 16 + 4081 > 4096: refused on the fixed part, before a byte of the rest.
        connection.feed(V2_TCP4[:14] + (4096 - 16 + 1).to_bytes(2, "big"))
        self.assertDropped(connection, events, "v2 header of 4097 bytes, over the limit of 4096")

    def test_v2_header_of_4096_bytes_is_read(self):
        block = inet("192.0.2.7", "198.51.100.1", 51000, 51424)
        block += tlv(0x04, b"\0" * (4096 - 16 - len(block) - 3))
        header = v2(block=block)
        self.assertEqual(len(header), proxyproto.MAX_HEADER)
        connection = Connection()
        connection.feed(header, 1000)
        self.assertEqual(connection.wrapped.built[0].peer, CLIENT4)

    def test_max_header_is_a_parameter(self):
        events = refusals(self)
        connection = Connection(max_header=64)
        connection.feed(V2_TCP6)  # 16 + 36 + 13 + 12 = 77 bytes
        self.assertDropped(connection, events, "v2 header of 77 bytes, over the limit of 64")

    def test_timeout(self):
        events = refusals(self)
        connection = Connection()
        connection.feed(V2_TCP4[:20])
        connection.clock.advance(2.999)
        self.assertFalse(connection.dropped)
        connection.clock.advance(0.001)
        self.assertDropped(connection, events, "no complete PROXY header within 3 s")
        self.assertEqual(events[-1]["peer"], "127.0.0.1:40000")

    def test_timeout_is_a_parameter_and_stops_with_the_header(self):
        connection = Connection(header_timeout=0.5)
        connection.feed(V1_TCP4)
        self.assertEqual(connection.clock.getDelayedCalls(), [])
        connection.clock.advance(10)
        self.assertFalse(connection.transport.disconnecting)

        connection = Connection(header_timeout=0.5)
        connection.clock.advance(0.5)
        self.assertTrue(connection.dropped)

    def test_untrusted_source_is_dropped_before_any_byte(self):
        events = refusals(self)
        for peer in (
            IPv4Address("TCP", "203.0.113.9", 40000),
            IPv6Address("TCP", "2001:db8::9", 40000),
            UNIXAddress(b"/run/kx.sock"),
        ):
            connection = Connection(trusted="127.0.0.0/8,::1/128", peer=peer)
            # No protocol: the listening port closes the socket at once,
            # so not one byte is read, nor a HELLO written.
            self.assertIsNone(connection.protocol)
            self.assertEqual(connection.wrapped.built, [])
        self.assertEqual(events[0]["reason"], "not a trusted proxy (trusted: 127.0.0.0/8,::1/128)")
        self.assertEqual(events[0]["peer"], "203.0.113.9:40000")

    def test_trusted_sources(self):
        for peer in (
            IPv4Address("TCP", "10.1.2.3", 1),
            IPv6Address("TCP", "2001:db8::5", 1),
            # A dual-stack socket's view of an IPv4 proxy.
            IPv6Address("TCP", "::ffff:10.1.2.3", 1),
        ):
            connection = Connection(trusted="10.0.0.0/8,2001:db8::/32", peer=peer)
            self.assertIsNotNone(connection.protocol, peer)

    def test_wrapped_factory_refuses(self):
        connection = Connection(wrapped=Greeters(refuse=True))
        connection.feed(V1_TCP4)
        self.assertTrue(connection.transport.disconnecting)
        self.assertEqual(connection.transport.value(), b"")

    def test_log_lines_are_rate_limited(self):
        events = refusals(self)
        for _ in range(3):
            Connection().feed(b"junk")  # each its own clock: time 0
        self.assertEqual(len(events), 3)  # three factories, three logs

        factory = ProxyProtocolFactory(Greeters(), parse_trusted_proxies("127.0.0.1"), Clock())
        del events[:]
        for _ in range(5):
            protocol = factory.buildProtocol(PROXY_PEER)
            protocol.makeConnection(StringTransport(peerAddress=PROXY_PEER))
            protocol.dataReceived(b"junk")
        factory.buildProtocol(IPv4Address("TCP", "203.0.113.9", 1))  # another kind
        self.assertEqual([e["kind"] for e in events], ["malformed", "untrusted"])
        counts = []
        globalLogPublisher.addObserver(counts.append)
        self.addCleanup(globalLogPublisher.removeObserver, counts.append)
        factory.reactor.advance(60)
        # A minute on: the four left out are counted in one line; the
        # other kind had none, and its next refusal is logged at once.
        (count,) = counts
        self.assertEqual((count["kind"], count["count"]), ("malformed", 4))
        self.assertEqual(
            formatEvent(count),
            "PROXY protocol: 4 more connection(s) dropped (malformed) in the last 60 s",
        )
        factory.buildProtocol(IPv4Address("TCP", "203.0.113.9", 2))
        self.assertEqual([e["kind"] for e in events], ["malformed", "untrusted", "untrusted"])
        factory.doStop()
        self.assertEqual(factory.reactor.getDelayedCalls(), [])


class LifecycleTests(unittest.SynchronousTestCase):
    def test_lost_before_the_header(self):
        connection = Connection()
        connection.feed(V2_TCP4[:5])
        self.assertIn(connection.protocol, connection.factory.protocols)
        connection.protocol.connectionLost(None)
        self.assertEqual(connection.clock.getDelayedCalls(), [])
        self.assertNotIn(connection.protocol, connection.factory.protocols)

    def test_lost_after_the_header(self):
        connection = Connection()
        connection.feed(V2_TCP4)
        greeter = connection.wrapped.built[0]
        connection.protocol.connectionLost("the reason")
        self.assertEqual(greeter.lost, "the reason")
        self.assertNotIn(connection.protocol, connection.factory.protocols)

    def test_starts_and_stops_the_wrapped_factory(self):
        wrapped = Greeters()
        factory = ProxyProtocolFactory(wrapped, parse_trusted_proxies("127.0.0.1"), Clock())
        factory.doStart()
        self.assertEqual(wrapped.numPorts, 1)
        factory.doStop()
        self.assertEqual(wrapped.numPorts, 0)


class SecureChannelTests(unittest.SynchronousTestCase):
    """In front of the real server factory: HELLO after the header, and
    the per-source limit counts the client the header names."""

    def test_hello_after_header_and_per_source_by_client(self):
        server = server_factory(max_per_source=1)
        connection = Connection(wrapped=server)
        self.assertEqual(connection.transport.value(), b"")
        connection.feed(V2_TCP4)
        self.assertEqual([verb for verb, _ in frames(connection.transport.value())], ["HELLO"])
        self.assertEqual(server.admission.per_source, {"192.0.2.7": 1})

        # A second client through the same proxy is another source...
        other = Connection(wrapped=server)
        other.feed(v2(block=inet("192.0.2.8", "198.51.100.1", 1, 51424)))
        self.assertEqual([verb for verb, _ in frames(other.transport.value())], ["HELLO"])
        # ...and the same client again is over its limit of 1.
        again = Connection(wrapped=server)
        again.feed(V1_TCP4)
        [(verb, payload)] = frames(again.transport.value())
        self.assertEqual(verb, "ERROR")
        self.assertIn(b"too many connections from this address", payload)


class TrustedProxiesTests(unittest.SynchronousTestCase):
    def test_loopback(self):
        trusted = parse_trusted_proxies("127.0.0.1/32,::1/128")
        self.assertEqual(str(trusted), "127.0.0.1/32,::1/128")
        self.assertTrue(trusted.allows(IPv4Address("TCP", "127.0.0.1", 1)))
        self.assertTrue(trusted.allows(IPv6Address("TCP", "::1", 1)))
        self.assertFalse(trusted.allows(IPv4Address("TCP", "127.0.0.2", 1)))

    def test_forms(self):
        trusted = parse_trusted_proxies(" 10.0.0.1 , 2001:db8::/32,192.168.0.0/16")
        self.assertEqual(str(trusted), "10.0.0.1/32,2001:db8::/32,192.168.0.0/16")
        self.assertEqual(trusted, parse_trusted_proxies(str(trusted)))

    def test_errors(self):
        for text, reason in {
            "": "must be a comma-separated list of networks such as 10.0.0.0/8",
            "10.0.0.0/8,": "must be a comma-separated list of networks such as 10.0.0.0/8",
            "10.0.0.0/33": "10.0.0.0/33: not an IPv4 or IPv6 network",
            "proxy.example": "proxy.example: not an IPv4 or IPv6 network",
            "10.0.0.1/8": "10.0.0.1/8: has host bits set (the network is 10.0.0.0/8)",
        }.items():
            with self.assertRaises(ValueError) as raised:
                parse_trusted_proxies(text)
            self.assertEqual(str(raised.exception), reason, text)


class ListenTests(unittest.SynchronousTestCase):
    trusted = parse_trusted_proxies("127.0.0.1")

    def test_plain_description_is_unchanged(self):
        wrapped = Greeters()
        inner, wrap = parse_listen("tcp:51424", self.trusted)
        self.assertEqual(inner, "tcp:51424")
        self.assertIs(wrap(wrapped), wrapped)

    def test_haproxy_prefix(self):
        clock = Clock()
        for description, expected in {
            "haproxy:tcp:51424:interface=127.0.0.1": "tcp:51424:interface=127.0.0.1",
            "HAProxy:tcp6:51424:interface=\\:\\:": "tcp6:51424:interface=\\:\\:",
            "haproxy:systemd:domain=INET6:name=keyexchanged": (
                "systemd:domain=INET6:name=keyexchanged"
            ),
            # Escaped as Twisted reads it, the type is still haproxy.
            "hap\\roxy:tcp:1": "tcp:1",
        }.items():
            inner, wrap = parse_listen(description, self.trusted, clock, header_timeout=5)
            self.assertEqual(inner, expected, description)
            wrapped = Greeters()
            factory = wrap(wrapped)
            self.assertIsInstance(factory, ProxyProtocolFactory)
            self.assertIs(factory.wrappedFactory, wrapped)
            self.assertIs(factory.trusted_proxies, self.trusted)
            self.assertEqual((factory.reactor, factory.header_timeout), (clock, 5))

    def test_inner_description_is_an_endpoint(self):
        inner, _ = parse_listen("haproxy:tcp:51424:interface=127.0.0.1", self.trusted)
        endpoint = endpoints.serverFromString(Clock(), inner)
        self.assertIsInstance(endpoint, endpoints.TCP4ServerEndpoint)

    def test_errors(self):
        for description, reason in {
            "haproxy": "haproxy: must be followed by the endpoint to listen on, "
            "as haproxy:tcp:51424",
            "haproxy:": "haproxy: must be followed by the endpoint to listen on, "
            "as haproxy:tcp:51424",
            "haproxy:haproxy:tcp:1": "haproxy: given twice; a connection carries one PROXY header",
        }.items():
            with self.assertRaises(ValueError) as raised:
                parse_listen(description, self.trusted)
            self.assertEqual(str(raised.exception), reason)


class NoDefaultProxyTests(unittest.SynchronousTestCase):
    """Nobody is a trusted proxy unless the operator names them: by default
    every local user would be one, and could name any client address."""

    def test_haproxy_without_trusted_proxies_is_refused(self):
        with self.assertRaises(ValueError) as raised:
            parse_listen("haproxy:tcp:51424", None)
        message = str(raised.exception)
        self.assertIn("--trusted-proxies", message)
        self.assertIn("127.0.0.1/32", message)

    def test_no_trusted_proxies_needed_without_haproxy(self):
        inner, _ = parse_listen("tcp:51424", None)
        self.assertEqual(inner, "tcp:51424")

    def test_there_is_no_default(self):
        from keyexchanged.config import SETTINGS

        (setting,) = [s for s in SETTINGS if s.name == "trusted-proxies"]
        self.assertIsNone(setting.default)


class ProxiedDaemonTests(DaemonTestCase):
    @defer.inlineCallbacks
    def test_haproxy_without_trusted_proxies_stops_the_daemon_saying_what_to_add(self):
        daemon = Daemon.start(
            ["--listen", "haproxy:tcp:0:interface=127.0.0.1", "--private-key", self.key]
        )
        self.addCleanup(daemon.stop)
        _, first = yield defer.DeferredList(
            [daemon.listening, daemon.ended], fireOnOneCallback=True, consumeErrors=True
        )
        self.assertEqual(first, 1, "the daemon listened")
        self.assertNotEqual((yield daemon.ended), 0)
        self.assertIn(b"--trusted-proxies", daemon.output)
        self.assertNotIn(b"Traceback", daemon.output)


class ErrorTests(unittest.SynchronousTestCase):
    def test_reader_raises_only_its_own_error(self):
        # Twisted's parsers raise ValueError and struct.error too: none escapes.
        for data in (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 x 2\r\n",
            v2(block=b"\x01"),
            v2(family=INET6, block=b"\x01" * 20),
            v2(family=UNIX, block=b"short"),
        ):
            self.assertRaises(ProxyHeaderError, HeaderReader().feed, data)


class HealthCheckTests(unittest.SynchronousTestCase):
    """The server logs and counts a proxy's health check apart: a LOCAL
    connection that closes without sending a byte, and nothing else."""

    def run_connection(self, header, data=b""):
        from prometheus_client.parser import text_string_to_metric_families

        from keyexchanged.metrics import Metrics

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        metrics = Metrics()
        connection = Connection(wrapped=server_factory(metrics=metrics))
        connection.feed(header + data)
        connection.protocol.connectionLost(ConnectionDone())
        texts = [event.get("log_format", "") for event in events]
        samples = {
            sample.name: sample.value
            for family in text_string_to_metric_families(metrics.render().decode("utf-8"))
            for sample in family.samples
            if not sample.labels
        }
        return texts, samples

    def test_a_silent_local_connection_is_a_health_check(self):
        texts, samples = self.run_connection(V2_LOCAL)
        self.assertTrue([t for t in texts if t.startswith("health check from {proxy}")], texts)
        self.assertFalse([t for t in texts if t.startswith("connection from {peer} ended")])
        # At most one line per check: a balancer checks every few seconds.
        self.assertEqual(len([t for t in texts if t]), 1, texts)
        self.assertEqual(samples["keyexchanged_health_checks_total"], 1)
        self.assertEqual(samples["keyexchanged_connections_open"], 0)

    def test_a_local_connection_that_talks_is_a_session(self):
        # A KEY header for the test ephemeral key (2048 bits), then the
        # connection closes: "closed", as a silent
        # check would be, but with bytes in.
        texts, samples = self.run_connection(V2_LOCAL, b"KEY 256\r\n")
        self.assertFalse([t for t in texts if t.startswith("health check from")], texts)
        self.assertTrue([t for t in texts if t.startswith("connection from {peer} ended")])
        self.assertEqual(samples["keyexchanged_health_checks_total"], 0)

    def check(self, factory, events):
        connection = Connection(wrapped=factory)
        connection.feed(V2_LOCAL)
        connection.protocol.connectionLost(ConnectionDone())
        return [e for e in events if e.get("log_level") == LogLevel.info]

    def test_health_checks_are_at_info_once_then_once_a_minute_with_their_count(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        clock = Clock()
        factory = server_factory(clock=clock)
        (first,) = self.check(factory, events)
        self.assertIn("health check", formatEvent(first))
        self.assertIn("127.0.0.1", formatEvent(first))
        for _ in range(29):
            clock.advance(2)  # HAProxy's default: a check every 2 s
            self.check(factory, events)
        self.assertEqual(len(self.check_lines(events)), 1)
        clock.advance(2)
        self.check(factory, events)
        lines = self.check_lines(events)
        self.assertEqual(len(lines), 2)
        self.assertIn("30 health checks from 127.0.0.1 in the last 60 s", formatEvent(lines[1]))

    @staticmethod
    def check_lines(events):
        return [
            e
            for e in events
            if e.get("log_level") == LogLevel.info and "health check" in formatEvent(e)
        ]

    def test_a_silent_proxied_client_is_a_session(self):
        texts, samples = self.run_connection(V1_TCP4)
        self.assertFalse([t for t in texts if t.startswith("health check from")], texts)
        self.assertEqual(samples["keyexchanged_health_checks_total"], 0)
