import numpy as np
import pytest

from napari_patchwork.widgets import SamplerExplorerWidget
from napari_patchwork.widgets.sampler_explorer import (
    CENTRES,
    EMPIRICAL,
    EXPECTED,
    PATCHES,
    PROBABILITY,
)


def inside(locations, shape):
    return all(loc.inside(shape) for loc in locations)


@pytest.mark.parametrize("kind", ["uniform", "weighted", "label"])
def test_sampled_centres_lie_in_the_allowed_region(viewer_with_sample, kind):
    viewer = viewer_with_sample
    widget = SamplerExplorerWidget(viewer)
    widget.sampler.value = kind
    widget.probability.value = viewer.layers["probability"]
    widget.labels_layer.value = viewer.layers["labels"]
    widget.patch_size.value = "10"
    widget.num_patches.value = 150
    locations = widget.sample()
    shape = viewer.layers["image"].data.shape
    assert len(locations) == 150 and inside(locations, shape)
    probability = viewer.layers[PROBABILITY].data
    assert abs(probability.sum() - 1) < 1e-5
    assert all(probability[loc.center] > 0 for loc in locations)
    if kind == "label":
        labels = viewer.layers["labels"].data
        assert all(labels[loc.center] > 0 for loc in locations)  # default: foreground only
    points = viewer.layers[CENTRES].data
    assert np.array_equal(points, np.array([loc.center for loc in locations], float))
    assert len(viewer.layers[PATCHES].data) > 0


def test_expected_and_empirical_coverage_agree_in_total(viewer_with_sample):
    widget = SamplerExplorerWidget(viewer_with_sample)
    widget.patch_size.value = "8"
    widget.num_patches.value = 400
    widget.sample()
    expected = viewer_with_sample.layers[EXPECTED].data
    empirical = viewer_with_sample.layers[EMPIRICAL].data
    assert np.isclose(expected.sum(), 400 * 8**3, rtol=1e-4)
    assert empirical.sum() == 400 * 8**3
    assert np.corrcoef(expected.ravel(), empirical.ravel())[0, 1] > 0.8


def test_label_composition_follows_requested_probabilities(viewer_with_sample):
    widget = SamplerExplorerWidget(viewer_with_sample)
    widget.sampler.value = "label"
    widget.labels_layer.value = viewer_with_sample.layers["labels"]
    widget.label_probabilities.value = "0: 0.5, 1: 0.3, 2: 0.2"
    widget.patch_size.value = "8"
    widget.num_patches.value = 2000
    widget.sample()
    values, requested, observed = widget.composition()
    assert values == [0, 1, 2]
    assert np.allclose(requested, [0.5, 0.3, 0.2])
    assert np.allclose(observed, requested, atol=0.05)
    assert widget.figure.axes and len(widget.figure.axes[0].patches) == 6  # two bars per label


def test_seed_makes_samples_reproducible(viewer_with_sample):
    widget = SamplerExplorerWidget(viewer_with_sample)
    widget.seed.value = 7
    first = [loc.index for loc in widget.sample()]
    assert [loc.index for loc in widget.sample()] == first
    widget.seed.value = 8
    assert [loc.index for loc in widget.sample()] != first


def test_missing_map_is_a_message(viewer_with_sample):
    widget = SamplerExplorerWidget(viewer_with_sample)
    widget.sampler.value = "weighted"
    assert widget.sample() == []
    assert "probability map" in widget.info.value


def test_uniform_sampling_on_a_huge_lazy_volume(make_napari_viewer, tmp_path):
    """A 1000³ zarr layer (4 GB as float32): patches are read one by one, the maps are lazy."""
    zarr = pytest.importorskip("zarr")
    array = zarr.create_array(
        tmp_path / "big.zarr", shape=(1000, 1000, 1000), chunks=(64, 64, 64), dtype="float32"
    )
    viewer = make_napari_viewer()
    viewer.add_image(array, contrast_limits=(0, 1), name="image")
    widget = SamplerExplorerWidget(viewer)
    widget.patch_size.value, widget.num_patches.value = "96", 20
    locations = widget.sample()
    assert len(locations) == 20 and all(loc.inside((1000,) * 3) for loc in locations)
    expected = viewer.layers[EXPECTED].data
    empirical = viewer.layers[EMPIRICAL].data
    assert expected.shape == empirical.shape == (1000, 1000, 1000)
    first = locations[0]
    centre = first.center
    assert empirical[centre] >= 1  # read for one voxel, never whole
    assert 0 < float(expected[500, 500, 500]) < 1  # 20 patches of 96³ in a 1000³ volume


