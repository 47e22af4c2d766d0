"""The model: a small multilayer perceptron, built from a plain description."""

from __future__ import annotations

import torch
from torch import nn


def make_model(n_features: int, n_classes: int, hidden_sizes: list[int], dropout: float = 0.0) -> nn.Module:
    layers: list[nn.Module] = []
    width = n_features
    for size in hidden_sizes:
        layers += [nn.Linear(width, size), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = size
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


def save(model: nn.Module, spec: dict, path) -> None:
    """Save weights together with the spec needed to rebuild the model."""
    torch.save({"spec": spec, "state_dict": model.state_dict()}, path)


def load(path) -> tuple[nn.Module, dict]:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    spec = checkpoint["spec"]
    model = make_model(**spec)
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    return model, spec
