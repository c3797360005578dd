"""Backward operators rewritten so every op in the joint graph has an ONNX (and TensorRT) form.

``torch.autograd.grad`` traced with ``make_fx`` yields ordinary aten ops plus the autograd
engine's backward kernels (``aten.*_backward``), which ONNX has no operators for.
benchmarks/backward_ops.py enumerates the ones every torchvision classifier and the timm families
reach (benchmarks/results/backward_ops.md). They are decomposed while tracing, so the exporter
only ever sees plain ops:

- PyTorch's own decomposition, for every backward kernel whose decomposition is plain
  element-wise arithmetic and reductions (activations, normalizations, softmax, ...:
  :data:`PYTORCH_DECOMPOSED`);
- textcam's, below, where PyTorch's leads to a scatter, an op ONNX lacks, or a large copy:

- ``convolution_backward``: no ONNX translation. Only the input gradient is needed (weights are
  frozen), and it is a transposed convolution with the same weights and an output padding that
  restores the input size.
- ``max_pool2d_with_indices_backward``: needs MaxPool's ``Indices`` output, which TensorRT's ONNX
  parser rejects. It is rebuilt from the pooled input itself: for each of the k*k window offsets,
  a mask marks where the input equals the window maximum (first occurrence only, like PyTorch's
  CPU kernel), and one grouped transposed convolution with one-hot kernels scatters the masked
  gradients back to the input positions (ceil mode and dilation included).
- ``_adaptive_avg_pool2d_backward`` and ``avg_pool2d_backward``: no ONNX translation. Average
  pooling is linear, so its backward is a constant pooling matrix on each axis (adaptive) or a
  transposed convolution with a constant kernel, after dividing by each window's divisor (fixed
  windows; ceil mode and ``count_include_pad=False`` give windows of several sizes).
- ``adaptive_max_pool2d_backward`` to 1x1 (a global max pool): the first maximum's mask.
- ``scatter`` of one value per row, which is what the backward of ``max(dim)`` becomes: a
  comparison with the index.
- ``col2im`` (the backward of ``F.unfold``): PyTorch's is an index scatter; it is the pooling
  scatter with one-hot kernels.
- ``upsample_nearest2d_backward`` / ``upsample_bilinear2d_backward``: PyTorch's are index
  scatters. Resizing with fixed sizes is linear and separable, so the backward is the transposed
  resize matrix on each axis.
- ``select_backward`` / ``slice_backward`` (a ViT reading its class token, ``x[:, 0]``): the
  stock decomposition is a scatter (``ScatterElements``), which TensorRT handles badly; the
  gradient of a slice is the incoming gradient zero-padded back to the input's size.

Spatial sizes are static in the joint graph (only the batch is dynamic), so the constant
matrices are built at trace time.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

aten = torch.ops.aten


def _pair(value, dims: int) -> list[int]:
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    return values * dims if len(values) == 1 else values


def convolution_backward(
    grad_output: Tensor,
    input: Tensor,
    weight: Tensor,
    bias_sizes,
    stride,
    padding,
    dilation,
    transposed: bool,
    output_padding,
    groups: int,
    output_mask,
):
    if transposed or weight.dim() not in (3, 4):
        return NotImplemented
    dims = weight.dim() - 2
    stride, padding, dilation = (_pair(v, dims) for v in (stride, padding, dilation))
    grad_input = None
    if output_mask[0]:
        extra = []
        for d in range(dims):
            kernel = weight.shape[2 + d]
            produced = (grad_output.shape[2 + d] - 1) * stride[d] - 2 * padding[d] + dilation[d] * (kernel - 1) + 1
            extra.append(input.shape[2 + d] - produced)
        transpose = F.conv_transpose2d if dims == 2 else F.conv_transpose1d
        grad_input = transpose(
            grad_output, weight, None, stride, padding, extra, groups, dilation
        )
    grad_weight = None
    grad_bias = None
    if output_mask[1] or output_mask[2]:
        # Weight gradients never occur in an explanation graph (parameters are frozen).
        return NotImplemented
    return grad_input, grad_weight, grad_bias


def _pool_geometry(input: Tensor, grad_output: Tensor, kernel_size, stride, padding, dilation=1):
    """Window geometry of a 2-d pooling, and the padded canvas every window fits in.

    Windows start at ``o * stride - padding``; ceil mode adds outputs whose windows run past the
    padded input, so the canvas is the padded input widened to the last window's end.
    """
    kh, kw = _pair(kernel_size, 2)
    sh, sw = _pair(stride, 2) if stride else (kh, kw)
    ph, pw = _pair(padding, 2)
    dh, dw = _pair(dilation, 2)
    height, width = int(input.shape[2]), int(input.shape[3])
    oh, ow = int(grad_output.shape[2]), int(grad_output.shape[3])
    canvas_h = max((oh - 1) * sh + dh * (kh - 1) + 1, height + 2 * ph)
    canvas_w = max((ow - 1) * sw + dw * (kw - 1) + 1, width + 2 * pw)
    return (kh, kw), (sh, sw), (ph, pw), (dh, dw), (height, width), (oh, ow), (canvas_h, canvas_w)


def _scatter_windows(values: Tensor, kernel: Tensor, groups: int, stride, dilation, canvas, padding, size) -> Tensor:
    """Sum each window's values back onto the canvas (a grouped transposed convolution, one group
    per channel), then crop the padding away: the input gradient of a pooling."""
    out = F.conv_transpose2d(values, kernel, None, stride, 0, 0, groups, dilation)
    produced = out.shape[2:]
    extra = (canvas[0] - int(produced[0]), canvas[1] - int(produced[1]))
    if extra != (0, 0):
        out = F.pad(out, (0, extra[1], 0, extra[0]))
    return out[:, :, padding[0] : padding[0] + size[0], padding[1] : padding[1] + size[1]]


def max_pool2d_backward(
    grad_output: Tensor,
    input: Tensor,
    kernel_size,
    stride,
    padding,
    dilation,
    ceil_mode: bool,
    indices: Tensor,
):
    del indices, ceil_mode  # rebuilt from the input so the forward MaxPool needs no Indices output
    (kh, kw), stride, pad, dil, size, (oh, ow), canvas = _pool_geometry(
        input, grad_output, kernel_size, stride, padding, dilation
    )
    batch, channels = input.shape[0], input.shape[1]
    padded = F.pad(input, (pad[1], canvas[1] - size[1] - pad[1], pad[0], canvas[0] - size[0] - pad[0]),
                   value=float("-inf"))
    windows = torch.stack(
        [
            padded[:, :, i * dil[0] : i * dil[0] + stride[0] * (oh - 1) + 1 : stride[0],
                   j * dil[1] : j * dil[1] + stride[1] * (ow - 1) + 1 : stride[1]]
            for i in range(kh)
            for j in range(kw)
        ],
        dim=2,
    )  # [B, C, k*k, oh, ow]
    is_max = (windows == windows.amax(dim=2, keepdim=True)).to(grad_output.dtype)
    first_max = is_max * (torch.cumsum(is_max, dim=2) == 1).to(grad_output.dtype)
    routed = (first_max * grad_output[:, :, None]).reshape(batch, channels * kh * kw, oh, ow)
    one_hot = torch.eye(kh * kw, dtype=grad_output.dtype, device=grad_output.device)
    one_hot = one_hot.reshape(kh * kw, 1, kh, kw).repeat(channels, 1, 1, 1)
    return _scatter_windows(routed, one_hot, channels, stride, dil, canvas, pad, size)


def avg_pool2d_backward(
    grad_output: Tensor,
    input: Tensor,
    kernel_size,
    stride,
    padding,
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override,
):
    del ceil_mode  # the output size says it
    (kh, kw), stride, pad, _, size, (oh, ow), canvas = _pool_geometry(input, grad_output, kernel_size, stride, padding)
    # PyTorch's divisor per window: the window clipped to the padded input (count_include_pad) or
    # to the input itself, unless overridden. Sizes are static, so it is a constant.
    divisors = []
    for axis_out, k, st, p, n in ((oh, kh, stride[0], pad[0], size[0]), (ow, kw, stride[1], pad[1], size[1])):
        starts = [o * st - p for o in range(axis_out)]
        padded_len = [min(a + k, n + p) - a for a in starts]
        inside = [min(a + k, n + p, n) - max(a, 0) for a in starts]
        divisors.append(padded_len if count_include_pad else inside)
    if divisor_override:
        scale = torch.full((oh, ow), 1.0 / divisor_override, dtype=grad_output.dtype, device=grad_output.device)
    else:
        rows = torch.tensor(divisors[0], dtype=grad_output.dtype, device=grad_output.device)
        cols = torch.tensor(divisors[1], dtype=grad_output.dtype, device=grad_output.device)
        scale = 1.0 / (rows[:, None] * cols[None, :])
    channels = input.shape[1]
    ones = torch.ones((channels, 1, kh, kw), dtype=grad_output.dtype, device=grad_output.device)
    return _scatter_windows(grad_output * scale, ones, channels, stride, (1, 1), canvas, pad, size)


def adaptive_max_pool2d_backward(grad_output: Tensor, input: Tensor, indices: Tensor):
    del indices
    if input.dim() != 4 or tuple(grad_output.shape[2:]) != (1, 1):
        return NotImplemented
    flat = input.flatten(2)
    is_max = (flat == flat.amax(dim=2, keepdim=True)).to(grad_output.dtype)
    first_max = is_max * (torch.cumsum(is_max, dim=2) == 1).to(grad_output.dtype)
    return (first_max * grad_output.flatten(2)).reshape(input.shape)


def adaptive_pooling_matrix(in_size: int, out_size: int, dtype: torch.dtype) -> Tensor:
    """[out, in] matrix whose row i averages PyTorch's adaptive window i."""
    rows = []
    for i in range(out_size):
        start, end = (i * in_size) // out_size, -((-(i + 1) * in_size) // out_size)
        rows.append([1.0 / (end - start) if start <= k < end else 0.0 for k in range(in_size)])
    return torch.tensor(rows, dtype=dtype)


