import collections

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from torch.utils.data import DataLoader

import napari_patchwork as pw
from tests.conftest import make_subject

P_VALUE = 1e-3  # seeded, so a pass is stable; a wrong distribution gives p ~ 0


def corners(sampler, count):
    return [tuple(p.patch_location.index) for p, _ in zip(sampler, range(count))]


# ---------------------------------------------------------------- GridSampler
def test_grid_items_hold_every_image_cropped(subject):
    sampler = pw.GridSampler(subject, (6, 5, 4))
    patch = sampler[3]
    assert set(patch) == {"t1", "seg", "patch_location"}
    assert isinstance(patch.seg, pw.LabelMap) and patch.seg.data.dtype == torch.int64
    assert torch.equal(
        patch.t1.data, subject.t1.data[(slice(None), *patch.patch_location.to_slices())]
    )


def test_dataloader_batches_subjects_and_locations(subject):
    batch = next(iter(DataLoader(pw.GridSampler(subject, 4), batch_size=4)))
    assert batch.t1.data.shape == (4, 1, 4, 4, 4)
    assert batch.seg.data.shape == (4, 1, 4, 4, 4)
    assert isinstance(batch.patch_location, list)
    assert all(isinstance(loc, pw.PatchLocation) for loc in batch.patch_location)


def test_padded_grid_locations_are_in_original_coordinates(subject):
    sampler = pw.GridSampler(subject, 6, 4, padding_mode="constant", fill=-5)
    first = sampler[0]
    assert first.patch_location.index == (-2, -2, -2)
    assert (first.t1.data[:, :2] == -5).all()
    assert torch.equal(first.t1.data[:, 2:, 2:, 2:], subject.t1.data[:, :4, :4, :4])
    assert max(loc.index_fin[0] for loc in sampler.locations) == 14  # passes the shape (12)


def test_padding_lets_a_patch_exceed_the_volume_by_the_overlap():
    subject = make_subject((6, 6, 6))
    assert len(pw.GridSampler(subject, 8, 2, padding_mode="edge")) == 1
    with pytest.raises(ValueError, match="larger than the volume"):
        pw.GridSampler(subject, 8, 2)


def test_grid_call_plans_a_new_subject():
    sampler = pw.GridSampler(make_subject((8, 8, 8)), 4)
    assert len(list(sampler(make_subject((12, 8, 8))))) == 12
    with pytest.raises(ValueError, match="num_patches"):
        sampler(None, 3)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"patch_size": 0}, ValueError, "patch_size must be positive"),
        ({"patch_size": -4}, ValueError, "patch_size"),
        ({"patch_size": 4.0}, TypeError, "patch_size"),
        ({"patch_size": True}, TypeError, "patch_size"),
        ({"patch_size": (4, 4)}, ValueError, "patch_size"),
        ({"patch_size": (4, 4, 4, 4)}, ValueError, "patch_size"),
        ({"patch_size": 13}, ValueError, "larger than the volume"),
        ({"patch_size": 4, "patch_overlap": 3}, ValueError, "even"),
        ({"patch_size": 4, "patch_overlap": 4}, ValueError, "smaller than patch_size"),
        ({"patch_size": 4, "patch_overlap": -2}, ValueError, "patch_overlap"),
        ({"patch_size": 4, "padding_mode": "mirror"}, ValueError, "padding_mode"),
        ({"patch_size": 4, "padding_mode": "constant", "fill": "0"}, TypeError, "fill"),
    ],
)
def test_grid_rejects_bad_arguments(subject, kwargs, error, match):
    with pytest.raises(error, match=match):
        pw.GridSampler(subject, **kwargs)


def test_samplers_need_a_subject():
    with pytest.raises(TypeError, match="subject must be a Subject"):
        pw.GridSampler({"t1": 1}, 4)  # type: ignore[arg-type]


# ---------------------------------------------------------------- UniformSampler
def test_uniform_every_corner_equally_likely():
    subject = make_subject((6, 5, 4))
    sampler = pw.UniformSampler(subject, 3, seed=0)
    counts = collections.Counter(corners(sampler, 12000))
    assert len(counts) == 4 * 3 * 2  # every admissible corner, nothing else
    assert stats.chisquare(list(counts.values())).pvalue > P_VALUE


def test_uniform_is_finite_with_num_patches_and_infinite_without(subject):
    assert len(list(pw.UniformSampler(subject, 4, num_patches=7))) == 7
    assert len(corners(pw.UniformSampler(subject, 4), 50)) == 50


def test_reproducible_under_manual_seed_and_seed_argument(subject):
    torch.manual_seed(5)
    first = corners(pw.UniformSampler(subject, 4), 20)
    torch.manual_seed(5)
    assert corners(pw.UniformSampler(subject, 4), 20) == first
    assert corners(pw.UniformSampler(subject, 4, seed=3), 20) == corners(
        pw.UniformSampler(subject, 4, seed=3), 20
    )
    generator = torch.Generator().manual_seed(3)
    assert corners(pw.UniformSampler(subject, 4, generator=generator), 20) == corners(
        pw.UniformSampler(subject, 4, seed=3), 20
    )


