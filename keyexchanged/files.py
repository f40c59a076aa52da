"""Files: read with a bound, written atomically.  Imports only errors.

Every file keyexchanged reads (a key, a certificate chain, the known hosts,
a passphrase, a message) is read through :func:`read_file`, with a bound
that says how large such a file can honestly be: a wrong path (a log file,
a disk image) costs a clear error, not the memory.  Key files, which must
be checked for who owns them, are read by :func:`read_regular_file`, which
returns the status of the very file it read and refuses anything that is
not a regular file.

Every file keyexchanged writes (keys, certificates, the known hosts,
tickets) is written by :func:`write_atomically`: a temporary file in the
same directory, flushed to disk, then renamed over the target (or, when an
existing file must not be replaced, hard-linked, which fails if one
appeared meanwhile), so a reader sees the old file, the complete new one,
or nothing.
"""

import errno
import os
import secrets
import stat
from contextlib import suppress

from keyexchanged.errors import KeyFileError, KeyFileExistsError

__all__ = [
    "PRIVATE_FILE_MODE",
    "PUBLIC_FILE_MODE",
    "read_file",
    "read_regular_file",
    "write_atomically",
]

PRIVATE_FILE_MODE = 0o600
PUBLIC_FILE_MODE = 0o644

#: What link() says on file systems that have no hard links (FAT, some FUSE).
_NO_HARD_LINKS = frozenset(
    {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK}
)


# --- Reading ---------------------------------------------------------------------


def _read_at_most(fd, limit, line=False):
    """Up to ``limit + 1`` bytes of ``fd`` (one more than allowed says "too
    large"); with ``line``, up to the end of the first line only."""
    chunks = []
    size = 0
    while size <= limit:
        chunk = os.read(fd, limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if line and b"\n" in chunk:
            # A terminal (/dev/stdin) gives a line a read: stop there, not
            # at an end of file the user would have to type.
            break
    data = b"".join(chunks)
    if line and b"\n" in data:
        data = data[: data.index(b"\n") + 1]
    return data


def _read(name, limit, error, cannot, flags, regular=False, missing_ok=False, line=False):
    try:
        fd = os.open(name, flags | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError as exc:
        if missing_ok:
            return None, None
        raise error(f"{name}: {cannot}: {exc.strerror or exc}") from None
    except OSError as exc:
        raise error(f"{name}: {cannot}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if regular and not stat.S_ISREG(st.st_mode):
            raise error(f"{name}: not a regular file")
        data = _read_at_most(fd, limit, line)
    except OSError as exc:
        raise error(f"{name}: {cannot}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    return data, st


def read_file(path, limit, error, too_large, cannot="cannot read", missing_ok=False, line=False):
    """The content of the file ``path``, at most ``limit`` bytes.

    A file that cannot be read raises ``error("NAME: CANNOT: reason")``;
    one larger than ``limit`` raises ``error("NAME: TOO_LARGE")``.  With
    ``missing_ok``, a file that does not exist gives ``None``.  With
    ``line``, only the first line is read, line ending included, and it is
    what must fit in ``limit`` (a passphrase file).  A pipe is read as a
    file is (``--passphrase-file <(...)``).
    """
    name = os.fsdecode(path)
    data, _ = _read(name, limit, error, cannot, os.O_RDONLY, missing_ok=missing_ok, line=line)
    if data is not None and len(data) > limit:
        raise error(f"{name}: {too_large}")
    return data


def read_regular_file(path, limit, error, too_large):
    """``(content, status)`` of the regular file ``path``: the status of the
    very file read, for a caller that checks its owner and mode.

    Anything but a regular file is refused, and a FIFO cannot hang us (it
    is opened without blocking).  Errors as for :func:`read_file`.
    """
    name = os.fsdecode(path)
    # O_NONBLOCK: a FIFO must not hang us (regular files ignore the flag).
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
    data, st = _read(name, limit, error, "cannot read", flags, regular=True)
    if len(data) > limit:
        raise error(f"{name}: {too_large}")
    return data, st


# --- Writing ---------------------------------------------------------------------


def _create_temp(directory, base):
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        # Hidden and random: no clash with a concurrent writer, and nothing
        # a reader could mistake for the file itself.
        temp = os.path.join(directory, f".{base}.{secrets.token_hex(8)}.tmp")
        try:
            # Created 0600 even for a public file: nobody sees it half written.
            return os.open(temp, flags, PRIVATE_FILE_MODE), temp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "cannot create a temporary file", directory)


def _fsync_directory(directory):
    """Make the rename durable; best effort, as not every system allows it."""
    with suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _install(temp, name, force):
    """Put the complete file ``temp`` in place at ``name``."""
    if force:
        os.replace(temp, name)
        return
    try:
        # link() fails if the target exists, where rename() would replace it:
        # no window for a file created after our check to be clobbered.
        os.link(temp, name)
    except FileExistsError:
        raise KeyFileExistsError(f"{name}: already exists; not overwritten") from None
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        # A file system without hard links: check, then rename.
        if os.path.lexists(name):
            raise KeyFileExistsError(f"{name}: already exists; not overwritten") from None
        os.replace(temp, name)
        return
    os.unlink(temp)


def write_atomically(path, data, mode, force):
    """Write ``data`` to ``path`` with exactly ``mode``, atomically, and over
    an existing file only if ``force``.  Raises :class:`KeyFileError`
    (:class:`KeyFileExistsError` for a file that exists), naming the file."""
    name = os.fsdecode(path)
    if not force and os.path.lexists(name):
        raise KeyFileExistsError(f"{name}: already exists; not overwritten")
    directory = os.path.dirname(name) or os.curdir
    fd = -1
    temp = None
    try:
        fd, temp = _create_temp(directory, os.path.basename(name))
        # The mode exactly, whatever the umask (which could make it 0600 or 0640).
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        _install(temp, name, force)
        temp = None
        _fsync_directory(directory)
    except OSError as exc:
        raise KeyFileError(f"{name}: cannot write: {exc.strerror or exc}") from None
    finally:
        # Whatever went wrong (even KeyboardInterrupt), leave nothing behind.
        if fd >= 0:
            with suppress(OSError):
                os.close(fd)
        if temp is not None:
            with suppress(OSError):
                os.unlink(temp)
