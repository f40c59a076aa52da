"""Servers for the benchmarks, each in its own process.

``servers.py kx --app APP -- DAEMON OPTIONS``
    The daemon's own service: ``tap.Options`` parses DAEMON OPTIONS exactly
    as ``twistd keyexchange`` would (so any option the daemon grows, such as
    worker processes, applies here too) and ``tap.makeService`` builds it;
    only the application inside the channel is swapped for APP.  Use the
    real ``twistd keyexchange`` wherever the message application will do.
``servers.py tls1.3|tls1.2 --app APP --key K --cert C``
    A Twisted TLS server (pyOpenSSL through ``TLSMemoryBIOFactory``) running
    the same APP: TLS 1.3 only, or TLS 1.2 only with the static-RSA suite
    AES256-GCM-SHA384.  No session tickets and no session cache, because the
    load generator never resumes and every handshake must be a full one.
``servers.py tcp --app APP``
    The same APP on plain TCP: the floor for memory and throughput.
``servers.py tls-encrypt --cert C --to PORT``
    The encrypting end of a TLS tunnel, as ``keyexchange tunnel`` and
    ``spiped -e`` are: accept plain TCP on 127.0.0.1 and carry each
    connection over TLS 1.3 to 127.0.0.1:PORT, verifying the server's
    certificate C (pyOpenSSL through ``TLSMemoryBIOFactory``).
``servers.py tls-decrypt --key K --cert C --to PORT``
    The decrypting end, as ``twistd keyexchange --application forward`` and
    ``spiped -d`` are: accept TLS 1.3 and carry each connection as plain TCP
    to 127.0.0.1:PORT.  Both ends splice with :mod:`keyexchanged.relay`,
    the code the KX/1 tunnel and its forward application use, so the TLS
    pair differs from ours in the secure channel alone.

APP is ``message`` (the daemon's: send the message, then close), ``echo``,
``source`` (send ``--bytes`` bytes as fast as the transport takes them,
then close) or ``sink`` (read ``--bytes`` bytes, then answer ``ok`` and
close).  Each server prints ``listening on HOST:PORT``.
"""

import argparse
import sys

