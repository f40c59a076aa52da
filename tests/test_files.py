"""files.py: bounded reads and atomic writes, the one copy every module uses."""

import os
import stat

from twisted.trial.unittest import SynchronousTestCase

from keyexchanged import files
from keyexchanged.errors import KeyexchangedError, KeyFileError, KeyFileExistsError


class Refused(KeyexchangedError):
    """What a caller asks read_file to raise."""


class ReadFileTests(SynchronousTestCase):
    def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)

    def write(self, name, data):
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_whole_file_up_to_the_limit(self):
        path = self.write("f", b"x" * 10)
        self.assertEqual(files.read_file(path, 10, Refused, "too large"), b"x" * 10)

    def test_one_byte_over_is_refused_with_the_callers_words(self):
        path = self.write("f", b"x" * 11)
        with self.assertRaises(Refused) as caught:
            files.read_file(path, 10, Refused, "too large for a test file")
        self.assertEqual(str(caught.exception), f"{path}: too large for a test file")

    def test_unreadable_names_the_file_and_why(self):
        missing = os.path.join(self.dir, "missing")
        with self.assertRaises(Refused) as caught:
            files.read_file(missing, 10, Refused, "too large", cannot="cannot read a test file")
        self.assertEqual(
            str(caught.exception), f"{missing}: cannot read a test file: No such file or directory"
        )
        with self.assertRaises(Refused) as caught:
            files.read_file(self.dir, 10, Refused, "too large")
        self.assertEqual(str(caught.exception), f"{self.dir}: cannot read: Is a directory")

    def test_missing_ok(self):
        missing = os.path.join(self.dir, "missing")
        self.assertIsNone(files.read_file(missing, 10, Refused, "too large", missing_ok=True))

    def test_first_line_only(self):
        """The bound is on the first line: what follows it is never read."""
        path = self.write("f", b"passphrase\r\n" + b"y" * 100)
        self.assertEqual(files.read_file(path, 20, Refused, "long", line=True), b"passphrase\r\n")
        path = self.write("g", b"z" * 21 + b"\n")
        self.assertRaises(Refused, files.read_file, path, 20, Refused, "long", line=True)

    def test_first_line_of_a_pipe_that_stays_open(self):
        """A terminal or a pipe gives a line and waits: the line is enough."""
        read_end, write_end = os.pipe()
        self.addCleanup(os.close, read_end)
        self.addCleanup(os.close, write_end)
        os.write(write_end, b"secret\n")
        path = f"/proc/self/fd/{read_end}"
        if not os.path.exists(path):
            raise self.skipTest("no /proc/self/fd")
        self.assertEqual(files.read_file(path, 100, Refused, "long", line=True), b"secret\n")


class ReadRegularFileTests(SynchronousTestCase):
    def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)

    def test_content_and_status_of_the_file_read(self):
        path = os.path.join(self.dir, "key")
        with open(path, "wb") as f:
            f.write(b"key")
        data, st = files.read_regular_file(path, 10, Refused, "too large")
        self.assertEqual((data, st.st_ino), (b"key", os.stat(path).st_ino))

    def test_fifo_refused_without_hanging(self):
        fifo = os.path.join(self.dir, "fifo")
        os.mkfifo(fifo)
        with self.assertRaises(Refused) as caught:
            files.read_regular_file(fifo, 10, Refused, "too large")
        self.assertEqual(str(caught.exception), f"{fifo}: not a regular file")


class WriteAtomicallyTests(SynchronousTestCase):
    def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "file")

    def test_mode_exactly_and_nothing_left_behind(self):
        files.write_atomically(self.path, b"data", 0o640, force=False)
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), b"data")
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o640)
        self.assertEqual(os.listdir(self.dir), ["file"])

    def test_existing_file_kept_unless_forced(self):
        files.write_atomically(self.path, b"old", 0o600, force=False)
        self.assertRaises(
            KeyFileExistsError, files.write_atomically, self.path, b"new", 0o600, False
        )
        files.write_atomically(self.path, b"new", 0o600, force=True)
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), b"new")

    def test_unwritable_directory_names_the_file(self):
        path = os.path.join(self.dir, "missing", "file")
        with self.assertRaises(KeyFileError) as caught:
            files.write_atomically(path, b"x", 0o600, force=False)
        self.assertTrue(str(caught.exception).startswith(f"{path}: cannot write: "))
