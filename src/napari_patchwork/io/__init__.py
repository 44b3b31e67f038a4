"""Readers and writers (no GUI imports)."""

from .models import load_model
from .nifti import NiftiHeader, read_nifti, read_nifti_header, write_nifti

__all__ = ["NiftiHeader", "load_model", "read_nifti", "read_nifti_header", "write_nifti"]