from tlscontexts import ClientCreator, client_context
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString
from twisted.internet.interfaces import (
    IOpenSSLServerConnectionCreator,
    IProtocol,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer, implementer_only

from keyexchanged.applications import EchoFactory, MessageFactory
from keyexchanged.relay import End, Splice

LOCAL = "tcp:0:interface=127.0.0.1"
# One write per resumeProducing: a few full KX/1 records (64 KiB each) and
# many TLS records (16 KiB); large enough that per-call overhead vanishes.
SOURCE_CHUNK = 1024 * 1024


class SourceProtocol(Protocol):
    """Send ``factory.nbytes`` bytes as fast as the transport takes them.

    A streaming producer: it writes until the transport's buffer passes its
    high-water mark (``pauseProducing``) and goes on at ``resumeProducing``,
    so the socket never runs dry while data is waiting.
    """

    def connectionMade(self):
        self.remaining = self.factory.nbytes
        self.paused = False
        self.transport.registerProducer(self, True)
        self.resumeProducing()

    def resumeProducing(self):
        self.paused = False
        chunk = self.factory.chunk
        while not self.paused and self.remaining > 0:
            if self.remaining < len(chunk):
                chunk = chunk[: self.remaining]
            self.remaining -= len(chunk)
            self.transport.write(chunk)
        if self.remaining <= 0 and not self.paused:
            self.remaining = -1
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def pauseProducing(self):
        self.paused = True

    def stopProducing(self):
        self.remaining = 0
        self.paused = True


class SourceFactory(Factory):
    noisy = False
    protocol = SourceProtocol

    def __init__(self, nbytes):
        self.nbytes = nbytes
        self.chunk = bytes(range(256)) * (SOURCE_CHUNK // 256)


class SinkProtocol(Protocol):
    """Read ``factory.nbytes`` bytes and throw them away; then say ``ok``
    and close, so the writer can time the whole transfer."""

    def connectionMade(self):
        self.remaining = self.factory.nbytes

    def dataReceived(self, data):
        self.remaining -= len(data)
        if self.remaining <= 0 and self.transport is not None:
            self.remaining = float("inf")  # answer once
            self.transport.write(b"ok")
            self.transport.loseConnection()


class SinkFactory(Factory):
    noisy = False
    protocol = SinkProtocol

    def __init__(self, nbytes):
        self.nbytes = nbytes


def application(name, message, nbytes):
    if name == "message":
        return MessageFactory(message)
    if name == "echo":
        return EchoFactory()
    if name == "source":
        return SourceFactory(nbytes)
    if name == "sink":
        return SinkFactory(nbytes)
    raise SystemExit(f"unknown application {name!r}")


def tls_context(version, key_path, cert_path):
    from OpenSSL import SSL

    context = SSL.Context(SSL.TLS_METHOD)
    if version == "tls1.3":
        context.set_min_proto_version(SSL.TLS1_3_VERSION)
        context.set_max_proto_version(SSL.TLS1_3_VERSION)
    else:
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        context.set_max_proto_version(SSL.TLS1_2_VERSION)
        # Static RSA key transport: the server decrypts the premaster secret
        # with its RSA key, the same work as a KX/1 KEY.
        context.set_cipher_list(b"AES256-GCM-SHA384")
    context.set_options(SSL.OP_NO_TICKET)
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    context.use_privatekey_file(key_path)
    context.use_certificate_file(cert_path)
    context.check_privatekey()
    return context


class SpliceFactory(Factory):
    """Accept a connection and splice it to a new one made by ``dial(end)``
    (a Deferred), with the relay the KX/1 tunnel and forward application use.

    The plain TCP side of each pair end closes fully instead of half-closing:
    Twisted's TLS transport has no ``loseWriteConnection`` of its own (the
    wrapper half-closes the TCP socket under TLS, without close_notify, and
    the far end reads a truncated connection), so an end of stream from the
    plain side closes the TLS connection with close_notify.  No benchmark
    here half-closes; the sink answers, then closes.
    """

    noisy = False

    def __init__(self, dial, plain_side):
        self.dial = dial
        self.plain_side = plain_side

    def buildProtocol(self, address):
        splice = Splice(f"splice for {address}", connect=self.dial)
        # Before either end is connected, so the splice only ever sees these.
        setattr(splice, self.plain_side, _FullCloseEnd(splice))
        return splice.first


@implementer_only(IProtocol)
class _FullCloseEnd(End):
    """A splice end that is not half-closeable: end of stream is connectionLost."""


def tls_pair_end(kind, key_path, cert_path, to_port):
    """The listening factory of one end of the TLS tunnel (see the module doc)."""
    target = TCP4ClientEndpoint(reactor, "127.0.0.1", to_port, timeout=30)

    def plain(end):
        return target.connect(Factory.forProtocol(lambda: end))

    if kind == "tls-decrypt":
        context = tls_context("tls1.3", key_path, cert_path)
        return TLSMemoryBIOFactory(_Context(context), False, SpliceFactory(plain, "second"))
    client = ClientCreator(client_context("tls1.3", cert_path))

    def secure(end):
        return target.connect(TLSMemoryBIOFactory(client, True, Factory.forProtocol(lambda: end)))

    return SpliceFactory(secure, "first")


@implementer(IOpenSSLServerConnectionCreator)
class _Context:
    """One OpenSSL context for every connection, as ``CertificateOptions`` does."""

    def __init__(self, context):
        self.context = context

    def serverConnectionForTLS(self, tls_protocol):
        from OpenSSL import SSL

        connection = SSL.Connection(self.context, None)
        connection.set_app_data(tls_protocol)
        return connection


def announce(port):
    address = port.getHost()
    print(f"listening on {address.host}:{address.port}", flush=True)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    daemon_args = []
    if "--" in argv:
        split = argv.index("--")
        argv, daemon_args = argv[:split], argv[split + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "kind", choices=["kx", "tls1.3", "tls1.2", "tcp", "tls-encrypt", "tls-decrypt"]
    )
    parser.add_argument("--app", default="message", choices=["message", "echo", "source", "sink"])
    parser.add_argument("--to", type=int, help="tls-encrypt, tls-decrypt: the port to carry to")
    parser.add_argument("--bytes", type=int, default=256 * 1024 * 1024)
    parser.add_argument("--message", default="bench")
    parser.add_argument("--key")
    parser.add_argument("--cert")
    parser.add_argument("--profile", help="write cProfile statistics here at exit")
    args = parser.parse_args(argv)
    # Log like twistd --logfile=-: the daemon's own lines, one per connection.
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)
    app = application(args.app, args.message.encode(), args.bytes)

    if args.kind == "kx":
        from keyexchanged import tap

        options = tap.Options()
        options.parseOptions(daemon_args)
        service = tap.makeService(options, reactor)
        service.factory.wrapped_factory = app
        # The service itself logs "listening on HOST:PORT".
        reactor.callWhenRunning(service.startService)
        reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    elif args.kind in ("tls-encrypt", "tls-decrypt"):
        factory = tls_pair_end(args.kind, args.key, args.cert, args.to)
        serverFromString(reactor, LOCAL).listen(factory).addCallback(announce)
    else:
        factory = app
        if args.kind.startswith("tls"):
            context = tls_context(args.kind, args.key, args.cert)
            factory = TLSMemoryBIOFactory(_Context(context), False, app)
        serverFromString(reactor, LOCAL).listen(factory).addCallback(announce)

    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
        reactor.addSystemEventTrigger(
            "after", "shutdown", lambda: (profiler.disable(), profiler.dump_stats(args.profile))
        )
    reactor.run()


if __name__ == "__main__":
    main()
