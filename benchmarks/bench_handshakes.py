"""Handshakes per second: the real ``twistd keyexchange`` against Twisted TLS.

Contestants, each holding the very same RSA key (2048 and 3072 bits):

- ``kx workers=0``: ``twistd -n keyexchange`` (the message application),
  one process that decrypts every KEY in the reactor (``--workers 0``);
- ``kx workers=auto``: the same daemon with its default, one decryption
  worker process per CPU (``--workers auto``); its CPU time includes the
  workers';
- ``kx ×2``: the daemon with ``--processes 2 --workers 0``: its parent
  listens and two children serve the socket, each decrypting in its own
  reactor (the CPU counts the parent and both children);
- ``tls1.3``: a Twisted TLS server on pyOpenSSL, TLS 1.3 (ECDHE, RSA-PSS
  signature by the server);
- ``tls1.2``: the same with TLS 1.2 and the static-RSA suite
  AES256-GCM-SHA384 (the server RSA-decrypts the premaster secret, as a
  KX/1 server decrypts KEY).

Every KX/1 daemon runs with its defaults unless named: forward secrecy on
(each HELLO offers a signed 3072-bit ephemeral key, rotated every 60 s;
KEY is decrypted with it) and a resumption ticket sent in every session;
the load generator's clients require forward secrecy.  At 3072 bits
(``--revision-2-bits``), issue 11 adds:

- ``kx no-FS``: the daemon with ``--no-forward-secrecy`` (KEY under the
  long-term key, as revision 1), ``--workers auto`` like the default;
- ``kx resumed``: the ``kx workers=auto`` daemon itself (the very same
  process), but each of the load generator's 16 slots keeps the ticket of
  its previous session and sends RESUME instead of KEY: no RSA on either
  side.  Its first session per slot, in the warm-up, is a full one.

so ``kx workers=auto`` is the full handshake with forward secrecy, ``kx
no-FS`` the one without, ``kx resumed`` the resumed one, all beside TLS 1.3
full handshakes (the TLS server issues no tickets and keeps no session
cache).  How many sessions in each window resumed is checked: all for
``kx resumed``, none for the others.  An ephemeral key rotation (key
generation and one signature, in a worker) that falls inside a measuring
window is counted in it; the script says how many did, and ``run_all.py``
adds the rotation's share per handshake at the measured rate.

One load generator program (``loadgen.py``) drives them all from its own
process with the same concurrency: connect, handshake, read the server's
message, close.  Each run has a warm-up, then a measuring window; the
server's CPU time over the window (psutil: the server and every
process it started) divided by the handshakes completed in it is the server
CPU time per handshake.  On a 2-core machine the load generator needs one
core, so two workers compete with it: read handshakes/s and handshakes per
server CPU-second together.

Daemon options can be added for every KX/1 run, to compare configurations::

    python benchmarks/bench_handshakes.py -- --some-daemon-option VALUE
"""

import shutil
import sys

import harness

# Every client is 127.0.0.1: lift the per-source and total limits so the
# daemon's defence does not throttle its own benchmark.
DAEMON_LIMITS = ["--max-per-source", "100000", "--max-connections", "100000"]
# Where the private-key work runs: in the reactor, or in one worker process
# per CPU (the daemon's default).
IN_REACTOR = "kx workers=0"
WORKERS = "kx workers=auto"
# Issue 11 (revision 2): full handshakes without forward secrecy, and
# resumed sessions, against the default daemon (WORKERS: full, with it).
NO_FS = "kx no-FS"
RESUMED = "kx resumed"
# The daemon's log line for each new ephemeral key (ephemeral.py).
ROTATION_LINE = "new ephemeral key"


def add_options(parser):
    parser.add_argument("--bits", type=int, nargs="+", default=[2048, 3072])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument(
        "--revision-2-bits",
        type=int,
        nargs="*",
        default=[3072],
        help="key sizes at which to add full without forward secrecy and resumed",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=2,
        help="also run this many daemon processes on one socket (1 to skip)",
    )
    parser.add_argument("daemon_args", nargs="*", help="extra daemon options, after --")


def rotations(server_list):
    """Ephemeral keys the daemons have made so far (their log lines)."""
    return sum(server.output().count(ROTATION_LINE) for server in server_list)


