"""``LabelSampler``: patches centred on labelled voxels, with per-class probabilities."""

from __future__ import annotations

import math
import numbers
import warnings
import weakref
from collections.abc import Iterable, Mapping

import numpy as np
import torch

from napari_patchwork.core.data.subject import Subject

from ..types import TypeSize
from .weighted import WeightedSampler, _CentreTable, _SupportTable, admissible_slices


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


def _labels_text(labels: list[int]) -> str:
    if len(labels) == 1:
        return f"label {labels[0]}"
    return "labels " + ", ".join(str(label) for label in labels)


LOOKUP_LIMIT = 2**16  # labels in [0, limit): counted and spread with a lookup table


def _as_lookup(labels: np.ndarray) -> np.ndarray | None:
    """``labels`` as non-negative integers below ``LOOKUP_LIMIT`` (a view), or None."""
    if labels.dtype.kind not in "ui" or labels.dtype.itemsize > 8 or labels.size == 0:
        return None
    if labels.dtype == np.uint64 or labels.min() < 0 or labels.max() >= LOOKUP_LIMIT:
        return None
    return labels


def _label_counts(
    labels: np.ndarray, inside: np.ndarray, requested: Mapping[int, float]
) -> tuple[dict[int, int], dict[int, int]]:
    """Voxels of each requested label in the whole map and where a patch centre fits."""
    table = _as_lookup(labels)
    if table is not None:
        everywhere = np.bincount(table.reshape(-1), minlength=LOOKUP_LIMIT)
        admissible = np.bincount(inside.reshape(-1), minlength=LOOKUP_LIMIT)
        return (
            {k: int(everywhere[k]) if 0 <= k < LOOKUP_LIMIT else 0 for k in requested},
            {k: int(admissible[k]) if 0 <= k < LOOKUP_LIMIT else 0 for k in requested},
        )
    return (
        {k: int(np.count_nonzero(labels == k)) for k in requested},
        {k: int(np.count_nonzero(inside == k)) for k in requested},
    )


def _spread(labels: np.ndarray, per_voxel: Mapping[int, float]) -> np.ndarray:
    """A float64 map holding ``per_voxel[label]`` at each voxel of that label, else 0."""
    table = _as_lookup(labels)
    if table is not None:
        lookup = np.zeros(int(table.max()) + 1, dtype=np.float64)
        for label, value in per_voxel.items():
            if label < len(lookup):
                lookup[label] = value
        spread: np.ndarray = lookup[table]
        return spread
    weights = np.zeros(labels.shape, dtype=np.float64)
    for label, value in per_voxel.items():
        weights[labels == label] = value
    return weights


def renormalised_probabilities(
    probabilities: Mapping[int, float], present: Iterable[int]
) -> dict[int, float]:
    """The requested label probabilities of the labels present, rescaled to sum to 1.

    Parameters
    ----------
    probabilities : dict of int to float
        Label value → non-negative weight, as given to :class:`LabelSampler`.
    present : iterable of int
        The labels that occur in the label map.

    Returns
    -------
    dict of int to float
        ``{k: p_k / sum(p_j for present j)}`` for the present labels ``k`` that were requested.

    Raises
    ------
    ValueError
        If no requested label with a positive weight is present.

    Examples
    --------
    >>> renormalised_probabilities({0: 0.2, 1: 0.2, 2: 0.6}, present=[0, 1])
    {0: 0.5, 1: 0.5}
    """
    present = set(present)
    kept = {label: weight for label, weight in probabilities.items() if label in present}
    total = sum(kept.values())
    if not total > 0:
        raise ValueError(
            f"none of the labels of label_probabilities {dict(probabilities)} with a positive"
            f" probability is present (labels present: {sorted(present)[:20]})"
        )
    return {label: weight / total for label, weight in kept.items()}


