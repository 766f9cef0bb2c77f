"""TensorFlow.js models in pure PyTorch: the weight format and a graph-model interpreter (no TensorFlow needed).

A TFJS model is a ``model.json`` plus binary weight shards. The JSON's ``weightsManifest`` lists, group by group, the
tensors stored back to back in the group's shards: name, shape, dtype and an optional ``quantization`` (``uint8`` /
``uint16`` with ``min`` and ``scale``: value = q * scale + min; ``float16``: stored as half floats).
:func:`read_weights` decodes them to float32 / int32 tensors.

A *graph model* (``"format": "graph-model"``, written by tensorflowjs_converter from a frozen TF graph) also carries
``modelTopology.node``: TF ops with their inputs and attributes. :class:`GraphModel` is an ``nn.Module`` that runs
the nodes an output needs, in dependency order, with torch ops — so the model is differentiable and runs on any
device. Activations are 4-D NHWC tensors in TF; here they are kept NCHW between convolutions (one layout change at
the input and none inside), and every op is written to give TF's NHWC result exactly: constants are broadcast in
NHWC terms, axes and paddings translated, ``SAME`` padding split as TF splits it (the extra pixel at the end).
Unknown ops, data formats or dtypes raise :class:`TfjsError` naming the op and node.

Loading never executes anything from the files: the JSON is data and the shards are raw numbers.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from opom.errors import UserError

_DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_}
_QUANT = {"uint8": np.uint8, "uint16": np.uint16, "float16": np.float16}


class TfjsError(UserError):
    """A TFJS file this reader cannot use (unknown op, layout or dtype; missing or short weight shard)."""


# ---------------------------------------------------------------------------------------------------- weights
def read_weights(manifest: list[dict], folder: str | Path) -> dict[str, torch.Tensor]:
    """Decode every tensor of a ``weightsManifest`` whose shards lie in ``folder``: ``{name: tensor}``."""
    folder = Path(folder)
    out: dict[str, torch.Tensor] = {}
    for group in manifest:
        blobs = []
        for shard in group["paths"]:
            path = folder / shard
            if not path.is_file():
                raise TfjsError(f"weight shard {shard!r} of the TFJS model is missing from {str(folder)!r}")
            blobs.append(path.read_bytes())
        data, offset = b"".join(blobs), 0
        for spec in group["weights"]:
            tensor, offset = _decode(spec, data, offset)
            out[spec["name"]] = tensor
        if offset != len(data):
            raise TfjsError(f"weight group {group['paths']} holds {len(data)} bytes but its manifest describes "
                            f"{offset}")
    return out


def _decode(spec: dict, data: bytes, offset: int) -> tuple[torch.Tensor, int]:
    shape, dtype, quant = [int(s) for s in spec["shape"]], spec["dtype"], spec.get("quantization")
    count = math.prod(shape)
    if dtype not in _DTYPES:
        raise TfjsError(f"weight {spec['name']!r} has dtype {dtype!r}; supported: {sorted(_DTYPES)}")
    stored = _QUANT.get(quant["dtype"]) if quant else _DTYPES[dtype]
    if stored is None:
        raise TfjsError(f"weight {spec['name']!r} is quantised as {quant['dtype']!r}; supported: {sorted(_QUANT)}")
    size = count * np.dtype(stored).itemsize
    if offset + size > len(data):
        raise TfjsError(f"weight {spec['name']!r} runs past the end of its shard (truncated file?)")
    values = np.frombuffer(data, dtype=stored, count=count, offset=offset)
    if quant and quant["dtype"] in ("uint8", "uint16"):
        values = values.astype(np.float32) * np.float32(quant["scale"]) + np.float32(quant["min"])
    values = values.astype(_DTYPES[dtype], copy=True).reshape(shape)
    return torch.from_numpy(values), offset + size


def load_model_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise TfjsError(f"TFJS model file {str(path)!r} does not exist")
    try:
        model = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TfjsError(f"{str(path)!r} is not a TFJS model.json ({err})") from None
    if not isinstance(model, dict) or "weightsManifest" not in model:
        raise TfjsError(f"{str(path)!r} is not a TFJS model.json (no weightsManifest)")
    return model


# ---------------------------------------------------------------------------------------------------- graph
def _attr(node: dict, key: str, default=None):
    value = node.get("attr", {}).get(key)
    if value is None:
        return default
    if "s" in value:
        return base64.b64decode(value["s"]).decode()
    if "list" in value:
        lst = value["list"]
        if "s" in lst:
            return [base64.b64decode(s).decode() for s in lst["s"]]
        return [int(i) for i in lst.get("i", [])] or [float(f) for f in lst.get("f", [])]
    for kind, cast in (("i", int), ("f", float), ("b", bool)):
        if kind in value:
            return cast(value[kind])
    return default


class _T:
    """A value flowing through the graph: a tensor and whether a 4-D one is held NCHW (TF sees it as NHWC)."""

    __slots__ = ("x", "nchw")

    def __init__(self, x: torch.Tensor, nchw: bool = False):
        self.x, self.nchw = x, nchw

    def tf(self) -> torch.Tensor:
        """The tensor as TF sees it (NHWC for activations)."""
        return self.x.permute(0, 2, 3, 1) if self.nchw else self.x


def _as_nchw_operand(v: _T) -> torch.Tensor:
    """``v`` broadcast against an NCHW activation the way TF broadcasts it against the NHWC one."""
    if v.nchw:
        return v.x
    x = v.x
    if x.dim() == 0:
        return x
    if x.dim() > 4:
        raise TfjsError(f"cannot broadcast a {x.dim()}-D tensor against a 4-D activation")
    x = x.reshape((1,) * (4 - x.dim()) + tuple(x.shape))
    return x.permute(0, 3, 1, 2)


def _same_pad(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TF's SAME padding along one axis: (before, after), the odd pixel after."""
    effective = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


