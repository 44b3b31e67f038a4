"""SubjectsBatch / ImagesBatch, collate_subjects, SubjectsLoader and TorchIO 2's module paths."""

import importlib
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import napari_patchwork as tio
from tests.conftest import make_subject


def subjects_with_age(count=3, shape=(6, 5, 4)):
    subjects = []
    for i in range(count):
        subject = make_subject(shape, seed=i)
        subject["age"] = 42 + i
        subject["name"] = f"s{i}"
        subjects.append(subject)
    return subjects


# ---------------------------------------------------------------- SubjectsBatch
def test_from_subjects_stacks_images_and_lists_metadata():
    subjects = subjects_with_age()
    batch = tio.SubjectsBatch.from_subjects(subjects)
    assert batch.batch_size == len(batch) == 3
    assert batch.t1.data.shape == (3, 1, 6, 5, 4)
    assert batch.seg.data.dtype == torch.int64
    assert torch.equal(batch.t1.data[1], subjects[1].t1.data)
    assert batch.metadata == {"age": [42, 43, 44], "name": ["s0", "s1", "s2"]}
    assert batch.age == [42, 43, 44] and batch["age"] == [42, 43, 44]
    assert set(batch.images) == {"t1", "seg"} and batch["t1"] is batch.t1
    assert isinstance(batch.t1, tio.ImagesBatch) and batch.t1.image_class is tio.ScalarImage
    assert batch.seg.image_class is tio.LabelMap
    assert "t1" in batch and "age" in batch and "nothing" not in batch


def test_tensor_metadata_is_a_list_too():
    subjects = [make_subject((4, 4, 4), seed=i) for i in range(2)]
    for i, subject in enumerate(subjects):
        subject["label"] = torch.tensor(i)
    batch = tio.collate_subjects(subjects)
    assert isinstance(batch.label, list) and [int(v) for v in batch.label] == [0, 1]


def test_repr_names_the_type_and_fields():
    batch = tio.SubjectsBatch.from_subjects(subjects_with_age(2))
    assert repr(batch) == "SubjectsBatch(batch_size=2, images=[t1, seg], metadata=[age, name])"
    assert repr(batch.t1).startswith("ImagesBatch(ScalarImage, batch_size=2, shape=(1, 6, 5, 4)")


def test_unbatch_gives_back_the_subjects():
    subjects = subjects_with_age()
    for subject in subjects:
        for image in subject.get_images():
            image.affine = np.diag([0.5, 0.6, 0.7, 1.0])
    unbatched = tio.SubjectsBatch.from_subjects(subjects).unbatch()
    assert len(unbatched) == 3
    for original, restored in zip(subjects, unbatched):
        assert isinstance(restored, tio.Subject)
        assert list(restored) == list(original)
        assert type(restored.t1) is tio.ScalarImage and type(restored.seg) is tio.LabelMap
        assert torch.equal(restored.t1.data, original.t1.data)
        assert np.array_equal(restored.t1.affine, original.t1.affine)
        assert restored.spacing == (0.5, 0.6, 0.7)
        assert restored.age == original.age and restored.name == original.name


def test_unbatch_keeps_the_check_space_option():
    image = tio.ScalarImage(torch.zeros(1, 4, 4, 4))
    mask = tio.LabelMap(torch.zeros(1, 4, 4, 4, dtype=torch.int64), affine=np.diag([-1, 1, 1, 1]))
    subject = tio.Subject(t1=image, seg=mask, check_space=False)
    (restored,) = tio.SubjectsBatch.from_subjects([subject]).unbatch()
    assert restored.check_space is False


def test_metadata_is_copied_not_shared():
    subjects = [make_subject((4, 4, 4), seed=i) for i in range(2)]
    for subject in subjects:
        subject["info"] = {"site": "a"}
    batch = tio.collate_subjects(subjects)
    batch.info[0]["site"] = "b"
    assert subjects[0].info == {"site": "a"}
    batch.unbatch()[1]["info"]["site"] = "c"
    assert batch.info[1] == {"site": "a"}


