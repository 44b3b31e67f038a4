"""Random augmentation for training: alignment of images and labels, ranges, reproducibility."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from napari_patchwork import LabelMap, ScalarImage, Subject
from napari_patchwork.core.training.augmentation import (
    AugmentationConfig,
    RandomAugmentation,
    apply_gamma,
    bias_field,
    simulate_scanner,
)

OFF = {"bias_field": 0.0, "noise": (0.0, 0.0), "probability": 0.0}


def ramp_subject() -> Subject:
    labels = torch.arange(6 * 5 * 4).reshape(1, 6, 5, 4)
    return Subject(image=ScalarImage(labels.float()), annotations=LabelMap(labels))


def test_flips_move_images_and_labels_together() -> None:
    augment = RandomAugmentation(AugmentationConfig(flip_probability=1.0, **OFF), seed=0)
    out = augment(ramp_subject())
    assert torch.equal(out.image.data, out.annotations.data.float())
    assert torch.equal(out.annotations.data, ramp_subject().annotations.data.flip((1, 2, 3)))
    assert out.annotations.data.dtype == torch.int64


def test_no_augmentation_is_the_identity() -> None:
    out = RandomAugmentation(AugmentationConfig(flip_probability=0.0, **OFF), seed=0)(
        ramp_subject()
    )
    assert torch.equal(out.image.data, ramp_subject().image.data)


def test_no_contrast_turns_gamma_scale_and_shift_off() -> None:
    from napari_patchwork.core.training.augmentation import NO_CONTRAST

    quiet = {"bias_field": 0.0, "noise": (0.0, 0.0), "probability": 1.0, "flip_probability": 0.0}
    plain = RandomAugmentation(dataclasses.replace(NO_CONTRAST, **quiet), seed=0)(ramp_subject())
    assert torch.equal(plain.image.data, ramp_subject().image.data)
    assert (
        dataclasses.replace(AugmentationConfig(), gamma=(0.0, 0.0), scale=(0.0, 0.0), shift=0.0)
        == NO_CONTRAST
    )  # the defaults less the contrast changes
    changed = RandomAugmentation(AugmentationConfig(**quiet), seed=0)(ramp_subject())
    assert not torch.allclose(changed.image.data, ramp_subject().image.data)


def test_intensity_changes_leave_labels_alone_and_are_reproducible() -> None:
    subject = ramp_subject()
    config = AugmentationConfig(probability=1.0, flip_probability=0.0)
    first = RandomAugmentation(config, seed=4)(subject)
    second = RandomAugmentation(config, seed=4)(subject)
    other = RandomAugmentation(config, seed=5)(subject)
    assert torch.equal(first.image.data, second.image.data)
    assert not torch.equal(first.image.data, other.image.data)
    assert not torch.equal(first.image.data, subject.image.data)
    assert torch.equal(first.annotations.data, subject.annotations.data)


def test_bias_field_is_smooth_positive_and_one_without_coefficients() -> None:
    assert torch.equal(bias_field((5, 6, 7), np.zeros((4, 4, 4))), torch.ones(5, 6, 7))
    coefficients = np.random.default_rng(0).uniform(-0.3, 0.3, (4, 4, 4))
    field = bias_field((20, 20, 20), coefficients)
    assert field.shape == (20, 20, 20) and bool((field > 0).all())
    assert float(field.diff(dim=0).abs().max()) < 0.2 * float(field.mean())


def test_gamma_keeps_the_range_and_order() -> None:
    ramp = torch.linspace(0, 1, 101).reshape(1, 101, 1, 1)
    for gamma in (0.5, 2.0):
        out = apply_gamma(ramp, gamma)
        assert bool((out.flatten().diff() >= 0).all())
        assert float(out.min()) == pytest.approx(0, abs=0.01)
        assert float(out.max()) == pytest.approx(1, abs=0.01)


def test_simulated_scanner_changes_intensities_not_shape() -> None:
    image = torch.rand(1, 10, 10, 10, generator=torch.Generator().manual_seed(0))
    shifted = simulate_scanner(image, seed=2)
    assert shifted.shape == image.shape
    assert float(shifted.mean()) > 1.2 * float(image.mean())  # scale 1.6, gamma 1.4
    assert torch.equal(shifted, simulate_scanner(image, seed=2))


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"flip_probability": 1.5}, "flip_probability must be a probability"),
        ({"probability": -0.1}, "probability must be a probability"),
        ({"bias_field": -1.0}, "bias_field must be a number >= 0"),
        ({"gamma": (0.5, 0.1)}, "gamma must satisfy"),
        ({"noise": (-0.1, 0.1)}, "noise must satisfy"),
    ],
)
def test_bad_ranges_name_the_setting(settings, match) -> None:
    with pytest.raises(ValueError, match=match):
        AugmentationConfig(**settings)


def test_bad_types_name_the_setting() -> None:
    with pytest.raises(TypeError, match="scale must be a pair of numbers"):
        AugmentationConfig(scale=0.3)
    with pytest.raises(TypeError, match="config must be an AugmentationConfig"):
        RandomAugmentation({"flip_probability": 0.5})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="image_name='t1' is not an image"):
        RandomAugmentation(image_name="t1")(ramp_subject())
