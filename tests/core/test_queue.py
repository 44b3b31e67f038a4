import collections
import threading
import time
import traceback

import numpy as np
import pytest
import torch
from torch.utils.data import SubsetRandomSampler

import napari_patchwork as pw
from tests.conftest import make_subject


def queue_threads():
    return [t for t in threading.enumerate() if t.name.startswith("patchwork-queue")]


def subjects(count=5, shape=(10, 10, 10)):
    return [make_subject(shape, seed=i) for i in range(count)]


def test_yields_patches_per_volume_from_every_subject():
    queue = pw.Queue(
        subjects(), pw.UniformSampler(None, 4), max_length=7, patches_per_volume=3, num_workers=2
    )
    patches = list(queue)
    assert queue.num_subjects == 5 and queue.patches_per_epoch == 15 and len(queue) == 15
    assert len(patches) == 15
    assert collections.Counter(p.patch_location.subject_index for p in patches) == {
        i: 3 for i in range(5)
    }
    assert all(p.t1.data.shape == (1, 4, 4, 4) for p in patches)


class CountingSampler:
    """Wraps a sampler and counts the patches it has produced."""

    def __init__(self, sampler):
        self.sampler, self.produced, self.patch_size = sampler, 0, sampler.patch_size

    def __call__(self, subject):
        for patch in self.sampler(subject):
            self.produced += 1
            yield patch


@pytest.mark.parametrize("max_length", [1, 4, 10])
def test_never_holds_more_than_max_length_patches(max_length):
    sampler = CountingSampler(pw.UniformSampler(None, 4))
    queue = pw.Queue(
        subjects(), sampler, max_length=max_length, patches_per_volume=6, num_workers=2
    )
    consumed = 0
    for _ in queue:
        consumed += 1
        assert sampler.produced - consumed < max_length
    assert consumed == 30


def test_loads_at_most_num_workers_subjects_ahead():
    loaded, consumed_subjects = [], set()

    def transform(subject):
        loaded.append(1)
        time.sleep(0.01)
        return subject

    queue = pw.Queue(
        subjects(8),
        pw.UniformSampler(None, 4),
        max_length=2,
        patches_per_volume=2,
        num_workers=2,
        transform=transform,
        shuffle_subjects=False,
    )
    for patch in queue:
        consumed_subjects.add(patch.patch_location.subject_index)
        time.sleep(0.005)
        assert len(loaded) - len(consumed_subjects) <= 2 + 1
    assert len(loaded) == 8


def test_transform_runs_in_worker_threads_and_is_applied():
    names = set()

    def transform(subject):
        names.add(threading.current_thread().name)
        subject["t1"] = subject.t1.with_data(subject.t1.data * 0 + 7)
        return subject

    queue = pw.Queue(
        subjects(3),
        pw.UniformSampler(None, 4),
        patches_per_volume=2,
        num_workers=2,
        transform=transform,
    )
    assert all((p.t1.data == 7).all() for p in queue)
    assert all(name.startswith("patchwork-queue") for name in names)


def test_worker_exception_reaches_the_consumer_with_its_traceback():
    fail = {"on": True}

    def flaky_transform(subject):
        if fail["on"] and float(subject.t1.data.mean()) == float(first_mean):
            raise RuntimeError("cannot load this subject")
        return subject

    data = subjects(4)
    first_mean = data[2].t1.data.mean()
    queue = pw.Queue(
        data,
        pw.UniformSampler(None, 4),
        patches_per_volume=2,
        num_workers=2,
        transform=flaky_transform,
        shuffle_subjects=False,
    )
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="cannot load this subject") as info:
        list(queue)
    assert time.monotonic() - start < 1.0
    assert "flaky_transform" in "".join(traceback.format_tb(info.value.__traceback__))
    time.sleep(0.05)
    assert queue_threads() == []
    fail["on"] = False
    assert len(list(queue)) == 8  # the next epoch works


def test_leaving_the_loop_early_stops_the_threads():
    queue = pw.Queue(
        subjects(6), pw.UniformSampler(None, 4), max_length=3, patches_per_volume=3, num_workers=3
    )
    iterator = iter(queue)
    next(iterator)
    assert queue_threads()
    del iterator
    time.sleep(0.05)
    assert queue_threads() == []


def test_order_is_deterministic_without_shuffling():
    queue = pw.Queue(
        subjects(4),
        pw.UniformSampler(None, 4, seed=0),
        max_length=5,
        patches_per_volume=3,
        num_workers=2,
        shuffle_subjects=False,
        shuffle_patches=False,
    )
    order = [p.patch_location.subject_index for p in queue]
    assert order == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_shuffling_is_reproducible_under_manual_seed():
    def run():
        torch.manual_seed(11)
        queue = pw.Queue(
            subjects(5),
            pw.UniformSampler(None, 4),
            max_length=6,
            patches_per_volume=3,
            num_workers=2,
        )
        return [(p.patch_location.subject_index, p.patch_location.index) for p in queue]

    first = run()
    assert first == run()
    assert [s for s, _ in first] != sorted(s for s, _ in first)


def test_subject_sampler_chooses_the_subjects():
    queue = pw.Queue(
        subjects(5),
        pw.UniformSampler(None, 4),
        patches_per_volume=2,
        shuffle_subjects=False,
        subject_sampler=SubsetRandomSampler([1, 3]),
    )
    assert queue.num_subjects == 2
    assert {p.patch_location.subject_index for p in queue} == {1, 3}