def adaptive_avg_pool2d_backward(grad_output: Tensor, input: Tensor):
    if input.dim() != 4:
        return NotImplemented
    (oh, ow), (height, width) = grad_output.shape[2:], input.shape[2:]
    pool_h = adaptive_pooling_matrix(int(height), int(oh), grad_output.dtype).to(grad_output.device)
    pool_w = adaptive_pooling_matrix(int(width), int(ow), grad_output.dtype).to(grad_output.device)
    return pool_h.t() @ grad_output @ pool_w


def _pad_along(grad: Tensor, dim: int, before, after) -> Tensor:
    dim = dim % grad.dim()
    pads = [0, 0] * (grad.dim() - dim - 1) + [before, after]
    return F.pad(grad, pads)


def select_backward(grad_output: Tensor, input_sizes, dim: int, index):
    size = input_sizes[dim]
    index = index + size if index < 0 else index
    return _pad_along(grad_output.unsqueeze(dim), dim, index, size - index - 1)


def slice_backward(grad_output: Tensor, input_sizes, dim: int, start, end, step):
    if step != 1:
        return NotImplemented
    size = input_sizes[dim]
    start = min(max(start + size if start < 0 else start, 0), size)
    end = min(max(end + size if end < 0 else end, start), size)
    return _pad_along(grad_output, dim, start, size - end)


