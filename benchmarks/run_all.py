"""Run every benchmark and write the summary table to results/latest.txt.

Each script runs in its own process with a time limit; its figures come
back as JSON and are gathered into one table: every figure with its median
and range, then every ratio and target with its verdict.  The same figures
go to results/latest.json (with the machine they were measured on), and
``chart.py`` draws them into results/latest.png and latest.svg.  ``make
bench`` runs this; ``--quick`` is a smoke test of the whole chain.
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

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")

# (script, time limit in seconds): together well inside make bench's
# 15 minutes on a 2-core machine.
SCRIPTS = [
    ("bench_rsa.py", 240),
    ("bench_records.py", 60),
    ("bench_handshakes.py", 330),
    ("bench_throughput.py", 120),
    ("bench_tunnel.py", 120),
    ("bench_memory.py", 180),
    ("bench_responsiveness.py", 180),
    ("bench_auth_flood.py", 120),
]


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


def table(summaries, elapsed):
    lines = [
        "keyexchanged benchmarks — "
        + time.strftime("%Y-%m-%d %H:%M:%S")
        + f" — {platform.python_implementation()} {platform.python_version()}, "
        + f"{os.cpu_count()} CPUs, {elapsed:.0f} s",
        "",
    ]
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
    elapsed = time.monotonic() - started
    text = table(summaries, elapsed)
    latest = os.path.join(RESULTS, "latest.txt")
    with open(latest, "w") as f:
        f.write(text)
    results = {
        "when": when,
        "seconds": round(elapsed),
        "quick": args.quick,
        "machine": chart.machine(),
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
