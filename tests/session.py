"""A ``keyexchange connect`` session run in the test's own process.

Where the daemon is under test and the client only shows that it serves
(a first session before a reload, a session after one), a client process
adds ~0.35 s of CPU, mostly its imports, to check nothing of its own.
:func:`connect_here` runs the command's session
(:func:`keyexchanged.client.run_connect`: the same output and the same
exit codes) on the test's reactor, trusting the pinned key alone (the
command would also refuse a key revoked in the user's known-hosts file).
Tests of the client itself run the real command
(:func:`tests.daemon.run_client`).
"""

import io

from twisted.internet import defer, reactor

from keyexchanged import client
from keyexchanged.trust import PinnedKey
from tests.vectors import RAW

FINGERPRINT = RAW["server_fingerprint"]


@defer.inlineCallbacks
def connect_here(port, fingerprint=FINGERPRINT, **options):
    """``keyexchange connect 127.0.0.1:PORT --fingerprint FINGERPRINT``,
    in this process; fires with ``(stdout, stderr, exit code)`` as
    :func:`~tests.daemon.run_client` does.  ``options`` are
    :func:`~keyexchanged.client.run_connect`'s: ``send``, ``tickets`` (a
    :class:`~keyexchanged.tickets.TicketStore`, ``--ticket-cache``),
    ``require_forward_secrecy`` (``--allow-no-forward-secrecy``)..."""
    out, err = io.BytesIO(), io.StringIO()
    code = yield client.run_connect(
        reactor, "127.0.0.1", port, PinnedKey(fingerprint), output=out, errors=err, **options
    )
    return out.getvalue(), err.getvalue().encode(), code
