"""The dask engine on a real LocalCluster (worker processes) equals the single-process run."""

import numpy as np
import pytest
import torch

import napari_patchwork as pw

zarr = pytest.importorskip("zarr")
pytest.importorskip("distributed")

from napari_patchwork.distributed import infer_dask, plan_blocks  # noqa: E402


def ramp_net():
    """A factory the workers import: elementwise, position-dependent, exact arithmetic."""

    class Ramp(torch.nn.Module):
        def forward(self, x):
            ramp = torch.arange(x.shape[-1], dtype=x.dtype)
            return torch.cat([x, x * 2 + ramp], 1)

    return Ramp()


@pytest.fixture
def source(tmp_path):
    data = np.random.default_rng(0).random((1, 50, 24, 20)).astype(np.float32)
    array = zarr.create_array(
        tmp_path / "in.zarr", shape=data.shape, chunks=(1, 16, 24, 20), dtype="float32"
    )
    array[:] = data
    return tmp_path / "in.zarr", data


def test_blocks_cover_the_rows():
    assert plan_blocks(50, 16) == [(0, 16), (16, 32), (32, 48), (48, 50)]


@pytest.mark.parametrize("mode", ["crop", "gaussian"])
def test_two_workers_equal_one_process_exactly(source, tmp_path, mode):
    path, data = source
    settings = {"patch_size": 12, "patch_overlap": 4, "overlap_mode": mode, "batch_size": 2}
    result = infer_dask(
        "tests.test_distributed:ramp_net",
        path,
        tmp_path / f"{mode}.zarr",
        workers=2,
        block_rows=16,
        **settings,
    )
    expected = pw.infer(ramp_net(), torch.from_numpy(data), **settings)
    assert result.shape == tuple(expected.shape)
    assert np.array_equal(result[:], expected.numpy())


def test_a_task_error_reaches_the_caller(source, tmp_path):
    path, _ = source
    with pytest.raises(ValueError, match="has no callable 'no_such_factory'"):
        infer_dask(
            "tests.test_distributed:no_such_factory",
            path,
            tmp_path / "o.zarr",
            patch_size=12,
            workers=1,
        )
    with pytest.raises(ValueError, match="workers must be a positive int, got 0"):
        infer_dask("demo", path, tmp_path / "o.zarr", patch_size=12, workers=0)


@pytest.mark.parametrize("engine", ["local", "dask"])
def test_cli_zarr_to_zarr(source, tmp_path, engine):
    from napari_patchwork.cli import main

    path, data = source
    output = tmp_path / f"{engine}.zarr"
    arguments = [
        "infer",
        str(path),
        "--model",
        "tests.test_distributed:ramp_net",
        "--output",
        str(output),
        "--patch-size",
        "12",
        "--overlap",
        "4",
        "--engine",
        engine,
        "--workers",
        "2",
        "--block-rows",
        "16",
        "--device",
        "cpu",
    ]
    assert main(arguments) == 0
    expected = pw.infer(ramp_net(), torch.from_numpy(data), patch_size=12, patch_overlap=4)
    assert np.array_equal(zarr.open_array(output)[:], expected.numpy())
    assert main(arguments) == 2  # the output exists now: --overwrite is required
    assert main([*arguments, "--overwrite", "--tta"]) == 0  # test-time flips, same engine
    flipped = pw.infer(ramp_net(), torch.from_numpy(data), patch_size=12, patch_overlap=4, tta=True)
    assert np.allclose(zarr.open_array(output)[:], flipped.numpy(), atol=1e-5)


@pytest.mark.parametrize("engine", ["local", "dask"])
def test_zarr_label_maps(source, tmp_path, engine):
    from napari_patchwork.cli import main

    path, data = source
    output = tmp_path / "labels.zarr"
    arguments = [
        "infer",
        str(path),
        "--model",
        "tests.test_distributed:ramp_net",
        "--output",
        str(output),
        "--patch-size",
        "12",
        "--overlap",
        "4",
        "--engine",
        engine,
        "--workers",
        "1",
        "--block-rows",
        "16",
        "--labels",
        "--mode",
        "crop",
    ]
    assert main(arguments) == 0
    expected = pw.infer(
        ramp_net(), torch.from_numpy(data), patch_size=12, patch_overlap=4, overlap_mode="crop"
    )
    written = zarr.open_array(output)
    assert written.dtype == np.uint8 and written.shape == (1, 50, 24, 20)
    assert np.array_equal(written[0], expected.argmax(0).numpy())


def two_heads_net():
    """A dict model with a half-resolution head (workers import it)."""

    class TwoHeads(torch.nn.Module):
        def forward(self, x):
            return {"full": ramp_net()(x), "half": torch.nn.functional.avg_pool3d(x, 2) * 3}

    return TwoHeads()


def failing_net():
    """A model that fails on the worker."""

    class Failing(torch.nn.Module):
        def forward(self, x):
            if x.abs().sum() > 0:  # the probe (zeros) passes, real patches fail
                raise RuntimeError("the model failed on a worker")
            return x

    return Failing()


