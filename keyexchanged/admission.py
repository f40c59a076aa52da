"""Admission: how many connections, from one source, and handshakes at once.

:class:`Admission` counts what a server has open against its limits: the
connections (``--max-connections``), those of one source
(``--max-per-source``), and the handshakes whose private-key work is under
way (``--max-handshakes``).  The factory asks it before it builds a
protocol; a protocol asks it before it hands out private-key work.

Who counts as one source:
``--max-per-source`` bounds the connections one source may hold open.  Keyed
on the exact address it binds an IPv4 client, which rarely has more than a
few addresses; but an IPv6 host is routinely given a whole /64 (2**64
addresses, one per connection if it likes), so an IPv6 source is its
network of ``--ipv6-source-prefix`` bits (default 64).  An IPv4-mapped IPv6
address (``::ffff:192.0.2.1``, what a dual-stack socket reports for an IPv4
client) is that IPv4 client, counted as such.
"""

import ipaddress

__all__ = ["DEFAULT_IPV6_PREFIX", "Admission", "source_key"]

#: The prefix an IPv6 site or host is usually given (RFC 6177 recommends
#: at least a /64 for every end site): addresses within it are one source.
DEFAULT_IPV6_PREFIX = 64


def source_key(host, ipv6_prefix=DEFAULT_IPV6_PREFIX):
    """The key the per-source limit counts a connection from ``host`` under.

    An IPv4 address is itself; an IPv6 address is its network of
    ``ipv6_prefix`` bits (``"2001:db8:1:2::/64"``), or the IPv4 address it
    maps.  Anything else (``None``, a UNIX socket's name) is its own key.
    """
    if not isinstance(host, str):
        return host
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if address.version == 4:
        return str(address)
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, ipv6_prefix), strict=False))


class Admission:
    """The counts of one server against its limits.

    @ivar connections: the sessions admitted and not yet released.
    @ivar per_source: ``{source: count}`` of those sessions (see
        :func:`source_key`); a source with none is not listed.
    @ivar working: the KEYs and AUTHs whose private-key work is under way.
    """

    def __init__(
        self,
        max_connections=1024,
        max_per_source=32,
        max_handshakes=64,
        ipv6_prefix=DEFAULT_IPV6_PREFIX,
    ):
        self.max_connections = max_connections
        self.max_per_source = max_per_source
        self.max_handshakes = max_handshakes
        self.ipv6_prefix = ipv6_prefix
        self.connections = set()
        # Counted by source and released by the same source, remembered per
        # session.  (Twisted's LimitConnectionsByPeer adds by host but
        # removes by (host, port).)
        self.per_source = {}
        self._source_of = {}
        self.working = 0

    def source(self, host):
        """What the per-source limit counts a connection from ``host`` as."""
        return source_key(host, self.ipv6_prefix)

    def refusal(self, source):
        """Why a new connection from ``source`` must be refused now (the
        detail of its ERROR busy), or ``None`` when it may be admitted."""
        if len(self.connections) >= self.max_connections:
            return self._refuse("busy", "too many connections")
        if self.per_source.get(source, 0) >= self.max_per_source:
            return self._refuse("per-source", "too many connections from this address")
        return None

    def _refuse(self, limit, detail):
        if self.on_refused is not None:
            self.on_refused(limit)
        return detail

    def admit(self, session, source):
        """Count ``session``, a connection from ``source``."""
        self.connections.add(session)
        self._source_of[session] = source
        self.per_source[source] = self.per_source.get(source, 0) + 1

    def release(self, session):
        """``session`` is over: it counts no more."""
        self.connections.discard(session)
        source = self._source_of.pop(session, None)
        remaining = self.per_source.get(source, 1) - 1
        if remaining:
            self.per_source[source] = remaining
        else:
            self.per_source.pop(source, None)

    def start_work(self):
        """Count one more private-key operation a peer asked for; False
        when ``max_handshakes`` are under way already."""
        if self.working >= self.max_handshakes:
            if self.on_refused is not None:
                self.on_refused("max-handshakes")
            return False
        self.working += 1
        if self.on_work is not None:
            self.on_work(self.working)
        return True

    def end_work(self):
        self.working -= 1
        if self.on_work is not None:
            self.on_work(self.working)

    #: Told the number of operations under way whenever it changes (a
    #: metrics gauge), and the name of a limit that refused one.
    on_work = None
    on_refused = None
