"""The interface every graph runner implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class GraphRunner(ABC):
    """Runs the bundle's joint graph. Implementations must be safe to call from several threads.

    A runner is built on a :class:`~textcam.runtime.bundle.Bundle` and loads its ``model_path``;
    to run another graph (the fused ranking graph, a pruned copy) pass ``bundle.with_graph(...)``.
    """

    name: str

    @abstractmethod
    def run(self, images: np.ndarray, target_class: np.ndarray) -> dict[str, np.ndarray]:
        """``images`` float32 [B,3,H,W], ``target_class`` int64 [B] -> outputs by name."""

    def close(self) -> None:  # noqa: B027 - a no-op by default, not abstract: CPU runners hold nothing to free
        """Release what the runner holds outside Python's memory (GPU buffers, engines) now.

        The default does nothing; GPU runners free their device memory. Safe to call twice.
        """
