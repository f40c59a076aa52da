"""The lab's application: a tiny bank, served by both the weak server and KX/1.

The same bank runs behind the original exercise's scheme (``weak.py``) and
inside the daemon's KX/1 channel (``runner.py``), so that a lesson can show
what each attack does to the one thing that matters: the ledger.

A session is a line of commands::

    LOGIN alice hunter2      → welcome alice
    PAY 100 TO bob           → staged; paid when the session ends cleanly
    CANCEL                   → forget the staged payments

Payments are staged and committed only when the session *ends cleanly*, as a
careful application does: that is the only way to honour a ``CANCEL`` that
was on its way.  What "ends cleanly" means is the transport's business: the
weak scheme cannot tell a clean end from an attacker closing the connection;
KX/1 can (END, and ``Truncated`` when it is missing).

There is nothing insecure here; it is the transport underneath that differs.
"""

import re
import threading
from typing import NamedTuple

__all__ = ["ACCOUNTS", "Bank", "Payment", "Teller"]

#: The one customer, and her password: the secret an eavesdropper wants.
ACCOUNTS = {"alice": "hunter2"}

_LOGIN = re.compile(r"LOGIN (\S+) (\S+)")
_PAY = re.compile(r"PAY (\d{1,9}) TO (\S+)")


class Payment(NamedTuple):
    payer: str
    amount: int
    payee: str
    #: Which session made it (1, 2, ...): a replay shows up as a second session.
    session: int


class Bank:
    """The ledger, shared by every session (each in its own thread or the reactor)."""

    def __init__(self, accounts=None):
        self.accounts = dict(ACCOUNTS if accounts is None else accounts)
        self.ledger = []
        self._sessions = 0
        self._lock = threading.Lock()

    def session(self):
        """A :class:`Teller` for one new session."""
        with self._lock:
            self._sessions += 1
            return Teller(self, self._sessions)

    def payments(self):
        with self._lock:
            return list(self.ledger)

    def _commit(self, payments):
        with self._lock:
            self.ledger.extend(payments)


class Teller:
    """One session's state: who logged in, what is staged."""

    def __init__(self, bank, number):
        self.bank = bank
        self.number = number
        self.user = None
        self.staged = []
        #: Every command as the teller read it: what the server acted on.
        self.commands = []
        self.ended = None

    def command(self, text):
        """Act on one command line; return the reply line."""
        text = text.strip()
        self.commands.append(text)
        login = _LOGIN.fullmatch(text)
        if login:
            user, password = login.groups()
            if self.bank.accounts.get(user) == password:
                self.user = user
                return f"welcome {user}"
            return "login refused"
        pay = _PAY.fullmatch(text)
        if pay:
            if self.user is None:
                return "log in first"
            amount, payee = int(pay.group(1)), pay.group(2)
            self.staged.append(Payment(self.user, amount, payee, self.number))
            return f"{amount} to {payee}: staged, paid when the session ends"
        if text == "CANCEL":
            count, self.staged = len(self.staged), []
            return f"cancelled {count} payment(s)"
        return "unknown command"

    def end(self, clean):
        """The session is over: commit the staged payments if it ended
        cleanly, else drop them.  Returns what was committed."""
        self.ended = "clean" if clean else "not clean"
        committed, self.staged = (self.staged if clean else []), []
        self.bank._commit(committed)
        return committed
