"""The CAM methods, one small file each, registered in one table.

Adding a method: write ``def mymethod(activations, gradients) -> CamOutput`` in its own file,
add one row to :data:`METHODS`, and one parity test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from textcam.errors import TextcamError
from textcam.export.cam_methods.base import CamOutput
from textcam.export.cam_methods.cam import cam
from textcam.export.cam_methods.gradcam import gradcam
from textcam.export.cam_methods.gradcam_pp import gradcam_pp
from textcam.export.cam_methods.hirescam import hirescam
from textcam.export.cam_methods.layercam import layercam
from textcam.export.cam_methods.xgradcam import xgradcam


@dataclass(frozen=True)
class CamMethod:
    name: str
    function: Callable[..., CamOutput]
    summary: str
    needs_linear_head: bool = False
    """True for CAM: the function takes the head's class row as ``class_weights``."""
    channel_weights: bool = False
    """True when the map is sum_j w_j A_j (one weight per channel), so it splits into channel groups.
    The runtime reads this from the method's name (``textcam.runtime.manifest.CHANNEL_WEIGHT_METHODS``;
    a test keeps the two equal)."""


METHODS: dict[str, CamMethod] = {
    m.name: m
    for m in (
        CamMethod("gradcam", gradcam, "spatial mean of the gradients", channel_weights=True),
        CamMethod("gradcam++", gradcam_pp, "positive gradients with second-order weights", channel_weights=True),
        CamMethod("xgradcam", xgradcam, "gradients averaged with activation weights", channel_weights=True),
        CamMethod("hirescam", hirescam, "element-wise gradient x activation"),
        CamMethod("layercam", layercam, "element-wise positive gradient x activation"),
        CamMethod("cam", cam, "linear-head weights (global-pool + linear heads only)", needs_linear_head=True,
                  channel_weights=True),
    )
}


def get_method(name: str) -> CamMethod:
    try:
        return METHODS[name.lower()]
    except KeyError:
        raise TextcamError(
            f"method={name!r}: unknown CAM method; choose one of {', '.join(METHODS)}"
        ) from None


__all__ = ["METHODS", "CamMethod", "CamOutput", "get_method"]
