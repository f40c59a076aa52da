"""Draw what one ``run_all.py`` run measured: results/latest.png and .svg.

Four panels, each bar the median of its rounds with a whisker from the
minimum to the maximum:

- handshakes per second, per key size, for every KX/1 variant that
  ``bench_handshakes.py`` ran — full handshakes with forward secrecy (the
  default) in the reactor and with worker processes, full without forward
  secrecy, resumed sessions, two processes — Twisted TLS 1.3 and TLS 1.2
  static RSA;
- the server's CPU time per handshake, same bars;
- throughput of one connection: KX/1, TLS 1.3 and spiped sessions
  (``bench_throughput.py``), then into a TCP sink through the KX/1 tunnel,
  a spiped pair and a Twisted TLS 1.3 pair, and directly
  (``bench_tunnel.py``);
- tunnel connection setup, p50 and p99, resumed against full handshakes
  and a direct connection (``bench_tunnel_setup.py``).

The figures come from ``results/latest.json``, which ``run_all.py`` writes
from the same summaries as ``latest.txt``; a script or a contestant that
did not run is simply left out, and a panel with nothing to show says so.
The subtitle names the machine (CPU model and cores, read at run time).

    python benchmarks/chart.py                    # redraw from results/latest.json
    python benchmarks/chart.py other.json -o DIR  # another run, elsewhere
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")

#: Handshake contestants in the order they are drawn, with their labels.
#: A KX/1 variant not listed (another ``kx ×N``) is drawn after these.
HANDSHAKE_ORDER = [
    ("kx workers=0", "KX/1 full, FS, in the reactor"),
    ("kx workers=auto", "KX/1 full, FS, worker per CPU (default)"),
    ("kx no-FS", "KX/1 full, no FS, worker per CPU"),
    ("kx resumed", "KX/1 resumed, default daemon"),
    ("kx ×2", "KX/1 full, FS, 2 processes"),
    ("tls1.3", "TLS 1.3 full (Twisted)"),
    ("tls1.2", "TLS 1.2 static RSA"),
]
#: (script, contestant, label, colour) of the throughput bars.
THROUGHPUT_ORDER = [
    ("bench_throughput.py", "throughput download", "kx", "KX/1 session\n↓", "#1f5fa8"),
    ("bench_throughput.py", "throughput download", "tls1.3", "TLS 1.3\nsession ↓", "#c2571a"),
    ("bench_throughput.py", "throughput download", "spiped", "spiped\npair ↓", "#e89a4f"),
    ("bench_throughput.py", "throughput upload", "kx", "KX/1 session\n↑", "#1f5fa8"),
    ("bench_throughput.py", "throughput upload", "tls1.3", "TLS 1.3\nsession ↑", "#c2571a"),
    ("bench_throughput.py", "throughput upload", "spiped", "spiped\npair ↑", "#e89a4f"),
    ("bench_tunnel.py", "throughput", "tunnel", "KX/1 tunnel\n→ sink", "#4f8fd0"),
    ("bench_tunnel.py", "throughput", "spiped", "spiped pair\n→ sink", "#e89a4f"),
    ("bench_tunnel.py", "throughput", "tls1.3", "TLS 1.3 pair\n→ sink", "#c2571a"),
    ("bench_tunnel.py", "throughput", "direct", "direct TCP\n→ sink", "#999999"),
]
#: (contestant, label, colour) of the tunnel setup bars.
SETUP_ORDER = [
    ("tunnel resumed", "KX/1 tunnel, resumed", "#4f8fd0"),
    ("tunnel full", "KX/1 tunnel, full handshakes", "#1f5fa8"),
    ("direct", "direct TCP (no tunnel)", "#999999"),
]
#: KX/1 bars in shades of blue, peers in orange, so the eye can pair them.
COLOURS = {
    "kx": ["#0b3d75", "#1f5fa8", "#4f8fd0", "#8dbbe8", "#b9d5f0"],
    "peer": ["#c2571a", "#e89a4f", "#777777", "#aaaaaa"],
}


def machine():
    """CPU model, core count and Python of this machine, for the subtitle."""
    import platform

    model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {
        "cpu": model or platform.processor() or platform.machine() or "unknown CPU",
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "system": f"{platform.system()} {platform.release()}",
    }


def _figures(results, script):
    """The figure rows of one script's summary, or [] if it did not run."""
    summary = results.get("scripts", {}).get(script) or {}
    return [row for row in summary.get("rows", ()) if row.get("kind") == "figure"]


