"""AUTH flood: small-message round trips on an established echo session while
another process floods the daemon with handshakes, without and with an AUTH
nobody asked for (issue 12, review item 1).

The review measured an echo session's round trip at 1.4 ms (median) during
a KEY-only flood and 20.8 ms during a KEY+AUTH flood: the daemon, which does
not require AUTH, verified every AUTH in its reactor, on a key the client
chose (8192 bits, e just under 2^256) with a junk signature.  Now an AUTH
key is at most ``--client-key-max-bits`` (4096 by default) with e = 65537,
and the signature is checked in the workers, counted against
``--max-handshakes``.

- The daemon: the real ``twistd keyexchange --application echo`` with the
  default workers (one process per CPU), RSA-3072, on 127.0.0.1.
- The probe: ``loadgen.py rtt`` (one echo session; 32 bytes, wait for
  them, 5 ms pause, again), as in bench_responsiveness.py.
- The flood: this script's ``flood`` mode in its own process at nice 10,
  which is ``loadgen.py``'s handshakes mode (concurrency 16: connect, KEY,
  first record, close) whose client sends, for ``key+auth``, an AUTH on a
  key of the largest size accepted (4096 bits, e = 65537) with a junk
  signature: a random number below n, so the verification runs to the end
  and fails.  Each connection has a key of its own, so that no cache of
  parsed keys helps the daemon.  ``key-only`` is the same flood without AUTH.

The two floods run one after the other, interleaved over ``--rounds``,
``--duration`` seconds each (8 by default, as in the review).  Printed:
round-trip p50 and p99 for each, the flood's connections per second, the
CPU of the daemon's reactor process and of the daemon with its workers,
and the ratios key+auth / key-only.

``--root DIR --auth-bits 8192 --auth-exponent max`` runs the daemon and
the probe from another checkout (say ``git archive`` of the commit before
the fix) and floods with the review's key (e = 2^256 − 1, the largest odd
exponent the old check let through): what the fix changed.
"""

import argparse
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile

import harness

DAEMON_LIMITS = ["--max-per-source", "100000", "--max-connections", "100000"]
FLOODS = ("key-only", "key+auth")


def add_options(parser):
    parser.add_argument("--bits", type=int, default=3072, help="the daemon's key")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--auth-bits", type=int, default=4096, help="the flood's AUTH keys (default 4096)"
    )
    parser.add_argument(
        "--auth-exponent",
        type=exponent,
        default=65537,
        help="their e (default 65537; max: 2^256 - 1, which only an older daemon accepts)",
    )
    parser.add_argument(
        "--root",
        help="run the daemon and the probe from this checkout instead (a flood of "
        "revision 2 clients that allow no forward secrecy)",
    )
    parser.add_argument("daemon_args", nargs="*", help="extra daemon options, after --")


def exponent(text):
    return 2**256 - 1 if text == "max" else int(text)


# -- the flood process ------------------------------------------------------------------


class JunkIdentity:
    """A stranger's AUTH: a fresh public key for every connection and a
    random signature below its n.  Nobody holds a private key."""

    def __init__(self, bits, e):
        from keyexchanged import rsa

        n = 0
        while math.gcd(n, e) != 1:
            n = random.getrandbits(bits) | 1 << (bits - 1) | 1
        self._public = rsa.PublicKey(n, e)

    def public_key(self):
        return self._public

    def sign_pss(self, message, salt_length, **options):
        return random.randrange(self._public.n).to_bytes(self._public.k, "big")


class _FloodingProtocol:
    """``keyexchanged.protocol`` as loadgen.py sees it, except that every
    client it makes sends the junk AUTH (``auth_bits``) and, against an
    older daemon, allows no forward secrecy."""

    def __init__(self, protocol, auth_bits, auth_exponent, allow_no_forward_secrecy):
        self._protocol = protocol
        self._auth = (auth_bits, auth_exponent)
        self._allow = allow_no_forward_secrecy

    def __getattr__(self, name):
        return getattr(self._protocol, name)

    def ChannelClientFactory(self, *args, **options):
        if self._auth[0]:
            options["identity"] = JunkIdentity(*self._auth)
        if self._allow:
            options["require_forward_secrecy"] = False
        return self._protocol.ChannelClientFactory(*args, **options)


def flood_main(argv):
    """``bench_auth_flood.py flood ...``: loadgen.py's handshakes mode."""
    parser = argparse.ArgumentParser(prog="bench_auth_flood.py flood")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fingerprint", required=True)
    parser.add_argument("--auth-bits", type=int, default=0, help="0: no AUTH")
    parser.add_argument("--auth-exponent", type=exponent, default=65537)
    parser.add_argument("--allow-no-forward-secrecy", action="store_true")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    args.proto, args.cert, args.expect, args.count = "kx", None, "", 0
    args.resume = False  # a flood of full handshakes

    import loadgen
    from twisted.internet import reactor

    loadgen.protocol = _FloodingProtocol(
        loadgen.protocol, args.auth_bits, args.auth_exponent, args.allow_no_forward_secrecy
    )
    client = loadgen.Client(args)
    reactor.callWhenRunning(loadgen.run_handshakes, args, client)
    reactor.run()


# -- the measurement ----------------------------------------------------------------------