def scatter_one_per_row(input: Tensor, dim: int, index: Tensor, src: Tensor):
    """``scatter`` that writes one value per row along ``dim``: the backward of ``max(dim)`` /
    ``min(dim)`` / ``median(dim)`` (``value_selecting_reduction_backward``, which is composite, so
    this is where it can be caught). A comparison with the index is the same numbers without the
    scatter. Other scatters are left as they are (the exporter names them)."""
    dim = dim % input.dim()
    if (index.dim() != input.dim() or int(index.shape[dim]) != 1 or tuple(src.shape) != tuple(index.shape)
            or any(int(index.shape[d]) != int(input.shape[d]) for d in range(input.dim()) if d != dim)):
        return NotImplemented
    shape = [1] * input.dim()
    shape[dim] = int(input.shape[dim])
    positions = torch.arange(int(input.shape[dim]), device=input.device).reshape(shape)
    return torch.where(positions == index, src, input)


def col2im(input: Tensor, output_size, kernel_size, dilation, padding, stride):
    """``F.fold`` (the backward of ``F.unfold``): PyTorch's is an index scatter. It sums every
    window's columns back onto the image, which is the pooling scatter with one-hot kernels."""
    batched = input.dim() == 3
    cols = input if batched else input.unsqueeze(0)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (_pair(v, 2) for v in (kernel_size, stride, padding, dilation))
    height, width = _pair(output_size, 2)
    lh = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    lw = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    channels = int(cols.shape[1]) // (kh * kw)
    windows = cols.reshape(cols.shape[0], channels * kh * kw, lh, lw)
    one_hot = torch.eye(kh * kw, dtype=cols.dtype, device=cols.device).reshape(kh * kw, 1, kh, kw)
    canvas = (height + 2 * ph, width + 2 * pw)
    out = _scatter_windows(windows, one_hot.repeat(channels, 1, 1, 1), channels, (sh, sw), (dh, dw), canvas, (ph, pw),
                           (height, width))
    return out if batched else out.squeeze(0)


