"""The Python-backend models of a textcam Triton repository (written by :mod:`textcam.serving.triton_repo`).

- :class:`PostModel` (``textcam_post``): the graph's outputs to the answer in words: the label, its
  probability, and the diverse phrase selection of :mod:`textcam.runtime.concepts` over the bundle's
  semantics store (``concept_ids``, ``concept_scores``, ``concept_weights``, ``concept_phrases``).
  Its whole contract is tensors in, tensors out (names in docs/serving.md), so a custom backend built
  on the C++ core can take its place without touching the ensemble.
- :class:`GraphStandIn` (``textcam_graph`` with ``--graph-backend python``): ONNX Runtime inside the
  Python backend. It stands in for Triton's onnxruntime backend where a server has only the Python
  backend (the PyTriton wheel's ``tritonserver``, which the tests use); it computes the same
  tensors, more slowly.

Each model's ``model.py`` in the repository is one import of a class here, so the code that runs in
Triton is the code the tests hold to ``Explainer``. The numpy part (:class:`PostProcessor`) runs
without Triton.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from textcam.errors import TextcamError, first_line

POST_SPEC = "textcam_post.json"
POST_FORMAT = "textcam-triton-post"


class PostProcessor:
    """Graph outputs of a batch -> label, score and phrases, per image (numpy only).

    ``folder`` holds :data:`POST_SPEC` (classes, concept settings, the store's file name) and the
    semantics store. Example::

        post = PostProcessor(Path("repo/textcam_post/1"))
        answer = post({"logits": logits, "class_index": index[:, None], "channel_weights": w,
                       "channel_activation": a})
        answer["concept_phrases"][0]      # array([b'red object', ...], dtype=object)
    """

    def __init__(self, folder: Path):
        from textcam.runtime.concepts import ConceptSettings
        from textcam.runtime.semantics_file import read_store

        path = Path(folder) / POST_SPEC
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise TextcamError(f"{path}: unreadable ({first_line(exc)}); re-run `textcam triton`") from None
        if not isinstance(spec, dict) or spec.get("format") != POST_FORMAT:
            raise TextcamError(f"{path}: not a textcam post-processing spec; re-run `textcam triton`")
        self.classes = tuple(spec["classes"])
        self.settings = ConceptSettings(**spec["settings"]) if spec.get("settings") else None
        self.store = None
        if spec.get("semantics"):
            self.store = read_store(Path(folder) / spec["semantics"], model_sha256=spec["model_sha256"],
                                    channels=spec["channels"])
            self._phrases = np.array([p.encode("utf-8") for p in self.store.phrases], dtype=object)
            self._mean = self.store.text_embeddings.mean(axis=0)

    @property
    def top_k(self) -> int:
        return self.settings.top_k if self.settings else 0

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        from textcam.runtime import concepts
        from textcam.runtime.explanation import softmax

        logits = np.asarray(inputs["logits"])
        index = np.asarray(inputs["class_index"]).reshape(-1).astype(np.int64)
        if logits.ndim != 2 or logits.shape != (len(index), len(self.classes)):
            raise TextcamError(f"logits of shape {list(logits.shape)}: expected [{len(index)}, {len(self.classes)}]")
        if not np.isfinite(logits).all():
            raise TextcamError("the graph returned NaN or Inf logits; check the input image tensor")
        requested = inputs.get("target_class")
        requested = index if requested is None else np.asarray(requested).reshape(-1)
        bad = np.concatenate([requested[(requested < -1) | (requested >= len(self.classes))],
                              index[(index < 0) | (index >= len(self.classes))]])
        if bad.size:
            # the graph takes any integer (below -1 it explains the prediction): refuse rather than guess
            raise TextcamError(f"target_class {int(bad[0])} out of range: the model has {len(self.classes)} "
                               f"classes (0..{len(self.classes) - 1}; -1 = predicted)")
        probabilities = softmax(logits.astype(np.float64))
        rows = np.arange(len(index))
        result = {
            "label": np.array([[self.classes[i].encode("utf-8")] for i in index], dtype=object).reshape(-1, 1),
            "score": probabilities[rows, index].astype(np.float32).reshape(-1, 1),
        }
        if self.store is None:
            return result
        outputs = {"channel_weights": np.asarray(inputs["channel_weights"]),
                   "channel_activation": np.asarray(inputs["channel_activation"])}
        if inputs.get("candidate_ids") is not None:
            outputs["concept_ids"] = np.asarray(inputs["candidate_ids"], dtype=np.int64)
        selection = concepts.select_for_outputs(outputs, self.store.channel_semantics, self.store.text_embeddings,
                                                self.settings, self._mean)
        result.update(
            concept_ids=np.asarray(selection.ids, dtype=np.int64),
            concept_scores=np.asarray(selection.scores, dtype=np.float32),
            concept_weights=np.asarray(selection.weights, dtype=np.float32),
            concept_phrases=self._phrases[selection.ids],
        )
        return result


class _TritonModel:
    """What both models share: reading the config, gathering a list of requests into one batch
    (Triton's dynamic batcher hands over several), and answering each request with its rows.

    A subclass sets itself up in :meth:`setup` and computes a batch in :meth:`compute`.
    """

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils  # only inside Triton's Python backend

        self._pb = pb_utils
        config = json.loads(args["model_config"])
        self.input_names = [item["name"] for item in config["input"]]
        self.optional = {item["name"] for item in config["input"] if item.get("optional")}
        self.output_names = [item["name"] for item in config["output"]]
        parameters = {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
        self.setup(Path(args["model_repository"]) / str(args["model_version"]), parameters)

    def setup(self, folder: Path, parameters: dict[str, str]) -> None:
        raise NotImplementedError

    def compute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = self._pb
        arrays = [self._inputs(request) for request in requests]
        try:
            answers = self._split(self.compute(_concatenate(arrays)), [_rows(a) for a in arrays])
        except TextcamError:
            # one bad request must not fail its batch neighbours: answer each on its own
            answers = [self._alone(a) for a in arrays]
        responses = []
        for answer in answers:
            if isinstance(answer, str):
                # INVALID_ARG makes it a 400 over HTTP (older backends have no codes: 500)
                code = getattr(pb.TritonError, "INVALID_ARG", None)
                error = pb.TritonError(answer) if code is None else pb.TritonError(answer, code)
                responses.append(pb.InferenceResponse(error=error))
            else:
                tensors = [pb.Tensor(name, answer[name]) for name in self.output_names if name in answer]
                responses.append(pb.InferenceResponse(output_tensors=tensors))
        return responses

    def _inputs(self, request: Any) -> dict[str, np.ndarray]:
        found = {}
        for name in self.input_names:
            tensor = self._pb.get_input_tensor_by_name(request, name)
            if tensor is not None:
                found[name] = tensor.as_numpy()
        return found

    def _alone(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray] | str:
        try:
            return self.compute(inputs)
        except TextcamError as exc:
            return first_line(exc)

    @staticmethod
    def _split(outputs: dict[str, np.ndarray], sizes: list[int]) -> list[dict[str, np.ndarray]]:
        bounds = np.cumsum([0, *sizes])
        return [{name: value[bounds[i]:bounds[i + 1]] for name, value in outputs.items()} for i in range(len(sizes))]

    def finalize(self) -> None:
        pass


def _rows(inputs: dict[str, np.ndarray]) -> int:
    return len(next(iter(inputs.values())))


def _concatenate(arrays: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(arrays) == 1:
        return arrays[0]
    return {name: np.concatenate([a[name] for a in arrays]) for name in arrays[0]}


class PostModel(_TritonModel):
    """``textcam_post``: :class:`PostProcessor` in Triton's Python backend."""

    def setup(self, folder: Path, parameters: dict[str, str]) -> None:
        self.post = PostProcessor(folder)

    def compute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.post(inputs)


class GraphStandIn(_TritonModel):
    """``textcam_graph`` run by ONNX Runtime inside the Python backend (parameters ``graph_file``,
    ``intra_op_threads``); the tensors are those Triton's onnxruntime backend would return."""

    def setup(self, folder: Path, parameters: dict[str, str]) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        threads = int(parameters.get("intra_op_threads") or 0)
        if threads:
            options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(folder / parameters["graph_file"]), options,
                                            providers=["CPUExecutionProvider"])
        self.graph_outputs = {o.name for o in self.session.get_outputs()}

    def compute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        image = np.ascontiguousarray(inputs["image"], dtype=np.float32)
        target = np.asarray(inputs["target_class"], dtype=np.int64).reshape(-1)
        if not np.isfinite(image).all():
            raise TextcamError("image holds NaN or Inf values; send the preprocessed float32 tensor")
        wanted = [name for name in self.output_names if name in self.graph_outputs]
        try:
            values = self.session.run(wanted, {"image": image, "target_class": target})
        except Exception as exc:  # ONNX Runtime raises its own types for bad values (e.g. a class index)
            raise TextcamError(f"the graph refused the request ({first_line(exc)})") from None
        outputs = dict(zip(wanted, values, strict=True))
        if "class_index" in outputs:
            # the ensemble's tensor is [batch, 1] (Triton cannot batch a 0-d tensor)
            outputs["class_index"] = outputs["class_index"].reshape(-1, 1)
        return outputs
