"""Keep glibc's malloc from handing memory back to the kernel after every
large write.

A session that moves data fast handles buffers of 64 KiB to a few MiB:
sealed records, and the send buffer Twisted builds by joining what is
waiting for the socket.  With glibc's defaults (a 128 KiB trim threshold,
an mmap threshold that starts at 128 KiB) freeing such a buffer often
shrinks the heap or unmaps it at once, and the next one faults every page
back in: ``make bench`` measured about as much kernel time as Python time in
a daemon sending 256 MiB, nearly all of it page faults (``perf``:
``exc_page_fault`` under ``memmove``; ``strace -c``: a ``brk`` or
``mmap``/``munmap`` pair per record).

:func:`tune` raises both thresholds to a few MiB, so buffers of that size
are reused from the heap and at most :data:`TRIM_THRESHOLD` bytes of free
memory stay with the process.  It changes nothing else, and nothing at all
where the C library is not glibc, or where the operator has set glibc's own
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` (theirs wins).
"""

import ctypes
import os
import sys

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "tune"]

#: Requests up to this size come from the heap instead of their own mmap.
MMAP_THRESHOLD = 2 * 1024 * 1024
#: Free memory at the top of the heap kept for reuse instead of returned.
TRIM_THRESHOLD = 4 * 1024 * 1024

# glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

_OPERATOR_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def tune(environ=None):
    """Raise glibc's mmap and trim thresholds; return True if they were set.

    False (and nothing changed) off Linux, on a C library without glibc's
    ``mallopt`` (musl has none that does this), or when ``environ`` (by
    default the process environment) sets either threshold already.
    """
    environ = os.environ if environ is None else environ
    if not sys.platform.startswith("linux"):
        return False
    if any(name in environ for name in _OPERATOR_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    if not hasattr(libc, "gnu_get_libc_version"):
        return False  # not glibc: musl's mallopt does nothing
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
