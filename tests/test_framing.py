"""Frames: the grammar, the limits, and decoding at every chunk size."""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from keyexchanged import framing
from keyexchanged.framing import (
    FRAME_TOO_LARGE,
    MALFORMED_FRAME,
    MAX_PAYLOAD,
    FrameDecoder,
    ProtocolError,
    encode_frame,
    parse_header,
)


class ParseHeaderTests(unittest.TestCase):
    def assertRefused(self, line, code):
        with self.assertRaises(ProtocolError) as caught:
            parse_header(line)
        self.assertEqual(caught.exception.code, code)
        return caught.exception

    def test_valid(self):
        self.assertEqual(parse_header(b"HELLO 480"), ("HELLO", 480))
        self.assertEqual(parse_header(b"END 16"), ("END", 16))
        self.assertEqual(parse_header(b"MSG 0"), ("MSG", 0))
        self.assertEqual(parse_header(b"MSG 65552"), ("MSG", 65552))

    def test_every_verb_at_its_limit(self):
        for verb, limit in MAX_PAYLOAD.items():
            self.assertEqual(parse_header(b"%s %d" % (verb.encode(), limit)), (verb, limit))

    def test_every_verb_one_over_its_limit(self):
        for verb, limit in MAX_PAYLOAD.items():
            error = self.assertRefused(b"%s %d" % (verb.encode(), limit + 1), FRAME_TOO_LARGE)
            self.assertIn(verb, error.detail)

    def test_bad_lengths(self):
        for length in [
            b"+12",
            b"-1",
            b"012",
            b"00",
            b"1_000",
            b" 12",
            b"12 ",
            b"",
            b"0x10",
            b"1e3",
            b"123456789",  # nine digits: over the grammar's eight
            "\u0663".encode(),  # Arabic-Indic three: int() would take it
        ]:
            self.assertRefused(b"MSG " + length, MALFORMED_FRAME)

    def test_bad_verbs(self):
        for line in [
            b"msg 1",
            b"Msg 1",
            b"M5G 1",
            b"ABCDEFGHI 1",
            b" MSG 1",
            b"MSG  1",
            b"MSG\t1",
            b"MSG",
            b"",
            b"\x00\x01",
        ]:
            self.assertRefused(line, MALFORMED_FRAME)

    def test_unknown_verb(self):
        error = self.assertRefused(b"PING 0", MALFORMED_FRAME)
        self.assertEqual(error.detail, "unknown verb")

    def test_grammar_before_length(self):
        # An unknown verb announcing a huge payload is malformed, not too large:
        # the checks run in the protocol's order.
        self.assertRefused(b"PING 99999999", MALFORMED_FRAME)

    def test_header_over_32_bytes(self):
        self.assertRefused(b"MSG " + b"1" * 29, MALFORMED_FRAME)
        self.assertEqual(len(b"MSG " + b"1" * 28), 32)


class EncodeFrameTests(unittest.TestCase):
    def test_round_trip(self):
        self.assertEqual(encode_frame("MSG", b"abc"), b"MSG 3\r\nabc")

    def test_refuses_our_own_oversized_frame(self):
        self.assertRaises(ValueError, encode_frame, "END", b"x" * 17)


FRAMES = [
    ("HELLO", b'{"protocol": "kx/1"}'),
    ("KEY", bytes(range(256))),
    ("MSG", b""),
    ("MSG", b"\r\nMSG 3\r\n" * 3),  # payloads that look like headers are data
    ("END", b"\x00" * 16),
    ("ERROR", b'{"error": "busy", "detail": ""}'),
]
STREAM = b"".join(encode_frame(verb, payload) for verb, payload in FRAMES)


