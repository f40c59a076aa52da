"""Endpoints the daemon listens on (KX/1's ``listen``, ``--metrics``):
checked before anything serves, and listened on at once.

:func:`check_endpoint` runs in ``postOptions``, before twistd daemonizes,
so that every mistake in a description, a port in use or an address that
is not ours is one line on the terminal and a non-zero exit, whether the
daemon runs in the foreground or not; it tries a TCP port with a socket it
closes again.  :func:`listen_now` is the one way the services listen: the
endpoints we use answer at once, and a failure raises there, before the
reactor runs, instead of leaving a process that serves nothing.
"""

import errno
import os
import re
import socket

from twisted.internet import defer
from twisted.internet.endpoints import serverFromString

from keyexchanged.errors import ConfigError

__all__ = ["CannotListen", "check_endpoint", "endpoint_from_string", "listen_now"]


class CannotListen(ConfigError):
    """The endpoint could not be had (a port in use, say); one line."""


#: Twisted's description fields, split at the colons it does not escape.
_FIELDS = re.compile(r"(?<!\\):")


def endpoint_from_string(reactor, description: str, what: str):
    """The server endpoint for ``description``, or :class:`ConfigError`
    naming ``what`` (``listen``, ``--metrics``) and saying what to write."""
    try:
        return serverFromString(reactor, description)
    except KeyError as error:
        # systemd:...:name=N with no socket of that name passed to us.
        raise ConfigError(
            f"{what} {description}: no socket named {error} was passed by systemd "
            "(LISTEN_FDNAMES): start the daemon from its .socket unit, or listen on "
            "tcp:PORT"
        ) from None
    except IndexError:
        raise ConfigError(
            f"{what} {description}: no socket of that index was passed by systemd "
            "(LISTEN_FDS): start the daemon from its .socket unit, or listen on tcp:PORT"
        ) from None
    except (ValueError, TypeError) as error:
        reason = str(error).rstrip(".")
        if "invalid literal for int()" in reason:
            reason = "the port must be a number"
        raise ConfigError(
            f"{what} {description}: not an endpoint ({reason}): write it as "
            "tcp:PORT or tcp:PORT:interface=ADDRESS"
        ) from None


def _tcp_address(description: str):
    """``(family, host, port)`` of a tcp: or tcp6: description Twisted has
    parsed already, else None."""
    kind, *fields = _FIELDS.split(description)
    if kind not in ("tcp", "tcp6"):
        return None
    positional = [field for field in fields if "=" not in field]
    named = dict(field.split("=", 1) for field in fields if "=" in field)
    port = named.get("port", positional[0] if positional else "0")
    host = named.get("interface", positional[2] if len(positional) > 2 else "")
    host = host.replace("\\:", ":")
    family = socket.AF_INET6 if kind == "tcp6" or ":" in host else socket.AF_INET
    return family, host, int(port)


def _check_unix_directory(description: str, what: str) -> None:
    """A unix: socket goes in a directory that must be there."""
    kind, *fields = _FIELDS.split(description)
    if kind != "unix" or not fields:
        return
    named = dict(field.split("=", 1) for field in fields if "=" in field)
    path = named.get("address") or next((f for f in fields if "=" not in f), "")
    directory = os.path.dirname(os.path.abspath(path.replace("\\:", ":")))
    if not os.path.isdir(directory):
        raise CannotListen(
            f"cannot listen on {description}: {directory} is not a directory: "
            "create it first (systemd: RuntimeDirectory=)"
        )


def check_endpoint(reactor, description: str, what: str) -> None:
    """Refuse, with one line, a description that is no endpoint or a TCP
    port this process cannot listen on now.  Raises :class:`ConfigError`."""
    endpoint_from_string(reactor, description, what)
    _check_unix_directory(description, what)
    address = _tcp_address(description)
    if address is None:
        return
    family, host, port = address
    if what == "--metrics":
        failed = f"{what} {description}: cannot listen"
    else:
        failed = f"cannot listen on {description}"
    if not 0 <= port <= 65535:
        raise ConfigError(
            f"{what} {description}: port {port} is not a port (0 to 65535): "
            "write it as tcp:PORT or tcp:PORT:interface=ADDRESS"
        )
    with socket.socket(family, socket.SOCK_STREAM) as trial:
        # As Twisted's own listening ports do: a port in TIME_WAIT is free.
        trial.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            trial.bind((host, port))
        except socket.gaierror:
            raise CannotListen(
                f"{failed}: {host} is not an address of this "
                "machine: give an address it has (127.0.0.1, 0.0.0.0, ::)"
            ) from None
        except OSError as error:
            hint = {
                "EADDRINUSE": "another process listens there: stop it, or choose another port",
                "EADDRNOTAVAIL": "no interface of this machine has that address",
                "EACCES": "a port below 1024 takes root (twistd drops privileges after)",
            }.get(_errno_name(error), "")
            reason = error.strerror or str(error)
            raise CannotListen(f"{failed}: {reason}" + (f": {hint}" if hint else "")) from None


def _errno_name(error: OSError) -> str:
    return errno.errorcode.get(error.errno or 0, "")


def listen_now(
    listen, failed_text: str, on_listening=None, on_late_failure=None, error=CannotListen
):
    """Call ``listen()`` (an endpoint's listen, say); returns its Deferred,
    with ``on_listening(port)`` called once listening.

    TCP, UNIX and systemd endpoints answer at once: a failure raises
    ``error("<failed_text>: <reason>")`` here, one line.  An endpoint that
    answers later hands its failure to ``on_late_failure`` instead.
    """
    listening = defer.maybeDeferred(listen)
    failed = []
    answered_now = True

    def cannot_listen(failure):
        if answered_now:
            failed.append(failure)  # raised below, before the reactor runs
            return None
        if on_late_failure is None:
            return failure
        return on_late_failure(failure)

    listening.addCallbacks(on_listening or (lambda port: port), cannot_listen)
    answered_now = False
    if failed:
        raise error(f"{failed_text}: {failed[0].getErrorMessage().rstrip('.')}")
    return listening