def test_to_casts_and_moves_in_place():
    batch = tio.collate_subjects(subjects_with_age(2))
    assert batch.device == torch.device("cpu")
    assert batch.to(torch.float64) is batch
    assert batch.t1.data.dtype == torch.float64 and batch.seg.data.dtype == torch.float64
    assert batch.to("cpu").device.type == "cpu"
    assert batch.to(device="cpu", dtype=torch.float16).t1.data.dtype == torch.float16
    assert batch.age == [42, 43]  # metadata untouched


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_to_moves_to_the_gpu():
    batch = tio.collate_subjects(subjects_with_age(2)).to("cuda")
    assert batch.device.type == "cuda" and batch.t1.data.is_cuda
    assert tio.collate_subjects(subjects_with_age(2)).pin_memory().t1.data.is_pinned()


def test_device_of_a_batch_without_images_is_cpu():
    batch = tio.SubjectsBatch(metadata={"age": [1, 2]})
    assert batch.device == torch.device("cpu") and batch.batch_size == 2


def test_unknown_fields_raise():
    batch = tio.collate_subjects(subjects_with_age(2))
    with pytest.raises(AttributeError, match="nothing"):
        _ = batch.nothing
    with pytest.raises(KeyError, match="nothing"):
        _ = batch["nothing"]


def test_batches_pickle():
    batch = tio.collate_subjects(subjects_with_age(2))
    restored = pickle.loads(pickle.dumps(batch))
    assert torch.equal(restored.t1.data, batch.t1.data) and restored.age == batch.age


@pytest.mark.parametrize(
    ("argument", "error", "match"),
    [
        ([], ValueError, "empty"),
        ([1, 2], TypeError, "Subject at index 0"),
        (None, TypeError, "sequence"),
    ],
)
def test_from_subjects_rejects(argument, error, match):
    with pytest.raises(error, match=match):
        tio.SubjectsBatch.from_subjects(argument)


def test_from_subjects_rejects_a_non_subject_later():
    with pytest.raises(TypeError, match="index 1"):
        tio.SubjectsBatch.from_subjects([make_subject(), "no"])


def test_from_subjects_rejects_incompatible_subjects():
    small, large = make_subject((4, 4, 4)), make_subject((5, 4, 4))
    with pytest.raises(ValueError, match="different shapes"):
        tio.SubjectsBatch.from_subjects([small, large])
    extra = make_subject((4, 4, 4))
    extra["age"] = 3
    with pytest.raises(ValueError, match="unexpected \\['age'\\]"):
        tio.SubjectsBatch.from_subjects([small, extra])
    swapped = tio.Subject(t1=tio.LabelMap(small.t1.data.long()), seg=small.seg)
    with pytest.raises(ValueError, match="LabelMap"):
        tio.SubjectsBatch.from_subjects([small, swapped])
    half = tio.Subject(t1=tio.ScalarImage(small.t1.data.half()), seg=small.seg)
    with pytest.raises(ValueError, match="dtype"):
        tio.SubjectsBatch.from_subjects([small, half])


def test_constructor_rejects_inconsistent_fields():
    images = tio.ImagesBatch(torch.zeros(2, 1, 3, 3, 3), [np.eye(4)] * 2)
    with pytest.raises(ValueError, match="inconsistent batch size"):
        tio.SubjectsBatch({"t1": images}, metadata={"age": [1, 2, 3]})
    with pytest.raises(ValueError, match="at least one"):
        tio.SubjectsBatch()
    with pytest.raises(ValueError, match="empty"):
        tio.SubjectsBatch(metadata={"age": []})
    with pytest.raises(TypeError, match="ImagesBatch"):
        tio.SubjectsBatch({"t1": torch.zeros(2, 1, 3, 3, 3)})


# ---------------------------------------------------------------- ImagesBatch
def test_images_batch_elements_and_affines():
    affines = [np.diag([1.0, 2.0, 3.0, 1.0]), np.eye(4)]
    images = [tio.LabelMap(torch.full((1, 3, 3, 3), i), affine=a) for i, a in enumerate(affines)]
    batch = tio.ImagesBatch.from_images(images)
    assert batch.batch_size == len(batch) == 2 and batch.shape == (2, 1, 3, 3, 3)
    assert batch.spatial_shape == (3, 3, 3) and batch.affine.shape == (2, 4, 4)
    assert np.array_equal(batch.affines[0], affines[0])
    first, second = batch.unbatch()
    assert type(first) is tio.LabelMap and first.spacing == (1.0, 2.0, 3.0)
    assert torch.equal(second.data, images[1].data)
    assert [image.data.max().item() for image in batch] == [0, 1]


