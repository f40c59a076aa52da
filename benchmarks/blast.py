"""A sender and a sink that cost as little CPU as Python can make them.

For ``bench_tunnel.py``: on two cores, a sender or sink that spends a
core of its own decides a tunnel's throughput instead of the tunnel.  Both
use blocking sockets and one preallocated 1 MiB buffer: ``sendall`` and
``recv_into`` loop in C, so nearly all their CPU is the kernel copying
bytes, which any sender and sink pay.

``blast.py sink --bytes N``
    Listen on 127.0.0.1 (prints ``listening on 127.0.0.1:PORT``); on each
    connection read until N bytes have come, answer one byte and close.
    Connections are served each in its own thread (a port check that
    connects and closes costs nothing and blocks nobody).
``blast.py send --port P --bytes N``
    Connect to 127.0.0.1:P, write N bytes, wait for the one-byte answer,
    and print one JSON line: ``ok``, ``seconds`` from connect to the answer,
    and ``cpu`` (this process's CPU seconds over the same span).
"""

import argparse
import json
import socket
import sys
import threading
import time

CHUNK = 1024 * 1024


def serve(connection, nbytes):
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    received = 0
    with connection:
        while received < nbytes:
            count = connection.recv_into(view, min(CHUNK, nbytes - received))
            if not count:
                return  # closed early: a port check, or a broken transfer
            received += count
        connection.sendall(b"k")


def sink(args):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    print(f"listening on 127.0.0.1:{listener.getsockname()[1]}", flush=True)
    while True:
        connection, _ = listener.accept()
        threading.Thread(target=serve, args=(connection, args.bytes), daemon=True).start()


def send(args):
    chunk = memoryview(bytes(CHUNK))
    cpu_before = time.process_time()
    began = time.perf_counter()
    with socket.create_connection(("127.0.0.1", args.port), timeout=args.timeout) as connection:
        left = args.bytes
        while left:
            part = chunk[: min(CHUNK, left)]
            connection.sendall(part)
            left -= len(part)
        answer = connection.recv(1)
    seconds = time.perf_counter() - began
    cpu = time.process_time() - cpu_before
    ok = answer == b"k"
    print(json.dumps({"ok": ok, "seconds": seconds, "cpu": cpu}), flush=True)
    return 0 if ok else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sink_parser = commands.add_parser("sink")
    sink_parser.add_argument("--bytes", type=int, required=True)
    send_parser = commands.add_parser("send")
    send_parser.add_argument("--port", type=int, required=True)
    send_parser.add_argument("--bytes", type=int, required=True)
    send_parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    if args.bytes <= 0:
        parser.error("--bytes must be positive")
    if args.command == "sink":
        return sink(args)
    return send(args)


if __name__ == "__main__":
    sys.exit(main())
