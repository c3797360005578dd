"""Models that are hard to export: each one either exports a graph that agrees with eager autograd,
or is refused with one TextcamError line that says why and what to do.

An export that works is checked here against a Grad-CAM computed in this file, independently of
textcam's JointExplainer: the explained layer's output gets a zero tensor added (its gradient is the
gradient with respect to that output, whatever the model does to it afterwards, in place or not),
the activation is copied when the layer returns it, and the reference runs in float64 on fresh
images with a batch size the graph was not traced with.
"""

from __future__ import annotations

import copy
import re
import sys
from collections import namedtuple
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
nn = torch.nn
F = torch.nn.functional

from textcam.errors import TextcamError  # noqa: E402
from textcam.export import export_bundle  # noqa: E402
from textcam.export.joint_graph import finish_map, replace_first  # noqa: E402

SIZE = 16

# --- helpers ------------------------------------------------------------------------------------------


def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message and message.strip() == message and message
    assert "Traceback" not in message
    return message


def _export_fails(model, layer, out, match, **kwargs) -> str:
    kwargs.setdefault("input_size", SIZE)
    with pytest.raises(TextcamError) as info:
        export_bundle(model, layer, out, **kwargs)
    message = _one_line(info)
    assert re.search(match, message), message
    assert not out.exists()
    assert not list(out.absolute().parent.glob(f".{out.name}.*")), "temporary directories left behind"
    return message


def eager_gradcam(model, layer: str, image, target, dtype=torch.float64) -> dict[str, np.ndarray]:
    """Grad-CAM by eager autograd: ``target`` [B] class indices, -1 for the predicted class.

    The map is finished (ReLU, normalization, resize) by textcam's ``finish_map``, which the parity
    tests hold to pytorch-grad-cam; what this file checks is the activation and its gradient."""
    model = copy.deepcopy(model).to(dtype).eval()
    module = dict(model.named_modules())[layer]
    snapshots, deltas = [], []

    def hook(_module, _inputs, output):
        first = output[0] if isinstance(output, (tuple, list)) else output
        snapshots.append(first.detach().clone())
        delta = torch.zeros_like(first, requires_grad=True)
        deltas.append(delta)
        return replace_first(output, first + delta)

    handle = module.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = model(image.to(dtype))
    finally:
        handle.remove()
    assert len(deltas) == 1, f"layer {layer!r} ran {len(deltas)} times"
    chosen = torch.where(target < 0, logits.argmax(dim=1), target)
    (gradient,) = torch.autograd.grad(logits.gather(1, chosen[:, None]).sum(), deltas[0])
    activation = snapshots[0]
    weights = gradient.mean(dim=(2, 3))
    saliency = (weights[:, :, None, None] * activation).sum(dim=1)
    cam = finish_map(saliency, tuple(activation.shape[2:]), tuple(image.shape[2:]))
    return {
        "logits": logits.detach().numpy(),
        "class_index": chosen.numpy(),
        "cam": cam.detach().numpy(),
        "channel_weights": weights.numpy(),
        "channel_activation": activation.mean(dim=(2, 3)).numpy(),
    }


def run_bundle(path, image, target) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    outputs = session.run(None, {"image": image.numpy(), "target_class": target.numpy()})
    return dict(zip(names, outputs, strict=True))


def _rel(a, b) -> float:
    return float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-12))


def assert_matches_eager(model, result, dtype=torch.float64, seed=7) -> dict[str, np.ndarray]:
    """The bundle's graph against :func:`eager_gradcam` on 3 fresh images (traced with 2)."""
    image = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    target = torch.tensor([-1, 0, 2])
    got = run_bundle(result.path, image, target)
    want = eager_gradcam(model, result.layer, image, target, dtype)
    np.testing.assert_array_equal(got["class_index"], want["class_index"])
    for name, tolerance in (("logits", 1e-4), ("channel_activation", 1e-4), ("channel_weights", 1e-3)):
        assert _rel(got[name], want[name]) < tolerance, (name, _rel(got[name], want[name]))
    assert np.abs(got["cam"] - want["cam"]).max() < 1e-3
    return got


@pytest.fixture
def out(tmp_path):
    return tmp_path / "out.textcam"


