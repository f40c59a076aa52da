"""What parent and children agree on: the environment variables that make
a ``twistd keyexchange`` a child, the fd, the signals and the intervals; and
the small decisions made from settings and the environment."""

import os
import re
import shutil
import signal
import stat
import tempfile

from keyexchanged.errors import ConfigError

#: The child's index (1 to N): its presence makes a ``twistd keyexchange`` a child.
CHILD_VARIABLE = "KEYEXCHANGED_CHILD"
#: The fd of the inherited listening socket.
FD_VARIABLE = "KEYEXCHANGED_LISTEN_FD"
#: The parent's ticket-key file, for children whose config names none.
TICKET_KEYS_VARIABLE = "KEYEXCHANGED_SHARED_TICKET_KEYS"
#: Where the child finds the listening socket: the first fd after stdio,
#: as systemd does it.
CHILD_FD = 3
#: The event field with which a child says it serves.
READY_FIELD = "keyexchanged_child_ready"
#: The parent speaks to systemd, the children never: and it is the parent
#: that adopted the socket systemd handed over.
SYSTEMD_VARIABLES = (
    "NOTIFY_SOCKET",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
)
#: The parent's second SIGTERM or SIGINT, to its children: cut the open
#: sessions now.  Not SIGTERM, which a child may get from systemd as well
#: as from its parent, for one and the same stop.
CUT_SIGNAL = signal.SIGUSR1
#: Seconds past the grace period after which a child still running on
#: stop is killed: it has had its grace and ignored it.
KILL_AFTER = 10.0
#: How often a child looks at the parent's ticket-key file: a second, so
#: that every child serves a rotated key within a second of the others.
SHARED_TICKET_KEYS_CHECK = 1.0
#: The parent's ticket keys rotate every ticket lifetime, but no more
#: often than this: each rotation takes the children a few seconds to see.
MIN_ROTATION_INTERVAL = 10.0


def resolve_processes(value):
    """``processes`` as a number: ``auto`` is one per CPU."""
    if value == "auto":
        return max(1, os.cpu_count() or 1)
    return value


def workers_per_process(cpus, processes):
    """``workers = auto`` with several processes: the CPUs shared out, at
    least one each, so that N processes do not start N × CPUs workers
    (each a Python interpreter of some 20 MB) to compete for CPUs."""
    return max(1, cpus // max(1, processes))


class ChildSettings:
    """What a child learns from its environment (see the package's docstring)."""

    def __init__(self, index, fd, ticket_keys=None):
        self.index = index
        self.fd = fd
        self.ticket_keys = ticket_keys


def child_settings(environ):
    """The :class:`ChildSettings` in ``environ``, or None for a daemon that
    is no child.  Raises :class:`ConfigError` for a broken one."""
    raw = environ.get(CHILD_VARIABLE)
    if not raw:
        return None
    try:
        index = int(raw)
        fd = int(environ.get(FD_VARIABLE, ""))
    except ValueError:
        raise ConfigError(
            f"${CHILD_VARIABLE} = {raw!r} needs a whole number, and ${FD_VARIABLE} "
            "the listening socket's fd: set by the parent process, never by hand"
        ) from None
    return ChildSettings(index, fd, environ.get(TICKET_KEYS_VARIABLE) or None)


def runtime_directory(environ):
    """A new private (0700) directory for the ticket-key file and the
    metrics files: under ``$RUNTIME_DIRECTORY`` (systemd's
    ``RuntimeDirectory=``, which systemd empties even after a SIGKILL),
    else the system's temporary directory.  Its name carries the parent's
    pid; those left by a parent that died without cleaning up (SIGKILL,
    a crash) are removed first: they hold ticket keys."""
    base = (environ.get("RUNTIME_DIRECTORY") or "").split(":")[0] or tempfile.gettempdir()
    remove_stale_runtime_directories(base)
    return tempfile.mkdtemp(prefix=f"keyexchanged-{os.getpid()}-", dir=base)


_RUNTIME_NAME = re.compile(r"keyexchanged-(\d+)-[^/]+")


def remove_stale_runtime_directories(base):
    """Remove from ``base`` the runtime directories of ours whose parent
    process is gone: only real directories (no links), owned by this user,
    named with the pid of a process that no longer exists."""
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        match = _RUNTIME_NAME.fullmatch(name)
        if match is None:
            continue
        path = os.path.join(base, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            continue
        if _alive(int(match.group(1))):
            continue
        shutil.rmtree(path, ignore_errors=True)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's: alive
    return True