def test_outer_dataloader_workers_shard_the_subjects():
    queue = pw.Queue(
        subjects(5), pw.UniformSampler(None, 4), max_length=4, patches_per_volume=3, num_workers=1
    )
    loader = pw.SubjectsLoader(queue, batch_size=None, num_workers=2)
    indices = [p.patch_location.subject_index for p in loader]
    assert collections.Counter(indices) == {i: 3 for i in range(5)}


def test_lazy_subjects_are_released_after_sampling(nifti_file):
    paths = [
        nifti_file(np.random.rand(8, 8, 8).astype(np.float32), f"s{i}.nii.gz") for i in range(3)
    ]
    lazy = [pw.Subject(t1=pw.ScalarImage(path)) for path in paths]
    queue = pw.Queue(lazy, pw.UniformSampler(None, 4), patches_per_volume=2, num_workers=2)
    assert len(list(queue)) == 6
    assert not any(subject.t1.is_loaded for subject in lazy)


def test_memory_estimate():
    queue = pw.Queue(subjects(2), pw.UniformSampler(None, 4), max_length=100)
    assert queue.max_memory == 100 * (4**3 * 4 + 4**3 * 8)  # float32 image + int64 labels
    assert queue.max_memory_pretty == "75.0 KiB"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_length": 0}, ValueError, "max_length"),
        ({"patches_per_volume": -1}, ValueError, "patches_per_volume"),
        ({"num_workers": -1}, ValueError, "num_workers"),
        ({"transform": 3}, TypeError, "transform"),
        ({"patch_sampler": None}, TypeError, "patch_sampler"),
        ({"subjects": []}, ValueError, "subjects"),
        ({"subject_sampler": SubsetRandomSampler([0])}, ValueError, "shuffle_subjects"),
        (
            {"subject_sampler": SubsetRandomSampler([0]), "shuffle_subjects": True},
            ValueError,
            "shuffle_subjects must be False",
        ),
    ],
)
def test_rejects_bad_arguments(kwargs, error, match):
    arguments = {"subjects": subjects(1), "patch_sampler": pw.UniformSampler(None, 4), **kwargs}
    with pytest.raises(error, match=match):
        pw.Queue(**arguments)


def test_training_loop_with_subjects_loader():
    queue = pw.Queue(
        subjects(3),
        pw.LabelSampler(None, 4, "seg"),
        max_length=8,
        patches_per_volume=4,
        num_workers=2,
    )
    loader = pw.SubjectsLoader(queue, batch_size=5)
    sizes = [batch.t1.data.shape[0] for batch in loader]
    assert sizes == [5, 5, 2]


def test_subject_sampler_without_length_has_no_num_subjects():
    queue = pw.Queue(
        subjects(3),
        pw.UniformSampler(None, 4),
        patches_per_volume=1,
        shuffle_subjects=False,
        subject_sampler=iter([2, 0]),
    )
    with pytest.raises(TypeError):
        _ = queue.num_subjects
    assert [p.patch_location.subject_index for p in queue] == [2, 0]


def grid_patches(subject):
    return iter(pw.GridSampler(subject, 5))


def test_no_shuffling_keeps_subject_and_sampler_order():
    queue = pw.Queue(
        subjects(3),
        grid_patches,
        max_length=100,
        patches_per_volume=8,
        shuffle_subjects=False,
        shuffle_patches=False,
    )
    patches = list(queue)
    assert [p.patch_location.subject_index for p in patches] == [0] * 8 + [1] * 8 + [2] * 8
    assert [p.patch_location.index for p in patches[:8]] == [
        (i, j, k) for i in (0, 5) for j in (0, 5) for k in (0, 5)
    ]


def test_patches_per_volume_caps_a_sampler_that_yields_fewer():
    queue = pw.Queue(subjects(2), grid_patches, patches_per_volume=20, shuffle_subjects=False)
    assert queue.patches_per_epoch == 40
    assert len(list(queue)) == 16


def test_subjects_loader_batches_are_subjects_batches():
    queue = pw.Queue(subjects(2), pw.UniformSampler(None, 4), max_length=4, patches_per_volume=3)
    batches = list(pw.SubjectsLoader(queue, batch_size=4))
    assert [type(b).__name__ for b in batches] == ["SubjectsBatch", "SubjectsBatch"]
    assert [b.batch_size for b in batches] == [4, 2]
    assert all(len(b.patch_location) == b.batch_size for b in batches)
    assert {loc.subject_index for b in batches for loc in b.patch_location} == {0, 1}


class _RecordingLabelSampler(pw.LabelSampler):
    """A LabelSampler noting which thread builds each subject's centre table."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.threads = []

    def _prepare(self, subject):
        self.threads.append(threading.current_thread().name)
        return super()._prepare(subject)


@pytest.mark.parametrize("num_workers", [1, 2, 3])
def test_centre_tables_are_built_in_the_loading_threads_with_the_same_patches(num_workers):
    """Preparing subjects in parallel keeps the draws in subject order: same patches."""

    def patches(workers):
        sampler = _RecordingLabelSampler(None, 4, label_name="seg", seed=3)
        queue = pw.Queue(
            subjects(6),
            sampler,
            max_length=5,
            patches_per_volume=4,
            num_workers=workers,
            shuffle_subjects=False,
            shuffle_patches=False,
        )
        return [(p.patch_location, p.t1.data.clone()) for p in queue], sampler.threads

    sequential, main_threads = patches(0)
    parallel, worker_threads = patches(num_workers)
    assert set(main_threads) == {threading.current_thread().name}
    assert len(worker_threads) == 6 and all(n.startswith("patchwork-queue") for n in worker_threads)
    assert [loc for loc, _ in parallel] == [loc for loc, _ in sequential]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(parallel, sequential))
