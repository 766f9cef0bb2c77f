import pytest
import torch
from safetensors.torch import save_file

from opom.data.synthetic import SyntheticFaces
from opom.errors import ConfigError, UserError
from opom.models.backbones import get_backbone
from opom.models.training import prepare_models, trained_model_path
from opom.models.zoo import ZOO, FaceModel, Preprocessing, build_face_model


def _spec(**kw):
    return {"name": "mine", "arch": "small_resnet", "loss": "arcface", "seed": 0, "embedding_size": 128,
            "checkpoint": None, **kw}


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_checkpoint_loads_to_the_same_embeddings(tmp_path, suffix):
    torch.manual_seed(0)
    backbone = get_backbone("resnet").eval()
    path = tmp_path / f"w{suffix}"
    if suffix == ".pt":
        torch.save(backbone.state_dict(), path)
    else:
        save_file(backbone.state_dict(), path)
    model = build_face_model(_spec(checkpoint=str(path)))
    x = torch.rand(2, 3, 112, 112)
    assert torch.allclose(model(x), FaceModel(backbone, Preprocessing(embedding_size=128))(x))
    assert not any(p.requires_grad for p in model.parameters())


class _NotWeights:
    pass


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"payload": _NotWeights()}, path)
    with pytest.raises(UserError, match="refusing to load"):
        build_face_model(_spec(checkpoint=str(path)))


def test_missing_checkpoint_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        build_face_model(_spec(checkpoint=str(tmp_path / "nope.safetensors")))


def test_no_checkpoint_and_no_training_pool_is_a_clear_error():
    with pytest.raises(ConfigError, match="mine.checkpoint="):
        build_face_model(_spec(), dataset=None)


def test_models_train_once_in_parallel_then_come_from_the_cache(tmp_path):
    ds = SyntheticFaces(identities=1, images_per_identity=3, mask_images=1, test_images=2, distractors=1,
                        train_identities=4, train_images=2, cache_dir=str(tmp_path))
    fr_train = {"epochs": 1, "batch_size": 8, "workers": 2}
    specs = [_spec(name="a"), _spec(name="b", arch="small_mobilefacenet", loss="softmax", seed=1)]
    prepare_models(specs, ds, fr_train, tmp_path)
    paths = [trained_model_path(s, ds, fr_train, tmp_path) for s in specs]
    assert all(p.exists() for p in paths) and paths[0] != paths[1]
    stamps = [p.stat().st_mtime_ns for p in paths]
    # the worker count changes speed, not the model: same cache entries, nothing retrained
    prepare_models(specs, ds, {**fr_train, "workers": 1}, tmp_path)
    assert [p.stat().st_mtime_ns for p in paths] == stamps
    model = build_face_model(specs[1], ds, fr_train, tmp_path)
    assert model(torch.rand(1, 3, 112, 112)).shape == (1, 128)


@pytest.mark.parametrize("arch", ["iresnet18", "ir50", "mobilefacenet"])
def test_public_formats_build_through_the_zoo(tmp_path, arch):
    torch.manual_seed(0)
    net = ZOO[arch].make(512).eval()
    torch.save(net.state_dict(), tmp_path / "backbone.pth")
    model = build_face_model({"name": "theirs", "arch": arch, "checkpoint": str(tmp_path / "backbone.pth")})
    x = torch.rand(2, 3, 112, 112)
    assert torch.allclose(model(x), FaceModel(net, ZOO[arch].preprocessing)(x), atol=1e-5)


def test_public_formats_say_which_weights_they_need():
    with pytest.raises(ConfigError, match=r"theirs.checkpoint=.*arcface_torch"):
        build_face_model({"name": "theirs", "arch": "iresnet50", "checkpoint": None})
    with pytest.raises(ConfigError, match="the zoo has"):
        build_face_model({"name": "theirs", "arch": "resnet9000"})


class _Echo(torch.nn.Module):
    def forward(self, x):
        return x


def test_preprocessing_happens_inside_the_model():
    x = torch.rand(1, 3, 112, 112)
    bgr = FaceModel(_Echo(), Preprocessing(channels="BGR", mean=0.0, std=1.0))(x)
    assert torch.allclose(bgr, x.flip(1) * 255)
    evolve = FaceModel(_Echo(), ZOO["ir50"].preprocessing)(x)
    assert torch.allclose(evolve, (x * 255 - 127.5) * 0.078125, atol=1e-4)
    facenet = FaceModel(_Echo(), ZOO["inception_resnet_v1"].preprocessing)(x)
    assert facenet.shape == (1, 3, 160, 160)
