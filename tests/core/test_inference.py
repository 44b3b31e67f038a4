import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import napari_patchwork as pw
from tests.conftest import make_subject

MODES = ["crop", "average", "hann", "gaussian"]


def ramp_model(x):
    """Position dependent, so which patch a voxel comes from matters."""
    return 2 * x + torch.arange(x.shape[-1], dtype=x.dtype)


def reference(model, volume, patch, overlap, mode, padding_mode=None):
    """The same run through GridSampler + DataLoader + PatchAggregator."""
    subject = pw.Subject(t1=pw.ScalarImage(volume))
    aggregator = pw.PatchAggregator(volume.shape[1:], mode, overlap)
    for batch in DataLoader(pw.GridSampler(subject, patch, overlap, padding_mode), batch_size=3):
        aggregator.add_batch(model(batch.t1.data), batch.patch_location)
    return aggregator.get_output()


@pytest.mark.parametrize("padding_mode", [None, "reflect", "wrap", 1.5])
@pytest.mark.parametrize("mode", MODES)
def test_equals_sampler_and_aggregator(mode, padding_mode):
    volume = torch.rand(2, 21, 17, 14, generator=torch.Generator().manual_seed(0))
    output = pw.infer(
        ramp_model,
        volume,
        patch_size=(8, 6, 6),
        patch_overlap=(4, 2, 2),
        overlap_mode=mode,
        padding_mode=padding_mode,
        batch_size=3,
    )
    expected = reference(ramp_model, volume, (8, 6, 6), (4, 2, 2), mode, padding_mode)
    assert torch.allclose(output, expected, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_identity_returns_the_input(mode):
    volume = torch.rand(1, 30, 25, 19)
    assert torch.allclose(
        pw.infer(lambda x: x, volume, patch_size=8, patch_overlap=4, overlap_mode=mode),
        volume,
        atol=1e-6,
    )


def test_batch_size_one_identity_does_not_corrupt_input_or_result():
    """MONAI weights an identity model's output in place with batch size 1."""
    volume = torch.rand(1, 12, 12, 12)
    original = volume.clone()
    output = pw.infer(lambda x: x, volume, patch_size=6, patch_overlap=2, batch_size=1)
    assert torch.equal(volume, original)
    assert torch.allclose(output, original, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float16])
def test_integer_and_half_inputs(dtype):
    """MONAI raises on uint8/uint16 input."""
    array = np.random.default_rng(0).integers(0, 200, (1, 10, 10, 10)).astype(dtype)
    output = pw.infer(lambda x: x, array, patch_size=4, patch_overlap=2)
    assert output.dtype == torch.float32
    assert torch.allclose(output, torch.from_numpy(array.astype(np.float32)), atol=1e-4)


def test_non_contiguous_input():
    volume = torch.rand(12, 10, 8, 1).permute(3, 0, 1, 2)  # channels-last storage
    assert torch.allclose(pw.infer(lambda x: x, volume, patch_size=4), volume)


def test_dict_outputs_with_a_downsampled_one_first():
    """MONAI fails when a full-size output follows a downsampled one."""
    volume = torch.rand(1, 16, 16, 8)

    def model(x):
        return {"low": torch.nn.functional.avg_pool3d(x, 2), "full": 3 * x}

    outputs = pw.infer(model, volume, patch_size=8, patch_overlap=4, overlap_mode="hann")
    assert set(outputs) == {"low", "full"}
    assert torch.allclose(outputs["full"], 3 * volume, atol=1e-5)
    assert torch.allclose(
        outputs["low"], torch.nn.functional.avg_pool3d(volume[None], 2)[0], atol=1e-5
    )


@pytest.mark.parametrize("mode", MODES)
def test_downsampled_output_equals_aggregator(mode):
    volume = torch.rand(1, 20, 16, 12)

    def model(x):
        return torch.nn.functional.avg_pool3d(ramp_model(x), 2)

    output = pw.infer(model, volume, patch_size=8, patch_overlap=4, overlap_mode=mode)
    assert output.shape == (1, 10, 8, 6)
    subject = pw.Subject(t1=pw.ScalarImage(volume))
    aggregator = pw.PatchAggregator(volume.shape[1:], mode, 4, output_shape=(10, 8, 6))
    for batch in DataLoader(pw.GridSampler(subject, 8, 4), batch_size=4):
        aggregator.add_batch(model(batch.t1.data), batch.patch_location)
    assert torch.allclose(output, aggregator.get_output(), atol=1e-5)


