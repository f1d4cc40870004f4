"""crc32c: known vectors, chaining, every buffer type, the native core against its twin and the C header alone."""

from __future__ import annotations

import importlib
import threading
import types

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ringbus._core
from ringbus._core import _crc32c_py
from test_csrc import CC, build_and_run

# RFC 3720 (iSCSI), appendix B.4, and the usual check value
VECTORS = [
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
    (b"123456789", 0xE3069283),
    (b"", 0),
]


def native() -> types.ModuleType:
    try:
        return importlib.import_module("ringbus._core._crc32c")
    except ImportError as exc:  # pragma: no cover - only when the extension was not built
        pytest.skip(f"native core not built ({exc}); run `python setup.py build_ext --inplace`")


@pytest.fixture(params=["c", "py"])
def crc32c(request: pytest.FixtureRequest):
    return native().crc32c if request.param == "c" else _crc32c_py.crc32c


@pytest.mark.parametrize("data, expected", VECTORS, ids=[f"vector{i}" for i in range(len(VECTORS))])
def test_known_vectors(crc32c, data: bytes, expected: int) -> None:
    assert crc32c(data) == expected


def test_chaining_continues_the_checksum(crc32c) -> None:
    assert crc32c(b"6789", crc32c(b"12345")) == 0xE3069283
    assert crc32c(b"", 0xE3069283) == 0xE3069283


def test_any_contiguous_buffer(crc32c) -> None:
    raw = bytes(range(256)) * 3
    expected = crc32c(raw)
    array = np.frombuffer(raw, dtype=np.uint32).copy()
    for data in (bytearray(raw), memoryview(raw), memoryview(raw).cast("I"), array, array.reshape(8, -1)):
        assert crc32c(data) == expected


def test_refuses_what_is_not_a_checksum_input(crc32c) -> None:
    with pytest.raises(TypeError):
        crc32c("text")
    with pytest.raises((BufferError, ValueError)):
        crc32c(np.arange(16, dtype=np.uint8)[::2])
    with pytest.raises((BufferError, ValueError)):
        crc32c(memoryview(bytes(16))[::2])
    for bad in (-1, 2**32, 2**80):
        with pytest.raises(ValueError):
            crc32c(b"x", bad)
    with pytest.raises(TypeError):
        crc32c(b"x", 1.0)


def test_value_accepts_integer_likes(crc32c) -> None:
    assert crc32c(b"6789", np.uint32(crc32c(b"12345"))) == 0xE3069283


@given(data=st.binary(max_size=600), offset=st.integers(0, 15), cut=st.integers(0, 600),
       value=st.integers(0, 2**32 - 1))
def test_native_matches_twin_at_every_length_and_alignment(data: bytes, offset: int, cut: int, value: int) -> None:
    c = native().crc32c
    view = memoryview(bytes(offset) + data)[offset:]  # the same bytes at another address alignment
    expected = _crc32c_py.crc32c(data, value)
    assert c(view, value) == expected
    cut = min(cut, len(data))
    assert c(view[cut:], c(view[:cut], value)) == expected


def test_large_buffers_release_the_gil_and_agree_with_the_twin() -> None:
    c = native().crc32c
    big = np.random.default_rng(7).integers(0, 256, size=200_000, dtype=np.uint8)
    expected = _crc32c_py.crc32c(big)
    assert c(big) == expected
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(c(big))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [expected] * 4


def test_the_shim_exports_the_native_function_when_built() -> None:
    expected = native().crc32c if ringbus._core.IMPLEMENTATION == "c" else _crc32c_py.crc32c
    assert ringbus._core.crc32c is expected


def test_agrees_with_an_independent_implementation_when_installed() -> None:
    for name in ("google_crc32c", "crc32c"):
        try:
            other = importlib.import_module(name)
        except ImportError:
            continue
        data = bytes(range(256)) * 17
        value = other.value(data) if name == "google_crc32c" else other.crc32c(data)
        assert native().crc32c(data) == value == _crc32c_py.crc32c(data)
        return
    pytest.skip("neither google_crc32c nor crc32c is installed (optional cross-check)")


@pytest.mark.skipif(CC is None, reason="needs a C compiler")
@pytest.mark.parametrize("sanitizer", ["address", "thread"])
def test_c_header_alone(tmp_path, sanitizer: str) -> None:
    result = build_and_run(tmp_path, "test_crc32c.c", sanitizer)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "crc32c: ok" in result.stdout
    assert "WARNING: ThreadSanitizer" not in result.stderr
