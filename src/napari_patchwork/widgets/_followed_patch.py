"""Patch-size fields that follow the image until the user types in them.

A widget's default patch (the Patch grid's 64, the Sampler explorer's 32, a trained model's
recorded patch in Tiled inference) does not fit a thin scan: nibabel's EPI volume has 24
slices. Until the user types a value, the fields show the default fitted to the chosen image
(:func:`~napari_patchwork.core.inference.grid.fit_patch`, overlap
:func:`~napari_patchwork.core.inference.grid.quarter_overlap`); a value the user typed stays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from napari_patchwork.core.inference.grid import fit_patch, quarter_overlap


def written_size(size: Sequence[int]) -> str:
    """A size as the user types it: ``'32'`` for a cube, else ``'32, 32, 20'``.

    Examples
    --------
    >>> written_size((32, 32, 32)), written_size((64, 64, 24))
    ('32', '64, 64, 24')
    """
    return str(size[0]) if len(set(size)) == 1 else ", ".join(map(str, size))


class FollowedPatch:
    """A patch-size field, and optionally an overlap field, set by the widget until typed.

    Parameters
    ----------
    patch, overlap : magicgui value widget
        The fields (``overlap`` may be None: a sampler has no overlap); their values when
        made are the widget's defaults, replaced by :meth:`follow`.

    Examples
    --------
    >>> from magicgui.widgets import LineEdit
    >>> patch, overlap = LineEdit(value="64"), LineEdit(value="16")
    >>> followed = FollowedPatch(patch, overlap)
    >>> followed.follow((64, 64, 64), (128, 96, 24))
    >>> patch.value, overlap.value
    ('64, 64, 24', '16, 16, 6')
    >>> patch.value = "48"  # typed: kept when another image is chosen
    >>> followed.follow((64, 64, 64), (100, 100, 100))
    >>> patch.value, overlap.value
    ('48', '16')
    >>> patch.value = "64"  # typed, the very text a default would show: still the user's
    >>> followed.follow((64, 64, 64), (128, 96, 24))
    >>> patch.value, overlap.value
    ('64', '16, 16, 6')
    """

    def __init__(self, patch: Any, overlap: Any = None) -> None:
        self.fields = [patch] if overlap is None else [patch, overlap]
        #: what the widget last showed in each field (a field showing else was typed)
        self.values = tuple(str(field.value) for field in self.fields)

    def follow(
        self, size: Sequence[int], shape: Sequence[int] | None, keep_typed: bool = True
    ) -> None:
        """Show ``size`` fitted to an image of ``shape`` (None: as it is), with a quarter
        overlap; a field the user typed stays unless ``keep_typed`` is False."""
        fitted = tuple(size) if shape is None else fit_patch(size, shape)
        values = (written_size(fitted), written_size(quarter_overlap(fitted)))
        kept = []
        for field, value, old in zip(self.fields, values, self.values):
            if keep_typed and str(field.value) != old:  # typed by the user: kept, and
                kept.append(old)  # remembered as typed even if a later default equals it
            else:
                field.value = value
                kept.append(value)
        self.values = tuple(kept)
