"""Responsiveness: small-message round trips on an established session while
other clients run handshakes flat out.

A probe process holds one echo session and sends 32 bytes, waits for them to
come back, pauses 5 ms, and so on; it reports the round trips of the
measuring window.  First alone (the quiet figure), then while a second
process floods the same server with handshakes (concurrency 16).  The
flood generator runs at nice 10 so that the probe, not the flood, gets the
second core when they compete; the server's own priority is untouched.

- ``kx workers=0``: the daemon's service (tap options, ``makeService``)
  with the echo application, RSA-3072 with gmpy2, decrypting every KEY in
  the reactor (``--workers 0``);
- ``kx workers=auto``: the same with one decryption worker process per CPU
  (the default); the server's CPU share counts the workers too, so it can
  pass 100 % on two cores;
- ``tls1.3``: the echo application behind Twisted's TLS, same key.

Both KX/1 daemons keep their other defaults: forward secrecy on (KEY is
decrypted with the current ephemeral key) and a ticket sent per session;
the probe and the flood require forward secrecy, and the flood never
resumes, so every flood handshake is a full one.
"""

import shutil
import sys

import harness

DAEMON_LIMITS = ["--max-per-source", "100000", "--max-connections", "100000"]
KX_CONTESTANTS = {"kx workers=0": ["--workers", "0"], "kx workers=auto": ["--workers", "auto"]}


def add_options(parser):
    parser.add_argument("--bits", type=int, default=3072)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("daemon_args", nargs="*", help="extra daemon options, after --")


def probe_window(server, proto, fingerprint, cert, duration, flood):
    probe = harness.LoadGenerator.run(
        "rtt",
        proto=proto,
        port=server.port,
        fingerprint=fingerprint,
        cert=cert,
        interval=0.005,
        size=32,
    )
    generator = None
    try:
        probe.read(30)  # ready
        if flood:
            generator = harness.LoadGenerator.run(
                "handshakes",
                proto=proto,
                port=server.port,
                fingerprint=fingerprint,
                cert=cert,
                concurrency=flood,
                warmup=1,
                duration=duration + 2,
                nice=10,
            )
            generator.read(30)  # the flood is at full speed
        cpu = server.cpu_seconds()
        probe.tell(f"measure {duration}")
        rtts = probe.read(duration + 30)["rtts"]
        busy = (server.cpu_seconds() - cpu) / duration
    finally:
        if generator is not None:
            generator.process.kill()
            generator.finish()
        probe.finish()
    if not rtts:
        raise RuntimeError(f"{proto}: no round trips measured")
    return (
        harness.percentile(rtts, 0.5) * 1000,
        harness.percentile(rtts, 0.99) * 1000,
        max(rtts) * 1000,
        busy,
    )


def main():
    args = harness.arguments(__doc__.split("\n\n")[0], add_options)
    if args.quick:
        args.rounds, args.duration = 1, 3.0
    harness.raise_fd_limit()
    report = harness.Report(
        f"responsiveness: 32-byte round trips during a handshake flood, RSA-{args.bits}",
        args.summary,
    )
    report.note(
        "KX/1: the daemon's defaults but --workers (forward secrecy on); probe and flood "
        "require forward secrecy; the flood's handshakes are all full (no resumption)"
    )
    directory = harness.workdir()
    servers = {}
    try:
        key, cert, fingerprint = harness.key_material(directory, args.bits)
        for name, workers in KX_CONTESTANTS.items():
            servers[name] = harness.start_server(
                directory, "kx", "echo", key, extra=[*DAEMON_LIMITS, *args.daemon_args, *workers]
            )
        servers["tls1.3"] = harness.start_server(directory, "tls1.3", "echo", key, cert)
        results = {}
        runs = [(name, flood) for flood in (0, args.concurrency) for name in servers]
        for _, (name, flood) in harness.interleave(runs, args.rounds):
            proto = "kx" if name in KX_CONTESTANTS else name
            values = probe_window(servers[name], proto, fingerprint, cert, args.duration, flood)
            results.setdefault((name, flood), []).append(values)
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(directory, ignore_errors=True)
    figures = {}
    for (name, flood), values in results.items():
        state = f"flood ×{flood}" if flood else "quiet"
        figures[name, flood, 50] = report.figure(
            f"rtt p50, {state}", name, [v[0] for v in values], "ms"
        )
        figures[name, flood, 99] = report.figure(
            f"rtt p99, {state}", name, [v[1] for v in values], "ms"
        )
        report.figure(f"rtt max, {state}", name, [v[2] for v in values], "ms")
        report.figure(f"server CPU busy, {state}", name, [v[3] * 100 for v in values], "%")
    flood = args.concurrency
    for name in KX_CONTESTANTS:
        report.check(
            f"{name} rtt p99 during the flood, RSA-{args.bits}",
            figures[name, flood, 99].median,
            10.0,
            "ms",
        )
        report.ratio(
            f"rtt p99 during the flood {name} / tls1.3",
            figures[name, flood, 99],
            figures["tls1.3", flood, 99],
        )
    report.save()


if __name__ == "__main__":
    sys.exit(main())
