"""The napari reader opens zarr and OME-Zarr lazily (multiscale layers, placement kept)."""

import numpy as np
import pytest

from napari_patchwork.napari_contributions import get_reader

zarr = pytest.importorskip("zarr")


def ome_zarr(path, channels=False):
    group = zarr.open_group(path, mode="w")
    for level, size in enumerate((32, 16, 8)):
        shape = (2, size, size, size) if channels else (size, size, size)
        array = group.create_array(str(level), shape=shape, dtype="float32")
        array[:] = level
    scale = [1.0] * (1 if channels else 0) + [0.5, 0.5, 2.0]
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "datasets": [
                {
                    "path": str(level),
                    "coordinateTransformations": [
                        {"type": "scale", "scale": [s * 2**level for s in scale]},
                        {
                            "type": "translation",
                            "translation": [0.0] * (len(scale) - 3) + [5, 6, 7],
                        },
                    ],
                }
                for level in range(3)
            ],
        }
    ]
    return path


def test_ome_zarr_opens_as_a_lazy_multiscale_image(tmp_path):
    path = ome_zarr(tmp_path / "cells.ome.zarr")
    [(data, meta, kind)] = get_reader(str(path))(str(path))
    assert kind == "image" and meta["multiscale"] and meta["name"] == "cells"
    assert [level.shape for level in data] == [(32,) * 3, (16,) * 3, (8,) * 3]
    assert all(isinstance(level, zarr.Array) for level in data)  # nothing read
    assert meta["scale"] == (0.5, 0.5, 2.0) and meta["translate"] == (5, 6, 7)


def test_channels_and_plain_arrays(tmp_path):
    path = ome_zarr(tmp_path / "two.ome.zarr", channels=True)
    [(data, meta, _)] = get_reader(str(path))(str(path))
    assert meta["channel_axis"] == 0 and data[0].shape == (2, 32, 32, 32)
    plain = zarr.create_array(tmp_path / "plain.zarr", shape=(4, 5, 6), dtype="uint8")
    [(data, meta, kind)] = get_reader(str(tmp_path / "plain.zarr"))(str(tmp_path / "plain.zarr"))
    assert data.shape == (4, 5, 6) and "multiscale" not in meta and kind == "image"
    assert np.asarray(data[0]).shape == (5, 6) and plain.shape == (4, 5, 6)


def test_in_a_viewer(make_napari_viewer, tmp_path):
    path = ome_zarr(tmp_path / "cells.ome.zarr")
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(path), plugin="napari-patchwork")
    assert layer.multiscale and layer.level_shapes[0].tolist() == [32, 32, 32]
    assert tuple(layer.scale) == (0.5, 0.5, 2.0)


def test_bad_zarr_is_a_clear_error(tmp_path):
    zarr.create_array(tmp_path / "flat.zarr", shape=(4, 5), dtype="uint8")
    with pytest.raises(ValueError, match="flat.zarr"):
        get_reader(str(tmp_path / "flat.zarr"))(str(tmp_path / "flat.zarr"))
    zarr.open_group(tmp_path / "group.zarr", mode="w")
    with pytest.raises(ValueError, match="not an OME-Zarr image"):
        get_reader(str(tmp_path / "group.zarr"))(str(tmp_path / "group.zarr"))
