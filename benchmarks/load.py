"""``make load``: load and soak of the real daemon (issue 5 §4), bounded.

1. Handshakes: 2 000 sessions from 200 concurrent clients against
   ``twistd keyexchange``; each must receive the exact message and a clean
   END.  Reports ok, failed (an error or a wrong message), lost (no answer
   within 30 s) and the p50/p99 latency.
2. Slowloris: a second daemon started with a short ``--handshake-timeout``
   (5 s, so the run stays short; the default is 10 s) gets 500 connections
   that read HELLO and never send KEY.  While they are all open, 300 honest
   handshakes (concurrency 20) must all succeed; then every idle connection
   must be cut with ERROR timeout between 5 s and 5 s + 3 s after it opened.
3. Memory: the first daemon's resident size after a 20-handshake warm-up,
   and again after the load and a pause; it must stay within MARGIN.

All clients are on 127.0.0.1, so both daemons run with the per-source and
total connection limits raised (``--max-per-source 4096 --max-connections
4096``), and with room for every client's KEY at once (``--max-handshakes
256``: 200 clients may all send KEY in the same instant, and beyond the
limit a newcomer is told ``busy`` by design); that the limits themselves
work is for the tests.  Both listen with
``backlog=1024`` (see LISTEN).  Daemon options
after ``--`` are added to both daemons.  Exit status 0 only when every check
passes.
"""

import argparse
import shutil
import sys
import time

import harness

MESSAGE = "load test: the exact message, checked by every client"
HANDSHAKE_TIMEOUT = 5.0
# Growth allowed in resident size after the load: the allocator keeps some
# freed memory, the logger and the reactor keep some tables; a leak of one
# session in ten at 2 000 sessions would pass, a leak per session would not.
MARGIN = 8 * 1024 * 1024
LIMITS = ["--max-per-source", "4096", "--max-connections", "4096", "--max-handshakes", "256"]
# Twisted listens with a backlog of 50.  200 clients connecting at once
# overflow it: the kernel drops the last ACK of their TCP handshakes, and
# those clients wait for a HELLO that comes many seconds later, if at all.
# A daemon facing bursts needs a longer queue, which the endpoint gives.
LISTEN = "tcp:0:interface=127.0.0.1:backlog=1024"


def handshakes(server, fingerprint, count, concurrency, timeout=30):
    generator = harness.LoadGenerator.run(
        "handshakes",
        proto="kx",
        port=server.port,
        fingerprint=fingerprint,
        count=count,
        concurrency=concurrency,
        expect=MESSAGE,
        timeout=timeout,
    )
    try:
        return generator.read(timeout * 4)
    finally:
        generator.finish()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bits", type=int, default=3072)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--slowloris", type=int, default=500)
    parser.add_argument("daemon_args", nargs="*", help="extra daemon options, after --")
    args = parser.parse_args()
    harness.raise_fd_limit()
    checks = []

    def check(label, ok, detail):
        checks.append(ok)
        print(f"   {'ok  ' if ok else 'FAIL'} {label}: {detail}", flush=True)

    directory = harness.workdir()
    servers = []
    try:
        key, _, fingerprint = harness.key_material(directory, args.bits)
        extra = LIMITS + args.daemon_args
        print(
            f"== load: RSA-{args.bits}; daemon options --listen {LISTEN} {' '.join(extra)}",
            flush=True,
        )
        [daemon] = harness.start_daemons(directory, key, extra, message=MESSAGE, listen=LISTEN)
        servers.append(daemon)
        handshakes(daemon, fingerprint, 20, 4)
        before = harness.settle(daemon)

        started = time.monotonic()
        result = handshakes(daemon, fingerprint, args.count, args.concurrency)
        seconds = time.monotonic() - started
        latencies = result["latencies"]
        p50 = harness.percentile(latencies, 0.5) * 1000 if latencies else float("nan")
        p99 = harness.percentile(latencies, 0.99) * 1000 if latencies else float("nan")
        print(
            f"   {args.count} handshakes, {args.concurrency} concurrent: ok {result['ok']}, "
            f"failed {result['failed']}, lost {result['lost']}; latency p50 {p50:.1f} ms, "
            f"p99 {p99:.1f} ms; {seconds:.1f} s ({result['ok'] / seconds:.0f}/s)",
            flush=True,
        )
        if result["errors"]:
            print(f"   errors: {result['errors']}", flush=True)
        check(
            "every client got the exact message",
            result["ok"] == args.count,
            f"{result['ok']} of {args.count}",
        )

        print(
            f"== slowloris: {args.slowloris} half-handshakes against a daemon with "
            f"--handshake-timeout {HANDSHAKE_TIMEOUT:g} (short so the run stays short)",
            flush=True,
        )
        [guarded] = harness.start_daemons(
            directory,
            key,
            [*extra, "--handshake-timeout", str(HANDSHAKE_TIMEOUT)],
            message=MESSAGE,
            listen=LISTEN,
        )
        servers.append(guarded)
        idle = harness.LoadGenerator.run(
            "slowloris",
            proto="tcp",
            port=guarded.port,
            sessions=args.slowloris,
            timeout=HANDSHAKE_TIMEOUT * 6,
        )
        try:
            ready = idle.read(HANDSHAKE_TIMEOUT * 2)
            opened = time.monotonic()
            print(f"   {ready.get('waiting', 0)} connections wait half-way", flush=True)
            honest = handshakes(guarded, fingerprint, 300, 20)
            honest_seconds = time.monotonic() - opened
            check(
                "honest handshakes succeed while the slowloris connections are open",
                honest["ok"] == 300 and honest_seconds < HANDSHAKE_TIMEOUT,
                f"{honest['ok']} of 300 ok, failed {honest['failed']}, lost "
                f"{honest['lost']}, done {honest_seconds:.1f} s after the idle ones were all "
                f"open (before their {HANDSHAKE_TIMEOUT:g} s timeout)",
            )
            cut = idle.read(HANDSHAKE_TIMEOUT * 6)
        finally:
            idle.finish()
        cuts = cut["cuts"]
        in_window = [c for c in cuts if HANDSHAKE_TIMEOUT - 0.1 <= c <= HANDSHAKE_TIMEOUT + 3]
        summary = (
            f"{len(cuts)} cut, {cut['refused']} refused before HELLO, "
            f"{cut['timeout_errors']} with ERROR timeout"
        )
        if cuts:
            summary += (
                f"; cut after {min(cuts):.2f}–{max(cuts):.2f} s "
                f"(median {harness.percentile(cuts, 0.5):.2f} s)"
            )
        check(
            "idle half-handshakes are cut at the handshake timeout",
            len(in_window) == args.slowloris and cut["timeout_errors"] == args.slowloris,
            summary,
        )

        after = harness.settle(daemon)
        check(
            f"resident size returns within {MARGIN // (1024 * 1024)} MiB",
            after - before <= MARGIN,
            f"{before / 2**20:.1f} MiB after warm-up, {after / 2**20:.1f} MiB after "
            f"{args.count} handshakes ({(after - before) / 2**20:+.1f} MiB)",
        )
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(directory, ignore_errors=True)
    passed = all(checks) and len(checks) == 4
    print(f"== load: {'all checks passed' if passed else 'FAILED'}", flush=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
