"""Known hosts: trust on first use, as OpenSSH does (docs/spec/kx1.rst §7.2).

The file, ``$XDG_CONFIG_HOME/keyexchange/known_hosts`` (else
``~/.config/keyexchange/known_hosts``), has one entry a line::

    # comments and blank lines are ignored
    example.org:51424 SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU
    [2001:db8::1]:51424 SHA256:...        # a comment may follow
    @revoked SHA256:...                   # never trust this key, anywhere
    @next example.org:51424 SHA256:...    # the key the server announced next

A host (``host:port``, the host as it was dialled, in lower case) has one
key.  Several lines may name it with that same key; lines that give it
*different* keys (written by older versions, which could record a second
key when two clients added a host at once, or by hand) are refused
loudly whatever key the server offers, naming the lines: such a file cannot
say which key is the host's, and accepting either would let the wrong one
in.  The user keeps the one right line.  A key listed ``@revoked`` is
refused for every host and under every trust model (the command line wraps
pinned and CA checks in :class:`NotRevoked`).

:class:`KnownHostsTrust` is the policy: known key, accept; revoked key, a
known host with another key or a host with several keys, refuse loudly,
naming the file and lines; unknown host, ask the user (on a terminal) or
accept it when told to (``--accept-new``), and append it to the file, unless
another client recorded a different key for it meanwhile: that is a changed
key, refused, and the second line is never written.

A line the parser does not understand is an error that names it, not a line
skipped: a mistyped ``@revoked`` must not go unnoticed.

``@next`` lines are what key rotation (docs/spec/kx1.rst §14) records: the
key a host announced, with proof, in a session under the key on file.  A
host has at most one.  A later HELLO with that key is accepted without a
question, and the key becomes the host's (:meth:`KnownHosts.promote_next`);
:meth:`KnownHosts.learn` records announcements.  Every change to the file
is made under the lock, on the file as read under it, and written
atomically.
"""

import contextlib
import fcntl
import ipaddress
import os
import stat

from keyexchanged import files, keys
from keyexchanged.errors import KnownHostsError, UntrustedKey
from keyexchanged.keys import check_fingerprint_syntax, same_fingerprint

__all__ = [
    "HostKeyRecorded",
    "KnownHosts",
    "KnownHostsError",
    "KnownHostsTrust",
    "NotRevoked",
    "ask_yes_no",
    "default_path",
    "host_entry",
]

REVOKED = "@revoked"
NEXT = "@next"
FILE_MODE = 0o600
DIRECTORY_MODE = 0o700
#: Far larger than any list of hosts; bounds what a wrong path makes us read.
MAX_FILE_SIZE = 4 << 20
#: Answers a prompt accepts before it gives up and takes it as "no".
PROMPT_TRIES = 3


class HostKeyRecorded(Exception):
    """:meth:`KnownHosts.add` found, under its lock, the host already listed
    with another key (another client recorded it meanwhile): a changed key,
    not a new host.  ``entries`` are the host's lines in the file as read
    under the lock.  Deliberately not a :class:`KnownHostsError`, which
    callers may take as "could not remember" and go on."""

    def __init__(self, host, entries):
        super().__init__(f"{host} is already known with another key")
        self.host = host
        self.entries = entries


def default_path(environ=None):
    """``$XDG_CONFIG_HOME/keyexchange/known_hosts``, else under ``~/.config``.

    :param environ: the environment (default: :data:`os.environ`).
    :returns: the path.
    """
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CONFIG_HOME")
    if not base or not os.path.isabs(base):
        # The XDG rule: a relative value is invalid and is ignored.
        home = environ.get("HOME") or os.path.expanduser("~")
        base = os.path.join(home, ".config")
    return os.path.join(base, "keyexchange", "known_hosts")


def host_entry(host, port):
    """How a host is written in the file: ``host:port``, ``[v6]:port``."""
    host = host.strip("[]").rstrip(".").lower()
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).version == 6:
            return f"[{ipaddress.ip_address(host).compressed}]:{port}"
    return f"{host}:{port}"


def _parse_host(text):
    """``host:port`` as written in the file → the same, normalized; ValueError."""
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
    else:
        host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not host:port")
    return host_entry(host, int(port))


class Entry:
    """One line: a host and a key it may have, or a revoked key (host None);
    ``next`` for a host's announced next key (an ``@next`` line)."""

    __slots__ = ("fingerprint", "host", "line", "next")

    def __init__(self, host, fingerprint, line, next=False):
        self.host = host
        self.fingerprint = fingerprint
        self.line = line
        self.next = next


