"""Tunnel throughput: a TCP service read directly, and through the tunnel.

- ``direct``: the load generator reads ``--mib`` MiB from a plain TCP
  source (``servers.py tcp --app source``) on 127.0.0.1.
- ``tunnel``: the same source behind the real ``twistd keyexchange
  --application forward``, reached through the real ``keyexchange tunnel``:
  every byte is sealed and opened twice over (tunnel ⇄ daemon) and crosses
  three extra processes.

Both are read by the same load generator (``--proto tcp``), interleaved.
MB are 10^6 bytes.
"""

import shutil
import sys
import time

import harness
from bench_throughput import MIB, read_all


def add_options(parser):
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bits", type=int, default=3072)
    parser.add_argument("daemon_args", nargs="*", help="extra daemon options, after --")


def main():
    args = harness.arguments(__doc__.split("\n\n")[0], add_options)
    if args.quick:
        args.mib, args.rounds = 32, 1
    nbytes = args.mib * MIB
    report = harness.Report(f"tunnel throughput, {args.mib} MiB per connection", args.summary)
    directory = harness.workdir()
    processes = []
    try:
        key, _, fingerprint = harness.key_material(directory, args.bits)
        source = harness.start_server(directory, "tcp", "source", nbytes=nbytes)
        processes.append(source)
        (daemon,) = harness.start_daemons(
            directory,
            key,
            extra=[
                "--application",
                "forward",
                "--forward-to",
                f"tcp:127.0.0.1:{source.port}",
                *args.daemon_args,
            ],
        )
        processes.append(daemon)
        tunnel = harness.Server(
            [
                sys.executable,
                "-m",
                "keyexchanged.cli",
                "tunnel",
                "--listen",
                harness.LOCAL,
                "--server",
                f"127.0.0.1:{daemon.port}",
                "--fingerprint",
                fingerprint,
            ],
            directory,
            "tunnel",
        )
        processes.append(tunnel)
        tunnel.wait_listening()
        ports = {"direct": source.port, "tunnel": tunnel.port}
        rates = {name: [] for name in ports}
        for _, name in harness.interleave(list(ports), args.rounds):
            rates[name].append(read_all("tcp", ports[name], nbytes))
            time.sleep(0.2)
    finally:
        for process in reversed(processes):
            process.stop()
        shutil.rmtree(directory, ignore_errors=True)
    figures = {name: report.figure("throughput", name, rates[name], "MB/s") for name in rates}
    report.ratio("tunnel throughput / direct TCP", figures["tunnel"], figures["direct"])
    report.save()


if __name__ == "__main__":
    sys.exit(main())
