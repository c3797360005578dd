"""Independent references for what an exported joint graph computes, for parity checks.

1. Eager PyTorch autograd, recomputed here without textcam's export code: logits, the chosen
   class, the layer's activations A and gradients G = d logit_c / d A on the grid (its own
   reshape, not :mod:`textcam.export.layout`), and every method's channel weights and map from
   the papers' / pytorch-grad-cam's formulas in float64; optionally the whole computation in
   float64 (:func:`float64_reference`).
2. pytorch-grad-cam's heatmaps (GradCAM, GradCAMPlusPlus, XGradCAM, HiResCAM, LayerCAM with
   ``ClassifierOutputTarget`` and a ``reshape_transform`` for token / channels-last layers).
   pytorch-grad-cam has no plain CAM, so that reference is built here from the linear head's
   class row with pytorch-grad-cam's own ``scale_cam_image``.

Also the reference models: random-init weights, the logits' linear head re-drawn non-zero,
in-place flags off, BatchNorm running statistics calibrated on random images (see
:func:`calibrate_batchnorm`: without it EfficientNet/MobileNetV3 features are ~1e-15/1e-8 and
every map is a near-zero map).

Needs torch. The pytorch-grad-cam and OpenCV references need the ``[dev]`` extra and import them
when called. Used by :mod:`textcam.export.parity_matrix` (tests/test_parity.py,
benchmarks/parity_matrix.py).
"""

from __future__ import annotations

import copy
import gc
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "cam")

MODEL_SEED = 1234
HEAD_STD = 0.02


@dataclass(frozen=True)
class Case:
    """One (model, target layer) row of the parity matrix."""

    family: str
    layer: str
    build: Callable[[], nn.Module] = field(repr=False, compare=False)
    input_size: tuple[int, int] = (224, 224)
    layout: str = "nchw"  # how pytorch-grad-cam must reshape the layer output: nchw | tokens | nhwc
    prefix_tokens: int = 0  # class / register tokens before the patch grid (layout "tokens")
    cam_ok: bool = False  # plain CAM applies: global-average-pool + one linear layer right after `layer`
    cam_why_not: str = ""  # the reason when it does not (goes into the report)

    @property
    def id(self) -> str:
        return f"{self.family}/{self.layer}"

    def methods(self) -> tuple[str, ...]:
        return METHODS


# ---------------------------------------------------------------------------------------------
# models


def last_linear(model: nn.Module) -> nn.Linear:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def build_model(case: Case, seed: int = MODEL_SEED) -> nn.Module:
    """Random-initialized model in eval mode, in-place ops off, BatchNorm statistics calibrated,
    the logits' linear head (when the logits come from one) re-drawn from N(0, HEAD_STD^2)
    (torchvision's ViT zero-inits its head, which would zero every gradient)."""
    torch.manual_seed(seed)
    model = case.build()
    model = copy.deepcopy(model).eval().float()
    for module in model.modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False  # as the exporter does; pytorch-grad-cam breaks on in-place ReLU
    calibrate_batchnorm(model, case.input_size, seed + 2)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        classes = int(model(torch.zeros(1, 3, *case.input_size)).shape[1])
    model.textcam_num_classes = classes  # read by num_classes(): a head need not be nn.Linear (SqueezeNet)
    if linears and linears[-1].out_features == classes:
        head = linears[-1]
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * HEAD_STD)
            if head.bias is not None:
                head.bias.copy_(torch.randn(head.bias.shape, generator=generator) * HEAD_STD)
    return model


