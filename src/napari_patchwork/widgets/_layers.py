"""Pure converters from core results to napari layer data (numpy only, no viewer needed).

Patch boxes are drawn as *vectors* (one per box edge) in a single layer: thousands of boxes
render at once, where a Shapes layer of 10,000 rectangles takes seconds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from napari_patchwork.core.data.location import PatchLocation
from napari_patchwork.core.inference.grid import GridPlan

_EDGES = [  # the 12 edges of a unit box: (start corner, direction axis)
    ((0, 0, 0), 0),
    ((0, 1, 0), 0),
    ((0, 0, 1), 0),
    ((0, 1, 1), 0),
    ((0, 0, 0), 1),
    ((1, 0, 0), 1),
    ((0, 0, 1), 1),
    ((1, 0, 1), 1),
    ((0, 0, 0), 2),
    ((1, 0, 0), 2),
    ((0, 1, 0), 2),
    ((1, 1, 0), 2),
]


def boxes_to_vectors(
    ini: np.ndarray, fin: np.ndarray, sliced_axis: int | None = None, position: float = 0.0
) -> np.ndarray:
    """``(N * edges, 2, 3)`` napari vectors outlining boxes ``[ini, fin)`` in voxel coordinates.

    With ``sliced_axis``, only the rectangle each box cuts in the plane ``sliced_axis =
    position`` (4 edges per box); otherwise the full wireframe (12 edges per box). Edges run
    through voxel borders (``ini - 0.5`` to ``fin - 0.5``).
    """
    ini = np.asarray(ini, float).reshape(-1, 3) - 0.5
    extent = np.asarray(fin, float).reshape(-1, 3) - 0.5 - ini
    vectors = []
    for corner, axis in _EDGES:
        if sliced_axis is not None and (axis == sliced_axis or corner[sliced_axis]):
            continue
        start = ini + np.asarray(corner) * extent
        direction = np.zeros_like(extent)
        direction[:, axis] = extent[:, axis]
        if sliced_axis is not None:
            start[:, sliced_axis] = position
        vectors.append(np.stack([start, direction], axis=1))
    if not vectors or len(ini) == 0:
        return np.zeros((0, 2, 3))
    return np.concatenate(vectors)


def grid_boxes(
    plan: GridPlan, sliced_axis: int | None = None, position: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``(ini, fin)`` arrays of the grid's boxes (only those cutting the slice, if given)."""
    axes = []
    for axis, starts in enumerate(plan.starts):
        values = np.asarray(starts)
        if axis == sliced_axis:
            values = values[(values <= position) & (position < values + plan.patch_size[axis])]
        axes.append(values)
    mesh = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    return mesh, mesh + np.asarray(plan.patch_size)


def grid_lines(plan: GridPlan, sliced_axis: int | None = None, position: float = 0.0) -> np.ndarray:
    """The grid's box edges as ``(N, 2, 3)`` napari vectors: full-length lattice lines.

    A grid is a product of intervals, so the union of its box edges along one axis is the set
    of full-extent lines through every (start or end) border of the other two axes. Drawing
    those lines gives exactly the picture of all boxes' edges with ``O(borders²)`` vectors
    instead of ``12 × patches`` (a 10,000-patch grid: ~2,000 lines, not 120,000 edges).

    With ``sliced_axis``, the lines of the plane ``sliced_axis = position`` (the rectangles
    of the boxes cutting that slice); empty if no box cuts it.
    """
    borders, low, high = [], [], []
    for axis_starts, patch in zip(plan.starts, plan.patch_size):
        starts = np.asarray(axis_starts)
        borders.append(np.union1d(starts, starts + patch) - 0.5)
        low.append(starts.min() - 0.5)
        high.append(starts.max() + patch - 0.5)
    if sliced_axis is not None:
        cut_starts = np.asarray(plan.starts[sliced_axis])
        size = plan.patch_size[sliced_axis]
        cut = (cut_starts <= position) & (position < cut_starts + size)
        if not cut.any():
            return np.zeros((0, 2, 3))
    lines = []
    for direction in range(3):
        if direction == sliced_axis:
            continue
        across = [axis for axis in range(3) if axis != direction]
        values = [
            np.array([position], float) if axis == sliced_axis else borders[axis] for axis in across
        ]
        mesh = np.stack(np.meshgrid(*values, indexing="ij"), -1).reshape(-1, 2)
        vectors = np.zeros((len(mesh), 2, 3))
        vectors[:, 0, across] = mesh
        vectors[:, 0, direction] = low[direction]
        vectors[:, 1, direction] = high[direction] - low[direction]
        lines.append(vectors)
    return np.concatenate(lines)


def locations_to_boxes(
    locations: Sequence[PatchLocation], sliced_axis: int | None = None, position: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``(ini, fin)`` of locations (only those cutting the slice, if given)."""
    ini = np.asarray([loc.index_ini for loc in locations], int).reshape(-1, 3)
    fin = np.asarray([loc.index_fin for loc in locations], int).reshape(-1, 3)
    if sliced_axis is not None:
        keep = (ini[:, sliced_axis] <= position) & (position < fin[:, sliced_axis])
        ini, fin = ini[keep], fin[keep]
    return ini, fin


def centres(locations: Sequence[PatchLocation]) -> np.ndarray:
    """``(N, 3)`` patch centres (``index_ini + size // 2``) for a Points layer."""
    return np.asarray([loc.center for loc in locations], float).reshape(-1, 3)


def label_composition(
    labels: np.ndarray, locations: Sequence[PatchLocation], values: Sequence[int]
) -> dict[str, np.ndarray]:
    """Per label value: fraction of patch centres on it, and mean fraction of patch voxels."""
    values = list(values)
    at_centre = np.array([labels[loc.center] for loc in locations]) if locations else np.zeros(0)
    centre_fraction = np.array([(at_centre == v).mean() if len(at_centre) else 0.0 for v in values])
    voxel_fraction = np.zeros(len(values))
    for loc in locations:
        patch = labels[loc.to_slices()]
        voxel_fraction += np.array([(patch == v).mean() for v in values])
    voxel_fraction /= max(len(locations), 1)
    return {"centre": centre_fraction, "voxels": voxel_fraction}
