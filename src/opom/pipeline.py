"""The main job: craft one mask per identity, save it, and test it against held-out face models.

``run(cfg)`` builds every part explicitly from the composed Hydra config and returns the results dict
(the same content as ``results.json``).
"""

from __future__ import annotations

import logging
import math
import zipfile
from functools import partial
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from opom.data.protection import ProtectionDataModule, ProtectionSet
from opom.errors import ConfigError, UserError
from opom.evaluation.callbacks import MaskWriter, TransferEvaluation, WandbReport
from opom.evaluation.provenance import data_used, environment
from opom.evaluation.robustness import parse_transform
from opom.logs import quiet_lightning
from opom.masks import MaskSet, load_masks
from opom.methods import METHODS
from opom.models.training import prepare_models
from opom.models.zoo import ZOO, build_face_model, model_key, preflight
from opom.module import MaskCrafter
from opom.shards import Shard, shard_trainer

log = logging.getLogger("opom")


def validate(cfg: DictConfig) -> None:
    """Fail fast, before anything heavy, on settings that cannot work. Reads no data and builds no model, so
    ``run.py`` runs it on the composed config before Hydra creates the job's folder."""
    target = cfg.method.get("_target_", "")
    if not target.startswith("opom.methods.") or target.rsplit(".", 1)[-1] not in {
            type_.__name__ for type_ in METHODS.values()}:
        raise ConfigError(f"unknown method target {target!r}; use method=<{'|'.join(METHODS)}>")
    check_attack(cfg.attack)
    instantiate(cfg.attack)  # the attack's own checks (dropout, normalizer, ...)
    if not cfg.get("blackbox"):
        raise ConfigError("the black-box panel is empty: choose models, e.g. 'blackbox=[resnet_cosface]'")
    if _number(cfg.identities_per_batch, "identities_per_batch", int) < 1:
        raise ConfigError(f"identities_per_batch must be >= 1, got {cfg.identities_per_batch}")
    face_images_setting(cfg)
    check_evaluation(cfg.evaluation)
    surrogate_spec, _ = _specs(cfg)
    if not ZOO[surrogate_spec["arch"]].differentiable:
        raise ConfigError(f"surrogate {surrogate_spec['name']!r} is a black box (no gradients): it can only be "
                          f"evaluated, e.g. 'blackbox=[{surrogate_spec['name']}]'; pick a differentiable surrogate")
    OmegaConf.to_container(cfg.dataset, resolve=True, throw_on_missing=True)  # paths the user must give (???)


def _number(value, key: str, kind=float):
    """``value`` as a number of ``kind``, or a :class:`ConfigError` naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise ConfigError(f"{key} must be {'a whole number' if kind is int else 'a number'}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key} must be finite, got {value!r}")
    return kind(value)


def check_attack(attack: DictConfig) -> None:
    """The budget, step and iterations of an attack config: numbers in range. eps and step are grey levels."""
    eps = _number(attack.get("eps"), "attack.eps")
    if not 1 <= eps <= 255:
        hint = (f"; in image units [0, 1] {eps} would be attack.eps={eps * 255:g}" if 0 < eps < 1 else "")
        raise ConfigError(f"attack.eps is the L-inf budget in grey levels and must be in [1, 255] (the paper uses "
                          f"8), got {eps:g}{hint}")
    if _number(attack.get("step"), "attack.step") <= 0:
        raise ConfigError(f"attack.step must be > 0 (grey levels, e.g. attack.step=1), got {attack.step}")
    if _number(attack.get("iterations"), "attack.iterations", int) < 1:
        raise ConfigError(f"attack.iterations must be >= 1, got {attack.iterations}")


def check_evaluation(evaluation: DictConfig) -> None:
    """Rank cut-offs, transform names and the clean-accuracy floor of an ``evaluation`` block."""
    ks = list(evaluation.get("ks") or [])
    if not ks or any(_number(k, "evaluation.ks", int) < 1 for k in ks):
        raise ConfigError(f"evaluation.ks must list ranks >= 1, e.g. 'evaluation.ks=[1,5,10]', got {ks}")
    for name in evaluation.get("robustness") or []:
        parse_transform(name)
    floor = _number(evaluation.get("min_clean_top1", 0.5), "evaluation.min_clean_top1")
    if not 0 <= floor <= 1:
        raise ConfigError(f"evaluation.min_clean_top1 must be in [0, 1], got {floor:g}")
    for key in ("batch_size", "chunk"):
        if _number(evaluation.get(key), f"evaluation.{key}", int) < 1:
            raise ConfigError(f"evaluation.{key} must be >= 1, got {evaluation.get(key)}")


def check_weights_file(spec: dict, key: str) -> None:
    """A weights file given as ``checkpoint`` must be readable as what it claims to be (safetensors header, torch
    archive); found out here rather than deep inside model building. Folders and other formats (ONNX, dlib's
    folder) are left to the model's own loader."""
    checkpoint = spec.get("checkpoint")
    path = Path(str(checkpoint)).expanduser() if checkpoint else None
    if path is None or not path.is_file():
        return
    with open(path, "rb") as f:
        head = f.read(9)
    fix = f"give {key}.checkpoint= a state dict saved with safetensors or torch.save(model.state_dict(), path)"
    if path.suffix == ".safetensors" or head[8:9] == b"{":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                f.keys()
        except Exception as err:  # noqa: BLE001 - any failure to read the user's file is the file's problem
            raise UserError(f"weights of {key!r}: {str(path)!r} is not a readable safetensors file ({err}); "
                            f"{fix}") from err
    elif path.suffix in (".pth", ".pt", ".ckpt", ".bin") and not (zipfile.is_zipfile(path) or head[:1] == b"\x80"):
        raise UserError(f"weights of {key!r}: {str(path)!r} is not a torch checkpoint (neither a torch.save "
                        f"archive nor a pickle); {fix}")


