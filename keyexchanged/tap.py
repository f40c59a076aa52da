"""``twistd keyexchange``: options, settings, and the service made from them.

Settings come from three places, later ones winning: built-in defaults, the
config file (``--config``, else ``$KEYEXCHANGED_CONFIG``, else
``/etc/keyexchanged/keyexchanged.conf``), and the command line.  Everything
is checked in :meth:`Options.postOptions`, before twistd daemonizes, so a bad
value or an unusable key file is one clear line and a non-zero exit.

On first start with no key the daemon generates one (0600) where the
settings say and serves it, as sshd does with its host keys.

:func:`makeService` builds the service from checked options; the service
itself (listening, signals, reload) is in :mod:`keyexchanged.service`.
"""

import os
import sys
from typing import ClassVar

from twisted.application import service
from twisted.logger import Logger
from twisted.python import usage

# keyexchanged.ca, .trust and .metrics are imported where they are used,
# by a daemon whose settings ask for them: every start pays for its imports.
from keyexchanged import (
    allocator,
    ephemeral,
    files,
    keys,
    listening,
    logs,
    processes,
    proxyproto,
    rotation,
    tickets,
)
from keyexchanged.applications import find_applications, get_application
from keyexchanged.config import (
    SETTINGS,
    ConfigError,
    coerce,
    default_key_path,
    find_config,
    read_config,
)
from keyexchanged.errors import EXIT_STATUS_TABLE, KeyexchangedError
from keyexchanged.framing import MAX_PAYLOAD
from keyexchanged.handshake import ServerIdentity
from keyexchanged.protocol import SecureChannelFactory
from keyexchanged.service import KeyexchangeService
from keyexchanged.workers import InlineWork, WorkerPool, default_workers

__all__ = [
    "CommandLineOptions",
    "KeyexchangeService",
    "Options",
    "SettingError",
    "load_or_create_key",
    "makeService",
]


#: Bytes of KX/1's HELLO limit (64 KiB, framing.py) kept free for the
#: ``ephemeral`` member (spec §10.1), which every HELLO carries with forward
#: secrecy on: as RSA-8192 (the largest --ephemeral-bits) with the long-term
#: key's signature it is about 2.8 KiB in the JSON; and for the ``mlkem768``
#: and ``record`` members (§12.1): 1 184 key bytes and another signature,
#: about 3 KiB more.  The same room is kept with either off, so turning it
#: on never breaks a working chain.
HELLO_RESERVE = 8192

#: The largest HELLO the daemon agrees to send.
HELLO_LIMIT = MAX_PAYLOAD["HELLO"] - HELLO_RESERVE

#: A --message-file larger than this is a wrong path, not a message.
MAX_MESSAGE_FILE = 16 * 1024 * 1024


