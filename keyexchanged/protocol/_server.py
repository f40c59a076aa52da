"""The server side: the channel protocol with its timeouts, and the factory
that wraps an application factory, admits connections and logs each end."""

from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from keyexchanged import handshake
from keyexchanged.admission import DEFAULT_IPV6_PREFIX, Admission
from keyexchanged.framing import (
    BUSY,
    TIMEOUT,
    encode_frame,
)
from keyexchanged.protocol._channel import ChannelProtocol
from keyexchanged.protocol._exceptions import (
    IdleTimeout,
)
from keyexchanged.protocol._idle import IdleSessions

#: States in which the keys are agreed and the server waits for the client's
#: first record, which §5 says a client sends at once.
_KEYS_AGREED = frozenset(
    {
        handshake.State.AWAIT_AUTH,
        handshake.State.AWAIT_FIRST,
        handshake.State.AWAIT_FIRST_RESUMED,
    }
)


class ServerChannelProtocol(ChannelProtocol):
    """Server side: HELLO at once, timeouts, private-key work elsewhere.

    Built by its :class:`SecureChannelFactory`, which it keeps as its one
    reference to everything that is the same for every connection: the
    reactor, the timeouts, ``idle_sessions`` (an :class:`IdleSessions`)
    that times it once established, ``work`` that does the private-key
    work the state machine hands out (a
    :class:`~keyexchanged.workers.WorkerPool`), counted by ``admission``
    (an :class:`~keyexchanged.admission.Admission`), the application
    factory and the end-of-session bookkeeping.
    """

    # Per connection: the state machine, the factory, the handshake timer
    # (ChannelProtocol's slots hold the rest).
    __slots__ = ("_factory", "_handshake_timer")

    def __init__(self, connection, factory):
        super().__init__(connection)
        self._factory = factory
        self._handshake_timer = None

    @property
    def reactor(self):
        return self._factory.reactor

    def _build_application(self, address, peer_fingerprint):
        return self._factory.build_application(address, peer_fingerprint)

    def _ended(self, protocol, summary):
        self._factory.connection_ended(protocol, summary)

    def connectionMade(self):
        super().connectionMade()
        self.connection.start()
        self._write_out()
        timeout = self._factory.handshake_timeout
        if timeout:
            self._handshake_timer = self.reactor.callLater(timeout, self._handshake_expired)

    def _handshake_expired(self):
        self._handshake_timer = None
        if self.connection.state in _KEYS_AGREED:
            # The client sent KEY or RESUME and then waited: it missed §5's rule.
            detail = "no record from the client after KEY; a client sends one at once, §5"
        else:
            detail = "handshake took too long"
        self._handle_events(self.connection.fail(TIMEOUT, detail))

    def handshake_complete(self, event):
        self._cancel_handshake_timer()
        if self._factory.idle_timeout:
            self._factory.idle_sessions.add(self)
        super().handshake_complete(event)

    def event_DecryptionNeeded(self, event):
        work = self._factory.work
        self._private_key_work(
            lambda: work.decrypt(event.private_key, event.ciphertext, event.label),
            self.connection.key_decrypted,
            None,
        )

    def event_VerificationNeeded(self, event):
        work = self._factory.work
        self._private_key_work(
            lambda: work.verify(
                event.public_key, event.signature, event.message, event.salt_length
            ),
            self.connection.auth_verified,
            False,
        )

    def event_SigningNeeded(self, event):
        work = self._factory.work
        self._private_key_work(
            lambda: work.sign(event.private_key, event.message, event.salt_length),
            self.connection.announcement_signed,
            None,
        )

    def _private_key_work(self, submit, answer, failed):
        """Work a stranger made us do: counted against max-handshakes, done
        away from the reactor, and read nothing more until it is back."""
        if not self._factory.admission.start_work():
            self._handle_events(self.connection.fail(BUSY, "too many handshakes in progress"))
            return
        # Read nothing more until the work is back (what was read waits in
        # LineReceiver's buffer, at most one socket read).
        self.pauseProducing()
        working = defer.maybeDeferred(submit)

        def failed_work(failure):
            # Fail closed all the same: the client learns nothing new.
            self.log.error("private-key work failed: {error}", error=failure.type.__name__)
            return failed

        working.addErrback(failed_work)
        working.addCallback(self._work_done, answer)
        working.addErrback(self._application_failed)

    def _work_done(self, result, answer):
        self._factory.admission.end_work()
        if self._closing:
            return
        # Undo our own pause only: the application that the events below may
        # start (a forward, say) can pause reading for reasons of its own.
        self.paused = False
        self.transport.resumeProducing()
        self._handle_events(answer(result))
        if not self._closing:
            self.dataReceived(b"")  # the frames LineReceiver kept meanwhile

    def _application_failed(self, failure):
        """The application raised while the session started: drop it."""
        self.log.failure("application failed to start", failure)
        if self.transport is not None:
            self.transport.abortConnection()

    def _touch(self):
        self._factory.idle_sessions.touch(self)

    def write_application_data(self, data):
        self._touch()
        super().write_application_data(data)

    def idle_expired(self):
        """Called by :class:`IdleSessions` after ``idle_timeout`` of silence."""
        if self._closing:
            return
        self._reason = Failure(IdleTimeout("idle session closed"))
        self._outcome = "idle-timeout"
        # An application still producing has more to send: no END, which
        # would pass what went out for the whole; the close is a truncation.
        if self.connection.can_send and not self._application_producing():
            self.flush()
            self.connection.send_end()
            self._write_out()
        self._close()

    def shut_down(self):
        """The daemon is stopping: finish cleanly if we can."""
        if self.connection.handshake_done:
            self._outcome = "shutdown"
            if not self._application_producing():
                self.close_write()
            # else it sends END itself when done, within the grace period.
        else:
            self._handle_events(self.connection.fail(BUSY, "server is shutting down"))

    def _application_producing(self):
        """The application is the registered producer of this session (the
        message application, a record at a time): it has more to send."""
        producer = getattr(self.transport, "producer", None)
        return producer is not None and producer is self.application

    def _cancel_handshake_timer(self):
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._handshake_timer = None

    def _cancel_timers(self):
        super()._cancel_timers()
        self._cancel_handshake_timer()
        self._factory.idle_sessions.remove(self)

    def abort(self):
        """Cut the connection now, without END."""
        if self.transport is not None:
            self.transport.abortConnection()