class GraphModel(nn.Module):
    """A TFJS graph model as a torch module returning the requested output(s) for NCHW float input.

    ``outputs``: node names (``name`` or ``name:0``); the input is the graph's single Placeholder, given here as
    (B, C, H, W) and fed to the graph as NHWC. Constants become buffers (``const.<index>``), so ``.to()`` moves
    them and ``state_dict`` holds them.
    """

    def __init__(self, model: dict, weights: dict[str, torch.Tensor], outputs: list[str], source: str = "model"):
        super().__init__()
        self.source = source
        nodes = {n["name"]: n for n in model["modelTopology"]["node"]}
        self.outputs = [o.split(":")[0] for o in outputs]
        for o in self.outputs:
            if o not in nodes:
                raise TfjsError(f"{source} has no node {o!r}")
        order, placeholders = self._schedule(nodes)
        if len(placeholders) != 1:
            raise TfjsError(f"{source}: expected one input Placeholder on the way to {self.outputs}, "
                            f"found {placeholders}")
        self.input_name = placeholders[0]
        self._steps: list[tuple[str, Callable, list[str], str | None]] = []
        self._consts: dict[str, str] = {}
        self.sites = nn.ModuleDict()  # an identity after every convolution: where hooks (DFANet's dropout) attach
        for name in order:
            node = nodes[name]
            op = node["op"]
            if op == "Placeholder":
                continue
            if op == "Const":
                if name not in weights:
                    raise TfjsError(f"{source}: constant {name!r} has no weights in the manifest")
                buffer = f"const_{len(self._consts)}"
                self.register_buffer(buffer, weights[name].clone())
                self._consts[name] = buffer
                continue
            if op not in _OPS:
                raise TfjsError(f"{source}: unsupported TFJS op {op!r} (node {name!r}); supported: "
                                f"{', '.join(sorted(_OPS))}")
            inputs = [i.split(":")[0].lstrip("^") for i in node.get("input", []) if not i.startswith("^")]
            site = None
            if op in _CONVS:
                site = f"conv{len(self.sites)}"
                self.sites[site] = nn.Identity()
            self._steps.append((name, _OPS[op](node), inputs, site))

    def conv_sites(self) -> list[nn.Module]:
        """The outputs of the graph's convolutions, in order (identity modules to hook)."""
        return list(self.sites.values())

    def _schedule(self, nodes: dict) -> tuple[list[str], list[str]]:
        order, seen, placeholders = [], set(), []
        stack = [(o, False) for o in reversed(self.outputs)]
        while stack:  # iterative post-order DFS: inputs before the node
            name, expanded = stack.pop()
            if expanded:
                order.append(name)
                continue
            if name in seen:
                continue
            seen.add(name)
            node = nodes.get(name)
            if node is None:
                raise TfjsError(f"{self.source}: node input {name!r} is not in the graph")
            if node["op"] == "Placeholder":
                placeholders.append(name)
            stack.append((name, True))
            for i in reversed(node.get("input", [])):
                if not i.startswith("^"):
                    stack.append((i.split(":")[0], False))
        return order, placeholders

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        values: dict[str, _T] = {self.input_name: _T(x, nchw=True)}
        for name, buffer in self._consts.items():
            values[name] = _T(getattr(self, buffer))
        for name, fn, inputs, site in self._steps:
            out = fn(*[values[i] for i in inputs])
            values[name] = out if site is None else _T(self.sites[site](out.x), out.nchw)
        outs = tuple(values[o].tf() for o in self.outputs)
        return outs[0] if len(outs) == 1 else outs


