"""The load generator: one program for every contestant, in its own process.

It speaks KX/1 (with the project's own client code), TLS 1.3 or 1.2 (Twisted
over pyOpenSSL, verifying the server's certificate) or plain TCP, and has
these modes.  It writes one JSON object per line on stdout and reads
commands on stdin.

``handshakes``
    Keep ``--concurrency`` sessions in flight: connect, finish the
    handshake, read ``--expect`` exactly (the server then closes; with an
    empty ``--expect`` the client closes at once), start the next.  Either
    a warm-up then a measuring window of ``--duration`` seconds (prints
    ``start`` and ``end`` as the window opens and closes), or ``--count``
    sessions in all (prints ``done`` with every latency).  KX/1 with
    ``--resume``: each of the ``--concurrency`` slots holds its own
    TicketStore, so its first session is a full handshake and every later
    one resumes with the ticket the previous one received; ``end`` and
    ``done`` count the ``resumed`` sessions either way.
``throughput``
    One session; read ``--bytes`` bytes to the end; print the seconds from
    connect to the last byte.
``upload``
    One connection; write ``--bytes`` bytes as fast as the transport takes
    them, to a sink that answers once it has them all; print the seconds
    from connect to the answer.
``setup``
    ``--count`` connections one after the other (after ``--warmup-count``
    unmeasured ones): connect, send one byte, wait for the first byte to
    come back (an echo service), close; print each time from the connect
    call to that first byte.
``idle``
    Open ``--sessions`` sessions, ``--concurrency`` handshakes at a time, and
    keep them open and silent; print ``ready``; close them all at end of
    stdin.
``slowloris``
    Open ``--sessions`` plain TCP connections, read HELLO and never send
    KEY; print ``ready`` when all are half-way, and ``cut`` with how long
    each lived once the server has closed them all.
``rtt``
    One echo session; on ``measure SECONDS`` send ``--size`` bytes, wait for
    them to come back, sleep ``--interval``, and so on; print the round
    trips.  End of stdin closes it.

Every session has a deadline (``--timeout``): one that has not ended by
then is aborted and counted as lost.  KX/1 clients require forward
secrecy (an ephemeral key in HELLO), as the project's client does by
default, unless ``--allow-no-forward-secrecy``.
"""

import argparse
import json
import os
import sys
import time

from tlscontexts import ClientCreator, client_context
from twisted.internet import defer, error, reactor, stdio
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.basic import LineReceiver
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from keyexchanged import allocator, protocol, trust
from keyexchanged.tickets import TicketStore

HOST = "127.0.0.1"


def emit(**fields):
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


@implementer(IHandshakeListener)
class Session(Protocol):
    """The application end of one session, the same for every contestant.

    ``ready`` fires when the secure channel is up (KX/1: key confirmed;
    TLS: handshake complete; TCP: connected); ``ended`` fires with
    ``(ok, detail)`` when the connection is gone.
    """

    def __init__(self, expect, close_at_once, keep_open=False, sink=False):
        self.expect = expect
        self.close_at_once = close_at_once
        self.keep_open = keep_open
        self.sink = sink
        self.received = []
        self.count = 0
        self.ready = defer.Deferred()
        self.ended = defer.Deferred()
        self.on_data = None
        self.secure = False
        #: KX/1: whether the session resumed from a ticket (no RSA).
        self.resumed = False

    # KX/1 connects the application after key confirmation; TLS connects it
    # at TCP connect and tells it of the handshake here.
    def connectionMade(self):
        if not self.secure:
            self._up()

    def handshakeCompleted(self):
        self._up()

    def _up(self):
        if self.ready.called:
            return
        self.resumed = bool(getattr(self.transport, "resumed", False))
        self.ready.callback(self)
        if self.close_at_once and not self.keep_open:
            self.transport.loseConnection()

    def dataReceived(self, data):
        self.count += len(data)
        if self.on_data is not None:
            self.on_data(data)
        elif not self.sink:
            self.received.append(data)

    def connectionLost(self, reason=None):
        if self.ended.called:
            return
        clean = reason is None or isinstance(reason.value, error.ConnectionDone)
        if not self.ready.called:
            self.ended.callback((False, "closed before the handshake completed"))
        elif not clean:
            self.ended.callback((False, f"{type(reason.value).__name__}: {reason.value}"))
        elif not self.sink and self.expect is not None and b"".join(self.received) != self.expect:
            self.ended.callback((False, "wrong message"))
        else:
            self.ended.callback((True, ""))


