"""From network outputs (logits) to probabilities and label maps.

One rule for the command line and the plugin: several channels are classes (softmax, argmax);
one channel is a foreground logit (sigmoid, threshold at 0, i.e. probability 0.5).
"""

from __future__ import annotations

import torch

ACTIVATIONS = ("softmax", "sigmoid", "none")


def _check_activation(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def to_probabilities(logits: torch.Tensor, activation: str = "softmax") -> torch.Tensor:
    """``(C, I, J, K)`` probabilities: softmax over channels (sigmoid if ``C == 1``).

    ``activation="sigmoid"`` applies a sigmoid to each channel; ``"none"`` returns the input.

    Examples
    --------
    >>> to_probabilities(torch.zeros(2, 1, 1, 1)).flatten().tolist()
    [0.5, 0.5]
    >>> to_probabilities(torch.zeros(1, 1, 1, 1)).item()
    0.5
    """
    _check_activation(activation)
    if activation == "softmax" and logits.shape[0] > 1:
        return torch.softmax(logits, 0)
    if activation in ("softmax", "sigmoid"):
        return torch.sigmoid(logits)
    return logits


def to_labels(logits: torch.Tensor, activation: str = "softmax") -> torch.Tensor:
    """``(I, J, K)`` int64 labels: argmax over channels, or ``logit > 0`` for one channel.

    With ``activation="none"`` a single channel is taken as a probability (threshold 0.5).

    Examples
    --------
    >>> to_labels(torch.tensor([[[[0.1]]], [[[2.0]]]])).item()
    1
    >>> to_labels(torch.tensor([[[[-1.0, 1.0]]]])).tolist()
    [[[0, 1]]]
    """
    _check_activation(activation)
    if logits.shape[0] == 1:
        return (logits[0] > (0.5 if activation == "none" else 0.0)).to(torch.int64)
    return logits.argmax(0)
