"""The running daemon: :class:`KeyexchangeService` listens (or adopts its
parent's socket as a child of ``--processes N``), serves, handles SIGTERM,
SIGINT and SIGHUP, and on stop lets open sessions finish; a reload
(:func:`apply_reload`) swaps what changed into the running factory.

:func:`keyexchanged.tap.makeService` builds it from checked options.
"""

import signal

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger
from twisted.python import usage

from keyexchanged import processes, proxyproto, rotation, systemd, tickets
from keyexchanged.listening import CannotListen, listen_now

__all__ = ["RESTART_ONLY", "CannotListen", "KeyexchangeService", "apply_reload"]


class KeyexchangeService(Service):
    """Listens, serves, and on stop lets open sessions finish (grace period)."""

    log = Logger()

    def __init__(
        self,
        listen,
        factory,
        reactor,
        grace_period,
        handle_signals=False,
        timers=(),
        trusted_proxies=None,
        proxy_header_timeout=proxyproto.DEFAULT_HEADER_TIMEOUT,
        options=None,
        child=None,
    ):
        self.listen = listen
        #: A child of ``--processes N`` (:class:`processes.ChildSettings`):
        #: it adopts its parent's socket, tells its parent (not systemd)
        #: that it serves, and leaves SIGINT to its parent.
        self.child = child
        self.trusted_proxies = trusted_proxies
        self.proxy_header_timeout = proxy_header_timeout
        #: The Options the service was made from: a reload compares with them.
        self.options = options
        self.factory = factory
        #: What runs on the reactor's clock while serving (key rotations):
        #: objects with start() and stop().
        self.timers = timers
        self.reactor = reactor
        self.grace_period = grace_period
        self.handle_signals = handle_signals
        self.port = None
        self.listening = None

    def privilegedStartService(self):
        """Listen now, before twistd drops privileges (a port below 1024)
        and before the reactor runs: a port that cannot be had stops the
        daemon with a non-zero exit and the reason, not a running process
        that serves nothing."""
        super().privilegedStartService()
        self._listen()

    def _listen(self):
        if self.listening is not None:
            return
        identity = self.factory.identity
        self.log.info(
            "serving RSA-{bits} key {fingerprint}",
            bits=identity.public_key.n.bit_length(),
            fingerprint=identity.fingerprint,
        )
        # "haproxy:..." is ours to unwrap: HELLO waits for the PROXY header,
        # and only trusted proxies may send one.
        inner, wrap = proxyproto.parse_listen(
            self.listen, self.trusted_proxies, self.reactor, self.proxy_header_timeout
        )
        if self.child is not None:

            def listen():
                return processes.adopt_listening_socket(
                    self.reactor, self.child.fd, wrap(self.factory)
                )
        else:
            endpoint = serverFromString(self.reactor, inner)

            def listen():
                return endpoint.listen(wrap(self.factory))

        try:
            self.listening = listen_now(
                listen, f"cannot listen on {self.listen}", self._listening, self._cannot_listen
            )
        except CannotListen as error:
            self.log.critical("{error}", error=str(error))
            raise

    def startService(self):
        super().startService()
        for timer in self.timers:
            timer.start()
        if self.handle_signals:
            # After the reactor's own handlers are in place, replace them.
            self.reactor.callWhenRunning(self._handle_signals)
        self._listen()  # when not started by twistd

    def _handle_signals(self):
        """SIGTERM and SIGINT: a graceful stop that exits 0.

        twistd's own handlers make the process re-kill itself with the
        signal after shutdown, so the exit status would say "killed"; for a
        daemon whose stop is the ordinary, orderly way to end, 0 is the
        honest status (and what init systems and scripts expect).
        """

        stopping = []

        def stop(number, frame):
            name = signal.Signals(number).name
            if stopping and self.child is not None and number == signal.SIGTERM:
                # A child gets SIGTERM from its parent and, under systemd's
                # default KillMode=control-group, from systemd as well: one
                # stop.  Its parent's second signal is CUT_SIGNAL.
                return
            if stopping:
                # A second signal: the operator will not wait for the grace.
                self.log.info("{signal} again: cutting the open sessions now", signal=name)
                self.reactor.callFromThread(self.factory.abort_all)
                return
            stopping.append(number)
            systemd.stopping()
            self.log.info(
                "{signal}: no new connections; open sessions get {grace} s to finish",
                signal=name,
                grace=self.grace_period,
            )
            self.reactor.callFromThread(self.reactor.stop)

        signal.signal(signal.SIGTERM, stop)
        if self.child is None:
            signal.signal(signal.SIGINT, stop)
        else:
            # ^C in a terminal reaches the whole process group: the parent
            # forwards it as SIGTERM, and a second one as CUT_SIGNAL.
            signal.signal(signal.SIGINT, signal.SIG_IGN)

            def cut(number, frame):
                if not stopping:
                    stop(signal.SIGTERM, frame)
                stop(number, frame)

            signal.signal(processes.CUT_SIGNAL, cut)
            processes.watch_parent(self.reactor, self._parent_gone)
        systemd.ReloadOnHangup(self.reactor, self.reload).install()
        if self.listening is not None and self.listening.called:
            self._ready()

    def _ready(self):
        if self.child is None:
            systemd.ready()
            return
        self.log.info(
            "child {index} serves",
            index=self.child.index,
            **{processes.READY_FIELD: True},
        )

    def _parent_gone(self):
        self.log.warn("the parent process is gone: stopping")
        try:
            self.reactor.stop()
        except ReactorNotRunning:
            pass  # stopping already

    def reload(self):
        """SIGHUP: read the config and every file it names again; swap in
        what changed for new sessions.  Open sessions keep what they began
        with.  Anything wrong changes nothing and is logged."""
        # A child's reloads are its parent's, which counts them.
        metrics_ = None if self.child else getattr(self.factory, "metrics", None)
        old = self.options
        if old is None:
            self.log.warn("reload: nothing to reload from")
            raise systemd.ReloadRefused("nothing to reload from")
        try:
            new = old.reread()
        except usage.UsageError as error:
            self.log.error("reload failed, nothing changed: {reason}", reason=str(error))
            if metrics_ is not None:
                metrics_.reload("failed")
            raise systemd.ReloadRefused(str(error)) from None
        apply_reload(self, old, new, self.log)
        self.options = new
        if metrics_ is not None:
            metrics_.reload("ok")

    def _listening(self, port):
        self.port = port
        address = port.getHost()
        self.log.info(
            "listening on {host}:{port}",
            host=getattr(address, "host", address),
            port=getattr(address, "port", ""),
        )
        if not self.handle_signals:
            self._ready()
        # else: once SIGHUP has its handler (_handle_signals), or a reload
        # that systemd asks for at once would end the daemon.
        return port

    def _cannot_listen(self, failure):
        self.log.critical(
            "cannot listen on {listen}: {reason}",
            listen=self.listen,
            reason=failure.getErrorMessage(),
        )
        self.reactor.stop()

    @defer.inlineCallbacks
    def stopService(self):
        super().stopService()
        if self.port is not None:
            yield self.port.stopListening()
            self.port = None
        yield self.factory.shutdown(self.grace_period)
        for timer in self.timers:
            timer.stop()
        if self.factory.work is not None:
            # The workers end once they have answered what they were asked.
            yield self.factory.work.close()


