"""``textcam triton``: a bundle as a Triton Inference Server model repository.

The repository holds three models (docs/serving.md, "Triton"):

===================  ===========================================  ==========================================
model                what runs it                                 what it does
===================  ===========================================  ==========================================
``textcam_graph``    ``onnxruntime_onnx`` (model.onnx, or the     the joint graph: logits, class_index, cam,
                     fused ranking graph), ``tensorrt_plan`` (a   channel weights and activations (and the
                     built engine), or ``python`` (ONNX Runtime   fused graph's candidate phrase ids)
                     in the Python backend: a stand-in for
                     servers without the onnxruntime backend)
``textcam_post``     Python backend (:mod:`~textcam.serving.      label, score and the selected phrases
                     triton_python`), on the CPU                  (ids, scores, weights, text)
``textcam``          ensemble                                     what clients call: image (preprocessed
                                                                  float32 [3, H, W]) and target_class
===================  ===========================================  ==========================================

Every model batches on its first dimension (``max_batch_size``); the graph model has Triton's
dynamic batcher unless told otherwise. The repository is written to a temporary folder beside
``out`` and moved into place at the end: a failure leaves no half-written repository.

Example::

    from textcam.serving.triton_repo import RepositoryOptions, write_repository
    write_repository("resnet50.textcam", "models", RepositoryOptions(max_batch_size=32, instances=2))
    # tritonserver --model-repository models
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from textcam.errors import TextcamError, first_line
from textcam.runtime.bundle import Bundle
from textcam.runtime.fused_ranking import fused_graph_fits
from textcam.serving.triton_config import Enum, data_type, to_pbtxt, validate
from textcam.serving.triton_python import POST_FORMAT, POST_SPEC

GRAPH_BACKENDS = ("onnxruntime", "tensorrt", "python")
KINDS = ("auto", "cpu", "gpu")
GRAPH_MODEL, POST_MODEL, ENSEMBLE = "textcam_graph", "textcam_post", "textcam"
MARKER = "textcam_repository.json"
MARKER_FORMAT = "textcam-triton-repository"
MAX_BATCH = 4096
GRAPH_OUTPUTS = ("logits", "class_index", "cam", "channel_weights", "channel_activation")
"""The ensemble returns all of them: the channel weights and activations let clients (and the
self-test) check the graph, and a client-side ranking use them."""
POST_OUTPUTS = {"label": "bytes", "score": "float32"}
CONCEPT_OUTPUTS = {"concept_ids": "int64", "concept_scores": "float32", "concept_weights": "float32",
                   "concept_phrases": "bytes"}
CANDIDATES = "candidate_ids"
"""The fused graph's ``concept_ids`` (candidates, cosine order) as the ensemble names them: the
ensemble's own ``concept_ids`` are the selected phrases from ``textcam_post``."""


