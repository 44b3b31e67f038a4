"""Fuzzing the NIfTI reader with mutated headers and streams (hypothesis).

Whatever the bytes, ``read_nifti`` either returns a ``(C, I, J, K)`` array or raises one of
our documented errors (``ValueError``, ``FileNotFoundError``, ``PermissionError``) naming the
path: never another exception type, never a hang, never a crash of the interpreter.
"""

from __future__ import annotations

import gzip
import signal
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_patchwork.io.nifti import read_nifti

BUDGET = 10**6  # voxels: mutated dims must never make the reader allocate much
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def valid_file(header_class=nib.Nifti1Header) -> bytes:
    array = np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4)
    header = header_class()
    image_class = nib.Nifti1Image if header_class is nib.Nifti1Header else nib.Nifti2Image
    image = image_class(array, np.diag([1.0, 2.0, 3.0, 1.0]), header)
    return image.to_bytes()


NIFTI1 = valid_file()
NIFTI2 = valid_file(nib.Nifti2Header)


class Hang(Exception):
    pass


def read_with_watchdog(path: Path, seconds: int = 20):
    def expire(*_):
        raise Hang(f"read_nifti took over {seconds} s on {path}")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        return read_nifti(path, max_voxels=BUDGET)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


OUTCOMES = {"read": 0, "refused": 0}


def check(path: Path) -> None:
    try:
        data, affine = read_with_watchdog(path)
    except (ValueError, FileNotFoundError, PermissionError) as error:
        assert str(path) in str(error), f"the error does not name the path: {error}"
        OUTCOMES["refused"] += 1
        return
    OUTCOMES["read"] += 1
    assert data.ndim == 4 and 0 < data.size <= BUDGET
    assert affine.shape == (4, 4)
    assert data.dtype.kind in "biuf", f"unusable dtype {data.dtype} was returned"


mutations = st.lists(st.tuples(st.integers(0, 351), st.integers(0, 255)), min_size=1, max_size=12)


@FUZZ
@given(mutations=mutations, version=st.sampled_from([1, 2]), compressed=st.booleans())
def test_mutated_header_bytes(tmp_path_factory, mutations, version, compressed):
    raw = bytearray(NIFTI1 if version == 1 else NIFTI2)
    for offset, value in mutations:
        if version == 2:
            offset = offset * 540 // 352  # NIfTI-2 headers are 540 bytes
        raw[offset] = value
    path = tmp_path_factory.mktemp("fuzz") / ("x.nii.gz" if compressed else "x.nii")
    path.write_bytes(gzip.compress(bytes(raw)) if compressed else bytes(raw))
    check(path)


FIELDS = {  # NIfTI-1 header fields worth lying about: (offset, struct format)
    "dim": (40, "<8h"),
    "datatype": (70, "<h"),
    "bitpix": (72, "<h"),
    "pixdim": (76, "<8f"),
    "vox_offset": (108, "<f"),
    "scl_slope": (112, "<f"),
    "scl_inter": (116, "<f"),
    "sizeof_hdr": (0, "<i"),
}


@FUZZ
@given(
    field=st.sampled_from(sorted(FIELDS)),
    values=st.lists(
        st.one_of(
            st.integers(-(2**15), 2**15 - 1),
            st.sampled_from([0, -1, 1, 7, 8, 32767, 2**31 - 1, -(2**31)]),
            st.floats(allow_nan=True, allow_infinity=True, width=32),
        ),
        min_size=8,
        max_size=8,
    ),
)
def test_lying_header_fields(tmp_path_factory, field, values):
    import struct

    offset, layout = FIELDS[field]
    count = struct.calcsize(layout) // (2 if "h" in layout else 4)
    kind = layout[-1]
    cast = [
        (int(v) if kind in "hi" and np.isfinite(v) else (0 if kind in "hi" else float(v)))
        for v in values[:count]
    ]
    if kind == "h":
        cast = [max(-(2**15), min(2**15 - 1, v)) for v in cast]
    if kind == "i":
        cast = [max(-(2**31), min(2**31 - 1, v)) for v in cast]
    raw = bytearray(NIFTI1)
    raw[offset : offset + struct.calcsize(layout)] = struct.pack(layout, *cast)
    path = tmp_path_factory.mktemp("fuzz") / "x.nii"
    path.write_bytes(bytes(raw))
    check(path)


@FUZZ
@given(cut=st.integers(0, len(NIFTI1) - 1), garbage=st.binary(max_size=64))
def test_truncated_or_extended_files(tmp_path_factory, cut, garbage):
    path = tmp_path_factory.mktemp("fuzz") / "x.nii"
    path.write_bytes(NIFTI1[:cut] + garbage)
    check(path)


@FUZZ
@given(mutations=st.lists(st.tuples(st.integers(10, 200), st.integers(0, 255)), max_size=8))
def test_corrupted_gzip_stream(tmp_path_factory, mutations):
    stream = bytearray(gzip.compress(NIFTI1))
    for offset, value in mutations:
        stream[offset % len(stream)] = value
    path = tmp_path_factory.mktemp("fuzz") / "x.nii.gz"
    path.write_bytes(bytes(stream))
    check(path)


@pytest.mark.parametrize("raw", [NIFTI1, NIFTI2], ids=["nifti1", "nifti2"])
def test_valid_files_read_exactly(tmp_path, raw):
    path = tmp_path / "x.nii"
    path.write_bytes(raw)
    data, _ = read_nifti(path)
    assert np.array_equal(data[0], np.arange(120).reshape(6, 5, 4))


def test_fuzzing_reached_both_outcomes(tmp_path_factory):
    """Guards the fuzzers themselves: some mutated files must read, some must be refused.

    Under pytest-xdist this test can land in a process that ran no fuzzer: it then runs two
    of them itself.
    """
    if not (OUTCOMES["read"] and OUTCOMES["refused"]):
        test_truncated_or_extended_files(tmp_path_factory=tmp_path_factory)
        test_mutated_header_bytes(tmp_path_factory=tmp_path_factory)
    assert OUTCOMES["read"] > 0 and OUTCOMES["refused"] > 0, OUTCOMES