def test_tta_averages_the_eight_flips():
    volume = torch.rand(1, 12, 12, 12)
    output = pw.infer(
        lambda x: x + torch.arange(x.shape[-1], dtype=x.dtype),
        volume,
        patch_size=6,
        overlap_mode="crop",
        tta=True,
    )
    assert torch.allclose(output, volume + 2.5, atol=1e-5)  # the k-ramp 0..5 averages to 2.5


def test_amp_on_cpu_runs_in_bfloat16_and_accumulates_in_float32():
    torch.manual_seed(0)
    model = torch.nn.Conv3d(1, 2, 3, padding=1).eval()
    seen = []
    model.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    volume = torch.rand(1, 16, 16, 16)
    output = pw.infer(model, volume, patch_size=8, patch_overlap=4, amp=True)
    exact = pw.infer(model, volume, patch_size=8, patch_overlap=4)
    assert seen[0] == torch.bfloat16 and output.dtype == torch.float32
    assert torch.allclose(output, exact, atol=0.05)


def test_real_network_on_subject_and_scalar_image():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 3, 1)
    ).eval()
    subject = make_subject((20, 18, 16))
    from_subject = pw.infer(model, subject, image_name="t1", patch_size=10, patch_overlap=4)
    from_image = pw.infer(model, subject.t1, patch_size=10, patch_overlap=4)
    assert from_subject.shape == (3, 20, 18, 16)
    assert torch.equal(from_subject, from_image)


def test_steps_report_progress_and_touched_regions():
    volume = torch.rand(1, 12, 12, 12)
    steps = list(pw.iter_infer(lambda x: x, volume, patch_size=6, batch_size=3))
    assert [step.done for step in steps] == [3, 6, 8] and all(step.total == 8 for step in steps)
    assert len(steps[0].locations) == 3 and steps[0].locations[2].index == (0, 6, 0)
    first = steps[0]
    assert first.region == (slice(0, 6), slice(0, 12), slice(0, 12))
    assert first.output.shape == (1, 6, 12, 12)  # a copy of the touched region only
    assert torch.allclose(first.output[:, :, :, :6], volume[:, :6, :, :6])


def test_cancel_keeps_an_exact_partial_output():
    volume = torch.rand(1, 20, 20, 20)
    steps = pw.iter_infer(
        ramp_model, volume, patch_size=8, patch_overlap=4, overlap_mode="hann", batch_size=4
    )
    for step in steps:
        if step.done >= 12:
            break
    steps.close()
    partial = step.full_output()
    final = pw.infer(
        ramp_model, volume, patch_size=8, patch_overlap=4, overlap_mode="hann", batch_size=4
    )
    plan = pw.GridPlan(volume.shape[1:], (8, 8, 8), (4, 4, 4))
    done = torch.zeros(volume.shape[1:], dtype=torch.int64)
    remaining = torch.zeros_like(done)
    for rank in range(len(plan)):
        (done if rank < step.done else remaining)[plan.location(rank).to_slices()] += 1
    finished = (done > 0) & (remaining == 0)
    assert finished.any() and (remaining > 0).any()
    assert torch.allclose(
        partial[:, finished], final[:, finished], atol=1e-5
    )  # finished voxels exact
    assert (partial[:, (done == 0)] == 0).all()  # untouched voxels are zero, not NaN
    assert torch.isfinite(partial).all()


def test_partial_output_of_identity_is_the_input_wherever_covered():
    volume = torch.rand(1, 16, 16, 16)
    steps = pw.iter_infer(
        lambda x: x, volume, patch_size=8, patch_overlap=4, overlap_mode="gaussian", batch_size=2
    )
    step = next(steps)
    partial = step.full_output()
    covered = torch.zeros(volume.shape[1:], dtype=torch.bool)
    for location in step.locations:
        covered[location.to_slices()] = True
    assert torch.allclose(partial[:, covered], volume[:, covered], atol=1e-6)
    steps.close()


