"""The backward decompositions (export/decompositions.py) against eager autograd.

Each decomposition is called directly with the arguments the aten backward op receives and
compared with ``torch.autograd.grad`` of the forward op on random inputs. One end-to-end test
exports a tiny CNN whose explained layer feeds a max pool and checks the ONNX graph has no
MaxPool ``Indices`` output and that ONNX Runtime reproduces the eager gradients.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from textcam.export import decompositions as D  # noqa: E402

RTOL, ATOL = 1e-5, 1e-5


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _input_grad(forward, x: torch.Tensor, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(random upstream gradient, eager gradient of forward(x) w.r.t. x for it)."""
    x = x.clone().requires_grad_(True)
    y = forward(x)
    upstream = torch.randn(y.shape, generator=_generator(seed))
    (grad,) = torch.autograd.grad(y, x, upstream)
    return upstream, grad


# --- convolution_backward --------------------------------------------------------------------

CONV_CASES = {
    # name: (input shape, out channels, kernel, stride, padding, dilation, groups)
    "3x3 s1 p1": ((2, 4, 9, 9), 6, (3, 3), 1, 1, 1, 1),
    "3x3 s2 p1 odd size (output_padding 0)": ((2, 4, 9, 9), 6, (3, 3), 2, 1, 1, 1),
    "3x3 s2 p1 even size (output_padding 1)": ((2, 4, 8, 8), 6, (3, 3), 2, 1, 1, 1),
    "7x7 s2 p3 resnet stem, odd": ((1, 3, 33, 31), 8, (7, 7), 2, 3, 1, 1),
    "1x1 s2 downsample, even": ((2, 8, 10, 10), 16, (1, 1), 2, 0, 1, 1),
    "groups=4": ((2, 8, 11, 11), 12, (3, 3), 1, 1, 1, 4),
    "depthwise s2": ((2, 6, 12, 12), 6, (3, 3), 2, 1, 1, 6),
    "dilation 2": ((2, 4, 13, 13), 5, (3, 3), 1, 2, 2, 1),
    "dilation 2 s2, needs output_padding": ((1, 4, 14, 15), 5, (3, 3), 2, 1, 2, 1),
    "rectangular kernel and stride": ((2, 3, 12, 17), 4, (3, 5), (2, 3), (1, 2), 1, 1),
    "stride 3 leaves rows unused": ((1, 2, 11, 11), 3, (3, 3), 3, 0, 1, 1),
}


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_convolution_backward_matches_autograd(case):
    shape, out_channels, kernel, stride, padding, dilation, groups = CONV_CASES[case]
    x = torch.randn(shape, generator=_generator())
    weight = torch.randn(out_channels, shape[1] // groups, *kernel, generator=_generator(2))
    upstream, expected = _input_grad(lambda t: F.conv2d(t, weight, None, stride, padding, dilation, groups), x)
    pair = D._pair
    got = D.convolution_backward(
        upstream, x, weight, [out_channels], pair(stride, 2), pair(padding, 2), pair(dilation, 2),
        False, [0, 0], groups, [True, False, False],
    )
    assert got[1] is None and got[2] is None
    assert got[0].shape == x.shape
    torch.testing.assert_close(got[0], expected, rtol=RTOL, atol=ATOL)


def test_convolution_backward_1d_matches_autograd():
    x = torch.randn(2, 4, 21, generator=_generator())
    weight = torch.randn(6, 2, 5, generator=_generator(2))
    upstream, expected = _input_grad(lambda t: F.conv1d(t, weight, None, 2, 2, 1, 2), x)
    got = D.convolution_backward(upstream, x, weight, None, [2], [2], [1], False, [0], 2, [True, False, False])
    torch.testing.assert_close(got[0], expected, rtol=RTOL, atol=ATOL)


def test_convolution_backward_leaves_what_it_cannot_do_to_the_exporter():
    x, weight = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    grad = torch.randn(1, 3, 3, 3)
    weight_grad = D.convolution_backward(grad, x, weight, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
                                         [True, True, False])
    transposed = D.convolution_backward(grad, x, weight, None, [1, 1], [0, 0], [1, 1], True, [0, 0], 1,
                                        [True, False, False])
    assert weight_grad is NotImplemented and transposed is NotImplemented


# --- max_pool2d_backward ---------------------------------------------------------------------

POOL_CASES = {
    # name: (input shape, kernel, stride, padding)
    "resnet 3x3 s2 p1, even": ((2, 3, 16, 16), 3, 2, 1),
    "resnet 3x3 s2 p1, odd": ((2, 3, 17, 15), 3, 2, 1),
    "2x2 s2, even": ((2, 3, 12, 12), 2, 2, 0),
    "2x2 s2, odd (last row dropped)": ((2, 3, 13, 11), 2, 2, 0),
    "3x3 s1 p1 (overlapping)": ((1, 2, 9, 9), 3, 1, 1),
    "stride defaults to kernel": ((1, 2, 8, 8), 2, None, 0),
}

TIE_INPUTS = {
    "random": lambda shape: torch.randn(shape, generator=_generator()),
    "few distinct values (ties)": lambda shape: torch.randint(0, 3, shape, generator=_generator()).float(),
    "all equal": lambda shape: torch.full(shape, 0.5),
    "all zero (after ReLU)": lambda shape: torch.relu(-torch.rand(shape, generator=_generator())),
}


@pytest.mark.parametrize("values", list(TIE_INPUTS))
@pytest.mark.parametrize("case", list(POOL_CASES))
def test_max_pool2d_backward_matches_autograd(case, values):
    shape, kernel, stride, padding = POOL_CASES[case]
    x = TIE_INPUTS[values](shape)
    upstream, expected = _input_grad(lambda t: F.max_pool2d(t, kernel, stride, padding), x)
    got = D.max_pool2d_backward(
        upstream, x, [kernel, kernel], [] if stride is None else [stride, stride], [padding, padding], [1, 1],
        False, None,
    )
    assert got.shape == x.shape
    torch.testing.assert_close(got, expected, rtol=RTOL, atol=ATOL)


MAX_POOL_MORE = {
    # name: (input shape, kernel, stride, padding, dilation, ceil_mode)
    "ceil mode 3x3 s2 (GoogLeNet, SqueezeNet)": ((2, 3, 8, 8), 3, 2, 0, 1, True),
    "ceil mode 2x2 s2 odd size": ((1, 2, 7, 9), 2, 2, 0, 1, True),
    "ceil mode with padding": ((1, 2, 10, 10), 3, 2, 1, 1, True),
    "dilation 2": ((1, 2, 11, 11), 3, 1, 1, 2, False),
    "dilation 2 s2 ceil": ((1, 2, 12, 13), 2, 2, 0, 2, True),
}


@pytest.mark.parametrize("values", list(TIE_INPUTS))
@pytest.mark.parametrize("case", list(MAX_POOL_MORE))
def test_max_pool2d_backward_ceil_mode_and_dilation_match_autograd(case, values):
    shape, kernel, stride, padding, dilation, ceil = MAX_POOL_MORE[case]
    x = TIE_INPUTS[values](shape)
    upstream, expected = _input_grad(lambda t: F.max_pool2d(t, kernel, stride, padding, dilation, ceil), x)
    got = D.max_pool2d_backward(upstream, x, [kernel] * 2, [stride] * 2, [padding] * 2, [dilation] * 2, ceil, None)
    torch.testing.assert_close(got, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("values", list(TIE_INPUTS))
def test_adaptive_max_pool2d_backward_global_matches_autograd(values):
    x = TIE_INPUTS[values]((2, 3, 5, 6))
    upstream, expected = _input_grad(lambda t: F.adaptive_max_pool2d(t, 1), x)
    torch.testing.assert_close(D.adaptive_max_pool2d_backward(upstream, x, None), expected, rtol=RTOL, atol=ATOL)
    assert D.adaptive_max_pool2d_backward(torch.ones(2, 3, 2, 2), x, None) is NotImplemented


# --- adaptive_avg_pool2d_backward and avg_pool2d_backward -------------------------------------

ADAPTIVE_CASES = {
    "divisible 8->4": ((2, 3, 8, 8), (4, 4)),
    "non-divisible 7->3": ((2, 3, 7, 7), (3, 3)),
    "non-divisible rectangular 5x11->(2,3)": ((1, 4, 5, 11), (2, 3)),
    "global 1x1": ((2, 5, 7, 6), (1, 1)),
    "upsampling 3->5": ((1, 2, 3, 3), (5, 5)),
}


@pytest.mark.parametrize("case", list(ADAPTIVE_CASES))
def test_adaptive_avg_pool2d_backward_matches_autograd(case):
    shape, size = ADAPTIVE_CASES[case]
    x = torch.randn(shape, generator=_generator())
    upstream, expected = _input_grad(lambda t: F.adaptive_avg_pool2d(t, size), x)
    got = D.adaptive_avg_pool2d_backward(upstream, x)
    torch.testing.assert_close(got, expected, rtol=RTOL, atol=ATOL)


def test_adaptive_pooling_matrix_rows_are_pytorch_windows():
    matrix = D.adaptive_pooling_matrix(7, 3, torch.float32)
    x = torch.randn(1, 1, 1, 7, generator=_generator())
    torch.testing.assert_close(x[0, 0] @ matrix.t(), F.adaptive_avg_pool2d(x, (1, 3))[0, 0])


AVG_CASES = {
    # name: (input shape, kernel, stride, padding, count_include_pad, divisor_override)
    "2x2 s2": ((2, 3, 8, 8), 2, 2, 0, True, None),
    "2x2 s2 odd size": ((2, 3, 9, 7), 2, 2, 0, True, None),
    "3x3 s1 p1 count_include_pad": ((1, 2, 7, 7), 3, 1, 1, True, None),
    "3x3 s2 p1 odd size": ((1, 2, 11, 11), 3, 2, 1, True, None),
    "3x3 s2 divisor_override": ((1, 2, 9, 9), 3, 2, 0, True, 4),
    "padding without count_include_pad, no padding used": ((1, 2, 8, 8), 2, 2, 0, False, None),
    "padding without count_include_pad (edge windows smaller)": ((1, 2, 8, 8), 3, 2, 1, False, None),
}

# ceil mode: the last windows run past the input (timm's avg-down shortcuts, Inception)
AVG_CEIL_CASES = {
    "2x2 s2 ceil odd size": ((1, 2, 7, 9), 2, 2, 0, True, None),
    "3x3 s2 p1 ceil count_include_pad": ((1, 2, 10, 10), 3, 2, 1, True, None),
    "3x3 s2 p1 ceil without count_include_pad": ((1, 2, 10, 10), 3, 2, 1, False, None),
    "2x2 s2 ceil divisor_override": ((1, 2, 7, 7), 2, 2, 0, True, 3),
}


@pytest.mark.parametrize(("case", "ceil"), [(c, False) for c in AVG_CASES] + [(c, True) for c in AVG_CEIL_CASES])
def test_avg_pool2d_backward_matches_autograd(case, ceil):
    shape, kernel, stride, padding, include_pad, divisor = (AVG_CEIL_CASES if ceil else AVG_CASES)[case]
    x = torch.randn(shape, generator=_generator())
    upstream, expected = _input_grad(
        lambda t: F.avg_pool2d(t, kernel, stride, padding, ceil, include_pad, divisor), x
    )
    got = D.avg_pool2d_backward(upstream, x, [kernel, kernel], [stride, stride], [padding, padding], ceil,
                                include_pad, divisor)
    torch.testing.assert_close(got, expected, rtol=RTOL, atol=ATOL)


# --- select_backward / slice_backward ------------------------------------------------------------


@pytest.mark.parametrize("dim, index", [(1, 0), (1, -1), (2, 3), (-1, 2)])
def test_select_backward_matches_autograd(dim, index):
    x = torch.randn(2, 5, 6, 4, generator=_generator())
    upstream, expected = _input_grad(lambda t: t.select(dim, index), x)
    torch.testing.assert_close(D.select_backward(upstream, list(x.shape), dim, index), expected)


@pytest.mark.parametrize("dim, start, end", [(1, 1, 5), (1, 0, 1), (2, -3, 2**62), (-1, 1, -1)])
def test_slice_backward_matches_autograd(dim, start, end):
    x = torch.randn(2, 5, 6, 4, generator=_generator())
    size = x.shape[dim]
    upstream, expected = _input_grad(lambda t: t.narrow(dim, *_normalized(start, end, size)), x)
    torch.testing.assert_close(D.slice_backward(upstream, list(x.shape), dim, start, end, 1), expected)


def _normalized(start, end, size):
    start = start + size if start < 0 else start
    end = min(end + size if end < 0 else end, size)
    return start, end - start


# --- max(dim), fold, upsampling ----------------------------------------------------------------


@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("dim", [1, -1])
def test_max_dim_backward_scatter_matches_autograd(dim, keepdim):
    x = torch.randint(0, 4, (2, 5, 6), generator=_generator()).float()  # ties: the kernel's index wins
    indices = x.max(dim, keepdim).indices
    upstream, expected = _input_grad(lambda t: t.max(dim, keepdim).values, x)
    index, grad = (indices, upstream) if keepdim else (indices.unsqueeze(dim), upstream.unsqueeze(dim))
    got = D.scatter_one_per_row(torch.zeros_like(x), dim, index, grad)
    torch.testing.assert_close(got, expected)
    assert D.scatter_one_per_row(x, dim, torch.cat([index, index], dim), torch.cat([grad, grad], dim)) is NotImplemented


FOLD_CASES = {
    # name: (channels, output size, kernel, dilation, padding, stride)
    "2x2 s2 (patches)": (3, (8, 8), 2, 1, 0, 2),
    "3x3 s1 p1 (overlapping)": (2, (7, 9), 3, 1, 1, 1),
    "3x3 s2 p1 dilation 2": (2, (11, 10), 3, 2, 1, 2),
}


@pytest.mark.parametrize("case", list(FOLD_CASES))
def test_col2im_is_the_backward_of_unfold(case):
    channels, size, kernel, dilation, padding, stride = FOLD_CASES[case]
    x = torch.randn(2, channels, *size, generator=_generator())
    upstream, expected = _input_grad(lambda t: F.unfold(t, kernel, dilation, padding, stride), x)
    args = (list(size), [kernel] * 2, [dilation] * 2, [padding] * 2, [stride] * 2)
    torch.testing.assert_close(D.col2im(upstream, *args), expected, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(D.col2im(upstream[0], *args), expected[0], rtol=RTOL, atol=ATOL)  # unbatched


UPSAMPLE_CASES = {
    # name: (input hw, size or None, scale or None, mode, align_corners)
    "nearest x2": ((5, 6), None, 2.0, "nearest", None),
    "nearest to a size": ((5, 7), (12, 9), None, "nearest", None),
    "nearest x1.5": ((4, 6), None, 1.5, "nearest", None),
    "bilinear x2": ((5, 6), None, 2.0, "bilinear", False),
    "bilinear to a size": ((5, 7), (11, 16), None, "bilinear", False),
    "bilinear align_corners": ((5, 7), (11, 16), None, "bilinear", True),
    "bilinear down": ((9, 8), (4, 5), None, "bilinear", False),
}


@pytest.mark.parametrize("case", list(UPSAMPLE_CASES))
def test_upsample_backward_matches_autograd(case):
    hw, size, scale, mode, align = UPSAMPLE_CASES[case]
    x = torch.randn(2, 3, *hw, generator=_generator())

    def forward(t):
        return F.interpolate(t, size=size, scale_factor=scale, mode=mode, align_corners=align)

    upstream, expected = _input_grad(forward, x)
    scales = (scale, scale) if scale else (None, None)
    if mode == "nearest":
        got = D.upsample_nearest2d_backward(upstream, list(upstream.shape[2:]), list(x.shape), *scales)
    else:
        got = D.upsample_bilinear2d_backward(upstream, list(upstream.shape[2:]), list(x.shape), align, *scales)
    torch.testing.assert_close(got, expected, rtol=RTOL, atol=ATOL)


# --- the table: traced backwards are plain ops ----------------------------------------------------

# forward functions whose backward kernels the table decomposes, each as a model would call it
_P4, _P6 = torch.rand(4, generator=_generator(3)), torch.rand(6, generator=_generator(4))
_KERNEL = torch.rand(5, 4, 3, 3, generator=_generator(5))
TRACED_FORWARDS = {
    "relu": F.relu,
    "batch_norm (eval)": lambda t: F.batch_norm(t, _P4 - 0.5, _P4 + 1, _P4, -_P4),
    "layer_norm": lambda t: F.layer_norm(t, (6,), _P6, -_P6),
    "group_norm": lambda t: F.group_norm(t, 2, _P4, -_P4),
    "softmax": lambda t: F.softmax(t, -1),
    "log_softmax": lambda t: F.log_softmax(t, 1),
    "gelu": F.gelu,
    "gelu tanh": lambda t: F.gelu(t, approximate="tanh"),
    "silu": F.silu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "hardswish": F.hardswish,
    "hardsigmoid": F.hardsigmoid,
    "relu6": F.relu6,
    "elu": F.elu,
    "leaky_relu": F.leaky_relu,
    "mish": F.mish,
    "softplus": F.softplus,
    "glu": lambda t: F.glu(t, 1),
    "prelu": lambda t: F.prelu(t, _P4),
    "max_pool ceil": lambda t: F.max_pool2d(t, 3, 2, 0, 1, True),
    "avg_pool ceil": lambda t: F.avg_pool2d(t, 2, 2, 0, True, False),
    "adaptive_avg_pool": lambda t: F.adaptive_avg_pool2d(t, (2, 3)),
    "adaptive_max_pool 1x1": lambda t: F.adaptive_max_pool2d(t, 1),
    "max(dim)": lambda t: t.max(dim=-1).values,
    "unfold": lambda t: F.unfold(t, 2, stride=2),
    "interpolate nearest": lambda t: F.interpolate(t, scale_factor=2),
    "interpolate bilinear": lambda t: F.interpolate(t, size=(9, 10), mode="bilinear"),
    "roll": lambda t: torch.roll(t, (1, 2), (2, 3)),
    "slice and select": lambda t: t[:, 1:3, 0],
    "conv": lambda t: F.conv2d(t, _KERNEL, stride=2, padding=1),
}
NOT_PLAIN = ("backward", "scatter", "index_put", "col2im")


@pytest.mark.parametrize("name", list(TRACED_FORWARDS))
def test_traced_backward_is_plain_ops_and_matches_autograd(name):
    from torch.fx.experimental.proxy_tensor import make_fx

    forward = TRACED_FORWARDS[name]
    x = torch.randn(2, 4, 6, 6, generator=_generator())
    upstream, expected = _input_grad(forward, x)

    def backward(t, g):
        t = t.detach().requires_grad_(True)
        return torch.autograd.grad(forward(t), t, g)[0]

    graph = make_fx(backward, decomposition_table=D.decomposition_table())(x, upstream)
    ops = {str(node.target) for node in graph.graph.nodes if node.op == "call_function"}
    assert not [op for op in ops if any(word in op for word in NOT_PLAIN)], ops
    torch.testing.assert_close(graph(x, upstream), expected, rtol=RTOL, atol=ATOL)


class SiluNet(torch.nn.Module):
    """conv (explained) -> SiLU -> conv -> SiLU -> GAP -> linear: an EfficientNet-style inner layer."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.block = torch.nn.Sequential(torch.nn.SiLU(), torch.nn.Conv2d(6, 8, 3, stride=2, padding=1),
                                         torch.nn.SiLU())
        self.fc = torch.nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(self.block(self.stem(x)).mean(dim=(2, 3)))


def test_a_layer_followed_by_silu_exports_and_matches_pytorch_grad_cam(make_bundle):
    """Exported through SiLU's backward; the map agrees with pytorch-grad-cam on fresh inputs."""
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from textcam.runtime import Explainer

    torch.manual_seed(0)
    model = SiluNet().eval()
    bundle = make_bundle(model, "stem", classes=None, input_size=(24, 24))
    batch = torch.randn(3, 3, 24, 24, generator=_generator(5))
    explained = Explainer(bundle).explain_batch(batch.numpy(), class_index=[0, 1, 2])
    with GradCAM(model=model, target_layers=[model.stem]) as cam:
        expected = cam(input_tensor=batch, targets=[ClassifierOutputTarget(i) for i in range(3)])
    for result, reference in zip(explained, expected, strict=True):
        assert abs(result.heatmap - reference).max() < 1e-4


# --- end to end: the exported graph -----------------------------------------------------------


class PoolNet(torch.nn.Module):
    """conv (explained) -> max pool 3x3 s2 p1 -> conv -> max pool 2x2 -> GAP -> linear."""

    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.pool1 = torch.nn.MaxPool2d(3, 2, 1)
        self.conv = torch.nn.Conv2d(6, 8, 3, padding=1)
        self.pool2 = torch.nn.MaxPool2d(2, 2)
        self.fc = torch.nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.pool2(torch.relu(self.conv(self.pool1(self.stem(x)))))
        return self.fc(x.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def pool_bundle(make_bundle):
    torch.manual_seed(0)
    model = PoolNet().eval()
    return model, make_bundle(model, "stem", classes=None, method="hirescam", input_size=(23, 21))


def test_exported_max_pool_has_no_indices_output(pool_bundle):
    onnx = pytest.importorskip("onnx")
    _, out = pool_bundle
    graph = onnx.load(str(out / "model.onnx"))
    nodes = list(graph.graph.node) + [n for f in graph.functions for n in f.node]
    pools = [n for n in nodes if n.op_type == "MaxPool"]
    assert pools, "the forward max pools should be in the graph"
    assert all(len([o for o in n.output if o]) == 1 for n in pools), "a MaxPool computes Indices"
    assert not any(n.op_type in ("MaxUnpool", "ScatterElements", "ScatterND") for n in nodes)


def _eager_hirescam(model, image, target):
    """HiResCAM from plain eager autograd (not the joint module): sum_k dY/dA_k * A_k, finished."""
    from textcam.export.joint_graph import finish_map

    captured = {}
    handle = model.stem.register_forward_hook(lambda _m, _i, out: captured.setdefault("a", out))
    try:
        logits = model(image.clone().requires_grad_(True))
    finally:
        handle.remove()
    chosen = torch.where(target < 0, logits.argmax(1), target)
    score = logits.gather(1, chosen[:, None]).sum()
    (grad,) = torch.autograd.grad(score, captured["a"])
    activations = captured["a"].detach()
    saliency = (grad * activations).sum(dim=1)
    cam = finish_map(saliency, tuple(activations.shape[2:]), tuple(image.shape[2:]))
    return logits.detach(), grad.mean(dim=(2, 3)), cam


@pytest.mark.parametrize("images", ["random", "flat patches (ties in the pools)"])
def test_exported_pool_gradients_match_eager_in_onnxruntime(pool_bundle, images):
    ort = pytest.importorskip("onnxruntime")
    model, out = pool_bundle
    generator = _generator(7)
    if images == "random":
        image = torch.randn(3, 3, 23, 21, generator=generator)
    else:  # piecewise-constant images: equal activations inside each patch, so max-pool windows tie
        coarse = torch.randn(3, 3, 4, 4, generator=generator)
        image = F.interpolate(coarse, size=(23, 21), mode="nearest")
    target = torch.tensor([-1, 0, 3])
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    logits, _classes, cam, weights, _activation = session.run(
        None, {"image": image.numpy(), "target_class": target.numpy()}
    )[:5]
    eager_logits, eager_weights, eager_cam = _eager_hirescam(model, image, target)
    torch.testing.assert_close(torch.from_numpy(logits), eager_logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(weights), eager_weights, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(torch.from_numpy(cam), eager_cam, rtol=1e-3, atol=1e-4)
