"""HAProxy in front: handshakes/s and setup latency through it, against direct.

Contestants, all real ``twistd keyexchange`` daemons with the same options
(the message application, forward secrecy on, ``--workers 0``: one process
each, the private-key work in its reactor) and the same RSA key:

- ``direct``: one daemon, ``--listen tcp:...``; the load generator connects
  to it;
- ``haproxy → 1``: one daemon, ``--listen haproxy:tcp:...``
  (``--trusted-proxies 127.0.0.1/32``), behind HAProxy in TCP mode with
  ``send-proxy-v2`` and a health check; the load generator connects to
  HAProxy, which adds the PROXY header;
- ``haproxy → 3``: three such daemons behind the same HAProxy
  configuration, ``balance roundrobin``.

The same load generator (``loadgen.py handshakes``, plain KX/1: HAProxy
adds the header) keeps ``--concurrency`` sessions in flight: connect,
handshake, read the server's message, close.  Its latency is the whole of
such a session, connect to the last byte: the setup latency.
``haproxy → 1`` / ``direct`` is the cost of the extra hop;
``haproxy → 3`` / ``haproxy → 1`` is what more daemons buy.  Everything
shares the machine's cores (the load generator needs most of one, HAProxy
some of it, each daemon one for its RSA), so on a 2-core machine three
daemons cannot scale threefold: read the ratios with the core count the
report notes.
"""

import os
import shutil
import socket
import sys

import harness
from bench_handshakes import DAEMON_LIMITS

HAPROXY = shutil.which(
    "haproxy", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
)
DIRECT = "direct"
ONE = "haproxy → 1"
THREE = "haproxy → 3"
# Behind HAProxy the daemons trust its address, and only that.
PROXIED = ["--trusted-proxies", "127.0.0.1/32"]
PROXIED_LISTEN = "haproxy:tcp:0:interface=127.0.0.1"

CONFIG = """\
global
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend kx
    bind fd@3
    default_backend kxd
backend kxd
    balance roundrobin
{servers}
"""
SERVER = "    server kx{number} 127.0.0.1:{port} send-proxy-v2 check"


def start_haproxy(directory, name, ports):
    """HAProxy in front of the daemons at ``ports``; its frontend's socket
    is bound and listening here (``bind fd@3``), so it is ready at once."""
    path = os.path.join(directory, f"{name}.cfg")
    with open(path, "w") as f:
        f.write(
            CONFIG.format(
                servers="\n".join(
                    SERVER.format(number=number, port=port) for number, port in enumerate(ports)
                )
            )
        )
    front = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    front.bind(("127.0.0.1", 0))
    front.listen(1024)
    fd = front.fileno()
    # The socket becomes fd 3 in HAProxy, as in the tests (tests/haproxy.py).
    shell = ["/bin/sh", "-c", f'exec "$@" 3<&{fd} {fd}<&-', "sh", HAPROXY, "-db", "-f", path]
    server = harness.Server(shell, directory, name, pass_fds=(fd,))
    server.port = front.getsockname()[1]
    front.close()
    return server


def measure(daemons, proxy, port, args, fingerprint):
    """One run: (handshakes/s, the daemons' CPU ms per handshake, HAProxy's
    CPU ms per handshake (0 without), p50 ms, p99 ms)."""
    proxies = [proxy] if proxy is not None else []
    generator = harness.LoadGenerator.run(
        "handshakes",
        proto="kx",
        port=port,
        fingerprint=fingerprint,
        concurrency=args.concurrency,
        warmup=args.warmup,
        duration=args.duration,
        expect="bench",
    )
    try:
        generator.read(60)  # start
        daemons_before = sum(daemon.cpu_seconds() for daemon in daemons)
        proxy_before = sum(process.cpu_seconds() for process in proxies)
        end = generator.read(args.duration + 60)
        daemons_after = sum(daemon.cpu_seconds() for daemon in daemons)
        proxy_after = sum(process.cpu_seconds() for process in proxies)
    finally:
        generator.finish()
    ok = end["ok"]
    if end["failed"] or not ok:
        raise RuntimeError(f"{end['failed']} failed handshakes: {end['errors']}")
    latencies = end["latencies"]
    return (
        ok / end["seconds"],
        (daemons_after - daemons_before) / ok * 1000,
        (proxy_after - proxy_before) / ok * 1000,
        harness.percentile(latencies, 0.5) * 1000,
        harness.percentile(latencies, 0.99) * 1000,
    )


