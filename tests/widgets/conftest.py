"""Widget tests: fixtures, and the ``display`` mark on every test here that opens a window."""

from pathlib import Path

import numpy as np
import pytest

from napari_patchwork.data import make_sample

HERE = Path(__file__).parent
#: Modules of this folder that test pure converters and need no display.
HEADLESS_MODULES = {"test_layers.py"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the widget tests ``display`` (skipped without one, see tests/conftest.py): also
    those that run napari in a subprocess, which request no Qt fixture."""
    for item in items:
        path = Path(item.path)
        if path.parent == HERE and path.name not in HEADLESS_MODULES:
            item.add_marker(pytest.mark.display)


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


@pytest.fixture(autouse=True)
def _collector_settled():
    """After each test the collection waiting for the user's pause runs (widgets/_workers.py)."""
    yield
    from napari_patchwork.widgets import _workers

    # tests follow each other with no pause for the idle collection: without this, every
    # closed viewer of the process would stay frozen, uncollected, until the last test
    if _workers._idle_collection is not None and _workers._CollectorHold.idle():
        _workers._idle_collection.collect_now()