def handshake_series(results, prefix):
    """{bits: {contestant: row}} for figures named ``prefix + bits``."""
    series = {}
    for row in _figures(results, "bench_handshakes.py"):
        name = row["name"]
        if not name.startswith(prefix):
            continue
        bits = name[len(prefix) :].strip()
        series.setdefault(bits, {})[row["contestant"]] = row
    return dict(sorted(series.items()))


def handshake_contestants(series):
    """Contestants present in any key size, known ones first."""
    present = {name for rows in series.values() for name in rows}
    known = [(name, label) for name, label in HANDSHAKE_ORDER if name in present]
    others = sorted(present - {name for name, _ in HANDSHAKE_ORDER})
    return known + [(name, name) for name in others]


def throughput_bars(results):
    """[(label, row, colour)] for the throughput contestants that ran."""
    bars = []
    for script, name, contestant, label, colour in THROUGHPUT_ORDER:
        for row in _figures(results, script):
            if row["name"] == name and row["contestant"] == contestant:
                bars.append((label, row, colour))
    return bars


def throughput_size(results):
    """ "256 MiB" from the throughput script's title, or None."""
    import re

    title = (results.get("scripts", {}).get("bench_throughput.py") or {}).get("title", "")
    match = re.search(r"(\d+) MiB", title)
    return f"{match.group(1)} MiB" if match else None


def setup_bars(results):
    """{(contestant, label, colour): {"p50": row, "p99": row}} that ran."""
    found = {}
    rows = _figures(results, "bench_tunnel_setup.py")
    for contestant, label, colour in SETUP_ORDER:
        for row in rows:
            if row["contestant"] != contestant:
                continue
            for which in ("p50", "p99"):
                if row["name"] == f"tunnel setup {which}":
                    found.setdefault((contestant, label, colour), {})[which] = row
    return found


def _colour(name, index_kx, index_peer):
    if name.startswith("kx"):
        return COLOURS["kx"][index_kx % len(COLOURS["kx"])]
    return COLOURS["peer"][index_peer % len(COLOURS["peer"])]


def _whiskers(rows):
    return [
        [row["median"] - row["min"] for row in rows],
        [row["max"] - row["median"] for row in rows],
    ]


def _empty(axis, title, why):
    axis.set_title(title)
    axis.text(0.5, 0.5, why, ha="center", va="center", transform=axis.transAxes, color="#777777")
    axis.set_xticks([])
    axis.set_yticks([])


def _grouped(axis, series, unit, title, number_format):
    """Bars grouped by key size, one per contestant, with min–max whiskers."""
    contestants = handshake_contestants(series)
    if not contestants:
        _empty(axis, title, "not measured in this run")
        return
    groups = list(series)
    width = 0.8 / len(contestants)
    kx_index = peer_index = 0
    for index, (name, label) in enumerate(contestants):
        colour = _colour(name, kx_index, peer_index)
        if name.startswith("kx"):
            kx_index += 1
        else:
            peer_index += 1
        positions, rows = [], []
        for group_index, bits in enumerate(groups):
            row = series[bits].get(name)
            if row is not None:
                positions.append(group_index + (index - (len(contestants) - 1) / 2) * width)
                rows.append(row)
        if not rows:
            continue
        bars = axis.bar(
            positions,
            [row["median"] for row in rows],
            width * 0.92,
            yerr=_whiskers(rows),
            capsize=3,
            color=colour,
            label=label,
            error_kw={"elinewidth": 1, "ecolor": "#222222"},
        )
        axis.bar_label(
            bars, labels=[number_format(row["median"]) for row in rows], fontsize=7, padding=2
        )
    axis.set_xticks(range(len(groups)), [f"RSA-{bits}" for bits in groups])
    axis.set_ylabel(unit)
    axis.set_title(title)
    axis.margins(y=0.15)
    axis.grid(axis="y", alpha=0.3)
    axis.set_axisbelow(True)