@pytest.mark.parametrize("seed", [None, 7])
def test_dataloader_workers_draw_different_streams_and_share_num_patches(subject, seed):
    sampler = pw.UniformSampler(subject, 3, num_patches=40, seed=seed)
    loader = DataLoader(sampler, batch_size=None, num_workers=2)
    locations = [patch.patch_location.index for patch in loader]
    assert len(locations) == 40
    worker_0, worker_1 = locations[0::2], locations[1::2]  # DataLoader interleaves workers
    assert worker_0 != worker_1


def test_queue_style_call_uses_the_given_subject():
    sampler = pw.UniformSampler(make_subject((8, 8, 8)), 4)
    patches = list(sampler(make_subject((20, 20, 20)), 30))
    assert max(max(p.patch_location.index) for p in patches) > 4


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_patches": 0}, ValueError, "num_patches"),
        ({"num_patches": 2.5}, TypeError, "num_patches"),
        ({"seed": -1}, TypeError, "seed"),
        ({"generator": 3}, TypeError, "generator"),
        ({"patch_size": 20}, ValueError, "larger than the volume"),
    ],
)
def test_random_samplers_reject_bad_arguments(subject, kwargs, error, match):
    arguments = {"patch_size": 4, **kwargs}
    with pytest.raises(error, match=match):
        pw.UniformSampler(subject, **arguments)


# ---------------------------------------------------------------- WeightedSampler
def weighted_subject(shape=(8, 8, 8), seed=0):
    subject = make_subject(shape, seed=seed)
    weights = torch.rand(1, *shape, generator=torch.Generator().manual_seed(seed)) ** 2
    subject["prob"] = pw.ScalarImage(weights)
    return subject


def test_weighted_centres_follow_the_map_over_every_admissible_corner():
    subject = weighted_subject()
    sampler = pw.WeightedSampler(subject, 4, "prob", seed=1)
    expected = sampler.get_probability_map()
    assert (expected > 0).sum() == 5**3  # corners 0..4 on each axis: even patch, none dropped
    counts = collections.Counter(p.patch_location.center for p, _ in zip(sampler, range(40000)))
    centres = [tuple(c) for c in torch.nonzero(expected).tolist()]
    assert set(counts) <= set(centres)
    observed = np.array([counts.get(c, 0) for c in centres])
    probabilities = np.array([float(expected[c]) for c in centres])
    assert stats.chisquare(observed, probabilities * observed.sum()).pvalue > P_VALUE


def test_weighted_never_draws_zero_probability_centres():
    subject = make_subject((10, 10, 10))
    weights = torch.zeros(1, 10, 10, 10)
    weights[0, 2, 7, 5] = 1
    weights[0, 0, 0, 0] = 100  # no patch of size 4 can be centred here
    subject["prob"] = pw.ScalarImage(weights)
    centres = {
        p.patch_location.center for p in pw.WeightedSampler(subject, 4, "prob", num_patches=50)
    }
    assert centres == {(2, 7, 5)}


def test_weighted_prepares_once_per_subject(monkeypatch):
    subject = weighted_subject()
    sampler = pw.WeightedSampler(subject, 4, "prob", seed=0)
    calls = []
    original = np.cumsum  # the centre table is one cumulative sum (numpy, one thread)
    monkeypatch.setattr(np, "cumsum", lambda *a, **k: calls.append(1) or original(*a, **k))
    assert len(list(sampler(subject, 200))) == 200
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("values", "match"),
    [
        (-1.0, "negative"),
        (float("nan"), "NaN"),
        (float("inf"), "infinite"),
        (0.0, "zero at every centre"),
    ],
)
def test_weighted_rejects_bad_maps(values, match):
    subject = make_subject((8, 8, 8))
    weights = torch.ones(1, 8, 8, 8)
    weights[0, 4, 4, 4] = values
    if values == 0.0:
        weights = torch.zeros(1, 8, 8, 8)
        weights[0, 0, 0, 0] = 1  # only where no patch fits
    subject["prob"] = pw.ScalarImage(weights)
    with pytest.raises(ValueError, match=match):
        pw.WeightedSampler(subject, 4, "prob")


def test_weighted_rejects_missing_map_name(subject):
    with pytest.raises(ValueError, match="probability_map='nope'"):
        pw.WeightedSampler(subject, 4, "nope")


# ---------------------------------------------------------------- LabelSampler
def label_subject():
    labels = torch.zeros(1, 20, 20, 20, dtype=torch.int64)
    labels[0, 8:10, 8:10, 8:10] = 1  # 8 voxels of foreground in 8000
    labels[0, 3:17, 3:17, 15] = 2
    return pw.Subject(t1=pw.ScalarImage(torch.rand(1, 20, 20, 20)), seg=pw.LabelMap(labels))


