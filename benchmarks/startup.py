"""The CPU a process of ours costs from exec to exit, for source trees side
by side: one ``keyexchange connect`` session against a running daemon, and
one ``twistd keyexchange`` started, listening and stopped.

Most of a short process's CPU is its start (imports, the collector: see
keyexchanged/startup.py), which is also most of what the system tests pay
per process.  To see what a change does to it, run the old tree and the new
one in turns, in one run:

    git archive OLD | (mkdir -p /tmp/old && tar -x -C /tmp/old)
    .venv/bin/python benchmarks/startup.py /tmp/old .

Each tree is put first on PYTHONPATH of the processes (its keyexchanged
and twisted/plugins); the venv is this one.  Figures: the median and the
least CPU (user + system, from the children's rusage) of ``--runs`` runs.
"""

import argparse
import functools
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile

_LISTENING = re.compile(rb"listening on [0-9.]+:(\d+)")
_TWISTD = "from twisted.scripts.twistd import run; run()"
CLIENT = (sys.executable, "-m", "keyexchanged.cli")
DAEMON = (sys.executable, "-c", _TWISTD, "-n", "--pidfile=", "--logfile=-", "keyexchange")


def cpu(action):
    """CPU seconds of the child processes ``action`` runs and waits for."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    action()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


class Tree:
    def __init__(self, path, config):
        self.path = os.path.abspath(path)
        self.env = dict(os.environ, PYTHONPATH=self.path)
        self.config = config

    def daemon(self):
        """A daemon of this tree, listening; (process, port)."""
        process = subprocess.Popen(
            [*DAEMON, "--config", self.config],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=os.path.dirname(self.config),
        )
        output = b""
        while not _LISTENING.search(output):
            line = process.stdout.readline()
            if not line:
                raise SystemExit(f"{self.path}: the daemon did not start:\n{output.decode()}")
            output += line
        return process, int(_LISTENING.search(output).group(1))

    def start_and_stop(self):
        process, _ = self.daemon()
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)

    def connect(self, fingerprint):
        subprocess.run(
            [*CLIENT, "connect", f"127.0.0.1:{self.server[1]}", "--fingerprint", fingerprint],
            check=True,
            capture_output=True,
            env=self.env,
            cwd=os.path.dirname(self.config),  # not a checkout: its tree would come first
            timeout=60,
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs="+", metavar="TREE", help="source trees to compare")
    parser.add_argument("--runs", type=int, default=12, help="runs of each (default 12)")
    args = parser.parse_args()

    from keyexchanged import keys, rsa

    directory = tempfile.mkdtemp(prefix="kx-startup-")
    key = os.path.join(directory, "server.key")
    private = rsa.generate_private_key(2048)
    keys.save_private_key(private, key)
    config = os.path.join(directory, "keyexchanged.conf")
    with open(config, "w") as f:
        f.write(
            "[keyexchanged]\nlisten = tcp:0:interface=127.0.0.1\n"
            f"private-key = {key}\nworkers = 0\nephemeral-bits = 2048\n"
        )
    fingerprint = keys.fingerprint(private)
    for path in args.trees:
        if not os.path.isfile(os.path.join(path, "keyexchanged", "__init__.py")):
            parser.error(f"{path}: not a source tree of keyexchanged (no keyexchanged/ in it)")
    trees = [Tree(path, config) for path in args.trees]
    daemons = {tree.path: [] for tree in trees}
    sessions = {tree.path: [] for tree in trees}
    for tree in trees:  # one daemon of each tree serves its own clients
        tree.server = tree.daemon()
    try:
        for _ in range(args.runs):  # in turns: a drift of the machine hits every tree
            for tree in trees:
                daemons[tree.path].append(cpu(tree.start_and_stop))
                sessions[tree.path].append(cpu(functools.partial(tree.connect, fingerprint)))
    finally:
        for tree in trees:
            tree.server[0].send_signal(signal.SIGTERM)
            tree.server[0].communicate(timeout=60)
    print(f"CPU per process, median (least) of {args.runs} runs, in ms")
    print(f"{'tree':40} {'daemon start to stop':>22} {'connect session':>18}")
    for tree in trees:
        d, s = daemons[tree.path], sessions[tree.path]
        print(
            f"{tree.path:40} {statistics.median(d) * 1000:14.0f} ({min(d) * 1000:4.0f})"
            f" {statistics.median(s) * 1000:10.0f} ({min(s) * 1000:4.0f})"
        )


if __name__ == "__main__":
    main()