def measure(server_list, proto, port, args, fingerprint, cert, resume=False, no_fs=False):
    """One run: (handshakes/s, server CPU ms per handshake, p50 latency ms,
    sessions resumed in the window, ephemeral key rotations in the window)."""
    generator = harness.LoadGenerator.run(
        "handshakes",
        proto=proto,
        port=port,
        fingerprint=fingerprint,
        cert=cert,
        concurrency=args.concurrency,
        warmup=args.warmup,
        duration=args.duration,
        expect="bench",
        resume=resume,
        allow_no_forward_secrecy=no_fs,
    )
    try:
        generator.read(60)  # start
        cpu_before = sum(server.cpu_seconds() for server in server_list)
        keys_before = rotations(server_list) if proto == "kx" else 0
        end = generator.read(args.duration + 60)
        cpu_after = sum(server.cpu_seconds() for server in server_list)
        keys_after = rotations(server_list) if proto == "kx" else 0
    finally:
        generator.finish()
    ok = end["ok"]
    if end["failed"] or not ok:
        raise RuntimeError(f"{proto}: {end['failed']} failed handshakes: {end['errors']}")
    latencies = end["latencies"]
    return (
        ok / end["seconds"],
        (cpu_after - cpu_before) / ok * 1000,
        harness.percentile(latencies, 0.5) * 1000,
        (end.get("resumed", 0), ok),
        keys_after - keys_before,
    )


def main():
    args = harness.arguments(__doc__.split("\n\n")[0], add_options)
    if args.quick:
        args.rounds, args.duration, args.bits = 1, 2.0, [3072]
    harness.raise_fd_limit()
    report = harness.Report("handshakes per second", args.summary)
    report.note(
        f"concurrency {args.concurrency}, {args.rounds} rounds of {args.duration:g} s after "
        f"{args.warmup:g} s warm-up; load generator in its own process; "
        f"daemon options: {' '.join(DAEMON_LIMITS + args.daemon_args)}"
    )
    directory = harness.workdir()
    try:
        for bits in args.bits:
            run_size(report, directory, bits, args)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    report.save()


