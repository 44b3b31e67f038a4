"""Compare drawings made of axis-aligned napari vectors by the points they trace."""

import numpy as np


def traced(vectors: np.ndarray) -> set[tuple[int, float, float, float]]:
    """(direction, point) for every half-voxel step along each axis-aligned vector."""
    points = set()
    for start, step in np.asarray(vectors, float).reshape(-1, 2, 3):
        direction = int(np.argmax(np.abs(step)))
        for t in np.arange(0, abs(step[direction]) + 0.25, 0.5):
            point = start.copy()
            point[direction] += np.sign(step[direction]) * t
            points.add((direction, *np.round(point * 2) / 2))
    return points
