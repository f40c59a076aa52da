"""The application protocols that run inside a KX/1 channel.

They are ordinary Twisted protocols: the channel (protocol.py) connects them
after key confirmation and gives them a transport that seals what they
write.  They know nothing of records or keys.
"""

from twisted.internet.protocol import Factory, Protocol

__all__ = ["EchoFactory", "MessageFactory"]


class MessageProtocol(Protocol):
    """The original program: send the secret message, then END."""

    def connectionMade(self):
        self.transport.write(self.factory.message)
        self.transport.loseConnection()


class MessageFactory(Factory):
    """The original program's application: one secret message, then END."""

    noisy = False  # the channel logs one line per connection
    protocol = MessageProtocol

    def __init__(self, message):
        if isinstance(message, str):
            message = message.encode("utf-8")
        self.message = message


class EchoProtocol(Protocol):
    """Send back whatever arrives; END after the client's END."""

    def dataReceived(self, data):
        self.transport.write(data)


class EchoFactory(Factory):
    """Echo every session's data back to it."""

    noisy = False  # the channel logs one line per connection
    protocol = EchoProtocol
