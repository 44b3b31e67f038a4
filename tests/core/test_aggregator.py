import pytest
import torch
from torch.utils.data import DataLoader

import napari_patchwork as pw
from tests.conftest import make_subject

MODES = ["crop", "average", "hann", "gaussian"]


def aggregate(
    subject, mode, patch=6, overlap=2, padding_mode=None, model=lambda x: x, batch_size=3, **kwargs
):
    sampler = pw.GridSampler(subject, patch, overlap, padding_mode)
    aggregator = pw.PatchAggregator(subject.spatial_shape, mode, overlap, **kwargs)
    for batch in DataLoader(sampler, batch_size=batch_size):
        aggregator.add_batch(model(batch.t1.data), batch.patch_location)
    return aggregator


@pytest.mark.parametrize("padding_mode", [None, "reflect"])
@pytest.mark.parametrize("mode", MODES)
def test_identity_returns_the_input(mode, padding_mode):
    subject = make_subject((13, 11, 9), channels=2)
    output = aggregate(subject, mode, padding_mode=padding_mode).get_output()
    assert torch.allclose(output, subject.t1.data, atol=1e-6)


def test_hann_borders_are_not_dimmed():
    """TorchIO 2 clamps the weight sum to >= 1 and dims borders; we divide by the true sum."""
    subject = pw.Subject(t1=pw.ScalarImage(torch.ones(1, 16, 16, 16)))
    output = aggregate(subject, "hann", patch=8, overlap=4).get_output()
    assert torch.allclose(output, torch.ones_like(output))


def test_one_weight_channel_whatever_the_output_channels():
    subject = make_subject()
    aggregator = aggregate(subject, "gaussian", model=lambda x: x.repeat(1, 5, 1, 1, 1))
    assert aggregator.get_output().shape == (5, 12, 10, 8)
    assert [tuple(w.shape) for w in aggregator._weights.values()] == [(1, 12, 10, 8)]


@pytest.mark.parametrize("mode", MODES)
def test_dict_outputs_with_a_downsampled_one_first(mode):
    """MONAI fails when a full-size output follows a downsampled one."""
    subject = make_subject((16, 12, 8))

    def model(x):
        return {"low": torch.nn.functional.avg_pool3d(x, 2), "full": x * 3}

    aggregator = aggregate(subject, mode, patch=8, overlap=4, model=model, output_shape=(8, 6, 4))
    assert torch.allclose(aggregator.get_output("full"), subject.t1.data * 3, atol=1e-5)
    pooled = torch.nn.functional.avg_pool3d(subject.t1.data[None], 2)[0]
    assert torch.allclose(aggregator.get_output("low"), pooled, atol=1e-5)
    assert sorted(aggregator.keys) == ["full", "low"]


def test_downsampled_output_shape_is_inferred():
    subject = make_subject((16, 16, 16))
    aggregator = aggregate(
        subject, "average", patch=8, overlap=0, model=lambda x: x[..., ::2, ::2, ::2]
    )
    assert aggregator.get_output().shape == (1, 8, 8, 8)
    assert torch.allclose(aggregator.get_output(), subject.t1.data[:, ::2, ::2, ::2])


def test_partial_output_is_a_usable_preview():
    subject = make_subject((12, 12, 12))
    sampler = pw.GridSampler(subject, 6)
    aggregator = pw.PatchAggregator(subject.spatial_shape, "hann")
    first = sampler[0]
    aggregator.add_batch(first.t1.data[None], [first.patch_location])
    output = aggregator.get_output()
    assert torch.isfinite(output).all()
    assert torch.allclose(output[:, :6, :6, :6], subject.t1.data[:, :6, :6, :6])
    assert (output[:, 6:] == 0).all()


def test_crop_keeps_integer_dtype():
    subject = make_subject()
    output = aggregate(subject, "crop", model=lambda x: (x > 0.5).to(torch.int64)).get_output()
    assert output.dtype == torch.int64
    assert torch.equal(output, (subject.t1.data > 0.5).to(torch.int64))


def test_accumulates_on_the_requested_device_and_dtype():
    aggregator = aggregate(make_subject(), "hann", device="cpu", dtype=torch.float64)
    assert aggregator.get_output().dtype == torch.float64


def test_accepts_torchio_style_location_tensor():
    aggregator = pw.PatchAggregator((4, 4, 4), "average")
    aggregator.add_batch(torch.ones(1, 1, 4, 4, 4), torch.tensor([[0, 0, 0, 4, 4, 4]]))
    assert torch.equal(aggregator.get_output(), torch.ones(1, 4, 4, 4))


def test_get_output_before_add_batch():
    with pytest.raises(RuntimeError, match="before any add_batch"):
        pw.PatchAggregator((4, 4, 4)).get_output()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"overlap_mode": "max"}, "overlap_mode"),
        ({"patch_overlap": 3}, "patch_overlap"),
        ({"spatial_shape": (4, 4)}, "spatial_shape"),
        ({"spatial_shape": (4, 0, 4)}, "spatial_shape"),
        ({"dtype": "float32"}, "dtype"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, match):
    arguments = {"spatial_shape": (4, 4, 4), **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        pw.PatchAggregator(**arguments)


def test_add_batch_rejects_bad_batches():
    aggregator = pw.PatchAggregator((8, 8, 8), "average")
    location = pw.PatchLocation((0, 0, 0), (4, 4, 4))
    with pytest.raises(ValueError, match="5D"):
        aggregator.add_batch(torch.zeros(1, 4, 4, 4), [location])
    with pytest.raises(ValueError, match="2 entries but the batch has 1"):
        aggregator.add_batch(torch.zeros(1, 1, 4, 4, 4), [location, location])
    with pytest.raises(ValueError, match="outside the volume"):
        aggregator.add_batch(torch.zeros(1, 1, 4, 4, 4), [pw.PatchLocation((8, 0, 0), (4, 4, 4))])
    with pytest.raises(ValueError, match="do not match location"):
        aggregator.add_batch(torch.zeros(1, 1, 3, 4, 4), [location])
    with pytest.raises(TypeError, match="locations"):
        aggregator.add_batch(torch.zeros(1, 1, 4, 4, 4), [(0, 0, 0)])
    with pytest.raises(TypeError, match="batch"):
        aggregator.add_batch([1, 2], [location])


def test_dict_keys_must_not_change():
    aggregator = pw.PatchAggregator((4, 4, 4), "average")
    location = [pw.PatchLocation((0, 0, 0), (4, 4, 4))]
    aggregator.add_batch({"a": torch.zeros(1, 1, 4, 4, 4)}, location)
    with pytest.raises(ValueError, match="keys"):
        aggregator.add_batch({"b": torch.zeros(1, 1, 4, 4, 4)}, location)
    with pytest.raises(ValueError, match="key 'c'"):
        aggregator.get_output("c")
