"""A process's start: the cycle collector off while it imports, and what
the start made frozen before the process does its work.

``keyexchange connect`` or ``twistd keyexchange`` begins by importing some
550 modules (Twisted, pycryptodome, pyOpenSSL through Twisted's endpoints,
ours).  Every object made then (modules, classes, functions, tables) lives
as long as the process, and almost none of it is garbage: yet the cycle
collector runs dozens of times while they are made, each pass longer than
the last, and once more over all of them when the process exits.
Without those passes, a whole ``keyexchange connect`` session (start,
handshake, exit) takes about a third less CPU, and a daemon's start to its
stop a fifth less (``benchmarks/startup.py``, on a 2-core machine: 420 ->
288 ms and 429 -> 348 ms, medians of 12).

:func:`begin` turns the collector off for the imports; :func:`started`
moves everything made so far into the permanent generation
(:func:`gc.freeze`), which no later collection walks, the one at exit
included, and turns the collector on for the process's own work.  A
command that fails before that exits with the collector off, a moment
later.

:func:`started` comes before the process reads any secret (its private
key, a ticket, a message to send): a frozen object is never collected as
part of a cycle, and a key caught in one would stay in memory for the
process's life.  So only the imports are frozen: the modules, the classes
and the functions, which are the process's for its life anyway.
"""

import gc

#: A start :func:`begin` turned the collector off for, not yet over.
_starting = False


def begin() -> None:
    """A program's start: the collector off until :func:`started`.  Only
    the programs call it (``keyexchange``, twistd's plugin), not
    :func:`keyexchanged.cli.main` as a library function."""
    global _starting
    if gc.isenabled():
        gc.disable()
        _starting = True


def started() -> None:
    """The start is over: what it made is frozen, and the collector is on
    again.  Nothing to do when no :func:`begin` is pending."""
    global _starting
    if _starting:
        _starting = False
        gc.freeze()
        gc.enable()
