"""The Patch grid's settings as a user reads them: the tooltips, the grid-line choices, and the
checks that turn the text typed into a :class:`GridPlan`, with messages in the widget's words.
"""

from __future__ import annotations

from typing import Any

from napari_patchwork.core.inference.grid import GridPlan

from ._napari import shape_of

TILING, EDGES = "one cell per patch", "every patch edge"
TOOLTIPS = {
    "image": "The 3D image the grid is planned on. Only its shape is read (huge, lazy and"
    " multiscale layers are fine).",
    "patch size": "Patch size in voxels: one number for all three axes (64) or three numbers"
    " separated by commas, one per axis (64, 64, 32). A text field so it takes both forms."
    " Until you type one it follows the image: 64, and an axis thinner than that gets its"
    " own size (64, 64, 24 on a 24-slice scan), with a quarter of it as overlap.",
    "patch overlap": "Voxels shared by neighbouring patches, even (half goes to each side of"
    " a border): one number (16) or one per axis (16, 16, 8). 0: patches tile the volume.",
    "padding": "none: patches stay inside the image. Otherwise the image is padded by half"
    " the patch overlap on each side and the grid covers the padded image (the mode only"
    " decides the padded values, not where the patches go).",
    "grid lines": f"{TILING}: the borders of the voxels each patch owns (where overlapping"
    f" predictions are cut), a readable grid. {EDGES}: the start and end of every patch.",
    "follow cursor": "Outline the patch under the cursor and tint the zones it shares with"
    " its neighbours (2D view).",
    "grid": "How many patches the grid has, per axis.",
    "tint": "What the tinted layers mean.",
    "under cursor": "The patch whose cell is under the cursor.",
    "selected": "Click a voxel to list the patches holding it (outlined in red).",
}


def triplet(text: str, label: str, minimum: int) -> tuple[int, int, int]:
    """'64' or '64, 64, 32' → three ints, with a message in the widget's words."""
    parts = str(text).replace(",", " ").split()
    try:
        values = [int(part) for part in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 3):
        raise ValueError(
            f"{label} must be one whole number of voxels or three separated by commas"
            f" (e.g. 64 or 64, 64, 32), got {text!r}"
        )
    if any(v < minimum for v in values):
        least = "at least 1 voxel" if minimum == 1 else "0 voxels or more"
        raise ValueError(f"{label} must be {least} on every axis, got {text!r}")
    values = values * 3 if len(values) == 1 else values
    return (values[0], values[1], values[2])


def voxels(values: Any) -> str:
    """A size as the widget writes it: ``64 × 64 × 32 voxels``."""
    return " × ".join(str(int(v)) for v in values) + " voxels"


def grid_plan(layer: Any, patch_size: str, patch_overlap: str, padding_mode: str) -> GridPlan:
    """The grid plan on image ``layer`` for the text typed in the fields (only its shape is read).

    Raises
    ------
    ValueError
        In the widget's words, when there is no image or a size or overlap does not fit.
    """
    if layer is None:
        raise ValueError("add a 3D image layer")
    shape = shape_of(layer)  # the data is never read: huge and lazy volumes are fine
    patch = triplet(patch_size, "patch size", 1)
    overlap = triplet(patch_overlap, "patch overlap", 0)
    if any(o % 2 for o in overlap):
        raise ValueError(
            f"patch overlap must be even on every axis (half goes to each side of a"
            f" border), got {voxels(overlap)}"
        )
    if any(o >= p for o, p in zip(overlap, patch)):
        raise ValueError(
            f"patch overlap ({voxels(overlap)}) must be smaller than the patch size"
            f" ({voxels(patch)})"
        )
    padded = padding_mode != "none"
    room = [s + (o if padded else 0) for s, o in zip(shape, overlap)]
    if any(p > r for p, r in zip(patch, room)):
        volume = "padded volume" if padded else "volume"
        raise ValueError(
            f"patch size {voxels(patch)} is larger than the {volume} ({voxels(room)}):"
            " use a smaller patch size" + ("" if padded else " or a padding")
        )
    return GridPlan(shape, patch, overlap, padded)
