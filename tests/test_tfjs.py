"""The TFJS reader: weight formats, the graph interpreter against TensorFlow.js outputs, face-api's layers net."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from opom.models.faceapi import _BLOCKS, MANIFEST, FaceApiResNet, load_faceapi_resnet
from opom.models.tfjs import TfjsError, load_graph_model, read_weights

TINY = Path(__file__).parent / "data" / "tfjs_tiny"


def _manifest(tmp_path, specs_and_bytes, shards=1):
    data = b"".join(b for _, b in specs_and_bytes)
    cut = len(data) // shards
    paths = []
    for i in range(shards):
        name = f"w{i}.bin"
        (tmp_path / name).write_bytes(data[i * cut: (i + 1) * cut if i < shards - 1 else len(data)])
        paths.append(name)
    return [{"paths": paths, "weights": [s for s, _ in specs_and_bytes]}]


def test_weights_decode_float32_float16_uint8_and_int32_across_shards(tmp_path):
    a = np.arange(6, dtype="<f4").reshape(2, 3) / 7
    h = np.array([0.5, -1.25, 3.0], dtype="<f2")
    q = np.array([0, 128, 255], dtype=np.uint8)
    i = np.array([-3, 7], dtype="<i4")
    manifest = _manifest(tmp_path, [
        ({"name": "a", "shape": [2, 3], "dtype": "float32"}, a.tobytes()),
        ({"name": "h", "shape": [3], "dtype": "float32", "quantization": {"dtype": "float16"}}, h.tobytes()),
        ({"name": "q", "shape": [3], "dtype": "float32",
          "quantization": {"dtype": "uint8", "min": -1.0, "scale": 0.01}}, q.tobytes()),
        ({"name": "i", "shape": [2], "dtype": "int32"}, i.tobytes()),
    ], shards=3)
    w = read_weights(manifest, tmp_path)
    assert torch.equal(w["a"], torch.from_numpy(a))
    assert w["h"].tolist() == [0.5, -1.25, 3.0] and w["h"].dtype == torch.float32
    assert w["q"].tolist() == pytest.approx([-1.0, 0.28, 1.55], abs=1e-6)
    assert w["i"].tolist() == [-3, 7] and w["i"].dtype == torch.int32


def test_truncated_or_missing_shards_are_one_clear_error(tmp_path):
    manifest = _manifest(tmp_path, [({"name": "a", "shape": [4], "dtype": "float32"}, b"\0" * 12)])
    with pytest.raises(TfjsError, match="past the end"):
        read_weights(manifest, tmp_path)
    manifest[0]["paths"] = ["nowhere.bin"]
    with pytest.raises(TfjsError, match="missing"):
        read_weights(manifest, tmp_path)


def test_graph_model_matches_tensorflow_js_outputs():
    """tests/data/tfjs_tiny: SAME stride-2 convolutions on odd and even sizes, depthwise and fused convolutions,
    PReLU as max/min, Pad, MaxPool, Mean, Reshape of an NHWC activation, (fused) MatMul, float16 and uint8 weights;
    the expected outputs were computed by TensorFlow.js 4.22 (tests/tfjs_reference/make_tiny_model.py)."""
    model = load_graph_model(TINY / "model.json", ["out"])
    x = np.fromfile(TINY / "input.f32", "<f4").reshape(2, 9, 10, 3)
    expected = np.fromfile(TINY / "tfjs_output.f32", "<f4").reshape(2, 5)
    got = model(torch.from_numpy(x).permute(0, 3, 1, 2)).detach().numpy()
    assert np.abs(got - expected).max() < 1e-5


def test_graph_model_is_differentiable_and_keeps_weights_as_buffers():
    model = load_graph_model(TINY / "model.json", ["out"])
    x = torch.rand(1, 3, 9, 10, requires_grad=True)
    model(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert not list(model.parameters()) and len(list(model.buffers())) > 5


def test_unknown_op_names_the_op_and_node(tmp_path):
    model = json.loads((TINY / "model.json").read_text())
    for node in model["modelTopology"]["node"]:
        if node["name"] == "pool":
            node["op"] = "FancyPool3D"
    for shard in ("group1-shard1of2.bin", "group1-shard2of2.bin"):
        (tmp_path / shard).write_bytes((TINY / shard).read_bytes())
    (tmp_path / "model.json").write_text(json.dumps(model))
    with pytest.raises(TfjsError, match="unsupported TFJS op 'FancyPool3D' \\(node 'pool'\\)"):
        load_graph_model(tmp_path / "model.json", ["out"])


def test_not_a_model_file_is_one_clear_error(tmp_path):
    (tmp_path / "model.json").write_text("<html>")
    with pytest.raises(TfjsError, match="not a TFJS model.json"):
        load_graph_model(tmp_path / "model.json", ["out"])


def _write_faceapi(folder, net):
    """net's weights in face-api's layers format: names, TF layouts, uint8 quantisation of the biases."""
    specs, blobs = [], []

    def add(name, value, quantise=False):
        value = value.detach().numpy().astype("<f4")
        spec = {"name": name, "shape": list(value.shape), "dtype": "float32"}
        if quantise:
            lo, scale = float(value.min()), float(value.max() - value.min()) / 255 or 1.0
            spec["quantization"] = {"dtype": "uint8", "min": lo, "scale": scale}
            blobs.append(np.round((value - lo) / scale).astype(np.uint8).tobytes())
        else:
            blobs.append(value.tobytes())
        specs.append(spec)

    def layer(prefix, m):
        add(f"{prefix}/conv/filters", m.conv.weight.permute(2, 3, 1, 0))
        add(f"{prefix}/conv/bias", m.conv.bias, quantise=True)
        add(f"{prefix}/scale/weights", m.scale)
        add(f"{prefix}/scale/biases", m.shift)

    layer("conv32_down", net.stem)
    for (name, _, _), block in zip(_BLOCKS, net.blocks, strict=True):
        layer(f"{name}/conv1", block.conv1)
        layer(f"{name}/conv2", block.conv2)
    add("fc", net.fc.weight.t())
    (folder / "face_recognition_model.bin").write_bytes(b"".join(blobs))
    (folder / MANIFEST).write_text(json.dumps([{"paths": ["face_recognition_model.bin"], "weights": specs}]))
    return specs


def test_faceapi_layers_format_loads_every_tensor_into_its_place(tmp_path):
    torch.manual_seed(0)
    net = FaceApiResNet()
    for p in net.parameters():
        p.data.normal_(0, 0.05)
    specs = _write_faceapi(tmp_path, net)
    loaded = load_faceapi_resnet(tmp_path)
    x = torch.rand(2, 3, 150, 150)
    # weights are equal except the uint8-quantised biases (tiny): outputs agree closely, descriptors are 128-d
    assert loaded(x).shape == (2, 128)
    assert torch.allclose(loaded(x), net(x), atol=1e-3)
    assert torch.equal(loaded.stem.conv.weight, net.stem.conv.weight)
    # a manifest without one tensor is refused with its name
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    manifest[0]["weights"] = [s for s in specs if s["name"] != "conv64_1/conv2/scale/weights"]
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(TfjsError):
        load_faceapi_resnet(tmp_path)
