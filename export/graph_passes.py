"""Rewrites of the traced joint graph that keep its values and make the export cheaper.

Every node of the traced graph is traced twice more inside ``torch.onnx.export`` (the
``torch.export`` re-trace and ``run_decompositions``), and each becomes several ONNX nodes that
the ONNX optimizer then walks rule by rule. Two kinds of nodes cost that and compute nothing per
image:

* batch-size arithmetic: a view to ``[s0 * 64, 49, 96]`` carries ``sym_size`` / ``mul`` nodes in
  the FX graph and a Shape/Gather/Mul/Concat chain in ONNX, where ``-1`` says the same thing
  (:func:`infer_batch_dims`);
* subgraphs of constants only (Swin's shifted-window attention masks, built with ``fill_`` on
  slices, which ONNX receives as ScatterND; relative-position-bias gathers): evaluated once here
  and stored as constants (:func:`fold_constants`).
"""

from __future__ import annotations

import operator

import torch
from torch import fx

aten = torch.ops.aten

_VIEWS = (aten.view.default, aten._unsafe_view.default, aten.reshape.default)

# A folded result is stored in the graph; beyond this many elements the copy is not worth it
# (a 4 MB mask is more than any constant subgraph seen in torchvision needs).
FOLD_MAX_ELEMENTS = 1 << 20


def simplify(graph: fx.GraphModule) -> fx.GraphModule:
    """Both rewrites, then dead-code removal; ``graph`` is changed in place and returned."""
    fold_constants(graph)
    infer_batch_dims(graph)
    graph.graph.eliminate_dead_code()
    graph.recompile()
    return graph


def _same_size(a, b) -> bool:
    if isinstance(a, torch.SymInt) and isinstance(b, torch.SymInt):
        return a.node.expr == b.node.expr
    return False


def _same_shape(a, b) -> bool:
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.dim() != b.dim():
        return False
    pairs = zip(a.shape, b.shape, strict=True)
    return all(_same_size(x, y) if isinstance(x, torch.SymInt) else x == y for x, y in pairs)


def infer_batch_dims(graph: fx.GraphModule) -> None:
    """View shapes with one symbolic size get ``-1`` there; expand sizes equal to the input's, ``-1``.

    Views and expands to the input's own shape are dropped: with ``-1`` in them, the ONNX
    optimizer no longer sees that they change nothing.
    """
    for node in graph.graph.nodes:
        if node.op != "call_function":
            continue
        source = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        if (
            node.target in (*_VIEWS, aten.expand.default)
            and source is not None
            and _same_shape(source.meta.get("val"), node.meta.get("val"))
            and not any(user.op == "output" for user in node.users)
        ):
            node.replace_all_uses_with(source)  # same sizes, so same strides: the input itself
            continue
        if node.target in _VIEWS:
            shape = list(node.args[1])
            symbolic = [i for i, s in enumerate(shape) if isinstance(s, fx.Node)]
            if len(symbolic) == 1 and -1 not in shape:
                shape[symbolic[0]] = -1
                node.args = (node.args[0], shape, *node.args[2:])
        elif node.target is aten.expand.default:
            source = node.args[0].meta.get("val") if isinstance(node.args[0], fx.Node) else None
            if not isinstance(source, torch.Tensor):
                continue
            sizes = list(node.args[1])
            offset = len(sizes) - source.dim()
            for i, s in enumerate(sizes):
                if isinstance(s, fx.Node) and i >= offset and _same_size(s.meta.get("val"), source.shape[i - offset]):
                    sizes[i] = -1
            node.args = (node.args[0], sizes, *node.args[2:])


_FACTORIES_LIKE = (aten.new_zeros.default, aten.new_ones.default, aten.new_full.default)


def _symbolic(args, kwargs) -> bool:
    leaves = torch.utils._pytree.tree_leaves((args, kwargs))
    return any(isinstance(v, (fx.Node, torch.SymInt)) for v in leaves)


_NEVER_FOLDED = (
    aten.sym_size.int,
    aten.sym_numel.default,
    aten.sym_stride.int,
    aten.empty.memory_format,  # uninitialized memory is no constant
    aten.empty_like.default,
    aten.empty_strided.default,
    aten.new_empty.default,
    aten.new_empty_strided.default,
)


def _foldable(node: fx.Node) -> bool:
    if node.op != "call_function":
        return False
    if node.target is operator.getitem:
        return True
    if not isinstance(node.target, torch._ops.OpOverload) or node.target in _NEVER_FOLDED:
        return False
    nondeterministic = (torch.Tag.nondeterministic_seeded, torch.Tag.nondeterministic_bitwise)
    if any(tag in node.target.tags for tag in nondeterministic):
        return False
    value = node.meta.get("val")  # no large temporaries: only small results are stored anyway
    return _returns_view(node) or not isinstance(value, torch.Tensor) or _numel(value) <= FOLD_MAX_ELEMENTS


def _numel(value: torch.Tensor) -> float:
    try:
        return int(value.numel())
    except Exception:  # a symbolic size: it depends on the batch, so it is no constant anyway
        return float("inf")


