"""Run every benchmark and write the summary table to results/latest.txt.

Each script runs in its own process with a time limit; its figures come
back as JSON and are gathered into one table: every figure with its median
and range, then every ratio and target with its verdict.  The same figures
go to results/latest.json (with the machine they were measured on), and
``chart.py`` draws them into results/latest.png and latest.svg.  ``make
bench`` runs this; ``--quick`` is a smoke test of the whole chain.

Some targets need the figures of two scripts from the same run; they are
worked out here, after every script has run (see :func:`derived`): issue
14's overhead of a full handshake beyond its private-key operation, and
issue 11's forward-secrecy cost with the ephemeral key rotations counted.
The load average at the start and the end of the run heads the table: on a
shared machine it says how much else was running.
"""

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time

import chart
import harness

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")

# (script, time limit in seconds): together well inside make bench's
# 15 minutes on a 2-core machine.
SCRIPTS = [
    ("bench_rsa.py", 240),
    ("bench_records.py", 60),
    ("bench_mlkem.py", 60),
    ("bench_handshakes.py", 420),
    ("bench_processes.py", 180),
    ("bench_throughput.py", 120),
    ("bench_tunnel.py", 180),
    ("bench_tunnel_setup.py", 120),
    ("bench_memory.py", 180),
    ("bench_responsiveness.py", 180),
    ("bench_auth_flood.py", 120),
    ("bench_cluster.py", 120),
]

#: Issue 14: server CPU per full handshake beyond one private-key
#: decryption of the same size, at 3072 bits.
OVERHEAD_BITS = 3072
OVERHEAD_LIMIT_MS = 0.4
#: Issue 11: a full handshake with forward secrecy costs the server at most
#: this much more than one without.
FORWARD_SECRECY_TARGET = 1.05


def number(value):
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _find(by_script, script, name, contestant):
    """The figure row ``name`` of ``contestant`` in ``script``, or None."""
    for row in (by_script.get(script) or {}).get("rows", ()):
        if row["kind"] == "figure" and row["name"] == name and row["contestant"] == contestant:
            return row
    return None


def derived(by_script):
    """Targets that need two scripts of the same run, as one more summary.

    - Issue 14: server CPU per full handshake (bench_handshakes.py, every
      round) minus the median of one OAEP decryption at the same size with
      the backend the daemon uses and its multi-prime ephemeral key
      (bench_rsa.py): ≤ 0.4 ms at 3072 bits,
      for the daemon deciphering in the reactor and with its default worker
      processes.
    - Issue 11: full handshakes with forward secrecy against without, with
      the cost of the ephemeral key rotations added: one key generation and
      one PSS signature (bench_rsa.py's medians) every rotation interval
      (the daemon's default), shared by the handshakes of that interval at
      the rate measured for the default daemon.
    """
    from keyexchanged import ephemeral, rsa

    backend = "ours gmpy2" if rsa.BACKEND == "gmpy2" else "ours pure Python"
    bits = OVERHEAD_BITS
    report = harness.Report("derived from two scripts of this run (issues 11 and 14)")
    # With forward secrecy (on in both daemons measured) KEY is decrypted
    # with the ephemeral key, which is multi-prime; the rotation makes one.
    ephemeral_key = f"{backend} {rsa.multi_prime_count(bits)}-prime"
    decrypt = _find(by_script, "bench_rsa.py", f"OAEP decrypt {bits}", ephemeral_key)
    cpu = {
        name: _find(by_script, "bench_handshakes.py", f"server CPU per handshake {bits}", name)
        for name in ("kx workers=0", "kx workers=auto", "kx no-FS")
    }
    if decrypt is None or cpu["kx workers=0"] is None or cpu["kx workers=auto"] is None:
        report.note(
            f"not computed: needs bench_rsa.py and bench_handshakes.py at {bits} bits in this run"
        )
        return {"title": report.title, "rows": report.rows}
    report.note(
        f"one OAEP decryption, RSA-{bits}, {ephemeral_key} (the daemon's backend and "
        f"ephemeral key, bench_rsa.py): {decrypt['median']:.3f} ms"
    )
    for name in ("kx workers=0", "kx workers=auto"):
        overhead = report.figure(
            f"CPU/handshake − 1 decrypt {bits}",
            name,
            [value - decrypt["median"] for value in _samples(cpu[name])],
            "ms",
        )
        report.check(
            f"{name}: handshake CPU beyond 1 RSA decryption, {bits}",
            overhead.median,
            OVERHEAD_LIMIT_MS,
            "ms",
        )
    keygen = _find(by_script, "bench_rsa.py", f"key generation {bits}", ephemeral_key)
    sign = _find(by_script, "bench_rsa.py", f"PSS sign {bits}", backend)
    rate = _find(by_script, "bench_handshakes.py", f"handshakes/s RSA-{bits}", "kx workers=auto")
    if None in (keygen, sign, rate, cpu["kx no-FS"]):
        report.note("forward secrecy with rotations: not computed (a figure is missing)")
        return {"title": report.title, "rows": report.rows}
    interval = ephemeral.DEFAULT_INTERVAL
    rotation_ms = keygen["median"] * 1000 + sign["median"]
    share = rotation_ms / (interval * rate["median"])
    report.note(
        f"ephemeral key rotation: key generation {keygen['median'] * 1000:.0f} ms + PSS "
        f"signature {sign['median']:.2f} ms every {interval} s, over "
        f"{rate['median']:.0f} handshakes/s × {interval} s: {share:.3f} ms per handshake"
    )
    with_rotations = report.figure(
        f"CPU/handshake {bits} + rotations",
        "kx workers=auto",
        [value + share for value in _samples(cpu["kx workers=auto"])],
        "ms",
    )
    report.ratio(
        f"CPU per handshake full FS + rotations / no-FS, {bits}",
        with_rotations,
        cpu["kx no-FS"]["median"],
        FORWARD_SECRECY_TARGET,
    )
    return {"title": report.title, "rows": report.rows}


