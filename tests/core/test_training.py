"""Training from sparse annotations: real small volumes, real networks, tiny iteration counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_patchwork.core.training import (
    Trainer,
    TrainingConfig,
    annotation_loss,
    iter_train,
    scribbles_from_labels,
    train,
)
from napari_patchwork.io.models import load_model, model_class_values, read_model_metadata
from napari_patchwork.sample import make_sample

FAST = {"patch_size": 16, "batch_size": 2, "width": 16, "patches_per_volume": 8}


@pytest.fixture(scope="module")
def sample() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    volume = make_sample((32, 32, 32), seed=1)
    strokes = scribbles_from_labels(volume.labels, slices=3, disks=2, radius=2, seed=0)
    return volume.image, strokes, volume.labels


def full_loss(trainer: Trainer, image: np.ndarray, strokes: np.ndarray) -> float:
    """The loss over every annotated voxel of the whole volume (one forward pass)."""
    values = torch.tensor(trainer.class_values)
    with torch.no_grad():
        logits = trainer.model(torch.from_numpy(image)[None, None])
    return float(annotation_loss(logits, torch.from_numpy(strokes)[None, None], values))


def test_scribbles_are_sparse_and_inside_their_class(sample) -> None:
    _, strokes, truth = sample
    assert 0 < (strokes > 0).mean() < 0.01
    assert sorted(np.unique(strokes).tolist()) == [0, 1, 2, 3]
    annotated = strokes > 0
    assert (strokes[annotated] == truth[annotated] + 1).all()


def test_training_reduces_the_loss_on_the_sample(sample) -> None:
    image, strokes, _ = sample
    config = TrainingConfig(**FAST, iterations=80, seed=0, augmentation=None)
    trainer = Trainer((image, strokes), config)
    before = full_loss(trainer, image, strokes)
    steps = list(trainer.run())
    after = full_loss(trainer, image, strokes)
    assert len(steps) == 80 and steps[-1].iteration == 80
    assert after < 0.8 * before, (before, after)
    assert all(np.isfinite(s.loss) and s.patches_per_second > 0 for s in steps)
    assert all(0 <= s.wait_fraction <= 1 for s in steps)


def test_unannotated_voxels_have_zero_gradient() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, 4, generator=generator, requires_grad=True)
    annotations = torch.zeros(2, 1, 4, 4, 4, dtype=torch.int64)
    annotations[0, 0, :2] = 5
    annotations[1, 0, 3, 3] = 9
    annotations[1, 0, 0, 0, 0] = 2
    loss = annotation_loss(logits, annotations, torch.tensor([2, 5, 9]))
    loss.backward()
    unannotated = (annotations[:, 0] == 0)[:, None].expand_as(logits)
    assert logits.grad is not None
    assert (logits.grad[unannotated] == 0).all()
    assert (logits.grad[~unannotated] != 0).any()


def test_unannotated_voxels_do_not_change_the_loss() -> None:
    logits = torch.randn(1, 2, 4, 4, 4)
    annotations = torch.zeros(1, 1, 4, 4, 4, dtype=torch.int64)
    annotations[0, 0, 0] = 1
    annotations[0, 0, 3] = 2
    changed = logits.clone()
    changed[:, :, 1:3] = torch.randn(1, 2, 2, 4, 4) * 100  # only unannotated voxels change
    values = torch.tensor([1, 2])
    assert annotation_loss(logits, annotations, values) == annotation_loss(
        changed, annotations, values
    )


def test_the_loss_is_the_mean_over_annotated_voxels() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 2, 1, 1, 10, generator=generator)
    annotations = torch.tensor([1] * 6 + [2, 0, 0, 2]).reshape(1, 1, 1, 1, 10)
    loss = float(annotation_loss(logits, annotations, torch.tensor([1, 2])))
    kept = annotations.flatten() > 0
    target = (annotations.flatten()[kept] - 1).long()
    expected = torch.nn.functional.cross_entropy(logits[0, :, 0, 0].T[kept], target)
    assert loss == pytest.approx(float(expected), rel=1e-6)
    nothing = torch.zeros_like(annotations)
    assert float(annotation_loss(logits, nothing, torch.tensor([1, 2]))) == 0.0


def test_seeded_training_is_reproducible(sample) -> None:
    image, strokes, _ = sample
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    runs = [
        Trainer((image, strokes), TrainingConfig(**FAST, iterations=4, seed=seed))
        for seed in (3, 3, 4, None)
    ]
    losses = [[step.loss for step in run.run()] for run in runs]
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is untouched
    assert losses[0] == losses[1]
    assert losses[0] != losses[2]
    for name, tensor in runs[0].model.state_dict().items():
        assert torch.equal(tensor, runs[1].model.state_dict()[name]), name


def test_save_and_load_keep_the_class_values(sample, tmp_path) -> None:
    image, strokes, _ = sample
    values = np.where(strokes > 0, strokes * 10 + 1, 0)  # classes 11, 21, 31
    trainer = train((image, values), **FAST, iterations=2)
    path = trainer.save(tmp_path / "model.pt2")
    info = read_model_metadata(path)
    assert info is not None and info["class_values"] == [11, 21, 31]
    assert info["patch_size"] == [16, 16, 16] and info["iterations"] == 2
    assert model_class_values(path) == [11, 21, 31]
    loaded = load_model(path)
    volume = torch.from_numpy(image)[None, None]
    with torch.no_grad():
        assert torch.allclose(loaded(volume), trainer.model(volume), atol=1e-5)
    assert set(np.unique(trainer.predict().labels).tolist()) <= {11, 21, 31}


def test_continue_from_a_saved_model(sample, tmp_path) -> None:
    image, strokes, _ = sample
    first = train((image, strokes), **FAST, iterations=2)
    path = first.save(tmp_path / "model.pt2")
    second = Trainer((image, strokes), TrainingConfig(**FAST, iterations=1, init=str(path)))
    volume = torch.from_numpy(image)[None, None]
    with torch.no_grad():
        assert torch.allclose(second.model(volume), first.model(volume), atol=1e-5)
    assert [step.iteration for step in second.run()] == [1]


def test_continue_with_more_strokes_resumes_from_the_weights(sample) -> None:
    image, strokes, truth = sample
    trainer = Trainer((image, strokes), TrainingConfig(**FAST, iterations=2))
    list(trainer.run())
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    more = scribbles_from_labels(truth, slices=6, disks=2, seed=5)
    trainer.set_annotations((image, np.maximum(strokes, more)))
    steps = list(trainer.run(iterations=2))
    assert [s.iteration for s in steps] == [3, 4]
    changed = trainer.model.state_dict()
    assert any(not torch.equal(weights[k], changed[k]) for k in weights)


def test_stop_ends_the_run_and_keeps_the_weights(sample) -> None:
    image, strokes, _ = sample
    trainer = Trainer((image, strokes), TrainingConfig(**FAST))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    count = 0
    for step in trainer.run():  # no budget: runs until stopped
        count += 1
        if step.iteration == 3:
            trainer.stop()
    assert count == 3 and trainer.iteration == 3
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


def test_preview_predicts_the_requested_region(sample) -> None:
    image, strokes, _ = sample
    trainer = Trainer((image, strokes), TrainingConfig(**FAST, preview_every=1e-6))
    region = (slice(10, 11), slice(0, 32), slice(0, 32))
    steps = list(trainer.run(iterations=2, preview=lambda: region))
    preview = steps[0].preview  # the next waits 4 times as long as this one took
    assert preview is not None and preview.region == region
    assert preview.labels.shape == (1, 32, 32) and preview.probabilities.shape == (3, 1, 32, 32)
    assert set(np.unique(preview.labels).tolist()) <= {1, 2, 3}
    np.testing.assert_allclose(preview.probabilities.sum(0), 1, rtol=1e-5)
    full = trainer.predict()
    np.testing.assert_array_equal(full.labels[10:11], trainer.predict(region=region).labels)
    painted = strokes > 0
    assert full.painted_agreement == pytest.approx(
        (full.labels[painted] == strokes[painted]).mean()
    )
    assert trainer.predict(image).painted_agreement is None  # another image: no strokes known
    empty = (slice(0, 1), slice(0, 1), slice(0, 1))
    assert strokes[0, 0, 0] == 0 and trainer.predict(region=empty).painted_agreement is None


def test_the_whole_volume_prediction_is_tiled_inferences(sample) -> None:
    """The prediction shown after a run is what the Tiled inference widget and `infer` give
    with the model (same patch and overlap, no extra padding: half a patch of replicated
    border on each side made it 2.5-2.9x the voxels, 6.3 s against 1.8 s in a user test);
    an image thinner than the patch is padded up to it, as training padded it."""
    from napari_patchwork.core.inference.functional import infer

    image, strokes, _ = sample
    # the U-Net: a receptive field wide enough to see what lies beyond a window's edge
    config = TrainingConfig(**{**FAST, "width": 4}, network="unet", iterations=20)
    trainer = Trainer((image, strokes), config)
    list(trainer.run())
    full = trainer.predict()
    trainer.model.eval()
    with torch.no_grad():
        logits = infer(trainer.model, torch.from_numpy(image)[None], patch_size=16, patch_overlap=4)
    expected = torch.softmax(logits, 0).numpy()
    np.testing.assert_allclose(full.probabilities, expected, atol=1e-5)
    # a slice at either end of an axis (the live preview) reads a whole patch of real voxels:
    # it agrees with the whole volume's prediction (with a window cut short at the border and
    # padded with copies: 0.003-0.028 here, up to 0.36 in a review)
    for z in (0, 1, 30, 31):
        edge = trainer.predict(region=(slice(0, 32), slice(0, 32), slice(z, z + 1)))
        difference = np.abs(edge.probabilities[..., 0] - full.probabilities[..., z]).max()
        assert difference < 1e-3, (z, difference)
    # a scan thinner than the patch: the patch fitted to it (16, 16, 10), as `infer` runs it
    thin = trainer.predict(image[:, :, 5:15])
    with torch.no_grad():
        logits = infer(
            trainer.model,
            trainer.harmonisation.apply(torch.from_numpy(image[:, :, 5:15].copy())[None])
            if trainer.harmonisation is not None
            else torch.from_numpy(image[:, :, 5:15].copy())[None],
            patch_size=(16, 16, 10),
            patch_overlap=(4, 4, 2),
        )
    np.testing.assert_allclose(thin.probabilities, torch.softmax(logits, 0).numpy(), atol=1e-5)


def test_several_pairs_and_a_class_missing_from_one(sample) -> None:
    image, strokes, _ = sample
    other = make_sample((24, 28, 20), seed=2)
    partial = scribbles_from_labels(other.labels, seed=1)
    partial[partial == 3] = 0  # no tubes painted in this one: no warning, no error
    steps = list(iter_train([(image, strokes), (other.image, partial)], **FAST, iterations=3))
    assert steps[-1].iteration == 3


def test_demo_and_factory_initialisation(sample) -> None:
    image, strokes, _ = sample
    two = np.where(strokes == 3, 0, strokes)  # two classes: the demo's head is replaced
    demo = Trainer((image, two), TrainingConfig(**FAST, init="demo", iterations=1))
    assert demo.model.net.head.out_channels == 2
    assert len(list(demo.run())) == 1
    factory = Trainer(
        (image, strokes),
        TrainingConfig(**FAST, init="napari_patchwork.models:demo_model", iterations=1),
    )
    assert len(list(factory.run())) == 1


def test_amp_on_cpu_runs(sample) -> None:
    image, strokes, _ = sample
    trainer = train((image, strokes), **FAST, iterations=1, amp=True, device="cpu")
    assert np.isfinite(trainer.losses[-1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_uses_amp(sample) -> None:
    image, strokes, _ = sample
    trainer = train((image, strokes), **FAST, iterations=3)
    assert trainer.device.type == "cuda" and trainer.amp
    assert np.isfinite(trainer.losses).all()


@pytest.mark.parametrize(
    ("settings", "error", "match"),
    [
        ({"patch_size": 15}, ValueError, "patch_size must be even"),
        ({"patch_size": 0}, ValueError, "patch_size must be a positive int"),
        ({"iterations": 0}, ValueError, "iterations must be a positive int"),
        ({"seconds": -1.0}, ValueError, "seconds must be a positive float"),
        ({"learning_rate": float("nan")}, ValueError, "learning_rate"),
        ({"seed": -2}, ValueError, "seed must be"),
        ({"device": "toaster"}, ValueError, "device must be"),
        ({"init": ""}, TypeError, "init must be"),
        ({"amp": "yes"}, TypeError, "amp must be"),
        ({"schedule": "linear"}, ValueError, "schedule must be one of"),
    ],
)
def test_bad_settings_name_the_setting(settings, error, match) -> None:
    with pytest.raises(error, match=match):
        TrainingConfig(**settings)


def test_bad_inputs_name_the_argument(sample, tmp_path) -> None:
    image, strokes, _ = sample
    with pytest.raises(ValueError, match=r"annotations must have the image's shape \(32, 32, 32\)"):
        Trainer((image, strokes[:, :, :30]), TrainingConfig(**FAST))
    with pytest.raises(ValueError, match="at least two classes"):
        Trainer((image, (strokes > 0).astype(np.int64)), TrainingConfig(**FAST))
    with pytest.raises(ValueError, match="annotations holds negative values"):
        Trainer((image, -strokes), TrainingConfig(**FAST))
    with pytest.raises(ValueError, match="annotations must hold integer label values"):
        Trainer((image, strokes + 0.5), TrainingConfig(**FAST))
    with pytest.raises(FileNotFoundError, match="init: model file does not exist"):
        Trainer((image, strokes), TrainingConfig(**FAST, init=str(tmp_path / "no.pt2")))
    with pytest.raises(ValueError, match="init='torch.nn:Identity'.*3 output channels"):
        Trainer((image, strokes), TrainingConfig(**FAST, init="torch.nn:Identity"))
    with pytest.raises(FileNotFoundError, match="image: file does not exist"):
        Trainer((tmp_path / "missing.nii.gz", strokes), TrainingConfig(**FAST))
    with pytest.raises(ValueError, match="annotations 2 are empty"):
        Trainer([(image, strokes), (image, np.zeros_like(strokes))], TrainingConfig(**FAST))
    with pytest.raises(TypeError, match="unexpected settings"):
        train((image, strokes), iterations=1, patch=16)
    with pytest.raises(ValueError, match="train needs seconds or iterations"):
        train((image, strokes), **FAST)
    trainer = Trainer((image, strokes), TrainingConfig(**FAST))
    extra = strokes.copy()
    extra[0, 0, 0] = 4
    with pytest.raises(ValueError, match=r"annotations now hold classes \[1, 2, 3, 4\]"):
        trainer.set_annotations((image, extra))


def test_the_interactive_page_runs(capsys) -> None:
    import re
    from pathlib import Path

    page = Path(__file__).resolve().parents[2] / "docs" / "interactive.md"
    namespace: dict = {}
    for block in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.DOTALL):
        exec(compile(block, "interactive.md", "exec"), namespace)
    assert namespace["trainer"].iteration == 20
    assert set(np.unique(namespace["prediction"].labels).tolist()) <= {1, 2, 3}
    assert "% of the voxels annotated" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("schedule", "low", "high"), [("cosine", 0.0, 0.1), ("constant", 1.0, 1.0)]
)
def test_learning_rate_warms_up_then_follows_the_schedule(sample, schedule, low, high) -> None:
    image, strokes, _ = sample
    config = TrainingConfig(**FAST, iterations=30, schedule=schedule, augmentation=None)
    trainer = Trainer((image, strokes), config)
    rates = []
    for _ in trainer.run():
        rates.append(trainer.optimizer.param_groups[0]["lr"] / config.learning_rate)
    assert rates[0] == pytest.approx(1 / 20)
    assert low <= rates[-1] <= high


# ---------------------------------------------------------------------- filter network
def _two_class_volume() -> tuple[np.ndarray, np.ndarray]:
    """A bright ball in a darker noisy background: truth 0 outside, 1 inside."""
    grid = np.indices((32, 32, 32)).astype(np.float32)
    truth = (((grid - 15.5) ** 2).sum(0) < 10.0**2).astype(np.int64)
    noise = np.random.default_rng(0).normal(0.0, 0.3, truth.shape)
    return (100.0 + 50.0 * truth + 50.0 * noise).astype(np.float32), truth


def test_filter_bank_matches_scipy_filters_away_from_the_patch_border() -> None:
    from scipy import ndimage

    from napari_patchwork.models import FilterBank3D

    rng = np.random.default_rng(0)
    volume = ndimage.gaussian_filter(rng.normal(size=(40, 40, 40)), 1.0).astype(np.float32)
    bank = FilterBank3D((0.7, 1.6))
    features = bank(torch.from_numpy(volume)[None, None])[0].numpy()
    inner = (slice(10, -10),) * 3
    expected = [volume]
    for sigma in (0.7, 1.6):
        expected.append(ndimage.gaussian_filter(volume, sigma, truncate=3.5))
        expected.append(ndimage.gaussian_gradient_magnitude(volume, sigma, truncate=3.5))
        expected.append(ndimage.gaussian_laplace(volume, sigma, truncate=3.5))
    assert features.shape == (7, 40, 40, 40)
    for got, want in zip(features, expected):
        scale = np.abs(want[inner]).max()
        np.testing.assert_allclose(got[inner], want[inner], atol=1e-2 * scale)


def test_filter_network_is_the_default_learns_and_round_trips_through_a_saved_file(
    tmp_path,
) -> None:
    from napari_patchwork.models import FilterNet3D

    image, truth = _two_class_volume()
    strokes = scribbles_from_labels(truth, slices=3, disks=3, seed=0)
    config = TrainingConfig(patch_size=16, batch_size=2, iterations=60, seed=0)
    assert config.network == "filters" and config.width == 32
    trainer = Trainer((image, strokes), config)
    assert isinstance(trainer.model.net, FilterNet3D)
    list(trainer.run())
    predicted = trainer.predict().labels.astype(np.int64) - 1
    assert (predicted == truth).mean() > 0.9
    path = trainer.save(tmp_path / "filters.pt2")
    loaded = load_model(str(path))
    patch = torch.from_numpy(image[:16, :16, :16])[None, None].float()
    with torch.no_grad():
        expected = trainer.model.eval()(patch)
        np.testing.assert_allclose(loaded(patch).numpy(), expected.numpy(), rtol=1e-4, atol=1e-4)
    resumed = Trainer((image, strokes), TrainingConfig(patch_size=16, init=str(path), iterations=1))
    assert isinstance(resumed.model.net, FilterNet3D)


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"network": "resnet"}, "network must be one of"), ({"width": 0}, "width must be")],
)
def test_bad_network_settings_are_refused(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainingConfig(**settings)


def test_a_patch_larger_than_the_image_says_an_even_size_that_fits() -> None:
    image = torch.rand(1, 63, 9, 5)
    strokes = torch.zeros(63, 9, 5, dtype=torch.int64)
    strokes[:2], strokes[-2:] = 1, 2
    with pytest.raises(ValueError, match=r"larger than image in every direction .*at most 62"):
        Trainer((image, strokes), TrainingConfig(patch_size=64))