class OutOfMemoryOnce:
    """A model that raises CUDA's out-of-memory error on its n-th call, once."""

    def __init__(self, fail_at, times=1):
        self.calls, self.fail_at, self.times = 0, fail_at, times

    def __call__(self, x):
        self.calls += 1
        if self.calls >= self.fail_at and self.times > 0:
            self.times -= 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return ramp_model(x)


def test_out_of_memory_falls_back_once_and_finishes_with_the_same_result():
    volume = torch.rand(1, 16, 16, 16)
    expected = pw.infer(ramp_model, volume, patch_size=8, patch_overlap=4)
    with pytest.warns(RuntimeWarning, match="out of memory"):
        output = pw.infer(OutOfMemoryOnce(fail_at=3), volume, patch_size=8, patch_overlap=4)
    assert torch.allclose(output, expected, atol=1e-6)


def test_second_out_of_memory_is_raised():
    with (
        pytest.warns(RuntimeWarning, match="out of memory"),
        pytest.raises(torch.cuda.OutOfMemoryError),
    ):
        pw.infer(
            OutOfMemoryOnce(fail_at=2, times=2),
            torch.rand(1, 16, 16, 16),
            patch_size=8,
            patch_overlap=4,
        )


def test_nan_output_warns():
    with pytest.warns(RuntimeWarning, match="NaN"):
        pw.infer(lambda x: x * float("nan"), torch.rand(1, 8, 8, 8), patch_size=4)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"patch_size": 0}, ValueError, "patch_size"),
        ({"patch_size": 4.5}, TypeError, "patch_size"),
        ({"patch_size": (4, 4)}, ValueError, "patch_size"),
        ({"patch_size": 20}, ValueError, "larger than the volume"),
        ({"patch_overlap": 3}, ValueError, "even"),
        ({"patch_overlap": 4}, ValueError, "smaller than patch_size"),
        ({"overlap_mode": "max"}, ValueError, "overlap_mode"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"device": "gpu0"}, ValueError, "device"),
        ({"device": 3}, TypeError, "device"),
        ({"amp": "yes"}, TypeError, "amp"),
        ({"padding_mode": "mirror"}, ValueError, "padding_mode"),
    ],
)
def test_rejects_bad_arguments(kwargs, error, match):
    arguments = {"patch_size": 4, **kwargs}
    with pytest.raises(error, match=match):
        pw.infer(lambda x: x, torch.rand(1, 10, 10, 10), **arguments)


@pytest.mark.parametrize(
    ("image", "error", "match"),
    [
        (torch.rand(10, 10, 10), ValueError, "4D"),
        ("volume.nii", TypeError, "image must be"),
        (make_subject(), ValueError, "image_name is required"),
        (torch.zeros(1, 8, 8, 8, dtype=torch.complex64), TypeError, "real numbers"),
    ],
)
def test_rejects_bad_images(image, error, match):
    with pytest.raises(error, match=match):
        pw.infer(lambda x: x, image, patch_size=4)


@pytest.mark.parametrize(
    ("model", "error", "match"),
    [
        (lambda x: [x], TypeError, "tensor or a dict"),
        (lambda x: x[0], ValueError, r"\(B=4, C, I, J, K\)"),
        (lambda x: x[:1], ValueError, "B=4"),
        (lambda x: x[..., :3, :, :], ValueError, "integer scale"),
        (lambda x: {"a": 1}, TypeError, "must be a tensor"),
    ],
)
def test_rejects_bad_model_outputs(model, error, match):
    with pytest.raises(error, match=match):
        pw.infer(model, torch.rand(1, 8, 8, 8), patch_size=4)


def test_model_exception_propagates():
    def broken(x):
        raise ZeroDivisionError("inside the model")

    with pytest.raises(ZeroDivisionError, match="inside the model"):
        pw.infer(broken, torch.rand(1, 8, 8, 8), patch_size=4)