def main():
    args = harness.arguments(__doc__.split("\n\n")[0], harness.add_load_options)
    if args.quick:
        args.rounds, args.duration = 1, 2.0
    report = harness.Report("HAProxy in front", args.summary)
    if HAPROXY is None:
        report.note("skipped: haproxy is not installed (apt-get install -y haproxy)")
        report.save()
        return 0
    harness.raise_fd_limit()
    extra = [*DAEMON_LIMITS, "--workers", "0", *args.daemon_args]
    report.note(
        f"RSA-{args.bits}, concurrency {args.concurrency}, {args.rounds} rounds of "
        f"{args.duration:g} s after {args.warmup:g} s warm-up, {os.cpu_count()} CPUs; "
        f"daemon options: {' '.join(extra)}; HAProxy: TCP mode, send-proxy-v2, check"
    )
    directory = harness.workdir()
    started = []
    try:
        key, _, fingerprint = harness.key_material(directory, args.bits)
        direct = harness.start_daemons(directory, key, extra)
        started += direct
        behind_one = harness.start_daemons(
            directory, key, [*extra, *PROXIED], listen=PROXIED_LISTEN
        )
        started += behind_one
        behind_three = []
        for _ in range(3):
            behind_three += harness.start_daemons(
                directory, key, [*extra, *PROXIED], listen=PROXIED_LISTEN
            )
        started += behind_three
        haproxy_one = start_haproxy(directory, "haproxy1", [d.port for d in behind_one])
        started.append(haproxy_one)
        haproxy_three = start_haproxy(directory, "haproxy3", [d.port for d in behind_three])
        started.append(haproxy_three)
        contestants = {
            DIRECT: (direct, None, direct[0].port),
            ONE: (behind_one, haproxy_one, haproxy_one.port),
            THREE: (behind_three, haproxy_three, haproxy_three.port),
        }
        results = {name: ([], [], [], [], []) for name in contestants}
        for _, name in harness.interleave(list(contestants), args.rounds):
            daemons, proxy, port = contestants[name]
            run = measure(daemons, proxy, port, args, fingerprint)
            for values, value in zip(results[name], run):
                values.append(value)
        for haproxy in (haproxy_one, haproxy_three):
            if haproxy.process.poll() is not None or " is DOWN" in haproxy.output():
                raise RuntimeError(f"haproxy: a server went down:\n{haproxy.output()[-2000:]}")
    finally:
        for process in started:
            process.stop()
        shutil.rmtree(directory, ignore_errors=True)
    figures = {}
    for name, (rates, cpus, proxy_cpus, p50s, p99s) in results.items():
        figures[name] = (
            report.figure(f"handshakes/s RSA-{args.bits}", name, rates, "/s"),
            report.figure(f"daemon CPU per handshake {args.bits}", name, cpus, "ms"),
            report.figure(f"setup latency p50 {args.bits}", name, p50s, "ms"),
            report.figure(f"setup latency p99 {args.bits}", name, p99s, "ms"),
        )
        if name != DIRECT:
            report.figure(f"HAProxy CPU per handshake {args.bits}", name, proxy_cpus, "ms")
    report.ratio(
        f"handshakes/s {ONE} / {DIRECT}, {args.bits}",
        figures[ONE][0],
        figures[DIRECT][0],
        better="higher",
    )
    report.ratio(
        f"setup latency p50 {ONE} / {DIRECT}, {args.bits}", figures[ONE][2], figures[DIRECT][2]
    )
    report.ratio(
        f"setup latency p99 {ONE} / {DIRECT}, {args.bits}", figures[ONE][3], figures[DIRECT][3]
    )
    report.ratio(
        f"daemon CPU per handshake {ONE} / {DIRECT}, {args.bits}",
        figures[ONE][1],
        figures[DIRECT][1],
    )
    report.ratio(
        f"handshakes/s {THREE} / {ONE}, {args.bits}",
        figures[THREE][0],
        figures[ONE][0],
        better="higher",
    )
    report.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
