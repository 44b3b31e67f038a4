"""Logits to probabilities and labels: one rule for the CLI and the plugin."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_patchwork.core.inference.postprocess import to_labels, to_probabilities


@settings(max_examples=30, deadline=None)
@given(channels=st.integers(2, 5), seed=st.integers(0, 1000))
def test_softmax_sums_to_one_and_labels_are_its_argmax(channels, seed):
    logits = torch.randn(channels, 3, 4, 2, generator=torch.Generator().manual_seed(seed))
    probabilities = to_probabilities(logits)
    assert torch.allclose(probabilities.sum(0), torch.ones(3, 4, 2), atol=1e-6)
    assert torch.equal(to_labels(logits), probabilities.argmax(0))
    assert to_labels(logits).dtype == torch.int64


def test_one_channel_is_a_foreground_logit():
    logits = torch.tensor([-2.0, -1e-3, 1e-3, 3.0]).reshape(1, 4, 1, 1)
    assert to_labels(logits).flatten().tolist() == [0, 0, 1, 1]
    assert torch.allclose(to_probabilities(logits), torch.sigmoid(logits))
    probabilities = torch.tensor([0.2, 0.49, 0.51, 0.9]).reshape(1, 4, 1, 1)
    assert to_labels(probabilities, activation="none").flatten().tolist() == [0, 0, 1, 1]


def test_sigmoid_per_channel_and_none_passes_through():
    logits = torch.randn(3, 2, 2, 2)
    assert torch.allclose(to_probabilities(logits, "sigmoid"), torch.sigmoid(logits))
    assert to_probabilities(logits, "none") is logits


def test_unknown_activation_is_named():
    with pytest.raises(ValueError, match="activation.*'relu'"):
        to_probabilities(torch.zeros(2, 1, 1, 1), "relu")
    with pytest.raises(ValueError, match="activation.*'relu'"):
        to_labels(torch.zeros(2, 1, 1, 1), "relu")