# ----------------------------------------------------------------------------------------------------- ops
def _check_nhwc(node: dict) -> None:
    fmt = _attr(node, "data_format", "NHWC")
    if fmt != "NHWC":
        raise TfjsError(f"node {node['name']!r} ({node['op']}) uses data_format {fmt!r}; only NHWC is supported")


def _activation(name: str, node: dict) -> Callable[[torch.Tensor, list[torch.Tensor]], torch.Tensor]:
    if name == "Relu":
        return lambda x, _: F.relu(x)
    if name == "Relu6":
        return lambda x, _: F.relu6(x)
    if name == "Elu":
        return lambda x, _: F.elu(x)
    if name == "Sigmoid":
        return lambda x, _: torch.sigmoid(x)
    if name == "LeakyRelu":
        alpha = _attr(node, "leakyrelu_alpha", 0.2)
        return lambda x, _: F.leaky_relu(x, alpha)
    if name == "Prelu":
        return lambda x, extra: torch.where(x >= 0, x, x * extra[0])
    raise TfjsError(f"node {node['name']!r}: unsupported fused activation {name!r}")


def _fused(node: dict, n_main: int):
    """Split a fused op's ``fused_ops`` into (bias?, activation fn or None); extra args follow the main inputs."""
    ops = _attr(node, "fused_ops", []) or []
    bias = bool(ops) and ops[0] in ("BiasAdd", "Add")
    rest = ops[1:] if bias else ops
    if len(rest) > 1:
        raise TfjsError(f"node {node['name']!r}: unsupported fused ops {ops}")
    return bias, (_activation(rest[0], node) if rest else None)


def _conv(node: dict, depthwise: bool = False, fused: bool = False):
    _check_nhwc(node)
    strides, dilations = _attr(node, "strides", [1, 1, 1, 1]), _attr(node, "dilations", [1, 1, 1, 1])
    padding = _attr(node, "padding", "VALID")
    explicit = _attr(node, "explicit_paddings", []) or []
    if padding not in ("SAME", "VALID", "EXPLICIT"):
        raise TfjsError(f"node {node['name']!r}: unsupported padding {padding!r}")
    bias, act = _fused(node, 2) if fused else (False, None)
    stride, dilation = (strides[1], strides[2]), (dilations[1], dilations[2])

    def run(x: _T, w: _T, *extra: _T) -> _T:
        if not x.nchw:
            raise TfjsError(f"node {node['name']!r}: convolution input is not a 4-D activation")
        kernel = w.x  # (kh, kw, cin, cout) or depthwise (kh, kw, cin, multiplier)
        kh, kw = kernel.shape[:2]
        if depthwise:
            weight = kernel.permute(2, 3, 0, 1).reshape(-1, 1, kh, kw)
            groups = kernel.shape[2]
        else:
            weight, groups = kernel.permute(3, 2, 0, 1), 1
        inp = x.x
        if padding == "SAME":
            top, bottom = _same_pad(inp.shape[2], kh, stride[0], dilation[0])
            left, right = _same_pad(inp.shape[3], kw, stride[1], dilation[1])
            inp = F.pad(inp, (left, right, top, bottom))
        elif padding == "EXPLICIT":
            inp = F.pad(inp, (explicit[4], explicit[5], explicit[2], explicit[3]))
        y = F.conv2d(inp, weight, None, stride, 0, dilation, groups)
        rest = list(extra)
        if bias:
            y = y + _as_nchw_operand(rest.pop(0))
        if act is not None:
            y = act(y, [_as_nchw_operand(r) for r in rest])
        return _T(y, nchw=True)

    return run


