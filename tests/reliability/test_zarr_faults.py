"""Corrupt inputs and interrupted runs never leave a half-written zarr output.

Real zarr stores are written, then one chunk file is truncated or overwritten with garbage;
runs are stopped by a model error, by closing the generator, and by SIGINT in a child.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import napari_patchwork as pw
from napari_patchwork.core.inference.streaming import zarr_target
from napari_patchwork.io.zarr_io import CorruptChunkError
from tests.conftest import default_sigint

zarr = pytest.importorskip("zarr")

SHAPE, CHUNKS = (1, 48, 32, 32), (1, 16, 16, 16)


def write_store(path):
    array = zarr.create_array(path, shape=SHAPE, chunks=CHUNKS, dtype="float32")
    array[:] = np.random.default_rng(0).random(SHAPE, dtype=np.float32)
    return array


def damage(store, how):
    """Truncate or garble chunk (0, 1, 0, 1): its file is c/0/1/0/1."""
    chunk = store / "c" / "0" / "1" / "0" / "1"
    data = chunk.read_bytes()
    chunk.write_bytes(data[: len(data) // 2] if how == "truncated" else os.urandom(len(data)))


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name not in ("in.zarr", "run.py"))


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_a_corrupt_chunk_names_the_input_and_the_chunk_and_leaves_nothing(tmp_path, how):
    write_store(tmp_path / "in.zarr")
    damage(tmp_path / "in.zarr", how)
    array = zarr.open_array(tmp_path / "in.zarr", mode="r")
    with pytest.raises(CorruptChunkError) as caught:
        pw.infer(lambda x: x, array, patch_size=16, patch_overlap=4, output=tmp_path / "out.zarr")
    message = str(caught.value)
    assert str(tmp_path / "in.zarr") in message and "(0, 1, 0, 1)" in message
    assert "c/0/1/0/1" in message and len(message.splitlines()) == 1
    assert isinstance(caught.value, ValueError)
    assert leftovers(tmp_path) == []  # no out.zarr, no .out.zarr.partial-<pid>


def test_no_asyncio_task_noise_on_a_corrupt_chunk(tmp_path):
    """The failure is reported once: no "Task was destroyed but it is pending" on stderr."""
    array = zarr.create_array(
        tmp_path / "in.zarr", shape=(1, 64, 128, 128), chunks=(1, 16, 16, 16), dtype="float32"
    )
    array[:] = np.random.default_rng(1).random(array.shape, dtype=np.float32)
    damage(tmp_path / "in.zarr", "garbage")
    script = textwrap.dedent(
        f"""
        import gc, zarr
        import napari_patchwork as pw
        from napari_patchwork.io import CorruptChunkError
        array = zarr.open_array({str(tmp_path / "in.zarr")!r}, mode="r")
        try:
            pw.infer(lambda x: x, array, patch_size=32, output={str(tmp_path / "o.zarr")!r})
        except CorruptChunkError as error:
            print(error)
        gc.collect()
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "corrupt chunk (0, 1, 0, 1)" in done.stdout
    assert "Task was destroyed" not in done.stderr, done.stderr[-2000:]
    assert leftovers(tmp_path) == []


def test_the_error_survives_pickling_and_is_the_one_core_exports():
    import pickle

    import napari_patchwork.core
    import napari_patchwork.core.data.lazy

    assert napari_patchwork.core.CorruptChunkError is CorruptChunkError
    lazy = napari_patchwork.core.data.lazy  # zarr's error and opener live in io.zarr_io only
    assert not hasattr(lazy, "CorruptChunkError") and not hasattr(lazy, "open_zarr")

    error = CorruptChunkError("in.zarr", (0, 2), "c/0/2", "bad")
    again = pickle.loads(pickle.dumps(error))
    assert str(again) == str(error) and again.chunk == (0, 2)


def test_a_failing_model_leaves_nothing(tmp_path):
    array = write_store(tmp_path / "in.zarr")
    calls = []

    def model(x):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("the model broke")
        return x

    with pytest.raises(RuntimeError, match="the model broke"):
        pw.infer(model, array, patch_size=16, batch_size=1, output=tmp_path / "out.zarr")
    assert leftovers(tmp_path) == []


def test_closing_the_generator_removes_the_partial_output(tmp_path):
    array = write_store(tmp_path / "in.zarr")
    config = pw.InferenceConfig(patch_size=16, batch_size=1)
    engine = pw.TiledInference(lambda x: x, config, zarr_target(tmp_path / "out.zarr"))
    steps = engine.run(array)
    next(steps)
    next(steps)
    assert [p.startswith(".out.zarr.partial-") for p in leftovers(tmp_path)] == [True]
    steps.close()  # what the widget's cancel does
    assert leftovers(tmp_path) == []


def test_a_failed_overwrite_keeps_the_previous_output(tmp_path):
    array = write_store(tmp_path / "in.zarr")
    first = pw.infer(lambda x: x, array, patch_size=16, output=tmp_path / "out.zarr")
    before = first[:]

    def broken(x):
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        pw.infer(broken, array, patch_size=16, output=tmp_path / "out.zarr", overwrite=True)
    assert np.array_equal(zarr.open_array(tmp_path / "out.zarr")[:], before)
    assert leftovers(tmp_path) == ["out.zarr"]
    second = pw.infer(
        lambda x: 2 * x, array, patch_size=16, output=tmp_path / "out.zarr", overwrite=True
    )
    assert np.array_equal(second[:], 2 * before) and leftovers(tmp_path) == ["out.zarr"]


def test_sigint_mid_run_leaves_no_output_and_no_partial(tmp_path):
    write_store(tmp_path / "in.zarr")
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import time, zarr
            import napari_patchwork as pw

            def slow(x):
                time.sleep(0.2)
                return x

            array = zarr.open_array({str(tmp_path / "in.zarr")!r}, mode="r")
            output = {str(tmp_path / "out.zarr")!r}
            pw.infer(slow, array, patch_size=16, batch_size=1, output=output)
            print("finished")
            """
        )
    )
    child = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    deadline = time.monotonic() + 120
    while not any(p.startswith(".out.zarr.partial-") for p in leftovers(tmp_path)):
        assert child.poll() is None and time.monotonic() < deadline, "the run never started"
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    stdout, stderr = child.communicate(timeout=60)
    assert "finished" not in stdout and "KeyboardInterrupt" in stderr
    assert leftovers(tmp_path) == []


def test_dask_engine_corrupt_chunk_and_no_partial(tmp_path):
    pytest.importorskip("distributed")
    from napari_patchwork.distributed import infer_dask

    write_store(tmp_path / "in.zarr")
    damage(tmp_path / "in.zarr", "truncated")
    with pytest.raises(CorruptChunkError, match=r"chunk \(0, 1, 0, 1\)") as caught:
        infer_dask(
            "demo",
            tmp_path / "in.zarr",
            tmp_path / "out.zarr",
            patch_size=16,
            workers=1,
            block_rows=16,
        )
    assert str(tmp_path / "in.zarr") in str(caught.value)
    assert leftovers(tmp_path) == []