def calibrate_batchnorm(model: nn.Module, input_size: tuple[int, int], seed: int, batches: int = 2) -> None:
    """Running statistics from train-mode passes over random images (a cumulative average).

    With the default statistics (mean 0, variance 1) nothing normalizes a random-init network and
    the signal shrinks with depth: EfficientNet-B0's last features come out around 1e-15 and
    MobileNetV3's around 1e-8, so every map is a near-zero map dominated by the 1e-7 of the
    normalization (and XGrad-CAM's 1e-7 denominator). Calibrated, activations stay O(1).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    generator = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(8, 3, *input_size, generator=generator))
    model.eval()
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum


def num_classes(model: nn.Module) -> int:
    return getattr(model, "textcam_num_classes", None) or last_linear(model).out_features


# ---------------------------------------------------------------------------------------------
# reference 1: eager PyTorch, recomputed independently


def reshape_transform(case: Case) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """What a pytorch-grad-cam user passes as ``reshape_transform`` for this layer."""
    if case.layout == "nchw":
        return None
    if case.layout == "nhwc":
        return lambda t: t.permute(0, 3, 1, 2)
    prefix = case.prefix_tokens

    def tokens_to_grid(t: torch.Tensor) -> torch.Tensor:
        patches = t[:, prefix:, :]
        side = math.isqrt(patches.shape[1])
        assert side * side == patches.shape[1], "square inputs only"
        return patches.reshape(t.shape[0], side, side, t.shape[2]).permute(0, 3, 1, 2)

    return tokens_to_grid


def continue_on_copy(_module, _inputs, output):
    """Forward hook: the rest of the model gets a copy of the layer's output.

    An in-place op after the layer that no ``inplace`` flag reaches (DenseNet's forward calls
    ``F.relu(features, inplace=True)``) would otherwise rewrite the captured activations:
    pytorch-grad-cam would then pair post-ReLU activations with pre-ReLU gradients. With the copy,
    activations and gradients both belong to the layer's output, as in the exported graph.
    """
    if isinstance(output, (tuple, list)):
        return type(output)([output[0].clone(), *output[1:]])
    return output.clone()


def eager_reference(case: Case, model: nn.Module, image: torch.Tensor, target: torch.Tensor) -> dict:
    """Logits, chosen class, layer activations A and gradients G = d logit_c / d A on the grid."""
    module = dict(model.named_modules())[case.layer]
    captured: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        captured.append(output[0] if isinstance(output, (tuple, list)) else output)
        return continue_on_copy(_module, _inputs, output)

    handle = module.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = model(image.clone().requires_grad_(True))
            chosen = torch.where(target < 0, logits.argmax(dim=1), target)
            score = logits.gather(1, chosen[:, None]).sum()
            (grad,) = torch.autograd.grad(score, captured[-1])
    finally:
        handle.remove()
    to_grid = reshape_transform(case) or (lambda t: t)
    return {
        "logits": logits.detach().numpy(),
        "chosen": chosen.numpy(),
        "A": to_grid(captured[-1].detach()).double().numpy(),
        "G": to_grid(grad.detach()).double().numpy(),
    }


def reference_weights(method: str, A: np.ndarray, G: np.ndarray, head_rows: np.ndarray | None) -> np.ndarray:
    """[B, C] channel weights from the papers' / pytorch-grad-cam's formulas, in float64.

    Element-wise methods (HiResCAM, LayerCAM) report the spatial mean of their weight map.
    """
    if method == "gradcam":
        return G.mean(axis=(2, 3))
    if method == "gradcam++":
        g2, g3 = G**2, G**3
        alpha = g2 / (2 * g2 + A.sum(axis=(2, 3), keepdims=True) * g3 + 1e-6)
        alpha = np.where(G != 0, alpha, 0.0)
        return (np.maximum(G, 0) * alpha).sum(axis=(2, 3))
    if method == "xgradcam":
        return (G * A / (A.sum(axis=(2, 3), keepdims=True) + 1e-7)).sum(axis=(2, 3))
    if method == "hirescam":
        return G.mean(axis=(2, 3))
    if method == "layercam":
        return np.maximum(G, 0).mean(axis=(2, 3))
    if method == "cam":
        return head_rows
    raise ValueError(method)


def reference_saliency(method: str, A: np.ndarray, G: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """[B, h, w] pre-ReLU map in float64 (a diagnostic: how far the fp32 maps are from exact)."""
    if method == "hirescam":
        return (G * A).sum(axis=1)
    if method == "layercam":
        return (np.maximum(G, 0) * A).sum(axis=1)
    return (weights[:, :, None, None] * A).sum(axis=1)

def head_rows(model: nn.Module, chosen: np.ndarray) -> np.ndarray:
    """The linear head's rows of the ``chosen`` classes (plain CAM's channel weights), float64."""
    return last_linear(model).weight.detach().double().numpy()[chosen]


def reference_cam(method: str, model: nn.Module, eager: dict) -> dict:
    """Channel weights and pre-ReLU map of ``method`` from one :func:`eager_reference` result, in
    float64 (plain CAM also returns the head rows it used; other methods None)."""
    rows = head_rows(model, eager["chosen"]) if method == "cam" else None
    weights = reference_weights(method, eager["A"], eager["G"], rows)
    saliency = reference_saliency(method, eager["A"], eager["G"], weights)
    return {"head_rows": rows, "weights": weights, "saliency": saliency}


# ---------------------------------------------------------------------------------------------
# reference 2: pytorch-grad-cam


def library_heatmap(case: Case, model: nn.Module, method: str, image: torch.Tensor, classes) -> np.ndarray:
    """pytorch-grad-cam's map for ``classes`` (explicit class per row), [B, H, W] float32."""
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam_class = {
        "gradcam": GradCAM,
        "gradcam++": GradCAMPlusPlus,
        "xgradcam": XGradCAM,
        "hirescam": HiResCAM,
        "layercam": LayerCAM,
    }[method]
    module = dict(model.named_modules())[case.layer]
    targets = [ClassifierOutputTarget(int(c)) for c in classes]
    reshape = reshape_transform(case)
    with cam_class(model=model, target_layers=[module], reshape_transform=reshape) as explainer:
        # registered after pytorch-grad-cam's hooks: they keep the layer's own output
        handle = module.register_forward_hook(continue_on_copy)
        try:
            heat = explainer(input_tensor=image, targets=targets)
        finally:
            handle.remove()
    model.zero_grad(set_to_none=True)  # pytorch-grad-cam leaves parameter gradients behind
    return heat


