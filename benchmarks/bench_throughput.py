"""Channel throughput: 256 MiB through one KX/1 session, Twisted TLS, spiped.

- ``kx``: the daemon's service (``servers.py kx``: tap options and
  ``makeService``) with a source application that writes 256 MiB as fast
  as the transport takes it; the KX/1 client is the project's own.
- ``tls1.3``: the same source application behind Twisted's TLS
  (pyOpenSSL, TLS_AES_256_GCM_SHA384, the same AES-256-GCM as KX/1).
- ``spiped``: the same bytes from a plain TCP source through a pair of
  spiped processes (``-d`` in front of the server, ``-e`` in front of the
  client), when spiped is installed.

The load generator reads to the end and times from connect to the last
byte (the handshake is under 0.1 % of that).  MB are 10^6 bytes.
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


def read_all(proto, port, nbytes, fingerprint="", cert=""):
    generator = harness.LoadGenerator.run(
        "throughput",
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
    """source ← spiped -d ← spiped -e ← client, all on 127.0.0.1."""

    def __init__(self, directory, nbytes):
        self.source = harness.start_server(directory, "tcp", "source", nbytes=nbytes)
        super().__init__(directory, self.source.port)

    def stop(self):
        super().stop()
        self.source.stop()


def main():
    args = harness.arguments(__doc__.split("\n\n")[0], add_options)
    if args.quick:
        args.mib, args.rounds = 32, 1
    nbytes = args.mib * MIB
    report = harness.Report(f"channel throughput, {args.mib} MiB per session", args.summary)
    directory = harness.workdir()
    contestants = ["kx", "tls1.3"]
    spiped = None
    try:
        key, cert, fingerprint = harness.key_material(directory, args.bits)
        servers = {
            "kx": harness.start_server(
                directory, "kx", "source", key, extra=args.daemon_args, nbytes=nbytes
            ),
            "tls1.3": harness.start_server(directory, "tls1.3", "source", key, cert, nbytes=nbytes),
        }
        if shutil.which("spiped"):
            spiped = Spiped(directory, nbytes)
            contestants.append("spiped")
        else:
            report.note("spiped: skipped, not installed (apt-get install spiped)")
        rates = {name: [] for name in contestants}
        for _, name in harness.interleave(contestants, args.rounds):
            if name == "spiped":
                rates[name].append(read_all("tcp", spiped.port, nbytes))
            else:
                rates[name].append(read_all(name, servers[name].port, nbytes, fingerprint, cert))
            time.sleep(0.2)
    finally:
        for server in locals().get("servers", {}).values():
            server.stop()
        if spiped is not None:
            spiped.stop()
        shutil.rmtree(directory, ignore_errors=True)
    figures = {name: report.figure("throughput", name, rates[name], "MB/s") for name in rates}
    report.ratio("throughput kx / tls1.3", figures["kx"], figures["tls1.3"], 1.0, "higher")
    if "spiped" in figures:
        report.ratio("throughput kx / spiped", figures["kx"], figures["spiped"], 2.0, "higher")
    report.save()


if __name__ == "__main__":
    sys.exit(main())
