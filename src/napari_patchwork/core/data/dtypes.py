"""Voxel dtypes torch holds exactly: the one conversion every input path uses."""

from __future__ import annotations

import numpy as np


def torch_compatible(array: np.ndarray, name: str = "the input") -> np.ndarray:
    """``array`` in native byte order and a dtype torch holds exactly, values unchanged.

    ``uint16`` widens to ``int32``, ``uint32`` to ``int64``; ``uint64`` becomes ``int64`` when
    every value fits, else it is refused (never wrapped). Other dtypes are kept, and the
    memory layout too (a Fortran-ordered NIfTI volume is not copied).

    Parameters
    ----------
    array : numpy.ndarray
        Voxels of any byte order.
    name : str
        What to call ``array`` in error messages (e.g. the file it was read from).

    Raises
    ------
    ValueError
        If a ``uint64`` array holds values above the ``int64`` range.

    Examples
    --------
    >>> torch_compatible(np.array([1, 65535], dtype=">u2")).dtype
    dtype('int32')
    >>> torch_compatible(np.zeros(2, dtype=np.float32)).dtype
    dtype('float32')
    """
    if not array.dtype.isnative:  # big-endian files: torch needs native order
        array = array.astype(array.dtype.newbyteorder("="))
    if array.dtype == np.uint16:
        return array.astype(np.int32)
    if array.dtype == np.uint32:
        return array.astype(np.int64)
    if array.dtype == np.uint64:
        largest = int(array.max(initial=0))
        if largest > np.iinfo(np.int64).max:
            raise ValueError(
                f"{name} is uint64 and holds {largest}, more than int64 can hold"
                f" ({np.iinfo(np.int64).max}); renumber the labels first"
            )
        return array.astype(np.int64)
    return array
