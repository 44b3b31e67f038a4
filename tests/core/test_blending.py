"""Blending windows against their closed forms and the invariants the merger relies on."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_patchwork.core.inference.blending import blending_window

sizes = st.tuples(*[st.integers(1, 12)] * 3)


@settings(max_examples=40, deadline=None)
@given(size=sizes, mode=st.sampled_from(["average", "hann", "gaussian"]))
def test_windows_are_positive_separable_and_symmetric(size, mode):
    window = blending_window(mode, size)[0].double()
    assert window.shape == size
    assert bool((window > 0).all())  # never zero: every voxel of a patch gets some weight
    for axis in range(3):
        assert torch.allclose(window, window.flip(axis), atol=1e-6)  # centred
    # separable: the window is the outer product of its three central lines
    i, j, k = (s // 2 for s in size)
    outer = torch.einsum("a,b,c->abc", window[:, j, k], window[i, :, k], window[i, j, :])
    assert torch.allclose(outer / window[i, j, k] ** 2, window, rtol=1e-5)


def test_average_is_all_ones_and_gaussian_follows_nnunet():
    assert torch.equal(blending_window("average", (3, 4, 5)), torch.ones(1, 3, 4, 5))
    size = 16
    line = blending_window("gaussian", (size, 1, 1), dtype=torch.float64)[0, :, 0, 0]
    sigma = size / 8
    positions = np.arange(size) - (size - 1) / 2
    expected = np.exp(-0.5 * (positions / sigma) ** 2)
    expected = np.maximum(expected, expected.min())
    assert np.allclose(line.numpy(), expected)


def test_hann_matches_torchio_window():
    size = 8
    line = blending_window("hann", (size, 1, 1), dtype=torch.float64)[0, :, 0, 0]
    n = size + 2
    expected = [0.5 - 0.5 * math.cos(2 * math.pi * m / (n - 1)) for m in range(1, n - 1)]
    assert np.allclose(line.numpy(), expected)


def test_dtype_and_device_are_honoured_and_bad_modes_named():
    assert blending_window("hann", (2, 2, 2), dtype=torch.float16).dtype == torch.float16
    with pytest.raises(ValueError, match="'crop'"):
        blending_window("crop", (2, 2, 2))
