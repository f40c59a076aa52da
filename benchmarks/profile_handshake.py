"""Where a server's handshake time goes: the sans-IO core under cProfile.

A loop of complete KX/1 sessions in one process, with no sockets and no
reactor: a :class:`~keyexchanged.handshake.ServerConnection` (what the
daemon runs per connection, with the message application's part: one MSG,
then END) against a :class:`~keyexchanged.handshake.ClientConnection`.
Only the server's calls are timed and profiled; the client's work (OAEP
encryption, opening the records) is done between them.

It prints the server's CPU time per session without the profiler, then
each piece of it (decryption, key schedule, records, framing, HELLO) timed
alone with the arguments a session gives it, then cProfile's top functions
over the same sessions (in CPU time; cProfile adds about a microsecond to
every Python call, so it inflates pycryptodome's many small ones)::

    python benchmarks/profile_handshake.py --bits 3072 --count 200
    python benchmarks/profile_handshake.py --output server.prof   # for pstats

Sessions are the daemon's defaults: HELLO offers an ephemeral key (forward
secrecy) and the server sends a ticket in each; ``--resume`` makes every
session resume with the ticket of the one before (no RSA), and
``--no-forward-secrecy`` offers no ephemeral key (revision 1).

``--daemon`` profiles the real ``twistd keyexchange`` instead while
``loadgen.py`` drives it as bench_handshakes.py does, and sorts the
daemon's own time (cProfile's tottime in CPU seconds) by where it was
spent: RSA, pycryptodome, each keyexchanged module, Twisted, the kernel's
socket calls.  ``--workers`` is the daemon's option: ``auto`` (its
default) profiles the reactor process, and the CPU of its decryption
workers is counted apart (``0`` puts the decryption in the profiled
process)::

    python benchmarks/profile_handshake.py --daemon --bits 3072 --duration 10
    python benchmarks/profile_handshake.py --daemon --workers 0 --bits 3072
"""

import argparse
import cProfile
import io
import os
import pstats
import shutil
import sys
import time

import harness

from keyexchanged import handshake, mlkem, rsa, schedule

MESSAGE = b"bench"


class Server:
    """What the daemon shares between its connections, by default: its
    identity, the ephemeral key every HELLO offers (forward secrecy) and
    the ticket issuer (a ticket per session)."""

    def __init__(self, private_key, forward_secrecy=True):
        from keyexchanged import ephemeral, tickets

        self.identity = handshake.ServerIdentity(private_key)
        self.ephemeral = None
        if forward_secrecy:
            # One key for the whole run: a rotation every 60 s is not a
            # handshake's cost (bench_handshakes.py counts it apart).
            ephemeral_private = rsa.generate_multi_prime_key(private_key.n.bit_length())
            # Within the 30 minutes a revision-3 client accepts, with an
            # ML-KEM-768 key beside it, as the daemon offers it (revision 3,
            # what keyexchange connect speaks).
            self.ephemeral = ephemeral.signed_key(
                ephemeral_private, int(time.time()) + 1200, private_key
            )
        self.tickets = tickets.TicketIssuer(tickets.TicketKeys.random())

    @property
    def decrypting_key(self):
        """The key a KEY is decrypted with: the ephemeral one, if offered."""
        return (self.ephemeral or self.identity).private_key


