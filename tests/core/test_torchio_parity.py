"""Our grid and stitching equal TorchIO 1.2.1's ``GridSampler`` + ``GridAggregator``."""

import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import napari_patchwork as pw

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    tio = pytest.importorskip("torchio")


def position_dependent_model(batch: torch.Tensor) -> torch.Tensor:
    """Not an identity: which patch a voxel is taken from changes the result."""
    ramp = (
        torch.arange(batch.shape[-1], dtype=batch.dtype)
        + 10 * torch.arange(batch.shape[-3])[:, None, None]
    )
    return 2 * batch + ramp


CASES = [
    ((20, 17, 13), (6, 6, 6), (2, 2, 2)),
    ((20, 17, 13), (8, 8, 8), (4, 4, 4)),
    ((16, 16, 16), (6, 6, 6), (4, 4, 4)),  # patch = 1.5 x overlap
    ((9, 30, 12), (8, 6, 4), (4, 2, 2)),
    ((9, 30, 12), (8, 6, 4), (0, 0, 0)),
    ((21, 21, 21), (7, 7, 7), (0, 0, 0)),
]


@pytest.mark.parametrize("padding_mode", [None, "constant", "reflect", "edge", 3.5])
@pytest.mark.parametrize(("shape", "patch", "overlap"), CASES)
def test_same_patches_and_stitching_as_torchio(shape, patch, overlap, padding_mode):
    data = torch.rand(1, *shape, generator=torch.Generator().manual_seed(1))
    theirs = tio.GridSampler(
        tio.Subject(t1=tio.ScalarImage(tensor=data)), patch, overlap, padding_mode
    )
    ours = pw.GridSampler(pw.Subject(t1=pw.ScalarImage(data)), patch, overlap, padding_mode)
    assert len(ours) == len(theirs)
    border = np.array(overlap) // 2 if padding_mode is not None else np.zeros(3, int)
    for index in range(len(ours)):
        their_location = theirs[index][tio.LOCATION].numpy()
        assert ours[index].patch_location.index == tuple(their_location[:3] - border)
        assert torch.equal(ours[index].t1.data, theirs[index].t1.data)
    for mode in ("crop", "average", "hann"):
        their_aggregator = tio.inference.GridAggregator(theirs, overlap_mode=mode)
        for batch in tio.SubjectsLoader(theirs, batch_size=5):
            their_aggregator.add_batch(
                position_dependent_model(batch["t1"][tio.DATA]), batch[tio.LOCATION]
            )
        our_aggregator = pw.PatchAggregator(shape, mode, overlap)
        for batch in DataLoader(ours, batch_size=5):
            our_aggregator.add_batch(position_dependent_model(batch.t1.data), batch.patch_location)
        expected = their_aggregator.get_output_tensor()
        assert torch.allclose(our_aggregator.get_output(), expected, atol=1e-5), mode
