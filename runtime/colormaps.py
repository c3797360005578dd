"""Heatmap colouring without matplotlib: piecewise-linear colormaps as 256-entry lookup tables."""

from __future__ import annotations

import numpy as np

from textcam.errors import TextcamError

# (position, r, g, b) control points
_CONTROL_POINTS = {
    "jet": [(0.0, 0, 0, 0.5), (0.11, 0, 0, 1), (0.125, 0, 0, 1), (0.34, 0, 0.86, 1), (0.35, 0, 0.9, 0.97),
            (0.64, 1, 1, 0), (0.65, 1, 0.96, 0), (0.89, 1, 0, 0), (1.0, 0.5, 0, 0)],
    "inferno": [(0.0, 0, 0, 0.016), (0.25, 0.34, 0.06, 0.43), (0.5, 0.73, 0.21, 0.33),
                (0.75, 0.98, 0.55, 0.04), (1.0, 0.99, 1.0, 0.64)],
    "gray": [(0.0, 0, 0, 0), (1.0, 1, 1, 1)],
}
COLORMAPS = tuple(_CONTROL_POINTS)


def lookup_table(name: str) -> np.ndarray:
    """[256, 3] uint8 colours for ``name``."""
    if name not in _CONTROL_POINTS:
        raise TextcamError(f"colormap {name!r}: choose one of {', '.join(COLORMAPS)}")
    points = np.asarray(_CONTROL_POINTS[name], dtype=np.float64)
    x = np.linspace(0.0, 1.0, 256)
    channels = [np.interp(x, points[:, 0], points[:, c]) for c in (1, 2, 3)]
    return np.clip(np.stack(channels, axis=1) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def colorize(heatmap: np.ndarray, name: str = "jet") -> np.ndarray:
    """[H, W] values in [0, 1] -> [H, W, 3] uint8 RGB."""
    index = np.clip(np.asarray(heatmap, dtype=np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return lookup_table(name)[index]