class Session:
    """One client and one server, run step by step; ``server_steps`` are the
    server's calls, so they can be timed or profiled apart from the client.
    With ``ticket`` (a StoredTicket of an earlier session) the client
    resumes; ``ticket`` afterwards is the one this session received."""

    def __init__(self, server, ticket=None):
        self.shared = server
        self.ticket = ticket

    def server_start(self):
        shared = self.shared
        self.server = handshake.ServerConnection(
            shared.identity, ephemeral=shared.ephemeral, tickets=shared.tickets
        )
        self.server.start()
        return self.server.data_to_send()

    def client_key(self, hello):
        self.client = handshake.ClientConnection(
            require_forward_secrecy=self.shared.ephemeral is not None,
            ticket=self.ticket,
            post_quantum=True,
            allow_classical=self.shared.ephemeral is None,
        )
        events = self.client.receive_data(hello)
        if not isinstance(events[0], handshake.ServerKeyReceived):
            raise RuntimeError(f"client: {events}")
        self.client.accept_key()
        return self.client.data_to_send()

    def server_key(self, key):
        events = self.server.receive_data(key)
        if not any(isinstance(event, handshake.HandshakeComplete) for event in events):
            raise RuntimeError(f"server: {events}")
        # The message application: its message, then END.
        self.server.send_data(MESSAGE)
        self.server.send_end()
        return self.server.data_to_send()

    def client_end(self, records):
        from keyexchanged.tickets import StoredTicket

        events = self.client.receive_data(records)
        data = b"".join(e.data for e in events if isinstance(e, handshake.DataReceived))
        if data != MESSAGE or self.client.resumed != (self.ticket is not None):
            raise RuntimeError(f"client: {events}")
        for event in events:
            if isinstance(event, handshake.TicketReceived):
                self.ticket = StoredTicket(
                    "bench",
                    0,
                    event.server_fingerprint,
                    event.secret,
                    event.ticket,
                    time.time() + event.lifetime,
                    post_quantum=event.post_quantum,
                    forward_secrecy=event.forward_secrecy,
                )
        self.client.send_end()
        return self.client.data_to_send()

    def server_end(self, end):
        self.server.receive_data(end)
        if not self.server.finished:
            raise RuntimeError("server: session not finished")


def run(server, count, profiler=None, resume=False):
    """``count`` sessions; returns the server's seconds per session.  With
    ``resume`` each session resumes with the previous one's ticket (the
    first of all is a full handshake, not timed)."""
    spent = 0.0
    enable = profiler.enable if profiler else (lambda: None)
    disable = profiler.disable if profiler else (lambda: None)
    clock = time.process_time
    ticket = None
    if resume:
        first = Session(server)
        first.server_end(first.client_end(first.server_key(first.client_key(first.server_start()))))
        ticket = first.ticket
    for _ in range(count):
        session = Session(server, ticket)
        started = clock()
        enable()
        hello = session.server_start()
        disable()
        spent += clock() - started
        key = session.client_key(hello)
        started = clock()
        enable()
        records = session.server_key(key)
        disable()
        spent += clock() - started
        end = session.client_end(records)
        started = clock()
        enable()
        session.server_end(end)
        disable()
        spent += clock() - started
        if resume:
            ticket = session.ticket
    return spent / count


def _per_call(function, count):
    """Seconds of CPU per call of ``function``, over ``count`` calls."""
    clock = time.process_time
    started = clock()
    for _ in range(count):
        function()
    return (clock() - started) / count