class Net(nn.Module):
    """conv -> block -> global average pool -> linear; subclasses change what happens after ``block``."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.block = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, num_classes)

    def after(self, features):
        return features

    def forward(self, x):
        return self.fc(self.after(self.block(self.conv(x))).mean(dim=(2, 3)))


def net(after):
    """A :class:`Net` whose ``after`` is ``after(features)``."""

    class Custom(Net):
        def after(self, features):
            return after(features)

    return Custom()


# --- 1. control flow on tensor values -----------------------------------------------------------------


class IfMean(Net):
    def forward(self, x):
        features = self.block(self.conv(x))
        if torch.isfinite(features).all():  # the same answer for every batch: only the tracer trips on it
            features = features * 2
        return self.fc(features.mean(dim=(2, 3)))


class ToList(Net):
    def forward(self, x):
        features = self.block(self.conv(x))
        rows = int((features.abs() >= 0).all().tolist()) * 8
        return self.fc(features[:, :, :rows].mean(dim=(2, 3)))


@pytest.mark.parametrize("model", [IfMean(), ToList()], ids=["if-mean", "tolist"])
def test_data_dependent_control_flow_is_refused(out, model):
    _export_fails(
        model,
        "block",
        out,
        r"^cannot trace the model: the model uses a tensor's value in Python control "
        r"flow or as a size \(e\.g\. `if x\.mean\(\) > 0`, \.item\(\), \.tolist\(\)\).*"
        r"use tensor operations such as torch\.where instead",
    )


def test_torch_where_instead_of_a_branch_exports(out):
    """The message's advice works: the same choice per image, as tensor operations."""
    model = net(lambda f: torch.where(f.mean(dim=(1, 2, 3), keepdim=True) > 0, f * 2, f))
    assert_matches_eager(model, export_bundle(model, "block", out, input_size=SIZE))


# --- 2. custom autograd.Function ---------------------------------------------------------------------


class Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


