"""The real face-recognition families from npm packages, on real photos (``real`` tier; ``make test-assets``).

- every converted model against TensorFlow.js itself (pure-JS cpu backend, tests/tfjs_reference) on real faces;
- face-api's port against dlib on identical chips;
- each model tells the people of the photos apart by its own rule;
- the held-out-photo benchmark runs end to end.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from opom.data.alignment import Canvas
from opom.models.npm_assets import AssetError, find_file

pytestmark = pytest.mark.real
REFERENCE = Path(__file__).parent / "tfjs_reference" / "reference.cjs"
NODE_MODULES = Path(os.environ.get("OPOM_TFJS_REFERENCE", Path.home() / ".cache" / "opom-tfjs-reference"))


def _need_models():
    try:
        find_file("human-models", "models/faceres.json")
        find_file("face-api", "model/face_recognition_model.bin")
    except AssetError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def faces():
    """The real-photo benchmark's aligned faces (canvas224) and their people."""
    _need_models()
    pytest.importorskip("dlib", reason="needs the zoo extra: pip install -e '.[zoo]'")
    from opom.data.real_photos import RealPhotos

    try:
        return RealPhotos(cache_dir=os.environ.get("OPOM_CACHE_DIR")).holdout_set()
    except AssetError as err:
        pytest.skip(str(err))