def _written_args(node: fx.Node) -> list:
    """The arguments an in-place op writes to (schema ``Tensor(a!)``)."""
    if not isinstance(node.target, torch._ops.OpOverload) or not node.target._schema.is_mutable:
        return []
    schema = node.target._schema
    written = []
    for i, argument in enumerate(schema.arguments):
        if argument.alias_info is not None and argument.alias_info.is_write:
            value = node.args[i] if i < len(node.args) else node.kwargs.get(argument.name)
            written.append(value)
    return written


def _storages(value) -> set[int]:
    leaves = [v for v in torch.utils._pytree.tree_leaves(value) if isinstance(v, torch.Tensor)]
    return {t.untyped_storage().data_ptr() for t in leaves}


def fold_constants(graph: fx.GraphModule) -> None:
    """Replace subgraphs that read no graph input by their values, computed once here.

    The graph is not functional (make_fx keeps ``fill_`` on slices), so values are computed in
    graph order, as eager would, and nothing is folded wherever that order could matter: an
    in-place op on a parameter, on a constant that an unfolded node has already read, or with an
    operand computed per image. Only results that are new data are stored (parameters and views
    of them stay as they are, so no weight is copied), and only small ones.
    """
    values: dict[fx.Node, object] = {}
    computed: set[fx.Node] = set()  # values that are new data, not parameters or views of them
    parameter_storages: set[int] = set()
    read_storages: set[int] = set()  # constants already read by a node that is not folded

    for node in graph.graph.nodes:
        if node.op == "get_attr":
            values[node] = _fetch(graph, node.target)
            parameter_storages |= _storages(values[node])
            continue
        if node.target in _FACTORIES_LIKE and not _symbolic(node.args[1:], node.kwargs):
            # new_zeros(x, [56, 56]) reads only x's dtype and device: a constant
            template = node.args[0].meta.get("val")
            if isinstance(template, torch.Tensor):
                args = (torch.empty(0, dtype=template.dtype, device=template.device), *node.args[1:])
                values[node] = node.target(*args, **node.kwargs)
                computed.add(node)
                continue
        inputs = node.all_input_nodes
        written = set()
        for arg in _written_args(node):
            written |= _storages(values.get(arg) if isinstance(arg, fx.Node) else None)
        if _foldable(node) and all(i in values for i in inputs):
            if written & (parameter_storages | read_storages):
                return  # an in-place write the folded values could not follow: fold nothing
            args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: values[n])
            try:
                with torch.no_grad():
                    values[node] = node.target(*args, **kwargs)
            except Exception:  # left to the exporter, which names the op if it is a problem
                if written:
                    return
            else:
                if any(i in computed for i in inputs) or not _returns_view(node):
                    computed.add(node)
                continue
        if written:
            return  # a constant changed by a value computed per image: fold nothing
        for i in inputs:
            if i in values:
                read_storages |= _storages(values[i])

    replaced = 0
    for node in list(graph.graph.nodes):
        value = values.get(node)
        if node not in computed or not isinstance(value, torch.Tensor) or value.numel() > FOLD_MAX_ELEMENTS:
            continue
        if all(user in values for user in node.users):
            continue
        name = f"_folded_constant{replaced}"
        replaced += 1
        graph.register_buffer(name, value.detach().clone())  # as make_fx stores its constants
        with graph.graph.inserting_before(node):
            constant = graph.graph.get_attr(name)
        constant.meta = dict(node.meta)
        node.replace_all_uses_with(constant, delete_user_cb=lambda user: user not in values)
    _erase_unneeded(graph, values)


def _erase_unneeded(graph: fx.GraphModule, values: dict) -> None:
    """Erase the folded nodes no remaining node needs (fx would keep in-place ones: impure to it)."""
    needed = {n for n in graph.graph.nodes if n not in values}
    changed = True
    while changed:
        held = set().union(*(_storages(values[n]) for n in needed if n in values))
        grown = {
            n
            for n in graph.graph.nodes
            if n not in needed and (any(u in needed for u in n.users) or _writes_into(n, values, held))
        }
        needed |= grown
        changed = bool(grown)
    for node in reversed(list(graph.graph.nodes)):
        if node not in needed:
            graph.graph.erase_node(node)
    used = {node.target for node in graph.graph.nodes if node.op == "get_attr"}
    for table in (graph._parameters, graph._buffers):
        for name in [name for name in table if name not in used]:
            del table[name]  # a parameter or constant that only folded nodes read


def _writes_into(node: fx.Node, values: dict, storages: set[int]) -> bool:
    """Whether ``node`` is an in-place op on one of ``storages`` (a constant a kept node holds)."""
    written = [_storages(values.get(a)) for a in _written_args(node) if isinstance(a, fx.Node)]
    return bool(set().union(*written) & storages)


def _fetch(graph: fx.GraphModule, target: str):
    value = graph
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _returns_view(node: fx.Node) -> bool:
    """Whether the op returns a view of an input (its schema says so)."""
    schema = node.target._schema if isinstance(node.target, torch._ops.OpOverload) else None
    if schema is None:
        return True  # getitem: a part of a value, new only if that value is
    return any(r.alias_info is not None for r in schema.returns)