def test_every_field_has_a_tooltip(viewer_with_sample):
    widget = SamplerExplorerWidget(viewer_with_sample)
    for control in [*widget.controls, widget.run_button, widget.reroll_button]:
        assert control.native.toolTip(), control.label
    assert "'32, 32, 16'" in widget.patch_size.tooltip and "voxels" in widget.patch_size.tooltip
    assert type(widget.num_patches).__name__ == type(widget.seed).__name__ == "SpinBox"


def test_plot_follows_the_dark_theme_with_a_legend_in_the_label_colours(viewer_with_sample):
    from matplotlib.colors import to_rgba
    from napari.utils.theme import get_theme

    viewer = viewer_with_sample
    widget = SamplerExplorerWidget(viewer)
    widget.labels_layer.value = viewer.layers["labels"]
    widget.patch_size.value, widget.num_patches.value = "8", 300
    widget.sample()
    theme = get_theme(viewer.theme)
    axes = widget.figure.axes[0]
    assert np.allclose(widget.figure.get_facecolor(), to_rgba(str(theme.background)))
    assert np.allclose(axes.get_facecolor(), to_rgba(str(theme.background)))
    assert np.allclose(to_rgba(axes.xaxis.label.get_color()), to_rgba(str(theme.text)))
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    assert legend == ["volume fraction", "patch centres", "label 0", "label 1", "label 2"]
    observed = axes.patches[3:]  # filled bars: the patch centres, one per label
    colour = viewer.layers["labels"].get_color(1)
    assert np.allclose(observed[1].get_facecolor(), colour)


def test_core_messages_are_in_the_widget_words(viewer_with_sample):
    viewer = viewer_with_sample
    widget = SamplerExplorerWidget(viewer)
    widget.sampler.value = "label"
    widget.labels_layer.value = viewer.layers["labels"]
    widget.label_probabilities.value = "7: 1"
    widget.patch_size.value = "8"
    assert widget.sample() == []
    assert "label probabilities" in widget.info.value
    assert "label_probabilities" not in widget.info.value
    widget.label_probabilities.value = "1: -1"
    assert "label probabilities must not be negative" in widget.info.value
    widget.label_probabilities.value = ""
    viewer.add_labels(np.zeros((4, 4, 4), np.int32), name="small labels")
    widget.labels_layer.value = viewer.layers["small labels"]
    assert "labels 'small labels' is 4×4×4 voxels, the image 40×36×32 voxels" in widget.info.value


def test_vectorised_coverage_equals_the_core(viewer_with_sample):
    from napari_patchwork.core.data.location import PatchLocation
    from napari_patchwork.core.samplers.coverage import empirical_coverage
    from napari_patchwork.widgets.sampler_explorer import coverage_count

    rng = np.random.default_rng(0)
    locations = [
        PatchLocation(tuple(rng.integers(-3, 12, 3)), tuple(rng.integers(1, 6, 3)))
        for _ in range(200)
    ]
    assert np.array_equal(
        coverage_count(locations, (12, 10, 9)), empirical_coverage(locations, (12, 10, 9)).numpy()
    )


def test_plot_follows_a_theme_change(viewer_with_sample):
    from matplotlib.colors import to_rgba
    from napari.utils.theme import get_theme

    viewer = viewer_with_sample
    widget = SamplerExplorerWidget(viewer)
    widget.labels_layer.value = viewer.layers["labels"]
    widget.patch_size.value = "8"
    widget.sample()
    viewer.theme = "light"
    light = to_rgba(str(get_theme("light").background))
    assert np.allclose(widget.figure.get_facecolor(), light)
    assert len(widget.figure.axes[0].patches) == 6  # the bars are redrawn, not lost
