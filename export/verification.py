"""Verified export: the written ONNX graph is run in ONNX Runtime on fresh random inputs and
compared with the eager PyTorch computation (real autograd). A graph that disagrees is refused.

Inputs differ from the tracing example in values and batch size, so a graph that had baked the
example's gradients in as constants cannot pass.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from textcam.errors import TextcamError
from textcam.export.joint_graph import INPUT_NAMES

# Refusal thresholds. Typical fp32 agreement is ~1e-6; these leave room for deep graphs and
# the normalization of faint maps while still catching a wrong graph (errors of order 1).
TOLERANCES = {
    "logits_max_rel_err": 1e-4,
    "channel_weights_max_rel_err": 1e-3,
    "channel_activation_max_rel_err": 1e-4,
    "cam_max_abs_err": 1e-3,
}


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-12))


def verify_onnx(
    onnx_path: Path,
    joint: nn.Module,
    input_hw: tuple[int, int],
    batch_sizes: tuple[int, ...] = (1, 3),
    seed: int = 20261124,
) -> dict:
    """Compare ORT with eager autograd; return the worst errors, raise if any exceeds tolerance."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    worst = dict.fromkeys(TOLERANCES, 0.0)
    class_mismatches = 0
    for batch in batch_sizes:
        image = torch.randn(batch, 3, *input_hw, generator=generator)
        with torch.no_grad():
            logits = joint.model(image)
        predicted = logits.argmax(dim=1)
        # row 0 explains the predicted class (-1), the others a random class
        target = torch.randint(0, int(logits.shape[1]), (batch,), generator=generator)
        target[0] = -1
        with torch.enable_grad():
            reference = [t.detach().numpy() for t in joint(image, target)]
        got = session.run(None, {INPUT_NAMES[0]: image.numpy(), INPUT_NAMES[1]: target.numpy()})
        logits, classes, cam, weights, activation = got[:5]
        worst["logits_max_rel_err"] = max(worst["logits_max_rel_err"], _rel(logits, reference[0]))
        worst["cam_max_abs_err"] = max(worst["cam_max_abs_err"], float(np.abs(cam - reference[2]).max()))
        worst["channel_weights_max_rel_err"] = max(worst["channel_weights_max_rel_err"], _rel(weights, reference[3]))
        worst["channel_activation_max_rel_err"] = max(
            worst["channel_activation_max_rel_err"], _rel(activation, reference[4])
        )
        class_mismatches += int((classes != reference[1]).sum())
        if int(classes[0]) != int(predicted[0]):
            class_mismatches += 1
    failed = [f"{k} {worst[k]:.2e} > {TOLERANCES[k]:.0e}" for k in TOLERANCES if not worst[k] <= TOLERANCES[k]]
    if class_mismatches:
        failed.append(f"{class_mismatches} chosen class(es) differ")
    report = {"batch_sizes": list(batch_sizes), "seed": seed, **{k: float(v) for k, v in worst.items()}}
    report["passed"] = not failed
    if failed:
        raise TextcamError(
            "verification failed: the exported graph disagrees with eager PyTorch on fresh inputs ("
            + "; ".join(failed)
            + "); nothing was written. Please report this with the model and torch version."
        )
    return report
