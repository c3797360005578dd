"""``Explainer``: a bundle loaded once, explaining images from any thread."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from textcam.errors import TextcamError
from textcam.runtime import concepts
from textcam.runtime.backends import ONNXRUNTIME_BACKENDS, check_backend, create_runner
from textcam.runtime.bundle import Bundle
from textcam.runtime.explanation import Concept, Explanation, map_to_original, softmax
from textcam.runtime.images import DEFAULT_MAX_PIXELS, Geometry, load_image, preprocess
from textcam.runtime.output_checks import check_outputs
from textcam.runtime.semantics_file import SemanticsStore, read_store

ImageInput = str | Path | Image.Image | np.ndarray
MAX_BATCH_SIZE = 4096
"""Images per graph call; beyond this one call's buffers (4096 x 3 x 224 x 224 floats = 2.5 GB) swamp a host."""


class Explainer:
    """Loads a bundle and answers, per image, the predicted class and where the model looked.

    Example::

        from textcam.runtime import Explainer
        explainer = Explainer("resnet50.textcam")
        result = explainer.explain("cat.jpg")
        print(result.label, result.score)
        result.overlay(Image.open("cat.jpg")).save("cat_cam.png")

    One instance may be shared by many threads. ``allow_spinning=False`` keeps ONNX Runtime's
    idle threads from busy-waiting (use it when other compute shares the process).

    ``backend`` picks what runs the graph: ``"onnxruntime"`` (default, CPU), ``"onnxruntime-cuda"``,
    ``"onnxruntime-tensorrt"`` (onnxruntime-gpu) or ``"tensorrt"`` (the bundle's engine from
    ``textcam build-engine``); ``backend_options`` are passed to that runner, e.g.
    ``{"precision": "fp16", "contexts": 2, "cuda_graph_batch": 8}`` for TensorRT (see
    :mod:`textcam.runtime.backends`). Every backend returns the same outputs, so explanations
    look the same whichever runs them. A backend that cannot run here fails with one line naming
    the ones that can.

    When the bundle carries channel semantics (``textcam semantics``), every explanation gets
    ``concepts``: the ``top_k`` phrases chosen by diverse selection among the ``candidates``
    best-ranked ones (see :mod:`textcam.runtime.concepts`). ``beta``, ``candidates``, ``l1``,
    ``l2``, ``steps``, ``group_channels`` and ``center`` default to the bundle's
    ``manifest["semantics"]["defaults"]``. With ``use_fused`` (default) a bundle's fused graph
    (ranking inside the model) supplies the candidates.
    """

    def __init__(
        self,
        bundle: str | Path | Bundle,
        backend: str = "onnxruntime",
        providers: Sequence | None = None,
        intra_op_threads: int | None = None,
        allow_spinning: bool = True,
        batch_size: int = 16,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        *,
        use_fused: bool = True,
        top_k: int | None = None,
        beta: str | None = None,
        candidates: int | None = None,
        l1: float | None = None,
        l2: float | None = None,
        steps: int | None = None,
        group_channels: int | None = None,
        center: bool | None = None,
        backend_options: Mapping[str, object] | None = None,
    ):
        check_backend(backend)  # fail in one line before loading anything
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise TextcamError(f"batch_size={batch_size!r}: expected an integer from 1 to {MAX_BATCH_SIZE}")
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        spec = self.bundle.manifest.get("semantics") or None
        self.semantics: SemanticsStore | None = _load_store(self.bundle, spec) if spec else None
        self.concept_settings = concepts.ConceptSettings.resolve(
            (spec or {}).get("defaults"), top_k=top_k, beta=beta, candidates=candidates, l1=l1, l2=l2, steps=steps,
            group_channels=group_channels, center=center,
        )
        self._vocabulary_mean = self.semantics.text_embeddings.mean(axis=0) if self.semantics else None
        graph = self.bundle
        fused = self.bundle.manifest.get("fused_graph")
        # the fused graph ranks with one beta mode and up to its own N (capped at V: N >= V means all
        # phrases on both paths); other settings rank here
        if (self.semantics and fused and use_fused and backend == "onnxruntime"
                and fused.get("beta", self.concept_settings.beta) == self.concept_settings.beta
                and int(fused.get("candidates", 0))
                >= min(self.concept_settings.candidates, len(self.semantics.phrases))):
            graph = _FusedGraph(self.bundle, self.bundle.fused_graph_path)
        self.fused = graph is not self.bundle
        options = _runner_options(backend, providers, intra_op_threads, allow_spinning, backend_options)
        self.backend = backend
        self.runner = create_runner(backend, graph, **options)

    def close(self) -> None:
        """Release the backend's device memory now (GPU backends); the CPU backend has nothing to free."""
        close = getattr(self.runner, "close", None)
        if close:
            close()

    @property
    def classes(self) -> tuple[str, ...]:
        return self.bundle.classes

    def explain(
        self,
        images: ImageInput | Sequence[ImageInput],
        class_index: int | Sequence[int] | None = None,
        groups: bool = False,
    ) -> Explanation | list[Explanation]:
        """Explain one image (returns an Explanation) or several (returns a list).

        ``images``: a path, PIL image, uint8 HxWx3 array, a list of those, or a float32
        [B,3,H,W] batch already preprocessed (its heatmaps stay at input resolution).
        ``class_index``: the class to explain (None: the predicted one), one per image or one for all.
        ``groups``: also split the map by phrase (``Explanation.groups``); needs semantics, a
        channel-weight CAM method and a graph exported with ``--with-activations``.
        """
        if groups:
            self.check_groups()
        if isinstance(images, np.ndarray) and images.ndim == 4:
            batch = self._check_batch(images)
            return self._run(
                batch, [None] * len(batch), self._classes(class_index, len(batch)), [None] * len(batch), groups
            )
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        if not items:
            return []
        loaded = [self._decode(item) for item in items]
        tensors, geometries = zip(*(preprocess(image, self.bundle.input) for image in loaded), strict=True)
        sources = [str(item) if isinstance(item, (str, Path)) else None for item in items]
        results = self._run(
            np.stack(tensors), list(geometries), self._classes(class_index, len(items)), sources, groups
        )
        return results[0] if single else results

    def check_groups(self) -> None:
        """Raise TextcamError unless ``groups=True`` can work with this bundle."""
        if self.semantics is None:
            raise TextcamError(
                f"{self.bundle.path}: channel groups need channel semantics; run `textcam semantics` on the bundle"
            )
        concepts.check_group_method(self.bundle.method)
        if not self.bundle.manifest["graph"].get("has_activations"):
            raise TextcamError(
                f"{self.bundle.path}: channel groups need the layer's activation maps, which this graph does not "
                "output; re-export with --with-activations (export_bundle(..., with_activations=True))"
            )

    def explain_files(
        self, paths: Iterable[str | Path], class_index: int | None = None, groups: bool = False
    ) -> Iterator[tuple[Path, Explanation | TextcamError]]:
        """Yield (path, explanation) per file, or (path, error) for files that cannot be read.

        One bad file never stops the others; decoding is batched by ``batch_size``.
        """
        if groups:
            self.check_groups()
        pending: list[tuple[Path, np.ndarray, Geometry]] = []
        for path in map(Path, paths):
            try:
                tensor, geometry = preprocess(load_image(path, self.max_pixels), self.bundle.input)
            except TextcamError as exc:
                yield path, exc
                continue
            pending.append((path, tensor, geometry))
            if len(pending) == self.batch_size:
                yield from self._explain_pending(pending, class_index, groups)
                pending = []
        if pending:
            yield from self._explain_pending(pending, class_index, groups)

    def _explain_pending(self, pending, class_index, groups=False):
        files, tensors, geometries = zip(*pending, strict=True)
        classes = self._classes(class_index, len(files))
        results = self._run(np.stack(tensors), list(geometries), classes, [str(f) for f in files], groups)
        yield from zip(files, results, strict=True)

    def _decode(self, item: ImageInput) -> Image.Image:
        from textcam.runtime.images import decode

        return decode(item, self.max_pixels)

    def _check_batch(self, batch: np.ndarray) -> np.ndarray:
        spec = self.bundle.input
        expected = (3, spec.height, spec.width)
        if batch.shape[1:] != expected or not np.issubdtype(batch.dtype, np.floating):
            raise TextcamError(
                f"float batch of shape {batch.shape} and dtype {batch.dtype}: expected float32 "
                f"[B, {', '.join(map(str, expected))}], already resized and normalized"
            )
        with np.errstate(over="ignore"):  # float64 values beyond float32's range become Inf, refused below
            batch = np.ascontiguousarray(batch, dtype=np.float32)
        if not np.isfinite(batch).all():
            bad = np.unique(np.nonzero(~np.isfinite(batch))[0])
            raise TextcamError(
                f"float batch holds NaN or Inf values (image {', '.join(map(str, bad[:5]))}"
                f"{' ...' if bad.size > 5 else ''} of {len(batch)}); the graph would return a meaningless label"
            )
        return batch

    def _classes(self, class_index, count: int) -> np.ndarray:
        if class_index is None:
            return np.full(count, -1, dtype=np.int64)
        values = np.atleast_1d(np.asarray(class_index))
        if not np.issubdtype(values.dtype, np.integer):
            raise TextcamError(f"class_index {class_index!r}: expected an integer or a list of integers")
        if values.size == 1:
            values = np.repeat(values, count)
        if values.size != count:
            raise TextcamError(f"class_index: {values.size} values for {count} images")
        bad = values[(values < -1) | (values >= len(self.classes))]
        if bad.size:
            raise TextcamError(
                f"class_index {int(bad[0])} out of range: the model has {len(self.classes)} classes "
                f"(0..{len(self.classes) - 1}; -1 or omitted = predicted)"
            )
        return values.astype(np.int64)

    def _run(self, batch: np.ndarray, geometries, classes: np.ndarray, sources, groups=False) -> list[Explanation]:
        results: list[Explanation] = []
        for start in range(0, len(batch), self.batch_size):
            stop = start + self.batch_size
            outputs = self.runner.run(batch[start:stop], classes[start:stop])
            check_outputs(self.bundle, outputs, len(batch[start:stop]))
            probabilities = softmax(outputs["logits"].astype(np.float64))
            selection = self._select(outputs) if self.semantics else None
            for row, chosen in enumerate(outputs["class_index"]):
                chosen = int(chosen)
                found = [] if selection is None else [
                    Concept(self.semantics.phrases[int(i)], float(s), weight=float(wt))
                    for i, s, wt in zip(selection.ids[row], selection.scores[row], selection.weights[row], strict=True)
                ]
                results.append(
                    Explanation(
                        class_index=chosen,
                        label=self.classes[chosen],
                        score=float(probabilities[row, chosen]),
                        logits=outputs["logits"][row],
                        heatmap=map_to_original(outputs["cam"][row], geometries[start + row]),
                        channel_weights=outputs["channel_weights"][row],
                        channel_activation=outputs["channel_activation"][row],
                        source=sources[start + row],
                        concepts=found,
                        groups=self._groups(outputs, row, selection, geometries[start + row]) if groups else [],
                    )
                )
        return results

    def _select(self, outputs: dict[str, np.ndarray]) -> concepts.Selection:
        """Candidates (from the fused graph, or ranked here) and the diverse top_k, for a whole batch.

        Both paths compute q and every score here, so the fused graph only narrows down which
        phrases are scored: its ``concept_ids`` are re-ranked by (cosine, id) exactly as
        :func:`concepts.rank` ranks, and the selection is the same whichever path ran.
        """
        settings, store = self.concept_settings, self.semantics
        q = concepts.aggregate(outputs["channel_weights"], outputs["channel_activation"],
                               store.channel_semantics, settings.beta)
        among = outputs.get("concept_ids")
        ids, _scores = concepts.rank(q, store.text_embeddings, settings.candidates, among=among)
        return concepts.select_diverse(
            q, store.text_embeddings, ids, settings.l1, settings.l2, settings.steps, settings.top_k,
            center=self._vocabulary_mean if settings.center else False,
        )

    def _groups(self, outputs, row: int, selection: concepts.Selection, geometry):
        if "activations" not in outputs:
            raise TextcamError(
                f"{self.bundle.path}: the graph returned no activations; re-export with --with-activations"
            )
        spec = self.bundle.input
        groups, _rest = concepts.channel_groups(
            outputs["channel_weights"][row], outputs["channel_activation"][row], outputs["activations"][row],
            self.semantics.channel_semantics, self.semantics.text_embeddings, selection.ids[row],
            self.concept_settings.group_channels, phrases=self.semantics.phrases, method=self.bundle.method,
            input_hw=(spec.height, spec.width), geometry=geometry,
        )
        return groups

    def selftest(self) -> SelftestReport:  # noqa: F821 - imported when called (keeps the import light)
        """Hold this explainer (its backend, preprocessing and concept selection) to the bundle's
        conformance self-test; returns a :class:`textcam.runtime.selftest.SelftestReport`
        (``.passed``, ``.table()``). A bundle without a self-test raises TextcamError."""
        from textcam.runtime.selftest import run_selftest

        return run_selftest(self.bundle, explainer=self)


