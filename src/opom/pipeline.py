"""The main job: craft one mask per identity, save it, and test it against held-out face models.

``run(cfg)`` builds every part explicitly from the composed Hydra config and returns the results dict
(the same content as ``results.json``).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from functools import partial
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from opom.attack import Budget
from opom.data.alignment import Canvas, face_region
from opom.data.protection import ProtectionDataModule, ProtectionSet
from opom.errors import ConfigError, UserError
from opom.evaluation.callbacks import MaskWriter, TransferEvaluation, WandbReport
from opom.evaluation.holdout import HoldoutEvaluation
from opom.logs import quiet_lightning
from opom.mask_store import choose_mask_store
from opom.masks import MaskSet, load_masks
from opom.methods import METHODS
from opom.models.training import prepare_models
from opom.models.zoo import ZOO, build_face_model, model_key, preflight
from opom.module import MaskCrafter
from opom.refine import RefineSettings, refine
from opom.shards import Shard, shard_trainer
from opom.transforms import RandomTransforms

log = logging.getLogger("opom")


def validate(cfg: DictConfig) -> None:
    """Fail fast, before anything heavy, on settings that cannot work."""
    target = cfg.method.get("_target_", "")
    if not target.startswith("opom.methods.") or target.rsplit(".", 1)[-1] not in {
            type_.__name__ for type_ in METHODS.values()}:
        raise ConfigError(f"unknown method target {target!r}; use method=<{'|'.join(METHODS)}>")
    if not cfg.blackbox:
        raise ConfigError("the black-box panel is empty: choose models, e.g. 'blackbox=[resnet_cosface]'")
    if cfg.identities_per_batch < 1:
        raise ConfigError(f"identities_per_batch must be >= 1, got {cfg.identities_per_batch}")


def plain_config(cfg: DictConfig) -> dict:
    """The job's resolved config as plain containers, without Hydra's own node."""
    return {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
            for k in cfg if k != "hydra"}


def face_images_allowed(cfg: DictConfig, dataset) -> bool:
    """Whether figures of this job may show faces (local files): ``privacy.face_images`` true, or ``auto`` and
    the dataset has no real people (the synthetic world)."""
    setting = cfg.get("privacy", {}).get("face_images", "auto")
    if setting not in (True, False, "auto"):
        raise ConfigError(f"privacy.face_images must be true, false or auto, got {setting!r}")
    return setting is True or (setting == "auto" and not getattr(dataset, "real_people", True))


def surrogate_specs(cfg: DictConfig) -> dict[str, dict]:
    """``{key: spec}`` of the surrogate(s): ``surrogate=sface`` selects one, ``'surrogate=[sface,faceapi]'`` an
    ensemble (mask files of older versions stored one flat spec: read as one surrogate)."""
    node = OmegaConf.to_container(cfg.surrogate, resolve=True) if cfg.get("surrogate") else {}
    if "arch" in node:
        return {node["name"]: node}
    if not node:
        raise ConfigError("no surrogate: choose one or more, e.g. surrogate=sface or 'surrogate=[sface,faceapi]'")
    return node


def surrogate_name(specs: dict[str, dict]) -> str:
    """How results and mask files name the surrogate(s): ``sface``, or ``sface+faceapi`` for an ensemble."""
    return "+".join(spec["name"] for spec in specs.values())


def _specs(cfg: DictConfig, surrogate: bool = True) -> tuple[dict[str, dict], dict[str, dict]]:
    """The surrogates' (unless ``surrogate`` is false) and the black-box panel's model specs, checked before
    any data is read."""
    sur_specs = surrogate_specs(cfg) if surrogate else {}
    panel_specs = {name: OmegaConf.to_container(spec, resolve=True) for name, spec in cfg.blackbox.items()}
    for key, spec in sur_specs.items():
        preflight(spec, f"surrogate.{key}")  # weights problems surface before any data is read
    for name, spec in panel_specs.items():
        preflight(spec, f"blackbox.{name}")
    return sur_specs, panel_specs


def _models(cfg: DictConfig, dataset, sur_specs: dict[str, dict], panel_specs: dict[str, dict], canvas=None):
    """Trains what needs training (in parallel), then returns the surrogates' builders, the panel's builders and
    every model's cache key. Models read ``canvas`` images (the dataset's)."""
    fr_train = OmegaConf.to_container(cfg.fr_train, resolve=True)
    build = partial(build_face_model, dataset=dataset, fr_train=fr_train, cache_dir=cfg.paths.cache_dir, log=log.info,
                    canvas=canvas)
    specs = {name: spec for name, spec in panel_specs.items()}
    for spec in sur_specs.values():
        specs[spec["name"]] = spec
    prepare_models(list(specs.values()), dataset, fr_train, cfg.paths.cache_dir, log=log.info)
    keys = {name: model_key(spec, dataset, fr_train) for name, spec in specs.items()}
    surrogates = {spec["name"]: partial(build, spec) for spec in sur_specs.values()}
    return surrogates, {name: partial(build, spec) for name, spec in panel_specs.items()}, keys


def build_surrogates(builders: dict) -> list:
    """Build the surrogates; a black box (no gradients) among them is a one-line error."""
    models = []
    for name, build in builders.items():
        model = build()
        if not model.differentiable:
            raise ConfigError(f"surrogate {name!r} is a black box (no gradients): it can only be evaluated, e.g. "
                              f"'blackbox=[{name}]'; pick a differentiable surrogate")
        models.append(model)
    return models


def transfer_evaluation(cfg: DictConfig, panel: dict, keys: dict, run_info: dict) -> TransferEvaluation:
    settings = OmegaConf.to_container(cfg.evaluation, resolve=True)
    cache_dir = cfg.paths.cache_dir if settings.pop("cache_embeddings", True) else None
    return TransferEvaluation(panel, cfg.paths.output_dir, run_info, cache_dir=cache_dir, model_keys=keys, **settings)


def run(cfg: DictConfig) -> dict:
    validate(cfg)
    quiet_lightning()
    L.seed_everything(cfg.seed, verbose=False)
    out = Path(cfg.paths.output_dir)

    method = instantiate(cfg.method)
    attack = instantiate(cfg.attack)
    sur_specs, panel_specs = _specs(cfg)
    dataset = instantiate(cfg.dataset)
    if getattr(dataset, "protocol", None) == "holdout":
        return run_holdout(cfg, dataset, method, attack, sur_specs, panel_specs)
    shard = Shard.from_config(cfg.get("shard"))
    protection, shard_info = shard.select(dataset.protection_set(), cfg.identities_per_batch)
    if shard.count > 1:  # a shard only crafts; its masks are tested once merged (opom-merge-masks, evaluate.py)
        panel_specs = {}
    surrogate_builders, panel, keys = _models(cfg, dataset, sur_specs, panel_specs, canvas=protection.canvas)
    surrogates = build_surrogates(surrogate_builders)

    run_info = {"method": method.name, "attack": attack.name, "surrogate": surrogate_name(sur_specs),
                "eps": attack.eps_levels,
                "config": {**plain_config(cfg), "shard": shard_info}}
    evaluation = transfer_evaluation(cfg, panel, keys, run_info)
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    faces = face_images_allowed(cfg, dataset)
    callbacks = [MaskWriter(out, run_info, examples=faces)] + ([evaluation] if shard.count == 1 else [])
    if isinstance(logger, WandbLogger) and shard.count == 1:  # faces reach wandb only when the user said so
        callbacks.append(WandbReport(evaluation, out, face_images=cfg.privacy.face_images is True))
    callbacks += [instantiate(c) for c in (cfg.get("extra_callbacks") or {}).values()]

    store = choose_mask_store(_mask_store_choice(cfg), out, protection.num_identities, protection.image_size)
    module = MaskCrafter(surrogates, method, attack, protection.num_identities, protection.image_size,
                         **crafter_options(cfg, protection.canvas, attack.seed), mask_store=store)
    iterations = attack.iterations if method.crafts else 1
    datamodule = ProtectionDataModule(protection, cfg.identities_per_batch, iterations, shard_info["start"])
    trainer = L.Trainer(**shard_trainer(cfg.trainer, shard), max_epochs=1, logger=logger, callbacks=callbacks,
                        enable_checkpointing=False)
    log.info("crafting %d masks: %s, %s, surrogate %s -> %s", protection.num_identities, method, attack,
             run_info["surrogate"], out)
    if shard.count > 1:
        log.info("shard %d of %d: people %d..%d of %d", shard.index, shard.count, shard_info["start"],
                 shard_info["stop"] - 1, shard_info["total"])
    trainer.fit(module, datamodule=datamodule)
    if isinstance(logger, WandbLogger):
        logger.experiment.finish()  # one wandb run per job, also inside a multirun
    if shard.count > 1:
        return {**{k: v for k, v in run_info.items() if k != "config"}, "shard": shard_info, "models": {}}
    return evaluation.results


def crafter_options(cfg: DictConfig, canvas: Canvas, seed: int) -> dict:
    """MaskCrafter's keyword options from ``crafting`` (speed options and the transfer extensions)."""
    c = OmegaConf.to_container(cfg.get("crafting") or OmegaConf.create({}), resolve=True)
    c.pop("mask_store", None)  # where the masks are kept: see _mask_store_choice
    region = c.pop("region", "full")
    if region not in ("full", "face"):
        raise ConfigError(f"crafting.region must be full or face, got {region!r}")
    budget = Budget(torch.from_numpy(face_region(canvas)) if region == "face" else None, float(c.pop("chroma", 1.0)))
    names, params = c.pop("transforms", []) or [], c.pop("transform_params", {}) or {}
    transforms = RandomTransforms({n: params.get(n, {}) for n in names}, p=float(c.pop("transform_p", 0.5)),
                                  seed=seed, pixels_per_canonical=canvas.scale)
    return {**c, "transforms": transforms, "budget": budget}


