"""The splice under tunnels, before both sides are up (the rest of its
behaviour is in test_tunnel.py, over real sockets)."""

from twisted.internet import defer, error
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from keyexchanged import relay


class HalfCloseTransport(StringTransport):
    """A StringTransport that records a half-close."""

    write_closed = False

    def loseWriteConnection(self):
        self.write_closed = True


class SpliceBeforeJoinTests(unittest.TestCase):
    """The first side talks while the second is still connecting."""

    def splice(self):
        connecting = defer.Deferred()
        splice = relay.Splice("test", connect=lambda end: connecting)
        first = StringTransport()
        splice.first.makeConnection(first)
        return splice, first, connecting

    def test_reading_pauses_until_the_second_side_is_up(self):
        splice, first, _ = self.splice()
        self.assertEqual(first.producerState, "paused")
        splice.first.dataReceived(b"early ")
        splice.first.dataReceived(b"bytes")
        splice.first.readConnectionLost()
        second = HalfCloseTransport()
        splice.second.makeConnection(second)
        self.assertEqual(second.value(), b"early bytes")
        self.assertEqual(first.producerState, "producing")
        # The early end-of-stream became a half-close of the second side,
        # with the first no longer feeding it.
        self.assertIsNone(second.producer)
        self.assertTrue(second.write_closed)
        self.assertFalse(second.disconnecting)

    def test_too_much_before_connecting_aborts(self):
        splice, first, _ = self.splice()
        done = []
        splice.on_done = done.append
        splice.first.dataReceived(b"x" * relay.PENDING_LIMIT)
        self.assertFalse(first.disconnecting)
        splice.first.dataReceived(b"x")
        self.assertTrue(first.disconnecting)
        self.assertIn("before connecting", done[0].getErrorMessage())

    def test_second_side_fails(self):
        _, first, connecting = self.splice()
        connecting.errback(error.ConnectionRefusedError())
        self.assertTrue(first.disconnecting)
        self.flushLoggedErrors()


class TCPLikeTransport(StringTransport):
    """Twisted's TCP transports read and buffer ``bufferSize`` bytes."""

    bufferSize = 65536


class ReadSizeTests(unittest.TestCase):
    """Plain TCP ends read four records' worth at once, so a tunnel seals
    mostly full 64 KiB records instead of one per (often short) read."""

    def test_a_tcp_end_reads_four_records_at_once(self):
        splice = relay.Splice("test")
        transport = TCPLikeTransport()
        splice.first.makeConnection(transport)
        self.assertEqual(transport.bufferSize, 4 * 65536)
        self.assertEqual(relay.READ_SIZE, 4 * 65536)

    def test_a_session_end_is_left_alone(self):
        # A KX/1 session's SecureTransport has no bufferSize: its reads are
        # whole records already, and its buffering is the channel's own.
        splice = relay.Splice("test")
        transport = StringTransport()
        splice.first.makeConnection(transport)
        self.assertFalse(hasattr(transport, "bufferSize"))