def _runner_options(backend, providers, intra_op_threads, allow_spinning, backend_options) -> dict:
    """The runner's keyword arguments: the ONNX Runtime settings where they apply, plus backend_options."""
    options = dict(backend_options or {})
    if backend in ONNXRUNTIME_BACKENDS:
        if providers is not None and backend != "onnxruntime":
            raise TextcamError(f"providers=: backend {backend!r} chooses its own execution providers")
        if backend == "onnxruntime":
            options.setdefault("providers", providers)
        options.setdefault("intra_op_threads", intra_op_threads)
        options.setdefault("allow_spinning", allow_spinning)
    elif providers is not None or intra_op_threads is not None:
        raise TextcamError(f"providers= and intra_op_threads= apply to the onnxruntime backends, not {backend!r}")
    return options


class _FusedGraph:
    """The bundle as a runner sees it, with the fused graph (ranking inside) in place of model.onnx."""

    def __init__(self, bundle: Bundle, model_path: Path):
        self._bundle = bundle
        self.model_path = model_path

    def __getattr__(self, name):
        return getattr(self._bundle, name)


def _load_store(bundle: Bundle, spec: dict) -> SemanticsStore:
    return read_store(bundle.semantics_path, model_sha256=bundle.model_sha256, channels=bundle.channels)
