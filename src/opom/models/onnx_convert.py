"""Turn an ONNX face-recognition model (float, int8 or block-quantized) into a differentiable torch module.

Quantized model-zoo exports (e.g. OpenCV Zoo's ``*_int8bq.onnx``) keep their weights as int8 initializers that
``DequantizeLinear`` (often followed by ``Reshape``) turns into floats at run time. onnx2torch cannot convert those
nodes, and they carry no gradient anyway, so :func:`fold_constants` evaluates every such weight-side chain once
(with ``onnx.reference.ReferenceEvaluator``) and stores the result as a plain float initializer. What is left is an
ordinary float graph: :func:`onnx_to_torch` then drops the extra graph inputs, moves the graph to opset 17 (the
opset onnx2torch 1.5 covers best) and converts it with onnx2torch.

Needs the optional extra: ``pip install 'opom[zoo]'`` (onnx, onnx2torch; onnxruntime for the parity tests).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from opom.models.extras import ZOO_PIP, require

TARGET_OPSET = 17

# ops that are folded when every input is a constant (initializer or Constant output): the weight-side
# dequantisation chains of quantized exports, never anything that touches the image
FOLDABLE_OPS = frozenset({
    "DequantizeLinear", "Reshape", "Cast", "CastLike", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Constant",
})


def _require_onnx():
    return require("onnx", "converting ONNX models", f"{ZOO_PIP} (or pip install onnx onnx2torch)")


def _require_onnx2torch():
    return require("onnx2torch", "converting ONNX models to torch",
                   f"{ZOO_PIP} (or pip install 'onnx2torch>=1.5,<1.6')")


def load_onnx(path_or_model):
    """An ``onnx.ModelProto`` from a path or a model (a copy, so callers' models are never changed)."""
    onnx = _require_onnx()
    if isinstance(path_or_model, (str, Path)):
        path = Path(path_or_model).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"ONNX model {str(path)!r} does not exist")
        return onnx.load(str(path))
    if isinstance(path_or_model, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(path_or_model)
        return model
    raise TypeError(f"expected a path or an onnx.ModelProto, got {type(path_or_model).__name__}")


def default_opset(model) -> int:
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            return opset.version
    raise ValueError("the ONNX model imports no default-domain ('ai.onnx') opset")


def image_input_name(model, input_name: str | None = None) -> str:
    """The graph input that carries the image: ``input_name`` or the first input that is not an initializer."""
    initializers = {init.name for init in model.graph.initializer}
    candidates = [inp.name for inp in model.graph.input if inp.name not in initializers]
    if input_name is not None:
        if input_name not in {inp.name for inp in model.graph.input}:
            raise ValueError(f"the ONNX model has no input {input_name!r}; its inputs are "
                             f"{[inp.name for inp in model.graph.input]}")
        return input_name
    if not candidates:
        raise ValueError("the ONNX model has no graph input that is not an initializer")
    return candidates[0]


def _replace(repeated, items) -> None:
    """Replace a protobuf repeated field's contents by copies of ``items`` (copied before the field is cleared)."""
    copies = []
    for item in items:
        copy = type(item)()
        copy.CopyFrom(item)
        copies.append(copy)
    del repeated[:]
    repeated.extend(copies)


def _eliminate_dead(model) -> None:
    """Drop nodes, initializers and value_info that no longer reach a graph output."""
    graph = model.graph
    needed = {out.name for out in graph.output}
    keep = []
    for node in reversed(list(graph.node)):
        if any(out in needed for out in node.output if out):
            keep.append(node)
            needed.update(name for name in node.input if name)
            for attr in node.attribute:  # subgraphs (If/Loop) may read outer names
                for sub in list(attr.g.node if attr.HasField("g") else []) + [n for g in attr.graphs for n in g.node]:
                    needed.update(name for name in sub.input if name)
    keep.reverse()
    _replace(graph.node, keep)
    _replace(graph.initializer, [init for init in graph.initializer if init.name in needed])
    _replace(graph.value_info, [vi for vi in graph.value_info if vi.name in needed])


def fold_constants(path_or_model, ops: Iterable[str] = FOLDABLE_OPS):
    """Evaluate every node of ``ops`` whose inputs are all constants and store its outputs as initializers.

    This is what turns the int8 / block-quantized weights of a quantized export into float initializers: each
    ``DequantizeLinear`` fed by initializers (and the ``Reshape`` / ``Cast`` / ``Transpose`` chains after it) is
    computed once with ``onnx.reference.ReferenceEvaluator``. Nodes that depend on a graph input (the image) are
    never folded, and neither are ops outside ``ops``. Returns a new ``ModelProto``.
    """
    onnx = _require_onnx()
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    model = load_onnx(path_or_model)
    graph = model.graph
    ops = frozenset(ops)
    initializers = {init.name: init for init in graph.initializer}
    constant = set(initializers) | {""}
    folded_nodes, kept_nodes = [], []
    for node in graph.node:  # ONNX graphs are topologically sorted
        if node.op_type in ops and node.domain in ("", "ai.onnx") and all(name in constant for name in node.input):
            folded_nodes.append(node)
            constant.update(node.output)
        else:
            kept_nodes.append(node)
    if not folded_nodes:
        return model

    folded_outputs = {out for node in folded_nodes for out in node.output if out}
    # folded values that the rest of the graph (or its outputs) reads
    wanted = [name for name in dict.fromkeys(
        [name for node in kept_nodes for name in node.input] + [out.name for out in graph.output])
        if name in folded_outputs]
    if wanted:
        used_inits = {name for node in folded_nodes for name in node.input if name in initializers}
        sub = helper.make_model(
            helper.make_graph(folded_nodes, "fold", [], [helper.make_empty_tensor_value_info(n) for n in wanted],
                              initializer=[initializers[n] for n in used_inits]),
            opset_imports=list(model.opset_import), ir_version=model.ir_version)
        values = ReferenceEvaluator(sub).run(None, {})
        new_inits = [numpy_helper.from_array(np.asarray(value), name)
                     for name, value in zip(wanted, values, strict=True)]
    else:
        new_inits = []

    _replace(graph.node, kept_nodes)
    graph.initializer.extend(new_inits)
    _eliminate_dead(model)
    onnx.checker.check_model(model)
    return model


def _only_image_input(model, input_name: str, dynamic_batch: bool = True) -> None:
    """Keep ``input_name`` as the single graph input (the others must be initializers or unused)."""
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    used = {name for node in graph.node for name in node.input}
    keep = []
    for inp in graph.input:
        if inp.name == input_name:
            keep.append(inp)
        elif inp.name not in initializers and inp.name in used:
            raise ValueError(f"graph input {inp.name!r} is neither the image input {input_name!r} nor an "
                             f"initializer: this converter handles single-input recognition models only")
    _replace(graph.input, keep)
    if dynamic_batch and keep and graph.input[0].type.tensor_type.shape.dim:
        dim0 = graph.input[0].type.tensor_type.shape.dim[0]
        dim0.Clear()
        dim0.dim_param = "batch"
        for out in graph.output:  # the output's batch dimension follows the input's
            if out.type.tensor_type.shape.dim:
                out.type.tensor_type.shape.dim[0].Clear()
                out.type.tensor_type.shape.dim[0].dim_param = "batch"
        del graph.value_info[:]  # stale fixed-batch shapes; onnx2torch re-infers them


def prepare_onnx(path_or_model, input_name: str | None = None, opset: int = TARGET_OPSET):
    """Fold the quantized weights, keep the image as the only input, and move the graph to ``opset``."""
    onnx = _require_onnx()
    from onnx import version_converter

    model = fold_constants(path_or_model)
    name = image_input_name(model, input_name)
    _only_image_input(model, name)
    if default_opset(model) != opset:
        try:
            model = version_converter.convert_version(model, opset)
        except Exception as err:  # the converter raises plain RuntimeErrors from C++
            raise RuntimeError(f"could not move the ONNX graph from opset {default_opset(model)} to {opset} "
                               f"(needed for onnx2torch): {err}") from err
    onnx.checker.check_model(model)
    return model


class OnnxEmbedder(nn.Module):
    """The converted graph, returning the embedding as (B, D) (the first graph output, flattened per sample)."""

    def __init__(self, graph_module: nn.Module, input_name: str):
        super().__init__()
        self.net = graph_module
        self.input_name = input_name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.reshape(out.shape[0], -1)


def onnx_to_torch(path_or_model, input_name: str | None = None) -> nn.Module:
    """A differentiable torch module (eval mode) computing an ONNX recognition model's embedding.

    The module takes a float tensor (B, C, H, W) in the model's own input convention (SFace: BGR 0..255) and
    returns (B, D). Weight-side ``DequantizeLinear`` chains are folded into float initializers first (see
    :func:`fold_constants`), so int8 and block-quantized exports convert too; the result computes with the
    dequantized float weights, as onnxruntime does for weight-only quantization.
    """
    onnx2torch = _require_onnx2torch()
    model = prepare_onnx(path_or_model, input_name)
    name = model.graph.input[0].name
    module = OnnxEmbedder(onnx2torch.convert(model), name)
    module.eval()
    return module