def settings_with_applications(applications):
    """The daemon's settings, then each application's own (first name wins)."""
    settings = list(SETTINGS)
    names = {setting.name for setting in SETTINGS}
    for name in sorted(applications):
        for setting in getattr(applications[name], "settings", ()):
            if setting.name not in names:
                names.add(setting.name)
                settings.append(setting)
    return settings


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Serve KX/1: hand the server's RSA public key to every client, receive "
        "a session secret under it (with an ML-KEM-768 secret beside it), then talk "
        "AES-256-OCB or AES-256-GCM.  Settings come from "
        "the config file and are overridden by these options."
    )
    # twistd reads options from the class, so the installed applications
    # are found once, when the plugin is loaded.
    applications = find_applications()
    all_settings = settings_with_applications(applications)
    optFlags: ClassVar[list] = [
        [
            "no-forward-secrecy",
            None,
            "no ephemeral keys: KEY under the long-term key (the original exercise's "
            "scheme; clients refuse it unless allowed)",
        ],
        [
            "no-post-quantum",
            None,
            "offer no ML-KEM key: sessions are as secret as RSA alone, and recorded "
            "ones open to whoever factors their ephemeral key later (revision-3 "
            "clients refuse it unless allowed)",
        ],
        [
            "require-post-quantum",
            None,
            "refuse clients that do not use ML-KEM (KX/1 revision 2 clients) with "
            "ERROR no-post-quantum",
        ],
    ]
    optParameters = [
        [
            "config",
            "c",
            None,
            "config file [default: $KEYEXCHANGED_CONFIG, else "
            "/etc/keyexchanged/keyexchanged.conf, else built-in defaults]",
        ]
    ] + [
        [setting.name, None, None, f"{setting.help} [default: {setting.default}]"]
        for setting in all_settings
    ]

    def __init__(self, environ=None):
        super().__init__()
        self.environ = os.environ if environ is None else environ
        self.settings = None
        self.identity = None
        self.generated_key = False
        #: Logged once the service starts: the certificate expires soon, say.
        self.warnings = []
        #: Fingerprints allowed to AUTH, or None when AUTH is not required.
        self.authorized_keys = None
        self.application = None
        #: The application's factory, made (and so checked) on ``reactor``.
        self.wrapped_factory = None
        self.reactor = None
        #: The ticket keys from ``ticket-keys``, or None (random keys).
        self.ticket_keys = None
        #: How often the ticket-key file is read again when it changed.
        self.ticket_keys_check = 30.0
        #: A child of ``--processes N``: what its parent gave it, else None.
        self.child = None

    def getUsage(self, width=None):
        # After the options, as the keyexchange command's --help ends.
        return super().getUsage(width) + "\n" + EXIT_STATUS_TABLE

    def opt_help_applications(self):
        """List the installed applications (for --application) and exit."""
        width = max((len(name) for name in self.applications), default=0)
        print("Applications (twistd keyexchange --application NAME):")
        for name in sorted(self.applications):
            application = self.applications[name]
            print(f"  {name.ljust(width)}  {application.description}")
            for setting in getattr(application, "settings", ()):
                print(f"  {''.ljust(width)}    --{setting.name}: {setting.help}")
        sys.exit(0)

    def parseOptions(self, options=None):
        # Kept for a reload (SIGHUP), which reads the same options again.
        self.argv = list(sys.argv[1:] if options is None else options)
        super().parseOptions(options)

    argv = ()

    #: The first start, not a reload: a missing key is generated (on a
    #: reload it is refused).
    first_start = True

    #: Try the ports (listen, metrics) before serving: for twistd's start
    #: (:class:`CommandLineOptions`), not on a reload, where the daemon
    #: holds them itself, nor for options made in a test.
    check_ports = False

    def reread(self):
        """New options from the same command line and environment: the
        config file and every file it names read and checked again, as at
        start.  For a reload (SIGHUP), a single daemon's or the parent's of
        ``--processes N``.  Raises :class:`usage.UsageError`."""
        new = Options(environ=self.environ)
        new.first_start = False
        new.parseOptions(self.argv)
        return new

    def postOptions(self):
        try:
            self._check()
        except KeyexchangedError as error:
            raise SettingError(str(error)) from None

    def _check(self):
        """Everything, before twistd daemonizes; raises KeyexchangedError."""
        self.settings = self._collect()
        if self["no-forward-secrecy"]:
            self.settings["forward-secrecy"] = False
        self._check_post_quantum()
        try:
            inner, _ = proxyproto.parse_listen(
                self.settings["listen"], self.settings["trusted-proxies"]
            )
        except ValueError as error:
            raise ConfigError(f"listen: {error}") from None
        from twisted.internet import reactor

        self.child = processes.child_settings(self.environ)
        # What to listen on, checked before anything serves and before
        # twistd daemonizes, so that a mistake is one line on the terminal:
        # the descriptions now, the ports last (after a key generation,
        # which takes seconds, so that another process has no time to take
        # a port between its check and the daemon's listening).
        endpoints = []
        if self.check_ports and self.child is None:
            endpoints.append((inner, "listen"))
            if self.settings["metrics"] is not None:
                endpoints.append((self.settings["metrics"], "--metrics"))
        for description, what in endpoints:
            listening.endpoint_from_string(reactor, description, what)
        self.settings["message"] = self._message()
        if self["message"] is not None:
            self.warnings.append(
                "--message is in the process list, which every local user can read: "
                "give the message with --message-file, or in the config file"
            )
        self.application = get_application(self.settings["application"], self.applications)
        # Made now, so that an application's bad settings stop twistd with
        # a usage error before it daemonizes; makeService serves it.
        self.reactor = reactor
        try:
            self.wrapped_factory = self.application.makeFactory(self.settings, reactor)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        key_path = self.settings["private-key"] or default_key_path(self.environ)
        self.settings["private-key"] = key_path
        private_key = self._private_key(key_path)
        self.identity = ServerIdentity(
            private_key,
            self._certificates(private_key),
            self._announcement(private_key),
            record_cipher=self.settings["record-cipher"],
        )
        self._check_hello_size()
        if self.child is not None and self.child.ticket_keys and self.settings["ticket-lifetime"]:
            if self.settings["ticket-keys"] is None:
                # The parent's file, as if it were --ticket-keys: a ticket
                # one child issues opens on every other.
                self.settings["ticket-keys"] = self.child.ticket_keys
                self.ticket_keys_check = processes.SHARED_TICKET_KEYS_CHECK
        path = self.settings["ticket-keys"]
        if path is not None:
            self.ticket_keys = tickets.load_ticket_keys(path)
        path = self.settings["authorized-keys"]
        if path is not None:
            from keyexchanged import trust  # with authorized-keys only

            self.authorized_keys = trust.load_authorized_keys(path)
        for description, what in endpoints:
            listening.check_endpoint(reactor, description, what)

    def _private_key(self, path):
        """The server's key.  Generated only at the first start (of a
        single daemon, or of the parent of ``--processes N``): a reload or a
        child that finds no key file is refused, for a new key would fail
        every client pinned to the one served."""
        passphrase = None
        passphrase_file = self.settings["private-key-passphrase-file"]
        if passphrase_file is not None:
            passphrase = keys.read_passphrase_file(passphrase_file)
        if not os.path.exists(path):
            # A child of --processes N starts after its parent made or
            # read the key: one that finds none (a child restarted after
            # the file went) must not serve an identity of its own.
            if not self.first_start or self.child is not None:
                raise keys.KeyFileError(
                    f"{path}: no such key file: a reload never makes a new key (every "
                    "client pinned to the one served would fail): put the key back"
                )
            if passphrase is not None:
                raise keys.KeyFileError(
                    f"{path}: no such key file (with private-key-passphrase-file set, "
                    "no key is generated): give the encrypted key's path"
                )
        try:
            if passphrase is not None:
                return keys.load_private_key(path, passphrase)
            private_key, self.generated_key = load_or_create_key(path, self.settings["key-bits"])
        except keys.KeyFileError as error:
            if passphrase is None and "a passphrase is required" in str(error):
                raise keys.KeyFileError(
                    f"{path}: the private key is encrypted: give its passphrase in a file "
                    "with --private-key-passphrase-file FILE (or private-key-passphrase-file "
                    "in the config file)"
                ) from None
            raise
        return private_key

    def _announcement(self, private_key):
        """The key rotation announcement (§14), or None: the next key and
        the revoked keys, each refused when it names a key we serve.  A
        reload with a bad one is refused as a whole, like any bad file."""
        next_path = self.settings["next-private-key"]
        revoked_path = self.settings["revoked-keys"]
        if next_path is None and revoked_path is None:
            return None
        next_key = None if next_path is None else rotation.load_next_key(next_path, private_key)
        revoked = ()
        if revoked_path is not None:
            from keyexchanged import trust  # with revoked-keys only

            revoked = rotation.check_revoked(
                trust.load_authorized_keys(revoked_path), keys.fingerprint(private_key), next_key
            )
        if next_key is None and not revoked:
            return None
        return rotation.ServerAnnouncement(next_key, revoked)

    def _certificates(self, private_key):
        """The chain to send in HELLO (DER), refused unless it is for our key."""
        path = self.settings["certificate"]
        if path is None:
            return ()
        from keyexchanged import ca  # X.509, for a daemon with a certificate only

        chain, warnings = ca.load_server_chain(path, private_key)
        self.warnings.extend(warnings)
        return chain

    def _check_post_quantum(self):
        """--no-post-quantum and --require-post-quantum, against the settings
        they need: ML-KEM keys come with ephemeral keys, and are signed for
        at most 30 minutes (KX/1 §12.2)."""
        if self["no-post-quantum"] and self["require-post-quantum"]:
            raise ConfigError("--no-post-quantum and --require-post-quantum contradict each other")
        if self["no-post-quantum"]:
            self.settings["post-quantum"] = "no"
        if self["require-post-quantum"]:
            self.settings["post-quantum"] = "require"
        mode = self.settings["post-quantum"]
        if mode == "no":
            self.warnings.append(
                "post-quantum is OFF (--no-post-quantum): sessions are as secret as RSA "
                "alone, and a recorded session opens to whoever factors its ephemeral "
                "key later; revision-3 clients refuse this server unless allowed"
            )
            return
        if not self.settings["forward-secrecy"]:
            if mode == "require":
                raise ConfigError(
                    "--require-post-quantum needs forward secrecy: ML-KEM keys come "
                    "with the ephemeral keys"
                )
            self.settings["post-quantum"] = "no"
            self.warnings.append(
                "post-quantum is OFF too: ML-KEM keys come with the ephemeral keys, "
                "which --no-forward-secrecy turns off"
            )
            return
        longest = ephemeral.max_interval(self.settings["handshake-timeout"], post_quantum=True)
        if self.settings["ephemeral-interval"] > longest:
            raise ConfigError(
                f"ephemeral-interval: at most {longest} s with post-quantum on (keys are "
                f"signed for at most {ephemeral.MAX_SIGNED_AHEAD_POST_QUANTUM} s, KX/1 §12.2); "
                "shorten it, or turn post-quantum off"
            )

    def _check_hello_size(self):
        """Refuse a HELLO that clients would refuse (a long chain, say):
        accepted, it would break every connection instead of the start."""
        # The nonce is 32 bytes on every connection; its value does not
        # change the size.
        size = len(self.identity.hello_payload(b"\0" * 32))
        if size > HELLO_LIMIT:
            where = self.settings["certificate"] or self.settings["private-key"]
            raise ConfigError(
                f"{where}: HELLO would be {size} bytes, over the limit of {HELLO_LIMIT} "
                f"(KX/1 allows {MAX_PAYLOAD['HELLO']}, less {HELLO_RESERVE} kept for the "
                "ephemeral keys): send fewer certificates (clients hold the root "
                "already)"
            )

    def _collect(self):
        values = {setting.name: setting.default for setting in self.all_settings}
        path = find_config(self["config"], self.environ)
        self.config_path = path
        if path is not None:
            values.update(read_config(path, self.all_settings))
        for setting in self.all_settings:
            raw = self[setting.name]
            if raw is not None:
                value = coerce(setting, raw, "--" + setting.name)
                if setting.path:
                    value = os.path.abspath(value)
                values[setting.name] = value
        return values

    def _message(self):
        path = self.settings["message-file"]
        if path is None:
            return self.settings["message"].encode("utf-8")
        # The message travels in records; one that cannot fit in memory
        # comfortably is a mistake, not a message.
        return files.read_file(
            path,
            MAX_MESSAGE_FILE,
            ConfigError,
            "message file is larger than 16 MiB",
            cannot="cannot read message file",
        )


