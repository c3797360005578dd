"""The interface every graph runner implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class GraphRunner(ABC):
    """Runs the bundle's joint graph. Implementations must be safe to call from several threads."""

    name: str

    @abstractmethod
    def run(self, images: np.ndarray, target_class: np.ndarray) -> dict[str, np.ndarray]:
        """``images`` float32 [B,3,H,W], ``target_class`` int64 [B] -> outputs by name."""
