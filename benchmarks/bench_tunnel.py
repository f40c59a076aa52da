"""Tunnel throughput: a TCP sink reached directly and through three tunnels.

Issue 14's topology: a client writes ``--mib`` MiB through an encrypting
end, a decrypting end and into a plain TCP sink (``servers.py tcp --app
sink``, which answers once it has every byte), all on 127.0.0.1:

- ``direct``: the client writes to the sink itself — the ceiling of
  127.0.0.1 for this Python client;
- ``tunnel``: the real ``keyexchange tunnel`` → the real ``twistd
  keyexchange --application forward --forward-to`` the sink (the daemon's
  defaults: forward secrecy on, a worker per CPU);
- ``spiped``: ``spiped -e`` → ``spiped -d`` → the sink (when spiped is
  installed; skipped with a note otherwise);
- ``tls1.3``: ``servers.py tls-encrypt`` → ``servers.py tls-decrypt`` →
  the sink: Twisted's TLS 1.3 (pyOpenSSL, AES-256-GCM) at both ends,
  spliced with the same relay code as the KX/1 tunnel and its forward
  application.

The sender and the sink are ``blast.py``: blocking sockets and one
preallocated buffer, so that on two cores they take as little CPU as
Python can (the kernel's copies, mostly) and the ratio measures the
tunnels rather than their load.  The contestants take turns; a figure is
the bytes divided by the time from connect to the sink's answer, MB =
10^6 bytes.  Each tunnel carries every connection over a new session or
TLS connection, so the time includes one handshake (a few ms of a
transfer of seconds).

Beside each throughput, every process's **CPU share** over the transfer
(its CPU seconds over the transfer's seconds: 100 % is one core busy for
all of it): the sender, the encrypting end, the decrypting end (with its
worker processes) and the sink.  On a 2-core machine, two ends near 100 %
each mean the cores, not the tunnel, set the figure.
"""

import json
import os
import shutil
import subprocess
import sys
import time

import harness
from bench_throughput import MIB, SpipedPair

BLAST = [harness.PYTHON, os.path.join(harness.HERE, "blast.py")]


def add_options(parser):
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bits", type=int, default=3072)
    parser.add_argument("daemon_args", nargs="*", help="extra daemon options, after --")


def process_cpu(pid):
    """CPU seconds so far of a process and every process under it."""
    return sum(harness.cpu_seconds(each) for each in [pid, *harness.descendants(pid)])


def write_all(name, port, nbytes, roles):
    """One transfer of ``nbytes`` to ``port``, answered by the sink:
    (MB/s, {role: CPU share}) for the sender and every pid in ``roles``."""
    before = {role: process_cpu(pid) for role, pid in roles.items()}
    result = subprocess.run(
        [*BLAST, "send", "--port", str(port), "--bytes", str(nbytes)],
        capture_output=True,
        timeout=180,
        check=False,
        env=harness.environment(),
    )
    after = {role: process_cpu(pid) for role, pid in roles.items()}
    if result.returncode:
        raise RuntimeError(f"{name}: sending to {port} failed: {result.stderr[-2000:]!r}")
    sent = json.loads(result.stdout)
    seconds = sent["seconds"]
    shares = {"sender": sent["cpu"] / seconds * 100}
    for role in roles:
        shares[role] = (after[role] - before[role]) / seconds * 100
    return nbytes / seconds / 1e6, shares


def start_tunnel(directory, daemon, fingerprint, name="tunnel"):
    """The real ``keyexchange tunnel`` to ``daemon``, listening on 127.0.0.1."""
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
        name,
    )
    tunnel.wait_listening()
    return tunnel


