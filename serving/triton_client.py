"""Calling a textcam Triton repository's ensemble from Python, and holding the server to the bundle's self-test.

Needs ``tritonclient[http]`` (the ``[triton]`` extra). Example::

    from textcam.serving.triton_client import TritonClient
    client = TritonClient("127.0.0.1:8000")
    answer = client.infer(batch)                 # float32 [B, 3, H, W], preprocessed
    answer["label"], answer["concept_phrases"]   # bytes arrays [B, 1] and [B, top_k]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from textcam.errors import TextcamError, first_line
from textcam.runtime.bundle import Bundle
from textcam.serving.triton_repo import ENSEMBLE

DEFAULT_TIMEOUT_S = 60.0


class TritonClient:
    """One HTTP connection to a Triton server that serves a textcam repository (model ``textcam``).

    :meth:`infer` splits a batch into the ensemble's ``max_batch_size`` and returns every output
    by name, ``class_index`` as int64 [B]. Errors are one-line TextcamErrors naming the server.
    One client per thread: tritonclient's HTTP connection (gevent) cannot be used from another thread.
    """

    def __init__(self, url: str, model: str = ENSEMBLE, timeout_s: float = DEFAULT_TIMEOUT_S):
        try:
            import tritonclient.http as http
        except ImportError:
            raise TextcamError("the Triton client is not installed: pip install 'textcam[triton]'") from None
        self._http = http
        self.url, self.model = url, model
        try:
            self.client = http.InferenceServerClient(url, connection_timeout=timeout_s, network_timeout=timeout_s)
            config = self.client.get_model_config(model)
        except Exception as exc:  # tritonclient raises its own and socket errors
            raise TextcamError(f"--triton {url}: no textcam model {model!r} answers there ({first_line(exc)}); "
                               "start tritonserver with the repository `textcam triton` wrote") from None
        self.max_batch_size = max(int(config.get("max_batch_size", 1)), 1)
        self.outputs = [item["name"] for item in config.get("output", [])]

    def infer(self, batch: np.ndarray, target_class: int | Sequence[int] | None = None) -> dict[str, np.ndarray]:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        targets = np.full(len(batch), -1, dtype=np.int64) if target_class is None else \
            np.broadcast_to(np.asarray(target_class, dtype=np.int64), (len(batch),))
        parts = []
        for start in range(0, len(batch), self.max_batch_size):
            chunk = batch[start:start + self.max_batch_size]
            inputs = [self._http.InferInput("image", list(chunk.shape), "FP32"),
                      self._http.InferInput("target_class", [len(chunk), 1], "INT64")]
            inputs[0].set_data_from_numpy(chunk)
            inputs[1].set_data_from_numpy(np.ascontiguousarray(targets[start:start + len(chunk)].reshape(-1, 1)))
            try:
                result = self.client.infer(self.model, inputs)
            except Exception as exc:
                raise TextcamError(f"--triton {self.url}: the request failed ({first_line(exc)})") from None
            parts.append({name: result.as_numpy(name) for name in self.outputs})
        answer = {name: np.concatenate([p[name] for p in parts]) for name in self.outputs}
        answer["class_index"] = answer["class_index"].reshape(-1)
        return answer

    def close(self) -> None:
        self.client.close()


def triton_selftest(bundle: str | Path | Bundle, url: str):
    """Hold the Triton server at ``url`` (serving ``bundle``'s repository) to the bundle's self-test.

    The images are preprocessed here (the ensemble takes preprocessed tensors, as its clients send
    them); graph, heatmap and phrases come from the server. Returns a
    :class:`~textcam.runtime.selftest.SelftestReport` (``.passed``, ``.table()``).
    """
    from textcam.runtime.selftest import host_report, read_selftest

    bundle = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
    data = read_selftest(bundle)
    client = TritonClient(url)
    if data.settings is not None and "concept_ids" not in client.outputs:
        raise TextcamError(f"--triton {url}: the server returns no phrases but the self-test checks them; "
                           "write the repository from the bundle with semantics")
    try:
        return host_report(bundle, data, f"triton ({url})", "fp32", client.infer)
    finally:
        client.close()