def run_size(report, directory, bits, args):
    key, cert, fingerprint = harness.key_material(directory, bits)
    extra = DAEMON_LIMITS + args.daemon_args
    servers = {
        IN_REACTOR: ("kx", harness.start_daemons(directory, key, [*extra, "--workers", "0"])),
        WORKERS: ("kx", harness.start_daemons(directory, key, [*extra, "--workers", "auto"])),
        "tls1.3": ("tls1.3", [harness.start_server(directory, "tls1.3", "message", key, cert)]),
        "tls1.2": ("tls1.2", [harness.start_server(directory, "tls1.2", "message", key, cert)]),
    }
    wide = f"kx ×{args.processes}"
    if args.processes > 1:
        servers[wide] = (
            "kx",
            harness.start_daemons(
                directory, key, [*extra, "--workers", "0"], processes=args.processes
            ),
        )
    revision_2 = bits in args.revision_2_bits
    if revision_2:
        servers[NO_FS] = (
            "kx",
            harness.start_daemons(
                directory, key, [*extra, "--workers", "auto", "--no-forward-secrecy"]
            ),
        )
    contestants = list(servers)
    if revision_2:
        # The default daemon again: only the client differs (it resumes).
        contestants.append(RESUMED)
    results = {name: ([], [], []) for name in contestants}
    resumed = {name: [0, 0] for name in contestants}
    rotated = {name: 0 for name in contestants}
    try:
        for _, name in harness.interleave(contestants, args.rounds):
            proto, server_list = servers[WORKERS if name == RESUMED else name]
            rate, cpu, p50, (sessions_resumed, sessions), keys_made = measure(
                server_list,
                proto,
                server_list[0].port,
                args,
                fingerprint,
                cert,
                resume=name == RESUMED,
                no_fs=name == NO_FS,
            )
            for values, value in zip(results[name], (rate, cpu, p50)):
                values.append(value)
            resumed[name][0] += sessions_resumed
            resumed[name][1] += sessions
            rotated[name] += keys_made
    finally:
        for _, server_list in servers.values():
            for server in server_list:
                server.stop()
    for name in contestants:
        if not name.startswith("kx"):
            continue
        count, total = resumed[name]
        # Each figure must be what it says: resumed sessions only where
        # the client resumes, full handshakes everywhere else.
        if (name == RESUMED and count != total) or (name != RESUMED and count):
            raise RuntimeError(f"{name}, {bits}: {count} of {total} sessions resumed")
    if revision_2:
        report.note(
            f"RSA-{bits}: sessions resumed in the windows: {RESUMED} "
            f"{resumed[RESUMED][0]} of {resumed[RESUMED][1]}, {WORKERS} "
            f"{resumed[WORKERS][0]} of {resumed[WORKERS][1]}, {NO_FS} "
            f"{resumed[NO_FS][0]} of {resumed[NO_FS][1]}"
        )
    report.note(
        f"RSA-{bits}: ephemeral key rotations inside measuring windows: "
        + ", ".join(f"{name} {rotated[name]}" for name in contestants if name.startswith("kx"))
    )
    figures = {}
    for name, (rates, cpus, p50s) in results.items():
        figures[name] = (
            report.figure(f"handshakes/s RSA-{bits}", name, rates, "/s"),
            report.figure(f"server CPU per handshake {bits}", name, cpus, "ms"),
            report.figure(f"handshake latency p50 {bits}", name, p50s, "ms"),
            # What one server core could do if the load generator kept up:
            # on a 2-core machine it shares the CPU with the server.
            report.figure(
                f"handshakes per server CPU-s {bits}", name, [1000 / cpu for cpu in cpus], "/s"
            ),
        )
    for name in (IN_REACTOR, WORKERS):
        report.ratio(
            f"handshakes/s {name} / tls1.3, {bits}",
            figures[name][0],
            figures["tls1.3"][0],
            target=1.0,
            better="higher",
        )
        report.ratio(
            f"handshakes per server CPU-s {name} / tls1.3, {bits}",
            figures[name][3],
            figures["tls1.3"][3],
            target=1.0,
            better="higher",
        )
        report.ratio(
            f"server CPU per handshake {name} / tls1.3, {bits}",
            figures[name][1],
            figures["tls1.3"][1],
        )
    report.ratio(
        f"handshakes/s kx workers=auto / workers=0, {bits}",
        figures[WORKERS][0],
        figures[IN_REACTOR][0],
    )
    # Issue 20: the hand-over to the workers costs at most 0.3 ms of CPU.
    report.check(
        f"server CPU per handshake workers=auto − workers=0, {bits}",
        figures[WORKERS][1].median - figures[IN_REACTOR][1].median,
        0.3,
        "ms",
    )
    report.ratio(
        f"handshakes/s {IN_REACTOR} / tls1.2, {bits}", figures[IN_REACTOR][0], figures["tls1.2"][0]
    )
    if args.processes > 1:
        report.ratio(
            f"handshakes/s {args.processes} processes / 1 (workers=0), {bits}",
            figures[wide][0],
            figures[IN_REACTOR][0],
        )
    if revision_2:
        # Issue 11's targets: a resumed session costs the server at most half
        # a TLS 1.3 full handshake; forward secrecy at most 5 % more than
        # without (here over the windows; run_all.py adds the rotations).
        report.ratio(
            f"server CPU per handshake {RESUMED} / tls1.3 full, {bits}",
            figures[RESUMED][1],
            figures["tls1.3"][1],
            target=0.5,
        )
        report.ratio(
            f"server CPU per handshake full FS / no-FS (workers=auto), {bits}",
            figures[WORKERS][1],
            figures[NO_FS][1],
            target=1.05,
        )
        report.ratio(
            f"server CPU per handshake {RESUMED} / full FS, {bits}",
            figures[RESUMED][1],
            figures[WORKERS][1],
        )
        report.ratio(
            f"handshakes/s {RESUMED} / tls1.3 full, {bits}",
            figures[RESUMED][0],
            figures["tls1.3"][0],
        )
        report.ratio(
            f"handshakes/s full FS / no-FS (workers=auto), {bits}",
            figures[WORKERS][0],
            figures[NO_FS][0],
        )


if __name__ == "__main__":
    sys.exit(main())