def start_tls_pair(directory, key, cert, target):
    """tls-encrypt → tls-decrypt → 127.0.0.1:``target``; returns both ends,
    the encrypting one (where clients connect) first."""
    decrypt = harness.Server(
        [*harness.SERVERS, "tls-decrypt", "--key", key, "--cert", cert, "--to", str(target)],
        directory,
        "tls-decrypt",
    )
    decrypt.wait_listening()
    encrypt = harness.Server(
        [*harness.SERVERS, "tls-encrypt", "--cert", cert, "--to", str(decrypt.port)],
        directory,
        "tls-encrypt",
    )
    encrypt.wait_listening()
    return encrypt, decrypt


def main():
    args = harness.arguments(__doc__.split("\n\n")[0], add_options)
    if args.quick:
        args.mib, args.rounds = 32, 1
    nbytes = args.mib * MIB
    report = harness.Report(
        f"tunnel throughput, {args.mib} MiB per connection into a TCP sink", args.summary
    )
    directory = harness.workdir()
    processes = []
    spiped = None
    try:
        key, cert, fingerprint = harness.key_material(directory, args.bits)
        sink = harness.Server([*BLAST, "sink", "--bytes", str(nbytes)], directory, "sink")
        processes.append(sink)
        sink.wait_listening()
        (daemon,) = harness.start_daemons(
            directory,
            key,
            extra=[
                "--application",
                "forward",
                "--forward-to",
                f"tcp:127.0.0.1:{sink.port}",
                *args.daemon_args,
            ],
        )
        processes.append(daemon)
        tunnel = start_tunnel(directory, daemon, fingerprint)
        processes.append(tunnel)
        tls_encrypt, tls_decrypt = start_tls_pair(directory, key, cert, sink.port)
        processes += [tls_decrypt, tls_encrypt]
        ports = {"direct": sink.port, "tunnel": tunnel.port}
        # Whose CPU counts for each contestant, beside the sender's.
        ends = {
            "direct": {},
            "tunnel": {"encrypting end": tunnel.pid, "decrypting end": daemon.pid},
        }
        if shutil.which("spiped"):
            spiped = SpipedPair(directory, sink.port)
            ports["spiped"] = spiped.port
            ends["spiped"] = {
                "encrypting end": spiped.encrypt.pid,
                "decrypting end": spiped.decrypt.pid,
            }
        else:
            report.note("spiped: skipped, not installed (apt-get install spiped)")
        ports["tls1.3"] = tls_encrypt.port
        ends["tls1.3"] = {"encrypting end": tls_encrypt.pid, "decrypting end": tls_decrypt.pid}
        report.note(
            "encrypting end → decrypting end → the sink, all on 127.0.0.1: "
            + ", ".join(ports)
            + f"; RSA-{args.bits}; the KX/1 daemon with its defaults (forward secrecy on)"
        )
        rates = {name: [] for name in ports}
        shares = {name: {} for name in ports}
        for _, name in harness.interleave(list(ports), args.rounds):
            rate, share = write_all(name, ports[name], nbytes, {**ends[name], "sink": sink.pid})
            rates[name].append(rate)
            for role, value in share.items():
                shares[name].setdefault(role, []).append(value)
            time.sleep(0.2)
    finally:
        if spiped is not None:
            spiped.stop()
        for process in reversed(processes):
            process.stop()
        shutil.rmtree(directory, ignore_errors=True)
    figures = {name: report.figure("throughput", name, rates[name], "MB/s") for name in rates}
    for name in rates:
        for role, values in shares[name].items():
            report.figure(f"CPU share: {role}", name, values, "% of a core")
    if "spiped" in figures:
        # Issue 14: the KX/1 tunnel at least twice spiped's, same topology.
        report.ratio(
            "tunnel throughput kx / spiped, same topology",
            figures["tunnel"],
            figures["spiped"],
            2.0,
            "higher",
        )
    report.ratio(
        "tunnel throughput kx / Twisted TLS 1.3, same topology",
        figures["tunnel"],
        figures["tls1.3"],
    )
    report.ratio("tunnel throughput / direct TCP", figures["tunnel"], figures["direct"])
    report.save()


if __name__ == "__main__":
    sys.exit(main())