class SecureChannelFactory(Factory):
    """Serve KX/1, wrapping ``wrapped_factory`` the way TLS wrappers do.

    Listen with it as with any factory (``endpoint.listen(factory)``).  Each
    connection gets HELLO at once; once the client's first record has
    opened, ``wrapped_factory.buildProtocol(address)`` makes the
    application protocol, which sees a :class:`SecureTransport` and plain
    bytes.  Its ``peer_fingerprint`` attribute is the client's key
    fingerprint after AUTH, else ``None``.  A connection over a limit gets
    ``ERROR busy`` and is closed.

    :param wrapped_factory: the application's protocol factory; it may
        return ``None`` from ``buildProtocol`` to end the session at once.
    :param identity: the server's long-term key, a
        :class:`~keyexchanged.handshake.ServerIdentity`.
    :param reactor: the reactor for timers (default: the global reactor).
    :param handshake_timeout: seconds from accept to a complete handshake
        (``None`` or 0: no limit).
    :param idle_timeout: seconds of silence either way after which an
        established session is ended (``None`` or 0: never).
    :param max_connections: connections open at once; more get ``busy``.
    :param max_per_source: connections open at once from one source (an
        IPv4 address, an IPv6 network of ``ipv6_source_prefix`` bits).
    :param authorized_keys: a container of client key fingerprints allowed
        to AUTH, which is then required; ``None``: AUTH optional.
    :param record_limits: keyword arguments for
        :class:`~keyexchanged.handshake.ServerConnection` bounding records.
    :param work: where private-key work is done: a
        :class:`~keyexchanged.workers.WorkerPool` or
        :class:`~keyexchanged.workers.InlineWork`; ``None`` does it in the
        state machine, on the reactor.
    :param max_handshakes: private-key operations under way at once;
        more get ``busy``.
    :param ephemeral_keys: the
        :class:`~keyexchanged.ephemeral.EphemeralKeys` whose current key
        every HELLO offers (forward secrecy), or ``None``: KEY under the
        long-term key, which clients refuse by default.
    :param tickets: a :class:`~keyexchanged.tickets.TicketIssuer` to send
        and accept resumption tickets, or ``None``: resumption off.
    :param client_key_max_bits: the largest client key AUTH accepts.
    :param ipv6_source_prefix: how many leading bits of an IPv6 address
        make one source for ``max_per_source``.
    :param metrics: a ``keyexchanged.metrics.Metrics`` to count in, or
        ``None``.
    :param limit_warnings: a ``keyexchanged.logs.LimitWarnings`` told of
        every refusal a limit causes, or ``None``.
    :param json_events: also log each session's end as one structured
        event.
    """

    noisy = False  # one log line per connection is ours to write

    protocol = ServerChannelProtocol
    log = Logger()

    def __init__(
        self,
        wrapped_factory,
        identity,
        reactor=None,
        handshake_timeout=10.0,
        idle_timeout=300.0,
        max_connections=1024,
        max_per_source=32,
        authorized_keys=None,
        record_limits=None,
        work=None,
        max_handshakes=64,
        ephemeral_keys=None,
        tickets=None,
        client_key_max_bits=handshake.DEFAULT_CLIENT_KEY_MAX_BITS,
        ipv6_source_prefix=DEFAULT_IPV6_PREFIX,
        metrics=None,
        limit_warnings=None,
        json_events=False,
        require_post_quantum=False,
    ):
        if reactor is None:
            from twisted.internet import reactor
        self.wrapped_factory = wrapped_factory
        self.identity = identity
        #: Where private-key work is done: a workers.WorkerPool (or
        #: InlineWork), or ``None`` to do it in the state machine itself.
        self.work = work
        #: An ephemeral.EphemeralKeys whose current key every HELLO offers,
        #: or ``None``: no forward secrecy, KEY under the long-term key.
        self.ephemeral_keys = ephemeral_keys
        #: A tickets.TicketIssuer, or ``None``: resumption off.
        self.tickets = tickets
        self.client_key_max_bits = client_key_max_bits
        #: Refuse KX/1 revision 2 clients (no ML-KEM) with no-post-quantum.
        self.require_post_quantum = require_post_quantum
        self.reactor = reactor
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.idle_sessions = IdleSessions(reactor, idle_timeout)
        self.admission = Admission(
            max_connections, max_per_source, max_handshakes, ipv6_source_prefix
        )
        self.authorized_keys = authorized_keys
        self.record_limits = record_limits or {}
        self.shutting_down = False
        self._all_closed = None
        self._health_checks = None  # a proxyproto.HealthCheckLines at the first
        #: A metrics.Metrics to count in, or ``None``.
        self.metrics = metrics
        #: A logs.LimitWarnings told of every refusal a limit causes, or ``None``.
        self.limit_warnings = limit_warnings
        #: Also log each session's end as a structured event (--log-format json).
        self.json_events = json_events
        if metrics is not None:
            self.admission.on_work = metrics.private_key_queue
        if limit_warnings is not None:
            self.admission.on_refused = limit_warnings.refused

    def startFactory(self):
        self.wrapped_factory.doStart()

    def stopFactory(self):
        self.wrapped_factory.doStop()

    @property
    def connections(self):
        """The connections open now (a collection of their protocols)."""
        return self.admission.connections

    def buildProtocol(self, addr):
        source = self.admission.source(getattr(addr, "host", None))
        if self.shutting_down:
            return BusyProtocol("server is shutting down")
        refusal = self.admission.refusal(source)
        if refusal is not None:
            if self.metrics is not None:
                self.metrics.handshake_done("full", "busy")
                self.metrics.error_sent("busy")
            return BusyProtocol(refusal)
        protocol = self.protocol(self.make_connection(), self)
        self.admission.admit(protocol, source)
        if self.metrics is not None:
            self.metrics.connection_opened()
        return protocol

    def make_connection(self):
        """The state machine for one new connection."""
        ephemeral = self.ephemeral_keys.current if self.ephemeral_keys is not None else None
        return handshake.ServerConnection(
            self.identity,
            authorized_keys=self.authorized_keys,
            defer_work=self.work is not None,
            ephemeral=ephemeral,
            tickets=self.tickets,
            client_key_max_bits=self.client_key_max_bits,
            require_post_quantum=self.require_post_quantum,
            **self.record_limits,
        )

    def shutdown(self, grace_period):
        """Stop serving: established sessions get END and ``grace_period``
        seconds to finish, then are cut; handshakes still under way are told
        ERROR busy, and new connections too.

        :param grace_period: seconds the sessions get.
        :returns: a Deferred that fires (with ``None``) when every
            connection is closed.
        """
        self.shutting_down = True
        if not self.connections:
            return defer.succeed(None)
        self._all_closed = defer.Deferred()
        for protocol in list(self.connections):
            protocol.shut_down()
        deadline = self.reactor.callLater(grace_period, self.abort_all)

        def cancel_deadline(result):
            if deadline.active():
                deadline.cancel()
            return result

        self._all_closed.addBoth(cancel_deadline)
        return self._all_closed

    def abort_all(self):
        """Cut every connection now (the grace period is over, or was refused)."""
        for protocol in list(self.connections):
            protocol.abort()

    def build_application(self, address, peer_fingerprint):
        application = self.wrapped_factory.buildProtocol(address)
        if application is not None:
            # What an application may want to know of its peer (and what
            # the forwarding and message applications log).
            application.peer_fingerprint = peer_fingerprint
        return application

    def connection_ended(self, protocol, summary):
        """``protocol``'s connection is over; ``summary`` says how it went."""
        self.admission.release(protocol)
        if self._all_closed is not None and not self.connections:
            self._all_closed, done = None, self._all_closed
            done.callback(None)
        if _health_check(protocol, summary):
            # A balancer's probe every few seconds is neither a session nor
            # a failed handshake: its own counter, and a line at info for
            # the first from each proxy, then one a minute with the count.
            if self.metrics is not None:
                self.metrics.health_check()
            if self._health_checks is None:
                from keyexchanged.proxyproto import HealthCheckLines

                self._health_checks = HealthCheckLines(self.reactor, log=self.log)
            self._health_checks.seen(summary.peer)
            return
        self._observe(summary)
        if self.json_events:
            return  # one event per session end: logs.log_session_end's, with its fields
        self.log.info(
            "connection from {peer} ended: {outcome}; {kind}; {bytes_in} bytes in, "
            "{bytes_out} bytes out, {duration:.3f} s{client}",
            peer=summary.peer,
            outcome=summary.outcome,
            kind=summary.kind,
            bytes_in=summary.bytes_in,
            bytes_out=summary.bytes_out,
            duration=summary.duration,
            client=(f"; client key {summary.peer_fingerprint}" if summary.peer_fingerprint else ""),
        )

    def _observe(self, summary):
        """Metrics and the structured session-end event, from the summary."""
        if self.metrics is None and not self.json_events:
            return
        observed = _Observed(summary)
        if self.metrics is not None:
            metrics = self.metrics
            metrics.connection_closed()
            if summary.handshake_seconds is not None:
                metrics.handshake_done(observed.kind, "ok", summary.handshake_seconds)
            else:
                metrics.handshake_done(observed.kind, summary.outcome)
            if summary.error_sent is not None:
                metrics.error_sent(summary.error_sent)
            metrics.session_ended(observed)
        if self.json_events:
            from keyexchanged import logs

            logs.log_session_end(observed)


def _health_check(protocol, summary):
    """A PROXY-protocol LOCAL connection (the proxy's own) that sent nothing."""
    return (
        getattr(protocol.transport, "health_check", False)
        and summary.outcome == "closed"
        and summary.bytes_in == 0
    )


class _Observed:
    """A SessionSummary as metrics and logs read it: ``kind`` is full or
    resumed (not the log line's words), the peer's key is the client's."""

    def __init__(self, summary):
        self._summary = summary
        self.kind = summary.handshake_kind
        self.client_fingerprint = summary.peer_fingerprint

    def __getattr__(self, name):
        return getattr(self._summary, name)


class BusyProtocol(Protocol):
    """Sends ERROR busy and closes, before any key work: serves nothing."""

    def __init__(self, detail):
        self.detail = detail

    def connectionMade(self):
        self.transport.write(encode_frame("ERROR", handshake.error_payload(BUSY, self.detail)))
        self.transport.loseConnection()
