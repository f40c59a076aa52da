"""KX/1 over Twisted: a secure channel that wraps any application protocol.

The shape is Twisted's own TLS wrapper: :class:`SecureChannelFactory` wraps
an application factory, and the application protocol it builds sees an
ordinary transport and plain bytes.  It is connected (``connectionMade``)
only after key confirmation, and it is told how the connection ended:

- :class:`~twisted.internet.error.ConnectionDone` after the peer's END;
- :class:`Truncated` when the TCP connection closed before END arrived;
- :class:`PeerError` when the peer sent ERROR, :class:`ProtocolFailure` when
  we did (a bad record, a timeout);
- :class:`IdleTimeout` when the server closed an idle session.

``ChannelProtocol`` is the thin adapter: a ``LineReceiver`` that reads
one header line, switches to raw mode for exactly the announced payload, and
hands both to the I/O-free state machine of keyexchanged.handshake.  Everything it
reads is bounded by what the header announced, and the header is refused
before a payload byte is kept.

The package's modules, by job: ``_exceptions`` (how a session ended),
``_transport`` (what the application sees), ``_channel`` (frames ↔ events),
``_idle`` (idle timeouts on one timer), ``_server`` and ``_client``.
Everything public is imported from here.
"""

from keyexchanged.errors import UntrustedKey
from keyexchanged.protocol._channel import ChannelProtocol
from keyexchanged.protocol._client import (
    ChannelClientFactory,
    ClientChannelProtocol,
    SessionOpener,
    connect,
)
from keyexchanged.protocol._exceptions import (
    HandshakeFailed,
    IdleTimeout,
    PeerError,
    ProtocolFailure,
    Truncated,
    cause_of,
)
from keyexchanged.protocol._idle import IdleSessions
from keyexchanged.protocol._server import (
    BusyProtocol,
    SecureChannelFactory,
    ServerChannelProtocol,
)
from keyexchanged.protocol._transport import SecureTransport

__all__ = [
    "BusyProtocol",
    "ChannelClientFactory",
    "ChannelProtocol",
    "ClientChannelProtocol",
    "HandshakeFailed",
    "IdleSessions",
    "IdleTimeout",
    "PeerError",
    "ProtocolFailure",
    "SecureChannelFactory",
    "SecureTransport",
    "ServerChannelProtocol",
    "SessionOpener",
    "Truncated",
    "UntrustedKey",
    "cause_of",
    "connect",
]