def _matmul(node: dict, fused: bool = False):
    ta, tb = _attr(node, "transpose_a", False), _attr(node, "transpose_b", False)
    bias, act = _fused(node, 2) if fused else (False, None)

    def run(a: _T, b: _T, *extra: _T) -> _T:
        x, w = a.tf(), b.tf()
        y = (x.transpose(-1, -2) if ta else x) @ (w.transpose(-1, -2) if tb else w)
        rest = [r.tf() for r in extra]
        if bias:
            y = y + rest.pop(0)
        if act is not None:
            y = act(y, rest)
        return _T(y)

    return run


def _binary(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
    def make(node: dict):
        def run(a: _T, b: _T) -> _T:
            if a.nchw or b.nchw:
                return _T(fn(_as_nchw_operand(a), _as_nchw_operand(b)), nchw=True)
            return _T(fn(a.x, b.x))

        return run

    return make


def _unary(fn: Callable[[torch.Tensor], torch.Tensor]):
    return lambda node: (lambda a: _T(fn(a.x), a.nchw))


def _axes_nchw(axes: list[int], rank: int = 4) -> list[int]:
    return [(0, 2, 3, 1)[a % rank] for a in axes]


def _reduce(fn: Callable):
    def make(node: dict):
        keep = _attr(node, "keep_dims", False)

        def run(x: _T, axes: _T) -> _T:
            dims = [int(a) for a in axes.x.reshape(-1).tolist()]
            if x.nchw and keep:
                return _T(fn(x.x, _axes_nchw(dims), True), nchw=True)
            if x.nchw:  # the surviving axes keep TF's order: (N, H, W, C) minus the reduced ones
                kept = [a for a in range(4) if a not in [d % 4 for d in dims]]
                y = fn(x.x, _axes_nchw(dims), True)
                return _T(y.permute(0, 2, 3, 1).reshape([x.x.shape[(0, 2, 3, 1)[a]] for a in kept]))
            return _T(fn(x.x, [d % x.x.dim() for d in dims], keep))

        return run

    return make


def _pad(node: dict):
    def run(x: _T, paddings: _T, *value: _T) -> _T:
        p = [int(v) for v in paddings.x.reshape(-1).tolist()]
        fill = float(value[0].x) if value else 0.0
        if x.nchw:  # TF: [[n0, n1], [h0, h1], [w0, w1], [c0, c1]]
            if p[0] or p[1]:
                raise TfjsError(f"node {node['name']!r}: padding the batch axis is not supported")
            return _T(F.pad(x.x, (p[4], p[5], p[2], p[3], p[6], p[7]), value=fill), nchw=True)
        pairs = [(p[2 * i], p[2 * i + 1]) for i in range(len(p) // 2)]
        return _T(F.pad(x.x, [v for pair in reversed(pairs) for v in pair], value=fill))

    return run


def _reshape(node: dict):
    def run(x: _T, shape: _T) -> _T:
        return _T(x.tf().reshape([int(s) for s in shape.x.reshape(-1).tolist()]))

    return run


def _pool(kind: str):
    def make(node: dict):
        _check_nhwc(node)
        ksize, strides, padding = _attr(node, "ksize"), _attr(node, "strides"), _attr(node, "padding", "VALID")

        def run(x: _T) -> _T:
            inp = x.x
            kh, kw, sh, sw = ksize[1], ksize[2], strides[1], strides[2]
            if padding == "SAME":
                top, bottom = _same_pad(inp.shape[2], kh, sh, 1)
                left, right = _same_pad(inp.shape[3], kw, sw, 1)
                if kind == "max":
                    inp = F.pad(inp, (left, right, top, bottom), value=float("-inf"))
                    return _T(F.max_pool2d(inp, (kh, kw), (sh, sw)), nchw=True)
                # TF's SAME average pooling divides by the number of real pixels under the window
                ones = F.pad(torch.ones_like(inp[:1, :1]), (left, right, top, bottom))
                total = F.avg_pool2d(F.pad(inp, (left, right, top, bottom)), (kh, kw), (sh, sw))
                return _T(total / F.avg_pool2d(ones, (kh, kw), (sh, sw)), nchw=True)
            pool = F.max_pool2d if kind == "max" else F.avg_pool2d
            return _T(pool(inp, (kh, kw), (sh, sw)), nchw=True)

        return run

    return make


def _concat(node: dict):
    def run(*args: _T) -> _T:
        axis, parts = int(args[-1].x), args[:-1]
        if all(p.nchw for p in parts):
            return _T(torch.cat([p.x for p in parts], dim=(0, 2, 3, 1)[axis % 4]), nchw=True)
        return _T(torch.cat([p.tf() for p in parts], dim=axis))

    return run


def _softmax(node: dict):
    return lambda x: _T(torch.softmax(x.tf(), dim=-1))


def _identity(node: dict):
    return lambda x: x


_OPS: dict[str, Callable[[dict], Callable]] = {
    "Conv2D": lambda n: _conv(n),
    "_FusedConv2D": lambda n: _conv(n, fused=True),
    "DepthwiseConv2dNative": lambda n: _conv(n, depthwise=True),
    "FusedDepthwiseConv2dNative": lambda n: _conv(n, depthwise=True, fused=True),
    "MatMul": lambda n: _matmul(n),
    "_FusedMatMul": lambda n: _matmul(n, fused=True),
    "Add": _binary(torch.add), "AddV2": _binary(torch.add), "BiasAdd": _binary(torch.add),
    "Sub": _binary(torch.sub), "Mul": _binary(torch.mul), "RealDiv": _binary(torch.div),
    "Maximum": _binary(torch.maximum), "Minimum": _binary(torch.minimum),
    "Relu": _unary(F.relu), "Relu6": _unary(F.relu6), "Sigmoid": _unary(torch.sigmoid), "Tanh": _unary(torch.tanh),
    "Rsqrt": _unary(torch.rsqrt), "Sqrt": _unary(torch.sqrt), "Square": _unary(torch.square),
    "Abs": _unary(torch.abs), "Neg": _unary(torch.neg), "Exp": _unary(torch.exp), "Elu": _unary(F.elu),
    "Mean": _reduce(lambda x, d, k: x.mean(dim=d, keepdim=k)),
    "Sum": _reduce(lambda x, d, k: x.sum(dim=d, keepdim=k)),
    "Max": _reduce(lambda x, d, k: x.amax(dim=d, keepdim=k)),
    "Pad": _pad, "PadV2": _pad, "Reshape": _reshape,
    "MaxPool": _pool("max"), "AvgPool": _pool("avg"),
    "ConcatV2": _concat, "Softmax": _softmax, "Identity": _identity,
}


_CONVS = {"Conv2D", "_FusedConv2D", "DepthwiseConv2dNative", "FusedDepthwiseConv2dNative"}


def load_graph_model(path: str | Path, outputs: list[str]) -> GraphModel:
    """A TFJS graph model (``model.json`` + shards beside it) as a :class:`GraphModel` returning ``outputs``."""
    path = Path(path)
    model = load_model_json(path)
    if model.get("format") != "graph-model" or "modelTopology" not in model:
        raise TfjsError(f"{str(path)!r} is not a TFJS graph model (format {model.get('format')!r})")
    weights = read_weights(model["weightsManifest"], path.parent)
    return GraphModel(model, weights, outputs, source=path.name)
