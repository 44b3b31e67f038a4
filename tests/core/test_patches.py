"""PatchGatherer: the one padding implementation, checked against np.pad in every mode."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_patchwork.core.data.lazy import LazyVolume
from napari_patchwork.core.data.location import PatchLocation
from napari_patchwork.core.inference.patches import PaddedVolume, PatchGatherer, pad_volume
from napari_patchwork.core.types import PADDING_MODES

NUMPY_MODES = ["edge", "reflect", "symmetric", "wrap"]
STATISTICS = {"mean": np.mean, "median": np.median, "minimum": np.min, "maximum": np.max}


def numpy_padded(array, border, mode, fill=0.0):
    """What np.pad gives for one of our padding modes."""
    widths = ((0, 0), *((b, b) for b in border))
    if mode in STATISTICS:
        return np.pad(array, widths, mode="constant", constant_values=STATISTICS[mode](array))
    if mode == "constant":
        return np.pad(array, widths, mode="constant", constant_values=fill)
    if isinstance(mode, float):
        return np.pad(array, widths, mode="constant", constant_values=mode)
    return np.pad(array, widths, mode=mode)


def test_every_named_padding_mode_is_covered():
    assert set(NUMPY_MODES) | set(STATISTICS) | {"constant"} == set(PADDING_MODES)


@pytest.mark.parametrize("mode", [*PADDING_MODES, 2.5])
@pytest.mark.parametrize("shape", [(2, 5, 4, 3), (1, 1, 2, 6), (1, 3, 3, 3)])
def test_pad_volume_equals_np_pad(mode, shape):
    array = np.random.default_rng(0).random(shape).astype(np.float32)
    border = (4, 2, 7)  # wider than some axes: reflections fold more than once
    padded = pad_volume(torch.from_numpy(array), border, mode, fill=-3.0)
    expected = numpy_padded(array, border, mode, fill=-3.0)
    assert padded.shape == expected.shape
    np.testing.assert_allclose(padded.numpy(), expected, rtol=1e-6)


def test_median_of_an_even_count_is_numpys_midpoint():
    volume = torch.tensor([1.0, 2.0, 4.0, 10.0]).reshape(1, 4, 1, 1)
    padded = pad_volume(volume, (1, 0, 0), "median")
    assert padded[0, 0, 0, 0] == 3.0  # np.median, not torch's lower median (2)


@pytest.mark.parametrize("mode", ["mean", "median"])
def test_integer_statistics_are_cast_as_numpy_casts(mode):
    array = np.array([0, 1, 1, 200], dtype=np.uint8).reshape(1, 4, 1, 1)
    padded = pad_volume(torch.from_numpy(array), (1, 0, 0), mode)
    assert padded.dtype == torch.uint8
    np.testing.assert_array_equal(padded.numpy(), numpy_padded(array, (1, 0, 0), mode))


@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(*[st.integers(1, 6)] * 3),
    mode=st.sampled_from([*NUMPY_MODES, "constant", "mean", "maximum", -1.5]),
    data=st.data(),
)
def test_any_patch_equals_the_same_window_of_np_pad(shape, mode, data):
    array = np.random.default_rng(1).random((2, *shape)).astype(np.float32)
    size = tuple(data.draw(st.integers(1, 9)) for _ in range(3))
    start = tuple(data.draw(st.integers(-9, s + 2)) for s in shape)
    margin = 20
    expected_volume = numpy_padded(array, (margin,) * 3, mode, fill=7.0)
    window = tuple(slice(margin + i, margin + i + n) for i, n in zip(start, size))
    gatherer = PatchGatherer(torch.from_numpy(array), mode, fill=7.0)
    patch = gatherer.gather([PatchLocation(start, size)])[0]
    np.testing.assert_allclose(patch.numpy(), expected_volume[(slice(None), *window)], rtol=1e-6)


@pytest.mark.parametrize("mode", [*NUMPY_MODES, "constant", 4.0])
def test_a_lazily_read_volume_pads_as_np_pad(mode):
    array = np.random.default_rng(2).random((1, 6, 5, 4)).astype(np.float32)
    padded = PaddedVolume(LazyVolume(array), (3, 1, 5), mode, fill=-2.0)
    expected = numpy_padded(array, (3, 1, 5), mode, fill=-2.0)
    assert padded.shape == expected.shape
    everything = tuple(slice(0, n) for n in padded.shape)
    np.testing.assert_allclose(padded[everything], expected, rtol=1e-6)


def test_a_misspelt_mode_is_refused_naming_it():
    with pytest.raises(ValueError, match="padding_mode.*'reflct'"):
        PatchGatherer(torch.zeros(1, 4, 4, 4), "reflct")
    with pytest.raises(ValueError, match="padding_mode.*'reflct'"):
        pad_volume(torch.zeros(1, 4, 4, 4), (1, 1, 1), "reflct")


@pytest.mark.parametrize(
    ("arguments", "error", "words"),
    [
        ({"volume": torch.zeros(4, 4, 4)}, ValueError, r"\(C, I, J, K\).*\(4, 4, 4\)"),
        ({"volume": np.zeros((1, 4, 4, 4))}, TypeError, "volume must be"),
        ({"padding_mode": True}, ValueError, "padding_mode.*True"),
        ({"fill": "0"}, TypeError, "fill must be a number.*'0'"),
        ({"fill": False}, TypeError, "fill must be a number.*False"),
    ],
)
def test_bad_arguments_name_themselves(arguments, error, words):
    values = {"volume": torch.zeros(1, 4, 4, 4), "padding_mode": "edge", "fill": 0.0}
    values.update(arguments)
    with pytest.raises(error, match=words):
        PatchGatherer(values["volume"], values["padding_mode"], values["fill"])


def test_statistics_need_the_volume_in_memory():
    with pytest.raises(ValueError, match="padding_mode='median' needs the whole volume"):
        PatchGatherer(LazyVolume(np.zeros((1, 4, 4, 4), np.float32)), "median")


@pytest.mark.parametrize("border", [(1, 1), (1, -1, 0), (1.5, 0, 0)])
def test_pad_volume_refuses_a_bad_border(border):
    with pytest.raises(ValueError, match="border must be 3 ints"):
        pad_volume(torch.zeros(1, 4, 4, 4), border, "edge")


def test_a_constant_that_does_not_fit_the_patches_is_refused():
    gatherer = PatchGatherer(torch.zeros(1, 4, 4, 4, dtype=torch.uint8), -1000)
    with pytest.raises(ValueError, match="padding constant -1000 does not fit"):
        gatherer.gather([PatchLocation((-1, 0, 0), (4, 4, 4))], dtype=torch.uint8)