def _mask_store_choice(cfg: DictConfig) -> str:
    """``crafting.mask_store``: auto | memory | disk (:func:`opom.mask_store.choose_mask_store`)."""
    return str((cfg.get("crafting") or {}).get("mask_store", "auto"))


def options_label(cfg: DictConfig) -> str:
    """The transfer extensions a job uses, in a few words ('' for the paper's crafting)."""
    c, parts = cfg.get("crafting") or {}, []
    if c.get("ensemble", "distance") != "distance":
        parts.append(f"ensemble={c.ensemble}")
    if c.get("transforms"):
        parts.append("+".join(c.transforms))
    if c.get("region", "full") != "full":
        parts.append(f"region={c.region}")
    if c.get("chroma", 1.0) != 1.0:
        parts.append(f"chroma={c.chroma:g}")
    return ", ".join(parts)


def run_holdout(cfg: DictConfig, dataset, method, attack, sur_specs: dict, panel_specs: dict) -> dict:
    """The main job on a held-out-photo benchmark (``dataset=real_photos``): one mask per fold (a person's
    enrolment photos), judged on the fold's held-out photo by the surrogates and the panel at their own thresholds
    (:mod:`opom.evaluation.holdout`)."""
    out = Path(cfg.paths.output_dir)
    if Shard.from_config(cfg.get("shard")).count > 1:
        raise ConfigError("identity shards are not available on the held-out-photo benchmark (it is small): "
                          "leave shard.count=1")
    if _mask_store_choice(cfg) == "disk":
        raise ConfigError("crafting.mask_store=disk is for large protection sets; the held-out-photo benchmark keeps "
                          "its masks in memory: leave crafting.mask_store=auto")
    data = dataset.holdout_set()
    builders, panel, _ = _models(cfg, dataset, sur_specs, panel_specs, canvas=data.canvas)
    surrogates = build_surrogates(builders)
    families = {spec["name"]: ZOO[spec["arch"]].family for spec in [*sur_specs.values(), *panel_specs.values()]}
    run_info = {"method": method.name, "attack": attack.name, "surrogate": surrogate_name(sur_specs),
                "eps": attack.eps_levels, "options": options_label(cfg), "dataset": type(dataset).__name__,
                "canvas": data.canvas.to_dict(), "config": plain_config(cfg)}
    evaluation = HoldoutEvaluation(panel, families, out, run_info)
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    options = crafter_options(cfg, data.canvas, attack.seed)
    module = MaskCrafter(surrogates, method, attack, data.num_identities, data.image_size, **options)
    iterations = attack.iterations if method.crafts else 1
    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer = L.Trainer(**trainer_kwargs, max_epochs=1, logger=logger, enable_checkpointing=False,
                        callbacks=[MaskWriter(out, run_info), evaluation])
    log.info("crafting %d held-out-photo masks (%s photos): %s, %s, surrogates %s%s -> %s", data.num_identities,
             len(data.faces), method, attack, run_info["surrogate"],
             f" ({run_info['options']})" if run_info["options"] else "", out)
    trainer.fit(module, datamodule=ProtectionDataModule(data, cfg.identities_per_batch, iterations))
    if isinstance(logger, WandbLogger):
        logger.experiment.finish()
    settings = RefineSettings(**OmegaConf.to_container(cfg.get("refine") or OmegaConf.create({}), resolve=True))
    if settings.steps > 0:
        def make_crafter(refine_attack, n, init):
            return MaskCrafter(surrogates, copy.deepcopy(method), refine_attack, n, data.image_size,
                               **{**options, "init_masks": init})

        start = time.perf_counter()
        references = [data.images[list(f.enrol)] for f in data.folds]
        refined, eps_used = refine(make_crafter, surrogates, data.probes, module.masks.detach().cpu(), references,
                                   settings, attack.eps_levels, data.canvas.face_box(), trainer_kwargs)
        evaluation.evaluate_refined({m.name: m for m in surrogates}, data, refined, eps_used,
                                    time.perf_counter() - start, dataclasses.asdict(settings))
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
                           protection.test_images[idx], protection.distractors, protection.canvas)
    return subset, torch.stack([masks.mask_for(name) for name in subset.names])


