"""Daemon settings: one table, read from an INI file and the command line.

Every setting is described once in :data:`SETTINGS`; ``tap.Options`` builds
its command-line options from the same table, so the two can never drift.
Values are validated here, and a bad one is refused with the file, the line
and the reason.  Relative paths in a config file are taken relative to the
file's own directory, so a config file and the keys beside it can be moved
together.

Where the daemon looks for its config file: ``--config``, else
``$KEYEXCHANGED_CONFIG``, else ``/etc/keyexchanged/keyexchanged.conf``, else
it runs on built-in defaults.
"""

import configparser
import os
import re

from keyexchanged import rsa
from keyexchanged.errors import ConfigError

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "SECTION",
    "SETTINGS",
    "ConfigError",
    "Setting",
    "default_key_path",
    "find_config",
    "read_config",
]

SECTION = "keyexchanged"
DEFAULT_CONFIG_PATH = "/etc/keyexchanged/keyexchanged.conf"
DEFAULT_MESSAGE = "The secret message: hello from keyexchanged."


def _rule(reason, convert, ok):
    """A validator: ``convert`` the text, and take what ``ok`` accepts;
    anything else is ``ValueError("must be REASON")``.  The command line
    uses the same validators for its options (cli.py)."""

    def check(text):
        try:
            value = convert(text)
        except (ValueError, KeyError):
            raise ValueError(f"must be {reason}") from None
        if not ok(value):
            raise ValueError(f"must be {reason}")
        return value

    check.reason = reason
    return check


def ranged_int(low, high, reason):
    """A whole number from ``low`` to ``high``, described as ``reason``."""
    return _rule(reason, int, lambda value: low <= value <= high)


_INFINITY = float("inf")

positive_int = _rule("a whole number of at least 1", int, lambda value: value >= 1)
#: Not NaN (which compares false with everything), not infinity.
seconds = _rule("a number of seconds greater than 0", float, lambda v: 0 < v < _INFINITY)
grace = _rule("a number of seconds, 0 or more", float, lambda value: 0 <= value < _INFINITY)
workers = _rule(
    "auto, or a whole number of at least 0",
    lambda text: text if text == "auto" else int(text),
    lambda value: value == "auto" or value >= 0,
)
processes = _rule(
    "auto, or a whole number of at least 1",
    lambda text: text if text == "auto" else int(text),
    lambda value: value == "auto" or value >= 1,
)
ipv6_prefix = ranged_int(1, 128, "a prefix length from 1 to 128")
#: What rsa generates: the daemon's first key and its ephemeral keys, keygen, ca init.
key_bits = _rule(rsa.GENERATE_BITS_RULE, int, rsa.generate_bits_ok)
_ephemeral_interval = ranged_int(10, 86400, "a whole number of seconds from 10 to 86400")
_ticket_lifetime = ranged_int(0, 86400, "a whole number of seconds from 0 (off) to 86400")
_client_key_bits = ranged_int(2048, 8192, "a number of bits from 2048 to 8192")

_BOOLEANS = {
    **dict.fromkeys(("yes", "true", "on", "1"), True),
    **dict.fromkeys(("no", "false", "off", "0"), False),
}
boolean = _rule("yes or no", lambda text: _BOOLEANS[text.lower()], lambda value: True)

#: ML-KEM beside the ephemeral keys (KX/1 revision 3): offered (yes), off
#: (no), or required of every client (require).
POST_QUANTUM = ("yes", "no", "require")
_post_quantum = _rule("yes, no or require", str.lower, lambda value: value in POST_QUANTUM)
#: The record ciphers a server may name (KX/1 §13).
_record_cipher = _rule(
    "aes-256-ocb or aes-256-gcm", str.lower, lambda value: value in ("aes-256-ocb", "aes-256-gcm")
)


# A strports description: a type, then colon-separated arguments.  Twisted
# checks the rest when it listens; this catches the obvious typos early.
_ENDPOINT = re.compile(r"[a-zA-Z][a-zA-Z0-9]*(:.*)?")
endpoint = _rule("an endpoint description such as tcp:51424", str, _ENDPOINT.fullmatch)


#: Seconds a trusted proxy has to send its PROXY header.  It sends it at
#: once on connecting; a connection still without one is not a proxy's.
DEFAULT_HEADER_TIMEOUT = 3.0


def _trusted_proxies(text):
    # Imported here: proxyproto brings Twisted's PROXY parsers, which the
    # keyexchange command (its options use these validators) never needs.
    from keyexchanged.proxyproto import parse_trusted_proxies

    return parse_trusted_proxies(text)


def _text(text):
    return text


class Setting:
    """One setting: its name in the file and on the command line (``--name``)."""

    def __init__(self, name, default, coerce, help, path=False, reason=None):
        self.name = name
        self.default = default
        self.coerce = coerce
        self.help = help
        self.path = path
        #: The words that say what a value must be, for error messages.
        self.reason = reason

    @property
    def attribute(self):
        return self.name.replace("-", "_")


