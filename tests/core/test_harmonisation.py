"""Intensity harmonisation on a real scan (nibabel's EPI) and its paths through the engine."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_patchwork.core.data.harmonisation import (
    Harmonisation,
    HarmonisedArray,
    IntensityField,
)
from napari_patchwork.core.data.lazy import LazyVolume
from napari_patchwork.core.inference.config import InferenceConfig
from napari_patchwork.core.inference.engine import TiledInference
from napari_patchwork.core.training.augmentation import simulate_scanner

zarr = pytest.importorskip("zarr")


@pytest.fixture(scope="module")
def epi() -> torch.Tensor:
    """The first frame of the EPI brain volume nibabel ships, ``(1, 128, 96, 24)``."""
    path = Path(nib.__file__).parent / "tests" / "data" / "example4d.nii.gz"
    return torch.from_numpy(np.asarray(nib.load(str(path)).dataobj[..., 0], np.float32))[None]


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.numpy().ravel(), b.numpy().ravel())[0, 1])


def test_another_scanner_is_mapped_back_onto_the_scan(epi) -> None:
    other = simulate_scanner(epi, seed=1)  # bias field, gamma 1.4, scale 1.6, noise
    harmonisation = Harmonisation(reference=IntensityField.fit(epi))
    harmonised = harmonisation.apply(other)
    assert correlation(other, epi) < 0.95
    assert correlation(harmonised, epi) > 0.99
    brain = epi > 100
    relative = ((harmonised - epi).abs()[brain] / epi[brain]).median()
    assert float(relative) < 0.05  # raw: the field and the scale move them by 30 % or more
    assert float(((other - epi).abs()[brain] / epi[brain]).median()) > 0.3


def test_the_training_scan_maps_onto_itself(epi) -> None:
    harmonisation = Harmonisation(reference=IntensityField.fit(epi))
    assert torch.allclose(harmonisation.apply(epi), epi, rtol=1e-5, atol=1e-3)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    offset=st.floats(-0.5, 0.5),
    shape=st.tuples(st.integers(4, 12), st.integers(4, 12), st.integers(4, 12)),
)
def test_any_volume_maps_onto_itself(seed, offset, shape) -> None:
    """Identity on the reference, negative values and background included."""
    volume = torch.from_numpy(
        np.random.default_rng(seed).random((1, *shape)).astype(np.float32) + offset
    )
    harmonised = Harmonisation(reference=IntensityField.fit(volume)).apply(volume)
    assert torch.allclose(harmonised, volume, rtol=1e-4, atol=1e-5)


def test_a_region_and_lazy_reads_equal_the_whole(epi) -> None:
    other = simulate_scanner(epi, seed=2)
    harmonisation = Harmonisation(reference=IntensityField.fit(epi)).bound(other)
    whole = harmonisation.apply(other)
    box = (slice(10, 70), slice(5, 50), slice(3, 20))
    assert torch.allclose(harmonisation.apply(other, box), whole[(slice(None), *box)])
    lazy = HarmonisedArray(other.numpy(), harmonisation)
    assert np.allclose(lazy[(slice(None), *box)], whole[(slice(None), *box)].numpy())
    plain = HarmonisedArray(other[0].numpy(), harmonisation)  # (I, J, K) arrays
    assert np.allclose(plain[box], whole[(0, *box)].numpy())
    with pytest.raises(IndexError, match="basic slices"):
        lazy[0, ::2]


def test_a_zarr_input_is_harmonised_as_the_tensor(epi, tmp_path) -> None:
    """The engine fits the input's field once and applies it as the rows are read."""
    other = simulate_scanner(epi, seed=3)
    store = zarr.create_array(
        tmp_path / "other.zarr", shape=other.shape, chunks=(1, 32, 32, 24), dtype="float32"
    )
    store[:] = other.numpy()
    harmonisation = Harmonisation(reference=IntensityField.fit(epi))
    config = InferenceConfig(patch_size=16, patch_overlap=4, harmonisation=harmonisation)
    outputs = []
    for volume in (other, LazyVolume(zarr.open_array(tmp_path / "other.zarr"))):
        engine = TiledInference(lambda x: x, config)
        list(engine.run(volume))
        outputs.append(engine.result())
    expected = harmonisation.apply(other)
    assert torch.allclose(outputs[0], expected, atol=1e-4)
    assert torch.allclose(outputs[1], expected, atol=1e-4)


def test_settings_round_trip_through_json(epi) -> None:
    bound = Harmonisation(reference=IntensityField.fit(epi)).bound(epi * 2)
    config = InferenceConfig(patch_size=8, harmonisation=bound)
    again = InferenceConfig(**json.loads(json.dumps(config.to_dict())))
    assert again.harmonisation == bound
    assert Harmonisation.from_metadata(None) is None
    assert Harmonisation.from_metadata({"class_values": [1, 2]}) is None
    saved = {"intensity_reference": bound.reference.to_dict()}
    assert Harmonisation.from_metadata(saved) == Harmonisation(reference=bound.reference)


def test_bad_input_is_named(epi) -> None:
    reference = IntensityField.fit(epi)
    with pytest.raises(TypeError, match="harmonisation must be a Harmonisation"):
        InferenceConfig(patch_size=8, harmonisation="yes")
    with pytest.raises(TypeError, match="reference must be an IntensityField"):
        Harmonisation(reference={"low": 1})
    with pytest.raises(ValueError, match="intensity reference .* is not a saved field"):
        IntensityField.from_dict({"low": [1.0]})
    with pytest.raises(ValueError, match="trained on 1-channel images, the input has 2"):
        Harmonisation(reference=reference).bound(torch.cat([epi, epi]))
    with pytest.raises(ValueError, match=r"volume must be \(C, I, J, K\)"):
        IntensityField.fit(epi[0])
    with pytest.raises(ValueError, match="fit the array's field first"):
        HarmonisedArray(epi.numpy(), Harmonisation(reference=reference))