def test_images_batch_rejects():
    with pytest.raises(ValueError, match="5D"):
        tio.ImagesBatch(torch.zeros(1, 3, 3, 3), [np.eye(4)])
    with pytest.raises(ValueError, match="empty"):
        tio.ImagesBatch(torch.zeros(0, 1, 3, 3, 3), [])
    with pytest.raises(ValueError, match="2 affines"):
        tio.ImagesBatch(torch.zeros(2, 1, 3, 3, 3), [np.eye(4)])
    with pytest.raises(TypeError, match="Image subclass"):
        tio.ImagesBatch(torch.zeros(1, 1, 3, 3, 3), [np.eye(4)], image_class=int)
    with pytest.raises(ValueError, match="empty"):
        tio.ImagesBatch.from_images([])


# ---------------------------------------------------------------- collation
def test_collate_subjects_returns_a_subjects_batch():
    batch = tio.collate_subjects(subjects_with_age(2))
    assert type(batch) is tio.SubjectsBatch


def test_collate_subjects_of_nothing_is_a_value_error():
    with pytest.raises(ValueError, match="empty"):
        tio.collate_subjects([])


def test_collate_subjects_passes_a_single_subject_through():
    subject = make_subject()
    assert tio.collate_subjects(subject) is subject


def test_subjects_loader_refuses_a_collate_fn():
    sampler = tio.GridSampler(make_subject((8, 8, 8)), 4)
    with pytest.raises(ValueError, match="collate_fn"):
        tio.SubjectsLoader(sampler, batch_size=2, collate_fn=list)
    with pytest.raises(ValueError, match="collate_fn"):
        tio.SubjectsLoader(sampler, collate_fn=None)


@pytest.mark.parametrize("make_loader", [tio.SubjectsLoader, DataLoader])
def test_loaders_yield_subjects_batches_with_locations(make_loader):
    subject = make_subject((8, 8, 8))
    subject["age"] = 7
    batches = list(make_loader(tio.GridSampler(subject, 4), batch_size=3))
    assert [type(b) for b in batches] == [tio.SubjectsBatch] * 3
    assert [b.batch_size for b in batches] == [3, 3, 2]
    locations = [loc for b in batches for loc in b.patch_location]
    assert all(isinstance(loc, tio.PatchLocation) for loc in locations)
    assert locations == [tio.GridSampler(subject, 4)[i].patch_location for i in range(8)]
    assert batches[0].age == [7, 7, 7]
    patch = batches[0].unbatch()[1]
    assert torch.equal(patch.t1.data, subject.t1.data[(slice(None), *locations[1].to_slices())])


def test_loader_workers_send_batches_between_processes():
    subject = make_subject((8, 8, 8))
    loader = tio.SubjectsLoader(tio.GridSampler(subject, 4), batch_size=4, num_workers=2)
    batches = list(loader)
    assert [b.t1.data.shape[0] for b in batches] == [4, 4]
    assert len({loc for b in batches for loc in b.patch_location}) == 8


# ---------------------------------------------------------------- PatchLocation
def test_patch_location_geometry():
    location = tio.PatchLocation((1, 2, 3), (4, 5, 6), subject_index=2)
    assert location.index_ini == (1, 2, 3) and location.index_fin == (5, 7, 9)
    assert location.to_slices() == (slice(1, 5), slice(2, 7), slice(3, 9))
    scaled = location.scaled((0.5, 2, 1))
    assert scaled.index == (0, 4, 3) or scaled.index == (1, 4, 3)  # rounding of 0.5
    assert scaled.size == (2, 10, 6) and scaled.subject_index == 2
    with pytest.raises(AttributeError):
        location.index = (0, 0, 0)  # frozen


