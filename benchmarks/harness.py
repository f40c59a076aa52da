"""What every benchmark script shares: timing, statistics, processes, keys.

Conventions, so the figures of different scripts read the same way:

- Contestants run interleaved, A B C A B C …, so a slow minute of the
  machine (another job, a thermal step) hits all of them alike.
- A figure is the median of its rounds with the minimum and maximum beside
  it; a ratio compares two medians from the same run.
- Servers and load generators are separate processes, talk over 127.0.0.1
  only, and every wait has a deadline.

CPU time, resident size and a process's children come from psutil (the
``bench`` extra: ``pip install '.[bench]'``).
"""

import argparse
import json
import math
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import timeit

try:
    import psutil
except ImportError:  # pragma: no cover - depends on the installation
    sys.exit("the benchmarks need psutil: pip install -e '.[bench]' (make bench does)")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PYTHON = sys.executable
TWISTD = [PYTHON, "-c", "from twisted.scripts.twistd import run; run()"]
SERVERS = [PYTHON, os.path.join(HERE, "servers.py")]
LOADGEN = [PYTHON, os.path.join(HERE, "loadgen.py")]

_LISTENING = re.compile(r"listening on ([0-9.]+):(\d+)")


# -- statistics and the report --------------------------------------------------


class Figure:
    """Samples of one quantity for one contestant."""

    def __init__(self, samples):
        self.samples = sorted(samples)
        self.median = statistics.median(self.samples)
        self.min = self.samples[0]
        self.max = self.samples[-1]


def _number(value):
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


class Report:
    """Lines for the reader and rows for ``run_all.py``'s summary table."""

    def __init__(self, title, summary_path=None):
        self.title = title
        self.summary_path = summary_path
        self.rows = []
        print(f"== {title}", flush=True)

    def note(self, text):
        print(f"   {text}", flush=True)
        self.rows.append({"kind": "note", "text": text})

    def figure(self, name, contestant, samples, unit):
        figure = Figure(samples)
        print(
            f"   {name:<34} {contestant:<28} {_number(figure.median):>9} {unit:<10}"
            f" [{_number(figure.min)}–{_number(figure.max)}, n={len(samples)}]",
            flush=True,
        )
        self.rows.append(
            {
                "kind": "figure",
                "name": name,
                "contestant": contestant,
                "median": figure.median,
                "min": figure.min,
                "max": figure.max,
                "n": len(samples),
                "unit": unit,
                # Every round, so run_all.py can derive figures across scripts.
                "samples": figure.samples,
            }
        )
        return figure

    def ratio(self, label, numerator, denominator, target=None, better="lower"):
        """``numerator / denominator`` of two medians; ``target`` is the bound
        the ratio must stay within (≤ for better="lower", ≥ for "higher")."""
        num = numerator.median if isinstance(numerator, Figure) else numerator
        den = denominator.median if isinstance(denominator, Figure) else denominator
        value = num / den if den else float("inf")
        verdict = ""
        met = None
        if target is not None:
            met = value <= target if better == "lower" else value >= target
            sign = "≤" if better == "lower" else "≥"
            verdict = f"  target {sign} {target:g}×: {'met' if met else 'NOT met'}"
        print(f"   ratio {label}: {value:.2f}×{verdict}", flush=True)
        self.rows.append(
            {
                "kind": "ratio",
                "label": label,
                "value": value,
                "target": target,
                "better": better,
                "met": met,
            }
        )
        return value

    def check(self, label, value, limit, unit, better="lower"):
        """An absolute target (not a ratio), e.g. p99 ≤ 10 ms."""
        met = value <= limit if better == "lower" else value >= limit
        sign = "≤" if better == "lower" else "≥"
        print(
            f"   check {label}: {_number(value)} {unit}  target {sign} {limit:g} {unit}: "
            f"{'met' if met else 'NOT met'}",
            flush=True,
        )
        self.rows.append(
            {
                "kind": "check",
                "label": label,
                "value": value,
                "limit": limit,
                "unit": unit,
                "better": better,
                "met": met,
            }
        )

    def save(self):
        if self.summary_path:
            with open(self.summary_path, "w") as f:
                json.dump({"title": self.title, "rows": self.rows}, f)