def plain_config(cfg: DictConfig) -> dict:
    """The job's resolved config as plain containers, without Hydra's own node."""
    return {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
            for k in cfg if k != "hydra"}


def face_images_setting(cfg: DictConfig):
    setting = cfg.get("privacy", {}).get("face_images", "auto")
    if setting not in (True, False, "auto"):
        raise ConfigError(f"privacy.face_images must be true, false or auto, got {setting!r}")
    return setting


def face_images_allowed(cfg: DictConfig, dataset) -> bool:
    """Whether figures of this job may show faces (local files): ``privacy.face_images`` true, or ``auto`` and
    the dataset has no real people (the synthetic world)."""
    setting = face_images_setting(cfg)
    return setting is True or (setting == "auto" and not getattr(dataset, "real_people", True))


def _specs(cfg: DictConfig, surrogate: bool = True) -> tuple[dict | None, dict[str, dict]]:
    """The surrogate's (unless ``surrogate`` is false) and the black-box panel's model specs, checked before
    any data is read."""
    surrogate_spec = OmegaConf.to_container(cfg.surrogate, resolve=True) if surrogate else None
    panel_specs = {name: OmegaConf.to_container(spec, resolve=True) for name, spec in cfg.blackbox.items()}
    if surrogate_spec:
        preflight(surrogate_spec, "surrogate")  # weights problems surface before any data is read
        check_weights_file(surrogate_spec, "surrogate")
    for name, spec in panel_specs.items():
        preflight(spec, f"blackbox.{name}")
        check_weights_file(spec, f"blackbox.{name}")
    return surrogate_spec, panel_specs


def _models(cfg: DictConfig, dataset, surrogate_spec: dict, panel_specs: dict[str, dict]):
    """Trains what needs training (in parallel), then returns the surrogate builder, the panel's builders and
    every model's cache key."""
    fr_train = OmegaConf.to_container(cfg.fr_train, resolve=True)
    build = partial(build_face_model, dataset=dataset, fr_train=fr_train, cache_dir=cfg.paths.cache_dir, log=log.info)
    specs = {name: spec for name, spec in panel_specs.items()}
    if surrogate_spec:
        specs[surrogate_spec["name"]] = surrogate_spec
    prepare_models(list(specs.values()), dataset, fr_train, cfg.paths.cache_dir, log=log.info)
    keys = {name: model_key(spec, dataset, fr_train) for name, spec in specs.items()}
    build_surrogate = partial(build, surrogate_spec) if surrogate_spec else None
    return build_surrogate, {name: partial(build, spec) for name, spec in panel_specs.items()}, keys