_application_name = _rule(
    "an application name (see --help-applications)",
    str,
    re.compile(r"[a-z][a-z0-9-]{0,31}").fullmatch,
)


SETTINGS = [
    Setting("listen", "tcp:51424", endpoint, "where to listen (a strports description)"),
    Setting(
        "application",
        "message",
        _application_name,
        "what each session runs (see --help-applications)",
    ),
    Setting(
        "private-key",
        None,
        _text,
        "the server's private key file; generated (0600) if missing",
        path=True,
    ),
    Setting(
        "next-private-key",
        None,
        _text,
        "the key that will replace private-key: announced, with proof, to clients that "
        "use known hosts (key rotation); never generated",
        path=True,
    ),
    Setting(
        "revoked-keys",
        None,
        _text,
        "keys this server no longer uses (fingerprints or PEM public keys), announced "
        "as revoked to clients that use known hosts",
        path=True,
    ),
    Setting(
        "private-key-passphrase-file",
        None,
        _text,
        "the passphrase of an encrypted private-key: the first line of this file "
        "(0600, or a pipe)",
        path=True,
    ),
    Setting("key-bits", 3072, key_bits, "size of a key generated on first start"),
    Setting(
        "message",
        DEFAULT_MESSAGE,
        _text,
        "the secret message the server sends.  On the command line it is in the "
        "process list, which every local user can read (ps): use --message-file, "
        "or message in the config file",
    ),
    Setting(
        "message-file",
        None,
        _text,
        "read the secret message from this file (the safe way to give it)",
        path=True,
    ),
    Setting(
        "certificate",
        None,
        _text,
        "certificate chain sent in HELLO (PEM, leaf first); its key must be the server's",
        path=True,
    ),
    Setting(
        "authorized-keys",
        None,
        _text,
        "client keys (fingerprints or PEM public keys) allowed to AUTH; AUTH then required",
        path=True,
    ),
    Setting(
        "handshake-timeout",
        10.0,
        seconds,
        "seconds from accept to a complete KEY before ERROR timeout",
    ),
    Setting("idle-timeout", 300.0, seconds, "seconds of silence before an idle session ends"),
    Setting("max-connections", 1024, positive_int, "concurrent connections, beyond: ERROR busy"),
    Setting(
        "max-handshakes",
        64,
        positive_int,
        "concurrent handshakes whose private-key work is under way, beyond: ERROR busy",
    ),
    Setting(
        "workers",
        "auto",
        workers,
        "processes doing the private-key work (auto: one per CPU; 0: in the reactor)",
    ),
    Setting(
        "processes",
        1,
        processes,
        "daemon processes serving one listening socket, each with its own reactor "
        "(auto: one per CPU).  max-connections, max-per-source and max-handshakes "
        "are limits per process; workers = auto gives each CPUs/N workers (at least 1)",
    ),
    Setting(
        "max-per-source",
        32,
        positive_int,
        "concurrent connections from one source, beyond: ERROR busy "
        "(an IPv4 address, or an IPv6 network: see --ipv6-source-prefix)",
    ),
    Setting(
        "ipv6-source-prefix",
        64,
        ipv6_prefix,
        "IPv6 clients count as one source per network of this many bits, for "
        "--max-per-source (1 to 128; IPv4 and IPv4-mapped clients: per address)",
    ),
    Setting(
        "grace-period", 10.0, grace, "seconds open sessions get to finish on SIGTERM or SIGINT"
    ),
    Setting(
        "forward-secrecy",
        True,
        boolean,
        "offer ephemeral keys (yes), or encrypt KEY to the long-term key (no: the "
        "original exercise's scheme, which --no-forward-secrecy also selects)",
    ),
    Setting(
        "ephemeral-interval",
        60,
        _ephemeral_interval,
        "seconds between new ephemeral keys (10 to 86400)",
    ),
    Setting("ephemeral-bits", 3072, key_bits, "size of the ephemeral keys (2048 to 8192)"),
    Setting(
        "post-quantum",
        "yes",
        _post_quantum,
        "offer an ML-KEM-768 key with each ephemeral key, so that recorded sessions "
        "stay secret unless RSA and ML-KEM are both broken (yes); no (which "
        "--no-post-quantum also selects); require: refuse clients without ML-KEM "
        "(--require-post-quantum)",
    ),
    Setting(
        "record-cipher",
        "aes-256-ocb",
        _record_cipher,
        "the record cipher HELLO names for clients that use ML-KEM (aes-256-ocb or "
        "aes-256-gcm); all other clients get aes-256-gcm",
    ),
    Setting(
        "ticket-lifetime",
        3600,
        _ticket_lifetime,
        "seconds a resumption ticket is valid; 0 turns resumption off",
    ),
    Setting(
        "ticket-keys",
        None,
        _text,
        "ticket-key file shared by daemons behind one address (keyexchange ticket-keys new)",
        path=True,
    ),
    Setting(
        "client-key-max-bits",
        4096,
        _client_key_bits,
        "largest client key accepted in AUTH (e must be 65537)",
    ),
    Setting(
        "trusted-proxies",
        None,
        _trusted_proxies,
        "with --listen haproxy:...: the networks (comma-separated) whose connections "
        "start with a PROXY header naming the client; others are dropped (no default: "
        "required with haproxy:)",
    ),
    Setting(
        "proxy-header-timeout",
        DEFAULT_HEADER_TIMEOUT,
        seconds,
        "with --listen haproxy:...: seconds a proxy has to send its PROXY header",
    ),
    Setting(
        "metrics",
        None,
        _text,
        "serve Prometheus metrics at /metrics on this endpoint (off by default; "
        "e.g. tcp:9464:interface=127.0.0.1)",
    ),
    Setting(
        "log-format",
        "text",
        _rule("text or json", str, lambda value: value in ("text", "json")),
        "text, or json: one JSON object per line, with one event per session end",
    ),
]