def pieces(server, count):
    """[(label, µs per session)]: each piece of the server's session timed
    alone, with the arguments a full session gives it, without the profiler."""
    from keyexchanged import framing, records

    session = Session(server)
    hello = session.server_start()
    key = session.client_key(hello)
    hello_payload = session.client.hello_payload
    nonce, th = session.client._nonce, session.client.transcript_hash
    private_key = server.decrypting_key
    identity = server.identity
    # Revision 3 (what keyexchange connect speaks): KEY is the RSA
    # ciphertext ‖ the ML-KEM one, and the records are those HELLO names.
    ciphertext = session.client.key_payload[: (private_key.n.bit_length() + 7) // 8]
    mlkem_ciphertext = session.client.key_payload[len(ciphertext) :]
    hybrid = bool(mlkem_ciphertext)
    cipher = session.client.record_cipher
    secret = private_key.decrypt_oaep(ciphertext, label=hello_payload)
    if hybrid:
        secret += mlkem.decapsulate(server.ephemeral.mlkem_key, mlkem_ciphertext)
    client_key, server_key = schedule.derive_keys(secret, nonce, th, hybrid=hybrid)
    sealed_end = records.RecordSealer(client_key, cipher=cipher).seal("END")

    def seal_four():
        # The key confirmation, the TICKET, the message, END.
        sealer = records.RecordSealer(server_key, cipher=cipher)
        sealer.seal("MSG")
        sealer.seal("TICKET", b"x" * 130)
        sealer.seal("MSG", MESSAGE)
        sealer.seal("END")

    def open_two():
        # The client's first record (an empty MSG) and its END.
        opener = records.RecordOpener(client_key, cipher)
        try:
            opener.open("MSG", sealed_end)
        except records.BadRecord:
            pass
        records.RecordOpener(client_key, cipher).open("END", sealed_end)

    def decode_key_frame():
        framing.FrameDecoder(lambda verb, payload: None).feed(key)

    def encode_three():
        framing.encode_frame("HELLO", hello_payload)
        framing.encode_frame("MSG", sealed_end)
        framing.encode_frame("END", sealed_end)

    def key_schedule():
        schedule.derive_keys(secret, nonce, th, hybrid=hybrid)
        schedule.resumption_secret(secret, nonce, th)

    table = [
        (
            "RSA: OAEP decryption (decrypt_oaep)",
            lambda: private_key.decrypt_oaep(ciphertext, label=hello_payload),
        ),
        (
            "ML-KEM-768: decapsulation through HPKE (revision 3)",
            lambda: (
                mlkem.decapsulate(server.ephemeral.mlkem_key, mlkem_ciphertext) if hybrid else None
            ),
        ),
        ("key schedule: keys and resumption secret (HKDF)", key_schedule),
        ("transcript hash", lambda: handshake.transcript_hash(hello_payload, ciphertext)),
        ("records: four sealed (MSG, TICKET, MSG, END)", seal_four),
        ("records: two opened (the client's MSG and END)", open_two),
        (
            "ticket: issued (TicketIssuer.issue)",
            lambda: server.tickets.issue(secret, identity.fingerprint, None),
        ),
        (
            "HELLO: connection object, nonce, payload (start)",
            lambda: Session(server).server_start(),
        ),
        ("framing: decoding the KEY frame", decode_key_frame),
        ("framing: encoding three frames", encode_three),
    ]
    return [(label, _per_call(function, count) * 1e6) for label, function in table]


#: Where a function's own time is counted, by its file (first match wins).
AREAS = [
    ("RSA: gmpy2 (powmod_sec, powmod, …)", ("gmpy2",)),
    ("RSA: keyexchanged/rsa/ itself", ("keyexchanged/rsa/",)),
    ("pycryptodome: GCM objects, HKDF, hashes", ("/Crypto/",)),
    ("cffi (pycryptodome's calls into C)", ("/cffi/", "_cffi_backend")),
    ("keyexchanged/handshake/", ("keyexchanged/handshake/",)),
    ("keyexchanged/protocol/", ("keyexchanged/protocol/",)),
    ("keyexchanged/records.py", ("keyexchanged/records.py",)),
    ("keyexchanged/framing.py", ("keyexchanged/framing.py",)),
    ("keyexchanged, other modules", ("keyexchanged/",)),
    # Twisted's logger formats each event with string.Formatter.
    ("Twisted: logging", ("twisted/logger/", "twisted/python/log.py", "/string.py")),
    ("Twisted: reactor, TCP, protocols", ("twisted/",)),
    ("socket calls (accept, send, recv, close)", ("socket", "'_socket", "posix.")),
    ("hashlib, hmac, secrets, json, base64", ("hashlib", "hmac", "secrets", "json", "base64")),
    ("start-up: imports, cffi's C parser, regexes", ("pycparser", "/re/", "importlib", "<frozen")),
]
#: Waiting for the network, not work: left out of the shares.
IDLE = ("poll' of 'select.epoll", "method poll of select.epoll", "epoll")


def _area(filename, function):
    where = f"{filename} {function}"
    if any(mark in where for mark in IDLE):
        return None
    for label, marks in AREAS:
        if any(mark in where for mark in marks):
            return label
    return "everything else (Python built-ins, other libraries)"


_PROFILED_TWISTD = """
import cProfile, sys, time
from twisted.scripts.twistd import run
path = sys.argv.pop(1)
profiler = cProfile.Profile(time.process_time)
profiler.enable()
try:
    run()
finally:
    profiler.disable()
    profiler.dump_stats(path)
"""


def profile_daemon(args):
    """Profile the real daemon under the load generator; print the shares."""
    directory = harness.workdir()
    profile_path = os.path.abspath(args.output or os.path.join(directory, "daemon.prof"))
    try:
        key, _, fingerprint = harness.key_material(directory, args.bits)
        argv = harness.daemon_argv(
            key,
            [
                "--workers",
                args.workers,
                "--max-per-source",
                "100000",
                "--max-connections",
                "100000",
            ],
        )
        # twistd's --profile times in wall-clock seconds, which on a shared
        # machine charge another process's turn to whatever was running:
        # profile twistd's run() in CPU time instead.
        assert argv[: len(harness.TWISTD)] == harness.TWISTD
        argv[: len(harness.TWISTD)] = [sys.executable, "-c", _PROFILED_TWISTD, profile_path]
        server = harness.Server(argv, directory, "kx-profiled")
        server.wait_listening()
        try:
            generator = harness.LoadGenerator.run(
                "handshakes",
                proto="kx",
                port=server.port,
                fingerprint=fingerprint,
                concurrency=16,
                warmup=1.0,
                duration=args.duration,
                expect="bench",
            )
            try:
                generator.read(60)
                cpu_before = server.cpu_seconds()
                main_before = harness.cpu_seconds(server.pid)
                end = generator.read(args.duration + 60)
                cpu_after = server.cpu_seconds()
                main_after = harness.cpu_seconds(server.pid)
            finally:
                generator.finish()
        finally:
            server.stop(timeout=60)
        if not os.path.exists(profile_path):
            raise RuntimeError("the daemon wrote no profile:\n" + server.output()[-2000:])
        stats = pstats.Stats(profile_path)
    finally:
        # The statistics are loaded by now; --output, if given, is elsewhere.
        shutil.rmtree(directory, ignore_errors=True)
    handshakes = max(end["ok"], 1)
    total = (cpu_after - cpu_before) / handshakes * 1e3
    main = (main_after - main_before) / handshakes * 1e3
    print(
        f"\ndaemon under cProfile, RSA-{args.bits}, --workers {args.workers}: {end['ok']} "
        f"handshakes in {end['seconds']:.1f} s ({end['ok'] / end['seconds']:.0f}/s), "
        f"{total:.2f} ms of CPU each: {main:.2f} ms in the reactor's process (profiled), "
        f"{total - main:.2f} ms in its workers"
    )
    areas = {}
    for (filename, _, function), (_, _, tottime, _, callers) in stats.stats.items():
        label = _area(filename, function)
        if label is None:
            continue
        if filename == "~" and label.startswith("everything else") and callers:
            # A built-in (len, isinstance, bytes.join …) counts for whoever
            # called it: pycryptodome alone makes hundreds per handshake.
            for (caller_file, _, caller_function), edge in callers.items():
                caller = _area(caller_file, caller_function) or label
                areas[caller] = areas.get(caller, 0.0) + edge[2]
            continue
        areas[label] = areas.get(label, 0.0) + tottime
    busy = sum(areas.values())
    print("where the daemon's CPU time went (cProfile tottime in CPU seconds):")
    for label, seconds in sorted(areas.items(), key=lambda item: -item[1]):
        print(f"   {label:<52} {seconds / busy:6.1%}")
    out = io.StringIO()
    stats.stream = out
    stats.sort_stats("tottime").print_stats(args.top)
    print("\ncProfile, by own time:")
    print(out.getvalue().split("\n", 4)[-1].rstrip())
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bits", type=int, default=3072)
    parser.add_argument("--count", type=int, default=200, help="sessions per measurement")
    parser.add_argument("--top", type=int, default=20, help="cProfile lines to print")
    parser.add_argument("--output", help="also save the cProfile statistics here")
    parser.add_argument(
        "--resume", action="store_true", help="resumed sessions (RESUME with a ticket) instead"
    )
    parser.add_argument(
        "--no-forward-secrecy",
        action="store_true",
        help="HELLO offers no ephemeral key: KEY under the long-term key (revision 1)",
    )
    parser.add_argument(
        "--daemon", action="store_true", help="profile the real daemon under load instead"
    )
    parser.add_argument("--duration", type=float, default=10.0, help="--daemon: seconds of load")
    parser.add_argument(
        "--workers", default="auto", help="--daemon: the daemon's --workers (default auto)"
    )
    args = parser.parse_args()
    if args.daemon:
        if not 1 <= args.duration <= 120:
            parser.error("--duration must be between 1 and 120 seconds")
        return profile_daemon(args)
    if not 1 <= args.count <= 5000:
        parser.error("--count must be between 1 and 5000")

    kind = "resumed" if args.resume else "full"
    secrecy = "without" if args.no_forward_secrecy else "with"
    print(f"RSA backend {rsa.BACKEND}; generating RSA-{args.bits} keys …", flush=True)
    server = Server(rsa.generate_private_key(args.bits), not args.no_forward_secrecy)
    # Warm-up: caches, imports, the blinding pair.
    run(server, min(20, args.count), resume=args.resume)

    plain = run(server, args.count, resume=args.resume)
    timed = [] if args.resume else pieces(server, args.count)
    # CPU time for the profiler too, so that its figures add up with ours
    # on a machine shared with other work.
    profiler = cProfile.Profile(time.process_time)
    profiled = run(server, args.count, profiler, resume=args.resume)
    stats = pstats.Stats(profiler)
    if args.output:
        stats.dump_stats(args.output)

    print(f"\n{kind} sessions, {secrecy} forward secrecy, a ticket each:")
    print(f"\nserver CPU per session, RSA-{args.bits}, {args.count} sessions:")
    print(f"   without the profiler   {plain * 1e6:9.0f} µs")
    print(f"   under cProfile         {profiled * 1e6:9.0f} µs")
    if timed:
        print("\neach piece timed alone, without the profiler (µs per session):")
    for label, micros in timed:
        print(f"   {label:<52} {micros:8.1f} µs  {micros / (plain * 1e6):6.1%}")
    if timed:
        rest = plain * 1e6 - sum(micros for _, micros in timed)
        label = "the rest: state machine, events, glue"
        print(f"   {label:<52} {rest:8.1f} µs  {rest / (plain * 1e6):6.1%}")
    out = io.StringIO()
    stats.stream = out
    stats.sort_stats("tottime").print_stats(args.top)
    print("\ncProfile, by own time (CPU seconds over all sessions):")
    print(out.getvalue().split("\n", 4)[-1].rstrip())
    print("\nour own functions (keyexchanged/), by own time (µs per session, under cProfile):")
    ours = [
        (tottime, cumtime, calls, f"{filename.rsplit('keyexchanged/', 1)[-1]}:{line}({name})")
        for (filename, line, name), (_, calls, tottime, cumtime, _) in stats.stats.items()
        if "/keyexchanged/" in filename
    ]
    for tottime, cumtime, calls, where in sorted(ours, reverse=True)[: args.top]:
        print(
            f"   {tottime / args.count * 1e6:7.1f} own {cumtime / args.count * 1e6:8.1f} cum "
            f"{calls / args.count:5.1f} calls  {where}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