@dataclass(frozen=True)
class RepositoryOptions:
    """How the repository serves the bundle; every field is a ``textcam triton`` option."""

    graph_backend: str = "onnxruntime"
    max_batch_size: int = 16
    dynamic_batching: bool = True
    max_queue_delay_us: int = 2000
    instances: int = 1
    kind: str = "auto"
    post_instances: int = 1
    threads: int | None = None
    gpu: str | None = None
    tensorrt: str | None = None
    precision: str | None = None
    use_fused: bool = True

    def check(self) -> None:
        if self.graph_backend not in GRAPH_BACKENDS:
            raise TextcamError(f"--graph-backend {self.graph_backend!r}: choose one of {', '.join(GRAPH_BACKENDS)}")
        if self.kind not in KINDS:
            raise TextcamError(f"--kind {self.kind!r}: choose one of {', '.join(KINDS)}")
        for flag, value, low, high in (("--max-batch-size", self.max_batch_size, 1, MAX_BATCH),
                                       ("--instances", self.instances, 1, 64),
                                       ("--post-instances", self.post_instances, 1, 64),
                                       ("--max-queue-delay-us", self.max_queue_delay_us, 0, 10_000_000)):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise TextcamError(f"{flag} {value!r}: expected an integer from {low} to {high:,}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise TextcamError(f"--threads {self.threads!r}: expected a positive integer")
        if self.graph_backend == "tensorrt":
            if not self.gpu:
                raise TextcamError("--graph-backend tensorrt needs --gpu CC (the compute capability the engine was "
                                   "built for, e.g. 9.0 or sm90; `textcam info BUNDLE` lists the bundle's engines)")
            if self.kind == "cpu":
                raise TextcamError("--graph-backend tensorrt --kind cpu: TensorRT engines run on a GPU only")
        elif self.gpu or self.tensorrt or self.precision:
            raise TextcamError("--gpu, --tensorrt and --precision choose a TensorRT engine: use them with "
                               "--graph-backend tensorrt")


@dataclass(frozen=True)
class RepositoryReport:
    path: Path
    graph_backend: str
    graph_file: str
    fused: bool
    concepts: bool
    validated: bool
    """True when every config.pbtxt was parsed against Triton's schema (needs tritonclient[grpc])."""


def write_repository(bundle: str | Path | Bundle, out: str | Path, options: RepositoryOptions | None = None,
                     force: bool = False) -> RepositoryReport:
    """Write the Triton model repository for ``bundle`` at ``out`` (see the module docstring).

    ``force`` replaces an existing textcam repository at ``out``; anything else there is refused.
    """
    options = options or RepositoryOptions()
    options.check()
    bundle = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
    out = Path(out)
    _check_out(out, force)
    plan = _graph_plan(bundle, options)
    concepts = bundle.info.semantics is not None
    configs = {
        GRAPH_MODEL: _graph_config(bundle, options, plan),
        POST_MODEL: _post_config(bundle, options, plan["fused"]),
        ENSEMBLE: _ensemble_config(bundle, options, plan["fused"]),
    }
    texts = {name: to_pbtxt(config) for name, config in configs.items()}
    try:
        for name, text in texts.items():
            validate(text, f"{name}/config.pbtxt")
        validated = True
    except ImportError:
        validated = False
    with _staged(out, force) as stage:
        for name, text in texts.items():
            (stage / name / "1").mkdir(parents=True)
            (stage / name / "config.pbtxt").write_text(text, encoding="utf-8")
        for source, target in plan["files"]:
            shutil.copyfile(source, stage / GRAPH_MODEL / "1" / target)
        if options.graph_backend == "python":
            _write_model_py(stage / GRAPH_MODEL / "1", "GraphStandIn",
                            "TEST STAND-IN for Triton's onnxruntime backend: ONNX Runtime in the Python backend.")
        _write_post(stage / POST_MODEL / "1", bundle)
        marker = {"format": MARKER_FORMAT, "bundle": str(bundle.path), "model_sha256": bundle.model_sha256,
                  "graph_file": plan["graph_file"], "fused": plan["fused"], "options": asdict(options)}
        (stage / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        (stage / "README.md").write_text(_readme(bundle, options, plan, concepts), encoding="utf-8")
    return RepositoryReport(out, options.graph_backend, plan["graph_file"], plan["fused"], concepts, validated)


# ---- the graph model ---------------------------------------------------------------------------

def _graph_plan(bundle: Bundle, options: RepositoryOptions) -> dict[str, Any]:
    """Which graph file serves (and the files to copy): the fused graph when the post model's
    settings allow it (as ``Explainer`` decides), an engine for TensorRT, else model.onnx."""
    info = bundle.info
    external = info.model.external_data
    if options.graph_backend == "tensorrt":
        entry = _choose_engine(bundle, options)
        return {"graph_file": "model.plan", "fused": False, "outputs": _graph_outputs(bundle, False),
                "files": [(bundle.engine_path(entry), "model.plan")], "engine": entry}
    fused = _fused_usable(bundle) and options.use_fused
    source = bundle.fused_graph_path if fused else bundle.model_path
    files = [(source, "model.onnx")]
    if external:
        # both graphs name their weights file by this relative path, so it keeps its name
        files.append((bundle.file(external, "model"), external.file))
    return {"graph_file": "model.onnx", "fused": fused, "outputs": _graph_outputs(bundle, fused), "files": files}


def _fused_usable(bundle: Bundle) -> bool:
    from textcam.runtime.concepts import ConceptSettings

    info = bundle.info
    if not (info.semantics and info.fused_graph):
        return False
    settings = ConceptSettings.resolve(info.semantics.defaults)
    return fused_graph_fits(info.fused_graph, settings.beta, settings.candidates, info.semantics.vocabulary_size)


def _choose_engine(bundle: Bundle, options: RepositoryOptions):
    from textcam.engines.entries import check_precision, choose_engine

    if options.precision:
        check_precision(options.precision)
    capability = options.gpu.lower().removeprefix("sm")
    if "." not in capability and capability.isdigit() and len(capability) >= 2:
        capability = f"{capability[:-1]}.{capability[-1]}"
    if options.tensorrt:
        entry = choose_engine(bundle.path, bundle.manifest, capability, options.tensorrt, options.precision)
    else:
        entries = [e for e in bundle.info.engines if e.compute_capability == capability
                   and (options.precision is None or e.precision == options.precision)
                   and e.model_sha256 in (None, bundle.model_sha256)]
        if len(entries) != 1:
            have = "; ".join(e.describe() for e in bundle.info.engines) or "none"
            what = "no engine" if not entries else f"{len(entries)} engines"
            raise TextcamError(f"{bundle.path}: {what} for --gpu {options.gpu}"
                               f"{' --precision ' + options.precision if options.precision else ''} "
                               f"(the bundle has: {have}); build one with `textcam build-engine` on that GPU, "
                               "or name the TensorRT version of your Triton with --tensorrt")
        entry = entries[0]
    if entry.profile.max < options.max_batch_size:
        raise TextcamError(f"--max-batch-size {options.max_batch_size}: the engine ({entry.describe()}) takes at "
                           f"most {entry.profile.max} images; lower it or rebuild with --max-batch")
    return entry


def _graph_outputs(bundle: Bundle, fused: bool) -> dict[str, tuple[str, list[int]]]:
    """name -> (dtype, dims without the batch) of what the graph model returns."""
    spec = bundle.input
    outputs = {
        "logits": ("float32", [len(bundle.classes)]),
        "class_index": ("int64", [1]),
        "cam": ("float32", [spec.height, spec.width]),
        "channel_weights": ("float32", [bundle.channels]),
        "channel_activation": ("float32", [bundle.channels]),
    }
    if fused:
        outputs["concept_ids"] = ("int64", [bundle.info.fused_graph.candidates])
    return outputs


def _tensor(name: str, dtype: str, dims: list[int], reshape: bool = False, **extra) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "data_type": data_type(dtype), "dims": dims}
    if reshape:
        entry["reshape"] = {"shape": []}  # the graph's tensor is [batch]; Triton cannot batch a 0-d one
    entry.update(extra)
    return entry


def _graph_config(bundle: Bundle, options: RepositoryOptions, plan: dict[str, Any]) -> dict[str, Any]:
    spec = bundle.input
    native = options.graph_backend != "python"  # Triton's own backends see the graph's [batch] tensors
    config: dict[str, Any] = {"name": GRAPH_MODEL}
    if options.graph_backend == "onnxruntime":
        config.update(platform="onnxruntime_onnx", backend="onnxruntime")
    elif options.graph_backend == "tensorrt":
        config.update(platform="tensorrt_plan", backend="tensorrt")
    else:
        config["backend"] = "python"
    config.update(
        max_batch_size=options.max_batch_size,
        default_model_filename=plan["graph_file"] if native else None,
        input=[_tensor("image", "float32", [3, spec.height, spec.width]),
               _tensor("target_class", "int64", [1], reshape=native)],
        output=[_tensor(name, dtype, dims, reshape=native and name == "class_index")
                for name, (dtype, dims) in plan["outputs"].items()],
        instance_group=[_instances(options.instances, "gpu" if options.graph_backend == "tensorrt"
                                   and options.kind == "auto" else options.kind)],
    )
    if options.dynamic_batching:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": options.max_queue_delay_us}
    parameters = {}
    if options.graph_backend == "python":
        parameters["graph_file"] = plan["graph_file"]
        parameters["intra_op_threads"] = str(options.threads or 0)
    elif options.graph_backend == "onnxruntime" and options.threads:
        parameters["intra_op_thread_count"] = str(options.threads)
    if parameters:
        config["parameters"] = [{"key": k, "value": {"string_value": v}} for k, v in parameters.items()]
    return config


def _instances(count: int, kind: str) -> dict[str, Any]:
    group: dict[str, Any] = {"count": count}
    if kind != "auto":
        group["kind"] = Enum("KIND_GPU" if kind == "gpu" else "KIND_CPU")
    return group


# ---- the post-processing model and the ensemble ---------------------------------------------------

def _top_k(bundle: Bundle) -> int:
    from textcam.runtime.concepts import ConceptSettings

    return ConceptSettings.resolve(bundle.info.semantics.defaults).top_k


def _post_config(bundle: Bundle, options: RepositoryOptions, fused: bool) -> dict[str, Any]:
    concepts = bundle.info.semantics is not None
    inputs = [_tensor("logits", "float32", [len(bundle.classes)]), _tensor("class_index", "int64", [1]),
              _tensor("target_class", "int64", [1])]
    if concepts:
        inputs += [_tensor("channel_weights", "float32", [bundle.channels]),
                   _tensor("channel_activation", "float32", [bundle.channels])]
        if fused:
            inputs.append(_tensor(CANDIDATES, "int64", [bundle.info.fused_graph.candidates]))
    outputs = [_tensor(name, dtype, [1]) for name, dtype in POST_OUTPUTS.items()]
    if concepts:
        outputs += [_tensor(name, dtype, [_top_k(bundle)]) for name, dtype in CONCEPT_OUTPUTS.items()]
    return {"name": POST_MODEL, "backend": "python", "max_batch_size": options.max_batch_size,
            "input": inputs, "output": outputs, "instance_group": [_instances(options.post_instances, "cpu")]}


def _ensemble_config(bundle: Bundle, options: RepositoryOptions, fused: bool) -> dict[str, Any]:
    spec = bundle.input
    concepts = bundle.info.semantics is not None
    graph = _graph_outputs(bundle, fused)
    graph_map = {name: name for name in GRAPH_OUTPUTS}
    if fused:
        graph_map["concept_ids"] = CANDIDATES
    post_inputs = ["logits", "class_index", "target_class"]
    if concepts:
        post_inputs += ["channel_weights", "channel_activation"] + ([CANDIDATES] if fused else [])
    post_outputs = dict(POST_OUTPUTS) | (CONCEPT_OUTPUTS if concepts else {})
    outputs = [_tensor(name, *graph[name]) for name in GRAPH_OUTPUTS]
    outputs += [_tensor(name, dtype, [1] if name in POST_OUTPUTS else [_top_k(bundle)])
                for name, dtype in post_outputs.items()]

    def mapping(pairs: dict[str, str]) -> list[dict[str, str]]:
        return [{"key": key, "value": value} for key, value in pairs.items()]

    return {
        "name": ENSEMBLE, "platform": "ensemble", "max_batch_size": options.max_batch_size,
        "input": [_tensor("image", "float32", [3, spec.height, spec.width]), _tensor("target_class", "int64", [1])],
        "output": outputs,
        "ensemble_scheduling": {"step": [
            {"model_name": GRAPH_MODEL, "model_version": -1,
             "input_map": mapping({"image": "image", "target_class": "target_class"}),
             "output_map": mapping(graph_map)},
            {"model_name": POST_MODEL, "model_version": -1,
             "input_map": mapping({name: name for name in post_inputs}),
             "output_map": mapping({name: name for name in post_outputs})},
        ]},
    }


def _write_post(folder: Path, bundle: Bundle) -> None:
    from textcam.runtime.concepts import ConceptSettings

    semantics = bundle.info.semantics
    spec = {"format": POST_FORMAT, "classes": list(bundle.classes), "model_sha256": bundle.model_sha256,
            "channels": bundle.channels, "semantics": None, "settings": None}
    if semantics:
        spec["semantics"] = "semantics.safetensors"
        spec["settings"] = asdict(ConceptSettings.resolve(semantics.defaults))
        shutil.copyfile(bundle.semantics_path, folder / "semantics.safetensors")
    (folder / POST_SPEC).write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    _write_model_py(folder, "PostModel", "textcam post-processing: label, score and phrases from the graph's outputs.")


def _write_model_py(folder: Path, name: str, what: str) -> None:
    (folder / "model.py").write_text(
        f'"""{what}\n\nWritten by `textcam triton`; needs `pip install textcam` in the server\'s Python.\n"""\n\n'
        f"from textcam.serving.triton_python import {name} as TritonPythonModel  # noqa: F401\n",
        encoding="utf-8")


# ---- writing -------------------------------------------------------------------------------------

def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise TextcamError(f"-o {out}: exists and is not a directory; choose another path")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise TextcamError(f"-o {out}: directory exists and is not a textcam Triton repository; refusing to "
                               "overwrite it (choose a new path or remove it)")
        if not force:
            raise TextcamError(f"-o {out}: a textcam Triton repository is already there; pass --force to replace it")


class _staged:
    """A temporary folder beside ``out`` that takes ``out``'s place on success (removed on failure)."""

    def __init__(self, out: Path, force: bool):
        self.out, self.force = out.absolute(), force

    def __enter__(self) -> Path:
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.stage = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", suffix=".partial", dir=self.out.parent))
        except OSError as exc:
            raise TextcamError(f"-o {self.out}: cannot write there ({first_line(exc)})") from None
        os.chmod(self.stage, 0o755)
        return self.stage

    def __exit__(self, kind, value, traceback) -> None:
        if kind is not None:
            shutil.rmtree(self.stage, ignore_errors=True)
            if isinstance(value, OSError):
                raise TextcamError(f"-o {self.out}: writing failed ({first_line(value)}); nothing was written")
            return
        if self.out.exists():
            old = self.stage.with_suffix(".old")
            os.replace(self.out, old)
            os.replace(self.stage, self.out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.stage, self.out)


def _readme(bundle: Bundle, options: RepositoryOptions, plan: dict[str, Any], concepts: bool) -> str:
    spec = bundle.input
    stand_in = ("\n**`textcam_graph` is a test stand-in**: ONNX Runtime inside Triton's Python backend, for servers "
                "without the onnxruntime backend. For production, write the repository with "
                "`--graph-backend onnxruntime` (or `tensorrt`).\n" if options.graph_backend == "python" else "")
    outputs = "logits, class_index, cam, channel_weights, channel_activation, label, score" + (
        ", concept_ids, concept_scores, concept_weights, concept_phrases" if concepts else "")
    return f"""# textcam model repository

Written by `textcam triton` from `{bundle.path.name}` (model sha256 `{bundle.model_sha256[:12]}`,
{len(bundle.classes)} classes, layer `{bundle.layer}`, method `{bundle.method}`).

| model | runs on | what |
|---|---|---|
| `textcam_graph` | `{options.graph_backend}` (`{plan["graph_file"]}`) | the joint graph: prediction, heatmap |
| `textcam_post` | Python backend (needs `pip install textcam`) | label, score, selected phrases |
| `textcam` | ensemble | what clients call |
{stand_in}
## Serve

    tritonserver --model-repository $(pwd)

## Call

Inputs of `textcam`: `image` FP32 [batch, 3, {spec.height}, {spec.width}], already preprocessed as the bundle's
manifest states (`textcam.runtime.images.preprocess` does it), and `target_class` INT64 [batch, 1]
(-1: the predicted class). Outputs: {outputs}.

```python
import numpy as np, tritonclient.http as http
from PIL import Image
from textcam.runtime.bundle import Bundle
from textcam.runtime.images import preprocess

spec = Bundle.open("{bundle.path.name}").input
tensor, _ = preprocess(Image.open("cat.jpg"), spec)
client = http.InferenceServerClient("127.0.0.1:8000")
inputs = [http.InferInput("image", [1, 3, {spec.height}, {spec.width}], "FP32"),
          http.InferInput("target_class", [1, 1], "INT64")]
inputs[0].set_data_from_numpy(tensor[None])
inputs[1].set_data_from_numpy(np.array([[-1]], dtype=np.int64))
result = client.infer("textcam", inputs)
print(result.as_numpy("label"), result.as_numpy("score"){', result.as_numpy("concept_phrases")' if concepts else ''})
```

Check the server against the bundle's self-test: `textcam selftest {bundle.path.name} --triton 127.0.0.1:8000`.
"""
