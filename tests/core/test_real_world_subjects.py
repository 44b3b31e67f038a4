"""Subjects built from NIfTI files written with nibabel: shared space, missing classes."""

from __future__ import annotations

import pickle

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import napari_patchwork as pw
from napari_patchwork.core.samplers.label import renormalised_probabilities

SHAPE = (10, 10, 8)
RAS = np.diag([1.0, 1.0, 1.0, 1.0])
LAS = np.diag([-1.0, 1.0, 1.0, 1.0])
LAS[0, 3] = SHAPE[0] - 1  # the same field of view, mirrored voxel order


def write(tmp_path, name, array, affine):
    path = tmp_path / name
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


@pytest.fixture
def t1_and_mask(tmp_path):
    rng = np.random.default_rng(0)
    t1 = write(tmp_path, "t1.nii.gz", rng.random(SHAPE).astype(np.float32), RAS)
    mask = np.zeros(SHAPE, np.uint8)
    mask[2:5, 3:6, 2:4] = 1
    seg = write(tmp_path, "seg.nii.gz", mask, LAS)
    return t1, seg


def test_ras_t1_and_las_mask_are_refused_naming_both(t1_and_mask):
    t1, seg = t1_and_mask
    with pytest.raises(ValueError, match="share one space") as info:
        pw.Subject(t1=pw.ScalarImage(t1), seg=pw.LabelMap(seg))
    message = str(info.value)
    assert "'t1'" in message and "'seg'" in message
    assert "'RAS'" in message and "'LAS'" in message
    assert "check_space=False" in message


def test_the_check_reads_headers_only(t1_and_mask):
    t1, seg = t1_and_mask
    images = {"t1": pw.ScalarImage(t1), "seg": pw.LabelMap(seg)}
    with pytest.raises(ValueError, match="'RAS' vs 'LAS'"):
        pw.Subject(images)
    assert not any(image.is_loaded for image in images.values())
    same = pw.Subject(t1=pw.ScalarImage(t1), other=pw.ScalarImage(t1))
    assert not same.t1.is_loaded and not same.other.is_loaded


def test_opt_out_keeps_working_through_copies_crops_grids_and_pickles(t1_and_mask):
    t1, seg = t1_and_mask
    subject = pw.Subject(t1=pw.ScalarImage(t1), seg=pw.LabelMap(seg), check_space=False)
    assert subject.check_space is False and "check_space" not in subject
    assert not subject.t1.is_loaded
    assert subject.loaded_copy().check_space is False
    assert pickle.loads(pickle.dumps(subject)).check_space is False
    sampler = pw.GridSampler(subject, 4, 2, padding_mode="edge")
    assert len(list(sampler)) == len(sampler)
    patches = list(pw.UniformSampler(subject, 4, 3, seed=0))
    assert all(patch.check_space is False for patch in patches)


def test_affines_within_tolerance_are_one_space(tmp_path):
    nudged = RAS.copy()
    nudged[0, 3] += 1e-8
    a = write(tmp_path, "a.nii", np.zeros(SHAPE, np.float32), RAS)
    b = write(tmp_path, "b.nii", np.zeros(SHAPE, np.int16), nudged)
    pw.Subject(a=pw.ScalarImage(a), b=pw.LabelMap(b))


def test_shapes_are_checked_even_with_the_opt_out():
    with pytest.raises(ValueError, match="spatial shape"):
        pw.Subject(
            a=pw.ScalarImage(torch.zeros(1, 4, 4, 4)),
            b=pw.ScalarImage(torch.zeros(1, 4, 4, 5)),
            check_space=False,
        )


def test_check_space_is_a_reserved_keyword():
    image = pw.ScalarImage(torch.zeros(1, 4, 4, 4))
    with pytest.raises(TypeError, match="check_space"):
        pw.Subject(check_space=image)
    stored = pw.Subject({"check_space": image})
    assert stored["check_space"] is image


