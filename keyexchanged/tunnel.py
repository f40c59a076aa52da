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
from keyexchanged.tickets import TicketStore

__all__ = ["TunnelFactory"]


class TunnelFactory(Factory):
    """Accept local connections; carry each over a new KX/1 session.

    ``endpoint`` is a client endpoint to the KX/1 server, ``server_name``
    the host name dialled (for the trust checks), ``server_address`` the
    host and port its tickets are kept under: every connection after the
    first resumes from a small pool of tickets held in memory, with no RSA
    on either side.
    """

    noisy = False
    log = Logger()

    def __init__(
        self,
        reactor,
        endpoint,
        trust,
        server_name,
        identity=None,
        report=None,
        server_address=None,
        require_forward_secrecy=True,
        idle_timeout=None,
        tickets=None,
    ):
        self.reactor = reactor
        self.server_address = server_address or (server_name, 0)
        self.require_forward_secrecy = require_forward_secrecy
        self.idle_timeout = idle_timeout
        #: Tickets for the server, each used once; every session brings one.
        self.tickets = tickets if tickets is not None else TicketStore(per_server=8)
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
        name = f"tunnel from {peer} to {self.server_name}"
        splice = Splice(name, connect=lambda end: self._connect(end, name))
        splice.on_done = lambda reason: self._done(splice, reason)
        self.splices.add(splice)
        return splice.first

    def _done(self, splice, reason):
        self.splices.discard(splice)
        if reason is not None and self.report is not None:
            self.report(f"{splice.name}: {_why(reason)}")

    def _connect(self, end, name=None):
        application = Factory.forProtocol(lambda: end)
        application.noisy = False
        connecting = protocol.connect(
            self.reactor,
            self.endpoint,
            self.trust,
            application,
            server_name=self.server_name,
            identity=self.identity,
            require_forward_secrecy=self.require_forward_secrecy,
            tickets=self.tickets,
            server_address=self.server_address,
            idle_timeout=self.idle_timeout,
        )

        def established(application):
            session = application.transport
            self.log.info(
                "session to {server}: {kind}",
                server=self.server_name,
                kind="resumed (no RSA)" if session.resumed else "full handshake",
            )
            if self.report is not None and name is not None:
                self.report(f"{name}: {'resumed' if session.resumed else 'full handshake'}")
            return application

        return connecting.addCallback(established)


def _why(reason):
    """One line for a user: the real cause inside HandshakeFailed."""
    value = reason.value
    while isinstance(value, protocol.HandshakeFailed):
        inner = value.reason
        value = getattr(inner, "value", inner)
    return str(value) or type(value).__name__


def run_tunnel(
    reactor,
    listen,
    host,
    port,
    policy,
    identity=None,
    report=print,
    require_forward_secrecy=True,
    idle_timeout=None,
):
    """Listen on ``listen`` (a strports description) until the reactor stops.

    Each accepted connection is carried to ``host:port`` over its own
    KX/1 session.  Fires with the listening port once listening; the
    caller keeps the reactor running.
    """
    from twisted.internet import endpoints

    server = endpoints.HostnameEndpoint(reactor, host, port, timeout=30)
    factory = TunnelFactory(
        reactor,
        server,
        policy,
        host,
        identity=identity,
        report=report,
        server_address=(host, port),
        require_forward_secrecy=require_forward_secrecy,
        idle_timeout=idle_timeout,
    )
    listening = endpoints.serverFromString(reactor, listen).listen(factory)

    def ready(local):
        address = local.getHost()
        report(
            f"tunnel listening on {getattr(address, 'host', address)}:"
            f"{getattr(address, 'port', '')}, carrying each connection to {host}:{port}"
        )
        return local

    return listening.addCallback(ready)
