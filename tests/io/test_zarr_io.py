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


def test_zarr_output_is_written_under_a_partial_name_and_renamed(tmp_path):
    from napari_patchwork.io.zarr_io import ZarrOutput

    target = tmp_path / "out.zarr"
    store = ZarrOutput(target, attributes={"model": "demo"})
    array = store.create(3, (40, 70, 20), None, chunk_rows=16)
    assert not target.exists() and store.partial.exists()
    assert store.partial.name.startswith(".out.zarr.partial-")
    assert array.chunks == (3, 16, 64, 20) and array.dtype == np.float32
    array[:, :16] = 1.0
    result = store.commit([None])[None]
    assert target.exists() and not store.partial.exists()
    assert dict(result.attrs) == {"model": "demo"} and float(result[0, 0, 0, 0]) == 1.0
    with pytest.raises(ValueError, match="output exists: .*out.zarr"):
        ZarrOutput(target)


def test_zarr_output_groups_labels_chunks_and_discard(tmp_path):
    from napari_patchwork.io.zarr_io import ZarrOutput

    store = ZarrOutput(tmp_path / "heads.zarr", labels=True, chunks=(8, 8, 8))
    full = store.create(4, (16, 16, 16), "full", chunk_rows=64)
    assert full.shape == (1, 16, 16, 16) and full.dtype == np.uint8 and full.chunks == (1, 8, 8, 8)
    with pytest.raises(ValueError, match="at most 256 classes; the model has 300"):
        store.create(300, (16, 16, 16), "many", chunk_rows=8)
    with pytest.raises(ValueError, match="the model's output 'a/../b' cannot name a zarr array"):
        store.create(1, (16, 16, 16), "a/../b", chunk_rows=8)
    store.discard()
    assert list(tmp_path.iterdir()) == []

    ZarrOutput(tmp_path / "run.zarr").create(2, (8, 8, 8), None, 8)
    partial = tmp_path / next(p.name for p in tmp_path.iterdir())
    block = ZarrOutput(partial, existing=True)  # a dask task writes into the run's store
    block.create(2, (8, 8, 8), None, 8)[:, 0:4] = 2.0
    assert float(block.commit([None])[None][1, 3, 0, 0]) == 2.0
    block.discard()
    assert partial.exists()  # only the run that created it removes it
