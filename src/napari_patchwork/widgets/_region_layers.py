"""Layers covering a region of an image, kept drawn in place on oblique scans in 2D.

napari draws a 2D slice by the displayed axes' part of a layer's transform: on an oblique scan
an offset along the sliced axis moves a layer *within* the plane (:func:`axis_to_anchor`). A
layer covering a region of such a scan therefore starts at voxel 0 on the sliced axis (zeros
before the region). :func:`keep_in_place` keeps it so while the view turns (dims order, 2D
after 3D) for as long as the layer is in the viewer, whether or not the widget that made it is
still docked or has run again since: the layer's metadata records the region and where its
data lies (:func:`data_box`), which is also where a running widget writes its patches.

Zeros added for an axis sliced before are dropped when the view turns, unless something was
painted there. Replacing the data clears the layer's undo history (napari's).
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from ._napari import axis_to_anchor

Box = tuple[slice, ...]

#: Layer metadata key: ``{"region": [[start, stop], ...], "box": [[start, stop], ...]}``, in the
#: voxels of the image the layer is placed like.
REGION_KEY = "napari_patchwork_region"

_followed_viewers: weakref.WeakSet[Any] = weakref.WeakSet()  # viewers with the handler


def size_of(box: Box) -> tuple[int, ...]:
    """The shape of an array covering ``box``."""
    return tuple(b.stop - b.start for b in box)


def _within(part: Box, box: Box) -> Box:
    """``part`` (in the image's voxels) as slices of an array covering ``box``."""
    return tuple(slice(p.start - b.start, p.stop - b.start) for p, b in zip(part, box))


def _as_box(pairs: Any) -> Box:
    return tuple(slice(int(start), int(stop)) for start, stop in pairs)


def region_of(layer: Any) -> Box | None:
    """The region of the image a layer made by :func:`keep_in_place` covers, else None."""
    record = layer.metadata.get(REGION_KEY)
    return None if record is None else _as_box(record["region"])


def data_box(layer: Any) -> Box | None:
    """Where the layer's data lies in the image's voxels (its region, plus zeros), else None."""
    record = layer.metadata.get(REGION_KEY)
    return None if record is None else _as_box(record["box"])


def box_for_view(
    viewer: Any, like: Any, region: Box, before: Box | None = None, layer: Any = None
) -> Box:
    """Where a layer covering ``region`` of ``like`` must lie for the current view: from voxel
    0 on the sliced axis of an oblique scan in 2D, the region elsewhere; ``before`` (the
    layer's box until now) is kept on an axis where ``layer`` holds something in the zeros
    before the region, and as it is in 3D views (placement is exact there)."""
    axis = axis_to_anchor(viewer, like)
    if axis is None and before is not None:
        return before
    box = []
    for a, part in enumerate(region):
        if a == axis:
            box.append(slice(0, part.stop))
        elif (
            before is not None and before[a].start < part.start and _painted(layer, a, before, part)
        ):
            box.append(before[a])
        else:
            box.append(part)
    return tuple(box)


def _painted(layer: Any, axis: int, box: Box, part: slice) -> bool:
    """Whether ``layer`` (covering ``box``) holds anything in the zeros before ``part``."""
    if layer is None or box[axis].start >= part.start or tuple(layer.data.shape) != size_of(box):
        return False
    width = part.start - box[axis].start
    zeros = tuple(slice(0, width) if a == axis else slice(None) for a in range(len(box)))
    return bool(np.asarray(layer.data[zeros]).any())


def keep_in_place(viewer: Any, layer: Any, region: Box, box: Box) -> None:
    """Record that ``layer`` (its data covering ``box``) shows ``region`` of the image it is
    placed like, and keep it drawn in place for the current view and as the view turns.

    Every layer of the viewer carrying this record follows (a duplicate, a layer removed and
    added back, one whose widget is gone): one handler per viewer, on its dims events. The
    layer's own transform is the image's shifted by ``box``'s start, so moving it needs
    neither the image (which may have been removed) nor the widget.
    """
    layer.metadata[REGION_KEY] = {
        "region": [[b.start, b.stop] for b in region],
        "box": [[b.start, b.stop] for b in box],
    }
    if viewer not in _followed_viewers:
        _followed_viewers.add(viewer)

        def follow_all(*_: Any) -> None:
            for each in list(viewer.layers):
                if REGION_KEY in each.metadata:
                    _follow(viewer, each)

        viewer.dims.events.order.connect(follow_all)
        viewer.dims.events.ndisplay.connect(follow_all)
    _follow(viewer, layer)


def _follow(viewer: Any, layer: Any) -> None:
    """Move ``layer`` to where the current view needs it (if its record matches its data)."""
    region, old = region_of(layer), data_box(layer)
    if region is None or old is None or tuple(np.shape(layer.data)) != size_of(old):
        return
    # the layer's linear transform is the image's: it tells the sliced axis as the image would
    new = box_for_view(viewer, layer, region, old, layer)
    if new != old:
        _move(layer, old, new)


def _move(layer: Any, old: Box, new: Box) -> None:
    """Re-pad the layer's data from ``old`` to ``new`` and shift it by their starts' difference
    (through its own scale, rotation and shear: ``layer(x) = image(x + new.start)``)."""
    from napari.utils.transforms import Affine

    kept = tuple(slice(max(n.start, o.start), min(n.stop, o.stop)) for n, o in zip(new, old))
    data = np.zeros(size_of(new), layer.data.dtype)
    data[_within(kept, new)] = layer.data[_within(kept, old)]
    linear = Affine(scale=layer.scale, rotate=layer.rotate, shear=layer.shear, ndim=layer.ndim)
    shift = np.zeros(layer.ndim)
    shift[-3:] = [n.start - o.start for n, o in zip(new, old)]
    translate = np.asarray(layer.translate) + linear(shift)
    layer.data = data
    layer.translate = translate
    record = layer.metadata[REGION_KEY]
    layer.metadata[REGION_KEY] = {**record, "box": [[b.start, b.stop] for b in new]}
