"""``LabelSampler``: patches centred on labelled voxels, with per-class probabilities."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping

import torch

from ..subject import Subject
from ..types import TypeSize
from .weighted import WeightedSampler, admissible_slices


def _check_label_probabilities(probabilities: object) -> dict[int, float]:
    if not isinstance(probabilities, Mapping) or not probabilities:
        raise TypeError(
            "label_probabilities must be a non-empty dict of label -> weight,"
            f" got {probabilities!r}"
        )
    checked = {}
    for label, weight in probabilities.items():
        if not isinstance(label, numbers.Integral) or isinstance(label, bool):
            raise TypeError(f"label_probabilities keys must be int labels, got {label!r}")
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
            raise TypeError(f"label_probabilities[{label}] must be a number, got {weight!r}")
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(
                f"label_probabilities[{label}] must be finite and >= 0, got {weight!r}"
            )
        checked[int(label)] = float(weight)
    if sum(checked.values()) <= 0:
        raise ValueError(f"label_probabilities must not sum to 0, got {probabilities!r}")
    return checked


class LabelSampler(WeightedSampler):
    """Random patches centred on labelled voxels, for training with class imbalance.

    Without ``label_probabilities``, centres are uniform over foreground voxels (label > 0).
    With them, label ``k`` gets total probability ``p_k / sum(p)``, shared evenly among the
    voxels of label ``k`` where a patch fits — so ``{0: 0.5, 1: 0.5}`` gives half the patches
    centred on background and half on foreground, however small the foreground is.

    Parameters
    ----------
    subject : Subject
        The subject to sample from.
    patch_size : int or tuple of 3 int
        Spatial patch size.
    label_name : str
        Name of the ``LabelMap`` (integer labels, or one-hot channels).
    label_probabilities : dict of int to float, optional
        Label value → weight.
    num_patches : int, optional
        Patches per iteration; None means infinite.
    generator, seed
        As for :class:`UniformSampler`.

    Examples
    --------
    >>> import torch
    >>> from napari_patchwork import LabelMap, ScalarImage, Subject
    >>> labels = torch.zeros(1, 10, 10, 10, dtype=torch.int64); labels[0, 4:6, 4:6, 4:6] = 1
    >>> subject = Subject(t1=ScalarImage(torch.rand(1, 10, 10, 10)), seg=LabelMap(labels))
    >>> sampler = LabelSampler(subject, 4, "seg", {0: 0.5, 1: 0.5}, seed=0)
    >>> probabilities = sampler.get_probability_map()
    >>> round(float(probabilities[labels[0] == 1].sum()), 3)
    0.5
    """

    def __init__(
        self,
        subject: Subject | None,
        patch_size: TypeSize,
        label_name: str | None = None,
        label_probabilities: Mapping[int, float] | None = None,
        num_patches: int | None = None,
        *,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> None:
        self.label_name = label_name
        self.label_probabilities = (
            None if label_probabilities is None else _check_label_probabilities(label_probabilities)
        )
        super().__init__(
            subject, patch_size, label_name, num_patches, generator=generator, seed=seed
        )

    def _map_description(self) -> str:
        return f"the sampling weights of label_name {self.label_name!r}"

    def _label_volume(self, subject: Subject) -> torch.Tensor:
        image = subject.check_image(self.label_name, "label_name")
        data = image.data
        if data.shape[0] > 1:  # one-hot channels: the channel index is the label
            return data.argmax(0)
        labels = data[0]
        if labels.is_floating_point():
            fractional = labels[labels != labels.round()]
            if fractional.numel():  # NaN is never equal to itself: caught here too
                raise ValueError(
                    f"label_name {self.label_name!r} holds non-integer values (e.g."
                    f" {float(fractional[0])}); labels must be integers"
                )
            labels = labels.to(torch.int64)
        return labels

    def _weights(self, subject: Subject) -> torch.Tensor:
        labels = self._label_volume(subject)
        if self.label_probabilities is None:
            return (labels > 0).to(torch.float64)
        inside = labels[admissible_slices(tuple(labels.shape), self.patch_size)]  # type: ignore[arg-type]
        weights = torch.zeros(labels.shape, dtype=torch.float64)
        for label, probability in self.label_probabilities.items():
            mask = labels == label
            if not mask.any():
                raise ValueError(
                    f"label_probabilities names label {label},"
                    f" absent from label map {self.label_name!r}"
                    f" (labels present: {torch.unique(labels).tolist()[:20]})"
                )
            count = int((inside == label).sum())
            if count == 0:
                warnings.warn(
                    f"label {label} has no voxel where a patch of size {self.patch_size} fits;"
                    " it will not be sampled",
                    UserWarning,
                    stacklevel=4,
                )
                continue
            weights[mask] = probability / count
        return weights
