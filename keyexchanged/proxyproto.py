"""The PROXY protocol (v1 and v2) in front of the KX/1 server.

Behind a TCP load balancer (HAProxy with ``send-proxy-v2``, say), every
connection comes from the balancer; the balancer first sends a PROXY header
naming the real client, and this module reads it, so that the per-source
limits, the logs and the applications see that client.  It is a wrapping
factory, like TLS's: ``ProxyProtocolFactory(SecureChannelFactory(...),
trusted_proxies)``, listened with on the inner endpoint of ``--listen
haproxy:tcp:51424`` (:func:`parse_listen`).

Why not Twisted's own wrapper: ``twisted.protocols.haproxy`` exports only
``proxyEndpoint``, whose ``HAProxyProtocolWrapper``

- connects the wrapped protocol before the header is read, and KX/1's server
  speaks first: HELLO would go out before we know who the client is, and
  the wrapped factory is asked for a protocol with the balancer's address;
- takes a header from anyone, so any client could name any source address
  (and so escape ``--max-per-source``);
- decides v1 or v2 from the first read alone (8 or 16 bytes of it), has no
  time limit, and lets a ``ValueError`` through for a v1 port that is not a
  number.

So the framing, the bounds, the timer and the trust are here, and the
parsing of a complete header is Twisted's: ``V1Parser.parse`` and
``V2Parser.parse`` from the package's private modules (it exports no
parser), checked again here.  ``tests/test_proxyproto.py`` runs them on
every kind of header, so a change in them shows there.

Spec: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
"""

import ipaddress
import struct
from dataclasses import dataclass
from typing import Optional, Union

from twisted.internet import address
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols import policies
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from zope.interface import directlyProvides, providedBy

from keyexchanged import logs
from keyexchanged.config import DEFAULT_HEADER_TIMEOUT  # a setting's default, with the settings

__all__ = [
    "DEFAULT_HEADER_TIMEOUT",
    "MAX_HEADER",
    "HeaderReader",
    "HealthCheckLines",
    "ProxyHeader",
    "ProxyHeaderError",
    "ProxyProtocolFactory",
    "TrustedProxies",
    "parse_listen",
    "parse_trusted_proxies",
]

#: The largest header read.  v1 is at most 107 bytes (spec 2.1); v2 may
#: declare 16 + 65535, but its TLVs (unique id, TLS details) run to a few
#: hundred: 4 KiB is room to spare without holding 64 KiB per connection.
MAX_HEADER = 4096

V1_SIGNATURE = b"PROXY "
V1_MAX = 107  # bytes of a v1 line, CRLF included (spec 2.1)
V2_SIGNATURE = V2Parser.PREFIX  # 12 bytes, then version/command, family, length
V2_FIXED = 16

log = Logger()


class ProxyHeaderError(Exception):
    """A connection that did not start with an acceptable PROXY header."""


@dataclass(frozen=True)
class ProxyHeader:
    """What a complete header said.

    ``source`` and ``destination`` are ``IPv4Address`` or ``IPv6Address``
    (TCP), or ``None`` where the header gives none: a LOCAL connection (the
    proxy's own, its health checks), UNKNOWN (v1), or an unspecified or
    UNIX family (v2).  Then the connection's own addresses stand, as the
    spec asks.
    """

    version: int
    local: bool
    source: Optional[Union[address.IPv4Address, address.IPv6Address]] = None
    destination: Optional[Union[address.IPv4Address, address.IPv6Address]] = None