def transfer_evaluation(cfg: DictConfig, panel: dict, keys: dict, run_info: dict) -> TransferEvaluation:
    settings = OmegaConf.to_container(cfg.evaluation, resolve=True)
    cache_dir = cfg.paths.cache_dir if settings.pop("cache_embeddings", True) else None
    return TransferEvaluation(panel, cfg.paths.output_dir, run_info, cache_dir=cache_dir, model_keys=keys, **settings)


def _hydra_job() -> tuple[str | None, list[str]]:
    """This job's dataset choice and its command-line overrides, when Hydra runs it."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None, []
    hydra = HydraConfig.get()
    return hydra.runtime.choices.get("dataset"), list(hydra.overrides.task)


def job_info(dataset_name: str | None, dataset_cfg, protection: ProtectionSet, attack=None,
             crafts: bool = True) -> dict:
    """What ``results.json`` records about how a job was run, beside the config: the data, the attack's
    iterations and step, the job's overrides (what a sweep varied) and the machine."""
    name, overrides = _hydra_job()
    target = str(dataset_cfg.get("_target_", "")).rsplit(".", 1)[-1]
    info = {"dataset": data_used(dataset_name or name or target, protection)}
    if attack is not None:
        info["iterations"] = attack.iterations if crafts else 0
        info["step"] = attack.step_levels
    info["overrides"] = overrides
    info["environment"] = environment()
    return info


def run(cfg: DictConfig) -> dict:
    validate(cfg)
    quiet_lightning()
    L.seed_everything(cfg.seed, verbose=False)
    out = Path(cfg.paths.output_dir)

    method = instantiate(cfg.method)
    attack = instantiate(cfg.attack)
    surrogate_spec, panel_specs = _specs(cfg)
    dataset = instantiate(cfg.dataset)
    shard = Shard.from_config(cfg.get("shard"))
    protection, shard_info = shard.select(dataset.protection_set(), cfg.identities_per_batch)
    if shard.count > 1:  # a shard only crafts; its masks are tested once merged (opom-merge-masks, evaluate.py)
        panel_specs = {}
    build_surrogate, panel, keys = _models(cfg, dataset, surrogate_spec, panel_specs)
    surrogate = build_surrogate()

    run_info = {"method": method.name, "attack": attack.name, "surrogate": cfg.surrogate.name, "eps": attack.eps_levels,
                **job_info(None, cfg.dataset, protection, attack, method.crafts),
                "config": {**plain_config(cfg), "shard": shard_info}}
    evaluation = transfer_evaluation(cfg, panel, keys, run_info)
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    faces = face_images_allowed(cfg, dataset)
    callbacks = [MaskWriter(out, run_info, examples=faces)] + ([evaluation] if shard.count == 1 else [])
    if isinstance(logger, WandbLogger) and shard.count == 1:  # faces reach wandb only when the user said so
        callbacks.append(WandbReport(evaluation, out, face_images=cfg.privacy.face_images is True))
    callbacks += [instantiate(c) for c in (cfg.get("extra_callbacks") or {}).values()]

    module = MaskCrafter(surrogate, method, attack, protection.num_identities, protection.image_size,
                         **(cfg.get("crafting") or {}))
    iterations = attack.iterations if method.crafts else 1
    datamodule = ProtectionDataModule(protection, cfg.identities_per_batch, iterations, shard_info["start"])
    trainer = L.Trainer(**shard_trainer(cfg.trainer, shard), max_epochs=1, logger=logger, callbacks=callbacks,
                        enable_checkpointing=False)
    log.info("crafting %d masks: %s, %s, surrogate %s -> %s", protection.num_identities, method, attack,
             cfg.surrogate.name, out)
    if shard.count > 1:
        log.info("shard %d of %d: people %d..%d of %d", shard.index, shard.count, shard_info["start"],
                 shard_info["stop"] - 1, shard_info["total"])
    trainer.fit(module, datamodule=datamodule)
    if isinstance(logger, WandbLogger):
        logger.experiment.finish()  # one wandb run per job, also inside a multirun
    if shard.count > 1:
        return {**{k: v for k, v in run_info.items() if k != "config"}, "shard": shard_info, "models": {}}
    return evaluation.results


