"""InferenceConfig: every setting validated once, named as the API spells it."""

import dataclasses

import pytest
import torch

from napari_patchwork.core.inference.config import InferenceConfig, InferenceSettings


def test_sizes_become_triplets_and_devices_torch_devices():
    config = InferenceConfig(patch_size=(8, 8, 4), patch_overlap=2, device="cpu")
    assert config.patch_size == (8, 8, 4) and config.patch_overlap == (2, 2, 2)
    assert config.device == torch.device("cpu") and config.aggregate_device is None
    assert config.to_dict()["device"] == "cpu"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.batch_size = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("settings", "error", "words"),
    [
        ({"patch_size": 0}, ValueError, "patch_size"),
        ({"patch_size": 8, "patch_overlap": 3}, ValueError, "even"),
        ({"patch_size": 8, "patch_overlap": 8}, ValueError, "smaller than patch_size"),
        ({"patch_size": 8, "overlap_mode": "avg"}, ValueError, "overlap_mode.*'avg'"),
        ({"patch_size": 8, "batch_size": 0}, ValueError, "batch_size"),
        ({"patch_size": 8, "padding_mode": "reflct"}, ValueError, "padding_mode.*'reflct'"),
        ({"patch_size": 8, "amp": 1}, TypeError, "amp"),
        ({"patch_size": 8, "device": "gpu0"}, ValueError, "device='gpu0'"),
        ({"patch_size": 8, "device": 3.5}, TypeError, "device"),
    ],
)
def test_bad_settings_name_the_argument_and_value(settings, error, words):
    with pytest.raises(error, match=words):
        InferenceConfig(**settings)


def test_check_fits_counts_the_padding():
    InferenceConfig(patch_size=8, patch_overlap=4, padding_mode="edge").check_fits((6, 6, 6))
    with pytest.raises(ValueError):
        InferenceConfig(patch_size=8, patch_overlap=4).check_fits((6, 6, 6))


def test_settings_are_keyword_only():
    with pytest.raises(TypeError, match="positional"):
        InferenceConfig(8, 2)  # type: ignore[misc]


def test_the_keyword_settings_are_the_fields():
    names = {field.name for field in dataclasses.fields(InferenceConfig)}
    assert set(InferenceSettings.__annotations__) == names


def test_resolve_takes_a_config_or_settings_not_both():
    config = InferenceConfig(patch_size=8)
    assert InferenceConfig.resolve(config) is config
    assert InferenceConfig.resolve(patch_size=8, fixed_batch=True).fixed_batch is True
    with pytest.raises(TypeError, match="not both.*'tta'"):
        InferenceConfig.resolve(config, tta=True)
    with pytest.raises(TypeError, match=r"unexpected arguments: \['patch'\]"):
        InferenceConfig.resolve(patch=8)
    with pytest.raises(TypeError, match="config must be an InferenceConfig"):
        InferenceConfig.resolve({"patch_size": 8})  # type: ignore[arg-type]
