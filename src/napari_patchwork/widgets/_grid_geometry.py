"""The Patch grid's geometry, pure numpy (no viewer): the tiling a grid plan makes, the lines
that outline it, the data widths that draw those lines one screen pixel wide, and the lazy
volume of how many patches hold each voxel.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_patchwork.core.inference.grid import GridPlan, crop_intervals
from napari_patchwork.core.samplers.coverage import SeparableVolume, axis_coverage

LINE_PIXELS = 1.0  # width of every drawn line on screen


def tiling(plan: GridPlan) -> list[list[tuple[int, int]]]:
    """Per axis, the ``[lo, hi)`` voxels each start owns (they partition the axis)."""
    return [
        list(crop_intervals(size, patch, overlap, plan.padded).values())
        for size, patch, overlap in zip(plan.spatial_shape, plan.patch_size, plan.patch_overlap)
    ]


def lattice(borders: list[np.ndarray], sliced_axis: int | None, position: float) -> np.ndarray:
    """``(N, 2, 3)`` end points of full-length lines through per-axis borders.

    The cells of a product of intervals are outlined by the lines along each axis through
    every pair of borders of the other two (with ``sliced_axis``: the lines of that plane).
    """
    lines = []
    for direction in range(3):
        if direction == sliced_axis:
            continue
        across = [axis for axis in range(3) if axis != direction]
        values = [np.array([position], float) if a == sliced_axis else borders[a] for a in across]
        mesh = np.stack(np.meshgrid(*values, indexing="ij"), -1).reshape(-1, 2)
        ends = np.zeros((len(mesh), 2, 3))
        ends[:, :, across] = mesh[:, None, :]
        ends[:, 0, direction] = borders[direction][0]
        ends[:, 1, direction] = borders[direction][-1]
        lines.append(ends)
    return np.concatenate(lines) if lines else np.zeros((0, 2, 3))


def line_ends(vectors: np.ndarray) -> np.ndarray:
    """napari vectors ``(start, step)`` → line end points ``(start, start + step)``."""
    vectors = np.asarray(vectors, float).reshape(-1, 2, 3)
    return np.stack([vectors[:, 0], vectors[:, 0] + vectors[:, 1]], 1)


def line_widths(
    lines: np.ndarray,
    linear: np.ndarray,
    displayed: list[int],
    zoom: float,
    view: Any = None,
) -> Any:
    """Per line, the width in data units that napari draws ``LINE_PIXELS`` screen pixels wide.

    napari builds a line's mesh in *data* units: in 2D a band of total width ``w`` offset
    along the other displayed data axis, in 3D a tube of radius ``w`` around it. The mesh
    reaches the screen through the layer's linear transform ``M`` (restricted to the displayed
    axes) and the zoom (screen pixels per world unit). Across the line on screen (unit
    ``p``, perpendicular to the line and, in 3D, to the ``view`` direction) the mesh spans
    ``w · |(M e_b · p, M e_c · p)|`` (twice that for a tube), so ``w`` follows from it. On a
    0.5 × 3 mm plane the lines along one axis get a 6 times thinner width than the others.
    """
    if len(lines) == 0:
        return []
    block = linear[np.ix_(displayed, displayed)]
    directions = np.argmax(np.abs(lines[:, 1] - lines[:, 0]), axis=1)
    widths = np.full(len(lines), LINE_PIXELS / max(zoom, 1e-12))
    for axis in np.unique(directions):
        if axis not in displayed:
            continue
        along = block[:, displayed.index(axis)]
        along = along / np.linalg.norm(along)
        others = [block[:, i] for i, a in enumerate(displayed) if a != axis]
        if len(displayed) == 2:
            across, tube = np.array([-along[1], along[0]]), 1.0
        else:
            toward = np.asarray((1.0, 0.0, 0.0) if view is None else view, float)
            across, tube = np.cross(toward, along), 2.0
            if np.linalg.norm(across) < 1e-6:  # seen end-on: a dot, any width will do
                across = np.cross(others[0], along)
            across = across / np.linalg.norm(across)
        reach = float(np.sqrt(sum(float(o @ across) ** 2 for o in others)))
        widths[directions == axis] /= tube * max(reach, 1e-12)
    return widths.tolist()


def coverage_volume(plan: GridPlan) -> SeparableVolume:
    """Lazy volume of how many patches hold each voxel (a separable product, never stored)."""
    vectors = [c.numpy() for c in axis_coverage(plan)]
    most = int(np.prod([v.max() for v in vectors]))
    dtype = np.uint8 if most < 2**8 else np.uint16 if most < 2**16 else np.uint32
    return SeparableVolume(vectors, dtype=dtype)


def patches_meeting(plan: GridPlan, ini: Any, fin: Any) -> list[list[int]]:
    """Per axis, the starts of the patches meeting the box ``[ini, fin)``."""
    return [
        [s for s in starts if s < f and s + p > i]
        for starts, p, i, f in zip(plan.starts, plan.patch_size, ini, fin)
    ]
