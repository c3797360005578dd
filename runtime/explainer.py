"""``Explainer``: a bundle loaded once, explaining images from any thread."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from textcam.runtime.backends import create_runner
from textcam.runtime.bundle import Bundle
from textcam.runtime.explanation import Explanation, map_to_original, softmax
from textcam.runtime.images import DEFAULT_MAX_PIXELS, Geometry, array_to_image, load_image, preprocess

from textcam.errors import TextcamError

ImageInput = str | Path | Image.Image | np.ndarray


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
    ):
        if batch_size < 1:
            raise TextcamError(f"batch_size={batch_size}: expected a positive number")
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        options = {"providers": providers, "intra_op_threads": intra_op_threads, "allow_spinning": allow_spinning}
        self.runner = create_runner(backend, self.bundle, **options)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.bundle.classes

    def explain(
        self, images: ImageInput | Sequence[ImageInput], class_index: int | Sequence[int] | None = None
    ) -> Explanation | list[Explanation]:
        """Explain one image (returns an Explanation) or several (returns a list).

        ``images``: a path, PIL image, uint8 HxWx3 array, a list of those, or a float32
        [B,3,H,W] batch already preprocessed (its heatmaps stay at input resolution).
        ``class_index``: the class to explain (None: the predicted one), one per image or one for all.
        """
        if isinstance(images, np.ndarray) and images.ndim == 4:
            batch = self._check_batch(images)
            return self._run(batch, [None] * len(batch), self._classes(class_index, len(batch)), [None] * len(batch))
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        if not items:
            return []
        loaded = [self._decode(item) for item in items]
        tensors, geometries = zip(*(preprocess(image, self.bundle.input) for image in loaded), strict=True)
        sources = [str(item) if isinstance(item, (str, Path)) else None for item in items]
        results = self._run(np.stack(tensors), list(geometries), self._classes(class_index, len(items)), sources)
        return results[0] if single else results

    def explain_files(
        self, paths: Iterable[str | Path], class_index: int | None = None
    ) -> Iterator[tuple[Path, Explanation | TextcamError]]:
        """Yield (path, explanation) per file, or (path, error) for files that cannot be read.

        One bad file never stops the others; decoding is batched by ``batch_size``.
        """
        pending: list[tuple[Path, np.ndarray, Geometry]] = []
        for path in map(Path, paths):
            try:
                tensor, geometry = preprocess(load_image(path, self.max_pixels), self.bundle.input)
            except TextcamError as exc:
                yield path, exc
                continue
            pending.append((path, tensor, geometry))
            if len(pending) == self.batch_size:
                yield from self._explain_pending(pending, class_index)
                pending = []
        if pending:
            yield from self._explain_pending(pending, class_index)

    def _explain_pending(self, pending, class_index):
        files, tensors, geometries = zip(*pending, strict=True)
        classes = self._classes(class_index, len(files))
        results = self._run(np.stack(tensors), list(geometries), classes, [str(f) for f in files])
        yield from zip(files, results, strict=True)

    def _decode(self, item: ImageInput) -> Image.Image:
        if isinstance(item, (str, Path)):
            return load_image(item, self.max_pixels)
        if isinstance(item, Image.Image):
            from textcam.runtime.images import to_rgb

            return to_rgb(item)
        if isinstance(item, np.ndarray):
            return array_to_image(item)
        raise TextcamError(
            f"image of type {type(item).__name__}: pass a path, a PIL image, a uint8 HxWx3 array or a "
            "float [B,3,H,W] batch"
        )

    def _check_batch(self, batch: np.ndarray) -> np.ndarray:
        spec = self.bundle.input
        expected = (3, spec.height, spec.width)
        if batch.shape[1:] != expected or not np.issubdtype(batch.dtype, np.floating):
            raise TextcamError(
                f"float batch of shape {batch.shape} and dtype {batch.dtype}: expected float32 "
                f"[B, {', '.join(map(str, expected))}], already resized and normalized"
            )
        return np.ascontiguousarray(batch, dtype=np.float32)

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

    def _run(self, batch: np.ndarray, geometries, classes: np.ndarray, sources) -> list[Explanation]:
        results: list[Explanation] = []
        for start in range(0, len(batch), self.batch_size):
            stop = start + self.batch_size
            outputs = self.runner.run(batch[start:stop], classes[start:stop])
            probabilities = softmax(outputs["logits"].astype(np.float64))
            for row, chosen in enumerate(outputs["class_index"]):
                chosen = int(chosen)
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
                    )
                )
        return results
