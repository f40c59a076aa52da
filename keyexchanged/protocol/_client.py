"""The client side: the trust decision, the client factory, connect() and
the SessionOpener that connect and tunnel share."""

from twisted.internet import defer
from twisted.internet.protocol import ClientFactory
from twisted.python.failure import Failure

from keyexchanged import handshake, keys
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

    def event_NextKeyAnnounced(self, event):
        self._listener.announced(self._server_name, event)

    def event_AnnouncementIgnored(self, event):
        self._listener.announced(self._server_name, event)

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

    :func:`connect` is the way in; this factory is for a connection made by
    other means (``reactor.connectTCP``, say).  Its ``handshake`` Deferred
    fires with the application protocol once the server has proved it holds
    the key, and fails with :class:`HandshakeFailed` (its ``reason`` says
    why) otherwise; ``done`` fires with the exception that ended the
    connection.

    :param wrapped_factory: the application's protocol factory.
    :param trust: has ``verify(server_name, offer)`` returning (or firing
        with) anything to accept the key and raising
        :exc:`~keyexchanged.errors.UntrustedKey` to refuse it; ``offer`` is
        a :class:`~keyexchanged.handshake.ServerKeyReceived`.
    :param server_name: the host name or address dialled, for ``trust``.
    :param identity: a client :class:`~keyexchanged.rsa.PrivateKey` to AUTH
        with, or ``None``.
    :param reactor: the reactor for timers (default: the global reactor).
    :param observer: told ``key_accepted(connection)``, or ``None``.
    :param record_limits: keyword arguments for
        :class:`~keyexchanged.handshake.ClientConnection` bounding records.
    :param handshake_timeout: seconds the server gets for HELLO, and again
        for key confirmation after KEY.
    :param require_forward_secrecy: refuse a server without ephemeral keys.
    :param allow_classical: talk to a server without ML-KEM (KX/1 revision
        2 and earlier) instead of refusing it with ``no-post-quantum``; this
        client speaks revision 3 either way.
    :param tickets: a :class:`~keyexchanged.tickets.TicketStore`: a ticket
        for ``server_address`` is used to resume, and the server's new
        ticket is kept there.
    :param server_address: ``(host, port)``, the key into ``tickets``.
    :param idle_timeout: end a session in which the server has sent nothing
        for this many seconds (``None``: never).
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
            ticket = self.tickets.take(*self.server_address, self._ticket_identity())
        self.offered_ticket = ticket is not None
        connection = handshake.ClientConnection(
            identity=self.identity,
            require_forward_secrecy=self.require_forward_secrecy,
            ticket=ticket,
            # §14: a policy that records keys (known hosts) asks for them.
            announcements=getattr(self.trust, "announcements", False),
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

    def _ticket_identity(self):
        """A ticket carries the identity of the session that earned it: it
        is filed under that client key's fingerprint and resumed only with it."""
        return None if self.identity is None else keys.fingerprint(self.identity)

    def build_application(self, address, peer_fingerprint):
        return self.wrapped_factory.buildProtocol(address)

    def key_accepted(self, connection):
        if self.observer is not None:
            self.observer.key_accepted(connection)

    def ticket_received(self, event):
        if self.tickets is not None and self.server_address is not None:
            self.tickets.add_received(*self.server_address, event, self._ticket_identity())

    def announced(self, server_name, event):
        """The server's key rotation announcement, good or ignored (§14):
        for the trust policy that asked for it."""
        record = getattr(self.trust, "announced", None)
        if record is not None:
            record(server_name, event)

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

    The trust policy decides on the server's key before anything is sent.
    The application protocol is connected (``connectionMade``) once the
    server has proved it holds the key, and its ``connectionLost`` says how
    the session ended (see :mod:`keyexchanged.protocol`).  With ``tickets``
    and ``server_address``, a stored ticket resumes the session; when the
    server calls it stale, the tickets for that server are forgotten and
    one full handshake follows on a new connection.

    :param reactor: the reactor for timers.
    :param endpoint: where the server is: any client endpoint
        (``TCP4ClientEndpoint``, ``HostnameEndpoint``, ...).
    :param trust: the trust policy: :class:`~keyexchanged.trust.PinnedKey`,
        :class:`~keyexchanged.knownhosts.KnownHostsTrust`,
        :class:`~keyexchanged.trust.CertificateAuthority` or any object
        with their ``verify(server_name, offer)``.
    :param application_factory: the factory of the application protocol.
    :param observer: told of the steps, or ``None``: ``key_accepted(connection)``
        and, when a stale ticket costs a second connection,
        ``stale_ticket()``.
    :param tickets: a :class:`~keyexchanged.tickets.TicketStore` to resume
        from and keep new tickets in, or ``None``.
    :param server_address: ``(host, port)``, what ``tickets`` files the
        server's tickets under.
    :param options: :class:`ChannelClientFactory`'s: ``server_name`` (the
        host name or address dialled, which the known-hosts and certificate
        checks use), ``identity`` (a client
        :class:`~keyexchanged.rsa.PrivateKey` to AUTH with),
        ``record_limits``, ``handshake_timeout`` (seconds, default 30),
        ``require_forward_secrecy`` (default true), ``allow_classical``
        (default false),
        ``idle_timeout`` (seconds, default ``None``: never).
    :returns: a Deferred that fires with the application protocol once the
        handshake is complete, or fails with :class:`HandshakeFailed`, whose
        ``reason`` (:func:`cause_of`) is the failure:
        :exc:`~keyexchanged.errors.UntrustedKey`, :class:`PeerError`,
        :class:`ProtocolFailure`, :class:`Truncated` or the endpoint's
        connection error.
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
    the trust policy, the timeouts and :func:`connect`'s other options
    (what ``keyexchange tunnel`` does for each local connection).

    :param reactor: the reactor.
    :param host: the server's host name or address: dialled, checked by
        the trust policy, and with ``port`` where tickets are kept.
    :param port: the server's port.
    :param trust: the trust policy (see :func:`connect`).
    :param timeout: seconds to connect, and again for the handshake.
    :param endpoint: where to connect instead of dialling ``host`` and
        ``port`` (a test's, say), or ``None``.
    :param options: :func:`connect`'s: ``identity``, ``tickets``,
        ``require_forward_secrecy``, ``idle_timeout``, ``observer``.
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
        """A new session running ``application_factory``.

        :returns: :func:`connect`'s Deferred.
        """
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