class KnownHosts:
    """The parsed file, its lines as ``entries``.  :meth:`load` it."""

    def __init__(self, path, entries=()):
        self.path = path
        self.entries = list(entries)

    @classmethod
    def load(cls, path):
        """The known hosts in the file ``path``; a missing file is an empty
        one.

        :raises ~keyexchanged.errors.KnownHostsError: when the file cannot
            be read, or naming a line it does not understand.
        """
        text = _read(path)
        if text is None:
            return cls(path)
        return cls.parse(text, path)

    @classmethod
    def parse(cls, text, path):
        entries = []
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            fields = line.split()
            if fields[0] == NEXT:
                try:
                    if len(fields) != 3:
                        raise ValueError(f"expected '{NEXT} host:port fingerprint'")
                    host = _parse_host(fields[1])
                    fingerprint = check_fingerprint_syntax(fields[2])
                except ValueError as error:
                    raise KnownHostsError(f"{path}, line {number}: {error}") from None
                entries.append(Entry(host, fingerprint, number, next=True))
                continue
            try:
                if len(fields) != 2:
                    raise ValueError("expected 'host:port fingerprint' or '@revoked fingerprint'")
                first, fingerprint = fields
                check_fingerprint_syntax(fingerprint)
                if first == REVOKED:
                    host = None
                elif first.startswith("@"):
                    raise ValueError(f"unknown marker {first!r} (only {REVOKED} and {NEXT})")
                else:
                    host = _parse_host(first)
            except ValueError as error:
                raise KnownHostsError(f"{path}, line {number}: {error}") from None
            entries.append(Entry(host, fingerprint, number))
        return cls(path, entries)

    def revoked(self, fingerprint):
        """The ``@revoked`` line of ``fingerprint``, or ``None``."""
        for entry in self.entries:
            if entry.host is None and same_fingerprint(entry.fingerprint, fingerprint):
                return entry
        return None

    def lookup(self, host, port):
        """The lines for ``host:port``, in file order."""
        name = host_entry(host, port)
        return [entry for entry in self.entries if entry.host == name and not entry.next]

    def next_key(self, host, port):
        """The ``@next`` line of ``host:port``, or None."""
        name = host_entry(host, port)
        for entry in self.entries:
            if entry.host == name and entry.next:
                return entry
        return None

    def learn(self, host, port, session_fingerprint, announcement):
        """Record what the server ``host:port`` announced (a
        :class:`~keyexchanged.rotation.Announcement`) in a session under
        ``session_fingerprint``; returns what was done, a list of lines for
        the user (empty when nothing changed).

        The next key is recorded only when the file gives the host this
        session's key (§14.5), replacing an older ``@next`` line; a key
        this file revokes is not.  A revoked fingerprint becomes a
        ``@revoked`` line, unless another host has that key here.
        """
        name = host_entry(host, port)
        done = []

        def edit(current, lines):
            done.clear()
            drop = set()
            add = []
            listed = current.lookup(host, port)
            following = announcement.next_fingerprint
            if following is not None:
                if not listed or not all(
                    same_fingerprint(e.fingerprint, session_fingerprint) for e in listed
                ):
                    done.append(
                        f"not recording the next key {following}: {self.path} does not "
                        f"give {name} this session's key {session_fingerprint}"
                    )
                elif current.revoked(following) is not None:
                    done.append(f"not recording the next key {following}: it is revoked here")
                else:
                    recorded = current.next_key(host, port)
                    if recorded is None or not same_fingerprint(recorded.fingerprint, following):
                        if recorded is not None:
                            drop.add(recorded.line)
                        add.append(f"{NEXT} {name} {following}")
                        done.append(
                            f"learned the next key of {name}, {following} (RSA-"
                            f"{announcement.next_bits}): recorded in {self.path} as {NEXT}; "
                            "a session under it will be accepted without a question"
                        )
            for fingerprint in announcement.revoked:
                if current.revoked(fingerprint) is not None:
                    continue
                others = [
                    e
                    for e in current.entries
                    if e.host not in (None, name) and same_fingerprint(e.fingerprint, fingerprint)
                ]
                if others:
                    done.append(
                        f"not revoking {fingerprint}: {self.path}, line {others[0].line} "
                        f"gives it to {others[0].host}, and {name} cannot revoke another "
                        "host's key"
                    )
                    continue
                for entry in current.entries:
                    if entry.host == name and same_fingerprint(entry.fingerprint, fingerprint):
                        drop.add(entry.line)
                add.append(f"{REVOKED} {fingerprint}")
                done.append(f"{name} revoked the key {fingerprint}: recorded as {REVOKED}")
            if not add:
                return None
            return [line for number, line in enumerate(lines, 1) if number not in drop] + add

        self._rewrite(edit)
        return list(done)

    def promote_next(self, host, port, fingerprint):
        """``fingerprint`` is the recorded next key of ``host:port`` and a
        server offered it: make it the host's key, in place of the one on
        file (and drop the ``@next`` line).  Returns True when the file now
        gives the host that key (or already did: another client promoted
        it meanwhile), False when, under the lock, it was no longer the
        host's next key."""
        name = host_entry(host, port)
        promoted = []

        def edit(current, lines):
            promoted.clear()
            listed = current.lookup(host, port)
            if listed and all(same_fingerprint(e.fingerprint, fingerprint) for e in listed):
                promoted.append(True)
                return None
            recorded = current.next_key(host, port)
            if recorded is None or not same_fingerprint(recorded.fingerprint, fingerprint):
                return None
            promoted.append(True)
            replaced = {e.line for e in listed}
            out = []
            for number, line in enumerate(lines, 1):
                if number == recorded.line:
                    continue
                if number in replaced:
                    if number == min(replaced):
                        out.append(f"{name} {fingerprint}")
                    continue
                out.append(line)
            if not replaced:
                out.append(f"{name} {fingerprint}")
            return out

        self._rewrite(edit)
        return bool(promoted)

    def _rewrite(self, edit):
        """Under the lock, on the file as it is now: ``edit(parsed,
        lines)`` returns the new lines, or None to leave the file alone."""
        path = os.path.realpath(self.path)  # a symlinked file is updated, not replaced
        directory = os.path.dirname(path)
        try:
            os.makedirs(directory, mode=DIRECTORY_MODE, exist_ok=True)
            with _locked(directory):
                try:
                    text = _read(path)
                    mode = FILE_MODE if text is None else stat.S_IMODE(os.stat(path).st_mode)
                except FileNotFoundError:
                    text = None
                if text is None:
                    text, mode = "", FILE_MODE
                current = KnownHosts.parse(text, self.path)
                lines = edit(current, text.splitlines())
                if lines is None:
                    self.entries = current.entries
                    return
                text = "".join(line + "\n" for line in lines)
                files.write_atomically(path, text.encode("utf-8"), mode, force=True)
        except OSError as error:
            raise KnownHostsError(f"{self.path}: cannot write: {error.strerror or error}") from None
        except keys.KeyFileError as error:
            raise KnownHostsError(str(error)) from None
        self.entries = KnownHosts.parse(text, self.path).entries

    def add(self, host, port, fingerprint):
        """Append ``host:port fingerprint`` to the file; return its line number.

        Atomic: the new file is written beside the old one and renamed over
        it, so a reader sees the old file or the new one, whole.  A lock on
        the directory keeps two clients adding at once from losing a line;
        the file is read again under it.  If the host is there by then with
        this key only, that line's number is returned; with any other key,
        :class:`HostKeyRecorded` is raised and nothing is written, so a host
        never gets a second key.  The directory is created 0700 and a new
        file 0600; an existing file keeps its mode.

        :returns: the line number of the host's line.
        :raises HostKeyRecorded: when the host is listed by then with
            another key.
        :raises ~keyexchanged.errors.KnownHostsError: when the file cannot
            be written.
        """
        found = []

        def edit(current, lines):
            listed = current.lookup(host, port)
            if listed:  # another client added the host meanwhile
                if all(same_fingerprint(e.fingerprint, fingerprint) for e in listed):
                    found.append(listed[0].line)
                    return None
                self.entries = current.entries
                raise HostKeyRecorded(host_entry(host, port), listed)
            found.append(len(lines) + 1)
            return [*lines, f"{host_entry(host, port)} {fingerprint}"]

        self._rewrite(edit)
        return found[0]