class StraightThrough(torch.autograd.Function):
    """A backward that is not the forward's derivative (a straight-through estimator)."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x * 2) / 2

    @staticmethod
    def backward(ctx, grad):
        return grad * 3


class ItemInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * float(x.abs().max().item())


class NumpyForward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.from_numpy(np.tanh(x.detach().numpy()))

    @staticmethod
    def backward(ctx, grad):
        return grad


def test_custom_function_backward_is_traced(out):
    model = net(Square.apply)
    assert_matches_eager(model, export_bundle(model, "block", out, input_size=SIZE))


def test_custom_function_backward_is_the_one_written(out):
    """The graph differentiates with the Function's own backward, as eager autograd does, not with
    the derivative of its forward (here zero almost everywhere)."""
    model = net(StraightThrough.apply)
    got = assert_matches_eager(model, export_bundle(model, "block", out, input_size=SIZE))
    assert np.abs(got["channel_weights"]).max() > 1e-3  # round()'s own derivative would give zeros


@pytest.mark.parametrize(
    "function, match",
    [
        (ItemInBackward, r"^cannot trace the model: the model uses a tensor's value in Python control flow"),
        (
            NumpyForward,
            r"^cannot trace the model: the model takes a tensor's values out of torch \(\.numpy\(\), "
            r"NumPy functions.*use torch operations instead",
        ),
    ],
    ids=["item-in-backward", "numpy-in-forward"],
)
def test_untraceable_custom_function_is_refused(out, function, match):
    _export_fails(net(function.apply), "block", out, match)


# --- 3. in-place operations on the explained activation ----------------------------------------------


def _add_one(f):
    f.add_(1)
    return f


def _double(f):
    f.mul_(2)
    return f


def _plus_equals(f):
    f += 0.5
    return f * 3


def _set_channel(f):
    f[:, 0] = 0
    return f


def _relu_then_scale(f):
    torch.relu_(f)
    return f * 2


@pytest.mark.parametrize(
    "after",
    [_add_one, _double, lambda f: F.relu(f, inplace=True), _plus_equals, _set_channel, _relu_then_scale],
    ids=["add_", "mul_", "relu-inplace", "+=", "setitem", "relu_"],
)
def test_in_place_op_after_the_layer_explains_its_output(out, after):
    """The activation is what the layer returned (before the op), the gradient is with respect to it."""
    model = net(after)
    assert_matches_eager(model, export_bundle(model, "block", out, input_size=SIZE))


def test_in_place_op_on_a_tensor_autograd_saved_is_refused(out):
    def square_then_scale(f):
        squared = f * f  # saves f for its backward
        f.mul_(3)
        return f + squared

    _export_fails(
        net(square_then_scale),
        "block",
        out,
        r"^the model's backward pass fails \(one of the variables needed for gradient computation has been "
        r"modified by an inplace operation: .*\); Grad-CAM needs the logits' gradient: rewrite",
    )


def test_cam_refuses_a_head_that_reads_the_layer_changed_in_place(out):
    _export_fails(
        net(_double), "block", out, r"^method=cam needs .* the model changes the layer's output in place", method="cam"
    )


class InPlaceInput(Net):
    def forward(self, x):
        x.sub_(0.5)
        return super().forward(x)


def test_in_place_op_on_the_input_image_is_refused(out):
    _export_fails(
        InPlaceInput(),
        "block",
        out,
        r"^the model changes its input image in place \(e\.g\. x\.sub_\(mean\)"
        r".*make that operation out-of-place",
    )


# --- 4. outputs other than one logits tensor ---------------------------------------------------------


class Returns(Net):
    def __init__(self, wrap):
        super().__init__()
        self.wrap = wrap

    def forward(self, x):
        return self.wrap(super().forward(x))


@pytest.mark.parametrize(
    "wrap, match",
    [
        (
            lambda z: {"logits": z, "aux": z},
            r"it returned dict with keys 'logits', 'aux'; wrap it in a module whose "
            r"forward returns the logits tensor, e\.g\. model\(x\)\['logits'\]$",
        ),
        (lambda z: {"out": z}, r"it returned dict with keys 'out'; .* e\.g\. model\(x\)\['out'\]$"),
        (lambda z: (z, z[:, :1]), r"it returned tuple of 2 \(\(2, 3\), \(2, 1\)\); .* e\.g\. model\(x\)\[0\]$"),
        (lambda z: [z], r"it returned list of 1 \(\(2, 3\)\); .* e\.g\. model\(x\)\[0\]$"),
        (
            lambda z: SimpleNamespace(logits=z),
            r"it returned SimpleNamespace with \.logits \(2, 3\); .* e\.g\. "
            r"model\(x\)\.logits$",
        ),
        (lambda z: z[:, :, None, None], r"it returned \(2, 3, 1, 1\)$"),
        (lambda z: z.argmax(dim=1, keepdim=True), r"it returned an int64 tensor \(2, 1\), not float logits$"),
        (
            lambda z: z.mean(dim=0, keepdim=True),
            r"it returned \(1, 3\) for a batch of 2 images \(the first dimension "
            r"must be the batch\)$",
        ),
        (
            lambda z: z.squeeze(),
            r"it returned \(3,\) for one image and \(2, 3\) for 2 \(a \.squeeze\(\) that drops "
            r"the batch dimension\?\)$",
        ),
    ],
    ids=["dict-logits", "dict-other", "tuple", "list", "hf-like", "4d", "int", "no-batch", "squeeze"],
)
def test_outputs_other_than_a_logits_tensor_are_refused(out, wrap, match):
    _export_fails(Returns(wrap), "block", out, r"^the model must return logits of shape \[batch, classes\]; " + match)


class AuxInTraining(Net):
    """Like torchvision's GoogLeNet and Inception v3: (logits, aux) in train mode, logits in eval mode."""

    def __init__(self):
        super().__init__()
        self.aux = nn.Linear(4, 3)

    def forward(self, x):
        features = self.block(self.conv(x)).mean(dim=(2, 3))
        return (self.fc(features), self.aux(features)) if self.training else self.fc(features)


def test_model_with_aux_outputs_in_train_mode_exports_in_eval_mode(out):
    model = AuxInTraining().train()
    result = export_bundle(model, "block", out, input_size=SIZE)
    assert model.training  # the caller's model is left as it was
    assert_matches_eager(model, result)


def test_wrapping_a_dict_model_as_the_message_says_exports(out):
    class Wrapped(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x)["logits"]

    model = Wrapped(Returns(lambda z: {"logits": z}))
    assert_matches_eager(model, export_bundle(model, "model.block", out, input_size=SIZE))


# --- 5. integer inputs ------------------------------------------------------------------------------------


