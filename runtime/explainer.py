"""``Explainer``: a bundle loaded once, explaining images from any thread."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from textcam.errors import TextcamError
from textcam.runtime import concepts
from textcam.runtime.backends import ONNXRUNTIME_BACKENDS, check_backend, check_options, create_runner
from textcam.runtime.backends.base import GraphRunner
from textcam.runtime.bundle import Bundle
from textcam.runtime.bundle_files import read_manifest
from textcam.runtime.concepts import ConceptSettings
from textcam.runtime.explanation import Concept, Explanation, softmax
from textcam.runtime.fused_ranking import fused_graph_fits
from textcam.runtime.heatmap import map_to_original
from textcam.runtime.images import DEFAULT_MAX_PIXELS, Geometry, decode, load_image, preprocess
from textcam.runtime.native import NATIVE_BACKENDS, NativeCore, decodes_natively, native_module
from textcam.runtime.output_checks import check_outputs
from textcam.runtime.semantics_file import SemanticsStore, read_store

ImageInput = str | Path | Image.Image | np.ndarray
MAX_BATCH_SIZE = 4096
"""Images per graph call; beyond this one call's buffers (4096 x 3 x 224 x 224 floats = 2.5 GB) swamp a host."""


class Explainer:
    """Loads a bundle and answers, per image, the predicted class and where the model looked.

    Build one object, call it::

        from textcam.runtime import Explainer
        with Explainer("resnet50.textcam") as explainer:
            result = explainer.explain("cat.jpg")            # one image -> one Explanation
            print(result.label, result.score)
            result.overlay("cat.jpg").save("cat_cam.png")
            results = explainer.explain_batch(["a.jpg", "b.jpg"])   # -> list[Explanation]

    One instance may be shared by many threads. ``close()`` (or leaving the ``with`` block)
    frees a GPU backend's device memory at once.

    ``backend`` picks what runs the graph: ``"onnxruntime"`` (default, CPU), ``"onnxruntime-cuda"``,
    ``"onnxruntime-tensorrt"`` (onnxruntime-gpu) or ``"tensorrt"`` (the bundle's engine from
    ``textcam build-engine``). ``backend_options`` are that runner's keyword arguments, grouped as
    ONNX Runtime groups a session's options (see :mod:`textcam.runtime.backends`)::

        Explainer(bundle, backend_options={"intra_op_threads": 2, "allow_spinning": False})
        Explainer(bundle, backend="tensorrt", backend_options={"precision": "fp16", "contexts": 2})

    For ``onnxruntime``: ``providers``, ``intra_op_threads``, ``allow_spinning`` (False keeps ONNX
    Runtime's idle threads from busy-waiting; use it when other compute shares the process). Every
    backend returns the same outputs, so explanations look the same whichever runs them. A
    backend that cannot run here, or an option it does not take, fails with one line.

    When the bundle carries channel semantics (``textcam semantics``), every explanation gets
    ``concepts``: the ``top_k`` phrases chosen by diverse selection among the ``candidates``
    best-ranked ones (see :mod:`textcam.runtime.concepts`). ``concepts`` sets how:

    - a dict of some settings, e.g. ``concepts={"top_k": 3, "beta": "weights"}``: the rest (and
      any given as None) come from the bundle's ``manifest["semantics"]["defaults"]``;
    - a :class:`~textcam.runtime.concepts.ConceptSettings`: exactly those settings;
    - None (default): the bundle's defaults.

    With ``use_fused`` (default) a bundle's fused graph (ranking inside the model) supplies the
    candidates when it ranks as the settings ask; the phrases are the same either way (only the
    graph that runs differs, which is why it is not a concept setting).

    ``batch_size``: images per graph call. ``max_pixels``: the largest image decoded.

    ``native``: run each explanation in the C++ core (:mod:`textcam.runtime.native`; ``pip install
    ./native``) for the ONNX Runtime backends. None (default): when installed and not switched off by
    ``TEXTCAM_NATIVE=0``; False: the numpy path; True: the core or a one-line error. Answers and
    errors are the same either way.

    Deprecated (one release; each warns with the new spelling): ``providers=``,
    ``intra_op_threads=``, ``allow_spinning=`` (now ``backend_options``), ``top_k=``, ``beta=``,
    ``candidates=``, ``l1=``, ``l2=``, ``steps=``, ``group_channels=``, ``center=`` (now
    ``concepts``); ``explain(list)`` and ``explain(float batch)`` (now :meth:`explain_batch`).
    """

    def __init__(
        self,
        bundle: str | Path | Bundle,
        backend: str = "onnxruntime",
        backend_options: Mapping[str, object] | None = None,
        *,
        concepts: ConceptSettings | Mapping[str, object] | None = None,
        batch_size: int = 16,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        use_fused: bool = True,
        native: bool | None = None,
        **deprecated,
    ):
        unknown = [name for name in deprecated if name not in _DEPRECATED_BACKEND + _DEPRECATED_CONCEPTS]
        if unknown:
            raise TypeError(f"Explainer() got an unexpected keyword argument {unknown[0]!r}")
        check_backend(backend)  # fail in one line before loading anything
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise TextcamError(f"batch_size={batch_size!r}: expected an integer from 1 to {MAX_BATCH_SIZE}")
        options = _backend_options(backend, backend_options, deprecated)
        overrides = _concept_overrides(concepts, deprecated)
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        info = self.bundle.info
        self.semantics: SemanticsStore | None = None
        if info.semantics:
            self.semantics = read_store(self.bundle.semantics_path, model_sha256=self.bundle.model_sha256,
                                        channels=self.bundle.channels)
        if isinstance(concepts, ConceptSettings):
            concepts.check()
            self.concept_settings = concepts
        else:
            self.concept_settings = ConceptSettings.resolve(info.semantics.defaults if info.semantics else None,
                                                            **overrides)
        self._vocabulary_mean = self.semantics.text_embeddings.mean(axis=0) if self.semantics else None
        graph = self.bundle
        fused = info.fused_graph
        # the fused graph ranks with one beta mode and up to its own N (capped at V: N >= V means all
        # phrases on both paths); other settings rank here
        if (self.semantics and fused and use_fused and backend == "onnxruntime"
                and fused_graph_fits(fused, self.concept_settings.beta, self.concept_settings.candidates,
                                     len(self.semantics.phrases))):
            graph = self.bundle.with_fused_graph()
        self.fused = graph is not self.bundle
        self.backend = backend
        self._graph, self._options = graph, options
        self._runner: GraphRunner | None = None
        self._core = self._native_core(native, backend, options, use_fused)
        if self._core is None:
            self._runner = create_runner(backend, graph, **options)
        else:
            self.fused = self._core.fused

    def _native_core(self, native: bool | None, backend: str, options: dict, use_fused: bool) -> NativeCore | None:
        if native not in (None, True, False):
            raise TextcamError(f"native={native!r}: expected True, False or None (use the core when installed)")
        check_options(backend, options)  # the same one-line errors whichever path runs
        module = None if native is False else native_module(force=bool(native))
        if module is not None and options.get("providers") is not None:
            # an explicit provider list is the Python runner's (the core picks providers by backend)
            if native:
                raise TextcamError("native=True: the native core chooses its execution providers by backend; "
                                   "drop backend_options['providers'] or pass native=False")
            module = None
        if module is not None and options.get("prepack_weights") is False:
            # the core's sessions always pre-pack (its C API takes threads and spinning only)
            if native:
                raise TextcamError("native=True: the native core cannot run without pre-packed weights; drop "
                                   "backend_options['prepack_weights'] or pass native=False")
            module = None
        if module is not None and not self._bundle_on_disk():
            # a Bundle seen through a manifest not (yet) on disk, or with a graph of the caller's own:
            # the core reads the directory, so it would explain another bundle
            if native:
                raise TextcamError(f"native=True: {self.bundle.path} is not the bundle on disk (a staged manifest "
                                   "or another graph); open it by path")
            module = None
        if native and module is None:
            raise TextcamError("native=True: the native core is not installed; pip install ./native "
                               "(docs/native.md)")
        if module is None or backend not in NATIVE_BACKENDS:
            if native:
                raise TextcamError(f"native=True: the native core runs {', '.join(NATIVE_BACKENDS)}, not {backend!r}")
            return None
        settings = {name: getattr(self.concept_settings, name) for name in ConceptSettings.__dataclass_fields__}
        return NativeCore(module, self.bundle.path, backend, options, settings, self.batch_size, self.max_pixels,
                          use_fused)

    def _bundle_on_disk(self) -> bool:
        if self.bundle.graph_file is not None:
            return False
        try:
            return read_manifest(self.bundle.path) == self.bundle.info
        except TextcamError:
            return False

    @property
    def native(self) -> bool:
        """True when explanations run in the C++ core (:mod:`textcam.runtime.native`)."""
        return self._core is not None

    @property
    def runner(self) -> GraphRunner:
        """The Python graph runner (made on first use when the native core runs the explanations)."""
        if self._runner is None:
            self._runner = create_runner(self.backend, self._graph, **self._options)
        return self._runner

    @runner.setter
    def runner(self, runner: GraphRunner) -> None:
        """Run the graph with ``runner`` from now on (the numpy path: the native core runs its own graph)."""
        self._runner = runner
        self._core = None

    def close(self) -> None:
        """Release the backend's device memory now (GPU backends); the CPU backend has nothing to free."""
        if self._runner is not None:
            self._runner.close()
        self._core = None

    def __enter__(self) -> Explainer:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    @property
    def classes(self) -> tuple[str, ...]:
        return self.bundle.classes

    def explain(
        self,
        image: ImageInput,
        class_index: int | None = None,
        groups: bool = False,
    ) -> Explanation:
        """Explain one image; returns its :class:`Explanation` (heatmap at the image's resolution).

        ``image``: a path, a PIL image or a uint8 HxWx3 array. ``class_index``: the class to explain
        (None or -1: the predicted one). ``groups``: also split the map by phrase
        (``Explanation.groups``); needs semantics, a channel-weight CAM method and a graph exported
        with ``with_activations=True``. For several images use :meth:`explain_batch`::

            result = explainer.explain("cat.jpg", class_index=3)
            print(result.label, result.score, [c.phrase for c in result.concepts])
        """
        if isinstance(image, (list, tuple)) or (isinstance(image, np.ndarray) and image.ndim == 4):
            warnings.warn(
                "Explainer.explain(list or float batch) is deprecated: use explain_batch(images), which always "
                "returns a list; explain(image) takes one image", DeprecationWarning, stacklevel=2,
            )
            return self.explain_batch(image, class_index, groups)
        if groups:
            self.check_groups()
        if self._core is not None:
            return self._native_explain([image], self.check_class_index(class_index, 1), groups)[0]
        tensor, geometry = preprocess(self._decode(image), self.bundle.input)
        source = str(image) if isinstance(image, (str, Path)) else None
        return self._run(tensor[None], [geometry], self.check_class_index(class_index, 1), [source], groups)[0]

    def explain_batch(
        self,
        images: Sequence[ImageInput] | np.ndarray,
        class_index: int | Sequence[int] | None = None,
        groups: bool = False,
    ) -> list[Explanation]:
        """Explain several images; returns one :class:`Explanation` per image, in order (a list, always).

        ``images``: a list of paths, PIL images or uint8 HxWx3 arrays, or a float32 [B,3,H,W] batch
        already preprocessed (its heatmaps stay at input resolution). ``class_index``: one class for
        all, one per image, or None (the predicted ones). Graph calls take ``batch_size`` images.
        For files on disk, :meth:`explain_files` reads them batch by batch and skips bad ones::

            results = explainer.explain_batch(["a.jpg", "b.jpg"], class_index=[0, 4])
            results = explainer.explain_batch(np.zeros((8, 3, 224, 224), np.float32))
        """
        if groups:
            self.check_groups()
        if isinstance(images, np.ndarray) and images.ndim == 4:
            batch = self._check_batch(images)
            count = len(batch)
            if self._core is not None:
                return self._core.explain_floats(batch, self.check_class_index(class_index, count), groups)
            return self._run(batch, [None] * count, self.check_class_index(class_index, count), [None] * count,
                             groups)
        if not isinstance(images, (list, tuple)):
            raise TextcamError(
                f"images of type {type(images).__name__}: explain_batch takes a list of images or a float "
                "[B,3,H,W] batch; for one image use explain(image)"
            )
        if not images:
            return []
        classes = self.check_class_index(class_index, len(images))
        if self._core is not None:
            return self._native_explain(images, classes, groups)
        loaded = [self._decode(item) for item in images]
        tensors, geometries = zip(*(preprocess(image, self.bundle.input) for image in loaded), strict=True)
        sources = [str(item) if isinstance(item, (str, Path)) else None for item in images]
        return self._run(np.stack(tensors), list(geometries), classes, sources, groups)

    def check_groups(self) -> None:
        """Raise TextcamError unless ``groups=True`` can work with this bundle."""
        if self.semantics is None:
            raise TextcamError(
                f"{self.bundle.path}: channel groups need channel semantics; run `textcam semantics` on the bundle"
            )
        concepts.check_group_method(self.bundle.method)
        if not self.bundle.info.graph.has_activations:
            raise TextcamError(
                f"{self.bundle.path}: channel groups need the layer's activation maps, which this graph does not "
                "output; re-export with with_activations=True (textcam export --with-activations)"
            )

    def explain_files(
        self, paths: Iterable[str | Path], class_index: int | None = None, groups: bool = False, *,
        with_images: bool = False,
    ) -> Iterator[tuple]:
        """Yield (path, explanation) per file, or (path, error) for files that cannot be read.

        One bad file never stops the others; decoding is batched by ``batch_size``. With
        ``with_images=True`` each item is (path, explanation or error, image): the decoded upright
        RGB image (None for an error), e.g. for :meth:`Explanation.overlay` without decoding the file
        again. Batches then also end once their decoded images hold ``max_pixels`` pixels in all,
        so the images kept cost about what one image at the limit costs::

            for path, result, image in explainer.explain_files(paths, with_images=True):
                if not isinstance(result, TextcamError):
                    result.overlay(image).save(f"{path.stem}.cam.png")
        """
        if groups:
            self.check_groups()
        if self._core is not None and not with_images:
            yield from self._native_files(paths, class_index, groups)
            return
        pending: list[tuple[Path, np.ndarray, Geometry, Image.Image | None]] = []
        pixels = 0
        for path in map(Path, paths):
            try:
                image = load_image(path, self.max_pixels)
                tensor, geometry = preprocess(image, self.bundle.input)
            except TextcamError as exc:
                yield (path, exc, None) if with_images else (path, exc)
                continue
            pending.append((path, tensor, geometry, image if with_images else None))
            pixels += image.width * image.height if with_images else 0
            del image
            if len(pending) == self.batch_size or pixels >= self.max_pixels:
                yield from self._explain_pending(pending, class_index, groups, with_images)
                pending, pixels = [], 0
        if pending:
            yield from self._explain_pending(pending, class_index, groups, with_images)

    def _native_explain(self, images: Sequence[ImageInput], classes: np.ndarray, groups: bool,
                        keep_errors: bool = False) -> list:
        """The core on mixed inputs: JPEG and PNG files decoded there, everything else by Pillow first.

        One Explanation per input, in order; an input that cannot be read raises its TextcamError, or
        with ``keep_errors`` takes that error's place in the list (``explain_files``).
        """
        results: list = [None] * len(images)
        files, decoded, arrays = [], [], []
        for i, item in enumerate(images):
            if isinstance(item, (str, Path)) and decodes_natively(item):
                files.append(i)
                continue
            try:
                arrays.append(np.asarray(self._decode(item)))  # refuses bad inputs as the numpy path does
                decoded.append(i)
            except TextcamError as exc:
                if not keep_errors:
                    raise
                results[i] = exc
        if files:
            found = self._core.explain_paths([Path(images[i]) for i in files], classes[files], groups)
            for i, result in zip(files, found, strict=True):
                if isinstance(result, TextcamError) and not keep_errors:
                    raise result
                results[i] = result
        if decoded:
            sources = [str(images[i]) if isinstance(images[i], (str, Path)) else None for i in decoded]
            found = self._core.explain_arrays(arrays, classes[decoded], groups, sources)
            for i, result in zip(decoded, found, strict=True):
                results[i] = result
        return results

    def _native_files(self, paths: Iterable[str | Path], class_index, groups: bool) -> Iterator[tuple]:
        chunk: list[Path] = []
        for path in map(Path, paths):
            chunk.append(path)
            if len(chunk) == self.batch_size:
                yield from self._native_chunk(chunk, class_index, groups)
                chunk = []
        if chunk:
            yield from self._native_chunk(chunk, class_index, groups)

    def _native_chunk(self, files: list[Path], class_index, groups: bool) -> Iterator[tuple]:
        classes = self.check_class_index(class_index, len(files))
        yield from zip(files, self._native_explain(files, classes, groups, keep_errors=True), strict=True)

    def _explain_pending(self, pending, class_index, groups=False, with_images=False):
        files, tensors, geometries, images = zip(*pending, strict=True)
        pending.clear()  # the caller's list: each image is freed once its item is consumed
        classes = self.check_class_index(class_index, len(files))
        if self._core is not None:
            arrays = [np.asarray(image) for image in images]
            results = self._core.explain_arrays(arrays, classes, groups, [str(f) for f in files])
            images = list(images)
            for index, (path, result) in enumerate(zip(files, results, strict=True)):
                image, images[index] = images[index], None
                yield (path, result, image) if with_images else (path, result)
            return
        results = self._run(np.stack(tensors), list(geometries), classes, [str(f) for f in files], groups)
        del tensors
        images = list(images)
        for index, (path, result) in enumerate(zip(files, results, strict=True)):
            image, images[index] = images[index], None
            yield (path, result, image) if with_images else (path, result)
            del image

    def _decode(self, item: ImageInput) -> Image.Image:
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

    def check_class_index(self, class_index: int | Sequence[int] | None, count: int) -> np.ndarray:
        """int64 [count]: ``class_index`` checked against the model's classes, one per image.

        ``class_index``: None (the predicted class: -1 everywhere), one integer for all images, or
        ``count`` integers; each from -1 (predicted) to ``len(classes) - 1``. Raises a one-line
        TextcamError otherwise, before any image is read::

            explainer.check_class_index(3, 2)   # array([3, 3])
        """
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
        """The diverse top_k for a whole batch (:func:`concepts.select_for_outputs`)."""
        return concepts.select_for_outputs(outputs, self.semantics.channel_semantics, self.semantics.text_embeddings,
                                           self.concept_settings, self._vocabulary_mean)

    def _groups(self, outputs, row: int, selection: concepts.Selection, geometry):
        if "activations" not in outputs:
            raise TextcamError(
                f"{self.bundle.path}: the graph returned no activations; re-export with with_activations=True "
                "(textcam export --with-activations)"
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

        if self._core is not None:
            self.bundle.selftest_path  # noqa: B018 - checked here: the core reads it without a second sha256
            return self._core.selftest(self.bundle.path, self.backend)
        return run_selftest(self.bundle, explainer=self)


_DEPRECATED_BACKEND = ("providers", "intra_op_threads", "allow_spinning")
_DEPRECATED_CONCEPTS = ("top_k", "beta", "candidates", "l1", "l2", "steps", "group_channels", "center")


def _warn_deprecated(name: str, value, new: str) -> None:
    warnings.warn(f"Explainer({name}=...) is deprecated: pass {new}={{{name!r}: {value!r}}}", DeprecationWarning,
                  stacklevel=4)


def _backend_options(backend: str, backend_options, deprecated: dict) -> dict:
    """The runner's keyword arguments: ``backend_options``, plus the deprecated ONNX Runtime keywords
    (where they apply, as before; ``backend_options`` wins on a clash)."""
    options = dict(backend_options or {})
    given = {name: deprecated[name] for name in _DEPRECATED_BACKEND if name in deprecated}
    for name, value in given.items():
        _warn_deprecated(name, value, "backend_options")
    providers, threads = given.get("providers"), given.get("intra_op_threads")
    if backend in ONNXRUNTIME_BACKENDS:
        if providers is not None and backend != "onnxruntime":
            raise TextcamError(f"providers=: backend {backend!r} chooses its own execution providers")
        for name, value in given.items():
            if value is not None:
                options.setdefault(name, value)
    elif providers is not None or threads is not None:
        raise TextcamError(f"providers= and intra_op_threads= apply to the onnxruntime backends, not {backend!r}")
    return options


def _concept_overrides(concepts, deprecated: dict) -> dict:
    """The concept settings the caller gave (None = the bundle's default), from ``concepts`` or the
    deprecated keywords (not both)."""
    given = {name: deprecated[name] for name in _DEPRECATED_CONCEPTS if name in deprecated}
    for name, value in given.items():
        _warn_deprecated(name, value, "concepts")
    if concepts is None:
        return given
    if given:
        raise TextcamError(f"{next(iter(given))}=: pass the concept settings once, in concepts=")
    if isinstance(concepts, ConceptSettings):
        return {}
    if not isinstance(concepts, Mapping):
        raise TextcamError(f"concepts={concepts!r}: expected a ConceptSettings or a dict such as {{'top_k': 3}}")
    unknown = [name for name in concepts if name not in ConceptSettings.__dataclass_fields__]
    if unknown:
        raise TextcamError(f"concepts: no setting {unknown[0]!r}; the settings: "
                           f"{', '.join(ConceptSettings.__dataclass_fields__)}")
    return dict(concepts)
