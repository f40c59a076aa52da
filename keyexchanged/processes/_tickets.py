"""The ticket keys the parent shares with children that have no file of
their own."""

import os
import secrets

from twisted.logger import Logger

from keyexchanged import tickets


class SharedTicketKeys:
    """The parent's ticket-key file (0600) for children with no file of
    their own: random keys, rotated every ``interval`` seconds.

    A rotation is two writes, ``announce`` seconds apart: first the new key
    after the ones in use (every child can open tickets under it), then the
    new key first (children issue under it) and the previous one kept to
    open the tickets it issued, the one before dropped.  The children read
    the file every :data:`SHARED_TICKET_KEYS_CHECK` s: a ticket issued by a
    child that already switched opens on one that has not yet.
    """

    log = Logger()

    def __init__(self, path, interval, reactor, announce=5.0):
        self.path = path
        self.interval = interval
        self.reactor = reactor
        self.announce = announce
        self._keys = [secrets.token_bytes(tickets.TICKET_KEY_LENGTH)]
        self._call = None

    def write(self, keys):
        self._keys = keys
        tickets.write_ticket_key_file(self.path, tickets.TicketKeys(keys))

    def start(self):
        if not os.path.exists(self.path):
            self.write(self._keys)
        self._call = self.reactor.callLater(self.interval, self._announce)

    def _announce(self):
        new = secrets.token_bytes(tickets.TICKET_KEY_LENGTH)
        self.write([*self._keys, new])
        self._call = self.reactor.callLater(self.announce, self._promote, new)

    def _promote(self, new):
        self.write([new, self._keys[0]])
        self.log.info("shared ticket keys rotated")
        self._call = self.reactor.callLater(self.interval, self._announce)

    def stop(self):
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