def _throughput(axis, bars, size):
    title = "throughput of one connection (higher is better)"
    if not bars:
        _empty(axis, title, "not measured in this run")
        return
    rows = [row for _, row, _ in bars]
    colours = [colour for _, _, colour in bars]
    drawn = axis.bar(
        range(len(bars)),
        [row["median"] for row in rows],
        0.6,
        yerr=_whiskers(rows),
        capsize=4,
        color=colours,
        error_kw={"elinewidth": 1, "ecolor": "#222222"},
    )
    axis.bar_label(drawn, labels=[f"{row['median']:.0f}" for row in rows], fontsize=8, padding=2)
    axis.set_xticks(range(len(bars)), [label for label, _, _ in bars], fontsize=8)
    axis.set_ylabel("MB/s (10⁶ bytes)" + (f", {size} each" if size else ""))
    axis.set_title(title)
    axis.margins(y=0.15)
    axis.grid(axis="y", alpha=0.3)
    axis.set_axisbelow(True)


def _setup(axis, bars):
    title = "tunnel connection setup (lower is better)"
    if not bars:
        _empty(axis, title, "not measured in this run")
        return
    groups = ["p50", "p99"]
    width = 0.8 / len(bars)
    for index, ((_, label, colour), rows) in enumerate(bars.items()):
        positions, present = [], []
        for group_index, which in enumerate(groups):
            if which in rows:
                positions.append(group_index + (index - (len(bars) - 1) / 2) * width)
                present.append(rows[which])
        drawn = axis.bar(
            positions,
            [row["median"] for row in present],
            width * 0.92,
            yerr=_whiskers(present),
            capsize=3,
            color=colour,
            label=label,
            error_kw={"elinewidth": 1, "ecolor": "#222222"},
        )
        axis.bar_label(
            drawn, labels=[f"{row['median']:.2f}" for row in present], fontsize=8, padding=2
        )
    axis.set_xticks(
        range(len(groups)),
        ["p50", "p99"],
    )
    axis.set_xlabel("local connect → first byte echoed back through the tunnel")
    axis.set_ylabel("ms")
    axis.set_title(title)
    axis.legend(fontsize=8, loc="upper left")
    axis.margins(y=0.15)
    axis.grid(axis="y", alpha=0.3)
    axis.set_axisbelow(True)


def draw(results, directory=RESULTS, stem="latest"):
    """Write ``stem``.png and ``stem``.svg into ``directory``; return the paths."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    rates = handshake_series(results, "handshakes/s RSA-")
    cpu = handshake_series(results, "server CPU per handshake")
    bars = throughput_bars(results)

    figure, axes = pyplot.subplots(2, 2, figsize=(16, 12))
    _grouped(
        axes[0][0],
        rates,
        "handshakes / s",
        "handshakes per second (higher is better)",
        "{:.0f}".format,
    )
    _grouped(
        axes[0][1],
        cpu,
        "ms of server CPU",
        "server CPU per handshake (lower is better)",
        "{:.2f}".format,
    )
    _throughput(axes[1][0], bars, throughput_size(results))
    _setup(axes[1][1], setup_bars(results))
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        # Under the subtitle, for the two handshake panels that share it.
        figure.legend(
            handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.925), ncol=4, fontsize=9
        )

    host = results.get("machine") or {"cpu": "machine not recorded"}
    cores = host.get("cores")
    usable = host.get("usable_cores")
    core_text = f"{cores} cores" if usable in (None, cores) else f"{usable} of {cores} cores"
    figure.suptitle("keyexchanged benchmarks: bars are medians, whiskers min–max", fontsize=13)
    parts = [
        f"{host.get('cpu', 'unknown CPU')}, {core_text}",
        host.get("python"),
        results.get("when"),
        "load generator on the same machine, 127.0.0.1",
    ]
    if results.get("quick"):
        parts.append("--quick run (a smoke test, not figures to quote)")
    figure.text(
        0.5,
        0.945,
        "; ".join(part for part in parts if part),
        ha="center",
        fontsize=9,
        color="#444444",
    )
    figure.tight_layout(rect=(0, 0, 1, 0.895))
    os.makedirs(directory, exist_ok=True)
    paths = []
    for extension in ("png", "svg"):
        path = os.path.join(directory, f"{stem}.{extension}")
        figure.savefig(path, dpi=110 if extension == "png" else None)
        paths.append(path)
    pyplot.close(figure)
    return paths


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="?", default=os.path.join(RESULTS, "latest.json"))
    parser.add_argument("-o", "--output", default=RESULTS, help="directory for the PNG and SVG")
    args = parser.parse_args()
    with open(args.results) as f:
        results = json.load(f)
    for path in draw(results, args.output):
        print(f"written to {os.path.relpath(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
