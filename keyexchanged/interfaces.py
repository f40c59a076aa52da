"""What an application that runs inside a KX/1 session provides.

The daemon is a host for applications, found as plugins (see
:func:`keyexchanged.applications.find_applications`).  An application is an object that
provides both :class:`twisted.plugin.IPlugin` and :class:`IApplication`,
placed in a module of the ``keyexchanged.plugins`` package — or of any
directory named ``keyexchanged/plugins`` on ``sys.path``, so another
distribution can add one without touching this one.  A minimal plugin
module::

    from twisted.internet.protocol import Factory, Protocol
    from keyexchanged.applications import Application

    class Shout(Protocol):
        def dataReceived(self, data):
            self.transport.write(data.upper())

    shout = Application(
        "shout",
        "send every session's data back in capitals",
        lambda settings, reactor: Factory.forProtocol(Shout),
    )

``twistd keyexchange --application shout`` then serves it.
"""

from zope.interface import Attribute, Interface

__all__ = ["IApplication"]


class IApplication(Interface):
    """An application protocol served over KX/1."""

    name = Attribute(
        "The short name chosen with --application NAME or application = NAME: "
        "lowercase letters, digits and hyphens."
    )

    description = Attribute("One line for twistd keyexchange --help-applications.")

    settings = Attribute(
        "A sequence of keyexchanged.config.Setting: the application's own "
        "options.  Each becomes a --name option of twistd keyexchange and a "
        "name = value line of the config file, validated the same way; the "
        "values arrive in makeFactory's settings.  May be empty."
    )

    def makeFactory(settings, reactor):
        """Return the factory of the protocol that runs inside each session.

        ``settings`` maps every setting name (the daemon's and this
        application's) to its value.  Raise ``ValueError`` with a message
        for the operator when a value cannot be used; the daemon refuses to
        start with it.

        The factory's ``buildProtocol(address)`` receives the client's
        address.  The protocol it returns sees an ordinary transport and
        plain bytes: ``connectionMade`` after key confirmation,
        ``dataReceived`` with the client's data, and ``connectionLost`` with
        ``ConnectionDone`` after the client's END, or a failure that says
        why not.  Before ``connectionMade`` the protocol's
        ``peer_fingerprint`` attribute is set to the client's key
        fingerprint when the client authenticated (AUTH), else ``None``;
        ``transport.peer_fingerprint`` says the same.  A protocol that
        provides ``IHalfCloseableProtocol`` is told of the client's END by
        ``readConnectionLost`` and may go on writing.
        """