class Client:
    """Opens sessions of one kind to one port."""

    def __init__(self, args):
        self.args = args
        self.endpoint = TCP4ClientEndpoint(reactor, HOST, args.port, timeout=args.timeout)
        self.tls_context = None
        if args.proto.startswith("tls"):
            self.tls_context = client_context(args.proto, args.cert)
        self.trust = trust.PinnedKey(args.fingerprint) if args.proto == "kx" else None

    def open(self, session, tickets=None):
        """Connect ``session``; fires (ignored) when TCP connects or fails.

        KX/1: with ``tickets`` (a TicketStore), a ticket kept there resumes
        the session and the server's new ticket is kept there."""
        factory = Factory.forProtocol(lambda: session)
        if self.args.proto == "kx":
            channel = protocol.ChannelClientFactory(
                factory,
                self.trust,
                server_name=HOST,
                reactor=reactor,
                require_forward_secrecy=not self.args.allow_no_forward_secrecy,
                tickets=tickets,
                server_address=(HOST, self.args.port) if tickets is not None else None,
            )
            channel.handshake.addErrback(lambda failure: None)

            def ended(reason):
                # A KX/1 failure before key confirmation never reaches the
                # application: report it from here.
                if not session.ended.called and not session.ready.called:
                    session.ended.callback((False, f"{type(reason).__name__}: {reason}"))

            channel.done.addCallback(ended)
            connecting = self.endpoint.connect(channel)
        elif self.tls_context is not None:
            session.secure = True
            connecting = self.endpoint.connect(
                TLSMemoryBIOFactory(ClientCreator(self.tls_context), True, factory)
            )
        else:
            connecting = self.endpoint.connect(factory)

        def failed(failure):
            if not session.ended.called:
                session.ended.callback((False, f"connect: {failure.getErrorMessage()}"))

        connecting.addErrback(failed)
        return connecting


# -- modes ------------------------------------------------------------------------------


def run_handshakes(args, client):
    expect = args.expect.encode() if args.expect else b""
    close_at_once = not expect
    state = {"started": 0, "ok": 0, "failed": 0, "lost": 0, "resumed": 0, "stopping": False}
    latencies = []
    errors = {}
    window = {"open": False, "ok": 0, "failed": 0, "resumed": 0, "latencies": []}
    finished = defer.Deferred()
    # One ticket store per slot, as one client per slot would keep it: a
    # ticket is used once, and the session it resumes brings the next.
    stores = [TicketStore(per_server=1) if args.resume else None for _ in range(args.concurrency)]

    def launch(slot):
        if state["stopping"] or (args.count and state["started"] >= args.count):
            if args.count and state["ok"] + state["failed"] + state["lost"] >= args.count:
                if not finished.called:
                    finished.callback(None)
            return
        state["started"] += 1
        session = Session(expect, close_at_once)
        begun = time.perf_counter()
        deadline = reactor.callLater(args.timeout, expire, session)

        def ended(result):
            ok, detail = result
            if deadline.active():
                deadline.cancel()
            if detail == "lost":
                state["lost"] += 1
            elif ok:
                state["ok"] += 1
                state["resumed"] += session.resumed
                latencies.append(time.perf_counter() - begun)
                if window["open"]:
                    window["ok"] += 1
                    window["resumed"] += session.resumed
                    window["latencies"].append(time.perf_counter() - begun)
            else:
                state["failed"] += 1
                if window["open"]:
                    window["failed"] += 1
                errors[detail] = errors.get(detail, 0) + 1
            reactor.callLater(0, launch, slot)

        session.ended.addCallback(ended)
        client.open(session, stores[slot])

    def expire(session):
        if not session.ended.called:
            session.ended.callback((False, "lost"))
            if session.transport is not None:
                session.transport.abortConnection()

    for slot in range(args.concurrency):
        launch(slot)

    if args.count:
        # A global bound as well: no run outlives its budget.
        reactor.callLater(args.timeout * 3, lambda: finished.called or finished.callback(None))
        yield_ = finished
        yield_.addCallback(
            lambda _: emit(
                event="done",
                started=state["started"],
                ok=state["ok"],
                resumed=state["resumed"],
                failed=state["failed"],
                lost=state["lost"]
                + state["started"]
                - state["ok"]
                - state["failed"]
                - state["lost"],
                latencies=latencies,
                errors=errors,
            )
        )
        yield_.addCallback(lambda _: reactor.stop())
        return

    def open_window():
        window["open"] = True
        window["began"] = time.perf_counter()
        emit(event="start")

    def close_window():
        window["open"] = False
        seconds = time.perf_counter() - window["began"]
        state["stopping"] = True
        emit(
            event="end",
            ok=window["ok"],
            resumed=window["resumed"],
            failed=window["failed"],
            seconds=seconds,
            latencies=window["latencies"],
            errors=errors,
        )
        reactor.stop()

    reactor.callLater(args.warmup, open_window)
    reactor.callLater(args.warmup + args.duration, close_window)


