"""The CAM method table (export) and what the torch-free runtime knows about the methods agree."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from textcam.export.cam_methods import METHODS  # noqa: E402
from textcam.export.joint_graph import finish_map as torch_finish_map  # noqa: E402
from textcam.runtime import heatmap  # noqa: E402
from textcam.runtime.manifest import CAM_METHODS, CHANNEL_WEIGHT_METHODS  # noqa: E402


def test_channel_weight_flag_agrees_with_the_runtime_list():
    assert tuple(METHODS) == CAM_METHODS
    assert tuple(name for name, method in METHODS.items() if method.channel_weights) == CHANNEL_WEIGHT_METHODS


def test_the_torch_map_finish_is_the_runtime_one():
    rng = np.random.default_rng(0)
    saliency = rng.standard_normal((2, 7, 5))
    got = torch_finish_map(torch.tensor(saliency), (7, 5), (32, 24)).numpy()
    for row in range(2):
        np.testing.assert_allclose(got[row], heatmap.finish_map(saliency[row], (32, 24)), atol=1e-6)