def plain_cam_heatmap(A: np.ndarray, head_rows: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """CAM (Zhou et al.): relu(sum_k W[c, k] A_k), then pytorch-grad-cam's scaling pipeline
    (``scale_cam_image`` = min-max + cv2.resize, then ReLU and min-max again)."""
    from pytorch_grad_cam.utils.image import scale_cam_image

    saliency = np.einsum("bk,bkhw->bhw", head_rows.astype(np.float32), A.astype(np.float32))
    scaled = scale_cam_image(np.maximum(saliency, 0), (input_size[1], input_size[0]))  # cv2 dsize = (W, H)
    return scale_cam_image(np.maximum(scaled, 0))


def fp64_heatmap(saliency: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """The same pipeline in float64 with cv2 (a diagnostic, not a target)."""
    import cv2

    def norm(x):
        x = x - x.min()
        return x / (1e-7 + x.max())

    out = []
    for s in np.maximum(saliency, 0):
        up = cv2.resize(norm(s), (input_size[1], input_size[0]), interpolation=cv2.INTER_LINEAR)
        out.append(norm(np.maximum(up, 0)))
    return np.stack(out)


# ---------------------------------------------------------------------------------------------
# reference 1 again, all in float64 (diagnostics: how far the float32 sides are from exact)


_TWIN: list[nn.Module] = []  # [model, its float64 copy]: one cached at a time


def float64_twin(model: nn.Module) -> nn.Module:
    """A float64 copy of ``model``, cached while ``model`` is the one being compared."""
    if not _TWIN or _TWIN[0] is not model:
        _TWIN.clear()
        gc.collect()
        _TWIN.extend([model, copy.deepcopy(model).double()])
    return _TWIN[1]


def float64_reference(case: Case, model: nn.Module, method: str, image: torch.Tensor, target) -> dict:
    """Logits, channel weights and heatmap with forward, backward and map all in float64
    (falls back to float32 activations and gradients if the model does not run in float64)."""
    try:
        eager = eager_reference(case, float64_twin(model), image.double(), target)
        dtype = "float64"
    except Exception:
        eager = eager_reference(case, model, image, target)
        dtype = "float32 A, G"
    cam = reference_cam(method, model, eager)
    return {"logits": eager["logits"], "weights": cam["weights"], "activation": eager["A"].mean(axis=(2, 3)),
            "heatmap": fp64_heatmap(cam["saliency"], case.input_size), "dtype": dtype}
