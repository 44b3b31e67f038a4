"""Sampler explorer: draw a sampler's patches, the centre distribution it really uses, and the
expected (exact) against empirical coverage, with the label composition of the sample."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from magicgui.widgets import ComboBox, Container, LineEdit, PushButton, SpinBox
from napari.layers import Image, Labels

from ..core.coverage import (
    LocationCoverage,
    empirical_coverage,
    expected_coverage,
    uniform_maps,
)
from ..core.image import LabelMap, ScalarImage
from ..core.location import PatchLocation
from ..core.samplers import LabelSampler, RandomSampler, UniformSampler, WeightedSampler
from ..core.subject import Subject
from ._layers import boxes_to_vectors, centres, label_composition, locations_to_boxes
from ._napari import (
    Lifecycle,
    is_shown,
    layer_choices,
    lazy_data_of,
    message_label,
    parse_label_probabilities,
    parse_size,
    redraw_on_slice_change,
    show_layer,
    slice_position,
    volume_of,
    watch_layers,
)

SAMPLERS = ("uniform", "weighted", "label")
PATCHES, CENTRES = "sampled patches", "patch centres"
DENSE_VOXELS = 2**24  # above this, uniform maps are drawn lazily (computed per slice)
PROBABILITY, EXPECTED, EMPIRICAL = "centre probability", "expected coverage", "empirical coverage"


class SamplerExplorerWidget(Container):
    """Visual debugging of sampling strategies.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer to draw in.
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.image = ComboBox(label="image", choices=layer_choices(napari_viewer, Image))
        self.sampler = ComboBox(label="sampler", choices=SAMPLERS, value="uniform")
        self.probability = ComboBox(
            label="probability map", choices=layer_choices(napari_viewer, Image, True)
        )
        self.labels_layer = ComboBox(
            label="labels", choices=layer_choices(napari_viewer, Labels, True)
        )
        self.label_probabilities = LineEdit(label="label probabilities", value="")
        self.patch_size = LineEdit(label="patch size", value="32")
        self.num_patches = SpinBox(label="patches", value=100, min=1, max=100_000)
        self.seed = SpinBox(label="seed", value=0, min=0, max=2**31 - 1)
        self.run_button = PushButton(text="Sample")
        self.info = message_label("status")
        self.extend(
            [
                self.image,
                self.sampler,
                self.probability,
                self.labels_layer,
                self.label_probabilities,
                self.patch_size,
                self.num_patches,
                self.seed,
                self.run_button,
                self.info,
            ]
        )
        self.locations: list[PatchLocation] = []
        self.figure = None
        self._add_plot()
        self.lifecycle = Lifecycle(self)
        watch_layers(self.lifecycle, napari_viewer, self.image, self.probability, self.labels_layer)
        self.run_button.changed.connect(self.sample)
        redraw_on_slice_change(self.lifecycle, napari_viewer, self._draw_boxes)

    def _add_plot(self) -> None:
        try:
            from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
            from matplotlib.figure import Figure
        except ImportError:  # pragma: no cover - matplotlib is in the [napari] extra
            return
        self.figure = Figure(figsize=(3.2, 2.2), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(180)
        self.native.layout().addWidget(self.canvas)

    # ------------------------------------------------------------------ core calls
    def _subject(self) -> Subject:
        if self.image.value is None:
            raise ValueError("add a 3D image layer")
        data = lazy_data_of(self.image.value)  # only patches are read from a lazy image
        images: dict[str, Any] = {
            "image": ScalarImage(
                torch.from_numpy(data)[None] if isinstance(data, np.ndarray) else data
            )
        }
        if self.probability.value is not None:
            images["probability"] = ScalarImage(
                torch.from_numpy(volume_of(self.probability.value))[None]
            )
        if self.labels_layer.value is not None:
            labels = volume_of(self.labels_layer.value).astype(np.int64)
            images["labels"] = LabelMap(torch.from_numpy(labels)[None])
        return Subject(images)

    def _sampler(self, subject: Subject) -> RandomSampler:
        patch = parse_size(self.patch_size.value, "patch size")
        count, seed = int(self.num_patches.value), int(self.seed.value)
        kind = self.sampler.value
        if kind == "weighted":
            if self.probability.value is None:
                raise ValueError("the weighted sampler needs a probability map layer")
            return WeightedSampler(subject, patch, "probability", count, seed=seed)
        if kind == "label":
            if self.labels_layer.value is None:
                raise ValueError("the label sampler needs a labels layer")
            probabilities = parse_label_probabilities(self.label_probabilities.value)
            return LabelSampler(subject, patch, "labels", probabilities, count, seed=seed)
        return UniformSampler(subject, patch, count, seed=seed)

    def sample(self, *_: Any) -> list[PatchLocation]:
        """Draw the patches and show every result; returns the locations."""
        try:
            subject = self._subject()
            sampler = self._sampler(subject)
        except (ValueError, TypeError) as error:
            self.info.value = f"⚠ {error}"
            return []
        count = int(self.num_patches.value)
        self.locations = list(sampler.locations(subject, count))
        probability, expected, empirical = self._maps(sampler, subject, count)
        like = self.image.value
        show_layer(
            self.viewer,
            PROBABILITY,
            "image",
            probability,
            like=like,
            colormap="inferno",
            blending="additive",
            visible=False,
            contrast_limits=(0.0, float(max(probability.max(), 1e-12))),
        )
        limits = (0.0, float(max(expected.max(), empirical.max(), 1e-6)))
        for name, coverage in ((EXPECTED, expected), (EMPIRICAL, empirical)):
            show_layer(
                self.viewer,
                name,
                "image",
                coverage,
                like=like,
                colormap="viridis",
                blending="additive",
                visible=False,
                contrast_limits=limits,
            )
        show_layer(
            self.viewer,
            CENTRES,
            "points",
            centres(self.locations),
            like=like,
            size=2,
            face_color="orange",
        )
        self._draw_boxes()
        self._plot(sampler)
        self.info.value = (
            f"{count} patches of {sampler.patch_size} from {self.sampler.value} sampler"
        )
        return self.locations

    def _maps(self, sampler: RandomSampler, subject: Subject, count: int) -> tuple[Any, Any, Any]:
        """Centre probability, expected and empirical coverage: lazy for a huge uniform case."""
        shape = subject.spatial_shape
        if isinstance(sampler, UniformSampler) and np.prod(shape) > DENSE_VOXELS:
            probability, expected = uniform_maps(shape, sampler.patch_size, count)
            return probability, expected, LocationCoverage(self.locations, shape)
        dense = sampler.get_probability_map(subject)
        expected = expected_coverage(dense, sampler.patch_size, count)
        empirical = empirical_coverage(self.locations, shape)
        return tuple(t.numpy().astype(np.float32) for t in (dense, expected, empirical))

    def _draw_boxes(self, *_: Any, create: bool = True) -> None:
        if (
            self.lifecycle.closed
            or not self.locations
            or not is_shown(self.viewer, self.image.value)
        ):
            return
        axis, position = slice_position(self.viewer, self.image.value)
        ini, fin = locations_to_boxes(self.locations, axis, position)
        show_layer(
            self.viewer,
            PATCHES,
            "vectors",
            boxes_to_vectors(ini, fin, axis, position),
            like=self.image.value,
            create=create,
            edge_color="cyan",
            edge_width=0.5,
            vector_style="line",
            length=1.0,
        )

    # ------------------------------------------------------------------ plot
    def composition(self) -> tuple[list[int], np.ndarray, np.ndarray] | None:
        """(label values, requested centre fractions, observed centre fractions)."""
        if self.labels_layer.value is None or not self.locations:
            return None
        labels = volume_of(self.labels_layer.value)
        requested = (
            parse_label_probabilities(self.label_probabilities.value)
            if self.sampler.value == "label"
            else None
        )
        if requested:  # classes absent from the labels are not sampled: renormalised without
            present = set(np.unique(labels).tolist())
            values = sorted(v for v in requested if v in present) or sorted(requested)
            total = sum(requested[v] for v in values) or 1.0
            wanted = np.array([requested[v] / total for v in values])
        else:
            values = sorted(np.unique(labels[:: max(1, labels.shape[0] // 32)]).tolist())[:10]
            wanted = np.array(
                [(labels == v).mean() for v in values]
            )  # volume fractions as reference
        observed = label_composition(labels, self.locations, values)["centre"]
        return values, wanted, observed

    def _plot(self, sampler: RandomSampler) -> None:
        result = self.composition()
        if self.figure is None:
            return
        self.figure.clear()
        axes = self.figure.add_subplot(111)
        if result is not None:
            values, wanted, observed = result
            positions = np.arange(len(values))
            label = (
                "requested"
                if self.sampler.value == "label" and self.label_probabilities.value
                else "volume fraction"
            )
            axes.bar(positions - 0.2, wanted, 0.4, label=label)
            axes.bar(positions + 0.2, observed, 0.4, label="patch centres")
            axes.set_xticks(positions, [str(v) for v in values])
            axes.set_xlabel("label")
            axes.set_ylabel("fraction")
            axes.legend(fontsize=7)
        else:
            axes.text(
                0.5,
                0.5,
                "choose a labels layer\nto see label composition",
                ha="center",
                va="center",
            )
            axes.set_axis_off()
        self.canvas.draw_idle()