BY_NAME = {setting.name: setting for setting in SETTINGS}


def default_key_path(environ=None, uid=None):
    """Where a daemon with no config keeps its key, as sshd keeps host keys.

    ``$STATE_DIRECTORY`` when systemd provides one (``StateDirectory=``);
    else root: ``/var/lib/keyexchanged/server.key``; anyone else: under
    ``$XDG_DATA_HOME`` (else ``~/.local/share``), so that ``twistd -n
    keyexchange`` works for an unprivileged user with nothing configured.
    """
    environ = os.environ if environ is None else environ
    uid = os.getuid() if uid is None else uid
    state = environ.get("STATE_DIRECTORY")
    if state:
        # systemd may list several, separated by colons: the first is ours.
        return os.path.join(state.split(":")[0], "server.key")
    if uid == 0:
        return "/var/lib/keyexchanged/server.key"
    data = environ.get("XDG_DATA_HOME") or os.path.join(
        environ.get("HOME") or os.path.expanduser("~"), ".local", "share"
    )
    return os.path.join(data, "keyexchanged", "server.key")


def find_config(explicit=None, environ=None):
    """The config file to read, or ``None`` for built-in defaults."""
    environ = os.environ if environ is None else environ
    if explicit:
        return explicit
    if environ.get("KEYEXCHANGED_CONFIG"):
        return environ["KEYEXCHANGED_CONFIG"]
    if os.path.exists(DEFAULT_CONFIG_PATH):
        return DEFAULT_CONFIG_PATH
    return None


def coerce(setting, raw, where):
    """Turn the text of a setting into its value, or raise :class:`ConfigError`."""
    try:
        return setting.coerce(raw.strip())
    except ValueError as error:
        reason = str(error)
        if not reason or "invalid literal" in reason or "could not convert" in reason:
            # An application's own validator that let int() or float() speak.
            reason = "must be " + getattr(setting.coerce, "reason", "valid")
        raise ConfigError(f"{where}: {setting.name} = {raw.strip()!r}: {reason}") from None


def _line_of(lines, name):
    pattern = re.compile(r"\s*" + re.escape(name) + r"\s*[=:]")
    for number, line in enumerate(lines, 1):
        if pattern.match(line):
            return number
    return None


def read_config(path, settings=None):
    """Read an INI config file; return ``{setting name: value}`` for what it sets.

    ``settings`` is every :class:`Setting` the file may set (default
    :data:`SETTINGS`; the daemon adds its applications' own).  Unknown
    settings and sections are refused (a typo should not pass silently); so
    is a file that cannot be read or parsed.
    """
    by_name = BY_NAME if settings is None else {setting.name: setting for setting in settings}
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as error:
        hint = ""
        if isinstance(error, FileNotFoundError):
            hint = ": give a config file that exists (etc/keyexchanged.conf is an example)"
        raise ConfigError(f"{path}: cannot read config file: {error.strerror}{hint}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: config file is not UTF-8 text") from None
    parser = configparser.ConfigParser(interpolation=None, default_section="\0none")
    try:
        parser.read_string(text, source=path)
    except configparser.Error as error:
        message = str(error).replace("\n", " ")
        raise ConfigError(f"{path}: {message}") from None
    lines = text.splitlines()
    for section in parser.sections():
        if section != SECTION:
            raise ConfigError(f"{path}: unknown section [{section}] (expected [{SECTION}])")
    if not parser.has_section(SECTION):
        return {}
    base = os.path.dirname(os.path.abspath(path))
    values = {}
    for name, raw in parser.items(SECTION):
        line = _line_of(lines, name)
        where = f"{path}, line {line}" if line else path
        setting = by_name.get(name)
        if setting is None:
            raise ConfigError(f"{where}: unknown setting {name!r}")
        value = coerce(setting, raw, where)
        if setting.path and value:
            value = os.path.join(base, os.path.expanduser(value))
        values[name] = value
    return values