class SettingError(usage.UsageError):
    """A setting, a file or a port that cannot be used (exit status 1);
    any other usage error is a mistake on the command line (status 2)."""


class CommandLineOptions(Options):
    """What twistd parses (the plugin's options): a mistake is one line on
    standard error and an exit status, not twistd's usage text with the
    mistake at its end; the ports are tried before anything serves.  A
    reload reads the same :class:`Options` and keeps every error to log it."""

    check_ports = True

    def parseOptions(self, options=None):
        try:
            super().parseOptions(options)
        except SettingError as error:
            self._refuse(f"{error}", 1)
        except usage.UsageError as error:
            self._refuse(f"{error}: see twistd keyexchange --help", 2)

    @staticmethod
    def _refuse(line, status):
        sys.stderr.write(f"twistd keyexchange: {line}\n")
        sys.stderr.flush()
        raise SystemExit(status)


def load_or_create_key(path, bits, report=None):
    """Load the server key at ``path``, or generate and save one if missing.

    Returns ``(private_key, generated)``.  Raises
    :class:`keyexchanged.keys.KeyFileError` for a key that exists but cannot
    be used (including one readable by others).
    """
    if os.path.exists(path):
        return keys.load_private_key(path), False
    report = report or (lambda text: print(text, file=sys.stderr))
    report(f"keyexchanged: no key at {path}; generating a {bits}-bit RSA key")
    directory = os.path.dirname(path)
    if directory and os.path.exists(directory) and not os.path.isdir(directory):
        raise keys.KeyFileError(
            f"{path}: cannot create the key directory: {directory}: Not a directory"
        )
    try:
        if directory:
            os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as error:
        raise keys.KeyFileError(
            f"{path}: cannot create the key directory: {error.strerror}"
        ) from None
    return keys.create_key_pair(path, bits, replace_public=True), True


