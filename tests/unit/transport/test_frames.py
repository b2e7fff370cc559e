import random
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventstream.transport.frames import HEADER, FrameDecoder, FrameEncoder, FrameError, iter_frames

LIMIT = 1 << 16


def crc(data: bytes | bytearray | memoryview) -> int:
    return zlib.crc32(data)


def encode_all(bodies: list[bytes]) -> bytes:
    enc = FrameEncoder(crc, LIMIT)
    out = bytearray()
    for body in bodies:
        header, b = enc.encode(body)
        out += header
        out += b
    return bytes(out)


@given(st.lists(st.binary(max_size=300), max_size=20), st.integers(min_value=0, max_value=2**32 - 1))
def test_any_split_of_the_stream_yields_the_same_bodies(bodies: list[bytes], seed: int) -> None:
    stream = encode_all(bodies)
    rng = random.Random(seed)
    dec = FrameDecoder(crc, LIMIT)
    got: list[bytes] = []
    pos = 0
    while pos < len(stream):
        step = rng.randint(1, 64)
        got += dec.feed(stream[pos : pos + step])
        pos += step
    assert got == bodies
    assert dec.at_boundary()


def test_header_layout_is_length_then_crc_little_endian() -> None:
    stream = encode_all([b"abc"])
    assert stream[:4] == (3).to_bytes(4, "little")
    assert stream[4:8] == zlib.crc32(b"abc").to_bytes(4, "little")
    assert stream[8:] == b"abc"


def test_huge_length_prefix_is_refused_before_buffering() -> None:
    dec = FrameDecoder(crc, LIMIT)
    with pytest.raises(FrameError, match="exceeds the limit"):
        dec.feed(HEADER.pack(LIMIT + 1, 0))


def test_flipped_body_byte_is_a_crc_error() -> None:
    stream = bytearray(encode_all([b"hello world"]))
    stream[10] ^= 0x40
    with pytest.raises(FrameError, match="CRC mismatch"):
        FrameDecoder(crc, LIMIT).feed(bytes(stream))


def test_truncated_stream_is_reported() -> None:
    stream = encode_all([b"one", b"two"])
    with pytest.raises(FrameError, match="ended inside a frame"):
        list(iter_frames(stream[:-1], crc, LIMIT))


def test_encoder_refuses_a_body_over_the_limit() -> None:
    with pytest.raises(FrameError):
        FrameEncoder(crc, 10).encode(b"x" * 11)


@given(st.binary(max_size=2000))
def test_random_bytes_give_bodies_or_a_clean_frame_error(data: bytes) -> None:
    dec = FrameDecoder(crc, LIMIT)
    try:
        bodies = dec.feed(data)
    except FrameError:
        return
    for body in bodies:
        assert len(body) <= LIMIT


# -- the native splitter (csrc/_frames.pyx), used whenever the CRC is eventstream's crc32c ------
def _native_crc(data: bytes | memoryview) -> int:
    from eventstream.storage import crc32c

    return crc32c(data)


def _reference_crc(data: bytes | memoryview) -> int:
    # A different function object with the same values: FrameDecoder takes its Python loop.
    return _native_crc(data)


def _feed_in_steps(crc_fn, stream: bytes, seed: int) -> tuple[list[bytes], str | None, bool]:  # type: ignore[no-untyped-def]
    from eventstream.storage import crc32c

    dec = FrameDecoder(crc32c if crc_fn is None else crc_fn, LIMIT)
    rng = random.Random(seed)
    got: list[bytes] = []
    pos = 0
    try:
        while pos < len(stream):
            step = rng.randint(1, 97)
            got += dec.feed(stream[pos : pos + step])
            pos += step
    except FrameError as exc:
        return got, str(exc), dec.at_boundary()
    return got, None, dec.at_boundary()


@given(
    st.lists(st.binary(max_size=300), max_size=20),
    st.integers(min_value=0, max_value=2**32 - 1),
    st.one_of(st.none(), st.tuples(st.integers(min_value=0, max_value=10_000), st.integers(min_value=1, max_value=255))),
)
def test_native_splitter_matches_the_reference(bodies: list[bytes], seed: int, flip: tuple[int, int] | None) -> None:
    from eventstream.storage import crc32c

    enc = FrameEncoder(crc32c, LIMIT)
    stream = bytearray()
    for body in bodies:
        header, b = enc.encode(body)
        stream += header + bytes(b)
    if flip is not None and stream:
        stream[flip[0] % len(stream)] ^= flip[1]
    native = _feed_in_steps(None, bytes(stream), seed)
    reference = _feed_in_steps(_reference_crc, bytes(stream), seed)
    assert native == reference
    if flip is None:
        assert native == (bodies, None, True)


def test_native_splitter_refuses_a_huge_length_and_a_bad_crc() -> None:
    from eventstream.storage import crc32c

    with pytest.raises(FrameError, match="exceeds the limit"):
        FrameDecoder(crc32c, LIMIT).feed(HEADER.pack(LIMIT + 1, 0))
    with pytest.raises(FrameError, match="CRC mismatch"):
        FrameDecoder(crc32c, LIMIT).feed(HEADER.pack(3, crc32c(b"abc") ^ 1) + b"abc")
