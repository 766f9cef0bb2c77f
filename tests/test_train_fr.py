"""The FR-training job on a tiny folder dataset: trains, checkpoints, resumes, exports loadable weights."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from safetensors.torch import load_file
from torchvision.io import write_png

from opom.data.synthetic import render_images
from opom.errors import ConfigError
from opom.fr_task import build_trainable, train_fr
from opom.models.zoo import ZOO, build_face_model

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture(scope="module")
def face_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    images = render_images([0] * 3 + [1] * 3 + [2] * 3, list(range(3)) * 3, seed=0)
    for i, image in enumerate(images):
        person = root / f"person_{i // 3}"
        person.mkdir(exist_ok=True)
        write_png(image, str(person / f"{i % 3}.png"))
    (root / "empty_person").mkdir()
    return root


def _cfg(overrides, out):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train_fr", overrides=[*overrides, f"paths.output_dir={out}"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


TINY = ["arch=small_resnet", "loss=arcface", "embedding_size=32", "batch_size=6", "num_workers=0",
        "trainer.accelerator=cpu", "trainer.devices=1", "trainer.enable_progress_bar=false", "~logger"]


def test_trains_resumes_and_exports(face_folder, tmp_path):
    exported = train_fr(_cfg([*TINY, f"data.root={face_folder}", "epochs=1"], tmp_path))
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    first = load_file(exported["safetensors"])
    assert all(torch.equal(first[k], v) for k, v in torch.load(exported["pth"], weights_only=True).items())

    resumed = train_fr(_cfg([*TINY, f"data.root={face_folder}", "epochs=2",
                             f"resume={tmp_path / 'checkpoints' / 'last.ckpt'}"], tmp_path))
    second = load_file(resumed["safetensors"])
    assert any(not torch.equal(first[k], second[k]) for k in first)  # the resumed epoch trained further

    model = build_face_model({"name": "mine", "arch": "small_resnet", "embedding_size": 32,
                              "checkpoint": resumed["pth"]})
    assert model(torch.rand(2, 3, 112, 112)).shape == (2, 32)


@pytest.mark.parametrize("loss", ["softmax", "sphereface", "cosface", "sface"])
def test_every_training_loss_runs(face_folder, tmp_path, loss):
    train_fr(_cfg([*TINY, f"data.root={face_folder}", "epochs=1", f"loss={loss}"], tmp_path))
    assert (tmp_path / "backbone.safetensors").exists()


def test_untrainable_arch_and_missing_folder_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="trainable architectures"):
        build_trainable("no_such_net", 32)
    with pytest.raises(Exception, match="does not exist"):
        train_fr(_cfg([*TINY, f"data.root={tmp_path / 'nope'}", "epochs=1"], tmp_path))


RECIPES = sorted(p.stem for p in (CONF / "fr_recipe").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES)
def test_paper_recipes_compose_to_trainable_models(recipe, tmp_path):
    cfg = _cfg([f"fr_recipe={recipe}", "data.root=/data/casia"], tmp_path)
    assert cfg.arch in ZOO and ZOO[cfg.arch].make is not None
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.precision == "16-mixed"


@pytest.mark.slow
def test_two_process_ddp_and_bf16_mixed_precision_on_cpu(face_folder, tmp_path):
    """The multi-device and mixed-precision paths are Lightning's; this runs them for real on 2 CPU processes."""
    overrides = [o for o in TINY if not o.startswith("trainer.devices")]
    exported = train_fr(_cfg([*overrides, f"data.root={face_folder}", "epochs=1", "trainer.devices=2",
                              "trainer.strategy=ddp_spawn", "trainer.precision=bf16-mixed"], tmp_path))
    state = load_file(exported["safetensors"])
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