class FloodGenerator(harness.LoadGenerator):
    """This script's ``flood`` mode in its own process, read and told as
    loadgen.py is (its code is the checkout's own, whatever ``--root``)."""

    def __init__(self, args, nice=0):
        # stderr to a file: a pipe nobody drains could block the generator.
        self._errors = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [harness.PYTHON, os.path.abspath(__file__), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._errors,
            env=harness.environment(),
            preexec_fn=(lambda: os.nice(nice)) if nice else None,
        )


def environment(root):
    if root is None:
        return harness.environment()
    env = harness.environment()
    env["PYTHONPATH"] = os.path.abspath(root) + os.pathsep + env["PYTHONPATH"]
    return env


def start_daemon(directory, key, args):
    argv = harness.daemon_argv(
        key, ["--application", "echo", *DAEMON_LIMITS, *args.daemon_args], message="unused"
    )
    server = harness.Server(argv, directory, "kx-echo", env=environment(args.root))
    server.wait_listening()
    return server


def window(server, fingerprint, flood, args):
    """One measuring window: (p50 ms, p99 ms, flood connections/s, reactor
    CPU share, daemon + workers CPU share)."""
    env = environment(args.root)
    probe = harness.LoadGenerator.run(
        "rtt", env=env, proto="kx", port=server.port, fingerprint=fingerprint,
        interval=0.005, size=32, timeout=args.duration + 60,
    )  # fmt: skip
    flooder = None
    try:
        probe.read(30)  # ready
        argv = [
            "flood", "--port", str(server.port), "--fingerprint", fingerprint,
            "--concurrency", str(args.concurrency), "--duration", str(args.duration + 0.5),
        ]  # fmt: skip
        if flood == "key+auth":
            argv += ["--auth-bits", str(args.auth_bits)]
            argv += ["--auth-exponent", str(args.auth_exponent)]
        if args.root is not None:
            argv.append("--allow-no-forward-secrecy")
        flooder = FloodGenerator(argv, nice=10)
        flooder.read(30)  # start: the flood is at full speed
        reactor_cpu, all_cpu = harness.cpu_seconds(server.pid), server.cpu_seconds()
        probe.tell(f"measure {args.duration}")
        rtts = probe.read(args.duration + 30)["rtts"]
        reactor_busy = (harness.cpu_seconds(server.pid) - reactor_cpu) / args.duration
        all_busy = (server.cpu_seconds() - all_cpu) / args.duration
        end = flooder.read(30)
    finally:
        if flooder is not None:
            flooder.finish(30)
        probe.finish()
    if not rtts:
        raise RuntimeError(f"{flood}: no round trips measured")
    if not end["ok"] + end["failed"]:
        raise RuntimeError(f"{flood}: the flood made no connection: {end['errors']}")
    return (
        harness.percentile(rtts, 0.5) * 1000,
        harness.percentile(rtts, 0.99) * 1000,
        (end["ok"] + end["failed"]) / end["seconds"],
        reactor_busy,
        all_busy,
        end["errors"],
    )


def main():
    args = harness.arguments(__doc__.split("\n\n")[0], add_options)
    if args.quick:
        args.rounds, args.duration = 1, 3.0
    harness.raise_fd_limit()
    auth = f"{args.auth_bits}-bit key, e={args.auth_exponent}"
    if args.auth_exponent > 10**6:
        auth = f"{args.auth_bits}-bit key, e≈2^{args.auth_exponent.bit_length()}"
    report = harness.Report(
        f"AUTH flood: 32-byte echo round trips during a KEY-only and a KEY+AUTH flood "
        f"({auth}, junk signature), RSA-{args.bits}, default workers",
        args.summary,
    )
    if args.root is not None:
        report.note(f"daemon and probe from {os.path.abspath(args.root)}")
    directory = harness.workdir()
    server = None
    results = {}
    try:
        key, _, fingerprint = harness.key_material(directory, args.bits)
        server = start_daemon(directory, key, args)
        for _, flood in harness.interleave(FLOODS, args.rounds):
            results.setdefault(flood, []).append(window(server, fingerprint, flood, args))
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(directory, ignore_errors=True)
    figures = {}
    for flood in FLOODS:
        values = results[flood]
        figures[flood, 50] = report.figure(
            f"rtt p50, {flood} flood", "kx echo", [v[0] for v in values], "ms"
        )
        figures[flood, 99] = report.figure(
            f"rtt p99, {flood} flood", "kx echo", [v[1] for v in values], "ms"
        )
        report.figure(f"flood rate, {flood}", "kx echo", [v[2] for v in values], "conn/s")
        report.figure(f"reactor CPU, {flood}", "kx echo", [v[3] * 100 for v in values], "%")
        report.figure(f"daemon+workers CPU, {flood}", "kx echo", [v[4] * 100 for v in values], "%")
        errors = {}
        for value in values:
            for detail, count in value[5].items():
                errors[detail] = errors.get(detail, 0) + count
        if errors:
            top = sorted(errors.items(), key=lambda item: -item[1])[:3]
            report.note(f"{flood} flood endings: " + "; ".join(f"{n}× {d}" for d, n in top))
    report.ratio(
        "rtt p50 key+auth flood / key-only flood", figures["key+auth", 50], figures["key-only", 50]
    )
    report.ratio(
        "rtt p99 key+auth flood / key-only flood", figures["key+auth", 99], figures["key-only", 99]
    )
    report.save()


if __name__ == "__main__":
    if sys.argv[1:2] == ["flood"]:
        flood_main(sys.argv[2:])
    else:
        sys.exit(main())
