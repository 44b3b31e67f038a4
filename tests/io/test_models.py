"""Model files written by training: torch.export archives carrying the class values."""

from __future__ import annotations

import zipfile

import pytest
import torch

from napari_patchwork.io.models import (
    apply_class_values,
    check_class_values,
    load_model,
    model_class_values,
    read_model_metadata,
    save_model,
)
from napari_patchwork.models import TinyUNet3D

EXAMPLE = torch.zeros(1, 1, 8, 8, 8)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple:
    torch.manual_seed(0)
    net = TinyUNet3D(1, 2, width=2).eval()
    path = tmp_path_factory.mktemp("models") / "cells.pt"  # any suffix: detected by content
    save_model(net, path, class_values=[1, 2], example_input=EXAMPLE, metadata={"patch_size": 8})
    return net, path


def test_round_trip_keeps_class_values_and_outputs(saved) -> None:
    net, path = saved
    assert model_class_values(path) == [1, 2]
    info = read_model_metadata(path)
    assert (
        info is not None and info["patch_size"] == 8 and info["format"] == "napari-patchwork-model"
    )
    loaded = load_model(path)
    volume = torch.rand(3, 1, 10, 12, 8)
    with torch.no_grad():
        assert torch.allclose(loaded(volume), net(volume), atol=1e-6)


def test_the_archive_holds_no_pickled_code(saved) -> None:
    _, path = saved
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    assert any(name.endswith("extra/patchwork.json") for name in names)
    assert not any(name.endswith((".pkl", "/code/")) for name in names)


def test_saving_leaves_the_model_in_place() -> None:
    net = TinyUNet3D(1, 2, width=2).train()
    with pytest.raises(ValueError, match="class_values must be non-empty and distinct"):
        save_model(net, "unused.pt2", class_values=[1, 1], example_input=EXAMPLE)
    assert net.training


def test_class_values_map_channel_indices() -> None:
    indices = torch.tensor([[0, 1], [2, 0]])
    mapped = apply_class_values(indices, [1, 2, 300])
    assert mapped.tolist() == [[1, 2], [300, 1]] and mapped.dtype == torch.int32
    assert apply_class_values(indices, [0, 5, 9]).dtype == torch.uint8
    with pytest.raises(ValueError, match="more output channels than class_values"):
        apply_class_values(indices, [1, 2])


def test_other_sources_have_no_class_values(tmp_path) -> None:
    assert model_class_values("demo") is None
    assert model_class_values("napari_patchwork.models:demo_model") is None
    plain = tmp_path / "weights.pt"
    torch.save(TinyUNet3D(1, 2, width=2).state_dict(), plain)
    assert read_model_metadata(plain) is None


def test_bad_metadata_and_values_name_the_problem(tmp_path, saved) -> None:
    with pytest.raises(ValueError, match=r"class_values must hold ints >= 0, got -1"):
        check_class_values([1, -1], "class_values")
    with pytest.raises(TypeError, match="class_values must be a sequence"):
        check_class_values(3, "class_values")
    with pytest.raises(ValueError, match="model path is a directory"):
        save_model(TinyUNet3D(1, 2, width=2), tmp_path, class_values=[1, 2], example_input=EXAMPLE)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        save_model(lambda x: x, tmp_path / "f.pt2", class_values=[1], example_input=EXAMPLE)
    broken = tmp_path / "broken.pt2"
    _, good = saved
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(broken, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename.endswith("extra/patchwork.json"):
                data = b'{"class_values": [1, "x"]}'
            target.writestr(item, data)
    with pytest.raises(ValueError, match="broken.pt2' has invalid patchwork.json"):
        read_model_metadata(broken)
