"""Handshakes per second with ``--processes``: 1 (the single-process
daemon), 2 and auto (one per CPU), all else the daemon's defaults.

Each contestant is the real ``twistd keyexchange`` with the same RSA-3072
key, forward secrecy on, ``workers = auto`` (which with N processes gives
each CPUs/N workers, at least one); with N > 1 the parent listens and its
N children serve, and the figure counts the CPU of the parent, the
children and their workers.  The load generator (``loadgen.py``, the
handshakes mode of bench_handshakes.py: connect, full handshake, read the
message, close; concurrency 16) runs in its own process, and the
contestants take turns over ``--rounds``.

On a 2-core machine the load generator needs about one core of the two, so
no number of daemon processes can do much better than one: read the ratio
as "what a second process costs or gains when the cores are already
shared", not as the scaling a machine with spare cores would see.  ``auto``
is ``os.cpu_count()``: on 2 cores, the same as ``2``.  Each process makes
its own ephemeral keys, so N processes generate N keys per
``ephemeral-interval``; the script says how many fell inside the windows.
"""

import os
import shutil
import sys

import bench_handshakes
import harness

DAEMON_LIMITS = bench_handshakes.DAEMON_LIMITS
SINGLE = "processes=1"


def start(directory, key, processes, extra):
    (server,) = harness.start_daemons(directory, key, extra, processes=processes)
    return server


def main():
    args = harness.arguments(__doc__.split("\n\n")[0], harness.add_load_options)
    if args.quick:
        args.rounds, args.duration = 1, 2.0
    harness.raise_fd_limit()
    cpus = os.cpu_count() or 1
    report = harness.Report("handshakes per second, --processes", args.summary)
    extra = DAEMON_LIMITS + args.daemon_args
    report.note(
        f"RSA-{args.bits}, concurrency {args.concurrency}, {args.rounds} rounds of "
        f"{args.duration:g} s after {args.warmup:g} s warm-up; {cpus} CPUs (auto = {cpus}); "
        f"the load generator shares them; daemon options: {' '.join(extra)}"
    )
    directory = harness.workdir()
    servers = {}
    try:
        key, cert, fingerprint = harness.key_material(directory, args.bits)
        for processes in ("1", "2", "auto"):
            servers[f"processes={processes}"] = start(directory, key, processes, extra)
        results = {name: ([], []) for name in servers}
        rotations = dict.fromkeys(servers, 0)
        for _, name in harness.interleave(list(servers), args.rounds):
            server = servers[name]
            rate, cpu, _p50, (resumed, _sessions), keys_made = bench_handshakes.measure(
                [server], "kx", server.port, args, fingerprint, cert
            )
            if resumed:
                raise RuntimeError(f"{name}: {resumed} sessions resumed; all must be full")
            results[name][0].append(rate)
            results[name][1].append(cpu)
            rotations[name] += keys_made
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(directory, ignore_errors=True)
    # Each process makes its own ephemeral keys (one RSA key generation per
    # process every ephemeral-interval): one that falls in a window counts.
    report.note(
        "ephemeral key rotations inside measuring windows: "
        + ", ".join(f"{name} {count}" for name, count in rotations.items())
    )
    figures = {}
    for name, (rates, cpus_ms) in results.items():
        figures[name] = (
            report.figure(f"handshakes/s RSA-{args.bits}", name, rates, "/s"),
            report.figure(f"server CPU per handshake {args.bits}", name, cpus_ms, "ms"),
        )
    for name in figures:
        if name == SINGLE:
            continue
        report.ratio(
            f"handshakes/s {name} / {SINGLE}, {args.bits}",
            figures[name][0],
            figures[SINGLE][0],
            better="higher",
        )
        report.ratio(
            f"server CPU per handshake {name} / {SINGLE}, {args.bits}",
            figures[name][1],
            figures[SINGLE][1],
        )
    report.save()


if __name__ == "__main__":
    sys.exit(main())
