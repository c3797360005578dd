"""textcam.engines.parity: the parity report (limits per precision, what fails and what is only
reported) and, with ONNX Runtime on the CPU, an fp16 graph measured against the fp32 one."""

from __future__ import annotations

import json

import numpy as np
import pytest

from textcam.engines.parity import ParityReport, check_parity, compare_outputs
from textcam.engines.precision import write_reduced_graph
from textcam.errors import TextcamError
from textcam.runtime.backends.onnxruntime_runner import OnnxRuntimeRunner
from textcam.runtime.bundle import Bundle


def outputs(seed: int, batch: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "logits": rng.standard_normal((batch, 5)).astype(np.float32) * 3,
        "class_index": rng.integers(0, 5, batch),
        "cam": rng.uniform(0, 1, (batch, 16, 16)).astype(np.float32),
        "channel_weights": rng.standard_normal((batch, 8)).astype(np.float32) * 1e-7,  # deep gradients are tiny
        "channel_activation": rng.uniform(0, 2, (batch, 8)).astype(np.float32),
    }


def test_identical_outputs_pass_every_check():
    reference = outputs(0)
    rows = compare_outputs(reference, {k: v.copy() for k, v in reference.items()}, "fp32")
    report = ParityReport("fp32", (1, 3), 7, rows)
    assert report.passed and report.summary().startswith("parity fp32: all")
    assert json.loads(json.dumps(report.to_dict()))["passed"] is True


def test_parity_limits_depend_on_precision_and_are_relative_for_gradients():
    reference = outputs(0)
    candidate = {k: v.copy() for k, v in reference.items()}
    candidate["cam"] = candidate["cam"] + 0.01  # within fp16's 2e-2, beyond fp32's 1e-3
    candidate["channel_weights"] = candidate["channel_weights"] * 1.005  # 0.5% relative on 1e-7 values
    fp16 = ParityReport("fp16", (4,), 1, compare_outputs(reference, candidate, "fp16"))
    fp32 = ParityReport("fp32", (4,), 1, compare_outputs(reference, candidate, "fp32"))
    assert fp16.passed
    assert not fp32.passed
    failed = {row.name for row in fp32.failed}
    assert failed == {"cam (given classes)", "channel_weights"}
    assert "cam (given classes) 1.00e-02 > 1.00e-03" in fp32.summary()


def test_class_mismatch_for_given_classes_fails_but_noise_agreement_is_only_reported():
    reference = outputs(1)
    candidate = {k: v.copy() for k, v in reference.items()}
    predicted_ref, predicted_cand = np.array([0, 1, 2, 3]), np.array([0, 1, 2, 4])
    rows = compare_outputs(reference, candidate, "fp16", predicted_ref, predicted_cand)
    report = ParityReport("fp16", (4,), 1, rows)
    assert report.passed  # 75% agreement on noise inputs is information, not a failure
    table = report.table()
    assert "predicted class (noise)" in table and "75.0%" in table and "info" in table
    assert len(table.splitlines()) == 3 + len(rows)  # title, header, rule, one line per check
    candidate["class_index"] = candidate["class_index"] + 1
    broken = ParityReport("fp16", (4,), 1, compare_outputs(reference, candidate, "fp16"))
    assert not broken.passed and "class_index (given classes) 0.0% < 100.0%" in broken.summary()


def test_wrong_shapes_fail_and_missing_outputs_are_named():
    reference = outputs(2)
    candidate = {k: v.copy() for k, v in reference.items()}
    candidate["cam"] = candidate["cam"][:, :8]
    assert not ParityReport("fp32", (4,), 1, compare_outputs(reference, candidate, "fp32")).passed
    del candidate["cam"]
    with pytest.raises(TextcamError, match="lack cam"):
        compare_outputs(reference, candidate, "fp32")


def test_fp16_graph_meets_the_fp16_parity_targets_on_the_cpu(tiny_bundle):
    opened = Bundle.open(tiny_bundle)
    path = tiny_bundle.parent / "parity.fp16.onnx"
    write_reduced_graph(opened.model_path, path, "fp16")
    reference = OnnxRuntimeRunner(opened)
    candidate = OnnxRuntimeRunner(opened.with_graph(path))
    report = check_parity(reference.run, candidate.run, (32, 32), 4, "fp16", batch_sizes=(1, 5))
    assert report.passed, report.table()
    strict = check_parity(reference.run, candidate.run, (32, 32), 4, "fp32", batch_sizes=(5,))
    assert not strict.passed, "an fp16 forward pass should not pass the fp32 limits (else the check is blind)"