def _people_with_masks(protection: ProtectionSet, masks: MaskSet) -> tuple[ProtectionSet, torch.Tensor]:
    """The people of ``protection`` that ``masks`` has a mask for, and their masks in the same order."""
    have = set(masks.identities)
    keep = [i for i, name in enumerate(protection.names) if name in have]
    if not keep:
        raise UserError(f"none of the dataset's {protection.num_identities} people has a mask in this file "
                        f"(it has {len(masks.identities)}, e.g. {masks.identities[:3]}); test on the dataset the "
                        f"masks were crafted for (leave dataset= unset)")
    if len(keep) < protection.num_identities:
        log.info("testing the %d of %d people that have a mask in this file", len(keep), protection.num_identities)
    idx = torch.as_tensor(keep)
    subset = ProtectionSet([protection.names[i] for i in keep], protection.mask_images[idx],
                           protection.test_images[idx], protection.distractors)
    return subset, torch.stack([masks.mask_for(name) for name in subset.names])


def read_masks(path: str) -> MaskSet:
    """The mask file ``path``, or one line saying why it cannot be read."""
    try:
        return load_masks(path)
    except (UserError, FileNotFoundError):
        raise
    except Exception as err:  # noqa: BLE001 - a damaged or foreign file is the user's input, not a bug
        raise UserError(f"{str(path)!r} is not a readable opom mask file ({type(err).__name__}: {err}); give the "
                        f"masks.safetensors that run.py wrote in its output folder") from err


def saved_job(cfg: DictConfig) -> tuple[MaskSet, DictConfig]:
    """``evaluate.py``: the mask file and the job to test it with — the crafting run's config from the file's
    metadata, with this command's panel, dataset, evaluation settings and folders."""
    if OmegaConf.is_missing(cfg, "masks"):
        raise UserError("which masks? give masks=path/to/masks.safetensors (written by run.py in its output folder)")
    masks = read_masks(cfg.masks)
    saved = masks.extra.get("config")
    if not saved:
        raise UserError(f"{cfg.masks!r} has no crafting config in its metadata (it was not written by run.py); "
                        f"evaluate it with opom.evaluation.transfer.evaluate_model from Python instead")
    job = OmegaConf.create(saved)
    job.paths = cfg.paths  # this machine's cache and this job's output folder
    if cfg.get("blackbox"):
        job.blackbox = cfg.blackbox
    if cfg.get("dataset"):
        job.dataset = cfg.dataset
    job.evaluation = cfg.evaluation
    return masks, job


def validate_saved(cfg: DictConfig) -> tuple[MaskSet, DictConfig]:
    """``evaluate.py``'s check before anything heavy (and before Hydra creates the job's folder); returns the
    masks and the job (:func:`saved_job`)."""
    masks, job = saved_job(cfg)
    if not job.get("blackbox"):
        raise ConfigError("the black-box panel is empty: choose models, e.g. 'blackbox=[resnet_cosface]'")
    check_evaluation(job.evaluation)
    _specs(job, surrogate=cfg.whitebox)
    OmegaConf.to_container(job.dataset, resolve=True, throw_on_missing=True)
    return masks, job


def evaluate_saved(cfg: DictConfig) -> dict:
    """``evaluate.py``: re-test a saved mask file against a panel, reading the rest from its metadata."""
    quiet_lightning()
    masks, job = validate_saved(cfg)
    surrogate_spec, panel_specs = _specs(job, surrogate=cfg.whitebox)
    dataset = instantiate(job.dataset)
    protection, mask_tensor = _people_with_masks(dataset.protection_set(), masks)
    if masks.image_size != protection.image_size:
        raise UserError(f"the masks are {masks.image_size}x{masks.image_size} but the dataset's faces are "
                        f"{protection.image_size}x{protection.image_size}")
    build_surrogate, panel, keys = _models(job, dataset, surrogate_spec, panel_specs)
    saved_name = (masks.extra.get("dataset") or {}).get("name") if not cfg.get("dataset") else None
    crafted = job_info(saved_name, job.dataset, protection, instantiate(job.attack), instantiate(job.method).crafts)
    run_info = {"method": masks.method, "attack": masks.attack, "surrogate": masks.surrogate, "eps": masks.eps,
                "masks": str(Path(cfg.masks).resolve()), **crafted}
    evaluation = transfer_evaluation(job, panel, keys, run_info)
    surrogate = build_surrogate() if cfg.whitebox and surrogate_spec else None
    if surrogate is not None and not surrogate.differentiable:
        surrogate = None
    log.info("re-testing %d masks from %s -> %s", len(mask_tensor), cfg.masks, cfg.paths.output_dir)
    return evaluation.evaluate(surrogate, protection, mask_tensor)