def arguments(description, add=None):
    """The options every script takes, plus its own (``add(parser)``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--summary", help="write the figures as JSON here (run_all.py)")
    parser.add_argument("--quick", action="store_true", help="fewer rounds: a smoke test")
    if add is not None:
        add(parser)
    return parser.parse_args()


def add_load_options(parser):
    """The options of a script that loads one kind of daemon with full
    handshakes (bench_processes.py, bench_cluster.py): the key's size, the
    load and its timing, and extra daemon options after ``--``."""
    parser.add_argument("--bits", type=int, default=3072)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("daemon_args", nargs="*", help="extra daemon options, after --")


def interleave(contestants, rounds):
    """Yield (round, contestant) in the order A B C A B C …"""
    for number in range(rounds):
        for contestant in contestants:
            yield number, contestant


def per_call(function, repeat):
    """CPU seconds per call of ``function()``, over one batch of ``repeat``
    calls: ``timeit``, which keeps the garbage collector out of the batch,
    on this process's CPU clock (a busy machine's other work does not
    count, and the figure compares with the servers' CPU per handshake)."""
    return timeit.Timer(function, timer=time.process_time).timeit(repeat) / repeat


def percentile(values, fraction):
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    # Nearest rank: the smallest value with at least this fraction at or below it.
    index = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
    return ordered[index]


# -- limits ---------------------------------------------------------------------------