def _read(path):
    """The text of the file, or None when there is no such file."""
    data = files.read_file(
        path, MAX_FILE_SIZE, KnownHostsError, "too large for a known-hosts file", missing_ok=True
    )
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise KnownHostsError(f"{path}: not UTF-8 text") from None


@contextlib.contextmanager
def _locked(directory):
    """An exclusive lock on ``directory`` (flock), released on exit."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        with contextlib.suppress(OSError):  # a file system without locks: go on
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _bits(offer):
    return offer.public_key.n.bit_length()


class KnownHostsTrust:
    """Trust on first use for one server port (docs/spec/kx1.rst §7.2).

    It asks servers for their key rotation announcements (§14):
    :meth:`announced` records them, and :meth:`verify` accepts a host's
    recorded next key without a question.

    :param path: the known-hosts file (:func:`default_path`).
    :param port: the server's port: hosts are known as ``host:port``.
    :param ask: ``ask(question, fingerprint) -> bool`` puts a yes/no
        question to the user (:func:`ask_yes_no` on a terminal), or is
        ``None`` when there is nobody to ask (no terminal).
    :param accept_new: add unknown hosts without asking.
    :param report: ``report(text)`` tells the user what was done (a host
        added to the file, a next key learned or used).
    """

    #: Ask servers that offer rotation for their next key (§14.2).
    announcements = True
    #: What to do about an unknown host when nobody can be asked, for
    #: ``connect``; a command without a terminal prompt or --accept-new
    #: (``tunnel``) gives its own.  ``{fingerprint}`` is the key offered.
    unknown_host_advice = (
        "run again on a terminal to be asked, or with --accept-new to add it, "
        "or with --fingerprint {fingerprint} to pin it."
    )

    def __init__(self, path, port, ask=None, accept_new=False, report=None):
        self.path = path
        self.port = port
        self.ask = ask
        self.accept_new = accept_new
        self.report = report or (lambda text: None)

    def verify(self, server_name, offer):
        """Accept a known host's key, or a new host's when the user (or
        ``accept_new``) says so, recording it.

        :param server_name: the host name or address that was dialled.
        :param offer: the server's HELLO, a
            :class:`~keyexchanged.handshake.ServerKeyReceived`.
        :raises ~keyexchanged.errors.UntrustedKey: for a revoked key, a
            changed key, a new host nobody accepted, or a file that cannot
            be used; its explanation names the file and lines.
        """
        known = _load_not_revoked(self.path, offer)
        entries = known.lookup(server_name, self.port)
        name = host_entry(server_name, self.port)
        if len({entry.fingerprint for entry in entries}) > 1:
            raise self._ambiguous(name, entries, offer)
        if entries and same_fingerprint(entries[0].fingerprint, offer.fingerprint):
            return
        following = known.next_key(server_name, self.port)
        if following is not None and same_fingerprint(following.fingerprint, offer.fingerprint):
            self._switch(known, name, server_name, entries, offer, following)
            return
        if entries:
            raise self._changed(name, entries, offer)
        self._unknown(known, name, server_name, offer)

    def _switch(self, known, name, server_name, entries, offer, following):
        """The host offers the next key it announced (§14.5): trusted, and
        from now on the host's key."""
        try:
            switched = known.promote_next(server_name, self.port, offer.fingerprint)
        except KnownHostsError as error:
            self.report(f"warning: could not record the new key of {name}: {error}")
            switched = True  # trusted for this session all the same, as announced
        if not switched:  # another client changed the file meanwhile
            raise self._changed(name, entries, offer)
        old = entries[0].fingerprint if entries else "none"
        self.report(
            f"{name} now uses the next key it announced, {offer.fingerprint} (recorded "
            f"as {NEXT} from an earlier session, {self.path}, line {following.line}); "
            f"accepted without a question, and it replaces {old} in {self.path}"
        )

    def announced(self, server_name, event):
        """The server's announcement (§14.4): a ``NextKeyAnnounced`` to
        record, or an ``AnnouncementIgnored`` to warn of, once."""
        name = host_entry(server_name, self.port)
        reason = getattr(event, "reason", None)
        if reason is not None:
            self.report(f"warning: ignored the key announcement of {name}: {reason}")
            return
        try:
            done = KnownHosts(self.path).learn(
                server_name, self.port, event.server_fingerprint, event.announcement
            )
        except KnownHostsError as error:
            self.report(f"warning: could not record the key announcement of {name}: {error}")
            return
        for line in done:
            self.report(line)

    def _where(self, entries):
        lines = ", ".join(str(entry.line) for entry in entries)
        return f"{self.path}, line{'s' if len(entries) > 1 else ''} {lines}"

    def _changed(self, name, entries, offer):
        where = self._where(entries)
        banner = "\n".join(
            [
                "@" * 64,
                "@  WARNING: THE KEY OF THIS SERVER HAS CHANGED!".ljust(63) + "@",
                "@" * 64,
                "Someone could be intercepting this connection right now, or the",
                "server's key was replaced.  Nothing was sent to it.",
                f"The key {name} offered:  {offer.fingerprint} (RSA-{_bits(offer)})",
                f"The key known for it:  {entries[0].fingerprint}",
                f"Known from {where}.",
                "If you know the change is legitimate (ask the server's operator),",
                f"delete that line from {self.path} and connect again.",
            ]
        )
        return UntrustedKey(
            f"the key of {name} has changed: {offer.fingerprint} is not the known "
            f"{entries[0].fingerprint} (known hosts, line {entries[0].line})",
            banner,
        )

    def _ambiguous(self, name, entries, offer):
        listed = "\n".join(f"  line {entry.line}: {entry.fingerprint}" for entry in entries)
        explanation = "\n".join(
            [
                f"{self._where(entries)} give {name} more than one key:",
                listed,
                f"The server offered {offer.fingerprint} (RSA-{_bits(offer)}).",
                "A host has one key, and this file cannot say which is right, so",
                "none is trusted.  Nothing was sent to the server.  Ask its operator",
                f"for its fingerprint, then keep only that line in {self.path}.",
            ]
        )
        lines = ", ".join(str(entry.line) for entry in entries)
        return UntrustedKey(
            f"the known hosts list more than one key for {name} (lines {lines}); none is trusted",
            explanation,
        )

    def _unknown(self, known, name, server_name, offer):
        if not self.accept_new:
            if self.ask is None:
                raise UntrustedKey(
                    f"{name} is not a known host, and there is no terminal to ask whether "
                    f"to trust its key {offer.fingerprint}",
                    f"{name} is not in {self.path}.  Check its key with the server's "
                    "operator, then "
                    + self.unknown_host_advice.format(fingerprint=offer.fingerprint),
                )
            question = (
                f"The authenticity of {name} cannot be established.\n"
                f"Its RSA-{_bits(offer)} key has the fingerprint {offer.fingerprint}.\n"
                "Are you sure you want to trust this key and connect (yes/no)? "
            )
            if not self.ask(question, offer.fingerprint):
                raise UntrustedKey(f"the key of {name} was not accepted")
        try:
            line = known.add(server_name, self.port, offer.fingerprint)
        except HostKeyRecorded as recorded:
            # Another client recorded a key for the host while we looked
            # (or asked): to us, now, that is the host's key, and ours differs.
            if len({entry.fingerprint for entry in recorded.entries}) > 1:
                raise self._ambiguous(name, recorded.entries, offer) from None
            raise self._changed(name, recorded.entries, offer) from None
        except KnownHostsError as error:
            # The user did accept the key for this session; only the memory
            # of it failed, as with ssh.
            self.report(f"warning: could not add {name} to the known hosts: {error}")
        else:
            self.report(
                f"added {name} ({offer.fingerprint}) to {self.path}, line {line}; "
                "its key will be checked against that from now on"
            )


