"""How a session ended, as the application is told (connectionLost's reason)."""

from twisted.internet import error
from twisted.python.failure import Failure


class Truncated(error.ConnectionLost):
    """The connection closed before the peer's END: the data may be cut short."""


class PeerError(error.ConnectionLost):
    """The peer ended the connection with ERROR: ``code`` (``busy``,
    ``untrusted-key``, ...) and ``detail``, the peer's text."""

    def __init__(self, code, detail):
        super().__init__(f"peer sent ERROR {code}: {detail}")
        self.code = code
        self.detail = detail


class ProtocolFailure(error.ConnectionLost):
    """We ended the connection with ERROR: ``code`` and ``detail``, as sent
    (a record that did not open, a timeout)."""

    def __init__(self, code, detail):
        super().__init__(f"sent ERROR {code}: {detail}")
        self.code = code
        self.detail = detail


class IdleTimeout(error.ConnectionLost):
    """The server ended a session that was idle for too long."""


class HandshakeFailed(Exception):
    """The connection ended before the handshake completed.

    ``reason`` is what ended it (an exception, or a Failure holding one):
    :func:`cause_of` unwraps it.
    """

    def __init__(self, reason):
        super().__init__(str(reason))
        self.reason = reason


def cause_of(value):
    """The exception that ended a session, out of its wrappers.

    :param value: an exception, a :class:`HandshakeFailed` or a
        :class:`~twisted.python.failure.Failure`, wrapped any number of
        times.
    :returns: the innermost exception.
    """
    while True:
        if isinstance(value, Failure):
            value = value.value
        elif isinstance(value, HandshakeFailed):
            value = value.reason
        else:
            return value
