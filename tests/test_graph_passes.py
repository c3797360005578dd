"""The traced-graph rewrites keep every value: each case is traced with a symbolic batch like an
export, simplified, and run against eager PyTorch on fresh inputs at other batch sizes (a
wrongly folded constant keeps the tracing example's value and fails there)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
from torch.fx.experimental.proxy_tensor import make_fx  # noqa: E402

from textcam.export.graph_passes import FOLD_MAX_ELEMENTS, simplify  # noqa: E402
from textcam.export.tracing import _batch_symbolic_inputs  # noqa: E402

aten = torch.ops.aten


def traced(module: nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    graph = make_fx(module, tracing_mode="symbolic", _allow_non_fake_inputs=True)(*_batch_symbolic_inputs(example))
    return simplify(graph)


def targets(graph: torch.fx.GraphModule) -> list:
    return [node.target for node in graph.graph.nodes if node.op == "call_function"]


def assert_same_as_eager(module: nn.Module, graph: torch.fx.GraphModule, shape: tuple[int, ...]) -> None:
    generator = torch.Generator().manual_seed(7)
    for batch in (1, 3, 5):
        x = torch.randn(batch, *shape, generator=generator)
        torch.testing.assert_close(graph(x), module(x), rtol=1e-6, atol=1e-6)


class WindowMask(nn.Module):
    """Swin's shifted-window mask: a constant built by fill_ on slices, added per image."""

    def forward(self, x):
        mask = x.new_zeros(8, 8)
        for i, rows in enumerate((slice(0, 4), slice(4, 6), slice(6, 8))):
            mask[rows, :].fill_(float(i))
        mask[:, 6:].add_(10.0)
        return x.view(x.shape[0], 64) * 2 + mask.view(64)


def test_constant_mask_is_folded_and_batch_views_use_minus_one():
    module = WindowMask()
    graph = traced(module, torch.randn(2, 8, 8))
    ops = targets(graph)
    assert aten.fill_.Scalar not in ops and aten.add_.Tensor not in ops
    assert aten.sym_size.int not in ops  # the view's batch size became -1
    views = [n for n in graph.graph.nodes if n.target in (aten.view.default, aten._unsafe_view.default)]
    assert any(-1 in list(n.args[1]) for n in views)
    assert any(name.startswith("_folded_constant") for name, _ in graph.named_buffers())
    assert_same_as_eager(module, graph, (8, 8))


class WrittenPerImage(nn.Module):
    """A constant that an in-place op fills from the image: not a constant at all."""

    def forward(self, x):
        scale = torch.ones(3)
        scale[0] = x.mean()
        return x * scale.sum()


def test_constant_written_from_a_per_image_value_is_not_folded():
    module = WrittenPerImage()
    graph = traced(module, torch.randn(2, 4))
    assert_same_as_eager(module, graph, (4,))


class ReadBeforeWrite(nn.Module):
    """A constant read per image, then changed in place, then read again."""

    def forward(self, x):
        counter = torch.arange(4.0)
        first = x * counter  # reads the values before the write
        counter.add_(1.0)
        return first + x * counter


def test_constant_read_before_an_in_place_write_keeps_both_values():
    module = ReadBeforeWrite()
    graph = traced(module, torch.randn(2, 4))
    assert_same_as_eager(module, graph, (4,))


class LargeConstant(nn.Module):
    """A constant subgraph larger than what folding stores."""

    def forward(self, x):
        side = int(FOLD_MAX_ELEMENTS**0.5) + 8
        big = torch.linspace(0, 1, side * side).view(side, side).cos()
        return x + big.mean(dim=0)[: x.shape[1]]


def test_large_constants_are_not_stored():
    module = LargeConstant()
    graph = traced(module, torch.randn(2, 16))
    assert all(buffer.numel() <= FOLD_MAX_ELEMENTS for buffer in graph.buffers())
    assert aten.cos.default in targets(graph)  # computed in the graph, as traced
    assert_same_as_eager(module, graph, (16,))


class ParameterViews(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(6, 5)

    def forward(self, x):
        return x @ self.linear.weight.t() + self.linear.bias.view(1, 5) + self.linear.weight.sum()


def test_views_of_parameters_are_not_copied():
    module = ParameterViews()
    graph = traced(module, torch.randn(2, 6))
    stored = [buffer for name, buffer in graph.named_buffers() if name.startswith("_folded_constant")]
    assert all(buffer.numel() == 1 for buffer in stored)  # the weight's sum alone is new data
    assert sum(p.numel() for p in graph.parameters()) + sum(b.numel() for b in graph.buffers()) <= 6 * 5 + 5 + 1
    assert_same_as_eager(module, graph, (6,))
