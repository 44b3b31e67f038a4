"""Readers and writers (no GUI imports)."""

from .nifti import NiftiHeader, read_nifti, read_nifti_header, write_nifti

__all__ = ["NiftiHeader", "read_nifti", "read_nifti_header", "write_nifti"]