class HeaderReader:
    """Sans-IO: bytes in until one complete header is out.

    :meth:`feed` returns ``None`` while more bytes are needed, then
    ``(ProxyHeader, bytes after the header)``; it raises
    :class:`ProxyHeaderError` as soon as the bytes cannot start a valid
    header, or one longer than :data:`MAX_HEADER`.
    """

    def __init__(self, max_header=MAX_HEADER):
        self.max_header = max_header
        self._buffer = b""

    def feed(self, data):
        self._buffer += data
        buffer = self._buffer
        if buffer[:12] == V2_SIGNATURE[: len(buffer)]:
            return self._v2(buffer)
        if buffer[:6] == V1_SIGNATURE[: len(buffer)]:
            return self._v1(buffer)
        raise ProxyHeaderError("not a PROXY protocol header")

    def _v1(self, buffer):
        end = buffer.find(b"\r\n", 0, V1_MAX)
        if end < 0:
            if len(buffer) >= V1_MAX:
                raise ProxyHeaderError(f"v1 header without CRLF in its first {V1_MAX} bytes")
            return None
        line, rest = buffer[:end], buffer[end + 2 :]
        fields = line.split(b" ")
        if fields[:2] == [V1Parser.PROXYSTR, V1Parser.UNKNOWN_PROTO]:
            # The spec's shortest header, "PROXY UNKNOWN\r\n", which
            # Twisted's parser refuses: the connection's own addresses stand.
            return ProxyHeader(1, local=False), rest
        # PROXY TCP4|TCP6 source destination sport dport: exactly, and ports
        # in digits (Twisted's int() would take "+8_0").
        if len(fields) != 6 or not all(_is_port(field) for field in fields[4:]):
            raise ProxyHeaderError("malformed v1 header")
        try:
            info = V1Parser.parse(line)
        except (InvalidProxyHeader, ValueError):
            # ValueError: an address that is not ASCII.
            raise ProxyHeaderError("malformed v1 header") from None
        version = 4 if fields[1] == V1Parser.TCP4_PROTO else 6
        return (
            ProxyHeader(
                1,
                local=False,
                source=_checked(info.source, version),
                destination=_checked(info.destination, version),
            ),
            rest,
        )

    def _v2(self, buffer):
        if len(buffer) > 12 and buffer[12] >> 4 != 2:
            raise ProxyHeaderError(f"PROXY protocol version {buffer[12] >> 4}, not 2")
        if len(buffer) < V2_FIXED:
            return None
        (length,) = struct.unpack("!H", buffer[14:16])
        size = V2_FIXED + length
        if size > self.max_header:
            raise ProxyHeaderError(
                f"v2 header of {size} bytes, over the limit of {self.max_header}"
            )
        if len(buffer) < size:
            return None
        header, rest = buffer[:size], buffer[size:]
        try:
            info = V2Parser.parse(header)
        except (InvalidProxyHeader, ValueError, struct.error):
            raise ProxyHeaderError("malformed v2 header") from None
        if header[12] & 0x0F == 0:
            # LOCAL: the proxy's own connection, a health check.
            return ProxyHeader(2, local=True), rest
        source, destination = info.source, info.destination
        if not isinstance(source, (address.IPv4Address, address.IPv6Address)):
            # UNSPEC or UNIX: nothing we can count a source by.
            return ProxyHeader(2, local=False), rest
        if source.type != "TCP":
            raise ProxyHeaderError("v2 header for a datagram connection")
        version = 4 if isinstance(source, address.IPv4Address) else 6
        return (
            ProxyHeader(
                2,
                local=False,
                source=_checked(source, version),
                destination=_checked(destination, version),
            ),
            rest,
        )


def _is_port(field):
    return field.isdigit() and len(field) <= 5 and int(field) <= 65535


def _checked(addr, version):
    """``addr`` if its host is an IP address of ``version`` (Twisted's v1
    parser takes any word), in the address's canonical text."""
    try:
        ip = ipaddress.ip_address(addr.host)
    except ValueError:
        raise ProxyHeaderError(f"malformed address {addr.host!r} in the header") from None
    if ip.version != version:
        raise ProxyHeaderError(f"malformed address {addr.host!r} in the header")
    if version == 4:
        return address.IPv4Address("TCP", str(ip), addr.port)
    return address.IPv6Address("TCP", ip.compressed, addr.port)


@dataclass(frozen=True)
class TrustedProxies:
    """The networks whose connections may carry a PROXY header."""

    networks: tuple[Union[ipaddress.IPv4Network, ipaddress.IPv6Network], ...]

    def __post_init__(self):
        object.__setattr__(self, "networks", tuple(self.networks))

    def __str__(self):
        return ",".join(str(network) for network in self.networks)

    def allows(self, peer):
        """Whether ``peer`` (an IAddress) is in one of the networks.  An
        IPv4-mapped IPv6 address (a dual-stack socket's view of an IPv4
        peer) is that IPv4 address; a UNIX socket's peer never is."""
        try:
            ip = ipaddress.ip_address(getattr(peer, "host", None))
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.networks)