def test_dict_and_downsampled_models_on_dask(source, tmp_path):
    path, data = source
    settings = {"patch_size": 12, "patch_overlap": 4, "overlap_mode": "gaussian", "batch_size": 2}
    result = infer_dask(
        "tests.test_distributed:two_heads_net",
        path,
        tmp_path / "heads.zarr",
        workers=2,
        block_rows=16,
        **settings,
    )
    expected = pw.infer(two_heads_net(), torch.from_numpy(data), **settings)
    assert set(result) == {"full", "half"} and result["half"].shape == (1, 25, 12, 10)
    for key in result:
        assert np.array_equal(result[key][:], expected[key].numpy())
    with pytest.raises(ValueError, match="block_rows"):
        infer_dask(
            "tests.test_distributed:two_heads_net",
            path,
            tmp_path / "odd.zarr",
            workers=1,
            block_rows=15,
            **settings,
        )
    assert not (tmp_path / "odd.zarr").exists()


def test_a_failing_task_leaves_no_output_and_thread_variables_are_restored(
    source, tmp_path, monkeypatch
):
    import os

    path, _ = source
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    with pytest.raises(RuntimeError, match="the model failed on a worker"):
        infer_dask(
            "tests.test_distributed:failing_net",
            path,
            tmp_path / "out.zarr",
            patch_size=12,
            workers=1,
            block_rows=16,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.zarr"]  # no partial store
    assert os.environ["OMP_NUM_THREADS"] == "3" and "MKL_NUM_THREADS" not in os.environ


def test_infer_dask_takes_the_setting_names_of_infer(source, tmp_path):
    path, data = source
    settings = {
        "patch_size": 12,
        "patch_overlap": 4,
        "overlap_mode": "hann",
        "batch_size": 3,
        "padding_mode": "reflect",
        "device": "cpu",
    }
    labels = infer_dask(
        "tests.test_distributed:ramp_net",
        path,
        tmp_path / "labels.zarr",
        config=pw.InferenceConfig(**settings),  # or the same names as keywords
        workers=1,
        block_rows=16,
        output_labels=True,
        output_activation="sigmoid",
    )
    local = pw.infer(
        ramp_net(),
        zarr.open_array(path),
        output=tmp_path / "local.zarr",
        output_labels=True,
        output_activation="sigmoid",
        **settings,
    )
    assert labels.dtype == np.uint8 and labels.chunks[1] == 16
    assert np.array_equal(labels[:], local[:])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.zarr", "labels.zarr", "local.zarr"]


def test_infer_dask_refuses_unknown_settings_before_starting(source, tmp_path):
    path, _ = source
    with pytest.raises(TypeError, match=r"unexpected arguments: \['patch_sise'\]"):
        infer_dask("demo", path, tmp_path / "o.zarr", patch_sise=12)
    for old_name in ("labels", "activation"):  # infer's names only: output_labels, ...
        with pytest.raises(TypeError, match=rf"unexpected arguments: \['{old_name}'\]"):
            infer_dask("demo", path, tmp_path / "o.zarr", patch_size=12, **{old_name: None})
    with pytest.raises(ValueError, match="patch_overlap must be even"):
        infer_dask("demo", path, tmp_path / "o.zarr", patch_size=12, patch_overlap=3)
    with pytest.raises(ValueError, match="activation must be one of"):
        infer_dask("demo", path, tmp_path / "o.zarr", patch_size=12, output_activation="relu")
    with pytest.raises(TypeError, match="patch_size"):
        infer_dask("demo", path, tmp_path / "o.zarr")
    config = pw.InferenceConfig(patch_size=12)
    with pytest.raises(TypeError, match="pass config or settings, not both"):
        infer_dask("demo", path, tmp_path / "o.zarr", config=config, tta=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.zarr"]


def test_a_local_cluster_starts_while_another_holds_port_8787(source, tmp_path):
    """distributed's default HTTP port may belong to another cluster (a notebook's): no
    "Port 8787 is already in use" warning, which the test settings turn into an error."""
    import socket

    path, data = source
    holder = socket.socket()
    try:
        holder.bind(("0.0.0.0", 8787))
        holder.listen()
    except OSError:  # held already, by someone else: the situation under test
        pass
    try:
        result = infer_dask("demo", path, tmp_path / "o.zarr", patch_size=12, workers=1)
    finally:
        holder.close()
    assert result.shape[1:] == data.shape[1:]


def test_a_harmonised_run_on_dask_equals_one_process(source, tmp_path):
    """The input's field is fitted once in the driver and shipped to every block."""
    from napari_patchwork.core.data.harmonisation import Harmonisation, IntensityField

    path, data = source
    reference = IntensityField.fit(torch.from_numpy(data) ** 1.3 * 2)
    harmonisation = Harmonisation(reference=reference)
    settings = {"patch_size": 12, "patch_overlap": 4, "batch_size": 2}
    result = infer_dask(
        "tests.test_distributed:ramp_net",
        path,
        tmp_path / "harmonised.zarr",
        workers=2,
        block_rows=16,
        harmonisation=harmonisation,
        **settings,
    )
    volume = torch.from_numpy(data)
    expected = pw.infer(ramp_net(), volume, harmonisation=harmonisation, **settings)
    raw = pw.infer(ramp_net(), volume, **settings)
    assert np.allclose(result[:], expected.numpy(), atol=1e-5)
    assert not np.allclose(result[:], raw.numpy(), atol=1e-2)
