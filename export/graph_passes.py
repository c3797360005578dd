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


def infer_batch_dims(graph: fx.GraphModule) -> None:
    """View shapes with one symbolic size get ``-1`` there; expand sizes equal to the input's, ``-1``."""
    for node in graph.graph.nodes:
        if node.op != "call_function":
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


def _is_foldable_op(target) -> bool:
    if not isinstance(target, torch._ops.OpOverload):
        return False
    if target in (aten.sym_size.int, aten.sym_numel.default, aten.sym_stride.int):
        return False
    nondeterministic = (torch.Tag.nondeterministic_seeded, torch.Tag.nondeterministic_bitwise)
    return not any(tag in target.tags for tag in nondeterministic)


def _written_args(node: fx.Node) -> list:
    """The arguments an in-place op writes to (schema ``Tensor(a!)``)."""
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
    """Replace subgraphs that read no graph input by their (computed once) values.

    The graph is not functional (make_fx keeps ``fill_`` on slices), so values are computed in
    graph order, as eager would, and folding is abandoned wherever that order could matter: an
    in-place op on a parameter or on a constant another node has already read, or one that
    also reads a graph input. Only results that are new data are stored (views of parameters and
    the parameters themselves stay as they are, so no weight is copied), and only small ones.
    """
    values: dict[fx.Node, object] = {}
    computed: set[fx.Node] = set()  # values that are new data, not parameters or views of them
    parameter_storages: set[int] = set()
    read_storages: set[int] = set()  # constants already read by a node that is not folded

    def fetch(target: str):
        value = graph
        for part in target.split("."):
            value = getattr(value, part)
        return value

    for node in graph.graph.nodes:
        if node.op == "get_attr":
            values[node] = fetch(node.target)
            if isinstance(values[node], torch.Tensor):
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
        mutating = isinstance(node.target, torch._ops.OpOverload) and node.target._schema.is_mutable
        written = set()
        if mutating:
            for arg in _written_args(node):
                written |= _storages(values.get(arg) if isinstance(arg, fx.Node) else None)
        foldable = node.op == "call_function" and all(i in values for i in inputs)
        foldable = foldable and (node.target is operator.getitem or _is_foldable_op(node.target))
        if not foldable:
            if written:
                return  # a constant changed by a value computed per image: fold nothing
            for i in inputs:
                if i in values:
                    read_storages |= _storages(values[i])
            continue
        if written & (parameter_storages | read_storages):
            return  # an in-place write the folded values could not follow: fold nothing
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: values[n])
        with torch.no_grad():
            values[node] = node.target(*args, **kwargs)
        if any(i in computed for i in inputs) or not _aliases_input(node, args):
            computed.add(node)

    replaced = 0
    for node in list(graph.graph.nodes):
        if node not in computed or not isinstance(values[node], torch.Tensor):
            continue
        if all(user in values for user in node.users):
            continue
        value = values[node]
        if value.numel() > FOLD_MAX_ELEMENTS:
            continue
        name = f"_folded_constant{replaced}"
        replaced += 1
        graph.register_buffer(name, value.detach().clone())  # as make_fx stores its constants
        with graph.graph.inserting_before(node):
            constant = graph.graph.get_attr(name)
        constant.meta = dict(node.meta)
        node.replace_all_uses_with(constant, delete_user_cb=lambda user: user not in values)
    # Folded in-place ops are now dead but impure to fx: remove what no unfolded node reads.
    for node in reversed(list(graph.graph.nodes)):
        if node in values and node.op in ("call_function", "get_attr") and not node.users:
            graph.graph.erase_node(node)
    used = {node.target for node in graph.graph.nodes if node.op == "get_attr"}
    for table in (graph._parameters, graph._buffers):
        for name in [name for name in table if name not in used]:
            del table[name]  # a parameter or constant only the folded nodes read


def _aliases_input(node: fx.Node, args) -> bool:
    """Whether the op returns a view of an input (its schema says so)."""
    schema = node.target._schema if isinstance(node.target, torch._ops.OpOverload) else None
    if schema is None:
        return True  # getitem: a part of a value, new only if that value is
    return any(r.alias_info is not None for r in schema.returns)