def write_case(tmp_path, index, classes):
    rng = np.random.default_rng(index)
    labels = np.zeros(SHAPE, np.uint8)
    for k, label in enumerate(classes):
        labels[2 + 2 * k : 4 + 2 * k, 3:7, 2:6] = label
    affine = np.diag([0.8, 0.8, 1.5, 1.0])
    t1 = write(tmp_path, f"t1_{index}.nii.gz", rng.random(SHAPE).astype(np.float32), affine)
    seg = write(tmp_path, f"seg_{index}.nii.gz", labels, affine)
    return pw.Subject(t1=pw.ScalarImage(t1), seg=pw.LabelMap(seg), index=index)


def test_queue_with_a_subject_lacking_a_class_runs_a_full_epoch(tmp_path):
    subjects = [
        write_case(tmp_path, 0, [1, 2]),
        write_case(tmp_path, 1, [1]),  # no class 2
        write_case(tmp_path, 2, [1, 2]),
    ]
    sampler = pw.LabelSampler(None, 2, "seg", {0: 0.2, 1: 0.4, 2: 0.4}, seed=0)
    queue = pw.Queue(
        subjects,
        max_length=12,
        patches_per_volume=6,
        patch_sampler=sampler,
        num_workers=0,
        shuffle_subjects=False,
        shuffle_patches=False,
    )
    with pytest.warns(UserWarning, match="no voxel of label 2") as record:
        patches = list(queue)
    missing = [w for w in record if "no voxel of label 2" in str(w.message)]
    assert len(missing) == 1 and "renormalised" in str(missing[0].message)
    assert len(patches) == 18
    centres = {}
    for patch in patches:
        centre = tuple(s // 2 for s in patch.seg.data.shape[1:])
        centres.setdefault(int(patch["index"]), set()).add(int(patch.seg.data[(0, *centre)]))
    assert 2 not in centres[1] and centres[1] <= {0, 1}
    assert all(not subject.t1.is_loaded for subject in subjects)


def test_no_requested_class_present_is_an_error(tmp_path):
    subject = write_case(tmp_path, 0, [1])
    with pytest.raises(ValueError, match="labels 2, 3, absent"):
        pw.LabelSampler(subject, 2, "seg", {2: 0.5, 3: 0.5})


def test_warned_once_per_subject():
    labels = torch.zeros(1, 8, 8, 8, dtype=torch.int64)
    labels[0, 3:5, 3:5, 3:5] = 1
    subject = pw.Subject(seg=pw.LabelMap(labels))
    with pytest.warns(UserWarning, match="label 2") as record:
        sampler = pw.LabelSampler(subject, 2, "seg", {1: 1.0, 2: 1.0}, 4, seed=0)
        list(sampler)
        sampler.get_probability_map()
    assert len(record) == 1


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    present=st.sets(st.integers(0, 4), min_size=1, max_size=5),
    weights=st.dictionaries(
        st.integers(0, 5), st.floats(0.01, 10.0, allow_nan=False), min_size=1, max_size=6
    ),
    seed=st.integers(0, 2**16),
)
def test_renormalised_probabilities_sum_to_one_over_present_classes(present, weights, seed):
    if not set(weights) & present:
        with pytest.raises(ValueError):
            renormalised_probabilities(weights, present)
        return
    probabilities = renormalised_probabilities(weights, present)
    assert set(probabilities) == set(weights) & present
    assert sum(probabilities.values()) == pytest.approx(1.0)
    # the sampler: a volume holding exactly the present classes, patch size 1
    volume = torch.tensor(sorted(present), dtype=torch.int64).repeat(8)[:8].reshape(1, 2, 2, 2)
    volume.view(-1)[: len(present)] = torch.tensor(sorted(present))
    subject = pw.Subject(seg=pw.LabelMap(volume))
    with pytest.warns(UserWarning) if set(weights) - present else _no_warning():
        sampler = pw.LabelSampler(subject, 1, "seg", weights, 20, seed=seed)
        probability_map = sampler.get_probability_map()
        drawn = {int(patch.seg.data.item()) for patch in sampler}
    assert float(probability_map.sum()) == pytest.approx(1.0)
    for label, probability in probabilities.items():
        assert float(probability_map[volume[0] == label].sum()) == pytest.approx(probability)
    assert drawn <= set(probabilities)


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# --------------------------------------------------------------- padding constants and casts
def ct_and_mask(tmp_path):
    rng = np.random.default_rng(3)
    ct = write(tmp_path, "ct.nii.gz", rng.integers(0, 200, SHAPE).astype(np.uint8), RAS)
    mask = np.zeros(SHAPE, np.uint8)
    mask[3:6, 3:6, 2:5] = 1
    seg = write(tmp_path, "seg.nii.gz", mask, RAS)
    return ct, seg


