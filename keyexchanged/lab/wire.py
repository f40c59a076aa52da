"""Blocking sockets on 127.0.0.1 for the lab, and the man in the middle.

The lab's victims and attackers are plain blocking code, so that a lesson
reads top to bottom like the attack it shows.  Everything here talks to
127.0.0.1 only, and every blocking call is bounded by :data:`TIMEOUT`.

:class:`Relay` is the attacker's position on the path: it listens on a
second port, connects each victim to the real server, and passes every
message (a line of the weak scheme, a frame of KX/1) through a *hook* that
may read it, change it, drop it, or cut the connection.  With no hooks it is
a passive eavesdropper that records both directions.
"""

import json
import socket
import threading
from typing import NamedTuple

from keyexchanged.framing import FrameDecoder, encode_frame

__all__ = [
    "CUT",
    "DROP",
    "LOOPBACK",
    "TIMEOUT",
    "Frame",
    "FrameSocket",
    "FrameSplitter",
    "LineSocket",
    "LineSplitter",
    "Relay",
    "close_write",
    "connect",
    "hang_up",
    "listen",
    "tune",
]

LOOPBACK = "127.0.0.1"

#: Seconds any one blocking socket operation may take.  Every exchange in
#: the lab is between threads of one process on the loopback interface and
#: takes milliseconds; this only turns a bug into an error instead of a hang.
TIMEOUT = 10.0

#: A line of the weak scheme holds a hex-encoded RSA ciphertext or record;
#: nothing the lab sends comes near this.
MAX_LINE = 64 * 1024


def tune(sock):
    """Bound every blocking call on ``sock``; send small messages at once."""
    sock.settimeout(TIMEOUT)
    # Small messages one after another (an oracle's queries and answers):
    # Nagle's algorithm with delayed ACKs would add 40 ms to each.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def connect(port):
    """A TCP connection to 127.0.0.1:port."""
    return tune(socket.create_connection((LOOPBACK, port), timeout=TIMEOUT))


