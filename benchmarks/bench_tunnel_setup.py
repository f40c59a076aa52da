"""Tunnel connection setup: resumed sessions against full handshakes.

The time from a local TCP connect to the tunnel's listening port until the
first byte comes back through the real ``keyexchange tunnel`` → the real
``twistd keyexchange --application forward`` → a plain TCP echo service
(``servers.py tcp --app echo``), all on 127.0.0.1.  The load generator
(``loadgen.py setup``) makes one connection at a time — connect, send one
byte, wait for it to come back, close — so each figure is one connection's
setup with nothing queued in front of it.

- ``tunnel resumed``: the tunnel keeps the tickets the daemon sends (its
  in-memory pool), so every connection after its first resumes: RESUME
  instead of KEY, no RSA on either side;
- ``tunnel full``: the very same tunnel command against a second daemon,
  identical but for ``--ticket-lifetime 0`` (resumption off): it sends no
  ticket, the tunnel's pool stays empty, and every connection is a full
  handshake with forward secrecy.  The tunnel process and its code are the
  same in both; the full daemon is spared sealing a ticket per session, so
  if anything this favours the full handshake;
- ``direct``: the same echo service without a tunnel — the floor.

Both daemons run with their defaults otherwise (forward secrecy on, a
worker per CPU), RSA-3072.  Each round makes ``--count`` measured
connections per contestant after ``--warmup`` unmeasured ones, the
contestants interleaved; a figure is the median over rounds of each round's
p50 (or p99), with the range.  The tunnel logs whether each connection
resumed; the script checks that every measured connection of ``tunnel
resumed`` did and none of ``tunnel full``.
"""

import shutil
import sys

import harness
from bench_tunnel import start_tunnel

RESUMED = "tunnel resumed"
FULL = "tunnel full"
DIRECT = "direct"
# What the tunnel prints for each connection (tunnel.py, through the CLI).
RESUMED_LINE = ": resumed"
FULL_LINE = ": full handshake"


def add_options(parser):
    parser.add_argument("--count", type=int, default=200, help="measured connections per round")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bits", type=int, default=3072)
    parser.add_argument("daemon_args", nargs="*", help="extra daemon options, after --")


def setup_times(port, count, warmup):
    """Seconds from connect to the first echoed byte, ``count`` connections."""
    generator = harness.LoadGenerator.run(
        "setup", proto="tcp", port=port, count=count, warmup_count=warmup, timeout=30
    )
    try:
        result = generator.read(120)
    finally:
        generator.finish()
    if result["failed"] or len(result["latencies"]) != count:
        raise RuntimeError(
            f"port {port}: {len(result['latencies'])} of {count} connections, "
            f"{result['failed']} failed: {result['errors']}"
        )
    return result["latencies"]


def session_kinds(tunnel):
    """ "resumed" or "full" for every connection the tunnel has logged, in order."""
    kinds = []
    for line in tunnel.output().splitlines():
        if line.endswith(RESUMED_LINE):
            kinds.append("resumed")
        elif line.endswith(FULL_LINE):
            kinds.append("full")
    return kinds


def main():
    args = harness.arguments(__doc__.split("\n\n")[0], add_options)
    if args.quick:
        args.count, args.rounds = 40, 1
    report = harness.Report(
        f"tunnel connection setup: connect to first echoed byte, RSA-{args.bits}", args.summary
    )
    directory = harness.workdir()
    processes = []
    try:
        key, _, fingerprint = harness.key_material(directory, args.bits)
        echo = harness.start_server(directory, "tcp", "echo")
        processes.append(echo)
        forward = ["--application", "forward", "--forward-to", f"tcp:127.0.0.1:{echo.port}"]
        (resuming,) = harness.start_daemons(directory, key, [*forward, *args.daemon_args])
        processes.append(resuming)
        (full,) = harness.start_daemons(
            directory, key, [*forward, *args.daemon_args, "--ticket-lifetime", "0"]
        )
        processes.append(full)
        tunnels = {
            RESUMED: start_tunnel(directory, resuming, fingerprint, "tunnel-resumed"),
            FULL: start_tunnel(directory, full, fingerprint, "tunnel-full"),
        }
        processes += tunnels.values()
        ports = {RESUMED: tunnels[RESUMED].port, FULL: tunnels[FULL].port, DIRECT: echo.port}
        report.note(
            f"{args.count} connections per round one at a time after {args.warmup} unmeasured; "
            f"{FULL}: its daemon has --ticket-lifetime 0 (no tickets), otherwise the same; "
            "both daemons with forward secrecy on (the default)"
        )
        p50s = {name: [] for name in ports}
        p99s = {name: [] for name in ports}
        checked = {RESUMED: [0, 0], FULL: [0, 0]}
        for _, name in harness.interleave(list(ports), args.rounds):
            before = len(session_kinds(tunnels[name])) if name in tunnels else 0
            times = setup_times(ports[name], args.count, args.warmup)
            p50s[name].append(harness.percentile(times, 0.5) * 1000)
            p99s[name].append(harness.percentile(times, 0.99) * 1000)
            if name in tunnels:
                # The tunnel logs a connection once its session is up, in
                # order; the measured ones are the last ``count`` of this batch.
                kinds = session_kinds(tunnels[name])[before:]
                measured = kinds[-args.count :]
                if len(kinds) != args.count + args.warmup:
                    raise RuntimeError(
                        f"{name}: the tunnel logged {len(kinds)} sessions, "
                        f"expected {args.count + args.warmup}"
                    )
                checked[name][0] += measured.count("resumed")
                checked[name][1] += len(measured)
    finally:
        for process in reversed(processes):
            process.stop()
        shutil.rmtree(directory, ignore_errors=True)
    resumed, total = checked[RESUMED]
    full_resumed, full_total = checked[FULL]
    if resumed != total or full_resumed:
        raise RuntimeError(
            f"{RESUMED}: {resumed} of {total} resumed; {FULL}: {full_resumed} of "
            f"{full_total} resumed"
        )
    report.note(
        f"measured connections resumed: {RESUMED} {resumed} of {total}, "
        f"{FULL} {full_resumed} of {full_total}"
    )
    figures = {}
    for name in ports:
        figures[name, 50] = report.figure("tunnel setup p50", name, p50s[name], "ms")
        figures[name, 99] = report.figure("tunnel setup p99", name, p99s[name], "ms")
    report.ratio(
        f"tunnel setup p50 resumed / full, RSA-{args.bits}",
        figures[RESUMED, 50],
        figures[FULL, 50],
    )
    report.ratio(
        f"tunnel setup p99 resumed / full, RSA-{args.bits}",
        figures[RESUMED, 99],
        figures[FULL, 99],
    )
    report.save()


if __name__ == "__main__":
    sys.exit(main())