def _source_positions(out_size: int, in_size: int, scale, align_corners: bool | None) -> np.ndarray:
    """PyTorch's source coordinate of each output index (``area_pixel_compute_source_index``),
    in float32 as its CPU kernels compute it; ``align_corners=None`` means nearest."""
    dst = np.arange(out_size, dtype=np.float32)
    if align_corners:
        ratio = np.float32((in_size - 1) / (out_size - 1)) if out_size > 1 else np.float32(0)
        return ratio * dst
    ratio = np.float32(1.0 / scale) if scale else np.float32(in_size / out_size)
    if align_corners is None:
        return np.minimum(np.floor(dst * ratio), in_size - 1)
    return np.maximum(ratio * (dst + np.float32(0.5)) - np.float32(0.5), np.float32(0))


def resize_matrix(out_size: int, in_size: int, scale, align_corners: bool | None) -> np.ndarray:
    """[out, in] matrix of PyTorch's 1-d nearest (``align_corners=None``) or linear resize."""
    src = _source_positions(out_size, in_size, scale, align_corners)
    matrix = np.zeros((out_size, in_size), np.float64)
    rows = np.arange(out_size)
    if align_corners is None:
        matrix[rows, src.astype(np.int64)] = 1.0
        return matrix
    low = np.floor(src).astype(np.int64)
    high = np.minimum(low + 1, in_size - 1)
    frac = (src - low).astype(np.float64)
    np.add.at(matrix, (rows, low), 1.0 - frac)
    np.add.at(matrix, (rows, high), frac)
    return matrix


def _resize_backward(grad_output: Tensor, input_size, scales, align_corners) -> Tensor:
    """The transposed resize on each axis: sizes are static, so the matrices are constants."""
    (height, width), (out_h, out_w) = input_size[2:], grad_output.shape[2:]
    rows = resize_matrix(int(out_h), int(height), scales[0], align_corners)
    cols = resize_matrix(int(out_w), int(width), scales[1], align_corners)
    rows_t = torch.tensor(rows.T.tolist(), dtype=grad_output.dtype, device=grad_output.device)
    cols_t = torch.tensor(cols.tolist(), dtype=grad_output.dtype, device=grad_output.device)
    return rows_t @ grad_output @ cols_t


def upsample_nearest2d_backward(grad_output: Tensor, output_size, input_size, scales_h=None, scales_w=None):
    return _resize_backward(grad_output, input_size, (scales_h, scales_w), None)


def upsample_bilinear2d_backward(
    grad_output: Tensor, output_size, input_size, align_corners: bool, scales_h=None, scales_w=None
):
    return _resize_backward(grad_output, input_size, (scales_h, scales_w), bool(align_corners))


# PyTorch's decompositions of these are element-wise arithmetic and reductions only (checked by
# tests/test_decompositions.py), so they are used as they are.
PYTORCH_DECOMPOSED = (
    aten.threshold_backward,
    aten.native_batch_norm_backward,
    aten.native_layer_norm_backward,
    aten.native_group_norm_backward,
    aten._softmax_backward_data,
    aten._log_softmax_backward_data,
    aten.gelu_backward,
    aten.silu_backward,
    aten.sigmoid_backward,
    aten.tanh_backward,
    aten.hardswish_backward,
    aten.hardsigmoid_backward,
    aten.hardtanh_backward,
    aten.elu_backward,
    aten.leaky_relu_backward,
    aten.mish_backward,
    aten.softplus_backward,
    aten.glu_backward,
    aten._prelu_kernel_backward,
)


def decomposition_table() -> dict:
    """What make_fx applies while tracing: PyTorch's plain decompositions, then textcam's."""
    from torch._decomp import get_decompositions

    table = dict(get_decompositions(list(PYTORCH_DECOMPOSED)))
    table.update({
        aten.convolution_backward.default: convolution_backward,
        aten.max_pool2d_with_indices_backward.default: max_pool2d_backward,
        aten._adaptive_avg_pool2d_backward.default: adaptive_avg_pool2d_backward,
        aten.avg_pool2d_backward.default: avg_pool2d_backward,
        aten.adaptive_max_pool2d_backward.default: adaptive_max_pool2d_backward,
        aten.scatter.src: scatter_one_per_row,
        aten.col2im.default: col2im,
        aten.upsample_nearest2d_backward.default: upsample_nearest2d_backward,
        aten.upsample_bilinear2d_backward.default: upsample_bilinear2d_backward,
        aten.select_backward.default: select_backward,
        aten.slice_backward.default: slice_backward,
    })
    return table