def test_not_callable_model():
    with pytest.raises(TypeError, match="model must be callable"):
        pw.infer("model.pt", torch.rand(1, 8, 8, 8), patch_size=4)


# ---------------------------------------------------------------- one signature


def test_infer_and_iter_infer_take_the_same_arguments():
    import inspect

    def parameters(function):
        return [
            (p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()
        ]

    assert parameters(pw.infer) == parameters(pw.iter_infer)


def test_fixed_batch_calls_the_model_with_full_batches_in_both():
    sizes = []

    def model(x):
        sizes.append(x.shape[0])
        return 2 * x

    volume = torch.rand(1, 12, 12, 8)  # 3 x 3 x 2 = 18 patches: the last batch of 4 has 2
    output = pw.infer(model, volume, patch_size=4, batch_size=4, fixed_batch=True)
    assert set(sizes) == {4} and torch.allclose(output, 2 * volume)
    sizes.clear()
    steps = list(pw.iter_infer(model, volume, patch_size=4, batch_size=4, fixed_batch=True))
    assert set(sizes) == {4} and steps[-1].done == 18


def test_a_config_or_its_fields_not_both():
    volume = torch.rand(1, 10, 10, 10)
    config = pw.InferenceConfig(patch_size=6, patch_overlap=2, overlap_mode="hann")
    by_config = pw.infer(ramp_model, volume, config=config)
    by_fields = pw.infer(ramp_model, volume, patch_size=6, patch_overlap=2, overlap_mode="hann")
    assert torch.equal(by_config, by_fields)
    with pytest.raises(TypeError, match="not both"):
        pw.infer(ramp_model, volume, config=config, batch_size=2)
    with pytest.raises(TypeError, match="not both"):
        pw.iter_infer(ramp_model, volume, config=config, batch_size=2)


@pytest.mark.parametrize("function", [pw.infer, pw.iter_infer])
def test_bad_arguments_raise_at_the_call_naming_them(function):
    volume = torch.rand(1, 8, 8, 8)
    with pytest.raises(TypeError, match=r"unexpected arguments: \['patch'\]"):
        function(lambda x: x, volume, patch=4)
    with pytest.raises(ValueError, match="patch_overlap must be even"):
        function(lambda x: x, volume, patch_size=4, patch_overlap=1)
    with pytest.raises(ValueError, match="overwrite, output_labels need output="):
        function(lambda x: x, volume, patch_size=4, overwrite=True, output_labels=True)
    with pytest.raises(TypeError, match="progress must be True or False, got 'yes'"):
        function(lambda x: x, volume, patch_size=4, progress="yes")


def test_iter_infer_returns_the_result_when_exhausted():
    volume = torch.rand(1, 10, 10, 10)
    expected = pw.infer(ramp_model, volume, patch_size=6, patch_overlap=2)

    def run():
        result = yield from pw.iter_infer(ramp_model, volume, patch_size=6, patch_overlap=2)
        yield result

    *steps, result = run()
    assert [step.done for step in steps] == list(range(4, 9, 4))
    assert torch.allclose(result, expected)


@pytest.mark.parametrize("function", [pw.infer, pw.iter_infer])
def test_progress_shows_a_bar_in_both(function, capsys):
    volume = torch.rand(1, 8, 8, 8)
    result = function(lambda x: x, volume, patch_size=4, batch_size=2, progress=True)
    if function is pw.iter_infer:
        steps = list(result)
        assert steps[-1].done == 8
    assert "8/8" in capsys.readouterr().err


def test_iter_infer_streams_to_zarr_and_returns_the_array(tmp_path):
    pytest.importorskip("zarr")
    volume = torch.rand(1, 16, 12, 12)
    path = tmp_path / "out.zarr"
    steps = pw.iter_infer(
        ramp_model, volume, patch_size=8, patch_overlap=4, output=path, output_chunks=(4, 6, 6)
    )
    done = []
    while True:
        try:
            done.append(next(steps).done)
        except StopIteration as stop:
            array = stop.value
            break
    assert done[-1] == len(pw.GridPlan((16, 12, 12), 8, 4)) and path.exists()
    expected = pw.infer(ramp_model, volume, patch_size=8, patch_overlap=4)
    assert array.shape == (1, 16, 12, 12) and tuple(array.chunks[1:]) == (4, 6, 6)
    assert np.allclose(array[:], expected.numpy(), atol=1e-5)


def test_closing_a_streamed_iter_infer_removes_the_partial_store(tmp_path):
    pytest.importorskip("zarr")
    volume = torch.rand(1, 16, 12, 12)
    steps = pw.iter_infer(
        ramp_model, volume, patch_size=8, batch_size=1, output=tmp_path / "o.zarr"
    )
    next(steps)
    steps.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # torch's own, compiling
def test_compile_gives_the_same_output_as_eager():
    torch.manual_seed(0)
    model = torch.nn.Conv3d(1, 2, 3, padding=1).eval()
    volume = torch.rand(1, 12, 12, 12)
    settings = {"patch_size": 8, "patch_overlap": 4, "batch_size": 2, "padding_mode": "edge"}
    with torch.inference_mode():
        eager = pw.infer(model, volume, **settings)
        compiled = pw.infer(model, volume, compile=True, **settings)
    assert torch.allclose(eager, compiled, atol=1e-5)
    with pytest.raises(TypeError, match="compile must be True or False"):
        pw.infer(model, volume, compile="yes", **settings)
    engine = pw.TiledInference(model, pw.InferenceConfig(patch_size=8, compile=True))
    assert type(engine.model).__name__ == "OptimizedModule"  # torch.compile's wrapper
    assert pw.TiledInference(model, pw.InferenceConfig(patch_size=8)).model is model


def test_the_model_runs_without_autograd_and_the_callers_grad_mode_is_kept():
    """infer runs under one no_grad; iter_infer steps in the caller's grad mode, the model
    each time without autograd."""
    seen = []

    class Recording(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward(self, x):
            seen.append(torch.is_grad_enabled())
            return x * self.scale

    volume = torch.rand(1, 12, 12, 12)
    output = pw.infer(Recording(), volume, patch_size=8, patch_overlap=4)
    assert not output.requires_grad and torch.is_grad_enabled()
    steps = pw.iter_infer(Recording(), volume, patch_size=8, patch_overlap=4)
    for _ in steps:
        assert torch.is_grad_enabled()
    assert seen and not any(seen)


def test_an_input_that_requires_grad_is_inferred_like_any_other():
    """Both infer and iter_infer (which failed with 'A view was created in no_grad mode')."""
    volume = torch.rand(1, 12, 12, 12, requires_grad=True)
    expected = pw.infer(lambda x: 2 * x, volume.detach(), patch_size=8, patch_overlap=4)
    assert torch.equal(pw.infer(lambda x: 2 * x, volume, patch_size=8, patch_overlap=4), expected)
    steps = pw.iter_infer(lambda x: 2 * x, volume, patch_size=8, patch_overlap=4)
    while True:
        try:
            next(steps)
        except StopIteration as finished:
            assert torch.equal(finished.value, expected)
            break


@pytest.mark.parametrize(
    ("second", "words"),
    [
        (lambda x: x[:, :, :4], "output shape changed"),  # a smaller patch
        (lambda x: torch.cat([x, x], 1), "output shape changed"),  # more channels
        (lambda x: {"other": x}, "output keys changed"),
    ],
    ids=["patch", "channels", "keys"],
)
def test_a_model_whose_outputs_change_mid_run_is_refused(second, words):
    calls = []

    def model(x):
        calls.append(1)
        return x if len(calls) == 1 else second(x)

    def dict_model(x):
        calls.append(1)
        return {"main": x} if len(calls) == 1 else second(x)

    volume = torch.rand(1, 12, 12, 12)
    chosen = dict_model if words == "output keys changed" else model
    with pytest.raises(ValueError, match=words):
        pw.infer(chosen, volume, patch_size=8, patch_overlap=4, batch_size=2)