class FrameDecoderTests(unittest.TestCase):
    def decode(self, chunks):
        frames = []
        decoder = FrameDecoder(lambda verb, payload: frames.append((verb, payload)))
        limit = max(MAX_PAYLOAD.values())
        for chunk in chunks:
            decoder.feed(chunk)
            self.assertLessEqual(decoder.buffered, limit)
        return frames, decoder

    def test_every_chunk_size(self):
        for size in range(1, len(STREAM) + 1):
            chunks = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
            frames, decoder = self.decode(chunks)
            self.assertEqual(frames, FRAMES, f"chunk size {size}")
            self.assertEqual(decoder.buffered, 0)

    def test_header_refused_before_payload_is_buffered(self):
        seen = []
        decoder = FrameDecoder(lambda verb, payload: seen.append(verb))
        with self.assertRaises(ProtocolError) as caught:
            decoder.feed(b"MSG 70000\r\n" + b"x" * 70000)
        self.assertEqual(caught.exception.code, FRAME_TOO_LARGE)
        self.assertEqual(decoder.buffered, 0)
        self.assertEqual(seen, [])
        # A dead decoder ignores the rest.
        decoder.feed(b"MSG 0\r\n")
        self.assertEqual(seen, [])

    def test_long_header_without_crlf(self):
        decoder = FrameDecoder(lambda verb, payload: None)
        decoder.feed(b"A" * 33)  # could still be a 32-byte line and CRLF
        self.assertEqual(decoder.buffered, 33)
        with self.assertRaises(ProtocolError) as caught:
            decoder.feed(b"A")
        self.assertEqual(caught.exception.code, MALFORMED_FRAME)

    def test_big_chunk_is_not_swallowed_whole(self):
        # One frame and the start of the next: the buffer holds only the
        # next frame's bytes, not the whole chunk.
        frames, decoder = self.decode([encode_frame("MSG", b"x" * 1000) + b"MSG 10\r\n12345"])
        self.assertEqual(frames, [("MSG", b"x" * 1000)])
        self.assertEqual(decoder.buffered, 5)

    def test_on_header_sees_state_after_previous_frame(self):
        order = []
        decoder = FrameDecoder(
            lambda verb, payload: order.append(("frame", verb)),
            lambda verb, length: order.append(("header", verb)),
        )
        decoder.feed(encode_frame("KEY", b"k") + encode_frame("MSG", b"m"))
        self.assertEqual(
            order, [("header", "KEY"), ("frame", "KEY"), ("header", "MSG"), ("frame", "MSG")]
        )

    def test_on_header_refusal_stops_decoding(self):
        def refuse(verb, length):
            if verb == "MSG":
                raise ProtocolError(framing.UNEXPECTED_FRAME, "no")

        frames = []
        decoder = FrameDecoder(lambda verb, payload: frames.append(verb), refuse)
        with self.assertRaises(ProtocolError):
            decoder.feed(encode_frame("END", b"t" * 16) + encode_frame("MSG", b"m") + b"junk")
        self.assertEqual(frames, ["END"])
        self.assertTrue(decoder.stopped)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=300), st.lists(st.integers(1, 64), min_size=1, max_size=20))
    def test_any_bytes_any_chunking(self, data, sizes):
        """Frames or exactly one ProtocolError; never another exception,
        never more buffered than a limit."""
        frames = []
        decoder = FrameDecoder(lambda verb, payload: frames.append((verb, payload)))
        errors = 0
        pos, i = 0, 0
        while pos < len(data):
            size = sizes[i % len(sizes)]
            i += 1
            try:
                decoder.feed(data[pos : pos + size])
            except ProtocolError as error:
                errors += 1
                self.assertIn(error.code, (MALFORMED_FRAME, FRAME_TOO_LARGE))
            pos += size
            self.assertLessEqual(decoder.buffered, max(MAX_PAYLOAD.values()))
        self.assertLessEqual(errors, 1)
        for verb, payload in frames:
            self.assertLessEqual(len(payload), MAX_PAYLOAD[verb])

    @settings(max_examples=100, deadline=None)
    @given(st.lists(st.sampled_from(FRAMES), max_size=8), st.integers(1, 50))
    def test_valid_streams_decode_exactly(self, frames, size):
        stream = b"".join(encode_frame(verb, payload) for verb, payload in frames)
        chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
        decoded, _ = self.decode(chunks)
        self.assertEqual(decoded, frames)
