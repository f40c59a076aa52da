"""Memory: resident bytes per established, idle session, at 1 000 and 5 000.

Each run starts a fresh server, opens a few sessions and closes them (so
imports, the first cipher objects and the reactor's tables are paid for),
reads its resident size, then has the load generator open N sessions and
leave them idle; once all are up and the server has settled, the growth in
resident size divided by N is the cost of one idle session.

- ``kx``: the daemon's service (tap options, ``makeService``) with the echo
  application, so a session stays open in both directions; its defaults
  otherwise (forward secrecy on, a resumption ticket sent per session), and
  the load generator's clients require forward secrecy;
- ``tls1.3``: the echo application behind Twisted's TLS (pyOpenSSL);
- ``tcp``: the echo application on plain TCP — the floor.

File descriptors: both processes need N + a few; the scripts raise
RLIMIT_NOFILE to the hard limit and skip a size that would not fit.
"""

import shutil
import sys
import time

import harness

DAEMON_LIMITS = ["--max-per-source", "100000", "--max-connections", "100000"]


def add_options(parser):
    parser.add_argument("--sessions", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--bits", type=int, default=2048)
    parser.add_argument("daemon_args", nargs="*", help="extra daemon options, after --")


def open_sessions(server, proto, count, fingerprint, cert, extra=()):
    generator = harness.LoadGenerator.run(
        "idle",
        proto=proto,
        port=server.port,
        sessions=count,
        concurrency=32,
        fingerprint=fingerprint,
        cert=cert,
        timeout=60,
        # A daemon told to offer no ephemeral key needs clients that accept it.
        allow_no_forward_secrecy=proto == "kx" and "--no-forward-secrecy" in extra,
    )
    ready = generator.read(240)
    return generator, ready


def one_run(directory, name, count, key, cert, fingerprint, extra):
    if name == "kx":
        server = harness.start_server(directory, "kx", "echo", key, extra=extra)
    elif name == "tcp":
        server = harness.start_server(directory, "tcp", "echo")
    else:
        server = harness.start_server(directory, name, "echo", key, cert)
    try:
        warm, _ = open_sessions(server, name, 50, fingerprint, cert, extra)
        warm.finish()
        time.sleep(0.5)
        before = harness.settle(server)
        generator, ready = open_sessions(server, name, count, fingerprint, cert, extra)
        try:
            if ready["open"] != count:
                raise RuntimeError(f"{name}: only {ready['open']} of {count} sessions opened")
            after = harness.settle(server)
        finally:
            generator.finish()
    finally:
        server.stop()
    return (after - before) / count


def main():
    args = harness.arguments(__doc__.split("\n\n")[0], add_options)
    if args.quick:
        args.sessions, args.rounds = [1000], 1
    limit = harness.raise_fd_limit(max(args.sessions) * 2 + 1000)
    report = harness.Report("memory per idle session", args.summary)
    report.note(
        f"RLIMIT_NOFILE {limit}; RSA-{args.bits}; fresh server per run; 1 KiB = 1024 B; "
        "KX/1 with the daemon's defaults (forward secrecy on, a ticket per session), "
        "clients requiring forward secrecy"
        + (f"; daemon options: {' '.join(args.daemon_args)}" if args.daemon_args else "")
    )
    directory = harness.workdir()
    try:
        key, cert, fingerprint = harness.key_material(directory, args.bits)
        for count in args.sessions:
            if count + 100 > limit:
                report.note(f"{count} sessions: skipped, RLIMIT_NOFILE is {limit}")
                continue
            per = {name: [] for name in ("kx", "tls1.3", "tcp")}
            for _, name in harness.interleave(list(per), args.rounds):
                per[name].append(
                    one_run(
                        directory,
                        name,
                        count,
                        key,
                        cert,
                        fingerprint,
                        DAEMON_LIMITS + args.daemon_args,
                    )
                    / 1024
                )
            figures = {
                name: report.figure(f"RSS per idle session, {count}", name, values, "KiB")
                for name, values in per.items()
            }
            report.check(f"kx RSS per idle session, {count}", figures["kx"].median, 4.0, "KiB")
            report.ratio(f"RSS per session kx / tls1.3, {count}", figures["kx"], figures["tls1.3"])
            report.ratio(f"RSS per session kx / tcp, {count}", figures["kx"], figures["tcp"])
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    report.save()


if __name__ == "__main__":
    sys.exit(main())
