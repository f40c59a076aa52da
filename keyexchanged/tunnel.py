"""The client half of a tunnel: a plain local listener, carried over KX/1.

``keyexchange tunnel --listen tcp:6380:interface=127.0.0.1 --server HOST``
accepts plain TCP connections and carries each over its own KX/1 session
to a server running ``twistd keyexchange --application forward
--forward-to ENDPOINT``, which relays it to the real service — as spiped
and stunnel do.  Every session checks the server's key with the trust
policy given, and authenticates with ``identity`` when one is given.

The local connection waits, not read, until the session's handshake is
complete; a handshake that fails resets it (the application sees a
failure, never an empty success).  From then on the two connections are
spliced (see :mod:`keyexchanged.relay`): half-closes cross over and a slow
side pauses the fast one.
"""

from twisted.internet.protocol import Factory
from twisted.logger import Logger

from keyexchanged import protocol
from keyexchanged.relay import Splice

__all__ = ["TunnelFactory"]


class TunnelFactory(Factory):
    """Accept local connections; carry each over a new KX/1 session.

    ``endpoint`` is a client endpoint to the KX/1 server, ``server_name``
    the host name dialled (for the trust checks).
    """

    noisy = False
    log = Logger()

    def __init__(self, reactor, endpoint, trust, server_name, identity=None, report=None):
        self.reactor = reactor
        #: Called with one line for each connection that failed (the
        #: command prints it; the Python API may leave it out).
        self.report = report
        self.endpoint = endpoint
        self.trust = trust
        self.server_name = server_name
        self.identity = identity
        #: The splices open now (first: the local connection, second: in the session).
        self.splices = set()

    def buildProtocol(self, address):
        peer = f"{getattr(address, 'host', address)}:{getattr(address, 'port', '')}"
        splice = Splice(f"tunnel from {peer} to {self.server_name}", connect=self._connect)
        splice.on_done = lambda reason: self._done(splice, reason)
        self.splices.add(splice)
        return splice.first

    def _done(self, splice, reason):
        self.splices.discard(splice)
        if reason is not None and self.report is not None:
            self.report(f"{splice.name}: {_why(reason)}")

    def _connect(self, end):
        application = Factory.forProtocol(lambda: end)
        application.noisy = False
        return protocol.connect(
            self.reactor,
            self.endpoint,
            self.trust,
            application,
            server_name=self.server_name,
            identity=self.identity,
        )


def _why(reason):
    """One line for a user: the real cause inside HandshakeFailed."""
    value = reason.value
    while isinstance(value, protocol.HandshakeFailed):
        inner = value.reason
        value = getattr(inner, "value", inner)
    return str(value) or type(value).__name__


def run_tunnel(reactor, listen, host, port, policy, identity=None, report=print):
    """Listen on ``listen`` (a strports description) until the reactor stops.

    Each accepted connection is carried to ``host:port`` over its own
    KX/1 session.  Fires with the listening port once listening; the
    caller keeps the reactor running.
    """
    from twisted.internet import endpoints

    server = endpoints.HostnameEndpoint(reactor, host, port, timeout=30)
    factory = TunnelFactory(reactor, server, policy, host, identity=identity, report=report)
    listening = endpoints.serverFromString(reactor, listen).listen(factory)

    def ready(local):
        address = local.getHost()
        report(
            f"tunnel listening on {getattr(address, 'host', address)}:"
            f"{getattr(address, 'port', '')}, carrying each connection to {host}:{port}"
        )
        return local

    return listening.addCallback(ready)