def raise_fd_limit(wanted=65536):
    """Raise RLIMIT_NOFILE towards ``wanted`` (children inherit it); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
        return target
    return soft


# -- processes --------------------------------------------------------------------------


def environment(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("KEYEXCHANGED_CONFIG", None)
    env.update({key: str(value) for key, value in extra.items()})
    return env


class Server:
    """A server child process whose output goes to a log file we poll.

    A file rather than a pipe: the daemon logs a line per connection, and
    a pipe nobody reads would block it.
    """

    def __init__(self, argv, workdir, name, env=None, pass_fds=(), preexec_fn=None):
        self.name = name
        self.log_path = os.path.join(workdir, f"{name}-{time.monotonic_ns()}.log")
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env or environment(),
            cwd=workdir,
            pass_fds=pass_fds,
            preexec_fn=preexec_fn,
        )
        self.pid = self.process.pid
        self.port = None

    def output(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_listening(self, timeout=60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = _LISTENING.search(self.output())
            if match:
                self.port = int(match.group(2))
                return self.port
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not start listening:\n{self.output()[-3000:]}")

    def wait_for(self, text, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return True
            if self.process.poll() is not None:
                return False
            time.sleep(0.05)
        return False

    def cpu_seconds(self):
        """CPU time of the server and every process it started (the
        daemon's decryption workers do part of its work)."""
        return sum(cpu_seconds(pid) for pid in [self.pid, *descendants(self.pid)])

    def rss(self):
        return rss_bytes(self.pid)

    def stop(self, timeout=15.0):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()
        return self.process.returncode


def settle(server):
    """Resident size once it stops moving (the server may still be freeing)."""
    previous = server.rss()
    for _ in range(20):
        time.sleep(0.25)
        current = server.rss()
        if abs(current - previous) < 64 * 1024:
            return current
        previous = current
    return previous


def cpu_seconds(pid):
    """User + system CPU time of a process so far.

    A process that ended in between counts as 0.
    """
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system


def descendants(pid):
    """The pids of every live process below ``pid`` (children, theirs, ...)."""
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def rss_bytes(pid):
    """Resident set size of a process."""
    return psutil.Process(pid).memory_info().rss


class LoadGenerator:
    """``loadgen.py`` in its own process; it speaks one JSON object per line.

    ``LoadGenerator.run("handshakes", proto="kx", port=..., concurrency=16)``
    starts ``loadgen.py handshakes --proto kx --port ... --concurrency 16``;
    ``resume=True`` adds the switch ``--resume``, ``False`` or ``None`` leaves
    an option out.
    """

    @classmethod
    def run(cls, mode, env=None, nice=0, **options):
        args = [mode]
        for name, value in options.items():
            flag = "--" + name.replace("_", "-")
            if value is True:
                args.append(flag)  # a switch: resume=True gives --resume
            elif value is not False and value is not None:
                args += [flag, str(value)]
        return cls(args, env=env, nice=nice)

    def __init__(self, args, env=None, nice=0):
        # stderr to a file: a pipe nobody drains could block the generator.
        self._errors = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [*LOADGEN, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._errors,
            env=env or environment(),
            preexec_fn=(lambda: os.nice(nice)) if nice else None,
        )

    def read(self, timeout):
        """The next JSON line from the generator (bounded wait)."""
        import selectors

        selector = selectors.DefaultSelector()
        selector.register(self.process.stdout, selectors.EVENT_READ)
        try:
            if not selector.select(timeout):
                raise RuntimeError(f"load generator silent for {timeout} s")
        finally:
            selector.close()
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(10)
            self._errors.seek(0)
            raise RuntimeError(
                "load generator ended:\n" + self._errors.read()[-3000:].decode(errors="replace")
            )
        return json.loads(line)

    def tell(self, text):
        self.process.stdin.write(text.encode() + b"\n")
        self.process.stdin.flush()

    def finish(self, timeout=60.0):
        try:
            self.process.stdin.close()
        except BrokenPipeError:
            pass
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        return self.process.returncode


# -- key material ------------------------------------------------------------------------


def key_material(workdir, bits):
    """A ``bits``-bit RSA key (ours, written by keys.py) and a self-signed
    certificate for it, so the KX/1 daemon and the TLS peers hold the very
    same key.  Returns ``(key_path, cert_path, fingerprint)``."""
    from keyexchanged import keys, rsa

    key_path = os.path.join(workdir, f"server-{bits}.key")
    cert_path = os.path.join(workdir, f"server-{bits}.crt")
    if not os.path.exists(key_path):
        private_key = rsa.generate_private_key(bits)
        keys.save_private_key(private_key, key_path)
        _self_signed(key_path, cert_path)
    private_key = keys.load_private_key(key_path)
    return key_path, cert_path, keys.fingerprint(private_key.public_key())


def _self_signed(key_path, cert_path):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    with open(key_path, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    with open(cert_path, "wb") as f:
        f.write(certificate.public_bytes(serialization.Encoding.PEM))


def workdir():
    """A private scratch directory for keys and logs (removed by the caller)."""
    return tempfile.mkdtemp(prefix="kx-bench-")


# -- starting the contestants ---------------------------------------------------------------


LOCAL = "tcp:0:interface=127.0.0.1"


def daemon_argv(key_path, extra=(), message="bench", listen=LOCAL):
    """``twistd keyexchange`` in the foreground with its log on stdout."""
    return [
        *TWISTD,
        "-n",
        "--pidfile=",
        "--logfile=-",
        "keyexchange",
        "--listen",
        listen,
        "--private-key",
        key_path,
        "--message",
        message,
        *extra,
    ]


#: What a ``--processes`` parent logs once every child serves
#: (keyexchanged/processes/_parent.py).
ALL_SERVE = "child processes serve"


def start_daemons(directory, key_path, extra=(), message="bench", processes=1, listen=LOCAL):
    """A real ``twistd keyexchange``, as a list of its one server.

    With ``processes`` other than 1 (a number or "auto") the daemon runs
    with ``--processes``: its parent listens and its children serve the
    one socket; the server in the list is the parent, whose CPU time
    counts its children and their workers.  Returns once every child
    serves.
    """
    wide = str(processes) != "1"
    if wide:
        extra = [*extra, "--processes", str(processes)]
    server = Server(daemon_argv(key_path, extra, message, listen), directory, "kx")
    server.wait_listening()
    if wide and not server.wait_for(ALL_SERVE, 120):
        server.stop()
        raise RuntimeError(f"--processes {processes}: the children did not all serve")
    return [server]


def server_argv(kind, app, key_path=None, cert_path=None, extra=(), nbytes=None):
    """``servers.py`` for the peers and the KX/1 channel with other applications."""
    argv = [*SERVERS, kind, "--app", app]
    if nbytes is not None:
        argv += ["--bytes", str(nbytes)]
    if kind.startswith("tls"):
        argv += ["--key", key_path, "--cert", cert_path]
    if kind == "kx":
        argv += ["--", "--listen", LOCAL, "--private-key", key_path, *extra]
    return argv


def start_server(directory, kind, app, key_path=None, cert_path=None, extra=(), nbytes=None):
    server = Server(
        server_argv(kind, app, key_path, cert_path, extra, nbytes), directory, f"{kind}-{app}"
    )
    server.wait_listening()
    return server


def free_port():
    """A port nobody listens on right now (for programs that need a number)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_port(port, timeout=15.0):
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")
