"""The idle timeout of every established session of a server, on one timer."""

from twisted.logger import Logger


class IdleSessions:
    """The idle timeout of every established session, on one timer.

    A DelayedCall per session (with its bound methods, argument tuple and
    keyword dict) was about 600 bytes, an eighth of an idle session; here a
    session is one dict entry.  Every session has the same timeout, so the
    order of last activity is the order of expiry: the dict keeps sessions
    in that order (a touched session moves to the end) and the timer is
    always set for the first.
    """

    log = Logger()

    def __init__(self, reactor, timeout):
        self.reactor = reactor
        self.timeout = timeout
        self._deadlines = {}
        self._call = None

    def __len__(self):
        return len(self._deadlines)

    def __contains__(self, session):
        return session in self._deadlines

    def add(self, session):
        """Start timing ``session`` (its handshake is complete)."""
        self._deadlines.pop(session, None)
        self._deadlines[session] = self.reactor.seconds() + self.timeout
        if self._call is None:
            self._call = self.reactor.callLater(self.timeout, self._expire)

    def touch(self, session):
        """Traffic on ``session``: its idle time starts again (if timed)."""
        if self._deadlines.pop(session, None) is not None:
            self._deadlines[session] = self.reactor.seconds() + self.timeout

    def remove(self, session):
        self._deadlines.pop(session, None)
        if not self._deadlines and self._call is not None:
            # Nothing left to time: no call left behind in the reactor.
            self._call.cancel()
            self._call = None

    def _expire(self):
        self._call = None
        now = self.reactor.seconds()
        while self._deadlines:
            session, deadline = next(iter(self._deadlines.items()))
            if deadline > now:
                if self._call is None:
                    self._call = self.reactor.callLater(deadline - now, self._expire)
                return
            del self._deadlines[session]
            try:
                session.idle_expired()
            except Exception:
                # One session's failure must not stop the others expiring.
                self.log.failure("idle session failed to close")
