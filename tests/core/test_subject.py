import pickle

import pytest
import torch

from napari_patchwork import LabelMap, ScalarImage, Subject


def test_attribute_and_item_access(subject):
    assert subject.t1 is subject["t1"]
    assert subject.spatial_shape == (12, 10, 8)
    assert [type(i) for i in subject.get_images()] == [ScalarImage, LabelMap]
    assert list(subject.get_images_dict(intensity_only=True)) == ["t1"]


def test_missing_name_is_a_clear_error(subject):
    with pytest.raises(AttributeError, match="'t2'.*t1"):
        subject.t2
    with pytest.raises(KeyError, match="t2"):
        subject["t2"]


def test_images_must_agree_in_shape():
    with pytest.raises(ValueError, match="spatial shape"):
        Subject(a=ScalarImage(torch.zeros(1, 4, 4, 4)), b=ScalarImage(torch.zeros(1, 4, 4, 5)))


def test_pickles_for_dataloader_workers(subject):
    copy = pickle.loads(pickle.dumps(subject))
    assert torch.equal(copy.t1.data, subject.t1.data) and isinstance(copy, Subject)


def test_loaded_copy_leaves_lazy_original_unloaded(nifti_file):
    import numpy as np

    subject = Subject(t1=ScalarImage(nifti_file(np.ones((4, 4, 4), np.float32))))
    copy = subject.loaded_copy()
    assert copy.t1.is_loaded and not subject.t1.is_loaded


def test_check_image_names_the_argument(subject):
    with pytest.raises(ValueError, match="probability_map='nope'"):
        subject.check_image("nope", "probability_map")
    with pytest.raises(TypeError, match="probability_map"):
        subject.check_image(3, "probability_map")