class TokenIds(nn.Module):
    """Takes integer ids: the first op is an embedding."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(10, 4)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, ids):
        return self.fc(self.conv(self.embed(ids[:, 0]).permute(0, 3, 1, 2)).mean(dim=(2, 3)))


class Grayscale(Net):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)


class Quantized(Net):
    """Casts the image to integer levels first, so no gradient reaches the image itself."""

    def forward(self, x):
        levels = (x * 4).clamp(-8, 8).to(torch.int64)
        return super().forward(levels.float() / 4)


class BucketEmbedding(TokenIds):
    """The image's values, as integers, index an embedding."""

    def forward(self, x):
        ids = (x[:, 0] * 2).clamp(0, 9).long()
        return self.fc(self.conv(self.embed(ids).permute(0, 3, 1, 2)).mean(dim=(2, 3)))


def test_model_taking_integer_ids_is_refused(out):
    _export_fails(
        TokenIds(),
        "conv",
        out,
        r"^the model cannot take a float image batch \(2, 3, 16, 16\) \(Expected "
        r"tensor for argument #1 'indices'.*\); textcam exports image classifiers "
        r"whose forward takes float images \[batch, 3, H, W\]: wrap the model",
    )


def test_model_taking_one_channel_is_refused(out):
    _export_fails(
        Grayscale(),
        "block",
        out,
        r"^the model cannot take a 3-channel \(RGB\) image batch .*to have 1 "
        r"channels.*; textcam feeds RGB images: wrap the model",
    )


@pytest.mark.parametrize("model", [Quantized(), BucketEmbedding()], ids=["cast-to-int", "embedding-of-levels"])
@pytest.mark.parametrize("layer", ["conv", None])
def test_model_casting_the_image_to_integers_exports(out, model, layer):
    """The layer's gradient does not need the image's: layers after the cast are explained."""
    result = export_bundle(model, layer, out, input_size=SIZE)
    assert result.layer == "conv" if layer else result.layer in ("block", "conv")
    assert_matches_eager(model, result, dtype=torch.float32)  # the model casts to float32 itself


@pytest.mark.parametrize(
    "input_size, match",
    [
        (16.0, r"^input_size=16\.0: expected H or HxW \(integers\)"),
        ((16, 16.0), r"^input_size=16x16\.0: expected H or HxW \(integers\)"),
        ((16, None), r"^input_size=16xNone: expected H or HxW \(integers\)"),
    ],
)
def test_non_integer_input_size_is_refused(out, input_size, match):
    _export_fails(Net(), "block", out, match, input_size=input_size)


# --- 6. a module that runs more than once --------------------------------------------------------------


class Shared(Net):
    def forward(self, x):
        return self.fc(self.block(self.block(self.conv(x))).mean(dim=(2, 3)))


class SharedThenLast(Shared):
    def __init__(self):
        super().__init__()
        self.last = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.fc(self.last(self.block(self.block(self.conv(x)))).mean(dim=(2, 3)))


