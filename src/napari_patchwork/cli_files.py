"""Files of ``napari-patchwork infer``: checked before the run, written atomically after it.

Everything that can be checked before the run is (the output path, the model files), so a
typo fails in a second, not after minutes of work. NIfTI outputs are written atomically (temp
file, then rename) with the user's umask: an interrupted run leaves no partial file, and the
output keeps the input's affine and qform/sform codes.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: Output suffixes the CLI writes.
OUTPUT_SUFFIXES = (".nii", ".nii.gz", ".zarr")


def check_output(output: Path, overwrite: bool, input_path: Path | None = None) -> None:
    """Refuse an output path the run could not write, before any work is done.

    Parameters
    ----------
    output : Path
        The ``--output`` value.
    overwrite : bool
        ``--overwrite``: replace an existing file (never the input).
    input_path : Path, optional
        ``INPUT``, which is never replaced.

    Raises
    ------
    ValueError
        Unknown suffix, missing or unwritable folder, a folder where a file goes, the input
        itself, or an existing output without ``overwrite``; the message names ``--output``
        and its value.

    Examples
    --------
    >>> check_output(Path("seg.txt"), overwrite=False)
    Traceback (most recent call last):
    ...
    ValueError: --output 'seg.txt': unknown file type; end it in .nii, .nii.gz or .zarr
    """
    from .io.nifti import is_nifti_path
    from .io.zarr_io import is_zarr_path

    shown = f"--output '{output}'"
    if not (is_nifti_path(output) or is_zarr_path(output)):
        raise ValueError(f"{shown}: unknown file type; end it in .nii, .nii.gz or .zarr")
    folder = output.parent
    if not folder.is_dir():
        raise ValueError(f"{shown}: the folder '{folder}' does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{shown}: the folder '{folder}' is not writable (permission denied)")
    if not output.exists():
        return
    if input_path is not None and input_path.exists() and output.samefile(input_path):
        raise ValueError(f"{shown}: refusing to overwrite the input file '{input_path}'")
    if not overwrite:
        raise ValueError(f"{shown} exists; pass --overwrite to replace it")
    if is_nifti_path(output) and output.is_dir():
        raise ValueError(f"{shown} is a folder; a NIfTI output is a file")


def check_model_files(source: str, weights: Path | None) -> None:
    """Refuse a missing ``--model`` or ``--weights`` file before the (slow) model load."""
    path = Path(source)
    if source != "demo" and not (":" in source and not path.exists()) and not path.is_file():
        problem = "is a folder" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"--model '{source}': model file {problem}")
    if weights is not None and not weights.is_file():
        raise FileNotFoundError(f"--weights '{weights}': weights file does not exist")


def _umask() -> int:
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def write_nifti_atomically(
    path: Path, data: torch.Tensor, affine: np.ndarray, nifti: dict[str, int], overwrite: bool
) -> None:
    """Write atomically with the user's umask and the input's qform/sform codes."""
    from .io.nifti import write_nifti

    suffix = ".nii.gz" if path.name.lower().endswith(".gz") else ".nii"
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    try:
        write_nifti(temp, data, affine, nifti=nifti)
        os.chmod(temp, 0o666 & ~_umask())  # mkstemp made it 0600
        if path.exists() and not overwrite:  # appeared during the run
            raise ValueError(f"--output '{path}' exists; pass --overwrite to replace it")
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def file_shape(path: Path) -> tuple[int, ...]:
    """The shape as the file's reader reports it (nibabel: ``(I, J, K[, C])``)."""
    import nibabel as nib

    image: Any = nib.load(str(path))
    return tuple(int(s) for s in image.shape)


__all__ = [
    "OUTPUT_SUFFIXES",
    "check_model_files",
    "check_output",
    "file_shape",
    "write_nifti_atomically",
]
