"""The Sampler explorer's settings as a user reads them: the samplers offered, the tooltips,
the checks that turn the controls' values into a :class:`~._sampling.SamplingRequest`, and
core messages in the widget's words.

Plain values in (text typed, layers chosen), a request or a ``ValueError`` out.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ..core.wording import reworded_text
from ._napari import lazy_data_of, parse_label_probabilities, parse_size, shape_of, volume_of
from ._sampler_drawing import MAX_BOXES
from ._sampling import SamplingRequest

SAMPLERS = ("uniform", "weighted", "label")
SEED_MAX = 2**31 - 1
# core argument names → the widget's labels, for messages raised by the core
WIDGET_WORDS = {
    "patch_size": "patch size",
    "probability_map": "probability map",
    "label_probabilities": "label probabilities",
    "label_name": "labels",
    "num_patches": "patches",
}
TIPS = {
    "image": "3D image layer to sample patches from.",
    "sampler": "uniform: any centre where the patch fits; weighted: centres drawn from the "
    "probability map; label: centres on labelled voxels, per-class probabilities.",
    "probability": "Image layer of non-negative sampling weights, same size as the image "
    "(weighted sampler only).",
    "labels": "Labels layer: centres for the label sampler; the plot shows the label "
    "composition of the sample for any sampler.",
    "label probabilities": "Label sampler only: 'label: probability' pairs, e.g. "
    "'0: 0.5, 1: 0.3, 2: 0.2' (renormalised over labels present). Empty: foreground only.",
    "patch size": "Patch size in voxels: one integer for a cube ('32') or three, one per "
    "axis ('32, 32, 16'). Must fit in the image: until you type one it follows the image,"
    " 32 with a thinner axis given its own size ('32, 32, 24' on a 24-slice scan).",
    "patches": "Number of patches to draw. All centres are drawn; past "
    f"{MAX_BOXES:,} patches only the first {MAX_BOXES:,} boxes are.",
    "seed": "Random seed: the same seed gives the same patches.",
}


def voxels(size: Sequence[int]) -> str:
    """A size as the widget writes it: ``32×32×16 voxels``."""
    return "×".join(str(int(s)) for s in size) + " voxels"


def in_widget_words(text: str, probability: str = "", labels: str = "") -> str:
    """A core message in the widget's words: its labels, its layer names, sizes in voxels.

    Examples
    --------
    >>> in_widget_words("probability_map 'probability' is zero", probability="weights")
    "probability map 'weights' is zero"
    >>> in_widget_words("a patch of size (8, 8, 4) fits")
    'a patch of size 8×8×4 voxels fits'
    """
    text = text.replace(" of this subject", "")
    text = text.replace("probability_map 'probability'", f"probability map '{probability}'")
    for core in ("label_name 'labels'", "label map 'labels'"):
        text = text.replace(core, f"labels '{labels}'")
    text = reworded_text(text, WIDGET_WORDS)
    return re.sub(r"size \((\d+), (\d+), (\d+)\)", r"size \1×\2×\3 voxels", text)


def patch_voxels(text: str, shape: tuple[int, int, int], name: str) -> tuple[int, int, int]:
    """The patch size typed (``'32'`` or ``'32, 32, 16'``), checked to fit in image ``name``.

    Raises
    ------
    ValueError
        In the widget's words, when the text is not a size or the patch does not fit.
    """
    size = parse_size(text, "patch size")
    patch = (size,) * 3 if isinstance(size, int) else size
    if min(patch) < 1:
        raise ValueError(f"patch size must be positive, got {text!r}")
    if any(p > s for p, s in zip(patch, shape)):
        raise ValueError(
            f"patch size {voxels(patch)} is larger than image '{name}' ({voxels(shape)})"
        )
    return (patch[0], patch[1], patch[2])


def matching_layer(layer: Any, label: str, shape: tuple[int, int, int]) -> Any:
    """``layer`` (chosen in the control ``label``) when it has the image's ``shape``.

    Raises
    ------
    ValueError
        When the layer is not 3D or its size differs from the image's.
    """
    try:
        own = shape_of(layer)
    except ValueError as error:
        raise ValueError(f"{label}: {error}") from None
    if own != shape:
        raise ValueError(
            f"{label} '{layer.name}' is {voxels(own)}, the image {voxels(shape)}:"
            " choose layers of the same size"
        )
    return layer


def sampling_request(
    image: Any,
    kind: str,
    *,
    probability: Any,
    labels: Any,
    label_probabilities: str,
    patch_size: str,
    count: int,
    seed: int,
) -> SamplingRequest:
    """One run's request from the controls' values, checked in the widget's words.

    Parameters
    ----------
    image, probability, labels : napari layers or None
        The layers chosen (the probability map is read for the weighted sampler only).
    kind : str
        One of ``SAMPLERS``.
    label_probabilities, patch_size : str
        The text typed in those fields.
    count, seed : int
        Number of patches and random seed.

    Raises
    ------
    ValueError
        When a setting is missing or does not fit the image.
    """
    if image is None:
        raise ValueError("image: add or choose a 3D image layer")
    shape = shape_of(image)
    patch = patch_voxels(patch_size, shape, image.name)
    weights = label_data = probabilities = None
    if kind == "weighted":
        if probability is None:
            raise ValueError("the weighted sampler needs a probability map: choose one")
        weights = volume_of(matching_layer(probability, "probability map", shape))
    if labels is not None:
        label_data = matching_layer(labels, "labels", shape).data
    if kind == "label":
        if label_data is None:
            raise ValueError("the label sampler needs a labels layer: choose one in labels")
        probabilities = parse_label_probabilities(label_probabilities)
        negative = {k: v for k, v in (probabilities or {}).items() if v < 0}
        if negative:
            raise ValueError(f"label probabilities must not be negative, got {negative}")
    return SamplingRequest(
        kind, patch, count, seed, lazy_data_of(image), weights, label_data, probabilities
    )
