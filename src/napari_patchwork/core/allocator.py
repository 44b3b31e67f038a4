"""glibc's malloc in the package's processes: keep freed memory, or give it back, unless the
user chose.

glibc gives large freed blocks back to the system (unmapping them, or trimming the heap), and
the next allocation of the same size faults its pages in afresh: 2-11 µs a page on the
project's VM. A training step frees and allocates the network's activations and gradients
every time: training on nibabel's EPI in one process faulted in 0.8-5.3 million pages in 20 s
(3-10 s of system time). The training child is started with glibc told to keep what it frees
(:func:`keeping_freed_memory`): 289 → 364-390 iterations in 20 s. ``napari-patchwork train``
tells its own glibc the same (:func:`keep_freed_memory`): 266-405 → 347-391 iterations in
20 s, 0.22 million faults, and a higher peak resident size (871-963 MiB against 782-837),
which then stays until the process ends. A streamed inference run wants the opposite, its
memory bounded (``return_freed_memory`` in :mod:`.inference.streaming`).
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Mapping

#: The variables by which a user sets glibc's malloc at start-up.
MALLOC_VARIABLES = (
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_MMAP_MAX_",
)
#: ``mallopt`` options, from glibc's malloc.h.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: Kept freed memory, as (start-up variable, ``mallopt`` option, value): blocks up to 32 MiB
#: (glibc's largest mmap threshold) come from the heap, and the heap is given back only above
#: 1 GiB free at its top.
_KEPT = (
    ("MALLOC_MMAP_THRESHOLD_", M_MMAP_THRESHOLD, 32 << 20),
    ("MALLOC_TRIM_THRESHOLD_", M_TRIM_THRESHOLD, 1 << 30),
)
#: The start-up variables of :data:`_KEPT`, for a child process's environment.
KEEP_FREED_MEMORY = {name: str(value) for name, _, value in _KEPT}


def malloc_chosen_by_user(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment sets glibc's malloc (a variable or a ``glibc.malloc`` tunable).

    Examples
    --------
    >>> malloc_chosen_by_user({"MALLOC_TRIM_THRESHOLD_": "0"}), malloc_chosen_by_user({})
    (True, False)
    """
    if any(name in environ for name in MALLOC_VARIABLES):
        return True
    return "glibc.malloc." in environ.get("GLIBC_TUNABLES", "")


def keeping_freed_memory(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The environment for a child process of ours whose malloc keeps the memory it frees.

    Unchanged off Linux or where the user set malloc themselves.

    Examples
    --------
    >>> import sys
    >>> child = keeping_freed_memory({"PATH": "/bin"})
    >>> child["PATH"], ("MALLOC_TRIM_THRESHOLD_" in child) == sys.platform.startswith("linux")
    ('/bin', True)
    >>> keeping_freed_memory({"MALLOC_MMAP_THRESHOLD_": "0"})
    {'MALLOC_MMAP_THRESHOLD_': '0'}
    """
    child = dict(environ)
    if sys.platform.startswith("linux") and not malloc_chosen_by_user(environ):
        child.update(KEEP_FREED_MEMORY)
    return child


def set_malloc_option(option: int, value: int) -> bool:
    """``mallopt(option, value)`` in the C library the process runs on; False off Linux,
    off glibc, where the user set malloc themselves, or where glibc refuses.

    Examples
    --------
    >>> set_malloc_option(M_TRIM_THRESHOLD, "no") # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    TypeError: value must be an int, got 'no'
    """
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"value must be an int, got {value!r}")
    if not sys.platform.startswith("linux") or malloc_chosen_by_user():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return int(mallopt(option, value)) == 1


def keep_freed_memory() -> bool:
    """Have this process's glibc keep the memory it frees from now on (what
    :data:`KEEP_FREED_MEMORY` does at start-up), for a process of ours that trains.

    Returns
    -------
    bool
        Whether glibc took both settings (see :func:`set_malloc_option`).
    """
    return all(set_malloc_option(option, value) for _, option, value in _KEPT)
