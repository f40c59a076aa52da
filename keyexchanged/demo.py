"""``make demo``: start the daemon, run the client against it, stop it.

Everything happens under ``./demo`` (ignored by git): a config file, the
demo server key (generated on the first run), the daemon's log and pid
file.  The daemon listens on 127.0.0.1 only, on a free port, and the client
is pinned to the fingerprint the daemon serves.  Each step is printed so a
newcomer can repeat it by hand.
"""

import os
import shlex
import signal
import socket
import subprocess
import sys
import time

from keyexchanged import keys
from keyexchanged.tap import load_or_create_key

DEMO_DIR = os.path.abspath("demo")
#: How long to wait for the daemon to listen or to exit: generous for a slow
#: machine, bounded so a broken demo ends instead of hanging.
STARTUP_SECONDS = 60
STOP_SECONDS = 30


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def step(text):
    print(f"\n==> {text}", flush=True)


def show(argv):
    print("    $ " + " ".join(shlex.quote(a) for a in argv), flush=True)


def bin_path(name):
    """The venv's own script beside this interpreter, else the PATH's."""
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    return candidate if os.path.exists(candidate) else name


def wait_until_serving(starter, log_path):
    """twistd returns once the daemon it forked listens (it listens before
    it tells its parent it started), so its exit is the readiness signal:
    no probe connection, which the daemon would log as a session."""
    try:
        code = starter.wait(timeout=STARTUP_SECONDS)
    except subprocess.TimeoutExpired:
        starter.kill()
        code = None
    if code == 0:
        return
    if os.path.exists(log_path):
        with open(log_path, encoding="utf-8", errors="replace") as f:
            sys.stderr.write(f.read())
    raise SystemExit("demo: the daemon did not start; the reason is above")


def main():
    os.makedirs(DEMO_DIR, mode=0o700, exist_ok=True)
    key_path = os.path.join(DEMO_DIR, "server.key")
    conf_path = os.path.join(DEMO_DIR, "keyexchanged.conf")
    log_path = os.path.join(DEMO_DIR, "twistd.log")
    pid_path = os.path.join(DEMO_DIR, "twistd.pid")
    port = free_port()

    step("a server key for the demo (generated once, mode 0600)")
    key, _ = load_or_create_key(key_path, 3072, report=lambda text: print("    " + text))
    fingerprint = keys.fingerprint(key.public_key())
    print(f"    {key_path}: RSA-{key.n.bit_length()}, {fingerprint}")

    with open(conf_path, "w", encoding="utf-8") as f:
        f.write(
            "[keyexchanged]\n"
            f"listen = tcp:{port}:interface=127.0.0.1\n"
            "private-key = server.key\n"
            "message = The secret message: hello from keyexchanged.\n"
        )

    step(f"start the daemon on 127.0.0.1:{port}")
    if os.path.exists(pid_path):
        os.unlink(pid_path)  # left by an interrupted run; twistd would refuse
    daemon = [
        bin_path("twistd"),
        "--pidfile", pid_path,
        "--logfile", log_path,
        "keyexchange",
        "--config", conf_path,
    ]  # fmt: skip
    show(daemon)
    starter = subprocess.Popen(daemon)  # noqa: S603 (our argv) — twistd forks the daemon and returns
    try:
        wait_until_serving(starter, log_path)
        with open(pid_path) as f:
            pid = int(f.read().strip())
        print(f"    daemon running, pid {pid}")

        step("run the client, pinned to the server's fingerprint")
        client = [
            bin_path("keyexchange"),
            "connect",
            f"127.0.0.1:{port}",
            "--fingerprint",
            fingerprint,
            "--explain",
        ]
        show(client)
        result = subprocess.run(  # noqa: S603 (our own argv)
            client, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, check=False
        )
        print("\n    decrypted message:", result.stdout.decode("utf-8", "replace"))
        if result.returncode != 0:
            print(f"    client exited with {result.returncode}")
    finally:
        step("stop the daemon")
        stop(pid_path)
        print("    the daemon's log:")
        with open(log_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                print("    | " + line.rstrip())
    return result.returncode


def stop(pid_path):
    try:
        with open(pid_path) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return
    show(["kill", "-TERM", str(pid)])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print("    stopped")
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    print("    did not stop in time: killed")


if __name__ == "__main__":
    sys.exit(main())
