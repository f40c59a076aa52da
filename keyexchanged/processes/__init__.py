"""Several daemon processes on one listening socket (``--processes N|auto``).

One reactor is one core.  With ``--processes N`` (N > 1) the process that
twistd starts becomes a *parent* that serves no connection itself:

- it listens as the daemon always has (``tcp:``, ``systemd:`` socket
  activation, ``haproxy:tcp:``) and stops reading from the port at once, so
  that the kernel queues every connection for the children;
- it starts N children, each a fresh ``twistd keyexchange`` with the same
  command line (so the same config file and the same checks) and the
  listening socket as its fd 3, which it adopts (``adoptStreamPort``) and
  wraps as it would its own (the PROXY-protocol reader for ``haproxy:``).
  What makes it a child is in its environment: :data:`CHILD_VARIABLE`
  (its index), :data:`FD_VARIABLE`, and :data:`TICKET_KEYS_VARIABLE` when
  the parent keeps the ticket keys; nothing secret travels in argv or env.

Why one inherited socket rather than ``SO_REUSEPORT`` (one socket per
child): a systemd socket unit hands over one socket, which reuse-port
cannot split; a child that dies takes the connections queued on its own
socket with it, where on a shared one they wait for the others; and a
shared socket needs nothing of the address family or the endpoint kind.
The cost is that every idle child is woken for each connection and one
wins the accept(2) (the others get EAGAIN): cheap next to a handshake.

The children log JSON lines (``keyexchanged.logs.json_observer``) on
their standard output; the parent reads them back as events and logs
them as its own, with ``child_index`` and ``child_pid`` fields and
``[namespace#level, child I pid P]`` as their system, so that one log (text
or JSON, as ``--log-format`` says) holds every process, each line naming
its child.  A child says it is serving with an event carrying
:data:`READY_FIELD`.  Its standard input is a pipe from the parent, which
it watches: the parent gone (even by SIGKILL), the child stops.

Signals to the parent: SIGTERM and SIGINT stop every child (SIGTERM to
each, the grace period, then SIGKILL for one that outlives it by
:data:`KILL_AFTER` s; a second SIGTERM or SIGINT sends :data:`CUT_SIGNAL`,
which cuts the open sessions) and then the parent; SIGHUP checks the config again
in the parent (the same parse as a single daemon's reload), and only if it
is good sends SIGHUP to every child, which reloads as a single daemon
does.  A child that dies unexpectedly is logged and started again after a
delay (:class:`Backoff`).

Ticket keys: with ``ticket-keys`` set the children share that file already.
Without it, the parent writes random keys to a file in its private runtime
directory (:class:`SharedTicketKeys`) and every child uses it as if it were
``--ticket-keys``, so a ticket issued by one child resumes on another.

Metrics: each child keeps its numbers in files in the runtime directory
(prometheus_client's multiprocess mode; see keyexchanged/metrics.py); the
parent serves ``/metrics`` and adds them up.
"""

from keyexchanged.processes._child import adopt_listening_socket, watch_parent
from keyexchanged.processes._children import Backoff
from keyexchanged.processes._parent import ProcessesService
from keyexchanged.processes._settings import (
    CHILD_FD,
    CHILD_VARIABLE,
    CUT_SIGNAL,
    FD_VARIABLE,
    KILL_AFTER,
    MIN_ROTATION_INTERVAL,
    READY_FIELD,
    SHARED_TICKET_KEYS_CHECK,
    TICKET_KEYS_VARIABLE,
    ChildSettings,
    child_settings,
    resolve_processes,
    runtime_directory,
    workers_per_process,
)
from keyexchanged.processes._tickets import SharedTicketKeys

__all__ = [
    "CHILD_FD",
    "CHILD_VARIABLE",
    "CUT_SIGNAL",
    "FD_VARIABLE",
    "KILL_AFTER",
    "MIN_ROTATION_INTERVAL",
    "READY_FIELD",
    "SHARED_TICKET_KEYS_CHECK",
    "TICKET_KEYS_VARIABLE",
    "Backoff",
    "ChildSettings",
    "ProcessesService",
    "SharedTicketKeys",
    "adopt_listening_socket",
    "child_settings",
    "resolve_processes",
    "runtime_directory",
    "watch_parent",
    "workers_per_process",
]