def centre_labels(subject, sampler, count):
    labels = subject.seg.data[0]
    return [int(labels[p.patch_location.center]) for p, _ in zip(sampler, range(count))]


def test_label_default_is_uniform_over_foreground():
    subject = label_subject()
    drawn = centre_labels(subject, pw.LabelSampler(subject, 6, "seg", seed=0), 2000)
    assert 0 not in drawn
    fraction_1 = drawn.count(1) / len(drawn)
    expected = 8 / (8 + int((subject.seg.data[0][3:18, 3:18, 3:18] == 2).sum()))
    assert stats.binomtest(drawn.count(1), len(drawn), expected).pvalue > P_VALUE, fraction_1


def test_label_probabilities_are_per_class_not_per_voxel():
    subject = label_subject()
    sampler = pw.LabelSampler(subject, 6, "seg", {0: 0.5, 1: 0.3, 2: 0.2}, seed=0)
    drawn = centre_labels(subject, sampler, 5000)
    observed = [drawn.count(k) for k in (0, 1, 2)]
    assert stats.chisquare(observed, [2500, 1500, 1000]).pvalue > P_VALUE


def test_label_sampler_reads_float_and_one_hot_label_maps():
    subject = label_subject()
    as_float = pw.Subject(t1=subject.t1, seg=pw.LabelMap(subject.seg.data.float()))
    assert set(centre_labels(as_float, pw.LabelSampler(as_float, 6, "seg", seed=0), 200)) <= {1, 2}
    one_hot = torch.nn.functional.one_hot(subject.seg.data[0]).permute(3, 0, 1, 2)
    hot = pw.Subject(t1=subject.t1, seg=pw.LabelMap(one_hot))
    drawn = [
        int(subject.seg.data[0][p.patch_location.center])
        for p in pw.LabelSampler(hot, 6, "seg", {1: 1}, 50)
    ]
    assert set(drawn) == {1}


@pytest.mark.parametrize(
    ("probabilities", "error", "match"),
    [
        ({0: 0.0, 1: 0.0}, ValueError, "sum to 0"),
        ({1: -0.5}, ValueError, "label_probabilities\\[1\\]"),
        ({5: 1.0}, ValueError, "label 5, absent"),
        ({1.5: 1.0}, TypeError, "keys"),
        ({1: "a"}, TypeError, "number"),
        ([0.5, 0.5], TypeError, "dict"),
    ],
)
def test_label_rejects_bad_probabilities(probabilities, error, match):
    with pytest.raises(error, match=match):
        pw.LabelSampler(label_subject(), 6, "seg", probabilities)


def test_label_rejects_non_integer_labels():
    subject = label_subject()
    subject["seg"] = pw.LabelMap(subject.seg.data.float() + 0.5)
    with pytest.raises(ValueError, match="non-integer"):
        pw.LabelSampler(subject, 6, "seg")


def test_label_without_foreground_where_patches_fit():
    labels = torch.zeros(1, 10, 10, 10, dtype=torch.int64)
    labels[0, 0, 0, 0] = 1
    subject = pw.Subject(seg=pw.LabelMap(labels))
    with pytest.raises(ValueError, match="label_name 'seg'"):
        pw.LabelSampler(subject, 4, "seg")


@given(
    shape=st.tuples(*[st.integers(3, 24)] * 3),
    fraction=st.sampled_from([0.002, 0.05, 0.5, 1.0]),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
@settings(max_examples=60, deadline=None)
def test_foreground_label_sampler_draws_what_the_weight_map_draws(shape, fraction, seed, data):
    """The LabelSampler's default (uniform over label > 0) skips the 0/1 weight map and its
    cumulative sum; its draws must still be exactly those of the map (WeightedSampler)."""
    patch = tuple(data.draw(st.integers(1, s)) for s in shape)
    labels = (np.random.default_rng(seed).random(shape) < fraction).astype(np.uint8)
    subject = pw.Subject(
        t1=pw.ScalarImage(torch.rand(1, *shape)),
        seg=pw.LabelMap(torch.from_numpy(labels)[None]),
        weights=pw.ScalarImage(torch.from_numpy(labels.astype(np.float32))[None]),
    )
    try:
        by_map = pw.WeightedSampler(subject, patch, "weights", num_patches=40, seed=seed)
    except ValueError as error:  # no foreground where a patch fits: both refuse alike
        with pytest.raises(ValueError) as refused:
            pw.LabelSampler(subject, patch, label_name="seg", num_patches=40, seed=seed)
        assert str(refused.value).split(" is zero")[1] == str(error).split(" is zero")[1]
        return
    by_labels = pw.LabelSampler(subject, patch, label_name="seg", num_patches=40, seed=seed)
    assert [p.patch_location for p in by_labels] == [p.patch_location for p in by_map]