def run_throughput(args, client):
    session = Session(None, False, sink=True)
    begun = time.perf_counter()

    def ended(result):
        seconds = time.perf_counter() - begun
        ok, detail = result
        emit(
            event="done",
            ok=ok and session.count == args.bytes,
            detail=detail,
            bytes=session.count,
            seconds=seconds,
        )
        reactor.stop()

    session.ended.addCallback(ended)
    reactor.callLater(
        args.timeout,
        lambda: (
            session.ended.called
            or (
                session.ended.callback((False, "lost")),
                session.transport and session.transport.abortConnection(),
            )
        ),
    )
    client.open(session)


@implementer(IHandshakeListener)
class Upload(Protocol):
    """Write ``nbytes`` as fast as the transport takes them; ``answered``
    fires with ``(ok, seconds, detail)``, the seconds from ``begun`` to the
    sink's first byte back.

    A streaming producer, as the source application in servers.py is: it
    writes until the transport pauses it and goes on when it resumes.  It
    has what :meth:`Client.open` expects of a session (``ready``, ``ended``,
    ``secure``), so it runs over TCP, TLS and KX/1 alike.
    """

    CHUNK = bytes(range(256)) * (1024 * 1024 // 256)

    def __init__(self, nbytes, begun):
        self.remaining = nbytes
        self.begun = begun
        self.paused = False
        self.secure = False
        self.answered = defer.Deferred()
        self.ready = defer.Deferred()
        #: ``(ok, detail)`` when the connection failed before the answer.
        self.ended = defer.Deferred()
        self.ended.addCallback(self._ended)

    def _ended(self, result):
        _, detail = result
        if not self.answered.called:
            self.answered.callback((False, time.perf_counter() - self.begun, detail))

    def connectionMade(self):
        if not self.ready.called:
            self.ready.callback(self)
        self.transport.registerProducer(self, True)
        self.resumeProducing()

    def handshakeCompleted(self):
        pass  # TLS: writes made before the handshake wait in its buffer

    def resumeProducing(self):
        self.paused = False
        chunk = self.CHUNK
        while not self.paused and self.remaining > 0:
            if self.remaining < len(chunk):
                chunk = chunk[: self.remaining]
            self.remaining -= len(chunk)
            self.transport.write(chunk)
        if self.remaining <= 0 and not self.paused and self.transport is not None:
            self.remaining = -1
            self.transport.unregisterProducer()

    def pauseProducing(self):
        self.paused = True

    def stopProducing(self):
        self.paused = True

    def dataReceived(self, data):
        if not self.answered.called:
            self.answered.callback((True, time.perf_counter() - self.begun, ""))
            self.transport.loseConnection()

    def connectionLost(self, reason=None):
        if not self.ended.called:
            self.ended.callback((False, f"closed: {reason.getErrorMessage()}"))


def run_upload(args, client):
    begun = time.perf_counter()
    upload = Upload(args.bytes, begun)

    def answered(result):
        ok, seconds, detail = result
        emit(event="done", ok=ok, detail=detail, bytes=args.bytes, seconds=seconds)
        reactor.stop()

    upload.answered.addCallback(answered)
    client.open(upload)

    def expire():
        if not upload.answered.called:
            upload.answered.callback((False, args.timeout, "lost"))
            if upload.transport is not None:
                upload.transport.abortConnection()

    reactor.callLater(args.timeout, expire)


class FirstByte(Protocol):
    """Send one byte on connect; ``echoed`` fires at the first byte back
    (with the seconds since ``begun``), then the connection is closed."""

    def __init__(self, begun):
        self.begun = begun
        self.echoed = defer.Deferred()
        self.gone = defer.Deferred()

    def connectionMade(self):
        self.transport.write(b"x")

    def dataReceived(self, data):
        if not self.echoed.called:
            self.echoed.callback(time.perf_counter() - self.begun)
            self.transport.loseConnection()

    def connectionLost(self, reason=None):
        if not self.echoed.called:
            self.echoed.errback(RuntimeError(f"closed before the echo: {reason.getErrorMessage()}"))
        self.gone.callback(None)


@defer.inlineCallbacks
def run_setup(args, client):
    """Connection setup, one connection at a time (no queueing in the figure)."""
    latencies = []
    failures = {}
    stop_at = time.monotonic() + args.timeout * 3
    for number in range(args.warmup_count + args.count):
        if time.monotonic() > stop_at:
            break
        begun = time.perf_counter()
        first = FirstByte(begun)
        deadline = reactor.callLater(args.timeout, _abort, first)
        try:
            yield client.endpoint.connect(Factory.forProtocol(lambda first=first: first))
            seconds = yield first.echoed
        except Exception as failure:
            detail = f"{type(failure).__name__}: {failure}"
            failures[detail] = failures.get(detail, 0) + 1
        else:
            if number >= args.warmup_count:
                latencies.append(seconds)
        finally:
            if deadline.active():
                deadline.cancel()
        if first.transport is not None:
            # The next connection starts once this one is gone on our side.
            yield first.gone
    emit(event="done", latencies=latencies, failed=sum(failures.values()), errors=failures)
    reactor.stop()


def _abort(first):
    if not first.echoed.called:
        first.echoed.errback(RuntimeError("no echo within the timeout"))
    if first.transport is not None:
        first.transport.abortConnection()


class Commands(LineReceiver):
    delimiter = b"\n"

    def __init__(self, on_line, on_end):
        self.on_line = on_line
        self.on_end = on_end

    def lineReceived(self, line):
        self.on_line(line.decode().split())

    def connectionLost(self, reason=None):
        self.on_end()


def run_idle(args, client):
    sessions = []
    counts = {"open": 0, "failed": 0, "pending": 0, "started": 0}
    errors = {}

    def launch():
        if counts["started"] >= args.sessions:
            if counts["pending"] == 0:
                emit(event="ready", open=counts["open"], failed=counts["failed"], errors=errors)
            return
        counts["started"] += 1
        counts["pending"] += 1
        session = Session(None, False, keep_open=True)
        sessions.append(session)

        def up(_):
            counts["open"] += 1
            counts["pending"] -= 1
            reactor.callLater(0, launch)

        def ended(result):
            _, detail = result
            if not session.ready.called:
                counts["failed"] += 1
                counts["pending"] -= 1
                errors[detail] = errors.get(detail, 0) + 1
                reactor.callLater(0, launch)

        session.ready.addCallback(up)
        session.ended.addCallback(ended)
        client.open(session)

    for _ in range(args.concurrency):
        launch()

    def end():
        for session in sessions:
            if session.transport is not None:
                session.transport.abortConnection()
        reactor.callLater(0.5, reactor.stop)

    stdio.StandardIO(Commands(lambda words: None, end))


def run_rtt(args, client):
    session = Session(None, False, keep_open=True, sink=True)
    payload = os.urandom(args.size)
    state = {"waiting": 0, "sent": 0.0, "rtts": [], "until": 0.0}

    def measure(words):
        if words and words[0] == "measure":
            state["rtts"] = []
            state["until"] = time.perf_counter() + float(words[1])
            ping()

    def ping():
        if time.perf_counter() >= state["until"]:
            emit(event="rtts", rtts=state["rtts"])
            return
        state["waiting"] = len(payload)
        state["sent"] = time.perf_counter()
        session.transport.write(payload)

    def on_data(data):
        state["waiting"] -= len(data)
        if state["waiting"] <= 0:
            state["rtts"].append(time.perf_counter() - state["sent"])
            reactor.callLater(args.interval, ping)

    session.on_data = on_data
    session.ready.addCallback(lambda _: emit(event="ready"))
    session.ended.addCallback(
        lambda result: (emit(event="ended", ok=result[0], detail=result[1]), reactor.stop())
    )

    def end():
        if session.transport is not None:
            session.transport.abortConnection()
        reactor.callLater(0.2, lambda: reactor.running and reactor.stop())

    stdio.StandardIO(Commands(measure, end))
    client.open(session)


class HalfHandshake(Protocol):
    """Slowloris: read HELLO, never answer, note when and how we are cut."""

    def __init__(self, tally):
        self.tally = tally
        self.data = b""
        self.hello = False

    def connectionMade(self):
        self.opened = time.monotonic()

    def dataReceived(self, data):
        self.data += data[:4096]
        if not self.hello and self.data.startswith(b"HELLO "):
            self.hello = True
            self.tally["waiting"] += 1
            if self.tally["waiting"] == self.tally["wanted"]:
                emit(event="ready", waiting=self.tally["waiting"])

    def connectionLost(self, reason=None):
        after = time.monotonic() - self.opened
        if not self.hello:
            self.tally["refused"] += 1
        else:
            self.tally["cuts"].append(after)
            if b"ERROR" in self.data and b"timeout" in self.data:
                self.tally["timeout_errors"] += 1
        if len(self.tally["cuts"]) + self.tally["refused"] == self.tally["wanted"]:
            emit(
                event="cut",
                cuts=self.tally["cuts"],
                refused=self.tally["refused"],
                timeout_errors=self.tally["timeout_errors"],
            )
            reactor.stop()


def run_slowloris(args, client):
    tally = {"wanted": args.sessions, "waiting": 0, "refused": 0, "cuts": [], "timeout_errors": 0}
    factory = Factory.forProtocol(lambda: HalfHandshake(tally))
    for _ in range(args.sessions):
        client.endpoint.connect(factory).addErrback(
            lambda failure: tally.__setitem__("refused", tally["refused"] + 1)
        )
    reactor.callLater(args.timeout, reactor.stop)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "mode", choices=["handshakes", "throughput", "upload", "setup", "idle", "rtt", "slowloris"]
    )
    parser.add_argument("--proto", required=True, choices=["kx", "tls1.3", "tls1.2", "tcp"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fingerprint", help="KX/1: the server key's fingerprint")
    parser.add_argument("--cert", help="TLS: the server's certificate (the trust root)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--expect", default="")
    parser.add_argument("--bytes", type=int, default=256 * 1024 * 1024)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--interval", type=float, default=0.005)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--warmup-count", type=int, default=0)
    parser.add_argument(
        "--resume", action="store_true", help="KX/1: a TicketStore per slot, resume with it"
    )
    parser.add_argument(
        "--allow-no-forward-secrecy",
        action="store_true",
        help="KX/1: accept a server that offers no ephemeral key",
    )
    args = parser.parse_args()
    if args.proto == "kx":
        # What ``keyexchange connect`` and ``tunnel`` do before they run
        # (keyexchanged/allocator.py); the TLS and TCP clients run as before.
        allocator.tune()
    client = Client(args)
    modes = {
        "handshakes": run_handshakes,
        "throughput": run_throughput,
        "upload": run_upload,
        "setup": run_setup,
        "idle": run_idle,
        "rtt": run_rtt,
        "slowloris": run_slowloris,
    }
    reactor.callWhenRunning(modes[args.mode], args, client)
    reactor.run()


if __name__ == "__main__":
    main()
