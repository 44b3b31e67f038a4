"""Bad input of every kind gets a clear error naming the argument and the value.

Each row: a call, the error type, and text the message must contain (the argument's name and
the offending value, or what is wrong with it).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import napari_patchwork as pw


def subject(shape=(10, 10, 10), **images):
    return pw.Subject(image=pw.ScalarImage(torch.rand(1, *shape)), **images)


def grid(patch_size, patch_overlap=0, padding_mode=None, shape=(10, 10, 10)):
    return lambda: pw.GridSampler(subject(shape), patch_size, patch_overlap, padding_mode)


def uniform(patch_size):
    return lambda: next(iter(pw.UniformSampler(subject(), patch_size, 1)))


def infer(patch_size=4, patch_overlap=0, model=None, image=None, **kwargs):
    volume = torch.rand(1, 8, 8, 8) if image is None else image
    return lambda: pw.infer(
        model or (lambda x: x), volume, patch_size=patch_size, patch_overlap=patch_overlap, **kwargs
    )


def weighted(probability_map, patch_size=4):
    def call():
        images = {"sampling_map": pw.ScalarImage(probability_map)}
        return next(iter(pw.WeightedSampler(subject(**images), patch_size, "sampling_map", 1)))

    return call


def label(label_map, label_probabilities=None, patch_size=4):
    def call():
        labelled = subject(labels=pw.LabelMap(label_map))
        sampler = pw.LabelSampler(labelled, patch_size, "labels", label_probabilities, 1)
        return next(iter(sampler))

    return call


def aggregate(batch, locations, spatial_shape=(8, 8, 8)):
    def call():
        aggregator = pw.PatchAggregator(spatial_shape)
        aggregator.add_batch(batch, locations)

    return call


def location(index, size=(4, 4, 4)):
    return pw.PatchLocation(index, size)


ONES = torch.ones(1, 10, 10, 10)
CORNER_ONLY = torch.zeros(1, 10, 10, 10)
CORNER_ONLY[0, 0, 0, 0] = 1  # no 4³ patch can be centred there

SIZES = [  # (call, error, message fragments)
    (grid(0), ValueError, ["patch_size", "0"]),
    (grid(-3), ValueError, ["patch_size", "-3"]),
    (grid(2.5), TypeError, ["patch_size", "2.5"]),
    (grid((4, 4)), ValueError, ["patch_size", "(4, 4)"]),
    (grid((4, 4, 4, 4)), ValueError, ["patch_size", "(4, 4, 4, 4)"]),
    (grid(True), TypeError, ["patch_size", "True"]),
    (grid(12), ValueError, ["patch_size", "12", "larger than the volume"]),
    (grid(8, 3), ValueError, ["patch_overlap", "3", "even"]),
    (grid(8, 8), ValueError, ["patch_overlap", "8", "smaller than patch_size"]),
    (grid(8, -2), ValueError, ["patch_overlap", "-2"]),
    (grid(8, 2, "mirror"), ValueError, ["padding_mode", "mirror"]),
    (uniform(0), ValueError, ["patch_size", "0"]),
    (uniform(2.5), TypeError, ["patch_size", "2.5"]),
    (uniform(11), ValueError, ["patch_size", "11"]),
    (infer(0), ValueError, ["patch_size", "0"]),
    (infer(False), TypeError, ["patch_size", "False"]),
    (infer(4, 3), ValueError, ["patch_overlap", "3"]),
    (infer(4, 4), ValueError, ["patch_overlap", "4"]),
    (infer(4, -2), ValueError, ["patch_overlap", "-2"]),
    (infer(4, batch_size=0), ValueError, ["batch_size", "0"]),
    (infer(4, overlap_mode="max"), ValueError, ["overlap_mode", "max"]),
    (infer(4, device="gpu0"), ValueError, ["device", "gpu0"]),
]

VOLUMES = [
    (lambda: pw.ScalarImage(torch.rand(10, 10)), ValueError, ["4D", "(10, 10)"]),
    (lambda: pw.ScalarImage(torch.rand(1, 1, 4, 4, 4)), ValueError, ["4D", "(1, 1, 4, 4, 4)"]),
    (lambda: pw.ScalarImage(torch.rand(1, 0, 4, 4)), ValueError, ["empty", "(1, 0, 4, 4)"]),
    (lambda: pw.ScalarImage("missing.nii.gz").data, FileNotFoundError, ["missing.nii.gz"]),
    (lambda: pw.ScalarImage(42), TypeError, ["tensor", "int"]),
    (infer(image=torch.rand(8, 8, 8)), ValueError, ["image", "(8, 8, 8)"]),
    (infer(image=torch.zeros(1, 8, 8, 8, dtype=torch.complex64)), TypeError, ["complex64"]),
]

PROBABILITY_MAPS = [
    (weighted(-ONES), ValueError, ["sampling_map", "negative"]),
    (weighted(ONES * math.nan), ValueError, ["sampling_map", "NaN"]),
    (weighted(ONES * math.inf), ValueError, ["sampling_map", "inf"]),
    (weighted(torch.zeros(1, 10, 10, 10)), ValueError, ["sampling_map", "zero"]),
    (weighted(CORNER_ONLY), ValueError, ["sampling_map", "zero at every centre"]),
    (weighted(torch.ones(1, 9, 10, 10)), ValueError, ["sampling_map", "(9, 10, 10)"]),
]

LABEL_MAPS = [
    (label(torch.full((1, 10, 10, 10), 0.5)), ValueError, ["labels", "integer", "0.5"]),
    (label(torch.ones(1, 10, 10, 10), {7: 1.0}), ValueError, ["label_probabilities", "7"]),
    (label(torch.ones(1, 10, 10, 10), {0: 0.0, 1: 0.0}), ValueError, ["label_probabilities", "0"]),
    (label(torch.ones(1, 10, 10, 10), {1: -1.0}), ValueError, ["label_probabilities", "-1.0"]),
    (label(torch.zeros(1, 10, 10, 10)), ValueError, ["labels", "zero at every centre"]),
    (label(torch.full((1, 10, 10, 10), math.nan)), ValueError, ["labels", "integer", "nan"]),
]

PATCH = torch.zeros(1, 1, 4, 4, 4)
AGGREGATOR = [
    (aggregate(PATCH, [location((8, 0, 0))]), ValueError, ["outside the volume", "(8, 0, 0)"]),
    (aggregate(PATCH, [location((-4, 0, 0))]), ValueError, ["outside the volume", "(-4, 0, 0)"]),
    (aggregate(PATCH[0], [location((0, 0, 0))]), ValueError, ["batch", "(1, 4, 4, 4)"]),
    (
        aggregate(PATCH, [location((0, 0, 0))] * 2),
        ValueError,
        ["locations has 2 entries", "1 patches"],
    ),
    (aggregate(PATCH.numpy(), [location((0, 0, 0))]), TypeError, ["batch", "ndarray"]),
    (aggregate(PATCH, "0 0 0"), TypeError, ["locations", "str"]),
]


def changing_keys():
    aggregator = pw.PatchAggregator((8, 8, 8))
    aggregator.add_batch({"a": PATCH}, [location((0, 0, 0))])
    aggregator.add_batch({"b": PATCH}, [location((4, 0, 0))])


def output_before_batches():
    pw.PatchAggregator((8, 8, 8)).get_output()


AGGREGATOR += [
    (changing_keys, ValueError, ["keys", "'b'", "'a'"]),
    (output_before_batches, RuntimeError, ["before any add_batch"]),
]


def raises(x):
    raise ZeroDivisionError("inside the model")


MODELS = [
    (infer(model=lambda x: x[0]), ValueError, ["(B=4, C, I, J, K)", "(1, 4, 4, 4)"]),
    (infer(model=lambda x: x[:1]), ValueError, ["B="]),
    (infer(model=lambda x: x[..., :3, :, :]), ValueError, ["integer scale", "3"]),
    (infer(model=lambda x: [x]), TypeError, ["tensor or a dict", "list"]),
    (infer(model=lambda x: x.numpy()), TypeError, ["ndarray"]),
    (infer(model=raises), ZeroDivisionError, ["inside the model"]),
    (lambda: pw.infer("model.pt", torch.rand(1, 8, 8, 8), patch_size=4), TypeError, ["model"]),
]

CASES = SIZES + VOLUMES + PROBABILITY_MAPS + LABEL_MAPS + AGGREGATOR + MODELS


@pytest.mark.parametrize(("call", "error", "fragments"), CASES)
def test_bad_input_is_named_in_a_clear_error(call, error, fragments):
    with pytest.raises(error) as raised:
        call()
    message = str(raised.value)
    missing = [fragment for fragment in fragments if fragment not in message]
    assert not missing, f"message {message!r} lacks {missing}"


@pytest.mark.parametrize(
    "volume",
    [
        torch.randint(0, 1000, (1, 10, 10, 10), dtype=torch.int16),
        torch.randint(0, 255, (1, 10, 10, 10), dtype=torch.uint8),
        torch.rand(1, 10, 10, 10).to(torch.float16),
        torch.rand(1, 10, 10, 10).to(torch.bfloat16),
        torch.rand(1, 10, 10, 20)[..., ::2],  # non-contiguous
        torch.rand(1, 10, 10, 10).permute(0, 3, 2, 1),  # axes permuted: strides reversed
        torch.from_numpy(np.asfortranarray(np.random.rand(1, 10, 10, 10))),
    ],
    ids=["int16", "uint8", "float16", "bfloat16", "strided", "permuted", "fortran"],
)
def test_unusual_but_valid_volumes_infer_like_float32(volume):
    expected = volume.double()
    result = pw.infer(lambda x: x, volume, patch_size=4, patch_overlap=2, overlap_mode="hann")
    assert result.dtype == torch.float32
    assert torch.allclose(result.double(), expected, atol=1e-2 * float(expected.abs().max()))


def test_channels_last_batch_from_the_model_is_accepted():
    def channels_last(x):
        return x.contiguous(memory_format=torch.channels_last_3d)

    volume = torch.rand(1, 8, 8, 8)
    result = pw.infer(channels_last, volume, patch_size=4, overlap_mode="crop")
    assert torch.equal(result, volume)


def test_nan_and_inf_intensities_are_allowed_in_images():
    volume = torch.rand(1, 8, 8, 8)
    volume[0, 1, 1, 1], volume[0, 6, 6, 6] = math.nan, math.inf
    with pytest.warns(RuntimeWarning, match="NaN or infinite"):  # identity passes them on
        result = pw.infer(lambda x: x, volume, patch_size=4, overlap_mode="crop")
    assert torch.equal(result.isnan(), volume.isnan()) and result[0, 6, 6, 6] == math.inf
    locations = pw.GridSampler(pw.Subject(image=pw.ScalarImage(volume)), 4).locations
    assert len(locations) == 8