def makeService(options, reactor=None):
    settings = options.settings
    reactor = options.reactor if reactor is None else reactor
    count = processes.resolve_processes(settings.get("processes", 1))
    child = getattr(options, "child", None)
    if count > 1 and child is None:
        return make_parent_service(options, count, reactor)
    # This process serves sessions, which move data fast: see allocator.py.
    allocator.tune()
    wrapped = options.wrapped_factory
    if reactor is not options.reactor:
        # A reactor of the caller's (a test's Clock): the application must
        # run on it, not on the one its factory was made and checked with.
        wrapped = options.application.makeFactory(settings, reactor)
    log = Logger(namespace=__name__)
    workers = settings["workers"]
    if workers == "auto":
        workers = processes.workers_per_process(default_workers(), count)
    work = WorkerPool(workers, reactor) if workers else None
    timers = []
    ephemeral_keys = None
    if settings["forward-secrecy"]:
        ephemeral_keys = ephemeral.EphemeralKeys(
            options.identity.private_key,
            work or InlineWork(reactor),
            reactor,
            interval=settings["ephemeral-interval"],
            bits=settings["ephemeral-bits"],
            handshake_timeout=settings["handshake-timeout"],
            post_quantum=settings["post-quantum"] != "no",
        )
        # Before listening: every HELLO has a key to offer.
        ephemeral_keys.prime()
        timers.append(ephemeral_keys)
        log.info(
            "forward secrecy: a new {bits}-bit ephemeral key every {interval} s",
            bits=settings["ephemeral-bits"],
            interval=settings["ephemeral-interval"],
        )
        if settings["post-quantum"] != "no":
            log.info(
                "post-quantum: an ML-KEM-768 key with each ephemeral key; records in "
                "{cipher} for clients that use it{required}",
                cipher=settings["record-cipher"],
                required=", and no other client"
                if settings["post-quantum"] == "require"
                else " (KX/1 revision 2 clients: aes-256-gcm)",
            )
    else:
        log.warn(
            "forward secrecy is OFF: every session's secret is encrypted to the "
            "long-term key, and whoever steals it later can decrypt recorded sessions"
        )
    limits = logs.LimitWarnings(reactor)
    timers.append(limits)
    issuer = None
    if settings["ticket-lifetime"]:
        issuer = tickets.TicketIssuer(
            options.ticket_keys or tickets.TicketKeys.random(),
            lifetime=settings["ticket-lifetime"],
            clock=reactor.seconds,
        )
        timers.append(
            tickets.TicketKeyRotation(
                issuer,
                reactor,
                path=settings["ticket-keys"],
                check_interval=getattr(options, "ticket_keys_check", 30.0),
            )
        )
        log.info(
            "resumption: tickets valid {lifetime} s, keys {source}",
            lifetime=settings["ticket-lifetime"],
            source=settings["ticket-keys"] or "random, rotated every lifetime",
        )
    counted = None
    if settings["metrics"] is not None:
        from keyexchanged import metrics  # prometheus_client and twisted.web: --metrics only

        counted = metrics.Metrics()
    factory = SecureChannelFactory(
        wrapped,
        options.identity,
        reactor=reactor,
        handshake_timeout=settings["handshake-timeout"],
        idle_timeout=settings["idle-timeout"],
        max_connections=settings["max-connections"],
        max_per_source=settings["max-per-source"],
        ipv6_source_prefix=settings["ipv6-source-prefix"],
        authorized_keys=options.authorized_keys,
        max_handshakes=settings["max-handshakes"],
        work=work,
        ephemeral_keys=ephemeral_keys,
        tickets=issuer,
        client_key_max_bits=settings["client-key-max-bits"],
        require_post_quantum=settings["post-quantum"] == "require",
        metrics=counted,
        limit_warnings=limits,
        json_events=settings["log-format"] == "json",
    )
    if factory.metrics is not None and ephemeral_keys is not None:
        factory.metrics.ephemeral_rotated()  # the first key, made above
        ephemeral_keys.on_rotated = factory.metrics.ephemeral_rotated
    log.info(
        "private-key work: {where}",
        where=f"{workers} worker process(es)" if workers else "in the reactor",
    )
    for warning in options.warnings:
        log.warn("{warning}", warning=warning)
    if options.identity.certificates:
        log.info(
            "sending {count} certificate(s) from {path} in HELLO",
            count=len(options.identity.certificates),
            path=settings["certificate"],
        )
    rotation.log_announcement(log, options.identity.announcement)
    if options.authorized_keys is not None:
        log.info(
            "AUTH required: {count} client key(s) authorized by {path}",
            count=len(options.authorized_keys),
            path=settings["authorized-keys"],
        )
    service_ = KeyexchangeService(
        settings["listen"],
        factory,
        reactor,
        settings["grace-period"],
        handle_signals=True,
        timers=timers,
        trusted_proxies=settings["trusted-proxies"],
        proxy_header_timeout=settings["proxy-header-timeout"],
        options=options,
        child=child,
    )
    if child is not None:
        # The parent serves the metrics (this child's are in its files)
        # and writes the log in the format asked for.
        return service_
    if settings["metrics"] is None and settings["log-format"] == "text":
        return service_
    top = service.MultiService()
    service_.setServiceParent(top)
    if settings["metrics"] is not None:
        metrics.metrics_service(settings["metrics"], factory.metrics, reactor).setServiceParent(top)
    if settings["log-format"] == "json":
        return logs.use_json_logs(top, logs.twistd_log_file(options))
    return top