class SharedRelu(nn.Module):
    """One ReLU module after both convolutions (as in torchvision's ResNet blocks)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.relu(self.conv2(self.relu(self.conv1(x)))).mean(dim=(2, 3)))


class Repeated(Net):
    """The same block twice in a Sequential: the Sequential runs once, its block twice."""

    def __init__(self):
        super().__init__()
        self.stage = nn.Sequential(self.block, self.block)

    def forward(self, x):
        return self.fc(self.stage(self.conv(x)).mean(dim=(2, 3)))


@pytest.mark.parametrize(
    "model, layer, calls",
    [(Shared(), "block", 2), (SharedRelu(), "relu", 2), (Repeated(), "block", 2)],
    ids=["block-twice", "shared-relu", "in-a-sequential"],
)
def test_layer_that_runs_twice_is_refused(out, model, layer, calls):
    _export_fails(
        model,
        layer,
        out,
        rf"^target_layer='{layer}': the module runs {calls} times in one forward pass "
        r"\(it is shared\), so which of its outputs to explain is ambiguous; choose a layer "
        r"that runs once, e\.g\. '\w+'$",
    )


@pytest.mark.parametrize(
    "model, expected",
    [(Shared(), "conv"), (SharedThenLast(), "last"), (SharedRelu(), "conv2"), (Repeated(), "stage")],
    ids=["block-twice", "shared-then-last", "shared-relu", "in-a-sequential"],
)
def test_default_layer_skips_shared_modules(out, model, expected):
    result = export_bundle(model, None, out, input_size=SIZE)
    assert result.layer == expected
    assert_matches_eager(model, result)


def test_module_registered_under_two_names(out):
    model = Net()
    model.alias = model.block
    _export_fails(
        model,
        "alias",
        out,
        r"^target_layer='alias': this module is also registered as 'block', the name its "
        r"output is recorded under; pass target_layer='block'$",
    )


# --- more: models one static graph cannot stand for ----------------------------------------------------


class AlwaysDropout(Net):
    def after(self, features):
        return F.dropout(features, 0.5, training=True)


class Counter(Net):
    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls.add_(1)
        return super().forward(x) * self.calls


class BatchStatistics(Net):
    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm2d(4, track_running_stats=False)

    def after(self, features):
        return self.norm(features)


class BranchOnBatchSize(Net):
    def forward(self, x):
        logits = super().forward(x)
        return logits * 0.5 if x.shape[0] == 1 else logits


class FixedBatch(Net):
    def after(self, features):
        return features.reshape(2, 4, SIZE, SIZE)


@pytest.mark.parametrize(
    "model, match",
    [
        (
            AlwaysDropout(),
            r"^the model returns different logits for the same images on two runs in eval mode \(dropout "
            r"forced on.*\); make its eval-mode forward deterministic$",
        ),
        (Counter(), r"^the model returns different logits for the same images on two runs"),
        (
            BatchStatistics(),
            r"^the model's logits for an image change with the other images in its batch \(BatchNorm "
            r"without running statistics.*\); make each image's logits independent of its batch$",
        ),
        (BranchOnBatchSize(), r"^the model's logits for an image change with the other images in its batch"),
        (
            FixedBatch(),
            r"^the model cannot run on a batch of one image \(shape '\[2, 4, 16, 16\]' is invalid.*\); "
            r"the exported graph takes any batch size, so the model must too",
        ),
    ],
    ids=["dropout-forced-on", "state-in-forward", "batch-statistics", "branch-on-batch-size", "fixed-batch"],
)
def test_model_whose_logits_depend_on_more_than_the_image_is_refused(out, model, match):
    _export_fails(model, "block", out, match)


def test_train_mode_dropout_is_switched_off(out):
    class WithDropout(Net):
        def __init__(self):
            super().__init__()
            self.drop = nn.Dropout(0.5)

        def after(self, features):
            return self.drop(features)

    model = WithDropout().train()
    result = export_bundle(model, "block", out, input_size=SIZE)
    assert model.training
    assert_matches_eager(model, result)  # eager_gradcam runs it in eval mode


def test_model_without_parameters_exports(out):
    class Parameterless(nn.Module):
        def __init__(self):
            super().__init__()
            self.pool = nn.AvgPool2d(2)
            self.act = nn.Tanh()

        def forward(self, x):
            return self.act(self.pool(x)).flatten(2).mean(dim=2)  # 3 "classes": the channel means

    model = Parameterless()
    assert not list(model.parameters())
    for layer in ("pool", None):
        result = export_bundle(model, layer, out, input_size=SIZE, force=True)
        assert_matches_eager(model, result)


class NoGradHead(Net):
    def forward(self, x):
        features = self.block(self.conv(x))
        with torch.no_grad():
            return self.fc(features.mean(dim=(2, 3)))


class DetachedFeatures(Net):
    def after(self, features):
        return features.detach()


class UnusedBranch(Net):
    def __init__(self):
        super().__init__()
        self.side = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        features = self.conv(x)
        self.side(features)  # computed, never used
        return self.fc(self.block(features).mean(dim=(2, 3)))


@pytest.mark.parametrize(
    "model, layer, match",
    [
        (
            NoGradHead(),
            "block",
            r"^the model's logits carry no gradient \(its forward computes them under "
            r"torch\.no_grad\(\) or from detached tensors\); Grad-CAM needs their gradient",
        ),
        (
            DetachedFeatures(),
            "block",
            r"^target_layer='block': the logits do not depend on its output through "
            r"differentiable operations .*; choose a layer the logits depend on$",
        ),
        (
            DetachedFeatures(),
            None,
            r"^no layer of this model has a spatial output that the logits depend on \(the "
            r"gradient reaches none of them: \.detach\(\) or torch\.no_grad\(\) in forward\?\); "
            r"pass target_layer \(--layer\)$",
        ),
        (
            UnusedBranch(),
            "side",
            r"^target_layer='side': the logits do not depend on its output .*; choose a layer the "
            r"logits depend on, e\.g\. 'block'$",
        ),
    ],
    ids=["no-grad-head", "detached-named", "detached-default", "unused-branch"],
)
def test_layer_without_a_gradient_is_refused(out, model, layer, match):
    _export_fails(model, layer, out, match)


class TupleNoneFirst(nn.Module):
    def forward(self, x):
        return None, x


class DictOut(nn.Module):
    def forward(self, x):
        return {"out": x}


class PositionMap(nn.Module):
    """A map that does not depend on the image: one for the whole batch."""

    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(1, 4, SIZE, SIZE))

    def forward(self, x):
        return self.table * 1.0


class OddLayers(Net):
    def __init__(self):
        super().__init__()
        self.none_first, self.dict_out, self.position = TupleNoneFirst(), DictOut(), PositionMap()
        self.never = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        features = self.block(self.dict_out(self.none_first(self.conv(x))[1])["out"])
        return self.fc((features + self.position(features)).mean(dim=(2, 3)))


@pytest.mark.parametrize(
    "layer, match",
    [
        (
            "none_first",
            r"its output is a tuple whose first element is None, not a float tensor \(textcam explains a "
            r"tensor output, or the first element of a tuple\); choose another layer, e\.g\. 'block'$",
        ),
        ("dict_out", r"its output is a dict, not a float tensor"),
        ("never", r"this module did not run in the forward pass; choose a layer the model calls, e\.g\. 'block'$"),
        (
            "position",
            r"its output \(1, 4, 16, 16\) does not start with the batch dimension \(2\), so it has no map per "
            r"image; choose another layer, e\.g\. 'block'$",
        ),
    ],
)
def test_layer_without_a_per_image_tensor_output_is_refused(out, layer, match):
    _export_fails(OddLayers(), layer, out, rf"^target_layer='{layer}': " + match)


def test_default_layer_with_odd_layers_around(out):
    model = OddLayers()
    assert_matches_eager(model, export_bundle(model, None, out, input_size=SIZE))


Features = namedtuple("Features", "maps summary")


class NamedTupleLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        maps = self.conv(x)
        return Features(maps, maps.mean(dim=(2, 3)))


class NamedTupleNet(Net):
    def __init__(self):
        super().__init__()
        self.conv = NamedTupleLayer()

    def forward(self, x):
        return self.fc(self.block(self.conv(x).maps).mean(dim=(2, 3)))


def test_layer_returning_a_named_tuple_explains_its_first_field(out):
    model = NamedTupleNet()
    assert_matches_eager(model, export_bundle(model, "conv", out, input_size=SIZE))


# --- the command line ---------------------------------------------------------------------------------------


def test_cli_prints_one_line_for_a_bad_model(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from textcam.cli import main

    (tmp_path / "bad_models_cli.py").write_text(
        "import torch\n"
        "class Shared(torch.nn.Module):\n"
        "    def __init__(self, num_classes=3):\n"
        "        super().__init__()\n"
        "        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)\n"
        "        self.block = torch.nn.Conv2d(4, 4, 3, padding=1)\n"
        "        self.fc = torch.nn.Linear(4, num_classes)\n"
        "    def forward(self, x):\n"
        "        return self.fc(self.block(self.block(self.conv(x))).mean(dim=(2, 3)))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "bad_models_cli", raising=False)  # undone (removed) after the test
    out = tmp_path / "shared.textcam"
    result = CliRunner().invoke(
        main, ["export", "--model", "bad_models_cli:Shared", "--layer", "block", "--input-size", "16", "-o", str(out)]
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert result.exit_code == 1, result.output
    assert errors == [
        "error: --layer 'block': the module runs 2 times in one forward pass (it is shared), so which "
        "of its outputs to explain is ambiguous; choose a layer that runs once, e.g. 'conv'"
    ], result.stderr
    assert "Traceback" not in result.output and not out.exists()


@pytest.mark.parametrize("size", ["16.5", "16x16.5", "1e2"])
def test_cli_refuses_a_non_integer_input_size(tmp_path, size):
    from click.testing import CliRunner

    from textcam.cli import main

    out = tmp_path / "x.textcam"
    arguments = ["export", "--model", "torchvision:resnet18", "--input-size", size, "-o", str(out)]
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 2, result.output
    assert "Error: Invalid value for '--input-size': expected H or HxW, e.g. 224 or 224x288" in result.stderr
    assert not out.exists()
