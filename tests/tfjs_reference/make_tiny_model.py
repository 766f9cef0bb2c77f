"""Write the tiny TFJS graph model of the fast parity test (tests/data/tfjs_tiny/), and its TensorFlow.js outputs.

The model uses every op family the real FR graphs use — TF 'SAME' convolutions with stride 2 on odd and even sizes,
depthwise and fused convolutions (bias + ReLU6 / ReLU / PReLU-style max/min), explicit Pad, pooling, spatial Mean,
fused MatMul, Reshape of an NHWC activation — with float32, float16- and uint8-quantised weights, in the exact
model.json + .bin format tensorflowjs_converter writes. The reference outputs come from TensorFlow.js itself:

    python tests/tfjs_reference/make_tiny_model.py   # needs `make tfjs-reference` (node + @tensorflow/tfjs)
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "data" / "tfjs_tiny"
SHAPE = [2, 9, 10, 3]  # NHWC: odd height, even width


def b64(text: str) -> dict:
    return {"s": base64.b64encode(text.encode()).decode()}


def ints(*values: int) -> dict:
    return {"list": {"i": [str(v) for v in values]}}


def main() -> None:
    rng = np.random.default_rng(7)
    weights: list[tuple[str, np.ndarray, str | None]] = []  # name, float values, quantisation
    nodes = [{"name": "input", "op": "Placeholder",
              "attr": {"dtype": {"type": "DT_FLOAT"}, "shape": {"shape": {"dim": [{"size": "-1"}, {"size": "9"},
                                                                                   {"size": "10"}, {"size": "3"}]}}}}]

    def const(name, value, quant=None, dtype="DT_FLOAT"):
        value = np.asarray(value, dtype=np.int32 if dtype == "DT_INT32" else np.float32)
        weights.append((name, value, quant))
        nodes.append({"name": name, "op": "Const", "attr": {"dtype": {"type": dtype}, "value": {"tensor": {
            "dtype": dtype, "tensorShape": {"dim": [{"size": str(s)} for s in value.shape]}}}}})

    def op(name, kind, inputs, **attr):
        nodes.append({"name": name, "op": kind, "input": inputs, "attr": attr})

    conv = {"data_format": b64("NHWC"), "dilations": ints(1, 1, 1, 1)}
    const("pad/paddings", [[0, 0], [1, 0], [0, 1], [0, 0]], dtype="DT_INT32")
    op("pad", "Pad", ["input", "pad/paddings"])
    const("c1/w", rng.normal(0, 0.3, (3, 3, 3, 8)), "float16")
    op("c1", "Conv2D", ["pad", "c1/w"], strides=ints(1, 2, 2, 1), padding=b64("SAME"), **conv)
    const("bn/mul", rng.uniform(0.5, 1.5, 8), "uint8")
    const("bn/add", rng.normal(0, 0.1, 8))
    op("bn_mul", "Mul", ["c1", "bn/mul"])
    op("bn_add", "AddV2", ["bn/add", "bn_mul"])  # constant first, as in the real graphs
    const("prelu/zero", np.float32(0.0))
    const("prelu/gamma", rng.uniform(0.1, 0.3, 8))
    op("pos", "Maximum", ["prelu/zero", "bn_add"])
    op("neg", "Minimum", ["prelu/zero", "bn_add"])
    op("neg_scaled", "Mul", ["prelu/gamma", "neg"])
    op("prelu", "AddV2", ["pos", "neg_scaled"])
    const("dw/w", rng.normal(0, 0.3, (3, 3, 8, 1)))
    const("dw/b", rng.normal(0, 0.1, 8))
    op("dw", "FusedDepthwiseConv2dNative", ["prelu", "dw/w", "dw/b"], strides=ints(1, 2, 2, 1),
       padding=b64("SAME"), fused_ops={"list": {"s": [b64("BiasAdd")["s"], b64("Relu")["s"]]}}, num_args={"i": "1"},
       **conv)
    const("pw/w", rng.normal(0, 0.3, (1, 1, 8, 6)), "uint8")
    const("pw/b", rng.normal(0, 0.1, 6))
    op("pw", "_FusedConv2D", ["dw", "pw/w", "pw/b"], strides=ints(1, 1, 1, 1), padding=b64("VALID"),
       fused_ops={"list": {"s": [b64("BiasAdd")["s"], b64("Relu6")["s"]]}}, num_args={"i": "1"},
       explicit_paddings={"list": {}}, **conv)
    op("pool", "MaxPool", ["pw"], ksize=ints(1, 2, 2, 1), strides=ints(1, 1, 1, 1), padding=b64("SAME"),
       data_format=b64("NHWC"))
    const("flat/shape", [-1, 3 * 3 * 6], dtype="DT_INT32")
    op("flat", "Reshape", ["pool", "flat/shape"])
    const("mean/axes", [1, 2], dtype="DT_INT32")
    op("mean", "Mean", ["pw", "mean/axes"], keep_dims={"b": False})
    const("fc/w", rng.normal(0, 0.3, (54, 5)))
    const("fc/b", rng.normal(0, 0.1, 5))
    op("fc", "_FusedMatMul", ["flat", "fc/w", "fc/b"], transpose_a={"b": False}, transpose_b={"b": False},
       fused_ops={"list": {"s": [b64("BiasAdd")["s"]]}}, num_args={"i": "1"})
    const("fc2/w", rng.normal(0, 0.3, (6, 5)))
    op("fc2", "MatMul", ["mean", "fc2/w"], transpose_a={"b": False}, transpose_b={"b": False})
    op("out", "AddV2", ["fc", "fc2"])

    blobs, specs = [], []
    for name, value, quant in weights:
        spec = {"name": name, "shape": list(value.shape), "dtype": "int32" if value.dtype == np.int32 else "float32"}
        if quant == "float16":
            spec["quantization"] = {"dtype": "float16", "original_dtype": "float32"}
            blobs.append(value.astype("<f2").tobytes())
        elif quant == "uint8":
            lo, hi = float(value.min()), float(value.max())
            scale = (hi - lo) / 255
            spec["quantization"] = {"dtype": "uint8", "min": lo, "scale": scale, "original_dtype": "float32"}
            blobs.append(np.round((value - lo) / scale).astype(np.uint8).tobytes())
        else:
            blobs.append(value.astype("<i4" if value.dtype == np.int32 else "<f4").tobytes())
        specs.append(spec)
    data = b"".join(blobs)
    half = len(data) // 2  # two shards, as large models have
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "group1-shard1of2.bin").write_bytes(data[:half])
    (OUT / "group1-shard2of2.bin").write_bytes(data[half:])
    model = {"format": "graph-model", "generatedBy": "opom tests", "convertedBy": "opom tests",
             "modelTopology": {"node": nodes, "library": {}, "versions": {}},
             "weightsManifest": [{"paths": ["group1-shard1of2.bin", "group1-shard2of2.bin"], "weights": specs}]}
    (OUT / "model.json").write_text(json.dumps(model, indent=1))
    x = rng.uniform(-1, 1, SHAPE).astype("<f4")
    x.tofile(OUT / "input.f32")
    modules = os.environ.get("OPOM_TFJS_REFERENCE", str(Path.home() / ".cache" / "opom-tfjs-reference"))
    with tempfile.TemporaryDirectory() as tmp:
        job = {"kind": "graph", "model": str(OUT / "model.json"), "outputs": ["out"], "input": str(OUT / "input.f32"),
               "shape": SHAPE, "out": str(OUT / "tfjs_output.f32")}
        (Path(tmp) / "job.json").write_text(json.dumps(job))
        done = subprocess.run(["node", str(HERE / "reference.cjs"), str(Path(tmp) / "job.json")],
                              env={**os.environ, "NODE_PATH": str(Path(modules) / "node_modules")})
    sys.exit(done.returncode)


if __name__ == "__main__":
    main()
