"""``box_view`` is slicing, for every box inside every strided (C, I, J, K) tensor."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_patchwork.core.inference.box import box_view, is_plain


@st.composite
def boxes(draw):
    channels = draw(st.integers(1, 3))
    shape = [draw(st.integers(1, 9)) for _ in range(3)]
    start = tuple(draw(st.integers(0, s - 1)) for s in shape)
    size = tuple(draw(st.integers(1, s - a)) for s, a in zip(shape, start))
    # the volume itself a view: cropped, permuted or stepped, as callers may hand us
    layout = draw(st.sampled_from(["contiguous", "cropped", "permuted", "stepped"]))
    return channels, shape, start, size, layout


def _volume(channels, shape, layout):
    if layout == "contiguous":
        return torch.rand(channels, *shape)
    if layout == "cropped":
        return torch.rand(channels + 1, shape[0] + 2, shape[1] + 1, shape[2] + 3)[1:, 2:, 1:, :-3]
    if layout == "permuted":
        return torch.rand(shape[2], shape[0], channels, shape[1]).permute(2, 1, 3, 0)
    return torch.rand(channels, 2 * shape[0], shape[1], 2 * shape[2])[:, ::2, :, ::2]


@settings(max_examples=200, deadline=None)
@given(boxes())
def test_box_view_is_the_slice(box):
    channels, shape, start, size, layout = box
    volume = _volume(channels, shape, layout)
    assert tuple(volume.shape) == (channels, *shape)
    slices = tuple(slice(a, a + s) for a, s in zip(start, size))
    view = box_view(volume, start, size)
    expected = volume[(slice(None), *slices)]
    assert torch.equal(view, expected)
    assert view.data_ptr() == expected.data_ptr()
    before = volume.clone()
    view.add_(1.0)  # a view: writing through it writes the volume there, and only there
    after = before.clone()
    after[(slice(None), *slices)] += 1.0
    assert torch.equal(volume, after)


@pytest.mark.parametrize(
    "tensor, plain",
    [
        (torch.zeros(1, 2, 2, 2), True),
        (torch.zeros(2, 2, 2), False),
        (torch.zeros(1, 2, 2, 2).to_sparse(), False),
        (torch.zeros(1, 2, 2, 2, dtype=torch.complex64).conj(), False),
        (torch.nn.Parameter(torch.zeros(1, 2, 2, 2)), False),
    ],
    ids=["dense", "3D", "sparse", "conjugate view", "a Tensor subclass"],
)
def test_only_plain_dense_tensors_are_viewed(tensor, plain):
    assert is_plain(tensor) is plain
