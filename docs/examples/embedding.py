"""The README's Python API section as a whole program, key files included.

    python docs/examples/embedding.py [DIRECTORY]

uses the server key pair in DIRECTORY, making it first if it is not there
(as ``keyexchange keygen --out DIRECTORY/server.key`` would; with no
DIRECTORY, in a temporary one), then:

- the server loads its private key from the file, and serves an ordinary
  Twisted protocol over KX/1 with forward secrecy, on 127.0.0.1;
- the client pins the fingerprint of the public key file (what
  ``keyexchange fingerprint server.key.pub`` prints), connects, sends a
  name and prints the answer.

Neither protocol knows anything of keys or records.
"""

import os
import sys
import tempfile

from twisted.internet import defer, endpoints, task
from twisted.internet.protocol import Factory, Protocol

from keyexchanged import keys
from keyexchanged.ephemeral import EphemeralKeys
from keyexchanged.handshake import ServerIdentity
from keyexchanged.protocol import SecureChannelFactory, connect
from keyexchanged.trust import PinnedKey


class Greeter(Protocol):
    """Server: greet whoever writes, then end the session (END)."""

    def dataReceived(self, data):
        self.transport.write(b"hello, " + data)
        self.transport.loseConnection()


class Caller(Protocol):
    """Client: send a name, keep what comes back."""

    def __init__(self, name):
        self.name = name
        self.received = b""
        self.finished = defer.Deferred()

    def connectionMade(self):
        # Called once the server has proved it holds the pinned key.
        self.transport.write(self.name)

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        # ConnectionDone after the server's END; Truncated if it just dropped.
        self.finished.callback(reason.value)


def key_files(directory, bits=2048):
    """``server.key`` (0600) and ``server.key.pub`` in ``directory``, made
    unless they are there; returns the private key file's path."""
    path = os.path.join(directory, "server.key")
    if not os.path.exists(path):
        keys.create_key_pair(path, bits)
    return path


@defer.inlineCallbacks
def greet(reactor, key_file, name=b"world", output=print):
    # The server: its key from the file (refused if others may read it).
    private_key = keys.load_private_key(key_file)
    ephemeral_keys = EphemeralKeys(private_key, reactor=reactor, bits=2048)
    ephemeral_keys.start()  # a fresh ephemeral key every minute
    factory = SecureChannelFactory(
        Factory.forProtocol(Greeter),
        ServerIdentity(private_key),
        reactor=reactor,
        ephemeral_keys=ephemeral_keys,
    )
    port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    try:
        # The client: it knows the server's key only by its fingerprint.
        fingerprint = keys.fingerprint(keys.load_public_key(key_file + ".pub"))
        caller = Caller(name)
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        yield connect(
            reactor,
            endpoint,
            PinnedKey(fingerprint),
            Factory.forProtocol(lambda: caller),
            server_name="127.0.0.1",
        )
        ended = yield caller.finished
        output(f"server {fingerprint} said: {caller.received.decode()}")
        output(f"session ended: {type(ended).__name__}")
    finally:
        ephemeral_keys.stop()
        yield port.stopListening()


@defer.inlineCallbacks
def main(reactor, directory=None):
    if directory is None:
        with tempfile.TemporaryDirectory() as directory:
            yield greet(reactor, key_files(directory))
    else:
        yield greet(reactor, key_files(directory))


if __name__ == "__main__":
    sys.exit(task.react(main, sys.argv[1:2]))