def evaluate_saved(cfg: DictConfig) -> dict:
    """``evaluate.py``: re-test a saved mask file against a panel, reading the rest from its metadata."""
    quiet_lightning()
    if OmegaConf.is_missing(cfg, "masks"):
        raise UserError("which masks? give masks=path/to/masks.safetensors (written by run.py in its output folder)")
    masks = load_masks(cfg.masks)
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
    if not job.blackbox:
        raise ConfigError("the black-box panel is empty: choose models, e.g. 'blackbox=[resnet_cosface]'")
    sur_specs, panel_specs = _specs(job, surrogate=cfg.whitebox)
    dataset = instantiate(job.dataset)
    protection, mask_tensor = _people_with_masks(dataset.protection_set(), masks)
    if masks.image_size != protection.image_size:
        raise UserError(f"the masks are {masks.image_size}x{masks.image_size} but the dataset's faces are "
                        f"{protection.image_size}x{protection.image_size}")
    surrogate_builders, panel, keys = _models(job, dataset, sur_specs, panel_specs, canvas=protection.canvas)
    run_info = {"method": masks.method, "attack": masks.attack, "surrogate": masks.surrogate, "eps": masks.eps,
                "masks": str(Path(cfg.masks).resolve())}
    evaluation = transfer_evaluation(job, panel, keys, run_info)
    surrogates = {name: build() for name, build in surrogate_builders.items()} if cfg.whitebox else {}
    log.info("re-testing %d masks from %s -> %s", len(mask_tensor), cfg.masks, cfg.paths.output_dir)
    return evaluation.evaluate({n: m for n, m in surrogates.items() if m.differentiable}, protection, mask_tensor)