@pytest.mark.parametrize("lazy", [False, True])
def test_negative_constant_with_uint8_label_map_is_refused_alike(tmp_path, lazy):
    from napari_patchwork.core.data.lazy import LazyVolume

    ct, seg = ct_and_mask(tmp_path)
    labels = nib.load(str(seg)).get_fdata().astype(np.uint8)
    if lazy:
        label_map = pw.LabelMap(LazyVolume(labels))
    else:
        label_map = pw.LabelMap(torch.from_numpy(labels)[None])
    subject = pw.Subject(ct=pw.ScalarImage(ct), seg=label_map)
    with pytest.raises(
        ValueError, match="padding constant -1000 does not fit label map 'seg' of dtype uint8"
    ):
        pw.GridSampler(subject, 4, 2, padding_mode=-1000)
    with pytest.raises(ValueError, match="-1000 does not fit label map 'seg'"):
        pw.GridSampler(subject, 4, 2, padding_mode="constant", fill=-1000)


def test_label_map_read_from_a_file_is_refused_at_the_first_patch(tmp_path):
    ct, seg = ct_and_mask(tmp_path)
    sampler = pw.GridSampler(
        pw.Subject(ct=pw.ScalarImage(ct), seg=pw.LabelMap(seg)), 4, 2, padding_mode=-1000
    )
    with pytest.raises(ValueError, match="-1000 does not fit label map 'seg' of dtype uint8"):
        sampler[0]


@pytest.mark.parametrize("lazy", [False, True])
def test_negative_constant_promotes_a_uint8_intensity_image(tmp_path, lazy):
    from napari_patchwork.core.data.lazy import LazyVolume

    ct, _ = ct_and_mask(tmp_path)
    array = np.asarray(nib.load(str(ct)).dataobj).astype(np.uint8)
    image = pw.ScalarImage(LazyVolume(array)) if lazy else pw.ScalarImage(ct)
    sampler = pw.GridSampler(pw.Subject(ct=image), 4, 2, padding_mode=-1000)
    corner = sampler[0].ct.data
    assert corner.dtype == torch.int16 and int(corner[0, 0, 0, 0]) == -1000
    assert int(corner.max()) <= 255
    in_memory = pw.GridSampler(
        pw.Subject(ct=pw.ScalarImage(torch.from_numpy(array)[None])), 4, 2, padding_mode=-1000
    )
    assert all(torch.equal(a.ct.data, b.ct.data) for a, b in zip(sampler, in_memory))


def test_gatherer_refuses_a_constant_its_output_cannot_hold():
    from napari_patchwork.core.data.location import PatchLocation
    from napari_patchwork.core.inference.patches import PatchGatherer

    gatherer = PatchGatherer(torch.zeros(1, 4, 4, 4, dtype=torch.uint8), -1000)
    location = PatchLocation((-1, 0, 0), (2, 2, 2))
    with pytest.raises(ValueError, match="-1000 does not fit the patches of dtype uint8"):
        gatherer.gather([location], dtype=torch.uint8)
    assert int(gatherer.gather([location])[0, 0, 0, 0, 0]) == -1000  # float32 holds it


def test_uint64_labels_beyond_int64_are_refused():
    labels = np.zeros((1, 6, 6, 6), np.uint64)
    labels[0, 2:4, 2:4, 2:4] = 1
    sampler_ok = pw.LabelSampler(pw.Subject(seg=pw.LabelMap(labels.copy())), 2, "seg", {1: 1.0})
    assert float(sampler_ok.get_probability_map().sum()) == pytest.approx(1.0)
    labels[0, 0, 0, 0] = 2**63 + 1
    with pytest.raises(ValueError, match="uint64.*holds.*9223372036854775809"):
        pw.LabelSampler(pw.Subject(seg=pw.LabelMap(labels)), 2, "seg", {1: 1.0})
