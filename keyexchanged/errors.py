"""What can go wrong that a user can fix, under one root; no imports of our own.

Every failure a user can cause with a file, a setting or a server key is a
:class:`KeyexchangedError` whose message names the file (and line) and says
why, with no secret in it.  A front end (``keyexchange``, ``twistd
keyexchange``) catches the root once and prints that one line; anything
else is a bug and keeps its traceback.

The classes live here, and not beside the code that raises them, so that
catching one costs no import: the Twisted adapter needs
:class:`UntrustedKey`, and must not import pyOpenSSL, cryptography and
service-identity (the certificate checks) for it.  The modules that raise
them export them under their old names too (``keys.KeyFileError``...).
"""

__all__ = [
    "EXIT_ERROR",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_STATUS_TABLE",
    "EXIT_TRUNCATED",
    "EXIT_UNTRUSTED",
    "EXIT_USAGE",
    "AuthorizedKeysError",
    "CertificateFileError",
    "ConfigError",
    "KeyFileError",
    "KeyFileExistsError",
    "KeyFormatError",
    "KeyexchangedError",
    "KnownHostsError",
    "StaleTicket",
    "TicketKeyFileError",
    "UnknownApplication",
    "UntrustedKey",
]

# -- exit statuses ------------------------------------------------------------------
# What the ``keyexchange`` command exits with; scripts tell a refused key
# from a dropped connection by them (docs in cli.py and client.py).

EXIT_OK = 0
EXIT_ERROR = 1  #: a KeyexchangedError: a file, a setting
EXIT_USAGE = 2  #: as argparse
EXIT_UNTRUSTED = 3  #: connect: the server's key was not trusted; nothing was sent
EXIT_FAILED = 4  #: connect: connection or protocol failure
EXIT_TRUNCATED = 5  #: connect: the connection closed before the server's END
EXIT_INTERRUPTED = 130  #: as a shell reports SIGINT

#: The exit statuses of ``keyexchange`` and ``twistd keyexchange``, as
#: every ``--help`` ends and the README shows them.
EXIT_STATUS_TABLE = """\
exit status (keyexchange and twistd keyexchange):
  0    success: a clean END (connect); a stop on SIGTERM or SIGINT (the daemon)
  1    an error you can fix, told in one line: a file, a setting, a port
  2    usage: an unknown option, an argument missing or malformed
  3    connect: the server's key is not trusted, or it offers no forward
       secrecy or no ML-KEM (nothing was sent)
  4    connect: connection or protocol failure, or the server silent for
       --idle-timeout
  5    connect: truncated (the connection closed before the server's END)
  130  keyexchange: interrupted (^C)
"""


class KeyexchangedError(Exception):
    """The root: a failure a user can fix, told in one line (``str()``)."""


# -- trust ------------------------------------------------------------------------


class UntrustedKey(KeyexchangedError):
    """The server's key failed a trust check.

    ``str()`` of it is the short detail that goes to the server in ``ERROR
    untrusted-key`` and ends the user's error line: public text, which check
    failed.  ``explanation``, when there is one, is for the user's eyes only
    (it may name local files), printed before that line.
    """

    def __init__(self, detail, explanation=None):
        super().__init__(detail)
        self.explanation = explanation


class KnownHostsError(KeyexchangedError):
    """The known-hosts file cannot be read, parsed or written; the message
    names the file (and the line)."""


class AuthorizedKeysError(KeyexchangedError):
    """An authorized-keys file cannot be used; the message names the line."""


class CertificateFileError(KeyexchangedError):
    """A certificate file cannot be used; the message names the file and why."""


# -- keys ---------------------------------------------------------------------------


class KeyFileError(KeyexchangedError):
    """A key file cannot be read or written; the message names the file."""


class KeyFileExistsError(KeyFileError):
    """The file to write already exists, and overwriting was not asked for."""


class KeyFormatError(KeyexchangedError, ValueError):
    """Bytes that do not hold a usable RSA key (or the passphrase is wrong)."""


# -- tickets ------------------------------------------------------------------------


class StaleTicket(KeyexchangedError):
    """A ticket that cannot resume a session; the reason is for logs and
    for ERROR stale-ticket (it never names a key or a secret)."""


class TicketKeyFileError(KeyexchangedError, ValueError):
    """A ticket-key file (or ticket cache) that cannot be used, with file and line."""


# -- the daemon's settings ------------------------------------------------------------


class ConfigError(KeyexchangedError, ValueError):
    """A setting that cannot be used; the message says where and why."""


class UnknownApplication(KeyexchangedError, LookupError):
    """No installed application has that name."""
