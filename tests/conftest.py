"""Shared fixtures: small seeded volumes as subjects, in memory and as NIfTI files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import napari_patchwork as pw


def make_subject(
    shape: tuple[int, int, int] = (12, 10, 8), channels: int = 1, seed: int = 0
) -> pw.Subject:
    """A subject with a random intensity image and a two-class label map."""
    generator = torch.Generator().manual_seed(seed)
    data = torch.rand(channels, *shape, generator=generator)
    labels = (data[:1] > 0.7).to(torch.int64)
    return pw.Subject(t1=pw.ScalarImage(data), seg=pw.LabelMap(labels))


@pytest.fixture
def subject() -> pw.Subject:
    return make_subject()


@pytest.fixture
def nifti_file(tmp_path: Path) -> Callable[..., Path]:
    """Write an array as a NIfTI file with nibabel and return its path."""

    def write(
        array: np.ndarray, name: str = "image.nii.gz", affine: np.ndarray | None = None
    ) -> Path:
        path = tmp_path / name
        affine = np.diag([0.5, 0.75, 2.0, 1.0]) if affine is None else affine
        nib.save(nib.Nifti1Image(array, affine), str(path))
        return path

    return write
