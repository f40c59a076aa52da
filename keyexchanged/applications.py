"""The applications served inside KX/1 sessions, and how they are found.

An application is a plugin providing
:class:`~keyexchanged.interfaces.IApplication`: a name, a one-line
description, its own settings and a factory for the protocol that runs in
each session.  They are ordinary Twisted protocols: the channel
(keyexchanged.protocol) connects them after key confirmation and gives them a
transport that seals what they write.  They know nothing of records or keys.

Built in (``keyexchanged/plugins/keyexchanged_applications.py``):

``message``
    The original program: send the configured secret message, then END.
``echo``
    Send back whatever arrives; END after the client's END.
``forward``
    Relay each session byte for byte to a new connection to
    ``--forward-to ENDPOINT``: the server half of a tunnel.
"""

import re

from twisted.internet import endpoints
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.plugin import IPlugin, getPlugins
from zope.interface import implementer

from keyexchanged import plugins
from keyexchanged.errors import UnknownApplication
from keyexchanged.framing import RECORD_DATA_MAX
from keyexchanged.interfaces import IApplication
from keyexchanged.relay import Splice

__all__ = [
    "Application",
    "EchoFactory",
    "ForwardFactory",
    "MessageFactory",
    "UnknownApplication",
    "find_applications",
    "get_application",
]

_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")


@implementer(IPlugin, IApplication)
class Application:
    """A plugin made of its parts: what most plugin modules need.  It
    provides :class:`~keyexchanged.interfaces.IApplication`.

    :param name: what ``--application NAME`` chooses: lowercase letters,
        digits and hyphens, up to 32.
    :param description: one line for ``--help-applications``.
    :param make_factory: ``make_factory(settings, reactor)`` returns the
        protocol factory (see
        :meth:`~keyexchanged.interfaces.IApplication.makeFactory`).
    :param settings: the application's own
        :class:`~keyexchanged.config.Setting` objects.
    :raises ValueError: for a malformed ``name``.
    """

    def __init__(self, name, description, make_factory, settings=()):
        if not _NAME.fullmatch(name):
            raise ValueError(f"application name {name!r}: lowercase letters, digits, hyphens")
        self.name = name
        self.description = description
        self.settings = tuple(settings)
        self._make_factory = make_factory

    def makeFactory(self, settings, reactor):
        """``make_factory(settings, reactor)``."""
        return self._make_factory(settings, reactor)

    def __repr__(self):
        return f"<Application {self.name}>"


def find_applications():
    """Every installed application plugin: the built-in ones and those in
    any ``keyexchanged/plugins`` directory on ``sys.path``.

    A plugin whose name is taken by one found earlier, or that is not
    well-formed, is left out rather than allowed to shadow a built-in.

    :returns: ``{name: application}``.
    """
    found = {}
    for application in getPlugins(IApplication, plugins):
        name = getattr(application, "name", None)
        if isinstance(name, str) and _NAME.fullmatch(name) and name not in found:
            found[name] = application
    return found


def get_application(name, applications=None):
    """The application plugin called ``name``.

    :param applications: ``{name: application}`` to look in (default:
        :func:`find_applications`).
    :raises ~keyexchanged.errors.UnknownApplication: when there is none,
        naming those installed.
    """
    applications = find_applications() if applications is None else applications
    try:
        return applications[name]
    except KeyError:
        known = ", ".join(sorted(applications)) or "none"
        raise UnknownApplication(
            f"no application named {name!r} (installed: {known}; "
            "see twistd keyexchange --help-applications)"
        ) from None


# -- message ---------------------------------------------------------------------


@implementer(IPushProducer)
class MessageProtocol(Protocol):
    """The original program: send the secret message, then END.

    The message is written a record at a time, as a streaming producer of
    the session's transport: a client that stops reading pauses us once the
    TCP send buffer holds more than its ``bufferSize`` (64 KiB), so a session
    keeps about one sealed record however long the message.  The message
    itself is the factory's, one copy for every session; a session holds
    only how far it has got.
    """

    #: One full record per write: the channel seals and sends it at once,
    #: rather than gathering writes until the end of the reactor turn.
    CHUNK = RECORD_DATA_MAX

    def __init__(self):
        self._offset = 0
        self._paused = False
        self._done = False

    def connectionMade(self):
        self.transport.registerProducer(self, True)
        self.resumeProducing()

    def resumeProducing(self):
        self._paused = False
        message = self.factory.message
        # A write that fills the send buffer pauses us from inside it.
        while not self._paused and not self._done and self._offset < len(message):
            chunk = message[self._offset : self._offset + self.CHUNK]
            self._offset += len(chunk)
            self.transport.write(chunk)
        if not self._done and self._offset >= len(message):
            self._done = True
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def pauseProducing(self):
        self._paused = True

    def stopProducing(self):
        # The connection is gone (or going): nothing more to send.
        self._done = True

    def connectionLost(self, reason):
        self._done = True


class MessageFactory(Factory):
    """The original program's application: one secret message, then END."""

    noisy = False  # the channel logs one line per connection
    protocol = MessageProtocol

    def __init__(self, message):
        if isinstance(message, str):
            message = message.encode("utf-8")
        self.message = message


# -- echo --------------------------------------------------------------------------


class EchoProtocol(Protocol):
    """Send back whatever arrives; END after the client's END."""

    def connectionMade(self):
        # A client that sends and never reads must not make us queue its
        # echo without bound: a full send buffer pauses reading.
        self.transport.registerProducer(self.transport, True)

    def dataReceived(self, data):
        self.transport.write(data)


class EchoFactory(Factory):
    """Echo every session's data back to it."""

    noisy = False  # the channel logs one line per connection
    protocol = EchoProtocol


# -- forward -----------------------------------------------------------------------


class ForwardFactory(Factory):
    """Each session is relayed to a new connection to ``target``.

    ``target`` is a strports client description (``tcp:127.0.0.1:6379``).
    The session's data goes to the target as it arrives, and the target's
    back into the session; a half-close crosses over (the client's END
    becomes a FIN to the target, the target's FIN an END to the client),
    and a slow side pauses the fast one.  A target that refuses ends the
    session with ``ERROR internal``.
    """

    noisy = False
    log = Logger()

    def __init__(self, target, reactor):
        self.target = target
        self.endpoint = endpoints.clientFromString(reactor, target)
        #: The splices open now (first: in the session, second: to the target).
        self.splices = set()

    def buildProtocol(self, address):
        peer = getattr(address, "host", address)
        splice = Splice(
            f"forward from {peer} to {self.target}",
            connect=self._connect,
        )
        splice.on_done = lambda reason: self.splices.discard(splice)
        self.splices.add(splice)
        return splice.first


    def _connect(self, end):
        # Not endpoints.connectProtocol: its factory logs "Starting factory"
        # and "Stopping factory" for every session; the splice logs its own.
        factory = Factory.forProtocol(lambda: end)
        factory.noisy = False
        return self.endpoint.connect(factory)


def check_forward_target(text):
    text = text.strip()
    if not text:
        raise ValueError("must be a client endpoint description such as tcp:127.0.0.1:6379")
    return text


def make_forward_factory(settings, reactor):
    target = settings.get("forward-to")
    if not target:
        raise ValueError(
            "application forward needs --forward-to ENDPOINT (for example tcp:127.0.0.1:6379)"
        )
    try:
        return ForwardFactory(target, reactor)
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"forward-to = {target!r}: {error}") from None
