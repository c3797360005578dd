"""Backward operators rewritten so every op in the joint graph has an ONNX (and TensorRT) form.

``torch.autograd.grad`` traced with ``make_fx`` yields ordinary aten ops, except a few backward
kernels that the ONNX exporter cannot translate or that accelerators handle badly:

- ``convolution_backward``: no ONNX translation. Only the input gradient is needed (weights are
  frozen), and it is a transposed convolution with the same weights and an output padding that
  restores the input size.
- ``max_pool2d_with_indices_backward``: needs MaxPool's ``Indices`` output, which TensorRT's ONNX
  parser rejects. It is rebuilt from the pooled input itself: for each of the k*k window offsets,
  a mask marks where the input equals the window maximum (first occurrence only, like PyTorch's
  CPU kernel), and one grouped transposed convolution with one-hot kernels scatters the masked
  gradients back to the input positions.
- ``_adaptive_avg_pool2d_backward`` and ``avg_pool2d_backward``: no ONNX translation. Average
  pooling is linear, so its backward is a constant pooling matrix on each axis (adaptive) or a
  transposed convolution with a constant kernel (fixed windows).

- ``silu_backward``: no ONNX translation in torch 2.14's exporter (any layer followed by SiLU,
  e.g. EfficientNet's inner stages, failed to export). With s = sigmoid(x), the derivative of
  x * s is s * (1 + x * (1 - s)): two element-wise ops on the forward input.

- ``select_backward`` / ``slice_backward`` (a ViT reading its class token, ``x[:, 0]``): the
  stock decomposition is a scatter (``ScatterElements``), which TensorRT handles badly; the
  gradient of a slice is the incoming gradient zero-padded back to the input's size.

Spatial sizes are static in the joint graph (only the batch is dynamic), so the constant
matrices are built at trace time.
"""

from __future__ import annotations

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
    del indices  # rebuilt from the input so the forward MaxPool needs no Indices output
    kh, kw = _pair(kernel_size, 2)
    sh, sw = _pair(stride, 2) if stride else (kh, kw)
    ph, pw = _pair(padding, 2)
    if ceil_mode or _pair(dilation, 2) != [1, 1]:
        return NotImplemented
    batch, channels, height, width = input.shape
    oh, ow = grad_output.shape[2], grad_output.shape[3]
    padded = F.pad(input, (pw, pw, ph, ph), value=float("-inf"))
    windows = torch.stack(
        [
            padded[:, :, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw]
            for i in range(kh)
            for j in range(kw)
        ],
        dim=2,
    )  # [B, C, k*k, oh, ow]
    is_max = (windows == windows.amax(dim=2, keepdim=True)).to(grad_output.dtype)
    first_max = is_max * (torch.cumsum(is_max, dim=2) == 1).to(grad_output.dtype)
    routed = (first_max * grad_output[:, :, None]).reshape(batch, channels * kh * kw, oh, ow)
    scatter = torch.eye(kh * kw, dtype=grad_output.dtype, device=grad_output.device)
    scatter = scatter.reshape(kh * kw, 1, kh, kw).repeat(channels, 1, 1, 1)
    full_h = (oh - 1) * sh + kh - 2 * ph
    full_w = (ow - 1) * sw + kw - 2 * pw
    return F.conv_transpose2d(
        routed, scatter, None, (sh, sw), (ph, pw), (height - full_h, width - full_w), channels
    )


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
    kh, kw = _pair(kernel_size, 2)
    sh, sw = _pair(stride, 2) if stride else (kh, kw)
    ph, pw = _pair(padding, 2)
    if ceil_mode or ((ph or pw) and not count_include_pad):
        return NotImplemented  # variable divisors: left to the exporter, which names the op
    divisor = divisor_override or kh * kw
    channels = input.shape[1]
    kernel = torch.full((channels, 1, kh, kw), 1.0 / divisor, dtype=grad_output.dtype, device=grad_output.device)
    oh, ow = grad_output.shape[2], grad_output.shape[3]
    extra = (input.shape[2] - ((oh - 1) * sh + kh - 2 * ph), input.shape[3] - ((ow - 1) * sw + kw - 2 * pw))
    return F.conv_transpose2d(grad_output, kernel, None, (sh, sw), (ph, pw), extra, channels)


def silu_backward(grad_output: Tensor, input: Tensor) -> Tensor:
    s = torch.sigmoid(input)
    return grad_output * s * (1 + input * (1 - s))


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


def decomposition_table() -> dict:
    return {
        aten.convolution_backward.default: convolution_backward,
        aten.max_pool2d_with_indices_backward.default: max_pool2d_backward,
        aten._adaptive_avg_pool2d_backward.default: adaptive_avg_pool2d_backward,
        aten.avg_pool2d_backward.default: avg_pool2d_backward,
        aten.silu_backward.default: silu_backward,
        aten.select_backward.default: select_backward,
        aten.slice_backward.default: slice_backward,
    }
