"""The Sampler explorer's run, off the GUI thread: settings in, one core sampler, results out.

No Qt and no viewer here (numpy, torch and the core only): :func:`sampling_steps` is what the
worker thread runs, and what :meth:`SamplerExplorerWidget.sample` exhausts synchronously.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
import torch

from napari_patchwork.core.data.image import LabelMap, ScalarImage
from napari_patchwork.core.data.location import PatchLocation
from napari_patchwork.core.data.subject import Subject
from napari_patchwork.core.samplers.coverage import (
    LocationCoverage,
    expected_coverage,
    uniform_maps,
)

from ..core.samplers import LabelSampler, RandomSampler, UniformSampler, WeightedSampler
from ._layers import centres, locations_to_boxes

DENSE_VOXELS = 2**24  # above this, uniform maps are drawn lazily (computed per slice)
CHUNK = 1_000  # patches drawn between progress reports (and chances to cancel)


class SamplingFailed(Exception):
    """Sampling failed in the worker thread (wraps errors superqt would drop)."""


@dataclass(frozen=True, eq=False)
class SamplingRequest:
    """One run's settings and data, read from the controls on the GUI thread."""

    kind: str
    patch_size: tuple[int, int, int]
    count: int
    seed: int
    image: Any
    probability: np.ndarray | None = None
    labels: Any = None
    label_probabilities: dict[int, float] | None = None

    def subject(self) -> Subject:
        """The subject sampled: image, probability map and labels when given."""
        data = self.image
        image = torch.from_numpy(data)[None] if isinstance(data, np.ndarray) else data
        images: dict[str, Any] = {"image": ScalarImage(image)}
        if self.probability is not None:
            images["probability"] = ScalarImage(torch.from_numpy(self.probability)[None])
        if self.labels is not None:
            labels = np.asarray(self.labels).astype(np.int64)
            images["labels"] = LabelMap(torch.from_numpy(labels)[None])
        return Subject(images)

    def sampler(self) -> RandomSampler:
        """The core sampler for these settings (validated against the subject when drawing)."""
        if self.kind == "weighted":
            return WeightedSampler(None, self.patch_size, "probability", seed=self.seed)
        if self.kind == "label":
            return LabelSampler(
                None, self.patch_size, "labels", self.label_probabilities, seed=self.seed
            )
        return UniformSampler(None, self.patch_size, seed=self.seed)


@dataclass(frozen=True)
class SamplingProgress:
    """What the worker reports between chunks."""

    stage: str
    done: int
    total: int


@dataclass(frozen=True, eq=False)
class Composition:
    """Label values, the reference fractions (requested or volume) and the centres' fractions."""

    values: list[int]
    wanted: np.ndarray
    observed: np.ndarray
    reference: str


@dataclass(frozen=True, eq=False)
class SamplingResult:
    """Everything one run draws, computed off the GUI thread."""

    request: SamplingRequest
    locations: list[PatchLocation]
    centres: np.ndarray
    maps: tuple[Any, Any, Any]  # centre probability, expected, empirical coverage
    composition: Composition | None


def coverage_count(locations: Sequence[PatchLocation], shape: Sequence[int]) -> np.ndarray:
    """How many patches cover each voxel (as ``empirical_coverage``; vectorised, float32)."""
    ini, fin = locations_to_boxes(locations)
    corners = [np.clip(c, 0, np.asarray(shape)) for c in (ini, fin)]
    difference = np.zeros([s + 1 for s in shape], np.int32)
    for corner in np.ndindex(2, 2, 2):  # inclusion-exclusion over the 8 box corners
        index = tuple(corners[c][:, axis] for axis, c in enumerate(corner))
        np.add.at(difference, index, (-1) ** sum(corner))
    for axis in range(3):
        difference = difference.cumsum(axis, dtype=np.int32)
    return difference[: shape[0], : shape[1], : shape[2]].astype(np.float32)


def _maps(sampler: RandomSampler, subject: Subject, locations: list[PatchLocation]) -> Any:
    """Centre probability, expected and empirical coverage: lazy for a huge uniform case."""
    shape, count = subject.spatial_shape, len(locations)
    if isinstance(sampler, UniformSampler) and np.prod(shape) > DENSE_VOXELS:
        probability, coverage = uniform_maps(shape, sampler.patch_size, count)
        return probability, coverage, LocationCoverage(locations, shape)
    dense = sampler.get_probability_map(subject)
    expected = expected_coverage(dense, sampler.patch_size, count)
    return (
        dense.numpy().astype(np.float32),
        expected.numpy().astype(np.float32),
        coverage_count(locations, shape),
    )


def _composition(request: SamplingRequest, points: np.ndarray) -> Composition | None:
    """Label fractions at the patch centres, against the requested (or volume) fractions."""
    if request.labels is None or not len(points):
        return None
    labels = np.asarray(request.labels)
    requested = request.label_probabilities if request.kind == "label" else None
    if requested:  # classes absent from the labels are not sampled: renormalised without
        present = set(np.unique(labels).tolist())
        values = sorted(v for v in requested if v in present) or sorted(requested)
        total = sum(requested[v] for v in values) or 1.0
        wanted, reference = np.array([requested[v] / total for v in values]), "requested"
    else:
        values = sorted(np.unique(labels[:: max(1, labels.shape[0] // 32)]).tolist())[:10]
        wanted, reference = np.array([(labels == v).mean() for v in values]), "volume fraction"
    index = points.astype(int)
    at_centre = labels[index[:, 0], index[:, 1], index[:, 2]]
    observed = np.array([(at_centre == v).mean() for v in values])
    return Composition(values, wanted, observed, reference)


def sampling_steps(request: SamplingRequest) -> Generator[SamplingProgress, None, SamplingResult]:
    """Draw the patches in chunks (yielding progress), then the maps and the composition."""
    try:
        subject, sampler = request.subject(), request.sampler()
        yield SamplingProgress("preparing the sampler", 0, request.count)
        draws = sampler.locations(subject, request.count)
        locations: list[PatchLocation] = []
        while len(locations) < request.count:
            locations.extend(islice(draws, min(CHUNK, request.count - len(locations))))
            yield SamplingProgress("drawing patches", len(locations), request.count)
        yield SamplingProgress("computing coverage", request.count, request.count)
        maps = _maps(sampler, subject, locations)
        points = centres(locations)
        return SamplingResult(request, locations, points, maps, _composition(request, points))
    except RuntimeError as error:  # superqt drops RuntimeErrors (no errored/finished signal)
        raise SamplingFailed(f"{type(error).__name__}: {error}") from error


def exhaust(steps: Generator[Any, None, SamplingResult]) -> SamplingResult:
    """Run ``steps`` to the end on this thread (progress ignored); returns the result."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value
