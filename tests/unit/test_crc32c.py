"""CRC-32C: golden vector, chaining, and differential tests against the PyPI crc32c package."""

from __future__ import annotations

import array
import os
import random
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventstream.storage import crc32c
from eventstream.storage._crc32c import (
    crc32c_table,
    crc32c_without_folding,
    folding_accelerated,
    hardware_accelerated,
)

reference = pytest.importorskip("crc32c", reason="the PyPI crc32c package is a test dependency")


def test_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c_table(b"123456789") == 0xE3069283


def test_empty_input_returns_the_running_value() -> None:
    assert crc32c(b"") == 0
    assert crc32c(b"", 0x1234) == 0x1234


def test_differs_from_zlib_crc32() -> None:
    # Guards against linking the wrong polynomial.
    assert crc32c(b"123456789") != zlib.crc32(b"123456789")


@given(st.binary(max_size=4096), st.integers(min_value=0, max_value=2**32 - 1))
def test_matches_reference_package(data: bytes, value: int) -> None:
    expected = reference.crc32c(data, value)
    assert crc32c(data, value) == expected
    assert crc32c_table(data, value) == expected


@given(st.binary(max_size=1024), st.integers(min_value=0, max_value=300), st.integers(0, 7))
def test_chaining_and_unaligned_starts(data: bytes, split: int, skew: int) -> None:
    data = bytes(skew) + data
    split = min(split, len(data))
    view = memoryview(data)[skew:]
    whole = crc32c(view)
    cut = max(0, split - skew)
    assert crc32c(view[cut:], crc32c(view[:cut])) == whole
    assert whole == reference.crc32c(bytes(view))


@pytest.mark.parametrize("size", [767, 768, 769, 24575, 24576, 24577, 49152 + 768 + 13, 1 << 20])
@pytest.mark.parametrize("skew", [0, 3])
def test_three_way_blocks_at_their_boundaries(size: int, skew: int) -> None:
    """Sizes around 3 x 256 and 3 x 8192 bytes, where the parallel chains are combined."""
    view = memoryview(random.Random(size).randbytes(size + skew))[skew:]  # unaligned start
    expected = reference.crc32c(bytes(view))
    assert crc32c(view) == expected == crc32c_table(view)
    assert crc32c(view, 0xDEADBEEF) == reference.crc32c(bytes(view), 0xDEADBEEF)


@pytest.mark.parametrize(
    "size",
    [1023, 1024, 1025, 1151, 1152, 1153, 11263, 11264, 11265, 22528 + 1152, 65535, 65536, 65564,
     300_001],
)
@pytest.mark.parametrize("skew", [0, 5])
def test_folding_path_at_its_boundaries(size: int, skew: int) -> None:
    """Buffers of 1 KiB and more take the VPCLMULQDQ folding path (11264-byte hybrid blocks of
    folding plus three crc32 chains, then 128-byte folding steps, then the crc32 instruction for
    the rest); the result must not depend on which path ran."""
    view = memoryview(random.Random(size).randbytes(size + skew))[skew:]
    for start in (0, 0xDEADBEEF):
        expected = reference.crc32c(bytes(view), start)
        assert crc32c(view, start) == expected
        assert crc32c_without_folding(view, start) == expected


@given(st.binary(min_size=1024, max_size=30_000), st.integers(min_value=0, max_value=2**32 - 1))
def test_folding_matches_reference_package(data: bytes, value: int) -> None:
    assert crc32c(data, value) == reference.crc32c(data, value) == crc32c_without_folding(data, value)


def test_accepts_any_contiguous_buffer() -> None:
    numbers = array.array("I", range(100))
    assert crc32c(numbers) == reference.crc32c(numbers.tobytes())
    assert crc32c(bytearray(b"abc")) == reference.crc32c(b"abc")


def test_large_buffer_path_without_gil() -> None:
    data = bytes(range(256)) * 1024
    assert crc32c(data) == reference.crc32c(data) == crc32c_table(data)


def test_rejects_non_buffers() -> None:
    with pytest.raises(TypeError):
        crc32c("text")  # type: ignore[arg-type]


def test_reports_dispatch() -> None:
    if not os.path.exists("/proc/cpuinfo"):
        pytest.skip("needs /proc/cpuinfo to know whether the CPU has SSE4.2")
    with open("/proc/cpuinfo") as cpuinfo:
        has_sse42 = " sse4_2" in cpuinfo.read()
    assert hardware_accelerated() == has_sse42


def test_reports_folding_dispatch() -> None:
    if not os.path.exists("/proc/cpuinfo"):
        pytest.skip("needs /proc/cpuinfo to know whether the CPU has AVX2 and VPCLMULQDQ")
    with open("/proc/cpuinfo") as cpuinfo:
        flags = next((line.split() for line in cpuinfo if line.startswith("flags")), [])
    expected = all(flag in flags for flag in ("sse4_2", "avx2", "vpclmulqdq", "pclmulqdq"))
    assert folding_accelerated() == expected