def check_not_revoked(known, offer):
    entry = known.revoked(offer.fingerprint)
    if entry is not None:
        raise UntrustedKey(
            f"the server's key {offer.fingerprint} is revoked",
            f"{known.path}, line {entry.line} revokes the key {offer.fingerprint} "
            "(@revoked): it is refused for every host, whatever the options.",
        )


def _load_not_revoked(path, offer):
    """The known hosts of ``path``, read for this check, once ``offer``'s
    key is known not to be revoked there; a file that cannot be used
    refuses the key (the file's own error is the explanation)."""
    try:
        known = KnownHosts.load(path)
    except KnownHostsError as error:
        raise UntrustedKey("the known-hosts file cannot be used", str(error)) from None
    check_not_revoked(known, offer)
    return known


class NotRevoked:
    """Another policy, after the ``@revoked`` lines of a known-hosts file.

    :param path: the known-hosts file.
    :param policy: the policy asked once the key is not revoked.
    """

    def __init__(self, path, policy):
        self.path = path
        self.policy = policy

    def verify(self, server_name, offer):
        """Refuse a revoked key, then ask ``policy``.

        :raises ~keyexchanged.errors.UntrustedKey: for a revoked key, or
            from ``policy``.
        """
        _load_not_revoked(self.path, offer)
        return self.policy.verify(server_name, offer)


def ask_yes_no(question, fingerprint, input_stream, output_stream):
    """Ask on a terminal as ssh does: ``yes``, ``no``, or the fingerprint
    itself (which means yes, checked by the user against theirs).  End of
    input, or no clear answer after a few tries, is no.

    :param question: what is asked, written to ``output_stream``.
    :param fingerprint: the key's fingerprint, an answer that means yes.
    :returns: whether the answer was yes.
    """
    output_stream.write(question)
    for _ in range(PROMPT_TRIES):
        output_stream.flush()
        line = input_stream.readline()
        if not line:
            output_stream.write("\n")
            return False
        answer = line.strip()
        if answer.lower() == "yes" or answer == fingerprint:
            return True
        if answer.lower() == "no":
            return False
        output_stream.write("Please type 'yes', 'no' or the fingerprint: ")
    output_stream.write("\n")
    return False
