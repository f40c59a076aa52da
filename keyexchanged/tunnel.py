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

    ``opener`` is the :class:`~keyexchanged.protocol.SessionOpener` of the
    KX/1 server: give it a ticket store (``TicketStore(per_server=8)``, in
    memory), and every connection after the first resumes from a small pool
    of tickets, with no RSA on either side.
    """

    noisy = False
    log = Logger()

    def __init__(self, opener, report=None, explain=None):
        self.opener = opener
        #: Called with one line for each connection that failed (the
        #: command prints it; the Python API may leave it out), and
        #: ``explain`` with a refused key's explanation before it (several
        #: lines for the user's eyes: the changed-key banner, say).
        self.report = report
        self.explain = explain
        #: The splices open now (first: the local connection, second: in the session).
        self.splices = set()

    def buildProtocol(self, address):
        peer = f"{getattr(address, 'host', address)}:{getattr(address, 'port', '')}"
        name = f"tunnel from {peer} to {self.opener.host}"
        splice = Splice(name, connect=lambda end: self._connect(end, name))
        splice.on_done = lambda reason: self._done(splice, reason)
        self.splices.add(splice)
        return splice.first

    def _done(self, splice, reason):
        self.splices.discard(splice)
        if reason is None:
            return
        cause = protocol.cause_of(reason)
        explanation = getattr(cause, "explanation", None)
        if explanation and self.explain is not None:
            self.explain(explanation)
        if self.report is not None:
            self.report(f"{splice.name}: {str(cause) or type(cause).__name__}")

    def _connect(self, end, name=None):
        application = Factory.forProtocol(lambda: end)
        application.noisy = False
        connecting = self.opener.open(application)

        def established(application):
            session = application.transport
            self.log.info(
                "session to {server}: {kind}",
                server=f"{self.opener.host}:{self.opener.port}",
                kind="resumed (no RSA)" if session.resumed else "full handshake",
            )
            if self.report is not None and name is not None:
                self.report(f"{name}: {'resumed' if session.resumed else 'full handshake'}")
            return application

        return connecting.addCallback(established)


def run_tunnel(reactor, listen, host, port, policy, report=print, explain=None, **options):
    """Listen on ``listen`` (a strports description) until the reactor stops.

    Each accepted connection is carried to ``host:port`` over its own
    KX/1 session, opened with the
    :class:`~keyexchanged.protocol.SessionOpener`'s ``options``
    (``identity``, ``require_forward_secrecy``, ``allow_classical``,
    ``idle_timeout``).  Fires
    with the listening port once listening; the caller keeps the reactor
    running.  ``explain`` prints a refused key's explanation (see
    :class:`TunnelFactory`).
    """
    from twisted.internet import endpoints

    # Tickets for the server, each used once; every session brings one.
    opener = protocol.SessionOpener(
        reactor, host, port, policy, tickets=TicketStore(per_server=8), **options
    )
    factory = TunnelFactory(opener, report=report, explain=explain)
    listening = endpoints.serverFromString(reactor, listen).listen(factory)

    def ready(local):
        address = local.getHost()
        report(
            f"tunnel listening on {getattr(address, 'host', address)}:"
            f"{getattr(address, 'port', '')}, carrying each connection to {host}:{port}"
        )
        return local

    return listening.addCallback(ready)
