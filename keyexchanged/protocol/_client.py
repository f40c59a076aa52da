"""The client side: the trust decision, the client factory, connect() and
the SessionOpener that connect and tunnel share."""

from twisted.internet import defer
from twisted.internet.protocol import ClientFactory
from twisted.python.failure import Failure

from keyexchanged import handshake
from keyexchanged.errors import UntrustedKey
from keyexchanged.framing import (
    INTERNAL,
    STALE_TICKET,
    TIMEOUT,
)
from keyexchanged.protocol._channel import ChannelProtocol
from keyexchanged.protocol._exceptions import (
    HandshakeFailed,
    PeerError,
    cause_of,
)


class ClientChannelProtocol(ChannelProtocol):
    """Client side: the trust decision, then KEY, then wait for confirmation.

    The server gets ``handshake_timeout`` seconds to send HELLO, and as many
    again to confirm the key after KEY; the time a person takes to answer a
    known-hosts question in between does not count.  ``trust`` decides on
    the server's key (see :class:`ChannelClientFactory`), ``listener`` is
    told of the steps: ``key_accepted(connection)``,
    ``ticket_received(event)`` and ``handshake_done(application)``.
    """

    _timer = None

    def __init__(
        self,
        connection,
        reactor,
        build_application,
        ended,
        trust,
        server_name,
        listener,
        handshake_timeout=30.0,
        idle_timeout=None,
    ):
        super().__init__(connection)
        self.reactor = reactor
        #: ``build_application(address, peer_fingerprint)``: the application
        #: protocol for this session, or None to end it at once.
        self._build_application = build_application
        #: ``ended(protocol, summary)``, once, when the connection is lost.
        self._ended = ended
        self._trust = trust
        self._server_name = server_name
        self._listener = listener
        self._handshake_timeout = handshake_timeout
        self._idle_timeout = idle_timeout

    def connectionMade(self):
        super().connectionMade()
        self._start_timer()

    def _start_timer(self):
        timeout = self._handshake_timeout
        if timeout and not self._closing:
            self._timer = self.reactor.callLater(timeout, self._handshake_expired)

    def _stop_timer(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _handshake_expired(self):
        self._timer = None
        self._handle_events(
            self.connection.fail(
                TIMEOUT, f"no handshake from the server in {self._handshake_timeout:g} s"
            )
        )

    def _cancel_timers(self):
        super()._cancel_timers()
        self._stop_timer()
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self._idle_call = None

    def event_ServerKeyReceived(self, event):
        self._stop_timer()
        checking = defer.maybeDeferred(self._trust.verify, self._server_name, event)
        checking.addCallbacks(self._trusted, self._untrusted)
        checking.addErrback(self._internal_failure)

    def _internal_failure(self, failure):
        """A bug on our side while deciding or sending KEY: end the connection."""
        self.log.failure("client handshake failed", failure)
        if not self._closing:
            self._handle_events(self.connection.fail(INTERNAL, "client error"))

    def _trusted(self, _):
        if self._closing or self.connection.closed:
            return
        events = self.connection.accept_key()
        self._listener.key_accepted(self.connection)
        self._start_timer()
        self._handle_events(events)

    def _untrusted(self, failure):
        if self._closing:
            return None
        # The server (perhaps the man in the middle) learns only that we
        # refused; the full story (which check, which known-hosts line) is
        # the local user's, and travels with the exception unchanged.
        self._handle_events(self.connection.reject_key("the client does not trust this key"))
        if not failure.check(UntrustedKey):
            # A policy that broke (a bug, a file gone) refuses all the same,
            # and keeps what broke as the refusal's cause.
            refusal = UntrustedKey("trust check failed: " + failure.getErrorMessage())
            refusal.__cause__ = failure.value
            failure = Failure(refusal)
        self._reason = failure
        self._outcome = "untrusted-key"
        return None

    def event_TicketReceived(self, event):
        self._listener.ticket_received(event)

    def handshake_complete(self, event):
        self._stop_timer()
        super().handshake_complete(event)
        if self._idle_timeout and not self._closing:
            self._idle_call = self.reactor.callLater(self._idle_timeout, self._idle_expired)
        self._listener.handshake_done(self.application)

    _idle_call = None

    def _touch(self):
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.reset(self._idle_timeout)

    def write_application_data(self, data):
        self._touch()
        super().write_application_data(data)

    def _idle_expired(self):
        self._idle_call = None
        self._handle_events(
            self.connection.fail(TIMEOUT, f"the server sent nothing for {self._idle_timeout:g} s")
        )


class ChannelClientFactory(ClientFactory):
    """Connect to a KX/1 server and run ``wrapped_factory``'s protocol over it.

    ``trust`` has ``verify(server_name, ServerKeyReceived)`` returning (or
    firing with) anything to accept and raising :class:`UntrustedKey` to
    refuse.  ``handshake`` fires with the application protocol once the
    server has proved it holds the key; it fails with
    :class:`HandshakeFailed` (its ``reason`` says why) otherwise.

    ``tickets`` is a :class:`~keyexchanged.tickets.TicketStore`: a ticket
    for ``server_address`` is used to resume, and the server's new ticket is
    kept there.  ``require_forward_secrecy`` refuses a server without
    ephemeral keys.  ``allow_classical`` talks to a server without ML-KEM
    (KX/1 revision 2 and earlier) instead of refusing it with
    ``no-post-quantum``; this client speaks revision 3 either way.
    ``idle_timeout`` ends a session in which the server has sent nothing for
    that long (``None``: never).
    """

    noisy = False  # one log line per connection is ours to write

    protocol = ClientChannelProtocol

    def __init__(
        self,
        wrapped_factory,
        trust,
        server_name=None,
        identity=None,
        reactor=None,
        observer=None,
        record_limits=None,
        handshake_timeout=30.0,
        require_forward_secrecy=True,
        tickets=None,
        server_address=None,
        idle_timeout=None,
        allow_classical=False,
    ):
        if reactor is None:
            from twisted.internet import reactor
        self.wrapped_factory = wrapped_factory
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.trust = trust
        self.server_name = server_name
        self.identity = identity
        self.reactor = reactor
        self.observer = observer
        self.record_limits = record_limits or {}
        self.require_forward_secrecy = require_forward_secrecy
        self.allow_classical = allow_classical
        self.tickets = tickets
        self.server_address = server_address
        #: Whether this connection offered a ticket (RESUME) rather than KEY.
        self.offered_ticket = False
        self.handshake = defer.Deferred()
        self.done = defer.Deferred()

    def buildProtocol(self, addr):
        ticket = None
        if self.tickets is not None and self.server_address is not None:
            ticket = self.tickets.take(*self.server_address)
        self.offered_ticket = ticket is not None
        connection = handshake.ClientConnection(
            identity=self.identity,
            require_forward_secrecy=self.require_forward_secrecy,
            ticket=ticket,
            post_quantum=True,
            allow_classical=self.allow_classical,
            **self.record_limits,
        )
        return self.protocol(
            connection,
            self.reactor,
            build_application=self.build_application,
            ended=self.session_ended,
            trust=self.trust,
            server_name=self.server_name,
            listener=self,
            handshake_timeout=self.handshake_timeout,
            idle_timeout=self.idle_timeout,
        )

    def build_application(self, address, peer_fingerprint):
        return self.wrapped_factory.buildProtocol(address)

    def key_accepted(self, connection):
        if self.observer is not None:
            self.observer.key_accepted(connection)

    def ticket_received(self, event):
        if self.tickets is not None and self.server_address is not None:
            self.tickets.add_received(*self.server_address, event)

    def handshake_done(self, application):
        if not self.handshake.called:
            self.handshake.callback(application)

    def session_ended(self, protocol, summary):
        self.connection_ended(summary.reason)

    def connection_ended(self, reason):
        if not self.handshake.called:
            self.handshake.errback(Failure(HandshakeFailed(reason)))
        if not self.done.called:
            # The exception itself: a Failure handed to callback() would
            # travel down the errback chain and be reported as unhandled.
            self.done.callback(reason.value if isinstance(reason, Failure) else reason)

    def clientConnectionFailed(self, connector, reason):
        self.connection_ended(reason)


def _stale_ticket(failure):
    reason = cause_of(failure) if failure.check(HandshakeFailed) else None
    return isinstance(reason, PeerError) and reason.code == STALE_TICKET


def connect(
    reactor,
    endpoint,
    trust,
    application_factory,
    observer=None,
    tickets=None,
    server_address=None,
    **options,
):
    """Open a KX/1 session through ``endpoint`` running ``application_factory``.

    Returns a Deferred that fires with the application protocol once the
    handshake is complete (the server has proved it holds its key), or
    fails with :class:`HandshakeFailed`.  With ``tickets`` (a TicketStore)
    and ``server_address`` (the host and port it files tickets under), a
    stored ticket resumes the session; when the server calls it stale, the
    tickets for that server are forgotten and one full handshake follows on
    a new connection (``observer.stale_ticket()`` is told).  The other
    options are :class:`ChannelClientFactory`'s: ``server_name`` (the host
    name or address that was dialled, which the known-hosts and certificate
    checks use), ``identity``, ``record_limits``, ``handshake_timeout``,
    ``require_forward_secrecy``, ``allow_classical``, ``idle_timeout``.
    """

    def attempt():
        factory = ChannelClientFactory(
            application_factory,
            trust,
            reactor=reactor,
            observer=observer,
            tickets=tickets,
            server_address=server_address,
            **options,
        )
        connecting = endpoint.connect(factory)

        def failed(failure):
            factory.clientConnectionFailed(None, failure)

        connecting.addErrback(failed)
        return factory

    first = attempt()

    def retry(failure):
        if first.offered_ticket and _stale_ticket(failure):
            tickets.forget(*server_address)
            if observer is not None and hasattr(observer, "stale_ticket"):
                observer.stale_ticket()
            return attempt().handshake
        return failure

    return first.handshake.addErrback(retry)


class SessionOpener:
    """Opens KX/1 sessions to one server, each with what they all share:
    the trust policy, the timeouts, and :func:`connect`'s other ``options``
    (``identity``, ``tickets``, ``require_forward_secrecy``,
    ``idle_timeout``, ``observer``).

    ``host`` and ``port`` are dialled (giving up after ``timeout`` seconds)
    unless an ``endpoint`` is given; ``host`` is the name the trust checks
    use, and ``(host, port)`` where tickets are kept.  ``timeout`` also
    bounds the handshake.
    """

    def __init__(self, reactor, host, port, trust, timeout=30.0, endpoint=None, **options):
        if endpoint is None:
            from twisted.internet.endpoints import HostnameEndpoint

            endpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
        self.reactor = reactor
        self.host = host
        self.port = port
        self.endpoint = endpoint
        self.trust = trust
        self.timeout = timeout
        self.options = options

    def open(self, application_factory):
        """A new session running ``application_factory``: see :func:`connect`."""
        return connect(
            self.reactor,
            self.endpoint,
            self.trust,
            application_factory,
            server_name=self.host,
            server_address=(self.host, self.port),
            handshake_timeout=self.timeout,
            **self.options,
        )