class LabelSampler(WeightedSampler):
    """Random patches centred on labelled voxels, for training with class imbalance.

    Without ``label_probabilities``, centres are uniform over foreground voxels (label > 0).
    With them, label ``k`` gets total probability ``p_k / sum(p)``, shared evenly among the
    voxels of label ``k`` where a patch fits — so ``{0: 0.5, 1: 0.5}`` gives half the patches
    centred on background and half on foreground, however small the foreground is.

    A subject may lack some requested labels (a case without a tumour, say): the sampler then
    samples from the labels present, with their probabilities renormalised to sum to 1
    (:func:`renormalised_probabilities`), and warns once per subject object with a
    ``UserWarning`` naming the missing labels. In a :class:`Queue`, which loads a fresh copy
    of each subject every epoch, that is once per subject and epoch (and Python's default
    warning filter shows identical messages once). Only when no requested label with a
    positive probability is present does it raise a ``ValueError``.

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
        # id(subject) -> weak reference, for subjects already warned about missing labels
        self._warned: dict[int, weakref.ref[Subject]] = {}
        super().__init__(
            subject, patch_size, label_name, num_patches, generator=generator, seed=seed
        )

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        state["_warned"] = {}  # weak references do not pickle (DataLoader workers)
        return state

    def _map_description(self) -> str:
        return f"the sampling weights of label_name {self.label_name!r}"

    def _label_volume(self, subject: Subject) -> torch.Tensor:
        image = subject.check_image(self.label_name, "label_name")
        data = image.data
        if data.shape[0] > 1:  # one-hot channels: the channel index is the label
            return data.argmax(0)
        labels = data[0]
        if labels.dtype == torch.uint64:  # torch lacks most uint64 ops: labels become int64
            top = int(labels.numpy().max())
            if top > torch.iinfo(torch.int64).max:
                raise ValueError(
                    f"label map {self.label_name!r} of dtype uint64 holds label {top}, beyond"
                    f" int64 (max {torch.iinfo(torch.int64).max}); it would wrap when cast"
                )
            return torch.from_numpy(labels.numpy().astype(np.int64))
        if labels.is_floating_point():
            fractional = labels[labels != labels.round()]
            if fractional.numel():  # NaN is never equal to itself: caught here too
                raise ValueError(
                    f"label_name {self.label_name!r} holds non-integer values (e.g."
                    f" {float(fractional[0])}); labels must be integers"
                )
            labels = labels.to(torch.int64)
        return labels

    def _table(self, subject: Subject) -> _CentreTable | _SupportTable:
        if self.label_probabilities is None:  # uniform over the foreground: no weight map
            labels = self._label_volume(subject).cpu().numpy()
            inside = labels[admissible_slices(labels.shape, self.patch_size)]
            return _SupportTable(np.greater(inside, 0), self.patch_size, self._map_description())
        return super()._table(subject)

    def _weights(self, subject: Subject) -> torch.Tensor:
        # numpy (one thread): this runs in the Queue's loading threads, beside training.
        labels = self._label_volume(subject).cpu().numpy()
        if self.label_probabilities is None:
            return torch.from_numpy(np.greater(labels, 0).astype(np.float64))
        inside = labels[admissible_slices(labels.shape, self.patch_size)]
        counts, inside_counts = _label_counts(labels, inside, self.label_probabilities)
        present = [label for label in self.label_probabilities if counts[label] > 0]
        missing = [label for label in self.label_probabilities if label not in present]
        try:
            probabilities = renormalised_probabilities(self.label_probabilities, present)
        except ValueError:
            raise ValueError(
                f"label_probabilities names {_labels_text(missing)}, absent from label map"
                f" {self.label_name!r}, and no other requested label with a positive"
                f" probability is present (labels present: {np.unique(labels).tolist()[:20]},"
                f" label_probabilities: {self.label_probabilities})"
            ) from None
        weighted_missing = [label for label in missing if self.label_probabilities[label] > 0]
        if weighted_missing:
            self._warn_missing(subject, weighted_missing, probabilities)
        per_voxel: dict[int, float] = {}
        for label, probability in probabilities.items():
            if probability == 0:
                continue
            if inside_counts[label] == 0:
                warnings.warn(
                    f"label {label} has no voxel where a patch of size {self.patch_size} fits;"
                    " it will not be sampled",
                    UserWarning,
                    stacklevel=4,
                )
                continue
            per_voxel[label] = probability / inside_counts[label]
        return torch.from_numpy(_spread(labels, per_voxel))

    def _warn_missing(
        self, subject: Subject, missing: list[int], probabilities: dict[int, float]
    ) -> None:
        """Warn that ``missing`` labels are absent, once per subject object."""
        known = self._warned.get(id(subject))
        if known is not None and known() is subject:
            return
        self._warned = {key: ref for key, ref in self._warned.items() if ref() is not None}
        self._warned[id(subject)] = weakref.ref(subject)
        rounded = {label: round(p, 4) for label, p in probabilities.items()}
        warnings.warn(
            f"label map {self.label_name!r} of this subject has no voxel of"
            f" {_labels_text(missing)} named in label_probabilities; sampling from labels"
            f" {sorted(probabilities)} with probabilities renormalised to {rounded}",
            UserWarning,
            stacklevel=5,
        )