def listen():
    """A listening socket on 127.0.0.1, on a port the system picks."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK, 0))
    sock.listen(16)
    return sock


def close_write(sock):
    """Send FIN: "I have nothing more to say" (what closing looks like to a peer)."""
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def hang_up(sock):
    """End a connection both ways now; wakes a thread blocked reading it."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class LineSocket:
    """Lines of ASCII over a socket: the weak scheme's wire format."""

    def __init__(self, sock):
        self.sock = sock
        self._buffer = bytearray()

    @classmethod
    def to(cls, port):
        return cls(connect(port))

    def read_line(self):
        """The next line without its newline, or ``None`` at the end of the stream."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                return line
            if len(self._buffer) > MAX_LINE:
                raise ValueError("line too long")
            data = self.sock.recv(65536)
            if not data:
                return None
            self._buffer += data

    def send_line(self, line):
        self.sock.sendall(line + b"\n")

    def send_lines(self, lines):
        self.sock.sendall(b"".join(line + b"\n" for line in lines))

    def close_write(self):
        close_write(self.sock)

    def close(self):
        self.sock.close()


class Frame(NamedTuple):
    """One KX/1 frame as it crossed the wire."""

    verb: str
    payload: bytes

    def encode(self):
        return encode_frame(self.verb, self.payload)

    def __str__(self):
        if self.verb == "ERROR":
            try:
                return f"ERROR {json.loads(self.payload)['error']}"
            except (ValueError, KeyError, TypeError):
                pass
        return f"{self.verb} ({len(self.payload)} bytes)"


class FrameSocket:
    """KX/1 frames over a socket, for an attacker who writes them by hand."""

    def __init__(self, sock):
        self.sock = sock
        self._frames = []
        self._decoder = FrameDecoder(
            lambda verb, payload: self._frames.append(Frame(verb, payload))
        )

    @classmethod
    def to(cls, port):
        return cls(connect(port))

    def read_frame(self):
        """The next frame, or ``None`` at the end of the stream."""
        while not self._frames:
            data = self.sock.recv(65536)
            if not data:
                return None
            self._decoder.feed(data)
        return self._frames.pop(0)

    def read_all(self):
        """Every frame until the server closes the connection."""
        frames = []
        while (frame := self.read_frame()) is not None:
            frames.append(frame)
        return frames

    def send(self, *frames):
        self.sock.sendall(b"".join(frame.encode() for frame in frames))

    def close_write(self):
        close_write(self.sock)

    def close(self):
        self.sock.close()


# -- the man in the middle ----------------------------------------------------------

#: What a hook returns to swallow a message.
DROP = object()
#: What a hook returns to end the connection here: this message and all
#: that follow are dropped, and each side sees an ordinary close (FIN), as
#: if the other had finished.
CUT = object()


class LineSplitter:
    """Split a byte stream into lines (newline kept)."""

    def __init__(self):
        self._buffer = b""

    def feed(self, data):
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        return [line + b"\n" for line in lines]

    @staticmethod
    def encode(line):
        return line

    def rest(self):
        return self._buffer


class FrameSplitter:
    """Split a byte stream into KX/1 frames."""

    def __init__(self):
        self._frames = []
        self._decoder = FrameDecoder(
            lambda verb, payload: self._frames.append(Frame(verb, payload))
        )

    def feed(self, data):
        self._decoder.feed(data)
        frames, self._frames = self._frames, []
        return frames

    @staticmethod
    def encode(frame):
        return frame.encode()

    def rest(self):
        return b""


class Relayed:
    """One victim's connection through the relay, and what crossed it.

    ``to_server`` and ``to_client`` list ``(seen, forwarded)`` pairs: the
    message as it arrived, and what the relay sent on (the same object, a
    changed one, :data:`DROP` or :data:`CUT`).  ``notes`` is where hooks
    keep what they learned.
    """

    def __init__(self, client, server):
        self.client = client
        self.server = server
        self.to_server = []
        self.to_client = []
        self.notes = {}
        self.cut = False
        self._threads = []

    def seen(self, direction):
        """The messages as they arrived from ``"client"`` or ``"server"``."""
        pairs = self.to_server if direction == "client" else self.to_client
        return [message for message, _ in pairs]

    def _cut(self):
        # FIN both ways: each side sees the other close, nothing more.
        self.cut = True
        close_write(self.client)
        close_write(self.server)

    def wait(self):
        for thread in self._threads:
            thread.join(TIMEOUT)

    def close(self):
        self.client.close()
        self.server.close()


class Acceptor:
    """A listening socket on 127.0.0.1 and a thread that accepts on it: each
    connection, tuned, goes to :meth:`accepted`; :meth:`stop_accepting`
    ends the thread.  The weak server and the relay both are one."""

    thread_name = "lab-acceptor"

    def start_accepting(self):
        self._listener = listen()
        self.port = self._listener.getsockname()[1]
        self._closing = False
        self._acceptor = threading.Thread(target=self._accept, name=self.thread_name, daemon=True)
        self._acceptor.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _accept(self):
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            if self._closing:
                sock.close()
                return
            tune(sock)
            self.accepted(sock)

    def accepted(self, sock):
        raise NotImplementedError

    def stop_accepting(self):
        self._closing = True
        try:
            # Wake the accepting thread (close() alone does not, on Linux).
            socket.create_connection((LOOPBACK, self.port), timeout=TIMEOUT).close()
        except OSError:
            pass
        self._acceptor.join(TIMEOUT)
        self._listener.close()


class Relay(Acceptor):
    """Listen on a second port and relay each connection to ``target_port``.

    ``kind`` is ``"lines"`` (the weak scheme) or ``"frames"`` (KX/1).
    ``to_server(message, relayed)`` and ``to_client(message, relayed)``, when
    given, decide what is sent on; see :data:`DROP` and :data:`CUT`.
    """

    def __init__(self, target_port, kind, to_server=None, to_client=None):
        if kind not in ("lines", "frames"):
            raise ValueError("kind must be 'lines' or 'frames'")
        self.target_port = target_port
        self._splitter = LineSplitter if kind == "lines" else FrameSplitter
        self._hooks = {"client": to_server, "server": to_client}
        self.connections = []
        self.start_accepting()

    thread_name = "lab-relay"

    def accepted(self, client):
        try:
            server = connect(self.target_port)
        except OSError:
            client.close()
            return
        relayed = Relayed(client, server)
        self.connections.append(relayed)
        for source, sink, direction, log in (
            (client, server, "client", relayed.to_server),
            (server, client, "server", relayed.to_client),
        ):
            thread = threading.Thread(
                target=self._pump,
                args=(source, sink, self._hooks[direction], log, relayed),
                name=f"lab-relay-{direction}",
                daemon=True,
            )
            relayed._threads.append(thread)
            thread.start()

    def _pump(self, source, sink, hook, log, relayed):
        splitter = self._splitter()
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if relayed.cut:
                    continue  # read to the end, send nothing
                for message in splitter.feed(data):
                    forwarded = message if hook is None else hook(message, relayed)
                    log.append((message, forwarded))
                    if forwarded is CUT:
                        relayed._cut()
                        break
                    if forwarded is not DROP:
                        sink.sendall(splitter.encode(forwarded))
            if not relayed.cut:
                sink.sendall(splitter.rest())
        except OSError:
            # A reset or a timeout: end this connection both ways.
            relayed._cut()
        finally:
            close_write(sink)

    def last(self):
        """The most recent connection, once both directions are finished."""
        if not self.connections:
            raise RuntimeError("nobody connected through the relay")
        relayed = self.connections[-1]
        relayed.wait()
        return relayed

    def close(self):
        self.stop_accepting()
        for relayed in self.connections:
            relayed.cut = True
            hang_up(relayed.client)
            hang_up(relayed.server)
            relayed.wait()
            relayed.close()
