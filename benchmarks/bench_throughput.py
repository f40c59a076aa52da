"""Channel throughput: 256 MiB through one KX/1 session, Twisted TLS, spiped,
in both directions.

- ``kx``: the daemon's service (``servers.py kx``: tap options and
  ``makeService``) with a source application that writes 256 MiB as fast
  as the transport takes it (download), or a sink that reads them (upload);
  the KX/1 client is the project's own.
- ``tls1.3``: the same applications behind Twisted's TLS (pyOpenSSL,
  TLS_AES_256_GCM_SHA384, the same AES-256-GCM as KX/1).
- ``spiped``: the same bytes from a plain TCP source, or into a plain TCP
  sink, through a pair of spiped processes (``-d`` in front of the server,
  ``-e`` in front of the client), when spiped is installed.

Download: the load generator reads to the end and times from connect to
the last byte.  Upload: it writes as fast as its transport takes the bytes
and times from connect to the sink's answer after the last byte.  The
handshake is under 0.1 % of either.  MB are 10^6 bytes.
"""

import os
import shutil
import subprocess
import sys
import time

import harness

MIB = 1024 * 1024


def add_options(parser):
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bits", type=int, default=3072)
    parser.add_argument("daemon_args", nargs="*", help="extra daemon options, after --")


def transfer(mode, proto, port, nbytes, fingerprint="", cert=""):
    """MB/s of one ``throughput`` (download) or ``upload`` of ``nbytes``."""
    generator = harness.LoadGenerator.run(
        mode,
        proto=proto,
        port=port,
        bytes=nbytes,
        fingerprint=fingerprint,
        cert=cert,
        timeout=120,
    )
    try:
        result = generator.read(180)
    finally:
        generator.finish()
    if not result["ok"]:
        raise RuntimeError(f"{proto}: {result['bytes']} of {nbytes} bytes: {result['detail']}")
    return nbytes / result["seconds"] / 1e6


class SpipedPair:
    """client → spiped -e → spiped -d → 127.0.0.1:``target``.

    ``port`` is where the encrypting end listens.  Each end is started with
    the same fresh 32-byte key, at most ``-n 4`` connections, in the
    foreground (``-F``), on 127.0.0.1 only.
    """

    def __init__(self, directory, target):
        key = os.path.join(directory, f"spiped-{target}.key")
        with open(key, "wb") as f:
            f.write(os.urandom(32))
        self.middle = harness.free_port()
        self.port = harness.free_port()
        common = ["-F", "-k", key, "-n", "4"]
        self.decrypt = subprocess.Popen(
            [
                "spiped",
                "-d",
                "-s",
                f"[127.0.0.1]:{self.middle}",
                "-t",
                f"[127.0.0.1]:{target}",
                *common,
            ]
        )
        self.encrypt = subprocess.Popen(
            [
                "spiped",
                "-e",
                "-s",
                f"[127.0.0.1]:{self.port}",
                "-t",
                f"[127.0.0.1]:{self.middle}",
                *common,
            ]
        )
        harness.wait_port(self.port)
        harness.wait_port(self.middle)

    def stop(self):
        for process in (self.encrypt, self.decrypt):
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


class Spiped(SpipedPair):
    """source (or sink) ← spiped -d ← spiped -e ← client, all on 127.0.0.1."""

    def __init__(self, directory, nbytes, app="source"):
        self.server = harness.start_server(directory, "tcp", app, nbytes=nbytes)
        super().__init__(directory, self.server.port)

    def stop(self):
        super().stop()
        self.server.stop()


#: direction → (the load generator's mode, the server's application)
DIRECTIONS = {"download": ("throughput", "source"), "upload": ("upload", "sink")}


def main():
    args = harness.arguments(__doc__.split("\n\n")[0], add_options)
    if args.quick:
        args.mib, args.rounds = 32, 1
    nbytes = args.mib * MIB
    report = harness.Report(f"channel throughput, {args.mib} MiB per session", args.summary)
    directory = harness.workdir()
    servers, spipeds = {}, {}
    try:
        key, cert, fingerprint = harness.key_material(directory, args.bits)
        for direction, (_, app) in DIRECTIONS.items():
            servers[direction, "kx"] = harness.start_server(
                directory, "kx", app, key, extra=args.daemon_args, nbytes=nbytes
            )
            servers[direction, "tls1.3"] = harness.start_server(
                directory, "tls1.3", app, key, cert, nbytes=nbytes
            )
            if shutil.which("spiped"):
                spipeds[direction] = Spiped(directory, nbytes, app)
        if not spipeds:
            report.note("spiped: skipped, not installed (apt-get install spiped)")
        contestants = [
            (direction, name)
            for direction in DIRECTIONS
            for name in ("kx", "tls1.3", "spiped")
            if name != "spiped" or direction in spipeds
        ]
        rates = {contestant: [] for contestant in contestants}
        for _, (direction, name) in harness.interleave(contestants, args.rounds):
            mode = DIRECTIONS[direction][0]
            if name == "spiped":
                rate = transfer(mode, "tcp", spipeds[direction].port, nbytes)
            else:
                port = servers[direction, name].port
                rate = transfer(mode, name, port, nbytes, fingerprint, cert)
            rates[direction, name].append(rate)
            time.sleep(0.2)
    finally:
        for server in servers.values():
            server.stop()
        for pair in spipeds.values():
            pair.stop()
        shutil.rmtree(directory, ignore_errors=True)
    for direction in DIRECTIONS:
        figures = {
            name: report.figure(f"throughput {direction}", name, rates[direction, name], "MB/s")
            for (way, name) in rates
            if way == direction
        }
        report.ratio(
            f"throughput {direction} kx / tls1.3", figures["kx"], figures["tls1.3"], 0.75, "higher"
        )
        if "spiped" in figures:
            report.ratio(
                f"throughput {direction} kx / spiped",
                figures["kx"],
                figures["spiped"],
                2.0,
                "higher",
            )
    report.save()


if __name__ == "__main__":
    sys.exit(main())
