"""keyexchanged.allocator: glibc keeps large freed buffers for reuse."""

import ctypes
import subprocess
import sys

from twisted.trial import unittest

from keyexchanged import allocator

# What a daemon does while it sends fast: seal 1 MiB of application data
# into 16 records, join the frames, and join them onto what is still
# waiting for the socket, as Twisted's send buffer does; then count the
# page faults (not time) of 64 MiB of it.
WORKLOAD = """
import resource, sys
from keyexchanged import allocator
from keyexchanged.framing import encode_frame
from keyexchanged.records import RecordSealer
if sys.argv[1] == "tuned":
    assert allocator.tune({})
sealer = RecordSealer(bytes(32))
chunk = memoryview(bytes(1024 * 1024))
def send(rounds):
    pending, offset = b"", 0
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        frames = [encode_frame("MSG", sealer.seal("MSG", chunk[i : i + 65536]))
                  for i in range(0, len(chunk), 65536)]
        pending = b"".join([memoryview(pending)[offset:], b"".join(frames)])
        offset = 0
        while len(pending) - offset >= 131072:
            bytes(memoryview(pending)[offset : offset + 116000])
            offset += 116000
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
send(4)
print(send(64))
"""


def _glibc():
    try:
        return sys.platform.startswith("linux") and hasattr(
            ctypes.CDLL(None), "gnu_get_libc_version"
        )
    except OSError:
        return False


def page_faults(mode):
    result = subprocess.run(
        [sys.executable, "-c", WORKLOAD, mode],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return int(result.stdout)


class TuneTests(unittest.TestCase):
    def test_the_operators_setting_wins(self):
        for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
            self.assertIs(allocator.tune({name: "131072"}), False)

    def test_fewer_page_faults_when_sending_fast(self):
        if not _glibc():
            raise unittest.SkipTest("glibc only: elsewhere tune() changes nothing")
        default, tuned = page_faults("default"), page_faults("tuned")
        # Measured: about 7 400 faults by default, 2 600 tuned.
        self.assertLess(tuned * 2, default, (default, tuned))
