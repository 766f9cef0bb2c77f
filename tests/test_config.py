"""Every option of every config group composes, and its parts instantiate."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import MissingConfigException
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from opom.attack import SignAttack
from opom.data.synthetic import SyntheticFaces
from opom.methods import Method
from opom.models.heads import HEADS
from opom.models.training import SMALL_ARCHS
from opom.models.zoo import ZOO
from opom.pipeline import plain_config
from opom.resolvers import register

register()  # as run.py does before Hydra composes
CONF = Path(__file__).resolve().parents[1] / "conf"


def _options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _compose(overrides, tmp_path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("run", overrides=[*overrides, f"paths.output_dir={tmp_path}"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def _check_model_spec(spec):
    assert spec.name and spec.arch in ZOO
    if spec.arch in SMALL_ARCHS:
        assert spec.loss in HEADS and spec.checkpoint is None
    if spec.name.startswith("paper_") or spec.name == "ir50_softmax":  # the paper's CASIA models: 512-d, weights
        assert spec.embedding_size == 512 and spec.checkpoint.endswith(".safetensors")


CASES = [(g, o) for g in ("method", "attack", "dataset", "surrogate", "blackbox", "logger", "fr_train", "transfer",
                          "experiment")
         for o in _options(g)]


@pytest.mark.parametrize("group,option", CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_every_option_composes_and_instantiates(group, option, tmp_path):
    override = f"blackbox=[{option}]" if group == "blackbox" else f"{group}={option}"
    cfg = _compose([override], tmp_path)
    for key in list(cfg.dataset):  # real datasets: the paths a user must give (???)
        if OmegaConf.is_missing(cfg.dataset, key):
            cfg.dataset[key] = str(tmp_path)
    cfg.paper.weights = str(tmp_path)  # the paper's models: a weights folder the user must give (???)
    plain_config(cfg)  # every interpolation of the job's config resolves
    assert isinstance(instantiate(cfg.method), Method)
    assert isinstance(instantiate(cfg.attack), SignAttack)
    if not cfg.dataset._target_.endswith("SyntheticFaces"):
        assert callable(get_class(cfg.dataset._target_))  # real data needs paths (???) to instantiate
    else:
        assert isinstance(instantiate(cfg.dataset), SyntheticFaces)
    for spec in cfg.surrogate.values():
        _check_model_spec(spec)
    for spec in cfg.blackbox.values():
        _check_model_spec(spec)
    if group == "logger":
        logger = instantiate(cfg.logger)
        assert logger.save_dir == str(tmp_path)


def test_default_surrogate_is_not_in_the_default_panel(tmp_path):
    cfg = _compose([], tmp_path)
    (surrogate,) = cfg.surrogate.values()
    sur = (surrogate.arch, surrogate.loss, surrogate.seed)
    for spec in cfg.blackbox.values():
        assert (spec.arch, spec.loss, spec.seed) != sur


def test_several_surrogates_compose_into_an_ensemble(tmp_path):
    cfg = _compose(["surrogate=[sface,faceapi,faceres]"], tmp_path)
    assert list(cfg.surrogate) == ["sface", "faceapi", "faceres"]
    assert [spec.arch for spec in cfg.surrogate.values()] == ["sface", "faceapi", "faceres"]


def test_unknown_method_lists_the_choices(tmp_path):
    with pytest.raises(MissingConfigException) as err:
        _compose(["method=convex_hul"], tmp_path)
    assert "convex_hull" in str(err.value) and "affine_hull" in str(err.value)