#: Settings a reload cannot change: they take a restart.
RESTART_ONLY = (
    "processes",
    "listen",
    "workers",
    "forward-secrecy",
    "post-quantum",
    "ticket-lifetime",
    "metrics",
    "log-format",
    "trusted-proxies",
    "proxy-header-timeout",
)


def apply_reload(service_, old, new, log):
    """Swap what ``new`` (freshly parsed, all checked) changed into the
    running factory; open sessions keep what they started with."""
    for name in RESTART_ONLY:
        if str(old.settings.get(name)) != str(new.settings.get(name)):
            log.warn("reload: {name} changes only at a restart; still the old value", name=name)
    factory = service_.factory
    settings = new.settings
    if new.identity.fingerprint != old.identity.fingerprint:
        log.warn(
            "reload: the long-term key changed from {old} to {new}",
            old=old.identity.fingerprint,
            new=new.identity.fingerprint,
        )
        if factory.ephemeral_keys is not None:
            factory.ephemeral_keys.rekey(new.identity.private_key)
        forget = getattr(factory.work, "forget", None)
        if forget is not None:
            # Worker processes keep the keys they were sent: they let go of
            # the old long-term key when the daemon does (workers.py).
            forget(old.identity.private_key)
    if rotation.describe(new.identity.announcement) != rotation.describe(old.identity.announcement):
        rotation.log_announcement(log, new.identity.announcement, "reload: ")
        before = old.identity.announcement
        forget = getattr(factory.work, "forget", None)
        if forget is not None and before is not None and before.next_key is not None:
            # The workers let go of a next key the daemon no longer announces.
            after = new.identity.announcement
            kept = (
                after is not None
                and after.next_key is not None
                and (after.next_key.private_key.n == before.next_key.private_key.n)
            )
            if not kept:
                forget(before.next_key.private_key)
    factory.identity = new.identity
    factory.authorized_keys = new.authorized_keys
    factory.client_key_max_bits = settings["client-key-max-bits"]
    new.wrapped_factory.doStart()
    previous, factory.wrapped_factory = factory.wrapped_factory, new.wrapped_factory
    previous.doStop()
    factory.handshake_timeout = settings["handshake-timeout"]
    factory.idle_timeout = factory.idle_sessions.timeout = settings["idle-timeout"]
    admission = factory.admission
    admission.max_connections = settings["max-connections"]
    admission.max_per_source = settings["max-per-source"]
    admission.max_handshakes = settings["max-handshakes"]
    if factory.ephemeral_keys is not None:
        factory.ephemeral_keys.interval = settings["ephemeral-interval"]
        factory.ephemeral_keys.bits = settings["ephemeral-bits"]
        factory.ephemeral_keys.handshake_timeout = settings["handshake-timeout"]
    # ticket-lifetime is RESTART_ONLY, as the warning above says: the
    # issuer keeps its lifetime (and resumption stays on or off).
    if factory.tickets is not None and settings["ticket-lifetime"]:
        for timer in service_.timers:
            if isinstance(timer, tickets.TicketKeyRotation):
                timer.use_file(settings["ticket-keys"], new.ticket_keys)
    log.info(
        "reload: done; new sessions serve key {fingerprint}, application {application}",
        fingerprint=new.identity.fingerprint,
        application=settings["application"],
    )
