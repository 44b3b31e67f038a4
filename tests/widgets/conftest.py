import numpy as np
import pytest

from napari_patchwork.data import make_sample


@pytest.fixture(scope="session")
def small_sample():
    return make_sample((40, 36, 32), seed=3)


@pytest.fixture
def viewer_with_sample(make_napari_viewer, small_sample):
    viewer = make_napari_viewer()
    viewer.add_image(small_sample.image, name="image", scale=(0.5, 0.5, 0.8))
    viewer.add_labels(small_sample.labels.astype(np.int32), name="labels", scale=(0.5, 0.5, 0.8))
    viewer.add_image(small_sample.probability, name="probability", scale=(0.5, 0.5, 0.8))
    return viewer