def _samples(row):
    # Rows from before samples were recorded carry the median alone.
    return row.get("samples") or [row["median"]]


def load_average():
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def table(summaries, elapsed, loads=(None, None)):
    lines = [
        "keyexchanged benchmarks — "
        + time.strftime("%Y-%m-%d %H:%M:%S")
        + f" — {platform.python_implementation()} {platform.python_version()}, "
        + f"{os.cpu_count()} CPUs, {elapsed:.0f} s",
    ]
    if all(loads):
        lines.append(
            "load average (1, 5, 15 min) at the start "
            + ", ".join(f"{value:.2f}" for value in loads[0])
            + "; at the end "
            + ", ".join(f"{value:.2f}" for value in loads[1])
        )
    lines.append("")
    verdicts = []
    for summary in summaries:
        lines.append(f"== {summary['title']}")
        for row in summary["rows"]:
            if row["kind"] == "note":
                lines.append(f"   {row['text']}")
            elif row["kind"] == "figure":
                lines.append(
                    f"   {row['name']:<34} {row['contestant']:<24} "
                    f"{number(row['median']):>9} {row['unit']:<6} "
                    f"[{number(row['min'])}–{number(row['max'])}, n={row['n']}]"
                )
        lines.append("")
    lines.append("== ratios (medians of the same run) and targets")
    for summary in summaries:
        for row in summary["rows"]:
            if row["kind"] == "ratio":
                verdict = ""
                if row["target"] is not None:
                    sign = "≤" if row["better"] == "lower" else "≥"
                    verdict = f"  target {sign} {row['target']:g}×  " + (
                        "met" if row["met"] else "NOT met"
                    )
                    verdicts.append(row["met"])
                lines.append(f"   {row['label']:<62} {row['value']:6.2f}×{verdict}")
            elif row["kind"] == "check":
                sign = "≤" if row["better"] == "lower" else "≥"
                lines.append(
                    f"   {row['label']:<62} {number(row['value']):>6} {row['unit']}  target "
                    f"{sign} {row['limit']:g} {row['unit']}  {'met' if row['met'] else 'NOT met'}"
                )
                verdicts.append(row["met"])
    lines.append("")
    lines.append(f"targets met: {sum(verdicts)} of {len(verdicts)}")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="*", help="run only these scripts")
    args = parser.parse_args()
    os.makedirs(RESULTS, exist_ok=True)
    started = time.monotonic()
    load_at_start = load_average()
    when = time.strftime("%Y-%m-%d %H:%M")
    summaries = []
    by_script = {}
    failures = []
    for script, limit in SCRIPTS:
        if args.only and script not in args.only:
            continue
        summary_path = os.path.join(RESULTS, script.replace(".py", ".json"))
        if os.path.exists(summary_path):
            os.remove(summary_path)
        argv = [sys.executable, os.path.join(HERE, script), "--summary", summary_path]
        if args.quick:
            argv.append("--quick")
        print(f"-- {script} (limit {limit} s)", flush=True)
        # Its own session, so that on timeout its servers go down with it.
        child = subprocess.Popen(argv, start_new_session=True)
        try:
            code = child.wait(limit)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGTERM)
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait(5)
            code = "timeout"
        if code != 0 or not os.path.exists(summary_path):
            failures.append(f"{script}: {code}")
            summaries.append(
                {"title": script, "rows": [{"kind": "note", "text": f"FAILED ({code})"}]}
            )
            continue
        with open(summary_path) as f:
            summaries.append(json.load(f))
        by_script[script] = summaries[-1]
    if "bench_rsa.py" in by_script or "bench_handshakes.py" in by_script:
        extra = derived(by_script)
        summaries.append(extra)
        by_script["derived"] = extra
    elapsed = time.monotonic() - started
    load_at_end = load_average()
    text = table(summaries, elapsed, (load_at_start, load_at_end))
    latest = os.path.join(RESULTS, "latest.txt")
    with open(latest, "w") as f:
        f.write(text)
    results = {
        "when": when,
        "seconds": round(elapsed),
        "quick": args.quick,
        "machine": chart.machine(),
        "load_average": {"start": load_at_start, "end": load_at_end},
        "failed": failures,
        "scripts": by_script,
    }
    latest_json = os.path.join(RESULTS, "latest.json")
    with open(latest_json, "w") as f:
        json.dump(results, f, indent=1)
    print()
    print(text)
    print(f"written to {os.path.relpath(latest)} and {os.path.relpath(latest_json)}")
    try:
        paths = chart.draw(results, RESULTS)
    except ImportError:
        print("no chart: matplotlib is not installed (pip install -e '.[bench]')")
    else:
        print("chart: " + ", ".join(os.path.relpath(path) for path in paths))
    if failures:
        print("failed: " + ", ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
