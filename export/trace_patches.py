"""The process-wide swaps of ``torch.nn.functional`` functions that tracing needs.

Two functions are replaced while a model is traced (:func:`textcam.export.tracing.trace_joint`)
and while a failed export is diagnosed (:mod:`textcam.export.trace_diagnosis`):

* ``F.linear``: computed on [..., in] inputs as one [N, in] x [in, out] product
  (:func:`folded_linear`);
* ``F.adaptive_avg_pool2d``: a 1x1 output computed as a plain spatial mean
  (:func:`plain_global_pool`).

They are swapped as module attributes of ``torch.nn.functional``, i.e. **for every thread of the
process**, because the callers reach them by their global name (``multi_head_attention_forward``
calls ``F.linear``), where neither a decomposition table nor a nested TorchFunctionMode applies.
The replacements return the same values as the stock functions (up to float rounding of a
different product order), so other code that runs meanwhile still computes the right thing, only
through another kernel. :func:`tracing_patches` applies both under a process-wide re-entrant
lock, so concurrent exports in one process trace one at a time and always restore the stock
functions.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import torch
import torch.nn.functional as F

_LOCK = threading.RLock()


def _folded_linear(input, weight, bias=None):
    if input.dim() <= 2:
        return _STOCK_LINEAR(input, weight, bias)
    out = torch.mm(input.reshape(-1, input.shape[-1]), weight.t())
    if bias is not None:
        out = out + bias
    return out.reshape(*input.shape[:-1], weight.shape[0])


_STOCK_LINEAR = F.linear


@contextmanager
def folded_linear():
    """While tracing, compute ``F.linear`` on [..., in] inputs as one [N, in] x [in, out] product.

    With a symbolic batch in a middle dimension (attention runs sequence-first), the stock
    decomposition cannot fold the leading dimensions and broadcasts the weight across the
    sequence instead: a [197, 768, 2304] copy of every projection in ViT-B, gigabytes at run
    time. Folding costs one copy of the (small) input. ``F.linear`` is swapped at module level
    because ``multi_head_attention_forward`` calls it by its global name, where neither a
    decomposition table (linear is composite) nor a nested TorchFunctionMode reaches.
    """
    F.linear = _folded_linear
    try:
        yield
    finally:
        F.linear = _STOCK_LINEAR


_STOCK_ADAPTIVE_AVG_POOL2D = F.adaptive_avg_pool2d


def _global_avg_pool2d(input, output_size):
    size = tuple(output_size) if isinstance(output_size, (list, tuple)) else (output_size, output_size)
    if size == (1, 1) and input.dim() == 4:
        return input.mean(dim=(-1, -2), keepdim=True)
    return _STOCK_ADAPTIVE_AVG_POOL2D(input, output_size)


@contextmanager
def plain_global_pool():
    """While tracing, compute a 1x1 ``F.adaptive_avg_pool2d`` as a plain spatial mean.

    On a channels-last input (Swin pools ``x.permute(0, 3, 1, 2)``) ATen takes the mean and then
    restrides it in place (``as_strided_``); the backward of that becomes ``as_strided_scatter``,
    which has no ONNX translation. The mean is the same numbers without the restride.
    """
    F.adaptive_avg_pool2d = _global_avg_pool2d
    try:
        yield
    finally:
        F.adaptive_avg_pool2d = _STOCK_ADAPTIVE_AVG_POOL2D


@contextmanager
def tracing_patches():
    """Both swaps at once, under the process-wide lock (see the module docstring)."""
    with _LOCK, folded_linear(), plain_global_pool():
        yield