def parse_trusted_proxies(text):
    """``"127.0.0.1/32,::1/128"`` → :class:`TrustedProxies`; ValueError
    with the reason for a bad list (the ``--trusted-proxies`` validator)."""
    networks = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            raise ValueError("must be a comma-separated list of networks such as 10.0.0.0/8")
        try:
            network = ipaddress.ip_network(item)
        except ValueError:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item}: not an IPv4 or IPv6 network") from None
            raise ValueError(
                f"{item}: has host bits set (the network is "
                f"{ipaddress.ip_network(item, strict=False)})"
            ) from None
        networks.append(network)
    return TrustedProxies(networks)


def _prefix(description):
    """The endpoint type of a strports description, unescaped as Twisted
    does it, and the rest after its colon."""
    prefix = []
    index = 0
    while index < len(description):
        char = description[index]
        if char == "\\" and index + 1 < len(description):
            prefix.append(description[index + 1])
            index += 2
            continue
        if char == ":":
            return "".join(prefix), description[index + 1 :]
        prefix.append(char)
        index += 1
    return "".join(prefix), ""


def parse_listen(description, trusted_proxies, reactor=None, header_timeout=DEFAULT_HEADER_TIMEOUT):
    """``--listen`` → ``(endpoint description, wrap)``.

    ``haproxy:tcp:51424:interface=::`` gives ``tcp:51424:interface=::``
    and a ``wrap(factory)`` that puts a :class:`ProxyProtocolFactory` in
    front of ``factory``; any other description is unchanged and ``wrap``
    returns the factory itself.  ``haproxy:`` must not reach Twisted's
    ``serverFromString``: its own plugin has no trusted proxies.
    """
    prefix, rest = _prefix(description)
    if prefix.lower() != "haproxy":
        return description, lambda factory: factory
    if not rest:
        raise ValueError(
            "haproxy: must be followed by the endpoint to listen on, as haproxy:tcp:51424"
        )
    if _prefix(rest)[0].lower() == "haproxy":
        raise ValueError("haproxy: given twice; a connection carries one PROXY header")
    if trusted_proxies is None:
        # No default: every local user would be a trusted proxy, and could
        # name any client address, past --max-per-source.
        raise ValueError(
            "haproxy: trusts no proxy until told which: add --trusted-proxies "
            "(trusted-proxies = in the config file) with HAProxy's addresses, such as "
            "127.0.0.1/32 when it runs on this machine (then every local user may send "
            "a PROXY header)"
        )

    def wrap(factory):
        return ProxyProtocolFactory(factory, trusted_proxies, reactor, header_timeout)

    return rest, wrap


class HealthCheckLines:
    """A proxy's health checks in the log at info: the first one from each
    proxy at once, then at most one line every ``interval`` seconds with
    how many came meanwhile (HAProxy checks every 2 s: a line each would
    drown the sessions)."""

    #: Proxies tracked at most (they are trusted proxies: a handful).
    MAX_PROXIES = 256

    def __init__(self, clock, interval=60.0, log=None):
        self.clock = clock
        self.interval = interval
        self.log = log or Logger()
        self._proxies = {}  # host -> [count since the last line, time of that line]

    def seen(self, peer):
        """A health check from ``peer`` (``host:port`` or ``[v6]:port``) came and went."""
        proxy = peer.rsplit(":", 1)[0].strip("[]") if ":" in peer else peer
        now = self.clock.seconds()
        if proxy not in self._proxies:
            if len(self._proxies) >= self.MAX_PROXIES:
                self._proxies.clear()
            self._proxies[proxy] = [0, now]
            self.log.info(
                "health check from {proxy} (a PROXY-protocol LOCAL connection that got "
                "HELLO and closed); further ones are counted once a minute",
                proxy=proxy,
            )
            return
        seen = self._proxies[proxy]
        seen[0] += 1
        if now - seen[1] >= self.interval:
            self.log.info(
                "{count} health checks from {proxy} in the last {seconds:.0f} s",
                count=seen[0],
                proxy=proxy,
                seconds=now - seen[1],
            )
            seen[0], seen[1] = 0, now


def _describe(peer):
    host = getattr(peer, "host", None)
    if host is None:
        return str(peer)
    return f"[{host}]:{peer.port}" if ":" in host else f"{host}:{peer.port}"


def _log_refusal(factory, kind, peer, reason):
    factory.refusals.warn(
        kind,
        "PROXY protocol: dropped a connection from {peer}: {reason}",
        peer=_describe(peer),
        reason=reason,
        kind=kind,
    )