def make_parent_service(options, count, reactor):
    """``--processes N``: the parent, which listens and runs N children."""
    settings = options.settings
    log = Logger(namespace=__name__)
    runtime = processes.runtime_directory(options.environ)
    shared = None
    if settings["ticket-lifetime"] and settings["ticket-keys"] is None:
        shared = processes.SharedTicketKeys(
            os.path.join(runtime, "ticket.keys"),
            max(settings["ticket-lifetime"], processes.MIN_ROTATION_INTERVAL),
            reactor,
        )
    metrics_ = None
    if settings["metrics"] is not None:
        from keyexchanged import metrics  # prometheus_client and twisted.web: --metrics only

        directory = metrics.prepare_process_directory(os.path.join(runtime, "metrics"))
        metrics_ = metrics.Metrics(process_directory=directory)
    parent = processes.ProcessesService(
        options, count, reactor, runtime=runtime, metrics=metrics_, shared_ticket_keys=shared
    )
    log.info(
        "{count} processes on {listen}; ticket keys {keys}",
        count=count,
        listen=settings["listen"],
        keys=settings["ticket-keys"] or ("shared by the parent" if shared else "off"),
    )
    for warning in options.warnings:
        log.warn("{warning}", warning=warning)
    top = service.MultiService()
    parent.setServiceParent(top)
    if metrics_ is not None:
        metrics.metrics_service(settings["metrics"], metrics_, reactor).setServiceParent(top)
    if settings["log-format"] == "json":
        return logs.use_json_logs(top, logs.twistd_log_file(options))
    return top
