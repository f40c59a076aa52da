"""Who counts as one source for the per-source connection limit.

``--max-per-source`` bounds the connections one source may hold open.  Keyed
on the exact address it binds an IPv4 client, which rarely has more than a
few addresses; but an IPv6 host is routinely given a whole /64 (2**64
addresses, one per connection if it likes), so an IPv6 source is its
network of ``--ipv6-source-prefix`` bits (default 64).  An IPv4-mapped IPv6
address (``::ffff:192.0.2.1``, what a dual-stack socket reports for an IPv4
client) is that IPv4 client, counted as such.
"""

import ipaddress

__all__ = ["DEFAULT_IPV6_PREFIX", "source_key"]

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