def tfjs(kind: str, model: Path, x_nhwc: np.ndarray, outputs=None, tmp: Path = None) -> np.ndarray:
    """The model's output computed by TensorFlow.js in node (tests/tfjs_reference/reference.cjs)."""
    if shutil.which("node") is None or not (NODE_MODULES / "node_modules" / "@tensorflow" / "tfjs").is_dir():
        pytest.skip("TensorFlow.js reference not installed: make tfjs-reference")
    x_nhwc.astype("<f4").tofile(tmp / "in.f32")
    job = {"kind": kind, "model": str(model), "outputs": outputs, "input": str(tmp / "in.f32"),
           "shape": list(x_nhwc.shape), "out": str(tmp / "out.f32")}
    (tmp / "job.json").write_text(json.dumps(job))
    done = subprocess.run(["node", str(REFERENCE), str(tmp / "job.json")], capture_output=True, text=True,
                          env={**os.environ, "NODE_PATH": str(NODE_MODULES / "node_modules")}, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return np.fromfile(tmp / "out.f32", "<f4").reshape(len(x_nhwc), -1)


@pytest.mark.parametrize("name,file,output", [("faceres", "faceres", "global_pooling/Mean"),
                                              ("faceres_deep", "faceres-deep", "global_pooling/Mean"),
                                              ("mobileface", "mobileface", "batchnorm0/add_1")])
def test_graph_models_equal_tensorflow_js_on_real_faces(name, file, output, faces, tmp_path):
    from opom.models.zoo import build_face_model

    model = build_face_model({"name": name, "arch": name}, canvas=faces.canvas)
    x = faces.images[:4].float() / 255
    with torch.no_grad():
        net_input = model.prepare(x)  # what the network receives, NCHW
        ours = model.backbone(net_input).numpy()
    theirs = tfjs("graph", find_file("human-models", f"models/{file}.json"), net_input.permute(0, 2, 3, 1).numpy(),
                  [output], tmp_path)
    err = np.abs(ours - theirs).max()
    print(f"{name}: max |torch - tfjs| = {err:.2e} (outputs up to {np.abs(theirs).max():.2f})")
    assert err <= 1e-4


def test_faceapi_equals_face_api_itself_on_real_faces(faces, tmp_path):
    from opom.models.zoo import build_face_model

    model = build_face_model({"name": "faceapi", "arch": "faceapi"}, canvas=faces.canvas)
    x = faces.images[:4].float() / 255
    with torch.no_grad():
        chips = model.prepare(x)  # normalised 150x150 chips; face-api normalises itself: give it 0..255
        ours = model.backbone(chips).numpy()
    mean = torch.tensor(model.preprocessing.mean).view(1, 3, 1, 1)
    raw = (chips * 255 + mean).permute(0, 2, 3, 1).numpy()
    theirs = tfjs("faceapi", find_file("face-api", "model/face_recognition_model.bin").parent, raw, tmp=tmp_path)
    err = np.abs(ours - theirs).max()
    print(f"faceapi: max |torch - face-api| = {err:.2e}")
    assert err <= 1e-4


def test_faceapi_port_matches_dlib_on_identical_chips(faces):
    from opom.models.dlib_model import DlibFaceModel
    from opom.models.zoo import build_face_model

    dlib_model = DlibFaceModel()
    dlib_model.set_canvas(faces.canvas)
    chips = dlib_model.face_chips(faces.images)  # dlib's own 150x150 chips, uint8 RGB
    theirs = torch.tensor(np.array([np.asarray(d) for d in dlib_model.recognizer.compute_face_descriptor(list(chips))]))
    port = build_face_model({"name": "faceapi", "arch": "faceapi"})
    x = torch.from_numpy(chips).permute(0, 3, 1, 2).float()
    mean = torch.tensor(port.preprocessing.mean).view(1, 3, 1, 1)
    with torch.no_grad():
        ours = port.backbone((x - mean) / 255).double()
    cos = torch.nn.functional.cosine_similarity(ours, theirs, dim=1)
    print(f"face-api vs dlib on identical chips: cosine min {cos.min():.5f}, mean {cos.mean():.5f}")
    assert cos.min() >= 0.999


def test_check_runs_dlib_without_torch_exactly_as_the_zoo(faces):
    from opom.cloak.check import build_panel
    from opom.cloak.faces import embed_crops
    from opom.models.zoo import build_face_model

    crops = [np.ascontiguousarray(c) for c in (faces.images * 255).round().byte().permute(0, 2, 3, 1).numpy()]
    (native,) = build_panel(("dlib",), canvas=faces.canvas.name)
    assert type(native.model).__name__ == "DlibDescriptor" and native.metric == "l2" and native.threshold == 0.6
    zoo = build_face_model({"name": "dlib", "arch": "dlib"}, canvas=faces.canvas)
    np.testing.assert_allclose(native.model.embed_crops(crops), embed_crops(zoo, crops), atol=1e-6)


@pytest.mark.parametrize("name", ["sface", "faceres", "faceres_deep", "faceapi", "dlib"])
def test_each_model_tells_the_people_apart_by_its_own_rule(name, faces):
    from opom.evaluation.embeddings import embed
    from opom.models.zoo import build_face_model

    model = build_face_model({"name": name, "arch": name}, canvas=faces.canvas)
    with torch.no_grad():
        e = embed(model, faces.images, 8)
    same = model.preprocessing.same_person(e[:, None], e[None])
    people = faces.people
    genuine = [(i, j) for i in range(len(people)) for j in range(i) if people[i] and people[i] == people[j]]
    impostor = [(i, j) for i in range(len(people)) for j in range(i) if (i, j) not in genuine]
    assert sum(bool(same[i, j]) for i, j in genuine) >= len(genuine) - 1
    assert sum(bool(same[i, j]) for i, j in impostor) <= 0.03 * len(impostor)


def test_every_model_reads_its_own_crop_from_the_canvas(faces):
    """A larger canvas must not change what a model sees of the face: the 112 crop read from canvas224 equals
    the crop itself (SFace), and dlib's own pipeline still finds the face inside the canvas."""
    from opom.models.zoo import build_face_model

    sface_crop = build_face_model({"name": "sface", "arch": "sface"})
    sface_canvas = build_face_model({"name": "sface", "arch": "sface"}, canvas=faces.canvas)
    x = faces.images[:3].float() / 255
    with torch.no_grad():
        a, b = sface_crop(x[..., 56:168, 56:168]), sface_canvas(x)
    assert torch.allclose(a, b, atol=1e-3)
    assert faces.canvas == Canvas(56, 1)


def test_the_held_out_photo_benchmark_runs_end_to_end(tmp_path):
    _need_models()
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from opom.masks import load_masks
    from opom.pipeline import run
    from opom.resolvers import register

    register()
    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("run", overrides=["experiment=real_transfer", "surrogate=[mobileface]",
                                        "blackbox=[faceapi,dlib]", "attack.iterations=2",
                                        "trainer.enable_progress_bar=false", f"paths.output_dir={tmp_path}"],
                      return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    results = run(cfg)
    assert results["protocol"] == "holdout" and results["folds"] == 7 and results["photos"] == 30
    assert results["models"]["mobileface"]["whitebox"] and not results["models"]["mobileface"]["held_out"]
    assert results["models"]["dlib"]["held_out"] and results["models"]["faceapi"]["family"] == "dlib"
    assert 0 <= results["models"]["dlib"]["protected_rate"] <= 1
    masks = load_masks(tmp_path / "masks.safetensors")
    assert masks.template == "canvas224" and masks.masks.shape == (7, 3, 224, 224)
    assert masks.masks.abs().max() <= 8 / 255 + 1e-6
