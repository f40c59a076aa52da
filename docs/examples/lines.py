"""A small line protocol over KX/1: the embedding API in one runnable file.

    python docs/examples/lines.py

starts a server on 127.0.0.1 (a fresh 2048-bit key, in memory), connects a
client pinned to that key's fingerprint, has a short conversation in lines,
and prints it.  The server side is ``SecureChannelFactory`` wrapping an
ordinary ``LineReceiver`` factory; the client side is ``connect()`` with
another.  Neither protocol knows anything of keys or records.
"""

import sys

from twisted.internet import defer, endpoints, task
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver

from keyexchanged import rsa
from keyexchanged.ephemeral import EphemeralKeys
from keyexchanged.handshake import ServerIdentity
from keyexchanged.protocol import SecureChannelFactory, connect
from keyexchanged.trust import PinnedKey


class Upper(LineReceiver):
    """Server: answer every line in capitals; 'bye' ends the session."""

    def connectionMade(self):
        who = self.transport.peer_fingerprint or "an anonymous client"
        self.sendLine(f"hello, {who}".encode())

    def lineReceived(self, line):
        if line == b"bye":
            self.sendLine(b"BYE")
            self.transport.loseConnection()  # END
        else:
            self.sendLine(line.upper())


class Talk(LineReceiver):
    """Client: say a few lines, collect the answers."""

    def __init__(self, lines, output):
        self.lines = list(lines)
        self.output = output
        self.finished = defer.Deferred()

    def connectionMade(self):
        for line in self.lines:
            self.output(f"> {line}")
            self.sendLine(line.encode())

    def lineReceived(self, line):
        self.output(f"< {line.decode()}")

    def connectionLost(self, reason):
        # ConnectionDone after the server's END; Truncated if it just dropped.
        self.finished.callback(reason.value)


@defer.inlineCallbacks
def conversation(reactor, lines=("hello", "over kx/1", "bye"), output=print):
    key = rsa.generate_private_key(2048)
    identity = ServerIdentity(key)
    # Forward secrecy: a short-lived key, signed by ours, offered in every
    # HELLO and replaced every minute, with an ML-KEM-768 key beside it
    # (post-quantum; clients require both by default).
    ephemeral_keys = EphemeralKeys(key, reactor=reactor, bits=2048)
    ephemeral_keys.start()
    server = SecureChannelFactory(
        Factory.forProtocol(Upper), identity, reactor=reactor, ephemeral_keys=ephemeral_keys
    )
    port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(server)
    try:
        talk = Talk(lines, output)
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        yield connect(
            reactor,
            endpoint,
            PinnedKey(identity.fingerprint),
            Factory.forProtocol(lambda: talk),
            server_name="127.0.0.1",
        )
        ended = yield talk.finished
        output(f"session ended: {type(ended).__name__}")
    finally:
        ephemeral_keys.stop()
        yield port.stopListening()


def main(reactor):
    return conversation(reactor)


if __name__ == "__main__":
    sys.exit(task.react(main))
