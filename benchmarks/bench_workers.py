"""What the worker processes cost: ``--workers auto`` against ``--workers 0``.

Two real ``twistd keyexchange`` daemons, the same key (RSA-3072 by
default), forward secrecy on, driven in turn by the load generator as
``bench_handshakes.py`` drives them (full handshakes, concurrency 16);
the figure is the server's CPU per handshake, workers included.  Target:
``auto`` costs at most 0.3 ms of CPU per handshake more than ``0``.

``--baseline DIR`` adds the same two daemons run from another source tree
(for instance ``mkdir DIR && git archive COMMIT | tar -x -C DIR``), in the
same interleaved rounds, so a change is measured before and after in one
run::

    python benchmarks/bench_workers.py
    python benchmarks/bench_workers.py --baseline /tmp/before --rounds 5
"""

import os
import shutil
import sys

import bench_handshakes
import harness

#: Issue 20: the hand-over to a worker may cost this much CPU per handshake.
WORKER_OVERHEAD_LIMIT_MS = 0.3


def add_options(parser):
    parser.add_argument("--bits", type=int, default=3072)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--baseline", help="a source tree to run beside this one")


def main():
    args = harness.arguments(__doc__.split("\n\n")[0], add_options)
    if args.quick:
        args.rounds, args.duration = 1, 2.0
    if args.baseline and not os.path.isdir(os.path.join(args.baseline, "keyexchanged")):
        sys.exit(f"--baseline {args.baseline}: no keyexchanged/ there; give a source tree")
    harness.raise_fd_limit()
    report = harness.Report("worker processes: --workers auto against 0", args.summary)
    report.note(
        f"RSA-{args.bits}, concurrency {args.concurrency}, {args.rounds} rounds of "
        f"{args.duration:g} s after {args.warmup:g} s warm-up"
        + (f"; baseline tree {args.baseline}" if args.baseline else "")
    )
    directory = harness.workdir()
    trees = [("", None)]
    if args.baseline:
        trees.insert(0, ("baseline ", os.path.abspath(args.baseline)))
    servers = {}
    try:
        key, cert, fingerprint = harness.key_material(directory, args.bits)
        for prefix, tree in trees:
            env = harness.environment(PYTHONPATH=tree) if tree else None
            for workers in ("0", "auto"):
                argv = harness.daemon_argv(
                    key, [*bench_handshakes.DAEMON_LIMITS, "--workers", workers]
                )
                server = harness.Server(argv, directory, f"kx-{workers}", env=env)
                servers[f"{prefix}workers={workers}"] = server
                server.wait_listening()
        cpus = {name: [] for name in servers}
        for _, name in harness.interleave(list(servers), args.rounds):
            server = servers[name]
            _, cpu, _, _, _ = bench_handshakes.measure(
                [server], "kx", server.port, args, fingerprint, cert
            )
            cpus[name].append(cpu)
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(directory, ignore_errors=True)
    figures = {
        name: report.figure(f"server CPU per handshake {args.bits}", name, values, "ms")
        for name, values in cpus.items()
    }
    for prefix, _ in trees:
        report.check(
            f"{prefix}CPU per handshake workers=auto − workers=0, {args.bits}",
            figures[f"{prefix}workers=auto"].median - figures[f"{prefix}workers=0"].median,
            WORKER_OVERHEAD_LIMIT_MS,
            "ms",
        )
    if args.baseline:
        for workers in ("0", "auto"):
            report.ratio(
                f"CPU per handshake workers={workers}, this tree / baseline",
                figures[f"workers={workers}"],
                figures[f"baseline workers={workers}"],
            )
    report.save()


if __name__ == "__main__":
    sys.exit(main())