class ProxyProtocolWrapper(policies.ProtocolWrapper):
    """One connection: the header first, then the wrapped protocol.

    The wrapped protocol is built (with the client's address) and connected
    only once a complete, acceptable header has been read; until then
    nothing is written.  Afterwards ``getPeer()`` is the client and
    ``getHost()`` the address it dialled on the proxy, where the header
    names them.
    """

    def __init__(self, factory):
        super().__init__(factory, None)
        self._reader = HeaderReader(factory.max_header)
        self._header = None
        self._timer = None
        self._refused = False

    def logPrefix(self):
        if self.wrappedProtocol is None:
            return "ProxyProtocol"
        return super().logPrefix()

    def makeConnection(self, transport):
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)

    def connectionMade(self):
        self.factory.registerProtocol(self)
        self._timer = self.factory.reactor.callLater(
            self.factory.header_timeout, self._header_expired
        )

    def _header_expired(self):
        self._timer = None
        self._refuse(
            "timeout",
            f"no complete PROXY header within {self.factory.header_timeout:g} s",
        )

    def _refuse(self, kind, reason):
        self._refused = True
        self._cancel_timer()
        _log_refusal(self.factory, kind, self.transport.getPeer(), reason)
        self.transport.abortConnection()

    def _cancel_timer(self):
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def dataReceived(self, data):
        if self.wrappedProtocol is not None:
            self.wrappedProtocol.dataReceived(data)
            return
        if self._refused:
            return
        try:
            done = self._reader.feed(data)
        except ProxyHeaderError as refusal:
            self._refuse("malformed", str(refusal))
            return
        if done is not None:
            header, rest = done
            self._reader = None
            self._header_read(header, rest)

    #: True for a LOCAL connection: the proxy's own, a health check.  The
    #: server logs and counts such a connection apart when it sends nothing.
    health_check = False

    def _header_read(self, header, rest):
        self._cancel_timer()
        self._header = header
        if header.local:
            # Logged by the server when it ends, as one line: a balancer
            # checks every few seconds.
            self.health_check = True
        protocol = self.factory.wrappedFactory.buildProtocol(self.getPeer())
        if protocol is None:
            self.transport.loseConnection()
            return
        self.wrappedProtocol = protocol
        protocol.makeConnection(self)
        if rest and not (self.disconnecting or self.transport.disconnecting):
            protocol.dataReceived(rest)

    def getPeer(self):
        if self._header is not None and self._header.source is not None:
            return self._header.source
        return self.transport.getPeer()

    def getHost(self):
        if self._header is not None and self._header.destination is not None:
            return self._header.destination
        return self.transport.getHost()

    def connectionLost(self, reason):
        self._cancel_timer()
        self.factory.unregisterProtocol(self)
        protocol, self.wrappedProtocol = self.wrappedProtocol, None
        if protocol is not None:
            protocol.connectionLost(reason)


class ProxyProtocolFactory(policies.WrappingFactory):
    """Reads a PROXY header (v1 or v2) on every connection, then hands the
    connection to ``wrapped_factory`` as if it came from the client.

    ``trusted_proxies`` (:class:`TrustedProxies`) says who may connect: a
    connection from anywhere else is closed before a byte is read or
    written.  ``header_timeout`` seconds on ``reactor``'s clock to send a
    complete header; ``max_header`` bytes at most.
    """

    protocol = ProxyProtocolWrapper
    noisy = False

    def __init__(
        self,
        wrapped_factory,
        trusted_proxies,
        reactor=None,
        header_timeout=DEFAULT_HEADER_TIMEOUT,
        max_header=MAX_HEADER,
    ):
        super().__init__(wrapped_factory)
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.trusted_proxies = trusted_proxies
        self.header_timeout = header_timeout
        self.max_header = max_header
        #: One line per kind of refusal per minute at most, with a count.
        self.refusals = logs.RateLimitedLog(
            reactor,
            "PROXY protocol: {count} more connection(s) dropped ({kind}) in the last "
            "{seconds:.0f} s",
            log=log,
        )

    def logPrefix(self):
        return f"{super().logPrefix()} (PROXY)"

    def doStop(self):
        self.refusals.stop()  # its counts told, its timers gone with the port
        super().doStop()

    def buildProtocol(self, addr):
        if not self.trusted_proxies.allows(addr):
            _log_refusal(
                self,
                "untrusted",
                addr,
                f"not a trusted proxy (trusted: {self.trusted_proxies})",
            )
            return None  # the port closes it at once
        return self.protocol(self)
