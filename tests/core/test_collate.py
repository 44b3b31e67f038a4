"""Collation of subjects: SubjectsLoader, collate_subjects and a plain DataLoader agree."""

import pytest
import torch
from torch.utils.data import DataLoader

import napari_patchwork as tio
from napari_patchwork.core.batching.collate import collate_subjects


def subjects(count=4):
    generator = torch.Generator().manual_seed(0)
    return [
        tio.Subject(
            t1=tio.ScalarImage(torch.rand(1, 6, 6, 6, generator=generator)),
            seg=tio.LabelMap(torch.randint(0, 3, (1, 6, 6, 6), generator=generator)),
            age=float(i),
        )
        for i in range(count)
    ]


def test_collate_stacks_images_and_keeps_metadata():
    batch = collate_subjects(subjects())
    assert batch.t1.data.shape == (4, 1, 6, 6, 6)
    assert batch.seg.data.dtype == torch.int64
    assert torch.equal(batch.t1.data[2], subjects()[2].t1.data)


def test_a_single_subject_is_returned_as_it_is():
    subject = subjects(1)[0]
    assert collate_subjects(subject) is subject


def test_plain_dataloader_over_a_sampler_equals_subjects_loader():
    subject = subjects(1)[0]
    sampler = tio.GridSampler(subject, 4, 2)
    plain = [b.t1.data for b in DataLoader(sampler, batch_size=3)]
    ours = [b.t1.data for b in tio.SubjectsLoader(sampler, batch_size=3)]
    assert len(plain) == len(ours) and all(torch.equal(a, b) for a, b in zip(plain, ours))
    locations = next(iter(DataLoader(sampler, batch_size=3))).patch_location
    assert [loc.index for loc in locations] == [sampler[i].patch_location.index for i in range(3)]


def test_empty_batch_is_refused():
    with pytest.raises(ValueError):
        collate_subjects([])
