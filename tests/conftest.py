"""Shared fixtures. A small bundle is exported once per test session and shared read-only."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def small_bundle(tmp_path_factory):
    """A resnet18 (random weights, 5 classes) explained at layer4, 64x64 input."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    from textcam.export import export_bundle

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5)
    out = tmp_path_factory.mktemp("bundles") / "resnet18.textcam"
    names = ["circle", "square", "triangle", "star", "cross"]
    return export_bundle(model, "layer4", out, input_size=(64, 64), class_names=names).path