# ---------------------------------------------------------------- module paths
@pytest.mark.parametrize(
    ("module", "names"),
    [
        ("napari_patchwork.data", ["PatchLocation", "SubjectsBatch", "ImagesBatch", "Queue"]),
        ("napari_patchwork.data.patch", ["PatchLocation"]),
        ("napari_patchwork.data.batch", ["SubjectsBatch", "ImagesBatch"]),
        ("napari_patchwork.data.subject", ["Subject"]),
        ("napari_patchwork.data.image", ["Image", "ScalarImage", "LabelMap"]),
        ("napari_patchwork.data.queue", ["Queue"]),
        ("napari_patchwork.data.aggregator", ["PatchAggregator"]),
        ("napari_patchwork.data.inference", ["PatchAggregator"]),
        ("napari_patchwork.data.inference.aggregator", ["PatchAggregator"]),
        (
            "napari_patchwork.data.sampler",
            ["GridSampler", "UniformSampler", "WeightedSampler", "LabelSampler", "PatchSampler"],
        ),
        ("napari_patchwork.data.sampler.sampler", ["PatchSampler"]),
        ("napari_patchwork.data.sampler.grid", ["GridSampler"]),
        ("napari_patchwork.data.sampler.uniform", ["UniformSampler"]),
        ("napari_patchwork.data.sampler.weighted", ["WeightedSampler"]),
        ("napari_patchwork.data.sampler.label", ["LabelSampler"]),
        ("napari_patchwork.loader", ["SubjectsLoader", "collate_subjects"]),
    ],
)
def test_torchio_2_module_paths(module, names):
    imported = importlib.import_module(module)
    for name in names:
        assert getattr(imported, name) is getattr(tio, name)


def test_data_keeps_the_sample_names():
    from napari_patchwork import sample as sample_module
    from napari_patchwork.data import SAMPLE_NAMES, SAMPLE_SPACING, SampleVolume, make_sample

    assert make_sample is sample_module.make_sample and SampleVolume is sample_module.SampleVolume
    assert SAMPLE_SPACING == sample_module.SAMPLE_SPACING and SAMPLE_NAMES == (
        "image",
        "labels",
        "probability",
    )
    assert tio.data.sample is sample_module.sample
    assert make_sample((16, 16, 16)).image.shape == (16, 16, 16)


# ---------------------------------------------------------------- the seed's examples
def model(batch):
    assert batch.ndim == 5
    return 2 * batch


@pytest.mark.parametrize("make_loader", [tio.SubjectsLoader, DataLoader])
def test_seed_examples_with_the_batch_api(make_loader):
    subject = make_subject((72, 64, 64))
    subjects = [subject, make_subject((64, 72, 64), seed=1)]

    sampler = tio.GridSampler(subject, patch_size=64, patch_overlap=8)
    loader = make_loader(sampler, batch_size=4)
    aggregator = tio.PatchAggregator(subject.spatial_shape, overlap_mode="hann")
    for batch in loader:
        assert isinstance(batch, tio.SubjectsBatch)
        outputs = model(batch.t1.data)
        aggregator.add_batch(outputs, batch.patch_location)
    volume = aggregator.get_output()
    assert torch.allclose(volume, 2 * subject.t1.data, atol=1e-5)

    sampler = tio.UniformSampler(subject, patch_size=64, num_patches=20)
    loader = make_loader(sampler, batch_size=8)
    sizes = [batch.batch_size for batch in loader]
    assert sizes == [8, 8, 4]

    aggregator = tio.PatchAggregator(spatial_shape=(256, 256, 176), overlap_mode="hann")

    queue = tio.Queue(
        subjects,
        patch_sampler=tio.UniformSampler(subject, patch_size=64),
        max_length=300,
        patches_per_volume=10,
        num_workers=4,
    )
    loader = make_loader(queue, batch_size=16)
    seen = []
    for batch in loader:
        outputs = model(batch.t1.data)
        assert outputs.shape == (batch.batch_size, 1, 64, 64, 64)
        seen.extend(location.subject_index for location in batch.patch_location)
        assert batch.device.type == "cpu" and batch.to(torch.float64).t1.data.dtype == torch.float64
    assert sorted(seen) == [0] * 10 + [1] * 10
